"""verifyprocs: the worker processes that check signatures for the verifier threads give the
verdicts the threads' own check gives (a bad signature, a key that is no curve point); a worker
that dies, exits idle or hangs (killed after a deadline) costs nothing but that its batch is
checked in the thread; a closed pool leaves no process; a node process checks arriving
transactions in its workers, and stopping it stops them.

Nothing here asserts a timing: a pool whose workers are still starting checks batches in the
calling thread, so the tests call ``check`` until a worker has answered (``batches``), with a
deadline.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

from harness import NodeProc, run, wait_until
from node_helpers import FUNDED, TEST_PARAMS, pay

from p2pchain.keys import Wallet
from p2pchain.ledger.tx import Tx
from p2pchain.sigbatch import signatures_ok
from p2pchain.verifyprocs import VerifierProcs

NET = TEST_PARAMS.network_id
TO = Wallet.generate().address


def batch() -> list[Tx]:
    txs = [pay(FUNDED, TO, 1, nonce=i) for i in range(8)]
    txs[2] = replace(txs[2], signature=bytes(64))  # a forged signature
    txs[5] = replace(txs[5], pubkey=bytes(32))  # a key that is not a point of the curve
    return txs


def checked_by_a_worker(pool: VerifierProcs, txs: list[Tx], want: list[bool]) -> None:
    """Call ``check`` until a worker answers one of the calls; every answer must be ``want``."""
    before = pool.batches
    deadline = time.monotonic() + 30
    while pool.batches == before:
        assert pool.check(txs, NET) == want
        assert time.monotonic() < deadline, "no worker answered within 30 s"


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_workers_give_the_verdicts_of_the_threads_own_check_and_close_leaves_no_process() -> None:
    txs = batch()
    want = signatures_ok(txs, NET)
    assert want == [i not in (2, 5) for i in range(len(txs))]
    pool = VerifierProcs(2)
    try:
        checked_by_a_worker(pool, txs, want)
        pids = pool.pids()
        assert 1 <= len(pids) <= 2
    finally:
        pool.close()
    assert all(gone(pid) for pid in pids), "close() stops and reaps every worker"
    assert pool.check(txs, NET) == want, "a closed pool still answers, from the thread"


def test_a_worker_that_dies_costs_only_its_batch_being_checked_in_the_thread() -> None:
    txs = batch()
    want = signatures_ok(txs, NET)
    pool = VerifierProcs(1)
    try:
        checked_by_a_worker(pool, txs, want)
        (first,) = pool.pids()
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: Path(f"/proc/{first}/stat").read_text().split()[2] == "Z", 10, "the worker to die")
        assert pool.check(txs, NET) == want  # its pipe is broken: checked here
        checked_by_a_worker(pool, txs, want)  # by a new worker
        assert pool.pids() != [first]
    finally:
        pool.close()
    assert gone(first)


def test_a_hung_worker_is_killed_and_its_batch_checked_in_the_thread() -> None:
    """A worker stopped by SIGSTOP never answers: after answer_s the pool's watchdog kills it,
    the thread checks the batch itself, and a later batch starts a new worker."""
    txs = batch()
    want = signatures_ok(txs, NET)
    pool = VerifierProcs(1, answer_s=0.5)
    try:
        checked_by_a_worker(pool, txs, want)
        (first,) = pool.pids()
        os.kill(first, signal.SIGSTOP)
        assert pool.check(txs, NET) == want  # given to the stopped worker, then checked here
        assert pool.pids() == [] and gone(first), "the hung worker is killed and reaped"
        checked_by_a_worker(pool, txs, want)  # by a new worker
        assert pool.pids() != [first]
    finally:
        pool.close()


def test_a_batch_larger_than_the_pipe_to_a_hung_worker_times_out_too() -> None:
    """Writing a batch that does not fit the pipe's buffer (64 KiB on Linux) to a stopped worker
    blocks too: the watchdog's kill ends the write as it ends a read."""
    small = batch()
    big = [pay(FUNDED, TO, 1, nonce=i) for i in range(1024)]
    assert sum(len(tx.pubkey) + len(tx.signature) + len(tx.signing_message(NET)) for tx in big) > 128 * 1024
    pool = VerifierProcs(1, answer_s=0.5)
    try:
        checked_by_a_worker(pool, small, signatures_ok(small, NET))
        (first,) = pool.pids()
        os.kill(first, signal.SIGSTOP)
        assert pool.check(big, NET) == [True] * len(big)
        assert gone(first)
    finally:
        pool.close()


def test_closing_the_pool_ends_a_batch_given_to_a_stopped_worker() -> None:
    """A node that stops while a stopped worker holds a batch: close() kills it (SIGTERM would
    wait for it to be continued), and the thread's check ends, answered from the thread."""
    txs = batch()
    want = signatures_ok(txs, NET)
    pool = VerifierProcs(1, answer_s=600)  # the watchdog is not what ends it here
    try:
        checked_by_a_worker(pool, txs, want)
        (first,) = pool.pids()
        os.kill(first, signal.SIGSTOP)
        verdicts: list[list[bool]] = []
        checking = threading.Thread(target=lambda: verdicts.append(pool.check(txs, NET)))
        checking.start()
        wait_until(lambda: pool._busy, 10, "the batch to go to the stopped worker")
        pool.close()
        checking.join(30)
        assert not checking.is_alive() and verdicts == [want]
        wait_until(lambda: gone(first), 10, "the stopped worker to be reaped")
    finally:
        pool.close()


def test_a_worker_exits_when_idle_and_the_next_batch_is_checked_all_the_same() -> None:
    txs = batch()
    want = signatures_ok(txs, NET)
    pool = VerifierProcs(1, idle_s=0.2)
    try:
        checked_by_a_worker(pool, txs, want)
        (first,) = pool._idle
        wait_until(lambda: first.proc.poll() is not None, 10, "the idle worker to exit")
        assert first.proc.returncode == 0
        assert pool.check(txs, NET) == want
        checked_by_a_worker(pool, txs, want)
    finally:
        pool.close()


def test_workers_are_used_when_the_pipes_get_file_descriptors_above_1024() -> None:
    """A node with many connections has fd numbers past select()'s FD_SETSIZE (this machine's
    soft limit is 20,000): the pool must wait on its pipes with poll, not select."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    r, w = os.pipe()
    filler = [os.dup(r) for _ in range(1100)]
    txs = batch()
    pool = VerifierProcs(1)
    try:
        checked_by_a_worker(pool, txs, signatures_ok(txs, NET))
        assert pool._idle[0].from_fd > 1024
    finally:
        pool.close()
        for fd in [r, w, *filler]:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def children(pid: int) -> list[int]:
    """The processes ``pid``'s threads started (Linux /proc)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(p) for p in (task / "children").read_text().split()]
    return out


def test_a_node_process_checks_transactions_in_its_workers_and_stops_them(tmp_path: Path) -> None:
    """Through the command line's default (--verify-procs, one per core, here 2): the workers
    start with the first transactions and go with the node."""
    node = NodeProc(tmp_path, "n", http=False, args=["--verify-procs", "2"])
    node.start()
    try:
        assert node.proc is not None
        pid = node.proc.pid
        assert children(pid) == [], "no worker before the first transaction"
        # nonces from 1: a gap, which is refused only after the signature is checked (a later
        # transaction may close it); an unfunded sender at nonce 0 would be refused before
        txs = [pay(FUNDED, TO, 1, nonce=i) for i in range(1, 65)]

        async def submit() -> None:
            async with node.client() as c:
                for tx in txs:
                    await c.submit_tx(tx)

        def workers() -> list[int]:
            run(submit())
            return [p for p in children(pid) if b"p2pchain.verifyprocs" in Path(f"/proc/{p}/cmdline").read_bytes()]

        started = wait_until(workers, 30, "the node's signature workers to start")
    finally:
        node.stop()
    wait_until(lambda: all(gone(p) for p in started), 10, "the workers to stop with the node")
