"""explorer: how soon an open explorer page shows a new block, what a page costs the node, and
what one event costs with every browser slot (EVENT_STREAMS_MAX) taken."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchlib.common import Figures, Subcommand
from benchlib.nodes import NET_PARAMS, net_chain, percentile_ms, write_chain
from p2pchain import limits
from p2pchain.events import EventHub, block_summary

ROOT = Path(__file__).resolve().parent.parent.parent
EXPLORER_BENCH_BLOCKS = 1000  # the node's chain: every block pays the same address (a 1,000-tx history)
LIVE_SAMPLES = 20  # blocks mined through /mine while a page is open
LIVE_CEILING_MS = 1000.0  # the bound: a new tip reaches an open page within a second
REWARD_TO = "ab" * 20
NOTES = {
    "live_update_p50_ms": "ms from sending GET /mine to the open home page showing the new height (Chromium)",
    "live_update_p90_ms": "90th percentile of the same",
    "live_update_max_ms": f"worst of {LIVE_SAMPLES} (ceiling: {LIVE_CEILING_MS:g} ms, the issue's 'within a second')",
    "home_page_ms": f"ms for GET /explorer/ on a {EXPLORER_BENCH_BLOCKS}-block chain (20 blocks listed)",
    "address_page_ms": f"ms for GET /explorer/address/A, A in all {EXPLORER_BENCH_BLOCKS} blocks (25 a page)",
    "block_page_ms": "ms for GET /explorer/block/HEIGHT",
    "event_publish_us": f"us to publish one tip event to {limits.EVENT_STREAMS_MAX} open streams",
}


def publish_cost(seconds: float) -> float:
    """Microseconds per tip event published to EVENT_STREAMS_MAX streams; only the publishing is
    timed (the queued frames are taken after every 100 events, as the streams' writers would)."""

    async def run() -> float:
        hub = EventHub(max_frames=1000)
        streams = [hub.open() for _ in range(limits.EVENT_STREAMS_MAX)]
        block = NET_PARAMS.genesis
        event = {**block_summary(block), "connected": 1, "blocks": [block_summary(block)]}
        done, spent = 0, 0.0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            for _ in range(100):
                hub.publish("tip", event)
            spent += time.perf_counter() - start
            done += 100
            for stream in streams:
                await stream.next(0)
        assert hub.dropped == 0
        return spent / done * 1e6

    return asyncio.run(run())


def get_ms(url: str, seconds: float) -> float:
    """Mean ms of GET ``url`` over ``seconds`` (at least 5 requests)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as resp:
            resp.read()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.fmean(times)


WATCH_HEIGHT = """
window.heightSeen = {};
new MutationObserver(() => {
  const h = document.getElementById("height");
  const now = performance.timeOrigin + performance.now();
  if (h && !(h.textContent in window.heightSeen)) window.heightSeen[h.textContent] = now;
}).observe(document.body, {subtree: true, childList: true, characterData: true});
"""


SEEN = "return window.heightSeen[arguments[0]];"


def live_updates(http_port: int) -> list[float] | None:
    """ms from sending /mine to the home page showing the new height, LIVE_SAMPLES times; None
    without Chromium (tests/browser.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import browser  # type: ignore[import-not-found]  # tests/browser.py

    missing = [p for p in (browser.CHROMIUM, browser.CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        print(f"explorer: no {', '.join(missing)}: live_update figures skipped", file=sys.stderr)
        return None
    base = f"http://127.0.0.1:{http_port}"
    times: list[float] = []
    with browser.chromium() as driver:
        driver.get(f"{base}/explorer/")
        browser.wait_for(driver, lambda d: d.find_element("id", "conn").text == "live", 30, "the event stream")
        driver.execute_script(WATCH_HEIGHT)
        for _ in range(LIVE_SAMPLES):
            sent = time.time() * 1000
            with urllib.request.urlopen(f"{base}/mine", timeout=60) as resp:
                height = str(json.load(resp)["height"])
            seen: Any = browser.wait_for(driver, lambda d, h=height: d.execute_script(SEEN, h), 30, "the page")
            times.append(float(seen) - sent)
    return times


def bench_explorer(args: argparse.Namespace) -> Figures:
    sys.path.insert(0, str(ROOT / "tests"))
    from harness import NodeProc  # type: ignore[import-not-found]  # tests/harness.py: node processes

    figures: Figures = {"event_publish_us": publish_cost(args.seconds)}
    with tempfile.TemporaryDirectory(prefix="p2pchain-bench-explorer-") as tmp:
        node = NodeProc(Path(tmp), "a", bits=NET_PARAMS.bits, args=["--log-level", "WARNING"])
        write_chain(node.data_dir, net_chain(EXPLORER_BENCH_BLOCKS, REWARD_TO))
        try:
            node.start()
            node.http("GET", "/mine")  # starts the miner's worker processes before anything is timed
            base = f"http://127.0.0.1:{node.http_port}/explorer"
            figures["home_page_ms"] = get_ms(f"{base}/", args.seconds)
            figures["address_page_ms"] = get_ms(f"{base}/address/{REWARD_TO}", args.seconds)
            figures["block_page_ms"] = get_ms(f"{base}/block/500", args.seconds)
            assert node.http_port is not None
            live = live_updates(node.http_port)
        finally:
            node.stop()
    figures["live_update_p50_ms"] = statistics.median(live) if live else None
    figures["live_update_max_ms"] = max(live) if live else None
    if live and len(live) >= 2:
        figures["live_update_p90_ms"] = percentile_ms(live, 90)
    return figures


COMMAND = Subcommand(bench_explorer, "the explorer: live update latency in Chromium, page and event costs", NOTES)
