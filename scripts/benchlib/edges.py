"""bench edges: what the operations features cost (issue 13): the traffic counts on every frame,
against the cheapest decode a frame costs anyway, and a /metrics scrape."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from benchlib.common import Figures, Subcommand, rate, timed_ms
from p2pchain import wire
from p2pchain.metrics import Gauges, NodeMetrics

ROOT = Path(__file__).resolve().parent.parent.parent
BATCH = 1000  # calls per timing step
FIRST_SCRAPE = """
import time
from p2pchain.metrics import Gauges, NodeMetrics
m = NodeMetrics(lambda: Gauges(1, 0.0, 1, 1, 0, 0, 0, None))
start = time.perf_counter()
m.render()
print((time.perf_counter() - start) * 1000)
"""


def loaded_metrics() -> NodeMetrics:
    """A node's metrics after some traffic: every message type each way, full histograms."""
    m = NodeMetrics(lambda: Gauges(10_000, 1.7e9, 8, 8, 5_000, 900_000, 3, 123_456))
    for kind in wire.MESSAGE_TYPES:
        for _ in range(10):
            m.traffic.count_received(kind, 200)
            m.traffic.count_sent(kind, 200)
    for i in range(1000):
        m.on_validated(i / 10_000)
        m.on_chain_update([i], [i] if i % 100 == 0 else [])
        m.on_peer_closed("connection lost (IncompleteReadError)", False)
    return m


def bench_edges(args: argparse.Namespace) -> Figures:
    s = args.seconds
    m = loaded_metrics()
    count = m.traffic.count_received

    def counts() -> int:
        for _ in range(BATCH):
            count("NEW_TX", 180)
        return BATCH

    ping = wire.Ping(2**40).payload()
    decode = wire.decode_message

    def decodes() -> int:
        for _ in range(BATCH):
            decode(ping)
        return BATCH

    figures: Figures = {
        "traffic_count_ns": 1e9 / rate(counts, s),
        "ping_decode_ns": 1e9 / rate(decodes, s),
    }
    figures["traffic_vs_ping_decode"] = figures["traffic_count_ns"] / figures["ping_decode_ns"]
    first = subprocess.run(
        [sys.executable, "-c", FIRST_SCRAPE], capture_output=True, text=True, check=True, cwd=ROOT, timeout=60
    )
    figures["metrics_first_scrape_ms"] = float(first.stdout.strip())
    m.render()
    figures["metrics_scrape_ms"] = statistics.median(timed_ms(m.render) for _ in range(50))
    figures["metrics_bytes"] = len(m.render())
    return figures


EDGES_NOTES = {
    "traffic_count_ns": "ns per frame, Traffic.count_received (what peer.py adds to each frame)",
    "ping_decode_ns": "ns, wire.decode_message of a PING: the cheapest frame's decode, paid anyway",
    "traffic_vs_ping_decode": "the counting's share of that decode",
    "metrics_first_scrape_ms": "ms, a fresh process's first render (imports prometheus-client)",
    "metrics_scrape_ms": "ms, a later render (every message type both ways, full histograms)",
    "metrics_bytes": "bytes of that /metrics answer",
}


COMMAND = Subcommand(bench_edges, "operations: traffic counting per frame, /metrics scrape", EDGES_NOTES)
