"""One connection to another node: handshake, a reader task, a writer task with a bounded
queue, liveness pings and flow control. What the messages mean is the node's business: the
peer hands each decoded message to ``handler`` and sends what it is given."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import SupportsIndex

from p2pchain import limits, wire
from p2pchain.errors import ProtocolError, clip
from p2pchain.metrics import INVALID, Traffic
from p2pchain.record import record

log = logging.getLogger(__name__)


# Peers with frames corked during this turn of the loop, per loop: one callback at the end of the
# turn writes them all (_uncork_all), not one callback per peer (a relayed block leaves for 3-24 peers)
_corked_peers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Peer]] = weakref.WeakKeyDictionary()


def _uncork_all(loop: asyncio.AbstractEventLoop) -> None:
    for peer in _corked_peers.pop(loop, ()):
        try:
            peer._uncork()
        except Exception:  # one peer's failure must not leave the peers after it corked for good
            log.exception("writing to %r failed", peer)


# In the send queue: frames _uncork wrote itself, whose rest the socket has not taken yet; the
# writer only drains them (under its timeout), so flushed() still means "drained".
_DRAIN: tuple[str, bytes] = ("", b"")


@record
class RunHandler:
    """Takes a run of consecutive messages of ``types`` read from one peer, in order, in one
    call (the node's transactions: one hand-off to the signature threads, not one per message).
    ``handle`` stops at the first message after which the peer is closed."""

    types: tuple[type[wire.Message], ...]
    handle: Callable[[Peer, list[wire.Message]], Awaitable[None]]


STREAM_LIMIT = 2**16  # asyncio's buffer limit of a peer's stream: reading pauses at twice this unread


class FrameReader(asyncio.StreamReader):
    """A peer's incoming stream that can drop whole frames as they arrive from the socket, before
    they are buffered: ``sieve`` (set by Peer.run after the handshake) sees the payload of each
    frame that lies whole in one chunk read from the socket and returns True to drop it. A dropped
    frame wakes no reader task and is never read (a copy of a compact block the node has, two of
    every three CMPCT_BLOCKs a node receives with three high-bandwidth peers: through the reader
    task, each cost about as much again as its arrival from the socket). The frame boundaries are
    followed from the stream's first byte, so what the sieve sees is always a whole payload; what
    it lets through reaches the reader as sent, in order."""

    def __init__(self, limit: int = STREAM_LIMIT, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(limit=limit, loop=loop)
        self.sieve: Callable[[bytes], bool] | None = None
        # False once the handshake shows nothing will be sieved (a client, a peer without compact
        # relay): chunks then go straight to the buffer, no frame walked
        self.walk = True
        self._left = 0  # bytes of the current frame still to come (0: the next byte starts a frame)
        self._prefix = b""  # the bytes of a length prefix split between two chunks

    def feed_data(self, chunk: Iterable[SupportsIndex]) -> None:
        if not self.walk:
            super().feed_data(chunk)
            return
        data = chunk if isinstance(chunk, bytes) else bytes(chunk)  # (the transport's recv: bytes)
        sieve = self.sieve
        left, prefix = self._left, self._prefix
        pos, end = 0, len(data)
        kept: list[bytes] | None = None
        start = 0  # the first byte not yet kept or dropped
        while pos < end:
            if left:
                step = min(left, end - pos)
                pos += step
                left -= step
            elif prefix or end - pos < _FRAME_HEADER:
                take = _FRAME_HEADER - len(prefix)
                prefix += data[pos : pos + take]
                pos += take
                if len(prefix) == _FRAME_HEADER:
                    left, prefix = int.from_bytes(prefix, "big"), b""
            else:
                n = int.from_bytes(data[pos : pos + _FRAME_HEADER], "big")
                stop = pos + _FRAME_HEADER + n
                if sieve is not None and n and stop <= end and sieve(data[pos + _FRAME_HEADER : stop]):
                    if kept is None:
                        kept = []
                    kept.append(data[start:pos])
                    start = pos = stop
                else:
                    pos += _FRAME_HEADER
                    left = n
        self._left, self._prefix = left, prefix
        if kept is None:
            super().feed_data(data)
            return
        kept.append(data[start:])
        rest = b"".join(kept)
        if rest:
            super().feed_data(rest)


_FRAME_HEADER = limits.FRAME_HEADER_BYTES


async def open_connection(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio.open_connection with a FrameReader as the stream read."""
    loop = asyncio.get_running_loop()
    reader = FrameReader(loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_connection(lambda: protocol, host, port)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def start_server(
    accept: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]], host: str, port: int
) -> asyncio.Server:
    """asyncio.start_server with a FrameReader as each connection's stream read."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: asyncio.StreamReaderProtocol(FrameReader(loop=loop), accept, loop=loop), host, port
    )


class Misbehaving(Exception):
    """The peer broke the protocol or sent consensus-invalid data: drop it, maybe ban it."""

    def __init__(self, reason: str, *, ban: bool = True) -> None:
        reason = clip(reason)
        super().__init__(reason)
        self.reason = reason
        self.ban = ban


@record
class Tunables:
    """Timings a test may shorten (aiorpcX style): seconds."""

    handshake_timeout: float = limits.HANDSHAKE_TIMEOUT_S
    ping_interval: float = limits.PING_INTERVAL_S
    pong_timeout: float = limits.PONG_TIMEOUT_S
    drain_timeout: float = limits.SEND_DRAIN_TIMEOUT_S
    msg_rate: float = limits.PEER_MSG_RATE
    msg_burst: int = limits.PEER_MSG_BURST


class Peer:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        inbound: bool,
        tunables: Tunables,
        traffic: Traffic | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.inbound = inbound
        self.tunables = tunables
        host, port = writer.get_extra_info("peername")[:2]
        self.host: str = host
        self.port: int = port  # the remote socket's port (for inbound: ephemeral)
        self.hello: wire.Hello | None = None
        self.queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue(limits.SEND_QUEUE_MAX)  # (type, frame)
        self.queued_bytes = 0  # bytes of the frames in ``queue``
        self.traffic = traffic if traffic is not None else Traffic()  # the node's, shared by its peers
        self.bytes_received = 0  # frame bytes, length prefix included
        self.bytes_sent = 0
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.ban_reason: str | None = None  # set when the peer misbehaved in a way that earns a ban
        self.asked_chain = 0  # GET_CHAIN requests sent and not yet answered
        self.best_height = 0  # from HELLO, raised by what it announces, lowered by a sync round that brings nothing
        self.fruitless = 0  # sync rounds in a row that brought no block we lacked while it claimed more
        self.dialed: str | None = None  # the address we dialled (outbound only)
        self.useful = False  # it gave us a block or transaction we took: protected from eviction
        self.connected_at = time.monotonic()
        self._unflushed = 0  # frames queued or written but not yet drained
        self._corked: list[tuple[str, bytes]] = []  # sent during this turn of the loop, for _uncork
        self._flushed = asyncio.Event()
        self._flushed.set()
        self._serve_tokens = float(limits.SERVE_BURST_BYTES)  # bytes of blocks it may still be served now
        self._serve_refill = self.connected_at
        self._addr_tokens = float(limits.ADDR_BURST)  # addresses it may still send (PEERS), refilled slowly
        self._addr_refill = self.connected_at
        self._ping_nonce: int | None = None
        self._ping_sent = 0.0
        self.last_recv = time.monotonic()
        self._tokens = float(tunables.msg_burst)
        self._refill = time.monotonic()
        self._turn_start = self._refill  # when this peer's handler last let the others run

    def __repr__(self) -> str:
        return f"peer {self.addr} ({'in' if self.inbound else 'out'})"

    @property
    def addr(self) -> str:
        """The peer's listening address when known (host:port), else the socket's."""
        port = self.hello.port if self.hello and self.hello.port else self.port
        return f"{self.host}:{port}" if ":" not in self.host else f"[{self.host}]:{port}"

    @property
    def listening(self) -> bool:
        """Whether the peer named a port it listens on (HELLO port 0: a client, a miner or wallet)."""
        return self.hello is not None and self.hello.port != 0

    @property
    def listen_addr(self) -> str | None:
        if self.hello is None or not self.listening:
            return None
        return f"{self.host}:{self.hello.port}" if ":" not in self.host else f"[{self.host}]:{self.hello.port}"

    # --- sending ----------------------------------------------------------------------------
    def send(self, msg: wire.Message) -> None:
        try:
            frame = msg.encode()
        except ProtocolError as e:  # our own message breaks the limits: a bug of this node, not the peer's fault
            log.error("%r: could not encode our %s: %s", self, msg.TYPE, e)
            self.close(f"internal error: could not encode our {msg.TYPE}")
            return
        self.send_frame(frame, msg.TYPE)

    def send_frame(self, frame: bytes, kind: str) -> None:
        """Send a frame of message type ``kind`` (for the traffic counts): when the writer is
        idle, held until the end of this turn of the loop and written with the others sent in it
        (``_uncork``); else through the queue and the writer task. A peer whose queue is full has
        stayed behind and is dropped."""
        if self.closed.is_set():
            return
        if self.queued_bytes + len(frame) > limits.SEND_QUEUE_MAX_BYTES:
            self.close(f"send queue full ({limits.SEND_QUEUE_MAX_BYTES} bytes): peer is not reading")
            return
        if not self._unflushed:  # the writer is idle: written by _uncork at the end of this turn
            if not self._corked:
                loop = asyncio.get_running_loop()
                corked = _corked_peers.get(loop)
                if corked is None:
                    corked = _corked_peers[loop] = []
                    loop.call_soon(_uncork_all, loop)
                corked.append(self)
            self._corked.append((kind, frame))
            self.queued_bytes += len(frame)
            self._flushed.clear()
            return
        try:
            self.queue.put_nowait((kind, frame))
        except asyncio.QueueFull:
            self.close(f"send queue full ({limits.SEND_QUEUE_MAX} frames): peer is not reading")
            return
        self.queued_bytes += len(frame)
        self._unflushed += 1
        self._flushed.clear()

    def _uncork(self) -> None:
        """Write the frames sent during the last turn of the loop straight to the socket, joined
        (at most SEND_WRITE_MAX_BYTES a write), without waking the writer task: a relayed block or
        an answer costs no task switch and no future (at 200 nodes of 24 peers in one process
        those were a fifth of a block's relay). What the socket does not take at once is left to
        the writer to drain under its timeout, as for a queued frame."""
        corked, self._corked = self._corked, []
        if not corked or self.closed.is_set() or self.writer.transport.is_closing():  # lost: the reader ends it
            return
        chunk: list[bytes] = []
        joined = 0
        for kind, frame in corked:
            n = len(frame)
            self._count_sent(kind, n)
            chunk.append(frame)
            joined += n
            if joined >= limits.SEND_WRITE_MAX_BYTES:
                self.writer.write(b"".join(chunk))
                chunk, joined = [], 0
        if chunk:
            self.writer.write(chunk[0] if len(chunk) == 1 else b"".join(chunk))
        if self.writer.transport.get_write_buffer_size():
            self.queue.put_nowait(_DRAIN)  # the queue is empty: nothing is queued while frames are corked
            self._unflushed += 1
        else:
            self._flushed.set()

    def flush(self) -> None:
        """Write now what ``send`` holds for the end of this turn of the loop: for a request that
        must be on its way before a long stretch of work on the loop (a sync's GET_CHAIN, sent
        as the CHAIN before it is checked: held, it left only after the check's first run)."""
        if self._corked:
            self._uncork()  # (the end of the turn then finds nothing held)

    def _count_sent(self, kind: str, n: int) -> None:
        """A frame of ``n`` bytes leaves the queue for the socket (the writer's or _uncork's write)."""
        self.queued_bytes -= n
        self.bytes_sent += n
        self.traffic.count_sent(kind, n)

    async def flushed(self) -> None:
        """Until every frame queued so far has been written and drained, or the peer closed."""
        await self._flushed.wait()

    async def serve_budget(self) -> None:
        """Wait (not reading this peer meanwhile) until its budget of bytes served is positive:
        SERVE_BURST_BYTES, refilled at SERVE_BYTES_PER_S."""
        now = time.monotonic()
        refill = (now - self._serve_refill) * limits.SERVE_BYTES_PER_S
        self._serve_tokens = min(limits.SERVE_BURST_BYTES, self._serve_tokens + refill)
        self._serve_refill = now
        if self._serve_tokens < 0:
            await asyncio.sleep(-self._serve_tokens / limits.SERVE_BYTES_PER_S)

    def spend_serve_budget(self, n: int) -> None:
        self._serve_tokens -= n

    async def _writer(self) -> None:
        """Write what is queued, every frame queued meanwhile in one write (one system call for
        a burst of answers, not one each), then wait for the socket to drain."""
        queue = self.queue
        while not self.closed.is_set():
            item = await queue.get()
            frames: list[bytes] = []
            joined = 0
            while item is not None:
                kind, frame = item
                if item is _DRAIN:  # a frame already written by send_frame: only its drain is left
                    frames.append(b"")
                    if queue.empty():
                        break
                    item = queue.get_nowait()
                    continue
                n = len(frame)
                self._count_sent(kind, n)
                frames.append(frame)
                joined += n
                if queue.empty() or joined >= limits.SEND_WRITE_MAX_BYTES:
                    break
                item = queue.get_nowait()
            if frames:
                data = frames[0] if len(frames) == 1 else b"".join(frames)
                if data:
                    self.writer.write(data)
                if self.writer.transport.get_write_buffer_size() == 0:  # the socket took it all:
                    await self.writer.drain()  # nothing to wait for (a lost link still raises here), no timer
                else:
                    try:
                        async with asyncio.timeout(self.tunables.drain_timeout):
                            await self.writer.drain()
                    except TimeoutError:
                        self.close(f"could not send for {self.tunables.drain_timeout:.0f} s: peer is not reading")
                        return
                self._unflushed -= len(frames)
                if self._unflushed == 0:
                    self._flushed.set()
            if item is None:
                return

    # --- receiving --------------------------------------------------------------------------
    async def read_message(self) -> wire.Message:
        return self._decode(await self._read_payload())

    async def _read_payload(self) -> bytes:
        payload = await wire.read_frame(self.reader)
        self.last_recv = time.monotonic()
        self.bytes_received += len(payload) + limits.FRAME_HEADER_BYTES
        return payload

    async def _read_payloads(self, decoder: wire.FrameDecoder) -> list[bytes]:
        """The payloads of every frame complete in what the socket has delivered, at least one
        (waiting for it): a burst of small messages is read in a few calls, not two awaited
        reads a frame. Each length is checked as soon as its 4 bytes are in (FrameDecoder)."""
        if decoder.pending:  # a bad length behind the frames handled last: the peer is dropped now
            decoder.feed(b"")
        while True:
            data = await self.reader.read(limits.READ_CHUNK_BYTES)
            if not data:
                raise asyncio.IncompleteReadError(b"", None)
            payloads = decoder.feed(data)
            if payloads:
                self.last_recv = time.monotonic()
                for payload in payloads:
                    self.bytes_received += len(payload) + limits.FRAME_HEADER_BYTES
                return payloads

    def _decode(self, payload: bytes) -> wire.Message:
        n = len(payload) + limits.FRAME_HEADER_BYTES
        try:
            msg = wire.decode_message(payload)
        except ProtocolError:
            self.traffic.count_received(INVALID, n)
            raise
        self.traffic.count_received(msg.TYPE, n)
        return msg

    def _sieve(self, unneeded: Callable[[Peer, bytes], str | None], payload: bytes) -> bool:
        """FrameReader's sieve: drop a payload the node has no use for (``unneeded``) as it
        arrives, counted as if read. Within the message rate, as every frame: a peer past it
        gets its frames read and throttled (_throttle), whatever they hold."""
        if self.closed.is_set():
            return False
        now = time.monotonic()
        tokens = min(self.tunables.msg_burst, self._tokens + (now - self._refill) * self.tunables.msg_rate)
        if tokens < 1:
            return False
        kind = unneeded(self, payload)
        if kind is None:
            return False
        self._tokens, self._refill = tokens - 1, now
        self.last_recv = now
        n = len(payload) + limits.FRAME_HEADER_BYTES
        self.bytes_received += n
        self.traffic.count_received(kind, n)
        return True

    async def _throttle(self, n: int = 1, more: bool = False) -> None:
        """Token bucket: a peer that sends faster than msg_rate is slowed down (we stop reading,
        TCP pushes back), never served ahead of the others. ``n`` messages were just handled;
        ``more``: more of its messages are read and not yet handled."""
        now = time.monotonic()
        self._tokens = min(self.tunables.msg_burst, self._tokens + (now - self._refill) * self.tunables.msg_rate)
        self._refill = now
        self._tokens -= n
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self.tunables.msg_rate)
        elif now - self._turn_start < limits.PEER_TURN_S:
            return
        elif not more and not getattr(self.reader, "_buffer", True):  # nothing more buffered: the next
            self._turn_start = now  # read waits, and the others run meanwhile (a yield here was one
            return  # more task switch per message: most peers send one message at a time)
        else:  # within its rate too: its next message may be buffered already, and another peer's
            await asyncio.sleep(0)  # (a block to relay) must not wait behind a whole batch of them
        self._turn_start = time.monotonic()

    async def _watchdog(self) -> None:
        """PING after ``ping_interval`` of silence; drop the peer if the PONG does not come
        within ``pong_timeout``. It sleeps until the next such deadline, not on a fixed tick: a
        node with hundreds of peers that talk wakes about once per ping interval per peer,
        not once a second (at 200 nodes of 24 peers in one process those ticks were 4,800 timer
        wake-ups a second, in the way of every message)."""
        t = self.tunables
        while True:
            now = time.monotonic()
            if self._ping_nonce is not None:
                due = self._ping_sent + t.pong_timeout
                if now >= due:
                    self.close(f"no PONG within {t.pong_timeout:g} s")
                    return
            else:
                due = self.last_recv + t.ping_interval
                if now >= due:
                    self._ping_nonce = random.getrandbits(64)
                    self._ping_sent = now
                    self.send(wire.Ping(self._ping_nonce))
                    due = now + t.pong_timeout
            await asyncio.sleep(due - now)  # ok: a clock is what it watches (silence, a PONG overdue)

    def take_addr_tokens(self, wanted: int) -> int:
        """How many of ``wanted`` addresses in a PEERS to take: the first ADDR_BURST (the answer
        to our GET_PEERS), then ADDR_RATE_PER_S (Bitcoin Core's addr rate limit)."""
        now = time.monotonic()
        refill = (now - self._addr_refill) * limits.ADDR_RATE_PER_S
        self._addr_tokens = min(limits.ADDR_BURST, self._addr_tokens + refill)
        self._addr_refill = now
        taken = min(wanted, int(self._addr_tokens))
        self._addr_tokens -= taken
        return taken

    def got_pong(self, nonce: int) -> None:
        if nonce == self._ping_nonce:
            self._ping_nonce = None

    # --- life -------------------------------------------------------------------------------
    async def run(
        self,
        our_hello: wire.Hello,
        on_hello: Callable[[Peer], None],
        handle: Callable[[Peer, wire.Message], Awaitable[None]],
        unneeded: Callable[[Peer, bytes], str | None] | None = None,
        handle_run: RunHandler | None = None,
        sieves: Callable[[Peer], bool] | None = None,
    ) -> None:
        """Handshake, then serve until closed; never raises but CancelledError. ``on_hello`` and
        ``handle`` raise Misbehaving to drop the peer (``ban_reason`` tells the caller to ban).
        ``unneeded`` sees each payload after the handshake before it is decoded: the message
        type of one the node has no use for (counted under that type, neither decoded nor
        handled: a compact block of a block it has), else None. ``handle_run`` takes runs of
        consecutive messages of its ``types`` in one call (``_serve``). ``sieves``, asked once
        after the handshake: whether ``unneeded`` may drop any of this peer's frames (it speaks a
        feature whose copies are dropped); only then does its FrameReader look at them as they
        arrive (``_sieve``), else it stops following the frames and ``unneeded`` is not asked
        about any of them (a client's SUBMIT_TX: a call and two lookups a frame saved)."""
        writer_task = asyncio.create_task(self._writer())
        watchdog: asyncio.Task[None] | None = None
        try:
            self.send(our_hello)
            try:
                async with asyncio.timeout(self.tunables.handshake_timeout):
                    first = await self.read_message()
            except TimeoutError:
                raise Misbehaving(f"no HELLO within {self.tunables.handshake_timeout:g} s", ban=False) from None
            if not isinstance(first, wire.Hello):
                raise Misbehaving(f"sent {first.TYPE} before HELLO")
            self.hello = first
            self.best_height = first.height
            on_hello(self)
            if sieves is not None and not sieves(self):
                unneeded = None  # nothing of this peer's can be dropped: no frame is looked at (_serve's too)
            if isinstance(self.reader, FrameReader):
                if unneeded is not None and sieves is not None:
                    self.reader.sieve = partial(self._sieve, unneeded)
                else:  # nothing of this peer's will be sieved: its chunks need no walk
                    self.reader.walk = False
            watchdog = asyncio.create_task(self._watchdog())
            decoder = wire.FrameDecoder()
            while not self.closed.is_set():
                await self._serve(await self._read_payloads(decoder), handle, unneeded, handle_run)
        except (asyncio.IncompleteReadError, OSError) as e:  # OSError: also EHOSTUNREACH, ETIMEDOUT
            self.close(f"connection lost ({type(e).__name__})", quiet=True)
        except ProtocolError as e:
            self.misbehaved(Misbehaving(f"protocol error: {e}"))
        except Misbehaving as e:
            self.misbehaved(e)
        except Exception as e:  # a bug of ours, not the peer's: drop it (no ban), keep the node and the redialling
            log.exception("%r: internal error while serving it", self)
            self.close(f"internal error ({type(e).__name__})")
        finally:
            if watchdog is not None:
                watchdog.cancel()
            self.close("closed", quiet=True)  # also wakes the writer to end
            try:
                async with asyncio.timeout(limits.CLOSE_FLUSH_S):
                    await writer_task
            except OSError:  # TimeoutError too; a broken link's error (drain() raises the reader's)
                writer_task.cancel()
            if self.writer.transport.get_write_buffer_size():  # not taken in time: drop it
                self.writer.transport.abort()
            else:
                self.writer.close()
            # A cancelled task's exception holds a traceback, whose frames hold this peer: drop our
            # references so that the queue and buffers are freed now, not at a later GC pass. The
            # sieve (a bound method of this peer, held by its reader) is such a cycle too.
            del writer_task, watchdog
            if isinstance(self.reader, FrameReader):
                self.reader.sieve = None

    async def _serve(
        self,
        payloads: list[bytes],
        handle: Callable[[Peer, wire.Message], Awaitable[None]],
        unneeded: Callable[[Peer, bytes], str | None] | None,
        handle_run: RunHandler | None,
    ) -> None:
        """Handle ``payloads`` in order, as if each were read and handled alone: consecutive
        messages of ``handle_run``'s types (transactions) go to it in one call (a run); a
        message that ends the run, or one that cannot be decoded, is dealt with after the
        run is handled, and nothing is handled once the peer is closed (a frame after the
        one that got it dropped is never looked at, as when frames were read one at a time)."""
        run: list[wire.Message] = []
        run_types = handle_run.types if handle_run is not None else ()
        last = len(payloads) - 1
        for i, payload in enumerate(payloads):
            if self.closed.is_set():
                return
            more = i < last
            kind = unneeded(self, payload) if unneeded is not None else None
            if kind is not None:
                if not await self._flush_run(handle_run, run, True):
                    return
                self.traffic.count_received(kind, len(payload) + limits.FRAME_HEADER_BYTES)
                await self._throttle(1, more)
                continue
            try:
                msg = self._decode(payload)
            except ProtocolError:
                if not await self._flush_run(handle_run, run, True):
                    return  # dropped for what came before: this frame is never read
                raise
            if type(msg) in run_types:
                run.append(msg)
                # handed over PEER_RUN_MAX at a time, then the peer's turn is checked
                if len(run) >= limits.PEER_RUN_MAX and not await self._flush_run(handle_run, run, more):
                    return
                continue
            if not await self._flush_run(handle_run, run, True):
                return
            if isinstance(msg, wire.Hello):
                raise Misbehaving("sent a second HELLO")
            await handle(self, msg)
            await self._throttle(1, more)
        await self._flush_run(handle_run, run, False)

    async def _flush_run(self, handle_run: RunHandler | None, run: list[wire.Message], more: bool) -> bool:
        """Hand ``run`` (if any) to ``handle_run`` and empty it, then throttle; whether the peer is
        still open after it (``more``: more of its messages are read and not yet handled)."""
        if run:
            assert handle_run is not None
            await handle_run.handle(self, run)
            n = len(run)
            run.clear()
            await self._throttle(n, more)
        return not self.closed.is_set()

    def misbehaved(self, e: Misbehaving) -> None:
        if e.ban:
            self.ban_reason = e.reason
        self.close(e.reason)

    def close(self, reason: str, *, quiet: bool = False) -> None:
        """Drop the connection now (the reader sees EOF); ``quiet`` for normal endings."""
        if self.closed.is_set():
            return
        reason = clip(reason)
        self.close_reason = reason
        self.closed.set()
        self._flushed.set()  # nothing more will leave: wake whoever waits for it
        if quiet:
            log.info("%r disconnected: %s", self, reason, extra={"reason": reason})
        else:
            log.warning("dropping %r: %s", self, reason, extra={"reason": reason})
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)
        if quiet:
            self.writer.close()
        else:  # a dropped peer gets nothing more: unsent bytes must not hold its socket open
            self.writer.transport.abort()
