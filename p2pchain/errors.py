"""Error types, one per layer, each carrying a code that tests assert on (never a string)."""

from __future__ import annotations

import enum

from p2pchain import limits


def clip(text: str, max_chars: int = limits.MAX_REASON_CHARS) -> str:
    """``text`` cut to ``max_chars`` characters (an ellipsis marks the cut): for every string
    built from what a peer sent (reasons, log lines), so that none grows with the peer's input."""
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


class RuleCode(enum.Enum):
    """Why a block or transaction breaks a consensus rule."""

    # transaction
    TX_MALFORMED = "tx-malformed"
    TX_BAD_AMOUNT = "tx-bad-amount"
    TX_BAD_FEE = "tx-bad-fee"
    TX_BAD_SIGNATURE = "tx-bad-signature"
    TX_KEY_MISMATCH = "tx-key-mismatch"
    TX_BAD_NONCE = "tx-bad-nonce"
    TX_INSUFFICIENT_FUNDS = "tx-insufficient-funds"
    TX_SELF_COINBASE = "tx-coinbase-sender"  # a non-coinbase position holds sender "0"
    # block
    BAD_POW = "bad-pow"
    BAD_BITS = "bad-bits"  # bits is no canonical target, or one easier than the network's easiest
    BAD_DIFFICULTY = "bad-difficulty"  # bits is not the target the network requires of this block
    BAD_VERSION = "bad-version"
    UNKNOWN_PARENT = "unknown-parent"
    BAD_PREV_HASH = "bad-prev-hash"
    BAD_HEIGHT = "bad-height"
    BAD_MERKLE_ROOT = "bad-merkle-root"
    TIME_TOO_NEW = "time-too-new"
    TIME_TOO_OLD = "time-too-old"
    BLOCK_TOO_BIG = "block-too-big"
    TOO_MANY_TXS = "too-many-txs"
    NO_COINBASE = "no-coinbase"
    DUPLICATE_COINBASE = "duplicate-coinbase"
    BAD_COINBASE = "bad-coinbase"  # wrong shape (nonce, fee, key)
    COINBASE_OVERPAYS = "coinbase-overpays"
    DUPLICATE_TX = "duplicate-tx"
    INVALID_ANCESTOR = "invalid-ancestor"


class RuleError(Exception):
    """A block or transaction breaks a consensus rule (btcd: RuleError)."""

    def __init__(self, code: RuleCode, description: str) -> None:
        super().__init__(f"{code.value}: {description}")
        self.code = code
        self.description = description


class MempoolCode(enum.Enum):
    """Why the mempool refused a transaction that may still be consensus-valid."""

    DUPLICATE = "already-known"
    NONCE_CONFLICT = "nonce-conflict"
    NONCE_GAP = "nonce-gap"
    STALE_NONCE = "stale-nonce"
    INSUFFICIENT_FUNDS = "insufficient-funds"
    RECIPIENT_FULL = "recipient-over-money-limit"  # the recipient's balance would pass MAX_MONEY
    FULL = "mempool-full"
    INVALID = "invalid"  # wraps a RuleError


class MempoolError(Exception):
    def __init__(self, code: MempoolCode, description: str) -> None:
        super().__init__(f"{code.value}: {description}")
        self.code = code
        self.description = description


class ProtocolError(Exception):
    """A peer sent something the wire protocol does not allow (btcd: MessageError)."""


class StoreError(Exception):
    """The data dir cannot be used: corrupt, another network, unreadable. The message says what to do."""


class WalletError(Exception):
    """A wallet file is missing, unreadable or malformed."""
