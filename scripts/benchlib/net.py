"""net: node processes on loopback: propagation, sync, tx ingest."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgpack

from benchlib.common import Figures, Subcommand
from benchlib.nodes import (
    NET_PARAMS,
    NET_TIMEOUT_S,
    NodeProcs,
    embedded_node,
    free_ports,
    net_chain,
    percentile_ms,
    propagation_ms,
    write_chain,
)
from p2pchain import wire
from p2pchain.client import Client
from p2pchain.keys import Wallet
from p2pchain.ledger import rules
from p2pchain.ledger.block import Block
from p2pchain.ledger.tx import Tx, make_tx
from p2pchain.mempool import Mempool
from p2pchain.node import Node, NodeConfig
from p2pchain.peer import Peer

LINE_NODES = 5  # propagation_line5: node0 - node1 - ... - node4
RANDOM_NODES = 20  # propagation_random20: processes in a random connected graph
RANDOM_DEGREE = 4  # links per node in that graph
PROPAGATION_BLOCKS = 50  # blocks timed in each propagation figure
SYNC_BLOCKS = 10_000  # sync_10000_s: blocks the fresh node downloads
RESYNC_ROUNDS = 5  # reconnections of an up-to-date node; the median is reported
INGEST_TXS = 10_000  # transactions of ingest_tx_per_s, nonces 0.. of one wallet, 1 coin each
INGEST_WINDOW = 2000  # SUBMIT_TX queries in flight on the one connection: a whole part (INGEST_TXS /
# INGEST_ROUNDS) goes out in one write, over the node's TX_VERIFY_PENDING_PER_PEER (1024), so that its queue
# never runs dry within a part (TCP holds the rest; 1,000 topped up below half left it ~500 between top-ups)
INGEST_WARMUP_TXS = 1000  # untimed first: a node's signature workers start on its first transactions
INGEST_ROUNDS = 5  # parts of the ingest, each timed between two runs of the one-core ceiling on it (drift)
assert INGEST_WINDOW >= -(-INGEST_TXS // INGEST_ROUNDS), "a part goes out in one write (INGEST_WINDOW's text)"
REGISTER_BLOCKS = 200  # register_sync_200_ms: the chain a fresh node joins through /nodes/register
REGISTER_ROUNDS = 5  # fresh nodes that register; the median is reported


def random_graph(n: int, degree: int, rng: random.Random) -> list[tuple[int, int]]:
    """A random connected simple graph where every node has ``degree`` links (pairing model:
    ``degree`` stubs per node, shuffled and paired; retried until no loop, no double link and
    connected). Links are (a, b) with a < b."""
    while True:
        stubs = [i for i in range(n) for _ in range(degree)]
        rng.shuffle(stubs)
        links = {(min(a, b), max(a, b)) for a, b in zip(stubs[::2], stubs[1::2], strict=True) if a != b}
        if 2 * len(links) != len(stubs):
            continue
        reached, todo = {0}, [0]
        while todo:
            a = todo.pop()
            for b in [y for x, y in links if x == a] + [x for x, y in links if y == a]:
                if b not in reached:
                    reached.add(b)
                    todo.append(b)
        if len(reached) == n:
            return sorted(links)


async def propagation_figures(root: Path, blocks: list[Block]) -> Figures:
    """A line of LINE_NODES processes (time to its far end), then RANDOM_NODES processes in a
    random graph of degree RANDOM_DEGREE (time to the last node). Blocks enter at node 0."""
    figures: Figures = {}
    line = [(i, i + 1) for i in range(LINE_NODES - 1)]
    graph = random_graph(RANDOM_NODES, RANDOM_DEGREE, random.Random(RANDOM_NODES))
    for name, n, links in (("line5", LINE_NODES, line), ("random20", RANDOM_NODES, graph)):
        procs = NodeProcs(root / name, n)
        try:
            for i in reversed(range(n)):  # each node dials its higher-numbered neighbours, already up
                await procs.start(i, [b for a, b in links if a == i])
            await procs.wait_linked(links)
            watchers = [procs.clients[n - 1]] if name == "line5" else [procs.clients[i] for i in range(1, n)]
            times = await propagation_ms(procs.clients[0], watchers, blocks)
        finally:
            await procs.close()
        figures[f"propagation_{name}_p50_ms"] = statistics.median(times)
        figures[f"propagation_{name}_p99_ms"] = percentile_ms(times, 99)
    return figures


def handshake_event(node: Node) -> asyncio.Event:
    """An event set once ``node`` has handled a peer's HELLO, which is where it decides to sync."""
    done = asyncio.Event()
    on_hello = node.connmgr.node_on_hello

    def on_hello_then_set(peer: Peer) -> None:
        on_hello(peer)
        done.set()

    node.connmgr.node_on_hello = on_hello_then_set
    return done


async def sync_figures(data_dir: Path, source_port: int, height: int) -> Figures:
    """A fresh node (in this process, on this event loop) syncs from the node at ``source_port``
    until it has ``height`` blocks; then, RESYNC_ROUNDS times, the same node restarts on its data
    dir and is timed from start to the end of the handshake, after which it has nothing to fetch."""
    source = f"127.0.0.1:{source_port}"
    config = NodeConfig(data_dir=data_dir, port=0, peers=[source], params=NET_PARAMS, discover=False)
    node = embedded_node(config)
    caught_up = asyncio.Event()
    node.chain.subscribe(lambda connected, gone: caught_up.set() if node.chain.height >= height else None)
    try:
        start = time.perf_counter()
        await node.start()
        async with asyncio.timeout(NET_TIMEOUT_S):
            await caught_up.wait()
        sync_s = time.perf_counter() - start
        requests = node.stats["sync_requests"]
    finally:
        await node.stop()
    noop: list[float] = []
    for _ in range(RESYNC_ROUNDS):
        node = embedded_node(config)
        handshaken = handshake_event(node)
        try:
            start = time.perf_counter()
            await node.start()
            async with asyncio.timeout(NET_TIMEOUT_S):
                await handshaken.wait()
            noop.append((time.perf_counter() - start) * 1000)
            if node.stats["sync_requests"] or node.chain.height != height:
                raise RuntimeError("an up-to-date node asked for blocks")
        finally:
            await node.stop()
    return {"sync_10000_s": sync_s, "sync_10000_requests": requests, "resync_noop_ms": statistics.median(noop)}


# An accepted SUBMIT_RESULT's payload as the node encodes it: the map's head up to the id's value,
# and its tail from "accepted" (true, empty code and error); only the id and the txid vary between
_ACCEPTED = wire.SubmitResult(0, bytes(32), True, "", "").payload()
_ACCEPTED_HEAD = _ACCEPTED[: _ACCEPTED.index(b"\xa2id") + 3]
_ACCEPTED_TAIL = _ACCEPTED[_ACCEPTED.index(b"\xa8accepted") :]


async def submit_pipelined(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, frames: list[bytes], window: int
) -> int:
    """Write the SUBMIT_TX ``frames``, at most ``window`` of them unanswered, each top-up in one
    write, and read replies in bulk until every one is answered; returns how many were accepted.
    The sender's CPU is spent on the node's cores, so it reads the replies as cheaply as it can:
    an accepted SUBMIT_RESULT is told by its payload's fixed head and tail (a 6-entry map whose
    last three are accepted: true and two empty strings), anything else is unpacked with msgpack
    alone, not wire.decode_message's checks of every field: the bench counts answers and
    acceptances, which is all it needs of them."""
    decoder = wire.FrameDecoder()
    sent = answered = accepted = 0
    head, tail = _ACCEPTED_HEAD, _ACCEPTED_TAIL
    while answered < len(frames):
        if sent - answered < window // 2 and sent < len(frames):
            top = min(len(frames), answered + window)
            writer.write(b"".join(frames[sent:top]))
            sent = top
        data = await reader.read(2**16)
        if not data:
            raise RuntimeError(f"the node closed the connection after {answered} answers")
        for payload in decoder.feed(data):
            if payload.startswith(head) and payload.endswith(tail):
                answered += 1
                accepted += 1
                continue
            doc = msgpack.unpackb(payload)
            kind = doc["type"]
            if kind == wire.SubmitResult.TYPE:
                answered += 1
                accepted += doc["accepted"] is True
            elif kind == wire.Ping.TYPE:
                writer.write(wire.Pong(doc["nonce"]).encode())
    return accepted


def ingest_cores() -> list[int]:
    """The cores this process may run on, in order (the one-core ceiling runs on each in turn)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def on_core(core: int | None, fn: Callable[[], float]) -> float:
    """``fn()`` with this thread held to ``core`` (None: anywhere), its mask put back after."""
    if core is None:
        return fn()
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        return fn()
    finally:
        os.sched_setaffinity(0, mask)


async def ingest_figures(port: int, wallet: Wallet, count: int) -> Figures:
    """``count`` signed payments of 1 coin from ``wallet`` (nonces 0..), pipelined as SUBMIT_TX over
    one connection to the node at ``port``; every one must be accepted. Before the clock starts,
    the node takes INGEST_WARMUP_TXS payments it refuses after their signature check (a nonce
    gap), so its signature worker processes are up, as on a node under load (they start on its
    first transactions: cold, a run pays their start). The sender shares the node's cores, so it
    costs them as little as it can: its frames are signed and encoded before the clock starts,
    written in bulk, and the replies read in bulk (a few us a transaction).

    The in-process figure (the ceiling) is Mempool.add of the same payments, freshly decoded, on
    one core. The speed of this shared machine's cores drifts by tens of percent within a second
    or two, and each core on its own (docs/benchmarks.md, "Issue 14, tenth session"), so the two
    are measured in turns and under the same drift: the payments go in INGEST_ROUNDS parts; each
    part is added to one ceiling pool just before it is sent to the node, and to a second pool
    (the same transactions into the same empty start, a second sample of the same work) just
    after, on one core then the other, the order of the cores swapped at each part (the node runs
    on all of them: its one-core reference is each core in turn, not whichever core the ceiling
    happened to run on); each figure is its transactions over its summed time, and the ceiling is
    the faster of the two pools (the pool after a part ran 4-6 % slower in every probe, on a core
    the node had just used: averaging it in would lower the ceiling and flatter the ratio). Before
    each timed stretch, of either side, this process collects its garbage (untimed): the bench's
    own heap (the chain it built, the frames) is not walked inside either clock."""
    to = Wallet.generate().address
    txs = [make_tx(wallet, to, 1, 0, n, NET_PARAMS.network_id) for n in range(count)]
    funded, payer = rules.Account(count, 0), wallet.address  # (the address derives from the key: once)
    pools = [Mempool(NET_PARAMS, lambda a: funded if a == payer else rules.EMPTY_ACCOUNT) for _ in range(2)]
    part = -(-count // INGEST_ROUNDS)
    parts = [txs[i : i + part] for i in range(0, count, part)]
    cores: list[int | None] = list(ingest_cores()) or [None]

    def inprocess_s(pool: Mempool, payments: list[Tx], core: int | None) -> float:
        fresh = [Tx.from_wire(tx.to_wire()) for tx in payments]
        gc.collect()

        def add_all() -> float:
            start = time.perf_counter()
            for tx in fresh:
                pool.add(tx)
            return time.perf_counter() - start

        return on_core(core, add_all)

    frames = [wire.SubmitTx(i, tx).encode() for i, tx in enumerate(txs, start=1)]
    # warm-up: payments the node refuses only after checking their signatures (nonces from 1 of
    # an unfunded wallet: a gap), so that its signature workers run when the clock starts
    stranger = Wallet.generate()
    warmup = [make_tx(stranger, to, 1, 0, n, NET_PARAMS.network_id) for n in range(1, INGEST_WARMUP_TXS + 1)]
    warm_frames = [wire.SubmitTx(count + i, tx).encode() for i, tx in enumerate(warmup, start=1)]
    reader, writer, _ = await Client.handshake("127.0.0.1", port)
    pool_s = [0.0, 0.0]  # the ceiling's two pools: before and after each part
    node_s = 0.0
    accepted = 0
    try:
        if await submit_pipelined(reader, writer, warm_frames, INGEST_WINDOW):
            raise RuntimeError("the node accepted a warm-up transaction with a nonce gap")
        done = 0
        for k, payments in enumerate(parts):
            pool_s[0] += inprocess_s(pools[0], payments, cores[k % len(cores)])
            gc.collect()
            start = time.perf_counter()
            accepted += await submit_pipelined(reader, writer, frames[done : done + len(payments)], INGEST_WINDOW)
            node_s += time.perf_counter() - start
            pool_s[1] += inprocess_s(pools[1], payments, cores[(k + 1) % len(cores)])
            done += len(payments)
    finally:
        writer.close()
    if accepted != len(txs):
        raise RuntimeError(f"the node accepted {accepted} of {len(txs)} transactions")
    ingest = accepted / node_s
    inprocess = len(txs) / min(pool_s)  # (each pool took every transaction: the faster is the ceiling)
    return {
        "ingest_tx_per_s": ingest,
        "ingest_inprocess_tx_per_s": inprocess,
        "ingest_vs_inprocess": ingest / inprocess,
    }


async def sync_and_ingest(root: Path, blocks: list[Block], wallet: Wallet) -> Figures:
    """The source node's store is written in this process (timed: the no-network floor of a sync),
    then the node serves a fresh node's sync and takes the transactions of ``wallet``."""
    procs = NodeProcs(root / "source", 1)
    figures: Figures = {"sync_10000_inprocess_s": write_chain(procs.data_dir(0), blocks)}
    try:
        await procs.start(0, [])
        figures.update(await sync_figures(root / "fresh", procs.ports[0], len(blocks)))
        # the ingest's connection is the node's only one: a client or peer also connected would be
        # sent every accepted transaction as NEW_TX (relay's cost, which `bench.py relay` measures),
        # and this process would decode them on the cores the node is measured on
        await procs.clients.pop(0).close()
        figures.update(await ingest_figures(procs.ports[0], wallet, min(INGEST_TXS, len(blocks))))
    finally:
        await procs.close()
    return figures


async def http_json(http: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> Any:
    async with http.request(method, url, json=body) as resp:
        resp.raise_for_status()
        return await resp.json()


async def register_figures(root: Path, blocks: list[Block]) -> Figures:
    """The tutorial's way to join a network, against a node process holding ``blocks``:
    REGISTER_ROUNDS times, a fresh node process with --http-port gets POST /nodes/register
    naming that node (timed to its answer), then GET /nodes/resolve, timed until the answer
    shows the peer's chain; the fresh node's tip is then checked to be the peer's."""
    procs = NodeProcs(root / "register", 1 + REGISTER_ROUNDS)
    write_chain(procs.data_dir(0), blocks)
    http_ports = free_ports(REGISTER_ROUNDS)
    answers: list[float] = []
    synced: list[float] = []
    try:
        await procs.start(0, [])
        source = f"127.0.0.1:{procs.ports[0]}"
        async with aiohttp.ClientSession() as http:
            for r, port in enumerate(http_ports, start=1):
                client = await procs.start(r, [], ("--http-port", str(port)))
                base = f"http://127.0.0.1:{port}"
                deadline = time.monotonic() + NET_TIMEOUT_S
                while True:  # the HTTP shim starts after the P2P port: until it answers (not timed)
                    try:
                        await http_json(http, "GET", base + "/status")
                        break
                    except aiohttp.ClientConnectionError:
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"node{r}'s HTTP port {port} did not open") from None
                        await asyncio.sleep(0.01)
                start = time.perf_counter()
                doc = await http_json(http, "POST", base + "/nodes/register", {"nodes": [source]})
                answers.append((time.perf_counter() - start) * 1000)
                if doc["pending"]:
                    raise RuntimeError(f"node{r} did not connect to {source}: {doc}")
                doc = await http_json(http, "GET", base + "/nodes/resolve")
                synced.append((time.perf_counter() - start) * 1000)
                status = await client.status()
                if doc["length"] != len(blocks) + 1 or status["height"] != len(blocks):
                    raise RuntimeError(f"node{r} is at height {status['height']} after resolve, not {len(blocks)}")
    finally:
        await procs.close()
    return {
        "register_answer_ms": statistics.median(answers),
        f"register_sync_{len(blocks)}_ms": statistics.median(synced),
    }


def bench_net(args: argparse.Namespace) -> Figures:
    wallet = Wallet.generate()  # every pre-mined block pays it 1 coin: the ingest transactions spend them
    blocks = net_chain(SYNC_BLOCKS, wallet.address)
    with tempfile.TemporaryDirectory(prefix="p2pchain-bench-net-") as tmp:
        root = Path(tmp)
        figures = asyncio.run(propagation_figures(root, blocks[:PROPAGATION_BLOCKS]))
        figures.update(asyncio.run(register_figures(root, blocks[:REGISTER_BLOCKS])))
        figures.update(asyncio.run(sync_and_ingest(root, blocks, wallet)))
    return figures


NET_NOTES = {
    "propagation_line5_p50_ms": f"ms, NEW_BLOCK in at one end of a {LINE_NODES}-process line to gossip out of the "
    f"other, median of {PROPAGATION_BLOCKS}",
    "propagation_line5_p99_ms": "ms, same, 99th percentile",
    "propagation_random20_p50_ms": f"ms, same in {RANDOM_NODES} processes, random graph of degree {RANDOM_DEGREE}, "
    "until the last node",
    "propagation_random20_p99_ms": "ms, same, 99th percentile",
    "sync_10000_s": f"s, a fresh node syncs {SYNC_BLOCKS:,} blocks from one node process; target <= 3",
    "sync_10000_requests": "GET_CHAIN requests that sync took",
    "sync_10000_inprocess_s": "s, Chain.process_block of the same blocks, no network (the floor)",
    "resync_noop_ms": f"ms, an up-to-date node starts, handshakes, has nothing to fetch (median of {RESYNC_ROUNDS})",
    "register_answer_ms": f"ms, POST /nodes/register on a fresh node to its answer (handshake done; median of "
    f"{REGISTER_ROUNDS})",
    f"register_sync_{REGISTER_BLOCKS}_ms": f"ms, from that POST to GET /nodes/resolve answering with the peer's "
    f"{REGISTER_BLOCKS}-block chain; target <= 15",
    "ingest_tx_per_s": f"txs/s a node accepts over one TCP connection, its only one (pipelined SUBMIT_TX, after "
    f"{INGEST_WARMUP_TXS:,} warm-up transactions); target >= 5,000",
    "ingest_inprocess_tx_per_s": "txs/s, Mempool.add of the same transactions on one core, no network (measured "
    f"in turns with the node's: {INGEST_ROUNDS} parts, each added to one pool here just before it is sent to the "
    "node and to a second pool just after, on each core in turn; the faster pool's figure)",
    "ingest_vs_inprocess": "ingest_tx_per_s / ingest_inprocess_tx_per_s: signatures on every core; target >= 1.5",
}


COMMAND = Subcommand(bench_net, "node processes on loopback: propagation, sync, tx ingest", NET_NOTES)
