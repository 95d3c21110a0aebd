"""A sync's runs of blocks through ``Chain.extend_run`` against one ``process_block`` a block.

``SyncManager._process_run`` connects the blocks of a CHAIN that extend the tip through
``Chain.extend_run``, which pays the per-block machinery once a run, and hands the first block it
leaves to ``process_block``. Both must leave the same node behind, since a consensus split between
two paths is the worst bug a node can have. Here every CHAIN is fed to two fresh nodes: one
through today's ``_process_run``, one through the loop it replaced (``process_block`` for every
block, kept below as the oracle), with valid and invalid blocks (each rule a sync can break) at
the start, the middle and the end of a run. The outcome (the result, or the peer's punishment
with its reason and ban) must be the same, and so must the chain (tree, best chain, accounts,
blocks remembered invalid, orphans), what the listeners were told, and every row of the store.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from ledger_helpers import GENESIS, MINER, NOW_MS, PARAMS, assemble, block_on, branch, pay, wallet

from p2pchain import limits, wire
from p2pchain.chain import Chain
from p2pchain.errors import StoreError
from p2pchain.ledger.block import Block
from p2pchain.ledger.tx import Tx, make_coinbase
from p2pchain.peer import Misbehaving
from p2pchain.sync import SyncManager

RUN = 5  # SYNC_RUN_BLOCKS in these tests: a 12-block CHAIN is the runs [0:5], [5:10], [10:12]
BAD_AT = (0, 5, 7, 9, 11)  # the start of the first and second runs, the middle, the end of one, the last
ALICE = wallet(1)


class StubPeer:
    """What SyncManager reads and calls of a Peer."""

    def __init__(self) -> None:
        self.asked_chain = 1
        self.best_height = 0
        self.fruitless = 0
        self.useful = False
        self.listen_addr = ("127.0.0.1", 1)
        self.closed = asyncio.Event()
        self.hello = None

    def send(self, msg: wire.Message) -> None:
        pass

    def flush(self) -> None:
        pass


class PerBlockSync(SyncManager):
    """The oracle: ``_process_run`` as it was before ``Chain.extend_run``, process_block for
    every block (``_process_one``)."""

    def _process_run(self, peer: Any, blocks: Sequence[Block], start: int, end: int) -> tuple[int, bool, bool]:
        new = 0
        connected_any = False
        with self.chain.notifying_once():
            for i in range(start, min(end, len(blocks))):
                added, connected, stopped = self._process_one(peer, blocks, i)
                new += added
                connected_any = connected_any or connected
                if stopped:
                    return new, connected_any, True
        return new, connected_any, False


async def _no_preverify(blocks: Sequence[Block]) -> None:
    pass


class Fed:
    """A fresh node's chain and sync manager, and what it told and was told."""

    def __init__(self, path: Path, cls: type[SyncManager], known: Sequence[Block]) -> None:
        self.chain = Chain.open(path, PARAMS)
        for block in known:  # blocks the node had before the CHAIN
            self.chain.process_block(block, NOW_MS)
        self.told: list[tuple[list[bytes], list[bytes]]] = []
        self.chain.subscribe(lambda c, d: self.told.append(([b.hash for b in c], [b.hash for b in d])))
        self.validated = 0
        self.chain.on_validated = self._count
        self.commits = 0
        commit = self.chain.store._commit

        def counted() -> None:
            self.commits += 1
            commit()

        self.chain.store._commit = counted  # type: ignore[method-assign]
        self.sync = cls(self.chain, lambda: [], _no_preverify, lambda msg, peer: None, defaultdict(int))
        self.peer = StubPeer()
        self.extended = 0  # blocks connected through Chain.extend_run (the oracle never calls it)
        extend_run = self.chain.extend_run

        def counted_run(blocks: Sequence[Block], start: int, end: int, now_ms: int) -> int:
            n = extend_run(blocks, start, end, now_ms)
            self.extended += n
            return n

        self.chain.extend_run = counted_run  # type: ignore[method-assign]

    def _count(self, seconds: float, blocks: int) -> None:
        assert seconds >= 0 and blocks >= 1
        self.validated += blocks

    def feed(self, blocks: Sequence[Block]) -> Any:
        try:
            asyncio.run(self.sync.on_chain(self.peer, wire.Chain(tuple(blocks), False)))  # type: ignore[arg-type]
        except Misbehaving as e:
            return ("misbehaving", e.reason, e.ban)
        return "ok"

    def state(self) -> dict[str, Any]:
        chain = self.chain
        chain.store.wait_written()
        db = sqlite3.connect(chain.store.path)
        try:
            tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            rows = {table: sorted(db.execute(f"SELECT * FROM {table}").fetchall()) for table in tables}
        finally:
            db.close()
        return {
            "index": {h: (e.raw, e.work, e.seq, e.prev_hash, e.anchor_ms) for h, e in chain.index.items()},
            "main": list(chain.main),
            "accounts": dict(chain.accounts),
            "invalid": list(chain.invalid.items()),
            "orphans": list(chain.orphans),
            "side": dict(chain.side),
            "last": None if chain._last is None else (chain._last[0].hash, chain._last[1]),
            "told": self.told,
            "validated": self.validated,
            "commits": self.commits,
            "peer": (self.peer.best_height, self.peer.useful),
            "skipped": sorted(self.sync._skipped._items),
            "store": rows,
        }


def _chain_with_payments() -> list[Block]:
    """12 valid blocks on genesis; from the 3rd on, each also holds a payment of MINER's coins."""
    blocks = branch(GENESIS, 2)
    for n in range(10):
        blocks.append(block_on(blocks[-1], [pay(MINER, ALICE, 3, fee=1, nonce=n)]))
    return blocks


def _rebuilt_after(blocks: list[Block], at: int, bad: Block) -> list[Block]:
    """``blocks`` with ``bad`` at ``at`` and the blocks after it mined again on top of it (same bodies)."""
    out = [*blocks[:at], bad]
    for old in blocks[at + 1 :]:
        out.append(assemble(out[-1], old.txs))
    return out


BadMaker = Callable[[Block, Block], Block]  # (parent, the good block) -> a bad one in its place
BAD: dict[str, BadMaker] = {
    "bad pow": lambda parent, good: assemble(parent, good.txs, pow_ok=False),
    "unknown parent": lambda parent, good: assemble(parent, good.txs, prev_hash=bytes(32)),
    "bad height": lambda parent, good: assemble(parent, good.txs, height=good.height + 1),
    "bad merkle root": lambda parent, good: assemble(parent, good.txs, merkle_root=bytes(32)),
    "bad coinbase": lambda parent, good: assemble(
        parent, (make_coinbase(MINER.address, PARAMS.reward, good.height + 7), *good.txs[1:])
    ),
    "coinbase overpays": lambda parent, good: assemble(
        parent, (make_coinbase(MINER.address, PARAMS.reward + 10**6, good.height), *good.txs[1:])
    ),
    "timestamp too old": lambda parent, good: assemble(parent, good.txs, timestamp=GENESIS.header.timestamp),
    "timestamp too new": lambda parent, good: assemble(parent, good.txs, timestamp=NOW_MS + 10**7),
    "overspend": lambda parent, good: block_on(parent, [pay(ALICE, MINER, 10**6, nonce=0)]),
    "bad signature": lambda parent, good: block_on(parent, [_forged(good)]),
}


def _forged(good: Block) -> Tx:
    """The good block's payment (or one of MINER's) signed as another: same key, other amount."""
    real = good.txs[1] if len(good.txs) > 1 else pay(MINER, ALICE, 3, fee=1)
    other = pay(MINER, ALICE, real.amount + 1, fee=real.fee, nonce=real.nonce)
    return replace(real, signature=other.signature)


def _both(tmp_path: Path, chains: Sequence[Sequence[Block]], known: Sequence[Block] = ()) -> tuple[list[Any], Fed]:
    """Feed each CHAIN of ``chains`` in turn to a node of each kind; assert both end alike."""
    fast = Fed(tmp_path / "runs.sqlite", SyncManager, known)
    slow = Fed(tmp_path / "oracle.sqlite", PerBlockSync, known)
    outcomes = []
    try:
        for blocks in chains:
            fast.peer.asked_chain = slow.peer.asked_chain = 1
            outcome = fast.feed(blocks)
            assert outcome == slow.feed(blocks)
            outcomes.append(outcome)
        assert fast.state() == slow.state()
        return outcomes, fast
    finally:
        fast.chain.close()
        slow.chain.close()


@pytest.fixture(autouse=True)
def _short_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "SYNC_RUN_BLOCKS", RUN)
    monkeypatch.setattr(limits, "SYNC_YIELD_TURNS", 0)
    monkeypatch.setattr(time, "time", lambda: NOW_MS / 1000)  # sync's clock: the tests' now


def test_a_valid_chain_is_connected_alike(tmp_path: Path) -> None:
    blocks = _chain_with_payments()
    outcomes, fast = _both(tmp_path, [blocks])
    assert outcomes == ["ok"] and fast.chain.height == 12
    assert fast.extended == 12  # every block through the runs' path: the comparison is not the oracle with itself
    assert fast.told == [([b.hash for b in blocks[i : i + RUN]], []) for i in range(0, 12, RUN)]


@pytest.mark.parametrize("at", BAD_AT)
@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_block_anywhere_in_a_run_is_refused_alike(tmp_path: Path, kind: str, at: int) -> None:
    good = _chain_with_payments()
    parent = good[at - 1] if at else GENESIS
    blocks = _rebuilt_after(good, at, BAD[kind](parent, good[at]))
    outcomes, fast = _both(tmp_path, [blocks])
    assert outcomes[0] != "ok" or kind == "timestamp too new"  # (an honest clock skew: skipped, no strike)
    # (a block that does not link to the one before it makes on_chain refuse the whole CHAIN)
    assert fast.chain.height == (0 if kind == "unknown parent" else at)
    assert fast.extended == fast.chain.height  # the good blocks before it went through the runs' path


@pytest.mark.parametrize("kind", ["timestamp too old", "overspend"])
def test_a_block_remembered_invalid_sent_again_is_refused_alike(tmp_path: Path, kind: str) -> None:
    """The same CHAIN twice: the second time its first blocks are known and the bad one is in
    the set of blocks remembered invalid (the runs' path stops at it before any rule)."""
    good = _chain_with_payments()
    blocks = _rebuilt_after(good, 5, BAD[kind](good[4], good[5]))
    outcomes, fast = _both(tmp_path, [blocks, blocks])
    assert outcomes[0] != "ok" and outcomes[1] != "ok"
    assert fast.chain.height == 5 and blocks[5].hash in fast.chain.invalid


def test_a_store_that_fails_mid_sync_leaves_every_connected_block_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's blocks are in memory before the store queues them: if the store fails there (a
    full disk reported by the commit behind), the listeners (mempool, relay, events) are still
    told of every block the chain holds, as they are of the blocks before a failing one when
    blocks are connected one at a time."""
    fed = Fed(tmp_path / "runs.sqlite", SyncManager, ())
    try:

        def full_disk(run: object) -> None:
            raise StoreError("disk full")

        monkeypatch.setattr(fed.chain.store, "extend_main_run", full_disk)
        with pytest.raises(StoreError):
            fed.feed(_chain_with_payments())
        assert fed.chain.height >= 1
        assert [h for connected, _ in fed.told for h in connected] == list(fed.chain.main[1:])
    finally:
        monkeypatch.undo()
        fed.chain.close()


def test_known_blocks_then_new_ones_and_a_fork_are_handled_alike(tmp_path: Path) -> None:
    """Blocks the node has (duplicates) before the new ones, then a CHAIN from a fork point below
    the tip (a side branch that outgrows the best chain: a reorg, process_block's path)."""
    good = _chain_with_payments()
    fork = branch(good[3], 12, salt=7)
    outcomes, fast = _both(tmp_path, [good[:9], fork], known=good[:4])
    assert outcomes == ["ok", "ok"]
    assert fast.chain.main[-1] == fork[-1].hash


def test_runs_end_where_the_store_batch_fills_so_commits_fall_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "STORE_BATCH_MAX_TXNS", 3)
    _, fast = _both(tmp_path, [_chain_with_payments()])
    assert fast.commits >= 12 // 3
