"""The block explorer: read-only HTML pages under /explorer/ on the HTTP shim, and their live
event stream.

Pages are rendered here, on the server, so they work with curl and without JavaScript; the
script in explorer_static/ listens to /explorer/events (Server-Sent Events from the node's
EventHub) and refreshes the page's live part when a tip, a reorganisation or a transaction
arrives. Everything that comes from the chain, the mempool or a peer goes through ``esc``;
every answer carries a Content-Security-Policy that allows only this origin's script and
style, so even a value that slipped through could not run. Nothing here spends, mines or
dials: no token is needed.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from aiohttp import web

from p2pchain import limits
from p2pchain.errors import StoreError
from p2pchain.events import EventHub, TooManyStreams, sse_frame
from p2pchain.keys import is_address
from p2pchain.ledger.block import Block
from p2pchain.ledger.pow import difficulty_bits
from p2pchain.ledger.tx import Tx
from p2pchain.node import USER_AGENT

if TYPE_CHECKING:
    from p2pchain.chain import Chain, Entry
    from p2pchain.node import Node

log = logging.getLogger(__name__)
NODE: web.AppKey[Node] = web.AppKey("explorer_node")
INDEXER: web.AppKey[AddressIndexer] = web.AppKey("explorer_indexer")
PREFIX = "/explorer"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
STATIC = {  # the only files served from explorer_static/, with their types
    "favicon.svg": "image/svg+xml",
    "explorer.css": "text/css",
    "explorer.js": "text/javascript",
    "swarm.css": "text/css",  # the swarm map of scripts/swarm.py --web
    "swarm.js": "text/javascript",
}


def esc(value: object) -> str:
    """Text for HTML content or a quoted attribute."""
    return html.escape(str(value), quote=True)


def link(path: str, text: object, cls: str = "") -> str:
    """An ``<a>`` to ``PREFIX + path`` (each path segment is URL-quoted) showing ``text``."""
    href = PREFIX + quote(path, safe="/?=&")
    attr = f' class="{esc(cls)}"' if cls else ""
    return f'<a href="{esc(href)}"{attr}>{esc(text)}</a>'


def short(hex_text: str, n: int = 16) -> str:
    return hex_text if len(hex_text) <= n else hex_text[:n] + "…"


def utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def age(ms: int) -> str:
    """'12 s', '3 min', '2 h', '5 d': how long ago ``ms`` (Unix ms) was."""
    s = max(0, int(time.time() - ms / 1000))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s // size} {unit}"
    return f"{s} s"


def age_html(ms: int) -> str:
    """``age`` in a span the script keeps counting (explorer.js ticks every element with data-ms)."""
    return f'<span class="age" data-ms="{int(ms)}">{esc(age(ms))}</span>'


def si(value: float, unit: str) -> str:
    for prefix, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def coins(amount: int) -> str:
    return f"{amount:,} coin{'' if amount == 1 else 's'}"


def address_html(address: str) -> str:
    """An address as a link, or the coinbase's sender as words (any other non-address as text)."""
    if address == "0":
        return '<span class="muted">coinbase (new coins)</span>'
    return link(f"/address/{address}", address, "mono") if is_address(address) else f"<code>{esc(address)}</code>"


def table(headings: Iterable[str], rows: Iterable[str], empty: str, cls: str = "") -> str:
    body = "".join(rows)
    if not body:
        return f'<p class="muted">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headings)
    return f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def fields(pairs: Iterable[tuple[str, str]]) -> str:
    """A definition list; the values are HTML already (escaped by the caller)."""
    return '<dl class="fields">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


# --- page frame ---------------------------------------------------------------------------
def page(node: Node, title: str, content: str, *, status: int = 200, live: str = "tip") -> web.Response:
    """A whole page: header with search, the live part (``content``), the event feed. ``live``
    tells the script which events refresh this page ("tip", or "tip tx" for pages that list
    pooled transactions)."""
    tip = node.chain.tip
    nav = " ".join(link(p, t) for p, t in (("/", "Blocks"), ("/mempool", "Mempool"), ("/peers", "Peers")))
    text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} · p2pchain explorer</title>
<link rel="icon" href="{PREFIX}/static/favicon.svg">
<link rel="stylesheet" href="{PREFIX}/static/explorer.css">
<script src="{PREFIX}/static/explorer.js" defer></script>
</head>
<body data-tip="{esc(tip.hash.hex())}" data-live="{esc(live)}" data-events="{PREFIX}/events">
<header><a class="brand" href="{PREFIX}/">p2pchain explorer</a><nav>{nav}</nav>
<form action="{PREFIX}/search" method="get" role="search">
<input type="search" name="q" id="q" placeholder="height, block hash, txid or address" aria-label="search">
<button type="submit">Search</button></form>
<span id="conn" class="conn">static page</span></header>
<div id="banner" class="banner" role="status" hidden></div>
<div class="wrap"><main id="live">
<h1>{esc(title)}</h1>
{content}
</main>
<aside><h2>Live</h2><ol id="feed"><li class="muted">live updates need JavaScript</li></ol></aside></div>
<footer>node {esc(USER_AGENT)} · height {tip.height} · network {esc(node.params.network_id.hex()[:12])}…
· read-only</footer>
</body></html>
"""
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def not_found(node: Node, what: str) -> web.Response:
    return page(node, "Not found", f'<p class="error">{esc(what)}</p>', status=404)


def bad_request(node: Node, what: str) -> web.Response:
    return page(node, "Bad request", f'<p class="error">{esc(what)}</p>', status=400)


# --- shared pieces ------------------------------------------------------------------------
def hash_rate(node: Node) -> float | None:
    """Hashes a second the network did over the last EXPLORER_BLOCKS blocks (their work over
    their time span), or None while there is no span to measure."""
    chain = node.chain
    window = min(limits.EXPLORER_BLOCKS, chain.height - 1)  # not from genesis: its time is fixed
    if window < 1:
        return None
    tip = chain.tip
    old = chain.entry(chain.main[chain.height - window])
    if old is None or tip.header.timestamp <= old.header.timestamp:
        return None
    return (tip.work - old.work) * 1000 / (tip.header.timestamp - old.header.timestamp)


def block_rows(blocks: Iterable[Block]) -> Iterable[str]:
    for b in blocks:
        h = b.hash.hex()
        yield (
            f'<tr data-key="{esc(h)}"><td>{link(f"/block/{b.height}", b.height)}</td>'
            f"<td>{link(f'/block/{h}', short(h, 24), 'mono')}</td>"
            f"<td>{esc(utc(b.header.timestamp))}</td><td>{age_html(b.header.timestamp)} ago</td>"
            f"<td>{len(b.txs)}</td><td>{b.size:,} B</td></tr>"
        )


def tx_rows(txs: Iterable[tuple[Tx, str]], perspective: str | None = None) -> Iterable[str]:
    """Rows of (tx, where: HTML of its block or status); ``perspective``: an address whose
    in/out column is shown."""
    for tx, where in txs:
        t = tx.txid.hex()
        direction = ""
        if perspective is not None:
            out = tx.sender == perspective
            inward = tx.recipient == perspective
            word = "self" if out and inward else "out" if out else "in"
            direction = f'<td class="dir {word}">{word}</td>'
        yield (
            f'<tr data-key="{esc(t)}"><td>{link(f"/tx/{t}", short(t), "mono")}</td>{direction}'
            f"<td>{address_html(tx.sender)}</td><td>{address_html(tx.recipient)}</td>"
            f'<td class="num">{esc(coins(tx.amount))}</td><td class="num">{tx.fee}</td><td>{where}</td></tr>'
        )


def pager(path: str, page_no: int, has_more: bool, newer: str = "newer", older: str = "older") -> str:
    parts = []
    if page_no > 0:
        parts.append(link(f"{path}?{urlencode({'page': page_no - 1})}", f"← {newer}"))
    parts.append(f"page {page_no + 1}")
    if has_more:
        parts.append(link(f"{path}?{urlencode({'page': page_no + 1})}", f"{older} →"))
    return f'<p class="pager">{" · ".join(parts)}</p>'


def page_number(request: web.Request) -> int | None:
    text = request.query.get("page", "0")
    return int(text) if text.isdigit() and len(text) <= 9 else None


def confirmations(node: Node, entry: Entry) -> int:
    return node.chain.height - entry.height + 1 if node.chain.is_main(entry.hash) else 0


# --- pages --------------------------------------------------------------------------------
async def home(request: web.Request) -> web.Response:
    node = request.app[NODE]
    chain = node.chain
    status = node.status()
    tip = chain.tip
    rate = status.get("hash_rate")
    rate = rate if isinstance(rate, int | float) else hash_rate(node)
    difficulty = status.get("difficulty")
    target = status.get("target")
    stats = fields(
        [
            ("height", f'<span id="height">{tip.height}</span>'),
            ("tip", link(f"/block/{tip.hash.hex()}", tip.hash.hex(), "mono")),
            ("tip age", f"{age_html(tip.header.timestamp)} (mined {esc(utc(tip.header.timestamp))})"),
            ("difficulty", f"{esc(difficulty)} bits (leading zero bits a hash needs, on average)"),
            *([("target", f'<code class="mono">{esc(target)}</code>')] if isinstance(target, str) else []),
            *block_time_row(status.get("block_time_ms"), status.get("half_life_ms")),
            ("est. network hash rate", esc(si(rate, "H/s")) if rate is not None else '<span class="muted">—</span>'),
            ("peers", link("/peers", len(status["peers"]))),
            ("mempool", link("/mempool", f"{len(node.mempool)} transaction(s)")),
        ]
    )
    first = max(0, chain.height - limits.EXPLORER_BLOCKS + 1)
    blocks = [b for b in (chain.block_at(h) for h in range(chain.height, first - 1, -1)) if b is not None]
    latest = table(("height", "hash", "time", "age", "txs", "size"), block_rows(blocks), "no blocks", "blocks")
    return page(node, "Blocks", f"{stats}<h2>Latest blocks</h2>{latest}", live="tip tx")


def hash32(text: str) -> bytes | None:
    """A block hash or txid from its 64 hex digits; None for anything else."""
    if len(text) != 64:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def block_time_row(block_time_ms: object, half_life_ms: object) -> list[tuple[str, str]]:
    """The network's target spacing, where it retargets (--block-time); nothing at a fixed difficulty."""
    if not isinstance(block_time_ms, int) or block_time_ms <= 0:
        return []
    half = f", half-life {half_life_ms / 1000:g} s" if isinstance(half_life_ms, int) and half_life_ms > 0 else ""
    return [("block time", f"{block_time_ms / 1000:g} s target (retargeted every block{esc(half)})")]


def target_row(target: object) -> list[tuple[str, str]]:
    """The header's full target, where the ledger has one (a compact target, not a bit count)."""
    return [("target", f'<code class="mono">{int(target):064x}</code>')] if isinstance(target, int) else []


def find_block(node: Node, ref: str) -> Block | None:
    chain = node.chain
    if ref.isdigit() and len(ref) <= 12:
        return chain.block_at(int(ref))
    block_hash = hash32(ref)
    return chain.get_block(block_hash) if block_hash is not None else None


async def block_page(request: web.Request) -> web.Response:
    node = request.app[NODE]
    chain = node.chain
    ref = request.match_info["ref"]
    page_no = page_number(request)
    if page_no is None:
        return bad_request(node, "?page= must be a whole number")
    block = find_block(node, ref)
    if block is None:
        return not_found(node, f"no block {ref!r} on this node (a height on the best chain, or a 64-digit hash)")
    entry = chain.entry(block.hash)
    assert entry is not None
    h = block.header
    main = chain.is_main(block.hash)
    if main:
        state = f'<span class="ok">on the best chain</span>, {confirmations(node, entry)} confirmation(s)'
        child = chain.main[h.height + 1] if h.height < chain.height else None
        children = [child] if child is not None else []
    else:
        state = '<span class="warn">on a side branch (not on the best chain)</span>, 0 confirmations'
        children = [c.hash for c in chain.index.values() if c.header.prev_hash == block.hash][:8]
    parent = (
        link(f"/block/{h.prev_hash.hex()}", h.prev_hash.hex(), "mono")
        if h.height > 0
        else '<span class="muted">none (genesis)</span>'
    )
    child_html = "<br>".join(link(f"/block/{c.hex()}", c.hex(), "mono") for c in children) or (
        '<span class="muted">none yet</span>'
    )
    info = fields(
        [
            ("hash", f'<code class="mono">{esc(block.hash.hex())}</code>'),
            ("height", str(h.height)),
            ("status", state),
            ("time", f"{esc(utc(h.timestamp))} ({age_html(h.timestamp)} ago)"),
            ("parent", parent),
            ("child", child_html),
            ("merkle root", f'<code class="mono">{esc(h.merkle_root.hex())}</code>'),
            ("difficulty", f"{difficulty_bits(h.target):.2f} bits (bits {h.bits:08x})"),
            *target_row(h.target),
            ("nonce", str(h.nonce)),
            ("version", str(h.version)),
            ("work (chain)", esc(f"{entry.work:,}")),
            ("size", f"{block.size:,} bytes"),
            ("transactions", str(len(block.txs))),
        ]
    )
    per = limits.EXPLORER_PAGE_TXS
    shown = block.txs[page_no * per : (page_no + 1) * per]
    rows = tx_rows((tx, f"#{page_no * per + i}") for i, tx in enumerate(shown))
    txs = table(("txid", "from", "to", "amount", "fee", "position"), rows, "no transactions on this page")
    more = len(block.txs) > (page_no + 1) * per
    nav = pager(f"/block/{block.hash.hex()}", page_no, more, "previous", "next") if more or page_no else ""
    return page(node, f"Block {h.height}", f"{info}<h2>Transactions</h2>{txs}{nav}")


async def tx_page(request: web.Request) -> web.Response:
    node = request.app[NODE]
    chain = node.chain
    text = request.match_info["txid"]
    txid = hash32(text)
    if txid is None:
        return bad_request(node, f"{text!r} is not a transaction id (64 hex digits)")
    tx = node.mempool.get(txid)
    if tx is not None:
        where = [("status", '<span class="warn">in the mempool</span>, waiting for a block'), ("confirmations", "0")]
    else:
        entry = chain.find_tx(txid)
        block = chain.get_block(entry.hash) if entry is not None else None
        tx = next((t for t in block.txs if t.txid == txid), None) if block is not None else None
        if entry is None or tx is None:
            return not_found(node, f"transaction {text} is neither in a best-chain block nor in this node's mempool")
        where = [
            ("status", '<span class="ok">confirmed</span>'),
            ("block", link(f"/block/{entry.hash.hex()}", f"{entry.height} ({short(entry.hash.hex(), 24)})")),
            ("time", esc(utc(entry.header.timestamp))),
            ("confirmations", str(confirmations(node, entry))),
        ]
    info = fields(
        [
            ("txid", f'<code class="mono">{esc(tx.txid.hex())}</code>'),
            *where,
            ("amount", esc(coins(tx.amount))),
            ("fee", esc(coins(tx.fee))),
            ("sender", address_html(tx.sender)),
            ("recipient", address_html(tx.recipient)),
            ("nonce", str(tx.nonce)),
            ("size", f"{tx.size} bytes"),
        ]
    )
    return page(node, "Transaction", info)


async def address_page(request: web.Request) -> web.Response:
    node = request.app[NODE]
    chain = node.chain
    address = request.match_info["address"]
    if not is_address(address):
        return bad_request(node, f"{address!r} is not an address (40 lowercase hex digits)")
    page_no = page_number(request)
    if page_no is None:
        return bad_request(node, "?page= must be a whole number")
    request.app[INDEXER].start()  # from now on the index follows the chain
    chain.index_addresses()  # the last block or batch, if the indexer has not yet
    acct = chain.get_account(address)
    count = chain.address_tx_count(address)
    behind = ""
    if chain.addresses_indexed < chain.height:
        behind = (
            f'<p class="warn">the address index is being built (at height {chain.addresses_indexed} of '
            f"{chain.height}): older transactions show once it is done</p>"
        )
    info = fields(
        [
            ("address", f'<code class="mono">{esc(address)}</code>'),
            ("balance", f'<span id="balance">{esc(coins(acct.balance))}</span> (confirmed)'),
            ("pending balance", esc(coins(node.mempool.pending_balance(address)))),
            ("nonce", str(acct.nonce)),
            ("next nonce", str(node.mempool.next_nonce(address))),
            ("transactions", f"{count} confirmed"),
        ]
    )
    pooled = [t for t in node.mempool.txs() if address in (t.sender, t.recipient)][: limits.EXPLORER_PAGE_TXS]
    pending = ""
    if pooled:
        rows = tx_rows(((t, '<span class="warn">mempool</span>') for t in pooled), address)
        pending = "<h2>Pending</h2>" + table(("txid", "", "from", "to", "amount", "fee", "block"), rows, "")
    per = limits.EXPLORER_PAGE_TXS
    history = chain.address_history(address, page_no * per, per)
    rows = tx_rows(((t, link(f"/block/{e.hash.hex()}", e.height)) for e, t in history), address)
    confirmed = table(("txid", "", "from", "to", "amount", "fee", "block"), rows, "no confirmed transactions", "txs")
    more = count > (page_no + 1) * per
    nav = pager(f"/address/{address}", page_no, more) if more or page_no else ""
    history_html = f"<h2>Transactions, newest first</h2>{behind}{confirmed}{nav}"
    return page(node, "Address", f"{info}{pending}{history_html}", live="tip tx")


async def mempool_page(request: web.Request) -> web.Response:
    node = request.app[NODE]
    txs = node.mempool.txs()
    shown = txs[: limits.EXPLORER_PAGE_TXS * 4]
    info = fields([("transactions", str(len(txs))), ("size", f"{node.mempool.bytes:,} bytes")])
    rows = tx_rows((t, f"nonce {t.nonce}") for t in shown)
    listing = table(("txid", "from", "to", "amount", "fee", "nonce"), rows, "the mempool is empty", "txs")
    note = f'<p class="muted">the {len(shown)} highest-fee of {len(txs)}</p>' if len(shown) < len(txs) else ""
    return page(node, "Mempool", f"{info}<h2>Highest fee first</h2>{listing}{note}", live="tip tx")


async def peers_page(request: web.Request) -> web.Response:
    node = request.app[NODE]
    peers = [p for p in node.connmgr.ready if p.listen_addr]  # nodes; clients (the CLI's queries) are counted
    rows = (
        f"<tr><td><code>{esc(p.addr)}</code></td><td>{'inbound' if p.inbound else 'outbound'}</td>"
        f"<td>{esc(p.hello.agent if p.hello else '')}</td><td>{p.best_height}</td>"
        f'<td class="num">{p.bytes_sent:,}</td><td class="num">{p.bytes_received:,}</td></tr>'
        for p in peers
    )
    headings = ("address", "direction", "agent", "height", "bytes sent", "bytes received")
    listing = table(headings, rows, "no peers", "peers")
    clients = len(node.connmgr.ready) - len(peers)
    more = f'<p class="muted">plus {clients} client connection(s)</p>' if clients else ""
    return page(node, "Peers", f"{listing}{more}")


async def search(request: web.Request) -> web.Response:
    """A height, a block hash, a txid or an address: redirected to its page, else a page that
    says what was not found."""
    node = request.app[NODE]
    chain = node.chain
    q = request.query.get("q", "").strip().lower()[:200]
    target: str | None = None
    if q.isdigit() and len(q) <= 12:
        target = f"/block/{int(q)}" if int(q) <= chain.height else None
    elif is_address(q):
        target = f"/address/{q}"
    elif (key := hash32(q)) is not None:
        if chain.get_block(key) is not None:
            target = f"/block/{q}"
        elif key in node.mempool or chain.find_tx(key) is not None:
            target = f"/tx/{q}"
    if target is not None:
        raise web.HTTPSeeOther(PREFIX + target, headers=SECURITY_HEADERS)
    hint = "a height (0 to the tip's), a 64-digit block hash or txid, or a 40-digit address"
    return page(node, "Search", f'<p class="error">nothing found for “{esc(q)}”: search for {hint}</p>', status=404)


async def events(request: web.Request) -> web.StreamResponse:
    """GET /explorer/events: Server-Sent Events. First a ``hello`` with the current tip (a page
    that reconnects refreshes if it shows another), then ``tip``, ``reorg`` and ``txs`` events as
    they happen (``txs``: new mempool transactions, batched)."""
    node = request.app[NODE]
    tip = node.chain.tip
    hello = sse_frame("hello", {"height": tip.height, "hash": tip.hash.hex(), "mempool": len(node.mempool)})
    return await serve_events(request, node.events, hello)


async def serve_events(request: web.Request, hub: EventHub, first: bytes) -> web.StreamResponse:
    """Stream ``hub``'s events to one browser: ``first`` (a frame that lets a page catch up),
    then every event published, and a comment line after EVENT_KEEPALIVE_S of quiet. A stream
    that falls EVENT_QUEUE_MAX events behind, or whose socket does not take a write within
    EVENT_WRITE_TIMEOUT_S, is ended; the browser reconnects after EVENT_RETRY_MS. 503 when
    EVENT_STREAMS_MAX are open."""
    try:
        stream = hub.open()
    except TooManyStreams as e:
        return web.Response(text=f"{e}\n", status=503, headers={"Retry-After": "5"})
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
            **SECURITY_HEADERS,
        }
    )
    try:
        await resp.prepare(request)
        await resp.write(f"retry: {limits.EVENT_RETRY_MS}\n\n".encode() + first)
        while True:
            frames = await stream.next(limits.EVENT_KEEPALIVE_S)
            if frames is None:
                break
            async with asyncio.timeout(limits.EVENT_WRITE_TIMEOUT_S):
                await resp.write(b"".join(frames) if frames else b": keepalive\n\n")
    except TimeoutError:
        stream.drop(f"socket took no write within {limits.EVENT_WRITE_TIMEOUT_S:g} s")
    except ConnectionError:
        pass  # the tab was closed
    finally:
        stream.close()
    return resp


def static_file(name: str) -> web.Response | None:
    """One of the STATIC files of explorer_static/ (the explorer's and the swarm map's), or None."""
    if name not in STATIC:
        return None
    data = resources.files("p2pchain").joinpath("explorer_static", name).read_bytes()
    return web.Response(body=data, content_type=STATIC[name], headers={"Cache-Control": "no-cache"})


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return static_file(name) or not_found(request.app[NODE], f"no file {name}")


async def unknown(request: web.Request) -> web.Response:
    return not_found(request.app[NODE], f"no page {request.path}: start at {PREFIX}/")


@web.middleware
async def security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    resp: web.StreamResponse = await handler(request)
    if not resp.prepared:  # a stream (the events) sent its headers, these among them, already
        resp.headers.update(SECURITY_HEADERS)
    return resp


class AddressIndexer:
    """Fills the address index behind the tip, a batch of ADDRINDEX_BATCH_BLOCKS per store
    transaction, waking when the chain moves (a chain listener sets an event; nothing polls).
    It starts at the first address page asked for: a node whose explorer nobody reads never
    pays the index's writes."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self.moved = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.task is None:
            self.chain.subscribe(lambda connected, disconnected: self.moved.set())
            self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                while self.chain.index_addresses():
                    await asyncio.sleep(0)  # the node serves peers and requests between batches
                await self.moved.wait()
                self.moved.clear()
        except StoreError:  # the address page still catches up one batch a request
            log.exception("address indexer stopped")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def address_indexer(app: web.Application) -> AsyncIterator[None]:
    """The indexer's lifetime is the explorer's: stopped when the HTTP shim stops."""
    yield
    await app[INDEXER].stop()


def make_explorer(node: Node) -> web.Application:
    """The explorer as an aiohttp sub-application, for ``app.add_subapp(PREFIX, ...)``."""
    app = web.Application(middlewares=[security_headers])
    app[NODE] = node
    app[INDEXER] = AddressIndexer(node.chain)
    app.cleanup_ctx.append(address_indexer)
    get = app.router.add_get
    get("/", home)
    get("/block/{ref}", block_page)
    get("/tx/{txid}", tx_page)
    get("/address/{address}", address_page)
    get("/mempool", mempool_page)
    get("/peers", peers_page)
    get("/search", search)
    get("/events", events)
    get("/static/{name}", static)
    get("/{tail:.*}", unknown)
    return app


def wants_html(request: web.Request) -> bool:
    """A browser's request (it asks for text/html), not a JSON client's."""
    return "text/html" in request.headers.get("Accept", "")
