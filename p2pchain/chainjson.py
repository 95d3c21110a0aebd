"""Blocks as the tutorial's JSON, for the HTTP shim: the shapes (``block_json``, ``tx_json``), the
same text written straight from a block (``block_text``), and a bounded cache of the recent
blocks' JSON text (``RecentBlocksJson``), filled from the chain's updates.

Why text and a cache: a whole-chain answer (/chain, /nodes/resolve) of 201 blocks cost ~20 ms
when each block was read back from the store (which waits for a sync's batch to be committed)
and put through ``json.dumps(block_json(block))``. The node has just accepted those blocks: the
cache holds them as they were connected, and renders each once, when first asked for, with one
format string (~6x cheaper than building the dict and dumping it). The text is exactly
``json.dumps(block_json(block))`` (tests/test_chainjson.py compares them).
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from p2pchain import limits
from p2pchain.ledger.block import Block
from p2pchain.ledger.pow import bits_to_target, difficulty_bits
from p2pchain.ledger.tx import Tx


def tx_json(tx: Tx) -> dict[str, Any]:
    """A transaction as JSON: the tutorial's three keys, then the rest (hex for bytes)."""
    return {
        "sender": tx.sender,
        "recipient": tx.recipient,
        "amount": tx.amount,
        "fee": tx.fee,
        "nonce": tx.nonce,
        "pubkey": tx.pubkey.hex(),
        "signature": tx.signature.hex(),
        "txid": tx.txid.hex(),
    }


def block_json(block: Block) -> dict[str, Any]:
    """A block as JSON in the tutorial's shape, plus ``hash`` and the header's other fields."""
    h = block.header
    return {
        "index": h.height + 1,
        "timestamp": h.timestamp / 1000,
        "transactions": [tx_json(tx) for tx in block.txs],
        "proof": h.nonce,
        "previous_hash": h.prev_hash.hex(),
        "hash": block.hash.hex(),
        "height": h.height,
        "merkle_root": h.merkle_root.hex(),
        "difficulty": round(difficulty_bits(h.target), 4),
        "bits": h.bits,
    }


@functools.lru_cache(maxsize=64)  # a chain has few distinct targets at a time
def _difficulty(bits: int) -> str:
    return json.dumps(round(difficulty_bits(bits_to_target(bits)), 4))


def tx_text(tx: Tx) -> str:
    """``json.dumps(tx_json(tx))``, written directly. An address needs no escaping (any other
    string goes through json.dumps); both tests inline, as a function call each cost a tenth of
    a coinbase's text."""
    sender, recipient = tx.sender, tx.recipient
    sender = f'"{sender}"' if sender.isascii() and sender.isalnum() else json.dumps(sender)
    recipient = f'"{recipient}"' if recipient.isascii() and recipient.isalnum() else json.dumps(recipient)
    return (
        f'{{"sender": {sender}, "recipient": {recipient}, "amount": {tx.amount}, '
        f'"fee": {tx.fee}, "nonce": {tx.nonce}, "pubkey": "{tx.pubkey.hex()}", '
        f'"signature": "{tx.signature.hex()}", "txid": "{tx.txid.hex()}"}}'
    )


def block_text(block: Block) -> str:
    """``json.dumps(block_json(block))``, written directly (a float's repr is what json writes)."""
    h = block.header
    txs = block.txs
    texts = tx_text(txs[0]) if len(txs) == 1 else ", ".join([tx_text(tx) for tx in txs])  # (a synced block's one)
    return (
        f'{{"index": {h.height + 1}, "timestamp": {h.timestamp / 1000!r}, "transactions": [{texts}], '
        f'"proof": {h.nonce}, "previous_hash": "{h.prev_hash.hex()}", "hash": "{block.hash.hex()}", '
        f'"height": {h.height}, "merkle_root": "{h.merkle_root.hex()}", "difficulty": {_difficulty(h.bits)}, '
        f'"bits": {h.bits}}}'
    )


def _cost(held: Block | str) -> int:
    """The memory a cache entry counts: a block held as it came, its decoded objects; once
    rendered, its JSON text (less)."""
    if isinstance(held, str):
        return limits.HTTP_JSON_CACHE_ENTRY_BYTES + sys.getsizeof(held)
    return limits.HTTP_JSON_CACHE_ENTRY_BYTES + limits.DECODED_BYTES_PER_BYTE * held.size + limits.DECODED_BLOCK_BYTES


class RecentBlocksJson:
    """The JSON text of the blocks most recently connected to the best chain, at most
    HTTP_JSON_CACHE_BLOCKS blocks and about HTTP_JSON_CACHE_BYTES of memory (the oldest go first). A block
    is kept as it came (rendered when first asked for): a sync costs a dict entry a block. Keyed
    by hash, a block's text never goes stale: a reorg needs no invalidation. The ``genesis``
    block, which is never connected and begins every chain, is held apart, for good (reading it
    from the store would wait for a sync's commit behind)."""

    def __init__(
        self,
        genesis: Block,
        max_blocks: int = limits.HTTP_JSON_CACHE_BLOCKS,
        max_bytes: int = limits.HTTP_JSON_CACHE_BYTES,
    ) -> None:
        self.max_blocks = max_blocks
        self.max_bytes = max_bytes
        self._genesis = (genesis.hash, block_text(genesis))
        self._items: OrderedDict[bytes, tuple[Block | str, int]] = OrderedDict()  # hash -> (block or text, cost)
        self._bytes = 0
        self.waiting = 0  # answers waiting for blocks to come (``waiting_answer``)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def cost(self) -> int:
        return self._bytes

    def on_chain_update(self, connected: list[Block], disconnected: list[Block]) -> None:
        """A chain listener: keep the connected blocks (rendered now if an answer waits for them)."""
        items = self._items
        for block in connected:
            if block.hash not in items:
                held: Block | str = block_text(block) if self.waiting else block
                cost = _cost(held)
                items[block.hash] = (held, cost)
                self._bytes += cost
        while items and (len(items) > self.max_blocks or self._bytes > self.max_bytes):
            self._bytes -= items.popitem(last=False)[1][1]

    @asynccontextmanager
    async def waiting_answer(self) -> AsyncIterator[None]:
        """Around the wait of an answer for blocks still to come (/nodes/resolve): those held are
        rendered now and those that connect meanwhile as they do (rendered later, they would
        share the GIL with the commit behind of the sync that brought them). Those held, up to
        HTTP_JSON_CACHE_BLOCKS of them, about HTTP_STREAM_CHUNK_BYTES of text a loop turn:
        other peers are served between."""
        self.waiting += 1
        try:
            items = self._items
            rendered = 0
            for block_hash in [h for h, (held, _) in items.items() if not isinstance(held, str)]:
                if rendered >= limits.HTTP_STREAM_CHUNK_BYTES:
                    rendered = 0
                    await asyncio.sleep(0)
                item = items.get(block_hash)
                if item is not None:  # (not evicted meanwhile)
                    rendered += len(self._render(block_hash, item))
            yield
        finally:
            self.waiting -= 1

    def texts(self, hashes: Sequence[bytes]) -> list[str | None]:
        """The JSON text of each block of ``hashes`` (None for those not held)."""
        items = self._items
        out: list[str | None] = []
        for block_hash in hashes:
            item = items.get(block_hash)
            if item is None:
                out.append(self._genesis[1] if block_hash == self._genesis[0] else None)
                continue
            out.append(self._render(block_hash, item))
        return out

    def _render(self, block_hash: bytes, item: tuple[Block | str, int]) -> str:
        """The text of a held item, rendered and kept now if it is still a block."""
        held, cost = item
        if not isinstance(held, str):
            held = block_text(held)
            text_cost = _cost(held)  # (less than the block's: the cache only shrinks)
            self._items[block_hash] = (held, text_cost)
            self._bytes += text_cost - cost
        return held
