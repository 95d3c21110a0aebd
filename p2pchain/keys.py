"""Ed25519 keys, addresses and wallet files.

An address is the hex of the first 20 bytes of SHA-256 over the raw 32-byte public key
(40 lowercase hex characters). A wallet file is JSON ``{"version": 1, "seed": "<64 hex>"}``,
mode 0600.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from p2pchain.errors import WalletError
from p2pchain.record import record

ADDRESS_BYTES = 20
PUBKEY_BYTES = 32
SIGNATURE_BYTES = 64
COINBASE_SENDER = "0"  # the tutorial's sender of mining rewards
_HEX = frozenset("0123456789abcdef")


def address_of(pubkey: bytes) -> str:
    """The address that a raw Ed25519 public key controls."""
    return hashlib.sha256(pubkey).digest()[:ADDRESS_BYTES].hex()


def is_address(text: object) -> bool:
    return isinstance(text, str) and len(text) == 2 * ADDRESS_BYTES and _HEX.issuperset(text)


def verify(pubkey: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(pubkey).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@record
class Wallet:
    """A private key and what derives from it."""

    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> Wallet:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Wallet:
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def seed(self) -> bytes:
        return self.private.private_bytes_raw()

    @property
    def pubkey(self) -> bytes:
        return self.private.public_key().public_bytes_raw()

    @property
    def address(self) -> str:
        return address_of(self.pubkey)

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)

    # --- files ------------------------------------------------------------------------------
    def save(self, path: Path, *, overwrite: bool = False) -> None:
        """Write the wallet with mode 0600; refuse to replace an existing file unless asked."""
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            raise WalletError(f"wallet file {path} already exists: refusing to overwrite it") from None
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "address": self.address, "seed": self.seed.hex()}, f)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())

    @classmethod
    def load(cls, path: Path) -> Wallet:
        try:
            raw = path.read_text()
        except FileNotFoundError:
            raise WalletError(f"wallet file {path} not found: create one with 'p2pchain wallet new'") from None
        except OSError as e:
            raise WalletError(f"wallet file {path} is unreadable: {e.strerror}") from None
        try:
            doc = json.loads(raw)
            seed = bytes.fromhex(doc["seed"])
            if len(seed) != 32:
                raise ValueError("seed is not 32 bytes")
            wallet = cls.from_seed(seed)
        except (ValueError, KeyError, TypeError) as e:
            raise WalletError(f"wallet file {path} is malformed ({e}): restore it from a backup") from None
        if "address" in doc and doc["address"] != wallet.address:
            raise WalletError(f"wallet file {path} is corrupt: its address does not match its key")
        return wallet

    @classmethod
    def load_or_create(cls, path: Path) -> Wallet:
        if path.exists():
            return cls.load(path)
        wallet = cls.generate()
        wallet.save(path)
        return wallet
