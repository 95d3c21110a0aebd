"""resolve: /nodes/resolve asks every peer for its blocks as it has them from the call on, and
right after a handshake (the tutorial's register-then-resolve) it does so without the peer's
blocks coming twice: a peer whose sync request is in flight is asked again once its answer
arrives, from that answer's last block; a peer whose answer is being checked, at once, from
there. It answers once the node holds the peer's chain, including a block the peer got after
it answered the sync (that answer lacked it: resolve once answered one block behind, under load).

In-process: Nodes on loopback in this event loop, blocks built with tests/node_helpers.py; the
races are set up deterministically with a raw peer (ChainPeer) that acts between its answers.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from node_helpers import TEST_PARAMS, branch

from p2pchain import limits, wire
from p2pchain.ledger.block import Block
from p2pchain.ledger.pow import work
from p2pchain.node import Node, NodeConfig

BLOCKS = 120


def source_and_fresh(tmp_path: Path) -> tuple[list[Block], Node, Node]:
    """A BLOCKS-block branch, a node holding it and a fresh node (neither started)."""
    blocks = branch(TEST_PARAMS.genesis.header, BLOCKS)
    source = Node(NodeConfig(data_dir=tmp_path / "source", port=0, params=TEST_PARAMS, discover=False))
    for block in blocks:
        source.chain.process_block(block, block.header.timestamp)
    fresh = Node(NodeConfig(data_dir=tmp_path / "fresh", port=0, params=TEST_PARAMS, discover=False))
    return blocks, source, fresh


def traffic(node: Node, kind: str, key: str) -> int:
    count: int = node.status()["traffic"][kind][key]
    return count


def assert_blocks_came_once(fresh: Node, blocks: list[Block]) -> None:
    """Two GET_CHAIN (the sync's, and resolve's from where it ended) and the blocks once."""
    assert traffic(fresh, "GET_CHAIN", "messages_sent") == 2
    once = len(wire.Chain(tuple(blocks), False).encode()) + len(wire.Chain((), False).encode())
    received = traffic(fresh, "CHAIN", "bytes_received")
    assert received == once, f"{received} bytes of CHAIN for {once} bytes of blocks: some came twice"


def test_resolve_after_a_handshake_asks_on_from_the_sync_request_in_flight(tmp_path: Path) -> None:
    async def scenario() -> None:
        blocks, source, fresh = source_and_fresh(tmp_path)
        await source.start()
        await fresh.start()
        try:
            addr = f"127.0.0.1:{source.port}"
            fresh.connmgr.connect(addr)
            async with asyncio.timeout(30):  # as /nodes/register: until the handshake is done
                await fresh.changed.wait_for(lambda: any(p.dialed == addr for p in fresh.connmgr.ready), None)
            assert await fresh.resolve(timeout=30) is True
            assert fresh.chain.tip.hash == blocks[-1].hash
            assert_blocks_came_once(fresh, blocks)
        finally:
            await fresh.stop()
            await source.stop()

    asyncio.run(scenario())


def test_resolve_while_the_sync_checks_its_answer_asks_on_from_its_end(tmp_path: Path) -> None:
    """The sync's CHAIN has arrived and its first run of blocks is connected (no request is in
    flight any more) when resolve asks: the sync peer is asked for what follows that CHAIN."""

    async def scenario() -> None:
        blocks, source, fresh = source_and_fresh(tmp_path)
        await source.start()
        resolving: list[asyncio.Task[bool]] = []

        def first_run(connected: list[Block], disconnected: list[Block]) -> None:
            if not resolving:  # the CHAIN is being checked: resolve from the next turn of the loop
                assert 0 < fresh.chain.height < BLOCKS
                resolving.append(asyncio.get_running_loop().create_task(fresh.resolve(timeout=30)))

        fresh.chain.subscribe(first_run)
        await fresh.start()
        try:
            fresh.connmgr.connect(f"127.0.0.1:{source.port}")
            async with asyncio.timeout(30):
                await fresh.changed.wait_for(lambda: bool(resolving), None)
                assert await resolving[0] is True
            assert fresh.chain.tip.hash == blocks[-1].hash
            assert_blocks_came_once(fresh, blocks)
        finally:
            await fresh.stop()
            await source.stop()

    asyncio.run(scenario())


class ChainPeer:
    """A raw listening peer holding ``blocks``: its HELLO claims them (so a node syncs from it at
    the handshake), it answers GET_CHAIN from the locator's fork point and PING, nothing else
    (no relay: a block it gets later reaches the node only through a GET_CHAIN). ``on_served``
    runs right after each answer is written, before the node can have read it."""

    def __init__(self, blocks: list[Block], on_served: Callable[[ChainPeer, int], None]) -> None:
        self.blocks = list(blocks)
        self.on_served = on_served
        self.served: list[int] = []  # blocks sent in each CHAIN
        self.writer: asyncio.StreamWriter | None = None

    def chain_work(self) -> int:
        return sum(work(b.header.target) for b in self.blocks) + work(TEST_PARAMS.genesis.header.target)

    async def run(self, port: int) -> None:
        reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        tip = self.blocks[-1]
        version, network = limits.PROTOCOL_VERSION, TEST_PARAMS.network_id
        hello = wire.Hello(version, network, os.urandom(16), 1, tip.height, tip.hash, self.chain_work(), "chain-peer")
        self.writer.write(hello.encode())
        try:
            while True:
                msg = wire.decode_message(await wire.read_frame(reader))
                if isinstance(msg, wire.GetChain):
                    hashes = [TEST_PARAMS.network_id, *(b.hash for b in self.blocks)]
                    fork = next((hashes.index(h) for h in msg.locator if h in hashes), 0)
                    answer = self.blocks[fork : fork + msg.max]
                    self.writer.write(wire.Chain(tuple(answer), False).encode())
                    self.served.append(len(answer))
                    self.on_served(self, len(self.served))
                elif isinstance(msg, wire.Ping):
                    self.writer.write(wire.Pong(msg.nonce).encode())
        except (asyncio.IncompleteReadError, ConnectionError):
            return


def race(tmp_path: Path, *, in_flight: bool) -> None:
    """The peer gets a new block right after it answered the sync's GET_CHAIN (so that answer
    lacks it), and only then is /nodes/resolve called: with its request in flight (``in_flight``)
    or while its answer is being checked. Resolve must still end with the peer's new block (it
    asks every peer for what it has from the call on), and the peer's blocks come only once."""
    blocks = branch(TEST_PARAMS.genesis.header, BLOCKS + 1)
    fresh = Node(NodeConfig(data_dir=tmp_path / "fresh", port=0, params=TEST_PARAMS, discover=False))
    resolving: list[asyncio.Task[bool]] = []

    def resolve() -> None:
        resolving.append(asyncio.get_running_loop().create_task(fresh.resolve(timeout=30)))

    def served(peer: ChainPeer, count: int) -> None:
        if count == 1:
            peer.blocks.append(blocks[-1])  # a block it got after answering
            if in_flight:  # the node has not read the answer yet: its request is in flight
                assert fresh.sync.peer is not None and fresh.sync.peer.asked_chain == 1
                resolve()

    def first_run(connected: list[Block], disconnected: list[Block]) -> None:
        if not in_flight and not resolving:  # the answer's first run is connected, the rest not yet
            assert 0 < fresh.chain.height < BLOCKS
            resolve()

    async def scenario() -> ChainPeer:
        fresh.chain.subscribe(first_run)
        await fresh.start()
        peer = ChainPeer(blocks[:BLOCKS], served)
        serving = asyncio.create_task(peer.run(fresh.port))
        try:
            async with asyncio.timeout(30):
                await fresh.changed.wait_for(lambda: bool(resolving), None)
                assert await resolving[0] is True
        finally:
            await fresh.stop()
            async with asyncio.timeout(30):
                await serving
        return peer

    peer = asyncio.run(scenario())
    assert fresh.chain.tip.hash == blocks[-1].hash, (
        f"resolve answered at height {fresh.chain.height}: the peer's block {BLOCKS + 1} was missed"
    )
    assert peer.served == [BLOCKS, 1], f"blocks served per GET_CHAIN: {peer.served}"


def test_resolve_with_the_sync_request_in_flight_gets_what_the_peer_has_since(tmp_path: Path) -> None:
    race(tmp_path, in_flight=True)


def test_resolve_while_the_sync_checks_gets_what_the_peer_has_since(tmp_path: Path) -> None:
    race(tmp_path, in_flight=False)
