"""explorer: the address index kept right across reorgs, and the /explorer/ pages over real
HTTP (no browser: tests/test_explorer_browser.py drives Chromium). Pages answer curl with the
chain's data, escape what they echo, carry a Content-Security-Policy, and the event stream
sends a new tip."""

from __future__ import annotations

import http.client
import re
import socket
import urllib.request
from pathlib import Path
from typing import Any

from harness import NodeProc, wait_until
from ledger_helpers import GENESIS, PARAMS, block_on, branch, feed, main_blocks, pay, wallet

from p2pchain import limits
from p2pchain.chain import Chain
from p2pchain.store import Store

A, B, C = wallet(1), wallet(2), wallet(3)


def history_by_replay(chain: Chain, address: str) -> list[tuple[int, bytes]]:
    """(height, txid) of every best-chain transaction from or to ``address``, newest first."""
    found = []
    for block in main_blocks(chain):
        for pos, tx in enumerate(block.txs):
            if tx.recipient == address or (pos and tx.sender == address):
                found.append((block.height, tx.txid))
    return found[::-1]


def history(chain: Chain, address: str, per_page: int = 2) -> list[tuple[int, bytes]]:
    """Read page after page, as the address page does."""
    out: list[tuple[int, bytes]] = []
    while True:
        page = chain.address_history(address, len(out), per_page)
        out += [(entry.height, tx.txid) for entry, tx in page]
        if len(page) < per_page:
            return out


def index_all(chain: Chain) -> None:
    """What the explorer's indexer does when the chain moves (in batches of 2 here)."""
    for _ in range(100):
        if not chain.index_addresses(2):
            break
    assert chain.addresses_indexed == chain.height


def assert_histories(chain: Chain) -> None:
    for who in (A, B, C):
        assert history(chain, who.address) == history_by_replay(chain, who.address), who.address


def test_address_index_follows_reorgs(tmp_path: Path) -> None:
    # G - a1 - a2 - a3        a1 pays A; a2: A -> B 5; a3 (mined by B): A -> C 1, B -> A 2
    #  \
    #   b1 - b2 - b3 - b4    b1 pays A; b2: A -> C 2: a reorg of 3 blocks, then back to a (a4, a5)
    chain = Chain.open(tmp_path / "chain.sqlite", PARAMS)
    a1 = block_on(GENESIS, miner=A.address)
    a2 = block_on(a1, [pay(A, B, 5)])
    a3 = block_on(a2, [pay(A, C, 1, nonce=1), pay(B, A, 2)], miner=B.address)
    b1 = block_on(GENESIS, miner=A.address, salt=9)
    b2 = block_on(b1, [pay(A, C, 2)], salt=9)
    b3, b4 = branch(b2, 2, salt=9)
    feed(chain, [a1, a2, a3])
    assert chain.addresses_indexed == -1  # filled behind the tip, not in the blocks' commits
    index_all(chain)
    assert_histories(chain)
    assert [h for h, _ in history(chain, B.address)] == [3, 3, 2]  # newest first: coinbase and B -> A, then A -> B
    assert chain.address_tx_count(B.address) == 3

    feed(chain, [b1, b2, b3, b4])  # the reorg takes a1..a3 out of the index in its own transaction
    assert chain.tip.hash == b4.hash and chain.addresses_indexed == 0
    assert history(chain, B.address) == [] and chain.address_tx_count(B.address) == 0
    assert not chain.index_addresses(5)  # b1..b4 in one batch: nothing more to do
    assert_histories(chain)
    assert [h for h, _ in history(chain, C.address)] == [2]

    c1, c2, c3, c4, c5 = branch(a3, 5)
    feed(chain, [c1, c2])  # back to the a branch (a1..a3, c1, c2): a reorg, then indexed up to c1
    assert chain.tip.hash == c2.hash and chain.addresses_indexed == 0
    assert chain.index_addresses(4) and chain.addresses_indexed == 4
    feed(chain, [c3, c4])  # c3, c4 on top: the index is behind (at c1, height 4) and stays so
    assert chain.addresses_indexed == 4
    index_all(chain)
    assert_histories(chain)

    # A reorg while the index is behind takes out only what it covered.
    feed(chain, [c5])  # height 8, not indexed (the index is at c4, height 7)
    d = branch(b4, 5, salt=3)  # b4 + 5 = height 9: more work than c5, the fork at genesis
    feed(chain, d)
    assert chain.tip.hash == d[-1].hash and chain.addresses_indexed == 0
    index_all(chain)
    assert_histories(chain)
    chain.close()

    # A store made before this index (the first layouts) starts it afresh when opened.
    for old_layout in (None, b"1", b"2"):
        store = Store(tmp_path / "chain.sqlite")
        store.db.execute("DELETE FROM meta WHERE key='addrindex'")
        if old_layout is not None:
            store.db.execute("CREATE TABLE IF NOT EXISTS addrindex(address TEXT, height INT, pos INT, txid BLOB)")
            store.set_meta("addrindex", old_layout)
        store.close()
        chain = Chain.open(tmp_path / "chain.sqlite", PARAMS)
        assert chain.addresses_indexed == -1
        tables = {n for (n,) in chain.store.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "addrindex" not in tables
        index_all(chain)
        assert_histories(chain)
        chain.close()


def get(node: NodeProc, path: str, accept: str = "text/html") -> tuple[int, dict[str, str], str]:
    """(status, headers, body) without following redirects."""
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=30)
    try:
        conn.request("GET", path, headers={"Accept": accept})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()


def text_of(page: str) -> str:
    """The page's text, roughly as a browser shows it (tags dropped, entities kept)."""
    return re.sub(r"<[^>]+>", " ", page)


def test_pages_over_http(nodes: Any) -> None:
    node = nodes("a").start()
    mined = [node.http("GET", "/mine")[1] for _ in range(2)]
    address = node.http("GET", "/wallet")[1]["address"]
    code, sent = node.http("POST", "/transactions/new", {"recipient": B.address, "amount": 1, "fee": 1})
    assert code == 201
    block = node.http("GET", "/mine")[1]
    txid = sent["txid"]
    assert [t["txid"] for t in block["transactions"]][1:] == [txid]

    # A browser's GET / goes to the explorer; a JSON client keeps the list of endpoints.
    code, headers, _ = get(node, "/")
    assert code == 302 and headers["Location"] == "/explorer/"
    code, index = node.http("GET", "/")
    assert code == 200 and "GET /nodes/resolve" in index["endpoints"] and "GET /explorer/" in index["endpoints"]
    assert not any(e.startswith("GET /explorer/") and e != "GET /explorer/" for e in index["endpoints"])

    code, headers, home = get(node, "/explorer/")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert (
        "script-src 'self'" in headers["Content-Security-Policy"]
        and "default-src 'none'" in headers["Content-Security-Policy"]
    )
    assert block["hash"] in home and mined[0]["hash"] in home
    assert re.search(r'<span id="height">3</span>', home)

    for ref in ("2", mined[1]["hash"]):
        code, _, page = get(node, f"/explorer/block/{ref}")
        assert code == 200 and "Block 2" in page and "2 confirmation(s)" in page
        assert mined[0]["hash"] in page and block["hash"] in page  # parent and child links

    code, _, page = get(node, f"/explorer/tx/{txid}")
    assert code == 200 and "confirmed" in page and block["hash"] in page
    assert "1 coin" in text_of(page) and address in page and B.address in page

    code, _, page = get(node, f"/explorer/address/{B.address}")
    assert code == 200 and txid in page and "1 coin" in text_of(page)
    code, _, page = get(node, f"/explorer/address/{address}")
    assert code == 200 and "4 confirmed" in page and txid in page  # 3 coinbases and the payment

    # Search: a height, a block hash, a txid and an address each go to their page.
    for q, where in (
        ("1", "/explorer/block/1"),
        (block["hash"], f"/explorer/block/{block['hash']}"),
        (txid, f"/explorer/tx/{txid}"),
        (B.address.upper(), f"/explorer/address/{B.address}"),
    ):
        code, headers, _ = get(node, f"/explorer/search?q={q}")
        assert (code, headers.get("Location")) == (303, where), q

    # What the page echoes is text, never markup.
    crafted = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
    code, _, page = get(node, "/explorer/search?q=" + urllib.request.quote(crafted))
    assert code == 404 and "<img" not in page and "<script>alert" not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    code, _, page = get(node, "/explorer/" + urllib.request.quote("<b>x</b>"))
    assert code == 404 and "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page

    code, pending = node.http("POST", "/transactions/new", {"recipient": B.address, "amount": 1})
    assert code == 201
    code, _, page = get(node, f"/explorer/tx/{pending['txid']}")
    assert code == 200 and "in the mempool" in page
    code, _, page = get(node, "/explorer/mempool")
    assert code == 200 and pending["txid"] in page

    for path in ("/explorer/mempool", "/explorer/peers", "/explorer/static/explorer.js"):
        assert get(node, path)[0] == 200, path
    assert get(node, "/explorer/static/../../http.py")[0] == 404
    assert get(node, "/explorer/block/99")[0] == 404
    assert get(node, "/explorer/address/nothex")[0] == 400


def test_event_stream_sends_hello_then_a_new_tip(nodes: Any) -> None:
    node = nodes("a").start()
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=30)
    try:
        conn.request("GET", "/explorer/events", headers={"Accept": "text/event-stream"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"

        def next_event() -> tuple[str, str]:
            name = ""
            while True:
                line = resp.readline().decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: ") and name:
                    return name, line[6:]

        name, data = next_event()
        assert name == "hello" and f'"hash":"{node.tip()}"' in data
        mined = node.http("GET", "/mine")[1]
        name, data = next_event()
        assert name == "tip" and f'"hash":"{mined["hash"]}"' in data
    finally:
        conn.close()


def open_stream(port: int) -> socket.socket:
    """A raw client of /explorer/events that reads its first answer and then nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"GET /explorer/events HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n")
    answer = b""
    while b"event: hello" not in answer:
        chunk = sock.recv(4096)
        answer += chunk
        if not chunk or (b"\r\n\r\n" in answer and not answer.startswith(b"HTTP/1.1 200")):
            sock.close()
            raise AssertionError(f"no stream: {answer[:200]!r}")
    return sock


def test_every_stream_slot_taken_the_node_still_serves_and_slots_come_back(nodes: Any) -> None:
    """EVENT_STREAMS_MAX clients hold event streams and read nothing: one more is refused with
    503 and Retry-After, the node still mines and answers, and once those clients leave a new
    stream opens (a closed client is found by the next keepalive)."""
    node = nodes("a").start()
    held = [open_stream(node.http_port) for _ in range(limits.EVENT_STREAMS_MAX)]
    try:
        code, headers, body = get(node, "/explorer/events", accept="text/event-stream")
        assert code == 503 and headers.get("Retry-After") == "5" and "event streams are open" in body
        assert node.http("GET", "/mine")[0] == 200 and get(node, "/explorer/")[0] == 200
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: open_stream(node.http_port).close() is None, 3 * limits.EVENT_KEEPALIVE_S + 15, "a free slot")
