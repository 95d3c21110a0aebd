"""Consensus rules: every rule's invalid case is rejected with its own RuleCode.

Table-driven in the spirit of btcd's fullblocktests: each case builds one block on the same small
chain, hands it to Chain.process_block, and names the outcome (accepted, or rejected with a code,
and whether the block's hash is remembered as invalid). Pure-function tests cover the rules that a
chain cannot reach (a wrong previous hash), the wire's refusal of negative amounts, merkle trees,
proof of work, and the test vectors printed in docs/ledger.md.
"""

from __future__ import annotations

import hashlib
import re
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from ledger_helpers import (
    GENESIS,
    NOW_MS,
    PARAMS,
    SPACING_MS,
    WORK,
    assemble,
    block_on,
    feed,
    mem_chain,
    pay,
    replay,
    wallet,
)

from p2pchain import limits
from p2pchain.chain import Chain, Status
from p2pchain.errors import ProtocolError, RuleCode, RuleError
from p2pchain.keys import Wallet, address_of, verify
from p2pchain.ledger import rules
from p2pchain.ledger.block import EMPTY_MERKLE_ROOT, LEAF_PREFIX, NODE_PREFIX, ZERO_HASH, Block, merkle_root
from p2pchain.ledger.pow import bits_to_target, target_to_bits, work
from p2pchain.ledger.rules import EMPTY_ACCOUNT, Account
from p2pchain.ledger.tx import Tx, make_coinbase, make_tx
from p2pchain.params import GENESIS_TIMESTAMP_MS, NetworkParams

ROOT = Path(__file__).resolve().parent.parent
A, B, C = wallet(1), wallet(2), wallet(3)
OTHER_NETWORK = NetworkParams(bits=9, reward=50).network_id


@dataclass(frozen=True)
class Base:
    """The chain every case builds on:

    G - b1 - b2      b1's coinbase pays A 50; b2 confirms ``spend`` (A -> B 10, fee 1, nonce 0)
                     and pays A 51. A: 90 (next nonce 1), B: 10 (next nonce 0), C: nothing.
    """

    chain: Chain
    b1: Block
    tip: Block  # b2
    spend: Tx


def make_base() -> Base:
    chain = mem_chain()
    b1 = block_on(GENESIS, miner=A.address)
    spend = pay(A, B, 10, fee=1, nonce=0)
    b2 = block_on(b1, [spend], miner=A.address)
    feed(chain, [b1, b2])
    assert chain.get_account(A.address) == Account(90, 1)
    assert chain.get_account(B.address) == Account(10, 0)
    return Base(chain, b1, b2, spend)


def coinbase(base: Base, amount: int = PARAMS.reward, **fields: object) -> Tx:
    """The next block's coinbase, with any field overridden."""
    return replace(make_coinbase(C.address, amount, base.tip.height + 1), **fields)  # type: ignore[arg-type]


def resigned(tx: Tx, signer: Wallet, network_id: bytes = PARAMS.network_id) -> Tx:
    """``tx`` as it is, signed by ``signer`` (whatever its sender and key say)."""
    return replace(tx, signature=signer.sign(replace(tx, signature=b"").signing_message(network_id)))


def flip_signature_bit(tx: Tx) -> Tx:
    return replace(tx, signature=bytes([tx.signature[0] ^ 1]) + tx.signature[1:])


def drop_txs(block: Block) -> Block:
    """``block`` with its payments taken out, header unchanged."""
    return Block(block.header, block.txs[:1])


def oversized(base: Base) -> Block:
    """A block over MAX_BLOCK_BYTES: junk transactions of the largest encodable size."""
    junk = Tx("a" * 64, "b" * 64, 1, 0, 0, bytes(255), bytes(255))
    count = limits.MAX_BLOCK_BYTES // junk.size + 1
    assert count <= limits.MAX_BLOCK_TXS
    return assemble(base.tip, [coinbase(base), *(replace(junk, nonce=i) for i in range(count))])


def overcrowded(base: Base) -> Block:
    """One transaction over MAX_BLOCK_TXS, each of them tiny."""
    txs = [coinbase(base)] + [make_coinbase(A.address, 1, i) for i in range(limits.MAX_BLOCK_TXS)]
    block = assemble(base.tip, txs)
    assert block.size <= limits.MAX_BLOCK_BYTES
    return block


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Base], Block]
    code: RuleCode | None  # None: the block is accepted and becomes the tip
    remembered: bool = True  # a rejected block's hash is kept in chain.invalid


# A failure of the body's own checks (check_body) is never held against the block's hash: another
# body under the same header may be good (issue 11). Header, parent and state failures are.
BODY = False


MTP_OF_TIP = GENESIS_TIMESTAMP_MS + SPACING_MS  # median of (G, b1, b2) timestamps: b1's
FUTURE_LIMIT = NOW_MS + limits.MAX_FUTURE_BLOCK_MS

CASES = [
    # --- accepted: the rules' edges ------------------------------------------------------------
    Case("payment", lambda b: block_on(b.tip, [pay(A, B, 5, nonce=1)]), None),
    Case("fees go to the coinbase", lambda b: block_on(b.tip, [pay(A, B, 5, fee=7, nonce=1)]), None),
    Case("spend the whole balance", lambda b: block_on(b.tip, [pay(B, C, 10)]), None),
    Case("pay yourself", lambda b: block_on(b.tip, [pay(A, A, 90, nonce=1)]), None),
    Case("spend coins received earlier in the block", lambda b: block_on(b.tip, [pay(B, C, 10), pay(C, A, 4)]), None),
    Case("coinbase below reward burns coins", lambda b: assemble(b.tip, [coinbase(b, amount=0)]), None),
    Case("timestamp exactly 2 h ahead", lambda b: block_on(b.tip, timestamp=FUTURE_LIMIT), None),
    Case("timestamp just after the median", lambda b: block_on(b.tip, timestamp=MTP_OF_TIP + 1), None),
    # --- header ----------------------------------------------------------------------------------
    Case("bad proof of work", lambda b: block_on(b.tip, pow_ok=False), RuleCode.BAD_POW, remembered=False),
    Case(
        "easier target",
        lambda b: block_on(b.tip, bits=target_to_bits(PARAMS.start_target * 2)),
        RuleCode.BAD_DIFFICULTY,
    ),
    Case(
        "harder target",
        lambda b: block_on(b.tip, bits=target_to_bits(PARAMS.start_target - 1)),
        RuleCode.BAD_DIFFICULTY,
    ),
    # no work behind them: not remembered (junk must not fill memory)
    Case("bits not canonical", lambda b: block_on(b.tip, bits=0x01000001, pow_ok=False), RuleCode.BAD_BITS, False),
    Case("target above 2**255", lambda b: block_on(b.tip, bits=0xE8800001), RuleCode.BAD_BITS, False),
    Case("version 2", lambda b: block_on(b.tip, version=2), RuleCode.BAD_VERSION),
    Case("version 0", lambda b: block_on(b.tip, version=0), RuleCode.BAD_VERSION),
    Case("height skips one", lambda b: block_on(b.tip, height=b.tip.height + 2), RuleCode.BAD_HEIGHT),
    Case("height of the parent", lambda b: block_on(b.tip, height=b.tip.height), RuleCode.BAD_HEIGHT),
    Case(
        "timestamp 2 h + 1 ms ahead",
        lambda b: block_on(b.tip, timestamp=FUTURE_LIMIT + 1),
        RuleCode.TIME_TOO_NEW,
        False,
    ),
    Case("timestamp equal to the median", lambda b: block_on(b.tip, timestamp=MTP_OF_TIP), RuleCode.TIME_TOO_OLD),
    Case("timestamp of genesis", lambda b: block_on(b.tip, timestamp=GENESIS_TIMESTAMP_MS), RuleCode.TIME_TOO_OLD),
    # --- body ------------------------------------------------------------------------------------
    Case("merkle root of nothing", lambda b: block_on(b.tip, merkle_root=ZERO_HASH), RuleCode.BAD_MERKLE_ROOT, BODY),
    Case(
        "transaction dropped after mining",
        lambda b: drop_txs(block_on(b.tip, [pay(A, B, 5, nonce=1)])),
        RuleCode.BAD_MERKLE_ROOT,
        BODY,
    ),
    Case("block over the size limit", oversized, RuleCode.BLOCK_TOO_BIG, BODY),
    Case("too many transactions", overcrowded, RuleCode.TOO_MANY_TXS, BODY),
    Case("duplicate transaction", lambda b: block_on(b.tip, [pay(A, B, 5, nonce=1)] * 2), RuleCode.DUPLICATE_TX, BODY),
    # --- coinbase --------------------------------------------------------------------------------
    Case("no transactions at all", lambda b: assemble(b.tip, []), RuleCode.NO_COINBASE, BODY),
    Case(
        "first transaction is a payment", lambda b: assemble(b.tip, [pay(A, B, 5, nonce=1)]), RuleCode.NO_COINBASE, BODY
    ),
    Case(
        "second coinbase",
        lambda b: assemble(b.tip, [coinbase(b), coinbase(b, amount=0, recipient=A.address)]),
        RuleCode.DUPLICATE_COINBASE,
        BODY,
    ),
    Case("coinbase with a fee", lambda b: assemble(b.tip, [coinbase(b, fee=1)]), RuleCode.BAD_COINBASE, BODY),
    Case(
        "coinbase nonce is not the height",
        lambda b: assemble(b.tip, [coinbase(b, nonce=b.tip.height + 2)]),
        RuleCode.BAD_COINBASE,
        BODY,
    ),
    Case("coinbase with a key", lambda b: assemble(b.tip, [coinbase(b, pubkey=A.pubkey)]), RuleCode.BAD_COINBASE, BODY),
    Case(
        "coinbase to a non-address",
        lambda b: assemble(b.tip, [coinbase(b, recipient="0")]),
        RuleCode.BAD_COINBASE,
        BODY,
    ),
    Case(
        "coinbase one over reward + fees",
        lambda b: assemble(b.tip, [coinbase(b, amount=PARAMS.reward + 3 + 1), pay(A, B, 5, fee=3, nonce=1)]),
        RuleCode.COINBASE_OVERPAYS,
    ),
    Case(
        "coinbase over the money limit",
        lambda b: assemble(b.tip, [coinbase(b, amount=limits.MAX_MONEY + 1)]),
        RuleCode.COINBASE_OVERPAYS,
        BODY,
    ),
    # --- transactions: shape, key, signature --------------------------------------------------------
    Case("zero amount", lambda b: block_on(b.tip, [pay(A, B, 0, nonce=1)]), RuleCode.TX_BAD_AMOUNT, BODY),
    Case(
        "amount over the money limit",
        lambda b: block_on(b.tip, [pay(A, B, limits.MAX_MONEY + 1, nonce=1)]),
        RuleCode.TX_BAD_AMOUNT,
        BODY,
    ),
    Case(
        "fee over the money limit",
        lambda b: assemble(b.tip, [coinbase(b), pay(A, B, 1, fee=limits.MAX_MONEY + 1, nonce=1)]),
        RuleCode.TX_BAD_FEE,
        BODY,
    ),
    Case(
        "recipient not an address", lambda b: block_on(b.tip, [pay(A, "bob", 5, nonce=1)]), RuleCode.TX_MALFORMED, BODY
    ),
    Case(
        "public key of 31 bytes",
        lambda b: block_on(b.tip, [replace(pay(A, B, 5, nonce=1), pubkey=A.pubkey[:31])]),
        RuleCode.TX_MALFORMED,
        BODY,
    ),
    Case(
        "signature with one bit flipped",
        lambda b: block_on(b.tip, [flip_signature_bit(pay(A, B, 5, nonce=1))]),
        RuleCode.TX_BAD_SIGNATURE,
        BODY,
    ),
    Case(
        "amount raised after signing",
        lambda b: block_on(b.tip, [replace(pay(A, B, 5, nonce=1), amount=50)]),
        RuleCode.TX_BAD_SIGNATURE,
        BODY,
    ),
    Case(
        "signed by another key than the sender's",
        lambda b: block_on(b.tip, [resigned(replace(pay(A, B, 5, nonce=1), pubkey=C.pubkey), C)]),
        RuleCode.TX_KEY_MISMATCH,
        BODY,
    ),
    Case(
        "signed for another network (cross-network replay)",
        lambda b: block_on(b.tip, [make_tx(A, B.address, 5, 0, 1, OTHER_NETWORK)]),
        RuleCode.TX_BAD_SIGNATURE,
        BODY,
    ),
    # --- transactions: state ------------------------------------------------------------------------
    Case("replay of a confirmed payment", lambda b: block_on(b.tip, [b.spend]), RuleCode.TX_BAD_NONCE),
    Case("nonce skips one", lambda b: block_on(b.tip, [pay(A, B, 5, nonce=2)]), RuleCode.TX_BAD_NONCE),
    Case("more than the balance", lambda b: block_on(b.tip, [pay(B, C, 11)]), RuleCode.TX_INSUFFICIENT_FUNDS),
    Case("balance but not the fee", lambda b: block_on(b.tip, [pay(B, C, 10, fee=1)]), RuleCode.TX_INSUFFICIENT_FUNDS),
    Case("sender never seen", lambda b: block_on(b.tip, [pay(C, A, 1)]), RuleCode.TX_INSUFFICIENT_FUNDS),
    Case(
        "double spend: same nonce twice in a block",
        lambda b: block_on(b.tip, [pay(B, C, 10), pay(B, A, 10)]),
        RuleCode.TX_BAD_NONCE,
    ),
    Case(
        "double spend: two payments over the balance",
        lambda b: block_on(b.tip, [pay(B, C, 6), pay(B, A, 6, nonce=1)]),
        RuleCode.TX_INSUFFICIENT_FUNDS,
    ),
    Case(
        "spend coins before receiving them",
        lambda b: block_on(b.tip, [pay(C, A, 4), pay(B, C, 10)]),
        RuleCode.TX_INSUFFICIENT_FUNDS,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_block_rule(case: Case) -> None:
    base = make_base()
    chain = base.chain
    block = case.build(base)
    before = dict(chain.accounts)
    if case.code is None:
        result = chain.process_block(block, NOW_MS)
        assert result.status is Status.CONNECTED
        assert result.connected == [block]
        assert chain.accounts == replay([GENESIS, base.b1, base.tip, block])
        return
    with pytest.raises(RuleError) as err:
        chain.process_block(block, NOW_MS)
    assert err.value.code is case.code
    assert chain.tip.hash == base.tip.hash
    assert chain.accounts == before
    assert chain.get_block(block.hash) is None
    assert (block.hash in chain.invalid) is case.remembered
    if case.remembered:  # refused again, with the same code
        with pytest.raises(RuleError) as again:
            chain.process_block(block, NOW_MS)
        assert again.value.code is case.code


def test_rejected_block_is_refused_without_revalidation(monkeypatch: pytest.MonkeyPatch) -> None:
    base = make_base()
    bad = block_on(base.tip, [pay(B, C, 11)])  # stage 3 failure
    with pytest.raises(RuleError):
        base.chain.process_block(bad, NOW_MS)

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a block known to be invalid was checked again")

    monkeypatch.setattr(rules, "check_block", must_not_run)
    with pytest.raises(RuleError) as err:
        base.chain.process_block(bad, NOW_MS)
    assert err.value.code is RuleCode.TX_INSUFFICIENT_FUNDS


def test_block_too_new_is_accepted_once_the_clock_catches_up() -> None:
    base = make_base()
    early = block_on(base.tip, timestamp=FUTURE_LIMIT + 1)
    with pytest.raises(RuleError) as err:
        base.chain.process_block(early, NOW_MS)
    assert err.value.code is RuleCode.TIME_TOO_NEW
    assert base.chain.process_block(early, NOW_MS + 1).status is Status.CONNECTED


def h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def forged(raw: bytes) -> Tx:
    """A transaction whose canonical bytes are ``raw``: the shape an attacker grinds for (about
    2^21 hashes to make 64 bytes that also decode as a transaction), built directly so that the
    test costs nothing. Its fields are filler; the merkle tree sees only its bytes (its txid)."""
    tx = Tx("x", "y", 1, 0, 0, bytes(32), bytes(2))
    vars(tx)["raw"] = raw  # the cached canonical bytes, so txid = H(raw)
    return tx


@dataclass(frozen=True)
class Twin:
    """A body for the real block's header that an attacker relays before the real block."""

    name: str
    payments: int  # the real block holds the coinbase and this many of A's payments
    body: Callable[[Block], tuple[Tx, ...]]


def _ids(block: Block) -> list[bytes]:
    return [tx.txid for tx in block.txs]


TWINS = [
    # [cb, t1]: under a tree that hashes leaves and inner nodes alike (Bitcoin's, ours before
    # issue 11), the root is H(txid(cb) | txid(t1)), which is the txid of this one transaction
    Twin("64-byte transaction txid(cb) | txid(t1)", 1, lambda r: (forged(_ids(r)[0] + _ids(r)[1]),)),
    # [cb, t1, t2, t3] with three payments of the attacker's: two 64-byte transactions, one per
    # inner node, give the same root under that tree
    Twin(
        "three payments: txid(cb) | txid(t1) and txid(t2) | txid(t3)",
        3,
        lambda r: (forged(_ids(r)[0] + _ids(r)[1]), forged(_ids(r)[2] + _ids(r)[3])),
    ),
    # the same attack on today's tree: a transaction whose bytes are an inner node's preimage
    Twin(
        "transaction 0x01 | leaf(cb) | leaf(t1)",
        1,
        lambda r: (forged(NODE_PREFIX + h(LEAF_PREFIX + _ids(r)[0]) + h(LEAF_PREFIX + _ids(r)[1])),),
    ),
    # CVE-2012-2459: under Bitcoin's tree [cb, t1, t2] and [cb, t1, t2, t2] have one root
    Twin("last transaction repeated", 2, lambda r: (*r.txs, r.txs[-1])),
    Twin("relayed with another payment", 1, lambda r: (r.txs[0], pay(A, C, 1, nonce=1))),
]


@pytest.mark.parametrize("twin", TWINS, ids=[t.name for t in TWINS])
def test_a_twin_does_not_get_the_real_block_refused(twin: Twin) -> None:
    """A copy of a good header with another body has the good block's hash: refusing the copy
    must not refuse that hash, nor the block's children (issue 11, finding 1)."""
    base = make_base()
    chain = base.chain
    real = block_on(base.tip, [pay(A, B, 1 + i, nonce=1 + i) for i in range(twin.payments)])
    fake = Block(real.header, twin.body(real))
    assert fake.hash == real.hash and _ids(fake) != _ids(real)
    with pytest.raises(RuleError) as err:
        chain.process_block(fake, NOW_MS)
    assert err.value.code is RuleCode.BAD_MERKLE_ROOT
    assert real.hash not in chain.invalid and not chain.has_block(real.hash)

    assert chain.process_block(real, NOW_MS).status is Status.CONNECTED
    child = block_on(real, [pay(A, C, 1, nonce=1 + twin.payments)])
    assert chain.process_block(child, NOW_MS).status is Status.CONNECTED
    assert chain.tip.hash == child.hash and not chain.invalid
    assert chain.process_block(fake, NOW_MS).status is Status.DUPLICATE  # the hash is the real block's now
    assert chain.get_block(real.hash) == real


def test_unknown_parent_goes_to_the_orphan_pool() -> None:
    base = make_base()
    stray = block_on(base.tip, prev_hash=hashlib.sha256(b"nobody").digest())
    result = base.chain.process_block(stray, NOW_MS)
    assert result.status is Status.ORPHAN and not result.connected
    assert stray.hash in base.chain.orphans
    assert base.chain.tip.hash == base.tip.hash


def test_wrong_prev_hash() -> None:
    """A chain looks the parent up by prev_hash, so only the pure rule can meet a mismatch."""
    child = block_on(GENESIS)
    other = block_on(GENESIS, salt=1)
    with pytest.raises(RuleError) as err:
        rules.check_header_context(child.header, other.header, GENESIS.header.timestamp, NOW_MS, PARAMS, 0)
    assert err.value.code is RuleCode.BAD_PREV_HASH
    rules.check_header_context(child.header, GENESIS.header, GENESIS.header.timestamp, NOW_MS, PARAMS, 0)


def test_timestamp_must_pass_the_median_of_the_last_11_not_the_parent() -> None:
    # G at +0 s, then 12 blocks whose timestamps go back and forth, each after its own median:
    offsets = [10, 20, 15, 30, 25, 40, 35, 50, 45, 60, 55, 70]
    chain = mem_chain()
    parent = GENESIS
    for s in offsets:
        parent = block_on(parent, timestamp=GENESIS_TIMESTAMP_MS + s * 1000)
        feed(chain, [parent])
    # the last 11 (heights 2..12): 20 15 30 25 40 35 50 45 60 55 70; sorted, the 6th is 40
    mtp = GENESIS_TIMESTAMP_MS + 40_000
    assert chain.median_time_past(chain.tip) == mtp
    with pytest.raises(RuleError) as err:
        chain.process_block(block_on(parent, timestamp=mtp), NOW_MS)
    assert err.value.code is RuleCode.TIME_TOO_OLD
    older_than_parent = block_on(parent, timestamp=mtp + 1)  # parent is at +70 s: allowed, as in Bitcoin
    assert chain.process_block(older_than_parent, NOW_MS).status is Status.CONNECTED


def test_median_time_past_near_genesis() -> None:
    assert rules.median_time_past([5]) == 5
    assert rules.median_time_past([1, 9]) == 9  # upper median of an even window
    assert rules.median_time_past([3, 1, 2]) == 2
    assert rules.median_time_past(list(range(100))) == 94  # only the last 11: 89..99


def test_check_tx_refuses_a_coinbase_on_its_own() -> None:
    with pytest.raises(RuleError) as err:
        rules.check_tx(make_coinbase(A.address, 1, 1), PARAMS.network_id)
    assert err.value.code is RuleCode.TX_SELF_COINBASE


def test_signature_cache_skips_only_the_signature() -> None:
    forged = replace(pay(A, B, 5, nonce=1), amount=6)
    rules.check_tx(forged, PARAMS.network_id, verified={forged.txid})  # the caller vouched for it
    wrong_key = replace(forged, pubkey=C.pubkey)
    with pytest.raises(RuleError) as err:
        rules.check_tx(wrong_key, PARAMS.network_id, verified={wrong_key.txid})
    assert err.value.code is RuleCode.TX_KEY_MISMATCH


def test_no_balance_may_pass_the_money_limit() -> None:
    rich = {B.address: Account(limits.MAX_MONEY, 0), A.address: Account(10, 0)}

    def get(address: str) -> Account:
        return rich.get(address, EMPTY_ACCOUNT)

    block = block_on(GENESIS, [pay(A, B, 1)])
    with pytest.raises(RuleError) as err:
        rules.connect_block(block, get, PARAMS)
    assert err.value.code is RuleCode.TX_BAD_AMOUNT
    changes = rules.connect_block(block_on(GENESIS, [pay(A, C, 1)]), get, PARAMS)
    assert changes[A.address] == Account(9, 1) and changes[C.address] == Account(1, 0)


@pytest.mark.parametrize("field", [2, 3, 4])  # amount, fee, nonce
@pytest.mark.parametrize("value", [-1, -(2**63), 2**64, True, 1.0])
def test_wire_refuses_amounts_that_cannot_be_encoded(field: int, value: object) -> None:
    """A negative amount can't reach the rules: the canonical body has no sign, and the wire refuses it."""
    wire = pay(A, B, 5, nonce=1).to_wire()
    wire[field] = value
    with pytest.raises(ProtocolError):
        Tx.from_wire(wire)


def test_a_negative_amount_has_no_canonical_bytes() -> None:
    with pytest.raises(struct.error):
        _ = Tx(A.address, B.address, -1, 0, 0, A.pubkey, b"").body


def rfc6962_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, written as the RFC does: split at the largest power of two below n."""
    if not leaves:
        return h(b"")
    if len(leaves) == 1:
        return h(b"\x00" + leaves[0])
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return h(b"\x01" + rfc6962_root(leaves[:k]) + rfc6962_root(leaves[k:]))


def test_merkle_tree_is_rfc6962() -> None:
    ids = [h(b"%d" % i) for i in range(40)]
    for n in range(len(ids) + 1):
        assert merkle_root(ids[:n]) == rfc6962_root(ids[:n]), f"{n} leaves"
    a, b, c = ids[:3]

    def leaf(x: bytes) -> bytes:
        return h(LEAF_PREFIX + x)

    def node(left: bytes, right: bytes) -> bytes:
        return h(NODE_PREFIX + left + right)

    assert merkle_root([]) == EMPTY_MERKLE_ROOT == h(b"")
    assert merkle_root([a]) == leaf(a) != a
    assert merkle_root([a, b]) == node(leaf(a), leaf(b))
    assert merkle_root([a, b, c]) == node(node(leaf(a), leaf(b)), leaf(c))  # c carried up, not doubled
    assert merkle_root([a, b, c]) != merkle_root([a, b, c, c])  # CVE-2012-2459
    assert merkle_root([h(a + b)]) != merkle_root([a, b])  # CVE-2017-12842: a 64-byte transaction a | b


def test_proof_of_work_target_and_work() -> None:
    assert PARAMS.start_target == 2**248 and PARAMS.start_bits == 0xE1800000 and WORK == 2**256 // (2**248 + 1)
    assert work(2**248) == 255  # 2**256 // (target + 1): one less than 2**8 for a power of two
    mined = block_on(GENESIS).header
    assert mined.hash[0] == 0 and int.from_bytes(mined.hash, "big") < 2**248 == mined.target
    assert mined.meets_target()


@pytest.mark.parametrize(
    "target, bits",
    [
        (1, 0x00000001),
        (0xFFFFFF, 0x00FFFFFF),  # every target below 2**24 is exact, exponent 0
        (2**24, 0x01800000),
        (2**24 + 1, 0x01800000),  # 25 significant bits: the last is truncated
        (0x123456789A, 0x0D91A2B3),  # 37 significant bits: exponent 13
        (2**240, 0xD9800000),  # --difficulty 16
        (2**255, 0xE8800000),  # the easiest target, --difficulty 1
        ((2**24 - 1) << 232, 0xE8FFFFFF),  # the largest encodable target
    ],
)
def test_compact_target_encoding(target: int, bits: int) -> None:
    assert target_to_bits(target) == bits
    decoded = bits_to_target(bits)
    assert decoded <= target and (target - decoded) * 2**23 <= decoded  # truncation: at most 2**-23 below
    assert target_to_bits(decoded) == bits  # canonical: one encoding per encodable target


@pytest.mark.parametrize("bits", [0, 0x00000000, 0x01000001, 0x017FFFFF, 0xE9800000, 0xFF800000, 2**32, -1])
def test_non_canonical_bits_decode_to_no_target(bits: int) -> None:
    assert bits_to_target(bits) == 0  # zero mantissa, unnormalised, exponent past 232, not a u32


# --- docs/ledger.md test vectors ------------------------------------------------------------------
def doc_vectors() -> dict[str, str]:
    """``name: value`` lines of the fenced block under the "Test vectors" heading of docs/ledger.md."""
    text = (ROOT / "docs" / "ledger.md").read_text()
    section = text.split("## Test vectors", 1)[1]
    block = re.search(r"```text\n(.*?)```", section, re.S)
    assert block is not None, "docs/ledger.md has no ```text block under '## Test vectors'"
    return dict(re.findall(r"^([a-z][a-z ()]*[a-z)]): *(\S+)$", block.group(1), re.M))


def test_doc_vectors_match_the_code() -> None:
    v = doc_vectors()
    params = NetworkParams()
    assert (int(v["difficulty"]), int(v["reward"])) == (params.bits, params.reward)
    assert int(v["start target"], 16) == params.start_target == bits_to_target(int(v["start bits"], 16))
    assert int(v["work per block"]) == work(params.start_target)
    header = bytes.fromhex(v["genesis header"])
    assert header == params.genesis.header.raw and len(header) == 92
    assert bytes.fromhex(v["genesis hash"]) == hashlib.sha256(header).digest() == params.network_id
    assert bytes.fromhex(v["genesis coinbase txid"]) == params.genesis.txs[0].txid

    sender = Wallet.from_seed(bytes.fromhex(v["sender seed"]))
    assert bytes.fromhex(v["sender pubkey"]) == sender.pubkey
    assert v["sender address"] == address_of(sender.pubkey) == hashlib.sha256(sender.pubkey).digest()[:20].hex()
    tx = make_tx(sender, v["recipient"], int(v["amount"]), int(v["fee"]), int(v["nonce"]), params.network_id)
    assert bytes.fromhex(v["tx body"]) == tx.body
    message = bytes.fromhex(v["signing message"])
    assert message == params.network_id + tx.body == tx.signing_message(params.network_id)
    signature = bytes.fromhex(v["signature"])
    assert signature == tx.signature and verify(sender.pubkey, signature, message)
    raw = bytes.fromhex(v["tx bytes"])
    assert raw == tx.body + bytes([64]) + signature == tx.raw
    assert bytes.fromhex(v["txid"]) == hashlib.sha256(raw).digest() == tx.txid


def test_vectors_script_prints_the_doc_block() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "ledger_vectors.py")], check=True, capture_output=True, text=True
    ).stdout
    assert out in (ROOT / "docs" / "ledger.md").read_text()
    assert out.count("\n") >= 15


def test_doc_names_every_rule_code() -> None:
    text = (ROOT / "docs" / "ledger.md").read_text()
    missing = [code for code in RuleCode if f"`{code.value}` (`{code.name}`)" not in text]
    assert not missing, f"docs/ledger.md does not describe {missing}"
