"""node sync: a node that lacks blocks downloads them from a peer, in few round trips, and only
what it lacks.

A fresh node syncs 1,500 blocks in at most 4 GET_CHAIN requests (500 blocks per CHAIN; the node
counts its requests in /status "sync_requests"). A node started late catches up with a node that
keeps mining, in a few requests too: the blocks gossiped meanwhile wait as orphans and do not
each start another. A node restarted on its data dir fetches only the blocks mined while it was
down. The chains are mined in the test process (tests/node_helpers.py) and written to the
nodes' data dirs before they start, or pushed as NEW_BLOCK over the protocol client.
"""

from __future__ import annotations

from conftest import NodeFactory
from harness import run, wait_until
from node_helpers import MAIN_LENGTH, MINER_ARGS, hash_at, main_chain, push_blocks, status, tip_hex, write_store

from p2pchain import limits


def test_fresh_node_syncs_1500_blocks_in_few_round_trips(nodes: NodeFactory) -> None:
    blocks = main_chain()
    source, fresh = nodes("source"), nodes("fresh")
    write_store(source, blocks)
    source.start()
    fresh.start(["--peer", source.addr])
    wait_until(lambda: fresh.tip() == tip_hex(blocks), 30, "the fresh node to sync 1,500 blocks")
    batches = -(-MAIN_LENGTH // limits.MAX_BLOCKS_PER_CHAIN)  # 3
    assert status(fresh)["sync_requests"] <= batches + 1
    assert status(fresh)["height"] == MAIN_LENGTH


def test_node_started_late_catches_up_with_a_mining_node(nodes: NodeFactory) -> None:
    miner, late = nodes("miner"), nodes("late")
    miner.start(MINER_ARGS)
    wait_until(lambda: miner.height() >= 1000, 30, "the miner to mine 1,000 blocks")
    late.start(["--peer", miner.addr])
    target = miner.height()
    wait_until(lambda: late.height() >= target + 50, 30, f"the late node to pass height {target + 50}")
    assert hash_at(late, target) == hash_at(miner, target)
    # Blocks gossiped during the sync wait as orphans: they must not each trigger a GET_CHAIN.
    assert status(late)["sync_requests"] <= 5


def test_restarted_node_fetches_only_what_it_missed(nodes: NodeFactory) -> None:
    blocks = main_chain()[:300]
    source, node = nodes("source"), nodes("restarted")
    write_store(source, blocks[:200])
    source.start()
    node.start(["--peer", source.addr])
    wait_until(lambda: node.tip() == tip_hex(blocks[:200]), 30, "the node to sync 200 blocks")
    assert node.stop() == 0

    async def extend() -> None:
        async with source.client() as client:
            await push_blocks(client, blocks[200:])

    run(extend())
    assert source.tip() == tip_hex(blocks)
    node.start(["--peer", source.addr])
    assert node.height() >= 200, "the restarted node lost its chain"
    wait_until(lambda: node.tip() == tip_hex(blocks), 30, "the restarted node to catch up")
    assert status(node)["sync_requests"] == 1, "100 missing blocks fit one CHAIN"
