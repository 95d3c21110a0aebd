"""Catch-up sync: which peer to download the chain from, and what its answers prove.

A peer's HELLO claims a height and a cumulative work that nothing checks, so the claim only
decides whom to ask first; the answers decide the rest (Bitcoin Core's headers-sync and stalling
rules in the same spirit, much simpler):

- a sync round that adds no block we lacked means the peer's claim is met or false: its
  ``best_height`` drops to ours (it is not picked again until it shows a new block), the sync
  moves on to the next peer that claims more, and a peer whose rounds keep coming back empty
  while it claims to be ahead is dropped (SYNC_FRUITLESS_MAX);
- a peer that sends a block we cannot connect (an orphan) starts a sync, and takes it over when
  the current one has connected nothing for SYNC_TAKEOVER_S;
- a request unanswered for SYNC_STALL_S drops the sync peer (``check_stall``).

So one connection can delay a sync by a round trip, not stop it. One event loop owns all of
this (no locks): a handler runs to completion between awaits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from p2pchain import limits, wire
from p2pchain.chain import Chain, Status
from p2pchain.errors import RuleCode, RuleError, StoreError
from p2pchain.ledger.block import Block
from p2pchain.mempool import RecentSet
from p2pchain.peer import Misbehaving, Peer

log = logging.getLogger(__name__)

# Rule breaks an honest peer can send (a race, a clock a little off): ignored, no strike.
HONEST_BLOCK_CODES = frozenset({RuleCode.TIME_TOO_NEW})
PROGRESS_LOG_S = 1.0  # "synced H of N blocks" at most this often


def now_ms() -> int:
    return int(time.time() * 1000)


class SyncManager:
    """The one owner of sync state: the sync peer, its outstanding request and its progress."""

    def __init__(
        self,
        chain: Chain,
        peers: Callable[[], list[Peer]],
        preverify: Callable[[Sequence[Block]], Awaitable[None]],
        broadcast: Callable[[wire.Message, Peer | None], None],
        stats: dict[str, int],
    ) -> None:
        self.chain = chain
        self._peers = peers  # handshaken peers
        self._preverify = preverify
        self._broadcast = broadcast
        self.stats = stats
        self.peer: Peer | None = None  # the sync peer
        self.asked_at = 0.0  # monotonic time of the sync peer's last GET_CHAIN
        self.progress_at = 0.0  # monotonic time the current sync started or last connected a block
        self.target = 0  # height the sync peer claimed (progress log only)
        self._log_at = 0.0
        # CHAIN blocks skipped from a block from the future on: the next batch, already asked for, builds on them
        self._skipped = RecentSet(limits.MAX_BLOCKS_PER_CHAIN)
        # /nodes/resolve (``ask``): peers to ask again as soon as their CHAIN in flight arrives,
        # and the last block of each CHAIN being checked (a request goes on from there)
        self._ask_again: set[Peer] = set()
        self._checking: dict[Peer, bytes] = {}

    @property
    def active(self) -> bool:
        return self.peer is not None and not self.peer.closed.is_set()

    # --- starting -----------------------------------------------------------------------------
    def start(self, peer: Peer, *, takeover: bool = False) -> None:
        """Sync from ``peer`` unless another sync runs; with ``takeover`` (the peer sent a block
        we cannot connect) also when the running sync has connected nothing for SYNC_TAKEOVER_S."""
        if peer.listen_addr is None:
            return  # a client (HELLO port 0) serves no chain: never wait on it
        current = self.peer if self.active else None
        if current is not None and current is not peer:
            idle = time.monotonic() - self.progress_at
            if not takeover or idle < limits.SYNC_TAKEOVER_S:
                return
            log.info("%r takes the sync over from %r: no block connected for %.1f s", peer, current, idle)
        elif current is peer and peer.asked_chain > 0:
            return  # a GET_CHAIN is in flight: its CHAIN (and "more") continues the sync
        self._request(peer)

    def _request(self, peer: Peer, start: bytes | None = None) -> None:
        if self.peer is not peer:
            self.progress_at = time.monotonic()
        self.peer = peer
        self.target = max(self.target, peer.best_height)
        self.stats["sync_requests"] += 1
        self.asked_at = time.monotonic()
        self._get_chain(peer, start)

    def _get_chain(self, peer: Peer, start: bytes | None) -> None:
        """Send ``peer`` a GET_CHAIN for its blocks after ``start`` (None: after our tip)."""
        peer.asked_chain += 1
        self._ask_again.discard(peer)  # whatever it answers now, it answers from now on
        locator = self.chain.locator(start)
        if start is not None and self.chain.entry(start) is None:  # the end of a batch not checked yet
            locator = [start, *locator][: limits.MAX_LOCATOR_HASHES]
        peer.send(wire.GetChain(tuple(locator), limits.MAX_BLOCKS_PER_CHAIN))
        peer.flush()  # the peer reads it while we check the CHAIN it may have come with

    def ask(self, peer: Peer) -> None:
        """Ask ``peer`` for its blocks beyond ours, as it has them from now on (/nodes/resolve):
        a GET_CHAIN now, or, if one is in flight, as soon as its CHAIN arrives (that answer may
        have left the peer before this call: a block the peer got since would be missed, and a
        second request now would bring the same blocks twice). While its CHAIN is being checked
        the request goes on from that CHAIN's last block, so no block comes twice either way.
        The caller waits until ``peer.asked_chain`` is back to 0."""
        if peer.listen_addr is None:
            return  # a client (HELLO port 0) serves no chain
        if peer.asked_chain > 0:
            self._ask_again.add(peer)
        else:
            self._get_chain(peer, self._checking.get(peer))

    def pick_next(self) -> None:
        """After a sync ends, continue with whichever peer claims the most beyond our tip."""
        tip = self.chain.tip
        ahead = [p for p in self._peers() if p.hello and p.hello.work > tip.work and p.best_height > tip.height]
        if ahead:
            self.start(max(ahead, key=lambda p: (p.best_height, -p.fruitless)))

    def on_peer_closed(self, peer: Peer) -> None:
        self._ask_again.discard(peer)
        if peer is self.peer:
            self.peer = None
            self._commit_kept()  # its next CHAIN, which the kept batch waited for, will not come
            self.pick_next()

    def _commit_kept(self) -> None:
        """Commit (behind) a sync's batch kept open for a CHAIN that is not coming."""
        store = self.chain.store
        if store.kept:
            try:
                store.release()
            except StoreError as e:  # the store takes no more writes: the next block's processing says so too
                log.error("%s", e)

    def check_stall(self) -> None:
        """Called about once a second: drop a sync peer that leaves a request unanswered."""
        peer = self.peer
        if peer is not None and peer.asked_chain and time.monotonic() - self.asked_at > limits.SYNC_STALL_S:
            peer.close(f"sync stalled: no CHAIN within {limits.SYNC_STALL_S:g} s")

    # --- answers ------------------------------------------------------------------------------
    async def on_chain(self, peer: Peer, msg: wire.Chain) -> None:
        if peer.asked_chain <= 0:
            raise Misbehaving("sent CHAIN nobody asked for")
        peer.asked_chain -= 1
        for i in range(1, len(msg.blocks)):  # refuse a broken batch whole, before any block counts
            if msg.blocks[i].prev_hash != msg.blocks[i - 1].hash:
                raise Misbehaving(f"CHAIN blocks do not link at position {i}")
        claimed_ahead = peer.best_height > self.chain.height
        parent = msg.blocks[0].prev_hash if msg.blocks else None
        ignored = parent is not None and parent in self._skipped and self.chain.entry(parent) is None
        if ignored:  # asked for (pipelined) before the batch it builds on stopped at a block from the future
            log.info("%r sent blocks after one from the future: ignored for now", peer)
            msg = wire.Chain((), False)  # this sync ends here
        # Ask for the next batch now (the peer reads it while we check this one), if this batch
        # ends on a block we lack and nobody else is syncing us: a batch of blocks we have is no reason.
        pipelined = bool(
            msg.more
            and msg.blocks
            and (self.peer is peer or not self.active)
            and not self.chain.has_block(msg.blocks[-1].hash)
        )
        if pipelined:
            self._request(peer, msg.blocks[-1].hash)
        elif peer in self._ask_again:  # /nodes/resolve asked while this was in flight: ask on from its end
            self._get_chain(peer, msg.blocks[-1].hash if msg.blocks else None)
        new = 0
        connected_any = False
        blocks = msg.blocks
        if blocks:  # (an empty answer, /nodes/resolve's most often, does not wait for the commit behind)
            self._checking[peer] = blocks[-1].hash
            try:
                await self._preverify(blocks)
                # one commit every STORE_BATCH_MAX_TXNS blocks (kept open while the next CHAIN is
                # asked for), written while the next are checked; after the last CHAIN (none asked
                # for), a little later: what follows a sync's end goes first
                delay = 0.0 if pipelined else limits.STORE_BEHIND_DELAY_S
                with self.chain.store.batch(behind=True, delay_s=delay, keep=pipelined):
                    run = limits.SYNC_RUN_BLOCKS
                    for start in range(0, len(blocks), run):
                        if start:  # let other peers and requests be served during a long sync
                            for _ in range(limits.SYNC_YIELD_TURNS):
                                await asyncio.sleep(0)
                        added, connected, stopped = self._process_run(peer, blocks, start, start + run)
                        new += added
                        connected_any = connected_any or connected
                        if stopped:
                            ignored = True
                            break
            finally:
                del self._checking[peer]
        self.log_progress()
        if pipelined:
            return  # the next batch is on its way
        if peer is self.peer or not self.active:  # (another peer's empty answer leaves the sync's batch kept)
            self._commit_kept()  # (a kept batch and an empty last answer: the sync ends here)
        if new:
            peer.fruitless = 0
        elif not ignored:
            self._fruitless(peer, claimed_ahead, msg.more)
        if peer is self.peer:
            self.peer = None
            self.target = 0
        if connected_any:
            tip = self.chain.tip.hash  # most often this batch's last block: no store read (which waits for the commit)
            tip_block = next((b for b in reversed(blocks) if b.hash == tip), None) or self.chain.get_block(tip)
            if tip_block is not None:
                self._broadcast(wire.NewBlock(tip_block), peer)
        self.pick_next()

    def _process_run(self, peer: Peer, blocks: Sequence[Block], start: int, end: int) -> tuple[int, bool, bool]:
        """Process ``blocks[start:end]`` (the chain tells its listeners once): how many were new,
        whether any joined the best chain, and whether the run stopped at a block from the future
        (which, and what follows it, is then skipped for now). Blocks that extend the tip go
        through ``Chain.extend_run`` (the same checks, the per-block machinery paid once a run);
        the first it leaves, and only that one, through ``_process_one``: ``process_block``
        decides it."""
        new = 0
        connected_any = False
        chain = self.chain
        end = min(end, len(blocks))
        i = start
        with chain.notifying_once():
            while i < end:
                done = chain.extend_run(blocks, i, end, now_ms())
                if done:
                    i += done
                    new += done
                    connected_any = peer.useful = True
                    peer.best_height = max(peer.best_height, blocks[i - 1].height)
                    self.progress_at = time.monotonic()
                    if i >= end:
                        break
                added, connected, stopped = self._process_one(peer, blocks, i)
                new += added
                connected_any = connected_any or connected
                if stopped:
                    return new, connected_any, True
                i += 1
        return new, connected_any, False

    def _process_one(self, peer: Peer, blocks: Sequence[Block], i: int) -> tuple[int, bool, bool]:
        """``process_block`` of ``blocks[i]``: whether it was new (0 or 1), whether it joined the
        best chain, and whether it is from the future (it and the blocks after it are then
        skipped for now); Misbehaving if it is invalid or an orphan."""
        block = blocks[i]
        try:
            result = self.chain.process_block(block, now_ms())
        except RuleError as e:
            if e.code in HONEST_BLOCK_CODES:
                log.info("%r sent block %s from the future: ignored for now", peer, block.hash.hex()[:16])
                # what it can give us now ends below it: pick_next must not ask it again at once
                peer.best_height = min(peer.best_height, block.height - 1)
                for skipped in blocks[i:]:
                    self._skipped.add(skipped.hash)
                return 0, False, True
            why = f"sent invalid block {block.hash.hex()[:16]} at height {block.height}: {e}"
            raise Misbehaving(why) from None
        if result.status is Status.ORPHAN:
            raise Misbehaving("CHAIN starts at a block whose parent we never had", ban=False)
        peer.best_height = max(peer.best_height, block.height)
        if result.connected:
            peer.useful = True
            self.progress_at = time.monotonic()
        return int(result.status is not Status.DUPLICATE), bool(result.connected), False

    def _fruitless(self, peer: Peer, claimed_ahead: bool, more: bool) -> None:
        """A round that added nothing: whatever the peer claimed is met or false."""
        peer.best_height = min(peer.best_height, self.chain.height)
        if not claimed_ahead and not more:
            return  # nothing was promised (a /nodes/resolve answer from a peer at our height)
        peer.fruitless += 1
        log.info("%r claimed blocks beyond ours but sent none we lacked (%d time(s))", peer, peer.fruitless)
        if peer.fruitless >= limits.SYNC_FRUITLESS_MAX:
            raise Misbehaving(f"claimed more work {peer.fruitless} times and sent no block we lacked", ban=False)

    def log_progress(self) -> None:
        now = time.monotonic()
        if now - self._log_at >= PROGRESS_LOG_S:
            self._log_at = now
            target = max(self.target, self.chain.height)
            log.info("synced %d of %d blocks", self.chain.height, target)
