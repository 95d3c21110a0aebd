"""p2p_sync_stall: one connection that claims fake work cannot stop a node's catch-up (issue 12,
finding 1).

In-process: a victim Node 30 blocks behind, an honest Node at the tip, and an attacker (a raw
test peer) whose HELLO claims far more work than anyone has. The attacker connects first, so it
holds the sync slot when the honest node arrives, then:

- answers every GET_CHAIN with an empty CHAIN, or with a block the victim already has and
  "more": a round that brings nothing means the claim is met or false, and the victim syncs
  from the honest node instead;
- never answers: a block the victim cannot connect, relayed by the honest node, takes the sync
  over once the silent sync has connected nothing for SYNC_TAKEOVER_S (well before the
  SYNC_STALL_S timeout would drop the attacker).

Before the fix the victim asked the attacker again and again (or waited on it) and stayed behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from harness import until
from ledger_helpers import committed_height
from node_helpers import TEST_PARAMS, branch
from p2p_peer import RawPeer

from p2pchain import limits, wire
from p2pchain.chain import Chain
from p2pchain.ledger.block import Block
from p2pchain.node import Node, NodeConfig, now_ms
from p2pchain.store import DB_FILE

DEADLINE_S = 15.0  # well under SYNC_STALL_S (30 s): a sync that waits for the stall timeout fails
BEHIND = 30
CHAIN = branch(TEST_PARAMS.genesis.header, 10 + BEHIND + 20)  # 20 spare blocks for the honest node to mine


def make_node(tmp_path: Path, name: str, blocks: list[Block]) -> Node:
    data_dir = tmp_path / name
    data_dir.mkdir()
    chain = Chain.open(data_dir / DB_FILE, TEST_PARAMS)
    try:
        for block in blocks:
            chain.process_block(block, block.header.timestamp)
    finally:
        chain.close()
    return Node(NodeConfig(data_dir=data_dir, port=0, params=TEST_PARAMS, discover=False))


Answer = Callable[[Node], "wire.Chain | None"]


async def attack(tmp_path: Path, answer: Answer, mine_on_honest: bool = False) -> tuple[Node, RawPeer]:
    """Run the scenario; returns the victim (stopped) once it reached the honest tip."""
    victim = make_node(tmp_path, "victim", list(CHAIN[:10]))
    honest = make_node(tmp_path, "honest", list(CHAIN[: 10 + BEHIND]))
    await victim.start()
    await honest.start()
    attacker = await RawPeer.connect(victim.port, "127.0.0.9")
    honest_in = asyncio.Event()

    async def serve() -> None:
        while True:
            await attacker.expect(wire.GetChain, 3600)
            await honest_in.wait()  # hold the slot until the honest node is connected
            reply = answer(victim)
            if reply is not None:
                attacker.send(reply)

    server = asyncio.create_task(serve())
    try:
        await attacker.handshake(port=1, height=10**6, work=2**200)
        await until(lambda: victim.sync_peer is not None, "the victim to ask the attacker for its chain")
        honest.connmgr.connect(f"127.0.0.1:{victim.port}")
        await until(lambda: len(victim.connmgr.ready) == 2, "the honest node to connect")
        honest_in.set()
        target = CHAIN[10 + BEHIND - 1]
        if mine_on_honest:  # the honest node finds blocks; each reaches the victim as an orphan
            for block in CHAIN[10 + BEHIND :]:
                honest.chain.process_block(block, now_ms())
                honest.broadcast(wire.NewBlock(block))
                target = block
                with contextlib.suppress(AssertionError):
                    await until(lambda h=block.height: victim.chain.height >= h, "", timeout=0.5)
                    break
        await until(
            lambda: victim.chain.height >= target.height, f"the victim to sync to height {target.height}", DEADLINE_S
        )
        assert victim.chain.is_main(target.hash)
        return victim, attacker
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
        await attacker.close()
        await honest.stop()
        await victim.stop()


def empty_chain(victim: Node) -> wire.Chain:
    return wire.Chain((), False)


def known_block_and_more(victim: Node) -> wire.Chain:
    return wire.Chain((CHAIN[3],), True)


@pytest.mark.parametrize("answer", [empty_chain, known_block_and_more])
def test_fake_work_in_hello_does_not_stall_sync(tmp_path: Path, answer: Answer) -> None:
    victim, _ = asyncio.run(attack(tmp_path, answer))
    assert victim.chain.height == 10 + BEHIND


def test_an_orphan_from_another_peer_takes_over_a_silent_sync(tmp_path: Path) -> None:
    victim, _ = asyncio.run(attack(tmp_path, lambda victim: None, mine_on_honest=True))
    assert victim.chain.height > 10 + BEHIND
    assert limits.SYNC_TAKEOVER_S < DEADLINE_S < limits.SYNC_STALL_S


MidSync = Callable[[Node, RawPeer, RawPeer], Awaitable[None]]


async def mid_sync(tmp_path: Path, then: MidSync) -> None:
    """A victim at height 10 syncs from a peer claiming far more work, takes its first CHAIN (to
    height 14) and asks for the next (its store batch kept open for it); ``then(victim, syncer,
    relayer)`` runs, ``relayer`` a second handshaken peer."""
    victim = make_node(tmp_path, "victim", list(CHAIN[:10]))
    await victim.start()
    syncer = await RawPeer.connect(victim.port, "127.0.0.9")
    relayer = await RawPeer.connect(victim.port, "127.0.0.10")
    try:
        await syncer.handshake(port=1, height=10**6, work=2**200)
        await syncer.expect(wire.GetChain)
        syncer.send(wire.Chain(tuple(CHAIN[10:14]), True))
        await syncer.expect(wire.GetChain)  # the next CHAIN is asked for: the batch is kept open
        await until(lambda: victim.chain.height == 14, "the victim to take the sync peer's CHAIN")
        await relayer.handshake()
        await then(victim, syncer, relayer)
    finally:
        await relayer.close()
        await syncer.close()
        await victim.stop()


def test_a_block_relayed_while_the_sync_peer_is_silent_is_committed_within_store_hold_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync keeps its store batch open for its next CHAIN; a block relayed meanwhile (here one
    on the tip the sync reached) must not wait for that CHAIN: if the sync peer goes silent, the
    block (which the node has relayed on) is in the file within STORE_HOLD_S, as any lone block
    is, not when the stalled sync peer is dropped (SYNC_STALL_S, out of reach here)."""
    monkeypatch.setattr(limits, "SYNC_STALL_S", 3600.0)
    path = tmp_path / "victim" / DB_FILE

    async def then(victim: Node, syncer: RawPeer, relayer: RawPeer) -> None:  # the syncer says nothing more
        relayer.send(wire.NewBlock(CHAIN[14]))
        await relayer.sync_with_ping()
        assert victim.chain.height == 15
        await until(lambda: committed_height(path) == 15, "the relayed block to be in the file", DEADLINE_S)

    asyncio.run(mid_sync(tmp_path, then))


def test_an_orphan_relayed_during_a_sync_leaves_the_sync_batch_kept_for_its_next_chain(tmp_path: Path) -> None:
    """Only a block the node stores takes a sync's kept batch over (the test above): an orphan,
    which waits in memory, sent twice, leaves the batch kept, so the sync's blocks so far are
    committed with its next CHAIN, not also STORE_HOLD_S after the orphan (an extra commit)."""
    path = tmp_path / "victim" / DB_FILE
    kept: list[bool] = []

    async def then(victim: Node, syncer: RawPeer, relayer: RawPeer) -> None:
        assert victim.chain.store.kept
        for _ in range(2):  # new, then a duplicate
            relayer.send(wire.NewBlock(CHAIN[15]))  # its parent CHAIN[14] is unknown: an orphan
        await relayer.sync_with_ping()
        assert CHAIN[15].hash in victim.chain.orphans
        kept.append(victim.chain.store.kept)
        syncer.send(wire.Chain((CHAIN[14],), False))  # the sync's end: its batch commits
        await until(lambda: victim.chain.height == 16, "the sync's last block and the orphan to connect")
        await until(lambda: committed_height(path) == 16, "the blocks to be in the file", DEADLINE_S)

    asyncio.run(mid_sync(tmp_path, then))
    assert kept == [True], "an orphan took the sync's kept store batch over (committed one STORE_HOLD_S later)"
