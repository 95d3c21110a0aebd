"""Fuzz target: the message decoder, then a node's handler (an in-process Node, no sockets).

Input: the byte stream a peer sends after its HELLO. It takes the path of scripts/fuzz.py's
engine (``fuzz.Fuzzer.run_input``): ``wire.FrameDecoder``, ``wire.decode_message``, and
``Node.handle`` of a real Node (temp data dir, blocks 1-2 of the seed chain) from a real Peer
whose transport is a stub; a HELLO goes through the connection manager's handshake checks and a
PEERS message through the node's dialler (numeric resolver, connects refused). Allowed outcomes:
a message handled, ProtocolError, Misbehaving (the peer dropped). Anything else is a crash, and so
is a broken oracle of that engine: a message that does not re-encode to the same bytes, or a
frame queued to the peer that its own decoder refuses.

    .venv/bin/python fuzz/messages.py --seconds 60      # see fuzz/fuzzharness.py for the options
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import fuzzharness
from fuzzharness import Target


def build() -> Target:
    import fuzz  # scripts/fuzz.py
    from p2pchain import wire

    fuzzharness.quiet_logs()

    class RaisingFuzzer(fuzz.Fuzzer):
        """scripts/fuzz.py's engine, but a crash propagates (to libFuzzer) instead of being noted."""

        last = ""

        def crash(self, stage: str, e: BaseException, data: bytes, cuts: list[int]) -> None:
            raise e

        def _feature(self, payload: bytes, text: str) -> None:
            self.last = text
            super()._feature(payload, text)

    tmp = tempfile.TemporaryDirectory(prefix="p2pchain-fuzz-messages-", dir=_ram_dir())
    loop = asyncio.new_event_loop()
    loop.set_debug(False)  # no slow-callback warnings: some inputs are meant to be slow
    asyncio.set_event_loop(loop)

    async def make() -> Any:
        return RaisingFuzzer(fuzz.NodeTarget(Path(tmp.name)), fuzz.FastRandom(0), None)

    fuzzer = loop.run_until_complete(make())

    async def one(data: bytes) -> None:
        await fuzzer.run_input(data, [])
        fuzzer.target.reconnect()  # the next input is a new connection's stream (in the loop: the
        # node's handlers of a closed peer may need it)

    def run(data: bytes) -> str:
        fuzzer.last = "none"
        loop.run_until_complete(one(data))
        return str(fuzzer.last)

    def seeds() -> list[bytes]:
        return [wire.encode_frame(m.payload()) for m in fuzz.seed_messages()]

    mutator = fuzz.Mutator(fuzz.FastRandom(1), fuzz.seed_messages())

    def generate(rng: random.Random) -> bytes:
        mutator.rng = rng
        return mutator.next_input()[0]

    def close() -> None:
        fuzzer.target.close()
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        tmp.cleanup()

    return Target("messages", run, seeds, generate, max_len=65536, close=close)


def _ram_dir() -> str | None:
    shm = Path("/dev/shm")  # the node's SQLite writes cost no disk
    return str(shm) if shm.is_dir() else None


if __name__ == "__main__":
    sys.exit(fuzzharness.main(build))
