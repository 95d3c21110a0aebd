"""fuzz: the frame decoder, the message decoder and a node's message handler.

    .venv/bin/python scripts/bench.py fuzz [--inputs N] --json           # scripts/fuzz.py's engine
    .venv/bin/python scripts/bench.py fuzz --engine atheris --seconds 60 --json [--targets store,...]

``--engine atheris`` runs each target of fuzz/ twice for the same ``--seconds``, one after the
other: under atheris (libFuzzer, coverage-guided, from the generator's seeds) and under the
structure-aware generator alone (``--engine generator`` of the target: random mutants, an input
kept when its outcome is new). Each run starts from the same seeds with an empty corpus. Then the
corpus each run produced (the seeds plus what it kept) is replayed in a fresh process under
coverage.py, and the lines of p2pchain/ executed are counted; ``TARGET_baseline_lines`` is the
same count for the seeds alone (building the target and running its seeds), so the lines a run
found beyond its start are the difference. libFuzzer stops at a crash: the atheris run then goes
on from its corpus for the rest of its time, so ``crashes`` counts distinct crashing inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib.common import Figures, Subcommand

ROOT = Path(__file__).resolve().parent.parent.parent
TARGETS = ("frames", "messages", "blocks", "store", "http_bodies")  # fuzz/NAME.py
_EXECS = re.compile(r"^stat::number_of_executed_units:\s*(\d+)", re.M)
_RATE = re.compile(r"^stat::average_exec_per_sec:\s*(\d+)", re.M)

FUZZ_INPUTS = 1_000_000  # inputs per run: issue 8 asks for at least a million
FUZZ_WORKERS = 2  # processes, each fuzzing its own in-process node (the machine has 2 cores)


def bench_fuzz(args: argparse.Namespace) -> Figures:
    """scripts/fuzz.py's engine: mutated and generated inputs through FrameDecoder,
    decode_message and Node.handle; a crasher's input and traceback go to --crash-dir.
    With --engine atheris: each fuzz/ target under atheris and under the generator alone."""
    if args.engine == "atheris":
        return compare_engines(args)
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


def _target_cmd(name: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "fuzz" / f"{name}.py"), *args]


def run_atheris(name: str, seconds: float, work: Path, crash_dir: Path) -> tuple[int, float]:
    """(inputs run, seconds fuzzing) of atheris on ``name`` for ``seconds`` of fuzzing, restarted
    from its corpus after each crash until the time is spent. The seconds are libFuzzer's own
    (inputs / its average rate), so a process's start-up is not counted, as for the generator."""
    execs, fuzzed = 0, 0.0
    while (left := seconds - fuzzed) >= 1:
        cmd = _target_cmd(name, "--seconds", str(round(left)), "--workdir", str(work), "--crash-dir", str(crash_dir))
        started = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=seconds + 300)
        ran = sum(int(n) for n in _EXECS.findall(proc.stderr))
        rate = max((int(r) for r in _RATE.findall(proc.stderr)), default=0)
        execs += ran
        fuzzed += ran / rate if rate else time.monotonic() - started
        if proc.returncode == 0:
            break
        if not list(crash_dir.glob(f"{name}-crash-*")):  # failed without a crash: a broken target
            raise RuntimeError(f"fuzz/{name}.py failed:\n{proc.stderr[-3000:]}")
    return execs, fuzzed


def run_generator(name: str, seconds: float, work: Path, crash_dir: Path) -> tuple[int, float]:
    cmd = _target_cmd(name, "--engine", "generator", "--seconds", str(seconds), "--workdir", str(work))
    cmd += ["--crash-dir", str(crash_dir), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=seconds + 300)
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"fuzz/{name}.py --engine generator failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(lines[-1])
    return int(summary["execs"]), float(summary["seconds"])


def coverage_lines(name: str, inputs: list[Path], data_file: Path) -> int:
    """Lines of p2pchain/ executed when ``inputs`` (files or dirs) are replayed in a fresh process."""
    env = {**os.environ, "COVERAGE_FILE": str(data_file)}
    run = [sys.executable, "-m", "coverage", "run", f"--source={ROOT / 'p2pchain'}"]
    replayed = subprocess.run(
        [*run, str(ROOT / "fuzz" / f"{name}.py"), "--replay", *map(str, inputs)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800,
    )  # fmt: skip
    if "input(s)" not in replayed.stdout:
        raise RuntimeError(f"coverage replay of {name} failed:\n{replayed.stderr[-3000:]}")
    out = data_file.with_suffix(".json")
    subprocess.run([sys.executable, "-m", "coverage", "json", "-q", "-o", str(out)], cwd=ROOT, env=env, check=True)
    return int(json.loads(out.read_text())["totals"]["covered_lines"])


def compare_engines(args: argparse.Namespace) -> Figures:
    names = [t for t in args.targets.split(",") if t] if args.targets else list(TARGETS)
    base = Path(tempfile.mkdtemp(prefix="p2pchain-fuzz-bench-"))
    figures: Figures = {"fuzz_seconds_per_run": args.seconds}
    try:
        for name in names:
            empty = base / "empty"
            empty.mkdir(exist_ok=True)
            seeds = base / "seeds" / name
            for engine, runner in (("atheris", run_atheris), ("generator", run_generator)):
                work, crashes = base / engine / name, base / engine / "crashes"
                crashes.mkdir(parents=True, exist_ok=True)
                execs, took = runner(name, args.seconds, work, crashes)
                found = sorted(crashes.glob(f"{name}-crash-*"))
                kept = args.crash_dir / engine
                kept.mkdir(parents=True, exist_ok=True)
                for path in found:
                    shutil.copy(path, kept / path.name)
                if not seeds.exists():
                    shutil.copytree(work / "seeds", seeds)
                lines = coverage_lines(name, [work / "seeds", work / "corpus"], base / f"{engine}-{name}.cov")
                figures[f"{name}_{engine}_execs_per_s"] = execs / took
                figures[f"{name}_{engine}_coverage_lines"] = lines
                figures[f"{name}_{engine}_crashes"] = len(found)
                figures[f"{name}_{engine}_corpus"] = sum(1 for _ in (work / "corpus").iterdir())
            figures[f"{name}_baseline_lines"] = coverage_lines(name, [seeds], base / f"seeds-{name}.cov")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return figures


def fuzz_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inputs", type=int, default=FUZZ_INPUTS, help=f"inputs in all (default {FUZZ_INPUTS:,})")
    p.add_argument("--workers", type=int, default=FUZZ_WORKERS, help=f"processes (default {FUZZ_WORKERS})")
    p.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "big"), help="random seed")
    p.add_argument("--crash-dir", type=Path, default=Path(tempfile.gettempdir()) / "p2pchain-fuzz-crashes")
    p.add_argument(
        "--engine",
        choices=("scripts", "atheris"),
        default="scripts",
        help="scripts: scripts/fuzz.py's engine (default); atheris: each fuzz/ target under atheris "
        "and under the generator alone, --seconds each (crashers kept in --crash-dir/ENGINE/)",
    )
    p.add_argument("--targets", help=f"with --engine atheris: a comma-separated subset of {','.join(TARGETS)}")


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
    "fuzz_seconds_per_run": "--engine atheris: seconds each engine ran on each target",
}
for _name in TARGETS:
    for _engine in ("atheris", "generator"):
        FUZZ_NOTES[f"{_name}_{_engine}_execs_per_s"] = f"fuzz/{_name}.py under {_engine}: inputs/s, one process"
        FUZZ_NOTES[f"{_name}_{_engine}_coverage_lines"] = "lines of p2pchain/ its seeds + corpus reach (coverage.py)"
        FUZZ_NOTES[f"{_name}_{_engine}_crashes"] = "distinct crashing inputs found"
        FUZZ_NOTES[f"{_name}_{_engine}_corpus"] = "inputs it kept (new coverage / new outcome)"
    FUZZ_NOTES[f"{_name}_baseline_lines"] = "lines the seeds alone reach (the start of both runs)"


COMMAND = Subcommand(bench_fuzz, "fuzzing: frame and message decoders, a node's handler", FUZZ_NOTES, fuzz_arguments)
