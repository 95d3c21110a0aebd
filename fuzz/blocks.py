"""Fuzz target: ``Block.from_wire`` / ``Tx.from_wire``, then the consensus rules.

Input: byte 0 holds flags, the rest is msgpack: a block's wire form ``[header, [tx, ...]]`` or a
transaction's ``[sender, recipient, amount, fee, nonce, pubkey, signature]``. The flags let the
fuzzer past the checks it cannot satisfy by mutation alone (it cannot sign or hash):
bit 0 re-signs every transaction whose sender is one of the seed chain's two wallets, bit 1
sets the header's merkle root to the transactions', bit 2 grinds the nonce (the network is at
1 bit, so about two tries). The block then meets ``check_block``, ``check_header_context`` on
the seed chain block it names as parent (the seed chain is genesis and 4 blocks on a 1-bit
network, one of them with a payment) and ``connect_block`` on the accounts at that parent; a
transaction meets ``check_tx``, ``apply_tx`` on the accounts at the tip, and a fresh mempool.

Oracles (each a crash when broken): only ProtocolError, RuleError or MempoolError come out; a
decoded block or transaction re-encodes to an equal one; a connected block creates exactly
``coinbase - fees`` coins and at most the reward; a block the pure rules accept is connected by
a real Chain (in-memory store) holding the seed chain up to its parent; a transaction the
mempool takes is one that ``apply_tx`` takes.

    .venv/bin/python fuzz/blocks.py --seconds 60      # see fuzz/fuzzharness.py for the options
"""

from __future__ import annotations

import dataclasses
import random
import sys
from typing import Any

import fuzzharness
import msgpack
from fuzzharness import Finding, Target, outcome

RESIGN, FIX_MERKLE, GRIND = 1, 2, 4


def build() -> Target:
    import fuzz  # scripts/fuzz.py
    from p2pchain.chain import Chain, Status
    from p2pchain.errors import MempoolError, ProtocolError, RuleError
    from p2pchain.keys import Wallet
    from p2pchain.ledger import rules
    from p2pchain.ledger.block import Block
    from p2pchain.ledger.rules import EMPTY_ACCOUNT, Account
    from p2pchain.ledger.tx import Tx, make_tx
    from p2pchain.mempool import Mempool
    from p2pchain.miner import mine_block

    fuzzharness.quiet_logs()
    params = fuzz.FUZZ_PARAMS
    seed_chain = fuzz.seed_chain(params)
    wallets = {w.address: w for w in (Wallet.from_seed(fuzz.MINER_SEED), Wallet.from_seed(fuzz.PAYEE_SEED))}

    def lookup(state: dict[str, Account]) -> rules.AccountLookup:
        return lambda address: state.get(address, EMPTY_ACCOUNT)

    genesis_cb = seed_chain[0].txs[0]
    states: list[dict[str, Account]] = [{genesis_cb.recipient: Account(genesis_cb.amount, 0)}]
    for block in seed_chain[1:]:  # the accounts after each block
        state = states[-1]
        states.append({**state, **rules.connect_block(block, lookup(state), params)})
    by_hash = {b.hash: i for i, b in enumerate(seed_chain)}
    now_ms = seed_chain[-1].header.timestamp + 60_000

    def resign(tx: Tx) -> Tx:
        """``tx`` signed anew, if its sender is one of ours (else as it is)."""
        wallet = wallets.get(tx.sender)
        if wallet is None:
            return tx
        return make_tx(wallet, tx.recipient, tx.amount, tx.fee, tx.nonce, params.network_id)

    def total(state: dict[str, Account]) -> int:
        return sum(a.balance for a in state.values())

    def run_tx(obj: Any, flags: int) -> str:
        try:
            tx = Tx.from_wire(obj)
        except ProtocolError as e:
            return "tx:" + outcome(e)
        if Tx.from_wire(tx.to_wire()) != tx or Tx.from_wire(tx.to_wire()).txid != tx.txid:
            raise Finding("a transaction does not re-encode to itself")
        if flags & RESIGN and tx.pubkey and tx.sender in wallets:
            tx = resign(tx)
        state = states[-1]
        pool = Mempool(params, lookup(state))
        try:
            pool.add(tx)
            pooled = "pooled"
        except MempoolError as e:
            pooled = outcome(e)
        try:
            rules.check_tx(tx, params.network_id)
            rules.apply_tx(tx, lookup(state), {})
        except RuleError as e:
            if pooled == "pooled":
                raise Finding(f"the mempool took a transaction the rules refuse ({e})") from None
            return f"tx:{outcome(e)}:{pooled}"
        return f"tx:ok:{pooled}"

    def run_block(obj: Any, flags: int) -> str:
        try:
            block = Block.from_wire(obj)
        except ProtocolError as e:
            return "block:" + outcome(e)
        if Block.from_wire(block.to_wire()) != block:
            raise Finding("a block does not re-encode to itself")
        if flags & RESIGN:
            block = dataclasses.replace(block, txs=tuple(resign(t) if t.pubkey else t for t in block.txs))
        if flags & FIX_MERKLE:
            header = dataclasses.replace(block.header, merkle_root=block.computed_merkle_root())
            block = dataclasses.replace(block, header=header)
        if flags & GRIND and block.header.bits == params.start_bits:
            block = mine_block(block)
        try:
            rules.check_block(block, params)
        except RuleError as e:
            return "block:" + outcome(e)
        i = by_hash.get(block.prev_hash)
        if i is None:
            return "block:orphan"
        parent, state = seed_chain[i], states[i]
        try:
            mtp = rules.median_time_past([b.header.timestamp for b in seed_chain[: i + 1]])
            anchor = seed_chain[1].header.timestamp if i >= 1 else 0  # block 1's: the retarget anchor
            rules.check_header_context(block.header, parent.header, mtp, now_ms, params, anchor)
            changes = rules.connect_block(block, lookup(state), params)
        except RuleError as e:
            return "block:" + outcome(e)
        after = {**state, **changes}
        fees = sum(tx.fee for tx in block.txs[1:])
        minted = total(after) - total(state)
        if minted != block.txs[0].amount - fees or minted > params.reward:
            raise Finding(f"block mints {minted} coins: coinbase {block.txs[0].amount}, fees {fees}")
        if any(a.balance < 0 or a.nonce < 0 for a in after.values()):
            raise Finding("an account went negative")
        chain = Chain.open(":memory:", params)
        try:
            for b in seed_chain[1 : i + 1]:
                chain.process_block(b, now_ms)
            try:
                result = chain.process_block(block, now_ms)
            except RuleError as e:
                raise Finding(f"the rules accept a block that Chain refuses: {e}") from None
            if result.status is not Status.CONNECTED or chain.accounts != {
                a: acct for a, acct in after.items() if acct != EMPTY_ACCOUNT
            }:
                raise Finding(f"Chain did not connect a block the rules accept ({result.status})")
        finally:
            chain.close()
        return f"block:ok:{len(block.txs)}"

    def run(data: bytes) -> str:
        flags, body = (data[0], data[1:]) if data else (0, b"")
        try:
            obj = msgpack.unpackb(body, raw=False, strict_map_key=False, max_bin_len=2**16, max_str_len=2**16)
        except Exception:  # not the code under test: msgpack's own errors
            return "not-msgpack"
        if isinstance(obj, list) and len(obj) == 7:
            return run_tx(obj, flags)
        return run_block(obj, flags)

    def pack(flags: int, obj: Any) -> bytes:
        try:
            return bytes([flags]) + bytes(msgpack.packb(obj, use_bin_type=True))
        except (OverflowError, ValueError, TypeError):
            return bytes([flags])

    def seeds() -> list[bytes]:
        out = []
        for block in seed_chain[1:]:
            for flags in (0, RESIGN | FIX_MERKLE | GRIND):
                out.append(pack(flags, block.to_wire()))
            for tx in block.txs:
                out.append(pack(0, tx.to_wire()))
        miner = next(iter(wallets.values()))
        out.append(
            pack(0, make_tx(miner, Wallet.from_seed(fuzz.PAYEE_SEED).address, 5, 1, 1, params.network_id).to_wire())
        )
        return out

    mutator = fuzz.Mutator(fuzz.FastRandom(1), fuzz.seed_messages())
    docs = [d for d in mutator.docs if d["type"] in ("NEW_BLOCK", "NEW_TX")]

    def generate(rng: random.Random) -> bytes:
        mutator.rng = rng
        doc = rng.choice(docs)
        key = "block" if doc["type"] == "NEW_BLOCK" else "tx"
        mutated = mutator.mutate_doc(doc)
        inner = mutated.get(key, doc[key]) if isinstance(mutated, dict) else doc[key]
        flags = rng.randrange(8)
        if rng.random() < 0.3:  # byte-level too
            return bytes([flags]) + mutator.mutate_bytes(pack(0, inner)[1:])
        return pack(flags, inner)

    return Target("blocks", run, seeds, generate, max_len=65536)


if __name__ == "__main__":
    sys.exit(fuzzharness.main(build))
