"""mining: a tiny block is mined in the node's process (no worker process started); a larger one
in a MinerPool that is closed after a while without a job; cancel stops an in-process search."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from p2pchain.ledger.block import Header
from p2pchain.ledger.pow import difficulty_target, target_to_bits
from p2pchain.mining import Mining
from p2pchain.params import NetworkParams

GENESIS = NetworkParams(bits=8).genesis.header


def header(difficulty: int, salt: int = 0) -> Header:
    """A header at ``difficulty`` leading zero bits (the target 2**(256 - difficulty))."""
    bits = target_to_bits(difficulty_target(difficulty))
    return replace(GENESIS, bits=bits, timestamp=GENESIS.timestamp + 1000 + salt)


def test_a_tiny_block_is_mined_in_process_without_starting_workers() -> None:
    async def scenario() -> None:
        mining = Mining(1)
        assert mining.hashes_done is None
        solved = await mining.solve(header(8))
        assert solved is not None and solved.meets_target()
        assert mining.pool is None, "no worker process for ~256 hashes"
        done = mining.hashes_done
        assert done is not None and done >= 1
        await mining.close()

    asyncio.run(scenario())


def test_a_larger_block_uses_the_pool_which_leaves_after_its_idle_time() -> None:
    async def scenario() -> None:
        mining = Mining(1, idle_exit_s=0.2, inprocess_max_work=2**4)
        try:
            solved = await mining.solve(header(8, salt=1))
            assert solved is not None and solved.meets_target()
            pool = mining.pool
            assert pool is not None and all(p.is_alive() for p in pool._processes)
            async with asyncio.timeout(30):
                while mining.pool is not None or mining._closing:
                    await asyncio.sleep(0.05)  # ok: polling the test's condition, bounded by the timeout
            assert not any(p.is_alive() for p in pool._processes), "the idle workers exited"
            again = await mining.solve(header(8, salt=2))  # a new pool on demand
            assert again is not None and again.meets_target()
        finally:
            await mining.close()
        assert mining.pool is None

    asyncio.run(scenario())


def test_cancel_stops_an_in_process_search() -> None:
    async def scenario() -> None:
        mining = Mining(1, inprocess_max_work=2**40)  # in process even at 40 bits: never solved here
        search = asyncio.create_task(mining.solve(header(40)))
        await asyncio.sleep(0)  # ok: the search has taken its first chunk
        mining.cancel()
        async with asyncio.timeout(30):
            assert await search is None
        await mining.close()

    asyncio.run(scenario())
