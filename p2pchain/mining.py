"""Where the node searches a block's nonce: in its own process when the block's expected work
is tiny, else in a MinerPool of worker processes, started when first needed and closed after a
while without a job (a node that answered one GET /mine does not keep processes resident).

A block of at most ``limits.MINER_INPROCESS_MAX_WORK`` expected hashes takes well under a
millisecond on one core, less than waking the workers costs; it is searched on the event loop in
chunks of ``limits.MINER_INPROCESS_CHUNK_NONCES``, other work running between chunks.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

from p2pchain import limits
from p2pchain.ledger.block import Header
from p2pchain.ledger.pow import work

if TYPE_CHECKING:
    from p2pchain.miner import MinerPool

# p2pchain.miner (the nonce search, its worker processes) is imported at the first block a node
# mines: a node that never mines starts without it (~1.4 M instructions of a start)


class Mining:
    def __init__(
        self,
        procs: int | None,
        *,
        idle_exit_s: float = limits.MINER_IDLE_EXIT_S,
        inprocess_max_work: int = limits.MINER_INPROCESS_MAX_WORK,
    ) -> None:
        self.procs = procs
        self.idle_exit_s = idle_exit_s
        self.inprocess_max_work = inprocess_max_work
        self.pool: MinerPool | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Future[None]] = set()
        self._generation = 0  # cancel() moves it on: an in-process search stops at its next chunk
        self._hashes_earlier = 0  # hashed in-process and by pools already closed
        self.used = False

    @property
    def hashes_done(self) -> int | None:
        """Nonces hashed since the node started; None if it never mined."""
        if not self.used:
            return None
        return self._hashes_earlier + (self.pool.hashes_done if self.pool is not None else 0)

    async def solve(self, header: Header) -> Header | None:
        """``header`` with a nonce that meets its target, or None if ``cancel`` came first."""
        self.used = True
        if work(header.target) <= self.inprocess_max_work:
            finished, solved = await self._solve_here(header)
            if finished:
                return solved
        return await self._solve_in_pool(header)

    async def _solve_here(self, header: Header) -> tuple[bool, Header | None]:
        """(True, the answer), or (False, None) past the search's bound (a very unlucky block:
        the pool takes over)."""
        from p2pchain.miner import search

        generation = self._generation
        chunk = limits.MINER_INPROCESS_CHUNK_NONCES
        budget = limits.MINER_INPROCESS_BUDGET_FACTOR * work(header.target)
        prefix, bits = header.prefix, header.bits
        for start in range(0, budget, chunk):
            found = search(prefix, bits, start, chunk)
            self._hashes_earlier += chunk if found is None else found - start + 1
            if found is not None:
                return True, replace(header, nonce=found)
            await asyncio.sleep(0)  # ok: a turn for the rest of the node between chunks (not a wait)
            if self._generation != generation:
                return True, None
        return False, None

    async def _solve_in_pool(self, header: Header) -> Header | None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self.pool is None:
            from p2pchain.miner import MinerPool

            self.pool = MinerPool(self.procs)
        try:
            return await self.pool.solve(header)
        finally:
            self._idle = asyncio.get_running_loop().call_later(self.idle_exit_s, self._retire)

    def _retire(self) -> None:
        """No job for idle_exit_s: the workers go (a later block starts a new pool)."""
        self._idle = None
        pool, self.pool = self.pool, None
        if pool is None:
            return
        self._hashes_earlier += pool.hashes_done
        closing = asyncio.ensure_future(asyncio.to_thread(pool.close))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    def cancel(self) -> None:
        """A new tip: stop the search under way (the pool's waiter gets None at once)."""
        self._generation += 1
        if self.pool is not None:
            self.pool.cancel()

    async def close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._generation += 1
        pool, self.pool = self.pool, None
        if pool is not None:
            await asyncio.to_thread(pool.close)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
