"""Simulate the retarget rule: blocks mined by a hash rate that changes, each block's target from
the consensus code (``rules.required_bits``), solve times computed (no processes, no clock).

    python scripts/retarget_sim.py            # the half-life table of docs/ledger.md

Two solve-time models: ``expected`` (each block takes exactly work / hash rate: deterministic,
shows the rule's own dynamics) and ``random`` (exponential solve times from a seeded generator,
as real mining is). tests/test_retarget.py and ``bench.py retarget`` use the same functions.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from p2pchain import limits
from p2pchain.ledger import rules
from p2pchain.ledger.block import ZERO_HASH, Header
from p2pchain.ledger.pow import bits_to_target, work
from p2pchain.params import NetworkParams

SETTLE_WINDOW = 10  # blocks in the rolling mean interval that must stay within the tolerance
SETTLE_TOLERANCE = 0.10  # +-10 % of the block time
HashRate = Callable[[int, int], float]  # (height, time ms) -> hashes per ms
Stamp = Callable[[int, int, int], int]  # (height, true time ms, median time past) -> timestamp


@dataclass(frozen=True)
class Mined:
    height: int
    timestamp: int  # ms
    target: int
    interval: int  # ms since the parent's timestamp
    true_time: int  # ms: when it was found (the timestamp of an honest miner)


def simulate(
    params: NetworkParams,
    blocks: int,
    hash_rate: HashRate,
    *,
    rng: random.Random | None = None,
    stamp: Stamp | None = None,
) -> list[Mined]:
    """Mine ``blocks`` blocks on genesis. ``hash_rate(height, now)`` is the network's rate while
    the block at ``height`` is searched; with ``rng`` solve times are exponential, without it
    each is its expected value. ``stamp(height, true_time, mtp)`` is the timestamp the miner
    writes (default: the true time); it must pass the timestamp rules (after the median time
    past, at most the future limit ahead of the true time) or ValueError is raised. The next
    target follows the stamps, the clock follows the true time."""
    genesis = params.genesis.header
    parent = genesis
    anchor = 0
    now = genesis.timestamp
    stamps = [genesis.timestamp]
    out: list[Mined] = []
    for height in range(1, blocks + 1):
        bits = rules.required_bits(params, parent, anchor)
        target = bits_to_target(bits)
        expected = work(target) / hash_rate(height, now)
        solve = rng.expovariate(1 / expected) if rng is not None else expected
        now += max(1, round(solve))
        mtp = rules.median_time_past(stamps)
        ts = max(now, mtp + 1) if stamp is None else stamp(height, now, mtp)
        if not mtp < ts <= now + params.max_future_ms:
            raise ValueError(f"block {height}: timestamp {ts} breaks the rules (median {mtp}, now {now})")
        stamps = [*stamps[-(limits.MEDIAN_TIME_SPAN - 1) :], ts]
        header = Header(1, height, ZERO_HASH, ZERO_HASH, ts, bits, 0)
        out.append(Mined(height, ts, target, ts - parent.timestamp, now))
        anchor = rules.anchor_time(header, anchor)
        parent = header
    return out


def matched_rate(params: NetworkParams) -> float:
    """The hash rate (per ms) that mines the start target at exactly the block time."""
    return work(params.start_target) / params.block_time_ms


def step_rate(params: NetworkParams, at_height: int, factor: float) -> HashRate:
    """The matched rate until ``at_height``, then ``factor`` times it."""
    base = matched_rate(params)
    return lambda height, now: base * (factor if height >= at_height else 1.0)


def rolling_means(intervals: Sequence[int], window: int) -> list[float]:
    """Mean of each ``window`` consecutive intervals (the i-th ends at i + window - 1)."""
    total = sum(intervals[:window])
    means = [total / window]
    for i in range(window, len(intervals)):
        total += intervals[i] - intervals[i - window]
        means.append(total / window)
    return means


def settle_blocks(mined: Sequence[Mined], from_height: int, block_time_ms: int) -> int | None:
    """Blocks after ``from_height`` until the rolling mean interval (SETTLE_WINDOW blocks) enters
    +-SETTLE_TOLERANCE of the block time and stays there to the end; None if it never does."""
    after = [m.interval for m in mined if m.height >= from_height]
    means = rolling_means(after, SETTLE_WINDOW)
    settled = None
    for i, mean in enumerate(means):
        inside = abs(mean / block_time_ms - 1) <= SETTLE_TOLERANCE
        if not inside:
            settled = None
        elif settled is None:
            settled = i + SETTLE_WINDOW
    return settled


def settle_after_step(params: NetworkParams, factor: float, blocks_after: int = 2000) -> tuple[int, float]:
    """Blocks (expected solve times) until the interval settles after a ``factor`` hash-rate
    step, and the time that took in block times; (-1, inf) if it never does."""
    at = 50
    mined = simulate(params, at + blocks_after, step_rate(params, at, factor))
    blocks = settle_blocks(mined, at, params.block_time_ms)
    if blocks is None:
        return -1, math.inf
    start = mined[at - 2].timestamp  # the parent of the first block at the new rate
    return blocks, (mined[at - 2 + blocks].timestamp - start) / params.block_time_ms


def noisy_run(params: NetworkParams, blocks: int, seed: int, wobble: float = 0.5) -> list[Mined]:
    """Random solve times and a hash rate that wanders: a log-random walk, each block up to
    +-``wobble``/10 in log2, kept within a factor 2**wobble... of the matched rate."""
    rng = random.Random(seed)
    base = matched_rate(params)
    level = [0.0]

    def rate(height: int, now: int) -> float:
        level[0] = max(-wobble, min(wobble, level[0] + rng.uniform(-wobble, wobble) / 10))
        return base * 2 ** level[0]

    return simulate(params, blocks, rate, rng=rng)


def interval_ratio(mined: Sequence[Mined], block_time_ms: int, skip: int = 0) -> float:
    """Mean interval over the run (after ``skip`` blocks) divided by the block time."""
    span = mined[-1].timestamp - mined[skip].timestamp
    return span / (len(mined) - 1 - skip) / block_time_ms


def target_noise(params: NetworkParams, blocks: int, seed: int) -> float:
    """Standard deviation of log2(target) at a constant matched hash rate, random solve times:
    how much the difficulty wobbles by luck alone."""
    rng = random.Random(seed)
    base = matched_rate(params)
    mined = simulate(params, blocks, lambda h, t: base, rng=rng)
    logs = [math.log2(m.target) for m in mined[blocks // 10 :]]
    mean = sum(logs) / len(logs)
    return math.sqrt(sum((x - mean) ** 2 for x in logs) / len(logs))


def half_life_table(block_time_ms: int = 2000, half_lives: Sequence[int] = (12, 24, 48, 72, 144, 288)) -> list[str]:
    """One line per half-life (in blocks): settle blocks after x10 up and down, the target's
    noise at a steady rate, and the noisy run's interval ratio."""
    lines = [
        "| half-life (blocks) | x10 up: settled | x10 down: settled | target noise (1 sd) | interval ratio |",
        "|---|---|---|---|---|",
    ]
    for hl in half_lives:
        params = NetworkParams(bits=20, block_time_ms=block_time_ms, half_life_ms=hl * block_time_ms)
        up, up_time = settle_after_step(params, 10.0)
        down, down_time = settle_after_step(params, 0.1)
        noise = target_noise(params, 20_000, seed=1)
        ratio = interval_ratio(noisy_run(params, 20_000, seed=2), block_time_ms, skip=1000)
        lines.append(
            f"| {hl} | {up} blocks ({up_time:.0f} block times) | {down} blocks ({down_time:.0f} block times) "
            f"| {100 * (2**noise - 1):.1f} % | {ratio:.3f} |"
        )
    return lines


def main() -> None:
    print("\n".join(half_life_table()))


if __name__ == "__main__":
    main()
