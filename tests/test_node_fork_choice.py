"""node fork choice: between two valid chains every node follows the one with more work; a chain
with more work but one invalid block is never adopted, and whoever sent it is dropped.

Two nodes with separately mined chains (written to their data dirs) connect and both end on
the tip of the longer one. An invalid branch (longer than the node's chain, one block deep in
it breaking a state rule: a coinbase that pays itself too much, or a payment of coins the
sender does not have) is built in the test process and pushed from a raw protocol client, as
NEW_BLOCK gossip or as the CHAIN answer to the node's own GET_CHAIN: the node keeps its tip,
closes that connection and still serves an honest client.
"""

from __future__ import annotations

import pytest
from conftest import NodeFactory
from harness import free_port, run, wait_until
from node_helpers import FUNDED, TEST_PARAMS, ask, branch, main_chain, next_block, pay, status, tip_hex, write_store
from p2p_peer import connect_client

from p2pchain import limits, wire
from p2pchain.client import Client, NodeUnavailable
from p2pchain.keys import Wallet
from p2pchain.ledger.block import Block
from p2pchain.ledger.tx import Tx

ATTACKER = "127.0.9.2"  # a loopback address of its own: its ban does not hit the honest 127.0.0.1


def test_node_with_more_work_wins(nodes: NodeFactory) -> None:
    genesis = TEST_PARAMS.genesis.header
    short = branch(genesis, 40, reward_to=Wallet.generate().address)
    long = branch(genesis, 60, reward_to=Wallet.generate().address, salt=1)
    a, b = nodes("short"), nodes("long")
    write_store(a, short)
    write_store(b, long)
    b.start()
    a.start(["--peer", b.addr])  # the shorter chain dials: the longer one learns nothing it wants
    wait_until(lambda: a.tip() == tip_hex(long), 30, "the shorter node to adopt the longer chain")
    assert b.tip() == tip_hex(long)
    assert status(a)["forks_resolved"] >= 1

    # And the other way round: a node with more work dials one that has less.
    c = nodes("longer")
    longer = [*long, *branch(long[-1].header, 5, reward_to=Wallet.generate().address)]
    write_store(c, longer)
    c.start(["--peer", a.addr])
    wait_until(lambda: a.tip() == b.tip() == tip_hex(longer), 30, "both nodes to adopt the longest chain")


def invalid_branch(kind: str, length: int) -> list[Block]:
    """``length`` blocks on genesis; the one at height 20 breaks a state rule (``kind``)."""
    good = branch(TEST_PARAMS.genesis.header, 19, salt=7)  # coinbases pay FUNDED 19 coins
    if kind == "bad-coinbase":
        bad = next_block(good[-1].header, overpay=1)
    else:  # overspend: signed and well formed, but FUNDED has only 19 coins on this branch
        bad = next_block(good[-1].header, [pay(FUNDED, Wallet.generate().address, 1000, nonce=0)])
    return [*good, bad, *branch(bad.header, length - 20)]


async def push_as_new_blocks(client: Client, blocks: list[Block]) -> None:
    """Gossip every block. Those with no more work than the node's tip are not asked for, so the
    node ignores them unchecked (issue 11); the first with more work is an orphan to it, and it
    asks the sender for the branch: answered as an attacker would."""
    for block in blocks:
        client.send(wire.NewBlock(block))
    await client.writer.drain()
    await serve_chain(client, blocks)


async def push_as_chain(client: Client, blocks: list[Block]) -> None:
    """Announce the tip (an orphan to the node), then answer the GET_CHAIN it sends back."""
    await client.send_and_drain(wire.NewBlock(blocks[-1]))
    await serve_chain(client, blocks)


async def serve_chain(client: Client, blocks: list[Block]) -> None:
    while not isinstance(msg := await client.gossip.get(), wire.GetChain):
        pass
    assert msg.locator[-1] == TEST_PARAMS.network_id
    assert len(blocks) <= limits.MAX_BLOCKS_PER_CHAIN
    await client.send_and_drain(wire.Chain(tuple(blocks), False))


@pytest.mark.parametrize(("kind", "how"), [("bad-coinbase", "new-block"), ("overspend", "chain")])
def test_longer_chain_with_an_invalid_block_does_not_win(nodes: NodeFactory, kind: str, how: str) -> None:
    honest = main_chain()[:30]
    node = nodes("node")
    write_store(node, honest)
    node.start()
    evil = invalid_branch(kind, 40)
    push = push_as_new_blocks if how == "new-block" else push_as_chain

    async def attack() -> bool:
        # Plays a listening node (a node syncs only from peers that serve a chain).
        client = await Client.connect("127.0.0.1", node.port, listen_port=free_port())
        try:
            await push(client, evil)
            try:  # the node drops us: this round trip fails
                await client.ping(timeout=20)
            except NodeUnavailable:
                return True
            return False
        finally:
            await client.close()

    assert run(attack(), 60), "the node kept the connection that sent an invalid chain"
    assert node.tip() == tip_hex(honest)
    assert status(node)["height"] == len(honest)
    wait_until(lambda: status(node)["peers"] == [], 10, "the attacker's connection to be gone")

    async def honest_client(client: Client) -> str:
        return str((await client.status())["tip"])

    assert ask(node, honest_client) == tip_hex(honest), "an honest client is no longer served"


def test_a_twin_seen_first_does_not_stop_the_honest_chain(nodes: NodeFactory) -> None:
    """Issue 11, finding 1, end to end: an attacker (its own loopback address) relays a copy of an
    honest block's header with a forged body, a 64-byte transaction (the shape of CVE-2017-12842),
    before the block itself. The node refuses the copy and bans its sender; then an honest client
    (127.0.0.1) relays the real block and its child: the node follows them, keeps that client and
    bans nobody else. (tests/test_rules.py builds the twins whose merkle root matched the old tree.)"""
    honest = list(main_chain()[:20])
    real = next_block(honest[-1].header, [pay(FUNDED, Wallet.generate().address, 1)])
    child = next_block(real.header)
    filler = Tx("x", "y", 1, 0, 0, bytes(32), bytes(2))  # decodes, and is 64 bytes long
    assert filler.size == 64
    twin = Block(real.header, (filler,))
    assert twin.hash == real.hash
    node = nodes("node", args=["--ban-loopback"])
    write_store(node, honest)
    node.start()

    async def scenario() -> None:
        attacker = await connect_client(node.port, ATTACKER)
        try:
            await attacker.send_and_drain(wire.NewBlock(twin))
            with pytest.raises(NodeUnavailable):  # dropped for an invalid block
                await attacker.ping(timeout=20)
        finally:
            await attacker.close()
        relay = await connect_client(node.port)
        try:
            for block in (real, child):
                await relay.send_and_drain(wire.NewBlock(block))
            await relay.ping(timeout=20)  # processed both, still connected
        finally:
            await relay.close()

    run(scenario(), 60)
    assert node.tip() == tip_hex([child])
    assert [ban["host"] for ban in status(node)["bans"]] == [ATTACKER]
