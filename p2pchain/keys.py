"""Ed25519 keys, addresses and wallet files.

An address is the hex of the first 20 bytes of SHA-256 over the raw 32-byte public key
(40 lowercase hex characters). A wallet file is JSON, mode 0600:
``{"version": 1, "address": "<40 hex>", "seed": "<64 hex>", "check": "<64 hex>"}``, where
``check`` is SHA-256 over ``WALLET_CHECK_TAG``, the seed and the address's ASCII (see
``wallet_check``). A file without ``address`` or ``check`` (written by older versions) is
still read: its address is then derived from the seed.

pyca/cryptography (Ed25519 in OpenSSL) is loaded at the first signature, key or verification,
not with this module: a node accepts peers before it needs one (loading it costs a start about
16 M instructions, 5 % of spawn-to-listening), and its wallet's file is checked by ``check``,
which needs no Ed25519.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from dataclasses import field
from typing import TYPE_CHECKING, Any

from p2pchain.digests import sha256
from p2pchain.errors import WalletError
from p2pchain.record import record

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ADDRESS_BYTES = 20
PUBKEY_BYTES = 32
SIGNATURE_BYTES = 64
COINBASE_SENDER = "0"  # the tutorial's sender of mining rewards
_NOT_HEX = str.maketrans("", "", "0123456789abcdef")  # is_address: deletes the hex digits
WALLET_CHECK_TAG = b"p2pchain wallet v1\x00"  # the prefix of a wallet file's check (domain separation)


class _Ed25519:
    """pyca/cryptography's Ed25519 key classes and the errors of a bad signature or key, imported at
    first use (``ed25519()``)."""

    def __init__(self) -> None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric import ed25519

        self.private_key: Any = ed25519.Ed25519PrivateKey
        self.public_key: Any = ed25519.Ed25519PublicKey
        self.errors = (InvalidSignature, ValueError)


_lib: _Ed25519 | None = None


def ed25519() -> _Ed25519:
    """pyca/cryptography's Ed25519, imported now if it was not yet (a process that will check
    signatures soon may load it ahead: a signature worker before it says it is ready)."""
    global _lib
    if _lib is None:
        _lib = _Ed25519()
    return _lib


def wallet_check(seed: bytes, address: str) -> str:
    """A wallet file's ``check``: a changed or damaged seed or address no longer matches it, so a
    node can trust the file's address without deriving it (which needs Ed25519) at every start."""
    return sha256(WALLET_CHECK_TAG + seed + address.encode("ascii")).hexdigest()


def address_of(pubkey: bytes) -> str:
    """The address that a raw Ed25519 public key controls."""
    return sha256(pubkey).digest()[:ADDRESS_BYTES].hex()


def is_address(text: object) -> bool:
    # (translate drops the hex digits: nothing left means all were; half the cost of a set's superset test)
    return isinstance(text, str) and len(text) == 2 * ADDRESS_BYTES and not text.translate(_NOT_HEX)


def verify(pubkey: bytes, signature: bytes, message: bytes) -> bool:
    lib = _lib or ed25519()
    try:
        lib.public_key.from_public_bytes(pubkey).verify(signature, message)
    except lib.errors:
        return False
    return True


def _unlink(path: str) -> None:
    """Remove ``path`` if it is there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@record
class Wallet:
    """A private key (its 32-byte Ed25519 seed) and what derives from it: the key object, public
    key and address are derived at first use (loading pyca/cryptography then)."""

    seed: bytes = field(repr=False)  # the private key: never in a repr or log line

    @classmethod
    def generate(cls) -> Wallet:
        return cls(os.urandom(32))  # an Ed25519 private key is 32 random bytes (RFC 8032 5.1.5)

    @classmethod
    def from_seed(cls, seed: bytes) -> Wallet:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return cls(seed)

    @functools.cached_property
    def private(self) -> Ed25519PrivateKey:
        key: Ed25519PrivateKey = ed25519().private_key.from_private_bytes(self.seed)
        return key

    @functools.cached_property
    def pubkey(self) -> bytes:
        return self.private.public_key().public_bytes_raw()

    @functools.cached_property
    def address(self) -> str:
        return address_of(self.pubkey)

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)

    # --- files ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the wallet with mode 0600; refuse to replace an existing file unless asked. The
        file appears whole or not at all: written and synced under a temporary name beside it,
        then linked (or, with ``overwrite``, renamed) into place. A node killed while it creates
        its wallet on its first start used to leave an empty file, which every later start
        refused as malformed."""
        parent, name = os.path.split(os.fspath(path))
        if not name:
            raise WalletError(f"wallet file {path} names a directory, not a file")
        parent = parent or "."  # (not abspath: it folds "link/.." by text, where the file system follows the link)
        os.makedirs(parent, exist_ok=True)
        if not overwrite and os.path.exists(path):
            raise WalletError(f"wallet file {path} already exists: refusing to overwrite it")
        tmp = os.path.join(parent, f".{name}.{os.getpid()}.tmp")  # (a dead process's leftover: replaced)
        _unlink(tmp)
        try:
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                address, seed = self.address, self.seed
                doc = {"version": 1, "address": address, "seed": seed.hex(), "check": wallet_check(seed, address)}
                json.dump(doc, f)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            if overwrite:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)  # (fails if the path exists: never a replace)
                except FileExistsError:
                    raise WalletError(f"wallet file {path} already exists: refusing to overwrite it") from None
        finally:
            _unlink(tmp)
        directory = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the new name survives a power loss too
        finally:
            os.close(directory)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Wallet:
        try:
            with open(path) as f:
                raw = f.read()
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
            address, check = doc.get("address"), doc.get("check")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise WalletError(f"wallet file {path} is malformed ({e}): restore it from a backup") from None
        if is_address(address) and isinstance(check, str):  # checked without Ed25519
            if check != wallet_check(seed, address):
                raise WalletError(f"wallet file {path} is corrupt: its check does not match its key and address")
            wallet.__dict__["address"] = address  # (the cached property's value, as derived)
        elif address is not None and address != wallet.address:  # an older file: derived
            raise WalletError(f"wallet file {path} is corrupt: its address does not match its key")
        return wallet

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> Wallet:
        if os.path.exists(path):
            return cls.load(path)
        wallet = cls.generate()
        wallet.save(path)
        return wallet
