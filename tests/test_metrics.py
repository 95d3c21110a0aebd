"""metrics: what a node counts about its traffic, read back as a user reads it (/status, STATUS).

A raw protocol peer talks to a node process; every frame it sends and receives is counted here
too, and the node's per-type counts of frames and bytes (length prefix included) must be the
same numbers, each way. A frame that does not decode counts under "invalid". The unit test
checks the counter itself and measures its cost per frame.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from conftest import NodeFactory
from harness import NodeProc, run, wait_until
from node_helpers import TEST_PARAMS, next_block, status
from p2p_peer import RawPeer, payload

from p2pchain import wire
from p2pchain.metrics import INVALID, Traffic


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
