"""p2pchain benchmarks: one entry point, one subcommand per area.

    .venv/bin/python scripts/bench.py ledger [--seconds 1.5] [--json]

Each subcommand prints a readable table; with --json the last line of stdout is one JSON object
holding its figures at the top level, plus "subcommand", "seconds" and "machine". Every
measurement runs for a bounded time (--seconds), so a subcommand finishes in seconds.

To add a subcommand, write ``def bench_<name>(args) -> Figures`` and register it in SUBCOMMANDS
with a note per figure (its unit and what it measures); the helpers below time loops, describe
the machine and print the results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import platform
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pchain import limits, wire
from p2pchain.chain import Chain
from p2pchain.client import Client, NodeUnavailable
from p2pchain.keys import Wallet
from p2pchain.ledger import rules
from p2pchain.ledger.block import NONCE, Block, Header
from p2pchain.ledger.tx import Tx, make_tx
from p2pchain.mempool import Mempool
from p2pchain.miner import MinerPool, build_template, mine_block, search, target_bytes
from p2pchain.node import Node, NodeConfig
from p2pchain.params import NetworkParams
from p2pchain.peer import Peer
from p2pchain.store import DB_FILE

Figures = dict[str, Any]  # figure name -> number (or None when it could not be measured)


# --- shared helpers --------------------------------------------------------------------------
def rate(step: Callable[[], int], seconds: float) -> float:
    """Units per second: call ``step`` (which returns the units it did) until ``seconds`` pass."""
    done = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        done += step()
    return done / elapsed


def timed_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def rss_mb() -> float:
    """This process's resident memory now (Linux), else its peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def machine_info() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(terse=True),
    }


def format_value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(title: str, figures: Figures, notes: dict[str, str]) -> None:
    width = max(map(len, figures), default=0)
    values = {k: format_value(v) for k, v in figures.items()}
    vwidth = max(map(len, values.values()), default=0)
    print(title)
    for key, text in values.items():
        print(f"  {key:<{width}}  {text:>{vwidth}}  {notes.get(key, '')}".rstrip())


# --- ledger: hashing, signatures, block acceptance --------------------------------------------
BENCH_HEADER = Header(1, 1, b"\x5a" * 32, b"\xa5" * 32, 1_700_000_000_000, 256, 0)  # 256 bits: never solved
SIGNING_SHARE = 0.4  # of --seconds spent signing the distinct transactions tx_verify_per_s checks
CHAIN_PARAMS = NetworkParams(bits=1, reward=1_000_000)  # blocks cost ~2 hashes; the payer stays funded
CHAIN_SAMPLES = 20  # blocks timed at each height; the median is reported
CHAIN_BLOCK_TXS = 100  # signed transactions in each timed block (issue 3: a 100-transaction block)
CHAIN_FILL_TXS = 9  # signed transactions in each filler block: 10 with the coinbase (issue 3's RSS figure)


def hash_ceiling(prefix: bytes, bits: int, seconds: float) -> float:
    """Bare hashlib: the midstate loop of miner.search, inline, with no chunks or bookkeeping."""
    tgt = target_bytes(bits)
    assert tgt is not None
    copy = hashlib.sha256(prefix).copy
    pack = NONCE.pack
    done = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for n in range(done, done + limits.MINER_CHUNK_NONCES):
            h = copy()
            h.update(pack(n))
            if h.digest() < tgt:
                raise AssertionError("the bench header has no solution")
        done += limits.MINER_CHUNK_NONCES
    return done / elapsed


def hash_rate_search(prefix: bytes, bits: int, seconds: float) -> float:
    nonce = 0

    def step() -> int:
        nonlocal nonce
        assert search(prefix, bits, nonce, limits.MINER_CHUNK_NONCES) is None
        nonce += limits.MINER_CHUNK_NONCES
        return limits.MINER_CHUNK_NONCES

    return rate(step, seconds)


def pool_figures(seconds: float) -> Figures:
    """All-core hash rate of a MinerPool, its start cost (to the first solved job) and the time
    it takes to drop a job and solve the next one (what a new tip costs)."""
    start = time.perf_counter()
    with MinerPool() as pool:
        assert pool.solve_blocking(Header(1, 1, bytes(32), bytes(32), 0, 1, 0), timeout=60) is not None
        start_ms = (time.perf_counter() - start) * 1000
        job = pool.submit(BENCH_HEADER)
        time.sleep(0.2)  # every worker is on the job
        h0, t0 = pool.hashes_done, time.perf_counter()
        time.sleep(seconds)
        all_cores = (pool.hashes_done - h0) / (time.perf_counter() - t0)
        switches: list[float] = []
        for ts in range(5):
            easy = Header(1, 1, bytes(32), bytes(32), ts, 1, 0)  # solved by the first worker to look
            switches.append(timed_ms(partial(pool.solve_blocking, easy, timeout=10)))
            pool.submit(BENCH_HEADER)
            time.sleep(0.02)
        pool.cancel()
        assert job.result(0) is None
        return {
            "hash_rate_all_cores": all_cores,
            "miner_procs": pool.procs,
            "miner_pool_start_ms": start_ms,
            "miner_switch_ms": max(switches),
        }


def ed25519_ceiling(seconds: float) -> float:
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    message = bytes(range(160))  # about a transaction's signing message
    signature = key.sign(message)

    def step() -> int:
        for _ in range(100):
            public.verify(signature, message)
        return 100

    return rate(step, seconds)


def sign(private: Ed25519PrivateKey, unsigned: Tx, network_id: bytes) -> Tx:
    """A new Tx object (nothing cached on it yet) with the signature."""
    return replace(unsigned, signature=private.sign(unsigned.signing_message(network_id)))


def signed_txs(network_id: bytes, seconds: float) -> Iterator[Tx]:
    """Distinct signed transactions, made for ``seconds`` (from 16 wallets in turn)."""
    wallets = [Wallet.generate() for _ in range(16)]
    keys = [(w.private, w.address, w.pubkey) for w in wallets]
    deadline = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < deadline:
        private, address, pubkey = keys[n % len(keys)]
        unsigned = Tx(address, "ab" * 20, 1 + n, 1, n // len(keys), pubkey, b"")
        yield sign(private, unsigned, network_id)
        n += 1


def tx_verify_rate(seconds: float) -> float:
    """rules.check_tx on fresh Tx objects (no cached ids, no signature cache), one core."""
    network_id = NetworkParams().network_id
    txs = list(signed_txs(network_id, seconds * SIGNING_SHARE))
    done = 0
    start = time.perf_counter()
    while done < len(txs) and time.perf_counter() - start < seconds:
        for tx in txs[done : done + 100]:
            rules.check_tx(tx, network_id)
        done = min(done + 100, len(txs))
    return done / (time.perf_counter() - start)


def reopened_rss_mb(path: Path, params: NetworkParams) -> float:
    """Resident MiB of a fresh interpreter that has opened (loaded and checked) the store."""
    code = (
        "import sys; from pathlib import Path; from p2pchain.chain import Chain; "
        "from p2pchain.params import NetworkParams; import os; "
        "c = Chain.open(Path(sys.argv[1]), NetworkParams(bits=1, reward=int(sys.argv[2]))); "
        "assert c.height >= 10_000; "
        "print(int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), str(params.reward)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return float(out.stdout.strip().splitlines()[-1])


def chain_figures() -> Figures:
    """Median process_block time for blocks of CHAIN_BLOCK_TXS transactions on a WAL SQLite
    store at heights 100 and 10,000, and this process's memory holding the 10,000-block chain."""
    params = CHAIN_PARAMS
    payer = Wallet.generate()
    payer_key = (payer.private, payer.address, payer.pubkey)
    sent = 0

    def spends(count: int) -> list[Tx]:
        nonlocal sent
        private, address, pubkey = payer_key
        txs = []
        for n in range(sent, sent + count):
            unsigned = Tx(address, "cd" * 20, 1, 1, n, pubkey, b"")
            txs.append(sign(private, unsigned, params.network_id))
        sent += count
        return txs

    with tempfile.TemporaryDirectory(prefix="p2pchain-bench-") as tmp:
        chain = Chain.open(Path(tmp) / "chain.sqlite", params)
        now = params.genesis.header.timestamp

        def next_block(txs: list[Tx]) -> Block:
            nonlocal now
            now += 1000
            tip = chain.tip
            template = build_template(params, tip.header, chain.median_time_past(tip), txs, payer.address, now)
            return mine_block(template)

        cache: set[bytes] = set()
        chain.verified = cache  # fillers' signatures count as checked (the node's mempool cache)

        def grow_to(height: int) -> None:
            while chain.height < height:
                txs = spends(CHAIN_FILL_TXS) if chain.height else []  # the payer is funded from block 1
                cache.update(tx.txid for tx in txs)
                chain.process_block(next_block(txs), now)

        def accept_ms() -> float:
            times = []
            for _ in range(CHAIN_SAMPLES):
                block = next_block(spends(CHAIN_BLOCK_TXS))
                times.append(timed_ms(partial(chain.process_block, block, now)))
                assert chain.tip.hash == block.hash
            return statistics.median(times)

        try:
            grow_to(100)
            at_100 = accept_ms()
            grow_to(10_000)
            at_10000 = accept_ms()
        finally:
            chain.close()
        memory = reopened_rss_mb(Path(tmp) / "chain.sqlite", params)
    return {"block_accept_ms_at_100": at_100, "block_accept_ms_at_10000": at_10000, "rss_mb_10000_blocks": memory}


def bench_ledger(args: argparse.Namespace) -> Figures:
    s: float = args.seconds
    prefix, bits = BENCH_HEADER.prefix, BENCH_HEADER.bits
    figures: Figures = {
        "hash_ceiling_per_core": hash_ceiling(prefix, bits, s),
        "hash_rate_per_core": hash_rate_search(prefix, bits, s),
    }
    figures["hash_rate_vs_ceiling"] = figures["hash_rate_per_core"] / figures["hash_ceiling_per_core"]
    figures.update(pool_figures(s))
    figures["ed25519_verify_ceiling_per_s"] = ed25519_ceiling(s)
    figures["tx_verify_per_s"] = tx_verify_rate(s)
    figures["tx_verify_vs_ceiling"] = figures["tx_verify_per_s"] / figures["ed25519_verify_ceiling_per_s"]
    figures.update(chain_figures())
    return figures


LEDGER_NOTES = {
    "hash_ceiling_per_core": "hashes/s, bare hashlib midstate loop",
    "hash_rate_per_core": "hashes/s, miner.search on one core",
    "hash_rate_vs_ceiling": "target >= 0.8",
    "hash_rate_all_cores": "hashes/s, MinerPool on every core",
    "miner_procs": "worker processes",
    "miner_pool_start_ms": "ms from MinerPool() to its first solved job",
    "miner_switch_ms": "ms to drop a job and solve a new easy one (worst of 5)",
    "ed25519_verify_ceiling_per_s": "verifies/s, raw cryptography Ed25519",
    "tx_verify_per_s": "rules.check_tx/s, distinct signed txs, no cache",
    "tx_verify_vs_ceiling": "",
    "block_accept_ms_at_100": f"ms, Chain.process_block, {CHAIN_BLOCK_TXS}-tx block, signatures unchecked before",
    "block_accept_ms_at_10000": "ms, same at height 10,000",
    "rss_mb_10000_blocks": "MiB resident, a fresh process that opened the 10,000 x 10-tx store",
}


# --- swarm: propagation among 200 in-process nodes, memory per node process --------------------
SWARM_BENCH_BITS = 12  # blocks take milliseconds to mine: what is timed is their spread
SWARM_BENCH_MINERS = 4  # nodes that take turns mining the measured blocks
SWARM_SETTLE_S = 2.0  # the peer count must hold still this long before blocks are timed
SWARM_RSS_WARMUP_S = 10.0  # the 20-node swarm mines this long before its memory is read


async def _until(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(poll)


async def inprocess_propagation(nodes: int, degree: int, blocks: int) -> Figures:
    """``nodes`` Node objects in this event loop, wired as a random graph of ``degree`` links
    per node; miners take turns mining one block each (Node.mine_block, the node's own path)
    and the time from the miner connecting it to the last node connecting it is recorded."""
    import swarm  # scripts/swarm.py

    opts = swarm.Options(
        nodes=nodes, miners=0, topology=f"random:{degree}", difficulty=SWARM_BENCH_BITS, in_process=True
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
            last, still = -1, time.monotonic()
            while time.monotonic() - still < SWARM_SETTLE_S:  # discovery dials until the count holds
                await asyncio.sleep(0.25)
                count = sum(len(m.node.connmgr.ready) for m in members)
                if count != last:
                    last, still = count, time.monotonic()
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


# --- net: node processes on loopback ------------------------------------------------------------
NET_PARAMS = NetworkParams(bits=8)  # the nodes' network: blocks pre-mine in ~0.2 ms each; relaying
# and syncing a block cost the same at any difficulty (one hash checks the proof of work)
NET_SPACING_MS = 1000  # timestamp step between pre-mined blocks: always after the median time past
LINE_NODES = 5  # propagation_line5: node0 - node1 - ... - node4
RANDOM_NODES = 20  # propagation_random20: processes in a random connected graph
RANDOM_DEGREE = 4  # links per node in that graph
PROPAGATION_BLOCKS = 50  # blocks timed in each propagation figure
SYNC_BLOCKS = 10_000  # sync_10000_s: blocks the fresh node downloads
RESYNC_ROUNDS = 5  # reconnections of an up-to-date node; the median is reported
INGEST_TXS = 10_000  # transactions of ingest_tx_per_s, nonces 0.. of one wallet, 1 coin each
INGEST_WINDOW = 1000  # SUBMIT_TX queries in flight on the one connection
NET_TIMEOUT_S = 60.0  # a node not up, linked or caught up after this long fails the bench


def net_chain(n: int, reward_to: str) -> list[Block]:
    """``n`` coinbase-only blocks on NET_PARAMS' genesis, each paying ``reward_to`` 1 coin."""
    blocks: list[Block] = []
    parent = NET_PARAMS.genesis.header
    for _ in range(n):
        stamp = parent.timestamp + NET_SPACING_MS
        blocks.append(mine_block(build_template(NET_PARAMS, parent, parent.timestamp, [], reward_to, stamp)))
        parent = blocks[-1].header
    return blocks


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


def percentile_ms(times: list[float], q: int) -> float:
    """The ``q``th percentile, interpolated between samples (q < 100)."""
    return statistics.quantiles(times, n=100, method="inclusive")[q - 1]


class NodeProcs:
    """``n`` `python -m p2pchain` processes (not mining, --no-discover) of one measurement, each
    with a protocol Client; ``close`` stops every one (SIGTERM, SIGKILL after 5 s)."""

    def __init__(self, root: Path, n: int) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        socks = [socket.socket() for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        self.ports = [int(s.getsockname()[1]) for s in socks]
        for s in socks:
            s.close()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.clients: dict[int, Client] = {}

    def data_dir(self, i: int) -> Path:
        return self.root / f"node{i}"

    async def start(self, i: int, dial: list[int], args: tuple[str, ...] = ()) -> Client:
        """Start node ``i``, dialling nodes ``dial`` (``args``: more flags); returns a Client connected to it."""
        log_path = self.root / f"node{i}.log"
        cmd = [sys.executable, "-m", "p2pchain", "--port", str(self.ports[i]), "--data-dir", str(self.data_dir(i))]
        cmd += ["--difficulty", str(NET_PARAMS.bits), "--log-level", "WARNING", "--no-discover", *args]
        cmd += [f"--peer=127.0.0.1:{self.ports[j]}" for j in dial]
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        deadline = time.monotonic() + NET_TIMEOUT_S
        while True:
            try:
                self.clients[i] = await Client.connect("127.0.0.1", self.ports[i])
                return self.clients[i]
            except NodeUnavailable:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"node{i} did not start:\n{tail}") from None
                await asyncio.sleep(0.02)

    async def wait_linked(self, links: list[tuple[int, int]]) -> None:
        """Until every node lists each of its neighbours among its peers."""
        want: dict[int, set[str]] = {i: set() for i in self.clients}
        for a, b in links:
            want[a].add(f"127.0.0.1:{self.ports[b]}")
            want[b].add(f"127.0.0.1:{self.ports[a]}")
        deadline = time.monotonic() + NET_TIMEOUT_S
        for i, client in self.clients.items():
            while not want[i] <= {p["addr"] for p in (await client.status())["peers"]}:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node{i} did not connect to all of {sorted(want[i])}")
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        for client in self.clients.values():
            with contextlib.suppress(OSError, NodeUnavailable):
                await client.close()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                await asyncio.to_thread(proc.wait, 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def gossiped(client: Client, block_hash: bytes) -> None:
    """Until ``client``'s node pushes it the block ``block_hash``."""
    while True:
        msg = await client.gossip.get()
        if isinstance(msg, wire.NewBlock) and msg.block.hash == block_hash:
            return


async def propagation_ms(source: Client, watchers: list[Client], blocks: list[Block]) -> list[float]:
    """For each block in turn: push it as NEW_BLOCK from ``source``, and time until the node of
    every watcher has accepted it and pushed it on (the last one counts)."""
    times: list[float] = []
    for block in blocks:
        start = time.perf_counter()
        await source.send_and_drain(wire.NewBlock(block))
        async with asyncio.timeout(NET_TIMEOUT_S):
            await asyncio.gather(*(gossiped(w, block.hash) for w in watchers))
        times.append((time.perf_counter() - start) * 1000)
    return times


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
    node = Node(config)
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
        node = Node(config)
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


async def ingest_figures(client: Client, wallet: Wallet, count: int) -> Figures:
    """``count`` signed payments of 1 coin from ``wallet`` (nonces 0..), pipelined as SUBMIT_TX over the
    one connection of ``client``, from the first send to the last reply; every one must be
    accepted. The in-process figure: Mempool.add of the same payments, freshly decoded."""
    to = Wallet.generate().address
    txs = [make_tx(wallet, to, 1, 0, n, NET_PARAMS.network_id) for n in range(count)]
    funded = rules.Account(count, 0)
    pool = Mempool(NET_PARAMS, lambda a: funded if a == wallet.address else rules.EMPTY_ACCOUNT)
    fresh = [Tx.from_wire(tx.to_wire()) for tx in txs]
    start = time.perf_counter()
    for tx in fresh:
        pool.add(tx)
    inprocess = len(fresh) / (time.perf_counter() - start)

    window = asyncio.Semaphore(INGEST_WINDOW)

    async def submit(tx: Tx) -> bool:
        async with window:
            reply = await client.submit_tx(tx)
            return reply.accepted

    start = time.perf_counter()
    accepted = sum(await asyncio.gather(*(submit(tx) for tx in txs)))
    elapsed = time.perf_counter() - start
    if accepted != len(txs):
        raise RuntimeError(f"the node accepted {accepted} of {len(txs)} transactions")
    return {"ingest_tx_per_s": accepted / elapsed, "ingest_inprocess_tx_per_s": inprocess}


async def sync_and_ingest(root: Path, blocks: list[Block], wallet: Wallet) -> Figures:
    """The source node's store is written in this process (timed: the no-network floor of a sync),
    then the node serves a fresh node's sync and takes the transactions of ``wallet``."""
    procs = NodeProcs(root / "source", 1)
    store_dir = procs.data_dir(0)
    store_dir.mkdir()
    chain = Chain.open(store_dir / DB_FILE, NET_PARAMS)
    try:
        start = time.perf_counter()
        for i in range(0, len(blocks), limits.MAX_BLOCKS_PER_CHAIN):
            with chain.store.batch():  # one commit per CHAIN-sized batch, as the node does
                for block in blocks[i : i + limits.MAX_BLOCKS_PER_CHAIN]:
                    chain.process_block(block, block.header.timestamp)
        figures: Figures = {"sync_10000_inprocess_s": time.perf_counter() - start}
    finally:
        chain.close()
    try:
        client = await procs.start(0, [])
        figures.update(await sync_figures(root / "fresh", procs.ports[0], len(blocks)))
        figures.update(await ingest_figures(client, wallet, min(INGEST_TXS, len(blocks))))
    finally:
        await procs.close()
    return figures


def bench_net(args: argparse.Namespace) -> Figures:
    wallet = Wallet.generate()  # every pre-mined block pays it 1 coin: the ingest transactions spend them
    blocks = net_chain(SYNC_BLOCKS, wallet.address)
    with tempfile.TemporaryDirectory(prefix="p2pchain-bench-net-") as tmp:
        root = Path(tmp)
        figures = asyncio.run(propagation_figures(root, blocks[:PROPAGATION_BLOCKS]))
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
    "ingest_tx_per_s": "txs/s a node accepts over one TCP connection (pipelined SUBMIT_TX); target >= 5,000",
    "ingest_inprocess_tx_per_s": "txs/s, Mempool.add of the same transactions, no network (the ceiling)",
}


# --- fuzz: the frame decoder, the message decoder and a node's message handler ----------------
FUZZ_INPUTS = 1_000_000  # inputs per run: issue 8 asks for at least a million
FUZZ_WORKERS = 2  # processes, each fuzzing its own in-process node (the machine has 2 cores)


def bench_fuzz(args: argparse.Namespace) -> Figures:
    """scripts/fuzz.py's engine: mutated and generated inputs through FrameDecoder,
    decode_message and Node.handle; a crasher's input and traceback go to --crash-dir."""
    import fuzz  # scripts/fuzz.py

    report = fuzz.run_parallel(args.inputs, args.workers, args.seed, args.crash_dir)
    return {
        "fuzz_inputs": report.inputs,
        "fuzz_crashes": report.crashes,
        "fuzz_inputs_per_s": report.inputs / report.seconds,
        "fuzz_decoded": report.decoded,
        "fuzz_handled": report.handled,
        "fuzz_dropped": report.misbehaving,
        "fuzz_outcomes": len(report.features),
        "fuzz_workers": args.workers,
        "fuzz_seed": args.seed,
        "fuzz_crash_files": report.crash_files,
    }


def fuzz_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inputs", type=int, default=FUZZ_INPUTS, help=f"inputs in all (default {FUZZ_INPUTS:,})")
    p.add_argument("--workers", type=int, default=FUZZ_WORKERS, help=f"processes (default {FUZZ_WORKERS})")
    p.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "big"), help="random seed")
    p.add_argument("--crash-dir", type=Path, default=Path(tempfile.gettempdir()) / "p2pchain-fuzz-crashes")


FUZZ_NOTES = {
    "fuzz_inputs": "byte strings fed (the seeds once, then mutants), each through every stage it reaches",
    "fuzz_crashes": "inputs that raised anything but ProtocolError/Misbehaving or broke an oracle: must be 0",
    "fuzz_inputs_per_s": "inputs/s, all workers, wall clock",
    "fuzz_decoded": "payloads that decoded into a message",
    "fuzz_handled": "messages given to Node.handle (or the HELLO checks)",
    "fuzz_dropped": "of those, how many dropped the peer (Misbehaving)",
    "fuzz_outcomes": "distinct outcomes seen (error texts with numbers blanked, handler replies)",
    "fuzz_workers": "processes",
    "fuzz_seed": "rerun with --seed to repeat the run",
    "fuzz_crash_files": "saved crashers (replay: scripts/fuzz.py --replay FILE)",
}


# --- hostile: honest block propagation while a peer floods junk --------------------------------
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
    (never banned: every strike is followed by a new connection that costs a handshake)."""
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


# --- the entry point -------------------------------------------------------------------------
@dataclass(frozen=True)
class Subcommand:
    run: Callable[[argparse.Namespace], Figures]
    help: str
    notes: dict[str, str] = field(default_factory=dict)  # figure -> its unit and meaning
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None


SUBCOMMANDS: dict[str, Subcommand] = {
    "ledger": Subcommand(bench_ledger, "hashing, signature checks, block acceptance", LEDGER_NOTES),
    "net": Subcommand(bench_net, "node processes on loopback: propagation, sync, tx ingest", NET_NOTES),
    "swarm": Subcommand(
        bench_swarm,
        "block propagation among 200 in-process nodes, memory per node process",
        SWARM_NOTES,
        swarm_arguments,
    ),
    "fuzz": Subcommand(bench_fuzz, "fuzzing: frame and message decoders, a node's handler", FUZZ_NOTES, fuzz_arguments),
    "hostile": Subcommand(bench_hostile, "honest block propagation while a peer floods junk", HOSTILE_NOTES),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="subcommand", required=True)
    for name, command in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=command.help)
        p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
        p.add_argument("--seconds", type=float, default=1.5, help="duration of each measurement")
        if command.add_arguments:
            command.add_arguments(p)
    args = parser.parse_args(argv)
    command = SUBCOMMANDS[args.subcommand]
    machine = machine_info()
    started = time.perf_counter()
    figures = command.run(args)
    took = time.perf_counter() - started
    print_table(
        f"p2pchain bench {args.subcommand}: {machine['cpu']}, {machine['cpus_usable']} cpus, {machine['python']}",
        figures,
        command.notes,
    )
    print(f"  ({took:.1f} s)")
    if args.json:
        print(json.dumps({"subcommand": args.subcommand, **figures, "seconds": round(took, 2), "machine": machine}))
    return 0


if __name__ == "__main__":  # the guard also keeps MinerPool's spawned workers from running main()
    sys.exit(main())
