"""Transaction and block relay between version 2 peers (docs/protocol.md section 7): what each
peer announced and was announced, which transactions we asked of whom, and compact blocks (the
spirit of Bitcoin Core's txrequest.cpp and blockencodings.cpp, BIP152).

The one owner of that state. It is pure: no sockets, no clock (callers pass ``now``, a
monotonic time in seconds), no store. node.py sends what the methods return and feeds them what
arrives; a peer is any hashable object (node.py passes its Peer objects). A method raises
``Misbehaving`` when what a peer sent breaks the relay protocol.

Transactions: a peer with the "inv-tx" feature gets each transaction we accept announced once
by txid (INV_TX), never sent in full unless it asks (GET_TXS, answered by one TXS). We ask one
announcer at a time for what we lack; a request unanswered for RELAY_TX_REQUEST_TIMEOUT_S, or
answered without the transaction, moves to the next announcer.

Blocks: a peer with the "cmpct-block" feature gets each new block as CMPCT_BLOCK (header,
6-byte short ids keyed by the block hash and a nonce of the sender's, the coinbase in full). The
receiver rebuilds it from its mempool and the extra pool below, asks the sender for what is
missing by index (GET_BLOCK_TXN/BLOCK_TXN) in one round trip, and when the rebuilt block's
merkle root is wrong (a short-id collision) asks for every transaction: a sender whose own
transactions do not make the block has lied.
"""

from __future__ import annotations

import itertools
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import field
from typing import Any, Generic, TypeVar

from p2pchain import limits, wire
from p2pchain.digests import blake2b
from p2pchain.ledger.block import Block, Header
from p2pchain.ledger.tx import Tx
from p2pchain.mempool import RecentSet
from p2pchain.peer import Misbehaving
from p2pchain.record import record

FEATURE_INV_TX = "inv-tx"  # transactions announced by txid and fetched (INV_TX, GET_TXS, TXS)
FEATURE_CMPCT = "cmpct-block"  # blocks as compact blocks (CMPCT_BLOCK, GET_BLOCK_TXN, BLOCK_TXN)
# with cmpct-block: new blocks pushed at once only to peers that asked (SEND_CMPCT), announced to
# the others (INV_BLOCK) and fetched by whoever lacks them (GET_CMPCT)
FEATURE_HB = "cmpct-hb"
FEATURES = (FEATURE_INV_TX, FEATURE_CMPCT, FEATURE_HB)
RELAY_VERSION = 2  # the first protocol version whose HELLO carries ``relay``

P = TypeVar("P", bound=Hashable)
# INV_BLOCK of one hash as p2pchain encodes it: these bytes, then the hash (Relay.known_inv)
_INV_BLOCK_HEAD = wire.InvBlock((bytes(32),)).payload()[:-32]


def negotiate(ours: Iterable[str], version: int, theirs: Iterable[str]) -> frozenset[str]:
    """The features both sides speak: none with a version 1 peer, whatever its HELLO holds, and
    cmpct-hb only with cmpct-block."""
    if version < RELAY_VERSION:
        return frozenset()
    both = frozenset(ours) & frozenset(theirs)
    return both if FEATURE_CMPCT in both else both - {FEATURE_HB}  # cmpct-hb announces compact blocks


# --- short ids --------------------------------------------------------------------------------
def short_id_key(block_hash: bytes, nonce: int) -> bytes:
    """The BLAKE2b key of a compact block's short ids: its hash (which nobody knows before the
    block is mined, so collisions cannot be ground in advance) and the sender's nonce (so that
    one unlucky collision does not hit every link)."""
    return block_hash + nonce.to_bytes(8, "big")


def short_ids(key: bytes, txids: Iterable[bytes]) -> Iterator[bytes]:
    """BLAKE2b(txid, key=key, digest_size=SHORT_ID_BYTES) of each txid."""
    base = blake2b(key=key, digest_size=limits.SHORT_ID_BYTES)
    for txid in txids:
        h = base.copy()
        h.update(txid)
        yield h.digest()


def compact_block(block: Block, nonce: int, prefill: Iterable[int] = ()) -> wire.CmpctBlock:
    """``block`` as CMPCT_BLOCK: the coinbase (no mempool holds it) and the transactions at
    ``prefill`` sent whole, a short id for every other transaction."""
    if len(block.txs) == 1:  # a coinbase-only block: no short id, nothing to key
        return wire.CmpctBlock(block.header, nonce, (), ((0, block.txs[0]),))
    whole = sorted({0, *(i for i in prefill if 0 < i < len(block.txs))})
    key = short_id_key(block.hash, nonce)
    taken = set(whole)
    ids = tuple(short_ids(key, (tx.txid for i, tx in enumerate(block.txs) if i not in taken)))
    return wire.CmpctBlock(block.header, nonce, ids, tuple((i, block.txs[i]) for i in whole))


def whole_block(msg: wire.CmpctBlock) -> Block | None:
    """The block of a compact block that carries every transaction whole (no short ids: a
    coinbase-only block, most often) when its prefilled indexes are 0, 1, 2...: the block
    PartialBlock would rebuild, without its slots, candidates and short-id lookups. None for any
    other shape (PartialBlock then says what is wrong, or what to ask for). Raises Misbehaving when
    those transactions do not make the header's merkle root: nothing is left to ask the sender
    for, so its own transactions contradict its header (as a full BLOCK_TXN answer that does not
    make the block)."""
    if msg.short_ids or not 0 < len(msg.prefilled) <= limits.MAX_BLOCK_TXS:
        return None
    for position, (i, _) in enumerate(msg.prefilled):
        if i != position:
            return None
    block = Block(msg.header, tuple(tx for _, tx in msg.prefilled))
    if block.computed_merkle_root() != msg.header.merkle_root:
        raise Misbehaving(f"compact block {block.hash.hex()[:16]}: its own transactions do not match its merkle root")
    return block


class PartialBlock:
    """A compact block being rebuilt: one slot per transaction, filled from the prefilled
    transactions, then from candidates whose short id matches, then from BLOCK_TXN."""

    def __init__(self, msg: wire.CmpctBlock) -> None:
        total = len(msg.short_ids) + len(msg.prefilled)
        if total > limits.MAX_BLOCK_TXS:
            raise Misbehaving(f"compact block of {total} transactions, over {limits.MAX_BLOCK_TXS}")
        indexes = [i for i, _ in msg.prefilled]
        if not indexes or indexes[0] != 0:
            raise Misbehaving("compact block without its coinbase prefilled")
        if any(b <= a for a, b in itertools.pairwise(indexes)) or indexes[-1] >= total:
            raise Misbehaving("compact block prefilled indexes not increasing within the block")
        self.header: Header = msg.header
        self.slots: list[Tx | None] = [None] * total
        for i, tx in msg.prefilled:
            self.slots[i] = tx
        self.prefilled = frozenset(indexes)
        self._key = short_id_key(msg.header.hash, msg.nonce)
        open_slots = [i for i in range(total) if i not in self.prefilled]
        self._wanted: dict[bytes, int] = {}
        clashing: set[bytes] = set()
        for i, sid in zip(open_slots, msg.short_ids, strict=True):
            if sid in self._wanted:
                clashing.add(sid)  # two of the block's own txs share an id: both asked for
            self._wanted[sid] = i
        for sid in clashing:
            del self._wanted[sid]

    @property
    def hash(self) -> bytes:
        return self.header.hash

    def fill_from(self, candidates: Iterable[Tx]) -> None:
        """Put each candidate whose short id a slot wants there; a slot two different
        candidates match stays empty (asked for)."""
        wanted, slots = self._wanted, self.slots
        if not wanted:
            return
        ambiguous: set[int] = set()
        pool = list(candidates)
        for tx, sid in zip(pool, short_ids(self._key, (tx.txid for tx in pool)), strict=True):
            i = wanted.get(sid)
            if i is None:
                continue
            held = slots[i]
            if held is None:
                slots[i] = tx
            elif held.txid != tx.txid:
                ambiguous.add(i)
        for i in ambiguous:
            slots[i] = None

    def missing(self) -> tuple[int, ...]:
        return tuple(i for i, tx in enumerate(self.slots) if tx is None)

    def all_open(self) -> tuple[int, ...]:
        """Every index not prefilled: what a full fallback asks for."""
        return tuple(i for i in range(len(self.slots)) if i not in self.prefilled)

    def put(self, indexes: tuple[int, ...], txs: tuple[Tx, ...]) -> None:
        for i, tx in zip(indexes, txs, strict=True):
            self.slots[i] = tx

    def block(self) -> Block | None:
        """The rebuilt block if every slot is filled and the merkle root matches, else None."""
        if any(tx is None for tx in self.slots):
            return None
        block = Block(self.header, tuple(tx for tx in self.slots if tx is not None))
        return block if block.computed_merkle_root() == self.header.merkle_root else None


# --- the extra pool -------------------------------------------------------------------------
class ExtraPool:
    """Transactions that are not in the mempool but may be in the next blocks (refused for a
    nonce gap, a full pool or missing funds; the losers of a nonce conflict), for rebuilding
    compact blocks; and, by sender and nonce, the successor to retry once its predecessor is
    pooled. The oldest go first past ``max_txs``."""

    def __init__(self, max_txs: int = limits.RELAY_EXTRA_TXS_MAX) -> None:
        self.max_txs = max_txs
        self._txs: OrderedDict[bytes, Tx] = OrderedDict()
        self._by_slot: dict[tuple[str, int], bytes] = {}

    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, txid: object) -> bool:
        return txid in self._txs

    def __iter__(self) -> Iterator[Tx]:
        return iter(list(self._txs.values()))

    def add(self, tx: Tx) -> None:
        if tx.txid in self._txs:
            return
        self._txs[tx.txid] = tx
        self._by_slot[(tx.sender, tx.nonce)] = tx.txid
        while len(self._txs) > self.max_txs:
            self._forget(self._txs.popitem(last=False)[1])

    def _forget(self, tx: Tx) -> None:
        if self._by_slot.get((tx.sender, tx.nonce)) == tx.txid:
            del self._by_slot[(tx.sender, tx.nonce)]

    def pop_successor(self, tx: Tx) -> Tx | None:
        """The transaction of ``tx``'s sender with the next nonce, taken out of the pool."""
        txid = self._by_slot.pop((tx.sender, tx.nonce + 1), None)
        return self._txs.pop(txid) if txid is not None else None


# --- per-peer and per-request state ---------------------------------------------------------
@record(frozen=False, eq=False)
class _Peer:
    features: frozenset[str]
    known_txs: RecentSet = field(default_factory=lambda: RecentSet(limits.RELAY_KNOWN_TXIDS_MAX))
    known_blocks: RecentSet = field(default_factory=lambda: RecentSet(limits.RELAY_KNOWN_BLOCKS_MAX))
    to_announce: dict[bytes, None] = field(default_factory=dict)  # (an ordered set) for the next INV_TX
    # txids we announced to it and have not sent it since (an ordered set, oldest first): all a
    # GET_TXS of it is answered with, each once (Bitcoin Core answers only what it announced)
    offered: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    announced: set[bytes] = field(default_factory=set)  # txids it announced that we still want
    requests: deque[frozenset[bytes]] = field(default_factory=deque)  # GET_TXS not yet answered, oldest first
    in_flight: int = 0  # txids in ``requests``
    block_requests: OrderedDict[bytes, tuple[int, ...]] = field(default_factory=OrderedDict)  # hash -> indexes
    # hashes we sent it GET_CMPCT for and it has not answered (an ordered set, oldest first): a late
    # empty BLOCK_TXN ("no such block") for one, after we moved on or gave up, is no breach
    cmpct_asked: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    outbound: bool = False  # we dialled it: the start-up choice of high-bandwidth peers, and one is kept
    block_wants: int = 0  # announced blocks we are fetching because it announced them first


@record(frozen=False, eq=False)
class _Want(Generic[P]):
    """A transaction (INV_TX) or block (INV_BLOCK) announced to us that we lack."""

    announcers: deque[P]  # not yet asked, in the order they announced it
    asked: P | None = None
    deadline: float = 0.0
    first: P | None = None  # a block's first announcer: the want takes one of its RELAY_MAX_PEER_BLOCK_WANTS
    asked_at: float = 0.0  # when ``asked`` was asked (a block's: RELAY_BLOCK_WAIT_MAX_S)


@record(frozen=False, eq=False)
class _PendingBlock(Generic[P]):
    """A compact block waiting for its BLOCK_TXN."""

    source: P
    partial: PartialBlock
    asked: tuple[int, ...]
    full: bool  # the request asks for every transaction: a wrong answer is a lie
    deadline: float
    others: deque[tuple[P, wire.CmpctBlock]] = field(default_factory=deque)  # other senders of the block
    asked_at: float = 0.0  # when ``source`` was asked (RELAY_BLOCK_WAIT_MAX_S)


@record(frozen=False)
class RelayStats:
    txs_announced: int = 0  # txids sent in INV_TX
    txs_requested: int = 0  # txids asked for in GET_TXS
    txs_not_found: int = 0  # asked and left out of the TXS
    txs_served: int = 0  # txids a peer asked us for that we had announced to it (answered if still pooled)
    tx_request_timeouts: int = 0
    announcements_ignored: int = 0  # over RELAY_MAX_PEER_ANNOUNCED
    cmpct_received: int = 0  # compact blocks of new blocks
    cmpct_rebuilt: int = 0  # rebuilt from the mempool and extra pool alone
    cmpct_roundtrip: int = 0  # needed a GET_BLOCK_TXN
    cmpct_full_fallback: int = 0  # a merkle mismatch: every transaction asked for
    cmpct_failed: int = 0  # given up (the sender had no block, timeouts)
    blocks_announced: int = 0  # block hashes sent in INV_BLOCK
    blocks_fetched: int = 0  # GET_CMPCT sent for an announced block we lacked
    block_fetch_timeouts: int = 0  # a GET_CMPCT unanswered in time: asked the next announcer
    block_announcements_ignored: int = 0  # over the announcer's RELAY_MAX_PEER_BLOCK_WANTS
    hb_selected: int = 0  # SEND_CMPCT high_bandwidth=true sent


Requests = dict[P, list[bytes]]  # peer -> txids to ask it for (GET_TXS), or to announce (INV_TX)


# (compact, full, announce): the peers sent CMPCT_BLOCK now, those sent NEW_BLOCK now, and whether
# some get it in the next INV_BLOCK instead. A plain tuple: a typing.NamedTuple class here compiles
# its annotations (strings in this module) at import, and a process's first compile() costs a
# node's start ~9 M instructions (ledger.rules.Account)
BlockTargets = tuple[list[P], list[P], bool]


class Relay(Generic[P]):
    def __init__(self, features: Iterable[str] = FEATURES, *, rng: random.Random | None = None) -> None:
        self.features = frozenset(features)  # what we offer in HELLO
        self.extra = ExtraPool()
        self.confirmed = RecentSet(limits.SEEN_CACHE_MAX)  # txids of recently connected blocks
        # txids delivered whole (NEW_TX, TXS): being checked (the signature batcher), pooled or refused;
        # an announcement of one is not a reason to fetch it again
        self.delivered = RecentSet(limits.SEEN_CACHE_MAX)
        self.stats = RelayStats()
        self._peers: dict[P, _Peer] = {}
        self._wants: dict[bytes, _Want[P]] = {}
        # wanted while every announcer's requests are full (an ordered set): asked when one answers
        self._waiting: dict[bytes, None] = {}
        self._pending: OrderedDict[bytes, _PendingBlock[P]] = OrderedDict()
        self._recent_blocks: OrderedDict[bytes, Block] = OrderedDict()
        self._recent_heads: OrderedDict[bytes, bytes] = OrderedDict()  # their wire.cmpct_head -> hash
        self._head_lengths: dict[int, int] = {}  # the lengths of those heads (a few) -> how many have each
        self._recent_invs: OrderedDict[bytes, bytes] = OrderedDict()  # their INV_BLOCK payload -> hash
        # block hash -> indexes we had to fetch to rebuild it: our peers likely lack them too, so
        # our compact block of it sends them whole (BIP152's "transactions the sender guesses the
        # receiver lacks")
        self._fetched: OrderedDict[bytes, tuple[int, ...]] = OrderedDict()
        self._hb: list[P] = []  # peers we asked to push new blocks at once, the least recently useful first
        self._block_wants: OrderedDict[bytes, _Want[P]] = OrderedDict()
        self._to_announce: bytes | None = None  # the newest block for the next INV_BLOCKs
        self._told_inbound: bytes | None = None  # what this round's first part announced
        # (an ordered set) peers that get each new block at once: those without cmpct-hb and
        # those that asked (SEND_CMPCT); every other peer speaks cmpct-hb (counted)
        self._at_once: dict[P, None] = {}
        self._hb_peers = 0
        self._rng = rng or random.Random()

    # --- peers ------------------------------------------------------------------------------
    def add_peer(self, peer: P, version: int, theirs: Iterable[str], *, outbound: bool = False) -> frozenset[str]:
        """A handshaken peer (clients too: they get NEW_BLOCK) and the features used with it."""
        features = negotiate(self.features, version, theirs)
        self._peers[peer] = _Peer(features, outbound=outbound)
        if FEATURE_HB in features:
            self._hb_peers += 1
        else:
            self._at_once[peer] = None
        return features

    def speaks(self, peer: P, feature: str) -> bool:
        state = self._peers.get(peer)
        return state is not None and feature in state.features

    def remove_peer(self, peer: P, now: float) -> Requests[P]:
        """Forget ``peer``; what we had asked of it goes to the next announcers (returned); the
        compact blocks it was to complete move on at the next ``expire``."""
        state = self._peers.pop(peer, None)
        if state is None:
            return {}
        self._at_once.pop(peer, None)
        self._hb_peers -= FEATURE_HB in state.features
        if peer in self._hb:
            self._hb.remove(peer)
        for block_want in self._block_wants.values():
            if peer in block_want.announcers:
                block_want.announcers.remove(peer)
            if block_want.asked == peer:
                block_want.deadline = now  # the next expire() asks the next announcer
        out: Requests[P] = {}
        for txid in state.announced | {t for batch in state.requests for t in batch}:
            want = self._wants.get(txid)
            if want is None:
                continue
            if peer in want.announcers:
                want.announcers.remove(peer)
            if want.asked == peer:
                want.asked = None
            self._assign(txid, want, now, out)
        for pending in self._pending.values():
            pending.others = deque((p, m) for p, m in pending.others if p != peer)
            if pending.source == peer:
                pending.deadline = now  # the next expire() asks another sender
        return out

    # --- announcing -------------------------------------------------------------------------
    def announce(self, txid: bytes, exclude: P | None = None) -> bool:
        """Queue ``txid`` for every inv-tx peer that does not know it (take_announcements
        sends); ``exclude``, the peer it came from, knows it. True if any peer was queued it."""
        if exclude is not None:
            self.mark_known(exclude, txid)
        queued = False
        for state in self._peers.values():
            if FEATURE_INV_TX in state.features and txid not in state.known_txs:
                state.known_txs.add(txid)
                state.to_announce[txid] = None
                queued = True
        return queued

    def announce_to(self, peer: P, txids: Iterable[bytes]) -> None:
        state = self._peers.get(peer)
        if state is None or FEATURE_INV_TX not in state.features:
            return
        for txid in txids:
            if txid not in state.known_txs:
                state.known_txs.add(txid)
                state.to_announce[txid] = None

    def take_announcements(self) -> dict[P, list[tuple[bytes, ...]]]:
        """Peer -> INV_TX batches (at most MAX_INV_TXIDS txids each) queued since the last call."""
        out: dict[P, list[tuple[bytes, ...]]] = {}
        step = limits.MAX_INV_TXIDS
        for peer, state in self._peers.items():
            if state.to_announce:
                queued, state.to_announce = list(state.to_announce), {}
                out[peer] = [tuple(queued[i : i + step]) for i in range(0, len(queued), step)]
                self.stats.txs_announced += len(queued)
                offered = state.offered
                offered.update(dict.fromkeys(queued))
                while len(offered) > limits.RELAY_OFFERED_TXIDS_MAX:
                    offered.popitem(last=False)
        return out

    def to_serve(self, peer: P, txids: Iterable[bytes]) -> list[bytes]:
        """Of the txids ``peer`` asks for (GET_TXS), those we announced to it and have not
        sent it since, each taken off that list: so what its GET_TXS buy is at most one copy of
        each transaction we offered it, never the same one again and again (the amplification a
        1,000-id GET_TXS repeated would give), nor one we never offered."""
        state = self._peers.get(peer)
        if state is None or FEATURE_INV_TX not in state.features:
            raise Misbehaving("sent GET_TXS without the inv-tx feature")
        offered = state.offered
        served: list[bytes] = []
        for txid in txids:
            if txid in offered:
                del offered[txid]
                served.append(txid)
        self.stats.txs_served += len(served)
        return served

    def mark_known(self, peer: P, txid: bytes) -> None:
        """``peer`` has ``txid`` (it sent it or asked for it): never announce it there. Only
        for an inv-tx peer: nothing is announced to the others (a wallet's SUBMIT_TX, a version
        1 node's NEW_TX), so their known set would be a per-transaction cost and memory for nothing."""
        state = self._peers.get(peer)
        if state is not None and FEATURE_INV_TX in state.features:
            state.known_txs.add(txid)

    def delivered_by(self, peer: P, txid: bytes) -> None:
        """``peer`` sent us ``txid`` whole: it knows it, and we need not fetch it again."""
        self.mark_known(peer, txid)
        self.delivered.add(txid)
        self._drop_want(txid)

    # --- requesting -------------------------------------------------------------------------
    def on_inv(self, peer: P, txids: Iterable[bytes], have: Callable[[bytes], bool], now: float) -> Requests[P]:
        """``peer`` announced ``txids``: the GET_TXS to send now (to it, or nothing when another
        announcer is being asked already). Announcements past RELAY_MAX_PEER_ANNOUNCED are
        ignored (Bitcoin Core's reaction)."""
        state = self._peers.get(peer)
        if state is None or FEATURE_INV_TX not in state.features:
            raise Misbehaving("sent INV_TX without the inv-tx feature")
        out: Requests[P] = {}
        for txid in txids:
            state.known_txs.add(txid)
            state.to_announce.pop(txid, None)  # it announced first: ours would cross it on the wire
            if txid in state.announced or have(txid) or self._seen(txid):
                continue
            if len(state.announced) >= limits.RELAY_MAX_PEER_ANNOUNCED:
                self.stats.announcements_ignored += 1
                continue
            state.announced.add(txid)
            want = self._wants.get(txid)
            if want is None:
                want = self._wants[txid] = _Want(deque())
            want.announcers.append(peer)
            if want.asked is None:
                self._assign(txid, want, now, out)
        return out

    def _seen(self, txid: bytes) -> bool:
        return txid in self.delivered or txid in self.extra or txid in self.confirmed

    def _assign(self, txid: bytes, want: _Want[P], now: float, out: Requests[P]) -> None:
        """Ask the first announcer with room in flight; forget ``txid`` when none is left."""
        skipped: list[P] = []
        while want.announcers:
            peer = want.announcers.popleft()
            state = self._peers.get(peer)
            if state is None:
                continue
            if state.in_flight + len(out.get(peer, ())) >= limits.RELAY_MAX_PEER_IN_FLIGHT:
                skipped.append(peer)  # full: may be asked later (expire)
                continue
            want.asked = peer
            want.deadline = now + limits.RELAY_TX_REQUEST_TIMEOUT_S
            out.setdefault(peer, []).append(txid)
            want.announcers.extendleft(reversed(skipped))
            self._waiting.pop(txid, None)
            return
        want.announcers.extend(skipped)
        want.asked = None
        if skipped:
            self._waiting[txid] = None
        else:
            self._drop_want(txid)

    def _drop_want(self, txid: bytes) -> None:
        self._waiting.pop(txid, None)
        want = self._wants.pop(txid, None)
        if want is None:
            return
        for peer in (*want.announcers, *([want.asked] if want.asked is not None else [])):
            state = self._peers.get(peer)
            if state is not None:
                state.announced.discard(txid)

    def requested(self, peer: P, txids: list[bytes]) -> None:
        """``peer`` was sent GET_TXS for ``txids`` (node.py calls this as it sends)."""
        state = self._peers[peer]
        state.requests.append(frozenset(txids))
        state.in_flight += len(txids)
        self.stats.txs_requested += len(txids)

    def on_txs(self, peer: P, txs: tuple[Tx, ...], now: float) -> Requests[P]:
        """``peer`` answered its oldest GET_TXS: the requests to send for what it did not have.
        Raises Misbehaving for a TXS nobody asked for or a transaction not asked for."""
        state = self._peers.get(peer)
        if state is None or not state.requests:
            raise Misbehaving("sent TXS nobody asked for")
        batch = state.requests.popleft()
        state.in_flight -= len(batch)
        got = {tx.txid for tx in txs}
        if not got <= batch:
            raise Misbehaving("sent a transaction in TXS that was not asked for")
        out: Requests[P] = {}
        for txid in batch:
            state.known_txs.add(txid)
            state.announced.discard(txid)
            want = self._wants.get(txid)
            if txid in got:
                self._drop_want(txid)
            elif want is not None and want.asked == peer:
                self.stats.txs_not_found += 1
                self._assign(txid, want, now, out)
        for txid in list(self._waiting):  # room in flight again
            self._assign(txid, self._wants[txid], now, out)
        return out

    def have_tx(self, txid: bytes) -> None:
        """``txid`` arrived (pooled, refused or confirmed): stop wanting it."""
        self._drop_want(txid)

    def expire(self, now: float) -> tuple[Requests[P], list[tuple[P, wire.GetBlockTxn | wire.GetCmpct]]]:
        """Requests past their deadline move on: GET_TXS to the next announcers, GET_BLOCK_TXN
        to the next sender of each pending compact block, GET_CMPCT to the next announcer of
        each announced block."""
        out: Requests[P] = {}
        for txid, want in list(self._wants.items()):
            if want.asked is None or want.deadline <= now:
                if want.asked is not None:
                    self.stats.tx_request_timeouts += 1
                    want.asked = None
                self._assign(txid, want, now, out)
        block_requests: list[tuple[P, wire.GetBlockTxn | wire.GetCmpct]] = []
        for block_hash, pending in list(self._pending.items()):
            if pending.deadline <= now:
                if self._only_source(pending.source, (p for p, _ in pending.others), pending.asked_at, now):
                    pending.deadline = now + limits.RELAY_BLOCK_TXN_TIMEOUT_S
                    continue
                request = self._next_source(block_hash, pending, now)
                if request is not None:
                    block_requests.append(request)
        for block_hash, block_want in list(self._block_wants.items()):
            if block_want.asked is not None and block_want.deadline <= now:
                if block_want.asked in self._peers:
                    self.stats.block_fetch_timeouts += 1
                if self._only_source(block_want.asked, block_want.announcers, block_want.asked_at, now):
                    block_want.deadline = now + limits.RELAY_BLOCK_TXN_TIMEOUT_S
                    continue
                block_want.asked = None
                self._ask_block(block_hash, block_want, now, block_requests)
        return out, block_requests

    def _only_source(self, asked: P, others: Iterable[P], asked_at: float, now: float) -> bool:
        """Whether ``asked``, past its deadline, is still connected, no other peer can be asked
        instead, and it was asked less than RELAY_BLOCK_WAIT_MAX_S ago: then it is waited for
        (TCP delivers a slow answer late, never loses it), not given up, which would leave the
        block to the next block's orphan sync. Past that bound it is given up all the same: a
        peer that answers PINGs and never this holds no block (and no timer) for ever."""
        if now - asked_at >= limits.RELAY_BLOCK_WAIT_MAX_S:
            return False
        return asked in self._peers and not any(p in self._peers for p in others)

    def next_deadline(self) -> float | None:
        times = [w.deadline for w in self._wants.values() if w.asked is not None]
        times += [p.deadline for p in self._pending.values()]
        times += [w.deadline for w in self._block_wants.values() if w.asked is not None]
        return min(times, default=None)

    # --- blocks -----------------------------------------------------------------------------
    def block_targets(self, block: Block, exclude: P | None = None, *, mined: bool = False) -> BlockTargets[P]:
        """Where a new best block goes now, among the peers added: CMPCT_BLOCK to the
        cmpct-block peers that asked for it at once (SEND_CMPCT), or that speak no cmpct-hb, or
        to all of them when we ``mined`` it (the first hop); NEW_BLOCK to the others (version 1
        peers, clients); the remaining cmpct-hb peers get its hash at the next
        take_block_announcements (``announce``). A peer that sent it to us or was sent it is
        skipped. Only the peers sent to at once are visited (a node of 24 peers visited all of
        them for every block: 6 % of the 200-node swarm's CPU)."""
        compact: list[P] = []
        full: list[P] = []
        block_hash = block.hash
        peers = self._peers
        for peer in peers if mined else self._at_once:
            state = peers[peer]
            if peer == exclude or block_hash in state.known_blocks:
                continue
            state.known_blocks.add(block_hash)
            (compact if FEATURE_CMPCT in state.features else full).append(peer)
        self._remember_block(block)
        announce = self._hb_peers > 0 and not mined  # a mined block went to every cmpct-hb peer
        if announce:
            self._to_announce = block_hash
        return compact, full, announce

    def compact(self, block: Block) -> wire.CmpctBlock:
        return compact_block(block, self._rng.getrandbits(64), self._fetched.get(block.hash, ()))

    def _remember_block(self, block: Block) -> None:
        self._recent_blocks[block.hash] = block
        while len(self._recent_blocks) > limits.RELAY_RECENT_BLOCKS:
            self._recent_blocks.popitem(last=False)
        heads, lengths = self._recent_heads, self._head_lengths
        head = wire.cmpct_head(block.header)
        if head not in heads:
            heads[head] = block.hash
            lengths[len(head)] = lengths.get(len(head), 0) + 1
            while len(heads) > limits.RELAY_RECENT_BLOCKS:
                n = len(heads.popitem(last=False)[0])
                lengths[n] -= 1
                if not lengths[n]:
                    del lengths[n]
        invs = self._recent_invs
        invs.setdefault(_INV_BLOCK_HEAD + block.hash, block.hash)
        while len(invs) > limits.RELAY_RECENT_BLOCKS:
            invs.popitem(last=False)

    def known_compact(self, payload: bytes) -> bytes | None:
        """The hash of the block a CMPCT_BLOCK ``payload`` carries when that is one of the last
        blocks we relayed, read from its first bytes (wire.cmpct_head), None otherwise: so that
        the copies of a block we have are dropped unread (with three high-bandwidth peers, two
        of every three compact blocks a node gets). A lookup per length of those heads (they
        differ by the header's varying integers: a few), not a comparison per head."""
        if len(payload) > wire.MAX_PAYLOAD_BYTES[wire.CmpctBlock.TYPE]:  # decoding refuses it (a breach)
            return None
        heads = self._recent_heads
        for n in self._head_lengths:
            block_hash = heads.get(payload[:n])
            if block_hash is not None:
                return block_hash
        return None

    def known_inv(self, payload: bytes) -> bytes | None:
        """The hash of the block an INV_BLOCK ``payload`` announces when it is exactly the
        announcement of one of the last blocks we relayed, as p2pchain encodes it; None otherwise.
        Such an announcement only tells us that its sender has the block (on_inv_block fetches
        nothing we have): it need not be decoded."""
        return self._recent_invs.get(payload)

    def block_known(self, peer: P, block_hash: bytes) -> None:
        state = self._peers.get(peer)
        if state is not None:
            state.known_blocks.add(block_hash)

    # --- high-bandwidth peers and block announcements (feature cmpct-hb) ------------------
    def select_on_connect(self, peer: P) -> list[tuple[P, bool]]:
        """The start-up choice, before blocks tell who is fast: a cmpct-hb peer that connects
        while fewer than RELAY_HB_PEERS are selected is asked to push blocks at once; an
        outbound one also takes the place of the oldest inbound one when none of them is
        outbound (we chose it: inbound connections alone cannot hold every slot). The
        SEND_CMPCT to send, as (peer, high_bandwidth)."""
        state = self._peers.get(peer)
        if state is None or FEATURE_HB not in state.features or peer in self._hb:
            return []
        hb = self._hb
        out: list[tuple[P, bool]] = []
        if len(hb) >= limits.RELAY_HB_PEERS:
            if not state.outbound or any(self._peers[p].outbound for p in hb):
                return []
            out.append((hb.pop(0), False))
        hb.append(peer)
        self.stats.hb_selected += 1
        out.append((peer, True))
        return out

    def refill_hb(self) -> list[tuple[P, bool]]:
        """After a high-bandwidth peer left: cmpct-hb peers to ask in its place, outbound first,
        then the longest connected. The SEND_CMPCT to send."""
        out: list[tuple[P, bool]] = []
        if len(self._hb) >= limits.RELAY_HB_PEERS:  # the peer that left was not one: nothing to sort
            return out
        for peer in sorted(self._peers, key=lambda p: not self._peers[p].outbound):
            if len(self._hb) >= limits.RELAY_HB_PEERS:
                break
            out += self.select_on_connect(peer)
        return out

    def delivered_first(self, peer: P) -> list[tuple[P, bool]]:
        """``peer`` gave us a new best block before anyone else: it becomes (or stays) a
        high-bandwidth peer, the one that did so longest ago makes room, but not the last
        outbound one for an inbound newcomer (BIP152, and Bitcoin Core's protection against
        inbound peers taking every slot). The SEND_CMPCT to send, as (peer, high_bandwidth)."""
        state = self._peers.get(peer)
        if state is None or FEATURE_HB not in state.features:
            return []
        hb = self._hb
        if peer in hb:
            hb.remove(peer)
            hb.append(peer)
            return []
        out = [(peer, True)]
        self.stats.hb_selected += 1
        hb.append(peer)
        if len(hb) > limits.RELAY_HB_PEERS:
            victim = hb[0]
            outbound = [p for p in hb if self._peers[p].outbound]
            if outbound == [victim] and not state.outbound:
                victim = hb[1]
            hb.remove(victim)
            out.append((victim, False))
        return out

    def high_bandwidth(self) -> list[P]:
        """Our high-bandwidth peers, the least recently useful first."""
        return list(self._hb)

    def on_send_cmpct(self, peer: P, high_bandwidth: bool) -> None:
        state = self._peers.get(peer)
        if state is None or FEATURE_HB not in state.features:
            raise Misbehaving("sent SEND_CMPCT without the cmpct-hb feature")
        if high_bandwidth:
            self._at_once[peer] = None
        else:
            self._at_once.pop(peer, None)

    def take_block_announcements(self, part: str = "all") -> tuple[bytes, list[P]] | None:
        """(the block to announce, the peers to send its INV_BLOCK), None if there are none: the
        newest block block_targets left to announce, and each cmpct-hb peer that has not shown it
        knows it (it sent, announced or was sent it). The newest alone: a peer that has a block
        has its ancestors, and one that lacks them fetches them by sync (Bitcoin Core's inv of
        the tip); so every peer of a round is told the same block, one frame for all.

        A round has two parts (``part``): "inbound" tells the peers that dialled us, "outbound"
        (RELAY_BLOCK_INV_OUTBOUND_DELAY_S later) the peers we dialled, and ends the round. Each
        link's dialler is thus told first, and its own announcement, due later, finds the
        block known and is not sent: one INV_BLOCK a link, not one each way (both ends used to
        announce before hearing from the other). The second part announces the first part's
        block (what the other ends announced to us), and a newer block that came meanwhile is
        left for the next round (``announcing``). "all" is both parts at once."""
        newest = self._to_announce
        if part == "inbound":
            self._told_inbound = newest
        elif part == "outbound":
            newest, self._told_inbound = self._told_inbound, None
            if newest == self._to_announce:
                self._to_announce = None
        else:
            self._to_announce = self._told_inbound = None
        if newest is None:
            return None
        outbound = {"inbound": (False,), "outbound": (True,)}.get(part, (False, True))
        told: list[P] = []
        for peer, state in self._peers.items():
            if FEATURE_HB in state.features and newest not in state.known_blocks and state.outbound in outbound:
                state.known_blocks.add(newest)
                told.append(peer)
        self.stats.blocks_announced += len(told)
        return (newest, told) if told else None

    def announcing(self) -> bool:
        """Whether a block is left to announce (a round is to be started)."""
        return self._to_announce is not None

    def on_inv_block(
        self, peer: P, hashes: Iterable[bytes], have: Callable[[bytes], bool], now: float
    ) -> list[tuple[P, wire.GetCmpct]]:
        """``peer`` announced blocks: the GET_CMPCT to send now, for those we lack and are not
        getting already (one announcer asked at a time; the others wait their turn)."""
        state = self._peers.get(peer)
        if state is None or FEATURE_HB not in state.features:
            raise Misbehaving("sent INV_BLOCK without the cmpct-hb feature")
        out: list[tuple[P, wire.GetCmpct]] = []
        for block_hash in hashes:
            state.known_blocks.add(block_hash)
            if block_hash in self._pending or have(block_hash):
                continue
            want = self._block_wants.get(block_hash)
            if want is None:
                if state.block_wants >= limits.RELAY_MAX_PEER_BLOCK_WANTS:  # per peer: a flood of
                    self.stats.block_announcements_ignored += 1  # made-up hashes crowds out nobody else
                    continue
                want = self._block_wants[block_hash] = _Want(deque(), first=peer)
                state.block_wants += 1
            if want.asked == peer or peer in want.announcers:
                continue
            if len(want.announcers) < limits.RELAY_MAX_BLOCK_SOURCES:
                want.announcers.append(peer)
            if want.asked is None:
                self._ask_block(block_hash, want, now, out)
        return out

    def _ask_block(self, block_hash: bytes, want: _Want[P], now: float, out: list[tuple[P, Any]]) -> None:
        while want.announcers:
            peer = want.announcers.popleft()
            state = self._peers.get(peer)
            if state is not None:
                want.asked, want.asked_at = peer, now
                want.deadline = now + limits.RELAY_BLOCK_TXN_TIMEOUT_S
                state.cmpct_asked[block_hash] = None
                while len(state.cmpct_asked) > limits.RELAY_MAX_PENDING_BLOCKS:
                    state.cmpct_asked.popitem(last=False)
                out.append((peer, wire.GetCmpct(block_hash)))
                self.stats.blocks_fetched += 1
                return
        self._drop_block_want(block_hash)

    def _drop_block_want(self, block_hash: bytes) -> None:
        want = self._block_wants.pop(block_hash, None)
        state = self._peers.get(want.first) if want is not None and want.first is not None else None
        if state is not None:
            state.block_wants -= 1

    def recent_block(self, block_hash: bytes) -> Block | None:
        return self._recent_blocks.get(block_hash)

    def block_txn(self, block: Block | None, msg: wire.GetBlockTxn) -> wire.BlockTxn:
        """The answer to GET_BLOCK_TXN; asking for an index the block does not have is a
        protocol error (an honest requester asks only indexes of the compact block we sent)."""
        if block is None:
            return wire.BlockTxn(msg.hash, ())
        if any(i >= len(block.txs) for i in msg.indexes):
            raise Misbehaving(f"asked for a transaction index beyond block {block.hash.hex()[:16]}")
        return wire.BlockTxn(msg.hash, tuple(block.txs[i] for i in msg.indexes))

    def on_cmpct(
        self, peer: P, msg: wire.CmpctBlock, candidates: Callable[[], Iterable[Tx]], now: float
    ) -> Block | wire.GetBlockTxn | None:
        """A compact block of a block we do not have (the caller checked): the rebuilt block,
        the GET_BLOCK_TXN to send to ``peer``, or None (being rebuilt from another sender)."""
        state = self._peers.get(peer)
        if state is None or FEATURE_CMPCT not in state.features:
            raise Misbehaving("sent CMPCT_BLOCK without the cmpct-block feature")
        if not msg.header.meets_target():
            raise Misbehaving(f"sent compact block {msg.header.hash.hex()[:16]} without its proof of work")
        block_hash = msg.header.hash
        state.known_blocks.add(block_hash)
        state.cmpct_asked.pop(block_hash, None)
        self._drop_block_want(block_hash)  # announced, and here it is
        pending = self._pending.get(block_hash)
        if pending is not None:
            PartialBlock(msg)  # check its shape now: a bad one is the sender's fault
            if len(pending.others) < limits.RELAY_MAX_BLOCK_SOURCES:
                pending.others.append((peer, msg))
            return None
        self.stats.cmpct_received += 1
        return self._start(peer, msg, candidates, now)

    def _start(
        self, peer: P, msg: wire.CmpctBlock, candidates: Callable[[], Iterable[Tx]], now: float
    ) -> Block | wire.GetBlockTxn:
        block = whole_block(msg)
        if block is not None:  # nothing to rebuild
            self.stats.cmpct_rebuilt += 1
            return block
        partial = PartialBlock(msg)
        partial.fill_from(candidates())
        missing = partial.missing()
        if not missing:
            block = partial.block()
            if block is not None:
                self.stats.cmpct_rebuilt += 1
                return block
            missing, full = partial.all_open(), True  # a short-id collision put a wrong tx in
            self.stats.cmpct_full_fallback += 1
        else:
            full = False
        self.stats.cmpct_roundtrip += 1
        return self._ask(peer, partial, missing, full, now)

    def _ask(
        self, peer: P, partial: PartialBlock, indexes: tuple[int, ...], full: bool, now: float
    ) -> wire.GetBlockTxn:
        block_hash = partial.hash
        others = self._pending.pop(block_hash).others if block_hash in self._pending else deque()
        self._pending[block_hash] = _PendingBlock(
            peer, partial, indexes, full, now + limits.RELAY_BLOCK_TXN_TIMEOUT_S, others, now
        )
        while len(self._pending) > limits.RELAY_MAX_PENDING_BLOCKS:
            self._pending.popitem(last=False)
            self.stats.cmpct_failed += 1
        requests = self._peers[peer].block_requests
        requests[block_hash] = indexes
        while len(requests) > limits.RELAY_MAX_PENDING_BLOCKS:
            requests.popitem(last=False)
        return wire.GetBlockTxn(block_hash, indexes)

    def on_block_txn(
        self, peer: P, msg: wire.BlockTxn, now: float
    ) -> Block | tuple[P, wire.GetBlockTxn | wire.GetCmpct] | None:
        """``peer`` answered a GET_BLOCK_TXN, or a GET_CMPCT with an empty BLOCK_TXN: the
        rebuilt block, or a request to send (every transaction, to ``peer`` after a merkle
        mismatch; to the next sender or announcer of the block when ``peer`` no longer has it),
        or None (a late answer: nothing to do). Raises Misbehaving for an answer nobody asked
        for, of the wrong length, or a full answer that does not make the block."""
        state = self._peers.get(peer)
        asked = state.block_requests.pop(msg.hash, None) if state is not None else None
        if asked is None:
            if state is None or msg.txs or msg.hash not in state.cmpct_asked:
                raise Misbehaving("sent BLOCK_TXN nobody asked for")
            del state.cmpct_asked[msg.hash]
            want = self._block_wants.get(msg.hash)  # our GET_CMPCT: it has no such block
            if want is not None and want.asked == peer:
                want.asked = None
                out: list[tuple[P, wire.GetCmpct]] = []
                self._ask_block(msg.hash, want, now, out)
                return out[0] if out else None
            return None  # late: we moved on to another announcer, or gave the block up
        if msg.txs and len(msg.txs) != len(asked):
            raise Misbehaving(f"sent {len(msg.txs)} block transactions for {len(asked)} asked")
        pending = self._pending.get(msg.hash)
        if pending is None:
            return None  # late: the block came another way
        if pending.source != peer or pending.asked != asked:
            return self._late_answer(msg.hash, pending, asked, msg.txs)
        if not msg.txs:  # it no longer has the block
            return self._next_source(msg.hash, pending, now)
        pending.partial.put(asked, msg.txs)
        block = pending.partial.block()
        if block is not None:
            del self._pending[msg.hash]
            if not pending.full:  # a full answer says nothing about what the pool lacked
                self._fetched[msg.hash] = asked
                while len(self._fetched) > limits.RELAY_RECENT_BLOCKS:
                    self._fetched.popitem(last=False)
            return block
        if pending.full:
            del self._pending[msg.hash]
            raise Misbehaving(f"compact block {msg.hash.hex()[:16]}: its own transactions do not match its merkle root")
        self.stats.cmpct_full_fallback += 1
        return peer, self._ask(peer, pending.partial, pending.partial.all_open(), True, now)

    def _late_answer(
        self, block_hash: bytes, pending: _PendingBlock[P], asked: tuple[int, ...], txs: tuple[Tx, ...]
    ) -> Block | None:
        """A sender that timed out answers after all, while another is asked: its transactions
        are welcome if they complete the block (the merkle root decides). If they do not, the
        sender now asked ends up answering for every open slot (a mismatch asks it for all), so
        nothing of them stays in the block; the slots its compact block prefilled are left alone,
        so a wrong late answer cannot make an honest sender's full answer look like a lie."""
        partial = pending.partial
        if not txs or any(i >= len(partial.slots) for i in asked):  # "no such block", or another
            return None  # sender's compact block of fewer slots (one of the two is not honest)
        fill = [(i, tx) for i, tx in zip(asked, txs, strict=True) if i not in partial.prefilled]
        if not fill:
            return None
        partial.put(tuple(i for i, _ in fill), tuple(tx for _, tx in fill))
        block = partial.block()
        if block is not None:
            del self._pending[block_hash]
        return block

    def _next_source(
        self, block_hash: bytes, pending: _PendingBlock[P], now: float
    ) -> tuple[P, wire.GetBlockTxn] | None:
        """Ask the next peer that sent this compact block for all of it; None if none is left."""
        del self._pending[block_hash]
        while pending.others:
            peer, msg = pending.others.popleft()
            if peer not in self._peers:
                continue
            partial = PartialBlock(msg)
            self._pending[block_hash] = _PendingBlock(peer, partial, (), True, now, pending.others)
            return peer, self._ask(peer, partial, partial.all_open(), True, now)
        self.stats.cmpct_failed += 1
        return None

    def block_done(self, block_hash: bytes) -> None:
        """The block arrived whole (any path): stop rebuilding and fetching it."""
        self._pending.pop(block_hash, None)
        self._drop_block_want(block_hash)

    def connected(self, blocks: Iterable[Block], disconnected: Iterable[Block] = ()) -> None:
        """Blocks joined the best chain: their transactions are no longer wanted, nor announced
        if still queued for the next INV_TX (each peer gets them in the block; Bitcoin Core, too,
        announces only what its mempool still holds). After a reorg nothing counts as confirmed
        (an abandoned block's transaction may be wanted again)."""
        if any(True for _ in disconnected):
            self.confirmed.clear()
        fetching = bool(self._pending or self._block_wants)  # (a sync's blocks: most often nothing is)
        blocks = list(blocks)
        paid = any(len(block.txs) > 1 for block in blocks)  # (a coinbase-only block confirms nothing queued)
        queued = [state.to_announce for state in self._peers.values() if state.to_announce] if paid else []
        for block in blocks:
            if fetching:
                self.block_done(block.hash)
            for tx in block.txs[1:]:
                self.confirmed.add(tx.txid)
                self._drop_want(tx.txid)
                for to_announce in queued:
                    to_announce.pop(tx.txid, None)
