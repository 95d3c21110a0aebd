"""retarget: how fast ASERT follows a x10 hash-rate step and how close the mean block interval
stays to the block time, simulated (scripts/retarget_sim.py, the consensus code's own targets)
and in a real swarm of node processes (scripts/swarm.py --block-time 1)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import retarget_sim  # scripts/retarget_sim.py

from benchlib.common import Figures, Subcommand
from p2pchain.params import NetworkParams

SIM_PARAMS = NetworkParams(bits=20, block_time_ms=2000)  # 2 s blocks, the default half-life (48 blocks)
SIM_NOISY_BLOCKS = 20_000  # blocks of the long noisy run
SIM_NOISY_SKIP = 1_000  # its first blocks, left out of the ratio (the start's own settling)
SWARM_NODES = 5
SWARM_MINERS = 2
SWARM_BLOCK_TIME_S = 1.0
SCRIPTS = Path(__file__).resolve().parent.parent


def swarm_run(seconds: float) -> dict[str, object]:
    """One `swarm.py --nodes 5 --miners 2 --block-time 1 --duration S --json` run: its summary."""
    with tempfile.TemporaryDirectory(prefix="p2pchain-bench-retarget-") as tmp:
        cmd = [
            sys.executable,
            str(SCRIPTS / "swarm.py"),
            "--nodes",
            str(SWARM_NODES),
            "--miners",
            str(SWARM_MINERS),
            "--block-time",
            f"{SWARM_BLOCK_TIME_S:g}",
            "--duration",
            f"{seconds:g}",
            "--json",
            "--run-dir",
            str(Path(tmp) / "run"),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, check=False)
        lines = proc.stdout.strip().splitlines()
        if not lines:
            raise RuntimeError(f"swarm.py printed nothing (exit {proc.returncode}): {proc.stderr[-2000:]}")
        summary: dict[str, object] = json.loads(lines[-1])
        return summary


def bench_retarget(args: argparse.Namespace) -> Figures:
    up, up_time = retarget_sim.settle_after_step(SIM_PARAMS, 10.0)
    down, down_time = retarget_sim.settle_after_step(SIM_PARAMS, 0.1)
    noisy = retarget_sim.noisy_run(SIM_PARAMS, SIM_NOISY_BLOCKS, seed=args.seed)
    figures: Figures = {
        "retarget_settle_blocks_up10": up,
        "retarget_settle_blocks_down10": down,
        "retarget_settle_block_times_up10": round(up_time, 1),
        "retarget_settle_block_times_down10": round(down_time, 1),
        "retarget_interval_ratio": retarget_sim.interval_ratio(noisy, SIM_PARAMS.block_time_ms, skip=SIM_NOISY_SKIP),
    }
    if args.swarm_seconds > 0:
        summary = swarm_run(args.swarm_seconds)
        figures["swarm_interval_ratio"] = summary.get("interval_ratio")
        figures["swarm_interval_ratio_late"] = summary.get("interval_ratio_late")
        figures["swarm_start_difficulty"] = summary.get("difficulty")
        figures["swarm_blocks"] = summary.get("blocks")
        figures["swarm_forks_resolved"] = summary.get("forks_resolved")
    return figures


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--swarm-seconds", type=float, default=120.0, help="swarm run length (default 120; 0 skips it)")
    p.add_argument("--seed", type=int, default=1, help="seed of the noisy simulated run (default 1)")


NOTES = {
    "retarget_settle_blocks_up10": "blocks after a x10 hash-rate rise until the 10-block mean interval "
    "stays within +-10 % (simulated, expected solve times)",
    "retarget_settle_blocks_down10": "the same after a x10 fall",
    "retarget_settle_block_times_up10": "that settling in wall time, in block times",
    "retarget_settle_block_times_down10": "the same after the fall",
    "retarget_interval_ratio": f"mean interval / block time over {SIM_NOISY_BLOCKS:,} simulated blocks, "
    "random solve times, hash rate wandering x1.4 either way (ideal 1.0)",
    "swarm_interval_ratio": f"mean interval / block time of a {SWARM_NODES}-process swarm "
    f"({SWARM_MINERS} mining), --block-time 1, whole run (ideal 1.0)",
    "swarm_interval_ratio_late": "the same over the second half of the run's blocks",
    "swarm_start_difficulty": "the start difficulty swarm.py estimated from this machine's hash rate (bits)",
    "swarm_blocks": "blocks announced during the swarm run",
    "swarm_forks_resolved": "of those, blocks that lost a race",
}

COMMAND = Subcommand(
    bench_retarget,
    "ASERT retargeting: settling after x10 steps, interval ratio (simulated and swarm)",
    NOTES,
    add_arguments,
)
