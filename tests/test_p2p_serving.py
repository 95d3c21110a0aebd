"""p2p_serving: serving blocks does not hold the event loop (issue 12, finding 2).

A 70-byte GET_CHAIN or GET_BLOCKS bought ~70 KB of blocks read and encoded on the event loop;
eight flooding connections took honest propagation through the node from 1.8 ms to 314 ms. Now
the blocks are read and the answer encoded in a thread of its own (p2pchain/serve.py), one answer
per peer is outstanding at a time, and a per-peer byte budget meters what is served.

In-process: a node with a stored chain; the block decoder is made to stall (as a slow disk would)
on the first block a GET_BLOCKS (or a GET_TX of a confirmed transaction) reads. While it stalls,
another peer's PING must be answered: before, the read ran on the loop and nothing else was
served until it ended.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import until
from node_helpers import FUNDED, NODE_DIR, TEST_PARAMS, branch, idle_node, pay, with_node
from p2p_peer import RawPeer

from p2pchain import limits, relay, serve, store, wire
from p2pchain.chain import Chain
from p2pchain.node import Node

STALL_S = 8.0  # the stalled read gives up after this long (only if the test never releases it)


@pytest.mark.parametrize("query", ["GET_BLOCKS", "GET_TX"])
def test_a_slow_block_read_does_not_stop_other_peers_being_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, query: str
) -> None:
    blocks = branch(TEST_PARAMS.genesis.header, 50)
    data_dir = tmp_path / NODE_DIR  # with_node's node starts on it
    data_dir.mkdir()
    chain = Chain.open(data_dir / store.DB_FILE, TEST_PARAMS)
    for block in blocks:
        chain.process_block(block, block.header.timestamp)
    chain.close()
    entered, release = threading.Event(), threading.Event()
    outcome: dict[str, bool] = {}

    def stalling(real: Callable[..., Any]) -> Callable[..., Any]:
        def stalled(*args: Any) -> Any:
            if not entered.is_set():
                entered.set()
                outcome["released"] = release.wait(STALL_S)
            return real(*args)

        return stalled

    # the first stored block decoded (GET_TX) or checked (GET_BLOCKS: served as stored) stalls
    monkeypatch.setattr(store, "unpack_block", stalling(store.unpack_block))
    monkeypatch.setattr(serve, "unpack_block", stalling(serve.unpack_block))
    monkeypatch.setattr(serve, "checked_size", stalling(serve.checked_size))

    async def scenario(node: Node) -> Any:
        asker, other = await RawPeer.connect(node.port), await RawPeer.connect(node.port)
        try:
            await asker.handshake()
            await other.handshake()
            if query == "GET_BLOCKS":
                asker.send(wire.GetBlocks(1, 1, limits.MAX_BLOCKS_PER_CHAIN))
            else:  # a confirmed transaction: its block is read to find it
                asker.send(wire.GetTx(1, blocks[20].txs[0].txid))
            await until(entered.is_set, f"the {query} read to start", STALL_S)
            await other.sync_with_ping(STALL_S / 2)  # served while the read stalls
            release.set()
            return await asker.expect(wire.Blocks if query == "GET_BLOCKS" else wire.TxInfo)
        finally:
            release.set()
            await asker.close()
            await other.close()

    reply = asyncio.run(with_node(tmp_path, scenario, deadline_s=None, ban_loopback=False))
    assert outcome == {"released": True}, "the stalled read held the event loop: nothing else was served"
    if query == "GET_BLOCKS":
        assert [b.hash for b in reply.blocks] == [b.hash for b in blocks]
    else:
        assert (reply.status, reply.height) == ("confirmed", 21)


def test_a_stored_block_is_served_as_stored_only_if_it_checks_out() -> None:
    """A block goes out as its stored bytes after the checks its decoding made: msgpack of a
    block whose header hashes to the row's hash. Anything else is left to the loop's read, which
    names the damage (StoreError)."""
    first, second = branch(TEST_PARAMS.genesis.header, 2)
    body = store.pack_block(first)
    assert serve.checked_size(body, first.hash) == first.size
    assert serve.checked_size(store.pack_block(second), first.hash) == 0  # another block's row
    for damaged in (body[:-3], body[:40], b"\xc1" + body[1:], b"\x92\x01\x02", b""):
        assert serve.checked_size(damaged, first.hash) == 0


def test_a_peer_past_its_byte_budget_waits_for_the_refill(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past SERVE_BURST_BYTES served, a peer's next request waits (it is not read meanwhile) as
    long as SERVE_BYTES_PER_S takes to pay the excess back; within the budget it does not wait."""
    from p2pchain import peer as peer_module

    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    class Writer:  # what Peer reads of a StreamWriter when it is made
        def get_extra_info(self, name: str) -> tuple[str, int]:
            return ("127.0.0.1", 1)

    async def scenario() -> None:
        p = peer_module.Peer(asyncio.StreamReader(), Writer(), inbound=True, tunables=peer_module.Tunables())  # type: ignore[arg-type]
        monkeypatch.setattr(peer_module.asyncio, "sleep", fake_sleep)
        monkeypatch.setattr(peer_module.time, "monotonic", lambda: 1000.0)  # no refill while we look
        p._serve_refill = 1000.0
        await p.serve_budget()
        assert slept == []
        p.spend_serve_budget(limits.SERVE_BURST_BYTES + limits.SERVE_BYTES_PER_S // 2)
        await p.serve_budget()

    asyncio.run(scenario())
    assert slept == [pytest.approx(0.5)]


class _Taker:
    """What BlockServer.serve needs of a peer: a byte budget (unmetered here) and a sink."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    async def serve_budget(self) -> None:
        return None

    def spend_serve_budget(self, n: int) -> None:
        return None

    def send_frame(self, frame: bytes, kind: str) -> None:
        self.frames.append(frame)

    async def flushed(self) -> None:
        return None


def test_chain_answers_are_cached_for_the_best_tip_only(tmp_path: Path) -> None:
    """The CHAIN-answer cache (SERVE_CACHE_BYTES) is keyed by the best tip, so an answer made
    before the tip moved is never used again: it is dropped when the tip moves, not left to fill
    the cache (issue 18: the soak's memory). Answers for the new tip are cached and reused."""
    blocks = branch(TEST_PARAMS.genesis.header, 30)
    chain = Chain.open(tmp_path / store.DB_FILE, TEST_PARAMS)
    server = serve.BlockServer(chain)
    taker = _Taker()

    def answer(found: int) -> wire.Chain:
        return wire.Chain((), False)

    async def ask(first: int, count: int) -> bytes:
        hashes = chain.main[first : first + count]
        await server.serve(taker, hashes, limits.CHAIN_BATCH_BYTES, answer, "CHAIN", cache=True)  # type: ignore[arg-type]
        return taker.frames[-1]

    async def scenario() -> None:
        for block in blocks[:20]:
            chain.process_block(block, block.header.timestamp)
        old = [await ask(1, 5), await ask(6, 5)]
        assert server._cache_bytes == sum(map(len, old)) and len(server._cache) == 2
        assert await ask(1, 5) == old[0]  # the same question at the same tip: from the cache
        for block in blocks[20:]:
            chain.process_block(block, block.header.timestamp)
        new = await ask(11, 5)
        assert list(server._cache.values()) == [new]  # the old tip's answers are gone
        assert server._cache_bytes == len(new)
        assert await ask(11, 5) == new and len(server._cache) == 1

    try:
        asyncio.run(scenario())
    finally:
        server.close()
        chain.close()


def test_after_serving_the_stop_leaves_no_write_ahead_log(tmp_path: Path) -> None:
    """The serving thread's read-only connection is closed before the store's, so the store's
    close folds the write-ahead log into the file and deletes it (docs/ledger.md): no -wal file
    is left beside the store after a node served blocks and stopped."""
    path = tmp_path / store.DB_FILE
    chain = Chain.open(path, TEST_PARAMS)
    server = serve.BlockServer(chain)
    taker = _Taker()

    async def scenario() -> None:
        for block in branch(TEST_PARAMS.genesis.header, 10):
            chain.process_block(block, block.header.timestamp)
        await server.serve(taker, chain.main[1:6], limits.CHAIN_BATCH_BYTES, lambda n: wire.Chain((), False), "CHAIN")  # type: ignore[arg-type]
        assert taker.frames and server._conn is not None  # served from the thread's connection

    try:
        asyncio.run(scenario())
        assert Path(f"{path}-wal").exists()  # (the WAL is there while both are open)
    finally:
        server.close()
        chain.close()
    assert not Path(f"{path}-wal").exists()


def test_the_page_caches_of_both_sqlite_connections_are_bounded(tmp_path: Path) -> None:
    """SQLite's page cache fills as the store grows and then stays full: each connection gets the
    size limits.py gives it, not SQLite's 2,000 KiB default (issue 18); a small store's own
    connection the least (test_store checks that it grows with the file)."""
    chain = Chain.open(tmp_path / store.DB_FILE, TEST_PARAMS)
    server = serve.BlockServer(chain)
    try:
        assert chain.store.db.execute("PRAGMA cache_size").fetchone()[0] == -limits.STORE_PAGE_CACHE_MIN_KIB
        reader = server._pool.submit(server._db).result(timeout=10)
        assert server._pool.submit(lambda: reader.execute("PRAGMA cache_size").fetchone()[0]).result(timeout=10) == (
            -limits.SERVE_PAGE_CACHE_KIB
        )
    finally:
        server.close()
        chain.close()


def test_a_burst_of_queued_frames_leaves_whole_in_order_and_in_few_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer joins what is queued into one write of at most SEND_WRITE_MAX_BYTES (a burst
    of answers costs a few system calls, not one each): the bytes are the frames in order, each
    frame is counted (bytes_sent, traffic by type), and flushed() returns once all are drained."""
    from p2pchain import peer as peer_module

    monkeypatch.setattr(limits, "SEND_WRITE_MAX_BYTES", 1000)

    class Transport:
        def get_write_buffer_size(self) -> int:
            return 0  # the socket took every write

        def is_closing(self) -> bool:
            return False

    class Writer:  # a StreamWriter that records each write
        def __init__(self) -> None:
            self.writes: list[bytes] = []
            self.transport = Transport()

        def get_extra_info(self, name: str) -> tuple[str, int]:
            return ("127.0.0.1", 1)

        def write(self, data: bytes) -> None:
            self.writes.append(bytes(data))

        async def drain(self) -> None:
            await asyncio.sleep(0)  # ok: a turn of the loop, as a socket's drain may take

    async def scenario() -> None:
        writer = Writer()
        p = peer_module.Peer(asyncio.StreamReader(), writer, inbound=True, tunables=peer_module.Tunables())  # type: ignore[arg-type]
        frames = [wire.Ping(i).encode() for i in range(300)]
        for frame in frames:
            p.send_frame(frame, wire.Ping.TYPE)
        task = asyncio.create_task(p._writer())
        async with asyncio.timeout(10):
            await p.flushed()
        total = sum(map(len, frames))
        assert b"".join(writer.writes) == b"".join(frames)
        assert all(len(w) < 1000 + len(frames[-1]) for w in writer.writes)  # the cap, plus the frame that crossed it
        assert len(writer.writes) <= total // 1000 + 1
        assert p.bytes_sent == total and p.queued_bytes == 0
        assert p.traffic.sent[wire.Ping.TYPE] == [300, total]
        p.queue.put_nowait(None)  # as close() ends the writer
        async with asyncio.timeout(10):
            await task


class _MeteredTaker(_Taker):
    """A peer for GET_TXS: records what its budget is charged, and holds ``flushed`` until told."""

    def __init__(self) -> None:
        super().__init__()
        self.budget_waits = 0
        self.spent = 0
        self.left = asyncio.Event()

    async def serve_budget(self) -> None:
        self.budget_waits += 1

    def spend_serve_budget(self, n: int) -> None:
        self.spent += n

    async def flushed(self) -> None:
        await self.left.wait()


def test_get_txs_is_answered_out_of_the_byte_budget_one_answer_at_a_time_and_once_per_offer(tmp_path: Path) -> None:
    """GET_TXS is metered as blocks are served: the answer waits for the peer's byte budget and
    is charged to it, and the handler (so the peer's next message) waits until the answer has
    left. It holds only transactions announced to that peer, each once: asking again, or for a
    pooled transaction never announced to it, gets nothing."""

    async def scenario() -> None:
        async with idle_node(tmp_path) as node:
            for block in branch(TEST_PARAMS.genesis.header, 2):
                node.chain.process_block(block, block.header.timestamp)
            offered, kept_back = pay(FUNDED, "ab" * 20, 1, nonce=0), pay(FUNDED, "ab" * 20, 1, nonce=1)
            node.mempool.add(offered)
            peer = _MeteredTaker()
            node.relay.add_peer(peer, limits.PROTOCOL_VERSION, relay.FEATURES)
            node.relay.announce(offered.txid)
            node.relay.take_announcements()  # the INV_TX that would go out
            node.mempool.add(kept_back)  # pooled, never announced to the peer
            handler = asyncio.create_task(
                node._on_get_txs(peer, wire.GetTxs((offered.txid, offered.txid, kept_back.txid)))  # type: ignore[arg-type]
            )
            await until(lambda: bool(peer.frames), "the TXS answer")
            for _ in range(10):  # turns of the loop in which the handler could return early, as it must not
                await asyncio.sleep(0)  # ok: one turn of the loop
            assert not handler.done(), "the handler returned before its answer left"
            assert peer.budget_waits == 1 and peer.spent == len(peer.frames[0])
            peer.left.set()
            await handler
            answer = wire.decode_message(peer.frames[0][limits.FRAME_HEADER_BYTES :])
            assert isinstance(answer, wire.Txs) and [tx.txid for tx in answer.txs] == [offered.txid]
            await node._on_get_txs(peer, wire.GetTxs((offered.txid, kept_back.txid)))  # type: ignore[arg-type]
            again = wire.decode_message(peer.frames[1][limits.FRAME_HEADER_BYTES :])
            assert isinstance(again, wire.Txs) and again.txs == ()

    asyncio.run(scenario())


def test_a_frame_the_socket_does_not_take_at_once_is_drained_by_the_writer_before_flushed() -> None:
    """A frame sent while the writer is idle goes straight to the socket at the end of the turn
    (no writer wake-up); when the socket keeps part of it, flushed() returns only once the
    writer has drained it, and frames sent meanwhile follow it in order through the queue."""
    from p2pchain import peer as peer_module

    class Transport:
        def __init__(self) -> None:
            self.buffered = 0

        def get_write_buffer_size(self) -> int:
            return self.buffered

        def is_closing(self) -> bool:
            return False

    class Writer:  # a StreamWriter whose socket keeps everything until drain() is let through
        def __init__(self) -> None:
            self.writes: list[bytes] = []
            self.transport = Transport()
            self.let_through = asyncio.Event()

        def get_extra_info(self, name: str) -> tuple[str, int]:
            return ("127.0.0.1", 1)

        def write(self, data: bytes) -> None:
            self.writes.append(bytes(data))
            self.transport.buffered += len(data)

        async def drain(self) -> None:
            await self.let_through.wait()
            self.transport.buffered = 0

    async def scenario() -> None:
        writer = Writer()
        p = peer_module.Peer(asyncio.StreamReader(), writer, inbound=True, tunables=peer_module.Tunables())  # type: ignore[arg-type]
        task = asyncio.create_task(p._writer())
        first, second = wire.Ping(1).encode(), wire.Ping(2).encode()
        p.send_frame(first, wire.Ping.TYPE)
        flushed = asyncio.create_task(p.flushed())
        await until(lambda: writer.writes == [first], "the first frame written at the end of the turn")
        p.send_frame(second, wire.Ping.TYPE)  # behind the undrained one: through the queue
        for _ in range(10):  # turns of the loop in which flushed() could return early, as it must not
            await asyncio.sleep(0)  # ok: one turn of the loop
        assert not flushed.done(), "flushed() returned while the socket still held the frame"
        writer.let_through.set()
        async with asyncio.timeout(10):
            await flushed
            await p.flushed()
        assert writer.writes == [first, second]
        assert p.bytes_sent == len(first) + len(second) and p.queued_bytes == 0
        p.queue.put_nowait(None)
        async with asyncio.timeout(10):
            await task

    asyncio.run(scenario())
