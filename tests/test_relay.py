"""relay: the relay state of p2pchain/relay.py without sockets: feature negotiation, announcing
each transaction once per peer, asking one announcer at a time (next on not-found, timeout or
disconnect), per-peer bounds, compact-block reconstruction (from the pool, by round trip, by
the full fallback after a short-id collision) and each protocol breach it refuses."""

from __future__ import annotations

from dataclasses import replace

import pytest
from ledger_helpers import GENESIS, block_on, branch, pay, unmine, wallet

from p2pchain import limits, wire
from p2pchain import relay as relay_module
from p2pchain.ledger.block import Block
from p2pchain.ledger.tx import Tx
from p2pchain.peer import Misbehaving
from p2pchain.relay import (
    FEATURE_CMPCT,
    FEATURE_HB,
    FEATURE_INV_TX,
    FEATURES,
    ExtraPool,
    PartialBlock,
    Relay,
    compact_block,
    negotiate,
    short_id_key,
    short_ids,
    whole_block,
)

ALICE, BOB = wallet(1), wallet(2)
T0 = 100.0  # the tests' clock, seconds


def payments(n: int, sender_seed: int = 1) -> list[Tx]:
    sender = wallet(sender_seed)
    return [pay(sender, BOB, 1, nonce=i) for i in range(n)]


def relay_with(*peers: str, features: tuple[str, ...] = FEATURES) -> Relay[str]:
    relay: Relay[str] = Relay()
    for p in peers:
        relay.add_peer(p, 2, features)
    return relay


def never(txid: bytes) -> bool:
    return False


# --- negotiation ----------------------------------------------------------------------------
def test_negotiation_is_the_intersection_and_version_1_gets_nothing() -> None:
    assert negotiate(FEATURES, 1, FEATURES) == frozenset()  # a version 1 HELLO cannot name features
    assert negotiate(FEATURES, 2, ()) == frozenset()
    assert negotiate(FEATURES, 2, (FEATURE_INV_TX, "future-thing")) == {FEATURE_INV_TX}
    assert negotiate((), 3, FEATURES) == frozenset()  # a --relay flood node offers none
    assert negotiate(FEATURES, 2, (FEATURE_INV_TX, FEATURE_HB)) == {FEATURE_INV_TX}  # cmpct-hb needs cmpct-block


def test_hello_without_relay_is_version_1_bytes() -> None:
    """The optional field is left out at its default, so such a HELLO is a version 1 HELLO."""
    plain = wire.Hello(1, bytes(32), bytes(16), 7000, 0, bytes(32), 0, "a")
    assert b"relay" not in plain.payload()
    rich = replace(plain, version=2, relay=FEATURES)
    decoded = wire.decode_message(rich.payload())
    assert isinstance(decoded, wire.Hello) and decoded.relay == FEATURES
    assert wire.decode_message(plain.payload()) == plain


# --- announcing -----------------------------------------------------------------------------
def test_each_transaction_is_announced_once_to_each_inv_peer_but_its_source() -> None:
    relay = relay_with("a", "b")
    relay.add_peer("old", 1, ())  # version 1: gets NEW_TX from node.py, never INV_TX
    txid = payments(1)[0].txid
    relay.announce(txid, exclude="a")
    relay.announce(txid)  # again, e.g. after a reorg: nobody hears of it twice
    assert relay.take_announcements() == {"b": [(txid,)]}
    assert relay.take_announcements() == {}
    assert not relay.speaks("old", FEATURE_INV_TX) and relay.speaks("b", FEATURE_CMPCT)


def test_a_peer_that_announced_a_transaction_is_never_told_of_it() -> None:
    relay = relay_with("a", "b")
    txid = payments(1)[0].txid
    relay.on_inv("a", [txid], never, T0)
    relay.announce(txid)  # we got it (from a) and pass it on
    assert relay.take_announcements() == {"b": [(txid,)]}


def test_announcements_are_batched_in_inv_sized_messages() -> None:
    relay = relay_with("a")
    ids = [i.to_bytes(32, "big") for i in range(limits.MAX_INV_TXIDS + 5)]
    relay.announce_to("a", ids)
    batches = relay.take_announcements()["a"]
    assert [len(b) for b in batches] == [limits.MAX_INV_TXIDS, 5]


def test_a_queued_announcement_of_a_transaction_a_block_confirmed_is_dropped() -> None:
    """A block that connects before the next INV_TX flush carries its transactions to every
    peer: announcing them after it is waste (and an INV_TX to read during the block's relay)."""
    txs = payments(3)
    relay = relay_with("a", "b")
    for tx in txs:
        relay.announce(tx.txid)
    relay.connected([block_on(GENESIS, txs[:2])])
    assert relay.take_announcements() == {"a": [(txs[2].txid,)], "b": [(txs[2].txid,)]}
    relay.connected([block_on(GENESIS, txs[2:])])  # nothing queued: nothing to drop
    assert relay.take_announcements() == {}


# --- requesting -----------------------------------------------------------------------------
def test_one_announcer_is_asked_at_a_time_and_not_found_moves_to_the_next() -> None:
    relay = relay_with("a", "b", "c")
    tx = payments(1)[0]
    assert relay.on_inv("a", [tx.txid], never, T0) == {"a": [tx.txid]}
    relay.requested("a", [tx.txid])
    assert relay.on_inv("b", [tx.txid], never, T0) == {}  # a is being asked
    assert relay.on_inv("c", [tx.txid], never, T0) == {}
    assert relay.on_txs("a", (), T0 + 0.1) == {"b": [tx.txid]}  # a no longer had it
    relay.requested("b", [tx.txid])
    assert relay.on_txs("b", (tx,), T0 + 0.2) == {}
    assert relay.expire(T0 + 100) == ({}, [])  # delivered: nothing left to ask


def test_a_request_that_times_out_goes_to_the_next_announcer_and_a_late_answer_is_welcome() -> None:
    relay = relay_with("a", "b")
    tx = payments(1)[0]
    relay.requested("a", relay.on_inv("a", [tx.txid], never, T0)["a"])
    relay.on_inv("b", [tx.txid], never, T0)
    assert relay.expire(T0 + limits.RELAY_TX_REQUEST_TIMEOUT_S / 2) == ({}, [])
    assert relay.expire(T0 + limits.RELAY_TX_REQUEST_TIMEOUT_S) == ({"b": [tx.txid]}, [])
    relay.requested("b", [tx.txid])
    assert relay.on_txs("a", (tx,), T0 + 3) == {}  # a's late answer was asked for: not a breach
    assert relay.stats.tx_request_timeouts == 1


def test_a_disconnected_announcer_hands_its_requests_to_the_next() -> None:
    relay = relay_with("a", "b")
    txid = payments(1)[0].txid
    relay.requested("a", relay.on_inv("a", [txid], never, T0)["a"])
    relay.on_inv("b", [txid], never, T0)
    assert relay.remove_peer("a", T0 + 0.1) == {"b": [txid]}


def test_what_we_have_is_not_asked_for() -> None:
    relay = relay_with("a")
    pooled, confirmed, fresh = payments(3)
    relay.connected([block_on(GENESIS, [confirmed])])
    assert relay.on_inv("a", [pooled.txid, confirmed.txid, fresh.txid], lambda t: t == pooled.txid, T0) == {
        "a": [fresh.txid]
    }


def test_announcements_past_the_per_peer_bound_are_ignored() -> None:
    relay = relay_with("a")
    ids = [i.to_bytes(32, "big") for i in range(limits.RELAY_MAX_PEER_ANNOUNCED + 10)]
    asked: list[bytes] = []
    for i in range(0, len(ids), limits.MAX_INV_TXIDS):
        for peer, txids in relay.on_inv("a", ids[i : i + limits.MAX_INV_TXIDS], never, T0).items():
            relay.requested(peer, txids)
            asked += txids
    assert len(asked) == limits.RELAY_MAX_PEER_IN_FLIGHT  # never more in flight than the bound
    assert relay.stats.announcements_ignored == 10


def test_txs_nobody_asked_for_and_unasked_transactions_are_breaches() -> None:
    relay = relay_with("a")
    tx, other = payments(2)
    with pytest.raises(Misbehaving, match="nobody asked"):
        relay.on_txs("a", (tx,), T0)
    relay.requested("a", relay.on_inv("a", [tx.txid], never, T0)["a"])
    with pytest.raises(Misbehaving, match="not asked for"):
        relay.on_txs("a", (tx, other), T0)


def test_inv_from_a_peer_without_the_feature_is_a_breach() -> None:
    relay = relay_with("a", features=(FEATURE_CMPCT,))
    with pytest.raises(Misbehaving):
        relay.on_inv("a", [bytes(32)], never, T0)


# --- the extra pool -------------------------------------------------------------------------
def test_extra_pool_is_bounded_and_hands_back_a_successor_once() -> None:
    extra = ExtraPool(max_txs=3)
    txs = payments(5)
    for tx in txs[1:]:
        extra.add(tx)
    assert len(extra) == 3 and txs[1].txid not in extra  # the oldest went
    assert extra.pop_successor(txs[1]) == txs[2]
    assert extra.pop_successor(txs[1]) is None and txs[2].txid not in extra


# --- compact blocks -------------------------------------------------------------------------
def block_of(txs: list[Tx]) -> Block:
    return block_on(GENESIS, txs)


def test_short_ids_depend_on_the_block_and_the_nonce() -> None:
    txid = payments(1)[0].txid
    a = next(short_ids(short_id_key(bytes(32), 1), [txid]))
    assert len(a) == limits.SHORT_ID_BYTES
    assert a != next(short_ids(short_id_key(bytes(32), 2), [txid]))
    assert a != next(short_ids(short_id_key(b"\x01" * 32, 1), [txid]))


def test_a_block_whose_transactions_are_pooled_is_rebuilt_without_a_round_trip() -> None:
    txs = payments(20)
    block = block_of(txs)
    relay = relay_with("a")
    pool = [*reversed(txs), *payments(5, sender_seed=3)]
    assert relay.on_cmpct("a", compact_block(block, 7), lambda: pool, T0) == block
    assert relay.stats.cmpct_rebuilt == 1


def test_missing_transactions_are_asked_for_by_index_in_one_round_trip() -> None:
    txs = payments(10)
    block = block_of(txs)
    relay = relay_with("a")
    request = relay.on_cmpct("a", compact_block(block, 7), lambda: txs[:4] + txs[6:], T0)
    assert request == wire.GetBlockTxn(block.hash, (5, 6))  # block indexes: the coinbase is 0
    assert relay.on_block_txn("a", wire.BlockTxn(block.hash, (txs[4], txs[5])), T0) == block
    with pytest.raises(Misbehaving, match="nobody asked"):  # answered already
        relay.on_block_txn("a", wire.BlockTxn(block.hash, (txs[4], txs[5])), T0)


def impostor_for(msg: wire.CmpctBlock, i: int) -> Tx:
    """A payment outside the block whose short id equals the block's ``i``-th one (with
    SHORT_ID_BYTES patched to 1, one in 256 payments is)."""
    key = short_id_key(msg.header.hash, msg.nonce)
    sender = wallet(4)
    for nonce in range(5000):
        tx = pay(sender, BOB, 1, nonce=nonce)
        if next(short_ids(key, [tx.txid])) == msg.short_ids[i]:
            return tx
    raise AssertionError("no colliding payment in 5000")


def test_a_short_id_collision_falls_back_to_every_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """1-byte short ids make collisions certain among a few hundred candidates: a pooled
    transaction that is not in the block takes a slot, the merkle root does not match, and
    every transaction is asked of the sender."""
    monkeypatch.setattr(limits, "SHORT_ID_BYTES", 1)
    txs = payments(3)
    block = block_of(txs)
    msg = compact_block(block, 9)
    impostor = impostor_for(msg, 0)
    relay = relay_with("a")
    request = relay.on_cmpct("a", msg, lambda: [impostor, *txs[1:]], T0)
    assert request == wire.GetBlockTxn(block.hash, (1, 2, 3))
    assert relay.stats.cmpct_full_fallback == 1
    assert relay.on_block_txn("a", wire.BlockTxn(block.hash, tuple(txs)), T0) == block


def test_two_candidates_for_one_slot_leave_it_to_be_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "SHORT_ID_BYTES", 1)
    txs = payments(3)
    block = block_of(txs)
    msg = compact_block(block, 9)
    impostor = impostor_for(msg, 1)
    relay = relay_with("a")
    assert relay.on_cmpct("a", msg, lambda: [*txs, impostor], T0) == wire.GetBlockTxn(block.hash, (2,))


def test_a_full_answer_that_does_not_make_the_block_is_a_lie() -> None:
    txs = payments(3)
    block = block_of(txs)
    relay = relay_with("a")
    relay.on_cmpct("a", compact_block(block, 1), lambda: (), T0)  # asks for 1, 2, 3
    bad = (txs[0], txs[1], payments(1, sender_seed=5)[0])
    request = relay.on_block_txn("a", wire.BlockTxn(block.hash, bad), T0)
    assert request == ("a", wire.GetBlockTxn(block.hash, (1, 2, 3)))  # might have been our mistake: ask all
    with pytest.raises(Misbehaving, match="merkle root"):
        relay.on_block_txn("a", wire.BlockTxn(block.hash, bad), T0)


def test_block_txn_of_the_wrong_length_is_a_breach() -> None:
    txs = payments(3)
    block = block_of(txs)
    relay = relay_with("a")
    relay.on_cmpct("a", compact_block(block, 1), lambda: (), T0)
    with pytest.raises(Misbehaving, match="for 3 asked"):
        relay.on_block_txn("a", wire.BlockTxn(block.hash, (txs[0],)), T0)


def test_a_sender_without_the_block_hands_over_to_the_next_sender() -> None:
    txs = payments(2)
    block = block_of(txs)
    relay = relay_with("a", "b")
    msg = compact_block(block, 1)
    assert isinstance(relay.on_cmpct("a", msg, lambda: (), T0), wire.GetBlockTxn)
    assert relay.on_cmpct("b", compact_block(block, 2), lambda: (), T0) is None  # being rebuilt
    assert relay.on_block_txn("a", wire.BlockTxn(block.hash, ()), T0) == ("b", wire.GetBlockTxn(block.hash, (1, 2)))
    assert relay.on_block_txn("b", wire.BlockTxn(block.hash, tuple(txs)), T0) == block


def two_senders_of_a_block() -> tuple[list[Tx], Block, Relay[str]]:
    """Peers "a" and "b" both sent the compact block of two payments we lack: "a" is asked first."""
    txs = payments(2)
    block = block_of(txs)
    relay = relay_with("a", "b")
    relay.on_cmpct("a", compact_block(block, 1), lambda: (), T0)
    relay.on_cmpct("b", compact_block(block, 2), lambda: (), T0)
    return txs, block, relay


def test_a_silent_sender_times_out_to_the_next_and_its_late_answer_still_counts() -> None:
    txs, block, relay = two_senders_of_a_block()
    assert relay.expire(T0 + limits.RELAY_BLOCK_TXN_TIMEOUT_S) == ({}, [("b", wire.GetBlockTxn(block.hash, (1, 2)))])
    assert relay.on_block_txn("a", wire.BlockTxn(block.hash, tuple(txs)), T0 + 3) == block  # slow, not wrong
    assert relay.on_block_txn("b", wire.BlockTxn(block.hash, tuple(txs)), T0 + 3.1) is None  # late, harmless
    assert relay.next_deadline() is None


def test_a_late_answer_that_does_not_make_the_block_leaves_it_to_the_sender_asked_now() -> None:
    txs, block, relay = two_senders_of_a_block()
    relay.expire(T0 + limits.RELAY_BLOCK_TXN_TIMEOUT_S)  # b is asked for every transaction
    wrong = tuple(payments(2, sender_seed=3))
    assert relay.on_block_txn("a", wire.BlockTxn(block.hash, wrong), T0 + 3) is None
    assert relay.on_block_txn("b", wire.BlockTxn(block.hash, tuple(txs)), T0 + 3.1) == block


def test_a_wrong_late_answer_cannot_spoil_what_the_sender_asked_now_prefilled() -> None:
    txs = payments(2)
    block = block_of(txs)
    relay = relay_with("a", "b")
    relay.on_cmpct("a", compact_block(block, 1), lambda: (), T0)
    relay.on_cmpct("b", compact_block(block, 2, prefill=(1,)), lambda: (), T0)
    assert relay.expire(T0 + limits.RELAY_BLOCK_TXN_TIMEOUT_S) == ({}, [("b", wire.GetBlockTxn(block.hash, (2,)))])
    wrong = tuple(payments(2, sender_seed=3))
    assert relay.on_block_txn("a", wire.BlockTxn(block.hash, wrong), T0 + 3) is None  # ignored, not a breach
    assert relay.on_block_txn("b", wire.BlockTxn(block.hash, (txs[1],)), T0 + 3.1) == block  # b is no liar


def test_the_only_sender_of_a_compact_block_is_waited_for_past_the_timeout() -> None:
    # A slow link (loss, TCP's retransmission backoff) delays an answer; it does not lose it.
    # Giving up on the only sender would leave the block until the next block's orphan sync.
    txs = payments(2)
    block = block_of(txs)
    relay = relay_with("a", "b")
    assert relay.on_cmpct("a", compact_block(block, 1), lambda: (), T0) == wire.GetBlockTxn(block.hash, (1, 2))
    later = T0 + limits.RELAY_BLOCK_TXN_TIMEOUT_S
    assert relay.expire(later) == ({}, [])  # nobody else to ask, and nothing asked twice
    assert relay.next_deadline() == later + limits.RELAY_BLOCK_TXN_TIMEOUT_S
    assert relay.expire(later + limits.RELAY_BLOCK_TXN_TIMEOUT_S) == ({}, [])
    assert relay.stats.cmpct_failed == 0
    assert relay.on_block_txn("a", wire.BlockTxn(block.hash, tuple(txs)), T0 + 7) == block
    assert relay.next_deadline() is None


def test_a_late_empty_answer_or_one_beyond_the_block_being_rebuilt_is_ignored() -> None:
    # an empty BLOCK_TXN is "no longer have it": from a sender already moved on from, nothing to do
    txs, block, relay = two_senders_of_a_block()
    relay.expire(T0 + limits.RELAY_BLOCK_TXN_TIMEOUT_S)  # b is asked now
    assert relay.on_block_txn("a", wire.BlockTxn(block.hash, ()), T0 + 3) is None
    assert relay.on_block_txn("b", wire.BlockTxn(block.hash, tuple(txs)), T0 + 3.1) == block
    # a's compact block had more slots than b's, so a's late indexes do not fit b's: ignored
    big = block_of(payments(3))
    relay = relay_with("a", "b")
    assert relay.on_cmpct("a", compact_block(big, 1), lambda: (), T0) == wire.GetBlockTxn(big.hash, (1, 2, 3))
    fewer = replace(compact_block(big, 2), short_ids=compact_block(big, 2).short_ids[:1])
    assert relay.on_cmpct("b", fewer, lambda: (), T0) is None
    assert relay.expire(T0 + limits.RELAY_BLOCK_TXN_TIMEOUT_S) == ({}, [("b", wire.GetBlockTxn(big.hash, (1,)))])
    assert relay.on_block_txn("a", wire.BlockTxn(big.hash, big.txs[1:]), T0 + 3) is None


def test_a_silent_only_sender_is_given_up_after_the_wait_bound() -> None:
    block = block_of(payments(2))
    relay = relay_with("a")
    relay.on_cmpct("a", compact_block(block, 1), lambda: (), T0)
    t = T0
    while relay.next_deadline() is not None and t < T0 + 2 * limits.RELAY_BLOCK_WAIT_MAX_S:  # bounded
        t = relay.next_deadline() or t
        assert relay.expire(t) == ({}, [])
    assert relay.next_deadline() is None and relay.stats.cmpct_failed == 1
    assert (
        T0 + limits.RELAY_BLOCK_WAIT_MAX_S
        <= t
        < T0 + limits.RELAY_BLOCK_WAIT_MAX_S + 2 * limits.RELAY_BLOCK_TXN_TIMEOUT_S
    )
    # and so is the only announcer of a block
    relay.on_inv_block("a", [block.hash], never, t)
    start = t
    while relay.next_deadline() is not None and t < start + 2 * limits.RELAY_BLOCK_WAIT_MAX_S:
        t = relay.next_deadline() or t
        assert relay.expire(t) == ({}, [])
    assert relay.next_deadline() is None
    assert (
        start + limits.RELAY_BLOCK_WAIT_MAX_S
        <= t
        < start + limits.RELAY_BLOCK_WAIT_MAX_S + 2 * limits.RELAY_BLOCK_TXN_TIMEOUT_S
    )


def test_a_late_no_such_block_to_a_get_cmpct_is_no_breach() -> None:
    block = block_of(payments(1))
    relay = relay_with("a", "b")
    relay.on_inv_block("a", [block.hash], never, T0)
    relay.on_inv_block("b", [block.hash], never, T0)
    assert relay.expire(T0 + limits.RELAY_BLOCK_TXN_TIMEOUT_S) == ({}, [("b", wire.GetCmpct(block.hash))])
    assert relay.on_block_txn("a", wire.BlockTxn(block.hash, ()), T0 + 3) is None  # a, moved on from: late
    with pytest.raises(Misbehaving, match="nobody asked"):  # but only once: it was asked once
        relay.on_block_txn("a", wire.BlockTxn(block.hash, ()), T0 + 3)
    # b, the only one left, silent until the wait bound: given up; its late answer is no breach either
    t = T0 + limits.RELAY_BLOCK_TXN_TIMEOUT_S
    while relay.next_deadline() is not None and t < T0 + 2 * limits.RELAY_BLOCK_WAIT_MAX_S:  # bounded
        t = relay.next_deadline() or t
        relay.expire(t)
    assert relay.next_deadline() is None
    assert relay.on_block_txn("b", wire.BlockTxn(block.hash, ()), t + 1) is None


def test_a_compact_block_whose_only_sender_left_is_given_up() -> None:
    block = block_of(payments(2))
    relay = relay_with("a")
    relay.on_cmpct("a", compact_block(block, 1), lambda: (), T0)
    relay.remove_peer("a", T0 + 1)  # its reconnection's handshake sync fetches the block
    assert relay.expire(T0 + 1) == ({}, [])
    assert relay.stats.cmpct_failed == 1
    assert relay.next_deadline() is None


def test_the_only_announcer_of_a_block_is_waited_for_past_the_timeout() -> None:
    block = block_of(payments(1))
    relay = relay_with("a", "b")
    assert relay.on_inv_block("a", [block.hash], never, T0) == [("a", wire.GetCmpct(block.hash))]
    later = T0 + limits.RELAY_BLOCK_TXN_TIMEOUT_S
    assert relay.expire(later) == ({}, [])  # not asked twice, not dropped
    assert relay.stats.block_fetch_timeouts == 1
    assert relay.next_deadline() == later + limits.RELAY_BLOCK_TXN_TIMEOUT_S
    # another announcer turns up: it is asked at the next deadline
    assert relay.on_inv_block("b", [block.hash], never, later + 1) == []
    assert relay.expire(later + limits.RELAY_BLOCK_TXN_TIMEOUT_S) == ({}, [("b", wire.GetCmpct(block.hash))])
    # and the slow first announcer's compact block, when it comes, is the block
    assert relay.on_cmpct("a", compact_block(block, 1), lambda: block.txs[1:], T0 + 7) == block


def test_compact_blocks_that_cannot_be_honest_are_refused() -> None:
    block = block_of(payments(2))
    relay = relay_with("a")
    msg = compact_block(block, 1)
    no_pow = replace(msg, header=unmine(block.header))
    with pytest.raises(Misbehaving, match="proof of work"):
        relay.on_cmpct("a", no_pow, lambda: (), T0)
    with pytest.raises(Misbehaving, match="coinbase"):
        PartialBlock(replace(msg, prefilled=()))
    with pytest.raises(Misbehaving, match="increasing"):
        PartialBlock(replace(msg, prefilled=((0, block.txs[0]), (0, block.txs[1]))))
    with pytest.raises(Misbehaving, match="over"):
        PartialBlock(replace(msg, short_ids=(b"\0" * 6,) * limits.MAX_BLOCK_TXS))


def test_a_compact_block_of_whole_transactions_is_the_block_partial_block_would_rebuild() -> None:
    """A compact block with no short ids (every transaction prefilled: a coinbase-only block,
    most often) is taken as it is (whole_block), and it is the block the slots would give; one
    whose indexes are wrong is left to PartialBlock, which refuses it as before; one whose own
    transactions do not make its merkle root is a breach (there is nothing to ask for)."""
    coinbase_only = block_of([])
    paid = block_of(payments(2))
    for block in (coinbase_only, paid):
        msg = compact_block(block, 7, prefill=range(len(block.txs)))
        assert not msg.short_ids
        assert whole_block(msg) == block == PartialBlock(msg).block()
        relay = relay_with("a")
        assert relay.on_cmpct("a", msg, lambda: (), T0) == block
        assert relay.stats.cmpct_rebuilt == 1 and relay.stats.cmpct_roundtrip == 0
    msg = compact_block(paid, 7, prefill=(1, 2))
    skipped = replace(msg, prefilled=(msg.prefilled[0], (2, paid.txs[1])))  # indexes 0, 2 of 2
    assert whole_block(skipped) is None
    with pytest.raises(Misbehaving, match="increasing within the block"):
        relay_with("a").on_cmpct("a", skipped, lambda: (), T0)
    swapped = replace(msg, prefilled=((0, paid.txs[0]), (1, paid.txs[2]), (2, paid.txs[1])))
    with pytest.raises(Misbehaving, match="do not match its merkle root"):  # nothing left to ask for
        relay_with("a").on_cmpct("a", swapped, lambda: (), T0)
    assert whole_block(replace(msg, prefilled=())) is None
    assert whole_block(compact_block(paid, 7)) is None  # short ids: rebuilt from the pool


def test_get_block_txn_beyond_the_block_is_a_breach() -> None:
    block = block_of(payments(2))
    relay = relay_with("a")
    assert relay.block_txn(block, wire.GetBlockTxn(block.hash, (2, 0))).txs == (block.txs[2], block.txs[0])
    assert relay.block_txn(None, wire.GetBlockTxn(block.hash, (1,))).txs == ()
    with pytest.raises(Misbehaving, match="beyond"):
        relay.block_txn(block, wire.GetBlockTxn(block.hash, (3,)))


def test_blocks_go_compact_or_full_by_feature_and_never_twice() -> None:
    block = block_of(payments(1))
    relay = relay_with("a", "b")
    relay.on_send_cmpct("a", True)  # a asked for new blocks at once
    relay.add_peer("v2", 2, (FEATURE_INV_TX, FEATURE_CMPCT))  # compact blocks, no cmpct-hb: at once, as before
    relay.add_peer("old", 1, ())
    relay.add_peer("client", 2, ())  # a HELLO without relay features
    relay.add_peer("source", 2, (FEATURE_INV_TX, FEATURE_CMPCT))
    relay.block_known("b", block.hash)  # b sent it to us
    assert relay.block_targets(block, exclude="source") == (["a", "v2"], ["old", "client"], True)
    assert relay.block_targets(block, exclude="source") == ([], [], True)  # never twice; b gets it announced
    assert relay.recent_block(block.hash) == block


# --- high-bandwidth peers and block announcements (cmpct-hb) -------------------------------------
def test_a_new_block_goes_at_once_only_to_peers_that_asked_and_is_announced_to_the_others() -> None:
    first, second = block_of(payments(1)), block_on(GENESIS, payments(1, sender_seed=3))
    relay = relay_with("hb", "lb", "told")
    relay.on_send_cmpct("hb", True)
    assert relay.block_targets(first) == (["hb"], [], True)
    assert relay.block_targets(second) == (["hb"], [], True)
    relay.block_known("told", second.hash)  # it sent us the newest meanwhile
    # the newest queued block only (a peer that has it has its ancestors), once
    assert relay.take_block_announcements() == (second.hash, ["lb"])
    assert relay.take_block_announcements() is None
    assert relay.stats.blocks_announced == 1


def test_a_round_of_announcements_tells_the_peers_that_dialled_us_first() -> None:
    """Each link's dialler hears first (the round's "inbound" part); RELAY_BLOCK_INV_OUTBOUND_DELAY_S
    later the peers we dialled are told the same block, but not one that announced it to us
    meanwhile (its own first part: one INV_BLOCK on that link, not one each way). A block newer
    than the first part's is left for the next round, which then skips whoever knows it."""
    first, second = block_of(payments(1)), block_on(GENESIS, payments(1, sender_seed=3))
    relay = relay_with("in")
    for p in ("out", "out2"):
        relay.add_peer(p, 2, FEATURES, outbound=True)
    relay.block_targets(first)
    assert relay.take_block_announcements("inbound") == (first.hash, ["in"])
    assert relay.on_inv_block("out", [first.hash], lambda h: True, T0) == []  # its first part, to us
    relay.block_targets(second)  # newer, between the parts
    assert relay.take_block_announcements("outbound") == (first.hash, ["out2"])
    assert relay.announcing()
    assert relay.take_block_announcements("inbound") == (second.hash, ["in"])
    assert relay.take_block_announcements("outbound") == (second.hash, ["out", "out2"])
    assert not relay.announcing() and relay.take_block_announcements("inbound") is None
    assert relay.stats.blocks_announced == 5


def test_a_compact_block_of_a_block_relayed_lately_is_known_by_its_first_bytes() -> None:
    blocks = [block_on(GENESIS, payments(1, sender_seed=s)) for s in range(limits.RELAY_RECENT_BLOCKS + 1)]
    relay = relay_with("a")
    relay.block_targets(blocks[0])
    assert relay.known_compact(compact_block(blocks[0], 5).payload()) == blocks[0].hash
    assert relay.known_compact(compact_block(blocks[1], 5).payload()) is None
    for block in blocks[1:]:
        relay.block_targets(block)
    assert relay.known_compact(compact_block(blocks[-1], 9, prefill=(1,)).payload()) == blocks[-1].hash
    assert relay.known_compact(compact_block(blocks[0], 5).payload()) is None  # the oldest was forgotten
    oversize = compact_block(blocks[-1], 9).payload() + bytes(wire.MAX_PAYLOAD_BYTES["CMPCT_BLOCK"])
    assert relay.known_compact(oversize) is None  # over CMPCT_BLOCK's payload limit: decoded, and refused


def test_the_last_relayed_blocks_are_known_by_their_first_bytes_whatever_their_lengths() -> None:
    """The heads of a chain's compact blocks differ in length (the header's integers take 1-9
    bytes in msgpack); after each relayed block exactly the last RELAY_RECENT_BLOCKS are known,
    whichever lengths came and went."""
    blocks = branch(GENESIS, 40)
    assert len({len(wire.cmpct_head(b.header)) for b in blocks}) > 1  # (the case tested)
    payloads = [compact_block(b, 3).payload() for b in blocks]
    relay = relay_with("a")
    for i, block in enumerate(blocks):
        relay.block_targets(block)
        known = [j for j in range(i + 1) if relay.known_compact(payloads[j]) == blocks[j].hash]
        assert known == list(range(max(0, i + 1 - limits.RELAY_RECENT_BLOCKS), i + 1))


def test_an_announcement_of_a_block_relayed_lately_is_known_by_its_bytes() -> None:
    """An INV_BLOCK that is exactly the announcement of one of the last blocks relayed, as
    p2pchain encodes it, is known without decoding (what on_inv_block does with it: the sender
    has it, nothing is fetched); any other payload is left to decoding."""
    blocks = [block_on(GENESIS, payments(1, sender_seed=s)) for s in range(limits.RELAY_RECENT_BLOCKS + 1)]
    relay = relay_with("a")
    relay.block_targets(blocks[0])
    assert relay.known_inv(wire.InvBlock((blocks[0].hash,)).payload()) == blocks[0].hash
    assert relay.known_inv(wire.InvBlock((blocks[1].hash,)).payload()) is None  # not relayed
    assert relay.known_inv(wire.InvBlock((blocks[0].hash, blocks[1].hash)).payload()) is None  # two hashes
    assert relay.known_inv(wire.InvBlock((blocks[0].hash,)).payload() + bytes(1)) is None  # a byte more
    for block in blocks[1:]:
        relay.block_targets(block)
    assert relay.known_inv(wire.InvBlock((blocks[-1].hash,)).payload()) == blocks[-1].hash
    assert relay.known_inv(wire.InvBlock((blocks[0].hash,)).payload()) is None  # the oldest was forgotten
    for h in (bytes(32), blocks[3].hash, b"\xff" * 32):  # the head the relay keeps, plus the hash
        assert relay_module._INV_BLOCK_HEAD + h == wire.InvBlock((h,)).payload()


def test_a_block_we_mined_goes_at_once_to_every_compact_peer() -> None:
    block = block_of(payments(1))
    relay = relay_with("a", "b")
    assert relay.block_targets(block, mined=True) == (["a", "b"], [], False)
    assert relay.take_block_announcements() is None


def test_a_peer_that_announces_first_is_not_announced_to() -> None:
    block = block_of(payments(1))
    relay = relay_with("a")
    relay.block_targets(block)
    assert relay.on_inv_block("a", [block.hash], lambda h: True, T0) == []
    assert relay.take_block_announcements() is None


def test_start_up_choice_takes_three_peers_and_keeps_an_outbound_one() -> None:
    relay: Relay[str] = Relay()
    for p in ("in1", "in2", "in3", "in4"):
        relay.add_peer(p, 2, FEATURES)
    assert [relay.select_on_connect(p) for p in ("in1", "in2", "in3", "in4")] == [
        [("in1", True)],
        [("in2", True)],
        [("in3", True)],
        [],  # three are selected
    ]
    relay.add_peer("out1", 2, FEATURES, outbound=True)
    relay.add_peer("out2", 2, FEATURES, outbound=True)
    relay.add_peer("v2", 2, (FEATURE_CMPCT,), outbound=True)
    assert relay.select_on_connect("out1") == [("in1", False), ("out1", True)]  # we chose it
    assert relay.select_on_connect("out2") == []  # one outbound is enough
    assert relay.select_on_connect("v2") == []  # speaks no cmpct-hb: gets every block at once anyway
    assert relay.high_bandwidth() == ["in2", "in3", "out1"]


def test_the_peer_that_delivers_first_becomes_high_bandwidth_and_the_oldest_makes_room() -> None:
    relay: Relay[str] = Relay()
    for p, outbound in (("out", True), ("in1", False), ("in2", False), ("in3", False), ("in4", False)):
        relay.add_peer(p, 2, FEATURES, outbound=outbound)
    for p in ("out", "in1", "in2"):
        relay.select_on_connect(p)
    assert relay.delivered_first("in1") == []  # already selected: now the most recent
    assert relay.high_bandwidth() == ["out", "in2", "in1"]
    # the oldest is the only outbound one: the next oldest makes room for an inbound newcomer
    assert relay.delivered_first("in3") == [("in3", True), ("in2", False)]
    assert relay.delivered_first("in4") == [("in4", True), ("in1", False)]
    assert relay.high_bandwidth() == ["out", "in3", "in4"]
    relay.remove_peer("in3", T0)
    assert relay.refill_hb() == [("in1", True)]  # the longest connected that is not selected
    relay.add_peer("old", 1, ())
    assert relay.delivered_first("old") == []  # a version 1 peer cannot be asked


def test_an_announced_block_is_fetched_from_one_announcer_at_a_time() -> None:
    block = block_of(payments(1))
    relay = relay_with("a", "b", "c", "d")
    assert relay.on_inv_block("a", [block.hash], never, T0) == [("a", wire.GetCmpct(block.hash))]
    assert relay.on_inv_block("b", [block.hash], never, T0) == []  # a is being asked
    assert relay.on_inv_block("c", [block.hash], never, T0) == []
    # a no longer has it: b is asked; b is silent: c is asked; c leaves: nobody else announced it
    assert relay.on_block_txn("a", wire.BlockTxn(block.hash, ()), T0) == ("b", wire.GetCmpct(block.hash))
    assert relay.next_deadline() == T0 + limits.RELAY_BLOCK_TXN_TIMEOUT_S
    assert relay.expire(T0 + limits.RELAY_BLOCK_TXN_TIMEOUT_S) == ({}, [("c", wire.GetCmpct(block.hash))])
    assert relay.stats.block_fetch_timeouts == 1
    relay.remove_peer("c", T0 + 3)
    assert relay.expire(T0 + 3) == ({}, [])
    assert relay.next_deadline() is None
    # announced again, and this time the compact block comes: nothing more is asked
    assert relay.on_inv_block("d", [block.hash], never, T0 + 4) == [("d", wire.GetCmpct(block.hash))]
    assert relay.on_cmpct("d", compact_block(block, 1), lambda: block.txs[1:], T0 + 4) == block
    assert relay.next_deadline() is None
    with pytest.raises(Misbehaving, match="nobody asked"):  # a second empty answer is not ours to take
        relay.on_block_txn("d", wire.BlockTxn(block.hash, ()), T0 + 5)


def test_what_we_have_or_are_rebuilding_is_not_fetched_and_wants_are_bounded_per_announcer() -> None:
    relay = relay_with("a", "b")
    assert relay.on_inv_block("a", [bytes(32)], lambda h: True, T0) == []
    hashes = [bytes([i]) * 32 for i in range(1, limits.RELAY_MAX_PEER_BLOCK_WANTS + 3)]
    asked = relay.on_inv_block("a", hashes, never, T0)
    assert [r.hash for _, r in asked] == hashes[: limits.RELAY_MAX_PEER_BLOCK_WANTS]
    assert relay.stats.block_announcements_ignored == 2
    honest = b"\xee" * 32  # a's made-up hashes take none of b's room
    assert relay.on_inv_block("b", [honest], never, T0) == [("b", wire.GetCmpct(honest))]
    relay.on_block_txn("a", wire.BlockTxn(hashes[0], ()), T0)  # a has no such block: its slot is free
    assert relay.on_inv_block("a", [hashes[-1]], never, T0) == [("a", wire.GetCmpct(hashes[-1]))]
    _txs, block, relay = two_senders_of_a_block()  # being rebuilt from a's compact block
    relay.add_peer("c", 2, FEATURES)
    assert relay.on_inv_block("c", [block.hash], never, T0) == []


def test_block_relay_messages_without_the_cmpct_hb_feature_are_breaches() -> None:
    relay = relay_with("v2", features=(FEATURE_INV_TX, FEATURE_CMPCT))
    with pytest.raises(Misbehaving, match="SEND_CMPCT"):
        relay.on_send_cmpct("v2", True)
    with pytest.raises(Misbehaving, match="INV_BLOCK"):
        relay.on_inv_block("v2", [bytes(32)], never, T0)


def test_what_waited_for_room_in_flight_is_asked_when_the_peer_answers() -> None:
    relay = relay_with("a")
    ids = [i.to_bytes(32, "big") for i in range(limits.RELAY_MAX_PEER_IN_FLIGHT + 3)]
    first = relay.on_inv("a", ids[: limits.MAX_INV_TXIDS], never, T0)["a"]
    relay.requested("a", first)
    assert relay.on_inv("a", ids[limits.MAX_INV_TXIDS :], never, T0) == {}  # a's requests are full
    assert relay.on_txs("a", (), T0) == {"a": ids[limits.MAX_INV_TXIDS :]}  # answered: room again


def test_an_announcement_not_yet_sent_is_dropped_when_the_peer_announces_first() -> None:
    relay = relay_with("a", "b")
    txid = payments(1)[0].txid
    relay.announce(txid)  # queued for a and b, the INV_TX not yet sent
    relay.on_inv("a", [txid], lambda t: True, T0)  # a announces it meanwhile: it has it
    assert relay.take_announcements() == {"b": [(txid,)]}


def test_a_transaction_delivered_and_still_being_checked_is_not_fetched_again() -> None:
    relay = relay_with("a", "b")
    tx = payments(1)[0]
    relay.requested("a", relay.on_inv("a", [tx.txid], never, T0)["a"])
    relay.on_txs("a", (tx,), T0)
    relay.delivered_by("a", tx.txid)  # node.py: into the signature batcher, not pooled yet
    assert relay.on_inv("b", [tx.txid], never, T0) == {}


def test_what_we_had_to_fetch_goes_whole_in_our_compact_block() -> None:
    txs = payments(4)
    block = block_of(txs)
    relay = relay_with("a", "b")
    request = relay.on_cmpct("a", compact_block(block, 7), lambda: [txs[0], txs[2], txs[3]], T0)
    assert request == wire.GetBlockTxn(block.hash, (2,))
    assert relay.on_block_txn("a", wire.BlockTxn(block.hash, (txs[1],)), T0) == block
    ours = relay.compact(block)
    assert [i for i, _ in ours.prefilled] == [0, 2] and len(ours.short_ids) == 3
    assert relay_with("c").on_cmpct("c", ours, lambda: [], T0) == wire.GetBlockTxn(block.hash, (1, 3, 4))


def test_a_disconnected_block_sender_hands_over_to_the_next_at_once() -> None:
    txs, block, relay = two_senders_of_a_block()
    relay.remove_peer("a", T0 + 0.1)
    assert relay.expire(T0 + 0.1) == ({}, [("b", wire.GetBlockTxn(block.hash, (1, 2)))])
    assert relay.on_block_txn("b", wire.BlockTxn(block.hash, tuple(txs)), T0 + 0.2) == block
