"""swarm: the launcher (scripts/swarm.py) as a user runs it, its in-process mode, and its parts.

The launcher tests start real node processes on loopback through the script's command line,
read the JSON summary on its last line, and check that no process it started outlives it
(RUN/swarm.json lists their pids). The in-process test runs a small swarm through the same
code a user gets with --in-process.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness import wait_until

ROOT = Path(__file__).resolve().parent.parent
SWARM = ROOT / "scripts" / "swarm.py"
sys.path.insert(0, str(ROOT / "scripts"))

import swarm  # noqa: E402

from p2pchain.ledger.block import Block, Header  # noqa: E402
from p2pchain.params import NetworkParams  # noqa: E402

SMALL_BITS = 16  # in-process and Ctrl-C tests: blocks in tens of ms, so there is something to see


def run_swarm(args: list[str], timeout: float) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, str(SWARM), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{proc.stderr}"
    return proc, json.loads(lines[-1])


def started_pids(run_dir: Path) -> list[int]:
    return [int(n["pid"]) for n in json.loads((run_dir / "swarm.json").read_text())["nodes"]]


def pid_gone(pid: int) -> bool:
    """True if no process ``pid`` runs (a zombie counts as gone: it has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


# --- the launcher, as a user runs it ------------------------------------------------------------
def test_launcher_runs_agrees_and_stops_everything(tmp_path: Path) -> None:
    """`swarm.py --nodes 4 --miners 2 --duration 15 --json` exits 0, all 4 alive, agreed."""
    run_dir = tmp_path / "run"
    proc, summary = run_swarm(
        ["--nodes", "4", "--miners", "2", "--duration", "15", "--json", "--run-dir", str(run_dir)], timeout=90
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert summary["nodes"] == 4 and summary["alive"] == 4
    assert summary["agreed"] is True
    assert summary["height"] >= 1 and len(summary["tip"]) == 64
    for key in ("blocks", "forks_resolved", "propagation_p50_ms", "propagation_p99_ms", "tx_confirmed"):
        assert key in summary
    assert summary["blocks"] >= summary["height"] - summary["forks_resolved"] >= 0
    for i in range(4):
        assert (run_dir / f"node{i}" / "wallet.json").exists()
        assert (run_dir / f"node{i}.log").stat().st_size > 0
    for pid in started_pids(run_dir):
        assert pid_gone(pid), f"node process {pid} outlived the launcher"


def test_ctrl_c_stops_every_node_and_a_dead_node_fails_the_run(tmp_path: Path) -> None:
    """A node killed mid-run makes the exit status non-zero; Ctrl-C (SIGINT) ends the run with a
    summary naming the dead node, and every process the launcher started is gone."""
    run_dir = tmp_path / "run"
    args = ["--nodes", "3", "--miners", "1", "--difficulty", str(SMALL_BITS), "--tx-rate", "5", "--json"]
    proc = subprocess.Popen(
        [sys.executable, str(SWARM), *args, "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        wait_until(lambda: (run_dir / "swarm.json").exists(), 60, "the launcher to start its nodes")
        pids = started_pids(run_dir)
        os.kill(pids[2], signal.SIGKILL)
        wait_until(lambda: process_gone(pids[2]), 10, "the killed node to be dead")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, out + err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["alive"] == 2 and summary["died"] == ["node2"]
    assert "swarm summary" in out
    wait_until(lambda: all(pid_gone(pid) for pid in pids), 10, "every node process to be gone")


def test_bare_python_bootstraps_the_venv_and_reexecs(tmp_path: Path) -> None:
    """From a Python without p2pchain's dependencies, swarm.py runs itself again under .venv."""
    bootstrap = importlib.util.spec_from_file_location("bootstrap_for_test", ROOT / "scripts" / "bootstrap.py")
    assert bootstrap is not None and bootstrap.loader is not None
    module = importlib.util.module_from_spec(bootstrap)
    bootstrap.loader.exec_module(module)
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not (module.STAMP.exists() and module.STAMP.read_text() == want):
        pytest.skip(".venv is not bootstrapped from this pyproject.toml: the re-exec would reinstall it")
    bare = None
    for candidate in ("/usr/bin/python3", shutil.which("python3")):
        if not candidate or not Path(candidate).exists():
            continue
        probe = subprocess.run(
            [
                candidate,
                "-c",
                "import sys, importlib.util as u; print(sys.version_info >= (3, 11) and "
                "u.find_spec('msgpack') is None)",
            ],
            capture_output=True,
            text=True,
        )
        if probe.stdout.strip() == "True":
            bare = candidate
            break
    if bare is None:
        pytest.skip("no Python 3.11+ without msgpack on this machine")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "P2PCHAIN_BOOTSTRAPPED", "VIRTUAL_ENV")}
    result = subprocess.run([bare, str(SWARM), "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: swarm.py" in result.stdout


def test_bad_arguments_are_refused() -> None:
    for args in (["--miners", "6", "--nodes", "5"], ["--topology", "star"], ["--nodes", "4", "--topology", "random:4"]):
        result = subprocess.run([sys.executable, str(SWARM), *args], capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, args
        assert "error:" in result.stderr


# --- in-process mode --------------------------------------------------------------------------
def test_in_process_swarm_mines_and_agrees(tmp_path: Path) -> None:
    """Twelve Node objects in one event loop over loopback sockets, two mining, random:3."""
    opts = swarm.Options(
        nodes=12,
        miners=2,
        topology="random:3",
        difficulty=SMALL_BITS,
        duration=6,
        tx_rate=4,
        run_dir=tmp_path / "run",
        in_process=True,
        seed=7,
        table=False,
    )

    async def go() -> swarm.Summary:
        return await swarm.Swarm(opts, out=io.StringIO()).run(asyncio.Event())

    summary = asyncio.run(asyncio.wait_for(go(), 90))
    assert summary.ok, summary
    assert summary.alive == 12 and summary.agreed
    assert summary.height >= 1 and summary.propagation_blocks >= 1
    assert summary.propagation_p50_ms is not None


class FakeMember(swarm.Member):
    """A node that shows a fixed tip: for the end-of-run verdict without processes."""

    def __init__(self, index: int, tip: str, alive: bool = True) -> None:
        super().__init__(index, mining=False)
        self.tip, self.up = tip, alive

    def alive(self) -> bool:
        return self.up

    async def status(self) -> dict[str, Any] | None:
        return {"tip": self.tip, "height": 3, "work": "9", "peers": [], "mempool": 0} if self.up else None

    async def account(self, address: str) -> swarm.AccountView | None:
        return None

    async def submit(self, tx: Any) -> tuple[bool, str]:
        return False, "unused"

    async def blocks_from(self, start: int) -> list[Block]:
        return []


@pytest.mark.parametrize(
    ("tips", "alive", "agreed", "ok"),
    [
        (["aa", "aa", "aa"], [True, True, True], True, True),
        (["aa", "bb", "aa"], [True, True, True], False, False),  # no agreement within the wait
        (["aa", "aa", "bb"], [True, True, False], True, False),  # the dead node's tip is not asked
    ],
)
def test_end_of_run_verdict(tmp_path: Path, tips: list[str], alive: list[bool], agreed: bool, ok: bool) -> None:
    runner = swarm.Swarm(swarm.Options(nodes=3, run_dir=tmp_path, in_process=True), out=io.StringIO())
    runner.launcher.members = [FakeMember(i, t, a) for i, (t, a) in enumerate(zip(tips, alive, strict=True))]

    async def verdict() -> swarm.Summary:
        return await runner.summarize(await runner.wait_agreement(timeout=0.3))

    summary = asyncio.run(verdict())
    assert summary.agreed is agreed
    assert summary.alive == sum(alive)
    assert summary.ok is ok


# --- parts --------------------------------------------------------------------------------------
def components(n: int, dials: list[list[int]]) -> int:
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, targets in enumerate(dials):
        for j in targets:
            parent[find(i)] = find(j)
    return len({find(i) for i in range(n)})


@pytest.mark.parametrize("topology", ["line", "ring", "full", "random:1", "random:3", "random:8"])
def test_topologies_are_connected_without_self_or_double_links(topology: str) -> None:
    for n in (2, 3, 10, 50):
        if topology.startswith("random:") and int(topology.split(":")[1]) >= n:
            continue
        dials = swarm.topology_dials(n, topology, random.Random(n))
        assert components(n, dials) == 1
        edges = [frozenset((i, j)) for i, targets in enumerate(dials) for j in targets]
        assert all(len(e) == 2 for e in edges), "a node dials itself"
        assert len(edges) == len(set(edges)), "a link is dialled from both ends"
        degree = [0] * n
        for e in edges:
            for i in e:
                degree[i] += 1
        if topology == "line":
            assert len(edges) == n - 1
        elif topology == "ring" and n > 2:
            assert degree == [2] * n
        elif topology == "full":
            assert degree == [n - 1] * n
        elif topology == "random:8" and n == 50:
            assert sum(degree) / n >= 7.5


def test_topology_names() -> None:
    assert swarm.parse_topology("random:8") == ("random", 8)
    for bad in ("random", "random:0", "random:x", "ring:2", "mesh"):
        with pytest.raises(ValueError):
            swarm.parse_topology(bad)


def chain_of(n: int) -> list[Block]:
    """Stand-in blocks: only their hash, parent and height are read."""
    genesis = NetworkParams(bits=1).genesis
    blocks = [genesis]
    for i in range(n):
        parent = blocks[-1]
        header = Header(1, parent.height + 1, parent.hash, bytes(32), i, 1, 0)
        blocks.append(Block(header, parent.txs))
    return blocks[1:]


def test_propagation_spread_and_backfill() -> None:
    b1, b2, b3 = chain_of(3)
    prop = swarm.Propagation()
    prop.arrived(0, b1, 10.0)
    prop.arrived(1, b1, 10.004)
    prop.arrived(0, b2, 11.0)
    prop.arrived(0, b3, 12.0)
    assert prop.spread_ms(b1.hash, {0, 1}) == pytest.approx(4.0)
    assert prop.spread_ms(b2.hash, {0, 1}) is None  # node 1 has not shown it yet
    prop.arrived(1, b3, 12.5)  # node 1 announces b3: it has b2 too, credited at the same moment
    assert prop.spread_ms(b2.hash, {0, 1}) == pytest.approx(1500.0)
    assert prop.spread_ms(b3.hash, {0, 1}) == pytest.approx(500.0)
    prop.arrived(1, b1, 99.0)  # a repeat never moves a first arrival
    assert prop.complete_ms({0, 1}) == pytest.approx([4.0, 1500.0, 500.0])
    prop.since = 10.5
    assert prop.measured() == [b2.hash, b3.hash]


def test_percentile_nearest_rank() -> None:
    assert swarm.percentile([], 50) is None
    assert swarm.percentile([5.0], 99) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert swarm.percentile(values, 50) == 50.0
    assert swarm.percentile(values, 99) == 99.0


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited: no /proc entry, or a zombie its parent has not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
