"""p2p_register: addresses registered through /nodes/register cannot pile up, hold descriptors for
ever or take the outbound slots (issue 12, finding 9).

Twelve /nodes/register calls of 64 tarpit addresses (they accept and never speak) left 751
addresses redialled for ever, counted toward the outbound target: honest outbound fell from 7 of 7
to 1 of 7 and the node held 360 descriptors. Now at most MAX_PERSISTENT_PEERS addresses are kept,
a registered address that never completes a handshake is forgotten after REGISTER_MAX_FAILURES
dials, and persistent connections are on top of the discovery target (Bitcoin's -addnode).

In-process: a node with a short handshake timeout and tarpit listeners on loopback.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from harness import until
from node_helpers import with_node

from p2pchain import limits
from p2pchain.node import Node
from p2pchain.peer import Tunables

TARPITS = 8
DEADLINE_S = 20.0


async def tarpit() -> tuple[asyncio.Server, list[asyncio.StreamWriter]]:
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # never speaks

    return await asyncio.start_server(accept, "127.0.0.1", 0), held


def test_registered_tarpits_are_forgotten_and_never_take_outbound_slots(tmp_path: Path) -> None:
    async def scenario(node: Node) -> None:
        pits = [await tarpit() for _ in range(TARPITS)]
        try:
            cm = node.connmgr
            addrs = [f"127.0.0.1:{server.sockets[0].getsockname()[1]}" for server, _ in pits]
            assert all(cm.connect(a, registered=True) for a in addrs)
            await until(lambda: sum(len(held) for _, held in pits) >= TARPITS, "every tarpit to be dialled", DEADLINE_S)
            assert cm.outbound_count() == 0, "registered addresses took slots of the discovery target"
            await until(lambda: not set(addrs) & set(cm.persistent), "the tarpits to be forgotten", DEADLINE_S)
            assert not any(p.dialed in addrs and not p.closed.is_set() for p in cm.peers)
        finally:
            for server, held in pits:
                server.close()
                for writer in held:
                    writer.close()

    tunables = Tunables(handshake_timeout=0.3)
    asyncio.run(with_node(tmp_path, scenario, deadline_s=None, discover=True, ban_loopback=False, tunables=tunables))


def test_at_most_max_persistent_peers_are_kept(tmp_path: Path) -> None:
    async def scenario(node: Node) -> list[bool]:
        # port 9 (discard) on loopback: nothing listens, the dials fail at once
        return [node.connmgr.connect(f"127.0.{i // 250}.{1 + i % 250}:9", registered=True) for i in range(100)]

    added = asyncio.run(with_node(tmp_path, scenario, deadline_s=None, ban_loopback=False))
    assert added == [True] * limits.MAX_PERSISTENT_PEERS + [False] * (100 - limits.MAX_PERSISTENT_PEERS)
