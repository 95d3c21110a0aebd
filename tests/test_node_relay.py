"""node relay: version 1 and version 2 nodes in one network agree, and each pair speaks what
both understand.

A line of 4 node processes, A - B - C - D, where C runs `--relay flood` (it speaks protocol
version 1: HELLO without relay features, every transaction and block in full) and the others
compact relay. A mines; 20 payments are submitted at D. They travel D -> C and C -> B as
NEW_TX (C is version 1), B -> A by announcement (INV_TX, GET_TXS, TXS); blocks travel A -> B
as CMPCT_BLOCK (B rebuilds them from its mempool), B -> C and C -> D as NEW_BLOCK. Every node
ends on the same tip with every payment confirmed, and the traffic counts in /status show that
no version 2 message ever crossed a link to or from C.
"""

from __future__ import annotations

import asyncio

from conftest import NodeFactory
from harness import NodeProc, run, wait_until
from node_helpers import FUNDED, MINER_ARGS, TEST_PARAMS, branch, next_block, pay, status, write_store
from p2p_peer import RawPeer
from test_node_gossip import LINE

from p2pchain import limits, relay, wire
from p2pchain.keys import Wallet

V2_TYPES = {
    t.TYPE
    for t in (
        wire.InvTx,
        wire.GetTxs,
        wire.Txs,
        wire.CmpctBlock,
        wire.GetBlockTxn,
        wire.BlockTxn,
        wire.SendCmpct,
        wire.InvBlock,
        wire.GetCmpct,
    )
}
PAYMENTS = 20


def traffic_types(node: NodeProc) -> tuple[set[str], set[str]]:
    """(types received, types sent) from the node's /status traffic counts."""
    traffic = status(node)["traffic"]
    received = {kind for kind, c in traffic.items() if c["messages_received"]}
    return received, {kind for kind, c in traffic.items() if c["messages_sent"]}


def test_a_line_of_version_1_and_version_2_nodes_agrees(nodes: NodeFactory) -> None:
    start = branch(TEST_PARAMS.genesis.header, PAYMENTS)  # FUNDED gets a coin a block
    line = [nodes(name) for name in ("a", "b", "c", "d")]
    for node in line:
        write_store(node, start)
    a, b, c, d = line
    d.start(LINE)
    c.start([*LINE, "--relay", "flood", "--peer", d.addr])
    b.start([*LINE, "--peer", c.addr])
    wait_until(lambda: len(status(b)["peers"]) == 1 and len(status(d)["peers"]) == 1, 20, "b-c and c-d links")
    recipient = Wallet.generate().address
    txs = [pay(FUNDED, recipient, 1, nonce=n) for n in range(PAYMENTS)]

    async def submit() -> None:
        async with d.client() as client:
            for tx in txs:
                result = await client.submit_tx(tx)
                assert result.accepted, result.error

    run(submit())
    wait_until(lambda: status(b)["mempool"] == PAYMENTS, 20, "the payments to reach b through c")
    a.start([*LINE, *MINER_ARGS, "--peer", b.addr])  # pushed its pool by announcement on connect
    wait_until(lambda: status(a)["mempool"] == PAYMENTS or status(a)["height"] > PAYMENTS, 20, "a to fetch them")

    def settled() -> bool:
        tips = {n.tip() for n in line}
        return len(tips) == 1 and all(status(n)["mempool"] == 0 for n in line) and a.height() > PAYMENTS + 1

    wait_until(settled, 60, "every node on one tip with every payment mined")

    async def balance() -> int:
        async with d.client() as client:
            return int((await client.account(recipient)).balance)

    assert run(balance()) == PAYMENTS
    for node in (a, b, d):
        assert status(node)["relay"]["mode"] == "compact"
    assert status(c)["relay"]["mode"] == "flood"
    c_in, c_out = traffic_types(c)
    assert not (c_in | c_out) & V2_TYPES, "a version 2 message crossed a link of the version 1 node"
    b_in, b_out = traffic_types(b)
    assert {"CMPCT_BLOCK", "GET_TXS"} <= b_in and {"INV_TX", "TXS"} <= b_out, (b_in, b_out)
    a_in, a_out = traffic_types(a)
    assert {"INV_TX", "TXS"} <= a_in and {"GET_TXS", "CMPCT_BLOCK"} <= a_out, (a_in, a_out)
    assert not {"NEW_TX", "NEW_BLOCK"} & (a_in | a_out), "a and b exchanged nothing in full"
    relay_b = status(b)["relay"]
    assert relay_b["cmpct_received"] >= 1 and relay_b["cmpct_rebuilt"] >= 1, relay_b


def withheld_then_sent_by_b(nodes: NodeFactory, from_client: bool) -> NodeProc:
    """V's three high-bandwidth peers (raw peers, its first connections) never push a block; B,
    a node connected to V after them, is not asked to push. A block reaches B (from a client,
    or from a listening peer that relays it) and then V; the oldest withholder then makes room
    for B, which delivered first. V is returned, stopped only by the factory."""
    start = branch(TEST_PARAMS.genesis.header, 2)
    b, v = nodes("b"), nodes("v")
    for node in (b, v):
        write_store(node, start)
    v.start(LINE)
    block = next_block(start[-1].header)

    async def scenario() -> None:
        withholders = [await RawPeer.connect(v.port) for _ in range(limits.RELAY_HB_PEERS)]
        try:
            for peer in withholders:
                await peer.handshake(relay=relay.FEATURES)
                assert (await peer.expect(wire.SendCmpct)).high_bandwidth
            await asyncio.to_thread(b.start, [*LINE, "--peer", v.addr])
            # the raw peers do not listen: /status counts them as clients, not peers
            await asyncio.to_thread(wait_until, lambda: len(status(v)["peers"]) == 1, 20, "b to connect to v")
            sender = await RawPeer.connect(b.port)
            try:
                # port 1: a listening node's (b never gets to dial it back within the test)
                await sender.handshake(port=0 if from_client else 1)
                sender.send(wire.NewBlock(block))
                await sender.drain()
                await asyncio.to_thread(wait_until, lambda: v.tip() == block.hash.hex(), 20, "v to get the block")
            finally:
                await sender.close()
            dropped = await withholders[0].expect(wire.SendCmpct)
            assert not dropped.high_bandwidth, "the oldest withholder made room for b"
        finally:
            for peer in withholders:
                await peer.close()

    run(scenario())
    return v


def test_a_node_whose_high_bandwidth_peers_withhold_blocks_still_gets_them(nodes: NodeFactory) -> None:
    """B got the block from a listening peer, so B relays it as any block: at once only to the
    peers that asked (not V). V gets it all the same: B announces it (INV_BLOCK) within
    RELAY_BLOCK_INV_INTERVAL_S and V fetches it (GET_CMPCT)."""
    v = withheld_then_sent_by_b(nodes, from_client=False)
    v_in, v_out = traffic_types(v)
    assert "INV_BLOCK" in v_in and "GET_CMPCT" in v_out and "CMPCT_BLOCK" in v_in, (v_in, v_out)
    assert status(v)["relay"]["blocks_fetched"] >= 1


def test_a_block_from_a_client_goes_to_every_peer_at_once(nodes: NodeFactory) -> None:
    """A client (no listening port: a miner or a wallet) is a block's first hop, as the node's
    own mining is: B pushes the client's block to V at once although V did not ask B to, so V
    neither waits for an announcement nor fetches it (a 20-node bench's p99 was 1 s without it)."""
    v = withheld_then_sent_by_b(nodes, from_client=True)
    v_in, v_out = traffic_types(v)
    assert "CMPCT_BLOCK" in v_in and "GET_CMPCT" not in v_out, (v_in, v_out)
    assert status(v)["relay"]["blocks_fetched"] == 0


def test_a_block_that_comes_between_the_parts_of_a_round_is_announced_in_the_next(nodes: NodeFactory) -> None:
    """A round of block announcements tells the peers that dialled the node, then (0.5 s later)
    the peers it dialled, of the block that was newest when the round began. A block that comes
    between the two parts is left for the next round, which the end of this one starts: W (a
    peer that dialled V, speaks cmpct-hb, never asked V to push) is told of it too, not only of
    the first. (Should the second block come after the round ended, a round starts for it
    anyway: the test then passes without telling the two apart; it cannot fail wrongly.)"""
    start = branch(TEST_PARAMS.genesis.header, 2)
    v = nodes("v")
    write_store(v, start)
    v.start(LINE)
    first = next_block(start[-1].header)
    second = next_block(first.header)

    async def scenario() -> None:
        watcher = await RawPeer.connect(v.port)
        sender = await RawPeer.connect(v.port)
        try:
            await watcher.handshake(relay=relay.FEATURES, port=1)  # listening (port 1: not dialled back in time)
            await sender.handshake(port=1)  # version 1: blocks in full, no announcements
            await watcher.sync_with_ping()
            sender.send(wire.NewBlock(first))
            await sender.drain()
            told = await watcher.expect(wire.InvBlock, timeout=20)  # the round's first part
            assert told.hashes == (first.hash,)
            sender.send(wire.NewBlock(second))  # before its second part, RELAY_BLOCK_INV_OUTBOUND_DELAY_S later
            await sender.drain()
            told = await watcher.expect(wire.InvBlock, timeout=20)
            assert told.hashes == (second.hash,)
        finally:
            await sender.close()
            await watcher.close()

    run(scenario())
