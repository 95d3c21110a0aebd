"""Coverage-guided fuzz targets (fuzz/, issue 18): the regression corpus replays clean, and each
target runs for real under atheris for a moment.

Each target in fuzz/ raises only on a finding (an exception the code must not let out, or a
broken oracle). Here: every file of fuzz/corpus/TARGET/ (inputs that once crashed a target, kept
after their fix) and every real seed of the target replay without a crash; the target's oracle
is not blind (a planted bug is caught); and ``python fuzz/TARGET.py --runs N`` runs libFuzzer on
it for a fixed number of inputs from a fixed seed (and 100 generator seeds) and ends without a
crash (about 2 s of fuzzing a target on this machine, 4 s with start-up). A fixed count, not a
time budget: a faster machine runs the same inputs, not more of them, so a bug that only a long
run reaches cannot turn CI red by chance on a fast machine (longer runs: docs/testing.md).
A failure names the crashing file and the command that replays it (docs/testing.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
TARGETS = ("frames", "messages", "blocks", "store", "http_bodies")
# Inputs each target runs under atheris in CI, seeds included: about 2 s of fuzzing each on this
# 2-core machine under load (2026-12-01: frames 26k inputs/s, messages 18k, blocks 24k, store 2.7k,
# http_bodies 0.5k), so twice that on a core 2 x slower.
CI_RUNS = {"frames": 40_000, "messages": 30_000, "blocks": 40_000, "store": 4_000, "http_bodies": 1_000}
CI_GENERATED_SEEDS = 100  # libFuzzer runs every seed before its 2 s start: fewer than a full run's 400
sys.path.insert(0, str(FUZZ))
import fuzzharness  # noqa: E402  (fuzz/fuzzharness.py)


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"p2pchain_fuzz_{name}", FUZZ / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(name: str, result: fuzzharness.Replayed) -> str:
    lines = [f"{len(result.crashes)} crash(es) in {result.inputs} input(s)"]
    for path, trace in result.crashes:
        lines.append(f"--- {path}\n(replay: .venv/bin/python fuzz/{name}.py --replay {path})\n{trace}")
    return "\n".join(lines)


# Run in a child process: a target's build() sets process-wide state for fuzzing (a quiet
# p2pchain logger, limits.HTTP_REGISTER_WAIT_S = 0, its own event loop), which would leak into
# the tests that run after it in this process.
REPLAY_CHILD = """
import json, sys
from pathlib import Path
sys.path.insert(0, "fuzz")
import fuzzharness
from test_fuzz_targets import load, _report
name, seeds = sys.argv[1], Path(sys.argv[2])
target = load(name).build()
try:
    written = fuzzharness.write_seeds(target, seeds, count=50)
    corpus = fuzzharness.CORPUS_DIR / name
    result = fuzzharness.replay(target, [seeds, *([corpus] if corpus.is_dir() else [])])
finally:
    target.close()
print(json.dumps({"written": written, "inputs": result.inputs, "crashes": len(result.crashes),
                  "report": _report(name, result)}))
"""


@pytest.mark.parametrize("name", TARGETS)
def test_regression_corpus_and_seeds_replay_without_a_crash(name: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", REPLAY_CHILD, name, str(tmp_path / "seeds")],
                          capture_output=True, text=True, timeout=100, cwd=ROOT, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["inputs"] >= result["written"] > 0
    assert not result["crashes"], result["report"]


def test_a_planted_bug_is_caught_and_replayed(tmp_path: Path) -> None:
    """The harness is not blind: a target whose run raises on some input is reported, by the
    generator engine (saved under the crash dir) and by replay (with the traceback)."""

    def run(data: bytes) -> str:
        if data[:1] == b"\x07":
            raise KeyError("planted")
        return "ok"

    target = fuzzharness.Target("planted", run, lambda: [b"\x00"], lambda rng: bytes([rng.randrange(16)]))
    found = fuzzharness.run_generator(target, 0.2, tmp_path / "corpus", tmp_path / "crashes")
    assert found.execs > 0 and len(found.crashes) == 1
    assert found.crashes[0].read_bytes()[:1] == b"\x07" and found.crashes[0].name.startswith("planted-crash-")
    replayed = fuzzharness.replay(target, [tmp_path / "crashes"])
    assert len(replayed.crashes) == 1 and "KeyError: 'planted'" in replayed.crashes[0][1]


def _atheris_expected() -> bool:
    """atheris ships wheels for Linux on x86_64 (the test extra installs it only there)."""
    return sys.platform == "linux" and platform.machine() == "x86_64"


def _atheris(name: str, runs: int, work: Path) -> tuple[subprocess.CompletedProcess[str], list[Path], str]:
    """``fuzz/NAME.py --runs RUNS`` from seed 1 in ``work``: (the process, crash files, its log's end).
    PYTHONHASHSEED is fixed so that str and bytes hashing (set order) is the same in every run."""
    crashes = work / "crashes"
    cmd = [sys.executable, str(FUZZ / f"{name}.py"), "--runs", str(runs), "--workdir", str(work),
           "--crash-dir", str(crashes), "--seed", "1", "--generated-seeds", str(CI_GENERATED_SEEDS)]  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=ROOT, env=env)
    found = sorted(crashes.glob("*crash-*")) if crashes.is_dir() else []
    return proc, found, "\n".join(proc.stderr.splitlines()[-40:])


def _executed(proc: subprocess.CompletedProcess[str]) -> int:
    runs = [line for line in proc.stderr.splitlines() if line.startswith("stat::number_of_executed_units")]
    return int(runs[0].split(":")[-1]) if runs else 0


@pytest.mark.skipif(not _atheris_expected(), reason="atheris has no wheel for this platform")
@pytest.mark.parametrize("name", TARGETS)
def test_short_atheris_run_finds_no_crash(name: str, tmp_path: Path) -> None:
    proc, found, tail = _atheris(name, CI_RUNS[name], tmp_path)
    assert proc.returncode == 0 and not found, (
        f"exit {proc.returncode}, crash files {[str(p) for p in found]}; replay one with "
        f".venv/bin/python fuzz/{name}.py --replay FILE\n{tail}"
    )
    # libFuzzer ran the fixed count, not a time's worth (more only if the seeds and corpus outnumber it)
    assert _executed(proc) >= CI_RUNS[name], tail
    assert any((tmp_path / "corpus").iterdir()) or "NEW" in proc.stderr or "INITED" in proc.stderr


@pytest.mark.skipif(not _atheris_expected(), reason="atheris has no wheel for this platform")
def test_a_fixed_count_run_is_the_same_run_every_time(tmp_path: Path) -> None:
    """Two runs of the frames target (no threads, no clock) with the same count and seed try the
    same inputs: they keep the same corpus, however fast or loaded the machine is."""
    kept = []
    for work in (tmp_path / "a", tmp_path / "b"):
        proc, found, tail = _atheris("frames", 3_000, work)
        assert proc.returncode == 0 and not found and _executed(proc) >= 3_000, tail
        kept.append(sorted(p.name for p in (work / "corpus").iterdir()))
    assert kept[0] == kept[1] and len(kept[0]) > 0
