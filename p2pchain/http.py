"""The HTTP shim: the endpoints of the "build a blockchain in Python" tutorials (dvf/blockchain's
/mine, /transactions/new, /chain, /nodes/register, /nodes/resolve, and the second tutorial's
names as aliases), plus /status, /balance, /wallet and /blocks. aiohttp runs on the node's own
event loop and every endpoint is a call into the node, never a second copy of its logic.

Tutorial shapes: a block's ``index`` is 1-based (height + 1), ``proof`` is its nonce,
``timestamp`` is Unix seconds as a float. Every error is ``{"error": "...", "code": "..."}``.
A whole-chain answer (/chain, /nodes/resolve) is streamed in chunks, so a long chain never
holds the event loop: peers are served between chunks.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web

from p2pchain import limits, record
from p2pchain.chainjson import RecentBlocksJson, block_json, block_text
from p2pchain.connmgr import parse_addr
from p2pchain.errors import MempoolCode, MempoolError, ProtocolError, RuleError
from p2pchain.explorer import PREFIX as EXPLORER_PREFIX
from p2pchain.explorer import make_explorer, wants_html
from p2pchain.http_auth import AuthSettings, Guard, check
from p2pchain.keys import is_address
from p2pchain.ledger.tx import Tx, make_tx

if TYPE_CHECKING:
    from p2pchain.chain import Chain
    from p2pchain.node import Node

log = logging.getLogger(__name__)
NODE_KEY: web.AppKey[Node] = web.AppKey("node")
STREAMING_KEY: web.AppKey[list[str]] = web.AppKey("streaming")  # paths of chain answers being written
GUARD_KEY: web.AppKey[Guard] = web.AppKey("guard")
HEAVY_KEY: web.AppKey[list[int]] = web.AppKey("heavy")  # whole-chain requests running (a one-item counter)
RECENT_KEY: web.AppKey[RecentBlocksJson] = web.AppKey("recent")  # the JSON of the blocks connected last
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
NODES_ERROR = "Error: Please supply a valid list of nodes"  # the tutorial's words


class ApiError(Exception):
    """An answer of ``status`` with ``{"error": message, "code": code}``."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def json_response(doc: Any, *, status: int = 200, headers: Any = None) -> web.Response:
    """``doc`` as JSON ending in a newline (as Flask's jsonify does), so curl output stays readable."""
    return web.json_response(doc, status=status, headers=headers, dumps=lambda d: json.dumps(d) + "\n")


def error_response(status: int, message: str, code: str, headers: Any = None) -> web.Response:
    return json_response({"error": message, "code": code}, status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as JSON, aiohttp's own 404/405/413 included; a bug answers 500, never crashes."""
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.message, e.code)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        if isinstance(e, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(e.allowed_methods))
            message, code = f"{request.method} is not allowed on {request.path}: use {allowed}", "method-not-allowed"
        elif isinstance(e, web.HTTPNotFound):
            message, code = f"no endpoint {request.path}: GET / lists them", "not-found"
        elif isinstance(e, web.HTTPRequestEntityTooLarge):
            message = f"request body is over {limits.HTTP_MAX_BODY_BYTES} bytes: send less"
            code = "body-too-large"
        else:
            message, code = e.text or e.reason, "http-error"
        headers = {k: v for k, v in e.headers.items() if k == "Allow"}
        return error_response(e.status, message, code, headers)
    except Exception:
        log.exception("HTTP %s %s failed", request.method, request.path)
        return error_response(500, "internal error: see the node's log", "internal")


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The endpoints that act need the node's token (p2pchain/http_auth.py says when)."""
    denial = check(request.app[GUARD_KEY], request)
    if denial is not None:
        return error_response(denial.status, denial.message, denial.code, denial.headers)
    return await handler(request)


# --- whole-chain answers ----------------------------------------------------------------------
def _members(doc: dict[str, Any]) -> str:
    """The members of a JSON object without its braces."""
    return json.dumps(doc)[1:-1]


STREAM_READ_BLOCKS = 64  # blocks a streamed chain reads from the store in one query, between writes
JSON_TYPE = "application/json; charset=utf-8"


async def stream_chain(
    request: web.Request, hashes: Sequence[bytes], key: str, head: dict[str, Any], tail: dict[str, Any]
) -> web.StreamResponse:
    """Answer ``{**head, key: [blocks], **tail}`` with the blocks of ``hashes`` (a snapshot of the
    best chain, so the list links even if a reorg happens meanwhile). An answer longer than
    HTTP_STREAM_CHUNK_BYTES is streamed in chunks of about that size, and the event loop serves
    peers and other requests between them; a shorter one goes in one piece (with its length:
    one write, not three). The blocks connected last come from memory (RecentBlocksJson), older
    ones from the store."""
    chain = request.app[NODE_KEY].chain
    recent = request.app[RECENT_KEY]
    resp: web.StreamResponse | None = None  # prepared at the first chunk
    parts = ["{", _members(head), ", " if head else "", json.dumps(key), ": ["]
    size = 0
    streaming = request.app[STREAMING_KEY]
    streaming.append(request.path)
    try:
        for start in range(0, len(hashes), STREAM_READ_BLOCKS):
            run = hashes[start : start + STREAM_READ_BLOCKS]
            texts = recent.texts(run)
            missing = [h for h, text in zip(run, texts, strict=True) if text is None]
            if missing:
                stored = iter(_stored_texts(chain, missing))  # one query for the run
                texts = [text if text is not None else next(stored) for text in texts]
            for i, text in enumerate(texts, start=start):
                assert text is not None
                parts += [", " if i else "", text]
                size += len(text)
            if size >= limits.HTTP_STREAM_CHUNK_BYTES:
                if resp is None:
                    resp = web.StreamResponse(headers={"Content-Type": JSON_TYPE})
                    await resp.prepare(request)
                await resp.write("".join(parts).encode())
                parts, size = [], 0
                await asyncio.sleep(0)  # write() yields only when the socket is full
        parts += ["]", ", " if tail else "", _members(tail), "}\n"]
        if resp is None:
            return web.Response(body="".join(parts).encode(), headers={"Content-Type": JSON_TYPE})
        await resp.write("".join(parts).encode())
        await resp.write_eof()
    except ConnectionError:
        log.debug("HTTP client left during %s", request.path)
    finally:
        streaming.remove(request.path)
    assert resp is not None
    return resp


def _stored_texts(chain: Chain, hashes: list[bytes]) -> list[str]:
    """The JSON text of the stored blocks of ``hashes`` (best-chain blocks: the store holds them)."""
    blocks = chain.store.get_blocks(hashes)
    if len(blocks) != len(hashes):
        missing = next(h for h, b in zip(hashes, [*blocks, None], strict=False) if b is None or b.hash != h)
        raise RuntimeError(f"best-chain block {missing.hex()} is missing from the store")
    return [block_text(block) for block in blocks]


# --- request parsing ------------------------------------------------------------------------
async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; 413 over the size limit, 400 if it is not a JSON object."""
    raw = await request.read()  # raises HTTPRequestEntityTooLarge past client_max_size
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"body is not valid JSON ({e})", "bad-json") from None
    if not isinstance(doc, dict):
        raise ApiError(400, 'body must be a JSON object, e.g. {"recipient": ..., "amount": 5}', "bad-json")
    return doc


def whole_number(doc: dict[str, Any], key: str, *, default: int | None = None, minimum: int = 0) -> int:
    value = doc.get(key, default)
    if value is None:
        raise ApiError(400, f"missing value: {key}", "missing-field")
    if type(value) is not int or not minimum <= value <= limits.MAX_MONEY:
        raise ApiError(400, f"{key} must be a whole number from {minimum} to {limits.MAX_MONEY}", f"bad-{key}")
    return value


def query_int(request: web.Request, key: str, default: int) -> int:
    text = request.query.get(key)
    if text is None:
        return default
    if not text.isdigit() or len(text) > 18:
        raise ApiError(400, f"?{key}= must be a whole number, not {text!r}", "bad-query")
    return int(text)


def peer_address(entry: object) -> str:
    """A P2P address from a /nodes/register entry: 'host:port', or a URL whose host:port is taken
    (as the tutorial's urlparse does: 'http://127.0.0.1:7001' -> '127.0.0.1:7001')."""
    if not isinstance(entry, str) or len(entry) > limits.MAX_PEER_ADDR_CHARS + 16:
        raise ApiError(400, f"{NODES_ERROR}: {entry!r} is not a host:port string", "bad-nodes")
    text = entry.strip()
    if "//" in text:
        try:
            parts = urlsplit(text)
            host, port = parts.hostname, parts.port
        except ValueError as e:
            raise ApiError(400, f"{NODES_ERROR}: {entry!r} is not a URL ({e})", "bad-nodes") from None
        if not host or port is None:
            raise ApiError(400, f"{NODES_ERROR}: {entry!r} has no host:port (e.g. http://127.0.0.1:7001)", "bad-nodes")
        text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        parse_addr(text)
    except ValueError as e:
        raise ApiError(400, f"{NODES_ERROR}: {e}", "bad-nodes") from None
    return text


# --- the tutorial's endpoints ---------------------------------------------------------------
async def mine(request: web.Request) -> web.Response:
    """GET /mine: one block now, mined in the miner processes, gossiped to every peer."""
    block = await request.app[NODE_KEY].mine_one()
    return json_response({"message": "New Block Forged", **block_json(block)})


def submit(node: Node, tx: Tx) -> web.Response:
    """Into the mempool (and out to every peer) or a 400 that says why."""
    try:
        node.submit_tx(tx)
    except MempoolError as e:
        cause = e.__cause__
        code = cause.code.value if isinstance(cause, RuleError) else e.code.value
        if e.code is MempoolCode.INSUFFICIENT_FUNDS:
            message = f"insufficient funds: {e.description}"
        else:
            message = f"transaction refused ({code}): {cause.description if isinstance(cause, RuleError) else e}"
        raise ApiError(503 if e.code is MempoolCode.FULL else 400, message, code) from None
    return json_response(
        {
            "message": f"Transaction will be added to Block {node.chain.height + 2}",
            "txid": tx.txid.hex(),
            "nonce": tx.nonce,
        },
        status=201,
    )


async def new_transaction(request: web.Request) -> web.Response:
    """POST /transactions/new {sender, recipient, amount[, fee]}: signed with the node's wallet."""
    node = request.app[NODE_KEY]
    doc = await read_json(request)
    if "recipient" not in doc and "receiver" in doc:  # the second tutorial's name
        doc["recipient"] = doc["receiver"]
    missing = [k for k in ("recipient", "amount") if k not in doc]
    if missing:
        raise ApiError(400, f"Missing values: {', '.join(missing)}", "missing-field")
    ours = node.wallet.address
    sender = doc.get("sender")
    if sender is not None and sender != ours:
        raise ApiError(
            403,
            f"this node holds no key for sender {sender!r}: it signs only for its own address {ours}. "
            "Sign the transaction yourself and POST it to /transactions",
            "not-our-key",
        )
    recipient = doc["recipient"]
    if not is_address(recipient):
        raise ApiError(
            400, f"recipient must be an address (40 lowercase hex digits), not {recipient!r}", "bad-recipient"
        )
    amount = whole_number(doc, "amount", minimum=1)
    fee = whole_number(doc, "fee", default=0)
    tx = make_tx(node.wallet, recipient, amount, fee, node.mempool.next_nonce(ours), node.params.network_id)
    return submit(node, tx)


async def signed_transaction(request: web.Request) -> web.Response:
    """POST /transactions {sender, recipient, amount, fee, nonce, pubkey, signature}: a
    transaction signed elsewhere (the protocol's fields; hex for the two byte strings)."""
    doc = await read_json(request)
    fields = ("sender", "recipient", "amount", "fee", "nonce", "pubkey", "signature")
    missing = [k for k in fields if k not in doc]
    if missing:
        raise ApiError(400, f"Missing values: {', '.join(missing)}", "missing-field")
    try:
        pubkey, signature = (bytes.fromhex(doc[k]) for k in ("pubkey", "signature"))
        tx = Tx.from_wire([doc["sender"], doc["recipient"], doc["amount"], doc["fee"], doc["nonce"], pubkey, signature])
    except (TypeError, ValueError, ProtocolError) as e:
        raise ApiError(400, f"malformed transaction: {e}", "tx-malformed") from None
    return submit(request.app[NODE_KEY], tx)


async def full_chain(request: web.Request) -> web.StreamResponse:
    """GET /chain: the whole best chain, streamed; ?from=H&limit=N: one page of it."""
    main = list(request.app[NODE_KEY].chain.main)  # a snapshot: the answer links even across a reorg
    if "from" not in request.query and "limit" not in request.query:
        return await stream_chain(request, main, "chain", {}, {"length": len(main)})
    start = query_int(request, "from", 0)
    limit = min(query_int(request, "limit", limits.HTTP_CHAIN_PAGE_MAX), limits.HTTP_CHAIN_PAGE_MAX)
    page = main[start : start + limit]
    after = start + len(page)
    tail = {"length": len(main), "from": start, "next": after if page and after < len(main) else None}
    return await stream_chain(request, page, "chain", {}, tail)


async def register_nodes(request: web.Request) -> web.Response:
    """POST /nodes/register {nodes: [...]}: keep a connection to each (redialled if it drops)."""
    node = request.app[NODE_KEY]
    doc = await read_json(request)
    entries = doc.get("nodes")
    if not isinstance(entries, list) or not entries:
        raise ApiError(400, NODES_ERROR, "bad-nodes")
    if len(entries) > limits.HTTP_REGISTER_MAX:
        raise ApiError(400, f"{NODES_ERROR}: at most {limits.HTTP_REGISTER_MAX} at a time", "bad-nodes")
    addrs = list(dict.fromkeys(peer_address(e) for e in entries))
    cm = node.connmgr
    refused = [addr for addr in addrs if not cm.connect(addr, registered=True)]
    if refused:
        why = f"{len(refused)} node(s) not added: the node keeps at most {limits.MAX_PERSISTENT_PEERS}"
        raise ApiError(409, why, "too-many-nodes")

    def pending() -> list[str]:
        live = {a for p in cm.ready for a in (p.dialed, p.listen_addr) if a}
        return [a for a in addrs if a not in live and a not in cm.self_addrs]

    await node.changed.wait_for(lambda: not pending(), limits.HTTP_REGISTER_WAIT_S)  # woken by each handshake
    waiting = pending()
    total = sorted({*cm.persistent, *(p.listen_addr for p in cm.ready if p.listen_addr)} - set(cm.self_addrs))
    answer: dict[str, Any] = {"message": "New nodes have been added", "total_nodes": total, "pending": waiting}
    if waiting:
        answer["hint"] = "not connected yet (the node keeps retrying): give each node's P2P --port, not its --http-port"
    return json_response(answer, status=201)


async def resolve(request: web.Request, kept_key: str) -> web.StreamResponse:
    """GET /nodes/resolve: ask every peer for its best chain; the most-work valid one wins."""
    node = request.app[NODE_KEY]
    async with request.app[RECENT_KEY].waiting_answer():  # the blocks it brings are rendered as they connect
        replaced = await node.resolve()
    main = list(node.chain.main)
    if replaced:
        return await stream_chain(
            request, main, "new_chain", {"message": "Our chain was replaced"}, {"length": len(main)}
        )
    head = {"message": "Our chain is authoritative"}
    return await stream_chain(request, main, kept_key, head, {"length": len(main)})


# --- the second tutorial's extra, and ours ------------------------------------------------------
async def is_valid(request: web.Request) -> web.Response:
    """GET /is_valid: every block was validated when it arrived; this re-checks that the stored
    best chain links from genesis and that each block meets its proof of work."""
    chain = request.app[NODE_KEY].chain
    main = list(chain.main)
    valid = main[0] == chain.params.network_id
    for height in range(1, len(main)):
        entry = chain.entry(main[height])
        header = entry.header if entry is not None else None
        if header is None or header.prev_hash != main[height - 1] or not header.meets_target():
            valid = False
            break
        if height % 4096 == 0:
            await asyncio.sleep(0)  # a long chain does not hold the event loop
    message = (
        "All good. The Blockchain is valid." if valid else "Houston, we have a problem. The Blockchain is not valid."
    )
    return json_response({"message": message, "valid": valid, "length": len(main)})


async def get_status(request: web.Request) -> web.Response:
    """GET /status: the node's, plus the chain answers this shim is writing now."""
    return json_response({**request.app[NODE_KEY].status(), "http_streaming": request.app[STREAMING_KEY]})


METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text format


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: the node's metrics for Prometheus (p2pchain/metrics.py; docs/operations.md)."""
    return web.Response(body=request.app[NODE_KEY].metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})


def account_json(node: Node, address: str) -> dict[str, Any]:
    acct = node.chain.get_account(address)
    return {
        "address": address,
        "balance": acct.balance,
        "nonce": acct.nonce,
        "pending_balance": node.mempool.pending_balance(address),
        "next_nonce": node.mempool.next_nonce(address),
    }


async def balance(request: web.Request) -> web.Response:
    address = request.match_info["address"]
    if not is_address(address):
        raise ApiError(400, f"{address!r} is not an address (40 lowercase hex digits)", "bad-address")
    return json_response(account_json(request.app[NODE_KEY], address))


async def wallet(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    return json_response({**account_json(node, node.wallet.address), "reward_to": node.reward_to})


async def block_by_hash(request: web.Request) -> web.Response:
    chain = request.app[NODE_KEY].chain
    text = request.match_info["hash"]
    try:
        block_hash = bytes.fromhex(text)
    except ValueError:
        block_hash = b""
    if len(block_hash) != 32:
        raise ApiError(400, f"{text!r} is not a block hash (64 hex digits)", "bad-hash")
    block = chain.get_block(block_hash)
    if block is None:
        raise ApiError(404, f"no block {text} on this node", "unknown-block")
    main = chain.is_main(block_hash)
    confirmations = chain.height - block.height + 1 if main else 0
    return json_response({**block_json(block), "main_chain": main, "confirmations": confirmations})


async def index(request: web.Request) -> web.Response:
    if wants_html(request):  # a browser: the explorer; JSON clients keep the list of endpoints
        raise web.HTTPFound(f"{EXPLORER_PREFIX}/")
    routes = sorted(
        {
            f"{r.method} {r.resource.canonical}"
            for r in request.app.router.routes()
            if r.method != "HEAD" and r.resource and not r.resource.canonical.startswith(EXPLORER_PREFIX)
        }
        | {f"GET {EXPLORER_PREFIX}/"}
    )
    return json_response({"endpoints": routes})


async def redirect(request: web.Request, to: str) -> web.Response:
    raise web.HTTPFound(to)


def heavy(handler: Handler) -> Handler:
    """At most HTTP_HEAVY_MAX of the requests that read or fetch a whole chain (/chain,
    /nodes/resolve and their aliases) run at once; beyond, 503 ``busy`` at once (issue 12: they
    had no cap, and each one streams the whole chain or asks every peer)."""

    async def limited(request: web.Request) -> web.StreamResponse:
        running = request.app[HEAVY_KEY]
        if running[0] >= limits.HTTP_HEAVY_MAX:
            raise ApiError(503, f"busy: {limits.HTTP_HEAVY_MAX} whole-chain requests are running, retry later", "busy")
        running[0] += 1
        try:
            return await handler(request)
        finally:
            running[0] -= 1

    return limited


def make_app(node: Node, guard: Guard) -> web.Application:
    app = web.Application(client_max_size=limits.HTTP_MAX_BODY_BYTES, middlewares=[json_errors, authenticate])
    app[NODE_KEY] = node
    app[GUARD_KEY] = guard
    app[STREAMING_KEY] = []
    app[HEAVY_KEY] = [0]
    app[RECENT_KEY] = recent = RecentBlocksJson(node.params.genesis)
    node.chain.subscribe(recent.on_chain_update)

    async def unsubscribe(app: web.Application) -> None:
        node.chain.unsubscribe(recent.on_chain_update)

    app.on_cleanup.append(unsubscribe)
    get, post = app.router.add_get, app.router.add_post
    get("/", index)
    get("/status", get_status)
    get("/metrics", metrics)
    for path in ("/mine", "/mine_block"):  # GETs that act, as in the tutorials; HEAD must not
        get(path, mine, allow_head=False)
    for path in ("/transactions/new", "/add_transaction"):
        post(path, new_transaction)
    post("/transactions", signed_transaction)
    for path in ("/chain", "/get_chain"):
        get(path, heavy(full_chain))
    for path in ("/nodes/register", "/connect_node"):
        post(path, register_nodes)
    get("/nodes/resolve", heavy(functools.partial(resolve, kept_key="chain")), allow_head=False)
    get("/replace_chain", heavy(functools.partial(resolve, kept_key="actual_chain")), allow_head=False)
    get("/is_valid", is_valid)
    get("/balance/{address}", balance)
    get("/wallet", wallet)
    get("/blocks/{hash}", block_by_hash)
    get(EXPLORER_PREFIX, functools.partial(redirect, to=f"{EXPLORER_PREFIX}/"))
    app.add_subapp(EXPLORER_PREFIX, make_explorer(node))  # read-only HTML pages and their live events
    return app


async def start_http(node: Node, host: str, port: int, auth: AuthSettings | None = None) -> web.AppRunner:
    """Serve the shim on host:port until the runner's cleanup(), which also removes the cookie.
    ``auth`` defaults to auto with a cookie; AuthConfigError if it would leave the shim open."""
    auth = auth or AuthSettings()
    auth.check(host)
    guard = Guard(auth, node.config.data_dir)
    app = make_app(node, guard)

    async def remove_cookie(app: web.Application) -> None:
        guard.close()

    app.on_cleanup.append(remove_cookie)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=limits.HTTP_SHUTDOWN_S)
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    shown = f"[{host}]" if ":" in host else host
    log.info("HTTP shim on http://%s:%d/: %s", shown, port, guard.describe())
    # What a first /nodes/register and /nodes/resolve would otherwise set up on their way (~2.5
    # ms of a 200-block register_sync_200_ms), now: the records their work builds (HELLO's peers,
    # GET_CHAIN, CHAIN, the chain's results; p2pchain/record.py), and the store's thread that
    # commits a sync's batch. A node without the shim keeps doing both at first use (its
    # start-up and memory stay small).
    record.compile_all()
    node.chain.store.start_writer()
    return runner
