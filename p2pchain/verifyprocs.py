"""Worker processes that check batches of Ed25519 signatures for the verifier threads.

Why processes: a verifier thread checking a batch itself needs the GIL back after every
signature, and on this project's 2-core machine each of those hand-overs, against an event loop
that is busy reading and admitting transactions, cost about as long as the check itself
(per-thread CPU against wall time, measured in docs/benchmarks.md): the threads sat at half a
core each. A thread that hands the batch to a worker process instead needs the GIL a few times
a batch (encode it, write it, read the verdicts), and the worker checks with a GIL nobody else
wants. The check is the same function (``keys.verify``, pyca/cryptography), so a worker's
verdict is the thread's.

``VerifierProcs.check`` has the shape of ``sigbatch.signatures_ok`` and runs in a verifier
thread. It takes an idle worker; while none is ready (none started yet, or one starting, which
takes about a tenth of a second of imports) the thread checks the batch itself, so nothing ever
waits for a process to start. Workers start on the first batch, at most ``size`` of them, and
each exits after VERIFY_PROC_IDLE_S without a batch (a node that takes no transactions keeps no
process); one that died or exited is noticed at its next batch, which the thread then checks
itself. A worker also exits when its stdin closes, so a node killed with SIGKILL leaves none.
A worker that does not take a batch and answer it within VERIFY_PROC_ANSWER_S (stopped by a
signal, hung) is killed by the pool's watchdog thread, so the verifier thread's blocking read
ends and it checks the batch itself; a new worker starts at a later batch. (The thread's read
itself has no timeout: a poll before it, or a read in steps, would need the GIL back once more
per batch, which costs a busy node's verifier threads dearly; the watchdog costs nothing per
batch but a deadline set under the lock the pool takes anyway.)

The pipe protocol (private to this module): the worker writes one byte when it is ready; a
request is a u32 big-endian length and a msgpack array of [pubkey, signature, message] triples;
the answer is a u32 length and one byte per triple, 1 if it verifies, else 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgpack

from p2pchain import limits
from p2pchain.keys import ed25519, verify
from p2pchain.packing import packb

if TYPE_CHECKING:  # a worker process imports only what it checks with: it starts sooner
    from p2pchain.ledger.tx import Tx

log = logging.getLogger(__name__)

_READY = b"R"
_LEN = 4  # bytes of a length prefix


def _read_exactly(fd: int, n: int) -> bytes:
    parts: list[bytes] = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            raise EOFError("pipe closed")
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _readable(fd: int, timeout_s: float) -> bool:
    """Whether ``fd`` has data (or EOF) within ``timeout_s`` (poll: any fd number, unlike select)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout_s * 1000))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Worker:
    def __init__(self, idle_s: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "p2pchain.verifyprocs", repr(idle_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.to_fd = self.proc.stdin.fileno()
        self.from_fd = self.proc.stdout.fileno()
        self.ready = False
        self.deadline: float | None = None  # while it checks a batch: when the watchdog kills it
        self.hung = False  # killed by the watchdog

    def is_ready(self) -> bool:
        """True once the worker said it is ready (without waiting for it)."""
        if not self.ready and _readable(self.from_fd, 0):
            if os.read(self.from_fd, 1) != _READY:
                raise EOFError("the worker ended before it was ready")
            self.ready = True
        return self.ready

    def check(self, triples: list[tuple[bytes, bytes, bytes]]) -> list[bool]:
        request = packb(triples)
        _write_all(self.to_fd, len(request).to_bytes(_LEN, "big") + request)
        reply = _read_exactly(self.from_fd, _LEN + len(triples))  # one read: one return of the GIL
        n = int.from_bytes(reply[:_LEN], "big")
        if n != len(triples):
            raise EOFError(f"the worker answered {n} verdicts for {len(triples)} signatures")
        return [b == 1 for b in reply[_LEN:]]

    def close(self, *, kill: bool = False) -> None:
        """Close the pipes and end the process: SIGTERM, then SIGKILL after VERIFY_PROC_CLOSE_S;
        at once with ``kill`` (a stopped process takes no SIGTERM until it is continued)."""
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        if kill:
            self.proc.kill()
            self.proc.wait()
        elif self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(limits.VERIFY_PROC_CLOSE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class VerifierProcs:
    """Up to ``size`` worker processes, shared by the verifier threads (see the module's doc).
    A worker exits after ``idle_s`` without a batch."""

    def __init__(
        self, size: int, idle_s: float = limits.VERIFY_PROC_IDLE_S, answer_s: float = limits.VERIFY_PROC_ANSWER_S
    ) -> None:
        self.size = size
        self.idle_s = idle_s
        self.answer_s = answer_s  # a worker that has not answered a batch within this is killed
        self._lock = threading.Lock()
        self._watch = threading.Condition(self._lock)  # the watchdog waits on it for the next deadline
        self._watchdog: threading.Thread | None = None  # started with the first worker
        self._idle: list[_Worker] = []  # started, not checking a batch now (ready or not yet)
        self._busy: set[_Worker] = set()  # checking a batch for a thread, which owns its pipes meanwhile
        self._starting = 0  # being spawned by a thread now
        self._closed = False
        self.batches = 0  # batches checked by a worker (tests, stats)

    def check(self, txs: Sequence[Tx], network_id: bytes) -> list[bool]:
        """The verdicts of ``txs``' signatures, in order. Runs in a verifier thread."""
        triples = [(tx.pubkey, tx.signature, tx.signing_message(network_id)) for tx in txs]
        worker = self._take()  # (its deadline set: from the request's write to its answer)
        if worker is not None:
            try:
                verdicts = worker.check(triples)
            except (OSError, EOFError) as e:  # it died, exited idle or hung (killed): checked here
                with self._lock:
                    self._busy.discard(worker)
                    hung = worker.hung
                if hung:
                    log.warning(
                        "signature worker %d did not answer within %g s: killed, checking in this thread",
                        worker.proc.pid,
                        self.answer_s,
                    )
                else:
                    log.info("signature worker %d is gone (%s): checking in this thread", worker.proc.pid, e)
                worker.close(kill=hung)
            else:
                self._give_back(worker)
                return verdicts
        return [verify(*t) for t in triples]

    def _take(self) -> _Worker | None:
        """An idle ready worker, marked busy, its answer due within ``answer_s`` (the watchdog's
        deadline); None if there is none (one more is started when fewer than ``size`` exist)."""
        gone: list[_Worker] = []
        taken: _Worker | None = None
        with self._lock:
            if self._closed:
                return None
            for worker in list(self._idle):
                try:
                    ready = worker.is_ready()
                except (OSError, EOFError):  # ended while starting: let it go
                    self._idle.remove(worker)
                    gone.append(worker)
                    continue
                if ready:
                    if not any(w.deadline is not None for w in self._busy):
                        self._watch.notify()  # the watchdog had no deadline to wait for
                    worker.deadline = time.monotonic() + self.answer_s
                    self._idle.remove(worker)
                    self._busy.add(worker)
                    taken = worker
                    break
            start = taken is None and len(self._idle) + len(self._busy) + self._starting < self.size
            if start:
                self._starting += 1
        for worker in gone:
            worker.close()
        if start:
            self._start()
        return taken

    def _start(self) -> None:
        worker: _Worker | None = None
        try:
            worker = _Worker(self.idle_s)
        except OSError as e:  # out of processes or memory: the threads keep checking
            log.warning("could not start a signature worker: %s", e)
        with self._lock:
            self._starting -= 1
            if worker is None:
                return
            if not self._closed:
                self._idle.append(worker)
                if self._watchdog is None:
                    self._watchdog = threading.Thread(target=self._watch_deadlines, name="p2pchain-verify-watch")
                    self._watchdog.daemon = True
                    self._watchdog.start()
                return
        worker.close()

    def _watch_deadlines(self) -> None:
        """The watchdog thread: kill a worker whose batch is past its deadline (the thread reading
        its answer then sees the pipe end); wait until the next deadline, or until a worker is
        busy again when none is."""
        with self._watch:
            while not self._closed:
                now = time.monotonic()
                pending: list[float] = []
                for worker in self._busy:
                    if worker.deadline is None:
                        continue
                    if worker.deadline <= now:
                        worker.deadline, worker.hung = None, True
                        with contextlib.suppress(OSError):
                            worker.proc.kill()
                    else:
                        pending.append(worker.deadline)
                self._watch.wait(min(pending) - now if pending else None)

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            self._busy.discard(worker)
            worker.deadline = None
            self.batches += 1
            if not self._closed and not worker.hung:  # (killed just as it answered: let it go)
                self._idle.append(worker)
                return
        worker.close(kill=worker.hung)

    def close(self) -> None:
        """Stop every worker: the idle ones here (waiting up to VERIFY_PROC_CLOSE_S each), the
        busy ones by SIGKILL (the thread that owns the pipes sees them end, checks its batch and
        closes them; SIGTERM would wait for a stopped worker to be continued)."""
        with self._lock:
            self._closed = True
            self._watch.notify()  # the watchdog ends
            idle, self._idle = self._idle, []
            busy = list(self._busy)
        for worker in busy:
            with contextlib.suppress(OSError):
                worker.proc.kill()
        for worker in idle:
            worker.close()

    def pids(self) -> list[int]:
        """The workers' process ids (tests)."""
        with self._lock:
            return [w.proc.pid for w in (*self._idle, *self._busy)]


def worker_main(idle_s: float) -> None:
    """A worker process: answer batches on stdin until it closes, or until ``idle_s`` pass
    without one."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the node, which closes its workers
    inp, out = sys.stdin.fileno(), sys.stdout.fileno()
    ed25519()  # loaded before the worker says it is ready, not at its first batch
    _write_all(out, _READY)
    while _readable(inp, idle_s):
        try:
            n = int.from_bytes(_read_exactly(inp, _LEN), "big")
            triples = msgpack.unpackb(_read_exactly(inp, n), use_list=False)
        except EOFError:
            return
        answer = bytes(verify(pubkey, signature, message) for pubkey, signature, message in triples)
        try:
            _write_all(out, len(answer).to_bytes(_LEN, "big") + answer)
        except BrokenPipeError:
            return


if __name__ == "__main__":
    worker_main(float(sys.argv[1]))
