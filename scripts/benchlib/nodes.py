"""Node processes on loopback, shared by the subcommands that run real nodes (net, hostile):
a pre-mined chain, NodeProcs, and timing a block's gossip across them."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from p2pchain import limits, wire
from p2pchain.chain import Chain
from p2pchain.client import Client, NodeUnavailable
from p2pchain.ledger.block import Block
from p2pchain.miner import build_template, mine_block
from p2pchain.params import NetworkParams
from p2pchain.store import DB_FILE

if TYPE_CHECKING:
    from p2pchain.node import Node, NodeConfig

NET_PARAMS = NetworkParams(bits=8)  # the nodes' network: blocks pre-mine in ~0.2 ms each; relaying
# and syncing a block cost the same at any difficulty (one hash checks the proof of work)
NET_SPACING_MS = 1000  # timestamp step between pre-mined blocks: always after the median time past
NET_TIMEOUT_S = 60.0  # a node not up, linked or caught up after this long fails the bench


def net_chain(n: int, reward_to: str, params: NetworkParams = NET_PARAMS) -> list[Block]:
    """``n`` coinbase-only blocks on the genesis of ``params``, each paying ``reward_to`` its reward."""
    blocks: list[Block] = []
    parent = params.genesis.header
    for _ in range(n):
        stamp = parent.timestamp + NET_SPACING_MS
        blocks.append(mine_block(build_template(params, parent, parent.timestamp, [], reward_to, stamp)))
        parent = blocks[-1].header
    return blocks


def embedded_node(config: NodeConfig) -> Node:
    """A Node in the bench's own process, which then runs with the interpreter settings that the
    node command gives its process (cli.tune_interpreter: GIL switch interval, young GC threshold,
    malloc's mmap threshold), so that a bench measures what a node process does; Node itself
    leaves them to whoever owns the process."""
    from p2pchain.cli import tune_interpreter
    from p2pchain.node import Node

    tune_interpreter()
    return Node(config)


def write_chain(data_dir: Path, blocks: list[Block], params: NetworkParams = NET_PARAMS) -> float:
    """A node's store in ``data_dir`` holding ``blocks``, written in this process through
    Chain.process_block, one commit per CHAIN-sized batch as the node does (no network, no
    mining); returns the seconds."""
    data_dir.mkdir(parents=True)
    chain = Chain.open(data_dir / DB_FILE, params)
    try:
        start = time.perf_counter()
        for i in range(0, len(blocks), limits.MAX_BLOCKS_PER_CHAIN):
            with chain.store.batch():
                for block in blocks[i : i + limits.MAX_BLOCKS_PER_CHAIN]:
                    chain.process_block(block, block.header.timestamp)
        return time.perf_counter() - start
    finally:
        chain.close()


PORT_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LISTEN_PORTS_SPAN = 16384  # listening ports are drawn from this many ports below the ephemeral range
_given: set[int] = set()  # ports free_ports handed out in this process: never handed out again


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free a moment ago, drawn below the kernel's ephemeral range
    (Linux: ip_local_port_range): a free port from that range can be taken before its node
    binds it, as the source port of an outgoing connection (nodes started earlier dialling
    their peers), and that node then fails with "address already in use" (seen when 40 relay
    bench nodes started one network after the other). Never a port handed out before in this
    process, even if its node has not bound it yet (bench relay draws both networks' ports before
    starting either: about one run in 40 drew a port twice, the second node could not listen, the
    bench's client reached the first in its place, and wait_linked failed a minute later)."""
    try:
        low = int(PORT_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    rng = random.Random()
    below = low > LISTEN_PORTS_SPAN + 1024  # else no usable range below: any free port (0)
    socks: list[socket.socket] = []
    try:
        for _ in range(50 * n):  # a few taken ports are skipped; bounded all the same
            if len(socks) == n:
                break
            port = rng.randrange(low - LISTEN_PORTS_SPAN, low) if below else 0
            if port in _given:
                continue
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use (or held by one of ours): another
                s.close()
                continue
            if s.getsockname()[1] in _given:  # (port 0: the kernel may pick one handed out before)
                s.close()
                continue
            socks.append(s)
        for _ in range(50 * n):  # the range below was full: any free port not handed out before
            if len(socks) == n:
                break
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            if s.getsockname()[1] in _given:
                s.close()
                continue
            socks.append(s)
        if len(socks) < n:
            raise RuntimeError(f"no {n} free ports not handed out before")
        ports = [int(s.getsockname()[1]) for s in socks]
        _given.update(ports)
        return ports
    finally:
        for s in socks:
            s.close()


def percentile_ms(times: list[float], q: int) -> float:
    """The ``q``th percentile, interpolated between samples (q < 100)."""
    return statistics.quantiles(times, n=100, method="inclusive")[q - 1]


class NodeProcs:
    """``n`` `python -m p2pchain` processes (not mining, --no-discover) of one measurement, each
    with a protocol Client; ``close`` stops every one (SIGTERM, SIGKILL after 5 s)."""

    def __init__(self, root: Path, n: int) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.ports = free_ports(n)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.node_of: dict[subprocess.Popen[bytes], int] = {}  # each process's node number
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
        self.node_of[proc] = i
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
            while not want[i] <= (have := {p["addr"] for p in (await client.status())["peers"]}):
                if time.monotonic() > deadline:
                    why = f"node{i} did not connect to {sorted(want[i] - have)} (its peers: {sorted(have)})"
                    raise RuntimeError(why + self.exited())
                await asyncio.sleep(0.05)

    def exited(self) -> str:
        """The nodes that have exited, each with the end of its log (why a node was not reached)."""
        lines = []
        for proc, i in self.node_of.items():
            if proc.poll() is not None:
                tail = (self.root / f"node{i}.log").read_text(errors="replace")[-500:]
                lines.append(f"\nnode{i} (port {self.ports[i]}) exited with {proc.returncode}:\n{tail}")
        return "".join(lines)

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
