"""Builders shared by the node integration tests (tests/test_node_*.py).

Blocks are mined in this process at TEST_BITS (about 1.6 ms each) with timestamps one second
apart from genesis, so they are always after the median time past and never in the future.
A node's starting chain is written to its data dir with ``p2pchain.chain.Chain`` before the
process starts. The protocol client (``ask``) reads what a user would read from a node.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from aiohttp.test_utils import TestClient, TestServer
from harness import TEST_BITS, NodeProc, run

from p2pchain import wire
from p2pchain.chain import Chain
from p2pchain.client import Client
from p2pchain.http import make_app
from p2pchain.http_auth import AuthMode, AuthSettings, Guard
from p2pchain.keys import Wallet
from p2pchain.ledger.block import Block, Header, merkle_root
from p2pchain.ledger.tx import Tx, make_coinbase, make_tx
from p2pchain.miner import mine_block
from p2pchain.node import Node, NodeConfig
from p2pchain.params import BLOCK_VERSION, NetworkParams
from p2pchain.peer import Tunables
from p2pchain.store import DB_FILE
from p2pchain.sync import now_ms

T = TypeVar("T")

TEST_PARAMS = NetworkParams(bits=TEST_BITS)  # the network of every test node (harness default)
FUNDED = Wallet.from_seed(hashlib.sha256(b"p2pchain node tests: funded wallet").digest())  # main_chain's miner
SPACING_MS = 1000  # a block's timestamp is its parent's plus this (plus a salt)
MAIN_LENGTH = 1500  # blocks in main_chain() after genesis: three full CHAIN batches
MINER_ARGS = ["--mine", "--miner-procs", "1"]  # one mining process: the machine is shared
NODE_DIR = "n"  # the data dir, below the test's tmp_path, of with_node's and idle_node's node


def next_block(
    parent: Header,
    txs: Sequence[Tx] = (),
    *,
    reward_to: str = FUNDED.address,
    salt: int = 0,
    overpay: int = 0,
) -> Block:
    """A mined block on ``parent``; its coinbase pays reward + fees (+ ``overpay``, which makes
    the block break a state rule) to ``reward_to``. ``salt`` shifts the timestamp (sibling blocks)."""
    height = parent.height + 1
    amount = TEST_PARAMS.reward + sum(tx.fee for tx in txs) + overpay
    body = (make_coinbase(reward_to, amount, height), *txs)
    header = Header(
        BLOCK_VERSION,
        height,
        parent.hash,
        merkle_root([tx.txid for tx in body]),
        parent.timestamp + SPACING_MS + salt,
        TEST_PARAMS.start_bits,
        0,
    )
    return mine_block(Block(header, body))


def branch(parent: Header, n: int, *, reward_to: str = FUNDED.address, salt: int = 0) -> list[Block]:
    """``n`` coinbase-only blocks on ``parent``; a ``salt`` tells branches from one parent apart."""
    blocks: list[Block] = []
    for i in range(n):
        blocks.append(
            next_block(blocks[-1].header if blocks else parent, reward_to=reward_to, salt=salt if not i else 0)
        )
    return blocks


@functools.cache
def main_chain() -> tuple[Block, ...]:
    """MAIN_LENGTH blocks on genesis paying FUNDED, mined once per test session (~2.5 s)."""
    return tuple(branch(TEST_PARAMS.genesis.header, MAIN_LENGTH))


def tip_hex(blocks: Sequence[Block]) -> str:
    return blocks[-1].hash.hex() if blocks else TEST_PARAMS.network_id.hex()


def write_store(node: NodeProc, blocks: Iterable[Block]) -> None:
    """Give ``node`` (not running) a data dir whose best chain is genesis + ``blocks``."""
    node.data_dir.mkdir(parents=True, exist_ok=True)
    chain = Chain.open(Path(node.data_dir) / DB_FILE, TEST_PARAMS)
    try:
        for block in blocks:
            chain.process_block(block, block.header.timestamp)
    finally:
        chain.close()


def pay(sender: Wallet, recipient: str, amount: int, *, fee: int = 0, nonce: int = 0) -> Tx:
    return make_tx(sender, recipient, amount, fee, nonce, TEST_PARAMS.network_id)


# --- talking to a node ------------------------------------------------------------------------
def ask(node: NodeProc, query: Callable[[Client], Awaitable[T]], timeout: float = 30.0) -> T:
    """Open a protocol client to ``node``, run ``query`` on it, close it."""

    async def go() -> T:
        async with node.client() as client:
            return await query(client)

    result: T = run(go(), timeout)
    return result


def hash_at(node: NodeProc, height: int) -> str | None:
    """Hex hash of ``node``'s best-chain block at ``height``, None if it has none yet."""

    async def query(c: Client) -> str | None:
        reply = await c.blocks(height, 1)
        return reply.blocks[0].hash.hex() if reply.blocks else None

    return ask(node, query)


def status(node: NodeProc) -> dict[str, Any]:
    st = node.status()
    assert st is not None, f"{node.name} does not answer /status"
    return st


def push_blocks(client: Client, blocks: Iterable[Block]) -> Awaitable[None]:
    """Send every block as NEW_BLOCK, then a round trip (all of them were processed once it returns)."""

    async def go() -> None:
        for i, block in enumerate(blocks):
            client.send(wire.NewBlock(block))
            if i % 64 == 63:
                await client.writer.drain()
        await client.ping()

    return go()


def peer_addrs(node: NodeProc) -> list[str]:
    return sorted(p["addr"] for p in status(node)["peers"])


async def with_node(
    tmp_path: Path,
    scenario: Callable[[Node], Awaitable[T]],
    *,
    blocks: Iterable[Block] = (),
    deadline_s: float | None = 30.0,
    setup: Callable[[Node], object] | None = None,
    params: NetworkParams = TEST_PARAMS,
    discover: bool = False,
    ban_loopback: bool = True,
    mine: bool = False,
    tunables: Tunables | None = None,
) -> T:
    """``scenario`` run against an in-process node (loopback, port 0, by default no discovery and
    banning loopback peers) whose chain has ``blocks``, within ``deadline_s`` (None: no deadline
    but the test's own); the node stopped after. ``setup`` is given the node before it starts
    (to stand in for one of its parts); the other keywords are the node's NodeConfig fields."""
    config = NodeConfig(
        data_dir=tmp_path / NODE_DIR,
        port=0,
        params=params,
        discover=discover,
        ban_loopback=ban_loopback,
        mine=mine,
        tunables=tunables or Tunables(),
    )
    node = Node(config)
    try:  # stopped even when the blocks, setup or start raise (stop() may follow a failed start)
        for block in blocks:
            node.chain.process_block(block, now_ms())
        if setup is not None:
            setup(node)
        await node.start()
        async with asyncio.timeout(deadline_s):
            return await scenario(node)
    finally:
        await node.stop()


@contextlib.asynccontextmanager
async def idle_node(
    tmp_path: Path, *, blocks: Iterable[Block] = (), params: NetworkParams = TEST_PARAMS
) -> AsyncIterator[Node]:
    """An in-process node that is never started (no sockets: a test calls its handlers or its
    HTTP app) whose chain has ``blocks``; closed after by ``Node.stop``, as a started one."""
    node = Node(NodeConfig(data_dir=tmp_path / NODE_DIR, port=0, params=params))
    try:
        for block in blocks:
            node.chain.process_block(block, now_ms())
        yield node
    finally:
        await node.stop()  # (a node never started: its threads, store and miner closed all the same)


@contextlib.asynccontextmanager
async def app_client(node: Node, files: Path) -> AsyncIterator[TestClient[Any, Any]]:
    """aiohttp's test client to ``node``'s HTTP app (no authentication; its files in ``files``),
    served on loopback; closed after."""
    client = TestClient(TestServer(make_app(node, Guard(AuthSettings(AuthMode.NONE), files))))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
