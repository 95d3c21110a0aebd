"""Shared fixtures: ``nodes`` makes NodeProcs in a fresh temp dir and always stops them."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).parent))

from harness import NodeProc

# Under CI=true hypothesis draws the same examples every run (derandomize; no example database),
# as every other randomly drawn test does there (harness.random_seed): CI must not turn red by
# chance on inputs no run before it tried. Developers' runs keep drawing new ones.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")


class NodeFactory:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[NodeProc] = []

    def __call__(self, name: str | None = None, **kwargs: Any) -> NodeProc:
        node = NodeProc(self.root, name or f"node{len(self.made)}", **kwargs)
        self.made.append(node)
        return node


@pytest.fixture
def nodes(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[NodeFactory]:
    factory = NodeFactory(tmp_path)
    yield factory
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for node in factory.made:
        node.kill()
        if failed:
            sys.stderr.write(f"\n--- {node.name} log tail ---\n{node.log_tail(40)}\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module (starting one costs about a second); tests navigate
    it to their own pages. Fails under CI=true when Chromium is missing (tests/browser.py)."""
    from browser import chromium

    with chromium() as driver:
        yield driver
