"""The address manager: network groups and the address book (AddrMan).

A *network group* is the part of an address that one operator can hardly choose many of: the
/16 of an IPv4 address, the /32 of an IPv6 one (Bitcoin Core's GetGroup without its ASN map).
Eviction and outbound selection spread over groups, so many addresses from one group count as
about one.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Container, Iterable

from p2pchain import limits
from p2pchain.digests import sha256
from p2pchain.record import record

V4_MAPPED = bytes(10) + b"\xff\xff"  # the first 12 bytes of an IPv4-mapped IPv6 address (::ffff:a.b.c.d)
V6_LOOPBACK = bytes(15) + b"\x01"  # ::1


def ip_bytes(host: str) -> bytes | None:
    """The 4 or 16 bytes of an IP address literal (what ``ipaddress.ip_address`` accepts), None
    for anything else (a name). A peer's addresses come in the canonical form (inet_ntop's, as
    sockets name them), read here by the C parser; any other text goes to ``ipaddress``, which
    decides as it always did. A PEERS message of 1,000 addresses spent half its time on the event
    loop in ``ipaddress`` (about 6 us an IPv4 and 12 us an IPv6 address, parsed twice). Nor does a
    node load ``ipaddress`` (~5 M instructions) until some text needs it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        packed = socket.inet_pton(family, host)
        if socket.inet_ntop(family, packed) == host:
            return packed
    except (OSError, ValueError):  # not this family's literal; ValueError: a NUL in the text
        pass
    import ipaddress

    try:
        return ipaddress.ip_address(host).packed
    except ValueError:
        return None


def netgroup(host: str) -> str:
    """'10.1' for '10.1.2.3', '2001:0db8::/32' for '2001:db8::1' (an IPv4-mapped IPv6 address
    counts as its IPv4 address); a name that is not an IP literal is its own group."""
    packed = ip_bytes(host.strip("[]"))
    if packed is None:
        return host.lower()
    if packed[:12] == V4_MAPPED:
        packed = packed[12:]
    if len(packed) == 4:
        return f"{packed[0]}.{packed[1]}"
    high = packed[:4].hex()
    return f"{high[:4]}:{high[4:]}::/32"


def ban_key(host: str) -> str:
    """What a ban covers: an IPv4 address, or the /64 of an IPv6 one (one subscriber's prefix:
    walking through its 2**64 addresses must not walk around a ban), written as ``ipaddress``
    writes the network ('2001:db8:1:2::/64'): the trailing 64 zero bits are the longest run of
    zeros, which both it and inet_ntop shorten to '::'."""
    packed = ip_bytes(host.strip("[]"))
    if packed is None or len(packed) == 4 or packed[:12] == V4_MAPPED or packed == V6_LOOPBACK:
        return host
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8)) + "/64"


def host_of(addr: str) -> str:
    """The host of 'host:port' or '[v6]:port'."""
    return addr.rpartition(":")[0].strip("[]")


@record(frozen=False)
class AddrInfo:
    addr: str
    group: str  # netgroup of the address
    source_group: str  # netgroup of the peer that told us (the address itself when it announced itself)
    tried: bool = False  # we completed a handshake with it
    failures: int = 0  # dials in a row that failed


class AddrMan:
    """The address book, after Bitcoin Core's addrman (much smaller; no timestamps, no ASN map).

    *New* addresses (heard of) sit in ADDRMAN_NEW_BUCKETS buckets chosen by a keyed hash of the
    source's network group and the address's group, so that one source reaches at most
    ADDRMAN_SOURCE_BUCKETS buckets of ADDRMAN_BUCKET_SIZE entries: whatever it sends, it holds at
    most their product of the book and evicts nothing outside them. A full bucket takes a new
    address only in place of one that failed (Core: only "terrible" entries are replaced).
    *Tried* addresses (handshaken outbound) sit in ADDRMAN_TRIED_BUCKETS buckets by their own
    group; a full one sends its entry with the most failures back to new.

    ``select`` picks a bucket uniformly (tried or new, even odds), then an entry in it, skipping
    the network groups already used by outbound connections: the outbound set is diverse by
    group, and a flood of addresses from one source weighs as its few buckets.
    """

    def __init__(self, secret: bytes | None = None, rng: random.Random | None = None) -> None:
        self._secret = secret if secret is not None else os.urandom(32)
        self._rng = rng or random.Random()
        self._new: list[dict[str, AddrInfo]] = [{} for _ in range(limits.ADDRMAN_NEW_BUCKETS)]
        self._tried: list[dict[str, AddrInfo]] = [{} for _ in range(limits.ADDRMAN_TRIED_BUCKETS)]
        self._where: dict[str, tuple[bool, int]] = {}  # addr -> (tried, bucket)

    def _hash(self, *parts: str) -> int:
        digest = sha256(self._secret + "|".join(parts).encode()).digest()
        return int.from_bytes(digest[:8], "big")

    def _new_bucket(self, group: str, source_group: str) -> int:
        slot = self._hash("new-slot", group) % limits.ADDRMAN_SOURCE_BUCKETS
        return self._hash("new", source_group, str(slot)) % limits.ADDRMAN_NEW_BUCKETS

    def _tried_bucket(self, addr: str, group: str) -> int:
        slot = self._hash("tried-slot", addr) % limits.ADDRMAN_GROUP_TRIED_BUCKETS
        return self._hash("tried", group, str(slot)) % limits.ADDRMAN_TRIED_BUCKETS

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, addr: object) -> bool:
        return addr in self._where

    def addresses(self) -> list[str]:
        return list(self._where)

    def info(self, addr: str) -> AddrInfo | None:
        where = self._where.get(addr)
        if where is None:
            return None
        return (self._tried if where[0] else self._new)[where[1]][addr]

    # --- learning -----------------------------------------------------------------------------
    def add(self, addrs: Iterable[str], source_host: str) -> int:
        """Remember ``addrs`` heard from ``source_host``; the number of new entries."""
        source_group = netgroup(source_host)
        added = 0
        for addr in addrs:
            if addr in self._where:
                continue
            info = AddrInfo(addr, netgroup(host_of(addr)), source_group)
            if self._put_new(info):
                added += 1
        return added

    def _put_new(self, info: AddrInfo) -> bool:
        index = self._new_bucket(info.group, info.source_group)
        bucket = self._new[index]
        if len(bucket) >= limits.ADDRMAN_BUCKET_SIZE:
            worst = max(bucket.values(), key=lambda i: i.failures)
            if worst.failures == 0:
                return False  # every entry is as good as the newcomer: keep what we have
            self.remove(worst.addr)
        info.tried = False
        bucket[info.addr] = info
        self._where[info.addr] = (False, index)
        return True

    def remove(self, addr: str) -> None:
        where = self._where.pop(addr, None)
        if where is not None:
            del (self._tried if where[0] else self._new)[where[1]][addr]

    def good(self, addr: str) -> None:
        """We completed a handshake with ``addr`` (dialled): move it to tried."""
        info = self.info(addr)
        if info is None:
            info = AddrInfo(addr, netgroup(host_of(addr)), netgroup(host_of(addr)))
        info.failures = 0
        if info.tried:
            return
        self.remove(addr)
        index = self._tried_bucket(addr, info.group)
        bucket = self._tried[index]
        if len(bucket) >= limits.ADDRMAN_BUCKET_SIZE:  # the weakest entry makes room, back to new
            weakest = max(bucket.values(), key=lambda i: i.failures)
            self.remove(weakest.addr)
            self._put_new(weakest)
        info.tried = True
        bucket[addr] = info
        self._where[addr] = (True, index)

    def failed(self, addr: str) -> None:
        """A dial of ``addr`` failed: after ADDRMAN_MAX_FAILURES in a row it is forgotten."""
        info = self.info(addr)
        if info is None:
            return
        info.failures += 1
        if info.failures >= limits.ADDRMAN_MAX_FAILURES:
            self.remove(addr)

    # --- choosing -----------------------------------------------------------------------------
    def select(self, exclude: Container[str] = (), avoid_groups: Container[str] = ()) -> str | None:
        """An address to dial: not in ``exclude``, not in a group of ``avoid_groups``."""
        tables = [self._tried, self._new]
        if self._rng.random() < 0.5:
            tables.reverse()
        for table in tables:
            buckets = [
                entries
                for entries in (
                    [i for i in bucket.values() if i.addr not in exclude and i.group not in avoid_groups]
                    for bucket in table
                    if bucket
                )
                if entries
            ]
            if buckets:
                return self._rng.choice(self._rng.choice(buckets)).addr
        return None

    def sample(self, count: int) -> list[str]:
        """Up to ``count`` addresses at random (what GET_PEERS answers)."""
        addrs = list(self._where)
        return self._rng.sample(addrs, min(count, len(addrs)))
