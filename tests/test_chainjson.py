"""chainjson: the tutorial's block JSON written directly is byte for byte json.dumps of the
shape, the cache of recent blocks' JSON keeps what the chain connects within its bounds, and a
whole-chain answer over HTTP (in-process, aiohttp's test server) is the same text whether its
blocks come from the cache, from the store, or from both."""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from pathlib import Path

import msgpack
import pytest
from ledger_helpers import GENESIS, PARAMS, block_on, branch, feed, mem_chain, pay, wallet
from node_helpers import app_client, idle_node

from p2pchain import limits
from p2pchain.chainjson import RecentBlocksJson, block_json, block_text, tx_json, tx_text
from p2pchain.http import RECENT_KEY
from p2pchain.ledger.block import Block
from p2pchain.ledger.tx import Tx


def test_block_text_is_json_dumps_of_the_tutorial_shape() -> None:
    chain = mem_chain()
    blocks = branch(GENESIS, 3)
    feed(chain, blocks)
    payment = pay(wallet(0), wallet(1), 7, fee=2)
    with_payment = block_on(blocks[-1], [payment])
    for block in [GENESIS, *blocks, with_payment]:
        assert block_text(block) == json.dumps(block_json(block))
        assert json.loads(block_text(block)) == block_json(block)


def test_tx_text_escapes_what_json_escapes() -> None:
    """Addresses are hex, but a transaction's strings may be any ASCII: those take json.dumps's path."""
    for text in ['a"b', "back\\slash", "tab\there", "\x01\x7f", "a b", "0", "", "x" * 40]:
        tx = Tx(text, text, 1, 0, 0, b"\x01", b"\x02")
        assert tx_text(tx) == json.dumps(tx_json(tx))


def _blocks(n: int) -> list[Block]:
    return branch(GENESIS, n)


def test_recent_keeps_connected_blocks_and_renders_each_once() -> None:
    recent = RecentBlocksJson(GENESIS, max_blocks=10, max_bytes=10**6)
    blocks = _blocks(3)
    recent.on_chain_update(blocks[:2], [])
    assert recent.texts([GENESIS.hash]) == [block_text(GENESIS)]  # never connected: held apart
    first = recent.texts([b.hash for b in blocks])
    assert first[:2] == [block_text(b) for b in blocks[:2]]
    assert first[2] is None
    again = recent.texts([blocks[0].hash])
    assert again[0] is first[0], "rendered twice"
    recent.on_chain_update([], blocks[:1])  # a block disconnected keeps its text: it never changes
    assert recent.texts([blocks[0].hash]) == [block_text(blocks[0])]


def test_recent_renders_at_once_while_an_answer_waits() -> None:
    recent = RecentBlocksJson(GENESIS)
    blocks = _blocks(4)
    recent.on_chain_update(blocks[:1], [])

    async def scenario() -> None:
        async with recent.waiting_answer():  # what is held is rendered at once, and what connects meanwhile
            assert recent._items[blocks[0].hash][0] == block_text(blocks[0])
            recent.on_chain_update(blocks[1:2], [])
            assert recent._items[blocks[1].hash][0] == block_text(blocks[1])
        recent.on_chain_update(blocks[2:3], [])
        assert recent._items[blocks[2].hash][0] is blocks[2], "rendered with no answer waiting"
        with pytest.raises(RuntimeError):
            async with recent.waiting_answer():
                raise RuntimeError("the wait failed")

    asyncio.run(scenario())
    assert recent.waiting == 0
    assert recent.texts([b.hash for b in blocks]) == [block_text(b) for b in blocks[:3]] + [None]


def test_recent_renders_what_it_holds_a_chunk_a_loop_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocks held when an answer starts waiting (up to HTTP_JSON_CACHE_BLOCKS) are rendered
    about HTTP_STREAM_CHUNK_BYTES of text a loop turn, so other work (peers) runs between: here a
    task started with the wait finds the cache part rendered (its count shrinks as it renders).
    A block that connects meanwhile is rendered, and one evicted meanwhile skipped."""
    blocks = _blocks(10)
    monkeypatch.setattr(limits, "HTTP_STREAM_CHUNK_BYTES", 2 * len(block_text(blocks[0])))
    recent = RecentBlocksJson(GENESIS, max_blocks=10, max_bytes=10**6)
    recent.on_chain_update(blocks, [])
    held_cost = recent.cost

    async def scenario() -> None:
        seen: list[int] = []

        async def other() -> None:
            seen.append(recent.cost)
            recent.on_chain_update(branch(blocks[-1], 3), [])  # evicts blocks[:3], the third not rendered yet

        async def answer() -> None:
            async with recent.waiting_answer():
                pass

        await asyncio.gather(answer(), other())
        assert held_cost > seen[0] > recent.cost

    asyncio.run(scenario())
    assert recent.texts([b.hash for b in blocks]) == [None] * 3 + [block_text(b) for b in blocks[3:]]


def test_recent_drops_the_oldest_beyond_its_bounds() -> None:
    blocks = _blocks(6)
    by_count = RecentBlocksJson(GENESIS, max_blocks=4, max_bytes=10**6)
    for block in blocks:
        by_count.on_chain_update([block], [])
    assert len(by_count) == 4
    assert [t is not None for t in by_count.texts([b.hash for b in blocks])] == [False] * 2 + [True] * 4
    for _ in range(20):
        by_count.on_chain_update(branch(blocks[-1], 1, salt=_), [])
    assert by_count.texts([GENESIS.hash]) == [block_text(GENESIS)]  # never evicted
    one = RecentBlocksJson(GENESIS, max_blocks=100, max_bytes=10**6)
    one.on_chain_update(blocks[:1], [])
    by_bytes = RecentBlocksJson(GENESIS, max_blocks=100, max_bytes=3 * one.cost)
    by_bytes.on_chain_update(blocks, [])
    assert len(by_bytes) == 3 and by_bytes.cost <= 3 * one.cost
    assert by_bytes.texts([blocks[-1].hash]) == [block_text(blocks[-1])]


def test_recent_counts_at_least_the_memory_its_blocks_hold() -> None:
    """HTTP_JSON_CACHE_BYTES bounds memory: what the cache counts covers what it holds (tracemalloc),
    and not more than three times over: blocks decoded as they came (40 coinbase-only ones and one
    of 200 payments), then their JSON text. Not tuned to one interpreter's exact object sizes: many
    entries, so that the containers' growth steps average out (with 6, the texts' count exceeded
    their memory by 0.4 % on CPython 3.11, by 105 bytes too little with one), and the decoder's own
    caches warm before the count. On CPython 3.11 the cache counts 1.6 x the blocks' memory and
    1.05 x the texts'. A count short of the memory fails (DECODED_BYTES_PER_BYTE 3 instead of 7,
    or HTTP_JSON_CACHE_ENTRY_BYTES 200 instead of 400), and so does one far above it
    (DECODED_BYTES_PER_BYTE 16)."""
    payer = wallet(1)
    made = [*_blocks(40), block_on(GENESIS, [pay(payer, wallet(2), 1, nonce=i) for i in range(200)])]
    frames = [msgpack.packb(block.to_wire()) for block in made]
    for frame in frames:  # the decoder's caches (a target's bits, ...), which are not the cache's
        Block.from_wire(msgpack.unpackb(frame))
    recent = RecentBlocksJson(GENESIS, max_blocks=100, max_bytes=10**9)
    block_text(made[0])  # (the difficulty's text, cached for the module, is not the cache's)
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        recent.on_chain_update([Block.from_wire(msgpack.unpackb(frame)) for frame in frames], [])
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
        assert 0 < held <= recent.cost <= 3 * held, (held, recent.cost)
        assert all(recent.texts([block.hash for block in made]))
        gc.collect()  # (what the blocks held in cycles is freed)
        rendered = tracemalloc.get_traced_memory()[0] - before
        assert 0 < rendered <= recent.cost <= 3 * rendered, (rendered, recent.cost)
    finally:
        tracemalloc.stop()


def test_recent_is_fed_by_the_chain() -> None:
    chain = mem_chain(PARAMS)
    recent = RecentBlocksJson(GENESIS)
    chain.subscribe(recent.on_chain_update)
    blocks = _blocks(2)
    feed(chain, blocks)
    assert recent.texts(list(chain.main)) == [block_text(b) for b in (GENESIS, *blocks)]  # genesis: held apart
    chain.unsubscribe(recent.on_chain_update)
    feed(chain, branch(blocks[-1], 1))
    assert len(recent) == 2


def test_whole_chain_answer_is_the_same_from_memory_and_from_the_store(tmp_path: Path) -> None:
    """/chain and a page of it, with the cache holding every block, only the last two, and none
    (a restarted node's): the same bytes as json.dumps of the tutorial's shape."""
    blocks = branch(GENESIS, 5)
    genesis = PARAMS.genesis

    async def answers(data_dir: Path, cached: int | None) -> list[bytes]:
        async with idle_node(data_dir, params=PARAMS) as node, app_client(node, data_dir) as client:
            if cached is not None:
                client.app[RECENT_KEY].max_blocks = cached
                feed(node.chain, blocks)  # through the app's listener
                assert len(client.app[RECENT_KEY]) == min(cached, len(blocks))
            bodies = []
            for path in ("/chain", "/chain?from=2&limit=3"):
                response = await client.get(path)
                assert response.status == 200
                bodies.append(await response.read())
            return bodies

    docs = [block_json(b) for b in (genesis, *blocks)]
    whole = json.dumps({"chain": docs, "length": 6}) + "\n"
    page = json.dumps({"chain": docs[2:5], "length": 6, "from": 2, "next": 5}) + "\n"
    expected = [whole.encode(), page.encode()]
    assert asyncio.run(answers(tmp_path / "a", 100)) == expected  # all from memory
    assert asyncio.run(answers(tmp_path / "a", None)) == expected  # that store reopened: all from the store
    assert asyncio.run(answers(tmp_path / "b", 2)) == expected  # the last two from memory, the rest stored
