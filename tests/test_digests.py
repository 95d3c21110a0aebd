"""digests: the interpreter's own SHA-256 and BLAKE2b give hashlib's (OpenSSL's) results.

p2pchain.digests exists so that a node does not load OpenSSL's libcrypto at start; every hash
of the ledger, the relay's short ids and the wallet's check go through it, so its results must
be hashlib's to the bit, through every way the code uses them (one call, copy + update, keyed).
"""

from __future__ import annotations

import hashlib

import pytest

from p2pchain import digests

INPUTS = [b"", b"\x00", b"abc", bytes(range(256)) * 3, b"x" * 80, b"y" * 150, b"z" * 100_000]


@pytest.mark.parametrize("data", INPUTS, ids=lambda d: f"{len(d)}B")
def test_sha256_is_hashlibs(data: bytes) -> None:
    assert digests.sha256(data).digest() == hashlib.sha256(data).digest()
    assert digests.sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()
    # the miner's loop: a base hash copied, then two more bytes
    base, reference = digests.sha256(data), hashlib.sha256(data)
    for ending in (b"\x00\x00", b"\xff\xfe"):
        h, r = base.copy(), reference.copy()
        h.update(ending)
        r.update(ending)
        assert h.digest() == r.digest()
    assert base.digest() == reference.digest()  # the copies left the base as it was


@pytest.mark.parametrize("data", INPUTS[:5], ids=lambda d: f"{len(d)}B")
def test_keyed_blake2b_is_hashlibs(data: bytes) -> None:
    key = bytes(range(16))
    mine = digests.blake2b(key=key, digest_size=6)
    ref = hashlib.blake2b(key=key, digest_size=6)
    mine.update(data)
    ref.update(data)
    assert mine.digest() == ref.digest()
