"""A raw test peer in the spirit of Bitcoin Core's ``P2PInterface``: a TCP connection to a node
that can send any bytes (whole messages, hand-made payloads, broken frames) and reads what the
node sends back, answering its PINGs unless told not to.

Each peer can connect from its own loopback source address (127.0.0.2, 127.0.0.3, ...: Linux
routes all of 127/8 to ``lo``), so that a node run with ``--ban-loopback`` bans only that address
and an honest peer on 127.0.0.1 keeps being served. All traffic stays on loopback.

Frames here are built without the codec's checks (``frame``), so a test can send what no
well-behaved peer would; ``doc_of``/``payload`` let it mutate a real message's msgpack map.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
from collections.abc import Callable
from typing import Any

import msgpack

from p2pchain import __version__, limits, wire
from p2pchain.client import Client
from p2pchain.errors import ProtocolError

LOOPBACK = "127.0.0.1"
CONNECT_TIMEOUT_S = 10.0  # generous: the machine is shared
READ_TIMEOUT_S = 15.0  # how long ``expect`` and ``wait_closed`` wait by default


# --- bytes ---------------------------------------------------------------------------------
def frame(payload: bytes) -> bytes:
    """A length prefix and ``payload``, with no limit checked (wire.encode_frame checks them)."""
    return len(payload).to_bytes(limits.FRAME_HEADER_BYTES, "big") + payload


def payload(doc: Any) -> bytes:
    """Any object as msgpack, the way a node packs its messages (bin type for bytes)."""
    return bytes(msgpack.packb(doc, use_bin_type=True))


def doc_of(msg: wire.Message) -> dict[str, Any]:
    """The msgpack map of a real message, to mutate and re-pack."""
    doc: dict[str, Any] = msgpack.unpackb(msg.payload(), raw=False)
    return doc


def hello(
    network: bytes,
    *,
    version: int = limits.PROTOCOL_VERSION,
    node_id: bytes | None = None,
    port: int = 0,
    height: int = 0,
    work: int = 0,
    agent: str = "",
    relay: tuple[str, ...] = (),
) -> wire.Hello:
    """A HELLO as a client sends it (not listening, no work, no relay features) unless told otherwise."""
    return wire.Hello(
        version,
        network,
        node_id if node_id is not None else os.urandom(16),
        port,
        height,
        network,
        work,
        agent or f"p2p-test-peer/{__version__}",
        relay,
    )


async def open_stream(
    port: int, source: str = LOOPBACK, *, rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to 127.0.0.1:``port`` from ``source`` (any loopback address). ``rcvbuf``
    shrinks the kernel receive buffer, so that a peer that does not read backs the node up fast."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**16, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((source, 0))
        sock.setblocking(False)
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await loop.sock_connect(sock, (LOOPBACK, port))
    except BaseException:
        sock.close()
        raise
    transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


# --- the raw peer --------------------------------------------------------------------------
class RawPeer:
    """One connection to a node. With ``read`` (the default) a task reads every frame the node
    sends into ``messages`` (answering PINGs while ``auto_pong``) and sets ``closed`` when the node
    closes the connection; without it nothing is ever read, as by a peer that never reads."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str, read: bool) -> None:
        self.reader = reader
        self.writer = writer
        self.source = source
        self.messages: asyncio.Queue[wire.Message | None] = asyncio.Queue()  # None: the node closed
        self.closed = asyncio.Event()  # the node closed (or reset) the connection
        self.auto_pong = True
        self.node_hello: wire.Hello | None = None
        self._task = asyncio.create_task(self._read_loop()) if read else None

    @classmethod
    async def connect(
        cls, port: int, source: str = LOOPBACK, *, read: bool = True, rcvbuf: int | None = None
    ) -> RawPeer:
        reader, writer = await open_stream(port, source, rcvbuf=rcvbuf)
        return cls(reader, writer, source, read)

    async def _read_loop(self) -> None:
        try:
            while True:
                msg = wire.decode_message(await wire.read_frame(self.reader))
                if isinstance(msg, wire.Ping) and self.auto_pong:
                    self.send(wire.Pong(msg.nonce))
                self.messages.put_nowait(msg)
        except (asyncio.IncompleteReadError, ConnectionError, ProtocolError):
            pass
        finally:
            self.closed.set()
            self.messages.put_nowait(None)

    # --- sending ----------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        """Queue bytes on the socket; a connection the node has closed swallows them."""
        if not self.writer.is_closing():
            self.writer.write(data)

    def send(self, msg: wire.Message) -> None:
        self.send_raw(frame(msg.payload()))

    def send_payload(self, data: bytes) -> None:
        self.send_raw(frame(data))

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    # --- receiving --------------------------------------------------------------------------
    async def expect(self, match: type[Any] | Callable[[wire.Message], bool], timeout: float = READ_TIMEOUT_S) -> Any:
        """The next message from the node that is an instance of ``match`` (or satisfies it);
        others are skipped. AssertionError if the connection closes or time runs out first."""
        test = (lambda m: isinstance(m, match)) if isinstance(match, type) else match
        try:
            async with asyncio.timeout(timeout):
                while (msg := await self.messages.get()) is not None:
                    if test(msg):
                        return msg
        except TimeoutError:
            raise AssertionError(f"{self.source}: no {match} from the node within {timeout:g} s") from None
        self.messages.put_nowait(None)  # stays closed for the next caller
        raise AssertionError(f"{self.source}: the node closed the connection; expected {match}")

    async def handshake(self, **fields: Any) -> wire.Hello:
        """Read the node's HELLO and answer with ours (``fields`` change it: see ``hello``)."""
        node_hello: wire.Hello = await self.expect(wire.Hello)
        self.node_hello = node_hello
        self.send(hello(node_hello.network, **fields))
        await self.drain()
        return node_hello

    async def sync_with_ping(self, timeout: float = READ_TIMEOUT_S) -> None:
        """PING and wait for its PONG: everything sent before has been handled, and the node
        still talks to us (Bitcoin Core's sync_with_ping)."""
        nonce = random.getrandbits(64)
        self.send(wire.Ping(nonce))
        await self.drain()
        await self.expect(lambda m: isinstance(m, wire.Pong) and m.nonce == nonce, timeout)

    async def wait_closed(self, timeout: float = READ_TIMEOUT_S) -> None:
        """Wait until the node closes the connection (a reading peer only)."""
        assert self._task is not None, "a peer that does not read cannot see the close"
        try:
            async with asyncio.timeout(timeout):
                await self.closed.wait()
        except TimeoutError:
            raise AssertionError(f"the node did not close the connection from {self.source} in {timeout:g} s") from None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def refused(port: int, source: str, timeout: float = READ_TIMEOUT_S) -> bool:
    """True if the node closes a new connection from ``source`` without a HELLO (a banned or
    over-the-limit address), False if it greets it."""
    peer = await RawPeer.connect(port, source)
    try:
        async with asyncio.timeout(timeout):
            return await peer.messages.get() is None
    except TimeoutError:
        raise AssertionError(f"the node neither greeted nor closed a connection from {source}") from None
    finally:
        await peer.close()


async def connect_client(port: int, source: str = LOOPBACK) -> Client:
    """A protocol ``Client`` (queries, gossip queue, PONGs) from any loopback source address:
    the handshake ``Client.connect`` does, on a connection bound to ``source``."""
    reader, writer = await open_stream(port, source)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            first = wire.decode_message(await wire.read_frame(reader))
            assert isinstance(first, wire.Hello), f"node sent {first.TYPE} before HELLO"
            writer.write(hello(first.network).encode())
            await writer.drain()
    except BaseException:
        writer.close()
        raise
    return Client(reader, writer, first)


async def next_gossip(client: Client, match: Callable[[wire.Message], bool], timeout: float = READ_TIMEOUT_S) -> Any:
    """The next message pushed to ``client`` (NEW_BLOCK, NEW_TX, ...) that satisfies ``match``."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                msg = await client.gossip.get()
                if match(msg):
                    return msg
    except TimeoutError:
        raise AssertionError(f"no matching gossip within {timeout:g} s") from None
