"""layering: imports point downward (btcd's layering), and the tree is ruff- and mypy-clean.

Each module may import only modules below it in LAYERS; consensus code (ledger/) imports no
socket, clock or disk module.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "p2pchain"

# Lower layers first. A module may import modules of its own layer or any layer before it.
LAYERS: list[set[str]] = [
    {"limits", "errors", "record", "metrics", "packing", "digests", "onfirstuse", "threadpool", "__init__"},
    {"pulse"},
    {"keys"},
    {"ledger.pow"},
    {"ledger.tx", "ledger.block", "ledger.__init__"},
    {"params"},
    {"ledger.rules"},
    {"store", "wire"},
    {"sigbatch", "verifyprocs"},
    {"chain", "mempool", "miner", "events"},
    {"mining"},
    {"peer", "addrman"},
    {"connmgr", "sync", "serve"},
    {"relay"},
    {"node", "client"},
    {"explorer", "chainjson"},
    {"http", "http_auth"},
    {"wallet_cli", "cli", "config", "logs"},
    {"__main__"},
]
FORBIDDEN_IN_LEDGER = {"socket", "asyncio", "time", "sqlite3", "os", "pathlib", "random", "datetime"}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PKG).with_suffix("").parts)


def layer_of(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        if name in layer:
            return i
    raise AssertionError(f"p2pchain.{name} is in no layer: add it to LAYERS in {__file__}")


def project_imports(path: Path) -> tuple[set[str], set[str]]:
    """(p2pchain modules, other top-level modules) imported at module level by ``path``."""
    ours, others = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            if n.startswith("p2pchain."):
                sub = n.removeprefix("p2pchain.")
                if any(sub == m for layer in LAYERS for m in layer):
                    ours.add(sub)
            elif n != "p2pchain":
                others.add(n.split(".")[0])
    return ours, others


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: module_name(p))
def test_imports_point_downward(path: Path) -> None:
    name = module_name(path)
    mine = layer_of(name)
    ours, others = project_imports(path)
    upward = sorted(m for m in ours if layer_of(m) > mine)
    assert not upward, f"p2pchain.{name} (layer {mine}) imports higher layers: {upward}"
    if name.startswith("ledger."):
        bad = sorted(others & FORBIDDEN_IN_LEDGER)
        assert not bad, f"consensus module p2pchain.{name} imports I/O or clock modules: {bad}"


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.skip("ruff is not installed in this environment (pip install -e '.[dev]')")
    result = subprocess.run([ruff, "check", "p2pchain", "tests", "scripts"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean() -> None:
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent))
    if mypy is None:
        pytest.skip("mypy is not installed in this environment (pip install -e '.[dev]')")
    result = subprocess.run([mypy], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
