"""soak (scripts/benchlib/soak.py, issue 18): the verdict and accounting logic of
``bench.py soak``, and the relays it partitions the swarm with. The soak itself runs for minutes
(docs/benchmarks.md records a 30-minute run); here each piece it relies on is checked alone, fast:
- the verdict fails a run for each broken promise (disagreement, a lost or doubled payment, memory
  growth over 10 %, an unexpected ERROR line, fewer kills or partitions than scheduled);
- a payment is confirmed (once), pending (in a mempool), doubled, invalidated (the final chain
  cannot fund it) or lost (valid, yet nowhere) as the end finds it;
- the schedule of a 30-minute run has 60 kills and 10 partitions, each healed before the end;
- a Link relays bytes both ways, cuts its connections and refuses new ones while partitioned
  (across halves only), and relays again once healed.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from benchlib import soak

GOOD: dict[str, Any] = {
    "soak_agreed": True,
    "soak_payments_accepted": 120,
    "soak_payments_lost": 0,
    "soak_payments_twice": 0,
    "soak_rss_growth_ratio": 1.03,
    "soak_error_lines": 0,
    "soak_kills": 4,
    "soak_partitions": 1,
}


def test_a_run_that_kept_every_promise_passes() -> None:
    assert soak.soak_verdict(GOOD, want_kills=4, want_partitions=1) == []


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"soak_agreed": False}, "did not agree"),
        ({"soak_payments_lost": 1}, "1 accepted payment(s) lost"),
        ({"soak_payments_twice": 2}, "2 payment(s) confirmed twice"),
        ({"soak_payments_accepted": 0}, "no payment was accepted"),
        ({"soak_rss_growth_ratio": 1.11}, "grew by a ratio of 1.11"),
        ({"soak_rss_growth_ratio": None}, "ratio of None"),
        ({"soak_error_lines": 3}, "3 unexpected ERROR"),
        ({"soak_kills": 3}, "3 kill(s) of 4"),
        ({"soak_partitions": 0}, "0 partition(s) of 1"),
    ],
)
def test_each_broken_promise_fails_the_run(change: dict[str, Any], words: str) -> None:
    failures = soak.soak_verdict({**GOOD, **change}, want_kills=4, want_partitions=1)
    assert len(failures) == 1 and words in failures[0], failures


def test_payments_are_confirmed_once_pending_doubled_invalidated_dropped_or_lost() -> None:
    """S sent nonces 0-4: 0 confirmed, 1 twice (a bug), 2 pending, 3 and 4 nowhere. T sent 7-9:
    its final balance (2) covers 7 and 8 but not 9; 7 is pending, 8 nowhere. U's nonce 3 is
    nowhere, though the final chain says U's next nonce is 5: a payment the launcher never made
    took its nonce. V sent nonce 4 twice (v4 after the node dropped v4a): v4a is confirmed."""
    pays = {
        b"s0": soak.Payment("S", 0, 1, 2), b"s1": soak.Payment("S", 1, 1, 2), b"s2": soak.Payment("S", 2, 1, 2),
        b"s3": soak.Payment("S", 3, 1, 2), b"s4": soak.Payment("S", 4, 1, 2),
        b"t7": soak.Payment("T", 7, 1, 3), b"t8": soak.Payment("T", 8, 1, 3), b"t9": soak.Payment("T", 9, 1, 3),
        b"u3": soak.Payment("U", 3, 1, 3), b"v4a": soak.Payment("V", 4, 1, 3), b"v4": soak.Payment("V", 4, 1, 3),
    }  # fmt: skip
    ledger = soak.Ledger(accepted=pays)
    in_chain = Counter({b"s0": 1, b"s1": 2, b"x": 1, b"v4a": 1})
    finals = {"S": (2, 100), "T": (7, 2), "U": (5, 100), "V": (5, 9)}
    out = ledger.outcome(in_chain, {b"s2", b"t7"}, finals)
    assert out == {
        "confirmed": [b"s0", b"v4a"],
        "twice": [b"s1"],
        "pending": [b"s2", b"t7"],
        "invalidated": [b"t9"],
        "superseded": [b"v4"],
        "reorg_dropped": [],
        "lost": [b"s3", b"s4", b"t8", b"u3"],
    }
    # s3 and s4 were dropped by their entry node as a reorg left them unfundable (it logged it):
    # the final chain could fund them again, but nothing brings a dropped payment back
    reorged = ledger.outcome(in_chain, {b"s2", b"t7"}, finals, reorg_dropped={b"s3", b"s4"})
    assert reorged["reorg_dropped"] == [b"s3", b"s4"] and reorged["lost"] == [b"t8", b"u3"]
    # once a payment is unfundable, every later one of its sender is stranded behind it
    stranded = soak.Ledger(accepted={b"t7": pays[b"t7"], b"t8": pays[b"t8"], b"t9": pays[b"t9"]})
    assert stranded.outcome(Counter(), set(), {"T": (7, 0)})["invalidated"] == [b"t7", b"t8", b"t9"]


def test_memory_growth_is_the_worst_node_measured_both_times() -> None:
    assert soak.rss_growth({2: 50.0, 3: 40.0, 8: 60.0}, {2: 51.0, 3: 44.0}) == pytest.approx(1.1)
    assert soak.rss_growth({}, {2: 50.0}) is None


def test_memory_growth_per_block_is_the_worst_node_over_the_blocks_between_the_readings() -> None:
    # node 3 grew 1 MiB while the chain grew by 512 blocks: 2 KiB a block
    assert soak.rss_per_block({2: 50.0, 3: 40.0}, {2: 50.5, 3: 41.0}, 100, 612) == 2048
    assert soak.rss_per_block({2: 50.0}, {2: 51.0}, 100, 100) is None  # no block: growth follows the clock alone
    assert soak.rss_per_block({2: 50.0}, {2: 51.0}, None, 100) is None  # the entry node did not answer


def test_only_unexpected_error_lines_count() -> None:
    lines = [
        "2026-11-30 09:00:00,001 ERROR p2pchain.node: something broke",
        "2026-11-30 09:00:00,002 INFO p2pchain.node: fine, mentions ERROR later",
        "2026-11-30 09:00:00,003 ERROR p2pchain.peer: known noise 42",
    ]
    assert soak.unexpected_errors(lines, expected=(r"known noise \d+",)) == [lines[0]]
    assert len(soak.unexpected_errors(lines, expected=())) == 2


def test_a_thirty_minute_schedule_has_sixty_kills_and_ten_healed_partitions() -> None:
    schedule = soak.Schedule(1800, kill_every=30, partition_every=180, partition_for=45, pay_interval=0.5)
    assert len(schedule.kills()) == 60 and schedule.kills()[0] == 15
    starts = schedule.partitions()
    assert len(starts) == 10 and all(t + 45 < 1800 for t in starts)
    assert schedule.rss_at() == 120
    short = soak.Schedule(60, kill_every=30, partition_every=180, partition_for=15, pay_interval=0.5)
    assert len(short.kills()) == 2 and len(short.partitions()) == 1 and short.rss_at() == 30


def test_the_topology_holds_each_half_together_and_crosses_it() -> None:
    for h in (0, 1):
        members = {i for i in range(soak.NODES) if i % 2 == h}
        inside = {(a, b) for a, b in soak.LINKS if a in members and b in members}
        reached = {min(members)}
        for _ in range(soak.NODES):
            reached |= {b for a, b in inside if a in reached} | {a for a, b in inside if b in reached}
        assert reached == members
    assert any(a % 2 != b % 2 for a, b in soak.LINKS)
    assert not set(soak.SURVIVORS) & set(soak.KILL_VICTIMS) and set(soak.MINERS) <= set(soak.KILL_VICTIMS)
    assert set(soak.ENTRY.values()) <= set(soak.SURVIVORS)


def test_a_link_relays_cuts_across_halves_and_relays_again_when_healed() -> None:
    async def go() -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        net = soak.Net()
        across, inside = soak.Link(net, 0, 1, port), soak.Link(net, 0, 2, port)
        net.links += [across, inside]
        for link in net.links:
            await link.start()

        async def roundtrip(link: soak.Link) -> bytes:
            """What comes back for a ping (b"" when the relay closed or reset the connection)."""
            reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
            try:
                writer.write(b"ping")
                await writer.drain()
                async with asyncio.timeout(5):
                    return await reader.read(1024)
            except ConnectionError:
                return b""
            finally:
                writer.close()

        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", across.port)
            writer.write(b"hello")
            async with asyncio.timeout(5):
                assert await reader.read(1024) == b"hello"
            assert net.partition() == 1  # the open connection across is cut (reset, or closed)...
            with pytest.raises(ConnectionError):
                async with asyncio.timeout(5):
                    if await reader.read(1024) == b"":
                        raise ConnectionResetError
            writer.close()
            assert await roundtrip(across) == b""  # ...a new one is closed at once...
            assert await roundtrip(inside) == b"ping"  # ...and the same half still talks
            net.heal()
            assert await roundtrip(across) == b"ping"
        finally:
            await net.close()
            server.close()

    asyncio.run(go())
