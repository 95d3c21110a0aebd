"""The block tree: every valid block, cumulative work, orphans, most-work fork choice, reorgs.

One owner (the node's event loop) calls ``process_block``; it returns what happened and, when
the best chain changed, tells subscribers which blocks were disconnected and connected, after
the store has committed. Consensus checks are the pure functions of ``ledger.rules``; this
module adds the tree, the state and the disk.
"""

from __future__ import annotations

import enum
import logging
import os
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Container, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import field
from typing import Any

from p2pchain import limits
from p2pchain.errors import RuleCode, RuleError, StoreError
from p2pchain.ledger import rules
from p2pchain.ledger.block import Block, Header
from p2pchain.ledger.pow import bits_to_target, difficulty_bits, work
from p2pchain.ledger.rules import EMPTY_ACCOUNT, Account
from p2pchain.ledger.tx import Tx
from p2pchain.params import NetworkParams
from p2pchain.record import record
from p2pchain.store import Extension, Store

log = logging.getLogger(__name__)

ChainListener = Callable[[list[Block], list[Block]], None]  # (connected, disconnected)
# Which refusals are remembered against a block HASH (refused again unchecked, its descendants
# with it). Only what every block with that hash must fail: the header's own fields (but bad-pow:
# junk without work must not fill memory), its place after the parent (but time-too-new: it may
# become valid), and the state rules of a body that matched the header's merkle root (the tree is
# unambiguous, so no other body matches it). Never a failure of the body's own checks: a relayed
# copy of a good header with another body (a forged 64-byte "transaction", a repeated one, one
# dropped) must not get the real block refused for ever (issue 11, CVE-2017-12842's family).
REMEMBERED_HEADER_FAILURES = frozenset({RuleCode.BAD_VERSION, RuleCode.BAD_DIFFICULTY})
_HEIGHT_AT = slice(4, 8)  # where the header bytes hold the height (u32) and the timestamp (u64): ledger.block
_TIMESTAMP_AT = slice(72, 80)


class Entry:
    """A block in the tree: its header and the work of the branch that ends with it. Kept
    compact, since the node holds one per block for as long as it runs: the header's 92 bytes,
    its hash, the parent's hash (the parent entry's own bytes object) and the integers no header
    holds (cumulative work, arrival order, retarget anchor); height and timestamp are read from
    the header bytes when asked for (two ints fewer: ~80 bytes a block), and the Header object is
    rebuilt from them. ~420 bytes a block with its index slot (tests/test_chain.py bounds it).
    Not changed after it is made."""

    __slots__ = ("anchor_ms", "hash", "prev_hash", "raw", "seq", "work")

    def __init__(
        self, header: Header, work: int, seq: int, parent_hash: bytes | None = None, anchor_ms: int = 0
    ) -> None:
        self.hash = header.hash
        self.raw = header.raw
        # the parent's own hash object when the caller has it: one bytes object per hash, not two
        self.prev_hash = parent_hash if parent_hash == header.prev_hash else header.prev_hash
        self.work = work  # cumulative: sum of work(target) from genesis to this block
        self.seq = seq  # arrival order; among equal work the first seen stays best
        self.anchor_ms = anchor_ms  # timestamp of this branch's retarget anchor (block 1); 0 for genesis

    @property
    def height(self) -> int:
        return int.from_bytes(self.raw[_HEIGHT_AT], "big")

    @property
    def timestamp(self) -> int:
        """Unix ms, as the header says."""
        return int.from_bytes(self.raw[_TIMESTAMP_AT], "big")

    @property
    def header(self) -> Header:
        header = Header.from_raw(self.raw)
        header.__dict__["hash"] = self.hash
        return header

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        return (self.hash, self.work, self.seq) == (other.hash, other.work, other.seq)

    def __hash__(self) -> int:
        return hash(self.hash)

    def __repr__(self) -> str:
        return f"Entry({self.hash.hex()[:16]}, height={self.height}, work={self.work}, seq={self.seq})"


class Status(enum.Enum):
    CONNECTED = "connected"  # the block is on the best chain now
    SIDE = "side"  # valid so far, stored on a branch with less work
    ORPHAN = "orphan"  # parent unknown: waiting in the orphan pool
    DUPLICATE = "duplicate"  # already known
    IGNORED = "ignored"  # not asked for and no more work than the tip: not stored (Core's AcceptBlock)


@record
class ProcessResult:
    status: Status
    connected: list[Block] = field(default_factory=list)  # best-chain blocks added, in height order
    disconnected: list[Block] = field(default_factory=list)  # best-chain blocks removed, tip first


class Chain:
    def __init__(self, params: NetworkParams, store: Store) -> None:
        self.params = params
        self.store = store
        self.index: dict[bytes, Entry] = {}
        self.main: list[bytes] = []  # best chain: main[h] is the hash at height h
        self.accounts: dict[str, Account] = {}
        self.orphans: OrderedDict[bytes, tuple[Block, bool]] = OrderedDict()  # hash -> (block, requested)
        self._orphan_bytes = 0  # canonical bytes held in the orphan pool
        self.invalid: OrderedDict[bytes, RuleCode] = OrderedDict()
        self.listeners: list[ChainListener] = []
        self.verified: Container[bytes] = ()  # txids with checked signatures (the mempool's cache)
        # seconds each of some new blocks took, and how many (metrics): one call a block, or a run's mean
        self.on_validated: Callable[[float, int], None] | None = None
        self.rng = random.Random()  # picks the orphan to evict (tests may seed it)
        self.side: dict[bytes, int] = {}  # stored blocks off the best chain: hash -> canonical bytes
        self._side_bytes = 0
        self._seq = 0
        # the header of the block added last and the timestamps of it and its ancestors that its
        # child's median time past takes (newest first): in a sync the next block's parent
        self._last: tuple[Header, list[int]] | None = None
        self._last_work = (-1, 0)  # (bits, work of that target): see _work
        self._untold: tuple[list[Block], list[Block]] | None = None  # listeners' news held by notifying_once
        self._load()

    @classmethod
    def open(cls, path: str | os.PathLike[str], params: NetworkParams) -> Chain:
        """Open (or create) the store at ``path`` (":memory:" for tests) for ``params``."""
        return cls(params, Store(path))

    def close(self) -> None:
        self.store.close()

    # --- startup ----------------------------------------------------------------------------
    def _load(self) -> None:
        network = self.store.get_meta("network")
        if network is None:
            if self.store.load_main():  # blocks without the record of their network: never start afresh on them
                raise StoreError(f"store {self.store.path} has blocks but no network record: move it aside and resync")
            self._init_genesis()
            return
        if network != self.params.network_id:
            theirs = (self.store.get_meta("params") or b"?").decode(errors="replace")
            raise StoreError(
                f"data dir store {self.store.path} belongs to network {network.hex()[:12]}… ({theirs}), "
                f"not this one ({self.params.network_id.hex()[:12]}…, {self.params.summary()}): "
                "use another --data-dir or the same --difficulty and --block-time"
            )
        index = self.index
        for raw, work_done, seq in self.store.load_index():  # in arrival order: a parent before its children
            header = Header.from_raw(raw)
            parent = index.get(header.prev_hash)
            anchor = rules.anchor_time(header, parent.anchor_ms if parent is not None else 0)
            entry = Entry(header, work_done, seq, parent.hash if parent is not None else None, anchor)
            index[entry.hash] = entry
            self._seq = max(self._seq, seq + 1)
        self.main = [index[h].hash if h in index else h for h in self.store.load_main()]  # the index's bytes objects
        self.accounts = self.store.load_accounts()
        self._check_loaded()
        for block_hash, size in self.store.side_block_sizes():
            if block_hash not in self.index:  # its row's hash is not its header's: a damaged file
                raise StoreError(f"store {self.store.path}: block row {block_hash.hex()} is damaged: move it aside")
            self._add_side(block_hash, size)
        self._prune_side()
        log.info(
            "opened %s: height %d, tip %s, %d blocks in the tree",
            self.store.path,
            self.height,
            self.tip.hash.hex()[:16],
            len(self.index),
        )

    def _check_loaded(self) -> None:
        where = f"store {self.store.path}"
        if not self.main or self.main[0] != self.params.network_id:
            raise StoreError(f"{where} has no genesis block on its best chain: move it aside and resync")
        for height, block_hash in enumerate(self.main):
            entry = self.index.get(block_hash)
            if entry is None or entry.height != height:
                raise StoreError(f"{where}: best chain row {height} names a missing block: move it aside and resync")
            if height and entry.prev_hash != self.main[height - 1]:
                raise StoreError(f"{where}: best chain breaks at height {height}: move it aside and resync")
        tip_meta = self.store.get_meta("tip")
        if tip_meta != self.main[-1]:
            raise StoreError(f"{where}: recorded tip differs from the best chain: move it aside and resync")

    def _init_genesis(self) -> None:
        genesis = self.params.genesis
        changes: dict[str, Account] = {}
        rules.credit(genesis.txs[0].recipient, genesis.txs[0].amount, self.get_account, changes)
        entry = Entry(genesis.header, work(genesis.header.target), self._next_seq())
        with self.store.transaction():
            self.store.set_meta("network", self.params.network_id)
            self.store.set_meta("params", self.params.summary().encode())
            self.store.put_block(genesis, entry.work, entry.seq)
            self.store.set_undo(genesis.hash, {a: EMPTY_ACCOUNT for a in changes})
            self.store.set_main(0, genesis)
            self.store.write_accounts(changes.items())
            self.store.set_meta("tip", genesis.hash)
        self.index[genesis.hash] = entry
        self.main = [genesis.hash]
        self.accounts.update(changes)

    # --- queries ----------------------------------------------------------------------------
    @property
    def tip(self) -> Entry:
        return self.index[self.main[-1]]

    @property
    def height(self) -> int:
        return len(self.main) - 1

    def get_account(self, address: str) -> Account:
        return self.accounts.get(address, EMPTY_ACCOUNT)

    def entry(self, block_hash: bytes) -> Entry | None:
        return self.index.get(block_hash)

    def has_block(self, block_hash: bytes) -> bool:
        return block_hash in self.index or block_hash in self.orphans

    def is_main(self, block_hash: bytes) -> bool:
        e = self.index.get(block_hash)
        return e is not None and e.height < len(self.main) and self.main[e.height] == block_hash

    def get_block(self, block_hash: bytes) -> Block | None:
        return self._stored(block_hash) if block_hash in self.index else None

    def block_at(self, height: int) -> Block | None:
        return self._stored(self.main[height]) if 0 <= height < len(self.main) else None

    def _stored(self, block_hash: bytes) -> Block:
        """A block of the tree: the store must hold it (a damaged file may have lost its row)."""
        block = self.store.get_block(block_hash)
        if block is None:
            raise StoreError(f"store {self.store.path}: block {block_hash.hex()} is missing: move it aside and resync")
        return block

    def blocks_range(self, start: int, limit: int, max_bytes: int = limits.CHAIN_BATCH_BYTES) -> list[Block]:
        """Best-chain blocks from height ``start``: at most ``limit``, and no more canonical bytes
        than ``max_bytes`` (at least one block)."""
        blocks: list[Block] = []
        size = 0
        for block_hash in self.main[max(start, 0) : max(start, 0) + max(limit, 0)]:
            block = self._stored(block_hash)
            if blocks and size + block.size > max_bytes:
                break
            blocks.append(block)
            size += block.size
        return blocks

    def find_tx(self, txid: bytes) -> Entry | None:
        """The best-chain block that confirms ``txid``, if any."""
        block_hash = self.store.find_tx(txid)
        return None if block_hash is None else self.index.get(block_hash)

    def address_history(self, address: str, offset: int, limit: int) -> list[tuple[Entry, Tx]]:
        """Best-chain transactions from or to ``address``, newest first, skipping ``offset``: each
        with the entry of the block that confirms it (the store's address index, up to
        ``addresses_indexed``: call ``index_addresses`` first to bring it to the tip)."""
        history: list[tuple[Entry, Tx]] = []
        blocks: dict[int, Block | None] = {}
        for height, pos in self.store.address_history(address, offset, limit):
            if height not in blocks:
                blocks[height] = self.block_at(height)
            block = blocks[height]
            if block is None or pos >= len(block.txs):
                raise StoreError(f"store {self.store.path}: address index names a missing transaction: resync")
            history.append((self.index[block.hash], block.txs[pos]))
        return history

    def address_tx_count(self, address: str) -> int:
        return self.store.address_tx_count(address)

    @property
    def addresses_indexed(self) -> int:
        """The height up to which the address index is complete (-1: nothing yet)."""
        return self.store.addrindex_height()

    def index_addresses(self, max_blocks: int = limits.ADDRINDEX_BATCH_BLOCKS) -> bool:
        """Add up to ``max_blocks`` best-chain blocks to the address index, in one store
        transaction; True if more remain. The index is filled behind the tip, off the block's
        own commit (p2pchain/explorer.py runs this when the chain moves); a reorg takes the
        abandoned blocks out of it in the reorg's own transaction (Store.unset_main)."""
        start = self.store.addrindex_height() + 1
        end = min(start + max_blocks, len(self.main))
        if start >= end:
            return False
        blocks = self.store.get_blocks(self.main[start:end])
        if len(blocks) != end - start:
            raise StoreError(f"store {self.store.path}: best-chain blocks {start}..{end - 1} are missing: resync")
        with self.store.transaction():
            self.store.index_addresses(zip(range(start, end), blocks, strict=True))
        return end < len(self.main)

    def next_bits(self, parent: Entry) -> int:
        """The ``bits`` a block on ``parent`` must carry (its template's target)."""
        return rules.required_bits(self.params, parent.header, parent.anchor_ms)

    def hash_rate(self, window: int = limits.HASH_RATE_WINDOW_BLOCKS) -> float:
        """Estimated network hash rate, hashes/s: the work of the last ``window`` best-chain
        blocks over the time their timestamps span (Bitcoin's getnetworkhashps); 0 if unknown."""
        tip = self.tip
        if tip.height < 2:
            return 0.0
        first = self.index[self.main[max(tip.height - window, 1)]]  # not genesis: its time is a constant
        span_ms = tip.timestamp - first.timestamp
        return (tip.work - first.work) * 1000 / span_ms if span_ms > 0 else 0.0

    def difficulty_status(self) -> dict[str, Any]:
        """The difficulty part of a node's status: the next block's target (hex), its difficulty
        in leading zero bits (a float), the estimated hash rate, and the network's block time
        (ms, 0 for a fixed difficulty) and half-life."""
        target = bits_to_target(self.next_bits(self.tip))
        return {
            "difficulty": round(difficulty_bits(target), 4),
            "target": f"{target:064x}",
            "hash_rate": round(self.hash_rate(), 1),
            "block_time_ms": self.params.block_time_ms,
            "half_life_ms": self.params.half_life_ms,
        }

    def median_time_past(self, entry: Entry) -> int:
        return rules.median_time_past(self._timestamps(entry))

    def _timestamps(self, entry: Entry) -> list[int]:
        """The timestamps of ``entry`` and its ancestors, newest first, MEDIAN_TIME_SPAN at most."""
        last = self._last
        if last is not None and last[0].hash == entry.hash:
            return last[1]
        return self._walk_timestamps(entry)

    def _walk_timestamps(self, entry: Entry) -> list[int]:
        """``_timestamps`` read from the index, walking back from ``entry``."""
        index = self.index
        stamps = [entry.timestamp]
        e = entry
        for _ in range(limits.MEDIAN_TIME_SPAN - 1):
            parent = index.get(e.prev_hash)
            if parent is None:
                break
            stamps.append(parent.timestamp)
            e = parent
        return stamps

    def _parent_context(self, parent: Entry) -> tuple[Header, list[int]]:
        """The header of ``parent`` and ``_timestamps(parent)``: the block added last holds both
        when a sync adds its child (one check of that cache, not one for each)."""
        last = self._last
        if last is not None and last[0].hash == parent.hash:
            return last
        return parent.header, self._walk_timestamps(parent)

    def locator(self, start: bytes | None = None) -> list[bytes]:
        """Bitcoin's block locator from ``start`` (default: our tip): the last 10 hashes, then
        doubling steps back along the best chain, always ending with genesis."""
        hashes: list[bytes] = []
        e = self.index.get(start) if start is not None else None
        while e is not None and not self.is_main(e.hash) and len(hashes) < 10:  # a side branch
            hashes.append(e.hash)
            e = self.index.get(e.prev_hash)
        height = self.height if e is None else e.height
        step = 1
        while height > 0 and len(hashes) < limits.MAX_LOCATOR_HASHES - 1:
            hashes.append(self.main[height])
            if len(hashes) >= 10:
                step *= 2
            height -= step
        hashes.append(self.main[0])
        return hashes

    def fork_point(self, locator: list[bytes]) -> int:
        """Height of the first locator hash on our best chain (0, genesis, if none is)."""
        for h in locator:
            if self.is_main(h):
                return self.index[h].height
        return 0

    def blocks_after(self, locator: list[bytes], max_blocks: int, max_bytes: int) -> tuple[list[Block], bool]:
        """Best-chain blocks after the locator's fork point: at most ``max_blocks`` and about
        ``max_bytes`` of canonical bytes; the flag says whether more follow."""
        start = self.fork_point(locator) + 1
        blocks = self.blocks_range(start, max_blocks, max_bytes)
        return blocks, start + len(blocks) <= self.height

    def subscribe(self, listener: ChainListener) -> None:
        self.listeners.append(listener)

    def unsubscribe(self, listener: ChainListener) -> None:
        self.listeners.remove(listener)

    # --- processing -------------------------------------------------------------------------
    def process_block(self, block: Block, now_ms: int, *, requested: bool = True) -> ProcessResult:
        """Validate and store ``block``; follow the most-work valid branch. Raises RuleError if the
        block is invalid (it is then never stored, and remembered if every block with its hash is
        invalid). A block that was not ``requested`` (gossip, not a sync answer) is stored only if
        its branch would have more work than the tip, as Bitcoin Core's AcceptBlock: otherwise it
        is IGNORED, its body not even checked, so side blocks nobody asked for cost no disk.
        ``on_validated``, if set, gets the seconds it took, unless the block was a duplicate."""
        if self.on_validated is None:
            return self._process_block(block, now_ms, requested)
        start = time.perf_counter()
        try:
            result = self._process_block(block, now_ms, requested)
        except RuleError:
            self.on_validated(time.perf_counter() - start, 1)
            raise
        if result.status is not Status.DUPLICATE:
            self.on_validated(time.perf_counter() - start, 1)
        return result

    def _process_block(self, block: Block, now_ms: int, requested: bool) -> ProcessResult:
        block_hash = block.hash
        if block_hash in self.invalid:
            raise RuleError(self.invalid[block_hash], "block was already found invalid")
        if block_hash in self.index or block_hash in self.orphans:
            return ProcessResult(Status.DUPLICATE)
        try:
            rules.check_header(block.header, self.params)
        except RuleError as e:
            if e.code in REMEMBERED_HEADER_FAILURES:
                self._remember_invalid(block_hash, e.code)
            raise
        parent = self.index.get(block.prev_hash)
        if not requested and parent is not None and not self._more_work(parent, block.header):
            return ProcessResult(Status.IGNORED)
        rules.check_body(block, self.params, verified=self.verified)  # never remembered: see above
        if parent is None:
            if block.prev_hash in self.invalid:
                self._remember_invalid(block_hash, RuleCode.INVALID_ANCESTOR)
                raise RuleError(RuleCode.INVALID_ANCESTOR, "block builds on an invalid block")
            self._add_orphan(block, requested)
            return ProcessResult(Status.ORPHAN)
        connected: list[Block] = []
        disconnected: list[Block] = []
        status = self._accept(block, parent, now_ms, connected, disconnected, requested)
        if self.orphans:  # (none: the usual case)
            self._connect_orphans(block_hash, now_ms, connected, disconnected)
        if self.side:
            self._prune_side()
        if connected or disconnected:
            connected, disconnected = self._net_change(connected, disconnected)
            held = self._untold
            if held is None:
                self._tell(connected, disconnected)
            else:
                held[0].extend(connected)
                held[1].extend(disconnected)
        return ProcessResult(status, connected, disconnected)

    def extend_run(self, blocks: Sequence[Block], start: int, end: int, now_ms: int) -> int:
        """``process_block(block, now_ms)`` of ``blocks[start:end]`` in turn, for as long as each is
        its plain case: a new block (not known, held as an orphan or remembered invalid) on the
        tip that passes every check, no orphan or side block held, the store queueing the writes
        (a sync's batch). The same rule functions run in the same order (``ledger.rules``: no
        rule is written twice) and leave the same entries, state and queued writes; listeners
        are told (or the news held by ``notifying_once``) and ``on_validated`` given the
        run's blocks (each with the run's mean). What is paid once a run, not once a
        block: the calls through process_block, ``_accept`` and ``_extend``, the store's
        queueing (``Store.extend_main_run``), the clock reads and results.

        Returns how many blocks it connected. It stops before the first block that is not that
        case, leaving everything as that block found it, so the caller hands it to
        ``process_block``, which decides it as it always does (checks it again and raises or
        files it): which blocks are refused, with what code, and what is remembered as invalid
        come from that one path. A run also stops where the store's batch is full
        (``Store.batch_room``), so commits fall where one block at a time would make them."""
        store = self.store
        if self.orphans or self.side or not store.queues_extend:
            return 0
        params = self.params
        index = self.index
        invalid = self.invalid
        verified = self.verified
        main = self.main
        get = self.get_account
        room_blocks, room_bytes = store.batch_room()
        parent = self.tip
        parent_header, stamps = self._parent_context(parent)
        run: list[Extension] = []
        connected: list[Block] = []
        size = 0
        began = time.perf_counter() if self.on_validated is not None else 0.0
        try:
            for i in range(start, end):
                block = blocks[i]
                block_hash = block.hash
                header = block.header
                if block_hash in invalid or block_hash in index or header.prev_hash != parent.hash:
                    break
                try:  # process_block's checks, in its order
                    rules.check_header(header, params)
                    rules.check_body(block, params, verified=verified)
                    mtp = rules.median_time_past(stamps)
                    rules.check_header_context(header, parent_header, mtp, now_ms, params, parent.anchor_ms)
                    changes = rules.connect_block(block, get, params)
                except RuleError:
                    break  # (before any change: process_block finds it again)
                entry = self._child(header, parent)
                undo = {address: get(address) for address in changes}
                run.append((block, entry.work, entry.seq, undo, len(main), changes))
                index[block_hash] = entry
                self._apply_accounts(changes)
                main.append(block_hash)
                connected.append(block)
                stamps = [header.timestamp, *stamps[: limits.MEDIAN_TIME_SPAN - 1]]
                parent, parent_header = entry, header
                size += block.size
                if len(run) >= room_blocks or size >= room_bytes:
                    break
        finally:  # what the memory holds is queued for the store and told, whatever stopped the run
            if run:
                self._last = (parent_header, stamps)
                try:
                    store.extend_main_run(run)
                finally:  # (a store that fails here leaves the run in memory: told, as one block at a time)
                    if self.on_validated is not None:
                        self.on_validated((time.perf_counter() - began) / len(run), len(run))
                    held = self._untold
                    if held is None:
                        self._tell(connected, [])
                    else:
                        held[0].extend(connected)
        return len(run)

    def _tell(self, connected: list[Block], disconnected: list[Block]) -> None:
        for listener in self.listeners:
            listener(connected, disconnected)

    @contextmanager
    def notifying_once(self) -> Iterator[None]:
        """Hold the listeners' news of the process_block calls inside, and tell them once, when
        it ends (by an exception too), the net change of them all: a sync's run of blocks makes
        one mempool update and one tip event, not one per block. The caller must not await
        inside: nothing else may see the chain ahead of its listeners."""
        if self._untold is not None:  # inside another: that one tells
            yield
            return
        held = self._untold = ([], [])
        try:
            yield
        finally:
            self._untold = None
            if held[0] or held[1]:
                self._tell(*self._net_change(*held))

    def would_ignore(self, header: Header) -> bool:
        """Whether ``process_block(requested=False)`` would ignore a block with this header with its
        body unchecked (its parent is known and its branch would not have more work than the
        tip). The header's own checks still run, as in process_block: a header without its proof
        of work is never ignored, so its sender pays for it instead of sending it for free."""
        if header.hash in self.index:
            return True
        parent = self.index.get(header.prev_hash)
        if parent is None or self._more_work(parent, header):
            return False
        try:
            rules.check_header(header, self.params)
        except RuleError:
            return False  # process_block refuses it with its code
        return True

    def _more_work(self, parent: Entry, header: Header) -> bool:
        return parent.work + self._work(header) > self.tip.work

    def _accept(
        self,
        block: Block,
        parent: Entry,
        now_ms: int,
        connected: list[Block],
        disconnected: list[Block],
        requested: bool,
    ) -> Status:
        header = block.header
        parent_header, stamps = self._parent_context(parent)
        try:
            rules.check_header_context(
                header, parent_header, rules.median_time_past(stamps), now_ms, self.params, parent.anchor_ms
            )
        except RuleError as e:
            if e.code is not RuleCode.TIME_TOO_NEW:  # it may become valid later
                self._remember_invalid(block.hash, e.code)
            raise
        entry = self._child(header, parent)
        if parent.hash == self.main[-1] and self._extend(entry, block, connected):  # on the tip: every block of a sync
            status = Status.CONNECTED
        elif entry.work <= self.tip.work:
            if not requested:
                return Status.IGNORED
            with self.store.transaction():
                self.store.put_block(block, entry.work, entry.seq)
            self.index[block.hash] = entry
            self._add_side(block.hash, block.size)
            status = Status.SIDE
        else:
            self._activate(entry, block, connected, disconnected)
            status = Status.CONNECTED if self.main[-1] == block.hash else Status.SIDE
        self._last = (header, [header.timestamp, *stamps[: limits.MEDIAN_TIME_SPAN - 1]])
        return status

    def _child(self, header: Header, parent: Entry) -> Entry:
        """The entry of a checked block on ``parent``, the next in arrival order."""
        return Entry(
            header,
            parent.work + self._work(header),
            self._next_seq(),
            parent.hash,
            rules.anchor_time(header, parent.anchor_ms),
        )

    def _work(self, header: Header) -> int:
        """``work(header.target)``, kept for the last ``bits`` seen: a chain's blocks share their
        bits for long runs (all of them at a fixed difficulty), and the 256-bit division and the
        target's decoding are done once a run, not once a block."""
        bits = header.bits
        last = self._last_work
        if last[0] != bits:
            last = self._last_work = (bits, work(header.target))
        return last[1]

    def _connect_orphans(
        self, parent_hash: bytes, now_ms: int, connected: list[Block], disconnected: list[Block]
    ) -> None:
        stack = [parent_hash]
        while stack:
            parent = self.index.get(stack.pop())
            if parent is None:
                continue
            children = [(b, asked) for b, asked in self.orphans.values() if b.prev_hash == parent.hash]
            for child, asked in children:
                del self.orphans[child.hash]
                self._orphan_bytes -= child.size
                if parent.hash not in self.index:  # a sibling's failed reorg found the parent invalid
                    self._remember_invalid(child.hash, RuleCode.INVALID_ANCESTOR)
                    continue
                try:
                    if self._accept(child, parent, now_ms, connected, disconnected, asked) is Status.IGNORED:
                        continue
                except RuleError as e:
                    log.info("orphan %s rejected once its parent arrived: %s", child.hash.hex()[:16], e)
                    continue
                stack.append(child.hash)

    def _net_change(self, connected: list[Block], disconnected: list[Block]) -> tuple[list[Block], list[Block]]:
        """The net change of one call, which may switch branches more than once (orphans that
        complete two sibling branches): blocks on the best chain now that were not before, in
        height order, and blocks that were on it before and are not now, tip first."""
        if not disconnected:  # the usual case: blocks added on top of the tip, already in order
            return connected, disconnected
        added = {b.hash for b in connected}
        now = {b.hash: b for b in connected if self.is_main(b.hash)}
        gone = {b.hash: b for b in disconnected if b.hash not in added}  # were best before this call
        return sorted(now.values(), key=lambda b: b.height), sorted(gone.values(), key=lambda b: -b.height)

    def _add_orphan(self, block: Block, requested: bool) -> None:
        """Keep ``block`` until its parent comes. Past the count or byte bound a random other
        orphan goes (Bitcoin Core's orphan pools do the same): evicting the oldest let 256 junk
        orphans push out every honest one for certain; at random an honest orphan outlives them
        about a third of the time, and one that goes is fetched again by the sync it started."""
        self.orphans[block.hash] = (block, requested)
        self._orphan_bytes += block.size
        while len(self.orphans) > limits.ORPHAN_POOL_MAX or self._orphan_bytes > limits.ORPHAN_POOL_MAX_BYTES:
            others = [h for h in self.orphans if h != block.hash]
            if not others:
                break
            self._orphan_bytes -= self.orphans.pop(self.rng.choice(others))[0].size

    # --- side blocks ------------------------------------------------------------------------
    def _add_side(self, block_hash: bytes, size: int) -> None:
        self.side[block_hash] = size
        self._side_bytes += size

    def _drop_side(self, block_hash: bytes) -> None:
        size = self.side.pop(block_hash, None)
        if size is not None:
            self._side_bytes -= size

    def _prune_side(self) -> None:
        """Bound the stored blocks off the best chain. A side branch goes when its highest block
        is more than SIDE_KEEP_DEPTH below the tip and nothing was added to it while the last
        SIDE_KEEP_DEPTH blocks arrived: it would need that much more work to matter (a sync
        fetches it again if it ever does), and it is not a branch a sync is still fetching. Past
        SIDE_BLOCKS_MAX blocks or SIDE_BLOCKS_MAX_BYTES bytes, the branches extended longest ago
        go first. A block always goes with its descendants, so every stored block still reaches
        the best chain."""
        if not self.side:
            return
        floor = self.height - limits.SIDE_KEEP_DEPTH
        over = len(self.side) > limits.SIDE_BLOCKS_MAX or self._side_bytes > limits.SIDE_BLOCKS_MAX_BYTES
        height = {h: self.index[h].height for h in self.side}
        if not over and min(height.values()) >= floor:
            return
        top = dict(height)  # the highest side block at or above each one
        newest = {h: self.index[h].seq for h in self.side}  # the latest arrival at or above it
        for h in sorted(self.side, key=height.__getitem__, reverse=True):
            parent = self.index[h].prev_hash
            if parent in top:
                top[parent] = max(top[parent], top[h])
                newest[parent] = max(newest[parent], newest[h])
        stale = self._seq - limits.SIDE_KEEP_DEPTH
        doomed = [h for h in self.side if top[h] < floor and newest[h] < stale]  # closed under descendants
        count = len(self.side) - len(doomed)
        size = self._side_bytes - sum(self.side[h] for h in doomed)
        gone = set(doomed)
        # (newest, -height) puts every block after its descendants: any prefix is a closed set
        for h in sorted((h for h in self.side if h not in gone), key=lambda h: (newest[h], -height[h])):
            if count <= limits.SIDE_BLOCKS_MAX and size <= limits.SIDE_BLOCKS_MAX_BYTES:
                break
            doomed.append(h)
            count -= 1
            size -= self.side[h]
        if not doomed:
            return
        with self.store.transaction():
            self.store.delete_blocks(doomed)
        for h in doomed:
            self._drop_side(h)
            del self.index[h]
        log.info("pruned %d side block(s); %d kept (%d bytes)", len(doomed), len(self.side), self._side_bytes)

    def _remember_invalid(self, block_hash: bytes, code: RuleCode) -> None:
        self.invalid[block_hash] = code
        while len(self.invalid) > limits.MAX_INVALID_REMEMBERED:
            self.invalid.popitem(last=False)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # --- fork choice ------------------------------------------------------------------------
    def _branch_to(self, block: Block) -> tuple[list[Block], int]:
        """The blocks from the best chain's fork point up to ``block`` (in height order), and the
        fork height. Every block but ``block`` itself is already stored."""
        branch = [block]
        e = self.index.get(block.prev_hash)
        while e is not None and not self.is_main(e.hash):
            branch.append(self._stored(e.hash))
            e = self.index.get(e.prev_hash)
        if e is None:
            raise StoreError(f"store {self.store.path}: a branch does not reach the best chain: move it aside")
        branch.reverse()
        return branch, e.height

    def _extend(self, entry: Entry, block: Block, connected: list[Block]) -> bool:
        """``_activate`` for a block on the tip (every block of a sync): the same writes and the
        same state, without a branch to walk or blocks to disconnect. False if the block breaks
        a state rule: ``_activate`` then finds that again and forgets the block as invalid."""
        get = self.get_account
        try:
            changes = rules.connect_block(block, get, self.params)
        except RuleError:
            return False
        undo = {address: get(address) for address in changes}
        self.store.extend_main(block, entry.work, entry.seq, undo, len(self.main), changes)
        self.index[block.hash] = entry
        self._apply_accounts(changes)
        self.main.append(block.hash)
        if self.side:
            self._drop_side(block.hash)
        connected.append(block)
        return True

    def _apply_accounts(self, changes: dict[str, Account]) -> None:
        """Set the cached accounts to what a written change made them (an empty one is dropped)."""
        accounts = self.accounts
        for address, acct in changes.items():
            if acct == EMPTY_ACCOUNT:
                accounts.pop(address, None)
            else:
                accounts[address] = acct

    def _activate(self, entry: Entry, block: Block, connected: list[Block], disconnected: list[Block]) -> None:
        """Make the branch ending at ``entry`` (whose ``block`` is not stored yet) the best chain, in
        one store transaction. If a block on it breaks a state rule, that block and its descendants
        are forgotten as invalid, the best chain stays as it was, and the RuleError is raised. (The
        valid part of such a branch never has more work than our tip: its blocks were stored as a
        side branch because they had no more, and the tip's work only grows.)"""
        branch, fork_height = self._branch_to(block)
        old = [self._stored(h) for h in self.main[:fork_height:-1]]  # to disconnect, tip first
        overlay: dict[str, Account] = {}
        for gone in old:
            overlay.update(self.store.get_undo(gone.hash))

        def view(address: str) -> Account:
            return overlay.get(address) or self.accounts.get(address, EMPTY_ACCOUNT)

        applied: list[tuple[Block, dict[str, Account]]] = []
        failure: RuleError | None = None
        for new in branch:
            try:
                changes = rules.connect_block(new, view, self.params)
            except RuleError as err:
                failure = err
                break
            applied.append((new, {a: view(a) for a in changes}))
            overlay.update(changes)

        if failure is not None:
            bad = branch[len(applied)]
            log.warning("block %s at height %d breaks a state rule: %s", bad.hash.hex()[:16], bad.height, failure)
            doomed = self._forget_invalid(bad, failure.code)
            if bad is not block:  # ``block`` is not in the tree yet, so _forget_invalid missed it
                self._remember_invalid(block.hash, RuleCode.INVALID_ANCESTOR)
            with self.store.transaction():
                self.store.delete_blocks(doomed)
            raise failure

        with self.store.transaction():
            self.store.put_block(block, entry.work, entry.seq, applied[-1][1])  # ``block`` ends the branch
            for height, gone in zip(range(len(self.main) - 1, fork_height, -1), old, strict=True):
                self.store.unset_main(height, gone)
            for height, (new, undo) in enumerate(applied, start=fork_height + 1):
                if new is not block:  # stored before as a side block: its undo data is new
                    self.store.set_undo(new.hash, undo)
                self.store.set_main(height, new)
            self.store.write_accounts(overlay.items())
            self.store.set_meta("tip", applied[-1][0].hash)
        self.index[block.hash] = entry
        self._apply_accounts(overlay)
        del self.main[fork_height + 1 :]
        self.main.extend(new.hash for new, _ in applied)
        for new, _ in applied:
            self._drop_side(new.hash)
        for gone in old:
            self._add_side(gone.hash, gone.size)
        disconnected.extend(old)
        connected.extend(new for new, _ in applied)
        if old:
            log.info(
                "reorg: %d block(s) disconnected, %d connected, fork at height %d, new tip %s at height %d",
                len(old),
                len(applied),
                fork_height,
                self.tip.hash.hex()[:16],
                self.height,
            )

    def _forget_invalid(self, bad: Block, code: RuleCode) -> list[bytes]:
        """Remember ``bad`` and its known descendants as invalid and drop them from the tree;
        returns their hashes (for the store to delete). ``bad`` is off the best chain, so its
        descendants are side blocks: only those (bounded by SIDE_BLOCKS_MAX) are scanned, not
        the whole index (at 100,000 blocks that sort took 0.3 s per invalid block, issue 11)."""
        self._remember_invalid(bad.hash, code)
        doomed = [bad.hash]
        wanted = {bad.hash}
        for h in sorted(self.side, key=lambda h: self.index[h].height):
            e = self.index[h]
            if e.prev_hash in wanted:
                wanted.add(h)
                doomed.append(h)
                self._remember_invalid(h, RuleCode.INVALID_ANCESTOR)
        for h in doomed:
            self.index.pop(h, None)
            self._drop_side(h)
        return doomed
