"""Miner: templates are valid blocks, solved headers meet their target, a pool's search stops on
cancel and its processes never outlive it (not even a SIGTERMed parent)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from p2pchain.errors import RuleCode, RuleError
from p2pchain.keys import Wallet
from p2pchain.ledger import rules
from p2pchain.ledger.block import Header, merkle_root
from p2pchain.ledger.pow import difficulty_target, target_to_bits
from p2pchain.ledger.rules import EMPTY_ACCOUNT, Account
from p2pchain.ledger.tx import make_tx
from p2pchain.miner import MinerPool, build_template, mine_block, search
from p2pchain.params import NetworkParams

PARAMS = NetworkParams(bits=8, reward=50)
GENESIS = PARAMS.genesis.header
IMPOSSIBLE_BITS = 60  # ~10**18 hashes: no test machine finds one


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)  # ok: poll interval


@pytest.fixture(scope="module")
def pool() -> Iterator[MinerPool]:
    with MinerPool(2) as p:
        yield p


def unsolved(difficulty: int, timestamp: int = 1) -> Header:
    """A header at ``difficulty`` leading zero bits (the target 2**(256 - difficulty))."""
    bits = target_to_bits(difficulty_target(difficulty))
    return Header(1, 7, b"\x11" * 32, b"\x22" * 32, timestamp, bits, 0)


def assert_solved(solved: Header | None, header: Header) -> None:
    assert solved is not None
    assert solved.meets_target()
    assert replace(solved, nonce=header.nonce) == header  # every other field kept


def test_search_finds_the_first_nonce_that_meets_the_target() -> None:
    h = unsolved(10)
    nonce = search(h.prefix, h.bits, 0, 1 << 20)
    assert nonce is not None
    assert replace(h, nonce=nonce).meets_target()
    assert not any(replace(h, nonce=n).meets_target() for n in range(nonce))
    assert search(h.prefix, h.bits, 0, nonce) is None  # the range end is exclusive
    assert search(h.prefix, h.bits, nonce, 1) == nonce


def test_mine_block_meets_the_target_and_keeps_the_block() -> None:
    block = build_template(PARAMS, GENESIS, GENESIS.timestamp, (), "ab" * 20, GENESIS.timestamp + 1000)
    mined = mine_block(block)
    assert_solved(mined.header, block.header)
    assert mined.txs == block.txs


def test_template_is_a_valid_block_whose_coinbase_takes_reward_and_fees() -> None:
    payer, miner = Wallet.generate(), Wallet.generate()
    nid = PARAMS.network_id
    txs = [make_tx(payer, "cd" * 20, 10, 3, 0, nid), make_tx(payer, "ef" * 20, 5, 4, 1, nid)]
    now = GENESIS.timestamp + 60_000
    block = mine_block(build_template(PARAMS, GENESIS, GENESIS.timestamp, txs, miner.address, now))

    h = block.header
    assert (h.height, h.prev_hash, h.bits, h.timestamp) == (1, GENESIS.hash, PARAMS.start_bits, now)
    assert h.merkle_root == merkle_root([tx.txid for tx in block.txs])
    assert block.txs[1:] == tuple(txs)
    rules.check_block(block, PARAMS)
    rules.check_header_context(h, GENESIS, GENESIS.timestamp, now, PARAMS, 0)

    def get(address: str) -> Account:
        return Account(100, 0) if address == payer.address else EMPTY_ACCOUNT

    changes = rules.connect_block(block, get, PARAMS)
    assert changes[miner.address].balance == PARAMS.reward + 3 + 4
    assert changes[payer.address] == Account(100 - 10 - 3 - 5 - 4, 2)


def test_template_timestamp_moves_past_the_median_time_past() -> None:
    mtp = GENESIS.timestamp + 10_000
    block = build_template(PARAMS, GENESIS, mtp, (), "ab" * 20, now_ms=mtp - 5_000)  # a slow clock
    assert block.header.timestamp == mtp + 1
    rules.check_header_context(block.header, GENESIS, mtp, mtp - 5_000, PARAMS, 0)


def test_unsolved_template_is_refused_for_its_work() -> None:
    block = build_template(NetworkParams(bits=30), GENESIS, 0, (), "ab" * 20, GENESIS.timestamp + 1)
    assert not block.header.meets_target()  # nonce 0: a 1 in 10**9 chance to be wrong
    with pytest.raises(RuleError) as e:
        rules.check_block(block, NetworkParams(bits=30))
    assert e.value.code is RuleCode.BAD_POW


def test_pool_solves_headers_in_a_thread_and_on_the_event_loop(pool: MinerPool) -> None:
    for ts in range(3):  # the pool is reused across jobs
        header = unsolved(14, ts)
        assert_solved(pool.solve_blocking(header), header)

    async def main(header: Header) -> Header | None:
        return await asyncio.wait_for(pool.solve(header), 30)

    header = unsolved(14, 99)
    assert_solved(asyncio.run(main(header)), header)


def test_cancel_stops_a_running_solve(pool: MinerPool) -> None:
    async def main() -> None:
        started = pool.hashes_done
        task = asyncio.create_task(pool.solve(unsolved(IMPOSSIBLE_BITS)))
        async with asyncio.timeout(10):
            while pool.hashes_done < started + 100_000:  # the workers are on it
                await asyncio.sleep(0.01)  # ok: poll interval, bounded by the timeout
        assert not task.done()
        pool.cancel()
        assert await asyncio.wait_for(task, 5) is None
        # the pool takes the next tip's job at once
        header = unsolved(12, 5)
        assert_solved(await asyncio.wait_for(pool.solve(header), 30), header)

    asyncio.run(main())


def test_new_job_supersedes_the_running_one(pool: MinerPool) -> None:
    stale = pool.submit(unsolved(IMPOSSIBLE_BITS))
    header = unsolved(12, 6)
    assert_solved(pool.solve_blocking(header, timeout=30), header)
    assert stale.result(5) is None


def busy(pool: MinerPool) -> bool:
    """Whether the workers hashed anything in the next tenth of a second."""
    before = pool.hashes_done
    time.sleep(0.1)  # ok: the window in which the workers must hash
    return pool.hashes_done != before


def test_cancelling_the_waiting_task_stops_the_workers(pool: MinerPool) -> None:
    async def main() -> None:
        task = asyncio.create_task(pool.solve(unsolved(IMPOSSIBLE_BITS)))
        await asyncio.sleep(0)  # ok: one turn of the loop, so the task submits the job before wait_until blocks it
        wait_until(lambda: busy(pool), "the workers to take the job")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    wait_until(lambda: not busy(pool), "the workers to drop the abandoned job")


def test_close_leaves_no_child_processes() -> None:
    pool = MinerPool(2)
    pids = set(pool.pids)
    assert len(pids) == 2
    future = pool.submit(unsolved(IMPOSSIBLE_BITS))  # close while mining
    pool.close()
    assert future.result(0) is None
    assert not pids & {p.pid for p in multiprocessing.active_children()}
    pool.close()  # idempotent
    with pytest.raises(RuntimeError):
        pool.submit(unsolved(8))


def process_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # a zombie waiting for init to reap it is gone


CHILD = """
import sys, threading, time
from p2pchain.ledger.block import Header
from p2pchain.miner import MinerPool
pool = MinerPool(2)
if sys.argv[1] == "mining":
    threading.Thread(target=pool.solve_blocking, args=(Header(1, 1, bytes(32), bytes(32), 0, 60, 0),)).start()
    while pool.hashes_done == 0:
        time.sleep(0.01)  # ok: poll interval (the parent test bounds this child)
else:
    pool.solve_blocking(Header(1, 1, bytes(32), bytes(32), 0, 0xE8800000, 0))  # target 2**255: workers up, then idle
print(*pool.pids, flush=True)
threading.Event().wait()
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("state", ["mining", "idle"])
def test_workers_exit_when_the_parent_is_sigtermed(state: str) -> None:
    pids: list[int] = []
    proc = subprocess.Popen([sys.executable, "-c", CHILD, state], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        proc.terminate()
        proc.wait(10)
        wait_until(lambda: all(process_gone(p) for p in pids), f"orphaned {state} workers {pids} to exit")
    finally:
        proc.kill()
        proc.wait()
        for pid in pids:
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("start", [0, 65_536 - 700, 3 * 65_536 + 12_345, 2**64 - 2_000])
def test_search_finds_the_first_nonce_that_hashing_each_whole_header_finds(start: int) -> None:
    """The table loop (base hash per 65,536 nonces, two-byte endings) agrees with the plain
    definition: the first nonce in the range whose 92-byte header hashes below the target, also
    across a 65,536-nonce boundary and at the top of the nonce space."""
    header = replace(GENESIS, timestamp=GENESIS.timestamp + start % 997)
    count = 1_500

    def plain() -> int | None:
        for n in range(start, min(start + count, 2**64)):
            if replace(header, nonce=n).meets_target():
                return n
        return None

    want = plain()
    assert want is not None, "8 bits: a solution every ~256 nonces"
    assert search(header.prefix, header.bits, start, count) == want
    assert search(header.prefix, header.bits, want + 1, 0) is None  # an empty range
    after = search(header.prefix, header.bits, want + 1, count)
    assert after is None or (after > want and replace(header, nonce=after).meets_target())
