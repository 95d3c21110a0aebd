"""hostile, part two (issue 12): rule-abiding attacks, each against an honest baseline of the same run.

- ``sync_under_fake_work_s``: a node 30 blocks behind catches up from two honest nodes, once
  alone and once with a peer that claims far more work in HELLO and answers every GET_CHAIN with
  an empty CHAIN (in-process nodes: the same node code over loopback sockets).
- ``propagation_under_query_flood_ms``: honest block propagation across a 3-process line while 8
  connections ask the middle node for 500 blocks (GET_CHAIN) again and again.
- ``honest_outbound_after_addr_flood``: outbound picks from a mixed address book (7 honest
  sources) after one source sent 1,000 addresses, mean over 40 keys of the book.
- ``rss_mb_peak_under_decode_bomb``: the peak resident memory of a node process that is sent
  decode bombs (a 3 MB PING of ignored fields, a 4 MiB CHAIN of empty maps) from 20 addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib.common import Figures
from benchlib.nodes import NET_PARAMS, NET_TIMEOUT_S, NodeProcs, embedded_node, net_chain, propagation_ms, write_chain
from p2pchain import limits, wire
from p2pchain.addrman import AddrMan, host_of, netgroup
from p2pchain.keys import Wallet
from p2pchain.ledger.block import Block

FAKE_WORK_BEHIND = 30  # blocks the victim lacks
SYNC_RUNS = 7  # runs of each, with and without the attack
QUERY_FLOODERS = 8  # connections flooding GET_CHAIN
QUERY_CHAIN = 600  # blocks every node holds before the timed ones: each GET_CHAIN answer is 500 of them
QUERY_BLOCKS = 30  # blocks timed without the flood, and as many under it
QUERY_ROUNDS = 3  # rounds of (no flood, flood) the timed blocks are spread over
BOMB_SOURCES = 20  # addresses the decode bombs come from (each is banned after its first)


# --- sync under fake work ------------------------------------------------------------------------
async def _sync_seconds(root: Path, blocks: list[Block], attack: bool) -> float:
    from p2pchain.node import Node, NodeConfig

    def node(name: str, n: int) -> Node:
        write_chain(root / name, blocks[:n])
        return embedded_node(NodeConfig(data_dir=root / name, port=0, params=NET_PARAMS, discover=False))

    victim = node("victim", len(blocks) - FAKE_WORK_BEHIND)
    honest = [node(f"honest{i}", len(blocks)) for i in range(2)]
    await victim.start()
    for h in honest:
        await h.start()
    attacker: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    answering: asyncio.Task[None] | None = None
    try:
        if attack:
            reader, writer = await asyncio.open_connection("127.0.0.1", victim.port, local_addr=("127.0.0.9", 0))
            attacker = reader, writer
            net = NET_PARAMS.network_id
            writer.write(
                wire.Hello(limits.PROTOCOL_VERSION, net, os.urandom(16), 1, 10**6, net, 2**200, "fake").encode()
            )

            async def answer() -> None:  # every GET_CHAIN: an empty CHAIN; every PING: its PONG
                while True:
                    msg = wire.decode_message(await wire.read_frame(reader))
                    if isinstance(msg, wire.GetChain):
                        writer.write(wire.Chain((), False).encode())
                    elif isinstance(msg, wire.Ping):
                        writer.write(wire.Pong(msg.nonce).encode())

            async with asyncio.timeout(NET_TIMEOUT_S):
                while victim.sync_peer is None:  # the attacker holds the sync slot
                    await asyncio.sleep(0.005)
        start = time.perf_counter()
        for h in honest:
            h.connmgr.connect(f"127.0.0.1:{victim.port}")
        if attack:
            answering = asyncio.create_task(answer())
        async with asyncio.timeout(NET_TIMEOUT_S):
            while victim.chain.tip.hash != blocks[-1].hash:
                await asyncio.sleep(0.002)
        return time.perf_counter() - start
    finally:
        if answering is not None:
            answering.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await answering
        if attacker is not None:
            attacker[1].close()
        for h in honest:
            await h.stop()
        await victim.stop()


def sync_under_fake_work(root: Path) -> Figures:
    """Medians of SYNC_RUNS runs of each, alternating (one run takes tens of milliseconds: on a
    shared machine a single one is mostly noise)."""
    blocks = net_chain(FAKE_WORK_BEHIND + 20, Wallet.generate().address)
    bases, attacks = [], []
    for i in range(SYNC_RUNS):
        bases.append(asyncio.run(_sync_seconds(root / f"base{i}", blocks, attack=False)))
        attacks.append(asyncio.run(_sync_seconds(root / f"attack{i}", blocks, attack=True)))
    base, attacked = statistics.median(bases), statistics.median(attacks)
    return {"sync_no_attack_s": base, "sync_under_fake_work_s": attacked, "sync_fake_work_ratio": attacked / base}


# --- propagation under a GET_CHAIN flood ------------------------------------------------------------
async def _read_answers(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, outstanding: list[int], counts: dict[str, int]
) -> None:
    """Every frame whole: CHAIN answers counted, PINGs answered."""
    while True:
        msg = wire.decode_message(await wire.read_frame(reader))
        if isinstance(msg, wire.Chain):
            counts["answers"] += 1
            outstanding[0] -= 1
        elif isinstance(msg, wire.Ping):
            writer.write(wire.Pong(msg.nonce).encode())


async def _query_flood(port: int, stop: asyncio.Event, active: Any, counts: dict[str, int]) -> None:
    net = NET_PARAMS.network_id
    hello = wire.Hello(limits.PROTOCOL_VERSION, net, os.urandom(16), 0, 0, net, 0, "query-flood").encode()
    ask = wire.GetChain((net,), limits.MAX_BLOCKS_PER_CHAIN).encode()
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        outstanding = [0]
        reading = asyncio.create_task(_read_answers(reader, writer, outstanding, counts))
        try:
            writer.write(hello)
            while not stop.is_set() and not reading.done():
                while outstanding[0] < 4 and active.is_set():  # a few ahead: the node answers one at a time
                    writer.write(ask)
                    outstanding[0] += 1
                await asyncio.sleep(0.002)
        except ConnectionError:
            pass
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
                await reading
            writer.close()


def _query_flood_process(port: int, stop: Any, active: Any, result: Any) -> None:
    """The flooders' process: QUERY_FLOODERS connections, asking while ``active`` is set, until
    ``stop``; answers/s (of the time active) to ``result``."""
    os.nice(19)  # an attacker does not run on its victim's cores: it takes what they leave
    counts = {"answers": 0}

    async def main() -> None:
        done = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.05)
            done.set()

        await asyncio.gather(watch(), *(_query_flood(port, done, active, counts) for _ in range(QUERY_FLOODERS)))

    start = time.perf_counter()
    asyncio.run(main())
    result.send(counts["answers"] / (time.perf_counter() - start) * 2)  # active half the time


async def _propagation_under_queries(root: Path) -> Figures:
    """Blocks timed in QUERY_ROUNDS rounds, each one without the flood, then one under it (the
    flooders pause in between), so that the load of a shared machine weighs on both alike."""
    import multiprocessing

    blocks = net_chain(QUERY_CHAIN + 2 * QUERY_BLOCKS, Wallet.generate().address)
    procs = NodeProcs(root, 3)
    try:
        for i in range(3):
            write_chain(procs.data_dir(i), blocks[:QUERY_CHAIN])
        for i in reversed(range(3)):
            await procs.start(i, [i + 1] if i < 2 else [])
        await procs.wait_linked([(0, 1), (1, 2)])
        source, watcher = procs.clients[0], procs.clients[2]
        timed = iter(blocks[QUERY_CHAIN:])
        ctx = multiprocessing.get_context("spawn")
        stop, active, (receive, send) = ctx.Event(), ctx.Event(), ctx.Pipe(duplex=False)
        args = (procs.ports[1], stop, active, send)
        flooder = ctx.Process(target=_query_flood_process, args=args, daemon=True)
        flooder.start()
        quiet: list[float] = []
        flooded: list[float] = []
        try:
            per_round = QUERY_BLOCKS // QUERY_ROUNDS
            for _ in range(QUERY_ROUNDS):
                for times, on in ((quiet, False), (flooded, True)):
                    if on:
                        active.set()
                    await asyncio.sleep(0.5)  # the flood at full speed (or gone) before blocks are timed
                    for _ in range(per_round):
                        times += await propagation_ms(source, [watcher], [next(timed)])
                        await asyncio.sleep(0.05)
                    active.clear()
        finally:
            stop.set()
            got = await asyncio.to_thread(receive.poll, NET_TIMEOUT_S)
            answers_per_s = receive.recv() if got else None
            flooder.join(5)
            if flooder.is_alive():
                flooder.kill()
    finally:
        await procs.close()
    return {
        "propagation_no_query_flood_ms": statistics.median(quiet),
        "propagation_under_query_flood_ms": statistics.median(flooded),
        "query_flood_slowdown": statistics.median(flooded) / statistics.median(quiet),
        "query_flood_answers_per_s": answers_per_s,
    }


# --- outbound after an address flood -----------------------------------------------------------------
def outbound_after_addr_flood() -> Figures:
    honest_sources = [f"10.{10 + i}.0.1" for i in range(7)]
    flood = [f"{100 + n // 250}.{n % 250}.7.7:7000" for n in range(1000)]

    def honest_picks(seed: int, flooded: bool) -> int:
        book = AddrMan(secret=seed.to_bytes(8, "big"), rng=random.Random(seed))
        for i, source in enumerate(honest_sources):
            book.add([f"{30 + i}.{j}.0.1:7000" for j in range(20)], source)
        if flooded:
            book.add(flood, "10.9.0.1")
        chosen: list[str] = []
        for _ in range(limits.TARGET_OUTBOUND):
            groups = {netgroup(host_of(a)) for a in chosen}
            pick = book.select(set(chosen), groups) or book.select(set(chosen))
            if pick is None:
                break
            chosen.append(pick)
        return sum(1 for a in chosen if not a.startswith(tuple(f"{100 + k}." for k in range(4))))

    seeds = range(40)
    return {
        "honest_outbound_no_flood": statistics.mean(honest_picks(s, False) for s in seeds),
        "honest_outbound_after_addr_flood": statistics.mean(honest_picks(s, True) for s in seeds),
    }


# --- memory under decode bombs -----------------------------------------------------------------------
def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


async def _decode_bombs(root: Path) -> Figures:
    procs = NodeProcs(root, 1)
    try:
        await procs.start(0, [], ("--ban-loopback",))
        pid = procs.procs[0].pid
        await procs.clients[0].status()
        before = _peak_rss_mb(pid)
        net = NET_PARAMS.network_id
        pad: list[list[dict[str, int]]] = [[{}] * limits.MAX_WIRE_ARRAY_ITEMS] * 20
        ping = {"type": "PING", "nonce": 1, **{f"pad{i}": pad for i in range(40)}}
        chain = {"type": "CHAIN", "blocks": [], "more": False, "x": [[{}] * 4000] * 1000}
        import msgpack

        bombs = [bytes(msgpack.packb(doc)) for doc in (ping, chain)]
        for n in range(BOMB_SOURCES):
            payload = bombs[n % 2]
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", procs.ports[0], local_addr=(f"127.0.7.{n + 2}", 0)
                )
            except OSError:
                continue
            hello = wire.Hello(limits.PROTOCOL_VERSION, net, os.urandom(16), 0, 0, net, 0, "bomb").encode()
            writer.write(hello + len(payload).to_bytes(4, "big") + payload)
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(NET_TIMEOUT_S):
                    while await reader.read(2**16):  # until the node drops us
                        pass
            writer.close()
        await procs.clients[0].status()  # still answers
        after = _peak_rss_mb(pid)
    finally:
        await procs.close()
    return {"rss_mb_peak_before_decode_bomb": before, "rss_mb_peak_under_decode_bomb": after}


def bench_hardening() -> Figures:
    with tempfile.TemporaryDirectory(prefix="p2pchain-bench-hardening-") as tmp:
        root = Path(tmp)
        figures = sync_under_fake_work(root / "sync")
        figures |= asyncio.run(_propagation_under_queries(root / "queries"))
        figures |= outbound_after_addr_flood()
        figures |= asyncio.run(_decode_bombs(root / "bombs"))
    return figures


HARDENING_NOTES = {
    "sync_no_attack_s": f"s, a node {FAKE_WORK_BEHIND} blocks behind catches up from 2 honest nodes "
    f"(in-process), median of {SYNC_RUNS}",
    "sync_under_fake_work_s": "s, same with a peer claiming 2**200 work that answers GET_CHAIN empty; target <= 2x",
    "sync_fake_work_ratio": "under fake work / no attack; target <= 2",
    "propagation_no_query_flood_ms": f"ms, block across a 3-process line, median of {QUERY_BLOCKS}, no flood",
    "propagation_under_query_flood_ms": f"ms, same while {QUERY_FLOODERS} connections flood the middle node "
    "with GET_CHAIN of 500 blocks; target <= 2x",
    "query_flood_slowdown": "under flood / no flood; target <= 2",
    "query_flood_answers_per_s": "CHAIN answers/s the flooders got (one outstanding per connection)",
    "honest_outbound_no_flood": "of 8 outbound picks from 7 honest sources' addresses, mean of 40 book keys",
    "honest_outbound_after_addr_flood": "same after one source sent 1,000 addresses; target >= 6",
    "rss_mb_peak_before_decode_bomb": "MiB, peak resident (VmHWM) of a node process before the bombs",
    "rss_mb_peak_under_decode_bomb": f"MiB, same after decode bombs from {BOMB_SOURCES} addresses "
    "(3 MB PING of ignored keys, 4 MiB CHAIN of empty maps)",
}
