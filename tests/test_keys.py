"""keys: wallet files are read and checked without Ed25519, and damage is refused.

A wallet file carries a check (SHA-256 over a tag, the seed and the address), so a node trusts the
file's address without deriving it from the key, which would load pyca/cryptography at every
start (tests/test_startup.py checks that a node does not load it). Each case writes a file, changes
what a damaged or older file would have, and loads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2pchain.errors import WalletError
from p2pchain.keys import Wallet, address_of, verify, wallet_check


def saved(tmp_path: Path) -> tuple[Wallet, Path, dict[str, object]]:
    wallet = Wallet.generate()
    path = tmp_path / "wallet.json"
    wallet.save(path)
    return wallet, path, json.loads(path.read_text())


def test_a_saved_wallet_loads_with_its_key_and_address(tmp_path: Path) -> None:
    wallet, path, doc = saved(tmp_path)
    assert doc == {
        "version": 1,
        "address": wallet.address,
        "seed": wallet.seed.hex(),
        "check": wallet_check(wallet.seed, wallet.address),
    }
    loaded = Wallet.load(path)
    assert loaded == wallet and loaded.address == wallet.address == address_of(wallet.pubkey)
    message = b"pay bob"
    assert verify(loaded.pubkey, loaded.sign(message), message)  # the key is the file's


@pytest.mark.parametrize("part", ["seed", "address", "check"])
def test_a_changed_seed_address_or_check_is_refused(tmp_path: Path, part: str) -> None:
    _, path, doc = saved(tmp_path)
    text = str(doc[part])
    doc[part] = ("1" if text[0] == "0" else "0") + text[1:]  # one digit changed
    path.write_text(json.dumps(doc))
    with pytest.raises(WalletError, match="corrupt"):
        Wallet.load(path)


def test_an_older_file_without_check_is_read_and_its_address_derived(tmp_path: Path) -> None:
    wallet, path, doc = saved(tmp_path)
    del doc["check"]
    path.write_text(json.dumps(doc))
    assert Wallet.load(path).address == wallet.address
    path.write_text(json.dumps({"version": 1, "seed": wallet.seed.hex()}))  # the first format
    assert Wallet.load(path).address == wallet.address
    path.write_text(json.dumps({"version": 1, "seed": wallet.seed.hex(), "address": "ab" * 20}))
    with pytest.raises(WalletError, match="address does not match its key"):
        Wallet.load(path)


@pytest.mark.parametrize(
    "doc",
    [{"version": 1}, {"seed": "ab" * 31}, {"seed": "zz" * 32}, {"seed": 7}, ["seed"]],
    ids=["no-seed", "short-seed", "not-hex", "not-text", "not-an-object"],
)
def test_a_malformed_file_is_refused(tmp_path: Path, doc: object) -> None:
    path = tmp_path / "wallet.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(WalletError, match="malformed"):
        Wallet.load(path)


def test_the_seed_is_not_in_a_repr() -> None:
    wallet = Wallet.generate()
    assert wallet.seed.hex() not in repr(wallet) and str(wallet.seed) not in repr(wallet)
