"""addrman: one PEERS message cannot replace the address book or steer outbound connections
(issue 12, finding 3).

The book was first-in-first-out and the outbound filler picked from it uniformly: one unsolicited
PEERS of 1,000 addresses evicted every honest entry, and the victim handed the attacker's
addresses to whoever asked. Now (p2pchain/addrman.py, after Bitcoin Core's addrman) addresses sit
in buckets chosen by their source's and their own network group: a source holds at most
ADDRMAN_SOURCE_BUCKETS x ADDRMAN_BUCKET_SIZE entries and evicts nothing outside its buckets;
outbound picks a bucket uniformly and prefers network groups not yet used.

Unit tests on AddrMan, and one in-process node that learns honest addresses from seven peers,
then takes a 1,000-address flood. IP literals are read by the C parser when in canonical form;
tests check that netgroups, ban keys, loopback and what counts as an IP literal are exactly
ipaddress's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from pathlib import Path

from node_helpers import with_node
from p2p_peer import RawPeer

from p2pchain import limits, wire
from p2pchain.addrman import AddrMan, ban_key, host_of, ip_bytes, netgroup
from p2pchain.connmgr import is_ip_addr, is_loopback
from p2pchain.node import Node

SOURCE_CAP = limits.ADDRMAN_SOURCE_BUCKETS * limits.ADDRMAN_BUCKET_SIZE
HONEST_SOURCES = [f"127.{10 + i}.0.1" for i in range(7)]  # seven honest peers, seven network groups
ATTACKER = "127.9.0.1"


def honest_addrs(i: int) -> list[str]:
    """20 addresses a honest peer knows: nodes in groups of their own."""
    return [f"{30 + i}.{j}.0.1:7000" for j in range(20)]


FLOOD = [f"{100 + n // 250}.{n % 250}.7.7:7000" for n in range(1000)]  # 1,000 addresses in 1,000 groups


def mixed_book(seed: int) -> AddrMan:
    book = AddrMan(secret=seed.to_bytes(8, "big"), rng=random.Random(seed))
    for i, source in enumerate(HONEST_SOURCES):
        book.add(honest_addrs(i), source)
    book.add(FLOOD, ATTACKER)
    return book


def outbound_of(book: AddrMan, n: int = limits.TARGET_OUTBOUND) -> list[str]:
    """What the outbound filler would dial, one after another."""
    chosen: list[str] = []
    for _ in range(n):
        groups = {netgroup(host_of(a)) for a in chosen}
        pick = book.select(set(chosen), groups) or book.select(set(chosen))
        assert pick is not None
        chosen.append(pick)
    return chosen


def reference_netgroup(host: str) -> str:
    """netgroup as written with ipaddress alone (before the C parser read canonical literals)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host.lower()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        return f"{ip.packed[0]}.{ip.packed[1]}"
    high = ip.packed[:4].hex()
    return f"{high[:4]}:{high[4:]}::/32"


def literal_hosts() -> list[str]:
    """IP literals in every form ipaddress reads or refuses, names, and random canonical ones."""
    rng = random.Random(7)
    hosts = [
        *("1.2.3.4", "255.255.255.255", "0.0.0.0", "01.2.3.4", "1.2.3.04", "1.2.3", "1.2.3.4.5", "1.2.3.256"),
        *(" 1.2.3.4", "1.2.3.4 ", "1.2.3.4\x00", "+1.2.3.4", "1.2.3.-4", "0x1.2.3.4", "1e1.2.3.4", "١.2.3.4"),
        *("::", "::1", "::ffff:1.2.3.4", "::FFFF:1.2.3.4", "::ffff:102:304", "2001:DB8::1", "2001:db8:0:0:0:0:0:1"),
        *("2001:db8::1%eth0", "fe80::1%1", "[::1]", "::1.2.3.4", "1::2::3", ":::", "2001:db8::g", "", "localhost"),
        *("example.com", "EXAMPLE.com", "1.2.3.4:80", "2001:db8:0:1:1:1:1:1", "::ffff:0.0.0.0"),
        *("0:0:0:0:0:ffff:1.2.3.4", "::ffff:1.2.3.4%eth0"),
    ]
    hosts += [".".join(str(rng.randrange(300)) for _ in range(4)) for _ in range(300)]
    hosts += [str(ipaddress.IPv6Address(rng.randbytes(16))) for _ in range(300)]
    hosts += [ipaddress.IPv6Address(rng.randbytes(16)).exploded.upper() for _ in range(100)]
    hosts += [f"::ffff:{rng.randrange(256)}.{rng.randrange(256)}.1.2" for _ in range(100)]
    return hosts


def reference_ban_key(host: str) -> str:
    """ban_key as written with ipaddress alone (before the C parser read canonical literals)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None and not ip.is_loopback:
        return ipaddress.IPv6Network((ip, 64), strict=False).compressed
    return host


def reference_is_loopback(host: str) -> bool:
    """connmgr.is_loopback as written with ipaddress alone."""
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def test_ip_literals_and_netgroups_are_ipaddress_s() -> None:
    hosts = literal_hosts()
    for host in hosts:
        try:
            want: bytes | None = ipaddress.ip_address(host).packed
        except ValueError:
            want = None
        assert ip_bytes(host) == want, host
        assert netgroup(host) == reference_netgroup(host), host
        try:
            literal = bool(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            literal = False
        assert is_ip_addr(f"[{host}]:7000") == literal, host


def test_ban_keys_and_loopback_are_ipaddress_s() -> None:
    """ban_key (an IPv6 address's /64) and is_loopback read canonical literals with the C parser
    (a node loads ipaddress only for other text): both answer as ipaddress did, for every form but
    one, checked apart below: a zoned IPv6 address ('fe80::%eth0')."""
    rng = random.Random(8)
    hosts = [*literal_hosts(), "[2001:db8::1]", "127.255.0.1", "::ffff:127.0.0.2", "0:0:0:0:0:0:0:1", "::1%lo"]
    for _ in range(500):  # runs of zeros anywhere: both shorten the longest run to '::'
        raw = bytearray(rng.randbytes(16))
        start = rng.randrange(16)
        end = min(16, start + rng.randrange(17))
        raw[start:end] = bytes(end - start)
        hosts.append(str(ipaddress.IPv6Address(bytes(raw))))
    for host in hosts:
        assert ban_key(host) == reference_ban_key(host), host
        assert ban_key(f"[{host}]") == reference_ban_key(f"[{host}]"), host
        assert is_loopback(host) == reference_is_loopback(host), host
    # A zone is not part of the key, whatever the interface id. (ipaddress kept it only when the low
    # 64 bits were zero: 'fe80::%eth0/64' but 'fe80::/64' for 'fe80::1%eth0'; a ban stored by an
    # older node under such a key no longer matches: link-local peers with a zero interface id.)
    for host in ("fe80::%eth0", "fe80::1%eth0", "2001:db8::%x", "2001:db8::5%7"):
        unzoned = host.partition("%")[0]
        want = ipaddress.IPv6Network((unzoned, 64), strict=False).compressed
        assert ban_key(host) == ban_key(f"[{host}]") == ban_key(unzoned) == want, host


def test_one_source_holds_a_bounded_share_and_evicts_no_honest_entry() -> None:
    book = mixed_book(1)
    honest = {a for i in range(len(HONEST_SOURCES)) for a in honest_addrs(i)}
    flood = set(FLOOD) & set(book.addresses())
    assert 0 < len(flood) <= SOURCE_CAP
    missing = honest - set(book.addresses())
    assert len(missing) <= len(honest) // 10, f"{len(missing)} honest addresses lost (bucket collisions only)"
    assert book.add([f"200.{n}.1.1:1" for n in range(1000)], ATTACKER) <= SOURCE_CAP - len(flood)


def test_outbound_after_an_address_flood_is_mostly_honest() -> None:
    """Issue 12's bench target, as a unit: at least 6 of 8 outbound picks honest from a mixed
    book, on average over many keys (each key places the buckets differently)."""
    counts = []
    for seed in range(40):
        picks = outbound_of(mixed_book(seed))
        counts.append(sum(1 for a in picks if a not in FLOOD))
    assert sum(counts) / len(counts) >= 6.5, counts
    assert min(counts) >= 4, counts


def test_outbound_is_diverse_by_network_group() -> None:
    """Outbound picks span every network group the book holds, up to TARGET_OUTBOUND of them, for
    many keys. Each key places the buckets differently, and a collision can evict a group's only
    address (with a random key, about 3 % of keys kept 6 or 7 of these 8 groups): the picks are
    compared with what the book holds, not with what was offered."""
    for seed in range(20):
        book = AddrMan(secret=seed.to_bytes(32, "big"), rng=random.Random(seed))
        book.add([f"10.1.{n}.1:7000" for n in range(50)], "10.1.0.9")  # one group, many addresses
        book.add([f"10.{g}.0.1:7000" for g in range(2, 9)], "10.2.0.9")
        held = {netgroup(host_of(a)) for a in book.sample(len(book))}
        assert len(held) >= 6, (seed, held)
        picks = outbound_of(book)
        assert {netgroup(host_of(a)) for a in picks} == held, seed


def test_a_failing_address_is_forgotten_and_a_good_one_moves_to_tried() -> None:
    book = AddrMan(rng=random.Random(4))
    book.add(["10.0.0.1:1", "10.1.0.1:1"], "10.9.0.1")
    for _ in range(limits.ADDRMAN_MAX_FAILURES):
        book.failed("10.0.0.1:1")
    book.good("10.1.0.1:1")
    assert book.addresses() == ["10.1.0.1:1"]
    info = book.info("10.1.0.1:1")
    assert info is not None and info.tried


def test_a_node_keeps_honest_addresses_and_does_not_relay_a_flood(tmp_path: Path) -> None:
    async def scenario(node: Node) -> list[str]:
        peers: list[RawPeer] = []
        try:
            for i, source in enumerate([*HONEST_SOURCES, ATTACKER]):
                peer = await RawPeer.connect(node.port, source)
                peers.append(peer)
                await peer.handshake()
                peer.send(wire.Peers(tuple(FLOOD if source == ATTACKER else honest_addrs(i))))
                await peer.sync_with_ping()
            flood = peers[-1]
            flood.send(wire.Peers(tuple(f"201.{n % 250}.{n // 250}.1:1" for n in range(1000))))  # unasked, again
            await flood.sync_with_ping()
            asker = await RawPeer.connect(node.port, "127.50.0.1")
            peers.append(asker)
            await asker.handshake()
            asker.send(wire.GetPeers())
            answer: wire.Peers = await asker.expect(wire.Peers)
            return list(answer.peers)
        finally:
            await asyncio.gather(*(p.close() for p in peers))

    shared = asyncio.run(with_node(tmp_path, scenario, deadline_s=None, ban_loopback=False))
    honest = {a for i in range(len(HONEST_SOURCES)) for a in honest_addrs(i)}
    assert len(honest & set(shared)) >= len(honest) * 9 // 10, "the flood pushed honest addresses out"
    assert len(set(shared) - honest) <= SOURCE_CAP, "the node hands out more of the flood than one source may hold"
