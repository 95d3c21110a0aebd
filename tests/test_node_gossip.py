"""node gossip: new blocks and transactions are pushed to every node, nobody has to ask.

A block mined at one end of a line of 4 node processes reaches the other end (there is no
/nodes/resolve to call: the test only reads /status and the protocol client). A transaction
sent to the far end of a line reaches every mempool, and once a miner has it, a block on
every node. Real `python -m p2pchain` processes (tests/harness.py) with --no-discover, so that
a line stays a line and each block crosses every hop.
"""

from __future__ import annotations

from dataclasses import replace

from conftest import NodeFactory
from harness import NodeProc, wait_until
from node_helpers import FUNDED, MINER_ARGS, ask, hash_at, main_chain, pay, peer_addrs, status, write_store

from p2pchain.client import Client
from p2pchain.errors import MempoolCode, RuleCode
from p2pchain.keys import Wallet
from p2pchain.wire import TxInfo

LINE = ["--no-discover"]


def start_line(nodes: list[NodeProc], first_args: list[str]) -> None:
    """nodes[0] - nodes[1] - ... : each node dials the next one toward the far end, which starts
    first; nodes[0] gets ``first_args`` too. Returns once every link is up."""
    nodes[-1].start(LINE)
    for i in range(len(nodes) - 2, -1, -1):
        nodes[i].start([*LINE, *(first_args if i == 0 else []), "--peer", nodes[i + 1].addr])
    for i, node in enumerate(nodes):
        want = sorted(n.addr for n in nodes[max(i - 1, 0) : i + 2] if n is not node)

        def linked(node: NodeProc = node, want: list[str] = want) -> bool:
            return peer_addrs(node) == want

        wait_until(linked, 20, f"{node.name} to have its neighbours")


def test_block_mined_at_one_end_reaches_the_other_end_of_a_line(nodes: NodeFactory) -> None:
    line = [nodes(f"node{i}") for i in range(4)]
    start_line(line, MINER_ARGS)
    far = line[-1]
    wait_until(lambda: far.height() >= 30, 30, "blocks mined on node0 to reach node3")
    expected = hash_at(line[0], 30)
    assert expected is not None
    for node in line[1:]:
        assert hash_at(node, 30) == expected, f"{node.name} has another block at height 30"
    assert status(far)["blocks_received"] > 0
    assert peer_addrs(far) == [line[2].addr], "node3 may be reached only through the line"
    for node in line[1:]:
        assert status(node)["blocks_mined"] == 0


def tx_info(node: NodeProc, txid: bytes) -> TxInfo:
    async def query(c: Client) -> TxInfo:
        return await c.tx_info(txid)

    return ask(node, query)


def test_tx_reaches_every_mempool_then_a_block_on_every_node(nodes: NodeFactory) -> None:
    wallet = Wallet.generate()
    n0, n1, n2 = nodes("node0"), nodes("node1"), nodes("node2")
    # The miner pays a wallet of this test, then stops mining so that the tx waits in mempools.
    n0.start([*MINER_ARGS, "--reward-to", wallet.address])

    def balance() -> int:
        async def query(c: Client) -> int:
            return (await c.account(wallet.address)).balance

        return ask(n0, query)

    wait_until(lambda: balance() >= 3, 30, "the miner to pay the test wallet 3 coins")
    assert n0.stop() == 0
    n0.start()
    n1.start(["--peer", n0.addr])
    n2.start(["--peer", n1.addr])
    tip = status(n0)["tip"]
    wait_until(lambda: status(n1)["tip"] == tip and status(n2)["tip"] == tip, 30, "node1 and node2 to sync")

    tx = pay(wallet, Wallet.generate().address, 2, fee=1)
    result = ask(n2, lambda c: c.submit_tx(tx))
    assert result.accepted, result.code
    line = [n0, n1, n2]
    wait_until(
        lambda: all(status(n)["mempool"] == 1 and tx_info(n, tx.txid).status == "mempool" for n in line),
        20,
        "the transaction in every mempool",
    )

    # The miner restarts mining with an empty mempool (it lives in memory); the wallet resends
    # the tx, unless node1 has pushed its pooled txs to the reconnected node (which may even
    # have mined it already: a stale nonce).
    assert n0.stop() == 0
    n0.start([*MINER_ARGS, "--peer", n1.addr])
    result = ask(n0, lambda c: c.submit_tx(tx))
    known = (MempoolCode.DUPLICATE.value, MempoolCode.STALE_NONCE.value)
    assert result.accepted or result.code in known, result.code
    wait_until(
        lambda: all(tx_info(n, tx.txid).status == "confirmed" for n in line),
        30,
        "the transaction in a block everywhere",
    )
    blocks = {tx_info(n, tx.txid).block for n in line}
    assert len(blocks) == 1, "the nodes confirm the transaction in different blocks"
    assert all(status(n)["mempool"] == 0 for n in line)


def test_tx_refused_for_a_nonce_gap_is_taken_once_the_gap_is_filled(nodes: NodeFactory) -> None:
    """Issue 11, finding 3: gossip delivers nonce n+1 before nonce n. The node refuses n+1 for
    the gap but must not remember that refusal: n+1 is pooled once n is (it waited in the relay's
    extra pool, so sending it again finds it already pooled). Only refusals that nothing can cure
    (a bad signature) are remembered and answered without a check."""
    node = nodes("node")
    write_store(node, main_chain()[:5])  # FUNDED has 5 coins
    node.start()
    to = Wallet.generate().address
    first, second = pay(FUNDED, to, 1, nonce=0), pay(FUNDED, to, 1, nonce=1)
    forged = replace(pay(FUNDED, to, 2, nonce=2), amount=3)  # signature no longer matches

    async def scenario(c: Client) -> list[str | None]:
        codes = []
        for tx in (second, first, second, forged, forged):
            result = await c.submit_tx(tx)
            codes.append(None if result.accepted else result.code)
        return codes

    gap, dup = MempoolCode.NONCE_GAP.value, MempoolCode.DUPLICATE.value
    assert ask(node, scenario) == [gap, None, dup, RuleCode.TX_BAD_SIGNATURE.value, dup]
    assert status(node)["mempool"] == 2
