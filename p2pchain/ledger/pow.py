"""Proof of work arithmetic: the compact target encoding, block work, and ASERT retargeting.

Pure integer functions (no clock, no float in consensus): a second implementation that follows
docs/ledger.md gets the same bits for the same inputs.

Compact encoding of a 256-bit target in the header's u32 ``bits`` (a binary float with a 24-bit
significand, monotonic in the target):
    bits = E << 24 | M         E = bits >> 24 (8 bits), M = bits & 0xFFFFFF (24 bits)
    target = M << E
canonical when 1 <= M, E <= 232, and M >= 2**23 whenever E > 0 (normalised). Every target in
1..2**24-1 is exact (E = 0); a larger one is truncated to its top 24 bits, a relative step of at
most 2**-23. Any other u32 decodes to 0, a target no hash meets.
"""

from __future__ import annotations

import math

MANTISSA_BITS = 24
MANTISSA_MASK = (1 << MANTISSA_BITS) - 1
MANTISSA_MIN = 1 << (MANTISSA_BITS - 1)  # a normalised significand has its top bit set
MAX_EXPONENT = 256 - MANTISSA_BITS  # 232: the largest target is (2**24 - 1) << 232 < 2**256

# ASERT (aserti3-2d) fixed point: exponents are in 1/65,536ths
RADIX_BITS = 16
RADIX = 1 << RADIX_BITS


def bits_to_target(bits: int) -> int:
    """The target a header's ``bits`` encodes; 0 (no hash meets it) when not canonical."""
    if not 0 <= bits < 2**32:
        return 0
    exponent, mantissa = bits >> MANTISSA_BITS, bits & MANTISSA_MASK
    if mantissa == 0 or exponent > MAX_EXPONENT or (exponent and mantissa < MANTISSA_MIN):
        return 0
    return mantissa << exponent


def target_to_bits(target: int) -> int:
    """The canonical encoding of ``target`` (1 <= target < 2**256), truncated to 24 significant
    bits: ``bits_to_target(target_to_bits(t)) <= t``, equal when t has at most 24 significant bits."""
    if not 1 <= target < 2**256:
        raise ValueError(f"target must be 1..2**256-1, not {target}")
    exponent = max(target.bit_length() - MANTISSA_BITS, 0)
    return exponent << MANTISSA_BITS | target >> exponent


def difficulty_target(difficulty: int) -> int:
    """The target of ``--difficulty BITS``: 2**(256 - BITS), hashes starting with BITS zero bits."""
    return 1 << (256 - difficulty)


def work(target: int) -> int:
    """Expected hashes to find a header at ``target``, the block's share of chain work
    (Bitcoin's GetBlockProof): 2**256 // (target + 1)."""
    return (1 << 256) // (target + 1)


def difficulty_bits(target: int) -> float:
    """The difficulty as leading zero bits, a float for people: 256 - log2(target)."""
    return 256.0 - math.log2(target) if target > 0 else math.inf


def asert_target(
    anchor_target: int, spacing: int, time_delta: int, height_delta: int, half_life: int, max_target: int
) -> int:
    """aserti3-2d (Bitcoin Cash, 2020; Bitcoin Cash Node's CalculateASERT), integer-only:
        target = anchor_target * 2**((time_delta - spacing * (height_delta + 1)) / half_life)
    with the exponent in 1/65,536ths (truncated toward zero), 2**frac from the cubic
    approximation, clamped to 1..``max_target``. ``spacing``, ``time_delta`` and ``half_life``
    share one unit (this chain: milliseconds)."""
    if not 0 < anchor_target <= max_target or height_delta < 0 or spacing <= 0 or half_life <= 0:
        raise ValueError("asert: anchor target must be 1..max_target, height delta >= 0, spacing and half-life > 0")
    numerator = (time_delta - spacing * (height_delta + 1)) * RADIX
    exponent = abs(numerator) // half_life * (1 if numerator >= 0 else -1)  # C's truncating division
    shifts = exponent >> RADIX_BITS  # floor: exponent = shifts * 65536 + frac, 0 <= frac < 65536
    frac = exponent & (RADIX - 1)
    factor = RADIX + ((195766423245049 * frac + 971821376 * frac**2 + 5127 * frac**3 + (1 << 47)) >> 48)
    target = anchor_target * factor
    shifts -= RADIX_BITS
    if shifts > 256:  # past any target (and never a shift of 2**60 bits in memory)
        return max_target
    target = target << shifts if shifts > 0 else target >> -shifts
    return min(max(target, 1), max_target)
