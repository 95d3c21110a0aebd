"""p2p_mempool_push: the mempool push on connect is not a free amplifier (issue 12, finding 10).

A node that connects with a listening port gets up to MEMPOOL_PUSH_MAX_TXS pooled transactions
(4-8 ms of CPU and ~25 KB out each time): a client that reconnected over and over with a claimed
port got it every time. Now an address gets it once per MEMPOOL_PUSH_INTERVAL_S and one host at
most MEMPOOL_PUSHES_PER_HOST times.

In-process: the node's mempool selection is counted (each push selects once).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from node_helpers import with_node
from p2p_peer import RawPeer

from p2pchain import limits
from p2pchain.node import Node


def test_reconnects_get_the_mempool_push_a_bounded_number_of_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "MEMPOOL_PUSHES_PER_HOST", 3)  # fewer reconnects to show the bound

    pushes: list[int] = []

    def count_pushes(node: Node) -> None:
        real = node.mempool.select

        def counting(*args: object, **kwargs: object) -> object:
            pushes.append(1)
            return real(*args, **kwargs)  # type: ignore[arg-type]

        node.mempool.select = counting  # type: ignore[method-assign]

    async def scenario(node: Node) -> list[int]:
        counts = []
        for port in [1, 1, 1, *range(2, limits.MEMPOOL_PUSHES_PER_HOST + 4)]:
            peer = await RawPeer.connect(node.port, "127.0.9.3")
            try:
                await peer.handshake(port=port)
                await peer.sync_with_ping()
            finally:
                await peer.close()
            counts.append(len(pushes))
        return counts

    counts = asyncio.run(with_node(tmp_path, scenario, deadline_s=None, setup=count_pushes))
    assert counts[:3] == [1, 1, 1], "the same address got the push again on a reconnect"
    assert counts[-1] == limits.MEMPOOL_PUSHES_PER_HOST, "one host got the push for every port it claimed"
