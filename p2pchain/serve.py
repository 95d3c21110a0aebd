"""Serving blocks to peers (GET_CHAIN, GET_BLOCKS, GET_BLOCK; GET_TXS answers share the meter
through ``send_metered``) without letting one of them buy
the event loop (issue 12, finding 2: a 70-byte GET_CHAIN bought ~70 KB read and encoded on the
loop; 8 flooders took honest propagation from 1.8 ms to 314 ms).

- The blocks are read and the answer encoded in one thread of its own, on a read-only SQLite
  connection (WAL: it sees the last commit), so the loop keeps relaying while a long answer is
  built. Blocks of a batch not yet committed are read on the loop (a few, during a sync).
- The answer carries the blocks' stored msgpack bytes as they are (``wire.frame_with_blocks``),
  checked but not decoded into Blocks and encoded again: that cost a sync's server ~17 us a block
  (4x what the reading costs), on the core its peer needs to check them.
- One answer per peer at a time: the handler returns only once its answer has left (``Peer.flushed``),
  and a peer's next message is not read before its handler returns (TCP pushes back).
- A per-peer budget of bytes served (``Peer.serve_budget``): past SERVE_BURST_BYTES, a peer is
  served SERVE_BYTES_PER_S; above that it waits (we stop reading it), and is never refused.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Sequence

import msgpack

from p2pchain import limits, wire
from p2pchain.chain import Chain
from p2pchain.ledger.block import HEADER_BYTES, Block, Header
from p2pchain.ledger.tx import Tx
from p2pchain.peer import Peer
from p2pchain.store import pack_block, stored_bodies, unpack_block
from p2pchain.threadpool import ThreadPoolOnFirstUse

MakeAnswer = Callable[[int], wire.Chain | wire.Blocks]  # the answer (without its blocks) to send n blocks in


def checked_size(body: bytes, block_hash: bytes) -> int:
    """The canonical size of the block a stored ``body`` holds, after checking that it is msgpack
    of a block whose header hashes to ``block_hash`` (what decoding it into a Block checked before
    blocks were served as stored); 0 if not."""
    try:
        header, txs = msgpack.unpackb(body, raw=False)
        if Header.wire_hash(header) != block_hash:
            return 0
        return HEADER_BYTES + sum(map(Tx.wire_size, txs))
    except (ValueError, TypeError, IndexError, msgpack.UnpackException):
        return 0


class BlockServer:
    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self._path = chain.store.path
        self._pool = ThreadPoolOnFirstUse(1, thread_name_prefix="p2pchain-serve")
        self._conn: sqlite3.Connection | None = None  # the serving thread's (one thread: one connection)
        # recent answers by (type, first hash, hashes asked, best tip): a flood of the same
        # GET_CHAIN (a locator at genesis) is answered from here; at most SERVE_CACHE_BYTES held,
        # all for one best tip (_cache_tip): an answer for a tip that has moved on is never asked
        # for again, so it is dropped, not left to fill the cache (the soak's memory, issue 18)
        self._cache: OrderedDict[tuple[str, bytes, int, bytes], bytes] = OrderedDict()
        self._cache_bytes = 0
        self._cache_tip = b""

    def close(self) -> None:
        """Stop serving: queued reads are dropped, the one under way ends (a read takes
        milliseconds), and the serving thread's connection is closed, so that the store's close
        after it can fold the write-ahead log into the file and delete it (docs/ledger.md)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- in the serving thread ------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        db = self._conn
        if db is None:  # (closed from the loop's thread by close, once the serving thread is done)
            db = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA cache_size=-{limits.SERVE_PAGE_CACHE_KIB}")  # negative: KiB, not pages
            self._conn = db
        return db

    def _read(self, hashes: Sequence[bytes], max_bytes: int) -> tuple[list[bytes], int]:
        """The stored bodies of ``hashes`` in order (one query), stopping at the first not
        committed yet, gone or damaged (the loop finds out which) and before the blocks'
        canonical bytes pass ``max_bytes`` (at least one block); and those canonical bytes."""
        rows = stored_bodies(self._db(), hashes)
        bodies: list[bytes] = []
        total = 0
        for block_hash in hashes:
            body: bytes | None = rows.get(block_hash)
            if body is None:
                break
            size = checked_size(body, block_hash)
            if not size or (bodies and total + size > max_bytes):
                break
            bodies.append(body)
            total += size
        return bodies, total

    def _read_block(self, block_hash: bytes) -> Block | None:
        row = self._db().execute("SELECT body FROM blocks WHERE hash=?", (block_hash,)).fetchone()
        block = None if row is None else unpack_block(row[0])
        return block if block is not None and block.hash == block_hash else None

    def _answer(
        self, hashes: Sequence[bytes], max_bytes: int, make: MakeAnswer
    ) -> tuple[list[bytes], int, bytes | None]:
        bodies, size = self._read(hashes, max_bytes)
        if len(bodies) < len(hashes) and size < max_bytes:
            return bodies, size, None  # cut short by a block not committed yet: the loop finishes it
        return bodies, size, wire.frame_with_blocks(make(len(bodies)), bodies)

    # --- on the loop ----------------------------------------------------------------------------
    async def block(self, block_hash: bytes) -> Block | None:
        """One stored block, read off the loop when it is committed (GET_TX's confirmed case)."""
        if self._path != ":memory:":
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(self._pool, self._read_block, block_hash)
            if found is not None:
                return found
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
        bodies: list[bytes] = []
        size = 0
        if self._path != ":memory:" and hashes:
            loop = asyncio.get_running_loop()
            bodies, size, frame = await loop.run_in_executor(self._pool, self._answer, hashes, max_bytes, make)
        if frame is None:  # the rest on the loop (its connection sees the open batch)
            for block_hash in hashes[len(bodies) :]:
                block = self.chain.get_block(block_hash)
                if block is None or (bodies and size + block.size > max_bytes):
                    break
                bodies.append(pack_block(block))
                size += block.size
            frame = wire.frame_with_blocks(make(len(bodies)), bodies)
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
        await send_metered(peer, frame, kind)


async def send_metered(peer: Peer, frame: bytes, kind: str) -> None:
    """Send an answer out of ``peer``'s byte budget and return once it has left: the caller, a
    handler, holds back the peer's next message until then (one outstanding answer). The caller
    awaited ``peer.serve_budget()`` before building it."""
    peer.spend_serve_budget(len(frame))
    peer.send_frame(frame, kind)
    await peer.flushed()
