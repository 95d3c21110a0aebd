"""What a node counts about itself, kept per Node (the in-process swarm runs 200 nodes in one
process, so nothing here is global).

The counters that move on every frame are plain ints in dicts, with no lock (one event loop owns
the node): a frame costs at most a tenth of decoding the smallest message, a PING (0.15 us
against 1.5 us on a quiet core; 3 % under load with today's decoder: ``bench.py edges``, and
docs/benchmarks.md). The Prometheus view of them (``/metrics``, through
prometheus-client) is built only when scraped, and prometheus-client imported at the first scrape.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from p2pchain.record import record

INVALID = "invalid"  # the type label of a received frame that did not decode: the set stays bounded


class Traffic:
    """Frames and their bytes (length prefix included) by message type, each way. Received
    frames are counted once read whole (before decoding: a frame that fails to decode counts
    under ``INVALID``); sent frames when the writer hands them to the socket."""

    __slots__ = ("received", "sent")

    def __init__(self) -> None:
        self.received: dict[str, list[int]] = {}  # type -> [frames, bytes]
        self.sent: dict[str, list[int]] = {}

    def count_received(self, kind: str, nbytes: int) -> None:
        _add(self.received, kind, nbytes)

    def count_sent(self, kind: str, nbytes: int) -> None:
        _add(self.sent, kind, nbytes)

    def by_type(self) -> dict[str, dict[str, int]]:
        """{type: {messages_received, bytes_received, messages_sent, bytes_sent}}, the types
        seen either way, for /status and STATUS."""
        out: dict[str, dict[str, int]] = {}
        for kind in sorted(self.received.keys() | self.sent.keys()):
            rx = self.received.get(kind, (0, 0))
            tx = self.sent.get(kind, (0, 0))
            out[kind] = {
                "messages_received": rx[0],
                "bytes_received": rx[1],
                "messages_sent": tx[0],
                "bytes_sent": tx[1],
            }
        return out


def _add(table: dict[str, list[int]], kind: str, nbytes: int) -> None:
    c = table.get(kind)
    if c is None:
        c = table[kind] = [0, 0]
    c[0] += 1
    c[1] += nbytes


# --- what the node counts besides traffic ------------------------------------------------------
REORG_DEPTH_BUCKETS = (1, 2, 3, 5, 10, 20, 50, 100)  # blocks disconnected by one reorganisation
VALIDATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)  # seconds
HASH_RATE_MIN_S = 1.0  # p2pchain_hashes_per_second is re-measured when a scrape comes this long after the last

# Why peers were dropped, as a small fixed set (the label of p2pchain_peer_disconnects_total): the
# first reason text that starts with a prefix of a row gives the row's name; a banned peer is
# "banned" whatever the text, and a text no row knows is "other".
DISCONNECT_REASONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("shutdown", ("shutting down",)),
    ("lost", ("connection lost", "closed")),
    ("timeout", ("no PONG", "no HELLO", "sync stalled")),
    ("slow", ("send queue full", "could not send")),
    ("evicted", ("evicted",)),
    (
        "handshake",
        ("on another network", "protocol version", "connected to ourselves", "already connected", "duplicate"),
    ),
    ("protocol", ("protocol error",)),
    ("misbehaving", ("sent ", "CHAIN ", "compact block", "asked for", "claimed more work")),
    ("internal", ("internal error",)),
)
DISCONNECT_LABELS = ("banned", *(name for name, _ in DISCONNECT_REASONS), "other")


def disconnect_reason(close_reason: str, banned: bool) -> str:
    """The label of a dropped peer's reason (one of DISCONNECT_LABELS)."""
    if banned:
        return "banned"
    for name, prefixes in DISCONNECT_REASONS:
        if close_reason.startswith(prefixes):
            return name
    return "other"


class Histogram:
    """Cumulative-bucket histogram as Prometheus defines it: counts per upper bound, sum, count."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.count = 0
        self.total = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        """Count ``value`` (``times`` times: a sync's run of blocks, each given the run's mean)."""
        # the first bucket whose bound is at least ``value`` (a bisection in C: a synced block
        # is observed once, and a scan of the bounds was ~80 of its ~2,300 bytecodes)
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.count += times
        self.total += value * times

    def buckets(self) -> list[tuple[str, float]]:
        """(le, cumulative count) pairs ending with +Inf, as prometheus-client takes them."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
        return out


@record
class Gauges:
    """The node's state when scraped (node.py reads it)."""

    height: int
    tip_timestamp_s: float
    peers_in: int
    peers_out: int
    mempool_transactions: int
    mempool_bytes: int
    bans: int
    hashes_done: int | None  # nonces the miner has hashed since it started; None: no miner


class NodeMetrics:
    """Everything /metrics shows for one node. The chain, the mempool and the connection manager
    report to it (subscriptions node.py wires); gauges are read when scraped. prometheus-client
    is imported at the first scrape only: a node nobody scrapes never pays its import."""

    def __init__(self, read_gauges: Callable[[], Gauges]) -> None:
        self.read_gauges = read_gauges
        self.traffic = Traffic()
        self.blocks_connected = 0
        self.txs_accepted = 0
        self.reorgs = 0
        self.reorg_depth = Histogram(REORG_DEPTH_BUCKETS)
        self.validation = Histogram(VALIDATION_BUCKETS)
        self.disconnects = dict.fromkeys(DISCONNECT_LABELS, 0)
        self._hash_sample = (time.monotonic(), 0)  # (when, hashes_done) of the last hash-rate sample
        self._hash_rate = 0.0
        self._registry: Any = None

    # --- what the node reports --------------------------------------------------------------
    def on_chain_update(self, connected: Sequence[object], disconnected: Sequence[object]) -> None:
        self.blocks_connected += len(connected)
        if disconnected:
            self.reorgs += 1
            self.reorg_depth.observe(len(disconnected))

    def on_new_tx(self, tx: object) -> None:
        self.txs_accepted += 1

    def on_validated(self, seconds: float, blocks: int = 1) -> None:
        """``blocks`` new blocks were checked, each in ``seconds`` (a run's mean: Chain.extend_run)."""
        self.validation.observe(seconds, blocks)

    def on_peer_closed(self, close_reason: str, banned: bool) -> None:
        self.disconnects[disconnect_reason(close_reason, banned)] += 1

    def hash_rate(self, hashes_done: int | None) -> float:
        """Hashes a second since the previous sample (taken at most every HASH_RATE_MIN_S)."""
        now = time.monotonic()
        when, before = self._hash_sample
        if hashes_done is None:
            self._hash_sample, self._hash_rate = (now, 0), 0.0
        elif now - when >= HASH_RATE_MIN_S:
            self._hash_rate = max(0, hashes_done - before) / (now - when)
            self._hash_sample = (now, hashes_done)
        return self._hash_rate

    # --- the Prometheus view ------------------------------------------------------------------
    def render(self) -> bytes:
        """The Prometheus text exposition of this node's registry."""
        from prometheus_client import ProcessCollector, generate_latest
        from prometheus_client.registry import CollectorRegistry

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(_Collector(self))
            ProcessCollector(registry=self._registry)  # process_resident_memory_bytes, cpu, fds (Linux)
        return bytes(generate_latest(self._registry))


class _Collector:
    """prometheus-client's custom-collector interface over NodeMetrics (one registry per node)."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        m = self.metrics
        g = m.read_gauges()
        yield GaugeMetricFamily("p2pchain_height", "Height of the best block.", value=g.height)
        yield GaugeMetricFamily(
            "p2pchain_tip_timestamp_seconds", "Timestamp of the best block (Unix seconds).", value=g.tip_timestamp_s
        )
        peers = GaugeMetricFamily("p2pchain_peers", "Handshaken peer nodes, by direction.", labels=["direction"])
        peers.add_metric(["in"], g.peers_in)
        peers.add_metric(["out"], g.peers_out)
        yield peers
        traffic = m.traffic
        for name, table, i, what in (
            ("p2pchain_messages_received", traffic.received, 0, "Frames received, by message type."),
            ("p2pchain_messages_sent", traffic.sent, 0, "Frames sent, by message type."),
            ("p2pchain_bytes_received", traffic.received, 1, "Frame bytes received (length prefix included)."),
            ("p2pchain_bytes_sent", traffic.sent, 1, "Frame bytes sent (length prefix included)."),
        ):
            family = CounterMetricFamily(name, what, labels=["type"])
            for kind, counts in sorted(table.items()):
                family.add_metric([kind], counts[i])
            yield family
        yield CounterMetricFamily(
            "p2pchain_blocks_connected", "Blocks connected to the best chain.", value=m.blocks_connected
        )
        yield CounterMetricFamily(
            "p2pchain_mempool_accepted", "Transactions taken into the mempool.", value=m.txs_accepted
        )
        yield CounterMetricFamily(
            "p2pchain_reorgs", "Reorganisations (best-chain blocks disconnected).", value=m.reorgs
        )
        for name, hist, what in (
            ("p2pchain_reorg_depth", m.reorg_depth, "Blocks disconnected by each reorganisation."),
            ("p2pchain_block_validation_seconds", m.validation, "Seconds to check and store a new block."),
        ):
            yield HistogramMetricFamily(name, what, buckets=hist.buckets(), sum_value=hist.total)
        yield GaugeMetricFamily("p2pchain_mempool_transactions", "Pending transactions.", value=g.mempool_transactions)
        yield GaugeMetricFamily("p2pchain_mempool_bytes", "Bytes of the pending transactions.", value=g.mempool_bytes)
        yield GaugeMetricFamily("p2pchain_bans", "Addresses banned now.", value=g.bans)
        drops = CounterMetricFamily("p2pchain_peer_disconnects", "Connections closed, by reason.", labels=["reason"])
        for reason, n in m.disconnects.items():
            drops.add_metric([reason], n)
        yield drops
        yield GaugeMetricFamily(
            "p2pchain_hashes_per_second", "Miner hash rate (0 when not mining).", value=m.hash_rate(g.hashes_done)
        )
