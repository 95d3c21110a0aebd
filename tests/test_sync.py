"""SyncManager on its own (no sockets): what a sync's CHAIN answers leave in the store.

A CHAIN whose next one is already asked for keeps its store batch open for it (one commit every
STORE_BATCH_MAX_TXNS blocks, not once a CHAIN); the batch is committed when the sync ends (a last
CHAIN, or an empty answer) or its peer goes away, so the file never waits on a CHAIN that is not
coming. The peer is a stand-in with the attributes SyncManager reads.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from ledger_helpers import GENESIS, PARAMS, branch, committed_height

from p2pchain import limits, wire
from p2pchain.chain import Chain
from p2pchain.ledger.block import Block
from p2pchain.peer import Misbehaving
from p2pchain.sync import SyncManager


class StubPeer:
    """What SyncManager reads and calls of a Peer."""

    def __init__(self, best_height: int) -> None:
        self.asked_chain = 0
        self.best_height = best_height
        self.fruitless = 0
        self.useful = False
        self.listen_addr = ("127.0.0.1", 1)
        self.closed = asyncio.Event()
        self.hello = None
        self.sent: list[wire.Message] = []

    def send(self, msg: wire.Message) -> None:
        self.sent.append(msg)

    def flush(self) -> None:
        pass


async def _no_preverify(blocks: Sequence[Block]) -> None:
    pass


def _manager(chain: Chain) -> SyncManager:
    return SyncManager(chain, lambda: [], _no_preverify, lambda msg, peer: None, defaultdict(int))


@pytest.mark.parametrize("end", ["last CHAIN", "empty answer", "peer closed"])
def test_a_sync_keeps_its_batch_open_for_the_next_chain_and_commits_it_when_the_sync_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    monkeypatch.setattr(limits, "STORE_BATCH_MAX_TXNS", 6)
    path = tmp_path / "chain.sqlite"
    chain = Chain.open(path, PARAMS)
    blocks = branch(GENESIS, 10)
    sync = _manager(chain)
    peer = StubPeer(len(blocks))

    async def answer(part: Sequence[Block], more: bool) -> None:
        await sync.on_chain(peer, wire.Chain(tuple(part), more))

    async def scenario() -> None:
        sync.start(peer)
        assert peer.asked_chain == 1
        await answer(blocks[:4], True)  # the next CHAIN is asked for: kept
        assert chain.store.kept and peer.asked_chain == 1
        chain.store.wait_written()
        assert committed_height(path) == 0
        await answer(blocks[4:8], True)  # the 6th block committed the first six; two kept
        chain.store.wait_written()
        assert chain.store.kept and committed_height(path) == 6
        if end == "last CHAIN":
            await answer(blocks[8:], False)
        elif end == "empty answer":
            await answer((), False)
        else:
            sync.on_peer_closed(peer)
        assert not chain.store.kept
        chain.store.wait_written()
        assert committed_height(path) == chain.height

    try:
        asyncio.run(scenario())
        assert chain.height == (10 if end == "last CHAIN" else 8)
    finally:
        chain.close()


def test_a_sync_batch_that_ends_with_an_invalid_block_is_committed_up_to_it(tmp_path: Path) -> None:
    """A CHAIN with a bad block drops its peer (Misbehaving): the blocks before it stay, committed
    with what was kept, and nothing stays open for a CHAIN that will not come."""
    path = tmp_path / "chain.sqlite"
    chain = Chain.open(path, PARAMS)
    blocks = branch(GENESIS, 6)
    bad = replace(blocks[4], txs=blocks[3].txs)  # another body under block 5's header: bad merkle root
    sync = _manager(chain)
    peer = StubPeer(len(blocks))

    async def scenario() -> None:
        sync.start(peer)
        await sync.on_chain(peer, wire.Chain(tuple(blocks[:3]), True))
        assert chain.store.kept
        with pytest.raises(Misbehaving, match="merkle root does not match"):
            await sync.on_chain(peer, wire.Chain((blocks[3], bad), True))
        assert not chain.store.kept
        chain.store.wait_written()
        assert committed_height(path) == 4

    try:
        asyncio.run(scenario())
    finally:
        chain.close()


def test_an_empty_answer_from_another_peer_leaves_the_sync_batch_kept(tmp_path: Path) -> None:
    """A peer other than the sync peer answering with an empty CHAIN (a /nodes/resolve answer
    from a peer at our height) is no end of the sync: the sync's batch stays open for its next
    CHAIN, which commits it, rather than being committed early."""
    path = tmp_path / "chain.sqlite"
    chain = Chain.open(path, PARAMS)
    blocks = branch(GENESIS, 6)
    sync = _manager(chain)
    peer, other = StubPeer(len(blocks)), StubPeer(0)

    async def scenario() -> None:
        sync.start(peer)
        await sync.on_chain(peer, wire.Chain(tuple(blocks[:3]), True))
        assert chain.store.kept
        sync.ask(other)
        await sync.on_chain(other, wire.Chain((), False))
        assert chain.store.kept and sync.peer is peer
        chain.store.wait_written()
        assert committed_height(path) == 0
        await sync.on_chain(peer, wire.Chain(tuple(blocks[3:]), False))  # the sync's end commits all
        assert not chain.store.kept
        chain.store.wait_written()
        assert committed_height(path) == 6

    try:
        asyncio.run(scenario())
    finally:
        chain.close()
