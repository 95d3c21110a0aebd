"""benchlib.net (scripts/benchlib/net.py): the ingest's sender counts answers and acceptances right.

submit_pipelined tells an accepted SUBMIT_RESULT by its payload's fixed head and tail (the sender's
CPU is spent on the node's cores) and unpacks everything else: every answer must be counted once,
and only the accepted ones as accepted, whatever their ids and however the replies are split.
The ceiling's stretches run held to one core each (on_core), and the thread's mask is put back.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from benchlib.net import ingest_cores, on_core, submit_pipelined

from p2pchain import wire


class Writes:
    """The writer submit_pipelined writes its frames to (not read here)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


def test_the_sender_counts_each_answer_once_and_only_accepted_ones_as_accepted() -> None:
    ids = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 0xA8, 0xC3]
    replies = [wire.SubmitResult(i, os.urandom(32), i % 3 != 0, "" if i % 3 else "nonce-gap", "") for i in ids]
    replies.insert(4, wire.Ping(9))  # not an answer: answered with a PONG, not counted
    stream = b"".join(r.encode() for r in replies)

    async def scenario() -> tuple[int, bytes]:
        reader = asyncio.StreamReader()
        for i in range(0, len(stream), 37):  # split mid-frame
            reader.feed_data(stream[i : i + 37])
        writer = Writes()
        accepted = await submit_pipelined(reader, writer, [b"f"] * len(ids), window=4)  # type: ignore[arg-type]
        return accepted, bytes(writer.data)

    accepted, written = asyncio.run(scenario())
    assert accepted == sum(1 for i in ids if i % 3 != 0)
    assert written.endswith(wire.Pong(9).encode())


def test_the_ceiling_runs_on_the_core_it_is_given_and_the_mask_is_put_back() -> None:
    """The one-core ceiling is timed on each core in turn (on_core); the bench's thread may run
    anywhere again after each stretch."""
    before = os.sched_getaffinity(0)
    seen: list[set[int]] = []
    for core in ingest_cores():
        assert on_core(core, lambda: seen.append(os.sched_getaffinity(0)) or 1.5) == 1.5
        assert os.sched_getaffinity(0) == before
    assert seen == [{core} for core in sorted(before)]
    assert on_core(None, lambda: 2.5) == 2.5
