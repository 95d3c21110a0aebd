"""Live events for browsers: new tips, reorganisations and new mempool transactions (batched).

The chain and the mempool tell the hub what happened (their subscriptions, wired by node.py);
the hub encodes each event once as a Server-Sent-Events frame and puts it on every open
stream's queue. Publishing never waits: a stream whose queue holds EVENT_QUEUE_MAX frames has
fallen behind and is dropped (its page reconnects and catches up from a fresh page), so many
or slow browsers cost the node one bounded queue each and never slow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

from p2pchain import limits
from p2pchain.ledger.block import Block
from p2pchain.ledger.tx import Tx

log = logging.getLogger(__name__)


class TooManyStreams(Exception):
    """EVENT_STREAMS_MAX streams are open already."""


def sse_frame(kind: str, data: dict[str, Any]) -> bytes:
    """One Server-Sent-Events frame: ``event: KIND`` and the data as one line of JSON."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def block_summary(block: Block) -> dict[str, Any]:
    return {
        "height": block.height,
        "hash": block.hash.hex(),
        "time_ms": block.header.timestamp,
        "txs": len(block.txs),
    }


def tx_summary(tx: Tx) -> dict[str, Any]:
    return {"txid": tx.txid.hex(), "sender": tx.sender, "recipient": tx.recipient, "amount": tx.amount, "fee": tx.fee}


class Stream:
    """One browser's bounded queue of encoded frames."""

    def __init__(self, hub: EventHub, max_frames: int) -> None:
        self._hub = hub
        self._max = max_frames
        self._frames: deque[bytes] = deque()
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()  # set while the reader waits with nothing queued
        self.dropped: str | None = None  # why the hub ended this stream

    def put(self, frame: bytes) -> None:
        if self.dropped is not None:
            return
        if len(self._frames) >= self._max:
            self.drop(f"fell {self._max} events behind")
            return
        self._frames.append(frame)
        self._drained.clear()
        self._ready.set()

    def drop(self, reason: str) -> None:
        if self.dropped is None:
            self.dropped = reason
            self._frames.clear()
            self._ready.set()
            self._drained.set()
            self._hub.discard(self)

    async def next(self, timeout: float) -> list[bytes] | None:
        """Every frame queued, once there is one; [] after ``timeout`` s without; None once the
        stream is dropped."""
        if not self._frames and self.dropped is None:
            self._drained.set()  # everything taken before was written by the caller
            try:
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
            except TimeoutError:
                return []
        self._ready.clear()
        if self.dropped is not None:
            return None
        frames = list(self._frames)
        self._frames.clear()
        return frames

    def close(self) -> None:
        self.drop("closed")


class EventHub:
    """Fans the chain's and the mempool's events out to the open streams."""

    def __init__(self, max_streams: int = limits.EVENT_STREAMS_MAX, max_frames: int = limits.EVENT_QUEUE_MAX) -> None:
        self.max_streams = max_streams
        self.max_frames = max_frames
        self.streams: set[Stream] = set()
        self.published = 0  # events published since start
        self.dropped = 0  # streams dropped for falling behind
        self._txs: deque[dict[str, Any]] = deque(maxlen=limits.EVENT_TX_BATCH_MAX)  # newest of the batch
        self._tx_count = 0  # transactions in the batch
        self._tx_timer: asyncio.TimerHandle | None = None

    def open(self) -> Stream:
        if len(self.streams) >= self.max_streams:
            raise TooManyStreams(f"{self.max_streams} event streams are open: close a tab, or try again later")
        stream = Stream(self, self.max_frames)
        self.streams.add(stream)
        return stream

    def discard(self, stream: Stream) -> None:
        if stream in self.streams:
            self.streams.discard(stream)
            if stream.dropped != "closed":
                self.dropped += 1
                log.info("event stream dropped: %s", stream.dropped)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        """Queue one event on every stream; never waits."""
        self.published += 1
        if not self.streams:
            return
        frame = sse_frame(kind, data)
        for stream in list(self.streams):
            stream.put(frame)

    # --- the subscriptions node.py wires in ----------------------------------------------------
    def on_chain_update(self, connected: Sequence[Block], disconnected: Sequence[Block]) -> None:
        """A chain listener: a reorganisation (if blocks left the best chain), then the new tip."""
        if not self.streams:  # no browser: the events are counted, their summaries not made (a sync's every run)
            self.published += bool(disconnected) + bool(connected)
            return
        if disconnected:
            self.publish(
                "reorg",
                {
                    "fork_height": disconnected[-1].height - 1,
                    "disconnected": [block_summary(b) for b in disconnected],
                    "connected": [block_summary(b) for b in connected[-limits.EVENT_TIP_BLOCKS :]],
                },
            )
        if connected:
            tip = connected[-1]
            self.publish(
                "tip",
                {
                    **block_summary(tip),
                    "connected": len(connected),
                    "blocks": [block_summary(b) for b in connected[-limits.EVENT_TIP_BLOCKS :]],
                },
            )

    def on_new_tx(self, tx: Tx) -> None:
        """A mempool listener: a transaction entered the pool. Batched: one ``txs`` event
        (``count`` and the newest EVENT_TX_BATCH_MAX) EVENT_TX_BATCH_S after the first."""
        if not self.streams:
            return  # nobody is watching: nothing to send or keep
        self._txs.append(tx_summary(tx))
        self._tx_count += 1
        if self._tx_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop (a script): no batching either
                self._flush_txs()
                return
            self._tx_timer = loop.call_later(limits.EVENT_TX_BATCH_S, self._flush_txs)

    def _flush_txs(self) -> None:
        self._tx_timer = None
        if self._tx_count:
            self.publish("txs", {"count": self._tx_count, "txs": list(self._txs)})
        self._txs.clear()
        self._tx_count = 0

    async def flush(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until every stream has written what was published."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                for stream in list(self.streams):
                    await stream._drained.wait()

    def close(self) -> None:
        """End every stream (the node is stopping)."""
        if self._tx_timer is not None:
            self._tx_timer.cancel()
            self._tx_timer = None
        for stream in list(self.streams):
            stream.close()
