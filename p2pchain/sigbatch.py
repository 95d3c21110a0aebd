"""Signatures of arriving transactions checked in batches on the verifier threads, the
transactions handed back in the order they arrived.

Ed25519 releases the GIL, so while the event loop reads, decodes and admits transactions, the
threads check the signatures of the next ones: every core works. Batching is driven by the
threads, not by a clock: a transaction that arrives while fewer than ``max_inflight`` threads
are checking goes to a thread at once (a single transaction on an idle node waits for nothing;
a run of them read from a peer at once is queued with ``put_nowait`` and handed over at its end,
in the same turn of the loop, the idle threads sharing it); what arrives while every thread is
busy waits in a queue, and a thread that finishes a batch
takes the next one from that queue itself, before the event loop has even heard of the
finished one: a thread never waits for the loop, which may be busy admitting the last batch
(that wait was a sixth of each thread's time at full load). A thread takes its share of the
queue (an equal part for each thread, at least ``TX_VERIFY_SHARE_MIN``, up to ``max_batch``):
taking all of it, the first thread free took the end of a burst alone while the other, finding
the queue empty, stopped (a batch's length, a ninth of a 3,000-transaction burst, with one core
idle). After ``TX_VERIFY_RUN_BATCHES`` batches a thread goes back to the end of the executor's
queue, so that a block's signature checks on the same threads wait for at most that many batches.

Each transaction's ``admit`` callback is called on the event loop in arrival order, with the
signature's verdict: True (it verifies), False (it does not) or None (not checked: the caller
said no check was needed, for a transaction that is already known or will be refused before
its signature counts; or the check itself failed, so the mempool checks it again). A thread
wakes the loop once per finished batch at most, not per transaction.

The queue is bounded: ``put`` waits (and so stops its peer's reader: TCP pushes back) while
``max_pending`` transactions are queued or being checked, or ``max_per_owner`` of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable

from p2pchain import limits
from p2pchain.ledger import rules
from p2pchain.ledger.tx import Tx
from p2pchain.pulse import Pulse
from p2pchain.record import record

log = logging.getLogger(__name__)

Admit = Callable[[bool | None], None]  # called with the verdict, on the event loop, in arrival order
Check = Callable[[list[Tx], bytes], list[bool]]  # a batch's verdicts, in a verifier thread


def signatures_ok(txs: list[Tx], network_id: bytes) -> list[bool]:
    """Runs in a verifier thread."""
    return [rules.signature_ok(tx, network_id) for tx in txs]


@record(frozen=False, slots=True)
class _Item:
    tx: Tx
    admit: Admit
    owner: Hashable
    done: bool = False  # its verdict is in (set by a verifier thread, or at once when not checked)
    verdict: bool | None = None


class SignatureBatcher:
    def __init__(
        self,
        executor: concurrent.futures.Executor,
        network_id: bytes,
        *,
        max_inflight: int,
        max_batch: int,
        max_pending: int,
        max_per_owner: int,
        check: Check = signatures_ok,
    ) -> None:
        self.executor = executor
        self.network_id = network_id
        self.max_inflight = max_inflight
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.max_per_owner = max_per_owner
        self._check = check
        self._order: deque[_Item] = deque()  # every item not yet admitted, in arrival order (the loop's)
        self._new: list[_Item] = []  # queued by put_nowait for a check, not yet handed to the threads
        # Shared with the threads, under _lock: the items to check, the threads checking, and
        # whether a wake-up of the loop is already on its way.
        self._lock = threading.Lock()
        self._todo: deque[_Item] = deque()
        self._threads = 0
        self._wake_sent = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._per_owner: dict[Hashable, int] = {}
        self._space = Pulse()
        self._closed = False
        self.batches = 0  # batches checked (tests, stats)
        self.checked = 0  # signatures checked

    @property
    def pending(self) -> int:
        return len(self._order)

    def idle(self) -> bool:
        return not self._order

    def close(self) -> None:
        """Admit nothing more (the node is stopping): queued transactions are dropped, and the
        threads stop after the batch they are checking."""
        self._closed = True
        with self._lock:
            self._todo.clear()
        self._new.clear()
        self._order.clear()
        self._per_owner.clear()
        self._space.pulse()

    async def put(self, tx: Tx, admit: Admit, *, check: bool, owner: Hashable = None) -> None:
        """Queue ``tx``; ``admit(verdict)`` follows once every earlier transaction is admitted.
        A transaction that needs no check on an idle batcher is admitted before this returns."""
        if not self._has_room(owner):
            await self.room(owner)
        self.put_nowait(tx, admit, check=check, owner=owner)
        self.hand_off()

    async def room(self, owner: Hashable) -> None:
        """Until ``owner`` may queue one more transaction (or the batcher is closed)."""
        if not self._has_room(owner):
            await self._space.wait_for(lambda: self._has_room(owner), timeout=None)

    def put_nowait(self, tx: Tx, admit: Admit, *, check: bool, owner: Hashable = None) -> bool:
        """``put`` without waiting: False (nothing queued) when there is no room for ``owner``
        now. What it queues for a check reaches the threads at the next ``hand_off``, which the
        caller makes before it next waits (a run of transactions read at once: one hand-off)."""
        if self._closed:
            return True
        if not self._has_room(owner):
            return False
        if not check and not self._order:
            admit(None)  # nothing ahead of it: no queue, no thread
            return True
        item = _Item(tx, admit, owner)
        self._order.append(item)
        self._per_owner[owner] = self._per_owner.get(owner, 0) + 1
        if check:
            self._new.append(item)
        else:
            item.done = True  # admitted as soon as what is ahead of it is
        return True

    def hand_off(self) -> None:
        """What ``put_nowait`` queued for a check goes to the threads: to a free thread at once
        (at most ``max_inflight`` busy), else a busy thread takes it when it ends its batch."""
        new = self._new
        if not new:
            return
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        starts: list[list[_Item]] = []
        with self._lock:
            self._todo.extend(new)
            new.clear()
            idle = self.max_inflight - self._threads
            while self._todo and idle > 0:  # the queue shared among the idle threads
                starts.append(self._take(idle))
                self._threads += 1
                idle -= 1
        for batch in starts:
            self.executor.submit(self._run, batch)

    def _has_room(self, owner: Hashable) -> bool:
        if self._closed:
            return True
        return len(self._order) < self.max_pending and self._per_owner.get(owner, 0) < self.max_per_owner

    def _take(self, parts: int = 0) -> list[_Item]:
        """The next batch from the queue (under _lock): a thread's share of it (an equal part for
        each of the ``max_inflight`` threads, or of ``parts``, at least TX_VERIFY_SHARE_MIN, up
        to ``max_batch``), so that the last batches of a burst are checked side by side, not one
        thread's full batch after the other is done."""
        todo = self._todo
        n = min(self.max_batch, max(-(-len(todo) // (parts or self.max_inflight)), limits.TX_VERIFY_SHARE_MIN))
        if n >= len(todo):
            batch = list(todo)
            todo.clear()
            return batch
        return [todo.popleft() for _ in range(n)]

    def _run(self, batch: list[_Item]) -> None:
        """A verifier thread: check ``batch``, then the batches queued meanwhile, up to
        TX_VERIFY_RUN_BATCHES in all; wake the loop after each."""
        last = limits.TX_VERIFY_RUN_BATCHES - 1
        for run in range(last + 1):
            verdicts: list[bool | None]
            try:
                verdicts = list(self._check([item.tx for item in batch], self.network_id))
                if len(verdicts) != len(batch):
                    raise ValueError(f"{len(verdicts)} verdicts for {len(batch)} signatures")
            except Exception:  # a bug: the mempool checks these signatures itself, on the loop
                log.exception("checking %d signatures failed", len(batch))
                verdicts = [None] * len(batch)
            for item, verdict in zip(batch, verdicts, strict=True):
                item.verdict = verdict
                item.done = True
            with self._lock:
                self.batches += 1
                self.checked += len(batch)
                wake, self._wake_sent = not self._wake_sent, True
                batch = self._take() if not self._closed else []
                if not batch:
                    self._threads -= 1
                elif run == last:  # to the back of the executor's queue: a block's checks go first
                    try:
                        self.executor.submit(self._run, batch)
                    except RuntimeError:  # the executor shut down (the node is stopping)
                        self._threads -= 1
                        batch = []
            if wake:
                self._wake()
            if not batch or run == last:
                return

    def _wake(self) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the node stopped
            loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        """Admit the oldest transactions whose verdicts are in, in arrival order."""
        with self._lock:
            self._wake_sent = False  # a batch finishing from now on wakes the loop again
        order, per_owner = self._order, self._per_owner
        while order and order[0].done:
            item = order.popleft()
            left = per_owner[item.owner] - 1
            if left:
                per_owner[item.owner] = left
            else:
                del per_owner[item.owner]
            try:
                item.admit(item.verdict)
            except Exception:  # a bug in the callback: the transactions behind it still go in
                log.exception("admitting transaction %s failed", item.tx.txid.hex()[:16])
        self._space.pulse()
