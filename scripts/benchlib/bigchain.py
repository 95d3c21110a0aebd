"""bigchain: a chain of 100,000 blocks: sync it from one peer process, open it from disk, and
accept a block at its tip (against the same at height 100)."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from benchlib.common import Figures, Subcommand, timed_ms
from benchlib.ledger import CHAIN_BLOCK_TXS, CHAIN_SAMPLES, sign
from benchlib.nodes import NET_SPACING_MS, NET_TIMEOUT_S, NodeProcs, embedded_node, net_chain, write_chain
from p2pchain.chain import Chain
from p2pchain.keys import Wallet
from p2pchain.ledger.block import Block
from p2pchain.ledger.tx import Tx
from p2pchain.miner import build_template, mine_block
from p2pchain.node import NodeConfig
from p2pchain.params import NetworkParams
from p2pchain.store import DB_FILE

BIG_BLOCKS = 100_000  # blocks of the long chain
BIG_PARAMS = NetworkParams(bits=1)  # ~2 hashes a block: building 100,000 of them takes seconds
SMALL_HEIGHT = 100  # block_accept_ms_at_100: the same measurement on a short chain,
SMALL_PARAMS = NetworkParams(bits=1, reward=1000)  # whose 100 blocks fund the timed payments as well


def opened(path: Path, height: int) -> tuple[float, float]:
    """(MiB resident, seconds to open) of a fresh interpreter that opened the store at ``path``."""
    code = (
        "import os, sys, time; from p2pchain.chain import Chain; from p2pchain.params import NetworkParams; "
        "t = time.perf_counter(); c = Chain.open(sys.argv[1], NetworkParams(bits=1)); t = time.perf_counter() - t; "
        "assert c.height == int(sys.argv[2]), c.height; "
        "print(int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20, t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), str(height)], capture_output=True, text=True, check=True, timeout=300
    )
    rss, seconds = out.stdout.split()
    return float(rss), float(seconds)


class _Tip:
    """A chain opened for the timed blocks: each is CHAIN_BLOCK_TXS signed payments by ``payer``
    (signatures not checked before) at its tip."""

    def __init__(self, path: Path, payer: Wallet, params: NetworkParams) -> None:
        self.chain = Chain.open(path, params)
        self.payer = payer
        self.params = params
        self.nonce = self.chain.get_account(payer.address).nonce
        self.times: list[float] = []

    def next_block(self) -> Block:
        payer, network = self.payer, self.params.network_id
        unsigned = [
            Tx(payer.address, "cd" * 20, 1, 0, self.nonce + k, payer.pubkey, b"") for k in range(CHAIN_BLOCK_TXS)
        ]
        txs = [sign(payer.private, tx, network) for tx in unsigned]
        self.nonce += CHAIN_BLOCK_TXS
        tip = self.chain.tip
        stamp = tip.header.timestamp + NET_SPACING_MS
        mtp = self.chain.median_time_past(tip)
        return mine_block(build_template(self.params, tip.header, mtp, txs, payer.address, stamp))

    def accept(self, block: Block) -> None:
        self.times.append(timed_ms(partial(self.chain.process_block, block, block.header.timestamp)))
        assert self.chain.tip.hash == block.hash


def accept_ms(tips: list[_Tip]) -> list[float]:
    """Median Chain.process_block time of CHAIN_SAMPLES blocks at each of ``tips``, taken in turns
    (one block at each, in an order that alternates), so that a core whose speed drifts during
    the run (this machine's does, by 10-40 % within minutes) slows each side alike: timed one
    chain after the other, the ratio of two medians measured ~20 s apart read 0.74 to 1.47 for
    the same code."""
    for i in range(CHAIN_SAMPLES):
        blocks = [tip.next_block() for tip in tips]  # built (and signed) before either is timed
        for k in range(len(tips))[:: 1 if i % 2 == 0 else -1]:
            tips[k].accept(blocks[k])
    return [statistics.median(tip.times) for tip in tips]


async def sync_s(root: Path, source_dir: Path, height: int) -> float:
    """A fresh node in this process syncs ``height`` blocks from a node process on ``source_dir``."""
    procs = NodeProcs(root / "source", 1)
    procs.data_dir(0).parent.mkdir(parents=True, exist_ok=True)
    source_dir.rename(procs.data_dir(0))
    try:
        await procs.start(0, [], ("--difficulty", str(BIG_PARAMS.bits)))
        config = NodeConfig(
            data_dir=root / "fresh", port=0, peers=[f"127.0.0.1:{procs.ports[0]}"], params=BIG_PARAMS, discover=False
        )
        node = embedded_node(config)
        caught_up = asyncio.Event()
        node.chain.subscribe(lambda connected, gone: caught_up.set() if node.chain.height >= height else None)
        try:
            start = time.perf_counter()
            await node.start()
            async with asyncio.timeout(NET_TIMEOUT_S * 5):
                await caught_up.wait()
            return time.perf_counter() - start
        finally:
            await node.stop()
    finally:
        await procs.close()


def bench_bigchain(args: argparse.Namespace) -> Figures:
    n: int = args.blocks
    payer = Wallet.generate()  # every block pays it: the timed blocks' payments spend that
    start = time.perf_counter()
    blocks = net_chain(n, payer.address, BIG_PARAMS)
    figures: Figures = {"bigchain_build_s": time.perf_counter() - start}
    with tempfile.TemporaryDirectory(prefix="p2pchain-bench-bigchain-") as tmp:
        root = Path(tmp)
        figures[f"sync_{n}_inprocess_s"] = write_chain(root / "big", blocks, BIG_PARAMS)
        write_chain(root / "small", net_chain(SMALL_HEIGHT, payer.address, SMALL_PARAMS), SMALL_PARAMS)
        rss, open_s = opened(root / "big" / DB_FILE, n)
        figures[f"rss_mb_{n}_blocks"] = rss
        figures[f"open_{n}_s"] = open_s
        figures[f"sync_{n}_s"] = asyncio.run(sync_s(root, root / "big", n))
        tips = [_Tip(root / "fresh" / DB_FILE, payer, BIG_PARAMS), _Tip(root / "small" / DB_FILE, payer, SMALL_PARAMS)]
        try:
            at_n, at_small = accept_ms(tips)
        finally:
            for tip in tips:
                tip.chain.close()
        figures[f"block_accept_ms_at_{n}"] = at_n
        figures[f"block_accept_ms_at_{SMALL_HEIGHT}"] = at_small
    figures["block_accept_ratio"] = figures[f"block_accept_ms_at_{n}"] / figures[f"block_accept_ms_at_{SMALL_HEIGHT}"]
    return figures


MIN_BLOCKS = CHAIN_SAMPLES * CHAIN_BLOCK_TXS  # the timed payments spend the long chain's rewards, 1 coin a block


def blocks_arg(text: str) -> int:
    n = int(text)
    if n < MIN_BLOCKS:
        raise argparse.ArgumentTypeError(f"at least {MIN_BLOCKS:,}: the timed blocks spend one coin per block mined")
    return n


def bigchain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--blocks", type=blocks_arg, default=BIG_BLOCKS, help=f"length of the long chain (default {BIG_BLOCKS:,})"
    )


BIGCHAIN_NOTES = {
    "bigchain_build_s": "s to build the blocks in this process (coinbase-only, 1 bit of work)",
    f"sync_{BIG_BLOCKS}_inprocess_s": "s, Chain.process_block of them into a store, no network (the floor)",
    f"rss_mb_{BIG_BLOCKS}_blocks": "MiB resident, a fresh process that opened that store; target <= 120",
    f"open_{BIG_BLOCKS}_s": "s that opening took",
    f"sync_{BIG_BLOCKS}_s": "s, a fresh node syncs them from one node process; target <= 10",
    f"block_accept_ms_at_{BIG_BLOCKS}": f"ms, Chain.process_block of a {CHAIN_BLOCK_TXS}-tx block at the tip, median "
    f"of {CHAIN_SAMPLES}",
    f"block_accept_ms_at_{SMALL_HEIGHT}": "ms, the same at height 100, timed in turns with the first",
    "block_accept_ratio": "the first / the second; target <= 1.2",
}

COMMAND = Subcommand(
    bench_bigchain, "a chain of 100,000 blocks: sync, open, accept at the tip", BIGCHAIN_NOTES, bigchain_arguments
)
