"""Network parameters. Two nodes are on the same network exactly when their genesis blocks,
which derive from these parameters alone, have the same hash: the network id."""

from __future__ import annotations

from functools import cached_property

from p2pchain import limits
from p2pchain.ledger.block import ZERO_HASH, Block, Header, merkle_root
from p2pchain.ledger.pow import difficulty_target, target_to_bits
from p2pchain.ledger.tx import make_coinbase
from p2pchain.record import record

BLOCK_VERSION = 1  # the only header version
DEFAULT_BITS = 16  # leading zero bits: the tutorial's four hex zeros (~65,536 hashes a block)
DEFAULT_REWARD = 1  # coins a block mints, the tutorial's (Bitcoin: 50 at first, halving)
GENESIS_TIMESTAMP_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z
GENESIS_RECIPIENT = "00" * 20  # nobody holds this key: the genesis coins are unspendable
MAX_TARGET = difficulty_target(1)  # the easiest target of any network, 2**255 (Bitcoin: powLimit)
# ASERT half-life, in block spacings, when none is given: chosen by simulation (docs/ledger.md,
# "Choosing the half-life"): a x10 hash-rate step settles in ~3.6 half-lives of blocks, and the
# target's noise at a steady hash rate is ~sqrt(1 / (2 ln2 * half-life blocks)) in log2 units
DEFAULT_HALF_LIFE_BLOCKS = 48
U32 = 2**32


@record
class NetworkParams:
    bits: int = DEFAULT_BITS  # start difficulty in leading zero bits: the start target 2**(256 - bits)
    reward: int = DEFAULT_REWARD  # coins minted per block, paid with the fees by the coinbase
    block_time_ms: int = 0  # ASERT target spacing; 0: no retargeting, every block at the start target
    half_life_ms: int = 0  # ASERT half-life; 0: DEFAULT_HALF_LIFE_BLOCKS spacings (ignored without block_time_ms)

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 64:
            raise ValueError(f"difficulty must be 1..64 leading zero bits, not {self.bits}")
        if not 0 <= self.reward <= 2**40:
            raise ValueError(f"reward must be 0..2**40, not {self.reward}")
        if not 0 <= self.block_time_ms < U32:
            raise ValueError(f"block time must be 0..{U32 - 1} ms, not {self.block_time_ms}")
        if not self.block_time_ms:
            object.__setattr__(self, "half_life_ms", 0)
        elif not self.half_life_ms:
            object.__setattr__(self, "half_life_ms", DEFAULT_HALF_LIFE_BLOCKS * self.block_time_ms)
        if not 0 <= self.half_life_ms < U32:
            raise ValueError(f"half-life must be 1..{U32 - 1} ms, not {self.half_life_ms}")

    @cached_property  # (derived from frozen fields: read per block, computed once)
    def retargets(self) -> bool:
        """True when the target follows the hash rate (ASERT); False: fixed at the start target."""
        return self.block_time_ms > 0

    @cached_property
    def start_target(self) -> int:
        return difficulty_target(self.bits)

    @cached_property
    def start_bits(self) -> int:
        """The header ``bits`` of the start target (genesis, block 1, every block if fixed)."""
        return target_to_bits(self.start_target)

    @cached_property
    def max_future_ms(self) -> int:
        """How far ahead of local time a block's timestamp may be. Fixed difficulty: 2 h as in
        Bitcoin. Retargeting: small enough that one timestamp raises the next target by at most
        10 % (2**(limit / half-life) <= 1.1), never more than 2 h."""
        if not self.retargets:
            return limits.MAX_FUTURE_BLOCK_MS
        return min(limits.MAX_FUTURE_BLOCK_MS, self.half_life_ms * limits.FUTURE_HALF_LIFE_PER_MILLE // 1000)

    @cached_property
    def genesis(self) -> Block:
        """Deterministic from the parameters. It is the chain's root by definition, so its proof
        of work is not checked, and its nonce carries the retarget parameters (so they are part of
        the network id): block_time_ms << 32 | half_life_ms, 0 for a fixed difficulty."""
        coinbase = make_coinbase(GENESIS_RECIPIENT, self.reward, 0)
        header = Header(
            BLOCK_VERSION,
            0,
            ZERO_HASH,
            merkle_root([coinbase.txid]),
            GENESIS_TIMESTAMP_MS,
            self.start_bits,
            self.block_time_ms << 32 | self.half_life_ms,
        )
        return Block(header, (coinbase,))

    @property
    def network_id(self) -> bytes:
        return self.genesis.hash

    def describe(self) -> str:
        return f"network {self.network_id.hex()[:12]}… ({self.summary()})"

    def summary(self) -> str:
        """The parameters in words: 'difficulty 16, reward 1' or with the block time."""
        if not self.retargets:
            return f"difficulty {self.bits}, reward {self.reward}"
        return (
            f"block time {self.block_time_ms / 1000:g} s, half-life {self.half_life_ms / 1000:g} s, "
            f"start difficulty {self.bits}, reward {self.reward}"
        )
