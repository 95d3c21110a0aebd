"""Shared builders for ledger tests: deterministic wallets, in-process mining at low difficulty,
blocks whose every field can be overridden, chains of blocks, and two replays of a best chain
(one with the consensus rules, one independent of them).

Run as a script it is the kill -9 victim of tests/test_store.py:
    python tests/ledger_helpers.py write <sqlite file> <seed>
keeps extending (and now and then reorganising) the chain in that file, printing a line per block.
"""

from __future__ import annotations

import hashlib
import random
import sys
from collections.abc import Iterable, Sequence
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

from p2pchain.chain import Chain
from p2pchain.keys import Wallet
from p2pchain.ledger import rules
from p2pchain.ledger.block import NONCE, Block, Header, merkle_root
from p2pchain.ledger.pow import work
from p2pchain.ledger.rules import EMPTY_ACCOUNT, Account
from p2pchain.ledger.tx import Tx, make_coinbase, make_tx
from p2pchain.params import BLOCK_VERSION, GENESIS_TIMESTAMP_MS, NetworkParams
from p2pchain.store import Store

PARAMS = NetworkParams(bits=8, reward=50)  # ~256 hashes a block: well under a millisecond to mine
GENESIS = PARAMS.genesis
SPACING_MS = 1000  # a test block's timestamp is its parent's plus this (plus a salt)
NOW_MS = GENESIS_TIMESTAMP_MS + 10**9  # the tests' local clock: ~11.6 days after genesis
WORK = work(PARAMS.start_target)  # work of one block at PARAMS; a branch of n blocks over genesis has (n + 1) * WORK


def wallet(n: int) -> Wallet:
    """The n-th test wallet, the same in every run."""
    return Wallet.from_seed(hashlib.sha256(b"p2pchain test wallet %d" % n).digest())


MINER = wallet(0)  # default coinbase recipient


# --- proof of work --------------------------------------------------------------------------
def _search(header: Header, want_valid: bool) -> Header:
    mid = hashlib.sha256(header.prefix)  # the 84 bytes before the nonce are hashed once
    bound = header.target
    for nonce in range(2**64):
        h = mid.copy()
        h.update(NONCE.pack(nonce))
        if (int.from_bytes(h.digest(), "big") < bound) == want_valid:
            return replace(header, nonce=nonce)
    raise AssertionError("nonce space exhausted")


def mine(header: Header) -> Header:
    """``header`` with the first nonce whose hash meets its target."""
    return _search(header, True)


def unmine(header: Header) -> Header:
    """``header`` with the first nonce whose hash does NOT meet its target (bad proof of work)."""
    return _search(header, False)


# --- blocks ---------------------------------------------------------------------------------
def assemble(
    parent: Block | Header,
    txs: Sequence[Tx],
    *,
    params: NetworkParams = PARAMS,
    salt: int = 0,
    **fields: Any,
) -> Block:
    """A mined block on ``parent`` holding exactly ``txs`` (coinbase included or not). Any header
    field can be overridden (``timestamp=...``, ``merkle_root=...``); ``salt`` shifts the default
    timestamp so that sibling blocks differ. ``pow_ok=False`` leaves the proof of work unmet."""
    ph = parent.header if isinstance(parent, Block) else parent
    pow_ok = fields.pop("pow_ok", True)
    header = Header(
        version=BLOCK_VERSION,
        height=ph.height + 1,
        prev_hash=ph.hash,
        merkle_root=merkle_root([tx.txid for tx in txs]),
        timestamp=ph.timestamp + SPACING_MS + salt,
        bits=params.start_bits,
        nonce=0,
    )
    header = replace(header, **fields)
    return Block(mine(header) if pow_ok else unmine(header), tuple(txs))


def block_on(
    parent: Block | Header,
    txs: Sequence[Tx] = (),
    *,
    miner: str = MINER.address,
    params: NetworkParams = PARAMS,
    salt: int = 0,
    **fields: Any,
) -> Block:
    """A valid block on ``parent`` (if ``txs`` are): its coinbase pays reward + fees to ``miner``."""
    height = fields.get("height", (parent.header if isinstance(parent, Block) else parent).height + 1)
    cb = make_coinbase(miner, params.reward + sum(tx.fee for tx in txs), height)
    return assemble(parent, (cb, *txs), params=params, salt=salt, **fields)


def remine(block: Block, **fields: Any) -> Block:
    """``block`` with header fields replaced and the proof of work redone."""
    return Block(mine(replace(block.header, **fields)), block.txs)


def branch(parent: Block, n: int, *, miner: str = MINER.address, salt: int = 0) -> list[Block]:
    """``n`` consecutive coinbase-only blocks on ``parent``; ``salt`` tells branches apart."""
    blocks: list[Block] = []
    for _ in range(n):
        parent = block_on(parent, miner=miner, salt=salt)
        blocks.append(parent)
    return blocks


def pay(sender: Wallet, recipient: Wallet | str, amount: int, *, fee: int = 0, nonce: int = 0) -> Tx:
    """A payment signed for PARAMS' network."""
    to = recipient if isinstance(recipient, str) else recipient.address
    return make_tx(sender, to, amount, fee, nonce, PARAMS.network_id)


# --- chains ---------------------------------------------------------------------------------
def mem_chain(params: NetworkParams = PARAMS) -> Chain:
    return Chain.open(":memory:", params)


def feed(chain: Chain, blocks: Iterable[Block], now_ms: int = NOW_MS) -> None:
    """Process blocks that must all be accepted."""
    for block in blocks:
        chain.process_block(block, now_ms)


def committed_height(path: str | Path) -> int:
    """The best-chain height another connection (another process) sees in the store's file."""
    other = Store(path)
    try:
        return len(other.load_main()) - 1
    finally:
        other.close()


def main_blocks(chain: Chain) -> list[Block]:
    blocks = chain.store.get_blocks(chain.main)
    assert [b.hash for b in blocks] == chain.main
    return blocks


def replay(blocks: Iterable[Block]) -> dict[str, Account]:
    """Accounts after ``blocks`` (genesis first), computed without the rules module: each payment
    moves amount + fee out of its sender and bumps its nonce, each coinbase credits its amount.
    Empty accounts are left out, as the chain leaves them out."""
    balance: dict[str, int] = {}
    nonce: dict[str, int] = {}
    for block in blocks:
        for tx in block.txs[1:]:
            balance[tx.sender] = balance.get(tx.sender, 0) - tx.amount - tx.fee
            nonce[tx.sender] = nonce.get(tx.sender, 0) + 1
            balance[tx.recipient] = balance.get(tx.recipient, 0) + tx.amount
        cb = block.txs[0]
        balance[cb.recipient] = balance.get(cb.recipient, 0) + cb.amount
    accounts = {a: Account(balance.get(a, 0), nonce.get(a, 0)) for a in balance.keys() | nonce.keys()}
    return {a: acct for a, acct in accounts.items() if acct != EMPTY_ACCOUNT}


def revalidate(blocks: Sequence[Block], params: NetworkParams, now_ms: int = NOW_MS) -> dict[str, Account]:
    """Check a best chain (genesis first) from scratch with every consensus rule; return the
    accounts it leaves (empty ones left out). Raises RuleError at the first broken rule."""
    assert blocks[0] == params.genesis
    state: dict[str, Account] = {}
    rules.credit(params.genesis.txs[0].recipient, params.genesis.txs[0].amount, lambda a: EMPTY_ACCOUNT, state)
    stamps = [params.genesis.header.timestamp]
    anchor = 0
    for parent, block in pairwise(blocks):
        rules.check_block(block, params)
        mtp = rules.median_time_past(stamps)
        rules.check_header_context(block.header, parent.header, mtp, now_ms, params, anchor)
        anchor = rules.anchor_time(block.header, anchor)
        state.update(rules.connect_block(block, lambda a: state.get(a, EMPTY_ACCOUNT), params))
        stamps.append(block.header.timestamp)
    return {a: acct for a, acct in state.items() if acct != EMPTY_ACCOUNT}


# --- the kill -9 victim ---------------------------------------------------------------------
def _payments(chain: Chain, wallets: list[Wallet], rng: random.Random) -> list[Tx]:
    """A few valid payments on the current best chain, from wallets that have coins."""
    txs: list[Tx] = []
    for w in rng.sample(wallets, rng.randint(0, len(wallets))):
        acct = chain.get_account(w.address)
        if acct.balance >= 2:
            to = rng.choice(wallets)
            txs.append(pay(w, to, rng.randint(1, acct.balance - 1), fee=1, nonce=acct.nonce))
    return txs


def write_forever(path: str, seed: int) -> None:
    """Extend the chain in ``path`` for ever: mostly blocks with payments on the tip, sometimes a
    competing branch that forks up to 5 blocks back and overtakes the tip (a reorg). Half of the
    branches are written in one store batch, as a sync writes a CHAIN (queued writes, one commit)."""
    rng = random.Random(seed)
    wallets = [wallet(n) for n in range(1, 5)]
    chain = Chain.open(path, PARAMS)
    print("ready", chain.height, flush=True)
    while True:
        tip = chain.block_at(chain.height)
        assert tip is not None
        if chain.height >= 2 and rng.random() < 0.25:
            depth = rng.randint(1, min(5, chain.height))
            fork = chain.block_at(chain.height - depth)
            assert fork is not None
            new = branch(fork, depth + 1, miner=rng.choice(wallets).address, salt=rng.randint(1, 999))
        else:
            txs = _payments(chain, wallets, rng)
            new = [block_on(tip, txs, miner=rng.choice(wallets).address, salt=rng.randint(0, 999))]
        if len(new) > 1 and rng.random() < 0.5:
            with chain.store.batch(behind=rng.random() < 0.5):  # committed by the store's thread, as a sync's
                feed(chain, new)
        else:
            feed(chain, new)
        print("height", chain.height, flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "write":
        sys.exit(f"usage: {sys.argv[0]} write <sqlite file> <seed>")
    write_forever(sys.argv[2], int(sys.argv[3]))
