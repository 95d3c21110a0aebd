"""The composition root: chain, mempool, miner, connections and the message handlers that tie
them together (gossip and sync). One event loop owns all of it, so no locks are needed: a
handler runs to completion between awaits, as btcd's sync manager does with one goroutine."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import field
from typing import Any

from p2pchain import __version__, limits, wire
from p2pchain.chain import Chain, Status
from p2pchain.connmgr import ConnectionManager
from p2pchain.errors import MempoolCode, MempoolError, RuleError, StoreError
from p2pchain.events import EventHub
from p2pchain.keys import Wallet, is_address
from p2pchain.ledger.block import Block
from p2pchain.ledger.tx import Tx
from p2pchain.mempool import PERMANENT_REFUSALS, Mempool, RecentSet
from p2pchain.metrics import Gauges, NodeMetrics
from p2pchain.mining import Mining
from p2pchain.params import NetworkParams
from p2pchain.peer import Misbehaving, Peer, RunHandler, Tunables
from p2pchain.pulse import Pulse
from p2pchain.record import record
from p2pchain.relay import FEATURE_CMPCT, FEATURE_HB, FEATURE_INV_TX, FEATURES, Relay
from p2pchain.serve import BlockServer, send_metered
from p2pchain.sigbatch import SignatureBatcher, signatures_ok
from p2pchain.store import DB_FILE
from p2pchain.sync import HONEST_BLOCK_CODES, SyncManager, now_ms
from p2pchain.threadpool import ThreadPoolOnFirstUse
from p2pchain.verifyprocs import VerifierProcs

log = logging.getLogger(__name__)

USER_AGENT = f"p2pchain/{__version__}"
# Transaction rule breaks an honest peer can send (a race): ignored, no strike.
HONEST_TX_CODES = frozenset(
    {
        MempoolCode.DUPLICATE,
        MempoolCode.STALE_NONCE,
        MempoolCode.NONCE_CONFLICT,
        MempoolCode.NONCE_GAP,
        MempoolCode.INSUFFICIENT_FUNDS,
        MempoolCode.RECIPIENT_FULL,
        MempoolCode.FULL,
    }
)
# refusals of a transaction that a block may still carry: kept in the relay's extra pool
EXTRA_POOL_CODES = frozenset(
    {MempoolCode.NONCE_GAP, MempoolCode.NONCE_CONFLICT, MempoolCode.INSUFFICIENT_FUNDS, MempoolCode.FULL}
)
RELAY_MODES = ("compact", "flood")  # --relay: flood speaks protocol version 1 (every object in full)
VERIFY_THREADS = os.cpu_count() or 1  # signature-checking threads (Ed25519 releases the GIL)
# --verify-procs by default: one per core, none on one core (where they would only add pipe work)
VERIFY_PROCS_DEFAULT = VERIFY_THREADS if VERIFY_THREADS > 1 else 0
PREVERIFY_MIN_TXS = 32  # unchecked transactions in a block or batch worth sending to the threads


@record(frozen=False)
class NodeConfig:
    # a str or a pathlib.Path: the node names its files with os.path (the node command passes a
    # str and so starts without pathlib, which with urllib.parse and ipaddress costs ~17 M instructions)
    data_dir: str | os.PathLike[str]
    host: str = "127.0.0.1"
    port: int = 7000
    peers: list[str] = field(default_factory=list)
    params: NetworkParams = field(default_factory=NetworkParams)
    mine: bool = False
    miner_procs: int | None = None  # None: one per core
    # worker processes that check arriving transactions' signatures for the verifier threads
    # (p2pchain/verifyprocs.py); 0: the threads check them (in-process nodes: tests, swarms)
    verify_procs: int = 0
    http_port: int | None = None
    http_host: str = "127.0.0.1"  # the shim's address, whatever ``host`` is: it is not for other hosts by default
    reward_to: str | None = None  # default: the node's own wallet
    discover: bool = True  # dial addresses learnt from PEERS; False: only --peer (Bitcoin's -connect)
    ban_loopback: bool = False  # loopback peers are banned and held to MAX_INBOUND_PER_IP too (tests)
    relay: str = RELAY_MODES[0]  # "flood": HELLO version 1 without relay features (today's gossip)
    tunables: Tunables = field(default_factory=Tunables)


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.params = config.params
        os.makedirs(config.data_dir, exist_ok=True)
        self.wallet = Wallet.load_or_create(os.path.join(config.data_dir, "wallet.json"))
        self.reward_to = config.reward_to or self.wallet.address
        self.chain = Chain.open(os.path.join(config.data_dir, DB_FILE), self.params)
        self.mempool = Mempool(self.params, self.chain.get_account)
        self.chain.verified = self.mempool.verified
        self.chain.subscribe(self._on_chain_update)
        self.events = EventHub()  # live events for the explorer's browsers (after the mempool's update)
        self.chain.subscribe(self.events.on_chain_update)
        self.mempool.subscribe(self.events.on_new_tx)
        self.metrics = NodeMetrics(self.gauges)  # what /metrics shows: the chain and mempool report to it
        self.chain.subscribe(self.metrics.on_chain_update)
        self.chain.on_validated = self.metrics.on_validated
        self.mempool.subscribe(self.metrics.on_new_tx)
        self.node_id = os.urandom(16)
        self.port = config.port
        self.connmgr = ConnectionManager(
            node_id=self.node_id,
            network=self.params.network_id,
            store=self.chain.store,
            make_hello=self.hello,
            on_hello=self._on_hello,
            handle=self.handle,
            on_close=self._on_peer_closed,
            tunables=config.tunables,
            ban_loopback=config.ban_loopback,
            traffic=self.metrics.traffic,
            unneeded=self._unneeded,
            sieves=self._sieves,
            handle_run=RunHandler((wire.NewTx, wire.SubmitTx), self._on_tx_run),
        )
        self.seen_bad_txs = RecentSet(limits.SEEN_CACHE_MAX)  # txids refused for good: not re-checked
        self.relay: Relay[Peer] = Relay(FEATURES if config.relay == "compact" else ())
        self._relay_timer: asyncio.TimerHandle | None = None  # the next relay request deadline
        self._flush_timer: asyncio.TimerHandle | None = None  # announcements queued: when they go out
        self._block_flush_timer: asyncio.TimerHandle | None = None  # the same for block announcements
        self._release_timer: asyncio.TimerHandle | None = None  # when the held store batch commits
        self.mining = Mining(config.miner_procs)  # in-process for tiny blocks, else worker processes
        self._tasks: list[asyncio.Task[None]] = []  # set by start(); stop() may follow a failed start
        self._mined: list[asyncio.Future[Block]] = []  # /mine callers waiting for our next block
        self._mining_stopped: str | None = None  # why the --mine task ended, if it did
        self._verifier = ThreadPoolOnFirstUse(VERIFY_THREADS, thread_name_prefix="p2pchain-verify")
        # what the verifier threads call with a batch of transactions: the workers' check, or their own
        self._verify_procs = VerifierProcs(config.verify_procs) if config.verify_procs else None
        self._check_signatures = self._verify_procs.check if self._verify_procs else signatures_ok
        # NEW_TX and SUBMIT_TX: signatures checked in batches on the verifier threads, admitted in arrival order
        self.tx_batcher = SignatureBatcher(
            self._verifier,
            self.params.network_id,
            max_inflight=VERIFY_THREADS,
            max_batch=limits.TX_VERIFY_BATCH_MAX,
            max_pending=limits.TX_VERIFY_PENDING_MAX,
            max_per_owner=limits.TX_VERIFY_PENDING_PER_PEER,
            check=self._check_signatures,
        )
        self._mine_lock = asyncio.Lock()
        # pulsed after each peer message, handshake and closed connection: what waits on peers' state
        # (/nodes/register, resolve) looks again then, and only then
        self.changed = Pulse()
        self.stats = {"blocks_received": 0, "forks_resolved": 0, "blocks_mined": 0, "sync_requests": 0}
        self.blocks_server = BlockServer(self.chain)  # GET_CHAIN/GET_BLOCKS/GET_BLOCK, read off the loop
        self.sync = SyncManager(
            self.chain,
            lambda: self.connmgr.ready,
            self._preverify,
            self._sync_broadcast,
            self.stats,
        )
        self._handlers: dict[type[Any], Callable[[Peer, Any], Awaitable[None]]] = {
            wire.Ping: self._on_ping,
            wire.Pong: self._on_pong,
            wire.GetChain: self._on_get_chain,
            wire.Chain: self.sync.on_chain,
            wire.NewTx: self._on_new_tx,
            wire.NewBlock: self._on_new_block,
            wire.GetPeers: self._on_get_peers,
            wire.Peers: self._on_peers,
            wire.InvTx: self._on_inv_tx,
            wire.GetTxs: self._on_get_txs,
            wire.Txs: self._on_txs,
            wire.CmpctBlock: self._on_cmpct_block,
            wire.GetBlockTxn: self._on_get_block_txn,
            wire.BlockTxn: self._on_block_txn,
            wire.SendCmpct: self._on_send_cmpct,
            wire.InvBlock: self._on_inv_block,
            wire.GetCmpct: self._on_get_cmpct,
            wire.GetStatus: self._on_get_status,
            wire.GetAccount: self._on_get_account,
            wire.GetTx: self._on_get_tx,
            wire.SubmitTx: self._on_submit_tx,
            wire.GetBlocks: self._on_get_blocks,
            wire.GetBlock: self._on_get_block,
        }

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self.port = await self.connmgr.listen(self.config.host, self.config.port)
        log.info(
            "listening on %s:%d, %s, tip %s at height %d, wallet %s",
            self.config.host,
            self.port,
            self.params.describe(),
            self.chain.tip.hash.hex()[:16],
            self.chain.height,
            self.wallet.address,
        )
        if self.config.discover:
            self.connmgr.start()
        for addr in self.config.peers:
            self.connmgr.connect(addr)
        self._tasks = [asyncio.create_task(self._maintain())]
        if self.config.mine:
            self._tasks.append(asyncio.create_task(self._mine_forever()))

    async def stop(self) -> None:
        self.events.close()
        for timer in (self._relay_timer, self._flush_timer, self._block_flush_timer, self._release_timer):
            if timer is not None:
                timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.connmgr.close()
        self.tx_batcher.close()
        self._verifier.shutdown(wait=False, cancel_futures=True)
        if self._verify_procs is not None:
            await asyncio.to_thread(self._verify_procs.close)
        self.blocks_server.close()
        self.chain.close()  # before the miner: its workers may take a while and need no store
        log.info("stopped at height %d, tip %s", self.chain.height, self.chain.tip.hash.hex()[:16])
        await self.mining.close()

    def hello(self) -> wire.Hello:
        tip = self.chain.tip
        features = tuple(f for f in FEATURES if f in self.relay.features)
        return wire.Hello(
            limits.PROTOCOL_VERSION if features else 1,  # --relay flood: exactly a version 1 HELLO
            self.params.network_id,
            self.node_id,
            self.port,
            tip.height,
            tip.hash,
            tip.work,
            USER_AGENT,
            features,
        )

    # --- peers ------------------------------------------------------------------------------
    def _on_hello(self, peer: Peer) -> None:
        assert peer.hello is not None
        log.info("connected %r: %s, height %d", peer, peer.hello.agent, peer.hello.height)
        if peer.hello.work > self.chain.tip.work:  # first: its GET_CHAIN leaves at once (the peer serves it first)
            self.sync.start(peer)
        if peer.listen_addr:
            self.connmgr.add_addresses([peer.listen_addr], peer.host)
        self.relay.add_peer(peer, peer.hello.version, peer.hello.relay, outbound=not peer.inbound)
        peer.send(wire.GetPeers())
        self._send_cmpct(self.relay.select_on_connect(peer))
        # a node (a listening address) may have missed what we pooled while apart
        if self.connmgr.mempool_push_allowed(peer.listen_addr, peer.host):
            pushed = self.mempool.select(limits.MEMPOOL_PUSH_MAX_TXS, limits.MEMPOOL_PUSH_MAX_BYTES)
            if self.relay.speaks(peer, FEATURE_INV_TX):
                self.relay.announce_to(peer, [tx.txid for tx in pushed])
                self._schedule_flush()
            else:
                for tx in pushed:
                    peer.send(wire.NewTx(tx))
        self.changed.pulse()

    def _on_peer_closed(self, peer: Peer) -> None:
        self.metrics.on_peer_closed(peer.close_reason, peer.ban_reason is not None)
        self._send_tx_requests(self.relay.remove_peer(peer, self._now()))
        self._send_cmpct(self.relay.refill_hb())
        self._arm_relay_timer(soon=True)  # the compact blocks it was completing move on
        self.sync.on_peer_closed(peer)
        self.changed.pulse()

    def _sync_broadcast(self, msg: wire.Message, exclude: Peer | None) -> None:
        """What the sync manager sends on: a new tip after a sync goes out as any block does."""
        if isinstance(msg, wire.NewBlock):
            self.relay_block(msg.block, exclude)
        else:
            self.broadcast(msg, exclude=exclude)

    def broadcast(self, msg: wire.Message, *, exclude: Peer | None = None) -> None:
        frame = msg.encode()
        for peer in self.connmgr.ready:
            if peer is not exclude:
                peer.send_frame(frame, msg.TYPE)

    async def handle(self, peer: Peer, msg: wire.Message) -> None:
        handler = self._handlers.get(type(msg))
        if handler is None:  # a reply type sent unasked (STATUS, ACCOUNT, ...)
            raise Misbehaving(f"sent {msg.TYPE}, which only answers our queries")
        try:
            await handler(peer, msg)
        finally:
            self.changed.pulse()

    async def _on_ping(self, peer: Peer, msg: wire.Ping) -> None:
        peer.send(wire.Pong(msg.nonce))

    async def _on_pong(self, peer: Peer, msg: wire.Pong) -> None:
        peer.got_pong(msg.nonce)

    async def _on_get_peers(self, peer: Peer, msg: wire.GetPeers) -> None:
        peer.send(wire.Peers(tuple(a for a in self.connmgr.known_addresses() if a != peer.listen_addr)))

    async def _on_peers(self, peer: Peer, msg: wire.Peers) -> None:
        allowed = peer.take_addr_tokens(len(msg.peers))  # unasked floods are rate-limited, not punished
        if allowed < len(msg.peers):
            log.info("%r sent %d addresses: %d taken (rate limit)", peer, len(msg.peers), allowed)
        self.connmgr.add_addresses(list(msg.peers[:allowed]), peer.host)

    # --- sync (p2pchain/sync.py) -----------------------------------------------------------
    @property
    def sync_peer(self) -> Peer | None:
        return self.sync.peer

    async def resolve(self, timeout: float = limits.RESOLVE_TIMEOUT_S) -> bool:
        """The tutorials' consensus on demand (/nodes/resolve): ask every connected node (not
        clients: they do not listen) for its blocks beyond our tip as it has them from now on,
        whatever work it claimed (``SyncManager.ask``: a peer the handshake's sync is talking to
        is asked on from that sync's answer, so its blocks come once). Its CHAIN goes through
        the fork choice like any other, and a long answer continues as a sync. Waits, at most
        ``timeout`` s, until every asked peer has answered or left and no sync runs; True if
        our tip changed meanwhile."""
        before = self.chain.tip.hash
        asked = [p for p in self.connmgr.ready if p.listen_addr]
        for peer in asked:
            self.sync.ask(peer)

        def settled() -> bool:
            sync = self.sync_peer
            idle = sync is None or sync.closed.is_set()
            return idle and all(p.asked_chain <= 0 or p.closed.is_set() for p in asked)

        await self.changed.wait_for(settled, timeout)
        return self.chain.tip.hash != before

    async def _on_get_chain(self, peer: Peer, msg: wire.GetChain) -> None:
        count = min(msg.max, limits.MAX_BLOCKS_PER_CHAIN)
        start = self.chain.fork_point(list(msg.locator)) + 1
        hashes, height = self.chain.main[start : start + count], self.chain.height

        def answer(count: int) -> wire.Chain:
            return wire.Chain((), start + count <= height)

        await self.blocks_server.serve(peer, hashes, limits.CHAIN_BATCH_BYTES, answer, wire.Chain.TYPE, cache=True)

    # --- gossip -----------------------------------------------------------------------------
    async def _preverify(self, blocks: Sequence[Block]) -> None:
        """Check the signatures of these blocks' transactions in threads, off the event loop
        (Ed25519 releases the GIL: every core works and the loop keeps serving peers), and add
        the good ones to the signature cache that process_block consults. A bad signature is not
        cached, so process_block finds it again and names it. Below PREVERIFY_MIN_TXS unchecked
        transactions the threads cost more than they save. A block already known (stored, an
        orphan, or found invalid) costs nothing: process_block answers it from a lookup, so a
        peer replaying old blocks buys no signature checks."""
        if sum([len(b.txs) for b in blocks]) - len(blocks) < PREVERIFY_MIN_TXS:
            return  # (a sync's coinbase-only blocks: no filtering a block at a time for nothing to check)
        chain = self.chain
        blocks = [b for b in blocks if not chain.has_block(b.hash) and b.hash not in chain.invalid]
        cache = self.mempool.verified
        todo = [tx for b in blocks for tx in b.txs[1:] if tx.txid not in cache and len(tx.pubkey) == 32]
        if len(todo) < PREVERIFY_MIN_TXS:
            return
        network = self.params.network_id
        loop = asyncio.get_running_loop()
        chunk = -(-len(todo) // VERIFY_THREADS)
        parts = [todo[i : i + chunk] for i in range(0, len(todo), chunk)]
        results = await asyncio.gather(
            *(loop.run_in_executor(self._verifier, self._check_signatures, part, network) for part in parts)
        )
        for part, oks in zip(parts, results, strict=True):
            for tx, ok in zip(part, oks, strict=True):
                if ok:
                    cache.add(tx.txid)

    async def _on_new_block(self, peer: Peer, msg: wire.NewBlock) -> None:
        self.relay.block_known(peer, msg.block.hash)
        await self._accept_block(peer, msg.block)

    async def _accept_block(self, peer: Peer, block: Block) -> None:
        """A block a peer sent whole (NEW_BLOCK) or compact and rebuilt: validate, relay if it
        extends our best chain, sync if its parent is unknown."""
        peer.best_height = max(peer.best_height, block.height)
        if self.chain.would_ignore(block.header):  # no more work than our tip, nobody asked: not stored
            return
        if len(block.txs) > PREVERIFY_MIN_TXS:  # (fewer are not worth the threads: _preverify)
            await self._preverify((block,))
        if block.prev_hash in self.chain.index:  # an orphan waits in memory: only a block on a known
            self._hold_store()  # parent writes, and only a write may take a sync's kept batch over
        try:
            result = self.chain.process_block(block, now_ms(), requested=False)
        except RuleError as e:
            if e.code in HONEST_BLOCK_CODES:
                log.info("%r sent block %s from the future: ignored", peer, block.hash.hex()[:16])
                return
            raise Misbehaving(f"sent invalid block {block.hash.hex()[:16]}: {e}") from None
        if result.status in (Status.DUPLICATE, Status.IGNORED):
            return
        self.stats["blocks_received"] += 1
        if result.status is Status.ORPHAN:
            log.info(
                "block %s at height %d from %r has an unknown parent: syncing",
                block.hash.hex()[:16],
                block.height,
                peer,
            )
            self.sync.start(peer, takeover=True)
        elif result.status is Status.CONNECTED:
            peer.useful = True
            # a client (no listening port: a miner or wallet) is the block's first hop, as our own
            # mining is: its block goes to every peer at once, not only those that asked for it
            self.relay_block(block, exclude=peer, mined=not peer.listening)
            self._send_cmpct(self.relay.delivered_first(peer))

    def _hold_store(self) -> None:
        """A block that arrives alone is committed with those that follow it within STORE_HOLD_S
        (Store.hold), after it has been relayed."""
        if self.chain.store.hold():
            if self._release_timer is not None:  # a sync's batch committed the last one early
                self._release_timer.cancel()
            self._release_timer = asyncio.get_running_loop().call_later(limits.STORE_HOLD_S, self._release_store)

    def _release_store(self) -> None:
        self._release_timer = None
        if self.chain.store.kept:  # a sync's batch committed the held blocks and is kept for its next CHAIN
            return
        try:
            self.chain.store.release()
        except StoreError as e:  # the store takes no more writes: the next block's processing says so too
            log.error("%s", e)

    def relay_block(self, block: Block, exclude: Peer | None = None, *, mined: bool = False) -> None:
        """Send a new best block on (relay.block_targets says to whom and how): compact at once
        to the peers that asked so (all of them if we ``mined`` it), whole to the peers without
        compact blocks, announced at the next flush to the others."""
        compact, full, announce = self.relay.block_targets(block, exclude, mined=mined)
        if announce and self._block_flush_timer is None:
            self._start_block_announcements()
        if compact:
            msg: wire.Message = self.relay.compact(block)
            frame = msg.encode()
            for peer in compact:
                peer.send_frame(frame, msg.TYPE)
        if full:
            frame = wire.NewBlock(block).encode()
            for peer in full:
                peer.send_frame(frame, wire.NewBlock.TYPE)

    async def _on_new_tx(self, peer: Peer, msg: wire.NewTx) -> None:
        await self._on_tx_run(peer, [msg])

    async def _on_tx_run(self, peer: Peer, msgs: list[wire.Message]) -> None:
        """A run of NEW_TX and SUBMIT_TX read from ``peer`` at once (Peer.run), in order: each
        into the signature batcher as if it came alone, and the run handed to the verifier
        threads in one go. Stops after a message that got the peer dropped."""
        batcher = self.tx_batcher
        try:
            for msg in msgs:
                if peer.closed.is_set():
                    return
                if isinstance(msg, wire.SubmitTx):
                    tx, admit = msg.tx, self._submit_admit(peer, msg)
                else:
                    assert isinstance(msg, wire.NewTx)
                    tx = msg.tx
                    self.relay.delivered_by(peer, tx.txid)
                    admit = self._new_tx_admit(peer, tx)
                check = self._needs_check(tx)
                if not batcher.put_nowait(tx, admit, check=check, owner=peer):
                    batcher.hand_off()  # what is queued goes to the threads before this waits
                    await batcher.room(peer)
                    batcher.put_nowait(tx, admit, check=check, owner=peer)
        finally:
            batcher.hand_off()
            self.changed.pulse()

    async def _take_tx(self, peer: Peer, tx: Tx) -> None:
        """A transaction a peer sent whole (TXS, when asked): through the signature batcher into
        the mempool, and relayed on if it is taken."""
        self.relay.delivered_by(peer, tx.txid)
        await self.tx_batcher.put(tx, self._new_tx_admit(peer, tx), check=self._needs_check(tx), owner=peer)

    def _new_tx_admit(self, peer: Peer, tx: Tx) -> Callable[[bool | None], None]:
        """What admits a transaction ``peer`` sent whole (NEW_TX, TXS) once its signature's
        verdict is in: into the mempool and relayed on; an invalid one gets the peer dropped."""

        def admit(verdict: bool | None) -> None:
            if peer.ban_reason is not None:
                return  # dropped for misbehaving: what it sent after that is not taken (as before batching)
            if verdict:
                self.mempool.verified.add(tx.txid)
            try:
                self.submit_tx(tx, source=peer)
            except MempoolError as e:
                if e.code not in HONEST_TX_CODES:
                    self._misbehaved(peer, Misbehaving(f"sent invalid transaction {tx.txid.hex()[:16]}: {e}"))

        return admit

    def _submit_admit(self, peer: Peer, msg: wire.SubmitTx) -> Callable[[bool | None], None]:
        """What admits a client's SUBMIT_TX once its signature's verdict is in, and answers it."""

        def admit(verdict: bool | None) -> None:
            if verdict:
                self.mempool.verified.add(msg.tx.txid)
            try:
                self.submit_tx(msg.tx, source=peer)
            except MempoolError as e:
                cause = e.__cause__
                code = cause.code.value if isinstance(cause, RuleError) else e.code.value
                peer.send(wire.SubmitResult(msg.id, msg.tx.txid, False, code, e.description))
                return
            peer.send(wire.SubmitResult(msg.id, msg.tx.txid, True, "", ""))

        return admit

    def _needs_check(self, tx: Tx) -> bool:
        """Whether ``tx``'s signature goes to the threads: not when it is checked already or
        will be refused before its signature counts (it then skips the threads, and on an
        idle node is admitted at once)."""
        txid = tx.txid
        return not (
            txid in self.mempool.verified or txid in self.seen_bad_txs or self.mempool.refused_before_signature(tx)
        )

    def _misbehaved(self, peer: Peer, e: Misbehaving) -> None:
        """As a handler's Misbehaving, for a verdict that came after the handler returned: the
        peer is dropped (and banned), or, gone already, its address banned all the same."""
        if e.ban and peer.ban_reason is None and peer not in self.connmgr.peers:  # over: nobody reads ban_reason
            self.connmgr.ban(peer.host, e.reason)
        peer.misbehaved(e)

    def submit_tx(self, tx: Tx, source: Peer | None = None) -> None:
        """Validate ``tx`` into the mempool and gossip it; MempoolError says why not."""
        txid = tx.txid
        if txid in self.seen_bad_txs:
            raise MempoolError(MempoolCode.DUPLICATE, "recently rejected")
        try:
            self.mempool.add(tx)
        except MempoolError as e:
            self.relay.have_tx(txid)
            if e.code in PERMANENT_REFUSALS:
                self.seen_bad_txs.add(txid)
            if e.code in EXTRA_POOL_CODES:
                self.relay.extra.add(tx)  # a block may carry it; a nonce gap may close
            raise
        self._relay_tx(tx, source)
        if source is not None:
            source.useful = True
        successor = self.relay.extra.pop_successor(tx)  # its next nonce, refused for the gap
        while successor is not None:
            try:
                self.mempool.add(successor)
            except MempoolError:
                break
            self._relay_tx(successor, None)
            successor = self.relay.extra.pop_successor(successor)

    def _relay_tx(self, tx: Tx, source: Peer | None) -> None:
        """Announce a pooled transaction to inv-tx peers, send it whole to the others."""
        relay, txid = self.relay, tx.txid
        relay.have_tx(txid)
        if relay.announce(txid, exclude=source):
            self._schedule_flush()
        frame: bytes | None = None
        for peer in self.connmgr.handshaken:  # (connmgr.ready, without a list a transaction)
            if peer is not source and not peer.closed.is_set() and not relay.speaks(peer, FEATURE_INV_TX):
                frame = frame or wire.NewTx(tx).encode()
                peer.send_frame(frame, wire.NewTx.TYPE)

    # --- relay (version 2): relay.py decides, these handlers send ---------------------------
    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _schedule_flush(self) -> None:
        """Send queued announcements RELAY_INV_INTERVAL_S after the first: what is pooled
        meanwhile goes out in one INV_TX per peer."""
        if self._flush_timer is None:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(limits.RELAY_INV_INTERVAL_S, self._flush_announcements)

    def _start_block_announcements(self) -> None:
        loop = asyncio.get_running_loop()
        first = limits.RELAY_BLOCK_INV_INTERVAL_S - limits.RELAY_BLOCK_INV_OUTBOUND_DELAY_S
        self._block_flush_timer = loop.call_later(first, self._announce_blocks, "inbound")

    def _announce_blocks(self, part: str) -> None:
        """A round of block announcements: the peers that dialled us, then the ones we dialled
        (relay.take_block_announcements says why)."""
        self._block_flush_timer = None
        if part == "inbound":
            delay = limits.RELAY_BLOCK_INV_OUTBOUND_DELAY_S
            self._block_flush_timer = asyncio.get_running_loop().call_later(delay, self._announce_blocks, "outbound")
        announced = self.relay.take_block_announcements(part)
        if announced is not None:
            block_hash, peers = announced
            frame = wire.InvBlock((block_hash,)).encode()  # every peer is told of that block: encoded once
            for peer in peers:
                peer.send_frame(frame, wire.InvBlock.TYPE)
        if part == "outbound" and self.relay.announcing():  # a newer block came meanwhile
            self._start_block_announcements()

    def _flush_announcements(self) -> None:
        self._flush_timer = None
        for peer, batches in self.relay.take_announcements().items():
            for txids in batches:
                peer.send(wire.InvTx(txids))

    def _send_tx_requests(self, requests: dict[Peer, list[bytes]]) -> None:
        for peer, txids in requests.items():
            for i in range(0, len(txids), limits.MAX_INV_TXIDS):
                batch = txids[i : i + limits.MAX_INV_TXIDS]
                self.relay.requested(peer, batch)
                peer.send(wire.GetTxs(tuple(batch)))
        if requests:
            self._arm_relay_timer()

    def _arm_relay_timer(self, *, soon: bool = False) -> None:
        """Wake at the earliest request deadline (or now) to move expired requests on."""
        deadline = self._now() if soon else self.relay.next_deadline()
        if deadline is None:
            return
        if self._relay_timer is not None:
            if self._relay_timer.when() <= deadline:
                return
            self._relay_timer.cancel()
        self._relay_timer = asyncio.get_running_loop().call_at(deadline, self._relay_expire)

    def _relay_expire(self) -> None:
        self._relay_timer = None
        requests, block_requests = self.relay.expire(self._now())
        self._send_tx_requests(requests)
        for peer, request in block_requests:
            peer.send(request)
        self._arm_relay_timer()

    async def _on_inv_tx(self, peer: Peer, msg: wire.InvTx) -> None:
        def have(txid: bytes) -> bool:
            return txid in self.mempool or txid in self.seen_bad_txs

        self._send_tx_requests(self.relay.on_inv(peer, msg.txids, have, self._now()))

    async def _on_get_txs(self, peer: Peer, msg: wire.GetTxs) -> None:
        """Answered as blocks are served (p2pchain/serve.py): out of the peer's byte budget, and
        its next message is read once the answer has left; and only with transactions we
        announced to it, each once (relay.to_serve), so a 1,000-id GET_TXS repeated buys nothing."""
        if not self.relay.speaks(peer, FEATURE_INV_TX):
            raise Misbehaving("sent GET_TXS without the inv-tx feature")
        await peer.serve_budget()
        served = self.relay.to_serve(peer, msg.txids)
        found = [tx for tx in map(self.mempool.get, served) if tx is not None]
        for tx in found:
            self.relay.mark_known(peer, tx.txid)
        await send_metered(peer, wire.Txs(tuple(found)).encode(), wire.Txs.TYPE)

    async def _on_txs(self, peer: Peer, msg: wire.Txs) -> None:
        requests = self.relay.on_txs(peer, msg.txs, self._now())
        self._send_tx_requests(requests)
        for tx in msg.txs:
            await self._take_tx(peer, tx)

    def _sieves(self, peer: Peer) -> bool:
        """Whether ``_unneeded`` can drop anything of ``peer``'s (asked after its handshake): only
        a peer that speaks compact relay sends copies; a client's or an old peer's frames are not
        looked at as they arrive (that walk cost 1-3 us a frame, a tenth to a quarter of a
        SUBMIT_TX's decoding)."""
        return self.relay.speaks(peer, FEATURE_CMPCT) or self.relay.speaks(peer, FEATURE_HB)

    def _unneeded(self, peer: Peer, payload: bytes) -> str | None:
        """A CMPCT_BLOCK of a block we relayed lately is dropped by its first bytes, unread
        (Peer.run): with three high-bandwidth peers, two of the three copies of each block a
        node gets are such, and decoding them whole was a tenth of the 200-node swarm's CPU
        (docs/benchmarks.md). Only from a peer that speaks cmpct-block: from any other, the
        message is decoded and refused as a breach (_on_cmpct_block). Likewise an INV_BLOCK that
        is exactly the announcement of such a block (relay.known_inv) from a cmpct-hb peer: a
        round of announcements sends some 11 a node, nearly all of blocks their receivers have.
        Called by the peer's FrameReader as frames arrive (Peer._sieve), and by its reader."""
        block_hash = self.relay.known_compact(payload)
        if block_hash is not None and self.relay.speaks(peer, FEATURE_CMPCT):
            self.relay.block_known(peer, block_hash)
            return wire.CmpctBlock.TYPE
        block_hash = self.relay.known_inv(payload)  # a round's announcement of a block we relayed
        if block_hash is not None and self.relay.speaks(peer, FEATURE_HB):
            self.relay.block_known(peer, block_hash)
            return wire.InvBlock.TYPE
        return None

    async def _on_cmpct_block(self, peer: Peer, msg: wire.CmpctBlock) -> None:
        if not self.relay.speaks(peer, FEATURE_CMPCT):  # before any shortcut: a known block's too
            raise Misbehaving("sent CMPCT_BLOCK without the cmpct-block feature")
        block_hash = msg.header.hash  # its height counts for the peer once the block is rebuilt (proof of work)
        if self.chain.has_block(block_hash) or block_hash in self.chain.orphans:
            self.relay.block_known(peer, block_hash)
            return
        candidates = lambda: itertools.chain(self.mempool, self.relay.extra)  # noqa: E731
        result = self.relay.on_cmpct(peer, msg, candidates, self._now())
        if isinstance(result, Block):
            await self._accept_block(peer, result)
        elif result is not None:
            peer.send(result)
            self._arm_relay_timer()

    async def _on_get_block_txn(self, peer: Peer, msg: wire.GetBlockTxn) -> None:
        if not self.relay.speaks(peer, FEATURE_CMPCT):
            raise Misbehaving("sent GET_BLOCK_TXN without the cmpct-block feature")
        # only the last blocks we relayed (what an honest requester asks for): no store reads, and
        # nobody makes us serve old blocks piecemeal (Bitcoin Core serves getblocktxn near the tip only)
        peer.send(self.relay.block_txn(self.relay.recent_block(msg.hash), msg))

    @staticmethod
    def _send_cmpct(selections: list[tuple[Peer, bool]]) -> None:
        for peer, high_bandwidth in selections:
            peer.send(wire.SendCmpct(high_bandwidth))

    async def _on_send_cmpct(self, peer: Peer, msg: wire.SendCmpct) -> None:
        self.relay.on_send_cmpct(peer, msg.high_bandwidth)

    async def _on_inv_block(self, peer: Peer, msg: wire.InvBlock) -> None:
        def have(block_hash: bytes) -> bool:  # or found invalid: not worth a fetch
            chain = self.chain
            return chain.has_block(block_hash) or block_hash in chain.orphans or block_hash in chain.invalid

        requests = self.relay.on_inv_block(peer, msg.hashes, have, self._now())
        for asked, request in requests:
            asked.send(request)
        if requests:
            self._arm_relay_timer()

    async def _on_get_cmpct(self, peer: Peer, msg: wire.GetCmpct) -> None:
        """An announced block, compact, out of the peer's serving budget (as GET_TXS); only the
        last blocks we relayed (an empty BLOCK_TXN says we no longer have it)."""
        if not self.relay.speaks(peer, FEATURE_HB):
            raise Misbehaving("sent GET_CMPCT without the cmpct-hb feature")
        await peer.serve_budget()
        block = self.relay.recent_block(msg.hash)
        if block is None:
            answer: wire.Message = wire.BlockTxn(msg.hash, ())
        else:
            self.relay.block_known(peer, msg.hash)
            answer = self.relay.compact(block)
        await send_metered(peer, answer.encode(), answer.TYPE)

    async def _on_block_txn(self, peer: Peer, msg: wire.BlockTxn) -> None:
        result = self.relay.on_block_txn(peer, msg, self._now())
        if isinstance(result, Block):
            await self._accept_block(peer, result)
        elif result is not None:
            asked, request = result
            asked.send(request)
            self._arm_relay_timer()

    def _on_chain_update(self, connected: list[Block], disconnected: list[Block]) -> None:
        self.mempool.update(connected, disconnected)
        self.relay.connected(connected, disconnected)
        if disconnected:
            self.stats["forks_resolved"] += 1
        self.mining.cancel()

    # --- mining -----------------------------------------------------------------------------
    async def mine_block(self) -> Block | None:
        """Search one block on the current tip; None if a new tip arrived first."""
        from p2pchain.miner import build_template  # (with the nonce search: see p2pchain.mining)

        async with self._mine_lock:
            tip = self.chain.tip
            txs = self.mempool.select(limits.MAX_BLOCK_TXS - 1, limits.MAX_BLOCK_BYTES - 4096)
            template = build_template(
                self.params,
                tip.header,
                self.chain.median_time_past(tip),
                txs,
                self.reward_to,
                now_ms(),
                tip.anchor_ms,
            )
            header = await self.mining.solve(template.header)
            if header is None or self.chain.tip.hash != tip.hash:
                return None
            block = Block(header, template.txs)
            self._hold_store()
            result = self.chain.process_block(block, now_ms())
            if result.status is not Status.CONNECTED:
                return None
            self.stats["blocks_mined"] += 1
            log.info(
                "mined block %s at height %d with %d transaction(s)",
                block.hash.hex()[:16],
                block.height,
                len(block.txs) - 1,
            )
            self.relay_block(block, mined=True)
            for waiter in self._mined:
                if not waiter.done():
                    waiter.set_result(block)
            self._mined.clear()
            return block

    async def mine_one(self) -> Block:
        """Mine until this node has added one block of its own (the HTTP /mine)."""
        if self.config.mine:
            if self._mining_stopped is not None:
                raise RuntimeError(self._mining_stopped)
            waiter: asyncio.Future[Block] = asyncio.get_running_loop().create_future()
            self._mined.append(waiter)
            return await waiter
        for _ in range(1000):
            block = await self.mine_block()
            if block is not None:
                return block
        raise RuntimeError("could not mine a block: the tip kept changing")

    async def _mine_forever(self) -> None:
        try:
            while True:
                await self.mine_block()
                await asyncio.sleep(0)
        except Exception as e:  # a worker process died: say so, and fail /mine instead of hanging it
            log.exception("mining stopped")
            self._mining_stopped = f"mining stopped: {e}"
            for waiter in self._mined:
                if not waiter.done():
                    waiter.set_exception(RuntimeError(self._mining_stopped))
            self._mined.clear()

    # --- housekeeping -----------------------------------------------------------------------
    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(1.0)  # ok: a stall is the absence of an event; checked each second
            self.sync.check_stall()

    # --- queries ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        tip = self.chain.tip
        bans, bans_total = self.connmgr.listed_bans()
        return {
            "node_id": self.node_id.hex(),
            "agent": USER_AGENT,
            "address": self.wallet.address,
            "network": self.params.network_id.hex(),
            "start_difficulty": self.params.bits,
            "reward": self.params.reward,
            **self.chain.difficulty_status(),
            "height": tip.height,
            "length": tip.height + 1,
            "tip": tip.hash.hex(),
            "work": str(tip.work),
            "port": self.port,
            "mining": self.config.mine,
            "peers": [  # other nodes; clients (HELLO port 0, like the CLI's own query) are only counted
                {
                    "addr": p.addr,
                    "inbound": p.inbound,
                    "height": p.best_height,
                    "bytes_received": p.bytes_received,
                    "bytes_sent": p.bytes_sent,
                }
                for p in self.connmgr.ready
                if p.listen_addr
            ],
            "clients": sum(1 for p in self.connmgr.ready if not p.listen_addr),
            "mempool": len(self.mempool),
            "bans": [{"host": b.host, "until_ms": b.until_ms, "reason": b.reason} for b in bans],
            "bans_total": bans_total,
            "traffic": self.metrics.traffic.by_type(),
            "relay": {"mode": self.config.relay, **dataclasses.asdict(self.relay.stats)},
            **self.stats,
        }

    def gauges(self) -> Gauges:
        """The state /metrics shows, read when scraped."""
        nodes = [p for p in self.connmgr.ready if p.listen_addr]  # as /status's peers: clients are not counted
        inbound = sum(1 for p in nodes if p.inbound)
        return Gauges(
            height=self.chain.height,
            tip_timestamp_s=self.chain.tip.header.timestamp / 1000,
            peers_in=inbound,
            peers_out=len(nodes) - inbound,
            mempool_transactions=len(self.mempool),
            mempool_bytes=self.mempool.bytes,
            bans=len(self.connmgr.current_bans()),
            hashes_done=self.mining.hashes_done,
        )

    async def _on_get_status(self, peer: Peer, msg: wire.GetStatus) -> None:
        peer.send(wire.Status(msg.id, self.status()))

    async def _on_get_account(self, peer: Peer, msg: wire.GetAccount) -> None:
        if not is_address(msg.address):  # no account can have it: say so rather than answer zeros
            peer.send(wire.Error(msg.id, f"not an address (40 lowercase hex digits): {msg.address[:64]!r}"))
            return
        acct = self.chain.get_account(msg.address)
        peer.send(wire.Account(msg.id, msg.address, acct.balance, acct.nonce, self.mempool.next_nonce(msg.address)))

    async def _on_get_tx(self, peer: Peer, msg: wire.GetTx) -> None:
        pooled = self.mempool.get(msg.txid)
        if pooled is not None:
            peer.send(wire.TxInfo(msg.id, msg.txid, "mempool", None, None, 0, pooled))
            return
        entry = self.chain.find_tx(msg.txid)
        # the block (up to 1 MB) is read off the loop, and the answer leaves before the next request is read
        block = await self.blocks_server.block(entry.hash) if entry is not None else None
        tx = next((t for t in block.txs if t.txid == msg.txid), None) if block is not None else None
        if entry is None or tx is None:
            peer.send(wire.TxInfo(msg.id, msg.txid, "unknown", None, None, 0, None))
            return
        confirmations = self.chain.height - entry.height + 1
        peer.send(wire.TxInfo(msg.id, msg.txid, "confirmed", entry.height, entry.hash, confirmations, tx))
        await peer.flushed()

    async def _on_submit_tx(self, peer: Peer, msg: wire.SubmitTx) -> None:
        await self._on_tx_run(peer, [msg])

    async def _on_get_blocks(self, peer: Peer, msg: wire.GetBlocks) -> None:
        hashes = self.chain.main[msg.start : msg.start + min(msg.limit, limits.MAX_BLOCKS_PER_CHAIN)]
        height = self.chain.height

        def answer(count: int) -> wire.Blocks:
            return wire.Blocks(msg.id, (), height)

        await self.blocks_server.serve(peer, hashes, limits.CHAIN_BATCH_BYTES, answer, wire.Blocks.TYPE)

    async def _on_get_block(self, peer: Peer, msg: wire.GetBlock) -> None:
        hashes = [msg.hash] if self.chain.entry(msg.hash) is not None else []
        height = self.chain.height

        def answer(count: int) -> wire.Blocks:
            return wire.Blocks(msg.id, (), height)

        await self.blocks_server.serve(peer, hashes, limits.CHAIN_BATCH_BYTES, answer, wire.Blocks.TYPE)


HttpStarter = Callable[["Node", str, int], Awaitable[Any]]  # returns an object with async cleanup()


async def run_node(
    config: NodeConfig,
    stop: asyncio.Event,
    on_ready: Callable[[Node], None] | None = None,
    start_http: HttpStarter | None = None,
) -> None:
    """Start a node (and its HTTP shim, given the starter from p2pchain.http), serve until
    ``stop`` is set, then shut down within the grace period."""
    node = Node(config)
    http_runner = None
    try:
        await node.start()
        if config.http_port is not None and start_http is not None:
            http_runner = await start_http(node, config.http_host, config.http_port)
        if on_ready is not None:
            on_ready(node)
        await stop.wait()
        log.info("shutting down")
    finally:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limits.SHUTDOWN_GRACE_S):
                if http_runner is not None:
                    await http_runner.cleanup()
                await node.stop()
