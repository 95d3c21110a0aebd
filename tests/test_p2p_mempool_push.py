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
from node_helpers import TEST_PARAMS
from p2p_peer import RawPeer

from p2pchain import limits
from p2pchain.node import Node, NodeConfig


def test_reconnects_get_the_mempool_push_a_bounded_number_of_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "MEMPOOL_PUSHES_PER_HOST", 3)  # fewer reconnects to show the bound

    async def scenario() -> list[int]:
        config = NodeConfig(data_dir=tmp_path / "n", port=0, params=TEST_PARAMS, discover=False, ban_loopback=True)
        node = Node(config)
        pushes: list[int] = []
        real = node.mempool.select

        def counting(*args: object, **kwargs: object) -> object:
            pushes.append(1)
            return real(*args, **kwargs)  # type: ignore[arg-type]

        node.mempool.select = counting  # type: ignore[method-assign]
        await node.start()
        counts = []
        try:
            for port in [1, 1, 1, *range(2, limits.MEMPOOL_PUSHES_PER_HOST + 4)]:
                peer = await RawPeer.connect(node.port, "127.0.9.3")
                try:
                    await peer.handshake(port=port)
                    await peer.sync_with_ping()
                finally:
                    await peer.close()
                counts.append(len(pushes))
        finally:
            await node.stop()
        return counts

    counts = asyncio.run(scenario())
    assert counts[:3] == [1, 1, 1], "the same address got the push again on a reconnect"
    assert counts[-1] == limits.MEMPOOL_PUSHES_PER_HOST, "one host got the push for every port it claimed"
