"""explorer_browser: the explorer in a real headless Chromium (tests/browser.py), against node
processes on loopback. Few and fast: one browser per module, nodes at test difficulty.

"Without a reload" is checked by a marker set on the page's window object: a reload or a
navigation would lose it. Deadlines are generous (the machine is shared); the live path itself
is one Server-Sent Event and one fetch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from browser import wait_for
from harness import NodeProc, free_port, wait_until
from ledger_helpers import wallet

ROOT = Path(__file__).resolve().parent.parent

LIVE_S = 30.0  # deadline for a page to show what a node did, without a reload
BOB = wallet(2).address


def open_live(browser: Any, url: str) -> None:
    """Load ``url``, wait until its event stream is open, and mark the window (see above)."""
    browser.get(url)
    wait_for(browser, lambda d: d.find_element("id", "conn").text == "live", LIVE_S, "the event stream to open")
    browser.execute_script("window.notReloaded = true;")


def not_reloaded(browser: Any) -> bool:
    return bool(browser.execute_script("return window.notReloaded === true;"))


def text(browser: Any, element_id: str) -> str:
    """The element's text as shown, read in one step (the live part is replaced as events come)."""
    script = "const e = document.getElementById(arguments[0]); return e ? e.innerText : '';"
    return str(browser.execute_script(script, element_id))


def test_page_on_b_shows_a_block_mined_on_a_and_a_reorg_live(nodes: Any, browser: Any) -> None:
    """B mines one block alone; a page on B's explorer is open; A mines two; B connects to A and
    reorganises onto A's chain: the page shows the reorganisation and the new height; then a
    block mined on A through /mine appears on B's page. No reload."""
    a: NodeProc = nodes("a").start()
    b: NodeProc = nodes("b").start()
    b_block = b.http("GET", "/mine")[1]
    open_live(browser, f"http://127.0.0.1:{b.http_port}/explorer/")
    assert text(browser, "height") == "1" and b_block["hash"] in browser.page_source

    a_blocks = [a.http("GET", "/mine")[1] for _ in range(2)]
    code, _ = b.http("POST", "/nodes/register", {"nodes": [a.addr]})
    assert code == 201
    wait_for(browser, lambda d: "Reorganisation" in text(d, "banner"), LIVE_S, "a reorg banner")
    banner = text(browser, "banner")
    assert "Reorganisation" in banner and "1 block(s) above height 0" in banner, banner
    wait_for(browser, lambda d: text(d, "height") == "2", LIVE_S, "height 2 on B's page")
    source = browser.page_source
    assert all(blk["hash"] in source for blk in a_blocks) and b_block["hash"] not in source
    assert not_reloaded(browser)

    mined = a.http("GET", "/mine")[1]
    wait_for(browser, lambda d: text(d, "height") == "3", LIVE_S, "the block mined on A on B's page")
    assert mined["hash"] in browser.page_source and not_reloaded(browser)
    feed = text(browser, "feed")
    assert "block 3" in feed and "Reorganisation" in feed

    # B's page of its own abandoned block says so.
    browser.get(f"http://127.0.0.1:{b.http_port}/explorer/block/{b_block['hash']}")
    assert "on a side branch" in text(browser, "live")
    # B's peers page lists A: the address B dialled, outbound, A's height, bytes both ways.
    browser.get(f"http://127.0.0.1:{b.http_port}/explorer/peers")
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('table.peers tbody tr'),"
        " tr => Array.from(tr.querySelectorAll('td'), td => td.innerText));"
    )
    row = next((r for r in rows if r[0] == a.addr), None)
    assert row is not None and row[1] == "outbound" and row[3] == "3", rows
    assert all(int(n.replace(",", "")) > 0 for n in row[4:6]), rows


def search(browser: Any, query: str) -> None:
    box = browser.find_element("id", "q")
    box.clear()
    box.send_keys(query)
    box.submit()


def test_search_and_a_send_shown_on_the_recipients_page(nodes: Any, browser: Any, tmp_path: Any) -> None:
    """Search finds a block by height and by hash, a transaction by txid and an address; after
    a `p2pchain send`, the recipient's open address page shows the new balance and the
    transaction (once mined) without a reload."""
    a: NodeProc = nodes("a").start()
    blocks = [a.http("GET", "/mine")[1] for _ in range(3)]
    base = f"http://127.0.0.1:{a.http_port}/explorer/"
    browser.get(base)

    search(browser, "2")
    wait_for(browser, lambda d: d.title.startswith("Block 2"), LIVE_S, "block 2 by height")
    assert blocks[1]["hash"] in text(browser, "live")
    search(browser, blocks[2]["hash"])
    wait_for(browser, lambda d: d.title.startswith("Block 3"), LIVE_S, "block 3 by hash")

    open_live(browser, f"{base}address/{BOB}")
    assert "no confirmed transactions" in text(browser, "live")
    send = ["send", "--to", BOB, "--amount", "2", "--fee", "1", "--wallet", str(a.data_dir / "wallet.json")]
    sent = subprocess.run(
        [sys.executable, "-m", "p2pchain", *send, "--node", a.addr, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    txid = next(line.split('"txid": "')[1][:64] for line in sent.stdout.splitlines() if '"txid": "' in line)
    wait_for(browser, lambda d: txid in d.page_source, LIVE_S, "the pending payment on Bob's page")
    assert "Pending" in text(browser, "live")
    block = a.http("GET", "/mine")[1]
    wait_for(browser, lambda d: text(d, "balance") == "2 coins", LIVE_S, "Bob's new balance")
    live = text(browser, "live")
    assert "1 confirmed" in live and "Pending" not in live and not_reloaded(browser)
    assert browser.find_element("css selector", f'a[href="/explorer/block/{block["hash"]}"]')

    search(browser, txid)
    wait_for(browser, lambda d: d.title.startswith("Transaction"), LIVE_S, "the transaction by txid")
    assert "confirmed" in text(browser, "live") and BOB in text(browser, "live")
    search(browser, BOB)
    wait_for(browser, lambda d: d.title.startswith("Address"), LIVE_S, "Bob's page by address")


def test_text_crafted_as_html_shows_as_text(nodes: Any, browser: Any) -> None:
    """A search and a path made of markup come back as the characters typed: no element is made
    of them and no script runs."""
    a: NodeProc = nodes("a").start()
    crafted = '<img id="pwn" src="x" onerror="document.title=\'pwned\'"><b id="bold">bold</b>'
    browser.get(f"http://127.0.0.1:{a.http_port}/explorer/")
    search(browser, crafted)
    wait_for(browser, lambda d: d.title.startswith("Search"), LIVE_S, "the search answer")
    assert crafted.lower() in text(browser, "live")
    assert browser.find_elements("id", "pwn") == [] and browser.find_elements("id", "bold") == []
    browser.get(f"http://127.0.0.1:{a.http_port}/explorer/address/<i id='it'>x</i>")
    assert "<i id='it'>x</i>" in text(browser, "live") and browser.find_elements("id", "it") == []
    assert "pwned" not in browser.title
    wait_until(lambda: a.status(), what="the node still answering")
    # No page this browser showed in this module broke its Content-Security-Policy (an inline
    # script or style of ours, or markup that slipped through, would be refused and logged).
    refused = [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert not refused, refused


def tip_colour(tip: str) -> str:
    """The swarm map's colour of a tip (p2pchain/explorer_static/swarm.js, colour())."""
    return f"hsl({int(tip[-6:], 16) % 360}, 70%, 55%)"


def test_swarm_map_shows_every_node_link_and_tip(browser: Any, tmp_path: Path) -> None:
    """`swarm.py --nodes 5 --web PORT`: the map shows 5 nodes and every link of the ring, each
    node linked to its explorer, and at the end every node has the colour of the tip that the
    launcher's JSON summary reports."""
    port = free_port()
    run_dir = tmp_path / "run"
    args = ["--nodes", "5", "--miners", "2", "--difficulty", "16", "--duration", "6", "--web", str(port)]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "swarm.py"), *args, "--json", "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/state", timeout=5).read(), 60, "the map")
        browser.get(f"http://127.0.0.1:{port}/")  # before the nodes are up: nothing of the run is missed
        count = "return document.querySelectorAll('#nodes g.node').length;"
        wait_for(browser, lambda d: d.execute_script(count) == 5, 60, "5 nodes on the map")
        wait_for(browser, lambda d: d.execute_script("return document.body.dataset.final;"), 90, "the run's end")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["agreed"] and summary["nodes"] == 5

    nodes = browser.execute_script(
        "return Array.from(document.querySelectorAll('#nodes g.node'), g => ({"
        "index: Number(g.dataset.index), tip: g.dataset.tip, fill: g.querySelector('circle.body').getAttribute('fill'),"
        "href: (g.querySelector('a') || {getAttribute: () => null}).getAttribute('href')}));"
    )
    links = browser.execute_script(
        "return Array.from(document.querySelectorAll('#links line'), l => [Number(l.dataset.a), Number(l.dataset.b)]);"
    )
    manifest = json.loads((run_dir / "swarm.json").read_text())["nodes"]
    assert sorted(n["index"] for n in nodes) == list(range(5))
    for n in nodes:
        assert (n["tip"], n["fill"]) == (summary["tip"], tip_colour(summary["tip"])), n
        assert n["href"] == f"http://127.0.0.1:{manifest[n['index']]['http_port']}/explorer/"
    blocks_listed = browser.execute_script("return document.querySelectorAll('#blocks li').length;")
    assert blocks_listed > 0  # block arrivals reached the map as they happened
    ring = {tuple(sorted((i, j))) for i, entry in enumerate(manifest) for j in entry["dials"]}
    assert len(ring) == 5 and ring <= {tuple(sorted(link)) for link in links}, links
