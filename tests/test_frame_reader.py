"""peer.FrameReader: a peer's stream that drops whole frames as they arrive (the copies of a
compact block the node has), tested without sockets by splitting the stream at random offsets
(aiorpcX's test_framing style): whatever the split, the reader yields the frames sent, minus the
ones its sieve took, in order, and the sieve only ever sees whole payloads."""

from __future__ import annotations

import asyncio
import itertools
from functools import partial
from pathlib import Path

from harness import until
from hypothesis import given, settings
from hypothesis import strategies as st
from node_helpers import with_node
from p2p_peer import RawPeer

from p2pchain import limits, wire
from p2pchain.metrics import Traffic
from p2pchain.node import Node
from p2pchain.peer import FrameReader, Peer, Tunables
from p2pchain.relay import FEATURES

PAYLOADS = [
    b"keep-hello",
    b"drop" + bytes(200),
    b"keep" + bytes(3000),
    b"drop-2",
    b"k",
    b"drop" + b"x" * 70,
    b"keep-end",
]
STREAM = b"".join(wire.encode_frame(p) for p in PAYLOADS)


async def _read_all(reader: FrameReader) -> list[bytes]:
    out: list[bytes] = []
    while True:
        try:
            out.append(await wire.read_frame(reader))
        except asyncio.IncompleteReadError as e:
            assert e.partial == b""  # the stream ended at a frame boundary
            return out


def _split_and_read(cuts: list[int], sieve_on: bool) -> tuple[list[bytes], list[bytes]]:
    seen: list[bytes] = []

    def sieve(payload: bytes) -> bool:
        seen.append(payload)
        return payload.startswith(b"drop")

    async def scenario() -> list[bytes]:
        reader = FrameReader()
        if sieve_on:
            reader.sieve = sieve
        bounds = [0, *sorted(cuts), len(STREAM)]
        for a, b in itertools.pairwise(bounds):
            reader.feed_data(STREAM[a:b])
        reader.feed_eof()
        return await _read_all(reader)

    return asyncio.run(scenario()), seen


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=30))
def test_any_split_reads_the_frames_sent_minus_the_ones_the_sieve_took(cuts: list[int]) -> None:
    read, seen = _split_and_read(cuts, sieve_on=True)
    dropped = [p for p in seen if p.startswith(b"drop")]
    assert all(p in PAYLOADS for p in seen)  # whole payloads only, never a piece or a length prefix
    assert seen == [p for p in PAYLOADS if p in seen]  # in stream order, each at most once
    assert read == [p for p in PAYLOADS if p not in dropped]  # the rest, in order, as sent
    assert all(not p.startswith(b"drop") for p in seen if p in read)  # nothing it let through was lost


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=30))
def test_without_a_sieve_it_is_a_stream_reader(cuts: list[int]) -> None:
    read, seen = _split_and_read(cuts, sieve_on=False)
    assert read == PAYLOADS and seen == []


def test_a_frame_that_arrives_whole_in_a_chunk_is_sieved_and_one_split_is_read() -> None:
    frames = [wire.encode_frame(p) for p in PAYLOADS]
    read, seen = _split_and_read(list(itertools.accumulate(len(f) for f in frames)), sieve_on=True)
    assert seen == PAYLOADS  # one frame a chunk: each is offered
    assert read == [p for p in PAYLOADS if not p.startswith(b"drop")]
    split = len(frames[0]) + 10  # inside the second frame (a "drop" one): it reaches the reader
    read, seen = _split_and_read([split, len(frames[0]) + len(frames[1])], sieve_on=True)
    assert PAYLOADS[1] in read and PAYLOADS[1] not in seen


def test_a_peer_sieves_within_its_message_rate_and_counts_what_it_drops() -> None:
    """Peer's sieve (set after the handshake): a payload the node has no use for is dropped as
    it arrives and counted under its type, as if read; past the peer's message burst nothing
    more is dropped there, so every further frame is read and throttled like any other."""

    class Writer:  # what Peer reads of a StreamWriter when it is made
        def get_extra_info(self, name: str) -> tuple[str, int]:
            return ("127.0.0.1", 1)

    def unneeded(peer: Peer, payload: bytes) -> str | None:
        return "CMPCT_BLOCK" if payload.startswith(b"copy") else None

    async def scenario() -> None:
        reader = FrameReader()
        traffic = Traffic()
        peer = Peer(reader, Writer(), inbound=True, tunables=Tunables(msg_rate=0.001, msg_burst=3), traffic=traffic)  # type: ignore[arg-type]
        reader.sieve = partial(peer._sieve, unneeded)
        frames = [wire.encode_frame(b"copy%d" % i) for i in range(5)] + [wire.encode_frame(b"other")]
        for frame in frames:
            reader.feed_data(frame)
        reader.feed_eof()
        read = await _read_all(reader)
        assert read == [b"copy3", b"copy4", b"other"]  # three dropped (the burst), the rest read
        assert traffic.by_type()["CMPCT_BLOCK"]["messages_received"] == 3
        assert peer.bytes_received == 3 * (len(b"copy0") + limits.FRAME_HEADER_BYTES)

    asyncio.run(scenario())


def test_a_node_sieves_only_the_frames_of_a_peer_that_speaks_compact_relay(tmp_path: Path) -> None:
    """A client's or an old peer's frames are never looked at as they arrive (nothing of theirs
    can be a copy: the per-frame walk would be pure cost, e.g. to every SUBMIT_TX); a compact
    relay peer's are; nor is the node asked whether a client's frame is unneeded once it is
    read (its reader's call a frame, e.g. to every SUBMIT_TX); and a closed peer's reader lets go
    of its sieve (a bound method of the peer: a reference cycle), so the peer and its buffers
    need no GC pass to be freed."""

    asked: list[str] = []  # the hosts whose payloads the node was asked about

    def count_asks(node: Node) -> None:
        unneeded = node.connmgr.unneeded
        assert unneeded is not None

        def counting(peer: Peer, payload: bytes) -> str | None:
            asked.append(peer.host)
            return unneeded(peer, payload)

        node.connmgr.unneeded = counting

    async def scenario(node: Node) -> None:
        client = await RawPeer.connect(node.port, "127.0.9.1")
        relayer = await RawPeer.connect(node.port, "127.0.9.2")
        try:
            await client.handshake()
            await relayer.handshake(relay=FEATURES)
            await client.sync_with_ping()
            await relayer.sync_with_ping()
            by_host = {p.host: p for p in node.connmgr.peers}
            client_reader, relay_reader = by_host["127.0.9.1"].reader, by_host["127.0.9.2"].reader
            assert isinstance(client_reader, FrameReader) and isinstance(relay_reader, FrameReader)
            assert client_reader.sieve is None and not client_reader.walk
            assert relay_reader.sieve is not None and relay_reader.walk
            assert "127.0.9.1" not in asked and "127.0.9.2" in asked
            await relayer.close()
            await until(lambda: relay_reader.sieve is None, "the closed peer's reader let go of its sieve")
        finally:
            await client.close()
            await relayer.close()

    asyncio.run(with_node(tmp_path, scenario, deadline_s=None, setup=count_asks, ban_loopback=False))
