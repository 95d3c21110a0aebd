#!/usr/bin/env python3
"""Start a local swarm of p2pchain nodes, watch blocks spread and forks resolve, stop them all.

    python3 scripts/swarm.py --nodes 5 --miners 2
    python3 scripts/swarm.py --nodes 8 --miners 3 --topology line --tx-rate 2 --duration 60 --json
    python3 scripts/swarm.py --nodes 200 --miners 2 --in-process --topology random:8 --duration 60
    python3 scripts/swarm.py --nodes 5 --miners 2 --web 8080      # and open http://127.0.0.1:8080/

Each node is a ``python -m p2pchain`` process on 127.0.0.1 (``--in-process``: a ``Node`` object in
this process's event loop, over real loopback sockets). Node I keeps its data in RUN/nodeI and
its log in RUN/nodeI.log; RUN/swarm.json records the ports and commands. The live table is
refreshed every second from each node's status, read over the node protocol; a block's
propagation time is the time from the first node that announces it (as its new tip) to the last,
timestamped as the NEW_BLOCK gossip reaches this launcher's client connection to each node.

Ctrl-C (or the end of --duration) ends the run: the launcher waits up to 10 s for every node to
show the same tip, stops every process it started (SIGTERM, then SIGKILL after a deadline) and
prints a summary; with --json the summary is one JSON object on the last line of stdout. The
exit status is 0 only if every node was alive at the end and they agreed on one tip.

With --web PORT the launcher also serves a live map of the swarm on 127.0.0.1:PORT
(scripts/swarm_web.py): the nodes, their links and tips, each block spreading, and this table.

Started from a Python without p2pchain's dependencies, the script creates ./.venv first
(scripts/bootstrap.py) and runs itself again with that venv's Python.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIN_PYTHON = (3, 11)
DEPENDENCIES = ("msgpack", "cryptography", "aiohttp", "prometheus_client")


def _bootstrap() -> None:
    """Make p2pchain importable, re-executing under ./.venv's Python when its deps are missing."""
    if sys.version_info < MIN_PYTHON:
        sys.exit(f"swarm.py needs Python {'.'.join(map(str, MIN_PYTHON))} or newer, not {sys.version.split()[0]}")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if all(importlib.util.find_spec(name) is not None for name in DEPENDENCIES):
        return
    if os.environ.get("P2PCHAIN_BOOTSTRAPPED"):
        sys.exit("swarm.py: p2pchain's dependencies are missing even in .venv: run python3 scripts/bootstrap.py")
    sys.path.insert(0, str(ROOT / "scripts"))
    from bootstrap import ensure_venv

    python = ensure_venv()
    os.environ["P2PCHAIN_BOOTSTRAPPED"] = "1"
    os.execv(python, [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


_bootstrap()

# Below the check: these need the venv (or an environment with p2pchain's dependencies).
import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from abc import ABC, abstractmethod  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import asdict, dataclass, field, fields  # noqa: E402
from typing import Any, TextIO  # noqa: E402

from p2pchain import limits, wire  # noqa: E402
from p2pchain.cli import positive_int, tune_interpreter  # noqa: E402
from p2pchain.client import Client, NodeUnavailable, QueryError  # noqa: E402
from p2pchain.errors import MempoolError  # noqa: E402
from p2pchain.keys import Wallet  # noqa: E402
from p2pchain.ledger.block import Block  # noqa: E402
from p2pchain.ledger.tx import Tx, make_tx  # noqa: E402
from p2pchain.miner import search  # noqa: E402
from p2pchain.node import RELAY_MODES, Node, NodeConfig  # noqa: E402
from p2pchain.params import NetworkParams  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from benchlib.nodes import free_ports  # noqa: E402
from swarm_web import NodeInfo, SwarmWeb  # noqa: E402

log = logging.getLogger("swarm")

# Difficulty of a fixed-difficulty demo (--block-time 0): 22 bits is ~4.2 M hashes a block.
# Measured on a 2-core machine with 5 nodes, 2 miners of one process each (~2.5 M hashes/s each):
# a block every ~1-2 s swarm-wide.
DEMO_BITS = 22
DEMO_BLOCK_TIME_S = 2.0  # the default: retargeting (ASERT) to a block every 2 s on any machine
HASH_PROBE_S = 0.3  # seconds of nonce search that measure this machine's hash rate per core
AGREE_WITHIN_S = 10.0  # after the end, every node must show one tip within this
AGREE_POLL_S = 0.1  # how often the end-of-run agreement check reads the tips
STOP_DEADLINE_S = limits.SHUTDOWN_GRACE_S + 3.5  # SIGTERM, then SIGKILL the stragglers after this
START_TIMEOUT_S = 30.0  # every node must accept a protocol connection within this
REFRESH_S = 1.0  # live table period
QUERY_TIMEOUT_S = 5.0  # one status/account query; a slower node shows as unreachable
BACKFILL_DEPTH = 64  # ancestors credited to a node when it announces a block (it has them all)
TX_AMOUNT = 1  # coins per generated transaction
TX_FEE = 1  # fee per generated transaction
WEB_FLUSH_S = 2.0  # at the end, the map's browsers get this long to receive the final view
COLUMNS = ("node", "port", "height", "tip", "peers", "mempool", "mined", "recv", "forks", "state")
FD_PER_INPROCESS_NODE = 20  # measured: 4,009 open descriptors for 200 nodes of 16 links (SQLite, listener, sockets)


# --- topology and ports ------------------------------------------------------------------------
def parse_topology(text: str) -> tuple[str, int]:
    """'line' | 'ring' | 'full' | 'random:D' -> (kind, D); ValueError otherwise."""
    kind, _, arg = text.partition(":")
    if kind in ("line", "ring", "full") and not arg:
        return kind, 0
    if kind == "random" and arg.isdigit() and int(arg) >= 1:
        return kind, int(arg)
    raise ValueError(f"{text!r} is not a topology: line, ring, full or random:D (D = links per node)")


def topology_dials(n: int, topology: str, rng: random.Random) -> list[list[int]]:
    """For each node, the nodes it dials (its --peer list). Every topology is connected; each
    link is dialled from one end only. random:D is a random tree (for connectivity) topped up
    with random links until nodes have D links where possible."""
    kind, degree = parse_topology(topology)
    dials: list[set[int]] = [set() for _ in range(n)]
    if kind in ("line", "ring"):
        for i in range(1, n):
            dials[i].add(i - 1)
        if kind == "ring" and n > 2:
            dials[0].add(n - 1)
    elif kind == "full":
        for i in range(n):
            dials[i].update(range(i))
    else:
        linked: list[set[int]] = [set() for _ in range(n)]

        def link(a: int, b: int) -> None:
            dials[a].add(b)
            linked[a].add(b)
            linked[b].add(a)

        for i in range(1, n):
            link(i, rng.randrange(i))
        order = list(range(n))
        rng.shuffle(order)
        for i in order:
            while len(linked[i]) < degree:
                candidates = [j for j in range(n) if j != i and j not in linked[i] and len(linked[j]) < degree]
                if not candidates:
                    break
                link(i, rng.choice(candidates))
    return [sorted(d) for d in dials]


def raise_fd_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``needed`` (up to the hard limit); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return int(soft)


def rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MiB (Linux /proc), None if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def mean_interval_s(blocks: Sequence[Block]) -> float | None:
    """Mean time between consecutive blocks' timestamps, seconds; None for fewer than two."""
    if len(blocks) < 2:
        return None
    return (blocks[-1].header.timestamp - blocks[0].header.timestamp) / (len(blocks) - 1) / 1000


def network_text(difficulty: int, block_time: float) -> str:
    if not block_time:
        return f"difficulty {difficulty}"
    return f"a block every {block_time:g} s from difficulty {difficulty}"


def hash_rate_per_core(seconds: float = HASH_PROBE_S) -> float:
    """Hashes a second that one core of this machine does with the miner's own search loop."""
    prefix = bytes(84)  # any header prefix: at target 1 (bits 0x00000001) no nonce is found
    done = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        search(prefix, 1, done, limits.MINER_CHUNK_NONCES)
        done += limits.MINER_CHUNK_NONCES
    return done / elapsed


def estimate_difficulty(block_time: float, miners: int, miner_procs: int) -> int:
    """The start difficulty (leading zero bits) whose expected hashes a block, at this machine's
    hash rate times the mining processes it can run at once, take ``block_time`` seconds. One core
    is left to the nodes' own work (relay, checks, the launcher's queries) when the miners would
    take them all: on 2 cores, 2 miners and 5 nodes measured ~1.7x slower than 2 cores' worth. A
    rough start (within a factor of ~1.4, more on a busy machine): the retargeting does the rest."""
    cores = os.cpu_count() or 1
    procs = min(max(miners, 1) * miner_procs, max(1, cores - 1))
    hashes = hash_rate_per_core() * procs * block_time
    return max(1, min(64, round(math.log2(max(hashes, 2.0)))))


def network_params(opts: Options) -> NetworkParams:
    return NetworkParams(
        bits=opts.difficulty,
        block_time_ms=round(opts.block_time * 1000),
        half_life_ms=round(opts.half_life * 1000) if opts.half_life and opts.block_time else 0,
    )


def ms_text(ms: float | None) -> str:
    if ms is None:
        return "n/a"
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


# --- propagation ---------------------------------------------------------------------------------
class Propagation:
    """When each block first reached each node. A node that announces block B has every ancestor
    of B too, so the ancestors it never announced (it got them in a sync batch) are credited to
    it at the same moment: an upper bound, never an early time."""

    def __init__(self) -> None:
        self.arrivals: dict[bytes, dict[int, float]] = {}
        self.parent: dict[bytes, bytes] = {}
        self.height: dict[bytes, int] = {}
        self.since = 0.0  # blocks first seen before this (perf_counter) are not measured

    def arrived(self, node: int, block: Block, t: float) -> None:
        block_hash = block.hash
        if block_hash not in self.arrivals:
            self.arrivals[block_hash] = {}
            self.parent[block_hash] = block.prev_hash
            self.height[block_hash] = block.height
        h: bytes | None = block_hash
        for _ in range(BACKFILL_DEPTH):
            if h is None or h not in self.arrivals or node in self.arrivals[h]:
                break
            self.arrivals[h][node] = t
            h = self.parent.get(h)

    def measured(self) -> list[bytes]:
        """Blocks first seen after ``since``, in order of first arrival."""
        firsts = {h: min(a.values()) for h, a in self.arrivals.items() if a}
        return sorted((h for h, t in firsts.items() if t >= self.since), key=firsts.__getitem__)

    def spread_ms(self, block_hash: bytes, nodes: set[int]) -> float | None:
        """First-to-last arrival over ``nodes``, or None while some of them lack the block."""
        arrivals = self.arrivals.get(block_hash, {})
        if not nodes or not nodes <= arrivals.keys():
            return None
        times = [arrivals[i] for i in nodes]
        return (max(times) - min(times)) * 1000

    def complete_ms(self, nodes: set[int]) -> list[float]:
        spreads = (self.spread_ms(h, nodes) for h in self.measured())
        return [s for s in spreads if s is not None]


# --- one node, as the launcher sees it ---------------------------------------------------------------
@dataclass(frozen=True)
class AccountView:
    balance: int
    nonce: int
    pending_nonce: int


class Member(ABC):
    """One node of the swarm: a process or an in-process Node."""

    def __init__(self, index: int, mining: bool) -> None:
        self.index = index
        self.name = f"node{index}"
        self.mining = mining
        self.port = 0
        self.wallet: Wallet | None = None
        self.account_cache: AccountView | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @abstractmethod
    def alive(self) -> bool: ...

    @abstractmethod
    async def status(self) -> dict[str, Any] | None: ...

    @abstractmethod
    async def account(self, address: str) -> AccountView | None: ...

    @abstractmethod
    async def submit(self, tx: Tx) -> tuple[bool, str]:
        """(accepted, error code)."""

    @abstractmethod
    async def blocks_from(self, start: int) -> list[Block]:
        """The node's best chain from height ``start``."""


BlockSink = Callable[[int, Block, float], None]  # (member index, block, perf_counter time)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the node gets SIGTERM if the launcher dies without stopping it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


class ProcMember(Member):
    """A ``python -m p2pchain`` process, watched through a protocol Client."""

    def __init__(self, index: int, mining: bool, port: int, http_port: int, run_dir: Path, command: list[str]) -> None:
        super().__init__(index, mining)
        self.port = port
        self.http_port = http_port
        self.data_dir = run_dir / self.name
        self.log_path = run_dir / f"{self.name}.log"
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: Client | None = None
        self.stopping = False  # set when the launcher stops it: exiting then is not dying
        self._gossip_task: asyncio.Task[None] | None = None

    def spawn(self, env: dict[str, str]) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C in the terminal reaches the launcher, which stops us
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None and not self.stopping

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def connect(self, sink: BlockSink, timeout: float = START_TIMEOUT_S) -> None:
        """Open the protocol connection (waiting for the node to listen) and follow its gossip."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise RuntimeError(f"{self.name} exited with status {code}; {self.log_path} ends:\n{self.log_tail()}")
            try:
                self.client = await Client.connect("127.0.0.1", self.port, timeout=2.0, agent="p2pchain-swarm")
                break
            except NodeUnavailable:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not listen on {self.addr} within {timeout:g} s") from None
                await asyncio.sleep(0.1)
        if self.wallet is None:
            self.wallet = Wallet.load(self.data_dir / "wallet.json")  # written before the node listens
        self._gossip_task = asyncio.create_task(self._follow(self.client, sink))

    async def _follow(self, client: Client, sink: BlockSink) -> None:
        while True:
            msg = await client.gossip.get()
            if isinstance(msg, wire.NewBlock):
                sink(self.index, msg.block, time.perf_counter())

    async def disconnect(self) -> None:
        if self._gossip_task is not None:
            self._gossip_task.cancel()
            await asyncio.gather(self._gossip_task, return_exceptions=True)
            self._gossip_task = None
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()

    async def _query(self, fn: Callable[[Client], Any]) -> Any:
        if self.client is None:
            return None
        try:
            async with asyncio.timeout(QUERY_TIMEOUT_S):
                return await fn(self.client)
        except (NodeUnavailable, QueryError, TimeoutError, OSError):
            await self.disconnect()  # reconnected by the next refresh if the node is still alive
            return None

    async def status(self) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._query(lambda c: c.status())
        return result

    async def account(self, address: str) -> AccountView | None:
        acct: wire.Account | None = await self._query(lambda c: c.account(address))
        return None if acct is None else AccountView(acct.balance, acct.nonce, acct.pending_nonce)

    async def submit(self, tx: Tx) -> tuple[bool, str]:
        result: wire.SubmitResult | None = await self._query(lambda c: c.submit_tx(tx))
        if result is None:
            return False, "unreachable"
        return result.accepted, result.code

    async def blocks_from(self, start: int) -> list[Block]:
        async def fetch(c: Client) -> list[Block]:
            return [b async for b in c.all_blocks(start)]

        blocks: list[Block] | None = await self._query(fetch)
        return blocks or []


class InProcMember(Member):
    """A Node object running in this process's event loop."""

    def __init__(self, index: int, mining: bool, node: Node) -> None:
        super().__init__(index, mining)
        self.node = node
        self.wallet = node.wallet
        self.running = False

    def alive(self) -> bool:
        return self.running

    async def status(self) -> dict[str, Any] | None:
        return self.node.status() if self.running else None

    async def account(self, address: str) -> AccountView | None:
        acct = self.node.chain.get_account(address)
        return AccountView(acct.balance, acct.nonce, self.node.mempool.next_nonce(address))

    async def submit(self, tx: Tx) -> tuple[bool, str]:
        try:
            self.node.submit_tx(tx)
        except MempoolError as e:
            return False, e.code.value
        return True, ""

    async def blocks_from(self, start: int) -> list[Block]:
        blocks: list[Block] = []
        while batch := self.node.chain.blocks_range(start + len(blocks), limits.MAX_BLOCKS_PER_CHAIN):
            blocks.extend(batch)
        return blocks


# --- launchers ------------------------------------------------------------------------------------------
@dataclass
class Options:
    nodes: int = 5
    miners: int = 2
    topology: str = "ring"
    base_port: int = 0  # 0: free ports picked by the kernel
    difficulty: int = DEMO_BITS  # the start difficulty with a block time (options_from estimates it)
    block_time: float = 0.0  # seconds; 0: a fixed difficulty (the command line's default is 2 s)
    half_life: float | None = None  # seconds; None: the network's default (48 block times)
    miner_procs: int = 1
    duration: float | None = None  # None: until Ctrl-C
    tx_rate: float = 0.0
    run_dir: Path | None = None
    in_process: bool = False
    json: bool = False
    seed: int | None = None
    log_level: str = "INFO"
    table: bool | None = None  # None: when stdout is a terminal
    web: int | None = None  # serve the live map on 127.0.0.1:web
    relay: str = "compact"  # every node's --relay: "flood" speaks protocol version 1


class Launcher(ABC):
    def __init__(self, opts: Options, run_dir: Path, sink: BlockSink) -> None:
        self.opts = opts
        self.run_dir = run_dir
        self.sink = sink
        self.members: list[Member] = []

    @abstractmethod
    async def start(self, dials: list[list[int]]) -> None: ...

    @abstractmethod
    async def stop(self) -> None:
        """Stop everything started; safe to call twice, and after a failed start."""

    async def reconnect(self) -> None:  # noqa: B027 - optional: only processes need it
        """Restore lost status connections (process mode)."""

    def died(self) -> list[str]:
        return []


class ProcessLauncher(Launcher):
    members: list[ProcMember]  # type: ignore[assignment]

    def node_command(self, i: int, port: int, http_port: int, peers: list[str]) -> list[str]:
        opts = self.opts
        cmd = [
            sys.executable,
            "-m",
            "p2pchain",
            "--port",
            str(port),
            "--http-port",
            str(http_port),
            "--data-dir",
            str(self.run_dir / f"node{i}"),
            "--difficulty",
            str(opts.difficulty),
            "--log-level",
            opts.log_level,
            "--relay",
            opts.relay,
        ]
        if opts.block_time:
            cmd += ["--block-time", f"{opts.block_time:g}"]
            if opts.half_life:
                cmd += ["--half-life", f"{opts.half_life:g}"]
        for peer in peers:
            cmd += ["--peer", peer]
        if i < opts.miners:
            cmd += ["--mine", "--miner-procs", str(opts.miner_procs)]
        return cmd

    async def start(self, dials: list[list[int]]) -> None:
        n = self.opts.nodes
        base = self.opts.base_port
        ports = list(range(base, base + 2 * n)) if base else free_ports(2 * n)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        for i in range(n):
            peers = [f"127.0.0.1:{ports[j]}" for j in dials[i]]
            member = ProcMember(i, i < self.opts.miners, ports[i], ports[n + i], self.run_dir, [])
            member.command = self.node_command(i, member.port, member.http_port, peers)
            self.members.append(member)
        for member in self.members:
            member.spawn(env)
        await asyncio.gather(*(m.connect(self.sink) for m in self.members))

    async def reconnect(self) -> None:
        lost = [m for m in self.members if m.client is None and m.alive()]
        for m in lost:
            with contextlib.suppress(RuntimeError):
                await m.connect(self.sink, timeout=1.0)

    def died(self) -> list[str]:
        return [m.name for m in self.members if m.died()]

    async def stop(self) -> None:
        for m in self.members:
            await m.disconnect()
        await asyncio.get_running_loop().run_in_executor(None, stop_processes, self.members)


def stop_processes(members: Sequence[ProcMember], deadline_s: float = STOP_DEADLINE_S) -> None:
    """SIGTERM every live node, then SIGKILL (its whole process group: miner workers too) any
    that has not exited after ``deadline_s``. Blocking."""
    for m in members:
        m.stopping = True
        if m.alive() and m.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                m.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + deadline_s
    for m in members:
        if m.proc is None:
            continue
        try:
            m.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.1f s of SIGTERM: killing it", m.name, deadline_s)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(m.proc.pid, signal.SIGKILL)  # its own session: the node and its workers
            m.proc.kill()
            m.proc.wait(10)


class InProcessLauncher(Launcher):
    members: list[InProcMember]  # type: ignore[assignment]

    async def start(self, dials: list[list[int]]) -> None:
        opts = self.opts
        needed = 2 * opts.nodes * FD_PER_INPROCESS_NODE + 256  # twice the measured need: links vary
        limit = raise_fd_limit(needed)
        if limit < needed // 2:
            print(
                f"swarm.py: the open-file limit is {limit}, and {opts.nodes} in-process nodes need about "
                f"{needed // 2}: raise the hard limit (ulimit -Hn) or run fewer nodes",
                file=sys.stderr,
            )
        params = network_params(opts)
        tune_interpreter()  # this process runs the nodes: their interpreter settings, as the node command's
        for i in range(opts.nodes):
            config = NodeConfig(
                data_dir=self.run_dir / f"node{i}",
                port=opts.base_port + i if opts.base_port else 0,
                params=params,
                mine=i < opts.miners,
                miner_procs=opts.miner_procs,
                relay=opts.relay,
            )
            node = Node(config)  # only miners ever make a MinerPool (lazily, in mine_block)
            member = InProcMember(i, config.mine, node)
            node.chain.subscribe(self._listener(i))
            self.members.append(member)
            await node.start()
            member.running = True
            member.port = node.port
            await asyncio.sleep(0)
        for i, targets in enumerate(dials):
            node = self.members[i].node
            for j in targets:
                addr = self.members[j].addr
                node.config.peers.append(addr)
                node.connmgr.connect(addr)

    def _listener(self, index: int) -> Callable[[list[Block], list[Block]], None]:
        def on_update(connected: list[Block], disconnected: list[Block]) -> None:
            t = time.perf_counter()
            for block in connected:
                self.sink(index, block, t)

        return on_update

    async def stop(self) -> None:
        running = [m for m in self.members if m.running]
        for m in running:
            m.running = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_DEADLINE_S + 5):
                await asyncio.gather(*(m.node.stop() for m in running), return_exceptions=True)


# --- the live view and the summary ------------------------------------------------------------------
@dataclass
class Summary:
    nodes: int
    alive: int
    agreed: bool
    height: int
    tip: str
    blocks: int  # distinct blocks announced during the run, the ones that lost included
    forks_resolved: int  # of those, blocks not in the final chain: each lost a race and was dropped
    propagation_p50_ms: float | None
    propagation_p99_ms: float | None
    tx_confirmed: int
    propagation_blocks: int = 0  # blocks that reached every node (the percentiles' sample)
    tx_sent: int = 0
    tx_accepted: int = 0
    tx_skipped: int = 0  # payments not made because no wallet had spare coins
    died: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    difficulty: int = 0
    block_time_s: float = 0.0  # the network's target spacing; 0: a fixed difficulty
    block_interval_s: float | None = None  # mean interval between the run's best-chain blocks
    interval_ratio: float | None = None  # block_interval_s / block_time_s (with a block time)
    interval_ratio_late: float | None = None  # the same over the second half of the run's blocks
    topology: str = ""
    miners: int = 0
    in_process: bool = False
    seed: int = 0
    run_dir: str = ""

    @property
    def ok(self) -> bool:
        return self.agreed and self.alive == self.nodes and not self.died

    def to_json(self) -> str:
        doc = asdict(self)
        for key in ("propagation_p50_ms", "propagation_p99_ms"):
            if doc[key] is not None:
                doc[key] = round(doc[key], 2)
        doc["duration_s"] = round(doc["duration_s"], 2)
        for key in ("block_interval_s", "interval_ratio", "interval_ratio_late"):
            if doc[key] is not None:
                doc[key] = round(doc[key], 3)
        return json.dumps(doc)

    def text(self) -> str:
        agreed = f"yes, on {self.tip[:16]} at height {self.height}" if self.agreed else "NO"
        lines = [
            f"swarm summary ({self.duration_s:.1f} s, {self.nodes} nodes, {self.miners} mining, "
            f"{self.topology}, {network_text(self.difficulty, self.block_time_s)}, seed {self.seed})",
            f"  alive at the end: {self.alive}/{self.nodes}"
            + (f" (died: {', '.join(self.died)})" if self.died else ""),
            f"  agreed within {AGREE_WITHIN_S:g} s: {agreed}",
            f"  blocks: {self.blocks} announced, {self.forks_resolved} lost a race (forks resolved)",
            f"  propagation to every node: median {ms_text(self.propagation_p50_ms)}, "
            f"p99 {ms_text(self.propagation_p99_ms)} ({self.propagation_blocks} blocks)",
        ]
        if self.block_interval_s is not None:
            line = f"  mean block interval: {self.block_interval_s:.2f} s"
            if self.interval_ratio is not None:
                line += f", {self.interval_ratio:.2f} x the {self.block_time_s:g} s block time"
                if self.interval_ratio_late is not None:
                    line += f" ({self.interval_ratio_late:.2f} x over the second half)"
            lines.append(line)
        if self.tx_sent or self.tx_skipped:
            lines.append(
                f"  transactions: {self.tx_sent} sent, {self.tx_accepted} accepted, {self.tx_confirmed} confirmed"
                + (f", {self.tx_skipped} skipped (no wallet had spare coins)" if self.tx_skipped else "")
            )
        lines.append(f"  run dir: {self.run_dir} (nodeI/ data, nodeI.log)")
        return "\n".join(lines)


@dataclass
class View:
    """One row of the live table."""

    member: Member
    status: dict[str, Any] | None


class Swarm:
    """Starts the nodes, shows the live table, feeds transactions, and sums up."""

    def __init__(self, opts: Options, out: TextIO = sys.stdout) -> None:
        self.opts = opts
        self.out = out
        self.seed = opts.seed if opts.seed is not None else random.randrange(2**32)
        self.rng = random.Random(self.seed)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = (opts.run_dir or Path("run") / f"swarm-{stamp}").resolve()
        self.prop = Propagation()
        launcher_type = InProcessLauncher if opts.in_process else ProcessLauncher
        self.launcher: Launcher = launcher_type(opts, self.run_dir, self._arrived)
        self.web = SwarmWeb("127.0.0.1", opts.web) if opts.web else None
        self.table = opts.table if opts.table is not None else self.out.isatty()
        self.started = time.monotonic()
        self.start_height = 0
        self.tx_sent = 0
        self.tx_unfunded = 0  # payments not made: no wallet had spare coins
        self.tx_accepted: list[bytes] = []
        self.tx_rejected: dict[str, int] = {}
        self.views: list[View] = []
        self.hurry = asyncio.Event()  # a second Ctrl-C: skip the agreement wait

    @property
    def members(self) -> list[Member]:
        return self.launcher.members

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _arrived(self, node: int, block: Block, t: float) -> None:
        """The launcher's block sink: propagation timings, and the map's animation."""
        first = block.hash not in self.prop.arrivals or node not in self.prop.arrivals[block.hash]
        self.prop.arrived(node, block, t)
        if self.web is not None and first:
            start = min(self.prop.arrivals[block.hash].values())
            self.web.arrival(node, block.hash.hex(), block.height, (t - start) * 1000)

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        opts = self.opts
        self.run_dir.mkdir(parents=True, exist_ok=True)
        dials = topology_dials(opts.nodes, opts.topology, self.rng)
        mode = "in-process nodes" if opts.in_process else "node processes"
        self.say(
            f"starting {opts.nodes} {mode} ({opts.miners} mining), topology {opts.topology}, "
            f"{network_text(opts.difficulty, opts.block_time)}, seed {self.seed}, run dir {self.run_dir}"
        )
        if self.web is not None:
            await self.web.start()
            self.say(f"swarm map on {self.web.url}")
        await self.launcher.start(dials)
        self.prop.since = time.perf_counter()
        self.started = time.monotonic()
        self._write_manifest(dials)
        views = await self.refresh()
        self.start_height = max((int(v.status["height"]) for v in views if v.status), default=0)

    def _write_manifest(self, dials: list[list[int]]) -> None:
        nodes = []
        for m in self.members:
            entry: dict[str, Any] = {"name": m.name, "port": m.port, "mining": m.mining, "dials": dials[m.index]}
            if isinstance(m, ProcMember):
                entry.update(http_port=m.http_port, command=m.command, pid=m.proc.pid if m.proc else None)
            nodes.append(entry)
        doc = {"options": {**asdict(self.opts), "run_dir": str(self.run_dir), "seed": self.seed}, "nodes": nodes}
        (self.run_dir / "swarm.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")

    async def refresh(self) -> list[View]:
        await self.launcher.reconnect()
        statuses = await asyncio.gather(*(m.status() for m in self.members))
        self.views = [View(m, s) for m, s in zip(self.members, statuses, strict=True)]
        return self.views

    async def watch(self, stop: asyncio.Event) -> None:
        """Refresh the view every second until ``stop`` is set or the duration has passed."""
        feeder = asyncio.create_task(self.feed_txs(stop)) if self.opts.tx_rate > 0 else None
        try:
            while not stop.is_set():
                views = await self.refresh()
                self.show(views)
                remaining = REFRESH_S
                if self.opts.duration is not None:
                    left = self.opts.duration - (time.monotonic() - self.started)
                    if left <= 0:
                        break
                    remaining = min(remaining, left)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await stop.wait()
        finally:
            if feeder is not None:
                feeder.cancel()
                await asyncio.gather(feeder, return_exceptions=True)

    # --- transactions -------------------------------------------------------------------------
    async def feed_txs(self, stop: asyncio.Event) -> None:
        """Every 1/rate s, one signed payment from a funded node's wallet to another node's."""
        interval = 1.0 / self.opts.tx_rate
        params = network_params(self.opts)
        next_at = accounts_at = time.monotonic()
        while not stop.is_set():
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if time.monotonic() >= accounts_at:
                accounts_at = time.monotonic() + REFRESH_S
                await self._refresh_accounts()
            senders = [m for m in self.members if m.alive() and m.wallet is not None and self._spendable(m)]
            if not senders:
                self.tx_unfunded += 1  # nobody has spare coins yet: the first blocks pay the miners
                continue
            sender = self.rng.choice(senders)
            recipients = [m for m in self.members if m is not sender and m.wallet is not None]
            if not recipients:
                continue
            acct = await sender.account(sender.wallet.address) if sender.wallet else None
            if acct is None or sender.wallet is None:
                continue
            recipient = self.rng.choice(recipients).wallet
            assert recipient is not None
            tx = make_tx(sender.wallet, recipient.address, TX_AMOUNT, TX_FEE, acct.pending_nonce, params.network_id)
            self.tx_sent += 1
            accepted, code = await sender.submit(tx)
            if accepted:
                self.tx_accepted.append(tx.txid)
                acct = AccountView(acct.balance, acct.nonce, acct.pending_nonce + 1)
            else:
                self.tx_rejected[code] = self.tx_rejected.get(code, 0) + 1
            sender.account_cache = acct

    @staticmethod
    def _spendable(m: Member) -> bool:
        """From the last known account: confirmed coins not already promised by pooled txs."""
        a = m.account_cache
        return a is not None and a.balance - (a.pending_nonce - a.nonce) * (TX_AMOUNT + TX_FEE) >= TX_AMOUNT + TX_FEE

    async def _refresh_accounts(self) -> None:
        async def one(m: Member) -> None:
            if m.wallet is not None and m.alive():
                m.account_cache = await m.account(m.wallet.address)

        await asyncio.gather(*(one(m) for m in self.members))

    # --- rendering ----------------------------------------------------------------------------
    def tips(self, views: list[View]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for v in views:
            if v.status is not None:
                counts[v.status["tip"]] = counts.get(v.status["tip"], 0) + 1
        return counts

    def headline(self, views: list[View]) -> str:
        alive = [v for v in views if v.member.alive()]
        tips = self.tips(views)
        elapsed = time.monotonic() - self.started
        best = max((v.status for v in views if v.status), key=lambda s: int(s["work"]), default=None)
        if best is None:
            return f"[{elapsed:6.1f} s] no node answers"
        on_best = tips.get(best["tip"], 0)
        agree = "AGREED" if on_best == len(views) == len(alive) else f"{on_best}/{len(views)} on best tip"
        line = f"[{elapsed:6.1f} s] {agree}: height {best['height']} tip {best['tip'][:16]}"
        measured = self.prop.measured()
        alive_ids = {v.member.index for v in alive}
        if measured:
            last = measured[-1]
            spread = self.prop.spread_ms(last, alive_ids)
            reached = len(self.prop.arrivals[last].keys() & alive_ids)
            height = self.prop.height[last]
            if spread is not None:
                line += f" | block {height} reached all {len(alive_ids)} nodes in {ms_text(spread)}"
            else:
                line += f" | block {height} reached {reached}/{len(alive_ids)} nodes"
        if self.opts.tx_rate > 0:
            line += f" | txs {len(self.tx_accepted)}/{self.tx_sent} accepted"
            if self.tx_unfunded:
                line += f", {self.tx_unfunded} skipped (no spare coins)"
        died = self.launcher.died()
        if died:
            line += f" | DIED: {', '.join(died)}"
        return line

    @staticmethod
    def state_of(v: View) -> str:
        if not v.member.alive():
            return "DEAD"
        return "no answer" if v.status is None else "mining" if v.member.mining else "relay"

    def rows(self, views: list[View]) -> list[tuple[str, ...]]:
        """The live table: a header, then one row a node."""
        known = {m.addr for m in self.members}
        rows: list[tuple[str, ...]] = [COLUMNS]
        for v in views:
            s = v.status
            state = self.state_of(v)
            if s is None:
                rows.append((v.member.name, str(v.member.port), "-", "-", "-", "-", "-", "-", "-", state))
                continue
            peers = sum(1 for p in s["peers"] if p["addr"] in known)  # our own status connection excluded
            rows.append(
                (
                    v.member.name,
                    str(v.member.port),
                    str(s["height"]),
                    str(s["tip"])[:16],
                    str(peers),
                    str(s["mempool"]),
                    str(s.get("blocks_mined", 0)),
                    str(s.get("blocks_received", 0)),
                    str(s.get("forks_resolved", 0)),
                    state,
                )
            )
        return rows

    def publish(self, views: list[View], final: bool = False) -> None:
        """The view to the map's browsers (with --web): nodes, links (a swarm node's peers that
        are swarm nodes), tips and the table."""
        if self.web is None:
            return
        index = {m.addr: m.index for m in self.members}
        infos = []
        for v, row in zip(views, self.rows(views)[1:], strict=True):
            m, s = v.member, v.status
            http_port = getattr(m, "http_port", None)
            infos.append(
                NodeInfo(
                    index=m.index,
                    name=m.name,
                    port=m.port,
                    explorer=f"http://127.0.0.1:{http_port}/explorer/" if http_port else None,
                    mining=m.mining,
                    state=self.state_of(v),
                    height=int(s["height"]) if s else None,
                    tip=str(s["tip"]) if s else None,
                    peers=[index[p["addr"]] for p in s["peers"] if p["addr"] in index] if s else [],
                    row=list(row),
                )
            )
        self.web.publish_state(self.headline(views), COLUMNS, infos, final)

    def render(self, views: list[View]) -> str:
        rows = self.rows(views)
        room = max(5, shutil.get_terminal_size((120, 40)).lines - 5)
        hidden = max(0, len(rows) - 1 - room)
        shown = rows[: room + 1]
        widths = [max(len(r[c]) for r in shown) for c in range(len(rows[0]))]
        lines = [
            f"p2pchain swarm: {self.opts.nodes} nodes ({self.opts.miners} mining), {self.opts.topology}, "
            f"{network_text(self.opts.difficulty, self.opts.block_time)}, run dir {self.run_dir}   (Ctrl-C stops)",
            self.headline(views),
            "",
        ]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in shown]
        if hidden:
            lines.append(f"... and {hidden} more nodes")
        return "\n".join(lines)

    def show(self, views: list[View]) -> None:
        self.publish(views)
        if self.table:
            self.out.write("\x1b[H\x1b[2J" + self.render(views) + "\n")
            self.out.flush()
        else:
            self.say(self.headline(views))

    # --- the end ------------------------------------------------------------------------------
    async def wait_agreement(self, timeout: float = AGREE_WITHIN_S) -> list[View]:
        """Poll the tips until every live node shows the same one, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            views = await self.refresh()
            alive = [v for v in views if v.member.alive()]
            if alive and len(self.tips(alive)) == 1 and all(v.status for v in alive):
                return views
            if time.monotonic() >= deadline or self.hurry.is_set():
                return views
            await asyncio.sleep(AGREE_POLL_S)

    async def summarize(self, views: list[View]) -> Summary:
        opts = self.opts
        alive = [v for v in views if v.member.alive()]
        tips = self.tips(alive)
        agreed = bool(alive) and len(tips) == 1 and all(v.status for v in alive)
        best = max((v for v in alive if v.status), key=lambda v: int(v.status["work"]) if v.status else 0, default=None)
        chain: list[Block] = []
        if best is not None:
            chain = await best.member.blocks_from(self.start_height + 1)
        on_chain = {b.hash for b in chain}
        confirmed = {tx.txid for b in chain for tx in b.txs[1:]}
        measured = self.prop.measured()
        spreads = self.prop.complete_ms({v.member.index for v in alive})
        interval = mean_interval_s(chain)
        late = mean_interval_s(chain[len(chain) // 2 :])
        ratio = interval / opts.block_time if interval is not None and opts.block_time else None
        ratio_late = late / opts.block_time if late is not None and opts.block_time else None
        return Summary(
            nodes=opts.nodes,
            alive=len(alive),
            agreed=agreed,
            height=int(best.status["height"]) if best and best.status else 0,
            tip=str(best.status["tip"]) if best and best.status else "",
            blocks=len(measured),
            forks_resolved=sum(1 for h in measured if h not in on_chain),
            propagation_p50_ms=percentile(spreads, 50),
            propagation_p99_ms=percentile(spreads, 99),
            propagation_blocks=len(spreads),
            tx_confirmed=sum(1 for txid in self.tx_accepted if txid in confirmed),
            tx_sent=self.tx_sent,
            tx_accepted=len(self.tx_accepted),
            tx_skipped=self.tx_unfunded,
            died=self.launcher.died(),
            duration_s=time.monotonic() - self.started,
            difficulty=opts.difficulty,
            block_time_s=opts.block_time,
            block_interval_s=interval,
            interval_ratio=ratio,
            interval_ratio_late=ratio_late,
            topology=opts.topology,
            miners=opts.miners,
            in_process=opts.in_process,
            seed=self.seed,
            run_dir=str(self.run_dir),
        )

    async def run(self, stop: asyncio.Event) -> Summary:
        """The whole run; every node started is stopped before this returns or raises."""
        try:
            await self.start()
            await self.watch(stop)
            stop.set()
            self.say("ending: waiting for the nodes to agree, then stopping them")
            views = await self.wait_agreement()
            if self.table:
                self.out.write(self.render(views) + "\n")
            summary = await self.summarize(views)
            if self.web is not None:
                self.publish(views, final=True)  # the view the summary was made from
                await self.web.hub.flush(WEB_FLUSH_S)
            return summary
        finally:
            if self.web is not None:
                await self.web.stop()
            await self.launcher.stop()


# --- the command line ---------------------------------------------------------------------------------------
def _topology(text: str) -> str:
    try:
        parse_topology(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return int(text)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0-3600)")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="swarm.py",
        description="Start a local swarm of p2pchain nodes with a live view; Ctrl-C stops them all.",
        epilog="Exit status 0 when every node is alive at the end and all agree on one tip within "
        f"{AGREE_WITHIN_S:g} s; 1 otherwise.",
    )
    p.add_argument("--nodes", type=positive_int, default=5, help="nodes to start (default 5)")
    p.add_argument("--miners", type=int, default=2, help="how many of them mine (default 2)")
    p.add_argument(
        "--topology",
        type=_topology,
        default="ring",
        help="initial links: line, ring, full or random:D (default ring); nodes then also dial "
        "addresses they learn from each other",
    )
    p.add_argument(
        "--base-port",
        type=int,
        default=0,
        help="node I listens on BASE+I and serves HTTP on BASE+N+I (default: free ports)",
    )
    p.add_argument(
        "--difficulty",
        type=positive_int,
        help="leading zero bits per block; with a block time the start difficulty (default: estimated "
        f"from this machine's hash rate); with --block-time 0 fixed (default {DEMO_BITS}: a block "
        "every 1-2 s with 2 miners on 2 cores)",
    )
    p.add_argument(
        "--block-time",
        type=_non_negative_float,
        default=DEMO_BLOCK_TIME_S,
        metavar="SECONDS",
        help=f"retarget every block (ASERT) to a block every SECONDS (default {DEMO_BLOCK_TIME_S:g}); "
        "0: a fixed difficulty",
    )
    p.add_argument(
        "--half-life",
        type=_positive_float,
        metavar="SECONDS",
        help="the retarget half-life (default: the network's, 48 block times)",
    )
    p.add_argument("--miner-procs", type=positive_int, default=1, help="worker processes per miner (default 1)")
    p.add_argument("--duration", type=_positive_float, help="seconds to run (default: until Ctrl-C)")
    p.add_argument(
        "--tx-rate", type=float, default=0.0, help="signed payments per second between the nodes' wallets (default 0)"
    )
    p.add_argument("--run-dir", type=Path, help="where node data and logs go (default ./run/swarm-<time>)")
    p.add_argument(
        "--in-process", action="store_true", help="run every node in this process's event loop (for 200+ nodes)"
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    p.add_argument("--seed", type=int, help="seed for the topology and transactions (default: random, printed)")
    p.add_argument(
        "--web",
        type=_port,
        metavar="PORT",
        help="serve a live map of the swarm on http://127.0.0.1:PORT/ (each node links to its explorer)",
    )
    p.add_argument(
        "--relay",
        choices=RELAY_MODES,
        default=RELAY_MODES[0],
        help="every node's relay: compact (default) or flood (protocol version 1, every object in full)",
    )
    p.add_argument(
        "--log-level",
        default=None,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="node log level (default INFO; WARNING with --in-process)",
    )
    return p


def options_from(argv: list[str] | None) -> Options:
    p = parser()
    a = p.parse_args(argv)
    if not 0 <= a.miners <= a.nodes:
        p.error(f"--miners must be between 0 and --nodes ({a.nodes})")
    if a.tx_rate < 0:
        p.error("--tx-rate must not be negative")
    kind, degree = parse_topology(a.topology)
    if kind == "random" and degree >= a.nodes:
        p.error(f"random:{degree} needs more than {degree} nodes")
    if a.base_port and not 1024 <= a.base_port <= 65535 - 2 * a.nodes:
        p.error(f"--base-port must leave room for {2 * a.nodes} ports below 65536")
    if a.half_life is not None and not a.block_time:
        p.error("--half-life needs a block time (--block-time SECONDS, not 0)")
    if a.block_time and a.block_time < 0.01:
        p.error("--block-time must be at least 0.01 s (or 0 for a fixed difficulty)")
    if a.difficulty is None:
        a.difficulty = DEMO_BITS if not a.block_time else estimate_difficulty(a.block_time, a.miners, a.miner_procs)
    values = {f.name: getattr(a, f.name) for f in fields(Options) if f.name in vars(a)}
    values["log_level"] = a.log_level or ("WARNING" if a.in_process else "INFO")
    return Options(**values)


async def _main(opts: Options) -> int:
    swarm = Swarm(opts)
    if opts.in_process:
        swarm.run_dir.mkdir(parents=True, exist_ok=True)
        logging.basicConfig(
            level=opts.log_level,
            filename=swarm.run_dir / "swarm.log",
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def interrupted() -> None:
        if stop.is_set():
            swarm.hurry.set()  # a second Ctrl-C: stop the nodes now, without waiting for agreement
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, interrupted)
    try:
        summary = await swarm.run(stop)
    except RuntimeError as e:
        print(f"swarm.py: {e}", file=sys.stderr)
        return 1
    swarm.say(summary.text())
    if opts.json:
        swarm.say(summary.to_json())
    return 0 if summary.ok else 1


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(_main(options_from(argv)))


if __name__ == "__main__":  # the guard also keeps MinerPool's spawned workers from running main()
    sys.exit(main())
