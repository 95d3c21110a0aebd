"""metrics: what a node counts about its traffic, read back as a user reads it (/status, STATUS).

A raw protocol peer talks to a node process; every frame it sends and receives is counted here
too, and the node's per-type counts of frames and bytes (length prefix included) must be the
same numbers, each way. A frame that does not decode counts under "invalid". The unit test
checks the counter itself and measures its cost per frame.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections import Counter
from typing import Any

import pytest
from conftest import NodeFactory
from harness import NodeProc, run, wait_until
from node_helpers import TEST_PARAMS, next_block, status
from p2p_peer import RawPeer, payload
from prometheus_client.parser import text_string_to_metric_families

from p2pchain import wire
from p2pchain.metrics import DISCONNECT_LABELS, INVALID, Gauges, NodeMetrics, Traffic, disconnect_reason


def tally(msgs: list[wire.Message]) -> dict[str, tuple[int, int]]:
    frames: Counter[str] = Counter()
    size: Counter[str] = Counter()
    for m in msgs:
        frames[m.TYPE] += 1
        size[m.TYPE] += len(m.encode())
    return {k: (frames[k], size[k]) for k in frames}


def test_traffic_counts_frames_and_bytes_by_type_and_costs_little() -> None:
    t = Traffic()
    t.count_received("PING", 13)
    t.count_received("PING", 14)
    t.count_sent("PONG", 13)
    t.count_received(INVALID, 9)
    assert t.by_type() == {
        "PING": {"messages_received": 2, "bytes_received": 27, "messages_sent": 0, "bytes_sent": 0},
        "PONG": {"messages_received": 0, "bytes_received": 0, "messages_sent": 1, "bytes_sent": 13},
        INVALID: {"messages_received": 1, "bytes_received": 9, "messages_sent": 0, "bytes_sent": 0},
    }
    n = 200_000
    start = time.perf_counter()
    for _ in range(n):
        t.count_received("NEW_TX", 180)
    per_frame_us = (time.perf_counter() - start) / n * 1e6
    print(f"Traffic.count_received: {per_frame_us:.3f} us per frame")  # reported, not asserted (shared machine)
    assert t.received["NEW_TX"] == [n, 180 * n]


async def talk(node: NodeProc) -> tuple[list[wire.Message], list[wire.Message]]:
    """Handshake as a listening node, send pings and a block, read until the last PONG:
    (what we sent, what the node sent us)."""
    peer = await RawPeer.connect(node.port)
    sent: list[wire.Message] = []
    got: list[wire.Message] = []
    try:
        first = await peer.messages.get()
        assert isinstance(first, wire.Hello)
        got.append(first)
        hello = wire.Hello(first.version, first.network, b"\x07" * 16, 1, 0, first.network, 0, "metrics-test")
        block = next_block(TEST_PARAMS.genesis.header)
        sent += [hello, wire.Ping(1), wire.Ping(2**40), wire.NewBlock(block), wire.Ping(2**63)]
        for m in sent:
            peer.send(m)
        await peer.drain()
        async with asyncio.timeout(15):
            while True:
                msg = await peer.messages.get()
                assert msg is not None, "the node closed the connection"
                got.append(msg)
                if isinstance(msg, wire.Pong) and msg.nonce == 2**63:
                    break
    finally:
        await peer.close()
    return sent, got


def traffic_of(st: dict[str, Any], direction: str) -> dict[str, tuple[int, int]]:
    return {
        kind: (row[f"messages_{direction}"], row[f"bytes_{direction}"])
        for kind, row in st["traffic"].items()
        if row[f"messages_{direction}"]
    }


def test_status_counts_each_frame_and_its_bytes_by_type_both_ways(nodes: NodeFactory) -> None:
    node = nodes("n", args=["--no-discover"]).start()
    sent, got = run(talk(node))
    st = status(node)
    assert traffic_of(st, "received") == tally(sent)
    assert traffic_of(st, "sent") == tally(got)
    assert st["height"] == 1  # the block was taken, so its bytes went through the whole path

    async def junk() -> None:
        peer = await RawPeer.connect(node.port)
        try:
            await peer.handshake()
            peer.send_payload(payload({"type": "NO_SUCH_TYPE"}))
            await peer.drain()
            await peer.wait_closed()
        finally:
            await peer.close()

    run(junk())
    bad = len(payload({"type": "NO_SUCH_TYPE"})) + 4

    def counted() -> Any:
        return status(node)["traffic"].get(INVALID)

    row = wait_until(counted, 15, "the undecodable frame to be counted")
    assert (row["messages_received"], row["bytes_received"]) == (1, bad)


def test_status_over_the_protocol_carries_the_traffic_and_each_peers_bytes(nodes: NodeFactory) -> None:
    node = nodes("n", args=["--no-discover"]).start()

    async def scenario() -> dict[str, Any]:
        peer = await RawPeer.connect(node.port)
        try:
            await peer.handshake(port=1, agent="listening-peer")
            await peer.sync_with_ping()
            async with node.client() as c:
                st: dict[str, Any] = await c.status()
            return st
        finally:
            await peer.close()

    st = run(scenario())
    assert st["traffic"]["PING"]["messages_received"] >= 1
    assert "STATUS" not in st["traffic"]  # counted once written: this one was on its way
    assert st["traffic"]["GET_STATUS"]["messages_received"] == 1
    (row,) = st["peers"]
    assert row["addr"] == "127.0.0.1:1"
    assert row["bytes_received"] > 0 and row["bytes_sent"] > 0


# --- /metrics --------------------------------------------------------------------------------
NAMES = [
    "p2pchain_height",
    "p2pchain_tip_timestamp_seconds",
    "p2pchain_peers",
    "p2pchain_messages_received",
    "p2pchain_messages_sent",
    "p2pchain_bytes_received",
    "p2pchain_bytes_sent",
    "p2pchain_blocks_connected",
    "p2pchain_reorgs",
    "p2pchain_reorg_depth",
    "p2pchain_block_validation_seconds",
    "p2pchain_mempool_transactions",
    "p2pchain_mempool_bytes",
    "p2pchain_bans",
    "p2pchain_peer_disconnects",
    "p2pchain_hashes_per_second",
]


def scrape(node: NodeProc) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics parsed by prometheus-client's own parser: {(sample name, labels): value}."""
    assert node.http_port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    samples = {}
    families = {f.name for f in text_string_to_metric_families(text)}
    assert set(NAMES) <= families, sorted(set(NAMES) - families)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def test_metrics_follow_blocks_and_transactions_and_agree_with_status(nodes: NodeFactory) -> None:
    a = nodes("a", args=["--miner-procs", "1", "--no-discover"]).start()
    b = nodes("b", args=["--no-discover"]).start(["--peer", a.addr])
    wait_until(lambda: status(a)["peers"] and status(b)["peers"], 20, "a and b to connect")
    before = scrape(b)
    assert before[("p2pchain_peers", (("direction", "out"),))] == 1
    assert scrape(a)[("p2pchain_peers", (("direction", "in"),))] == 1

    for _ in range(3):
        assert a.http("GET", "/mine")[0] == 200
    wait_until(lambda: b.height() == 3, 20, "b to have a's 3 blocks")
    code, doc = a.http("POST", "/transactions/new", {"recipient": "ab" * 20, "amount": 1})
    assert code == 201, doc
    wait_until(lambda: status(b)["mempool"] == 1, 20, "the transaction to reach b")

    after = scrape(b)
    st = status(b)
    assert after[("p2pchain_height", ())] == st["height"] == 3
    tip_time = b.http("GET", f"/blocks/{st['tip']}")[1]["timestamp"]
    assert after[("p2pchain_tip_timestamp_seconds", ())] == pytest.approx(tip_time)
    assert after[("p2pchain_blocks_connected_total", ())] - before[("p2pchain_blocks_connected_total", ())] == 3
    assert after[("p2pchain_block_validation_seconds_count", ())] >= 3
    assert after[("p2pchain_mempool_transactions", ())] == 1
    assert after[("p2pchain_mempool_bytes", ())] > 0
    assert after[("p2pchain_mempool_accepted_total", ())] == 1
    for name in ("p2pchain_messages_received_total", "p2pchain_bytes_received_total"):
        assert total(after, name) > total(before, name)
    # the same counts as /status, read just after (only PING/PONG move on an idle link)
    for kind, row in st["traffic"].items():
        for direction in ("received", "sent"):
            for unit in ("messages", "bytes"):
                scraped = after.get((f"p2pchain_{unit}_{direction}_total", (("type", kind),)), 0)
                assert scraped <= row[f"{unit}_{direction}"], (kind, direction, unit)
                assert scraped == row[f"{unit}_{direction}"] or kind in ("PING", "PONG"), (kind, direction, unit)
    assert after[("p2pchain_reorgs_total", ())] == 0
    assert after[("p2pchain_hashes_per_second", ())] == 0  # b does not mine


def test_hash_rate_shows_while_mining(nodes: NodeFactory) -> None:
    node = nodes("m", args=["--mine", "--miner-procs", "1"], bits=20).start()
    scrape(node)
    rate = wait_until(lambda: scrape(node)[("p2pchain_hashes_per_second", ())], 20, "a hash rate above 0")
    assert rate > 0


def test_reorgs_validation_and_disconnects_are_counted() -> None:
    m = NodeMetrics(lambda: Gauges(0, 0.0, 0, 0, 0, 0, 0, None))
    m.on_chain_update([1, 2, 3], [])
    m.on_chain_update([4, 5], [6, 7])
    m.on_validated(0.003)
    m.on_validated(7.0)
    m.on_validated(0.0004, 64)  # a sync's run of 64 blocks, each given the run's mean
    m.on_peer_closed("shutting down", False)
    m.on_peer_closed("sent invalid block 00ab: bad-pow", True)
    m.on_peer_closed("no PONG within 30 s", False)
    m.on_peer_closed("something new", False)
    samples = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert samples[("p2pchain_blocks_connected_total", ())] == 5
    assert samples[("p2pchain_reorgs_total", ())] == 1
    assert samples[("p2pchain_reorg_depth_bucket", (("le", "1.0"),))] == 0
    assert samples[("p2pchain_reorg_depth_bucket", (("le", "2.0"),))] == 1
    assert samples[("p2pchain_reorg_depth_sum", ())] == 2
    assert samples[("p2pchain_block_validation_seconds_bucket", (("le", "0.005"),))] == 65
    assert samples[("p2pchain_block_validation_seconds_bucket", (("le", "+Inf"),))] == 66
    assert samples[("p2pchain_block_validation_seconds_count", ())] == 66
    assert samples[("p2pchain_block_validation_seconds_sum", ())] == pytest.approx(7.003 + 64 * 0.0004)
    drops = {dict(k[1])["reason"]: v for k, v in samples.items() if k[0] == "p2pchain_peer_disconnects_total"}
    assert set(drops) == set(DISCONNECT_LABELS)
    assert (drops["shutdown"], drops["banned"], drops["timeout"], drops["other"], drops["lost"]) == (1, 1, 1, 1, 0)


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("connection lost (ConnectionResetError)", "lost"),
        ("closed", "lost"),
        ("no HELLO within 10 s", "timeout"),
        ("sync stalled: no CHAIN within 30 s", "timeout"),
        ("send queue full (1024 frames): peer is not reading", "slow"),
        ("evicted: inbound slots full and 10.0.0.1 holds 4 of them", "evicted"),
        ("on another network 3fa2…", "handshake"),
        ("already connected to this node", "handshake"),
        ("protocol error: frame of 99999999 bytes is over the limit", "protocol"),
        ("sent CHAIN nobody asked for", "misbehaving"),
        ("compact block 00ab: its transactions do not make the block", "misbehaving"),
        ("claimed more work 3 times and delivered none", "misbehaving"),
        ("internal error (KeyError)", "internal"),
    ],
)
def test_disconnect_reasons_map_to_a_small_fixed_set(reason: str, label: str) -> None:
    assert disconnect_reason(reason, banned=False) == label
    assert disconnect_reason(reason, banned=True) == "banned"
