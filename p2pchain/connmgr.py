"""Connections: listen, dial with backoff, keep the outbound target, refuse what is over the
limits, never connect to ourselves or twice to one dialled address, and remember bans."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from p2pchain import limits, wire
from p2pchain.addrman import V4_MAPPED, V6_LOOPBACK, AddrMan, ban_key, host_of, ip_bytes, netgroup
from p2pchain.errors import clip
from p2pchain.metrics import Traffic
from p2pchain.peer import Misbehaving, Peer, RunHandler, Tunables, open_connection, start_server
from p2pchain.store import Ban, Store

log = logging.getLogger(__name__)

Handler = Callable[[Peer, wire.Message], Awaitable[None]]


def parse_addr(text: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); ValueError with a clear message otherwise."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r} is not host:port (e.g. 127.0.0.1:7001)")
    return host.strip("[]"), int(port_text)


def is_ip_addr(addr: str) -> bool:
    """'1.2.3.4:5' or '[::1]:5': an IP literal and a port, no name to resolve."""
    try:
        host, _ = parse_addr(addr)
    except ValueError:
        return False
    return ip_bytes(host) is not None


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, an IPv4-mapped 127.x (a dual-stack socket's view of it), or localhost."""
    if host == "localhost":
        return True
    packed = ip_bytes(host)
    if packed is None:
        return False
    if packed[:12] == V4_MAPPED:
        packed = packed[12:]
    return packed[0] == 127 if len(packed) == 4 else packed == V6_LOOPBACK


class ConnectionManager:
    def __init__(
        self,
        *,
        node_id: bytes,
        network: bytes,
        store: Store,
        make_hello: Callable[[], wire.Hello],
        on_hello: Callable[[Peer], None],
        handle: Handler,
        on_close: Callable[[Peer], None],
        tunables: Tunables,
        ban_loopback: bool = False,
        traffic: Traffic | None = None,
        unneeded: Callable[[Peer, bytes], str | None] | None = None,
        handle_run: RunHandler | None = None,
        sieves: Callable[[Peer], bool] | None = None,
    ) -> None:
        self.node_id = node_id
        self.network = network
        self.store = store
        self.make_hello = make_hello
        self.node_on_hello = on_hello
        self.handle = handle
        self.unneeded = unneeded  # a payload the node need not decode (Peer.run)
        self.handle_run = handle_run  # runs of consecutive transactions, in one call (Peer.run)
        self.sieves = sieves  # whether a peer's frames may be dropped by unneeded as they arrive (Peer.run)
        self.on_close = on_close
        self.tunables = tunables
        self.ban_loopback = ban_loopback
        self.traffic = traffic if traffic is not None else Traffic()  # every peer counts its frames here
        self.peers: set[Peer] = set()  # every open connection, handshaken or not
        # handshaken peers (an ordered set). Not keyed by node id: HELLO's node_id is unauthenticated, so
        # it only detects a connection to ourselves; two peers may claim one id (issue 12, finding 5)
        self.handshaken: dict[Peer, None] = {}
        self.persistent: dict[str, asyncio.Task[None]] = {}  # --peer / register: redialled forever
        self.addrman = AddrMan()  # learnt addresses, bucketed by source and network group
        self.self_addrs: OrderedDict[str, None] = OrderedDict()  # addresses that turned out to be this node
        self.dialing: set[str] = set()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[object]] = set()
        self.bans: dict[str, Ban] = {b.host: b for b in store.bans(self._now_ms())}
        self._pushed: OrderedDict[str, float] = OrderedDict()  # listening address -> when its mempool push went

    @staticmethod
    def _now_ms() -> int:
        return int(time.time() * 1000)

    # --- lifecycle --------------------------------------------------------------------------
    async def listen(self, host: str, port: int) -> int:
        self.server = await start_server(self._accept, host, port)
        sock = self.server.sockets[0]
        return int(sock.getsockname()[1])

    def start(self) -> None:
        self._spawn(self._fill_outbound())

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for peer in list(self.peers):
            peer.close("shutting down", quiet=True)
        for task in list(self.tasks) + list(self.persistent.values()):
            task.cancel()
        await asyncio.gather(*self.tasks, *self.persistent.values(), return_exceptions=True)
        if self.server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self.server.wait_closed()

    def _spawn(self, coro: Awaitable[object]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- bans -------------------------------------------------------------------------------
    def is_banned(self, host: str) -> bool:
        key = ban_key(host)
        ban = self.bans.get(key)
        if ban is None:
            return False
        if ban.until_ms <= self._now_ms():
            del self.bans[key]
            self.store.unban(key)
            return False
        return True

    def ban(self, host: str, reason: str) -> None:
        reason = clip(reason)
        if is_loopback(host) and not self.ban_loopback:
            log.info("not banning loopback %s (%s): disconnected only", host, reason)
            return
        host = ban_key(host)  # an IPv6 address: its /64
        until = self._now_ms() + int(limits.BAN_SECONDS * 1000)
        while len(self.bans) >= limits.MAX_BANS and host not in self.bans:
            soonest = min(self.bans.values(), key=lambda b: b.until_ms)
            del self.bans[soonest.host]
            self.store.unban(soonest.host)
        self.bans[host] = Ban(host, until, reason)
        self.store.ban(host, until, reason)
        log.warning("banned %s for %d s: %s", host, limits.BAN_SECONDS, reason, extra={"reason": reason, "addr": host})

    def current_bans(self) -> list[Ban]:
        return [b for b in self.bans.values() if b.until_ms > self._now_ms()]

    def listed_bans(self) -> tuple[list[Ban], int]:
        """The MAX_STATUS_BANS latest bans (reasons clipped, also those stored by an older
        version) and the count of all current bans: what STATUS shows, bounded in size."""
        bans = self.current_bans()
        latest = sorted(bans, key=lambda b: -b.until_ms)[: limits.MAX_STATUS_BANS]
        return [Ban(b.host, b.until_ms, clip(b.reason)) for b in latest], len(bans)

    # --- peers ------------------------------------------------------------------------------
    @property
    def ready(self) -> list[Peer]:
        return [p for p in self.handshaken if not p.closed.is_set()]

    def outbound_count(self) -> int:
        """Outbound connections toward the discovery target: the persistent ones (--peer,
        /nodes/register) are on top of it, as Bitcoin's -addnode, so that addresses registered
        by anyone (or tarpits that accept and never speak) cannot take its slots."""
        persistent = self.persistent
        return sum(1 for p in self.peers if not p.inbound and p.dialed not in persistent) + sum(
            1 for a in self.dialing if a not in persistent
        )

    def add_addresses(self, addrs: list[str], source_host: str) -> None:
        """Remember addresses heard from ``source_host`` to dial later (AddrMan: what one source
        can add is bounded). Only IP literals: a peer must not make us resolve names it chose
        (Bitcoin's addr messages carry IPs too)."""
        self.addrman.add((a for a in addrs if a not in self.self_addrs and is_ip_addr(a)), source_host)

    def mempool_push_allowed(self, listen_addr: str | None, host: str) -> bool:
        """Whether a peer listening at ``listen_addr`` (None: a client) and connected from ``host``
        gets our mempool pushed on connect now (counted as done if so). The push costs 4-8 ms and
        ~25 KB: a listening address gets it once per MEMPOOL_PUSH_INTERVAL_S, and one host at
        most MEMPOOL_PUSHES_PER_HOST times in it (a client reconnecting with claimed ports got it
        every time, without limit). Loopback is exempt from the per-host bound, as from bans,
        unless --ban-loopback."""
        now = time.monotonic()
        pushed = self._pushed
        while pushed and next(iter(pushed.values())) < now - limits.MEMPOOL_PUSH_INTERVAL_S:
            pushed.popitem(last=False)
        if not listen_addr or listen_addr in pushed:
            return False
        shared = is_loopback(host) and not self.ban_loopback  # a local swarm shares 127.0.0.1
        if not shared and sum(1 for a in pushed if a.rpartition(":")[0].strip("[]") == host) >= (
            limits.MEMPOOL_PUSHES_PER_HOST
        ):
            return False
        pushed[listen_addr] = now
        while len(pushed) > limits.MEMPOOL_PUSH_REMEMBERED:
            pushed.popitem(last=False)
        return True

    def known_addresses(self) -> list[str]:
        """What GET_PEERS answers: our peers' listening addresses, then a random sample of the book."""
        live = [p.listen_addr for p in self.ready if p.listen_addr]
        book = self.addrman.sample(limits.MAX_PEERS_PER_MESSAGE)
        return list(dict.fromkeys([*live, *book]))[: limits.MAX_PEERS_PER_MESSAGE]

    def _check_hello(self, peer: Peer) -> None:
        hello = peer.hello
        assert hello is not None
        if hello.network != self.network:
            raise Misbehaving(
                f"on another network {hello.network.hex()[:12]}… (ours {self.network.hex()[:12]}…)", ban=False
            )
        if hello.version < limits.MIN_PROTOCOL_VERSION:  # a newer peer speaks our version with us
            raise Misbehaving(
                f"protocol version {hello.version} is older than {limits.MIN_PROTOCOL_VERSION}", ban=False
            )
        if hello.node_id == self.node_id:
            dialed = peer.dialed
            if dialed:
                self.self_addrs[dialed] = None
                while len(self.self_addrs) > limits.SELF_ADDRS_MAX:
                    self.self_addrs.popitem(last=False)
                self.addrman.remove(dialed)
            raise Misbehaving("connected to ourselves", ban=False)
        # Duplicates are outbound connections to one dialled address; an inbound connection never
        # replaces (nor is refused for) another, whatever node id it claims.
        if peer.dialed is not None and any(
            p is not peer and p.dialed == peer.dialed and not p.closed.is_set() for p in self.handshaken
        ):
            raise Misbehaving(f"already connected to this address ({peer.dialed})", ban=False)
        self.handshaken[peer] = None
        if peer.dialed is not None and is_ip_addr(peer.dialed):
            self.addrman.good(peer.dialed)
        self.node_on_hello(peer)

    async def _serve(self, peer: Peer) -> None:
        self.peers.add(peer)
        try:
            await peer.run(
                self.make_hello(), self._check_hello, self.handle, self.unneeded, self.handle_run, self.sieves
            )
        finally:
            self.peers.discard(peer)
            self.handshaken.pop(peer, None)
            if peer.ban_reason is not None:
                self.ban(peer.host, peer.ban_reason)
            self.on_close(peer)

    def inbound_count(self) -> int:
        return sum(1 for p in self.peers if p.inbound and not p.closed.is_set())

    def _evict_inbound(self) -> bool:
        """Free an inbound slot for a newcomer, in the spirit of Bitcoin Core's eviction. Peers
        that gave us a block or transaction we took are protected. Of the rest, a client (no
        listening port in its HELLO, or no HELLO yet) goes first, the one silent longest; else
        the youngest connection of the network group (/16, /32 for IPv6) holding the most slots.
        So neither a few addresses nor many addresses of one group nor idle clients from as many
        groups can lock newcomers out; False only when every inbound peer is protected."""
        candidates = [p for p in self.peers if p.inbound and not p.closed.is_set() and not p.useful]
        if not candidates:
            return False
        clients = [p for p in candidates if p.listen_addr is None]
        if clients:
            victim = min(clients, key=lambda p: p.last_recv)
            why = f"the client silent longest ({time.monotonic() - victim.last_recv:.0f} s)"
        else:
            groups: dict[str, list[Peer]] = {}
            for p in candidates:
                groups.setdefault(netgroup(p.host), []).append(p)
            crowded = max(groups.values(), key=lambda g: (len(g), max(p.connected_at for p in g)))
            victim = max(crowded, key=lambda p: p.connected_at)
            why = f"the youngest of network group {netgroup(victim.host)}, which holds {len(crowded)} slots"
        victim.close(f"evicted: inbound slots full, {why}")
        return True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host = writer.get_extra_info("peername")[0]
        refuse = None
        if self.server is not None and not self.server.is_serving():
            refuse = "shutting down"  # accepted just before close(): it would outlive close()
        elif self.is_banned(host):
            refuse = "banned"
        elif (self.ban_loopback or not is_loopback(host)) and sum(
            1 for p in self.peers if p.inbound and p.host == host and not p.closed.is_set()
        ) >= limits.MAX_INBOUND_PER_IP:
            refuse = f"{limits.MAX_INBOUND_PER_IP} connections from this address already"
        elif self.inbound_count() >= limits.MAX_INBOUND and not self._evict_inbound():
            refuse = f"inbound limit {limits.MAX_INBOUND} reached"
        if refuse is not None:
            log.info("refusing inbound connection from %s: %s", host, refuse, extra={"reason": refuse, "addr": host})
            writer.close()
            return
        # The server owns this task and nobody awaits it: close() must cancel and await it like the
        # dialled ones, or a handler still running (a sync batch) would use the store after it closed.
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        try:
            await self._serve(Peer(reader, writer, inbound=True, tunables=self.tunables, traffic=self.traffic))
        except asyncio.CancelledError:
            # Shutdown cancels this server-owned task, which nobody awaits; Python 3.11's
            # start_server would log the cancellation as an "Exception in callback" traceback.
            writer.close()

    async def dial(self, addr: str) -> bool:
        """Connect to ``addr`` and serve the connection until it ends; True if it handshook."""
        host, port = parse_addr(addr)
        if self.is_banned(host) or addr in self.self_addrs:
            return False
        self.dialing.add(addr)
        try:
            async with asyncio.timeout(limits.DIAL_TIMEOUT_S):
                reader, writer = await open_connection(host, port)
        except (OSError, TimeoutError) as e:
            log.debug("could not connect to %s: %s", addr, e)
            self.addrman.failed(addr)
            return False
        except ValueError as e:  # a gossiped host no resolver takes: "a..b", a NUL, a 64-char label
            log.info("forgetting address %r: %s", addr, e)
            self.addrman.remove(addr)
            return False
        finally:
            self.dialing.discard(addr)
        peer = Peer(reader, writer, inbound=False, tunables=self.tunables, traffic=self.traffic)
        peer.dialed = addr
        await self._serve(peer)
        return peer.hello is not None

    def connect(self, addr: str, *, registered: bool = False) -> bool:
        """Keep a connection to ``addr`` (from --peer, or /nodes/register when ``registered``),
        redialling with backoff. A registered address is forgotten if its first
        REGISTER_MAX_FAILURES dials never complete a handshake, and at most MAX_PERSISTENT_PEERS
        addresses are kept: False (not added) beyond that."""
        parse_addr(addr)
        if addr in self.persistent:
            return True
        if len(self.persistent) >= limits.MAX_PERSISTENT_PEERS:
            return False
        self.persistent[addr] = asyncio.ensure_future(self._keep(addr, registered))
        return True

    async def _keep(self, addr: str, registered: bool = False) -> None:
        failures = 0 if registered else None  # until its first handshake, for a registered address
        try:
            await self._redial(addr, failures)
        finally:
            if self.persistent.get(addr) is asyncio.current_task():
                del self.persistent[addr]

    async def _redial(self, addr: str, failures: int | None) -> None:
        delay = limits.RECONNECT_BASE_S
        while addr not in self.self_addrs:
            live = next((p for p in self.peers if addr in (p.listen_addr, p.dialed) and not p.closed.is_set()), None)
            if live is not None:  # it dialled us first: redial when that connection ends
                delay = limits.RECONNECT_BASE_S
                await live.closed.wait()
                continue
            if await self.dial(addr):
                delay = limits.RECONNECT_BASE_S
                failures = None  # it is a node: kept for good
            elif failures is not None:
                failures += 1
                if failures >= limits.REGISTER_MAX_FAILURES:
                    log.info("forgetting registered %s: no handshake in %d tries", addr, failures)
                    return
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, limits.RECONNECT_MAX_S)

    async def _fill_outbound(self) -> None:
        """Dial learnt addresses while below the outbound target, each in a network group no
        outbound connection uses yet when the book has one (a swarm on one host has one group)."""
        while True:
            await asyncio.sleep(1.0)  # ok: dial pacing, at most one new outbound a second
            if self.outbound_count() >= limits.TARGET_OUTBOUND:
                continue
            busy = {a for p in self.peers for a in (p.listen_addr, p.dialed) if a}
            busy |= self.dialing | set(self.persistent)
            outbound = [a for a in [*(p.dialed for p in self.peers if not p.inbound), *self.dialing] if a]
            groups = {netgroup(host_of(a)) for a in outbound}
            candidate = self.addrman.select(busy, groups) or self.addrman.select(busy)
            if candidate is not None:
                self._spawn(self.dial(candidate))
