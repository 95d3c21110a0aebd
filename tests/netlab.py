"""A lab of hosts on this one machine, for the multi-host tests (tests/test_multihost.py).

    sudo .venv/bin/python tests/netlab.py [--workdir DIR]   # prints one JSON object, last line

What it builds, all inside namespaces of its own (see Containment):

    lab namespace: this script (the driver), bridge "data" 10.77.0.254/24, bridge "mgmt"
        10.78.0.254/24, the nftables table that loses packets on the data bridge, and the delay
        relay 10.77.0.254:7104 -> h1 (the kernel here has no netem: a userspace relay instead)
    h1..h4: a network namespace each, eth0 10.77.0.N on "data" (veth dN), mgmt0 10.78.0.N on
        "mgmt"; a node on 0.0.0.0:7000 (HTTP 8000) dialling its peers' data addresses
    h4 is the far host: an nftables rule in h4 lets its data traffic reach the relay only, so
        everything it says or hears crosses RELAY_DELAY_S each way

The driver talks to the nodes over "mgmt" only, so degraded or cut data links never blind it.
It runs the phases of the scenario (clean, lossy, partition and heal), asserting after each that
the nodes converge, that every block mined while linked is on every node's best chain and that
every transaction a node accepted ends up confirmed on every node.

Containment: started normally, the script re-runs itself under ``unshare --net --mount --pid
--fork --kill-child --mount-proc``: a fresh network namespace that holds nothing but loopback (no
address in it can route off the machine, and nothing outside can reach in), a private mount
namespace with a tmpfs over /run (the ``ip netns`` files exist only there), and a PID namespace
whose init is this script: when it ends, however it ends, the kernel kills every process it
started, and the namespaces go with them. A ``finally`` also stops each process and deletes each
namespace, link and table in order, and the result reports anything left over.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from p2pchain.client import Client  # noqa: E402 - after the path, for `python tests/netlab.py`
from p2pchain.keys import Wallet  # noqa: E402
from p2pchain.ledger.tx import Tx, make_tx  # noqa: E402
from p2pchain.params import NetworkParams  # noqa: E402

log = logging.getLogger("netlab")

INSIDE_ENV = "P2PCHAIN_NETLAB_INSIDE"  # set in the contained re-run
UNSHARE = ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc"]
HOSTS = 4  # h1..h4; h4 is the far host behind the relay
DATA = "10.77.0"  # data network /24: the nodes' peer traffic
MGMT = "10.78.0"  # management network /24: the driver's queries
LAB = 254  # the lab namespace's host number on both networks
NODE_PORT = 7000
HTTP_PORT = 8000
RELAY_PORT = 7104  # 10.77.0.254:7104 -> h1:7000, delayed
RELAY_DELAY_S = 0.15  # one way: the far host's round trip is 300 ms
LOSS_PERCENT = 20  # IPv4 frames dropped on the data bridge during the lossy phase
BITS = 12  # difficulty: ~4,000 hashes a block, milliseconds to mine (tests/harness.py TEST_BITS)
PING_S = 2.0  # --ping-interval: a dead link is noticed within ~2x this
DEADLINE_S = 40.0  # one wait (start, convergence) fails after this long
CMD_TIMEOUT_S = 20.0
SPENDERS = 10  # wallets the miner funds with 1 coin each; each later pays 1 coin once
HTTP_TOKEN = "netlab-http-token-0123456789abcdef"  # the driver is not on the nodes' loopback: /mine needs it
LOSSY_ROUNDS = 8  # blocks mined (and transactions taken) one host after another under loss


class LabError(Exception):
    """A command that builds or changes the lab failed; the message holds its output."""


def sh(*args: str, input_text: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(args, input=input_text, capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    if check and proc.returncode != 0:
        raise LabError(f"`{' '.join(args)}` exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def data_ip(i: int) -> str:
    return f"{DATA}.{i}"


def mgmt_ip(i: int) -> str:
    return f"{MGMT}.{i}"


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> Any:
    """Poll ``predicate`` until truthy (returned) or fail saying what was awaited."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as e:  # a node restarting, a connection reset: keep polling
            last, value = e, None
        if value:
            return value
        time.sleep(0.1)  # poll interval, not synchronisation
    raise AssertionError(
        f"timed out after {timeout:g} s waiting for {what}" + (f" (last error: {last})" if last else "")
    )


# --- the delay relay ------------------------------------------------------------------------
async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy bytes, each chunk delivered ``delay`` s after it arrived, in order."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                return
            await asyncio.sleep(max(0.0, due - loop.time()))  # ok: the delay this relay adds
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(deliver())
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            queue.put_nowait((loop.time() + delay, data))
    queue.put_nowait((loop.time() + delay, b""))
    with contextlib.suppress(ConnectionError):
        await sender
    writer.close()


async def relay(listen: tuple[str, int], target: tuple[str, int], delay: float) -> None:
    """A TCP relay that adds ``delay`` s each way: netem's delay, in userspace."""

    async def serve(r1: asyncio.StreamReader, w1: asyncio.StreamWriter) -> None:
        try:
            r2, w2 = await asyncio.open_connection(*target)
        except OSError:
            w1.close()
            return
        await asyncio.gather(_pipe(r1, w2, delay), _pipe(r2, w1, delay), return_exceptions=True)

    server = await asyncio.start_server(serve, *listen)
    async with server:
        await server.serve_forever()


# --- the lab --------------------------------------------------------------------------------
@dataclass
class NodeHandle:
    index: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        """The log's last lines, without the driver's own query connections (over mgmt, one
        every poll), which would crowd out what the node did."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join([line for line in text.splitlines() if f" {MGMT}.{LAB}:" not in line][-lines:])


@dataclass
class Lab:
    """The hosts, links and processes; ``close`` undoes everything ``build`` and the rest did."""

    workdir: Path
    nodes: dict[int, NodeHandle] = field(default_factory=dict)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    def build(self) -> None:
        sh("mount", "-t", "tmpfs", "netlab-run", "/run")  # `ip netns` state, seen by this lab only
        sh("ip", "link", "set", "lo", "up")
        for name, net in (("data", DATA), ("mgmt", MGMT)):
            sh("ip", "link", "add", name, "type", "bridge")
            self.links.append(name)
            sh("ip", "addr", "add", f"{net}.{LAB}/24", "dev", name)
            sh("ip", "link", "set", name, "up")
        for i in range(1, HOSTS + 1):
            ns = f"h{i}"
            sh("ip", "netns", "add", ns)
            self.netns.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            for bridge, port, inner, net in (("data", f"d{i}", "eth0", DATA), ("mgmt", f"m{i}", "mgmt0", MGMT)):
                sh("ip", "link", "add", port, "type", "veth", "peer", "name", inner, "netns", ns)
                self.links.append(port)
                sh("ip", "link", "set", port, "master", bridge, "up")
                sh("ip", "-n", ns, "addr", "add", f"{net}.{i}/24", "dev", inner)
                sh("ip", "-n", ns, "link", "set", inner, "up")
        # Loss lives in the lab namespace, on the bridge: between hosts (forward) and to/from the
        # relay (input/output). The chains start empty; set_loss fills them.
        sh(
            "nft",
            "-f",
            "-",
            input_text="""table bridge netlab {
  chain between { type filter hook forward priority 0; policy accept; }
  chain to_lab { type filter hook input priority 0; policy accept; }
  chain from_lab { type filter hook output priority 0; policy accept; }
}
""",
        )
        relay_ip = f"{DATA}.{LAB}"  # the far host talks to the relay and nothing else
        sh(
            "ip",
            "netns",
            "exec",
            f"h{HOSTS}",
            "nft",
            "-f",
            "-",
            input_text=f"""table inet far {{
  chain out {{ type filter hook output priority 0; oifname "eth0" ip daddr != {relay_ip} drop; }}
  chain in {{ type filter hook input priority 0; iifname "eth0" ip saddr != {relay_ip} drop; }}
}}
""",
        )

    def start_relay(self) -> None:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "relay",
            f"{DATA}.{LAB}:{RELAY_PORT}",
            f"{data_ip(1)}:{NODE_PORT}",
        ]
        log_file = open(self.workdir / "relay.log", "ab")  # noqa: SIM115 - handed to the child
        self.others.append(subprocess.Popen([*cmd, str(RELAY_DELAY_S)], stdout=log_file, stderr=subprocess.STDOUT))
        log_file.close()

    def start_node(
        self, i: int, peers: list[str], reward_to: str, *, name: str = "", port: int = NODE_PORT, shared: bool = True
    ) -> None:
        """A node on host h{i} (named n{i} unless ``name``); ``shared``: its shim serves other
        hosts (--http-host 0.0.0.0 with the lab's token), else it keeps the default --http-host."""
        name = name or f"n{i}"
        log_path = self.workdir / f"{name}.log"
        cmd = ["ip", "netns", "exec", f"h{i}", sys.executable, "-m", "p2pchain"]
        cmd += ["--host", "0.0.0.0", "--port", str(port), "--http-port", str(port + HTTP_PORT - NODE_PORT)]
        if shared:  # the driver is another host
            cmd += ["--http-host", "0.0.0.0", "--http-token-file", str(self.token_file())]
        cmd += ["--data-dir", str(self.workdir / name), "--difficulty", str(BITS), "--miner-procs", "1"]
        cmd += ["--ping-interval", str(PING_S), "--reward-to", reward_to, "--log-level", "DEBUG"]
        for peer in peers:
            cmd += ["--peer", peer]
        log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        log_file.close()
        self.nodes[i if name == f"n{i}" else HOSTS + len(self.nodes)] = NodeHandle(i, proc, log_path)

    def token_file(self) -> Path:
        """The HTTP token every node takes (--http-token-file), written once."""
        path = self.workdir / "http-token"
        if not path.exists():
            path.write_text(HTTP_TOKEN + "\n")
        return path

    def set_loss(self, percent: int) -> None:
        """Drop ``percent`` % of IPv4 frames crossing the data bridge, chosen at random by nftables."""
        for chain, port in (("between", "iifname"), ("to_lab", "iifname"), ("from_lab", "oifname")):
            sh("nft", "flush", "chain", "bridge", "netlab", chain)
            if percent:  # data ports d1..d4 only: the mgmt bridge shares these hooks
                rule = f'{port} "d*" ether type ip numgen random mod 100 < {percent} counter drop'
                sh("nft", "add", "rule", "bridge", "netlab", chain, *rule.split())

    def dropped(self) -> int:
        """Frames the loss rules have dropped so far."""
        text = sh("nft", "list", "table", "bridge", "netlab")
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", text))

    def cut(self, i: int) -> None:
        """Pull h{i}'s data cable: its bridge port goes down (its mgmt link stays)."""
        sh("ip", "link", "set", f"d{i}", "down")

    def restore(self, i: int) -> None:
        sh("ip", "link", "set", f"d{i}", "up")

    def close(self) -> dict[str, Any]:
        """Stop every process, delete every namespace, link and table; report what is left."""
        procs = [n.proc for n in self.nodes.values()] + self.others
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 8.0
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for ns in self.netns:
            sh("ip", "netns", "del", ns, check=False)
        for link in reversed(self.links):
            sh("ip", "link", "del", link, check=False)
        sh("nft", "delete", "table", "bridge", "netlab", check=False)
        return {
            "netns_left": sh("ip", "netns", "list", check=False).split(),
            "links_left": [
                line.split(":")[1].strip()
                for line in sh("ip", "-o", "link", "show", check=False).splitlines()
                if ": lo:" not in line
            ],
            "processes_left": _other_processes(),
        }


def _other_processes() -> list[str]:
    """Live processes of this PID namespace besides this one (zombies reaped first): there is
    nothing else in it once the lab is closed."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    left: list[str] = []
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        left = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if cmdline and "ip -o link" not in cmdline:
                    left.append(f"{pid}: {cmdline[:120]}")
        if not left:
            break
        time.sleep(0.1)  # ok: poll interval of a bounded wait
    return left


# --- the driver -----------------------------------------------------------------------------
def run_async(coro: Awaitable[Any], timeout: float = 20.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


async def _with_client(i: int, fn: Callable[[Client], Awaitable[Any]]) -> Any:
    return await _p2p(mgmt_ip(i), NODE_PORT, fn)


async def _p2p(host: str, port: int, fn: Callable[[Client], Awaitable[Any]]) -> Any:
    async with await Client.connect(host, port, timeout=5.0) as client:
        return await fn(client)


def query(i: int, fn: Callable[[Client], Awaitable[Any]]) -> Any:
    return run_async(_with_client(i, fn))


def query_all(fn: Callable[[Client], Awaitable[Any]]) -> list[Any]:
    """``fn`` on every node at once; a node that cannot answer gives its exception."""

    async def each() -> list[Any]:
        return list(await asyncio.gather(*(_with_client(i, fn) for i in range(1, HOSTS + 1)), return_exceptions=True))

    return list(run_async(each()))


def mine(i: int) -> dict[str, Any]:
    """GET /mine on node i (with the lab's token): it mines one block with its mempool and gossips it."""
    code, block = http(mgmt_ip(i), HTTP_PORT, "GET", "/mine", token=HTTP_TOKEN)
    if code != 200:
        raise AssertionError(f"GET /mine on n{i} answered {code}: {block}")
    log.info("n%d mined block %s at height %d", i, block["hash"][:16], block["height"])
    return dict(block)


def http(host: str, port: int, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    """(status, JSON or text) of one request to a shim; ConnectionError if nothing listens there."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{host}:{port}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:  # a /mine may take a while on a loaded machine
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except urllib.error.URLError as e:
        if isinstance(e.reason, ConnectionError):
            raise e.reason from None
        raise
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def metric(text: str, name: str) -> float | None:
    """The value of an unlabelled sample in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def _status(client: Client) -> dict[str, Any]:
    return await client.status()


def data_peers(status: dict[str, Any] | BaseException) -> list[str] | None:
    """The peer addresses a node lists on the data network (the driver's own query connection,
    over mgmt, is a peer too and is left out); None if the node did not answer."""
    if isinstance(status, BaseException):
        return None
    return [p["addr"] for p in status["peers"] if p["addr"].startswith(f"{DATA}.")]


def _node_states() -> list[Any]:
    """Each node's height, tip, data peers and relay counters (or why it did not answer): what
    a failed phase's report needs to say which node fell behind and why."""
    try:
        statuses = query_all(_status)
    except Exception as e:  # the lab is failing already: report, do not mask the first error
        return [f"{type(e).__name__}: {e}"]
    return [
        repr(s)
        if isinstance(s, BaseException)
        else {"height": s["height"], "tip": s["tip"][:16], "peers": data_peers(s), "relay": s["relay"]}
        for s in statuses
    ]


def tips() -> list[str | None]:
    return [None if isinstance(s, BaseException) else s["tip"] for s in query_all(_status)]


def on_best_chain(blocks: list[dict[str, Any]]) -> list[bool]:
    """Per node: every one of ``blocks`` is on its best chain."""

    async def check(client: Client) -> bool:
        for block in blocks:
            reply = await client.blocks(block["height"], 1)
            if not reply.blocks or reply.blocks[0].hash.hex() != block["hash"]:
                return False
        return True

    return [r is True for r in query_all(check)]


def confirmed(txids: list[bytes]) -> list[bool]:
    """Per node: every one of ``txids`` is confirmed on its best chain."""

    async def check(client: Client) -> bool:
        for txid in txids:
            if (await client.tx_info(txid)).status != "confirmed":
                return False
        return True

    return [r is True for r in query_all(check)]


def submit(i: int, tx: Tx) -> bool:
    async def go(client: Client) -> bool:
        reply = await client.submit_tx(tx)
        if not reply.accepted:
            log.info("n%d refused %s: %s %s", i, tx.txid.hex()[:16], reply.code, reply.error)
        return bool(reply.accepted)

    accepted = bool(query(i, go))
    log.info("n%d %s tx %s", i, "accepted" if accepted else "refused", tx.txid.hex()[:16])
    return accepted


@dataclass
class Scenario:
    lab: Lab
    params: NetworkParams = field(default_factory=lambda: NetworkParams(bits=BITS))
    miner: Wallet = field(default_factory=Wallet.generate)  # every node's --reward-to
    spenders: list[Wallet] = field(default_factory=lambda: [Wallet.generate() for _ in range(SPENDERS)])
    sink: Wallet = field(default_factory=Wallet.generate)
    miner_nonce: int = 0
    phases: list[dict[str, Any]] = field(default_factory=list)

    def pay(self, sender: Wallet, nonce: int, to: Wallet, amount: int = 1) -> Tx:
        return make_tx(sender, to.address, amount, 0, nonce, self.params.network_id)

    def converge(self, what: str) -> str:
        """Wait until every node has the same tip; return it."""

        def same() -> str | None:
            now = tips()
            return now[0] if now[0] is not None and len(set(now)) == 1 else None

        tip: str = wait_until(same, f"every node on one tip ({what})")
        return tip

    def mine_and_spread(self, i: int, record: dict[str, Any], what: str = "") -> dict[str, Any]:
        """Mine at node i and wait until every node has the block as its tip; the time that took
        (from /mine's answer, so the first hops are partly hidden) is kept in ``record``."""
        block = mine(i)
        started = time.monotonic()
        tip = self.converge(f"block {block['hash'][:16]} from n{i}{what}")
        record.setdefault("spread_ms", []).append(round((time.monotonic() - started) * 1000))
        assert tip == block["hash"], f"nodes converged on {tip}, not n{i}'s new block"
        return block

    def mine_until_confirmed(self, txids: list[bytes], order: list[int]) -> list[dict[str, Any]]:
        """Mine at the nodes in turn until every node has every tx confirmed (a tx sits only in
        the mempools it reached: whoever holds it must get a turn)."""
        mined: list[dict[str, Any]] = []
        for turn in range(2 * len(order)):
            mined.append(mine(order[turn % len(order)]))
            self.converge("after mining for the transactions")
            if all(confirmed(txids)):
                return mined
        raise AssertionError(f"transactions not confirmed everywhere after {len(mined)} blocks: {confirmed(txids)}")

    def phase(self, name: str, fn: Callable[[dict[str, Any]], None]) -> None:
        record: dict[str, Any] = {"name": name}
        self.phases.append(record)
        started = time.monotonic()
        log.info("--- phase %s", name)
        fn(record)
        record["seconds"] = round(time.monotonic() - started, 2)
        record["ok"] = True

    # --- phases -------------------------------------------------------------------------------
    def boot(self, record: dict[str, Any]) -> None:
        lab = self.lab
        lab.start_relay()
        peers: dict[int, list[str]] = {
            1: [],
            2: [f"{data_ip(1)}:{NODE_PORT}"],
            3: [f"{data_ip(1)}:{NODE_PORT}", f"{data_ip(2)}:{NODE_PORT}"],
            4: [f"{DATA}.{LAB}:{RELAY_PORT}"],  # the far host: through the relay only
        }
        for i in range(1, HOSTS + 1):
            lab.start_node(i, peers[i], self.miner.address)
        want = {1: 3, 2: 2, 3: 2, 4: 1}  # h1 has everyone, h4 only h1 (through the relay)

        def linked() -> bool:
            for i, node in lab.nodes.items():
                if node.proc.poll() is not None:
                    raise AssertionError(f"n{i} exited with {node.proc.returncode}:\n{node.log_tail()}")
            peers = [data_peers(s) for s in query_all(_status)]
            record["peers"] = peers
            return all(p is not None and len(p) >= want[i + 1] for i, p in enumerate(peers))

        wait_until(linked, "every node to start and connect to its peers")

        async def through_relay() -> float:  # a query to h1 through the relay: 2 delays at least
            async with await Client.connect(f"{DATA}.{LAB}", RELAY_PORT, timeout=10.0) as client:
                started = time.monotonic()
                await client.status()
                return (time.monotonic() - started) * 1000

        record["relay_round_trip_ms"] = round(run_async(through_relay()))

    def clean(self, record: dict[str, Any]) -> None:
        """Blocks from each host in turn reach all (the far one included); then the miner funds
        the spenders with transactions submitted at h2, mined by the far host h4."""
        mined = [self.mine_and_spread(1 + k % HOSTS, record) for k in range(SPENDERS + 2)]
        record["blocks_mined"] = len(mined)
        record["mined_on_every_best_chain"] = on_best_chain(mined)
        funding = [self.pay(self.miner, self.miner_nonce + k, s) for k, s in enumerate(self.spenders)]
        self.miner_nonce += len(funding)
        record["txs_accepted"] = sum(submit(2, tx) for tx in funding)
        txids = [tx.txid for tx in funding]

        async def known(client: Client) -> bool:
            return all([(await client.tx_info(t)).status != "unknown" for t in txids])

        wait_until(lambda: all(r is True for r in query_all(known)), "the funding transactions to reach every node")
        mined += self.mine_until_confirmed(txids, [4])
        record["txs_confirmed_everywhere"] = all(confirmed(txids))

    def lossy(self, record: dict[str, Any]) -> None:
        """LOSS_PERCENT % of frames dropped on every data link while the hosts in turn take a
        transaction and mine a block: each block must reach every node, and every transaction
        end up confirmed everywhere (TCP and the protocol recover what the links lose)."""
        lab = self.lab
        lab.set_loss(LOSS_PERCENT)
        record["loss_percent"] = LOSS_PERCENT
        mined, txids, accepted = [], [], 0
        for k in range(LOSSY_ROUNDS):
            miner, taker = 1 + k % HOSTS, 1 + (k + 2) % HOSTS
            tx = self.pay(self.spenders[k], 0, self.sink)
            accepted += submit(taker, tx)
            txids.append(tx.txid)
            mined.append(self.mine_and_spread(miner, record, ", under loss"))
        record["mined_on_every_best_chain"] = on_best_chain(mined)
        mined += self.mine_until_confirmed(txids, [1, 2, 3, 4])
        record["blocks_mined"] = len(mined)
        record["txs_accepted"] = accepted
        record["txs_confirmed_everywhere"] = all(confirmed(txids))
        record["frames_dropped"] = lab.dropped()
        lab.set_loss(0)

    def partition(self, record: dict[str, Any]) -> None:
        """h3's data link is cut until every node has noticed (pings unanswered: the connections
        are dropped); h3 mines 2 blocks and takes a transaction on its side, h1 mines 3 and takes
        another; the link comes back. The nodes must reconnect, h3 must reorg onto the longer
        branch, and both transactions must end up confirmed on every node: nothing accepted is
        lost in a reorg."""
        lab = self.lab
        lab.cut(3)
        cut_at = time.monotonic()

        def h3_dropped() -> bool:
            peers = [data_peers(s) for s in query_all(_status)]
            record["peers_during_cut"] = peers
            h3 = f"{data_ip(3)}:"
            others = all(p is not None and not any(a.startswith(h3) for a in p) for i, p in enumerate(peers) if i != 2)
            return others and peers[2] == []

        wait_until(h3_dropped, "every node to notice the cut (h3 has no peers, and no peer has h3)")
        record["cut_noticed_seconds"] = round(time.monotonic() - cut_at, 2)
        minority_tx = self.pay(self.spenders[LOSSY_ROUNDS], 0, self.sink)
        majority_tx = self.pay(self.spenders[LOSSY_ROUNDS + 1], 0, self.sink)
        record["minority_tx_accepted"] = submit(3, minority_tx)
        minority = [mine(3), mine(3)]
        record["majority_tx_accepted"] = submit(1, majority_tx)
        majority = [mine(1), mine(1), mine(1)]

        def majority_agrees() -> bool:
            now = tips()
            return bool(now[0] == now[1] == now[3] == majority[-1]["hash"])

        wait_until(majority_agrees, "h1, h2 and h4 to agree on the majority branch")
        record["partition_held"] = tips()[2] == minority[-1]["hash"]
        lab.restore(3)
        healed_at = time.monotonic()
        tip = self.converge("after the link came back")
        record["heal_seconds"] = round(time.monotonic() - healed_at, 2)
        record["converged_on_majority"] = on_best_chain(majority)
        record["minority_blocks_dropped"] = [not ok for ok in on_best_chain(minority)]
        record["tip"] = tip
        txids = [minority_tx.txid, majority_tx.txid]
        record["blocks_mined_after"] = len(self.mine_until_confirmed(txids, [3, 1, 2, 4]))
        record["txs_confirmed_everywhere"] = all(confirmed(txids))

    def shim(self, record: dict[str, Any]) -> None:
        """The HTTP shim seen from another host (the driver). h2's node serves it on 0.0.0.0 with
        the lab's token: without the token, /mine and /transactions/new get 401 and change
        nothing (chain, wallet, mempool); /status and /metrics answer; with the token both work.
        A second node on h2 started with --host 0.0.0.0 and the default --http-host: its P2P
        port answers the driver, its shim does not (it answers on h2's own loopback only)."""
        host, port = mgmt_ip(2), HTTP_PORT
        wallet_addr = http(host, port, "GET", "/wallet")[1]["address"]
        funding = make_tx(self.miner, wallet_addr, 5, 0, self.miner_nonce, self.params.network_id)
        self.miner_nonce += 1
        assert submit(2, funding), "the funding of n2's own wallet was refused"
        self.mine_until_confirmed([funding.txid], [2])
        self.converge("after funding n2's wallet")

        def state() -> dict[str, Any]:
            status, st = http(host, port, "GET", "/status")
            assert status == 200, st
            wallet = http(host, port, "GET", "/wallet")[1]
            return {"height": st["height"], "mempool": st["mempool"], "balance": wallet["balance"]}

        before = state()
        record["wallet_before"] = before
        no_token = {
            "mine": http(host, port, "GET", "/mine"),
            "new_tx": http(host, port, "POST", "/transactions/new", {"recipient": self.sink.address, "amount": 1}),
            "mine_wrong_token": http(host, port, "GET", "/mine", token="not-the-lab-token-0000"),
            "register": http(host, port, "POST", "/nodes/register", {"nodes": [f"{data_ip(3)}:{NODE_PORT}"]}),
        }
        record["no_token"] = {
            k: [code, doc.get("code") if isinstance(doc, dict) else doc] for k, (code, doc) in no_token.items()
        }
        after = state()
        record["unchanged_without_token"] = after == before
        record["tips_unchanged"] = len(set(tips())) == 1 and after["height"] == before["height"]
        code, text = http(host, port, "GET", "/metrics")
        record["metrics_open"] = code == 200 and metric(text, "p2pchain_height") == after["height"]
        code, doc = http(
            host, port, "POST", "/transactions/new", {"recipient": self.sink.address, "amount": 1}, HTTP_TOKEN
        )
        record["with_token"] = {"new_tx": [code, doc.get("txid") is not None]}
        code, mined = http(host, port, "GET", "/mine", token=HTTP_TOKEN)
        record["with_token"]["mine"] = [code, len(mined.get("transactions", [])) if isinstance(mined, dict) else 0]
        final = state()
        record["with_token"]["height_up"] = final["height"] == before["height"] + 1
        record["with_token"]["balance_down"] = final["balance"] == before["balance"] - 1

        lab = self.lab
        lab.start_node(
            2, [f"{data_ip(1)}:{NODE_PORT}"], self.miner.address, name="n2-local", port=NODE_PORT + 1, shared=False
        )
        local_http = HTTP_PORT + 1

        def p2p_up() -> bool:
            with contextlib.suppress(OSError, TimeoutError):
                return bool(run_async(_p2p(host, NODE_PORT + 1, _status)))
            return False

        wait_until(p2p_up, "the second node on h2 to answer on its P2P port from the driver")
        record["default_host_p2p_reachable"] = True
        probe = (
            "import urllib.request, sys; "
            f"r = urllib.request.urlopen('http://127.0.0.1:{local_http}/status', timeout=10); sys.exit(r.status != 200)"
        )
        wait_until(
            lambda: (
                subprocess.run(
                    ["ip", "netns", "exec", "h2", sys.executable, "-c", probe], capture_output=True
                ).returncode
                == 0
            ),
            "the second node's shim to answer on h2's loopback",
        )
        record["default_host_local_ok"] = True
        try:
            http(host, local_http, "GET", "/status")
            record["default_host_unreachable"] = False
        except ConnectionRefusedError:
            record["default_host_unreachable"] = True
        try:
            http(data_ip(2), local_http, "GET", "/mine")
            record["default_host_unreachable_data"] = False
        except ConnectionRefusedError:
            record["default_host_unreachable_data"] = True

    def run(self) -> None:
        self.phase("boot", self.boot)
        self.phase("clean", self.clean)
        self.phase("lossy", self.lossy)
        self.phase("partition", self.partition)
        self.phase("shim", self.shim)


def run_lab(workdir: Path) -> dict[str, Any]:
    """Build the lab, run the scenario, tear down; the result says what happened."""
    result: dict[str, Any] = {"ok": False, "relay_delay_ms": RELAY_DELAY_S * 1000, "hosts": HOSTS}
    lab = Lab(workdir)
    scenario = Scenario(lab)
    started = time.monotonic()
    try:
        lab.build()
        scenario.run()
        result["ok"] = True
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()
        result["log_tails"] = {f"n{i}": node.log_tail() for i, node in lab.nodes.items()}
        result["node_states"] = _node_states()
    finally:
        result["phases"] = scenario.phases
        result["cleanup"] = lab.close()
        result["seconds"] = round(time.monotonic() - started, 2)
    return result


# --- entry points ---------------------------------------------------------------------------
def unshare_prefix() -> list[str]:
    """The command that runs what follows in namespaces of its own: as root, or as a mapped root
    in a user namespace when not root."""
    return list(UNSHARE) if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", *UNSHARE[1:]]


def contained_command(argv: list[str]) -> list[str]:
    """This script again, contained."""
    return [*unshare_prefix(), sys.executable, str(Path(__file__).resolve()), *argv]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["relay"]:
        listen, target, delay = argv[1], argv[2], float(argv[3])
        lh, lp = listen.rsplit(":", 1)
        th, tp = target.rsplit(":", 1)
        asyncio.run(relay((lh, int(lp)), (th, int(tp)), delay))
        return 0
    parser = argparse.ArgumentParser(description="p2pchain multi-host lab (network namespaces)")
    parser.add_argument("--workdir", type=Path, help="logs and data dirs (default: a temp dir)")
    args = parser.parse_args(argv)
    if os.environ.get(INSIDE_ENV) != "1":
        for tool in ("unshare", "ip", "nft"):
            if shutil.which(tool) is None:
                print(json.dumps({"ok": False, "error": f"{tool} not found: install util-linux, iproute2, nftables"}))
                return 2
        command = contained_command(argv)  # exec: whoever stops this process stops unshare,
        os.execvpe(command[0], command, {**os.environ, INSIDE_ENV: "1"})  # which kills the lab
    logging.basicConfig(level=logging.INFO, format="%(asctime)s netlab %(message)s", stream=sys.stderr)
    with _workdir(args.workdir) as workdir:
        result = run_lab(workdir)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


@contextlib.contextmanager
def _workdir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="p2pchain-netlab-") as tmp:
        yield Path(tmp)


if __name__ == "__main__":
    sys.exit(main())
