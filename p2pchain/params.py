"""Network parameters. Two nodes are on the same network exactly when their genesis blocks,
which derive from these parameters alone, have the same hash: the network id."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from p2pchain.ledger.block import ZERO_HASH, Block, Header, merkle_root
from p2pchain.ledger.tx import make_coinbase

BLOCK_VERSION = 1  # the only header version
DEFAULT_BITS = 16  # leading zero bits: the tutorial's four hex zeros (~65,536 hashes a block)
DEFAULT_REWARD = 1  # coins a block mints, the tutorial's (Bitcoin: 50 at first, halving)
GENESIS_TIMESTAMP_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z
GENESIS_RECIPIENT = "00" * 20  # nobody holds this key: the genesis coins are unspendable


@dataclass(frozen=True)
class NetworkParams:
    bits: int = DEFAULT_BITS  # difficulty of every block (fixed: no retargeting)
    reward: int = DEFAULT_REWARD  # coins minted per block, paid with the fees by the coinbase

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 64:
            raise ValueError(f"difficulty must be 1..64 leading zero bits, not {self.bits}")
        if not 0 <= self.reward <= 2**40:
            raise ValueError(f"reward must be 0..2**40, not {self.reward}")

    @cached_property
    def genesis(self) -> Block:
        """Deterministic from the parameters. It is the chain's root by definition, so its nonce
        is 0 and its proof of work is not checked (any node can rebuild it in microseconds)."""
        coinbase = make_coinbase(GENESIS_RECIPIENT, self.reward, 0)
        header = Header(BLOCK_VERSION, 0, ZERO_HASH, merkle_root([coinbase.txid]), GENESIS_TIMESTAMP_MS, self.bits, 0)
        return Block(header, (coinbase,))

    @property
    def network_id(self) -> bytes:
        return self.genesis.hash

    def describe(self) -> str:
        return f"network {self.network_id.hex()[:12]}… (difficulty {self.bits}, reward {self.reward})"
