"""p2p_eviction: a few addresses that fill every inbound slot cannot lock other peers out.

One node with ``--ban-loopback`` (so loopback addresses are held to MAX_INBOUND_PER_IP like remote
ones). Four attacker addresses (127.0.8.1-4) open MAX_INBOUND_PER_IP handshaken connections each:
every inbound slot. A newcomer from 127.0.0.1 is then let in by evicting the newest connection
of the most crowded address, and is served; a newcomer from a crowded address gets no slot.
"""

from __future__ import annotations

import asyncio

from harness import run
from p2p_peer import RawPeer, connect_client, refused

from p2pchain import limits

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
