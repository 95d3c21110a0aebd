"""Pending transactions: valid against the best tip's accounts, not yet in a block (btcd: mempool).

Invariants: for every sender with pooled transactions, their nonces run without a gap from the
sender's confirmed nonce, and their amounts plus fees together fit in its confirmed balance;
for every recipient, its confirmed balance plus every pooled payment to it (but its own to
itself) stays within MAX_MONEY. Incoming pooled payments are not counted as funds and outgoing
ones not as room, so every per-sender prefix can be mined on its own and ``select`` never builds
a block that fails ``rules.apply_tx`` (which refuses a balance past MAX_MONEY, issue 11).

Policy (no replace-by-fee, no child-pays-for-parent):
- a second transaction with a pooled sender+nonce is refused (NONCE_CONFLICT);
- when full, a new transaction evicts the lowest-fee ones (latest arrival first on a tie) if it
  pays strictly more than each; evicting one also evicts its sender's later nonces, which would
  otherwise be gaps. A transaction never evicts its own predecessors.

Cost: ``add`` is O(log n) besides one Ed25519 check; ``update`` after a plain block touches only
the block's senders; after a reorg the pool is rebuilt in O(n log n) without signature checks.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import field

from p2pchain import limits
from p2pchain.errors import MempoolCode, MempoolError, RuleError
from p2pchain.ledger import rules
from p2pchain.ledger.block import Block
from p2pchain.ledger.rules import AccountLookup
from p2pchain.ledger.tx import Tx
from p2pchain.params import NetworkParams
from p2pchain.record import record

log = logging.getLogger(__name__)


# Refusals that no later block or transaction can cure: the transaction's own bytes break a rule
# (shape, amount, key, signature). A node may remember these txids and refuse them unchecked. Not
# the others: a nonce gap is filled by the missing transaction (gossip delivers out of order), a
# block funds a sender or frees a recipient's room, a reorg revives a stale nonce (issue 11).
PERMANENT_REFUSALS = frozenset({MempoolCode.INVALID})


class RecentSet:
    """A bounded set of ids that forgets the oldest first (the signature cache, the relay's
    seen-sets). A dict and a deque of the same ids in arrival order: 40-85 bytes an id beside the
    id itself (full, then after much churn), where an OrderedDict took 75-140. The node keeps
    several of up to SEEN_CACHE_MAX ids and one of RELAY_KNOWN_TXIDS_MAX per peer, each filling
    with the traffic up to its bound (issue 18)."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._items: dict[bytes, None] = {}  # a dict: a set's table is 4x its size below 50,000 items
        self._order: deque[bytes] = deque()

    def add(self, item: bytes) -> None:
        if item in self._items:
            return
        self._items[item] = None
        self._order.append(item)
        if len(self._order) > self.max_items:
            del self._items[self._order.popleft()]

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def clear(self) -> None:
        self._items.clear()
        self._order.clear()

    def __len__(self) -> int:
        return len(self._items)


@record(frozen=False, slots=True)
class _Entry:
    tx: Tx
    seq: int  # arrival order: a counter, never the clock

    @property
    def cost(self) -> int:
        return self.tx.amount + self.tx.fee


@record(frozen=False, slots=True)
class _Sender:
    """One sender's pooled transactions, nonces consecutive from its confirmed nonce."""

    entries: deque[_Entry] = field(default_factory=deque)
    spent: int = 0  # sum of amount + fee over ``entries``

    def next_nonce(self) -> int:
        return self.entries[-1].tx.nonce + 1


class Mempool:
    VERIFIED_MAX = limits.SEEN_CACHE_MAX  # txids remembered as signature-checked (tests may lower it)

    def __init__(
        self,
        params: NetworkParams,
        get_account: AccountLookup,
        max_txs: int = limits.MEMPOOL_MAX_TXS,
        max_bytes: int = limits.MEMPOOL_MAX_BYTES,
    ) -> None:
        self.params = params
        self.get_account = get_account  # the confirmed account at the best tip
        self.max_txs = max_txs
        self.max_bytes = max_bytes
        self.verified = RecentSet(self.VERIFIED_MAX)  # for rules.check_block(verified=...)
        # txids whose own checks but the signature (shape, amounts, key) passed in
        # refused_before_signature: add() does not repeat them (they depend on the bytes alone)
        self._well_formed = RecentSet(self.VERIFIED_MAX)
        self._entries: dict[bytes, _Entry] = {}
        self._senders: dict[str, _Sender] = {}
        self._incoming: dict[str, int] = {}  # recipient -> pooled amounts paid to it by others
        self._low: list[tuple[int, int, bytes]] = []  # min-heap (fee, -seq, txid); stale rows skipped
        self._size = 0
        self._seq = itertools.count()
        self.listeners: list[Callable[[Tx], None]] = []  # told of each transaction admitted by add()

    # --- queries --------------------------------------------------------------------------
    def __contains__(self, txid: object) -> bool:
        return isinstance(txid, bytes) and txid in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, txid: bytes) -> Tx | None:
        entry = self._entries.get(txid)
        return entry.tx if entry else None

    def __iter__(self) -> Iterator[Tx]:
        """Every pooled transaction, in no particular order (compact-block reconstruction)."""
        return (e.tx for e in self._entries.values())

    def txs(self) -> list[Tx]:
        """Every pooled transaction, highest fee first, then by arrival."""
        return [e.tx for e in sorted(self._entries.values(), key=lambda e: (-e.tx.fee, e.seq))]

    def next_nonce(self, address: str) -> int:
        """The nonce a new transaction from ``address`` must carry to enter the pool."""
        sender = self._senders.get(address)
        return sender.next_nonce() if sender else self.get_account(address).nonce

    def pending_balance(self, address: str) -> int:
        """Confirmed balance minus what pooled transactions from ``address`` spend."""
        sender = self._senders.get(address)
        return self.get_account(address).balance - (sender.spent if sender else 0)

    def select(self, max_txs: int, max_bytes: int) -> list[Tx]:
        """A block's transactions (coinbase excluded): highest fee first among the next
        transaction of each sender, so each sender's nonces stay in order. A sender whose next
        transaction does not fit is left out from there on."""
        queues: dict[str, Iterator[_Entry]] = {}
        heads: list[tuple[int, int, str, _Entry]] = []
        for address, sender in self._senders.items():
            queues[address] = it = iter(sender.entries)
            first = next(it)
            heads.append((-first.tx.fee, first.seq, address, first))
        heapq.heapify(heads)
        chosen: list[Tx] = []
        used = 0
        while heads and len(chosen) < max_txs:
            _, _, address, entry = heapq.heappop(heads)
            if used + entry.tx.size > max_bytes:
                continue
            chosen.append(entry.tx)
            used += entry.tx.size
            following = next(queues[address], None)
            if following is not None:
                heapq.heappush(heads, (-following.tx.fee, following.seq, address, following))
        return chosen

    # --- admission ------------------------------------------------------------------------
    def add(self, tx: Tx) -> None:
        """Admit ``tx`` or raise MempoolError. Cheap checks run before the signature check, so
        that replays of confirmed transactions and junk cost no Ed25519 verification."""
        if tx.txid in self._entries:
            raise MempoolError(MempoolCode.DUPLICATE, f"transaction {tx.txid.hex()} is already pooled")
        if tx.txid not in self._well_formed:
            self._check_tx(tx, (tx.txid,))  # shape, amounts and key only: the signature counts as checked
        self._check_state(tx)
        cuts = self._make_room(tx)
        if tx.txid not in self.verified:  # (cached: the checks above were all that was left)
            self._check_tx(tx, self.verified)
            self.verified.add(tx.txid)
        self._insert(tx, next(self._seq), cuts)
        for listener in self.listeners:
            listener(tx)

    def refused_before_signature(self, tx: Tx) -> bool:
        """True when add(tx) would refuse ``tx`` now before its signature counts (a duplicate,
        bad shape, a stale or taken nonce, more than the sender's confirmed balance), whatever
        transactions still queued ahead of it bring: its signature need not be checked ahead of
        add(). A nonce gap is not such a refusal: the sender's earlier nonces may be queued."""
        try:
            if tx.txid in self._entries:
                return True
            self._check_tx(tx, (tx.txid,))
            self._well_formed.add(tx.txid)
            if tx.nonce > self.next_nonce(tx.sender):
                return False  # a gap (_check_state's third test), without raising: a wallet's burst is all gaps
            self._check_state(tx)  # past the gap test: whatever it raises is a refusal
        except MempoolError:
            return True
        return False

    def subscribe(self, listener: Callable[[Tx], None]) -> None:
        """Call ``listener(tx)`` for every new transaction admitted (not for ones a reorg returns)."""
        self.listeners.append(listener)

    def _check_tx(self, tx: Tx, verified: tuple[bytes] | RecentSet) -> None:
        try:
            rules.check_tx(tx, self.params.network_id, verified=verified)
        except RuleError as e:
            raise MempoolError(MempoolCode.INVALID, f"{e.code.value}: {e.description}") from e

    def _check_state(self, tx: Tx) -> None:
        account = self.get_account(tx.sender)
        sender = self._senders.get(tx.sender)
        expected = sender.next_nonce() if sender else account.nonce
        if tx.nonce < account.nonce:
            raise MempoolError(MempoolCode.STALE_NONCE, f"nonce {tx.nonce} is below the confirmed {account.nonce}")
        if tx.nonce < expected:
            raise MempoolError(MempoolCode.NONCE_CONFLICT, f"nonce {tx.nonce} of this sender is already pooled")
        if tx.nonce > expected:
            raise MempoolError(MempoolCode.NONCE_GAP, f"nonce {tx.nonce}, the sender's next is {expected}")
        available = account.balance - (sender.spent if sender else 0)
        if tx.amount + tx.fee > available:
            raise MempoolError(
                MempoolCode.INSUFFICIENT_FUNDS, f"needs {tx.amount + tx.fee}, sender has {available} unspent"
            )
        if tx.recipient != tx.sender:  # paying oneself never raises one's balance
            room = self._room(tx.recipient)
            if tx.amount > room:
                raise MempoolError(
                    MempoolCode.RECIPIENT_FULL, f"amount {tx.amount}: the recipient's balance may grow only {room}"
                )

    def _room(self, address: str) -> int:
        """How much more ``address`` may receive from pooled payments before passing MAX_MONEY."""
        return limits.MAX_MONEY - self.get_account(address).balance - self._incoming.get(address, 0)

    def _make_room(self, tx: Tx) -> dict[str, int]:
        """Which transactions to evict for ``tx``: sender -> lowest nonce to drop (with all above).
        Changes nothing; raises FULL when ``tx`` cannot buy its way in."""
        need_txs = len(self._entries) + 1 - self.max_txs
        need_bytes = self._size + tx.size - self.max_bytes
        if need_txs <= 0 and need_bytes <= 0:
            return {}
        if tx.size > self.max_bytes:
            raise MempoolError(MempoolCode.FULL, f"{tx.size} bytes exceed the pool's {self.max_bytes}")
        cuts: dict[str, int] = {}
        popped: list[tuple[int, int, bytes]] = []
        try:
            while need_txs > 0 or need_bytes > 0:
                row = self._pop_lowest()
                if row is None:  # cannot happen while the limits are positive
                    raise MempoolError(MempoolCode.FULL, "nothing left to evict")
                popped.append(row)
                victim = self._entries[row[2]].tx
                if victim.fee >= tx.fee:
                    raise MempoolError(
                        MempoolCode.FULL, f"pool is full and fee {tx.fee} does not beat the lowest, {victim.fee}"
                    )
                if victim.sender == tx.sender:
                    raise MempoolError(
                        MempoolCode.FULL, f"pool is full and its cheapest is this sender's own nonce {victim.nonce}"
                    )
                old_cut = cuts.get(victim.sender)
                if old_cut is not None and old_cut <= victim.nonce:
                    continue  # already evicted with an earlier nonce
                cuts[victim.sender] = victim.nonce
                for entry in self._senders[victim.sender].entries:
                    if entry.tx.nonce >= victim.nonce and (old_cut is None or entry.tx.nonce < old_cut):
                        need_txs -= 1
                        need_bytes -= entry.tx.size
            return cuts
        finally:
            for row in popped:  # rows of evicted entries go stale and are skipped later
                heapq.heappush(self._low, row)

    def _pop_lowest(self) -> tuple[int, int, bytes] | None:
        while self._low:
            row = heapq.heappop(self._low)
            entry = self._entries.get(row[2])
            if entry is not None and entry.seq == -row[1]:
                return row
        return None

    def _insert(self, tx: Tx, seq: int, cuts: dict[str, int]) -> None:
        for address, nonce in cuts.items():
            self._drop_from(address, nonce, f"evicted for {tx.txid.hex()[:16]} paying fee {tx.fee}")
        entry = _Entry(tx, seq)
        sender = self._senders.get(tx.sender)
        if sender is None:
            sender = self._senders[tx.sender] = _Sender()
        sender.entries.append(entry)
        sender.spent += entry.cost
        if tx.recipient != tx.sender:
            self._incoming[tx.recipient] = self._incoming.get(tx.recipient, 0) + tx.amount
        self._entries[tx.txid] = entry
        self._size += tx.size
        heapq.heappush(self._low, (tx.fee, -seq, tx.txid))
        if len(self._low) > 2 * len(self._entries) + 1024:  # too many stale rows: compact
            self._low = [(e.tx.fee, -e.seq, txid) for txid, e in self._entries.items()]
            heapq.heapify(self._low)

    # --- removal --------------------------------------------------------------------------
    def _forget(self, sender: _Sender, entry: _Entry, reason: str) -> None:
        del self._entries[entry.tx.txid]
        self._size -= entry.tx.size
        sender.spent -= entry.cost
        tx = entry.tx
        if tx.recipient != tx.sender:
            left = self._incoming[tx.recipient] - tx.amount
            if left:
                self._incoming[tx.recipient] = left
            else:
                del self._incoming[tx.recipient]
        log.debug("mempool: dropped %s (sender %s nonce %d): %s", tx.txid.hex(), tx.sender, tx.nonce, reason)

    def _drop_from(self, address: str, nonce: int, reason: str) -> None:
        """Drop ``address``'s pooled transactions from ``nonce`` up."""
        sender = self._senders[address]
        while sender.entries and sender.entries[-1].tx.nonce >= nonce:
            entry = sender.entries.pop()
            self._forget(sender, entry, reason if entry.tx.nonce == nonce else f"its nonce {nonce} was dropped")
        if not sender.entries:
            del self._senders[address]

    def _recheck_sender(self, address: str, confirmed: set[bytes]) -> None:
        """Bring one sender's pooled transactions back in line with its new confirmed account."""
        sender = self._senders.get(address)
        if sender is None:
            return
        account = self.get_account(address)
        entries = sender.entries
        while entries and entries[0].tx.nonce < account.nonce:
            entry = entries.popleft()
            self._forget(sender, entry, "confirmed" if entry.tx.txid in confirmed else "nonce used by another tx")
        if entries and entries[0].tx.nonce != account.nonce:
            self._drop_from(address, entries[0].tx.nonce, f"nonce gap: the confirmed nonce is {account.nonce}")
            return
        while entries and sender.spent > account.balance:
            entry = entries.pop()
            self._forget(sender, entry, f"unfunded: balance {account.balance}, pooled spends {sender.spent}")
        if not entries:
            del self._senders[address]

    # --- chain events ---------------------------------------------------------------------
    def update(self, connected: Sequence[Block], disconnected: Sequence[Block]) -> None:
        """Follow a tip change; ``get_account`` already answers for the new tip. ``disconnected``
        is tip-first, ``connected`` in chain order."""
        confirmed = {tx.txid for block in connected for tx in block.txs[1:]}
        if disconnected:
            self._rebuild(confirmed, connected, disconnected)
            return
        for address in {tx.sender for block in connected for tx in block.txs[1:]}:
            self._recheck_sender(address, confirmed)
        for address in {tx.recipient for block in connected for tx in block.txs}:
            self._recheck_recipient(address)

    def _recheck_recipient(self, address: str) -> None:
        """A block credited ``address``: drop the latest pooled payments to it while they could
        take its balance past MAX_MONEY (never in practice: it takes a balance near 2**62)."""
        while address in self._incoming and self._room(address) < 0:
            latest = max(
                (e for e in self._entries.values() if e.tx.recipient == address and e.tx.sender != address),
                key=lambda e: e.seq,
            )
            self._drop_from(latest.tx.sender, latest.tx.nonce, f"{address} would pass the money limit")

    def _rebuild(self, confirmed: set[bytes], connected: Sequence[Block], disconnected: Sequence[Block]) -> None:
        """After a reorg: readmit the disconnected blocks' transactions that the new chain lacks,
        with the pooled ones of every address the switched blocks touched (as sender or
        recipient: only their accounts changed), per sender in nonce order, against the new state.
        Every one of them passed check_tx before (in the pool or in a block), so no signature is
        checked again; the other senders' pooled transactions stay as they are (issue 12: a
        one-block reorg rebuilt all 20,000 pooled transactions on the event loop, ~200 ms)."""
        touched = {a for block in (*connected, *disconnected) for tx in block.txs for a in (tx.sender, tx.recipient)}
        candidates = [
            (tx, next(self._seq))
            for block in reversed(disconnected)
            for tx in block.txs[1:]
            if tx.txid not in confirmed
        ]
        for address in touched:
            sender = self._senders.get(address)
            if sender is not None:
                candidates += [(e.tx, e.seq) for e in sender.entries]
                self._drop_from(address, sender.entries[0].tx.nonce, "rechecked after a reorg")
        candidates.sort(key=lambda c: (c[0].sender, c[0].nonce, c[1]))
        for tx, seq in candidates:
            if tx.txid in self._entries:
                continue
            try:
                self._check_state(tx)
                self._insert(tx, seq, self._make_room(tx))
            except MempoolError as e:
                if tx.txid in confirmed:
                    continue
                # INFO: a payment a reorg made invalid (its sender's coins were rewards of the
                # abandoned branch, or one before it went) is gone for good; its sender must
                # sign it again (bench.py soak reads these lines to tell such drops from losses)
                log.info("mempool: after reorg dropped %s: %s: %s", tx.txid.hex(), e.code.value, e.description)
        for address in touched:
            self._recheck_recipient(address)
        log.debug("mempool: after reorg: %d candidates rechecked, %d pooled", len(candidates), len(self._entries))

    @property
    def bytes(self) -> int:
        """Sum of the pooled transactions' sizes (defined last: the name shadows the type)."""
        return self._size
