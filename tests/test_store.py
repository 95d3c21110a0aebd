"""The SQLite store under the chain: a reopened store gives back the same chain, a store of another
network or a damaged file is refused with a StoreError that names the file (never reset), and a
writer killed with SIGKILL at random moments always leaves a store whose best chain re-validates
from genesis with every consensus rule.
"""

from __future__ import annotations

import asyncio
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import random_seed, wait_until
from ledger_helpers import (
    GENESIS,
    NOW_MS,
    PARAMS,
    block_on,
    branch,
    committed_height,
    feed,
    main_blocks,
    pay,
    replay,
    revalidate,
    wallet,
)
from node_helpers import NODE_DIR, with_node

from p2pchain import limits
from p2pchain import store as store_module
from p2pchain.chain import Chain, Status
from p2pchain.errors import StoreError
from p2pchain.ledger.block import Block
from p2pchain.node import Node
from p2pchain.params import NetworkParams
from p2pchain.store import Ban, Store

A, B, C = wallet(1), wallet(2), wallet(3)
HELPERS = Path(__file__).with_name("ledger_helpers.py")
ROOT = Path(__file__).resolve().parent.parent
KILL_ROUNDS = 10


def build(chain: Chain) -> dict[str, Block]:
    """G - a1 - a2 - a3 - a4        main after a reorg; a1, a2 pay A; a3 confirms A -> B 30;
    \\                          a4 confirms B -> C 5
     b1 - b2 - b3              first the best chain (b3 confirms a payment that a4's
                               branch does not have), then a side branch with less work
    """
    a1, a2 = branch(GENESIS, 2, miner=A.address)
    a3 = block_on(a2, [pay(A, B, 30, fee=1)])
    a4 = block_on(a3, [pay(B, C, 5)])
    b1 = block_on(GENESIS, miner=C.address, salt=1)
    b2 = block_on(b1, miner=C.address, salt=1)
    b3 = block_on(b2, [pay(C, A, 7)], salt=1)
    feed(chain, [b1, b2, b3, a1, a2, a3, a4])
    assert chain.tip.hash == a4.hash
    return {"a1": a1, "a2": a2, "a3": a3, "a4": a4, "b1": b1, "b2": b2, "b3": b3}


def test_reopened_store_gives_the_same_chain(tmp_path: Path) -> None:
    path = tmp_path / "chain.sqlite"
    chain = Chain.open(path, PARAMS)
    blocks = build(chain)
    tip, main, accounts = chain.tip, list(chain.main), dict(chain.accounts)
    chain.close()

    chain = Chain.open(path, PARAMS)
    try:
        assert chain.tip == tip and chain.main == main and chain.accounts == accounts
        assert accounts == replay(main_blocks(chain)) == revalidate(main_blocks(chain), PARAMS)
        for name in ("a1", "a2", "a3", "a4"):
            block = blocks[name]
            assert chain.get_block(block.hash) == block
            for tx in block.txs:
                found = chain.find_tx(tx.txid)
                assert found is not None and found.hash == block.hash, name
        assert chain.find_tx(blocks["b3"].txs[1].txid) is None  # only on the side branch
        assert chain.entry(blocks["b3"].hash) is not None and not chain.is_main(blocks["b3"].hash)
        # the reopened tree still prefers work, and still keeps the first seen on a tie
        b4 = block_on(blocks["b3"], salt=1)
        assert chain.process_block(b4, NOW_MS).status is Status.SIDE
        b5 = block_on(b4, salt=1)
        result = chain.process_block(b5, NOW_MS)
        assert result.connected == [blocks["b1"], blocks["b2"], blocks["b3"], b4, b5]
        assert result.disconnected == [blocks[n] for n in ("a4", "a3", "a2", "a1")]
    finally:
        chain.close()


def test_store_of_another_network_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "chain.sqlite"
    chain = Chain.open(path, PARAMS)
    build(chain)
    tip = chain.tip.hash
    chain.close()
    before = path.read_bytes()

    with pytest.raises(StoreError) as err:
        Chain.open(path, NetworkParams(bits=PARAMS.bits + 1, reward=PARAMS.reward))
    assert str(path) in str(err.value)
    assert path.read_bytes() == before
    chain = Chain.open(path, PARAMS)  # still ours, untouched
    assert chain.tip.hash == tip
    chain.close()


def _random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(7).randbytes(8192))


def _text(path: Path) -> None:
    path.write_text("not a database\n")


def _truncated_store(path: Path) -> None:
    chain = Chain.open(path, PARAMS)
    feed(chain, branch(GENESIS, 200))
    chain.close()
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _execute(path: Path, *statements: str) -> None:
    """Run SQL on the file through a connection of its own (another program, as it were)."""
    db = sqlite3.connect(path)
    for sql in statements:
        db.execute(sql)
    db.commit()
    db.close()


def _edited_store(sql: str) -> Callable[[Path], None]:
    """A store of 3 blocks edited with ``sql``: the damage fuzz/store.py found SQLite lets through
    its quick_check (each was an sqlite3, Unicode, struct or type error, or a reset, before)."""

    def damage(path: Path) -> None:
        chain = Chain.open(path, PARAMS)
        feed(chain, branch(GENESIS, 3))
        chain.close()
        _execute(path, sql)

    return damage


def _side_row_renamed(path: Path) -> None:
    """A store with a side block whose row's hash column no longer matches its header."""
    chain = Chain.open(path, PARAMS)
    feed(chain, [*branch(GENESIS, 3), block_on(GENESIS, miner=C.address, salt=1)])
    assert chain.store.side_block_sizes()
    chain.close()
    _execute(path, "UPDATE blocks SET hash = randomblob(32) WHERE hash NOT IN (SELECT hash FROM main)")


DAMAGES = {
    "random": _random_bytes,
    "text": _text,
    "truncated": _truncated_store,
    # the blocks are there but the record of their network is gone: it was opened as a new chain
    "network-record-gone": _edited_store("DELETE FROM meta WHERE key='network'"),
    "column-renamed": _edited_store("ALTER TABLE blocks RENAME COLUMN seq TO seq2"),
    "address-not-utf8": _edited_store(
        "UPDATE accounts SET address = CAST(X'ff41' AS TEXT) WHERE rowid = (SELECT min(rowid) FROM accounts)"
    ),
    "header-wrong-type": _edited_store("UPDATE blocks SET header = 'text' WHERE height = 1"),
    "header-cut-short": _edited_store("UPDATE blocks SET header = X'0102' WHERE height = 1"),
    "work-wrong-type": _edited_store("UPDATE blocks SET work = 7 WHERE height = 1"),
    # was a TypeError in Chain._load (fuzz/store.py, corpus file 187903e7...)
    "seq-wrong-type": _edited_store("UPDATE blocks SET seq = X'07' WHERE height = 1"),
    "side-row-hash": _side_row_renamed,  # was a KeyError in Chain._load (fuzz/store.py)
}


@pytest.mark.parametrize("damage", list(DAMAGES.values()), ids=list(DAMAGES))
def test_damaged_file_is_refused_never_reset(tmp_path: Path, damage) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "chain.sqlite"
    damage(path)
    before = path.read_bytes()
    with pytest.raises(StoreError) as err:
        Chain.open(path, PARAMS)
    assert str(path) in str(err.value)
    assert path.read_bytes() == before


def test_a_header_that_makes_sqlite_run_out_of_memory_is_a_store_error(tmp_path: Path) -> None:
    """A damaged file found by fuzz/store.py: SQLite answers PRAGMA journal_mode with SQLITE_NOMEM
    (Python's MemoryError), which escaped Chain.open."""
    path = tmp_path / "chain.sqlite"
    path.write_bytes((ROOT / "fuzz/corpus/store/12f6eedadc4b1ad15c5d9df8d768b925543116ab").read_bytes())
    with pytest.raises(StoreError, match="cannot be opened") as err:
        Chain.open(path, PARAMS)
    assert str(path) in str(err.value)


def test_a_block_row_that_holds_another_block_or_is_gone_is_a_store_error(tmp_path: Path) -> None:
    """A damaged body may still decode, into another block; a damaged index may lose a row that
    the block tree knows. Either is the store's named error when the block is read (fuzz/store.py
    found both: the store handed back the wrong block, or None for a best-chain block)."""
    path = tmp_path / "chain.sqlite"
    chain = Chain.open(path, PARAMS)
    b1, b2, b3 = branch(GENESIS, 3)
    feed(chain, [b1, b2, b3])
    _execute(
        path,
        "UPDATE blocks SET body = (SELECT body FROM blocks WHERE height = 2) WHERE height = 1",
        "DELETE FROM blocks WHERE height = 3",
    )
    with pytest.raises(StoreError, match="holds another block") as err:
        chain.get_block(b1.hash)
    assert str(path) in str(err.value)
    with pytest.raises(StoreError, match="missing"):
        chain.get_block(b3.hash)
    with pytest.raises(StoreError, match="missing"):
        chain.blocks_range(2, 10)  # b2, then the lost b3: never a short answer without a word
    assert chain.get_block(b2.hash) == b2
    chain.close()


def test_sqlite_file_of_another_program_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "chain.sqlite"
    _execute(
        path, "CREATE TABLE invoices(id INTEGER PRIMARY KEY, total INTEGER)", "INSERT INTO invoices(total) VALUES (42)"
    )
    with pytest.raises(StoreError, match="something else") as err:
        Chain.open(path, PARAMS)
    assert str(path) in str(err.value)
    check = sqlite3.connect(path)
    tables = {name for (name,) in check.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    check.close()
    assert tables == {"invoices"}  # nothing was added to it


def test_bans_persist_until_they_expire(tmp_path: Path) -> None:
    path = tmp_path / "chain.sqlite"
    store = Store(path)
    with store.transaction():
        store.ban("10.0.0.1", 2_000, "bad block")
        store.ban("10.0.0.2", 1_000, "junk")
    store.close()
    store = Store(path)
    try:
        assert store.bans(500) == [Ban("10.0.0.1", 2_000, "bad block"), Ban("10.0.0.2", 1_000, "junk")]
        assert store.bans(1_000) == [Ban("10.0.0.1", 2_000, "bad block")]
        store.unban("10.0.0.1")
        assert store.bans(0) == []
    finally:
        store.close()


def test_closing_a_store_twice_is_harmless_and_closes_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "chain.sqlite"
    chain = Chain.open(path, PARAMS)
    blocks = branch(GENESIS, 5, miner=B.address)
    feed(chain, blocks[:3])  # commits: the store reads the wal-index through a descriptor of its own
    with chain.store.batch(behind=True):  # and its thread is started
        feed(chain, blocks[3:])
    chain.store.wait_written()

    def shm_descriptors() -> list[str]:  # this store's (other tests' stores may still be open)
        shm = f"{path}-shm"  # (a deleted file reads "PATH (deleted)")
        return [fd.name for fd in Path("/proc/self/fd").iterdir() if os.path.realpath(fd).startswith(shm)]

    assert shm_descriptors()  # (what this test is about)
    chain.close()
    assert not shm_descriptors()
    unrelated = os.open(os.devnull, os.O_RDONLY)  # may well reuse the wal-index's number
    try:
        chain.close()
        os.fstat(unrelated)  # still open
    finally:
        os.close(unrelated)


# --- batches: writes queued and sent together ---------------------------------------------------
def _dump(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table of the file at ``path``, sorted."""
    db = sqlite3.connect(path)
    try:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    finally:
        db.close()


def _build_with_history(chain: Chain) -> None:
    """build()'s blocks with the address index filled on the first best chain, so that the reorg
    also takes blocks out of it, and a ban recorded in between."""
    blocks = build(chain)  # b1-b3 best, then a1-a4 overtake them
    chain.index_addresses()
    chain.store.ban("10.0.0.9", 10**15, "junk")
    more = branch(blocks["a4"], 3, miner=B.address)
    feed(chain, more)
    chain.index_addresses()


@pytest.mark.parametrize("behind", [False, True], ids=["now", "behind"])
def test_a_batch_leaves_the_file_as_block_by_block_transactions_do(tmp_path: Path, behind: bool) -> None:
    """Inside a batch the writes are queued per table, keyed rows (the tip, accounts) keep their
    last value, and a read sends the queue first: the file at the end must hold exactly the rows
    that one transaction per block writes, reorgs, side blocks and the address index included
    (committed by the store's thread too)."""
    alone = Chain.open(tmp_path / "alone.sqlite", PARAMS)
    batched = Chain.open(tmp_path / "batched.sqlite", PARAMS)
    try:
        _build_with_history(alone)
        with batched.store.batch(behind=behind):
            _build_with_history(batched)
    finally:
        alone.close()
        batched.close()
    assert _dump(tmp_path / "alone.sqlite") == _dump(tmp_path / "batched.sqlite")


def test_reads_in_a_batch_see_its_writes_and_other_readers_see_them_at_the_commit(tmp_path: Path) -> None:
    path = tmp_path / "chain.sqlite"
    chain = Chain.open(path, PARAMS)
    other = Store(path)
    blocks = branch(GENESIS, 3)
    try:
        with chain.store.batch():
            feed(chain, blocks)
            assert chain.store.load_main() == [GENESIS.hash, *(b.hash for b in blocks)]
            assert chain.store.get_meta("tip") == blocks[-1].hash
            assert chain.get_block(blocks[1].hash) == blocks[1]
            assert other.load_main() == [GENESIS.hash]  # not committed yet
        assert other.load_main() == [GENESIS.hash, *(b.hash for b in blocks)]
    finally:
        other.close()
        chain.close()


@pytest.mark.parametrize("read_inside", [False, True], ids=["queued", "sent-by-a-read"])
def test_a_failed_transaction_in_a_batch_drops_its_own_writes_alone(tmp_path: Path, read_inside: bool) -> None:
    path = tmp_path / "chain.sqlite"
    chain = Chain.open(path, PARAMS)
    blocks = branch(GENESIS, 3)
    try:
        with chain.store.batch():
            feed(chain, blocks[:2])
            with pytest.raises(ZeroDivisionError), chain.store.transaction():
                chain.store.set_meta("tip", b"not a tip")
                chain.store.set_meta("extra", b"x")
                if read_inside:  # sends the transaction's writes so far (under a savepoint)
                    assert chain.store.get_meta("extra") == b"x"
                _ = 1 // 0
            assert chain.store.get_meta("extra") is None
            assert chain.store.get_meta("tip") == blocks[1].hash
            feed(chain, blocks[2:])
    finally:
        chain.close()
    chain = Chain.open(path, PARAMS)  # checks that the recorded tip is the best chain's
    try:
        assert chain.main == [GENESIS.hash, *(b.hash for b in blocks)]
        assert chain.store.get_meta("extra") is None
    finally:
        chain.close()


DISK_FULL_AT = 5  # the height whose best-chain row SQLite refuses (a trigger playing a full disk)


def _fill_the_disk(chain: Chain) -> None:
    chain.store.db.execute(
        f"CREATE TRIGGER full BEFORE INSERT ON main WHEN NEW.height = {DISK_FULL_AT} "
        "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )


def _refuses_writes_and_keeps(chain: Chain, path: Path) -> int:
    """After a refused batch, with the node's memory ahead of its file: every later write is
    refused; then closed, and its file (the disk freed) opened again: the height it holds."""
    try:
        with pytest.raises(StoreError, match="restart the node"), chain.store.transaction():
            pass
        with pytest.raises(StoreError, match="restart the node"), chain.store.batch():
            pass
    finally:
        chain.close()
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER full")
    db.commit()
    db.close()
    return _check_store(path)


def test_a_batch_that_cannot_be_written_keeps_the_last_commit_and_takes_no_more_writes(tmp_path: Path) -> None:
    """A write SQLite refuses when the batch commits (a full disk; here a trigger): the whole
    uncommitted batch is rolled back, never half of it, and the store refuses every later write,
    since the chain in memory is ahead of the file. Reopened, the file holds the last commit."""
    path = tmp_path / "chain.sqlite"
    chain = Chain.open(path, PARAMS)
    blocks = branch(GENESIS, 6)
    feed(chain, blocks[:2])  # committed
    _fill_the_disk(chain)
    with pytest.raises(StoreError, match=r"could not write a batch.*disk full"), chain.store.batch():
        feed(chain, blocks[2:])
    assert chain.height == 6  # memory went on: hence no more writes
    assert _refuses_writes_and_keeps(chain, path) == 2


def test_a_batch_is_written_whole_under_a_low_sqlite_parameter_limit(tmp_path: Path) -> None:
    """A batch's rows go to SQLite as INSERTs of many rows each; an SQLite built to allow fewer
    parameters a statement (999 before 3.32) gets more, smaller statements, and the same file."""
    path = tmp_path / "chain.sqlite"
    chain = Chain.open(path, PARAMS)
    chain.store.db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 20)  # two 8-column block rows a statement
    blocks = branch(GENESIS, 7)
    try:
        with chain.store.batch():
            feed(chain, blocks)
    finally:
        chain.close()
    assert _check_store(path) == 7


def test_batches_committed_behind_are_seen_at_once_by_the_node_and_in_the_file_when_written(tmp_path: Path) -> None:
    """A sync's batches are committed by the store's thread while the next is checked: the node's
    own reads see every block at once, a batch is in the file once ``wait_written`` returns (or
    the next use of the store), and many batches in a row leave the chain a block-by-block
    writer leaves, in order."""
    path = tmp_path / "chain.sqlite"
    chain = Chain.open(path, PARAMS)
    blocks = branch(GENESIS, 12, miner=B.address)
    try:
        for start in range(0, len(blocks), 4):
            with chain.store.batch(behind=True):
                feed(chain, blocks[start : start + 4])
            assert chain.store.load_main() == [GENESIS.hash, *(b.hash for b in blocks[: start + 4])]
        chain.store.wait_written()
        assert committed_height(path) == 12
        assert chain.store.get_meta("tip") == blocks[-1].hash
    finally:
        chain.close()
    assert _check_store(path) == 12


def test_a_deferred_commit_behind_waits_its_delay_unless_the_store_is_used_first(tmp_path: Path) -> None:
    """A sync's last batch is committed by the store's thread ``delay_s`` later (Store.batch), so
    that the loop's work right after it keeps the GIL. Nothing of the node ever waits for that
    delay: any use of the store (a read, the next batch's commit, closing it) starts the commit
    at once (a delay of an hour would otherwise outlast the test's timeout)."""
    path = tmp_path / "chain.sqlite"
    chain = Chain.open(path, PARAMS)
    blocks = branch(GENESIS, 9, miner=B.address)
    try:
        with chain.store.batch(behind=True, delay_s=0.05):  # left alone: written after its delay
            feed(chain, blocks[:3])
        wait_until(lambda: committed_height(path) == 3, what="the deferred batch in the file")
        with chain.store.batch(behind=True, delay_s=3600):
            feed(chain, blocks[3:6])
        assert committed_height(path) == 3  # deferred: not in the file yet
        assert chain.store.get_meta("tip") == blocks[5].hash  # a read: committed first, at once
        assert committed_height(path) == 6
        with chain.store.batch(behind=True, delay_s=3600):
            feed(chain, blocks[6:8])
        with chain.store.batch(behind=True, delay_s=3600):  # its commit waits for the one before
            feed(chain, blocks[8:])
        assert chain.height == 9
    finally:
        chain.close()  # commits the last one at once
    assert _check_store(path) == 9


def test_a_kept_sync_batch_commits_every_store_batch_max_txns_blocks_and_when_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync's batch kept open for its next CHAIN (``batch(keep=True)``) is not committed at its
    end: the next batch goes on with it, and the file takes both once STORE_BATCH_MAX_TXNS blocks
    are queued, or when the batch is released (the sync's end), or when the store closes; the
    node's own reads see every block at once. A batch that ends by an exception is committed."""
    monkeypatch.setattr(limits, "STORE_BATCH_MAX_TXNS", 5)
    path = tmp_path / "chain.sqlite"
    chain = Chain.open(path, PARAMS)
    blocks = branch(GENESIS, 14, miner=B.address)
    store = chain.store
    try:
        with store.batch(behind=True, keep=True):
            feed(chain, blocks[:3])
        assert store.kept and committed_height(path) == 0
        assert chain.store.load_main()[-1] == blocks[2].hash  # (a read sends the queued writes, in the open batch)
        with store.batch(behind=True, keep=True):  # goes on with it: the 5th block commits all five
            feed(chain, blocks[3:6])
        assert store.kept
        store.wait_written()
        assert committed_height(path) == 5
        with store.batch(behind=True, keep=True):
            feed(chain, blocks[6:8])
        store.wait_written()
        assert committed_height(path) == 5  # 3 kept
        store.release()  # the sync ended: committed behind
        assert not store.kept
        store.wait_written()
        assert committed_height(path) == 8
        with pytest.raises(RuntimeError), store.batch(behind=True, keep=True):
            feed(chain, blocks[8:10])
            raise RuntimeError("a peer's bad block")
        assert not store.kept
        store.wait_written()
        assert committed_height(path) == 10
        with store.batch(behind=True, keep=True):
            feed(chain, blocks[10:12])
        with store.batch(behind=True, delay_s=3600):  # the last CHAIN: commits what was kept with it
            feed(chain, blocks[12:13])
        assert not store.kept and chain.store.get_meta("tip") == blocks[12].hash
        assert committed_height(path) == 13
        with store.batch(behind=True, keep=True):
            feed(chain, blocks[13:])
        assert store.kept
    finally:
        chain.close()  # commits what is kept
    assert _check_store(path) == 14


def test_a_block_that_arrives_alone_during_a_sync_is_not_kept_for_the_syncs_next_chain(tmp_path: Path) -> None:
    """A block that arrives alone (relayed, mined) while a sync's batch is kept open turns that
    batch into the held one (``hold`` says to arrange its release): it is committed with the sync's
    blocks by ``release`` or the sync's next batch, not when the sync's next CHAIN ends it. One
    that arrives while a sync's batch is open makes that batch commit at its end."""
    path = tmp_path / "chain.sqlite"
    chain = Chain.open(path, PARAMS)
    blocks = branch(GENESIS, 6, miner=B.address)
    store = chain.store
    try:
        with store.batch(behind=True, keep=True):
            feed(chain, blocks[:2])
        assert store.kept
        assert store.hold()  # a block alone: the caller releases it (the node: STORE_HOLD_S later)
        feed(chain, blocks[2:3])
        assert not store.kept
        store.release()
        store.wait_written()
        assert committed_height(path) == 3
        with store.batch(behind=True, keep=True):
            feed(chain, blocks[3:4])
        assert store.hold()
        feed(chain, blocks[4:5])
        with store.batch(behind=True, keep=True):  # the sync's next batch first commits the held one
            store.wait_written()
            assert committed_height(path) == 5
            assert not store.hold()  # in a sync's open batch: it is committed at the batch's end
            feed(chain, blocks[5:6])
        assert not store.kept
        store.wait_written()
        assert committed_height(path) == 6
    finally:
        chain.close()
    assert _check_store(path) == 6


def test_a_kept_sync_batch_commits_once_its_blocks_reach_store_batch_max_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch (a sync's, kept open from one CHAIN to the next) is committed once the blocks it
    stored reach STORE_BATCH_MAX_BYTES canonical bytes, before STORE_BATCH_MAX_TXNS blocks: a sync
    of big blocks does not hold thousands of them, decoded, in memory (nor lose them on a kill -9).
    Here the byte bound is three blocks' bytes and the count bound out of reach."""
    blocks = branch(GENESIS, 8, miner=B.address)
    monkeypatch.setattr(limits, "STORE_BATCH_MAX_TXNS", 1000)
    monkeypatch.setattr(limits, "STORE_BATCH_MAX_BYTES", sum(b.size for b in blocks[:3]))
    path = tmp_path / "chain.sqlite"
    chain = Chain.open(path, PARAMS)
    store = chain.store
    try:
        with store.batch(behind=True, keep=True):
            feed(chain, blocks[:2])
        assert store.kept
        store.wait_written()
        assert committed_height(path) == 0  # two blocks' bytes: kept
        with store.batch(behind=True, keep=True):  # the third block reaches the bound: the three commit
            feed(chain, blocks[2:4])
        assert store.kept  # (the fourth, kept)
        store.wait_written()
        assert committed_height(path) == 3
        with store.batch(behind=True, keep=True):  # 4, 5, 6 reach it again
            feed(chain, blocks[4:7])
        store.wait_written()
        assert committed_height(path) == 6
        store.release()
        store.wait_written()
        assert committed_height(path) == 7
        side = block_on(GENESIS, miner=B.address, salt=1)  # a block stored off the best chain counts too
        with store.batch(behind=True, keep=True):
            for _ in range(2):
                with store.transaction():
                    store.put_block(side, 1, 99)
            feed(chain, blocks[7:8])  # two side blocks' bytes and this one's: committed
        store.wait_written()
        assert committed_height(path) == 8
    finally:
        chain.close()
    assert _check_store(path) == 8


@pytest.mark.parametrize("behind", [False, True])
def test_the_page_cache_grows_with_the_file_within_its_bounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, behind: bool
) -> None:
    """SQLite's page cache is a quarter of the file, at least STORE_PAGE_CACHE_MIN_KIB and at most
    STORE_PAGE_CACHE_KIB, refitted after each batch's commit (by whichever thread commits) and
    when the store opens: a small store keeps the least, a long chain's hash indexes stay cached.
    Here with bounds of 16 and 48 KiB, so that a few hundred blocks pass both."""
    monkeypatch.setattr(limits, "STORE_PAGE_CACHE_MIN_KIB", 16)
    monkeypatch.setattr(limits, "STORE_PAGE_CACHE_KIB", 48)
    path = tmp_path / "chain.sqlite"

    def cache_kib(store: Store) -> int:
        store.wait_written()
        return -int(store.db.execute("PRAGMA cache_size").fetchone()[0])

    def file_kib(store: Store) -> int:
        pages, size = store.db.execute("SELECT * FROM pragma_page_count(), pragma_page_size()").fetchone()
        return int(pages * size // 1024)

    chain = Chain.open(path, PARAMS)
    try:
        assert cache_kib(chain.store) == 16
        seen = []
        parent = GENESIS
        for _ in range(12):
            blocks = branch(parent, 50, miner=B.address)
            parent = blocks[-1]
            with chain.store.batch(behind=behind):
                feed(chain, blocks)
            kib = cache_kib(chain.store)
            assert kib == min(48, max(16, file_kib(chain.store) // 4))
            seen.append(kib)
        assert seen[0] < 48 and seen[-1] == 48 and seen == sorted(seen), seen
    finally:
        chain.close()
    reopened = Store(path)
    try:
        assert cache_kib(reopened) == 48
    finally:
        reopened.close()


def test_the_log_is_checkpointed_by_the_stores_thread_and_stays_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's own checkpoint runs inside a COMMIT, on the event loop's thread for the held
    blocks (a stall of up to STORE_WAL_CHECKPOINT_PAGES page copies and two fsyncs): it is off,
    and once the write-ahead log holds that many pages the store's thread copies them into the
    file through a connection of its own. Here at 40 pages: blocks held and released one at a
    time (the loop's commits) and sync batches committed behind (the store thread's) write many
    times that, the log file never grows past the threshold and one commit's pages, every
    checkpoint ran on another thread than the loop's, and the stopped store leaves no log."""
    monkeypatch.setattr(limits, "STORE_WAL_CHECKPOINT_PAGES", 40)
    ran_on: list[threading.Thread] = []
    checkpoint = Store._checkpoint

    def spied(store: Store) -> None:
        ran_on.append(threading.current_thread())
        checkpoint(store)

    monkeypatch.setattr(Store, "_checkpoint", spied)
    path = tmp_path / "chain.sqlite"
    wal = tmp_path / "chain.sqlite-wal"
    chain = Chain.open(path, PARAMS)
    page = int(chain.store.db.execute("PRAGMA page_size").fetchone()[0])
    blocks = branch(GENESIS, 120, miner=B.address)
    largest = 0
    try:
        assert chain.store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for block in blocks[:60]:  # relayed blocks: one held batch each, committed by the loop
            chain.store.hold()
            feed(chain, [block])
            chain.store.release()
            chain.store.wait_written()
            largest = max(largest, wal.stat().st_size)
        held = len(ran_on)
        for start in range(60, 120, 10):  # a sync: batches committed by the store's thread
            with chain.store.batch(behind=True):
                feed(chain, blocks[start : start + 10])
            chain.store.wait_written()
            largest = max(largest, wal.stat().st_size)
        assert held >= 2 and len(ran_on) > held, (held, len(ran_on))
        assert threading.main_thread() not in ran_on
        assert largest <= 32 + (40 + 30) * (page + 24), largest  # header, then frames of a page each
    finally:
        chain.close()
    assert not wal.exists()
    assert _check_store(path) == 120


def test_a_batch_behind_that_cannot_be_written_fails_the_next_use_and_keeps_the_last_commit(tmp_path: Path) -> None:
    """SQLite refuses a batch the store's thread commits behind: the next use of the store (here
    the next batch's commit) says so, the whole batch is rolled back, what the node queued after
    it is dropped, every later write is refused, and reopened, the file holds the last commit."""
    path = tmp_path / "chain.sqlite"
    chain = Chain.open(path, PARAMS)
    blocks = branch(GENESIS, 9)
    with chain.store.batch(behind=True):
        feed(chain, blocks[:3])
    chain.store.wait_written()
    _fill_the_disk(chain)
    with chain.store.batch(behind=True):  # refused in the store's thread ...
        feed(chain, blocks[3:6])
    with pytest.raises(StoreError, match=r"could not write a batch.*disk full"), chain.store.batch(behind=True):
        feed(chain, blocks[6:])  # ... which this batch's commit waits for
    assert chain.height == 9
    assert _refuses_writes_and_keeps(chain, path) == 3


def test_blocks_held_are_seen_by_the_node_at_once_and_in_the_file_when_released(tmp_path: Path) -> None:
    """Blocks that arrive one at a time go into the held batch (Store.hold): the node's own reads
    see them at once, another connection (another process, the serving thread) only once
    ``release`` commits them, together; a sync's batch and ``close`` release it first; a
    hold while a batch is open is refused (the block joins that batch)."""
    path = tmp_path / "chain.sqlite"
    chain = Chain.open(path, PARAMS)
    blocks = branch(GENESIS, 6, miner=B.address)
    try:
        assert chain.store.hold()
        assert not chain.store.hold()  # one held batch at a time
        feed(chain, blocks[:2])
        assert chain.store.load_main() == [GENESIS.hash, *(b.hash for b in blocks[:2])]
        assert committed_height(path) == 0
        chain.store.release()
        assert committed_height(path) == 2
        chain.store.release()  # nothing held: nothing to do
        assert chain.store.hold()
        feed(chain, blocks[2:3])
        with chain.store.batch(behind=True):  # a sync: the held block is committed first
            assert committed_height(path) == 3
            assert not chain.store.hold()
            feed(chain, blocks[3:5])
        chain.store.wait_written()
        assert committed_height(path) == 5
        assert chain.store.hold()
        feed(chain, blocks[5:])
    finally:
        chain.close()  # commits what is held
    assert _check_store(path) == 6


def test_a_held_batch_that_cannot_be_written_fails_its_release_and_keeps_the_last_commit(tmp_path: Path) -> None:
    """SQLite refuses the held batch when it is released: ``release`` says so, the held blocks
    are rolled back together, every later write is refused, and reopened, the file holds the
    last commit."""
    path = tmp_path / "chain.sqlite"
    chain = Chain.open(path, PARAMS)
    blocks = branch(GENESIS, 6)
    chain.store.hold()
    feed(chain, blocks[:3])
    chain.store.release()
    _fill_the_disk(chain)
    chain.store.hold()
    feed(chain, blocks[3:])
    with pytest.raises(StoreError, match=r"could not write a batch.*disk full"):
        chain.store.release()
    assert chain.height == 6
    with pytest.raises(StoreError, match="restart the node"):
        chain.store.hold()
    assert _refuses_writes_and_keeps(chain, path) == 3


class _CommitRefused:
    """A store's connection whose COMMIT fails as on a full disk, where the pages of a batch held
    in SQLite's page cache reach the WAL only at COMMIT: SQLite rolls the transaction back and
    raises. Everything else goes to the real connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            self.db.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def test_a_held_batch_whose_commit_is_refused_fails_its_release_and_keeps_the_last_commit(tmp_path: Path) -> None:
    """The disk fills at the held batch's COMMIT (not at an INSERT): ``release`` says so as a
    StoreError (which the node's release timer catches), no later block is written on top of the
    gap, and reopened, the file holds the last commit and opens cleanly."""
    path = tmp_path / "chain.sqlite"
    chain = Chain.open(path, PARAMS)
    blocks = branch(GENESIS, 6)
    real = chain.store.db
    try:
        chain.store.hold()
        feed(chain, blocks[:3])
        chain.store.release()
        chain.store.db = _CommitRefused(real)  # type: ignore[assignment]
        chain.store.hold()
        feed(chain, blocks[3:5])
        with pytest.raises(StoreError, match=r"could not write a batch.*disk is full"):
            chain.store.release()
        chain.store.db = real
        assert chain.height == 5
        with pytest.raises(StoreError, match="restart the node"):
            chain.store.hold()
        with pytest.raises(StoreError, match="restart the node"), chain.store.transaction():
            pass
    finally:
        chain.store.db = real
        chain.close()
    assert _check_store(path) == 3


def test_a_block_row_that_cannot_be_made_when_sent_refuses_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A synced or held block's row is made when its batch is sent (the packing leaves the loop's
    check of the block): if making it fails (here a stand-in for a MemoryError), the batch's other
    writes are gone with it, so the store refuses further writes, as for SQLite's refusal, rather
    than writing tips and accounts without their blocks; the file keeps its last commit."""
    path = tmp_path / "chain.sqlite"
    chain = Chain.open(path, PARAMS)
    blocks = branch(GENESIS, 5)
    try:
        chain.store.hold()
        feed(chain, blocks[:3])
        chain.store.release()

        def fails(*args: object) -> None:
            raise MemoryError("no room for a block's row")

        monkeypatch.setattr(store_module, "_block_row", fails)
        chain.store.hold()
        feed(chain, blocks[3:5])
        with pytest.raises(StoreError, match=r"could not write a batch.*no room"):
            chain.store.release()
        monkeypatch.undo()
        with pytest.raises(StoreError, match="restart the node"):
            chain.store.hold()
    finally:
        chain.close()
    assert _check_store(path) == 3


def _file_height(path: Path) -> int:
    """The best-chain height the file holds, read as another process would (read-only: no lock
    taken, no schema written)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM main").fetchone()[0]) - 1
    finally:
        db.close()


def test_a_node_commits_the_blocks_it_holds_within_store_hold_s_and_when_it_stops(tmp_path: Path) -> None:
    """The node's wiring of the held batch: a block it mines is in its file within STORE_HOLD_S
    (the release timer) without anything else happening, and one mined just before it stops is
    there after the stop."""

    path = tmp_path / NODE_DIR / "chain.sqlite"

    async def scenario(node: Node) -> None:
        await node.mine_one()
        deadline = time.monotonic() + limits.STORE_HOLD_S + 10
        while _file_height(path) < 1:
            assert time.monotonic() < deadline, "the held block was not committed"
            await asyncio.sleep(0.05)  # ok: polls another connection's view against a deadline
        await node.mine_one()

    asyncio.run(with_node(tmp_path, scenario, deadline_s=None, discover=True, ban_loopback=False))
    assert _file_height(path) == 2


# --- kill -9 ----------------------------------------------------------------------------------------
def _wait_lines(proc: subprocess.Popen[bytes], count: int, deadline: float) -> None:
    """Read the writer's stdout until it has printed ``count`` more lines."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = 0
    while seen < count:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"the writer printed {seen} of {count} lines before the deadline"
        chunk = os.read(fd, 65536)
        assert chunk, f"the writer exited with {proc.wait()}"
        seen += chunk.count(b"\n")


def _check_store(path: Path) -> int:
    """Open the store after a kill; its best chain must re-validate from genesis. Returns its height."""
    chain = Chain.open(path, PARAMS)
    try:
        blocks = main_blocks(chain)
        assert revalidate(blocks, PARAMS) == chain.accounts == replay(blocks)
        for block in blocks:
            for tx in block.txs:
                found = chain.find_tx(tx.txid)
                assert found is not None and found.hash == block.hash
        for entry in chain.index.values():  # the stored tree is whole
            assert entry.height == 0 or entry.header.prev_hash in chain.index
        return chain.height
    finally:
        chain.close()


def test_overlapping_batches_do_not_defer_the_commit_for_ever(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11, finding 4: two peers' sync batches that keep overlapping shared one SQLite
    transaction, so nothing was committed while the overlap lasted (a kill -9 lost all of it and
    the WAL could not be checkpointed). A batch now commits every STORE_BATCH_MAX_TXNS blocks."""
    monkeypatch.setattr(limits, "STORE_BATCH_MAX_TXNS", 4)
    path = tmp_path / "chain.sqlite"
    chain = Chain.open(path, PARAMS)
    blocks = branch(GENESIS, 10)

    def committed_height() -> int:
        other = Store(path)
        try:
            return len(other.load_main()) - 1
        finally:
            other.close()

    try:
        with chain.store.batch():  # one peer's batch ...
            feed(chain, blocks[:3])
            with chain.store.batch():  # ... and another's, started before the first ends
                feed(chain, blocks[3:6])
                assert committed_height() == 4  # four blocks: a commit inside the overlap
                feed(chain, blocks[6:])
            assert committed_height() == 8
        assert committed_height() == 10  # the rest when the outermost batch ends
    finally:
        chain.close()


def test_kill_9_mid_write_leaves_a_valid_store(tmp_path: Path) -> None:
    seed = random_seed("P2PCHAIN_KILL_SEED")
    print(f"kill -9 test seed: {seed} (rerun with P2PCHAIN_KILL_SEED={seed})")
    rng = random.Random(seed)
    path = tmp_path / "chain.sqlite"
    heights = []
    for round_ in range(KILL_ROUNDS):
        with (tmp_path / "writer.err").open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, str(HELPERS), "write", str(path), str(seed + round_)],
                stdout=subprocess.PIPE,
                stderr=err,
            )
            try:
                deadline = time.monotonic() + 30
                _wait_lines(proc, 1 + rng.randint(0, 40), deadline)  # "ready", then blocks
                time.sleep(rng.uniform(0, 0.005))  # ok: not a wait: it spreads the kill over the write cycle
                proc.send_signal(signal.SIGKILL)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                assert proc.stdout is not None
                proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL, (tmp_path / "writer.err").read_text()
        heights.append(_check_store(path))
    print(f"heights after each kill: {heights}")
    assert heights[-1] > 0
