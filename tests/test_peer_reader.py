"""peer reading: FrameReader and the handling of messages as they arrive (Peer._dispatch).

- FrameReader gives whole frames however the stream was cut, refuses a bad length before its
  payload is waited for, and ends at EOF or at the connection's error, as wire.read_frame does.
- A Peer handles the messages that arrive while its reader task waits in the transport's
  callback; a handler that waits there (a sleep, an executor, a timeout that expires) is
  finished by the reader task, and the messages after it wait for it: order is kept, and the
  handler sees the reader task as its task, as it would if the task had read the message.
- While a handler waits, a sender that keeps sending is not read past the buffer bound
  (PEER_READ_BUFFER_BYTES: TCP pushes back), and nothing it sent is lost.
- A handler's Misbehaving, met in the callback, drops and bans the peer as before; so does a
  second HELLO.

In-process: a Peer served on a loopback socket (peer.start_server), a raw asyncio stream as
the other side.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable

import pytest
from harness import until
from node_helpers import TEST_PARAMS

from p2pchain import limits, wire
from p2pchain.errors import ProtocolError
from p2pchain.peer import FrameReader, Misbehaving, Peer, Tunables, start_server

DEADLINE_S = 20.0  # generous: the machine is shared
STREAM = b"".join(wire.Ping(i).encode() for i in range(50)) + wire.Pong(7).encode()


def _hello() -> wire.Hello:
    return wire.Hello(2, TEST_PARAMS.network_id, os.urandom(16), 0, 0, b"\0" * 32, 0, "test")


# --- FrameReader, without a socket -----------------------------------------------------------
def _frames(cuts: list[bytes], eof: bool) -> list[bytes | type[BaseException]]:
    """Feed ``cuts`` to a FrameReader one by one, taking every whole frame after each."""

    async def scenario() -> list[bytes | type[BaseException]]:
        reader = FrameReader()
        out: list[bytes | type[BaseException]] = []
        try:
            for piece in cuts:
                reader.feed_data(piece)
                while (frame := reader.frame()) is not None:
                    out.append(frame)
            if eof:
                reader.feed_eof()
                reader.frame()
        except (ProtocolError, asyncio.IncompleteReadError) as e:
            out.append(type(e))
        return out

    return asyncio.run(scenario())


def test_frame_reader_gives_whole_frames_however_the_stream_is_cut() -> None:
    whole = wire.FrameDecoder().feed(STREAM)
    rng = random.Random(5)
    for _ in range(20):
        offsets = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 40)))
        cuts = [STREAM[a:b] for a, b in zip([0, *offsets], [*offsets, len(STREAM)], strict=True)]
        assert _frames(cuts, eof=True) == [*whole, asyncio.IncompleteReadError]  # then the end


def test_frame_reader_refuses_a_bad_length_before_its_payload_and_a_frame_cut_by_eof() -> None:
    too_long = (limits.MAX_FRAME_BYTES + 1).to_bytes(4, "big")
    assert _frames([wire.Ping(1).encode(), too_long], eof=False) == [wire.Ping(1).payload(), ProtocolError]
    assert _frames([b"\0\0\0\0"], eof=False) == [ProtocolError]
    assert _frames([wire.Ping(1).encode()[:-1]], eof=True) == [asyncio.IncompleteReadError]


def test_frame_reader_raises_the_connections_error_first() -> None:
    async def scenario() -> None:
        reader = FrameReader()
        reader.feed_data(wire.Ping(1).encode())
        reader.set_exception(ConnectionResetError("reset"))
        with pytest.raises(ConnectionResetError):
            reader.frame()

    asyncio.run(scenario())


# --- a Peer on a socket ------------------------------------------------------------------------
Handle = Callable[[Peer, wire.Message], Awaitable[None]]


async def _serve_one(handle: Handle, tunables: Tunables | None = None) -> tuple[list[Peer], asyncio.Server]:
    """A server whose connections are Peers running ``handle``; the list fills as they come."""
    peers: list[Peer] = []

    async def accept(reader: FrameReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer, inbound=True, tunables=tunables or Tunables())
        peers.append(peer)
        await peer.run(_hello(), lambda p: None, handle)  # type: ignore[arg-type]

    return peers, await start_server(accept, "127.0.0.1", 0)


async def _dial(server: asyncio.Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_hello().encode())
    msg = wire.decode_message(await wire.read_frame(reader))
    assert isinstance(msg, wire.Hello)
    return reader, writer


def test_messages_are_handled_in_order_when_handlers_wait_and_time_out() -> None:
    """Pings sent one at a time (each arrives while the reader task waits) and in bursts; some
    handlers wait (a sleep, the default executor, an expiring asyncio.timeout) and must be
    finished, in order, by the reader task before the next message is handled."""
    log: list[tuple[str, int]] = []
    tasks: set[asyncio.Task[object] | None] = set()

    async def handle(peer: Peer, msg: wire.Message) -> None:
        assert isinstance(msg, wire.Ping)
        tasks.add(asyncio.current_task())
        log.append(("start", msg.nonce))
        if msg.nonce % 5 == 1:
            await asyncio.sleep(0.002)
        elif msg.nonce % 5 == 2:
            await asyncio.get_running_loop().run_in_executor(None, sum, [1, 2])
        elif msg.nonce % 5 == 3:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.001):
                    await asyncio.sleep(5)
        elif msg.nonce % 5 == 4:
            async with asyncio.timeout(5):  # does not expire, never waits
                pass
        log.append(("end", msg.nonce))
        peer.send(wire.Pong(msg.nonce))

    async def scenario() -> None:
        peers, server = await _serve_one(handle)
        async with server:
            reader, writer = await _dial(server)
            sent = 0
            for burst in (1, 1, 3, 1, 7, 1, 1, 20, 1, 1, 4):
                for _ in range(burst):
                    writer.write(wire.Ping(sent).encode())
                    sent += 1
                await writer.drain()
                for _ in range(burst):  # the answers, in order
                    pong = wire.decode_message(await asyncio.wait_for(wire.read_frame(reader), DEADLINE_S))
                    assert isinstance(pong, wire.Pong)
            assert log == [(edge, n) for n in range(sent) for edge in ("start", "end")]
            assert len(tasks) == 1 and None not in tasks  # one task: the peer's reader
            writer.close()
            await until(lambda: peers[0].closed.is_set(), "the peer to see the end", DEADLINE_S)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_sender_is_not_read_past_the_buffer_bound_while_a_handler_waits() -> None:
    """The first PING's handler waits; meanwhile the sender writes far more than the bound.
    The peer's unhandled bytes stay within 2 x PEER_READ_BUFFER_BYTES plus one socket read
    (asyncio reads at most 256 KiB at a time); once the handler is released, every PING is
    handled, in order."""
    release = asyncio.Event()
    handled: list[int] = []
    most_buffered = 0

    async def handle(peer: Peer, msg: wire.Message) -> None:
        nonlocal most_buffered
        assert isinstance(msg, wire.Ping)
        if msg.nonce == 0:
            await release.wait()
        most_buffered = max(most_buffered, peer.reader.buffered)
        handled.append(msg.nonce)

    count = 150_000  # about 2.4 MB of PING frames
    fast = Tunables(msg_rate=1e9, msg_burst=10**9)  # the rate limit is not what is tested here

    async def scenario() -> None:
        peers, server = await _serve_one(handle, fast)
        async with server:
            _, writer = await _dial(server)
            writer.write(b"".join(wire.Ping(n).encode() for n in range(count)))
            await until(lambda: handled == [] and peers and peers[0].reader.buffered > 0, "bytes to arrive")
            await asyncio.sleep(0.3)  # ok: the sender's bytes keep coming meanwhile; the peer must not take them all
            waiting = peers[0].reader.buffered
            assert waiting <= 2 * limits.PEER_READ_BUFFER_BYTES + 256 * 1024
            release.set()
            await until(lambda: len(handled) == count, "every PING to be handled", DEADLINE_S)
            assert handled == list(range(count))
            assert most_buffered <= 2 * limits.PEER_READ_BUFFER_BYTES + 256 * 1024
            writer.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


@pytest.mark.parametrize("spoil", ["misbehaving", "second-hello"])
def test_misbehaviour_met_as_messages_arrive_drops_and_bans_the_peer(spoil: str) -> None:
    handled: list[int] = []

    async def handle(peer: Peer, msg: wire.Message) -> None:
        assert isinstance(msg, wire.Ping)
        if msg.nonce == 3:
            raise Misbehaving("planted")
        handled.append(msg.nonce)

    async def scenario() -> None:
        peers, server = await _serve_one(handle)
        async with server:
            _, writer = await _dial(server)
            for n in range(3):  # handled one at a time, as they arrive
                writer.write(wire.Ping(n).encode())
                await until(lambda: len(handled) == n + 1, "the PING to be handled", DEADLINE_S)  # noqa: B023
            writer.write(wire.Ping(3).encode() if spoil == "misbehaving" else _hello().encode())
            writer.write(wire.Ping(4).encode())
            await until(lambda: peers[0].closed.is_set(), "the peer to be dropped", DEADLINE_S)
            assert handled == [0, 1, 2]
            assert peers[0].ban_reason == ("planted" if spoil == "misbehaving" else "sent a second HELLO")
            writer.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_handler_waiting_when_the_peers_task_is_cancelled_sees_the_cancellation() -> None:
    """As when the node stops: the handler of a message that arrived while the task waited, and
    that waits itself, gets CancelledError (its cleanup runs), and the peer's task ends."""
    seen: list[str] = []
    forever = asyncio.Event()

    async def handle(peer: Peer, msg: wire.Message) -> None:
        seen.append("started")
        try:
            await forever.wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def scenario() -> None:
        tasks: list[asyncio.Task[None]] = []

        async def run(peer: Peer, msg: wire.Message) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.append(task)  # type: ignore[arg-type]
            await handle(peer, msg)

        peers, server = await _serve_one(run)
        async with server:
            _, writer = await _dial(server)
            writer.write(wire.Ping(1).encode())
            await until(lambda: seen == ["started"], "the handler to start", DEADLINE_S)
            await asyncio.sleep(0.05)  # ok: the handler is now waiting in the peer's task
            tasks[0].cancel()
            await until(lambda: tasks[0].done(), "the peer's task to end", DEADLINE_S)
            assert seen == ["started", "cancelled"]
            assert peers[0].closed.is_set()
            writer.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
