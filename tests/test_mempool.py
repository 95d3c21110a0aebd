"""Mempool: admission codes, fee order, eviction when full, block templates, chain events.

The confirmed state is a plain dict of accounts advanced with rules.connect_block, so every
block handed to update() is one the consensus rules accept (proof of work aside).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pchain import limits, logs
from p2pchain.errors import MempoolCode, MempoolError, RuleCode, RuleError
from p2pchain.keys import Wallet
from p2pchain.ledger import rules
from p2pchain.ledger.block import ZERO_HASH, Block, Header, merkle_root
from p2pchain.ledger.rules import EMPTY_ACCOUNT, Account
from p2pchain.ledger.tx import Tx, make_coinbase, make_tx
from p2pchain.mempool import Mempool, RecentSet
from p2pchain.params import NetworkParams

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from benchlib import soak  # the soak reads the mempool's reorg drops from its log

PARAMS = NetworkParams(bits=1, reward=50)
NET = PARAMS.network_id
WALLETS = [Wallet.generate() for _ in range(4)]
A, B, C, D = WALLETS
SINK = "ab" * 20  # a recipient nobody spends from


@functools.cache
def tx(sender: int, nonce: int, amount: int = 1, fee: int = 1, to: str = SINK) -> Tx:
    """A signed tx from WALLETS[sender] (cached: Ed25519 signing dominates these tests)."""
    return make_tx(WALLETS[sender], to, amount, fee, nonce, NET)


class Ledger:
    """A chain's confirmed state: accounts plus the blocks that moved them."""

    def __init__(self, balances: dict[str, int]) -> None:
        self.states: list[dict[str, Account]] = [{a: Account(b, 0) for a, b in balances.items()}]
        self.blocks: list[Block] = []

    def get(self, address: str) -> Account:
        return self.states[-1].get(address, EMPTY_ACCOUNT)

    def connect(self, txs: list[Tx], miner: str = SINK) -> Block:
        height = len(self.blocks) + 1
        coinbase = make_coinbase(miner, PARAMS.reward + sum(t.fee for t in txs), height)
        body = (coinbase, *txs)
        header = Header(1, height, ZERO_HASH, merkle_root([t.txid for t in body]), height, PARAMS.start_bits, 0)
        block = Block(header, body)
        changes = rules.connect_block(block, self.get, PARAMS)  # raises if the block is not valid
        self.states.append({**self.states[-1], **changes})
        self.blocks.append(block)
        return block

    def disconnect(self, depth: int) -> list[Block]:
        """Remove the top ``depth`` blocks; tip first, as the chain reports them."""
        gone = self.blocks[len(self.blocks) - depth :][::-1]
        del self.blocks[len(self.blocks) - depth :]
        del self.states[len(self.states) - depth :]
        return gone


def fresh(balances: int | dict[str, int] = 100, **limits: int) -> tuple[Mempool, Ledger]:
    funds = balances if isinstance(balances, dict) else {w.address: balances for w in WALLETS}
    ledger = Ledger(funds)
    return Mempool(PARAMS, ledger.get, **limits), ledger


def refused(pool: Mempool, t: Tx) -> MempoolCode:
    with pytest.raises(MempoolError) as info:
        pool.add(t)
    return info.value.code


def assert_applies(txs: list[Tx], ledger: Ledger) -> None:
    changes: dict[str, Account] = {}
    for t in txs:
        rules.apply_tx(t, ledger.get, changes)


# --- admission ----------------------------------------------------------------------------
def test_accepted_tx_is_visible_with_its_effect_on_the_sender() -> None:
    pool, _ = fresh()
    t0, t1 = tx(0, 0, amount=10, fee=2), tx(0, 1, amount=5, fee=3)
    pool.add(t0)
    pool.add(t1)
    assert len(pool) == 2 and t0.txid in pool and pool.get(t1.txid) == t1
    assert pool.get(tx(1, 0).txid) is None and tx(1, 0).txid not in pool and "junk" not in pool
    assert pool.bytes == t0.size + t1.size
    assert pool.next_nonce(A.address) == 2 and pool.next_nonce(B.address) == 0
    assert pool.pending_balance(A.address) == 100 - 20 and pool.pending_balance(B.address) == 100
    assert t0.txid in pool.verified and t1.txid in pool.verified


def test_duplicate_is_refused() -> None:
    pool, _ = fresh()
    pool.add(tx(0, 0))
    assert refused(pool, tx(0, 0)) is MempoolCode.DUPLICATE
    assert len(pool) == 1


INVALID_TXS = pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda t: Tx(t.sender, t.recipient, t.amount, t.fee, t.nonce, t.pubkey, bytes(64)), RuleCode.TX_BAD_SIGNATURE),
        (lambda t: make_tx(A, SINK, 1, 1, 0, NetworkParams(bits=2).network_id), RuleCode.TX_BAD_SIGNATURE),
        (
            lambda t: Tx(B.address, t.recipient, t.amount, t.fee, t.nonce, t.pubkey, t.signature),
            RuleCode.TX_KEY_MISMATCH,
        ),
        (lambda t: make_tx(A, SINK, 0, 1, 0, NET), RuleCode.TX_BAD_AMOUNT),
        (lambda t: Tx(t.sender, "nobody", t.amount, t.fee, t.nonce, t.pubkey, t.signature), RuleCode.TX_MALFORMED),
        (lambda t: make_coinbase(SINK, 1, 0), RuleCode.TX_SELF_COINBASE),
    ],
    ids=["bad-signature", "other-network", "key-mismatch", "zero-amount", "bad-recipient", "coinbase"],
)


@INVALID_TXS
def test_invalid_tx_is_refused_with_the_rule_as_cause(make: Callable[[Tx], Tx], code: RuleCode) -> None:
    pool, _ = fresh()
    with pytest.raises(MempoolError) as info:
        pool.add(make(tx(0, 0)))
    assert info.value.code is MempoolCode.INVALID
    cause = info.value.__cause__
    assert isinstance(cause, RuleError) and cause.code is code
    assert code.value in str(info.value)
    assert len(pool) == 0 and pool.bytes == 0 and len(pool.verified) == 0


@INVALID_TXS
def test_the_node_pre_screen_then_add_refuses_as_add_alone(make: Callable[[Tx], Tx], code: RuleCode) -> None:
    """The node asks refused_before_signature first (its signature goes to the threads only if
    not), then add(), which does not repeat the checks the pre-screen passed: the verdict, its
    code and cause are add()'s alone; a bad signature is still found."""
    pool, _ = fresh()
    bad = make(tx(0, 0))
    assert pool.refused_before_signature(bad) is (code is not RuleCode.TX_BAD_SIGNATURE)
    with pytest.raises(MempoolError) as info:
        pool.add(bad)
    cause = info.value.__cause__
    assert info.value.code is MempoolCode.INVALID and isinstance(cause, RuleError) and cause.code is code
    assert len(pool) == 0 and len(pool.verified) == 0
    good = tx(0, 0)
    assert not pool.refused_before_signature(good)
    pool.add(good)
    assert good.txid in pool and good.txid in pool.verified


def test_the_pre_screen_leaves_a_nonce_gap_to_the_signature_check_and_refuses_stale_and_taken_nonces() -> None:
    """A gap may be closed by the sender's earlier nonces still queued ahead (a wallet's burst):
    its signature is checked. A stale or taken nonce is refused before it, as add() refuses it."""
    pool, ledger = fresh()
    ledger.connect([tx(0, 0)])  # sender 0's confirmed nonce is 1
    pool.add(tx(0, 1))
    assert not pool.refused_before_signature(tx(0, 3)), "a gap after the pooled nonce"
    assert not pool.refused_before_signature(tx(1, 2)), "a gap after the confirmed nonce, nothing pooled"
    assert pool.refused_before_signature(tx(0, 0)), "stale"
    assert pool.refused_before_signature(tx(0, 1, fee=9)), "taken by a pooled transaction"
    assert not pool.refused_before_signature(tx(0, 2)), "the next nonce"
    assert refused(pool, tx(0, 3)) is MempoolCode.NONCE_GAP


def test_stale_nonce_is_refused() -> None:
    pool, ledger = fresh()
    ledger.connect([tx(0, 0)])
    assert refused(pool, tx(0, 0)) is MempoolCode.STALE_NONCE
    assert refused(pool, tx(0, 0, fee=5)) is MempoolCode.STALE_NONCE
    assert len(pool.verified) == 0  # refused before any signature was checked


def test_same_sender_and_nonce_is_not_replaced() -> None:
    pool, _ = fresh()
    first = tx(0, 0, fee=1)
    pool.add(first)
    assert refused(pool, tx(0, 0, fee=50)) is MempoolCode.NONCE_CONFLICT
    assert pool.txs() == [first]


def test_nonce_gap_counts_pooled_transactions() -> None:
    pool, _ = fresh()
    assert refused(pool, tx(0, 1)) is MempoolCode.NONCE_GAP
    pool.add(tx(0, 0))
    pool.add(tx(0, 1))
    assert refused(pool, tx(0, 3)) is MempoolCode.NONCE_GAP
    pool.add(tx(0, 2))


def test_insufficient_funds_counts_pooled_spends() -> None:
    pool, _ = fresh({A.address: 10})
    assert refused(pool, tx(0, 0, amount=10, fee=1)) is MempoolCode.INSUFFICIENT_FUNDS
    pool.add(tx(0, 0, amount=5, fee=1))
    assert refused(pool, tx(0, 1, amount=4, fee=1)) is MempoolCode.INSUFFICIENT_FUNDS  # 6 + 5 > 10
    pool.add(tx(0, 1, amount=3, fee=1))
    assert pool.pending_balance(A.address) == 0
    assert refused(pool, tx(1, 0)) is MempoolCode.INSUFFICIENT_FUNDS  # never funded


def test_a_recipient_may_not_be_paid_past_the_money_limit() -> None:
    """Issue 11, finding 4: connect_block refuses a balance past MAX_MONEY, so a pooled payment
    that would take its recipient there would make every block holding it invalid (and stop
    --mine). The pool counts every pooled payment to a recipient against its room."""
    rich = D.address
    pool, ledger = fresh({A.address: 100, B.address: 100, rich: limits.MAX_MONEY - 10})
    over, fits, second, third = tx(0, 0, 11, to=rich), tx(0, 0, 6, to=rich), tx(1, 0, 5, to=rich), tx(1, 0, 4, to=rich)
    assert refused(pool, over) is MempoolCode.RECIPIENT_FULL
    pool.add(fits)
    assert refused(pool, second) is MempoolCode.RECIPIENT_FULL  # 6 + 5 pooled would pass it
    pool.add(third)
    pool.add(tx(3, 0, 10**6, to=rich))  # paying oneself does not raise one's balance
    ledger.connect(pool.select(100, 10**6))  # raises if the block is invalid
    pool.update(ledger.blocks[-1:], [])
    assert len(pool) == 0 and ledger.get(rich).balance == limits.MAX_MONEY - 10 + 6 + 4 - 1  # fee of its own payment


def test_a_block_that_fills_a_recipient_drops_the_pooled_payments_past_its_room() -> None:
    rich = D.address
    pool, ledger = fresh({A.address: 100, B.address: 100, C.address: 100, rich: limits.MAX_MONEY - 10})
    early, late = tx(0, 0, 4, to=rich), tx(1, 0, 5, to=rich)
    pool.add(early)
    pool.add(late)
    block = ledger.connect([tx(2, 0, 3, to=rich)])  # mined elsewhere: the room is 7 now
    pool.update([block], [])
    assert early.txid in pool and late.txid not in pool
    ledger.connect(pool.select(100, 10**6))


def test_signature_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Mempool, "VERIFIED_MAX", 2)
    pool, _ = fresh()
    for n in range(3):
        pool.add(tx(0, n))
    assert tx(0, 0).txid not in pool.verified and tx(0, 2).txid in pool.verified and len(pool.verified) == 2


def test_recent_set_forgets_the_oldest_first_and_is_compact() -> None:
    ids = [hashlib.sha256(n.to_bytes(4, "big")).digest() for n in range(20_000)]
    recent = RecentSet(3)
    for i in (0, 1, 2, 0, 3):  # 0 again is no news: it stays the oldest
        recent.add(ids[i])
    assert [i for i in range(4) if ids[i] in recent] == [1, 2, 3] and len(recent) == 3
    recent.clear()
    assert len(recent) == 0 and ids[3] not in recent
    # the node holds several of up to SEEN_CACHE_MAX ids (issue 18): at most 96 bytes an id beside
    # the id itself, full and then still after three times its size went through it (today 38 and
    # 68; the OrderedDict it replaced held 75 and 117)
    tracemalloc.start()
    try:
        full = RecentSet(len(ids) // 4)
        for n, i in enumerate(ids, 1):
            full.add(i)
            if n in (len(ids) // 4, len(ids)):
                held, _ = tracemalloc.get_traced_memory()
                assert held / len(full) <= 96, f"{held / len(full):.0f} bytes an id after {n}"
    finally:
        tracemalloc.stop()
    assert len(full) == len(ids) // 4 and ids[-1] in full and ids[-len(ids) // 4 - 1] not in full


# --- order and eviction -------------------------------------------------------------------
def test_txs_are_ordered_by_fee_then_arrival() -> None:
    pool, _ = fresh()
    order = [tx(0, 0, fee=2), tx(1, 0, fee=5), tx(2, 0, fee=2), tx(0, 1, fee=9)]
    for t in order:
        pool.add(t)
    assert pool.txs() == [order[3], order[1], order[0], order[2]]


def test_full_by_count_evicts_lowest_fee_latest_first() -> None:
    pool, _ = fresh(max_txs=3)
    early, late, high = tx(0, 0, fee=1), tx(1, 0, fee=1), tx(2, 0, fee=4)
    for t in (early, late, high):
        pool.add(t)
    assert refused(pool, tx(3, 0, fee=1)) is MempoolCode.FULL  # not higher than the lowest
    assert len(pool) == 3
    newcomer = tx(3, 0, fee=2)
    pool.add(newcomer)
    assert pool.txs() == [high, newcomer, early]  # the later of the two fee-1 txs went
    assert pool.next_nonce(B.address) == 0 and pool.pending_balance(B.address) == 100


def test_eviction_takes_the_senders_later_nonces_too() -> None:
    pool, _ = fresh(max_txs=3)
    for t in (tx(0, 0, fee=1), tx(0, 1, fee=10), tx(1, 0, fee=5)):
        pool.add(t)
    pool.add(tx(2, 0, fee=2))
    assert pool.txs() == [tx(1, 0, fee=5), tx(2, 0, fee=2)]
    assert pool.next_nonce(A.address) == 0 and pool.pending_balance(A.address) == 100
    pool.add(tx(0, 0, fee=3))  # room again: A starts over


def test_a_tx_never_evicts_its_own_predecessor() -> None:
    pool, _ = fresh(max_txs=2)
    pool.add(tx(0, 0, fee=1))
    pool.add(tx(1, 0, fee=5))
    assert refused(pool, tx(0, 1, fee=10)) is MempoolCode.FULL
    assert pool.txs() == [tx(1, 0, fee=5), tx(0, 0, fee=1)]


def test_full_by_bytes_evicts_until_the_tx_fits() -> None:
    size = tx(0, 0).size  # every test tx has the same size
    pool, _ = fresh(max_bytes=2 * size + size // 2)
    pool.add(tx(0, 0, fee=3))
    pool.add(tx(1, 0, fee=1))
    assert refused(pool, tx(2, 0, fee=1)) is MempoolCode.FULL
    pool.add(tx(2, 0, fee=2))
    assert pool.txs() == [tx(0, 0, fee=3), tx(2, 0, fee=2)] and pool.bytes == 2 * size
    tiny, _ = fresh(max_bytes=size - 1)
    assert refused(tiny, tx(0, 0, fee=99)) is MempoolCode.FULL


def test_full_is_decided_before_the_signature_and_a_failed_attempt_evicts_nothing() -> None:
    pool, _ = fresh(max_txs=1)
    pool.add(tx(0, 0, fee=1))
    forged_cheap = Tx(B.address, SINK, 1, 1, 0, B.pubkey, bytes(64))
    assert refused(pool, forged_cheap) is MempoolCode.FULL
    forged_rich = Tx(B.address, SINK, 1, 5, 0, B.pubkey, bytes(64))
    assert refused(pool, forged_rich) is MempoolCode.INVALID
    assert pool.txs() == [tx(0, 0, fee=1)]  # the would-be victim survived
    pool.add(tx(1, 0, fee=5))
    assert pool.txs() == [tx(1, 0, fee=5)]


# --- block templates ----------------------------------------------------------------------
def test_select_is_fee_ordered_but_keeps_each_senders_nonce_order() -> None:
    pool, ledger = fresh(1000)
    a0, a1, b0, b1 = tx(0, 0, fee=1), tx(0, 1, fee=100), tx(1, 0, fee=50), tx(1, 1, fee=2)
    for t in (a0, a1, b0, b1):
        pool.add(t)
    everything = pool.select(10, 10**6)
    assert everything == [b0, b1, a0, a1]
    assert_applies(everything, ledger)
    assert pool.select(3, 10**6) == [b0, b1, a0]
    assert pool.select(10, 2 * a0.size) == [b0, b1]
    assert pool.select(0, 10**6) == [] and pool.select(10, a0.size - 1) == []
    assert len(pool) == 4  # selecting removes nothing


def test_select_output_applies_even_with_chained_payments() -> None:
    pool, ledger = fresh({A.address: 10})
    pool.add(tx(0, 0, amount=9, fee=1, to=B.address))  # B is unfunded until this confirms
    assert refused(pool, tx(1, 0)) is MempoolCode.INSUFFICIENT_FUNDS
    assert_applies(pool.select(10, 10**6), ledger)


# --- chain events -------------------------------------------------------------------------
def test_block_removes_confirmed_and_keeps_the_rest() -> None:
    pool, ledger = fresh()
    for t in (tx(0, 0), tx(0, 1), tx(1, 0, fee=3)):
        pool.add(t)
    block = ledger.connect(pool.select(2, 10**6))
    pool.update([block], [])
    assert pool.txs() == [tx(0, 1)]
    assert pool.next_nonce(A.address) == 2 and pool.pending_balance(A.address) == 100 - 4
    assert_applies(pool.select(10, 10**6), ledger)


def test_block_with_a_conflicting_tx_drops_the_pooled_one_and_now_unfunded_dependents() -> None:
    pool, ledger = fresh({A.address: 10, B.address: 10})
    for t in (tx(0, 0, amount=4), tx(0, 1, amount=4), tx(1, 0, amount=2)):
        pool.add(t)
    rival = tx(0, 0, amount=7)  # same nonce, spends more: the pooled nonce 1 is no longer funded
    pool.update([ledger.connect([rival])], [])
    assert pool.txs() == [tx(1, 0, amount=2)]
    assert pool.next_nonce(A.address) == 1


def test_reorg_returns_disconnected_txs_to_the_pool() -> None:
    pool, ledger = fresh()
    pool.add(tx(0, 0))
    pool.add(tx(1, 0))
    old = ledger.connect(pool.select(10, 10**6))
    pool.update([old], [])
    pool.add(tx(0, 1, fee=7))  # depends on the confirmed nonce 0
    assert len(pool) == 1
    gone = ledger.disconnect(1)
    new = ledger.connect([tx(1, 0)])  # the new branch mined B's tx but not A's
    pool.update([new], gone)
    assert sorted(pool.txs(), key=lambda t: (t.sender, t.nonce)) == [tx(0, 0), tx(0, 1, fee=7)]
    assert pool.next_nonce(A.address) == 2
    assert_applies(pool.select(10, 10**6), ledger)


def test_reorg_drops_txs_the_new_branch_invalidated(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="p2pchain.mempool")
    pool, ledger = fresh({A.address: 10, B.address: 10})
    old = ledger.connect([tx(0, 0, amount=5), tx(1, 0, amount=2)])
    pool.update([old], [])
    pool.add(tx(0, 1, amount=3))
    pool.add(tx(1, 1, amount=2))
    gone = ledger.disconnect(1)
    new = [ledger.connect([tx(0, 0, amount=8)]), ledger.connect([])]  # A double-spent nonce 0
    pool.update(new, gone)
    # A's old nonce 0 is stale, its nonce 1 (3 + 1) no longer fits A's 1 coin; B is untouched.
    assert sorted(pool.txs(), key=lambda t: t.nonce) == [tx(1, 0, amount=2), tx(1, 1, amount=2)]
    assert pool.next_nonce(A.address) == 1 and pool.pending_balance(A.address) == 1
    # each drop is logged at INFO with its reason, in the form bench.py soak reads: the payment
    # the new chain cannot fund counts there as dropped by a reorg, not as lost
    drops = [r for r in caplog.records if r.levelno == logging.INFO and "after reorg" in r.getMessage()]
    stale, unfunded = tx(0, 0, amount=5), tx(0, 1, amount=3)
    assert {r.getMessage().split()[4] for r in drops} == {stale.txid.hex() + ":", unfunded.txid.hex() + ":"}
    node_log = [logging.Formatter(logs.TEXT_FORMAT).format(r) for r in drops]  # as a node's log file holds them
    assert soak.reorg_drops(node_log) == {unfunded.txid}


def test_reorg_back_and_forth_loses_nothing() -> None:
    pool, ledger = fresh()
    txs = [tx(0, 0), tx(0, 1), tx(1, 0, fee=4), tx(2, 0, fee=2)]
    for t in txs:
        pool.add(t)
    first = ledger.connect(pool.select(2, 10**6))
    second = ledger.connect([])
    pool.update([first, second], [])
    assert len(pool) == 2
    gone = ledger.disconnect(2)
    pool.update([ledger.connect([]), ledger.connect([]), ledger.connect([])], gone)
    assert set(pool.txs()) == set(txs)
    assert_applies(pool.select(10, 10**6), ledger)


# --- property -----------------------------------------------------------------------------
def assert_consistent(pool: Mempool, ledger: Ledger) -> None:
    everything = pool.select(10**6, 10**9)
    assert len(everything) == len(pool) <= pool.max_txs  # every pooled tx is minable
    assert_applies(everything, ledger)
    assert_applies(pool.select(3, 3 * tx(0, 0).size), ledger)
    assert pool.bytes == sum(t.size for t in everything)
    in_chain = {t.txid for b in ledger.blocks for t in b.txs}
    assert not any(t.txid in in_chain for t in everything)
    fees = [t.fee for t in pool.txs()]
    assert fees == sorted(fees, reverse=True)
    for w in WALLETS:
        pooled = [t for t in everything if t.sender == w.address]
        assert pool.next_nonce(w.address) == ledger.get(w.address).nonce + len(pooled)
        assert pool.pending_balance(w.address) == ledger.get(w.address).balance - sum(t.amount + t.fee for t in pooled)
        assert pool.pending_balance(w.address) >= 0


small = st.integers(min_value=1, max_value=6)
wallet_index = st.integers(min_value=0, max_value=len(WALLETS) - 1)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from([3, 1000]))
def test_pool_stays_minable_through_random_adds_blocks_and_reorgs(data: st.DataObject, capacity: int) -> None:
    pool, ledger = fresh(12, max_txs=capacity)
    for _ in range(data.draw(st.integers(min_value=1, max_value=25), label="steps")):
        step = data.draw(st.sampled_from(["add", "add", "add", "mine", "foreign", "reorg"]))
        if step == "add":
            sender = data.draw(wallet_index)
            nonce = max(0, pool.next_nonce(WALLETS[sender].address) + data.draw(st.integers(-1, 1)))
            to = WALLETS[data.draw(wallet_index)].address
            try:
                pool.add(tx(sender, nonce, amount=data.draw(small), fee=data.draw(small), to=to))
            except MempoolError as e:
                assert e.code is not MempoolCode.INVALID
        elif step == "mine":
            picked = pool.select(data.draw(st.integers(0, 4)), 10**6)
            pool.update([ledger.connect(picked, miner=WALLETS[data.draw(wallet_index)].address)], [])
        elif step == "foreign":  # a block with a tx this pool never saw (maybe a double spend)
            sender = data.draw(wallet_index)
            account = ledger.get(WALLETS[sender].address)
            amount = data.draw(st.integers(1, 12))
            if amount + 1 <= account.balance:
                pool.update([ledger.connect([tx(sender, account.nonce, amount=amount, fee=1)])], [])
        elif ledger.blocks:  # reorg
            before = {t.txid: t for t in pool.txs()}
            gone = ledger.disconnect(data.draw(st.integers(1, len(ledger.blocks)), label="depth"))
            new = []
            for _ in range(data.draw(st.integers(0, 2), label="new blocks")):
                # the new branch re-mines a random valid subset of the old one's txs
                keep: list[Tx] = []
                for t in (t for b in reversed(gone) for t in b.txs[1:]):
                    if data.draw(st.booleans()):
                        try:
                            assert_applies([*keep, t], ledger)
                            keep.append(t)
                        except RuleError:
                            pass
                new.append(ledger.connect(keep))
            pool.update(new, gone)
            if capacity > len(before) + sum(len(b.txs) for b in gone):
                # what is missing could not be readmitted: nothing pending was lost needlessly
                in_chain = {t.txid for b in ledger.blocks for t in b.txs}
                candidates = [*before.values(), *(t for b in gone for t in b.txs[1:])]
                missing = [t for t in candidates if t.txid not in pool and t.txid not in in_chain]
                for t in sorted(missing, key=lambda t: (t.sender, t.nonce)):
                    with pytest.raises(MempoolError):
                        pool.add(t)
        assert_consistent(pool, ledger)


def test_a_one_block_reorg_rechecks_only_the_addresses_it_touched(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12, finding 10: a one-block reorg re-admitted the whole pool on the event loop
    (~200 ms with 20,000 pooled transactions). Only the accounts of the switched blocks' senders
    and recipients change, so only their transactions are checked again; the others stay."""
    params = NetworkParams(bits=8)
    pool = Mempool(params, lambda address: Account(10**9, 0))
    wallets = [Wallet.from_seed(bytes([i + 1]) * 32) for i in range(50)]
    for w in wallets:
        for n in range(3):
            pool.add(make_tx(w, "ab" * 20, 1, 1, n, params.network_id))
    mover = Wallet.from_seed(b"\x99" * 32)
    moved = make_tx(mover, "cd" * 20, 1, 0, 0, params.network_id)
    cb = make_coinbase("ef" * 20, 1, 1)
    genesis = params.genesis.header

    def block(txs: tuple[Tx, ...], nonce: int) -> Block:
        header = Header(genesis.version, 1, genesis.hash, merkle_root([t.txid for t in txs]), genesis.timestamp + 1,
                        genesis.bits, nonce)  # fmt: skip
        return Block(header, txs)

    old, new = block((cb, moved), 1), block((cb,), 2)
    checked: list[bytes] = []
    real = pool._check_state

    def counting(tx: Tx) -> None:
        checked.append(tx.txid)
        real(tx)

    monkeypatch.setattr(pool, "_check_state", counting)
    pool.update([new], [old])
    assert checked == [moved.txid], f"{len(checked)} transactions checked again for a one-block reorg"
    assert len(pool) == 3 * len(wallets) + 1 and pool.get(moved.txid) is not None
