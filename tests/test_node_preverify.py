"""node_preverify: a block's signatures are checked in threads off the event loop, and a bad one
is still found and named by the block rules.

In-process: a Node on a temp data dir, no sockets; blocks built with tests/node_helpers.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from node_helpers import FUNDED, TEST_PARAMS, branch, idle_node, next_block, pay

from p2pchain import node as node_module
from p2pchain import wire
from p2pchain.errors import RuleCode, RuleError
from p2pchain.keys import Wallet
from p2pchain.ledger import rules
from p2pchain.ledger.tx import Tx
from p2pchain.node import PREVERIFY_MIN_TXS
from p2pchain.peer import Misbehaving


def test_preverify_caches_good_signatures_and_leaves_a_bad_one_to_the_rules(tmp_path: Path) -> None:
    funding = branch(TEST_PARAMS.genesis.header, 3)  # FUNDED earns the rewards
    to = Wallet.generate().address
    txs = [pay(FUNDED, to, 1, nonce=i) for i in range(PREVERIFY_MIN_TXS + 8)]
    forged = replace(txs[7], signature=bytes(64))  # same body, signature of zeros
    block = next_block(funding[-1].header, [*txs[:7], forged, *txs[8:]])

    async def scenario() -> None:
        async with idle_node(tmp_path) as node:
            await node._preverify([block])
            cache = node.mempool.verified
            assert all(tx.txid in cache for tx in block.txs[1:] if tx is not forged)
            assert forged.txid not in cache
            with pytest.raises(RuleError) as err:
                rules.check_block(block, TEST_PARAMS, verified=cache)
            assert err.value.code is RuleCode.TX_BAD_SIGNATURE

    asyncio.run(scenario())


def test_a_small_block_is_left_to_process_block(tmp_path: Path) -> None:
    to = Wallet.generate().address
    block = next_block(TEST_PARAMS.genesis.header, [pay(FUNDED, to, 1, nonce=0)])

    async def scenario() -> None:
        async with idle_node(tmp_path) as node:
            await node._preverify([block])
            assert block.txs[1].txid not in node.mempool.verified  # below PREVERIFY_MIN_TXS: no threads

    asyncio.run(scenario())


def test_a_known_block_costs_no_signature_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12, finding 8: a block the node already has (stored, or found invalid) sent again
    as NEW_BLOCK is answered from a lookup; before, its signatures were checked again whenever
    the signature cache had forgotten them (a peer cycling stored blocks bought ~4,000 checks
    per block, no proof of work needed)."""
    funding = branch(TEST_PARAMS.genesis.header, PREVERIFY_MIN_TXS + 8)  # a coin for each payment
    to = Wallet.generate().address
    block = next_block(funding[-1].header, [pay(FUNDED, to, 1, nonce=i) for i in range(PREVERIFY_MIN_TXS + 8)])
    more = [pay(FUNDED, to, 1, nonce=i) for i in range(PREVERIFY_MIN_TXS + 8, 2 * (PREVERIFY_MIN_TXS + 8))]
    bad = next_block(block.header, more, overpay=1)  # its coinbase pays one coin too many
    checked: list[int] = []
    real = node_module.signatures_ok

    def counting(txs: list[Tx], network_id: bytes) -> list[bool]:
        checked.append(len(txs))
        return real(txs, network_id)

    monkeypatch.setattr(node_module, "signatures_ok", counting)

    class StubPeer:  # what the NEW_BLOCK handler reads and writes of its sender (hashable, as a Peer)
        best_height = 0
        useful = False
        listening = True  # a listening node: its block is relayed as any peer's
        listen_addr = "127.0.0.1:1"

    peer: Any = StubPeer()

    async def scenario() -> None:
        async with idle_node(tmp_path) as node:
            for b in funding:
                node.chain.process_block(b, b.header.timestamp)
            await node.handle(peer, wire.NewBlock(block))
            assert node.chain.tip.hash == block.hash and checked, "the new block was not pre-verified"
            with pytest.raises(RuleError):
                node.chain.process_block(bad, bad.header.timestamp)  # now remembered as invalid
            checked.clear()
            for _ in range(3):
                node.mempool.verified.clear()  # as when other blocks' transactions pushed them out
                await node.handle(peer, wire.NewBlock(block))
                with pytest.raises(Misbehaving):
                    await node.handle(peer, wire.NewBlock(bad))
            assert checked == []

    asyncio.run(scenario())
