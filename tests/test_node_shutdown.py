"""node shutdown: SIGTERM (and SIGINT) stop a mining node with exit code 0 within 2 s, and the
node restarted on its data dir starts from the tip it had.

The node mines with one worker process and has a peer connected when the signal comes; its
last log line names the tip it stopped at ("stopped at height H, tip T"), which the restarted
node must report in /status.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time

import pytest
from conftest import NodeFactory
from harness import wait_until
from node_helpers import MINER_ARGS, status

from p2pchain.cli import StopSignals

STOP_DEADLINE_S = 2.0  # the promise: SIGTERM to exit in at most this long
STOPPED = re.compile(r"stopped at height (\d+), tip ([0-9a-f]+)")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_exits_zero_quickly_and_restart_keeps_the_tip(nodes: NodeFactory, sig: signal.Signals) -> None:
    node, peer = nodes("miner"), nodes("peer")
    node.start(MINER_ARGS)
    peer.start(["--peer", node.addr])
    wait_until(lambda: peer.height() >= 50, 30, "the peer to follow the miner to height 50")
    started = time.monotonic()
    code = node.stop(sig, timeout=STOP_DEADLINE_S)
    took = time.monotonic() - started
    assert code == 0, f"exit code {code} after {took:.2f} s"
    stopped = STOPPED.findall(node.log_path.read_text())
    assert stopped, "the node did not log the tip it stopped at"
    height, tip = stopped[-1]

    node.start()
    st = status(node)
    assert (st["height"], st["tip"][: len(tip)]) == (int(height), tip)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_from_any_thread_wakes_the_loop_and_handlers_are_put_back(sig: signal.Signals) -> None:
    """cli.StopSignals (the node command's SIGINT/SIGTERM): a signal sent while the loop sleeps
    with nothing to do sets the stop event, also when the signal reaches another thread (the wakeup fd
    wakes the loop); a signal before the loop runs stops it as soon as it does; afterwards the
    process's handlers are what they were."""
    before = {s: signal.getsignal(s) for s in StopSignals.SIGNALS}

    async def serve(signals: StopSignals) -> None:
        stop = asyncio.Event()
        with signals.waking(stop):
            # delivered to another thread, blocked in C, not to the main thread (a signal there
            # would interrupt the loop's epoll anyway): only the wakeup fd wakes the loop
            release = threading.Event()
            other = threading.Thread(target=release.wait, args=(10,))
            other.start()
            try:
                signal.pthread_kill(other.ident or 0, sig)
                async with asyncio.timeout(10):
                    await stop.wait()
            finally:
                release.set()
                other.join()

    signals = StopSignals()
    with signals.installed():
        asyncio.run(serve(signals))
    assert {s: signal.getsignal(s) for s in StopSignals.SIGNALS} == before

    early = StopSignals()  # a signal while the node is built, before the loop runs

    async def stopped_at_once() -> bool:
        stop = asyncio.Event()
        with early.waking(stop):
            return stop.is_set()

    with early.installed():
        os.kill(os.getpid(), sig)
        assert asyncio.run(stopped_at_once())
    assert {s: signal.getsignal(s) for s in StopSignals.SIGNALS} == before
