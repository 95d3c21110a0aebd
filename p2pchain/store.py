"""SQLite store (WAL): blocks, the best chain, account state, undo data, a tx index, an address
index (the explorer's history of an address) and bans.

Every change that a new tip makes (the block, its index entry, the best-chain rows, the account
changes and its undo data) is written in ONE transaction, so a kill -9 at any instant leaves
either the old tip or the new one, never a mix. Integers that may pass 2**63 (chain work) are
stored as big-endian bytes.

Inside a ``batch`` (a sync's CHAIN of up to 500 blocks) the writes of each inner transaction are
queued in memory and sent to SQLite together when the batch commits: one executemany per table and
statement instead of five statements and a savepoint per block, and only the last value of each
key of the keyed tables (the tip record, the accounts a run of coinbases keeps paying). A read, or
a statement not queued, first sends what is queued, so every read sees every write before it.
A sync's batch is committed behind, by the store's own thread, while the loop checks the next
one (``batch(behind=True)``; docs/ledger.md, "What is on disk when"). Blocks that arrive one at a
time (relayed, mined) are queued the same way in the held batch (``hold``) and committed together
by ``release``, STORE_HOLD_S later.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import os
import sqlite3
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

import msgpack

from p2pchain import limits
from p2pchain.errors import ProtocolError, StoreError
from p2pchain.keys import is_address
from p2pchain.ledger.block import HEADER_BYTES, Block
from p2pchain.ledger.rules import Account
from p2pchain.packing import packb
from p2pchain.record import record

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_WAL_U32 = struct.Struct("=I")  # the wal-index's mxFrame (offset 16) and nBackfill (offset 96): _wal_pages
_WAL_INDEX_BYTES = 100
DB_FILE = "chain.sqlite"  # inside the node's data dir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blocks(
    hash BLOB PRIMARY KEY, prev BLOB NOT NULL, height INTEGER NOT NULL, work BLOB NOT NULL,
    seq INTEGER NOT NULL, header BLOB NOT NULL, body BLOB NOT NULL, undo BLOB);
CREATE TABLE IF NOT EXISTS main(height INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS accounts(address TEXT PRIMARY KEY, balance INTEGER NOT NULL, nonce INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS txindex(txid BLOB PRIMARY KEY, block BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS addrtx(
    address BLOB NOT NULL, height INTEGER NOT NULL, pos INTEGER NOT NULL,
    PRIMARY KEY(address, height, pos)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bans(host TEXT PRIMARY KEY, until_ms INTEGER NOT NULL, reason TEXT NOT NULL);
"""


P = ParamSpec("P")
R = TypeVar("R")
# What a damaged file makes SQLite or the decoding of a row raise: a malformed page, a schema
# whose columns are gone, text that is not UTF-8, a value of the wrong type where SQLite's dynamic
# typing lets one be, a header or msgpack blob cut short (found by fuzz/store.py).
_DAMAGE = (sqlite3.Error, ValueError, TypeError, struct.error, msgpack.UnpackException)


def _guarded(method: Callable[Concatenate[Store, P], R]) -> Callable[Concatenate[Store, P], R]:
    """A store operation whose failure on a damaged file is a StoreError that names the file and
    says what to do, never an sqlite3 or decoding exception escaping into the node."""

    @functools.wraps(method)
    def guarded(self: Store, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except _DAMAGE as e:
            raise _damaged(self.path, e) from e

    return guarded


def _reading(method: Callable[Concatenate[Store, P], R]) -> Callable[Concatenate[Store, P], R]:
    """A guarded read: queued writes are sent first, so that it sees them."""

    @functools.wraps(method)
    def reading(self: Store, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            self._sync()
            return method(self, *args, **kwargs)
        except _DAMAGE as e:
            raise _damaged(self.path, e) from e

    return reading


def _damaged(path: str, e: BaseException) -> StoreError:
    return StoreError(f"store {path} is damaged ({type(e).__name__}: {e}): move it aside and resync")


@record
class Ban:
    host: str
    until_ms: int
    reason: str


def stored_bodies(db: sqlite3.Connection, hashes: Sequence[bytes]) -> dict[bytes, bytes]:
    """Hash -> stored body of those of ``hashes`` in the blocks table, in one query (the store's
    own reads and the serving connection's)."""
    marks = ",".join("?" * len(hashes))
    return dict(db.execute(f"SELECT hash, body FROM blocks WHERE hash IN ({marks})", list(hashes)))


def pack_block(block: Block) -> bytes:
    return packb(block.to_wire())


def unpack_block(data: bytes) -> Block:
    return Block.from_wire(msgpack.unpackb(data, raw=False))


def _pack_undo(undo: dict[str, Account]) -> bytes:
    """address -> [balance, nonce]: an Account is a tuple, which msgpack packs as that array."""
    return packb(undo)


def _work_bytes(work: int) -> bytes:
    return work.to_bytes((work.bit_length() + 7) // 8 or 1, "big")


ADDRINDEX_VERSION = b"3"  # meta "addrindex": the address index's layout; another one is rebuilt
ADD_ADDRESS = "INSERT OR IGNORE INTO addrtx(address, height, pos) VALUES (?,?,?)"
SET_MAIN = "INSERT OR REPLACE INTO main(height, hash) VALUES (?, ?)"
SET_TXINDEX = "INSERT OR REPLACE INTO txindex(txid, block) VALUES (?, ?)"
PUT_BLOCK = "INSERT OR IGNORE INTO blocks(hash, prev, height, work, seq, header, body, undo) VALUES (?,?,?,?,?,?,?,?)"
# a synced block queued as (block, work, seq, undo): its row (the body and undo data packed) is made
# when it is sent, by the store's thread for a commit behind, not on the loop as the block is checked
_PUT_BLOCK_LATER = PUT_BLOCK + " -- rows made when sent"


def _block_row(block: Block, work: int, seq: int, undo: dict[str, Account] | None) -> Row:
    return (
        block.hash,
        block.prev_hash,
        block.height,
        _work_bytes(work),
        seq,
        block.header.raw,
        pack_block(block),
        None if undo is None else _pack_undo(undo),
    )


def _account_row(address: str, acct: Account) -> tuple[str, int, int] | None:
    """The accounts table's row of ``address`` (None: delete it, an empty account is not stored)."""
    return None if acct.balance == 0 and acct.nonce == 0 else (address, acct.balance, acct.nonce)


def _address_key(address: str) -> bytes:
    """An address as the index stores it: its 20 bytes (half the hex text: fewer pages per block)."""
    return bytes.fromhex(address) if is_address(address) else address.encode()


def _addresses(height: int, block: Block) -> Iterator[tuple[bytes, int, int]]:
    """(address key, height, position) for each address a transaction of ``block`` touches:
    recipient and sender (the coinbase's sender "0" is no address)."""
    for pos, tx in enumerate(block.txs):
        yield _address_key(tx.recipient), height, pos
        if pos and tx.sender != tx.recipient:
            yield _address_key(tx.sender), height, pos


META_UPSERT = "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)"
ACCOUNT_UPSERT = "INSERT OR REPLACE INTO accounts(address, balance, nonce) VALUES (?,?,?)"
# the keyed tables a batch queues by key (row None: delete): (upsert, delete by key)
_KEYED = {
    "meta": (META_UPSERT, "DELETE FROM meta WHERE key=?"),
    "accounts": (ACCOUNT_UPSERT, "DELETE FROM accounts WHERE address=?"),
}
Row = tuple[Any, ...]


# a block on the best chain's tip for extend_main_run: (block, work, seq, undo, height, changes)
Extension = tuple[Block, int, int, dict[str, Account], int, dict[str, Account]]
Op = tuple[str, str | None, Any]  # a queued write: (table, statement, rows) or (table, None, (key, row))


def _send_ops(db: sqlite3.Connection, ops: list[Op]) -> None:
    """Run queued writes: per table in the order they were made, consecutive rows of one statement
    in one executemany, and for the keyed tables (_KEYED) only the last row (or deletion) of each
    key. Tables share no trigger or foreign key, so sending one table after another leaves the
    file as the statements in their own order would."""
    runs: dict[str, list[tuple[str, list[Row]]]] = {}
    keyed: dict[str, dict[Any, Row | None]] = {}
    for table, sql, payload in ops:
        if sql is None:
            last = keyed.get(table)
            if last is None:
                last = keyed[table] = {}
            last[payload[0]] = payload[1]
            continue
        table_runs = runs.get(table)
        if table_runs is None:
            table_runs = runs[table] = []
        if table_runs and table_runs[-1][0] == sql:
            table_runs[-1][1].extend(payload)
        else:
            table_runs.append((sql, list(payload)))
    for table_runs in runs.values():
        for sql, rows in table_runs:
            if sql == _PUT_BLOCK_LATER:  # (block, work, seq, undo): their rows are made now
                sql, rows = PUT_BLOCK, [_block_row(*r) for r in rows]
            _run(db, sql, rows)
    for table, items in keyed.items():
        upsert, delete = _KEYED[table]
        _run(db, upsert, [row for row in items.values() if row is not None])
        db.executemany(delete, [(key,) for key, row in items.items() if row is None])


_VALUES = " VALUES "
MULTI_ROWS = 1024  # rows of one INSERT statement at most (8 columns: 8,192 of SQLite's 32,766 parameters)


def _run(db: sqlite3.Connection, sql: str, rows: list[Row]) -> None:
    """``db.executemany(sql, rows)``, but an INSERT of many rows as one statement of many rows
    (``VALUES (?,?),(?,?),...``, MULTI_ROWS at most): SQLite takes it in one step, where
    executemany takes one step a row. Rows are inserted in their order, each with the
    statement's conflict rule, as executemany does. One step is one hand-over of the GIL, which
    matters when the store's thread writes a batch behind (``Store.batch``) while the loop runs."""
    at = sql.find(_VALUES)
    if not sql.startswith("INSERT") or at < 0 or len(rows) < 2:
        db.executemany(sql, rows)
        return
    head, one = sql[: at + len(_VALUES)], sql[at + len(_VALUES) :]
    # an SQLite built with a lower limit on parameters than today's default (999 before 3.32) too
    step = max(1, min(MULTI_ROWS, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // one.count("?")))
    for i in range(0, len(rows), step):
        chunk = rows[i : i + step]
        # bytes as bytearray (stored alike, as a BLOB; read back as bytes): Python 3.11's sqlite3
        # sends every bytes parameter through its adaptation protocol (a registry lookup and two
        # attribute lookups: ~3,000 instructions a value, ~5 % of a synced block), not a bytearray
        params = [bytearray(v) if type(v) is bytes else v for row in chunk for v in row]
        db.execute(head + ",".join([one] * len(chunk)), params)


class _Transaction:
    """``Store.transaction()``: a class, not a generator, since a sync enters one per block."""

    __slots__ = ("store",)

    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self) -> None:
        self.store._begin()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if kind is None:
            self.store._end()
        else:
            self.store._abort()


class Store:
    """A thin, typed layer over one SQLite file. Not thread-safe: the node's event loop owns it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._batch_depth = 0  # open ``batch`` contexts
        self._batched = 0  # transactions done in the open batch since its last commit
        self._batched_bytes = 0  # ... and the canonical bytes of the blocks they stored
        self._ops: list[Op] = []  # writes queued in the open batch, not sent yet
        self._mark: int | None = None  # a transaction is open in the batch: its writes start at _ops[_mark]
        self._savepoint = False  # that transaction sent some of its writes (a savepoint is open)
        self._direct = False  # a transaction is open outside a batch (BEGIN ... COMMIT)
        self._transaction = _Transaction(self)
        self._failed: str | None = None  # why queued writes could not be written: no more writes
        self._begun = False  # the open batch's SQLite transaction is begun (BEGIN sent on first use)
        self._behind = False  # the outermost open batch commits behind (``batch(behind=True)``)
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None  # commits behind, made at first use
        self._writing: concurrent.futures.Future[None] | None = None  # the commit behind under way
        self._delay_s = 0.0  # the open batch's commit behind starts this much later (``batch``)
        self._go: threading.Event | None = None  # set: that deferred commit starts at once
        self._holding = False  # the open batch is the held one (``hold``): ``release`` commits it
        self._kept = False  # ... kept open by a sync's batch (``batch(keep=True)``): the next batch goes on with it
        self._lone = False  # a block that arrived alone is in the open batch (``hold``): not kept at its end
        self._checkpointer: sqlite3.Connection | None = None  # the store thread's, for checkpoints only
        self._checkpointing: concurrent.futures.Future[None] | None = None  # the checkpoint under way
        self._shm: int | None = None  # the wal-index file, open for reading (_wal_pages)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable to the last commit on kill -9
            self.db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run on the store's thread (_committed)
            ok = self.db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise StoreError(f"store {self.path} is corrupt ({ok}): move it aside and resync")
            tables = {name for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and "meta" not in tables:
                raise StoreError(
                    f"{self.path} is an SQLite database of something else (tables: {', '.join(sorted(tables))}): "
                    "use another --data-dir"
                )
            self.db.executescript(_SCHEMA)
            self._cache_kib = 0  # the page cache's size now (_fit_cache)
            self._fit_cache()
            if self.get_meta("addrindex") != ADDRINDEX_VERSION:  # new, or made before this index
                self._build_addrindex()
        except (*_DAMAGE, MemoryError) as e:  # UnicodeDecodeError: a table name that is not UTF-8;
            # MemoryError: SQLite's SQLITE_NOMEM for a header whose sizes make no sense (fuzz/store.py)
            self._close_quietly()
            raise StoreError(f"store {self.path} cannot be opened ({e}): move it aside and resync") from None
        except StoreError:
            self._close_quietly()
            raise

    def _close_quietly(self) -> None:
        db = getattr(self, "db", None)
        if db is not None:
            db.close()

    def close(self) -> None:
        """Commit what is queued or held, and close: this connection last, so that SQLite folds
        the write-ahead log into the file and deletes it (docs/ledger.md)."""
        try:
            self.release()
            self._wait()
        except StoreError as e:
            log.error("%s", e)
        if self._writer is not None:
            self._writer.submit(self._close_checkpointer)
            self._writer.shutdown()  # (waits for the checkpoint under way, if any)
            self._writer = None
        self.db.close()
        if self._shm is not None:  # only now: closing any descriptor of a file drops every POSIX
            os.close(self._shm)  # lock this process holds on it, SQLite's too (sqlite.org/howtocorrupt.html, 2.2)
            self._shm = None  # (a second close must not close whatever file reuses the number)

    def transaction(self) -> AbstractContextManager[None]:
        """All or nothing. Inside ``batch`` its writes are queued (see the module's doc) and sent
        when the batch commits: when it ends, after STORE_BATCH_MAX_TXNS transactions or once
        its blocks reach STORE_BATCH_MAX_BYTES, whichever comes first; a failure drops this
        transaction's writes alone."""
        return self._transaction

    def _begin(self) -> None:
        self._check_writable()
        if self._mark is not None or self._direct:
            raise RuntimeError("a store transaction inside another one")
        if self._batch_depth == 0:
            self._wait()
            self.db.execute("BEGIN IMMEDIATE")  # nothing is queued outside a batch
            self._direct = True
        else:
            self._mark = len(self._ops)
            self._savepoint = False

    def _end(self) -> None:
        if self._direct:
            self._direct = False
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error as e:
                raise self._refuse(e) from e
            self._committed()
            return
        self._mark = None
        if self._savepoint:  # a read sent its first writes: the rest now
            self._savepoint = False
            self._send()
            self.db.execute("RELEASE tx")
        self._batched += 1
        if self._full():  # overlapping batches never defer it longer
            self._commit()

    def _abort(self) -> None:
        if self._direct:
            self._direct = False
            self.db.execute("ROLLBACK")
            return
        mark, self._mark = self._mark, None
        if mark is not None:
            del self._ops[mark:]
        if self._savepoint:
            self._savepoint = False
            if self._failed is None:  # (a failed send rolled everything back)
                self.db.execute("ROLLBACK TO tx")
                self.db.execute("RELEASE tx")

    @contextmanager
    def batch(self, *, behind: bool = False, delay_s: float = 0.0, keep: bool = False) -> Iterator[None]:
        """One commit for every transaction inside (a sync batch of blocks: one WAL write and one
        executemany per table instead of five statements per block). Each inner transaction stays
        all or nothing; what they did is committed when the outermost batch ends, by an exception
        too, since the caller's memory already holds it, and every STORE_BATCH_MAX_TXNS inner
        transactions (batches of two peers that keep overlapping would otherwise defer it without
        end). A kill -9 leaves the store as it was at the last commit: the tip of a whole inner
        transaction. If the queued writes cannot be written (a full disk), the open batch is
        rolled back to the last commit and the store takes no more writes (StoreError): the node's
        memory is ahead of its file, and a restart resumes from the file.

        With ``behind`` (on the outermost batch) the commit is written behind, by a thread of the
        store's own (SQLite lets go of the GIL while it writes), while the caller goes on: the
        file is then at most that one batch behind the memory, since any later use of the store
        (a read, a write, the next commit, ``close``) first waits until it is done. A kill -9 in
        between loses that batch, which a sync downloads again. A failure shows at that next use
        as above (``wait_written`` waits for it on purpose). With ``delay_s`` too, the store's
        thread starts that commit ``delay_s`` later, or at once when the store is used before
        then (the same uses: the loop's work right after the batch keeps the GIL meanwhile).

        With ``keep`` (a sync's CHAIN when the next one is already asked for), the outermost batch
        that ends without an exception is not committed but kept open as the held batch (``hold``),
        and the next ``batch`` goes on with it: a sync commits every STORE_BATCH_MAX_TXNS blocks
        or STORE_BATCH_MAX_BYTES of them (the inner transactions commit it, as always), not once a
        CHAIN, so SQLite rewrites the pages its random keys touch (the blocks' and transactions'
        hash indexes) a quarter as often. The file may then be that many blocks, plus the commit
        behind, behind the memory.
        ``release`` (the sync's end, the node stopping, a held block's timer) commits it."""
        if self._kept:  # a sync's batch kept open by the last one: go on with it, as the outermost batch
            self._check_writable()  # (a commit behind may have failed since)
            self._kept = self._holding = False
            self._batch_depth -= 1
            self._behind, self._delay_s = behind, delay_s
        else:
            self.release()  # a sync's batch commits behind, and a held one would make it an inner batch
            self._check_writable()
            if self._batch_depth == 0:
                self._open_batch(behind, delay_s)
        self._batch_depth += 1
        ended = False
        try:
            yield
            ended = True
        finally:
            try:
                if self._batch_depth == 1:
                    if ended and keep and not self._lone and self._failed is None and not self._full():
                        self._kept = self._holding = True  # (its depth stays 1: the held batch)
                    else:
                        self._commit()
            finally:
                if not self._kept:
                    self._batch_depth -= 1

    def _full(self) -> bool:
        """The open batch has done enough to be committed now: STORE_BATCH_MAX_TXNS transactions
        or STORE_BATCH_MAX_BYTES of blocks (its queue holds them decoded: a kept sync batch of big
        blocks must not grow with their count alone)."""
        return self._batched >= limits.STORE_BATCH_MAX_TXNS or self._batched_bytes >= limits.STORE_BATCH_MAX_BYTES

    def _open_batch(self, behind: bool, delay_s: float = 0.0) -> None:
        """Open the outermost batch (``batch``, ``hold``): its SQLite transaction is begun when
        something is first sent (BEGIN IMMEDIATE: a commit behind may be under way till then)."""
        self._begun = False
        self._batched = self._batched_bytes = 0
        self._behind = behind
        self._delay_s = delay_s
        self._lone = False

    def hold(self) -> bool:
        """Open the held batch unless a batch is open: the transactions that follow (blocks that
        arrive one at a time: relayed, mined) are queued as in ``batch`` and committed together by
        ``release``, which the caller arranges (STORE_HOLD_S later: the node's memory, and so what
        it relays, runs that far ahead of its file; docs/ledger.md, "What is on disk when").
        A ``batch`` or ``close`` releases it first. True if the caller must arrange that release:
        the held batch was opened now, or a sync's kept batch became it (the block is committed
        with the sync's blocks so far, not one sync CHAIN or SYNC_STALL_S later). In a sync's
        batch still open, the block makes that batch commit at its end rather than be kept."""
        if self._kept:
            self._kept = False
            return True
        if self._batch_depth:
            self._lone = not self._holding
            return False
        self._check_writable()
        self._open_batch(False)
        self._batch_depth = 1
        self._holding = True
        return True

    @property
    def kept(self) -> bool:
        """A sync's batch is kept open for the next one (``batch(keep=True)``)."""
        return self._kept

    def release(self) -> None:
        """Commit the held batch, if one is open (StoreError if SQLite refuses it: the store then
        takes no more writes, as for a batch)."""
        if not self._holding:
            return
        self._holding = self._kept = False
        try:
            self._commit()
        finally:
            self._batch_depth -= 1

    def _open(self) -> None:
        """Before the loop's thread sends anything to SQLite: the commit behind is done, and the
        open batch's transaction is begun."""
        self._wait()
        if self._batch_depth and not self._begun:
            self.db.execute("BEGIN IMMEDIATE")
            self._begun = True

    def _commit(self) -> None:
        """Commit the open batch (its queued writes and what was sent before): now, or behind.
        Nothing if the store failed, or if nothing was queued or sent (held blocks that were all
        ignored or duplicates; a sync's CHAIN of blocks we had)."""
        self._batched = self._batched_bytes = 0
        if self._failed is not None:
            return
        if not self._behind:
            if not self._ops and not self._begun:
                return
            self._sync()
            if self._begun:
                self._begun = False
                try:  # a full disk often shows only here: the pages reach the WAL at COMMIT
                    self.db.execute("COMMIT")
                    self._fit_cache()
                except sqlite3.Error as e:
                    raise self._refuse(e) from e
                self._committed()
            return
        self._wait()
        ops, self._ops = self._ops, []
        begun, self._begun = self._begun, False
        if not ops and not begun:
            return
        go = self._go = threading.Event() if self._delay_s > 0 else None
        self._writing = self.start_writer().submit(self._write_behind, ops, begun, go, self._delay_s)

    def _fit_cache(self) -> None:
        """Size SQLite's page cache to the file: a quarter of it, within STORE_PAGE_CACHE_MIN_KIB
        and STORE_PAGE_CACHE_KIB (limits.py says why). Called by whichever thread commits."""
        pages, page_size = self.db.execute("SELECT * FROM pragma_page_count(), pragma_page_size()").fetchone()
        kib = min(limits.STORE_PAGE_CACHE_KIB, max(limits.STORE_PAGE_CACHE_MIN_KIB, pages * page_size // 4096))
        if kib != self._cache_kib:
            self.db.execute(f"PRAGMA cache_size=-{kib}")  # negative: KiB, not pages
            self._cache_kib = kib

    def start_writer(self) -> concurrent.futures.ThreadPoolExecutor:
        """The thread that commits batches behind, started now if it was not (it starts with the
        first such batch otherwise, ~0.5 ms on that batch's way)."""
        if self._writer is None:
            self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="p2pchain-store")
            self._writer.submit(int).result()  # the executor starts its thread at the first task
        return self._writer

    def _write_behind(self, ops: list[Op], begun: bool, go: threading.Event | None, delay_s: float) -> None:
        """In the store's thread: after ``delay_s`` or once ``go`` is set (``_wait``), begin if
        the loop did not, send ``ops``, commit. The loop's thread does not touch the connection
        until this is done (``_wait``)."""
        if go is not None:
            go.wait(delay_s)  # (the GIL is free meanwhile)
        try:
            if not begun:
                self.db.execute("BEGIN IMMEDIATE")
            _send_ops(self.db, ops)
            self.db.execute("COMMIT")
            self._fit_cache()
            self._committed()
        except Exception:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            raise  # to the loop's thread at its next use of the store (_wait)

    def _committed(self) -> None:
        """After each commit, in whichever thread made it: once the write-ahead log holds
        STORE_WAL_CHECKPOINT_PAGES pages not copied into the file yet, the store's thread copies
        them (``_checkpoint``). SQLite's own checkpoint after a commit (wal_autocheckpoint, off
        here) would run inside the COMMIT of whichever thread made it: the event loop's for the
        held blocks and every transaction outside a sync's batch, a stall of up to 10,000 page
        copies and two fsyncs. Commits are never made by two threads at once (``_wait``), so
        neither are these calls."""
        checkpointing = self._checkpointing
        if checkpointing is not None and not checkpointing.done():
            return  # (the log's pages past it wait for the next commit after it)
        if self._wal_pages() >= limits.STORE_WAL_CHECKPOINT_PAGES:
            self._checkpointing = self.start_writer().submit(self._checkpoint)

    def _wal_pages(self) -> int:
        """Pages of the write-ahead log not copied into the file yet: mxFrame less nBackfill of
        the wal-index (``chain.sqlite-shm``, which every connection to the file maps; the layout:
        sqlite.org/walformat.html, 4.1 and 4.2, native byte order). A read of a few bytes, not a
        query. If it cannot be read, every commit counts as due (a checkpoint then finds little to do)."""
        try:
            if self._shm is None:
                self._shm = os.open(self.path + "-shm", os.O_RDONLY)
            head = os.pread(self._shm, _WAL_INDEX_BYTES, 0)
            (max_frame,) = _WAL_U32.unpack_from(head, 16)
            (backfilled,) = _WAL_U32.unpack_from(head, 96)
        except (OSError, struct.error):
            return limits.STORE_WAL_CHECKPOINT_PAGES
        return int(max_frame - backfilled)

    def _checkpoint(self) -> None:
        """In the store's thread: copy the log's pages into the file (PASSIVE: as far as no
        reader still needs the log, never waiting for one; SQLite reuses the log from its start
        once all of it is copied), through a connection of its own, so that the event loop's
        commits on the store's connection go on meanwhile. A failure loses nothing (the log
        keeps the pages): it is logged, and the next commit tries again."""
        try:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(self.path, isolation_level=None, timeout=0)
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as e:
            log.warning("store %s: checkpoint of the write-ahead log failed (%s): tried again later", self.path, e)

    def _close_checkpointer(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None

    def _wait(self) -> None:
        """Until the commit behind (if any) is written; StoreError if SQLite refused it."""
        writing = self._writing
        if writing is None:
            return
        self._writing = None
        if self._go is not None:  # a commit deferred (batch's delay_s): it starts now
            self._go.set()
            self._go = None
        try:
            writing.result()
        except Exception as e:  # sqlite3.Error: a full disk, an I/O error
            raise self._refuse(e) from e  # (what was queued after it builds on what is lost)

    def wait_written(self) -> None:
        """Until every commit made is in the file (a batch committed behind included), and the
        checkpoint under way, if any, is done."""
        self._wait()
        checkpointing = self._checkpointing
        if checkpointing is not None:
            checkpointing.result()

    def _check_writable(self) -> None:
        if self._failed is not None:
            raise StoreError(f"store {self.path} refused earlier writes ({self._failed}): restart the node")

    def _sync(self) -> None:
        """Send every queued write to SQLite: before a read, or a statement that is not queued,
        so that it sees (and follows) every write made before it. Inside a transaction of a batch
        this opens a savepoint first, so that the transaction can still be undone alone."""
        self._open()
        mark = self._mark
        if mark is None:
            if self._ops:
                self._send()
            return
        if mark:  # the batch's finished transactions first, outside the savepoint
            done = self._ops[:mark]
            del self._ops[:mark]
            self._mark = 0
            self._send(done)
        if not self._savepoint:
            self.db.execute("SAVEPOINT tx")
            self._savepoint = True
        if self._ops:
            self._send()

    def _send(self, ops: list[Op] | None = None) -> None:
        """Send ``ops`` (default: every queued write, which are then forgotten)."""
        if ops is None:
            ops, self._ops = self._ops, []
        try:
            _send_ops(self.db, ops)
        except Exception as e:  # SQLite's refusal, or a synced block's row failing to be made here
            raise self._refuse(e) from e  # (_PUT_BLOCK_LATER): its ops are gone, so no more writes

    def _refuse(self, e: Exception) -> StoreError:
        """SQLite refused queued writes or their COMMIT (a full disk, an I/O error): roll back to
        the last commit (if SQLite has not), forget what is queued, and take no more writes, since
        the node's memory is now ahead of its file. The error to raise."""
        self._failed = f"{type(e).__name__}: {e}"
        self._ops = []
        self._begun = False
        with contextlib.suppress(sqlite3.Error):  # (no transaction open: nothing to undo)
            self.db.execute("ROLLBACK")
        return StoreError(
            f"store {self.path} could not write a batch ({self._failed}): it holds the chain up to its "
            "last commit; restart the node"
        )

    def _write(self, table: str, sql: str, rows: list[Row]) -> None:
        """Run ``sql`` for each of ``rows``: queued inside a batch's transaction, else now (the
        write methods below go through here or ``_put``: a damaged file's error is a StoreError)."""
        if self._mark is not None:
            self._ops.append((table, sql, rows))
        else:
            self._now(sql, rows)

    def _put(self, table: str, key: Any, row: Row | None) -> None:
        """Set the row of ``key`` in a keyed table (None: delete it), queued as ``_write``."""
        if self._mark is not None:
            self._ops.append((table, None, (key, row)))
        else:
            upsert, delete = _KEYED[table]
            if row is not None:
                self._now(upsert, [row])
            else:
                self._now(delete, [(key,)])

    @_guarded
    def _now(self, sql: str, rows: list[Row]) -> None:
        self._sync()
        self.db.executemany(sql, rows)

    # --- meta -------------------------------------------------------------------------------
    @_reading
    def get_meta(self, key: str) -> bytes | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def set_meta(self, key: str, value: bytes) -> None:
        self._put("meta", key, (key, value))

    # --- blocks -----------------------------------------------------------------------------
    def put_block(self, block: Block, work: int, seq: int, undo: dict[str, Account] | None = None) -> None:
        """Store ``block`` (with its undo data when it joins the best chain now: one row write)."""
        self._write("blocks", PUT_BLOCK, [_block_row(block, work, seq, undo)])
        if self._batch_depth:
            self._batched_bytes += block.size

    def extend_main(
        self, block: Block, work: int, seq: int, undo: dict[str, Account], height: int, changes: dict[str, Account]
    ) -> None:
        """A block that extends the best chain at ``height``, in one transaction: the block with
        its undo data, its best-chain and txindex rows, the accounts it changed and the tip."""
        if self.queues_extend:
            self.extend_main_run([(block, work, seq, undo, height, changes)])
            return
        with self._transaction:
            self.put_block(block, work, seq, undo)
            self.set_main(height, block)
            self.write_accounts(changes.items())
            self.set_meta("tip", block.hash)

    @property
    def queues_extend(self) -> bool:
        """Whether ``extend_main`` only queues its writes: inside a batch, outside its inner
        transactions, the store taking writes (every block of a sync)."""
        return bool(self._batch_depth) and self._mark is None and not self._direct and self._failed is None

    def batch_room(self) -> tuple[int, int]:
        """The blocks and canonical bytes the open batch takes before it is full (``_full``): a
        run given to ``extend_main_run`` that fills it ends where one block at a time would
        have made the commit."""
        return limits.STORE_BATCH_MAX_TXNS - self._batched, limits.STORE_BATCH_MAX_BYTES - self._batched_bytes

    def extend_main_run(self, run: Sequence[Extension]) -> None:
        """``extend_main`` of each (block, work, seq, undo, height, changes) of ``run``, blocks
        on the tip one after the other, while ``queues_extend``: the writes each would queue
        through ``_begin``, ``_write``, ``_put`` and ``_end``, queued at once, one queued write a
        table for the whole run (``_send_ops`` joins a table's rows and keeps a keyed row's last
        value: the same statements reach SQLite, ~40 % of the cost a block of queueing each
        transaction on its own). Every row is made before the first is queued, so a failure
        queues none. A block's own row is made when it is sent (_PUT_BLOCK_LATER; a failure then
        refuses the store, as SQLite's does): its packing (~4 us, a tenth of checking a
        coinbase-only block) is done in the commit behind, after a sync's last CHAIN is
        answered for. The batch commits after the run if it is full (``batch_room``)."""
        blocks: list[Row] = []
        main: list[Row] = []
        txindex: list[Row] = []
        accounts: dict[str, Account] = {}
        size = 0
        for block, work, seq, undo, height, changes in run:
            block_hash = block.hash
            blocks.append((block, work, seq, undo))
            main.append((height, block_hash))
            txindex += [(tx.txid, block_hash) for tx in block.txs]
            accounts.update(changes)
            size += block.size
        ops: list[Op] = [
            ("blocks", _PUT_BLOCK_LATER, blocks),
            ("main", SET_MAIN, main),
            ("txindex", SET_TXINDEX, txindex),
        ]
        ops += [("accounts", None, (address, _account_row(address, acct))) for address, acct in accounts.items()]
        ops.append(("meta", None, ("tip", ("tip", main[-1][1]))))
        self._ops += ops
        self._batched += len(run)
        self._batched_bytes += size
        if self._full():  # as _end
            self._commit()

    def delete_blocks(self, hashes: list[bytes]) -> None:
        """Forget blocks found invalid or pruned (never on the best chain)."""
        self._write("blocks", "DELETE FROM blocks WHERE hash=?", [(h,) for h in hashes])

    @_reading
    def side_block_sizes(self) -> list[tuple[bytes, int]]:
        """(hash, stored body bytes) of every block off the best chain."""
        rows = self.db.execute(
            "SELECT b.hash, length(b.body) FROM blocks b LEFT JOIN main m ON m.hash = b.hash WHERE m.hash IS NULL"
        )
        return [(bytes(h), int(n)) for h, n in rows]

    @_reading
    def get_block(self, block_hash: bytes) -> Block | None:
        row = self.db.execute("SELECT body FROM blocks WHERE hash=?", (block_hash,)).fetchone()
        return None if row is None else self._decode(row[0], block_hash)

    @_reading
    def get_blocks(self, hashes: list[bytes]) -> list[Block]:
        """The stored blocks of ``hashes`` (those there are), in order: one query a run of
        MAX_BLOCKS_PER_CHAIN hashes instead of one a block."""
        blocks: list[Block] = []
        step = limits.MAX_BLOCKS_PER_CHAIN
        for i in range(0, len(hashes), step):
            part = hashes[i : i + step]
            rows = stored_bodies(self.db, part)
            blocks += [self._decode(rows[h], h) for h in part if h in rows]
        return blocks

    def _decode(self, body: bytes, block_hash: bytes) -> Block:
        try:
            block = unpack_block(body)
        except (ProtocolError, ValueError, msgpack.ExtraData) as e:
            raise StoreError(f"store {self.path}: block {block_hash.hex()} is corrupt ({e})") from None
        if block.hash != block_hash:  # a damaged body may still decode, into another block
            raise StoreError(f"store {self.path}: the row of block {block_hash.hex()} holds another block")
        return block

    def load_index(self) -> Iterator[tuple[bytes, int, int]]:
        """(header bytes, cumulative work, arrival order) of every stored block, in arrival order:
        one row at a time, so that opening a long chain never holds all its rows at once."""
        try:
            self._sync()
            for h, w, seq in self.db.execute("SELECT header, work, seq FROM blocks ORDER BY seq"):
                if len(h) != HEADER_BYTES:
                    raise ValueError(f"a stored header of {len(h)} bytes")
                if type(seq) is not int:  # (SQLite keeps a blob or text in an INTEGER column as it is)
                    raise ValueError(f"a stored block's arrival order is {type(seq).__name__}, not an integer")
                yield bytes(h), int.from_bytes(w, "big"), seq
        except _DAMAGE as e:
            raise _damaged(self.path, e) from e

    @_reading
    def get_undo(self, block_hash: bytes) -> dict[str, Account]:
        row = self.db.execute("SELECT undo FROM blocks WHERE hash=?", (block_hash,)).fetchone()
        if row is None or row[0] is None:
            raise StoreError(f"store {self.path}: no undo data for block {block_hash.hex()}")
        return {a: Account(b, n) for a, (b, n) in msgpack.unpackb(row[0], raw=False).items()}

    def set_undo(self, block_hash: bytes, undo: dict[str, Account]) -> None:
        self._write("blocks", "UPDATE blocks SET undo=? WHERE hash=?", [(_pack_undo(undo), block_hash)])

    # --- best chain -------------------------------------------------------------------------
    @_reading
    def load_main(self) -> list[bytes]:
        return [bytes(h) for (h,) in self.db.execute("SELECT hash FROM main ORDER BY height")]

    def set_main(self, height: int, block: Block) -> None:
        self._write("main", SET_MAIN, [(height, block.hash)])
        self._write("txindex", SET_TXINDEX, [(tx.txid, block.hash) for tx in block.txs])

    def unset_main(self, height: int, block: Block) -> None:
        self._write("main", "DELETE FROM main WHERE height=?", [(height,)])
        self._write("txindex", "DELETE FROM txindex WHERE txid=?", [(tx.txid,) for tx in block.txs])
        if height <= self.addrindex_height():  # the address index covered it: take it out, and step back
            self._write(
                "addrtx", "DELETE FROM addrtx WHERE address=? AND height=? AND pos=?", list(_addresses(height, block))
            )
            self.set_meta("addrindex_height", (height - 1).to_bytes(8, "big", signed=True))

    # --- the address index (filled behind the tip by the explorer: Chain.index_addresses) ----
    @_reading
    def addrindex_height(self) -> int:
        """The best-chain height up to which the address index is complete (-1: none)."""
        value = self.get_meta("addrindex_height")
        return -1 if value is None else int.from_bytes(value, "big", signed=True)

    def index_addresses(self, blocks: Iterable[tuple[int, Block]]) -> None:
        """Add best-chain blocks (height, block), each the one after the last indexed, to the
        address index. Call inside a transaction."""
        height = self.addrindex_height()
        for height, block in blocks:
            self._write("addrtx", ADD_ADDRESS, list(_addresses(height, block)))
        self.set_meta("addrindex_height", height.to_bytes(8, "big", signed=True))

    def _build_addrindex(self) -> None:
        """Start this address index afresh in a store made before it (it is filled behind the tip)."""
        with self.transaction():
            self.db.execute("DROP TABLE IF EXISTS addrindex")  # the first layout (hex text and txids)
            self.db.execute("DELETE FROM addrtx")
            self.db.execute("DELETE FROM meta WHERE key='addrindex_height'")
            self.set_meta("addrindex", ADDRINDEX_VERSION)

    @_reading
    def address_history(self, address: str, offset: int, limit: int) -> list[tuple[int, int]]:
        """(height, position in the block) of best-chain transactions from or to ``address``,
        newest first, skipping ``offset``."""
        rows = self.db.execute(
            "SELECT height, pos FROM addrtx WHERE address=? ORDER BY height DESC, pos DESC LIMIT ? OFFSET ?",
            (_address_key(address), limit, offset),
        )
        return [(int(h), int(p)) for h, p in rows]

    @_reading
    def address_tx_count(self, address: str) -> int:
        row = self.db.execute("SELECT COUNT(*) FROM addrtx WHERE address=?", (_address_key(address),)).fetchone()
        return int(row[0])

    @_reading
    def find_tx(self, txid: bytes) -> bytes | None:
        row = self.db.execute("SELECT block FROM txindex WHERE txid=?", (txid,)).fetchone()
        return None if row is None else bytes(row[0])

    # --- accounts ---------------------------------------------------------------------------
    @_reading
    def load_accounts(self) -> dict[str, Account]:
        return {a: Account(b, n) for a, b, n in self.db.execute("SELECT address, balance, nonce FROM accounts")}

    def write_accounts(self, changes: Iterable[tuple[str, Account]]) -> None:
        for address, acct in changes:
            self._put("accounts", address, _account_row(address, acct))

    # --- bans -------------------------------------------------------------------------------
    @_guarded
    def ban(self, host: str, until_ms: int, reason: str) -> None:
        self._sync()
        self.db.execute("INSERT OR REPLACE INTO bans(host, until_ms, reason) VALUES (?,?,?)", (host, until_ms, reason))

    @_guarded
    def unban(self, host: str) -> None:
        self._sync()
        self.db.execute("DELETE FROM bans WHERE host=?", (host,))

    @_guarded
    def bans(self, now_ms: int) -> list[Ban]:
        self._sync()
        self.db.execute("DELETE FROM bans WHERE until_ms<=?", (now_ms,))
        return [Ban(h, u, r) for h, u, r in self.db.execute("SELECT host, until_ms, reason FROM bans ORDER BY host")]
