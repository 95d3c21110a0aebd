"""The in-process node helpers of tests/node_helpers.py close what they open, even when a test's
own setup fails (a node left open keeps its store's write-ahead log and its threads)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from node_helpers import NODE_DIR, idle_node, with_node

from p2pchain.node import Node


def _closed_cleanly(tmp_path: Path) -> bool:
    """The store was closed: SQLite folded its write-ahead log into the file and deleted it."""
    data = tmp_path / NODE_DIR
    return (data / "chain.sqlite").exists() and not (data / "chain.sqlite-wal").exists()


def test_with_node_stops_the_node_when_its_setup_raises(tmp_path: Path) -> None:
    threads = threading.active_count()

    def setup(node: Node) -> None:
        raise RuntimeError("a stand-in failed")

    async def scenario(node: Node) -> None:
        raise AssertionError("not reached")

    with pytest.raises(RuntimeError, match="a stand-in failed"):
        asyncio.run(with_node(tmp_path, scenario, setup=setup))
    assert _closed_cleanly(tmp_path)
    assert threading.active_count() == threads


def test_idle_node_closes_the_node_when_the_test_body_raises(tmp_path: Path) -> None:
    async def body() -> None:
        async with idle_node(tmp_path) as node:
            assert not _closed_cleanly(tmp_path)  # open: its log is there
            node.chain.store.get_meta("network")
            raise RuntimeError("the test failed")

    with pytest.raises(RuntimeError, match="the test failed"):
        asyncio.run(body())
    assert _closed_cleanly(tmp_path)
