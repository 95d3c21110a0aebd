"""pulse: a wait on a condition wakes when the state changes (a pulse), not on a clock."""

from __future__ import annotations

import asyncio

from p2pchain.pulse import Pulse


def test_a_waiter_wakes_on_the_pulse_that_makes_its_condition_true() -> None:
    async def run() -> None:
        pulse, state = Pulse(), {"n": 0}
        waiting = asyncio.create_task(pulse.wait_for(lambda: state["n"] >= 2, timeout=30))
        for _ in range(2):
            await asyncio.sleep(0)  # ok: let the waiter look at its predicate
            assert not waiting.done()
            state["n"] += 1
            pulse.pulse()
        assert await waiting is True
        assert not pulse._waiters  # nothing left behind

    asyncio.run(run())


def test_a_waiter_does_not_wake_without_a_pulse() -> None:
    """The predicate is true but nobody pulsed: the waiter sleeps on (no clock ticks inside to
    look again); the pulse wakes it."""

    async def run() -> None:
        pulse, state = Pulse(), {"ready": False}
        waiting = asyncio.create_task(pulse.wait_for(lambda: state["ready"], timeout=60))
        await asyncio.sleep(0)  # ok: the waiter is parked
        state["ready"] = True
        for _ in range(10):
            await asyncio.sleep(0)  # ok: many loop turns, no pulse
        assert not waiting.done()
        pulse.pulse()
        assert await waiting is True

    asyncio.run(run())


def test_a_timeout_returns_false_and_a_true_condition_returns_at_once() -> None:
    async def run() -> None:
        pulse = Pulse()
        assert await pulse.wait_for(lambda: False, timeout=0.01) is False
        assert await pulse.wait_for(lambda: True, timeout=0) is True
        pulse.pulse()  # nobody waits: nothing happens

    asyncio.run(run())
