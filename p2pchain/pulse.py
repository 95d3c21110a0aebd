"""Waiting on a condition over state that many events change, without polling.

A waiter gives a predicate and a timeout; whoever changes the state calls ``pulse()``, which
wakes the waiters to look at their predicate again. Nothing runs between pulses, so an answer
comes as soon as the event that makes it true has been handled, not at the next tick of a
clock (the node pulses after each peer message, each handshake and each closed connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Pulse:
    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def pulse(self) -> None:
        """Wake every waiter to look at its predicate (costs nothing when nobody waits)."""
        if self._waiters:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Until ``predicate()`` holds (True) or ``timeout`` seconds pass (False; None: no limit)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiters.add(waiter)
                    try:
                        await waiter
                    finally:
                        self._waiters.discard(waiter)
        except TimeoutError:
            return predicate()
        return True
