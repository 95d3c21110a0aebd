"""Fuzz target: the frame decoder (wire.FrameDecoder and wire.read_frame).

Input: byte 0's low 2 bits say how many cuts follow (0-3), each 2 bytes (a position, modulo the
stream's length); the rest is the byte stream a peer sends. Oracles (each a crash when broken):
only ProtocolError may come out; whatever the cuts, the frames are
the frames a ten-line reference parser of docs/protocol.md section 1 finds (after a bad length,
every frame before it); ``read_frame`` on an
asyncio stream gives the same frames and fails at the same place.

    .venv/bin/python fuzz/frames.py --seconds 60      # see fuzz/fuzzharness.py for the options
"""

from __future__ import annotations

import asyncio
import random
import sys

import fuzzharness
from fuzzharness import Finding, Target


def split_input(data: bytes) -> tuple[bytes, list[int]]:
    """(stream, cut positions) from one fuzz input."""
    if not data:
        return b"", []
    n = data[0] & 3
    head, stream = data[1 : 1 + 2 * n], data[1 + 2 * n :]
    if not stream:
        return stream, []
    cuts = sorted({int.from_bytes(head[i : i + 2], "big") % len(stream) for i in range(0, len(head) - 1, 2)})
    return stream, [c for c in cuts if c]


def join_input(stream: bytes, cuts: list[int]) -> bytes:
    cuts = cuts[:3]
    return bytes([len(cuts)]) + b"".join((c % 65536).to_bytes(2, "big") for c in cuts) + stream


def build() -> Target:
    import fuzz  # scripts/fuzz.py
    from p2pchain import wire
    from p2pchain.errors import ProtocolError

    loop = asyncio.new_event_loop()

    async def read_all(stream: bytes) -> tuple[list[bytes], bool]:
        reader = asyncio.StreamReader()
        reader.feed_data(stream)
        reader.feed_eof()
        out: list[bytes] = []
        while True:
            try:
                out.append(await wire.read_frame(reader))
            except asyncio.IncompleteReadError:
                return out, False
            except ProtocolError:
                return out, True

    def run(data: bytes) -> str:
        stream, cuts = split_input(data)
        payloads, failed = fuzz.feed_split(stream, cuts)
        expected, bad_length = fuzz.reference_frames(stream)
        # a feed() that meets a bad length gives the frames before it (then raises at the next
        # feed): every frame before the bad length, however the stream was cut
        if failed != bad_length or payloads != expected:
            raise Finding(f"decoder gave {len(payloads)} frames (failed={failed}), the spec {len(expected)}")
        read, read_failed = loop.run_until_complete(read_all(stream))
        if read != expected or read_failed != bad_length:
            raise Finding(f"read_frame gave {len(read)} frames (failed={read_failed}), the spec {len(expected)}")
        return f"{min(len(expected), 4)}:{bad_length}:{len(cuts)}"

    def seeds() -> list[bytes]:
        return [join_input(wire.encode_frame(m.payload()), []) for m in fuzz.seed_messages()]

    mutator = fuzz.Mutator(fuzz.FastRandom(1), fuzz.seed_messages())

    def generate(rng: random.Random) -> bytes:
        mutator.rng = rng
        stream, cuts = mutator.next_input()
        return join_input(stream, cuts)

    return Target("frames", run, seeds, generate, max_len=8192, close=loop.close)


if __name__ == "__main__":
    sys.exit(fuzzharness.main(build))
