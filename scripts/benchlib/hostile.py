"""hostile: honest block propagation while a peer floods junk."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchlib.common import Figures, Subcommand
from benchlib.hardening import HARDENING_NOTES, bench_hardening
from benchlib.nodes import (
    NET_PARAMS,
    NET_TIMEOUT_S,
    NodeProcs,
    net_chain,
    percentile_ms,
    propagation_ms,
)
from p2pchain import limits, wire
from p2pchain.client import Client
from p2pchain.keys import Wallet
from p2pchain.ledger.block import Block
from p2pchain.ledger.tx import make_tx
from p2pchain.miner import build_template, mine_block

HOSTILE_NODES = 3  # honest processes in a line: blocks enter node 0 and are timed out of node 2
HOSTILE_TARGET = 1  # the flooded node: the middle one, which every block passes through
HOSTILE_BLOCKS = 50  # blocks timed without the flood, then as many again under it
HOSTILE_BLOCK_GAP_S = 0.05  # pause between timed blocks, so that the flood runs for seconds
FLOOD_RAMP_S = 1.0  # the flood runs this long before the first block under it is timed
FLOOD_BATCH = 64  # frames a streaming connection writes between drains (and looks whether to stop)
FLOOD_POOL = 2000  # distinct unpaid transactions (and a tenth as many orphan blocks) cycled through
# One connection of each kind, all at once, each from its own loopback address (as an attacker
# with four addresses): a ban hits only the address that earned it, never the honest nodes'.
FLOOD_KINDS = {"junk": "127.0.0.2", "bad_block": "127.0.0.3", "unpaid_tx": "127.0.0.4", "orphan": "127.0.0.5"}
STRIKE_KINDS = ("junk", "bad_block")  # one frame of these gets the connection dropped
FLOOD_NICE = 19  # a real attacker does not run on its victim's cores: here it only takes what they leave


def flood_payloads(kind: str) -> list[bytes]:
    """Frames one flooding connection sends over and over (after its HELLO). "junk" (random
    bytes) and "bad_block" (a block without proof of work) get it dropped and, where bans apply,
    its address banned; it reconnects at once. "unpaid_tx" (NEW_TX of unfunded senders) and
    "orphan" (NEW_BLOCK with valid work on an unknown parent) cost nothing by the misbehaviour
    rules, so those connections stay and stream at the per-peer rate limit."""
    params, net = NET_PARAMS, NET_PARAMS.network_id
    rng = random.Random(kind)
    if kind == "junk":
        return [rng.randbytes(4096)]
    if kind == "bad_block":
        block = mine_block(build_template(params, params.genesis.header, 0, [], "ab" * 20, 2_000_000_000_000))
        header = block.header
        while header.meets_target():
            header = replace(header, nonce=header.nonce + 1)
        return [wire.NewBlock(replace(block, header=header)).encode()]
    if kind == "unpaid_tx":
        poor = Wallet.generate()
        return [wire.NewTx(make_tx(poor, "cd" * 20, n + 1, 0, 0, net)).encode() for n in range(FLOOD_POOL)]
    orphans = []
    for n in range(FLOOD_POOL // 10):
        parent = replace(params.genesis.header, prev_hash=rng.randbytes(32), height=n + 1)
        orphans.append(mine_block(build_template(params, parent, 0, [], "ef" * 20, 1_800_000_000_000 + n)))
    return [wire.NewBlock(b).encode() for b in orphans]


async def flood_connection(port: int, kind: str, stop: Callable[[], bool], counts: dict[str, int]) -> None:
    """One connection's flood from FLOOD_KINDS[kind], reconnecting whenever the node drops or
    refuses it, until ``stop()``. Counts the frames the node's socket took and the connections."""
    frames = flood_payloads(kind)
    net = NET_PARAMS.network_id
    hello = wire.Hello(limits.PROTOCOL_VERSION, net, os.urandom(16), 0, 0, net, 0, "flood").encode()

    async def discard(reader: asyncio.StreamReader) -> None:  # read what the node sends, or it drops us
        with contextlib.suppress(ConnectionError):
            while await reader.read(2**16):
                pass

    i = 0
    while not stop():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(FLOOD_KINDS[kind], 0))
        except OSError:
            await asyncio.sleep(0.001)
            continue
        counts["connections"] += 1
        reading = asyncio.create_task(discard(reader))
        try:
            writer.write(hello)
            if kind in STRIKE_KINDS:
                writer.write(frames[0])
                await writer.drain()
                await reading  # until the node drops (or, once banned, refuses) us
                counts["messages"] += 1
                continue
            while not stop() and not reading.done():
                writer.write(b"".join(frames[(i + k) % len(frames)] for k in range(FLOOD_BATCH)))
                i += FLOOD_BATCH
                await writer.drain()  # the node's socket took the batch
                counts["messages"] += FLOOD_BATCH
        except ConnectionError:
            pass
        finally:
            reading.cancel()
            writer.close()


def flood_process(port: int, stop: Any, result: Any) -> None:
    """The flooder's process (spawned, so it has a core of its own to compete with): every
    FLOOD_KINDS connection at once until ``stop`` (an Event) is set; then (frames, connections,
    seconds) goes to ``result`` (a Pipe end)."""
    os.nice(FLOOD_NICE)
    counts = {"messages": 0, "connections": 0}

    async def main() -> None:
        await asyncio.gather(*(flood_connection(port, kind, stop.is_set, counts) for kind in FLOOD_KINDS))

    start = time.perf_counter()
    asyncio.run(main())
    result.send((counts["messages"], counts["connections"], time.perf_counter() - start))


async def spaced_propagation_ms(source: Client, watcher: Client, blocks: list[Block]) -> list[float]:
    times: list[float] = []
    for block in blocks:
        times += await propagation_ms(source, [watcher], [block])
        await asyncio.sleep(HOSTILE_BLOCK_GAP_S)
    return times


async def flood_run(root: Path, blocks: list[Block], flags: tuple[str, ...]) -> Figures:
    """A line of HOSTILE_NODES processes, the middle one started with ``flags``: propagation
    timed without a flood, then under one; the flooded node's memory before and after."""
    import multiprocessing

    from swarm import rss_mb as vm_rss_mb  # scripts/swarm.py: a process's VmRSS

    procs = NodeProcs(root, HOSTILE_NODES)
    try:
        pids: dict[int, int] = {}
        for i in reversed(range(HOSTILE_NODES)):  # node i dials node i + 1, already up
            await procs.start(i, [i + 1] if i + 1 < HOSTILE_NODES else [], flags if i == HOSTILE_TARGET else ())
            pids[i] = procs.procs[-1].pid
        await procs.wait_linked([(i, i + 1) for i in range(HOSTILE_NODES - 1)])
        source, watcher = procs.clients[0], procs.clients[HOSTILE_NODES - 1]
        quiet = await spaced_propagation_ms(source, watcher, blocks[:HOSTILE_BLOCKS])
        rss_before = vm_rss_mb(pids[HOSTILE_TARGET])

        ctx = multiprocessing.get_context("spawn")
        stop, (receive, send) = ctx.Event(), ctx.Pipe(duplex=False)
        flooder = ctx.Process(target=flood_process, args=(procs.ports[HOSTILE_TARGET], stop, send), daemon=True)
        flooder.start()
        try:
            await asyncio.sleep(FLOOD_RAMP_S)  # the flood reaches full speed before blocks are timed
            flooded = await spaced_propagation_ms(source, watcher, blocks[HOSTILE_BLOCKS:])
        finally:
            stop.set()
            got = await asyncio.to_thread(receive.poll, NET_TIMEOUT_S)
            sent, connections, seconds = receive.recv() if got else (0, 0, 1.0)
            flooder.join(5)
            if flooder.is_alive():
                flooder.kill()
        status = await procs.clients[HOSTILE_TARGET].status()  # the flooded node still answers
        if status["height"] != len(blocks):
            raise RuntimeError(f"the flooded node is at height {status['height']}, not {len(blocks)}")
        rss_after = vm_rss_mb(pids[HOSTILE_TARGET])
    finally:
        await procs.close()
    return {
        "p50": statistics.median(quiet),
        "p50_flood": statistics.median(flooded),
        "p99_flood": percentile_ms(flooded, 99),
        "frames_per_s": sent / seconds,
        "connections_per_s": connections / seconds,
        "bans": len(status["bans"]),
        "rss_before": rss_before,
        "rss_after": rss_after,
    }


def bench_hostile(args: argparse.Namespace) -> Figures:
    """The flooded node first as it treats remote addresses (--ban-loopback: the flooder's
    junk-sending addresses are banned after one strike), then as it treats loopback by default
    (never banned: every strike is followed by a new connection that costs a handshake); then
    issue 12's rule-abiding attacks (benchlib/hardening.py). ``--part`` runs one half."""
    figures: Figures = {}
    if args.part in ("all", "flood"):
        figures |= bench_flood()
    if args.part in ("all", "hardening"):
        figures |= bench_hardening()
    return figures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--part", choices=("all", "flood", "hardening"), default="all", help="junk flood, issue 12's attacks, or both"
    )


def bench_flood() -> Figures:
    blocks = net_chain(2 * HOSTILE_BLOCKS, Wallet.generate().address)
    with tempfile.TemporaryDirectory(prefix="p2pchain-bench-hostile-") as tmp:
        banned = asyncio.run(flood_run(Path(tmp) / "banned", blocks, ("--ban-loopback",)))
        unbanned = asyncio.run(flood_run(Path(tmp) / "unbanned", blocks, ()))
    return {
        "honest_propagation_p50_ms": banned["p50"],
        "honest_propagation_p50_ms_under_flood": banned["p50_flood"],
        "flood_slowdown": banned["p50_flood"] / banned["p50"],
        "honest_propagation_p99_ms_under_flood": banned["p99_flood"],
        "flood_frames_per_s": banned["frames_per_s"],
        "flood_connections_per_s": banned["connections_per_s"],
        "flood_bans": banned["bans"],
        "rss_mb_before_flood": banned["rss_before"],
        "rss_mb_after_flood": banned["rss_after"],
        "unbanned_propagation_p50_ms": unbanned["p50"],
        "unbanned_propagation_p50_ms_under_flood": unbanned["p50_flood"],
        "unbanned_flood_slowdown": unbanned["p50_flood"] / unbanned["p50"],
        "unbanned_flood_frames_per_s": unbanned["frames_per_s"],
        "unbanned_flood_connections_per_s": unbanned["connections_per_s"],
        "unbanned_rss_mb_after_flood": unbanned["rss_after"],
    }


HOSTILE_NOTES = {
    "honest_propagation_p50_ms": f"ms, NEW_BLOCK into node 0 of a {HOSTILE_NODES}-process line to gossip out of "
    f"node {HOSTILE_NODES - 1}, median of {HOSTILE_BLOCKS}, no flood",
    "honest_propagation_p50_ms_under_flood": "ms, same while a flooder process hammers the middle node from "
    f"{len(FLOOD_KINDS)} addresses ({', '.join(FLOOD_KINDS)}); target <= 2x",
    "flood_slowdown": "under flood / no flood; target <= 2",
    "honest_propagation_p99_ms_under_flood": "ms, same, 99th percentile",
    "flood_frames_per_s": "frames/s the flooded node's sockets took from the flooder",
    "flood_connections_per_s": "connections/s the flooder opened (dropped or refused, it reconnects at once)",
    "flood_bans": "addresses the flooded node banned (the junk and bad-block ones)",
    "rss_mb_before_flood": "MiB resident, the flooded node before the flood",
    "rss_mb_after_flood": "MiB resident, the same node after it (the bound: docs/benchmarks.md)",
    "unbanned_propagation_p50_ms": "ms, as honest_propagation_p50_ms, the middle node without --ban-loopback",
    "unbanned_propagation_p50_ms_under_flood": "ms, same under the flood: no address is ever banned",
    "unbanned_flood_slowdown": "under flood / no flood, unbanned",
    "unbanned_flood_frames_per_s": "frames/s, unbanned",
    "unbanned_flood_connections_per_s": "connections/s, unbanned: each costs the node a handshake",
    "unbanned_rss_mb_after_flood": "MiB resident after the unbanned flood",
}


COMMAND = Subcommand(
    bench_hostile,
    "honest block propagation while a peer floods junk; sync, propagation, outbound and memory under "
    "rule-abiding attacks",
    HOSTILE_NOTES | HARDENING_NOTES,
    add_arguments,
)
