"""Serving blocks to peers (GET_CHAIN, GET_BLOCKS, GET_BLOCK) without letting one of them buy
the event loop (issue 12, finding 2: a 70-byte GET_CHAIN bought ~70 KB read and encoded on the
loop; 8 flooders took honest propagation from 1.8 ms to 314 ms).

- The blocks are read and the answer encoded in one thread of its own, on a read-only SQLite
  connection (WAL: it sees the last commit), so the loop keeps relaying while a long answer is
  built. Blocks of a batch not yet committed are read on the loop (a few, during a sync).
- One answer per peer at a time: the handler returns only once its answer has left (``Peer.flushed``),
  and a peer's next message is not read before its handler returns (TCP pushes back).
- A per-peer budget of bytes served (``Peer.serve_budget``): past SERVE_BURST_BYTES, a peer is
  served SERVE_BYTES_PER_S; above that it waits (we stop reading it), and is never refused.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

from p2pchain import limits, wire
from p2pchain.chain import Chain
from p2pchain.ledger.block import Block
from p2pchain.peer import Peer
from p2pchain.store import unpack_block

MakeAnswer = Callable[[Sequence[Block]], wire.Message]


class BlockServer:
    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self._path = chain.store.path
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="p2pchain-serve")
        self._local = threading.local()
        # recent answers by (type, first hash, hashes asked, best tip): a flood of the same
        # GET_CHAIN (a locator at genesis) is answered from here; at most SERVE_CACHE_BYTES held,
        # all for one best tip (_cache_tip): an answer for a tip that has moved on is never asked
        # for again, so it is dropped, not left to fill the cache (the soak's memory, issue 18)
        self._cache: OrderedDict[tuple[str, bytes, int, bytes], bytes] = OrderedDict()
        self._cache_bytes = 0
        self._cache_tip = b""

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- in the serving thread ------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, isolation_level=None)
            db.execute(f"PRAGMA cache_size=-{limits.SERVE_PAGE_CACHE_KIB}")  # negative: KiB, not pages
            self._local.db = db
        return db

    def _read(self, hashes: Sequence[bytes], max_bytes: int) -> list[Block]:
        """Blocks of ``hashes`` in order, stopping at the first not committed yet (or gone) and
        before their canonical bytes pass ``max_bytes`` (at least one block)."""
        blocks: list[Block] = []
        size = 0
        db = self._db()
        for block_hash in hashes:
            row = db.execute("SELECT body FROM blocks WHERE hash=?", (block_hash,)).fetchone()
            if row is None:
                break
            block = unpack_block(row[0])
            if block.hash != block_hash or (blocks and size + block.size > max_bytes):
                break
            blocks.append(block)
            size += block.size
        return blocks

    def _answer(self, hashes: Sequence[bytes], max_bytes: int, make: MakeAnswer) -> tuple[list[Block], bytes | None]:
        blocks = self._read(hashes, max_bytes)
        if len(blocks) < len(hashes) and sum(b.size for b in blocks) < max_bytes:
            return blocks, None  # cut short by a block not committed yet: the loop finishes it
        return blocks, make(blocks).encode()

    # --- on the loop ----------------------------------------------------------------------------
    async def block(self, block_hash: bytes) -> Block | None:
        """One stored block, read off the loop when it is committed (GET_TX's confirmed case)."""
        if self._path != ":memory:":
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(self._pool, self._read, [block_hash], 2**62)
            if found:
                return found[0]
        return self.chain.get_block(block_hash)

    async def serve(
        self, peer: Peer, hashes: Sequence[bytes], max_bytes: int, make: MakeAnswer, kind: str, *, cache: bool = False
    ) -> None:
        """Send ``peer`` the answer ``make`` builds from the blocks of ``hashes`` (a best-chain
        run), once its byte budget allows, and return when the answer has left. With ``cache``
        (an answer that depends only on the hashes and the best height: CHAIN) recent answers
        are reused."""
        await peer.serve_budget()
        key = (kind, hashes[0], len(hashes), self.chain.tip.hash) if cache and hashes else None
        cached = self._cache.get(key) if key is not None else None
        if cached is not None:
            self._cache.move_to_end(key)  # type: ignore[arg-type]
            await self._send(peer, cached, kind)
            return
        frame: bytes | None = None
        if self._path != ":memory:" and hashes:
            loop = asyncio.get_running_loop()
            blocks, frame = await loop.run_in_executor(self._pool, self._answer, hashes, max_bytes, make)
        else:
            blocks = []
        if frame is None:  # the rest on the loop (its connection sees the open batch)
            size = sum(b.size for b in blocks)
            for block_hash in hashes[len(blocks) :]:
                block = self.chain.get_block(block_hash)
                if block is None or (blocks and size + block.size > max_bytes):
                    break
                blocks.append(block)
                size += block.size
            frame = make(blocks).encode()
        if key is not None and key[3] == self.chain.tip.hash and len(frame) <= limits.SERVE_CACHE_BYTES:
            if key[3] != self._cache_tip:
                self._cache.clear()
                self._cache_bytes = 0
                self._cache_tip = key[3]
            self._cache[key] = frame
            self._cache_bytes += len(frame)
            while self._cache_bytes > limits.SERVE_CACHE_BYTES:
                self._cache_bytes -= len(self._cache.popitem(last=False)[1])
        await self._send(peer, frame, kind)

    @staticmethod
    async def _send(peer: Peer, frame: bytes, kind: str) -> None:
        peer.spend_serve_budget(len(frame))
        peer.send_frame(frame, kind)
        await peer.flushed()
