"""relay: compact relay (announce-then-fetch transactions, compact blocks) against flood relay
(``--relay flood``: every transaction and block in full over every link) on one topology and
one load, plus the 200-node in-process swarm with compact relay.

Per mode: RELAY_NODES node processes on a random graph of RELAY_DEGREE links a node (the same
graph and the same signed transactions in both modes), started on a pre-mined chain that funds
RELAY_SENDERS wallets. Both modes' networks run at once and take turns block by block (each
mode first in every other pair), so that the shared cores' slow and fast stretches fall on both
alike; the idle network only answers its pings meanwhile, and each block is pushed SETTLE_S
after the last (whose timers have fired by then). For each of ``--blocks`` blocks a mode,
TXS_PER_BLOCK payments are submitted round-robin to the nodes (SUBMIT_TX), the bench waits
(bounded) until every mempool holds them, then builds and mines the block of exactly those
payments and pushes it as NEW_BLOCK to one node (a different one each block); the block's
propagation time is until every node has accepted it (each pushes it to the bench's client, a
peer without relay features). Bytes are the nodes' own per-type traffic counts (/status STATUS
'traffic', frames with their length prefix), received side, summed over the nodes; the bench's
own SUBMIT_TX and NEW_BLOCK pushes are not relay bytes and are left out.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib.common import Figures, Subcommand
from benchlib.net import random_graph
from benchlib.nodes import NET_PARAMS, NET_TIMEOUT_S, NodeProcs, gossiped, percentile_ms, write_chain
from benchlib.swarm import inprocess_propagation
from p2pchain import limits, wire
from p2pchain.client import Client
from p2pchain.keys import Wallet
from p2pchain.ledger import rules
from p2pchain.ledger.block import Block, Header
from p2pchain.ledger.tx import Tx, make_tx
from p2pchain.miner import build_template, mine_block

RELAY_NODES = 20  # node processes per mode
RELAY_DEGREE = 4  # links per node in the random graph
RELAY_SENDERS = 20  # funded wallets; each block holds TXS_PER_BLOCK / RELAY_SENDERS nonces of each
TXS_PER_BLOCK = 100  # payments per measured block
RELAY_BLOCKS = 20  # blocks a mode by default: the p50 of 10 moved by more than the modes differ
MEMPOOL_WAIT_S = 20.0  # at most this long for every mempool to hold a block's payments
# a block is pushed at least this long after the last one (of either mode): by then that block's
# timers have fired on every node (the held store batch's commit after STORE_HOLD_S, the block
# announcements after RELAY_BLOCK_INV_INTERVAL_S) and do not land in this block's time
SETTLE_S = max(limits.STORE_HOLD_S, limits.RELAY_BLOCK_INV_INTERVAL_S) + 0.5
SWARM_NODES, SWARM_DEGREE, SWARM_BLOCKS = 200, 8, 20  # the in-process swarm (as bench swarm)
# every message that relays blocks: pushes, round trips, and the announcements with their fetches
BLOCK_TYPES = ("NEW_BLOCK", "CMPCT_BLOCK", "GET_BLOCK_TXN", "BLOCK_TXN", "SEND_CMPCT", "INV_BLOCK", "GET_CMPCT")
TX_TYPES = ("NEW_TX", "INV_TX", "GET_TXS", "TXS")
MODES = ("compact", "flood")


def funding_chain(wallets: list[Wallet], coins_each: int) -> list[Block]:
    """Coinbase-only blocks on NET_PARAMS' genesis paying the wallets in turn, 1 coin a block."""
    blocks: list[Block] = []
    parent = NET_PARAMS.genesis.header
    for i in range(len(wallets) * coins_each):
        stamp = parent.timestamp + 1000
        template = build_template(NET_PARAMS, parent, parent.timestamp, [], wallets[i % len(wallets)].address, stamp)
        blocks.append(mine_block(template))
        parent = blocks[-1].header
    return blocks


def payments(wallets: list[Wallet], blocks: int) -> list[list[Tx]]:
    """Each block's payments: every sender's next nonces, 1 coin to the next sender, no fee."""
    per_sender = TXS_PER_BLOCK // len(wallets)
    out: list[list[Tx]] = []
    for b in range(blocks):
        txs = []
        for i, w in enumerate(wallets):
            to = wallets[(i + 1) % len(wallets)].address
            txs += [make_tx(w, to, 1, 0, b * per_sender + k, NET_PARAMS.network_id) for k in range(per_sender)]
        out.append(txs)
    return out


def next_block(tip: list[Header], txs: list[Tx], reward_to: str) -> Block:
    mtp = rules.median_time_past([h.timestamp for h in tip[-11:]])
    return mine_block(build_template(NET_PARAMS, tip[-1], mtp, txs, reward_to, max(int(time.time() * 1000), mtp + 1)))


async def until(check: Callable[[], Any], timeout: float, poll: float = 0.05) -> bool:
    """Poll an async ``check`` until it is true or ``timeout`` passes; whether it became true."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(poll)
    return True


class Network:
    """One mode's RELAY_NODES node processes on the shared graph, timed block by block."""

    def __init__(self, root: Path, mode: str, chain: list[Block]) -> None:
        self.mode = mode
        self.procs = NodeProcs(root / mode, RELAY_NODES)
        self.tip = [b.header for b in chain[-11:]]
        self.reward_to = Wallet.generate().address
        self.times: list[float] = []
        self.sizes: list[int] = []
        self.txs = 0
        self.tx_size = 0
        self.pushed = 0  # bytes of our own NEW_BLOCK pushes, received by the nodes but not relay
        self.pooled_in_time = 0
        self.before: dict[str, int] = {}

    @property
    def clients(self) -> list[Client]:
        return [self.procs.clients[i] for i in range(RELAY_NODES)]

    async def start(self, store: Path, links: list[tuple[int, int]]) -> None:
        procs = self.procs
        for i in range(RELAY_NODES):
            shutil.copytree(store, procs.data_dir(i))
        flags = ("--relay", self.mode)
        await asyncio.gather(*(procs.start(i, [b for a, b in links if a == i], flags) for i in range(RELAY_NODES)))
        await procs.wait_linked(links)
        self.before = await received(self.clients, BLOCK_TYPES + TX_TYPES)

    async def block(self, n: int, txs: list[Tx], not_before: float) -> float:
        """Submit one block's payments (a sender's to one node, in nonce order), wait until every
        mempool holds them and the clock (time.monotonic) reads ``not_before``, then push the
        block of exactly those to node ``n`` and time it; returns when it was pushed."""
        clients = self.clients
        senders = {address: i for i, address in enumerate(dict.fromkeys(tx.sender for tx in txs))}
        for tx in txs:
            result = await clients[senders[tx.sender] % RELAY_NODES].submit_tx(tx)
            if not result.accepted:
                raise RuntimeError(f"{self.mode}: payment refused: {result.code} {result.error}")

        async def pooled() -> bool:
            counts = [int((await c.status())["mempool"]) for c in clients]
            return min(counts) >= len(txs)

        self.pooled_in_time += await until(pooled, MEMPOOL_WAIT_S)
        block = next_block(self.tip, txs, self.reward_to)
        msg = wire.NewBlock(block)
        self.pushed += len(msg.encode())
        self.sizes.append(block.size)
        self.txs += len(txs)
        self.tx_size += sum(tx.size for tx in txs)
        source = clients[n % RELAY_NODES]
        if (wait := not_before - time.monotonic()) > 0:
            await asyncio.sleep(wait)  # ok: the last block's timers must have fired (SETTLE_S)
        pushed_at = time.monotonic()
        start = time.perf_counter()
        await source.send_and_drain(msg)
        async with asyncio.timeout(NET_TIMEOUT_S):
            await asyncio.gather(*(gossiped(c, block.hash) for c in clients if c is not source))
        self.times.append((time.perf_counter() - start) * 1000)
        self.tip.append(block.header)
        return pushed_at

    async def figures(self) -> Figures:
        mode, clients = self.mode, self.clients
        after = await received(clients, BLOCK_TYPES + TX_TYPES)
        got = {k: after.get(k, 0) - self.before.get(k, 0) for k in after}
        block_bytes = sum(got.get(k, 0) for k in BLOCK_TYPES) - self.pushed
        tx_bytes = sum(got.get(k, 0) for k in TX_TYPES)
        stats = [(await c.status())["relay"] for c in clients]
        blocks, ntx, tx_size = len(self.times), self.txs, self.tx_size / self.txs
        figures: Figures = {
            f"{mode}_block_relay_bytes_ratio": block_bytes / RELAY_NODES / blocks / (sum(self.sizes) / blocks),
            f"{mode}_tx_relay_bytes_ratio": tx_bytes / RELAY_NODES / ntx / tx_size,
            f"{mode}_propagation_p50_ms": percentile_ms(self.times, 50),
            f"{mode}_propagation_p99_ms": percentile_ms(self.times, 99),
            f"{mode}_propagation_mean_ms": statistics.mean(self.times),
            f"{mode}_blocks_pooled_before_mining": self.pooled_in_time / blocks,
        }
        for kind in TX_TYPES:  # where the transaction bytes go, per node per transaction
            if got.get(kind):
                figures[f"{mode}_tx_bytes_per_tx_{kind.lower()}"] = got[kind] / RELAY_NODES / ntx
        figures[f"{mode}_tx_size_bytes"] = tx_size
        if mode == "compact":
            cmpct = sum(int(s["cmpct_received"]) for s in stats)
            rebuilt = sum(int(s["cmpct_rebuilt"]) for s in stats)
            figures["compact_rebuilt_without_roundtrip"] = rebuilt / cmpct if cmpct else None
        return figures


async def received(clients: list[Client], kinds: tuple[str, ...]) -> dict[str, int]:
    """Bytes received by type, summed over the nodes."""
    total = dict.fromkeys(kinds, 0)
    for client in clients:
        traffic = (await client.status())["traffic"]
        for k in kinds:
            if k in traffic:
                total[k] += int(traffic[k]["bytes_received"])
    return total


async def processes(args: argparse.Namespace) -> Figures:
    """Both modes' networks up at once (idle between their turns), the blocks alternated between
    them, each mode first in every other pair: slow and fast stretches of the shared cores fall on
    both alike, and block n of one mode is timed next to block n of the other. Blocks are
    SETTLE_S apart, so that neither network's timers land in the other's timed block."""
    rng = random.Random(args.seed)
    links = random_graph(RELAY_NODES, RELAY_DEGREE, rng)
    wallets = [Wallet.generate() for _ in range(RELAY_SENDERS)]
    per_sender = TXS_PER_BLOCK // RELAY_SENDERS
    chain = funding_chain(wallets, per_sender * args.blocks)
    blocks = payments(wallets, args.blocks)
    figures: Figures = {}
    with tempfile.TemporaryDirectory(prefix="p2pchain-bench-relay-") as tmp:
        root = Path(tmp)
        store = root / "store"
        write_chain(store, chain)
        nets = {mode: Network(root, mode, chain) for mode in MODES}
        try:
            for net in nets.values():
                await net.start(store, links)
            pushed = 0.0
            for n, txs in enumerate(blocks):
                for mode in MODES if n % 2 == 0 else MODES[::-1]:
                    pushed = await nets[mode].block(n, txs, pushed + SETTLE_S)
            for net in nets.values():
                figures.update(await net.figures())
        finally:
            for net in nets.values():
                await net.procs.close()
    compact, flood = nets["compact"].times, nets["flood"].times
    figures["compact_faster_share"] = sum(c < f for c, f in zip(compact, flood, strict=True)) / len(compact)
    figures["compact_over_flood_p50"] = figures["compact_propagation_p50_ms"] / figures["flood_propagation_p50_ms"]
    figures["block_relay_bytes_ratio"] = figures["compact_block_relay_bytes_ratio"]
    figures["tx_relay_bytes_ratio"] = figures["compact_tx_relay_bytes_ratio"]
    figures["propagation_p50_ms"] = figures["compact_propagation_p50_ms"]
    figures["propagation_p99_ms"] = figures["compact_propagation_p99_ms"]
    return figures


def bench_relay(args: argparse.Namespace) -> Figures:
    logging.getLogger("p2pchain").setLevel(logging.ERROR)
    figures = asyncio.run(processes(args))
    if args.swarm_blocks:
        for mode in MODES:  # the same swarm both ways, one after the other, so that the load is alike
            swarm = asyncio.run(inprocess_propagation(SWARM_NODES, SWARM_DEGREE, args.swarm_blocks, relay=mode))
            suffix = "" if mode == "compact" else "_flood"
            for q in ("p50", "p99"):
                figures[f"swarm200_inprocess_propagation_{q}_ms{suffix}"] = swarm[
                    f"swarm{SWARM_NODES}_inprocess_propagation_{q}_ms"
                ]
    return figures


def relay_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--blocks",
        type=int,
        default=RELAY_BLOCKS,
        help=f"blocks of 100 payments timed per mode (default {RELAY_BLOCKS})",
    )
    p.add_argument(
        "--swarm-blocks", type=int, default=SWARM_BLOCKS, help="blocks timed in the 200-node swarm; 0 skips it"
    )
    p.add_argument("--seed", type=int, default=1, help="the random graph's seed")


RELAY_NOTES = {
    "block_relay_bytes_ratio": "compact: block-relay bytes received per node per block / block size (<= 0.2)",
    "tx_relay_bytes_ratio": "compact: INV_TX+GET_TXS+TXS+NEW_TX bytes received per node per tx / tx size (<= 1.5)",
    "compact_rebuilt_without_roundtrip": "share of compact blocks rebuilt from the mempool alone (target >= 0.9)",
    "propagation_p50_ms": "compact: ms from a 100-tx block's push to every node accepting it, median",
    "propagation_p99_ms": "compact: same, 99th percentile",
    "compact_block_relay_bytes_ratio": "as block_relay_bytes_ratio",
    "compact_tx_relay_bytes_ratio": "as tx_relay_bytes_ratio",
    "compact_propagation_p50_ms": "as propagation_p50_ms",
    "compact_propagation_p99_ms": "as propagation_p99_ms",
    "compact_blocks_pooled_before_mining": "share of blocks whose payments every mempool held in time",
    "flood_block_relay_bytes_ratio": "--relay flood: the same (about the links a node has)",
    "flood_tx_relay_bytes_ratio": "--relay flood: the same",
    "flood_propagation_p50_ms": "--relay flood: ms, median",
    "flood_propagation_p99_ms": "--relay flood: ms, 99th percentile",
    "flood_blocks_pooled_before_mining": "--relay flood: share of blocks pooled everywhere in time",
    "compact_propagation_mean_ms": "compact: ms, mean",
    "flood_propagation_mean_ms": "--relay flood: ms, mean",
    "compact_faster_share": "share of block pairs (block n of each mode, timed back to back) where compact was faster",
    "compact_over_flood_p50": "compact_propagation_p50_ms / flood_propagation_p50_ms (<= 1: compact no slower)",
    "swarm200_inprocess_propagation_p50_ms": "ms, coinbase-only block to all 200 in-process nodes (random:8), median",
    "swarm200_inprocess_propagation_p99_ms": "ms, same, 99th percentile",
    "swarm200_inprocess_propagation_p50_ms_flood": "ms, the same swarm with --relay flood, median",
    "swarm200_inprocess_propagation_p99_ms_flood": "ms, the same swarm with --relay flood, 99th percentile",
}


COMMAND = Subcommand(
    bench_relay,
    "compact relay against --relay flood: bytes per block and per tx, propagation; the 200-node swarm",
    RELAY_NOTES,
    relay_arguments,
)
