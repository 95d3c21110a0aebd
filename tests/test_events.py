"""events: the hub that fans tips, reorganisations and mempool transactions out to browsers'
Server-Sent-Event streams. Publishing never waits; a stream that falls behind is dropped while
the others keep every event; the stream count is bounded; chain and mempool subscriptions give
the events a page needs (a reorg names the replaced blocks)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from ledger_helpers import GENESIS, block_on, branch, feed, mem_chain, pay, wallet

from p2pchain import limits
from p2pchain.events import EventHub, Stream, TooManyStreams, sse_frame
from p2pchain.explorer import serve_events
from p2pchain.mempool import Mempool

A, B = wallet(1), wallet(2)


def decode(frames: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each SSE frame."""
    out = []
    for frame in frames:
        lines = frame.decode().strip().split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), frame
        out.append((lines[0][7:], json.loads(lines[1][6:])))
    return out


def test_a_stream_that_falls_behind_is_dropped_and_the_others_keep_everything() -> None:
    async def go() -> None:
        hub = EventHub(max_streams=4, max_frames=8)
        slow, fast = hub.open(), hub.open()
        for i in range(5):
            hub.publish("tx", {"n": i})
        got = await fast.next(1.0)
        assert got is not None and [d["n"] for _, d in decode(got)] == list(range(5))
        for i in range(5, 20):  # slow never reads: its 9th waiting event drops it, publish goes on
            hub.publish("tx", {"n": i})
            got = await fast.next(1.0)
            assert got is not None and [d["n"] for _, d in decode(got)] == [i]
        assert slow.dropped == "fell 8 events behind"
        assert await slow.next(1.0) is None
        assert hub.streams == {fast} and hub.dropped == 1

    asyncio.run(go())


def test_streams_are_bounded_and_a_closed_one_frees_its_slot() -> None:
    async def go() -> None:
        hub = EventHub(max_streams=2)
        first = hub.open()
        hub.open()
        with pytest.raises(TooManyStreams):
            hub.open()
        first.close()
        hub.open()
        assert hub.dropped == 0  # closing is not dropping
        assert await first.next(1.0) is None

    asyncio.run(go())


def test_a_quiet_stream_wakes_for_keepalive_and_for_an_event() -> None:
    async def go() -> None:
        hub = EventHub()
        stream = hub.open()
        assert await stream.next(0.01) == []  # nothing happened: the caller writes a keepalive
        waiter = asyncio.create_task(stream.next(5.0))
        await asyncio.sleep(0)  # ok: let the waiter start waiting
        hub.publish("tip", {"height": 1})
        got = await asyncio.wait_for(waiter, 5.0)
        assert got is not None and decode(got) == [("tip", {"height": 1})]

    asyncio.run(go())


async def events_until(stream: Stream, n: int) -> list[tuple[str, dict[str, Any]]]:
    """The next ``n`` events of ``stream`` (bounded: 5 s)."""
    events: list[tuple[str, dict[str, Any]]] = []
    async with asyncio.timeout(5):
        while len(events) < n:
            frames = await stream.next(5.0)
            assert frames is not None, "stream dropped"
            events += decode(frames)
    return events


def test_chain_and_mempool_subscriptions_give_tip_reorg_and_tx_events() -> None:
    # G - a1 - a2            main, then b1 - b2 - b3 from G: a reorg of 2 blocks
    async def go() -> None:
        chain = mem_chain()
        pool = Mempool(chain.params, chain.get_account)
        hub = EventHub()
        chain.subscribe(hub.on_chain_update)
        pool.subscribe(hub.on_new_tx)
        stream = hub.open()
        a1 = block_on(GENESIS, miner=A.address)
        a2 = block_on(a1)
        feed(chain, [a1, a2])
        tx = pay(A, B, 5, fee=1)
        pool.add(tx)
        b = branch(GENESIS, 3, salt=5)
        feed(chain, b)
        events = await events_until(stream, 5)
        assert [name for name, _ in events] == ["tip", "tip", "reorg", "tip", "txs"]  # txs: batched
        assert events[1][1]["hash"] == a2.hash.hex() and events[1][1]["height"] == 2
        reorg = events[2][1]
        assert reorg["fork_height"] == 0
        assert [x["hash"] for x in reorg["disconnected"]] == [a2.hash.hex(), a1.hash.hex()]
        assert [x["hash"] for x in reorg["connected"]] == [x.hash.hex() for x in b]
        assert events[3][1]["hash"] == b[-1].hash.hex() and events[3][1]["connected"] == 3
        want = {"txid": tx.txid.hex(), "sender": A.address, "recipient": B.address, "amount": 5, "fee": 1}
        assert events[4][1] == {"count": 1, "txs": [want]}

    asyncio.run(go())


def test_a_flood_of_transactions_is_a_few_bounded_events() -> None:
    async def go() -> None:
        hub = EventHub()
        stream = hub.open()
        payments = [pay(A, B, 1, nonce=i) for i in range(500)]
        for tx in payments:
            hub.on_new_tx(tx)
        ((name, data),) = await events_until(stream, 1)
        assert name == "txs" and data["count"] == 500
        assert [t["txid"] for t in data["txs"]] == [t.txid.hex() for t in payments[-limits.EVENT_TX_BATCH_MAX :]]
        hub.close()
        quiet = EventHub()
        quiet.on_new_tx(payments[0])  # no stream open: nothing is kept or scheduled
        assert quiet.published == 0 and quiet._tx_timer is None

    asyncio.run(go())


def test_a_long_sync_is_one_tip_event_of_bounded_size() -> None:
    async def go() -> None:
        hub = EventHub()
        stream = hub.open()
        blocks = branch(GENESIS, limits.EVENT_TIP_BLOCKS + 10)
        hub.on_chain_update(blocks, [])  # as one CHAIN batch connecting them all reports it
        got = await stream.next(1.0)
        assert got is not None
        ((name, data),) = decode(got)
        assert name == "tip" and data["height"] == blocks[-1].height
        assert len(data["blocks"]) == limits.EVENT_TIP_BLOCKS  # type: ignore[arg-type]

    asyncio.run(go())


def test_a_browser_that_stops_reading_is_dropped_and_never_blocks_publishing() -> None:
    """Over a real socket: one client reads its stream, another stops reading. Publishing 20 MB
    of events never waits; the stalled stream is dropped once its queue fills behind the full
    socket, and the reading client gets every event."""

    async def go() -> None:
        hub = EventHub(max_frames=16)

        async def handler(request: web.Request) -> web.StreamResponse:
            return await serve_events(request, hub, sse_frame("hello", {}))

        app = web.Application()
        app.router.add_get("/events", handler)
        async with TestServer(app, host="127.0.0.1") as server:
            stalled = socket.socket()
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.setblocking(False)
            await asyncio.get_running_loop().sock_connect(stalled, ("127.0.0.1", server.port))
            stalled.send(b"GET /events HTTP/1.1\r\nHost: test\r\n\r\n")
            async with ClientSession() as session, session.get(server.make_url("/events")) as reader:
                lines = reader.content
                assert (await lines.readline()).startswith(b"retry: ")
                async with asyncio.timeout(10):  # both streams open (a loaded machine may take a while)
                    while len(hub.streams) != 2:
                        await asyncio.sleep(0.01)  # poll interval
                pad = "x" * 10_000
                got = 0
                for i in range(2000):
                    hub.publish("tx", {"n": i, "pad": pad})  # returns at once: nothing to await
                    while got <= i:  # the reading client keeps up, event by event
                        line = await lines.readline()
                        got += line.startswith(b'data: {"n"')
                    if hub.dropped:
                        break
                assert hub.dropped == 1 and len(hub.streams) == 1, "the stalled stream was not dropped"
                assert got == i + 1
            stalled.close()

    asyncio.run(asyncio.wait_for(go(), 60))


def test_chain_events_without_a_stream_are_counted_and_not_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no browser, a chain update (a sync's every run of blocks) counts its events as
    published and builds none of their block summaries; with one, the same update is delivered."""
    import p2pchain.events as events

    blocks = branch(GENESIS, 3)
    hub = EventHub()
    real = events.block_summary
    monkeypatch.setattr(events, "block_summary", lambda block: pytest.fail("a summary built for nobody"))
    hub.on_chain_update(blocks, blocks[:1])  # a reorg and a tip
    assert hub.published == 2
    monkeypatch.setattr(events, "block_summary", real)

    async def go() -> None:
        stream = hub.open()
        hub.on_chain_update(blocks, [])
        ((name, data),) = await events_until(stream, 1)
        assert name == "tip" and data["height"] == blocks[-1].height and data["connected"] == 3
        hub.close()

    asyncio.run(go())
    assert hub.published == 3
