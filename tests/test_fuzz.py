"""Fuzzing (issue 8): mutated and generated frames into the frame decoder, the message decoder and
a node's message handler. The only allowed outcomes are a message, ProtocolError, or the peer
dropped (Misbehaving); never another exception, never a dead node.

How: a short bounded run of the engine in scripts/fuzz.py (a real in-process Node fed through a
stub Peer; a random seed, printed, so every developer's run explores new inputs, and a fixed one
under CI=true, harness.random_seed), hypothesis-generated
maps of every message type, fuzzed streams written at a real node on a loopback socket (before
and after HELLO), and two planted bugs the harness must catch (so a silent harness fails)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from harness import random_seed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from node_helpers import with_node

from p2pchain import wire
from p2pchain.client import Client
from p2pchain.node import Node

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import fuzz  # scripts/fuzz.py: the engine that bench.py runs too

CI_INPUTS = 12_000  # about a second of one core
SEED = random_seed("FUZZ_SEED")  # fixed under CI=true; each developer's run explores new inputs


def _explain(report: fuzz.Report) -> str:
    parts = [f"seed {SEED} (rerun with FUZZ_SEED={SEED}): {report.crashes} crash(es)"]
    for path in report.crash_files:
        parts.append(Path(path).with_suffix(".txt").read_text())
    return "\n".join(parts)


def test_bounded_fuzz_run_has_no_crash(tmp_path: Path) -> None:
    report = fuzz.run(inputs=CI_INPUTS, seed=SEED, crash_dir=tmp_path)
    assert report.crashes == 0, _explain(report)
    assert report.inputs == CI_INPUTS
    # the run reached every stage: frames, decoded messages of every type, the node's handlers
    assert report.handled_types == set(wire.MESSAGE_TYPES)
    assert report.decoded > CI_INPUTS // 20
    assert report.misbehaving > 0 and report.handled > report.misbehaving
    assert len(report.features) > 150


def test_seed_messages_are_valid_and_cover_every_type() -> None:
    msgs = fuzz.seed_messages()
    assert {m.TYPE for m in msgs} == set(wire.MESSAGE_TYPES)
    for msg in msgs:
        assert wire.decode_message(msg.payload()) == msg


def test_the_harness_catches_a_handler_crash_and_saves_a_replayable_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_ping(self: Node, peer: Any, msg: wire.Ping) -> None:
        if msg.nonce % 3 == 0:
            raise KeyError("planted")
        peer.send(wire.Pong(msg.nonce))

    monkeypatch.setattr(Node, "_on_ping", broken_ping)
    report = fuzz.run(inputs=3000, seed=5, crash_dir=tmp_path)
    assert report.crashes > 0
    assert report.crash_files, "the crasher was not saved"
    saved = Path(report.crash_files[0])
    assert "KeyError" in saved.with_suffix(".txt").read_text()
    again = asyncio.run(fuzz.replay(saved))
    assert again.crashes == 1


def test_the_harness_catches_a_reply_its_decoder_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def garbling_ping(self: Node, peer: Any, msg: wire.Ping) -> None:
        peer.send_frame(wire.encode_frame(b"\xc1"), "PONG")  # 0xc1 is never valid msgpack

    monkeypatch.setattr(Node, "_on_ping", garbling_ping)
    report = fuzz.run(inputs=2000, seed=6, crash_dir=tmp_path)
    assert report.crashes > 0
    assert "OracleFailure" in Path(report.crash_files[0]).with_suffix(".txt").read_text()


def test_framing_oracle_agrees_with_the_decoder_on_a_bad_length_after_good_frames() -> None:
    good = wire.Ping(1).encode()
    data = good + good + b"\x00\x00\x00\x00" + good
    assert fuzz.reference_frames(data) == ([good[4:], good[4:]], True)
    payloads, failed = fuzz.feed_split(data, [len(good) + 2])
    assert failed and payloads == [good[4:], good[4:]]  # the frames before the bad length, all of them


# --- hypothesis: generated maps of every message type ---------------------------------------
SEED_DOCS = {m.TYPE: msgpack.unpackb(m.payload(), raw=False) for m in fuzz.seed_messages()}
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=80),
    st.binary(max_size=80),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20,
)


@st.composite
def message_maps(draw: st.DrawFn) -> dict[str, Any]:
    """A map of a real message type: each field the seed's value, a generated one, or missing."""
    kind = draw(st.sampled_from(sorted(SEED_DOCS)))
    doc: dict[str, Any] = {"type": kind}
    for key, value in SEED_DOCS[kind].items():
        if key == "type":
            continue
        choice = draw(st.integers(0, 9))
        if choice < 5:
            doc[key] = value
        elif choice < 9:
            doc[key] = draw(VALUES)
    return doc


@pytest.fixture
def target(tmp_path: Path) -> Iterator[tuple[asyncio.AbstractEventLoop, fuzz.Fuzzer]]:
    loop = asyncio.new_event_loop()

    async def make() -> fuzz.NodeTarget:
        return fuzz.NodeTarget(tmp_path / "node")

    node_target = loop.run_until_complete(make())
    try:
        yield loop, fuzz.Fuzzer(node_target, fuzz.FastRandom(SEED), tmp_path / "crashes")
    finally:
        node_target.close()
        loop.close()


def test_generated_messages_decode_or_fail_cleanly(target: tuple[asyncio.AbstractEventLoop, fuzz.Fuzzer]) -> None:
    loop, fuzzer = target

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(message_maps(), st.booleans())
    def check(doc: dict[str, Any], bin_type: bool) -> None:
        try:
            payload = msgpack.packb(doc, use_bin_type=bin_type)
        except (OverflowError, ValueError):
            return
        before = fuzzer.report.crashes
        loop.run_until_complete(fuzzer.run_input(wire.encode_frame(payload), []))
        assert fuzzer.report.crashes == before, _explain(fuzzer.report)

    check()
    assert fuzzer.report.decoded > 0 and fuzzer.report.handled > 0


# --- a real node on a loopback socket -------------------------------------------------------
class _Errors(logging.Handler):
    """Collects ERROR records: an exception escaping a peer's task is logged by asyncio."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _capture_errors() -> Iterator[_Errors]:
    handler = _Errors()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


async def _fuzz_connection(port: int, node: Node, stream: bytes, hello: bool) -> bool:
    """Write ``stream`` at the node (after a HELLO if ``hello``); True if the node hung up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        first = wire.decode_message(await wire.read_frame(reader))
        assert isinstance(first, wire.Hello)
        if hello:
            tip = node.chain.tip
            ours = wire.Hello(1, first.network, os.urandom(16), 0, tip.height, tip.hash, 0, "fuzz")
            writer.write(ours.encode())
        writer.write(stream)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        try:
            async with asyncio.timeout(1.0):  # the node drops us, or we stop waiting
                while await reader.read(65536):
                    pass
            return True
        except ConnectionError:
            return True
        except TimeoutError:
            return False
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def test_fuzzed_streams_at_a_real_node_never_break_it(tmp_path: Path) -> None:
    """40 connections, half of them after a proper HELLO, each writing a few mutated inputs; the
    node drops whom it must, logs no error, and then still serves an honest client."""
    rng = fuzz.FastRandom(SEED)
    mutator = fuzz.Mutator(rng, fuzz.seed_messages())
    dialled: list[str] = []

    loop_errors: list[dict[str, Any]] = []

    def no_dialling(node: Node) -> None:
        async def no_dial(addr: str) -> bool:  # fuzzed PEERS name hosts anywhere: never dial them
            dialled.append(addr)
            return False

        node.connmgr.dial = no_dial  # type: ignore[method-assign]
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))

    async def scenario(node: Node) -> tuple[dict[str, Any], list[bool]]:
        streams = [b"".join(mutator.next_input()[0] for _ in range(25)) for _ in range(40)]
        async with asyncio.timeout(60):
            dropped = await asyncio.gather(
                *(_fuzz_connection(node.port, node, s, hello=i % 2 == 0) for i, s in enumerate(streams))
            )
            async with await Client.connect("127.0.0.1", node.port) as client:
                status = await client.status()
        assert not loop_errors, loop_errors
        return status, dropped

    run = with_node(
        tmp_path,
        scenario,
        deadline_s=None,
        setup=no_dialling,
        params=fuzz.FUZZ_PARAMS,
        discover=True,
        ban_loopback=False,
    )
    with _capture_errors() as errors:
        status, dropped = asyncio.run(run)
    assert not errors.records, [r.getMessage() for r in errors.records]
    assert sum(dropped) >= len(dropped) // 2, f"the node hung up on only {sum(dropped)} of {len(dropped)}"
    assert status["height"] >= 0
    assert status["bans"] == []  # loopback peers are dropped, not banned


# --- regressions the fuzzer found -----------------------------------------------------------
@pytest.mark.parametrize("addr", ["a..b:7000", "x\x00y:7000", "127.0.0.\x00:7000", "a" * 64 + ".example:7000"])
def test_a_gossiped_address_no_resolver_takes_is_forgotten_not_raised(tmp_path: Path, addr: str) -> None:
    """Found by the fuzzer: PEERS may carry any "host:port" text, and the dialler let the
    resolver's ValueError (IDNA, NUL) escape from its task. Now the address is dropped."""

    async def scenario() -> tuple[bool, list[str]]:
        target = fuzz.NodeTarget(tmp_path / "node")  # its loop resolves offline and never connects
        try:
            connmgr = target.node.connmgr
            connmgr.add_addresses([addr], "127.0.0.1")
            return await connmgr.dial(addr), connmgr.addrman.addresses()
        finally:
            target.close()

    assert asyncio.run(scenario()) == (False, [])
