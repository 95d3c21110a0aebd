"""Fuzz target: opening a node's store from a mutated SQLite file.

Input: the bytes of ``chain.sqlite`` (the seeds are real stores of the seed chain at heights 0,
2 and 4, written with 512-byte pages so that a mutation lands in a small file). It is written to
a RAM directory and opened as a node opens its data dir (``Chain.open``); then every block of
the best chain is read back, and the seed chain's next block is offered to it.

Oracles (each a crash when broken): only ``StoreError`` (the store's named error, whose message
says what to do) or a ``RuleError`` for the offered block may come out, never another exception;
a file whose best chain had blocks after genesis never opens as a fresh chain (silently reset);
a block read back is the block asked for (its hash), never another one.

    .venv/bin/python fuzz/store.py --seconds 60      # see fuzz/fuzzharness.py for the options
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import sys
import tempfile
from pathlib import Path

import fuzzharness
from fuzzharness import Finding, Target, outcome

PAGE_SIZE = 512  # the seeds' SQLite page size (SQLite's smallest): small inputs, same schema


def main_rows(path: Path) -> int | None:
    """Rows of the ``main`` table as SQLite reads the file, without writing; None if it cannot."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
        try:
            return int(db.execute("SELECT count(*) FROM main").fetchone()[0])
        finally:
            db.close()
    except Exception:
        return None


def build() -> Target:
    import fuzz  # scripts/fuzz.py
    from p2pchain.chain import Chain
    from p2pchain.errors import RuleError, StoreError

    fuzzharness.quiet_logs()
    params = fuzz.FUZZ_PARAMS
    seed_chain = fuzz.seed_chain(params)
    now_ms = seed_chain[-1].header.timestamp + 60_000
    shm = Path("/dev/shm")
    tmp = tempfile.TemporaryDirectory(prefix="p2pchain-fuzz-store-", dir=str(shm) if shm.is_dir() else None)
    path = Path(tmp.name) / "chain.sqlite"

    def clear() -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{path}{suffix}").unlink()

    def run(data: bytes) -> str:
        clear()
        path.write_bytes(data)
        rows = main_rows(path)
        try:
            chain = Chain.open(path, params)
        except StoreError as e:
            return outcome(e)
        try:
            if rows is not None and rows > 1 and chain.height == 0:
                raise Finding(f"a store whose best chain had {rows} blocks opened as a fresh chain")
            for block_hash in chain.main:
                try:
                    block = chain.get_block(block_hash)
                except StoreError as e:
                    return "read:" + outcome(e)
                if block is None or block.hash != block_hash:
                    raise Finding(
                        f"asked the store for block {block_hash.hex()[:16]}, got {block and block.hash.hex()}"
                    )
            label = f"opened:{chain.height}"
            if chain.height + 1 < len(seed_chain) and seed_chain[chain.height + 1].prev_hash == chain.tip.hash:
                try:
                    label += ":" + chain.process_block(seed_chain[chain.height + 1], now_ms).status.value
                except (RuleError, StoreError) as e:
                    label += ":" + outcome(e)
            return label
        finally:
            chain.close()

    def store_file(height: int) -> bytes:
        clear()
        chain = Chain.open(path, params)
        for block in seed_chain[1 : height + 1]:
            chain.process_block(block, now_ms)
        chain.store.ban("192.0.2.1", now_ms + 60_000, "seed ban")
        chain.close()
        db = sqlite3.connect(path)
        db.execute("PRAGMA journal_mode=DELETE")
        db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        db.execute("VACUUM")
        db.close()
        return path.read_bytes()

    stores = [store_file(h) for h in (0, 2, 4)]
    mutator = fuzz.Mutator(fuzz.FastRandom(1), fuzz.seed_messages())

    def generate(rng: random.Random) -> bytes:
        """A seed store with its bytes mutated: a few at random, or a page's worth of a splice."""
        mutator.rng = rng
        data = bytearray(rng.choice(stores))
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            op = rng.randrange(4)
            if op == 0:
                data[i] ^= 1 << rng.randrange(8)
            elif op == 1:
                data[i] = rng.choice((0, 1, 0x7F, 0x80, 0xFF))
            elif op == 2:
                data[i : i + 4] = rng.randbytes(4)
            else:
                page = mutator.mutate_bytes(bytes(data[i : i + PAGE_SIZE]))
                return bytes(data[:i]) + page + bytes(data[i + PAGE_SIZE :])
        return bytes(data)

    return Target("store", run, lambda: list(stores), generate, max_len=32768, close=tmp.cleanup)


if __name__ == "__main__":
    sys.exit(fuzzharness.main(build))
