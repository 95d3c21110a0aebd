"""Fuzz target: the HTTP shim's request bodies, paths and headers, through aiohttp's test client.

Input: byte 0 from RAW (0xE0) up: the rest is written as it is to the server's socket (one or
more whole HTTP requests: request line, headers such as Authorization, body). Below RAW, byte 0
picks the endpoint (and, from 0xD0, the other method: a 405), the rest is the POST body
(``/transactions/new``, ``/add_transaction``, ``/transactions``, ``/nodes/register``,
``/connect_node``) or the end of a GET path or query (``/balance/``, ``/blocks/``, ``/chain?``,
...), percent-encoded. The app is ``http.make_app`` over a real Node (temp data dir, the seed
chain of scripts/fuzz.py, whose coinbases paid this node's wallet, so payments can succeed),
served by ``aiohttp.test_utils.TestServer`` on 127.0.0.1, with ``--http-auth always`` and a fixed
token (the test client sends it; raw requests carry whatever Authorization header they have).
The node's dialler gets a numeric-only resolver and every connect but the test client's is
refused, and /nodes/register does not wait for peers that cannot come
(``limits.HTTP_REGISTER_WAIT_S`` is 0 here). After each input the mempool is emptied, registered
peers and failed logins forgotten, so inputs do not depend on each other.

Oracles (each a crash when broken): never a 500 (a handler's bug: the shim's middleware turns any
exception into one); through the test client, every answer is JSON and every error (4xx, 503)
is ``{"error": str, "code": str}`` (a raw request may also meet aiohttp's own 400 for bad HTTP).

    .venv/bin/python fuzz/http_bodies.py --seconds 60      # see fuzz/fuzzharness.py for the options
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import re
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import fuzzharness
from fuzzharness import Finding, Target

POSTS = ("/transactions/new", "/add_transaction", "/transactions", "/nodes/register", "/connect_node")
GETS = ("/balance/", "/blocks/", "/chain?", "/get_chain?", "/status", "/wallet", "/is_valid", "/", "/nope/")
ROUTES = [("POST", p) for p in POSTS] + [("GET", p) for p in GETS]
OTHER_METHOD = 0xD0  # byte 0 from here up (to RAW): the route's other method
RAW = 0xE0  # byte 0 from here up: the rest is raw HTTP
RAW_WAIT_S = 0.25  # longest wait for the answer to a raw request (loopback answers take ms; an
# incomplete request is answered only when it is complete, so this is mostly waited in vain)
TOKEN = "fuzz-token-0123456789abcdef"  # the shim's fixed token (--http-token-file)
_STATUS_500 = re.compile(rb"HTTP/1\.[01] 500 ")


def build() -> Target:
    from aiohttp.test_utils import TestClient, TestServer

    import fuzz  # scripts/fuzz.py
    from p2pchain import http, limits
    from p2pchain.http_auth import AuthMode, AuthSettings, FailureLimiter, Guard
    from p2pchain.keys import Wallet
    from p2pchain.ledger.tx import make_tx
    from p2pchain.mempool import Mempool
    from p2pchain.node import Node, NodeConfig

    fuzzharness.quiet_logs()
    limits.HTTP_REGISTER_WAIT_S = 0.0  # no peer can connect here: answer at once  # type: ignore[misc]
    params = fuzz.FUZZ_PARAMS
    seed_chain = fuzz.seed_chain(params)
    miner, payee = Wallet.from_seed(fuzz.MINER_SEED), Wallet.from_seed(fuzz.PAYEE_SEED)
    shm = Path("/dev/shm")
    tmp = tempfile.TemporaryDirectory(prefix="p2pchain-fuzz-http-", dir=str(shm) if shm.is_dir() else None)
    miner.save(Path(tmp.name) / "wallet.json")  # the seed chain's rewards are this node's coins
    loop = asyncio.new_event_loop()
    loop.set_debug(False)
    asyncio.set_event_loop(loop)
    allowed: set[int] = set()

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return socket.getaddrinfo(host, port, kwargs.get("family", 0), kwargs.get("type", 0), 0, socket.AI_NUMERICHOST)

    real_connect = loop.sock_connect

    async def sock_connect(sock: socket.socket, address: Any) -> None:
        if address[0] != "127.0.0.1" or address[1] not in allowed:
            raise ConnectionRefusedError(f"fuzz: the node's dialler gets no network ({address})")
        await real_connect(sock, address)

    loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]
    loop.sock_connect = sock_connect  # type: ignore[method-assign]

    async def make() -> tuple[Node, TestClient[Any, Any], Guard]:
        node = Node(NodeConfig(data_dir=Path(tmp.name), params=params, port=0))
        for block in seed_chain[1:]:
            node.chain.process_block(block, block.header.timestamp)
        guard = Guard(AuthSettings(AuthMode.ALWAYS, TOKEN), Path(tmp.name))  # every request needs it
        client: TestClient[Any, Any] = TestClient(TestServer(http.make_app(node, guard), host="127.0.0.1"))
        await client.start_server()
        assert client.port is not None
        allowed.add(client.port)
        return node, client, guard

    node, client, guard = loop.run_until_complete(make())

    def reset() -> None:
        if len(node.mempool):
            node.mempool = Mempool(node.params, node.chain.get_account)
            node.chain.verified = node.mempool.verified
        cm = node.connmgr
        for task in [*cm.persistent.values(), *cm.tasks]:
            task.cancel()
        cm.persistent.clear()
        guard.limiter = FailureLimiter(
            limits.HTTP_AUTH_MAX_FAILURES, limits.HTTP_AUTH_FAILURE_WINDOW_S, limits.HTTP_AUTH_TRACKED_MAX
        )

    async def raw(data: bytes) -> bytes:
        """``data`` written to the server as it is; the first answer (head and a Content-Length
        body), or what came before the server closed or RAW_WAIT_S passed (an incomplete request
        makes it wait for the rest)."""
        assert client.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        got = b""
        try:
            writer.write(data)
            await writer.drain()
            async with asyncio.timeout(RAW_WAIT_S):
                got = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", got)
                if length:
                    got += await reader.readexactly(int(length.group(1)))
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.transport.abort()
        return got

    async def request(data: bytes) -> tuple[int, bytes]:
        choice = data[0] if data else 0
        method, path = ROUTES[choice % len(ROUTES)]
        rest = data[1:]
        body: bytes | None = None
        if method == "POST":
            body = rest
        elif path.endswith("?"):
            path += quote(rest.decode("latin-1"), safe="=&")
        elif path.endswith("/") and path != "/":
            path += quote(rest.decode("latin-1"), safe="")
        if choice >= OTHER_METHOD:
            method = "GET" if method == "POST" else "POST"
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
        async with client.request(method, path, data=body, headers=headers) as resp:
            return resp.status, await resp.read()

    def run(data: bytes) -> str:
        if data and data[0] >= RAW:
            try:
                answer = loop.run_until_complete(raw(data[1:]))
            finally:
                reset()
            if _STATUS_500.search(answer):
                raise Finding(f"HTTP 500 for a raw request: {answer[-300:]!r}")
            return "raw:" + ",".join(sorted({m.decode() for m in re.findall(rb"HTTP/1\.[01] (\d+)", answer)}))
        try:
            status, raw_answer = loop.run_until_complete(request(data))
        finally:
            reset()
        if status == 500:
            raise Finding(f"HTTP 500: {raw_answer[:300]!r}")
        try:
            doc = json.loads(raw_answer)
        except ValueError:
            raise Finding(f"HTTP {status} answer is not JSON: {raw_answer[:200]!r}") from None
        if status >= 400:
            if (
                not isinstance(doc, dict)
                or not isinstance(doc.get("error"), str)
                or not isinstance(doc.get("code"), str)
            ):
                raise Finding(f"HTTP {status} error is not {{error, code}}: {raw_answer[:200]!r}")
            return f"{status}:{doc['code']}"
        return f"{status}:{','.join(sorted(doc)) if isinstance(doc, dict) else type(doc).__name__}"

    spend = make_tx(payee, miner.address, 2, 1, 0, params.network_id)
    spend_doc = {
        "sender": spend.sender,
        "recipient": spend.recipient,
        "amount": spend.amount,
        "fee": spend.fee,
        "nonce": spend.nonce,
        "pubkey": spend.pubkey.hex(),
        "signature": spend.signature.hex(),
    }
    docs: list[tuple[str, dict[str, Any]]] = [
        ("/transactions/new", {"recipient": payee.address, "amount": 3}),
        ("/transactions/new", {"sender": miner.address, "recipient": payee.address, "amount": 2, "fee": 1}),
        ("/add_transaction", {"sender": miner.address, "receiver": payee.address, "amount": 1}),
        ("/transactions", spend_doc),
        ("/nodes/register", {"nodes": ["http://127.0.0.1:7001", "127.0.0.1:7002", "[::1]:7003"]}),
        ("/connect_node", {"nodes": ["http://localhost:7001"]}),
    ]
    gets = [
        ("/balance/", miner.address),
        ("/blocks/", seed_chain[2].hash.hex()),
        ("/chain?", "from=1&limit=2"),
        ("/get_chain?", ""),
        ("/status", ""),
        ("/wallet", ""),
        ("/is_valid", ""),
        ("/", ""),
    ]

    def encode(method: str, path: str, rest: bytes) -> bytes:
        return bytes([ROUTES.index((method, path))]) + rest

    def http_request(method: str, path: str, auth: str | None, body: bytes = b"") -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        if auth is not None:
            head += f"Authorization: {auth}\r\n"
        return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body

    basic = base64.b64encode(f"__cookie__:{TOKEN}".encode()).decode()
    raws = [
        http_request("POST", "/transactions/new", f"Bearer {TOKEN}", json.dumps(docs[0][1]).encode()),
        http_request("POST", "/transactions/new", f"Basic {basic}", json.dumps(docs[1][1]).encode()),
        http_request("POST", "/nodes/register", "Bearer wrong-token-0000000000", json.dumps(docs[4][1]).encode()),
        http_request("GET", "/mine", None),
        http_request("GET", "/status", f"Bearer {TOKEN}") + http_request("GET", "/wallet", None),
    ]

    def seeds() -> list[bytes]:
        out = [encode("POST", p, json.dumps(d).encode()) for p, d in docs]
        out += [bytes([RAW]) + r for r in raws]
        return out + [encode("GET", p, rest.encode()) for p, rest in gets]

    mutator = fuzz.Mutator(fuzz.FastRandom(1), fuzz.seed_messages())

    def to_json(obj: Any) -> bytes:
        text = json.dumps(obj, default=lambda o: o.hex() if isinstance(o, bytes) else str(o))
        return text.encode("utf-8", "surrogatepass")

    def generate(rng: random.Random) -> bytes:
        """A seed request with its JSON mutated by the generator's structure mutations (type
        confusion, boundary values, fields dropped or added), or its bytes mutated."""
        mutator.rng = rng
        roll = rng.random()
        if roll < 0.15:  # a raw request, its bytes mutated (headers, request line, body)
            return bytes([RAW]) + mutator.mutate_bytes(rng.choice(raws))
        if roll < 0.6:
            path, doc = rng.choice(docs)
            body = to_json(mutator._mutate_in(doc, 0) if rng.random() < 0.8 else mutator.mutate_doc(doc))
            return encode("POST", path, body)
        if roll < 0.8:
            path, doc = rng.choice(docs)
            return encode("POST", path, mutator.mutate_bytes(to_json(doc)))
        path, rest = rng.choice(gets)
        first = ROUTES.index(("GET", path)) | (OTHER_METHOD if rng.random() < 0.05 else 0)
        first = first if first < 256 else ROUTES.index(("GET", path))
        return bytes([first]) + mutator.mutate_bytes(rest.encode() or b"x")

    def close() -> None:
        async def stop() -> None:
            await client.close()
            await node.connmgr.close()
            node.chain.close()

        with contextlib.suppress(Exception):
            loop.run_until_complete(stop())
        loop.close()
        tmp.cleanup()

    return Target("http_bodies", run, seeds, generate, max_len=4096, close=close)


if __name__ == "__main__":
    sys.exit(fuzzharness.main(build))
