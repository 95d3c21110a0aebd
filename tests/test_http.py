"""http: the tutorial endpoints over real HTTP against real node processes.

The tutorial's walk-through end to end (two nodes, register, mine on one, resolve on the other),
each endpoint's happy path and error codes, the second tutorial's aliases, a resolve that
replaces our chain with a quiet peer's, and a 1,000-block /chain that is streamed while the
node keeps answering. Assertions are on status codes and the ``code`` of error JSON.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
from typing import Any

from harness import NodeProc, wait_until
from node_helpers import FUNDED, TEST_PARAMS, branch, main_chain, next_block, pay, write_store

from p2pchain import limits, wire
from p2pchain.keys import Wallet
from p2pchain.ledger.block import Block

ARGS = ["--miner-procs", "1"]
OTHER = "ab" * 20  # an address nobody in these tests holds


def chain_hashes(node: NodeProc) -> list[str]:
    code, doc = node.http("GET", "/chain")
    assert code == 200, doc
    assert doc["length"] == len(doc["chain"])
    return [b["hash"] for b in doc["chain"]]


def assert_error(reply: tuple[int, Any], status: int, code: str) -> None:
    got_status, doc = reply
    assert (got_status, doc.get("code") if isinstance(doc, dict) else doc) == (status, code), doc
    assert isinstance(doc["error"], str) and doc["error"]


def assert_tutorial_block(block: dict[str, Any]) -> None:
    for key in ("index", "timestamp", "transactions", "proof", "previous_hash", "hash"):
        assert key in block, key
    assert block["index"] == block["height"] + 1
    assert isinstance(block["timestamp"], float)
    for tx in block["transactions"]:
        assert {"sender", "recipient", "amount"} <= tx.keys()


def test_tutorial_walkthrough_two_nodes(nodes):
    a = nodes("a", args=ARGS).start()
    b = nodes("b", args=ARGS).start()
    a_addr = a.http("GET", "/wallet")[1]["address"]
    b_addr = b.http("GET", "/wallet")[1]["address"]

    code, mined = a.http("GET", "/mine")
    assert code == 200 and mined["message"] == "New Block Forged"
    assert (mined["index"], mined["previous_hash"]) == (2, TEST_PARAMS.network_id.hex())
    assert_tutorial_block(mined)
    assert mined["transactions"][0]["recipient"] == a_addr  # the reward

    code, doc = a.http("POST", "/transactions/new", {"sender": a_addr, "recipient": b_addr, "amount": 1})
    assert (code, doc["message"]) == (201, "Transaction will be added to Block 3")

    code, doc = b.http("POST", "/nodes/register", {"nodes": [f"http://{a.addr}"]})
    assert (code, doc["message"]) == (201, "New nodes have been added")
    assert a.addr in doc["total_nodes"] and doc["pending"] == []

    code, mined = a.http("GET", "/mine")
    assert code == 200 and mined["index"] == 3
    assert {"sender": a_addr, "recipient": b_addr, "amount": 1}.items() <= mined["transactions"][1].items()

    code, doc = b.http("GET", "/nodes/resolve")
    assert code == 200
    # Over P2P the block usually arrives by gossip before anyone asks: then B is already right.
    key = {"Our chain was replaced": "new_chain", "Our chain is authoritative": "chain"}[doc["message"]]
    assert [blk["hash"] for blk in doc[key]] == chain_hashes(a) == chain_hashes(b)
    assert doc["length"] == 3
    assert b.http("GET", f"/balance/{b_addr}")[1]["balance"] == 1


class QuietPeer:
    """A raw protocol peer that claims no work in its HELLO (so the node never syncs from it on
    its own) but serves ``blocks`` to whoever sends GET_CHAIN."""

    def __init__(self, blocks: list[Block]) -> None:
        self.blocks = blocks
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter

    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        theirs = wire.decode_message(await wire.read_frame(self.reader))
        assert isinstance(theirs, wire.Hello)
        g = TEST_PARAMS.network_id
        self.send(wire.Hello(limits.PROTOCOL_VERSION, g, os.urandom(16), 1, 0, g, 0, "quiet-peer"))

    def send(self, msg: wire.Message) -> None:
        self.writer.write(msg.encode())

    async def serve(self) -> None:
        """Answer GET_CHAIN and PING until the node hangs up."""
        try:
            while True:
                msg = wire.decode_message(await wire.read_frame(self.reader))
                if isinstance(msg, wire.GetChain):
                    self.send(wire.Chain(tuple(self.blocks), False))
                elif isinstance(msg, wire.Ping):
                    self.send(wire.Pong(msg.nonce))
        except (asyncio.IncompleteReadError, ConnectionError):
            return


def test_resolve_replaces_our_chain_with_a_quiet_peers_longer_one(nodes):
    """/nodes/resolve asks every peer, not only those that claim more work; an unasked CHAIN
    afterwards is still a protocol violation that drops the peer."""
    node = nodes("n", args=ARGS).start()
    blocks = branch(TEST_PARAMS.genesis.header, 3)

    async def scenario() -> tuple[int, Any]:
        peer = QuietPeer(blocks)
        await peer.connect(node.port)
        serving = asyncio.create_task(peer.serve())
        await asyncio.to_thread(wait_until, lambda: node.status()["peers"], 15, "the quiet peer to be ready")
        code, doc = await asyncio.to_thread(node.http, "GET", "/nodes/resolve")
        peer.send(wire.Chain(tuple(blocks), False))  # nobody asked for this one
        async with asyncio.timeout(15):
            await serving  # ends when the node hangs up
        return code, doc

    code, doc = asyncio.run(scenario())
    assert (code, doc["message"]) == (200, "Our chain was replaced")
    assert [b["hash"] for b in doc["new_chain"]] == [TEST_PARAMS.network_id.hex()] + [b.hash.hex() for b in blocks]
    assert node.height() == 3


def test_endpoints_happy_paths_and_aliases(nodes):
    node = nodes("n", args=ARGS).start()
    code, index = node.http("GET", "/")
    assert code == 200 and "GET /nodes/resolve" in index["endpoints"]
    address = node.http("GET", "/wallet")[1]["address"]

    for path in ("/mine", "/mine_block"):
        code, mined = node.http("GET", path)
        assert code == 200 and mined["transactions"][0]["recipient"] == address
    assert node.http("GET", "/status")[1]["height"] == 2
    code, wallet = node.http("GET", "/wallet")
    assert code == 200 and (wallet["address"], wallet["balance"], wallet["nonce"]) == (address, 2, 0)

    code, doc = node.http("POST", "/add_transaction", {"sender": address, "receiver": OTHER, "amount": 1})
    assert (code, doc["message"], doc["nonce"]) == (201, "Transaction will be added to Block 4", 0)
    # The protocol's transaction fields, signed elsewhere (here with the node's own key file).
    own = Wallet.load(node.data_dir / "wallet.json")
    signed = pay(own, OTHER, 1, nonce=1)
    body = {
        k: v.hex() if isinstance(v, bytes) else v
        for k, v in zip(
            ("sender", "recipient", "amount", "fee", "nonce", "pubkey", "signature"), signed.to_wire(), strict=True
        )
    }
    code, doc = node.http("POST", "/transactions", body)
    assert (code, doc["txid"]) == (201, signed.txid.hex())
    assert_error(node.http("POST", "/transactions", body), 400, "already-known")
    assert node.http("GET", f"/balance/{address}")[1] == {
        "address": address,
        "balance": 2,
        "nonce": 0,
        "pending_balance": 0,
        "next_nonce": 2,
    }

    code, mined = node.http("GET", "/mine")
    assert [t["txid"] for t in mined["transactions"][1:]][1] == signed.txid.hex()
    assert node.http("GET", f"/balance/{OTHER}")[1]["balance"] == 2

    hashes = chain_hashes(node)
    code, doc = node.http("GET", "/get_chain")
    assert code == 200 and [b["hash"] for b in doc["chain"]] == hashes and doc["length"] == 4
    for block in doc["chain"]:
        assert_tutorial_block(block)
    assert [b["previous_hash"] for b in doc["chain"][1:]] == hashes[:-1]
    code, page = node.http("GET", "/chain?from=1&limit=2")
    assert (code, [b["hash"] for b in page["chain"]], page["length"], page["next"]) == (200, hashes[1:3], 4, 3)
    assert node.http("GET", "/chain?from=3")[1]["next"] is None
    assert node.http("GET", "/chain?from=9")[1]["chain"] == []

    code, block = node.http("GET", f"/blocks/{hashes[1]}")
    assert (code, block["index"], block["main_chain"], block["confirmations"]) == (200, 2, True, 3)
    assert node.http("GET", "/is_valid")[1]["valid"] is True
    code, doc = node.http("GET", "/replace_chain")  # no peers: nothing to replace it with
    assert (code, doc["message"], len(doc["actual_chain"])) == (200, "Our chain is authoritative", 4)

    other = nodes("m", args=ARGS).start()
    code, doc = other.http("POST", "/connect_node", {"nodes": [node.addr]})
    assert code == 201 and doc["total_nodes"] == [node.addr]
    wait_until(lambda: other.tip() == hashes[-1], 15, "the new peer to sync")


def test_every_error_is_json_with_a_code_and_the_node_survives(nodes):
    node = nodes("n", args=ARGS).start()
    address = node.http("GET", "/wallet")[1]["address"]
    new = "/transactions/new"

    code, doc = node.http("GET", "/no/such/path")
    assert code == 404 and doc["code"] == "not-found"
    assert_error(node.http("POST", "/chain", {}), 405, "method-not-allowed")
    assert_error(node.http("GET", new), 405, "method-not-allowed")
    assert node.http("HEAD", "/mine")[0] == 405 and node.height() == 0  # a HEAD never mines
    assert_error(node.http("POST", new, b"x" * (limits.HTTP_MAX_BODY_BYTES + 1)), 413, "body-too-large")
    assert_error(node.http("POST", new, b"{not json"), 400, "bad-json")
    assert_error(node.http("POST", new, b"\xff\xfe"), 400, "bad-json")
    assert_error(node.http("POST", new, b"[" * 200_000), 400, "bad-json")  # too deep to parse
    assert_error(node.http("POST", new, [1, 2]), 400, "bad-json")
    assert_error(node.http("POST", new, {"sender": address, "amount": 1}), 400, "missing-field")
    assert_error(node.http("POST", new, {"recipient": OTHER}), 400, "missing-field")
    assert_error(node.http("POST", new, {"sender": OTHER, "recipient": OTHER, "amount": 1}), 403, "not-our-key")
    assert_error(node.http("POST", new, {"recipient": "Alice", "amount": 1}), 400, "bad-recipient")
    for amount in (0, -1, 1.5, "5", True, None, 2**64):
        assert_error(
            node.http("POST", new, {"recipient": OTHER, "amount": amount}),
            400,
            "bad-amount" if amount is not None else "missing-field",
        )
    assert_error(node.http("POST", new, {"recipient": OTHER, "amount": 1, "fee": -1}), 400, "bad-fee")
    assert_error(node.http("POST", new, {"recipient": OTHER, "amount": 5}), 400, "insufficient-funds")

    stranger = Wallet.from_seed(bytes(32))
    tx = pay(stranger, OTHER, 5)
    body = {
        "sender": tx.sender,
        "recipient": OTHER,
        "amount": 5,
        "fee": 0,
        "nonce": 0,
        "pubkey": tx.pubkey.hex(),
        "signature": tx.signature.hex(),
    }
    assert_error(node.http("POST", "/transactions", body), 400, "insufficient-funds")
    assert node.http("GET", "/mine")[0] == 200  # funds for a transaction that fails only its signature
    tx = pay(Wallet.load(node.data_dir / "wallet.json"), OTHER, 1)
    forged = {
        **body,
        "sender": tx.sender,
        "recipient": "cd" * 20,
        "amount": 1,
        "pubkey": tx.pubkey.hex(),
        "signature": tx.signature.hex(),
    }
    assert_error(node.http("POST", "/transactions", forged), 400, "tx-bad-signature")
    assert_error(node.http("POST", "/transactions", {**body, "pubkey": "zz"}), 400, "tx-malformed")
    assert_error(node.http("POST", "/transactions", {**body, "amount": -4}), 400, "tx-malformed")
    assert_error(node.http("POST", "/transactions", {"sender": tx.sender}), 400, "missing-field")

    for body in ({}, {"nodes": []}, {"nodes": "127.0.0.1:1"}):
        code, doc = node.http("POST", "/nodes/register", body)
        assert (code, doc["error"]) == (400, "Error: Please supply a valid list of nodes")
    for entry in ("nohost", "http://127.0.0.1", "127.0.0.1:99999", 7, "http://[::1"):
        assert_error(node.http("POST", "/nodes/register", {"nodes": [entry]}), 400, "bad-nodes")
    assert_error(node.http("POST", "/nodes/register", {"nodes": ["127.0.0.1:1"] * 65}), 400, "bad-nodes")

    assert_error(node.http("GET", "/balance/xyz"), 400, "bad-address")
    assert_error(node.http("GET", "/blocks/00"), 400, "bad-hash")
    assert_error(node.http("GET", "/blocks/" + "00" * 32), 404, "unknown-block")
    for query in ("from=-1", "limit=x", "from=1e3"):
        assert_error(node.http("GET", f"/chain?{query}"), 400, "bad-query")

    with socket.create_connection(("127.0.0.1", node.http_port), timeout=10) as s:  # not HTTP at all
        s.sendall(b"\x00\xff GARBAGE \r\n\r\n" * 100)
        s.recv(1024)
    assert node.status() is not None and node.proc is not None and node.proc.poll() is None


class SmallWindow(http.client.HTTPConnection):
    """A client with a tiny receive buffer: the node cannot push a long answer ahead of it."""

    def connect(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(self.timeout)
        self.sock.connect((self.host, self.port))


def fat_chain(length: int, fat: int) -> list[Block]:
    """``length`` blocks whose last ``fat`` hold 1,000 transactions each: over 5 MB of /chain
    JSON, more than loopback TCP buffers hold (4 MiB), so a slow reader keeps it streaming."""
    blocks = list(main_chain()[: length - fat])
    for i in range(fat):
        txs = [pay(FUNDED, FUNDED.address, 1, nonce=1000 * i + n) for n in range(1000)]
        blocks.append(next_block(blocks[-1].header, txs))
    return blocks


def test_thousand_block_chain_streams_while_the_node_keeps_answering(nodes):
    node = nodes("n", args=ARGS)
    blocks = fat_chain(1000, 12)
    write_store(node, blocks)
    node.start()
    hashes = [TEST_PARAMS.network_id.hex()] + [b.hash.hex() for b in blocks]

    conn = SmallWindow("127.0.0.1", node.http_port, timeout=30)
    try:
        conn.request("GET", "/chain")
        resp = conn.getresponse()
        assert resp.status == 200
        first = resp.read(4096)
        st = node.status()
        assert st is not None and st["height"] == 1000
        assert st["http_streaming"] == ["/chain"]  # answered while /chain is still being written
        doc = json.loads(first + resp.read())
    finally:
        conn.close()
    assert doc["length"] == 1001 and [b["hash"] for b in doc["chain"]] == hashes
    assert [b["index"] for b in doc["chain"]] == list(range(1, 1002))

    paged: list[str] = []
    start: int | None = 0
    while start is not None:
        code, page = node.http("GET", f"/chain?from={start}&limit=100000")
        assert code == 200 and len(page["chain"]) <= limits.HTTP_CHAIN_PAGE_MAX
        paged += [b["hash"] for b in page["chain"]]
        start = page["next"]
    assert paged == hashes
    assert node.http("GET", "/is_valid")[1]["valid"] is True
    assert node.http("GET", f"/balance/{FUNDED.address}")[1]["balance"] == 1000
