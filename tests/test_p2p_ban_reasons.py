"""p2p_ban_reasons: what a peer sends cannot break STATUS or get an honest client banned (issue 12,
finding 6).

Error texts quote the peer's data: one STATUS sent unasked, with long nested map keys, wrote a
12,000-character ban reason, and every client's STATUS decoder (4,096-byte strings) then failed
for 24 h; hundreds of such bans made STATUS pass the frame limit, and the honest client asking for
it was dropped and banned for the node's own encoding failure. Now reasons are clipped to
MAX_REASON_CHARS, STATUS lists at most MAX_STATUS_BANS bans with their count, and a message the
node cannot encode is its own bug: logged, the connection closed, no ban.

In-process: a Node with ban_loopback on, raw test peers from their own loopback addresses.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from node_helpers import with_node
from p2p_peer import RawPeer, connect_client, payload, refused

from p2pchain import limits
from p2pchain.node import Node

DEADLINE_S = 20.0
LONG_KEY = "k" * (limits.MAX_WIRE_STR_BYTES - 8)


def test_a_long_error_text_makes_a_short_ban_reason_and_status_still_decodes(tmp_path: Path) -> None:
    async def scenario(node: Node) -> dict[str, Any]:
        attacker = await RawPeer.connect(node.port, "127.0.9.7")
        try:
            await attacker.handshake()
            nested = {LONG_KEY: {LONG_KEY + "2": {LONG_KEY + "3": {"x": 1}}}}  # too deep: the error quotes the path
            attacker.send_payload(payload({"type": "STATUS", "id": 1, "status": nested}))
            await attacker.wait_closed()
        finally:
            await attacker.close()
        async with await connect_client(node.port, "127.0.9.8") as client:
            status: dict[str, Any] = await client.status()
        return status

    status = asyncio.run(with_node(tmp_path, scenario, deadline_s=DEADLINE_S))
    (ban,) = [b for b in status["bans"] if b["host"] == "127.0.9.7"]
    assert 0 < len(ban["reason"]) <= limits.MAX_REASON_CHARS
    assert status["bans_total"] == 1


def test_status_lists_a_bounded_number_of_bans_with_their_count(tmp_path: Path) -> None:
    many = limits.MAX_STATUS_BANS * 3

    async def scenario(node: Node) -> dict[str, Any]:
        for i in range(many):
            node.connmgr.ban(f"10.{i // 256}.{i % 256}.1", "x" * 20_000)
        async with await connect_client(node.port, "127.0.9.9") as client:
            status: dict[str, Any] = await client.status()
        return status

    status = asyncio.run(with_node(tmp_path, scenario, deadline_s=DEADLINE_S))
    assert status["bans_total"] == many
    assert len(status["bans"]) == limits.MAX_STATUS_BANS
    assert all(len(b["reason"]) <= limits.MAX_REASON_CHARS for b in status["bans"])


def test_an_answer_the_node_cannot_encode_does_not_ban_the_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(node: Node) -> tuple[bool, bool]:
        real = node.status
        monkeypatch.setattr(node, "status", lambda: {**real(), "huge": ["x" * 4000] * 1100})  # over MAX_FRAME_BYTES
        asker = await RawPeer.connect(node.port, "127.0.9.10")
        try:
            await asker.handshake()
            asker.send_payload(payload({"type": "GET_STATUS", "id": 1}))
            await asker.wait_closed()
        finally:
            await asker.close()
        monkeypatch.setattr(node, "status", real)
        return node.connmgr.is_banned("127.0.9.10"), not await refused(node.port, "127.0.9.10")

    caplog.set_level(logging.ERROR, logger="p2pchain")
    banned, let_in = asyncio.run(with_node(tmp_path, scenario, deadline_s=DEADLINE_S))
    assert not banned and let_in, "the client was banned for the node's own encoding failure"
    assert any("could not encode" in r.getMessage() for r in caplog.records)
