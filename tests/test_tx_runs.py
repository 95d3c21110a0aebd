"""tx_runs: transactions read in bulk. A peer's reader takes every frame complete in what the socket
delivered at once (Peer._serve), and a run of consecutive NEW_TX and SUBMIT_TX goes to the node in
one call and to the verifier threads in one hand-off. Each message must still get exactly what it
got when frames were read and handled one at a time: SUBMIT_TX answered in order with only a bad
signature refused, a malformed frame in the middle of a burst banned for what it is with what came
before it taken as before, nothing after the frame that got the peer dropped looked at, and a
transaction refused before its signature counts punished before a malformed frame after it is read.

In-process: a funded Node with ban_loopback on, raw test peers from their own loopback addresses
writing whole bursts at once (and the same burst split at random offsets).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import node_helpers
from harness import random_seed, until
from node_helpers import FUNDED, TEST_PARAMS, branch, next_block, pay
from p2p_peer import RawPeer, frame, payload

from p2pchain import limits, wire
from p2pchain.errors import ProtocolError
from p2pchain.keys import Wallet
from p2pchain.ledger.tx import Tx
from p2pchain.node import Node
from p2pchain.peer import Misbehaving, Peer, RunHandler, Tunables

T = TypeVar("T")
DEADLINE_S = 30.0
TO = Wallet.generate().address
SECOND = Wallet.generate()  # funded with one coin: its forged payment is refused for the signature alone
MALFORMED = frame(payload({"type": "PING"}))  # a PING without its nonce: a protocol error (ban)


def with_node(tmp_path: Path, scenario: Callable[[Node], Awaitable[T]]) -> Awaitable[T]:
    """A node whose chain pays FUNDED 50 rewards (a coin each: 50 payments) and SECOND one,
    listening on loopback, banning loopback peers."""
    blocks = branch(TEST_PARAMS.genesis.header, 50)
    blocks.append(next_block(blocks[-1].header, reward_to=SECOND.address))
    return node_helpers.with_node(tmp_path, scenario, blocks=blocks, deadline_s=DEADLINE_S)


def payments(n: int, first_nonce: int = 0) -> list[Tx]:
    return [pay(FUNDED, TO, 1, nonce=first_nonce + i) for i in range(n)]


def forged() -> Tx:
    return replace(pay(SECOND, TO, 1), signature=bytes(64))


def submits(txs: list[Tx], first_id: int = 1) -> bytes:
    return b"".join(frame(wire.SubmitTx(first_id + i, tx).payload()) for i, tx in enumerate(txs))


def new_txs(txs: list[Tx]) -> bytes:
    return b"".join(frame(wire.NewTx(tx).payload()) for tx in txs)


def ban_reason(node: Node, host: str) -> str | None:
    ban = node.connmgr.bans.get(host)
    return ban.reason if ban is not None else None


async def answers(peer: RawPeer, n: int) -> list[wire.SubmitResult]:
    return [await peer.expect(wire.SubmitResult) for _ in range(n)]


def test_a_burst_of_submit_tx_in_one_write_is_answered_in_order_with_only_the_bad_signature_refused(
    tmp_path: Path,
) -> None:
    good = payments(30)
    sent = [*good[:11], forged(), *good[11:]]

    async def scenario(node: Node) -> None:
        peer = await RawPeer.connect(node.port, "127.0.8.1")
        try:
            await peer.handshake()
            peer.send_raw(submits(sent))
            got = await answers(peer, len(sent))
            assert [a.id for a in got] == list(range(1, len(sent) + 1))
            assert [a.accepted for a in got] == [i != 11 for i in range(len(sent))]
            assert got[11].code == "tx-bad-signature", got[11]
            await peer.sync_with_ping()  # a bad SUBMIT_TX is answered, not punished
        finally:
            await peer.close()
        assert all(tx.txid in node.mempool for tx in good)

    asyncio.run(with_node(tmp_path, scenario))


def test_the_same_burst_split_anywhere_gets_the_same_answers(tmp_path: Path) -> None:
    seed = random_seed("P2PCHAIN_TEST_SEED")
    print(f"split seed {seed} (replay with P2PCHAIN_TEST_SEED={seed})")
    rng = random.Random(seed)
    good = payments(40)
    sent = [*good[:25], forged(), *good[25:]]
    data = submits(sent)

    async def scenario(node: Node) -> None:
        peer = await RawPeer.connect(node.port, "127.0.8.2")
        try:
            await peer.handshake()
            cuts = sorted(rng.sample(range(1, len(data)), 12))
            for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
                peer.send_raw(data[a:b])
                await peer.drain()
                await asyncio.sleep(0)  # ok: lets the node read a piece alone now and then (any split is right)
            got = await answers(peer, len(sent))
            assert [(a.id, a.accepted) for a in got] == [(i + 1, i != 25) for i in range(len(sent))], f"seed {seed}"
            await peer.sync_with_ping()
        finally:
            await peer.close()
        assert all(tx.txid in node.mempool for tx in good), f"seed {seed}"

    asyncio.run(with_node(tmp_path, scenario))


def test_a_malformed_frame_in_a_burst_of_submit_tx_bans_and_takes_only_what_came_before(tmp_path: Path) -> None:
    before, after = payments(3), payments(2, first_nonce=3)

    async def scenario(node: Node) -> None:
        peer = await RawPeer.connect(node.port, "127.0.8.3")
        try:
            await peer.handshake()
            peer.send_raw(submits(before) + MALFORMED + submits(after, first_id=10))
            await peer.wait_closed()
        finally:
            await peer.close()
        reason = ban_reason(node, "127.0.8.3")
        assert reason is not None and reason.startswith("protocol error"), reason
        # (as frame by frame: a SUBMIT_TX read before the bad frame is admitted, its answer lost)
        await until(lambda: all(tx.txid in node.mempool for tx in before), "the three before it pooled")
        await until(node.tx_batcher.idle, "the batcher idle")
        assert not any(tx.txid in node.mempool for tx in after)

    asyncio.run(with_node(tmp_path, scenario))


def test_a_malformed_frame_in_a_burst_of_new_tx_bans_and_nothing_after_it_is_taken(tmp_path: Path) -> None:
    before, after = payments(3), payments(2, first_nonce=3)

    async def scenario(node: Node) -> None:
        peer = await RawPeer.connect(node.port, "127.0.8.4")
        try:
            await peer.handshake()
            peer.send_raw(new_txs(before) + MALFORMED + new_txs(after))
            await peer.wait_closed()
        finally:
            await peer.close()
        reason = ban_reason(node, "127.0.8.4")
        assert reason is not None and reason.startswith("protocol error"), reason
        await until(node.tx_batcher.idle, "the batcher idle")
        assert not any(tx.txid in node.mempool for tx in after)

    asyncio.run(with_node(tmp_path, scenario))


def test_an_invalid_new_tx_is_punished_before_the_malformed_frame_after_it_is_read(tmp_path: Path) -> None:
    """On an idle node a transaction refused before its signature counts is admitted (and its
    sender banned) as it is handled, as when frames came one at a time: the bad frame that
    follows in the same write is never looked at, so the ban names the transaction."""
    zero = pay(FUNDED, TO, 0)  # amount 0: tx-bad-amount, refused before its signature is checked

    async def scenario(node: Node) -> None:
        peer = await RawPeer.connect(node.port, "127.0.8.5")
        try:
            await peer.handshake()
            peer.send_raw(new_txs([zero]) + MALFORMED + new_txs(payments(2)))
            await peer.wait_closed()
        finally:
            await peer.close()
        reason = ban_reason(node, "127.0.8.5")
        assert reason is not None and "tx-bad-amount" in reason, reason
        assert len(node.mempool) == 0

    asyncio.run(with_node(tmp_path, scenario))


BAD_LENGTH = b"\xff\xff\xff\xff"  # a frame length over MAX_FRAME_BYTES: the stream's framing is lost


def test_a_bad_length_prefix_behind_a_burst_of_submit_tx_bans_after_taking_the_burst(tmp_path: Path) -> None:
    """The frames complete before a bad length prefix in the same write are handled, as when
    frames were read one at a time: the three payments are pooled, then the peer is banned for
    the length."""
    before = payments(3)

    async def scenario(node: Node) -> None:
        peer = await RawPeer.connect(node.port, "127.0.8.6")
        try:
            await peer.handshake()
            peer.send_raw(submits(before) + BAD_LENGTH)
            await peer.wait_closed()
        finally:
            await peer.close()
        reason = ban_reason(node, "127.0.8.6")
        assert reason is not None and "frame" in reason, reason
        await until(lambda: all(tx.txid in node.mempool for tx in before), "the three before it pooled")

    asyncio.run(with_node(tmp_path, scenario))


def test_an_invalid_new_tx_before_a_bad_length_prefix_is_the_reason_of_the_ban(tmp_path: Path) -> None:
    zero = pay(FUNDED, TO, 0)  # amount 0: tx-bad-amount

    async def scenario(node: Node) -> None:
        peer = await RawPeer.connect(node.port, "127.0.8.7")
        try:
            await peer.handshake()
            peer.send_raw(new_txs([zero]) + BAD_LENGTH)
            await peer.wait_closed()
        finally:
            await peer.close()
        reason = ban_reason(node, "127.0.8.7")
        assert reason is not None and "tx-bad-amount" in reason, reason

    asyncio.run(with_node(tmp_path, scenario))


# --- Peer._serve alone: which calls a list of payloads makes, in which order ---------------------
class _Stub:
    """The reader, writer and transport a Peer is built with: _serve reads none of them, and
    closing the peer aborts a transport that is not there."""

    _buffer = b""

    @property
    def transport(self) -> _Stub:
        return self

    def get_extra_info(self, name: str) -> tuple[str, int]:
        return ("127.0.0.1", 1)

    def abort(self) -> None:
        pass


def serve(
    payloads: list[bytes], close_on: type[wire.Message] | None = None
) -> tuple[Peer, list[object], ProtocolError | None]:
    """Run Peer._serve over ``payloads``; return the peer, its calls (a list per run, a message
    per single handle) and the ProtocolError it raised, if any. ``close_on``: the handler of
    that type drops the peer."""
    calls: list[object] = []

    async def handle(peer: Peer, msg: wire.Message) -> None:
        calls.append(msg)
        if type(msg) is close_on:
            peer.misbehaved(Misbehaving("told to go"))

    async def handle_run(peer: Peer, msgs: list[wire.Message]) -> None:
        calls.append(list(msgs))
        if close_on is not None and any(type(m) is close_on for m in msgs):
            peer.misbehaved(Misbehaving("told to go"))

    async def go() -> tuple[Peer, ProtocolError | None]:
        stub = _Stub()
        peer = Peer(stub, stub, inbound=True, tunables=Tunables())  # type: ignore[arg-type]
        try:
            await peer._serve(payloads, handle, None, RunHandler((wire.SubmitTx, wire.NewTx), handle_run))
        except ProtocolError as e:
            return peer, e
        return peer, None

    peer, error = asyncio.run(go())
    return peer, calls, error


def test_serve_groups_consecutive_transactions_and_keeps_every_message_in_its_place() -> None:
    a, b, c, d = (wire.SubmitTx(i, tx) for i, tx in enumerate(payments(4)))
    n = wire.NewTx(payments(1, first_nonce=9)[0])
    ping = wire.Ping(5)
    _, calls, error = serve([m.payload() for m in (a, b, ping, c, n, ping, d)])
    assert calls == [[a, b], ping, [c, n], ping, [d]] and error is None


def test_serve_hands_over_the_run_before_a_malformed_frame_raises() -> None:
    a, b, c = (wire.SubmitTx(i, tx) for i, tx in enumerate(payments(3)))
    _, calls, error = serve([a.payload(), b.payload(), MALFORMED[4:], c.payload()])
    assert calls == [[a, b]]
    assert error is not None and "nonce" in str(error)


def test_serve_looks_at_nothing_after_the_message_that_dropped_the_peer() -> None:
    a, b = (wire.SubmitTx(i, tx) for i, tx in enumerate(payments(2)))
    n = wire.NewTx(payments(1, first_nonce=9)[0])
    # the run holding the NEW_TX drops the peer: the malformed frame after it is never decoded
    peer, calls, error = serve([a.payload(), n.payload(), MALFORMED[4:], b.payload()], close_on=wire.NewTx)
    assert calls == [[a, n]] and error is None
    assert peer.ban_reason == "told to go"
    # a single message that drops the peer: nothing after it either
    ping = wire.Ping(1)
    peer, calls, error = serve([ping.payload(), MALFORMED[4:], a.payload()], close_on=wire.Ping)
    assert calls == [ping] and error is None
    assert peer.ban_reason == "told to go"


def test_serve_hands_over_a_long_run_in_pieces_of_peer_run_max() -> None:
    """A chunk of many transactions is handed over PEER_RUN_MAX at a time, the peer's turn checked
    after each piece (a chunk of duplicates cannot hold the loop for its whole length)."""
    n = 2 * limits.PEER_RUN_MAX + 3
    msgs = [wire.SubmitTx(i, tx) for i, tx in enumerate(payments(n))]
    _, calls, error = serve([m.payload() for m in msgs])
    assert error is None
    sizes = [len(c) for c in calls if isinstance(c, list)]
    assert sizes == [limits.PEER_RUN_MAX, limits.PEER_RUN_MAX, 3]
    assert [m for c in calls if isinstance(c, list) for m in c] == msgs
