"""light: what one node process costs: start-up time, memory idle and after one GET /mine."""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

import p2pchain
from benchlib.common import Figures, Subcommand
from benchlib.nodes import NET_TIMEOUT_S, free_ports
from p2pchain.client import Client, NodeUnavailable

START_ROUNDS = 5  # restarts timed from spawn to a finished handshake; the median is reported
IDLE_S = 1.0  # an idle node is left alone this long before its memory is read
MINE_BITS = 8  # the difficulty of rss_mb_after_one_mine's block (~256 hashes)
CONNECT_RETRY_S = 0.001  # the bench's own poll while the node process starts (not the node's)


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def descendants(pid: int) -> list[int]:
    """Every live process under ``pid`` (Linux /proc: children of children too)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
        parents[int(stat.parent.name)] = int(fields[1])
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found += children
        todo += children
    return found


def spawn(data_dir: Path, port: int, *args: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "p2pchain", "--port", str(port), "--data-dir", str(data_dir)]
    cmd += ["--difficulty", str(MINE_BITS), "--log-level", "WARNING", "--no-discover", *args]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def until_ready(proc: subprocess.Popen[bytes], port: int) -> Client:
    """A finished handshake with the node: it accepts peers."""
    deadline = time.monotonic() + NET_TIMEOUT_S
    while True:
        try:
            return await Client.connect("127.0.0.1", port)
        except NodeUnavailable:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node on port {port} did not start (exit status {proc.poll()})") from None
            await asyncio.sleep(CONNECT_RETRY_S)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_ms(pid: int) -> float:
    """CPU time the process's threads have used so far, in ms (Linux /proc/PID/task/*/schedstat:
    nanoseconds on the CPU, where /proc/PID/stat counts 10 ms clock ticks)."""
    total_ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total_ns += int((task / "schedstat").read_text().split()[0])
    return total_ns / 1e6


async def start_figures(root: Path) -> Figures:
    """A node on a fresh data dir (wallet and store created) timed from spawn to a finished
    handshake; then START_ROUNDS restarts on that data dir, the typical start; the last one is
    left idle, then its memory is read. The CPU time each start took is read at the handshake
    (less sensitive than the wall clock to other work on a shared machine)."""
    data_dir = root / "start"
    wall: list[float] = []
    cpu: list[float] = []
    idle = 0.0
    for r, port in enumerate(free_ports(1 + START_ROUNDS)):
        start = time.perf_counter()
        proc = spawn(data_dir, port)
        try:
            client = await until_ready(proc, port)
            wall.append((time.perf_counter() - start) * 1000)
            cpu.append(cpu_ms(proc.pid))
            await client.close()
            if r == START_ROUNDS:
                await asyncio.sleep(IDLE_S)  # ok: idle on purpose
                idle = vm_rss_mb(proc.pid)
        finally:
            stop(proc)
    return {
        "start_to_ready_ms": statistics.median(wall[1:]),
        "start_cpu_ms": statistics.median(cpu[1:]),
        "start_to_ready_fresh_ms": wall[0],
        "start_cpu_fresh_ms": cpu[0],
        "rss_mb_idle": idle,
    }


async def mine_figures(root: Path) -> Figures:
    """A node with --http-port answers one GET /mine at MINE_BITS bits; then the resident memory
    of it and of every process it started."""
    port, http_port = free_ports(2)
    proc = spawn(root / "mine", port, "--http-port", str(http_port))
    try:
        client = await until_ready(proc, port)
        await client.close()
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + NET_TIMEOUT_S
            while True:  # the HTTP shim opens after the P2P port
                try:
                    async with http.get(f"http://127.0.0.1:{http_port}/mine") as resp:
                        resp.raise_for_status()
                        await resp.read()
                    break
                except aiohttp.ClientConnectionError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the node's HTTP port did not open") from None
                    await asyncio.sleep(CONNECT_RETRY_S)
        pids = [proc.pid, *descendants(proc.pid)]
        return {
            "rss_mb_after_one_mine": sum(vm_rss_mb(pid) for pid in pids),
            "procs_after_one_mine": len(pids),
        }
    finally:
        stop(proc)


def compile_package() -> None:
    """Byte-compile p2pchain's modules if their cached bytecode is missing or stale, as `pip install`
    does for an installed package: an editable checkout run with PYTHONDONTWRITEBYTECODE=1 (this
    machine's environment) otherwise compiles all of p2pchain again at every start (about 90 ms
    of CPU and 1.5 MB of memory), which is not what a node costs."""
    compileall.compile_dir(Path(p2pchain.__file__).parent, quiet=1)


def bench_light(args: argparse.Namespace) -> Figures:
    compile_package()
    with tempfile.TemporaryDirectory(prefix="p2pchain-bench-light-") as tmp:
        figures = asyncio.run(start_figures(Path(tmp)))
        figures.update(asyncio.run(mine_figures(Path(tmp))))
    return figures


LIGHT_NOTES = {
    "start_to_ready_ms": f"ms from spawning `python -m p2pchain` (no --http-port) on its data dir to a finished "
    f"handshake, median of {START_ROUNDS} restarts (bytecode compiled first, as an install has it); target <= 150",
    "start_cpu_ms": "ms of CPU (user + system, all its threads: /proc schedstat) the node used in that time, median",
    "start_to_ready_fresh_ms": "ms, the same for the first start on a new data dir (wallet and store created)",
    "start_cpu_fresh_ms": "ms of CPU of that first start",
    "rss_mb_idle": f"MiB resident, a restarted node after {IDLE_S:g} s idle; target <= 35",
    "rss_mb_after_one_mine": f"MiB resident, a node with --http-port and every process it started, after one "
    f"GET /mine at {MINE_BITS} bits; target <= 60",
    "procs_after_one_mine": "processes counted in that figure",
}

COMMAND = Subcommand(bench_light, "one node process: start-up time, memory idle and after one GET /mine", LIGHT_NOTES)
