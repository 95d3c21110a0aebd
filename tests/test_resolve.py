"""resolve: /nodes/resolve right after a handshake (the tutorial's register-then-resolve) waits for
the sync the handshake started instead of asking the same peer for the same blocks again (its
request in flight, or its answer being checked), and answers once the node holds the peer's chain.

In-process: two Nodes on loopback in this event loop, blocks built with tests/node_helpers.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from node_helpers import TEST_PARAMS, branch

from p2pchain.ledger.block import Block
from p2pchain.node import Node, NodeConfig

BLOCKS = 120


def source_and_fresh(tmp_path: Path) -> tuple[list[Block], Node, Node]:
    """A BLOCKS-block branch, a node holding it and a fresh node (neither started)."""
    blocks = branch(TEST_PARAMS.genesis.header, BLOCKS)
    source = Node(NodeConfig(data_dir=tmp_path / "source", port=0, params=TEST_PARAMS, discover=False))
    for block in blocks:
        source.chain.process_block(block, block.header.timestamp)
    fresh = Node(NodeConfig(data_dir=tmp_path / "fresh", port=0, params=TEST_PARAMS, discover=False))
    return blocks, source, fresh


def get_chains_sent(node: Node) -> int:
    sent: int = node.status()["traffic"]["GET_CHAIN"]["messages_sent"]
    return sent


def test_resolve_after_a_handshake_reuses_the_sync_request_in_flight(tmp_path: Path) -> None:
    async def scenario() -> None:
        blocks, source, fresh = source_and_fresh(tmp_path)
        await source.start()
        await fresh.start()
        try:
            addr = f"127.0.0.1:{source.port}"
            fresh.connmgr.connect(addr)
            async with asyncio.timeout(30):  # as /nodes/register: until the handshake is done
                await fresh.changed.wait_for(lambda: any(p.dialed == addr for p in fresh.connmgr.ready), None)
            assert await fresh.resolve(timeout=30) is True
            assert fresh.chain.tip.hash == blocks[-1].hash
            sent = get_chains_sent(fresh)
            assert sent == 1, f"{sent} GET_CHAIN for one {BLOCKS}-block chain: the sync's request was repeated"
        finally:
            await fresh.stop()
            await source.stop()

    asyncio.run(scenario())


def test_resolve_while_the_sync_checks_its_answer_does_not_ask_again(tmp_path: Path) -> None:
    """The sync's CHAIN has arrived and its first run of blocks is connected (no request is in
    flight any more) when resolve asks: the sync peer is not asked again, its answer serves."""

    async def scenario() -> None:
        blocks, source, fresh = source_and_fresh(tmp_path)
        await source.start()
        resolving: list[asyncio.Task[bool]] = []

        def first_run(connected: list[Block], disconnected: list[Block]) -> None:
            if not resolving:  # the CHAIN is being checked: resolve from the next turn of the loop
                assert 0 < fresh.chain.height < BLOCKS
                resolving.append(asyncio.get_running_loop().create_task(fresh.resolve(timeout=30)))

        fresh.chain.subscribe(first_run)
        await fresh.start()
        try:
            fresh.connmgr.connect(f"127.0.0.1:{source.port}")
            async with asyncio.timeout(30):
                await fresh.changed.wait_for(lambda: bool(resolving), None)
                assert await resolving[0] is True
            assert fresh.chain.tip.hash == blocks[-1].hash
            sent = get_chains_sent(fresh)
            assert sent == 1, f"{sent} GET_CHAIN: resolve asked the sync peer again while its answer was checked"
        finally:
            await fresh.stop()
            await source.stop()

    asyncio.run(scenario())
