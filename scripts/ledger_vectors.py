"""Print the ledger test vectors of docs/ledger.md: the default network's genesis header, one
signed transaction from a fixed seed, and merkle roots over their txids. Deterministic (Ed25519
signatures are), so the output is the same on every machine; tests/test_rules.py checks that the
doc holds it verbatim. With ``--asert``, the ASERT vector table (tests/test_retarget.py checks it
the same way).

    python scripts/ledger_vectors.py [--asert]
"""

from __future__ import annotations

import hashlib
import sys

from p2pchain.keys import Wallet
from p2pchain.ledger.block import HEADER_PREFIX, LEAF_PREFIX, NODE_PREFIX, NONCE, Header, merkle_root
from p2pchain.ledger.pow import asert_target, target_to_bits, work
from p2pchain.ledger.tx import Tx, make_tx
from p2pchain.params import MAX_TARGET, NetworkParams

SENDER_SEED = hashlib.sha256(b"p2pchain ledger test vector: sender").digest()
RECIPIENT_SEED = hashlib.sha256(b"p2pchain ledger test vector: recipient").digest()
AMOUNT, FEE, NONCE_VALUE = 5, 1, 0


def header_fields(h: Header) -> list[tuple[str, bytes]]:
    """The header's bytes cut at its fields, in order."""
    raw = h.raw
    names = ["version", "height", "prev_hash", "merkle_root", "timestamp", "bits"]
    sizes = [4, 4, 32, 32, 8, 4]
    assert sum(sizes) == HEADER_PREFIX.size and len(raw) == HEADER_PREFIX.size + NONCE.size
    out, at = [], 0
    for name, size in zip(names, sizes, strict=True):
        out.append((name, raw[at : at + size]))
        at += size
    out.append(("nonce", raw[at:]))
    return out


def body_fields(tx: Tx) -> list[tuple[str, bytes]]:
    """The transaction body's bytes cut at its fields, in order."""
    body, parts, at = tx.body, [], 0
    for name in ("sender", "recipient"):
        n = body[at]
        parts += [(f"{name} length", body[at : at + 1]), (name, body[at + 1 : at + 1 + n])]
        at += 1 + n
    for name in ("amount", "fee", "nonce"):
        parts.append((name, body[at : at + 8]))
        at += 8
    parts += [("pubkey length", body[at : at + 1]), ("pubkey", body[at + 1 :])]
    return parts


def merkle_lines(cb: bytes, tx: bytes) -> list[str]:
    """The tree over [coinbase, tx] and over [coinbase, tx, tx] (an odd level carries its last
    node up: the repeated transaction does not pair with itself)."""
    sha = hashlib.sha256
    leaf_cb, leaf_tx = sha(LEAF_PREFIX + cb).digest(), sha(LEAF_PREFIX + tx).digest()
    two = sha(NODE_PREFIX + leaf_cb + leaf_tx).digest()
    three = sha(NODE_PREFIX + two + leaf_tx).digest()
    assert two == merkle_root([cb, tx]) and three == merkle_root([cb, tx, tx])
    return [
        f"merkle leaf of the genesis coinbase: {leaf_cb.hex()}",
        f"merkle leaf of the tx: {leaf_tx.hex()}",
        f"merkle root of coinbase and tx: {two.hex()}",
        f"merkle root of coinbase and tx and tx: {three.hex()}",
    ]


def lines() -> list[str]:
    params = NetworkParams()
    genesis = params.genesis
    sender, recipient = Wallet.from_seed(SENDER_SEED), Wallet.from_seed(RECIPIENT_SEED)
    tx = make_tx(sender, recipient.address, AMOUNT, FEE, NONCE_VALUE, params.network_id)
    out = [
        f"difficulty: {params.bits}",
        f"start target: {params.start_target:064x}",
        f"start bits: {params.start_bits:08x}",
        f"work per block: {work(params.start_target)}",
        f"reward: {params.reward}",
        f"genesis header: {genesis.header.raw.hex()}",
        *(f"  {name:<12} {part.hex()}" for name, part in header_fields(genesis.header)),
        f"genesis hash: {genesis.hash.hex()}",
        f"genesis coinbase txid: {genesis.txs[0].txid.hex()}",
        f"sender seed: {SENDER_SEED.hex()}",
        f"sender pubkey: {sender.pubkey.hex()}",
        f"sender address: {sender.address}",
        f"recipient: {recipient.address}",
        f"amount: {AMOUNT}",
        f"fee: {FEE}",
        f"nonce: {NONCE_VALUE}",
        f"tx body: {tx.body.hex()}",
        *(f"  {name:<16} {part.hex()}" for name, part in body_fields(tx)),
        f"signing message: {tx.signing_message(params.network_id).hex()}",
        f"signature: {tx.signature.hex()}",
        f"tx bytes: {tx.raw.hex()}",
        f"txid: {tx.txid.hex()}",
        *merkle_lines(genesis.txs[0].txid, tx.txid),
    ]
    return out


# the retarget vectors' network: start difficulty 20, a block every 2 s, the default half-life
ASERT_PARAMS = NetworkParams(bits=20, block_time_ms=2000)
ASERT_CASES = [  # (height delta, time delta ms): the parent's height - 1, its timestamp - block 1's
    (0, 0),  # block 2, its parent is the anchor
    (1, 2000),  # on schedule
    (10, 20000),
    (10, 10000),  # ahead of the schedule: harder
    (10, 40000),  # behind: easier
    (100, 200000),
    (100, 104000),  # one half-life ahead (96 s): about half the target
    (100, 296000),  # one half-life behind: about double
    (100, 200000 + 13152),  # the future limit (13.152 s) past the schedule: at most 10 % easier
    (0, -50_000),  # a parent stamped before the anchor (the median allows it)
    (30000, 0),  # far ahead: down to the hardest target, 1
    (0, 100_000_000),  # far behind: up to the easiest, MAX_TARGET
]


def asert_table() -> list[str]:
    """The ASERT vector table of docs/ledger.md: (height delta, time delta) -> bits and target."""
    p = ASERT_PARAMS
    out = [
        "| height delta | time delta (ms) | bits | target |",
        "|---:|---:|---|---|",
    ]
    for height_delta, time_delta in ASERT_CASES:
        target = asert_target(p.start_target, p.block_time_ms, time_delta, height_delta, p.half_life_ms, MAX_TARGET)
        out.append(f"| {height_delta} | {time_delta} | `{target_to_bits(target):08x}` | `{target:064x}` |")
    return out


def main() -> None:
    if sys.argv[1:] == ["--asert"]:
        print("\n".join(asert_table()))
    else:
        print("\n".join(lines()))


if __name__ == "__main__":
    main()
