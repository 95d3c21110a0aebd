"""sigbatch: arriving transactions' signatures are checked in batches on threads and admitted in
arrival order; a single transaction on an idle node goes to a thread at once; a bad signature in
a batch is refused alone, with the answer (SUBMIT_TX) and the cost (NEW_TX: dropped, banned) it
has without batching.

The batcher's unit tests drive it with an executor whose futures the test completes by hand, so
what is asserted is when work is dispatched and in which order it is admitted, never a timing.
The node tests run a Node in this process (no sockets) with a stand-in for the peer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from node_helpers import FUNDED, TEST_PARAMS, branch, next_block, pay

from p2pchain import wire
from p2pchain.keys import Wallet
from p2pchain.ledger.tx import Tx
from p2pchain.node import VERIFY_THREADS, Node, NodeConfig
from p2pchain.peer import Misbehaving
from p2pchain.sigbatch import SignatureBatcher
from p2pchain.sync import now_ms

NET = TEST_PARAMS.network_id
TO = Wallet.generate().address


class HandExecutor(concurrent.futures.Executor):
    """Records each submitted batch; the test completes its future when it likes."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Tx], concurrent.futures.Future[list[bool]]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[list[bool]] = concurrent.futures.Future()
        self.calls.append((list(args[0]), future))
        return future

    def finish(self, i: int, verdicts: list[bool] | None = None) -> None:
        txs, future = self.calls[i]
        future.set_result(verdicts if verdicts is not None else [True] * len(txs))


def batcher(executor: concurrent.futures.Executor, *, inflight: int = 2, batch: int = 256) -> SignatureBatcher:
    return SignatureBatcher(executor, NET, max_inflight=inflight, max_batch=batch, max_pending=100, max_per_owner=100)


def txs(n: int) -> list[Tx]:
    return [pay(FUNDED, TO, 1, nonce=i) for i in range(n)]


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)  # ok: let completed futures' callbacks run (no time passes)


def test_a_single_transaction_on_an_idle_node_goes_to_a_thread_at_once() -> None:
    async def scenario() -> None:
        ex, admitted = HandExecutor(), []
        b = batcher(ex)
        (tx,) = txs(1)
        await b.put(tx, admitted.append, check=True)
        assert [len(batch) for batch, _ in ex.calls] == [1], "dispatched when put() returned, alone"
        ex.finish(0)
        await turns()
        assert admitted == [True]
        assert b.idle()

    asyncio.run(scenario())


def test_a_transaction_needing_no_check_on_an_idle_node_is_admitted_inside_put() -> None:
    async def scenario() -> None:
        ex, admitted = HandExecutor(), []
        await batcher(ex).put(txs(1)[0], admitted.append, check=False)
        assert admitted == [None]
        assert ex.calls == []

    asyncio.run(scenario())


def test_what_arrives_while_the_threads_are_busy_leaves_as_one_batch() -> None:
    async def scenario() -> None:
        ex, admitted = HandExecutor(), []
        b = batcher(ex, inflight=1)
        for tx in txs(6):
            await b.put(tx, admitted.append, check=True)
        assert [len(batch) for batch, _ in ex.calls] == [1], "the other five wait for the busy thread"
        ex.finish(0)
        await turns()
        assert [len(batch) for batch, _ in ex.calls] == [1, 5]
        ex.finish(1)
        await turns()
        assert admitted == [True] * 6

    asyncio.run(scenario())


def test_admitted_in_arrival_order_whatever_order_the_batches_finish_in() -> None:
    async def scenario() -> None:
        ex, admitted = HandExecutor(), []
        b = batcher(ex, inflight=2, batch=2)
        made = txs(7)
        checks = [True, False, True, True, False, True, True]
        for i, (tx, check) in enumerate(zip(made, checks, strict=True)):
            await b.put(tx, lambda verdict, i=i: admitted.append((i, verdict)), check=check)
        assert len(ex.calls) == 2  # two batches out, the rest waiting
        ex.finish(1)  # the later batch finishes first: nothing may be admitted before the earlier
        await turns()
        assert admitted == []
        ex.finish(0, [True])  # tx 0 (tx 1 needed no check)
        await turns()
        assert [i for i, _ in admitted] == [0, 1, 2]
        while len(admitted) < len(made):
            for i, (_, future) in enumerate(ex.calls):
                if not future.done():
                    ex.finish(i)
            await turns()
        assert [i for i, _ in admitted] == list(range(7))
        assert [v for _, v in admitted] == [True if c else None for c in checks]

    asyncio.run(scenario())


def test_put_waits_while_its_owner_has_too_many_pending_and_resumes_when_they_are_admitted() -> None:
    async def scenario() -> None:
        ex, admitted = HandExecutor(), []
        b = SignatureBatcher(ex, NET, max_inflight=1, max_batch=8, max_pending=100, max_per_owner=2)
        made = txs(3)
        await b.put(made[0], admitted.append, check=True, owner="p")
        await b.put(made[1], admitted.append, check=True, owner="p")
        third = asyncio.create_task(b.put(made[2], admitted.append, check=True, owner="p"))
        await turns()
        assert not third.done(), "a third pending transaction of one owner waits"
        await b.put(txs(1)[0], admitted.append, check=True, owner="q")  # another owner is not held up
        ex.finish(0)
        await turns()
        assert third.done()

    asyncio.run(scenario())


def test_a_bad_signature_in_a_batch_is_refused_alone() -> None:
    async def scenario() -> None:
        made = txs(12)
        made[5] = replace(made[5], signature=bytes(64))
        verdicts: list[bool | None] = []
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            b = batcher(ex, inflight=1)
            for tx in made:
                await b.put(tx, verdicts.append, check=True)
            async with asyncio.timeout(30):
                while not b.idle():
                    await asyncio.sleep(0.001)  # ok: real threads; bounded by the timeout
        assert verdicts == [i != 5 for i in range(12)]

    asyncio.run(scenario())


# --- the node ------------------------------------------------------------------------------------
class StandInPeer:
    """What Node's transaction handlers use of a Peer."""

    def __init__(self) -> None:
        self.sent: list[wire.Message] = []
        self.ban_reason: str | None = None
        self.dropped: str | None = None
        self.useful = False
        self.host = "127.0.0.9"
        self.closed = asyncio.Event()
        self.answered = asyncio.Event()
        self.expect = 0

    def send(self, msg: wire.Message) -> None:
        self.sent.append(msg)
        if len(self.sent) >= self.expect:
            self.answered.set()

    def misbehaved(self, e: Misbehaving) -> None:
        self.ban_reason = e.reason if e.ban else None
        self.dropped = e.reason
        self.closed.set()


def funded_node(tmp_path: Path, second: Wallet) -> Node:
    node = Node(NodeConfig(data_dir=tmp_path / "n", port=0, params=TEST_PARAMS))
    funding = branch(TEST_PARAMS.genesis.header, 12)  # FUNDED earns the rewards: more than the 10 coins it pays
    funding.append(next_block(funding[-1].header, reward_to=second.address))
    for block in funding:
        node.chain.process_block(block, now_ms())
    return node


def test_node_answers_a_batch_of_submit_tx_in_order_and_refuses_only_the_bad_signature(tmp_path: Path) -> None:
    second = Wallet.generate()
    good = txs(10)
    forged = replace(pay(second, TO, 1, nonce=0), signature=bytes(64))
    sent = [*good[:4], forged, *good[4:]]

    async def scenario() -> None:
        node = funded_node(tmp_path, second)
        peer = StandInPeer()
        peer.expect = len(sent)
        try:
            for i, tx in enumerate(sent):  # as the peer's reader: one after another, no answer awaited
                await node._on_submit_tx(peer, wire.SubmitTx(i, tx))  # type: ignore[arg-type]
            assert node.tx_batcher.batches <= VERIFY_THREADS + 1, "more than one transaction per batch"
            async with asyncio.timeout(30):
                await peer.answered.wait()
        finally:
            node.tx_batcher.close()
            node._verifier.shutdown()
            node.chain.close()
        answers = [m for m in peer.sent if isinstance(m, wire.SubmitResult)]
        assert [a.id for a in answers] == list(range(len(sent)))
        assert [a.accepted for a in answers] == [tx is not forged for tx in sent]
        assert answers[4].code == "tx-bad-signature", answers[4]
        assert peer.dropped is None, "a bad SUBMIT_TX is answered, not punished"
        assert all(tx.txid in node.mempool for tx in good)

    asyncio.run(scenario())


def test_node_drops_and_bans_the_sender_of_a_bad_signature_in_a_batch_of_new_tx(tmp_path: Path) -> None:
    second = Wallet.generate()
    good = txs(6)
    forged = replace(pay(second, TO, 1, nonce=0), signature=bytes(64))
    after = pay(second, TO, 2, nonce=0)  # sent after the bad one: not taken from a dropped peer

    async def scenario() -> None:
        node = funded_node(tmp_path, second)
        peer = StandInPeer()
        try:
            for tx in [*good, forged, after]:
                await node._on_new_tx(peer, wire.NewTx(tx))  # type: ignore[arg-type]
            async with asyncio.timeout(30):
                await peer.closed.wait()
                while not node.tx_batcher.idle():
                    await asyncio.sleep(0.001)  # ok: real threads; bounded by the timeout
        finally:
            node.tx_batcher.close()
            node._verifier.shutdown()
            node.chain.close()
        assert peer.ban_reason is not None and "tx-bad-signature" in peer.ban_reason, peer.ban_reason
        assert all(tx.txid in node.mempool for tx in good)
        assert forged.txid not in node.mempool and after.txid not in node.mempool

    asyncio.run(scenario())


@pytest.mark.parametrize("check", [True, False])
def test_a_closed_batcher_admits_nothing(check: bool) -> None:
    async def scenario() -> None:
        ex, admitted = HandExecutor(), []
        b = batcher(ex, inflight=1)
        made = txs(2)
        await b.put(made[0], admitted.append, check=True)
        await b.put(made[1], admitted.append, check=check)
        b.close()
        ex.finish(0)
        await turns()
        assert admitted == []

    asyncio.run(scenario())
