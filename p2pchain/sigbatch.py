"""Signatures of arriving transactions checked in batches on the verifier threads, the
transactions handed back in the order they arrived.

Ed25519 releases the GIL, so while the event loop reads, decodes and admits transactions, the
threads check the signatures of the next ones: every core works. Batching is driven by the
threads, not by a clock: a transaction that arrives while fewer than ``max_inflight`` batches
are being checked goes to a thread at once (a single transaction on an idle node waits for
nothing); what arrives while every thread is busy gathers into the next batch (up to
``max_batch``), which leaves as soon as a thread is free. Each transaction's ``admit`` callback
is then called on the event loop in arrival order, with the signature's verdict: True (it
verifies), False (it does not) or None (not checked: the caller said no check was needed, for
a transaction that is already known or will be refused before its signature counts).

The queue is bounded: ``put`` waits (and so stops its peer's reader: TCP pushes back) while
``max_pending`` transactions are queued or being checked, or ``max_per_owner`` of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from p2pchain.ledger import rules
from p2pchain.ledger.tx import Tx
from p2pchain.pulse import Pulse

log = logging.getLogger(__name__)

Admit = Callable[[bool | None], None]  # called with the verdict, on the event loop, in arrival order


def signatures_ok(txs: list[Tx], network_id: bytes) -> list[bool]:
    """Runs in a verifier thread."""
    return [rules.signature_ok(tx, network_id) for tx in txs]


@dataclass(slots=True)
class _Item:
    tx: Tx
    check: bool
    admit: Admit
    owner: Hashable


@dataclass(slots=True)
class _Batch:
    items: list[_Item]
    verdicts: asyncio.Future[list[bool]]  # of the items with check=True, in order


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
    ) -> None:
        self.executor = executor
        self.network_id = network_id
        self.max_inflight = max_inflight
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.max_per_owner = max_per_owner
        self._waiting: deque[_Item] = deque()  # arrived, not yet sent to a thread
        self._inflight: deque[_Batch] = deque()  # sent, oldest first (or needing no check), not yet admitted
        self._busy = 0  # batches being checked on a thread
        self._pending = 0  # items waiting or in flight
        self._per_owner: dict[Hashable, int] = {}
        self._space = Pulse()
        self._closed = False
        self.batches = 0  # batches sent to the threads (tests, stats)
        self.checked = 0  # signatures checked

    @property
    def pending(self) -> int:
        return self._pending

    def idle(self) -> bool:
        return not self._pending

    def close(self) -> None:
        """Admit nothing more (the node is stopping): queued transactions are dropped."""
        self._closed = True
        self._waiting.clear()
        self._space.pulse()

    async def put(self, tx: Tx, admit: Admit, *, check: bool, owner: Hashable = None) -> None:
        """Queue ``tx``; ``admit(verdict)`` follows once every earlier transaction is admitted.
        A transaction that needs no check on an idle batcher is admitted before this returns."""
        if not self._has_room(owner):
            await self._space.wait_for(lambda: self._has_room(owner), timeout=None)
        if self._closed:
            return
        if not check and not self._pending:
            admit(None)  # nothing ahead of it: no queue, no thread
            return
        self._pending += 1
        self._per_owner[owner] = self._per_owner.get(owner, 0) + 1
        self._waiting.append(_Item(tx, check, admit, owner))
        self._dispatch()

    def _has_room(self, owner: Hashable) -> bool:
        if self._closed:
            return True
        return self._pending < self.max_pending and self._per_owner.get(owner, 0) < self.max_per_owner

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting and self._busy < self.max_inflight:
            items = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
            txs = [item.tx for item in items if item.check]
            verdicts: asyncio.Future[list[bool]]
            if txs:
                verdicts = asyncio.wrap_future(self.executor.submit(signatures_ok, txs, self.network_id), loop=loop)
                self._busy += 1
                self.batches += 1
                self.checked += len(txs)
                verdicts.add_done_callback(self._checked)
            else:  # nothing to check: admitted as soon as what is ahead of it is
                verdicts = loop.create_future()
                verdicts.set_result([])
            self._inflight.append(_Batch(items, verdicts))
        self._drain()

    def _checked(self, _: object) -> None:
        self._busy -= 1
        if self._closed:
            self._drain()
        else:  # the freed thread takes what waits before the loop admits this batch: it never idles meanwhile
            self._dispatch()

    def _drain(self) -> None:
        """Admit the oldest batches whose checks are done, in arrival order."""
        while self._inflight and self._inflight[0].verdicts.done():
            batch = self._inflight.popleft()
            try:
                verdicts = iter(batch.verdicts.result())
            except (concurrent.futures.CancelledError, RuntimeError):  # the executor shut down
                verdicts = iter(())
            for item in batch.items:
                self._pending -= 1
                left = self._per_owner[item.owner] - 1
                if left:
                    self._per_owner[item.owner] = left
                else:
                    del self._per_owner[item.owner]
                if self._closed:
                    continue
                try:
                    item.admit(next(verdicts, False) if item.check else None)
                except Exception:  # a bug in the callback: the transactions behind it still go in
                    log.exception("admitting transaction %s failed", item.tx.txid.hex()[:16])
        self._space.pulse()
