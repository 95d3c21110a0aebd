"""sigbatch: arriving transactions' signatures are checked in batches on threads and admitted in
arrival order; a single transaction on an idle node goes to a thread at once; a bad signature in
a batch is refused alone, with the answer (SUBMIT_TX) and the cost (NEW_TX: dropped, banned) it
has without batching.

The batcher's unit tests run its real threads with a check that holds each batch until the test
releases it (``Gate``), so what is asserted is which batches the threads take and in which
order transactions are admitted, never a timing. The node tests run a Node in this process (no
sockets) with a stand-in for the peer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from harness import until
from node_helpers import FUNDED, TEST_PARAMS, branch, idle_node, next_block, pay

from p2pchain import limits, wire
from p2pchain.keys import Wallet
from p2pchain.ledger.tx import Tx
from p2pchain.node import Node
from p2pchain.peer import Misbehaving
from p2pchain.sigbatch import SignatureBatcher, signatures_ok

NET = TEST_PARAMS.network_id
TO = Wallet.generate().address


class Gate:
    """The batcher's check, run in its verifier threads: records each batch and holds it until
    the test calls ``finish`` (then answers the verdicts given, or all True)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Tx], threading.Event, list[list[bool] | None]]] = []
        self._lock = threading.Lock()

    def __call__(self, batch: list[Tx], network_id: bytes) -> list[bool]:
        release, answer = threading.Event(), [None]
        with self._lock:
            self.calls.append((list(batch), release, answer))  # type: ignore[arg-type]
        if not release.wait(30):
            raise TimeoutError("the test never released this batch")
        return answer[0] if answer[0] is not None else [True] * len(batch)

    def sizes(self) -> list[int]:
        return [len(batch) for batch, _, _ in self.calls]

    def finish(self, i: int, verdicts: list[bool] | None = None) -> None:
        _, release, answer = self.calls[i]
        answer[0] = verdicts
        release.set()

    def finish_all(self) -> None:
        for i in range(len(self.calls)):
            self.finish(i)


class Recording(concurrent.futures.ThreadPoolExecutor):
    """A thread pool that records what was submitted to it, as it is submitted."""

    def __init__(self, threads: int) -> None:
        super().__init__(threads)
        self.submitted: list[int] = []  # batch sizes handed to a thread by submit()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        self.submitted.append(len(args[0]))
        return super().submit(fn, *args, **kwargs)


@contextmanager
def gated(
    *, inflight: int = 2, batch: int = 256, per_owner: int = 100
) -> Iterator[tuple[SignatureBatcher, Gate, Recording]]:
    gate, ex = Gate(), Recording(inflight)
    b = SignatureBatcher(
        ex, NET, max_inflight=inflight, max_batch=batch, max_pending=100, max_per_owner=per_owner, check=gate
    )
    try:
        yield b, gate, ex
    finally:
        b.close()
        gate.finish_all()  # nothing is left holding a thread
        ex.shutdown()


def txs(n: int) -> list[Tx]:
    return [pay(FUNDED, TO, 1, nonce=i) for i in range(n)]


async def batches(gate: Gate, n: int) -> None:
    await until(lambda: len(gate.calls) >= n, f"{n} batches taken by the threads", timeout=30)


def test_a_single_transaction_on_an_idle_node_goes_to_a_thread_at_once() -> None:
    async def scenario() -> None:
        admitted: list[bool | None] = []
        with gated() as (b, gate, ex):
            (tx,) = txs(1)
            await b.put(tx, admitted.append, check=True)
            assert ex.submitted == [1], "handed to a thread when put() returned, alone"
            await batches(gate, 1)
            gate.finish(0)
            await until(lambda: admitted == [True], "the transaction admitted")
            assert b.idle()

    asyncio.run(scenario())


def test_a_transaction_needing_no_check_on_an_idle_node_is_admitted_inside_put() -> None:
    async def scenario() -> None:
        admitted: list[bool | None] = []
        with gated() as (b, gate, ex):
            await b.put(txs(1)[0], admitted.append, check=False)
            assert admitted == [None]
            assert ex.submitted == [] and gate.calls == []

    asyncio.run(scenario())


def test_what_arrives_while_the_threads_are_busy_is_taken_as_one_batch_by_the_first_thread_free() -> None:
    async def scenario() -> None:
        admitted: list[bool | None] = []
        with gated(inflight=1) as (b, gate, ex):
            for tx in txs(6):
                await b.put(tx, admitted.append, check=True)
            await batches(gate, 1)
            assert gate.sizes() == [1], "the other five wait for the busy thread"
            gate.finish(0)
            await batches(gate, 2)
            assert gate.sizes() == [1, 5]
            assert ex.submitted == [1], "the thread took them itself: nothing waited for the loop to hand them over"
            gate.finish(1)
            await until(lambda: len(admitted) == 6, "six admitted")
            assert admitted == [True] * 6

    asyncio.run(scenario())


def test_a_thread_free_takes_its_share_of_the_queue_so_the_end_of_a_burst_is_checked_on_every_thread() -> None:
    """Taking the whole queue, the first thread free would check the end of a burst alone while
    the other, finding the queue empty, stopped. A share is at least limits.TX_VERIFY_SHARE_MIN."""
    queued = 2 * limits.TX_VERIFY_SHARE_MIN + 16

    async def scenario() -> None:
        admitted: list[bool | None] = []
        with gated(inflight=2) as (b, gate, ex):  # (room for 100 pending)
            for tx in txs(2 + queued):
                await b.put(tx, admitted.append, check=True)
            await batches(gate, 2)
            assert gate.sizes() == [1, 1], "one each to the two idle threads; the rest wait"
            gate.finish(0)
            await batches(gate, 3)
            assert gate.sizes() == [1, 1, queued // 2], "half of the queue: the other half is the busy thread's"
            gate.finish(1)
            await batches(gate, 4)
            assert gate.sizes() == [1, 1, queued // 2, limits.TX_VERIFY_SHARE_MIN], (
                "half of what is left, but not less than limits.TX_VERIFY_SHARE_MIN"
            )
            await until(lambda: gate.finish_all() or len(admitted) == 2 + queued, "all admitted")
            assert gate.sizes() == [
                1,
                1,
                queued // 2,
                limits.TX_VERIFY_SHARE_MIN,
                queued // 2 - limits.TX_VERIFY_SHARE_MIN,
            ]
            assert ex.submitted == [1, 1], "the threads took them themselves"
            assert admitted == [True] * (2 + queued)

    asyncio.run(scenario())


def test_a_thread_goes_back_to_the_executors_queue_after_a_run_of_batches() -> None:
    """So that a block's signature checks, queued on the same threads, wait for a few batches
    at most, not for the end of a flood of transactions."""

    async def scenario() -> None:
        admitted: list[bool | None] = []
        with gated(inflight=1, batch=1) as (b, gate, ex):
            for tx in txs(limits.TX_VERIFY_RUN_BATCHES + 2):
                await b.put(tx, admitted.append, check=True)
            for i in range(limits.TX_VERIFY_RUN_BATCHES + 2):
                await batches(gate, i + 1)
                gate.finish(i)
            await until(lambda: len(admitted) == limits.TX_VERIFY_RUN_BATCHES + 2, "all admitted")
            assert ex.submitted == [1, 1], (
                "one submit by put(), one by the thread after limits.TX_VERIFY_RUN_BATCHES batches"
            )

    asyncio.run(scenario())


def test_admitted_in_arrival_order_whatever_order_the_batches_finish_in() -> None:
    async def scenario() -> None:
        admitted: list[tuple[int, bool | None]] = []
        with gated(inflight=2, batch=2) as (b, gate, _):
            made = txs(7)
            checks = [True, False, True, True, False, True, True]
            for i, (tx, check) in enumerate(zip(made, checks, strict=True)):
                await b.put(tx, lambda verdict, i=i: admitted.append((i, verdict)), check=check)
            await batches(gate, 2)
            assert gate.sizes() == [1, 1], "tx 0 and tx 2 each alone, each to an idle thread"
            gate.finish(1)  # the later batch finishes first: nothing may be admitted before the earlier
            await batches(gate, 3)  # its thread took the next waiting batch (and sent its wake-up) meanwhile
            await until(lambda: not b._wake_sent, "the loop to handle that wake-up")
            assert admitted == []
            assert gate.sizes() == [1, 1, 2], "txs 3 and 5 (4 needs no check)"
            gate.finish(0, [True])  # tx 0 (tx 1 needed no check): 0 to 2 are in; 3 is being checked
            await until(lambda: len(admitted) == 3, "txs 0 to 2 admitted")
            await until(lambda: gate.finish_all() or len(admitted) == len(made), "all admitted")
            assert [i for i, _ in admitted] == list(range(7))
            assert [v for _, v in admitted] == [True if c else None for c in checks]

    asyncio.run(scenario())


def test_put_waits_while_its_owner_has_too_many_pending_and_resumes_when_they_are_admitted() -> None:
    async def scenario() -> None:
        admitted: list[bool | None] = []
        with gated(inflight=1, batch=8, per_owner=2) as (b, gate, _):
            made = txs(3)
            await b.put(made[0], admitted.append, check=True, owner="p")
            await b.put(made[1], admitted.append, check=True, owner="p")
            third = asyncio.create_task(b.put(made[2], admitted.append, check=True, owner="p"))
            await asyncio.sleep(0)  # ok: one turn for the task to reach its wait
            assert not third.done(), "a third pending transaction of one owner waits"
            await b.put(txs(1)[0], admitted.append, check=True, owner="q")  # another owner is not held up
            await batches(gate, 1)
            gate.finish(0)
            await until(third.done, "the third put to go in")

    asyncio.run(scenario())


def test_a_run_queued_without_waiting_goes_to_the_threads_in_shares_at_its_hand_off() -> None:
    """A peer's reader queues a run of transactions read at once (put_nowait) and hands them to
    the threads once, at the end of the run (hand_off): each idle thread takes its share then,
    so the first transaction of a burst is checked within the same turn of the loop."""
    run = 2 * limits.TX_VERIFY_SHARE_MIN + 10

    async def scenario() -> None:
        admitted: list[int] = []
        with gated(inflight=2) as (b, gate, ex):
            for i, tx in enumerate(txs(run)):
                assert b.put_nowait(tx, lambda verdict, i=i: admitted.append(i), check=i != 3)
            assert ex.submitted == [], "nothing reaches a thread before the hand-off"
            b.hand_off()
            assert ex.submitted == [run // 2, run - 1 - run // 2], "a share to each idle thread at once"
            await batches(gate, 2)
            gate.finish_all()
            await until(lambda: len(admitted) == run, "all admitted")
            assert admitted == list(range(run))

    asyncio.run(scenario())


def test_put_nowait_refuses_past_its_owners_bound_and_room_waits_until_one_is_admitted() -> None:
    async def scenario() -> None:
        admitted: list[bool | None] = []
        with gated(inflight=1, batch=8, per_owner=2) as (b, gate, _):
            made = txs(3)
            assert b.put_nowait(made[0], admitted.append, check=True, owner="p")
            assert b.put_nowait(made[1], admitted.append, check=True, owner="p")
            assert not b.put_nowait(made[2], admitted.append, check=True, owner="p"), "a third one of one owner"
            assert b.pending == 2, "the refused one is not queued"
            assert b.put_nowait(txs(1)[0], admitted.append, check=False, owner="q"), "another owner is not held up"
            b.hand_off()
            room = asyncio.create_task(b.room("p"))
            await asyncio.sleep(0)  # ok: one turn for the task to reach its wait
            assert not room.done()
            await batches(gate, 1)
            gate.finish(0)
            await until(room.done, "room for p once its first two are admitted")
            assert b.put_nowait(made[2], admitted.append, check=True, owner="p")
            b.hand_off()
            await until(lambda: gate.finish_all() or len(admitted) == 4, "all admitted")

    asyncio.run(scenario())


def test_a_stream_of_puts_against_busy_threads_is_all_admitted_in_order() -> None:
    """put() hands work to the threads without a lock while they take and finish batches: many
    small batches on two threads, with puts arriving in between, leave nothing behind and keep
    the order (a transaction stranded in the queue would leave the batcher never idle)."""
    made = txs(5)
    count = 3000

    def check(batch: list[Tx], network_id: bytes) -> list[bool]:
        return [True] * len(batch)

    async def scenario() -> None:
        admitted: list[int] = []
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            b = SignatureBatcher(ex, NET, max_inflight=2, max_batch=3, max_pending=64, max_per_owner=64, check=check)
            for i in range(count):
                await b.put(made[i % 5], lambda verdict, i=i: admitted.append(i), check=i % 7 != 0)
                if i % 50 == 0:
                    await asyncio.sleep(0)  # ok: let the loop drain now and then, as a reader's turn ends
            await until(b.idle, "every transaction admitted", timeout=30)
        assert admitted == list(range(count))

    asyncio.run(scenario())


def test_a_check_that_fails_leaves_the_signatures_to_the_mempool() -> None:
    """A bug in the check (an exception) must not refuse good transactions, nor ban their
    sender: the verdict is None (not checked), and the mempool's add() checks them itself."""

    def broken(batch: list[Tx], network_id: bytes) -> list[bool]:
        raise RuntimeError("a bug")

    async def scenario() -> None:
        admitted: list[bool | None] = []
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            b = SignatureBatcher(ex, NET, max_inflight=1, max_batch=8, max_pending=10, max_per_owner=10, check=broken)
            for tx in txs(3):
                await b.put(tx, admitted.append, check=True)
            await until(b.idle, "the batch admitted")
        assert admitted == [None] * 3

    asyncio.run(scenario())


def test_a_bad_signature_in_a_batch_is_refused_alone() -> None:
    async def scenario() -> None:
        made = txs(12)
        made[5] = replace(made[5], signature=bytes(64))
        verdicts: list[bool | None] = []
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            b = SignatureBatcher(ex, NET, max_inflight=1, max_batch=256, max_pending=100, max_per_owner=100)
            assert b._check is signatures_ok  # the real check
            for tx in made:
                await b.put(tx, verdicts.append, check=True)
            await until(b.idle, "every transaction admitted", timeout=30)
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


def funded_node(tmp_path: Path, second: Wallet) -> AbstractAsyncContextManager[Node]:
    funding = branch(TEST_PARAMS.genesis.header, 12)  # FUNDED earns the rewards: more than the 10 coins it pays
    funding.append(next_block(funding[-1].header, reward_to=second.address))
    return idle_node(tmp_path, blocks=funding)


def test_node_answers_a_batch_of_submit_tx_in_order_and_refuses_only_the_bad_signature(tmp_path: Path) -> None:
    second = Wallet.generate()
    good = txs(10)
    forged = replace(pay(second, TO, 1, nonce=0), signature=bytes(64))
    sent = [*good[:4], forged, *good[4:]]

    async def scenario() -> None:
        peer = StandInPeer()
        peer.expect = len(sent)
        async with funded_node(tmp_path, second) as node:
            for i, tx in enumerate(sent):  # as the peer's reader: one after another, no answer awaited
                await node._on_submit_tx(peer, wire.SubmitTx(i, tx))  # type: ignore[arg-type]
            async with asyncio.timeout(30):
                await peer.answered.wait()
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
        peer = StandInPeer()
        async with funded_node(tmp_path, second) as node:
            for tx in [*good, forged, after]:
                await node._on_new_tx(peer, wire.NewTx(tx))  # type: ignore[arg-type]
            async with asyncio.timeout(30):
                await peer.closed.wait()
                while not node.tx_batcher.idle():
                    await asyncio.sleep(0.001)  # ok: real threads; bounded by the timeout
        assert peer.ban_reason is not None and "tx-bad-signature" in peer.ban_reason, peer.ban_reason
        assert all(tx.txid in node.mempool for tx in good)
        assert forged.txid not in node.mempool and after.txid not in node.mempool

    asyncio.run(scenario())


@pytest.mark.parametrize("check", [True, False])
def test_a_closed_batcher_admits_nothing(check: bool) -> None:
    async def scenario() -> None:
        admitted: list[bool | None] = []
        with gated(inflight=1) as (b, gate, _):
            made = txs(2)
            await b.put(made[0], admitted.append, check=True)
            await b.put(made[1], admitted.append, check=check)
            await batches(gate, 1)
            b.close()
            gate.finish(0)
            await until(lambda: not b._threads and not b._wake_sent, "the thread to stop, its wake-up handled")
            assert admitted == []

    asyncio.run(scenario())
