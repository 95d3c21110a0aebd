"""A small client of the node protocol for tests, benchmarks, scripts and the CLI.

It handshakes as a non-listening peer (port 0, no work), so the node never syncs from it but
does gossip to it: NEW_BLOCK / NEW_TX pushes land in ``Client.gossip`` for whoever wants them.
Queries (GET_STATUS, GET_ACCOUNT, ...) are matched to replies by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import AsyncIterator
from typing import Any

from p2pchain import __version__, limits, wire
from p2pchain.errors import ProtocolError
from p2pchain.ledger.block import Block
from p2pchain.ledger.tx import Tx

GOSSIP_QUEUE_MAX = 10_000  # pushed messages kept for the caller; older ones are dropped


class NodeUnavailable(Exception):
    """The node cannot be reached or closed the connection."""


class QueryError(Exception):
    """The node answered a query with ERROR."""


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hello: wire.Hello) -> None:
        self.reader = reader
        self.writer = writer
        self.node_hello = hello  # what the node said about itself
        self.gossip: asyncio.Queue[wire.Message] = asyncio.Queue(GOSSIP_QUEUE_MAX)
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[wire.Message]] = {}
        self._reader_task = asyncio.create_task(self._read_loop())

    @property
    def network(self) -> bytes:
        return self.node_hello.network

    @classmethod
    async def connect(
        cls, host: str, port: int, *, timeout: float = 10.0, agent: str = "", listen_port: int = 0
    ) -> Client:
        """Open a connection and handshake; NodeUnavailable if the node is down or not a node.
        ``listen_port`` > 0 makes the HELLO claim a listening node (tests that play a peer node:
        a node syncs only from peers that listen)."""
        return cls(*await cls.handshake(host, port, timeout=timeout, agent=agent, listen_port=listen_port))

    @staticmethod
    async def handshake(
        host: str, port: int, *, timeout: float = 10.0, agent: str = "", listen_port: int = 0
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, wire.Hello]:
        """As ``connect``, but the caller gets the bare streams and the node's HELLO, and reads
        and writes frames itself (a benchmark that pipelines pre-encoded frames)."""
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port, limit=2**16)
                first = wire.decode_message(await wire.read_frame(reader))
                if not isinstance(first, wire.Hello):
                    raise ProtocolError(f"node sent {first.TYPE} before HELLO")
                ours = wire.Hello(
                    limits.PROTOCOL_VERSION,
                    first.network,
                    os.urandom(16),
                    listen_port,
                    0,
                    first.network,
                    0,
                    agent or f"p2pchain-client/{__version__}",
                )
                writer.write(ours.encode())
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else (str(e) or type(e).__name__)
            raise NodeUnavailable(f"cannot reach a p2pchain node at {host}:{port}: {reason}") from None
        return reader, writer, first

    async def close(self) -> None:
        self._reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader_task
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _read_loop(self) -> None:
        try:
            while True:
                msg = wire.decode_message(await wire.read_frame(self.reader))
                reply_id = getattr(msg, "id", None)
                if reply_id is not None and reply_id in self._waiting:
                    fut = self._waiting.pop(reply_id)
                    if not fut.done():
                        fut.set_result(msg)
                elif isinstance(msg, wire.Ping):
                    self.send(wire.Pong(msg.nonce))
                else:
                    if self.gossip.full():
                        self.gossip.get_nowait()
                    self.gossip.put_nowait(msg)
        except (asyncio.IncompleteReadError, OSError, ProtocolError) as e:  # OSError: EHOSTUNREACH, ETIMEDOUT too
            err = NodeUnavailable(f"node closed the connection ({type(e).__name__})")
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(err)
            self._waiting.clear()

    # --- sending ----------------------------------------------------------------------------
    def send(self, msg: wire.Message) -> None:
        self.writer.write(msg.encode())

    async def send_and_drain(self, msg: wire.Message) -> None:
        self.send(msg)
        await self.writer.drain()

    async def query(self, make: Any, *args: Any, timeout: float = 30.0) -> Any:
        """Send ``make(id, *args)`` and await the reply carrying that id."""
        if self._reader_task.done():
            raise NodeUnavailable("the connection to the node is closed")
        qid = next(self._ids) % 2**32
        fut: asyncio.Future[wire.Message] = asyncio.get_running_loop().create_future()
        self._waiting[qid] = fut
        self.send(make(qid, *args))
        try:
            async with asyncio.timeout(timeout):
                reply = await fut
        except TimeoutError:
            raise NodeUnavailable(f"node did not answer {make.TYPE} within {timeout:g} s") from None
        finally:  # answered, timed out or cancelled by the caller: nothing waits under this id any more
            self._waiting.pop(qid, None)
        if isinstance(reply, wire.Error):
            raise QueryError(reply.message)
        return reply

    async def ping(self, timeout: float = 30.0) -> None:
        """Round trip: every message sent before is processed once the PONG comes back
        (Bitcoin Core's sync_with_ping). Uses GET_STATUS, whose reply is matched by id."""
        await self.query(wire.GetStatus, timeout=timeout)

    # --- queries ----------------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        reply: wire.Status = await self.query(wire.GetStatus)
        return reply.status

    async def account(self, address: str) -> wire.Account:
        reply: wire.Account = await self.query(wire.GetAccount, address)
        return reply

    async def tx_info(self, txid: bytes) -> wire.TxInfo:
        reply: wire.TxInfo = await self.query(wire.GetTx, txid)
        return reply

    async def submit_tx(self, tx: Tx) -> wire.SubmitResult:
        reply: wire.SubmitResult = await self.query(wire.SubmitTx, tx)
        return reply

    async def blocks(self, start: int, limit: int) -> wire.Blocks:
        reply: wire.Blocks = await self.query(wire.GetBlocks, start, limit)
        return reply

    async def block(self, block_hash: bytes) -> Block | None:
        reply: wire.Blocks = await self.query(wire.GetBlock, block_hash)
        return reply.blocks[0] if reply.blocks else None

    async def all_blocks(self, start: int = 0, page: int = limits.MAX_BLOCKS_PER_CHAIN) -> AsyncIterator[Block]:
        """The node's best chain from ``start``, page by page."""
        while True:
            reply = await self.blocks(start, page)
            for block in reply.blocks:
                yield block
            if not reply.blocks or start + len(reply.blocks) > reply.height:
                return
            start += len(reply.blocks)
