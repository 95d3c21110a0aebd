"""p2p_node_id: copying an honest peer's node_id cuts nothing off (issue 12, finding 5).

HELLO's node_id is unauthenticated. The duplicate-connection rule trusted it: an attacker that
connected as a client with X's id made the victim close its real outbound link to X (for about
half of all id pairs) and refuse X's reconnections. Now an inbound connection never replaces an
outbound one, outbound connections are deduplicated by the address dialled, and node_id only
detects a connection to oneself.

In-process: a victim Node with an outbound link to an honest Node X, and an attacker (raw test
peer, its own loopback address) that claims X's node id. The ids are fixed so that the old rule
would have kept the attacker's connection.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from harness import until
from node_helpers import TEST_PARAMS, branch
from p2p_peer import RawPeer

from p2pchain import wire
from p2pchain.node import Node, NodeConfig, now_ms

DEADLINE_S = 15.0


def make_node(tmp_path: Path, name: str, node_id: bytes) -> Node:
    node = Node(NodeConfig(data_dir=tmp_path / name, port=0, params=TEST_PARAMS, discover=False))
    node.node_id = node.connmgr.node_id = node_id
    return node


def test_an_inbound_peer_claiming_an_outbound_peers_id_does_not_replace_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        victim = make_node(tmp_path, "victim", b"\xff" * 16)
        honest = make_node(tmp_path, "honest", b"\x01" * 16)  # smaller: the old rule kept the inbound link
        await victim.start()
        await honest.start()
        attacker = await RawPeer.connect(victim.port, "127.0.9.5")
        try:
            victim.connmgr.connect(f"127.0.0.1:{honest.port}")
            await until(lambda: any(not p.inbound for p in victim.connmgr.ready), "the victim's outbound link")
            (link,) = [p for p in victim.connmgr.ready if not p.inbound]
            await attacker.handshake(node_id=honest.node_id, port=honest.port)
            await attacker.sync_with_ping()  # the victim has handled the attacker's HELLO
            assert not link.closed.is_set(), f"the real link to the honest node was closed: {link.close_reason}"
            block = branch(TEST_PARAMS.genesis.header, 1)[0]
            honest.chain.process_block(block, now_ms())
            honest.broadcast(wire.NewBlock(block))
            await until(lambda: victim.chain.tip.hash == block.hash, "the honest node's block to reach the victim")
        finally:
            await attacker.close()
            await honest.stop()
            await victim.stop()

    asyncio.run(scenario())
