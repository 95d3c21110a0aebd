"""consensus: the costs issue 11's adversarial review suspected, measured in-process.

- an invalid block's clean-up (Chain._forget_invalid) on a large block index, beside the whole
  index sort it used to do for every such block (the ceiling: what the old code paid);
- an honest orphan's chance to outlive junk orphans sent after it;
- how many blocks overlapping store batches hold before a commit;
- what a flood of gossiped side blocks (no more work than the tip) adds to the store.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from benchlib.common import Figures, Subcommand
from p2pchain import limits
from p2pchain.chain import Chain, Entry
from p2pchain.errors import RuleCode
from p2pchain.keys import Wallet
from p2pchain.ledger.block import Block, Header
from p2pchain.ledger.tx import Tx, make_tx
from p2pchain.miner import build_template, mine_block
from p2pchain.params import NetworkParams

PARAMS = NetworkParams(bits=8)  # ~256 hashes a block: mined in well under a millisecond
INDEX_SIZE = 100_000  # synthetic block index entries for the clean-up figure
ORPHAN_RUNS = 40  # seeded runs of the orphan figure
BATCH_BLOCKS = 1500  # blocks fed inside two overlapping store batches
FLOOD_BLOCKS = 24  # gossiped side blocks
FLOOD_TXS = 250  # signed payments from an empty address in each


def block_on(parent: Header, salt: int, txs: tuple[Tx, ...] = (), prev: bytes | None = None) -> Block:
    template = build_template(PARAMS, parent, parent.timestamp, list(txs), "ab" * 20, parent.timestamp + 1000 + salt)
    if prev is not None:
        template = Block(replace(template.header, prev_hash=prev), template.txs)
    return mine_block(template)


def best_ms(fn: Callable[[], object], rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def cleanup_figures() -> Figures:
    chain = Chain.open(":memory:", PARAMS)
    genesis = PARAMS.genesis.header
    for i in range(INDEX_SIZE):
        header = replace(genesis, height=i + 1, prev_hash=hashlib.sha256(b"%d" % i).digest())
        chain.index[header.hash] = Entry(header, i, i)
    for h in list(chain.index)[1 : limits.SIDE_BLOCKS_MAX + 1]:
        chain.side[h] = 100  # a full side set: the most the clean-up may scan
    bad = block_on(genesis, 1)
    whole_sort = best_ms(lambda: sorted(chain.index.items(), key=lambda item: item[1].height))
    cleanup = best_ms(lambda: chain._forget_invalid(bad, RuleCode.TX_BAD_NONCE))
    chain.close()
    return {"index_sort_ms_100k": round(whole_sort, 2), "forget_invalid_ms_100k": round(cleanup, 2)}


def orphan_figures() -> Figures:
    genesis = PARAMS.genesis.header
    honest = block_on(genesis, 0, prev=hashlib.sha256(b"honest parent").digest())
    junk = [
        block_on(genesis, i, prev=hashlib.sha256(b"junk %d" % i).digest()) for i in range(2 * limits.ORPHAN_POOL_MAX)
    ]
    figures: Figures = {}
    for count, name in ((limits.ORPHAN_POOL_MAX, "orphan_kept_pct_256_junk"), (len(junk), "orphan_kept_pct_512_junk")):
        kept = 0
        for seed in range(ORPHAN_RUNS):
            chain = Chain.open(":memory:", PARAMS)
            chain.rng = random.Random(seed)
            for block in (honest, *junk[:count]):
                chain.process_block(block, block.header.timestamp)
            kept += chain.has_block(honest.hash)
            chain.close()
        figures[name] = round(100 * kept / ORPHAN_RUNS, 1)
    return figures


def batch_figures(tmp: Path) -> Figures:
    path = tmp / "batch.sqlite"
    chain = Chain.open(path, PARAMS)
    other = sqlite3.connect(path)
    parent, gap, longest = PARAMS.genesis.header, 0, 0
    with chain.store.batch(), chain.store.batch():  # two peers' batches, the second inside the first
        for i in range(BATCH_BLOCKS):
            block = block_on(parent, i)
            chain.process_block(block, block.header.timestamp + 1)
            parent = block.header
            committed = other.execute("SELECT count(*) FROM main").fetchone()[0] - 1
            gap = chain.height - committed
            longest = max(longest, gap)
    other.close()
    chain.close()
    return {"batch_blocks_before_commit": longest}


def flood_figures(tmp: Path) -> Figures:
    path = tmp / "flood.sqlite"
    chain = Chain.open(path, PARAMS)
    genesis = PARAMS.genesis.header
    a1 = block_on(genesis, 0)
    a2 = block_on(a1.header, 0)
    for block in (a1, a2):
        chain.process_block(block, block.header.timestamp)
    empty = Wallet.generate()
    txs = tuple(make_tx(empty, "cd" * 20, 1, 0, n, PARAMS.network_id) for n in range(FLOOD_TXS))
    flood = [block_on(genesis if i % 2 else a1.header, 10 + i, txs) for i in range(FLOOD_BLOCKS)]

    def store_bytes() -> int:
        return sum(f.stat().st_size for f in tmp.glob("flood.sqlite*"))

    before = store_bytes()
    for block in flood:
        chain.process_block(block, block.header.timestamp, requested=False)
    grown = store_bytes() - before
    chain.close()
    return {"side_flood_sent_bytes": sum(b.size for b in flood), "side_flood_stored_bytes": grown}


def bench_consensus(args: argparse.Namespace) -> Figures:
    with tempfile.TemporaryDirectory(prefix="p2pchain-bench-consensus-") as tmp:
        return {**cleanup_figures(), **orphan_figures(), **batch_figures(Path(tmp)), **flood_figures(Path(tmp))}


CONSENSUS_NOTES = {
    "index_sort_ms_100k": "ms: sorting a 100,000-block index, what each state-invalid block cost before",
    "forget_invalid_ms_100k": "ms: the clean-up now (scans the side blocks only, at most SIDE_BLOCKS_MAX)",
    "orphan_kept_pct_256_junk": "%: runs where an honest orphan outlives ORPHAN_POOL_MAX junk ones (0 before)",
    "orphan_kept_pct_512_junk": "%: the same with twice as many junk orphans (0 before; ~37 expected)",
    "batch_blocks_before_commit": f"blocks: most held uncommitted by 2 overlapping batches of {BATCH_BLOCKS} "
    "(all of them before)",
    "side_flood_sent_bytes": f"bytes: {FLOOD_BLOCKS} gossiped side blocks of {FLOOD_TXS} payments",
    "side_flood_stored_bytes": "bytes: what they added to the store file (about as many as sent before)",
}

COMMAND = Subcommand(
    bench_consensus, "costs issue 11 suspected: invalid-block clean-up, orphans, batches", CONSENSUS_NOTES
)
