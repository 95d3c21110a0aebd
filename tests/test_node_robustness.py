"""node robustness: regressions from the code review of the node layer.

- A handler bug (any exception but Misbehaving/ProtocolError) drops that peer with its traceback
  logged; it neither escapes into asyncio nor ends the redialling of a --peer address.
- ``Node.stop`` returns only once every peer's task has ended, inbound ones too: a handler still
  running would otherwise use the store after it is closed.
- A peer whose chain holds a block from the future is not asked for it again and again.

In-process: Nodes on temp data dirs and loopback sockets, raw test peers from tests/p2p_peer.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from harness import free_port
from node_helpers import NODE_DIR, TEST_PARAMS, branch, next_block, with_node
from p2p_peer import RawPeer

from p2pchain import limits, wire
from p2pchain import peer as peer_module
from p2pchain.client import Client, NodeUnavailable
from p2pchain.connmgr import ConnectionManager
from p2pchain.ledger.block import Block
from p2pchain.node import Node, NodeConfig, run_node
from p2pchain.peer import Peer, Tunables
from p2pchain.store import DB_FILE, Store

DEADLINE_S = 20.0  # generous: the machine is shared


def _errors_with_traceback(caplog: pytest.LogCaptureFixture, exc_type: type[BaseException]) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith("p2pchain") and r.exc_info and r.exc_info[0] is exc_type
    ]


async def _redialled(tmp_path: Path, handle: Callable[[Peer, wire.Message], Awaitable[None]]) -> bool:
    """Dial a fake node as a --peer address whose connection ``handle`` spoils at its first
    message (a PING); True once the address has been dialled a second time."""
    connections: asyncio.Queue[None] = asyncio.Queue()

    async def fake_node(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await wire.read_frame(reader)  # the dialler's HELLO
        writer.write(wire.Hello(1, TEST_PARAMS.network_id, os.urandom(16), 1, 0, b"\0" * 32, 0, "fake").encode())
        writer.write(wire.Ping(7).encode())
        connections.put_nowait(None)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        writer.close()

    server = await asyncio.start_server(fake_node, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = Store(tmp_path / "store.sqlite")
    connmgr = ConnectionManager(
        node_id=os.urandom(16),
        network=TEST_PARAMS.network_id,
        store=store,
        make_hello=lambda: wire.Hello(1, TEST_PARAMS.network_id, os.urandom(16), 0, 0, b"\0" * 32, 0, "t"),
        on_hello=lambda peer: None,
        handle=handle,
        on_close=lambda peer: None,
        tunables=Tunables(),
    )
    try:
        connmgr.connect(f"127.0.0.1:{port}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DEADLINE_S):
                for _ in range(2):  # the first connection is spoilt; the address is dialled again
                    await connections.get()
                return True
        return False
    finally:
        await connmgr.close()
        server.close()
        store.close()


def test_a_handler_bug_on_a_dialled_peer_is_logged_and_the_address_is_redialled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def buggy_handler(peer: Peer, msg: wire.Message) -> None:
        raise RuntimeError("planted handler bug")

    with caplog.at_level(logging.INFO):
        assert asyncio.run(_redialled(tmp_path, buggy_handler))
    assert _errors_with_traceback(caplog, RuntimeError), "the handler's traceback was not logged"


def test_a_connection_lost_with_an_os_error_is_a_quiet_disconnect_and_redialled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncio hands a reader (and so drain()) the socket's error: EHOSTUNREACH or ETIMEDOUT on a
    real network are OSErrors but not ConnectionErrors."""

    async def link_breaks(peer: Peer, msg: wire.Message) -> None:
        peer.reader.set_exception(OSError(errno.EHOSTUNREACH, "No route to host"))  # as connection_lost(exc)
        peer.send(wire.Pong(1))  # the writer's drain() meets it too

    with caplog.at_level(logging.INFO):
        assert asyncio.run(_redialled(tmp_path, link_breaks))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a lost link is not an error of ours"


def test_a_handler_bug_on_an_inbound_peer_drops_it_and_the_node_serves_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def buggy_ping(self: Node, peer: Peer, msg: wire.Ping) -> None:
        if msg.nonce == 666:
            raise RuntimeError("planted handler bug")
        peer.send(wire.Pong(msg.nonce))

    monkeypatch.setattr(Node, "_on_ping", buggy_ping)

    async def scenario(node: Node) -> None:
        bad = await RawPeer.connect(node.port)
        await bad.handshake()
        bad.send(wire.Ping(666))
        await bad.drain()
        await bad.wait_closed(DEADLINE_S)
        await bad.close()
        honest = await RawPeer.connect(node.port)
        await honest.handshake()
        await honest.sync_with_ping(DEADLINE_S)
        await honest.close()

    async def errors() -> list[dict[str, Any]]:
        loop_errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
        await with_node(tmp_path, scenario, deadline_s=None, ban_loopback=False)
        return loop_errors

    with caplog.at_level(logging.INFO):
        assert asyncio.run(errors()) == []
    assert _errors_with_traceback(caplog, RuntimeError), "the handler's traceback was not logged"


def test_stop_waits_for_inbound_peers_before_closing_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler that awaits (a sync batch yielding, signatures checked in threads) must not run
    on after stop() has closed the store."""
    handler_tasks: list[asyncio.Task[Any]] = []
    started = asyncio.Event()

    async def slow_ping(self: Node, peer: Peer, msg: wire.Ping) -> None:
        handler_tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        started.set()
        await asyncio.sleep(DEADLINE_S)  # ok: stands for a long await inside a handler
        self.chain.get_block(self.chain.tip.hash)

    monkeypatch.setattr(Node, "_on_ping", slow_ping)

    async def scenario() -> tuple[bool, int]:
        node = Node(NodeConfig(data_dir=tmp_path / "n", port=0, params=TEST_PARAMS, discover=False))
        await node.start()
        peer = await RawPeer.connect(node.port)
        try:
            await peer.handshake()
            peer.send(wire.Ping(1))
            await peer.drain()
            async with asyncio.timeout(DEADLINE_S):
                await started.wait()
        finally:
            await node.stop()
            await peer.close()
        return handler_tasks[0].done(), len(node.connmgr.peers)

    assert asyncio.run(scenario()) == (True, 0)


async def _chain_requests_before_pong(peer: RawPeer) -> int:
    """PING the node and count the GET_CHAINs it sends before the PONG (what the messages sent
    before the PING made it ask)."""
    asks = 0

    def count_until_pong(msg: wire.Message) -> bool:
        nonlocal asks
        asks += isinstance(msg, wire.GetChain)
        return isinstance(msg, wire.Pong)

    peer.send(wire.Ping(1))
    await peer.expect(count_until_pong, DEADLINE_S)
    return asks


def _chain_with_a_block_from_the_future() -> tuple[list[Block], Block, list[Block]]:
    """Two good blocks, one 3 h ahead of our clock, and two after it."""
    good = branch(TEST_PARAMS.genesis.header, 2)
    ahead_ms = int(time.time() * 1000) + limits.MAX_FUTURE_BLOCK_MS + 60 * 60 * 1000
    future = next_block(good[-1].header, salt=ahead_ms - good[-1].header.timestamp - 1000)
    return good, future, branch(future.header, 2)


async def _serve_chain(
    tmp_path: Path, height: int, batches: list[tuple[tuple[Block, ...], bool]]
) -> tuple[int, list[wire.GetChain], int]:
    """Play a node with more work that answers the node's GET_CHAINs with ``batches``: the node's
    height then, the requests answered, and the GET_CHAINs it sends after the last batch."""

    async def scenario(node: Node) -> tuple[int, list[wire.GetChain], int]:
        peer = await RawPeer.connect(node.port)
        try:
            await peer.handshake(port=1, height=height, work=2**200)
            requests = []
            for blocks, more in batches:
                requests.append(await peer.expect(wire.GetChain, DEADLINE_S))
                peer.send(wire.Chain(blocks, more))
            asks = await _chain_requests_before_pong(peer)
            return node.chain.height, requests, asks
        finally:
            await peer.close()

    return await with_node(tmp_path, scenario, deadline_s=None, ban_loopback=False)


def test_a_block_from_the_future_in_a_chain_is_not_asked_for_again_and_again(tmp_path: Path) -> None:
    good, future, _ = _chain_with_a_block_from_the_future()
    height, _, asks = asyncio.run(_serve_chain(tmp_path, future.height, [((*good, future), False)]))
    assert (height, asks) == (len(good), 0)


def test_a_block_from_the_future_mid_sync_does_not_cost_the_peer_its_connection(tmp_path: Path) -> None:
    """The next batch is asked for before a batch is checked; when that batch stops at a block
    from the future, the next one starts on blocks we skipped: not the peer's fault, and its
    "more" is not followed."""
    good, future, after = _chain_with_a_block_from_the_future()
    batches = [((*good, future, after[0]), True), (tuple(after[1:]), True)]
    height, requests, asks = asyncio.run(_serve_chain(tmp_path, after[-1].height, batches))
    assert requests[1].locator[0] == after[0].hash  # the pipelined request, from the first batch's end
    assert (height, asks) == (len(good), 0)  # and the peer is still served (it got the PONG)


def test_a_bad_block_in_a_pipelined_batch_is_refused_and_the_good_blocks_before_it_are_kept(tmp_path: Path) -> None:
    """The second batch is asked for before the first is checked, and the first is committed by
    the store's thread while the second is checked. A block of the second that breaks a state
    rule drops its sender; every block before it, of both batches, is on the best chain and, once
    the node has stopped, in its file; nothing from the bad block on is."""
    first = branch(TEST_PARAMS.genesis.header, 4)
    good = next_block(first[-1].header)
    bad = next_block(good.header, overpay=1)
    after = branch(bad.header, 2)

    async def scenario(node: Node) -> tuple[int, bool]:
        peer = await RawPeer.connect(node.port)
        try:
            await peer.handshake(port=1, height=after[-1].height, work=2**200)
            await peer.expect(wire.GetChain, DEADLINE_S)
            peer.send(wire.Chain(tuple(first), True))
            pipelined = await peer.expect(wire.GetChain, DEADLINE_S)
            assert pipelined.locator[0] == first[-1].hash
            peer.send(wire.Chain((good, bad, *after), True))
            await peer.wait_closed(DEADLINE_S)
            return node.chain.height, bad.hash in node.chain.invalid
        finally:
            await peer.close()

    assert asyncio.run(with_node(tmp_path, scenario, deadline_s=None, ban_loopback=False)) == (good.height, True)
    store = Store(tmp_path / NODE_DIR / DB_FILE)
    try:
        assert store.load_main() == [TEST_PARAMS.genesis.hash, *(b.hash for b in (*first, good))]
    finally:
        store.close()


def test_a_port_in_use_fails_with_the_os_error(tmp_path: Path) -> None:
    """The CLI turns OSError into "cannot listen on ...": stop() after a failed start() must not
    replace it with an error of its own."""

    async def scenario() -> None:
        busy = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = busy.sockets[0].getsockname()[1]
        try:
            config = NodeConfig(data_dir=tmp_path / "n", port=port, params=TEST_PARAMS, discover=False)
            await run_node(config, asyncio.Event())
        finally:
            busy.close()

    with pytest.raises(OSError):
        asyncio.run(scenario())


def test_a_client_query_fails_at_once_when_the_link_breaks_with_an_os_error(tmp_path: Path) -> None:
    """The client's reader must hand any socket error to the queries waiting on it, not only
    ConnectionErrors; and a query given up by its caller leaves nothing behind."""

    async def scenario(node: Node) -> int:
        client = await Client.connect("127.0.0.1", node.port)
        try:
            abandoned = asyncio.create_task(client.query(wire.GetStatus, timeout=3600))
            await asyncio.sleep(0)  # ok: one loop turn, so it sends and waits
            abandoned.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await abandoned
            left_behind = len(client._waiting)
            pending = asyncio.create_task(client.query(wire.GetStatus, timeout=3600))
            client.reader.set_exception(OSError(errno.EHOSTUNREACH, "No route to host"))
            async with asyncio.timeout(DEADLINE_S):
                with pytest.raises(NodeUnavailable):
                    await pending
            return left_behind
        finally:
            await client.close()

    assert asyncio.run(with_node(tmp_path, scenario, deadline_s=None, ban_loopback=False)) == 0


def test_a_request_in_flight_does_not_keep_the_node_from_stopping(tmp_path: Path) -> None:
    """SIGTERM while /nodes/resolve waits for a peer that never answers (10 s): aiohttp would wait
    60 s for it, the shutdown grace ran out first and Node.stop() never ran (store left open, the
    "stopped at height" line never logged)."""
    from aiohttp import ClientSession

    from p2pchain.http import start_http

    async def scenario() -> tuple[bool, bool]:
        stop = asyncio.Event()
        ready: asyncio.Future[Node] = asyncio.get_running_loop().create_future()
        http_port = free_port()
        config = NodeConfig(data_dir=tmp_path / "n", port=0, params=TEST_PARAMS, discover=False, http_port=http_port)
        running = asyncio.create_task(run_node(config, stop, on_ready=ready.set_result, start_http=start_http))
        node = await asyncio.wait_for(ready, DEADLINE_S)
        peer = await RawPeer.connect(node.port)
        session = ClientSession()
        try:
            await peer.handshake(port=1)  # a node, so resolve asks it; it never answers
            request = asyncio.create_task(session.get(f"http://127.0.0.1:{http_port}/nodes/resolve"))
            await peer.expect(wire.GetChain, DEADLINE_S)
            stop.set()
            async with asyncio.timeout(DEADLINE_S):
                await running
            request.cancel()
            with contextlib.suppress(BaseException):
                await request
        finally:
            await session.close()
            await peer.close()
        try:
            node.chain.store.db.execute("SELECT 1")
        except sqlite3.ProgrammingError:  # closed by Node.stop()
            return True, not node.connmgr.peers
        return False, not node.connmgr.peers

    assert asyncio.run(scenario()) == (True, True)


def test_a_broken_miner_fails_a_waiting_mine_request_instead_of_hanging_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --mine, GET /mine waits for the mining task's next block; a mining task that died (a
    worker process gone: MinerPool raises RuntimeError) left it waiting for ever, silently."""
    from p2pchain.miner import MinerPool

    async def dead_worker(self: MinerPool, header: Any) -> None:
        raise RuntimeError("miner worker 0 exited with code -9")

    monkeypatch.setattr(MinerPool, "__init__", lambda self, procs=None: None)
    monkeypatch.setattr(MinerPool, "solve", dead_worker)
    monkeypatch.setattr(MinerPool, "close", lambda self: None)

    async def scenario(node: Node) -> tuple[bool, bool]:
        failed_now = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DEADLINE_S):
                try:
                    await node.mine_one()  # while the task dies, or after
                except RuntimeError:
                    failed_now = True
        try:
            async with asyncio.timeout(DEADLINE_S):
                await node.mine_one()
            again = False
        except RuntimeError:
            again = True
        return failed_now, again

    with caplog.at_level(logging.INFO):
        assert asyncio.run(with_node(tmp_path, scenario, deadline_s=None, ban_loopback=False, mine=True)) == (
            True,
            True,
        )
    assert _errors_with_traceback(caplog, RuntimeError), "the mining task's end was not logged"


def test_a_silent_peer_is_pinged_after_the_ping_interval_and_dropped_without_its_pong(tmp_path: Path) -> None:
    """The watchdog sleeps until its next deadline (no fixed tick): a peer that talks is not
    pinged, a silent one gets a PING once ``ping_interval`` has passed since its last message,
    and is dropped ``pong_timeout`` after an unanswered PING; one that answers stays (its PONG
    is due within ``pong_timeout``: a second, so that a loaded machine's stall of this process
    does not make it late)."""
    tunables = Tunables(ping_interval=0.4, pong_timeout=1.0)

    async def scenario(node: Node) -> tuple[float, float, bool]:
        answering = await RawPeer.connect(node.port)
        await answering.handshake()
        mute = await RawPeer.connect(node.port)
        mute.auto_pong = False
        await mute.handshake()
        spoke = time.monotonic()
        await mute.expect(wire.Ping, DEADLINE_S)
        pinged_after = time.monotonic() - spoke
        await mute.wait_closed(DEADLINE_S)
        dropped_after = time.monotonic() - spoke
        await answering.expect(wire.Ping, DEADLINE_S)  # answered by its reader: it stays
        await answering.sync_with_ping(DEADLINE_S)
        still_open = not answering.closed.is_set()
        await mute.close()
        await answering.close()
        return pinged_after, dropped_after, still_open

    run = with_node(tmp_path, scenario, deadline_s=None, ban_loopback=False, tunables=tunables)
    pinged_after, dropped_after, still_open = asyncio.run(run)
    assert pinged_after >= 0.4 * 0.9, f"pinged {pinged_after:.2f} s after its last message, before the interval"
    assert dropped_after >= 1.4 * 0.9, f"dropped {dropped_after:.2f} s after its last message, before the PONG was due"
    assert still_open, "the peer that answered its PINGs was dropped"


def test_a_peer_whose_corked_write_fails_leaves_the_other_peers_of_that_turn_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One callback at the end of a loop turn writes every peer's corked frames: a peer whose
    write raises is logged, and the peers after it in that turn are still written (else their
    frames would stay corked for good: a peer with corked frames does not register again)."""

    class Corked:
        def __init__(self, fails: bool) -> None:
            self.fails = fails
            self.written = False

        def _uncork(self) -> None:
            if self.fails:
                raise RuntimeError("transport gone")
            self.written = True

    loop = asyncio.new_event_loop()
    try:
        first, second = Corked(True), Corked(False)
        peer_module._corked_peers[loop] = [first, second]  # type: ignore[list-item]
        with caplog.at_level(logging.ERROR, logger="p2pchain.peer"):
            peer_module._uncork_all(loop)
        assert second.written
        assert loop not in peer_module._corked_peers
        assert "transport gone" in caplog.text
    finally:
        loop.close()
