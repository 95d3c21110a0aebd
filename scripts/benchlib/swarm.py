"""swarm: propagation among 200 in-process nodes, memory per node process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from benchlib.common import Figures, Subcommand, rss_mb

SWARM_BENCH_BITS = 12  # blocks take milliseconds to mine: what is timed is their spread
SWARM_BENCH_MINERS = 4  # nodes that take turns mining the measured blocks
SWARM_SETTLE_S = 2.0  # the peer count must hold still this long before blocks are timed
# ... and discovery must have filled the outbound slots (TARGET_OUTBOUND a node, 99 % of them),
# or the count held this long: discovery starts seconds after the wiring (the addresses come in
# PEERS answers) and dials one address a second, so a 2 s lull came before it, and its dials,
# handshakes and PEERS answers landed in the timed blocks (peers 8 -> 24 during them)
SWARM_SETTLE_MAX_S = 10.0
SWARM_SETTLE_TIMEOUT_S = 120.0  # a count that never holds still (connections churning) ends the bench
SWARM_RSS_WARMUP_S = 10.0  # the 20-node swarm mines this long before its memory is read


async def _until(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(poll)


async def _settled(members: list[Any]) -> None:
    """Until discovery has dialled what it will: the peer count held SWARM_SETTLE_S with the
    outbound slots filled, or held SWARM_SETTLE_MAX_S (a small swarm has too few addresses)."""
    from p2pchain import limits

    slots = 0.99 * limits.TARGET_OUTBOUND * len(members)
    last, still = -1, time.monotonic()
    deadline = still + SWARM_SETTLE_TIMEOUT_S
    while True:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the swarm's peer count never held still within {SWARM_SETTLE_TIMEOUT_S:g} s")
        await asyncio.sleep(0.25)
        count = sum(len(m.node.connmgr.ready) for m in members)
        if count != last:
            last, still = count, time.monotonic()
        held = time.monotonic() - still
        filled = sum(m.node.connmgr.outbound_count() for m in members) >= slots
        if held >= SWARM_SETTLE_S and (filled or held >= SWARM_SETTLE_MAX_S):
            return


async def inprocess_propagation(nodes: int, degree: int, blocks: int, relay: str = "compact") -> Figures:
    """``nodes`` Node objects in this event loop, wired as a random graph of ``degree`` links
    per node; miners take turns mining one block each (Node.mine_block, the node's own path)
    and the time from the miner connecting it to the last node connecting it is recorded."""
    import swarm  # scripts/swarm.py

    opts = swarm.Options(
        nodes=nodes, miners=0, topology=f"random:{degree}", difficulty=SWARM_BENCH_BITS, in_process=True, relay=relay
    )
    prop = swarm.Propagation()
    with tempfile.TemporaryDirectory(prefix="p2pchain-bench-swarm-") as tmp:
        launcher = swarm.InProcessLauncher(opts, Path(tmp), prop.arrived)
        try:
            started = time.perf_counter()
            await launcher.start(swarm.topology_dials(nodes, opts.topology, random.Random(1)))
            members = launcher.members
            links = [len(d) for d in swarm.topology_dials(nodes, opts.topology, random.Random(1))]
            await _until(
                lambda: all(len(m.node.connmgr.ready) >= n for m, n in zip(members, links, strict=True)),
                60,
                "every node to connect to its peers",
            )
            await _settled(members)
            start_s = time.perf_counter() - started
            everyone = set(range(nodes))
            spreads: list[float] = []
            while len(spreads) < blocks:
                miner = members[len(spreads) % SWARM_BENCH_MINERS].node
                block = await miner.mine_block()
                if block is None:
                    continue
                reached = partial(prop.spread_ms, block.hash, everyone)
                await _until(lambda: reached() is not None, 60, "a block to reach every node")  # noqa: B023
                spread = reached()
                assert spread is not None
                spreads.append(spread)
            peers = statistics.mean(len(m.node.connmgr.ready) for m in members)
            memory = rss_mb()
        finally:
            await launcher.stop()
    return {
        f"swarm{nodes}_inprocess_propagation_p50_ms": swarm.percentile(spreads, 50),
        f"swarm{nodes}_inprocess_propagation_p99_ms": swarm.percentile(spreads, 99),
        f"swarm{nodes}_inprocess_mean_peers": peers,
        f"swarm{nodes}_inprocess_start_s": start_s,
        f"swarm{nodes}_inprocess_rss_mb": memory,
    }


async def process_rss(nodes: int, warmup_s: float) -> Figures:
    """Resident memory of each node process (miner workers not counted) in a ``nodes``-process
    swarm, two of them mining at the demo difficulty, after ``warmup_s`` of running."""
    import swarm  # scripts/swarm.py

    opts = swarm.Options(nodes=nodes, miners=2, topology="random:8", log_level="WARNING")
    with tempfile.TemporaryDirectory(prefix="p2pchain-bench-swarm-") as tmp:
        launcher = swarm.ProcessLauncher(opts, Path(tmp), lambda i, b, t: None)
        try:
            await launcher.start(swarm.topology_dials(nodes, opts.topology, random.Random(1)))
            await asyncio.sleep(warmup_s)  # the measured state: connected, mining, relaying
            sizes = [swarm.rss_mb(m.proc.pid) for m in launcher.members if m.proc is not None]
            dead = launcher.died()
        finally:
            await launcher.stop()
    known = [s for s in sizes if s is not None]
    if dead or len(known) != nodes:
        raise RuntimeError(f"node processes died or unreadable: {dead}")
    return {"swarm_rss_mb_per_node": statistics.mean(known), "swarm_rss_mb_max": max(known)}


def bench_swarm(args: argparse.Namespace) -> Figures:
    logging.getLogger("p2pchain").setLevel(logging.ERROR)  # 200 nodes' "duplicate connection" notes
    figures = asyncio.run(inprocess_propagation(args.nodes, args.degree, args.blocks))
    figures.update(asyncio.run(process_rss(args.rss_nodes, SWARM_RSS_WARMUP_S)))
    return figures


def swarm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=200, help="in-process nodes (default 200)")
    p.add_argument("--degree", type=int, default=8, help="links per node in the random graph (default 8)")
    p.add_argument("--blocks", type=int, default=40, help="blocks timed (default 40)")
    p.add_argument("--rss-nodes", type=int, default=20, help="node processes for the memory figure (default 20)")


SWARM_NOTES = {
    "swarm200_inprocess_propagation_p50_ms": "ms, a block from its miner to all 200 in-process nodes, median",
    "swarm200_inprocess_propagation_p99_ms": "ms, same, 99th percentile",
    "swarm200_inprocess_mean_peers": "connections per node when timed (random:8 plus discovery)",
    "swarm200_inprocess_start_s": "s to start 200 nodes and connect them",
    "swarm200_inprocess_rss_mb": "MiB resident, the one process holding 200 nodes",
    "swarm_rss_mb_per_node": "MiB resident per node process, 20-process swarm, mean",
    "swarm_rss_mb_max": "MiB, the largest of those",
}


COMMAND = Subcommand(
    bench_swarm,
    "block propagation among 200 in-process nodes, memory per node process",
    SWARM_NOTES,
    swarm_arguments,
)
