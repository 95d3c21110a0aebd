"""p2p_eviction: a few addresses that fill every inbound slot cannot lock other peers out.

One node with ``--ban-loopback`` (so loopback addresses are held to MAX_INBOUND_PER_IP like remote
ones). Four attacker addresses (127.0.8.1-4) open MAX_INBOUND_PER_IP handshaken connections each:
every inbound slot. A newcomer from 127.0.0.1 is then let in by evicting the newest connection
of the most crowded address, and is served; a newcomer from a crowded address gets no slot.

In-process (issue 12, finding 4): eviction by network group (/16, /32 for IPv6), the youngest
connection of the largest group, clients (no listening port) first: 64 idle clients from 64
groups no longer lock newcomers out.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from harness import run
from node_helpers import with_node
from p2p_peer import RawPeer, connect_client, refused

from p2pchain import limits
from p2pchain.node import Node

ATTACKERS = [f"127.0.8.{i}" for i in range(1, 5)]


def test_full_inbound_slots_evict_the_crowded_address_for_a_newcomer(nodes) -> None:  # type: ignore[no-untyped-def]
    assert len(ATTACKERS) * limits.MAX_INBOUND_PER_IP == limits.MAX_INBOUND
    node = nodes("target", args=["--ban-loopback"]).start()

    async def scenario() -> None:
        holders: list[RawPeer] = []
        try:
            for source in ATTACKERS:
                for _ in range(limits.MAX_INBOUND_PER_IP):
                    peer = await RawPeer.connect(node.port, source)
                    await peer.handshake()
                    await peer.sync_with_ping()  # handshaken and counted
                    holders.append(peer)
            assert await refused(node.port, ATTACKERS[0])  # a crowded address gains nothing...
            for p in holders:
                await p.sync_with_ping()  # ...and loses nothing: every holder is still served
            honest = await connect_client(node.port)  # 127.0.0.1: gets a slot
            try:
                status = await honest.status()
                assert status["height"] >= 0
            finally:
                await honest.close()
            async with asyncio.timeout(15):
                while not any(p.closed.is_set() for p in holders):
                    await asyncio.sleep(0.05)  # poll
            evicted = [p for p in holders if p.closed.is_set()]
            assert len(evicted) == 1, f"{len(evicted)} evicted for one newcomer"
        finally:
            await asyncio.gather(*(p.close() for p in holders))

    run(scenario(), 120)
    assert "evicted: inbound slots full" in node.log_path.read_text()


# --- network groups and idle clients (issue 12, finding 4): in-process -------------------------------
async def _fill_and_knock(sources: list[tuple[str, int]]) -> tuple[list[bool], bool]:
    """A node (ban_loopback) whose MAX_INBOUND slots are taken by handshaken peers from
    ``sources`` (address, HELLO port: 0 for a client), in that order; then a newcomer from
    127.0.0.1. Returns which holders were evicted (closed by the node), in order, and whether the
    newcomer was let in."""
    assert len(sources) == limits.MAX_INBOUND

    async def scenario(node: Node) -> tuple[list[bool], bool]:
        holders: list[RawPeer] = []
        try:
            for source, port in sources:
                peer = await RawPeer.connect(node.port, source)
                holders.append(peer)
                await peer.handshake(port=port)
                await peer.sync_with_ping()
            newcomer = not await refused(node.port, LOOPBACK_NEWCOMER)
            async with asyncio.timeout(15):
                while newcomer and not any(p.closed.is_set() for p in holders):
                    await asyncio.sleep(0.02)  # poll
            return [p.closed.is_set() for p in holders], newcomer
        finally:
            await asyncio.gather(*(p.close() for p in holders))

    with tempfile.TemporaryDirectory() as tmp:
        return await with_node(Path(tmp), scenario, deadline_s=None)


LOOPBACK_NEWCOMER = "127.0.0.1"


def test_idle_clients_from_as_many_groups_do_not_lock_newcomers_out() -> None:
    """64 idle clients from 64 addresses in 64 groups: no address or group holds two slots, and
    the old rule refused every newcomer ("inbound limit 64 reached"). The client silent longest goes."""
    sources = [(f"127.{n}.0.1", 0) for n in range(1, limits.MAX_INBOUND + 1)]
    evicted, let_in = run(_fill_and_knock(sources), 120)
    assert let_in, "the newcomer was refused"
    assert evicted.count(True) == 1
    assert evicted[0], "not the client silent longest"


def test_the_youngest_peer_of_the_largest_network_group_is_evicted_first() -> None:
    """Nodes from one /16 (127.100.x.x, 40 addresses) and 24 from groups of their own: a
    newcomer evicts the youngest of the /16, not a lone peer."""
    crowd = [(f"127.100.0.{n}", 1) for n in range(1, 41)]
    lone = [(f"127.{n}.0.1", 1) for n in range(1, limits.MAX_INBOUND - 40 + 1)]
    sources = crowd[:20] + lone + crowd[20:-1] + [crowd[-1]]
    evicted, let_in = run(_fill_and_knock(sources), 120)
    assert let_in
    assert [src for (src, _), gone in zip(sources, evicted, strict=True) if gone] == [crowd[-1][0]]


def test_a_client_goes_before_any_listening_node() -> None:
    sources = [(f"127.{n}.0.1", 1) for n in range(1, limits.MAX_INBOUND + 1)]
    sources[10] = ("127.200.0.1", 0)  # one client, neither young nor in a crowded group
    evicted, let_in = run(_fill_and_knock(sources), 120)
    assert let_in
    assert [i for i, gone in enumerate(evicted) if gone] == [10]
