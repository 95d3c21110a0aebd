"""Consensus rules as pure functions: each raises RuleError with its own code, or returns.

Three stages, cheapest first, as a node meets a block:
1. ``check_block`` (no context): ``check_header`` (version, target encoding, proof of work), then
   ``check_body`` (size, count, merkle root, coinbase shape, every transaction's signature and key).
2. ``check_header_context`` (the parent, the median time past and the retarget anchor's
   timestamp; "now" is an argument): links, the required target, timestamps.
3. ``connect_block`` (the account state at the parent): nonces, balances, coinbase amount.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from typing import NamedTuple

from p2pchain import limits
from p2pchain.errors import RuleCode, RuleError
from p2pchain.keys import PUBKEY_BYTES, SIGNATURE_BYTES, address_of, is_address, verify
from p2pchain.ledger.block import Block, Header, merkle_root
from p2pchain.ledger.pow import asert_target, target_to_bits
from p2pchain.ledger.tx import Tx
from p2pchain.params import BLOCK_VERSION, MAX_TARGET, NetworkParams

# An account: balance (coins) and nonce (the nonce its next transaction must carry). The
# functional form with the types themselves: the class form's annotations are strings in this
# module, which typing.NamedTuple compiles, and a process's first compile() builds every AST type
# (~9 M instructions, 3 % of a node's start, which compiles nothing else)
Account = NamedTuple("Account", [("balance", int), ("nonce", int)])  # noqa: UP014


EMPTY_ACCOUNT = Account(0, 0)
AccountLookup = Callable[[str], Account]  # address -> its account (EMPTY_ACCOUNT if never seen)


# --- stage 1: context-free ------------------------------------------------------------------
def check_tx(tx: Tx, network_id: bytes, *, verified: Container[bytes] = ()) -> None:
    """A non-coinbase transaction on its own: shape, amounts, key and signature.
    ``verified`` holds txids whose signature this node has already checked (a signature cache)."""
    if tx.is_coinbase:
        raise RuleError(RuleCode.TX_SELF_COINBASE, "only a block's first transaction may have sender '0'")
    if not is_address(tx.sender) or not is_address(tx.recipient):
        raise RuleError(RuleCode.TX_MALFORMED, "sender and recipient must be 40-hex-digit addresses")
    if not 0 < tx.amount <= limits.MAX_MONEY:
        raise RuleError(RuleCode.TX_BAD_AMOUNT, f"amount {tx.amount} is not in 1..{limits.MAX_MONEY}")
    if not 0 <= tx.fee <= limits.MAX_MONEY:
        raise RuleError(RuleCode.TX_BAD_FEE, f"fee {tx.fee} is not in 0..{limits.MAX_MONEY}")
    if len(tx.pubkey) != PUBKEY_BYTES or len(tx.signature) != SIGNATURE_BYTES:
        raise RuleError(RuleCode.TX_MALFORMED, "public key must be 32 bytes and signature 64")
    if address_of(tx.pubkey) != tx.sender:
        raise RuleError(RuleCode.TX_KEY_MISMATCH, "the public key does not hash to the sender address")
    if tx.txid in verified:
        return
    if not signature_ok(tx, network_id):
        raise RuleError(RuleCode.TX_BAD_SIGNATURE, "signature does not verify for this network")


def signature_ok(tx: Tx, network_id: bytes) -> bool:
    """The Ed25519 check alone (the costly part of check_tx; it releases the GIL, so a node may
    run many at once in threads and hand the results to check_tx as ``verified``)."""
    return verify(tx.pubkey, tx.signature, tx.signing_message(network_id))


def check_block(block: Block, params: NetworkParams, *, verified: Container[bytes] = ()) -> None:
    """Everything about a block that needs no other block: its header, then its body."""
    check_header(block.header, params)
    check_body(block, params, verified=verified)


def check_header(h: Header, params: NetworkParams) -> None:
    """The header's own fields. Every block with this hash fails them alike, so a failure here
    (but ``bad-bits`` and ``bad-pow``: junk costs nothing to make) may be held against the hash."""
    if h.version != BLOCK_VERSION:
        raise RuleError(RuleCode.BAD_VERSION, f"block version {h.version}, expected {BLOCK_VERSION}")
    if not 0 < h.target <= MAX_TARGET:
        raise RuleError(RuleCode.BAD_BITS, f"bits {h.bits:#010x} is not a canonical target of at most 2**255")
    if not params.retargets and h.bits != params.start_bits:
        raise RuleError(RuleCode.BAD_DIFFICULTY, f"bits {h.bits:#010x}, the network's are {params.start_bits:#010x}")
    if not h.meets_target():
        raise RuleError(RuleCode.BAD_POW, f"hash {h.hash.hex()} is not below the target of bits {h.bits:#010x}")


def check_body(block: Block, params: NetworkParams, *, verified: Container[bytes] = ()) -> None:
    """The transactions against the header's merkle root, and each on its own. A failure here
    says nothing about the header's hash: another body under the same header may be good."""
    h = block.header
    txs = block.txs
    if len(txs) > limits.MAX_BLOCK_TXS:
        raise RuleError(RuleCode.TOO_MANY_TXS, f"{len(txs)} transactions, limit {limits.MAX_BLOCK_TXS}")
    if block.size > limits.MAX_BLOCK_BYTES:
        raise RuleError(RuleCode.BLOCK_TOO_BIG, f"{block.size} bytes, limit {limits.MAX_BLOCK_BYTES}")
    txids = [tx.txid for tx in txs]
    if merkle_root(txids) != h.merkle_root:
        raise RuleError(RuleCode.BAD_MERKLE_ROOT, "merkle root does not match the transactions")
    if not txs or not txs[0].is_coinbase:
        raise RuleError(RuleCode.NO_COINBASE, "the first transaction must be the coinbase (sender '0')")
    cb = txs[0]
    if cb.fee != 0 or cb.nonce != h.height or cb.pubkey or cb.signature or not is_address(cb.recipient):
        raise RuleError(RuleCode.BAD_COINBASE, "coinbase needs fee 0, nonce = height, no key, an address")
    if cb.amount > limits.MAX_MONEY:
        raise RuleError(RuleCode.COINBASE_OVERPAYS, f"coinbase amount {cb.amount} over the money limit")
    if len(txids) > 1 and len(set(txids)) != len(txids):  # (one transaction cannot repeat)
        raise RuleError(RuleCode.DUPLICATE_TX, "a transaction appears twice in the block")
    for tx in txs[1:]:
        if tx.is_coinbase:
            raise RuleError(RuleCode.DUPLICATE_COINBASE, "only the first transaction may be a coinbase")
        check_tx(tx, params.network_id, verified=verified)


# --- stage 2: the parent --------------------------------------------------------------------
def median_time_past(timestamps: Sequence[int]) -> int:
    """The median of the last MEDIAN_TIME_SPAN timestamps (fewer near genesis)."""
    window = sorted(timestamps[-limits.MEDIAN_TIME_SPAN :])
    return window[len(window) // 2]


def anchor_time(header: Header, parent_anchor_ms: int) -> int:
    """The retarget anchor's timestamp on the branch that ends with ``header``: block 1's (the
    first block mined starts the schedule); 0 for genesis, which has none."""
    return header.timestamp if header.height == 1 else parent_anchor_ms


def required_bits(params: NetworkParams, parent: Header, anchor_ms: int) -> int:
    """The ``bits`` a block on ``parent`` must carry. Fixed difficulty, and block 1: the start
    target. Retargeting: ASERT from the anchor (block 1, at the start target), by the parent's
    timestamp and height: anchor_ms is block 1's timestamp on the parent's branch."""
    if not params.retargets or parent.height == 0:
        return params.start_bits
    target = asert_target(
        params.start_target,
        params.block_time_ms,
        parent.timestamp - anchor_ms,
        parent.height - 1,
        params.half_life_ms,
        MAX_TARGET,
    )
    return target_to_bits(target)


def check_header_context(
    header: Header, parent: Header, mtp: int, now_ms: int, params: NetworkParams, anchor_ms: int
) -> None:
    """``mtp`` is the median time past of the parent and its ancestors; ``anchor_ms`` the
    retarget anchor's timestamp on the parent's branch (``anchor_time``); ``now_ms`` local time."""
    if header.prev_hash != parent.hash:
        raise RuleError(RuleCode.BAD_PREV_HASH, "previous hash is not the parent's hash")
    if header.height != parent.height + 1:
        raise RuleError(RuleCode.BAD_HEIGHT, f"height {header.height}, parent is at {parent.height}")
    want = required_bits(params, parent, anchor_ms)
    if header.bits != want:
        raise RuleError(RuleCode.BAD_DIFFICULTY, f"bits {header.bits:#010x}, the retarget rule requires {want:#010x}")
    if header.timestamp <= mtp:
        raise RuleError(RuleCode.TIME_TOO_OLD, f"timestamp {header.timestamp} not after median {mtp}")
    if header.timestamp > now_ms + params.max_future_ms:
        raise RuleError(
            RuleCode.TIME_TOO_NEW, f"timestamp {header.timestamp} is over {params.max_future_ms} ms ahead of {now_ms}"
        )


# --- stage 3: the state ---------------------------------------------------------------------
def apply_tx(tx: Tx, get: AccountLookup, changes: dict[str, Account]) -> None:
    """Apply a checked non-coinbase transaction to ``changes`` (an overlay on ``get``)."""
    sender = changes.get(tx.sender) or get(tx.sender)
    if tx.nonce != sender.nonce:
        raise RuleError(RuleCode.TX_BAD_NONCE, f"nonce {tx.nonce}, sender's next is {sender.nonce}")
    cost = tx.amount + tx.fee
    if cost > sender.balance:
        raise RuleError(RuleCode.TX_INSUFFICIENT_FUNDS, f"needs {cost}, sender has {sender.balance}")
    changes[tx.sender] = Account(sender.balance - cost, sender.nonce + 1)
    credit(tx.recipient, tx.amount, get, changes)


def credit(address: str, amount: int, get: AccountLookup, changes: dict[str, Account]) -> None:
    acct = changes.get(address) or get(address)
    if acct.balance + amount > limits.MAX_MONEY:
        raise RuleError(RuleCode.TX_BAD_AMOUNT, f"balance of {address} would pass the money limit")
    changes[address] = Account(acct.balance + amount, acct.nonce)


def connect_block(block: Block, get: AccountLookup, params: NetworkParams) -> dict[str, Account]:
    """The accounts a checked block changes, given the state at its parent: address -> new account."""
    changes: dict[str, Account] = {}
    fees = 0
    for tx in block.txs[1:]:
        apply_tx(tx, get, changes)
        fees += tx.fee
    cb = block.txs[0]
    if cb.amount > params.reward + fees:
        raise RuleError(
            RuleCode.COINBASE_OVERPAYS, f"coinbase pays {cb.amount}, reward + fees is {params.reward + fees}"
        )
    credit(cb.recipient, cb.amount, get, changes)
    return changes
