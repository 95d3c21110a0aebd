"""What every coverage-guided fuzz target in fuzz/ shares: the command line, atheris, replay.

A target file (fuzz/frames.py, ...) defines ``build() -> Target`` and ends with
``sys.exit(fuzzharness.main(build))``. Then, from the repository's root:

    .venv/bin/python fuzz/frames.py --seconds 60            # atheris (libFuzzer) for a minute
    .venv/bin/python fuzz/frames.py --runs 20000            # atheris for 20,000 inputs (as CI)
    .venv/bin/python fuzz/frames.py --seconds 60 --engine generator   # the same seconds, no feedback
    .venv/bin/python fuzz/frames.py --replay FILE_OR_DIR...  # plain Python: a traceback per crash
    .venv/bin/python fuzz/frames.py -- -runs=1000 -only_ascii=1   # anything after -- goes to libFuzzer

``build`` imports p2pchain inside ``atheris.instrument_imports(include=["p2pchain"])``, so only
the node's own code is instrumented for coverage feedback (not asyncio, sqlite3 or aiohttp).
The corpus grows in ``--workdir`` (default /tmp/p2pchain-fuzz/TARGET/corpus); libFuzzer reads
the seeds that the structure-aware generator of scripts/fuzz.py writes beside it and the
regression corpus in fuzz/corpus/TARGET/. A crash (an exception that ``Target.run`` lets out)
is written by libFuzzer to ``--crash-dir`` (default /tmp/p2pchain-fuzz-crashes) as
``TARGET-crash-<sha1>``; ``--replay`` runs it again without atheris and prints its traceback.

This module imports no p2pchain module at import time (atheris cannot instrument a module that
is already loaded); target files import theirs inside ``build``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FUZZ_DIR = ROOT / "fuzz"
CORPUS_DIR = FUZZ_DIR / "corpus"  # the regression corpus: CI replays every file of it
DEFAULT_WORKDIR = Path("/tmp/p2pchain-fuzz")
DEFAULT_CRASH_DIR = Path("/tmp/p2pchain-fuzz-crashes")
SEEDS_PER_TARGET = 400  # generator inputs written as seeds beside the real ones
_VARYING = re.compile(r"'[^']*'|\"[^\"]*\"|0x[0-9a-f]+|[0-9a-f]{6,}|\d+")  # quoted input, hex, numbers

if str(ROOT / "scripts") not in sys.path:  # scripts/fuzz.py: the structure-aware generator
    sys.path.insert(0, str(ROOT / "scripts"))


class Finding(AssertionError):
    """An oracle failed: the code did not raise, but did what it must never do."""


def outcome(e: BaseException) -> str:
    """An allowed error as an outcome label: its type and text with numbers and hashes blanked."""
    return f"{type(e).__name__}:{_VARYING.sub('#', str(e))[:80]}"


@dataclass
class Target:
    """One fuzz target. ``run`` raises on a finding and returns an outcome label otherwise (the
    generator engine keeps inputs whose label is new, a stand-in for coverage feedback)."""

    name: str
    run: Callable[[bytes], str]
    seeds: Callable[[], Iterable[bytes]]  # real inputs (valid frames, blocks, stores...)
    generate: Callable[[random.Random], bytes]  # one input of the structure-aware generator
    max_len: int = 4096  # libFuzzer's -max_len
    close: Callable[[], None] = lambda: None
    extra: dict[str, Any] = field(default_factory=dict)

    def one_input(self, data: bytes) -> None:
        self.run(data)


# --- corpus files ---------------------------------------------------------------------------
def input_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Every file named, and every file in every directory named (sorted, hidden ones skipped)."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        else:
            yield path


def write_input(directory: Path, data: bytes, prefix: str = "") -> Path:
    """``data`` under its SHA-1 (libFuzzer's own naming, so a file is never stored twice)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{prefix}{hashlib.sha1(data).hexdigest()}"
    if not path.exists():
        path.write_bytes(data)
    return path


def write_seeds(target: Target, directory: Path, count: int = SEEDS_PER_TARGET, seed: int = 1) -> int:
    """The target's real seeds and ``count`` inputs of the generator, into ``directory``; returns
    how many distinct files it holds then."""
    rng = random.Random(seed)
    for data in target.seeds():
        write_input(directory, data[: target.max_len])
    for _ in range(count):
        write_input(directory, target.generate(rng)[: target.max_len])
    return sum(1 for _ in input_files([directory]))


# --- replay ---------------------------------------------------------------------------------
@dataclass
class Replayed:
    inputs: int = 0
    crashes: list[tuple[Path, str]] = field(default_factory=list)  # (file, traceback)


def replay(target: Target, paths: Iterable[Path]) -> Replayed:
    """Run every input file once; an exception is a crash, reported with its traceback."""
    result = Replayed()
    for path in input_files(paths):
        result.inputs += 1
        try:
            target.run(path.read_bytes())
        except Exception:
            result.crashes.append((path, traceback.format_exc()))
    return result


# --- the generator engine: structure-aware inputs, no feedback ------------------------------
@dataclass
class GeneratorRun:
    execs: int = 0
    seconds: float = 0.0
    crashes: list[Path] = field(default_factory=list)
    corpus: int = 0  # inputs kept (new outcome)


def run_generator(target: Target, seconds: float, corpus_dir: Path, crash_dir: Path, seed: int = 1) -> GeneratorRun:
    """The structure-aware generator alone for ``seconds``: an input whose outcome label is new
    is kept in ``corpus_dir``; a crash is saved once per (exception type, innermost line) in
    ``crash_dir`` as ``TARGET-crash-<sha1>``, and the run goes on."""
    rng = random.Random(seed)
    result = GeneratorRun()
    seen: set[str] = set()
    seen_crashes: set[tuple[str, str]] = set()
    started = time.perf_counter()
    deadline = started + seconds
    for data in target.seeds():  # the seeds once, as libFuzzer reads them first
        seen.add(target.run(data))
        write_input(corpus_dir, data)
    while time.perf_counter() < deadline:
        for _ in range(64):
            data = target.generate(rng)[: target.max_len]
            result.execs += 1
            try:
                label = target.run(data)
            except Exception as e:
                tb = traceback.extract_tb(e.__traceback__)
                key = (type(e).__name__, f"{tb[-1].filename}:{tb[-1].lineno}" if tb else "?")
                if key not in seen_crashes:
                    seen_crashes.add(key)
                    result.crashes.append(write_input(crash_dir, data, f"{target.name}-crash-"))
                continue
            if label not in seen:
                seen.add(label)
                write_input(corpus_dir, data)
    result.seconds = time.perf_counter() - started
    result.corpus = len(seen)
    return result


# --- the command line -----------------------------------------------------------------------
def _instrumented_build(build: Callable[[], Target]) -> Target:
    import atheris

    with atheris.instrument_imports(include=["p2pchain"]):
        return build()


def main(build: Callable[[], Target], argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, libfuzzer = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--engine", choices=("atheris", "generator"), default="atheris")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long (default: never)")
    parser.add_argument(
        "--runs", type=int, default=None, help="atheris: stop after this many inputs, the seeds included "
        "(libFuzzer's -runs): the same inputs on any machine, however fast, where --seconds runs as many as fit"
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=None, help="corpus and seeds (default /tmp/p2pchain-fuzz/T)")
    parser.add_argument("--crash-dir", type=Path, default=DEFAULT_CRASH_DIR, help="where crashing inputs go")
    parser.add_argument("--seed", type=int, default=1, help="random seed of either engine")
    parser.add_argument("--fresh", action="store_true", help="start from the seeds: empty the corpus first")
    parser.add_argument(
        "--generated-seeds", type=int, default=SEEDS_PER_TARGET, help=f"generator inputs among the seeds "
        f"(default {SEEDS_PER_TARGET}; libFuzzer runs every seed before its clock starts)"
    )  # fmt: skip
    parser.add_argument("--replay", type=Path, nargs="+", help="run these inputs (files or dirs) once, no atheris")
    parser.add_argument("--json", action="store_true", help="generator engine: a JSON summary on the last line")
    args = parser.parse_args(own)
    if args.replay:
        target = build()
        try:
            result = replay(target, args.replay)
        finally:
            target.close()
        for path, trace in result.crashes:
            print(f"{path}: CRASH\n{trace}", file=sys.stderr)
        print(f"{target.name}: {result.inputs} input(s), {len(result.crashes)} crash(es)")
        return 1 if result.crashes else 0

    probe = build if args.engine == "generator" else None
    target = probe() if probe is not None else _instrumented_build(build)
    work = (args.workdir or DEFAULT_WORKDIR / target.name).resolve()
    corpus, seeds = work / "corpus", work / "seeds"
    if args.fresh:
        shutil.rmtree(corpus, ignore_errors=True)
    corpus.mkdir(parents=True, exist_ok=True)
    if not seeds.is_dir() or not any(seeds.iterdir()):
        write_seeds(target, seeds, args.generated_seeds)
    args.crash_dir.mkdir(parents=True, exist_ok=True)
    if args.engine == "generator":
        run = run_generator(target, args.seconds or 60.0, corpus, args.crash_dir, args.seed)
        target.close()
        summary = {
            "target": target.name,
            "execs": run.execs,
            "seconds": round(run.seconds, 3),
            "crashes": [str(p) for p in run.crashes],
            "corpus_dir": str(corpus),
        }
        print(json.dumps(summary) if args.json else summary)
        return 1 if run.crashes else 0

    import atheris

    flags = [
        f"-max_len={target.max_len}",
        f"-artifact_prefix={args.crash_dir}/{target.name}-",
        f"-seed={args.seed}",
        "-print_final_stats=1",
        "-timeout=20",  # seconds one input may take: a hang is a finding too
        "-rss_limit_mb=2048",
    ]
    if args.seconds is not None:
        flags.append(f"-max_total_time={max(1, round(args.seconds))}")
    if args.runs is not None:
        flags.append(f"-runs={args.runs}")
    dirs = [str(corpus), str(seeds)]
    regression = CORPUS_DIR / target.name
    if regression.is_dir():
        dirs.append(str(regression))
    atheris.Setup([sys.argv[0], *flags, *libfuzzer, *dirs], target.one_input)
    atheris.Fuzz()
    return 0  # not reached: libFuzzer exits the process


def quiet_logs() -> None:
    """The node logs every dropped peer and refused input: millions of lines in a run."""
    import logging

    logging.getLogger("p2pchain").setLevel(logging.CRITICAL)
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)
    os.environ.setdefault("PYTHONASYNCIODEBUG", "0")
