"""keys: wallet files are read and checked without Ed25519, and damage is refused.

A wallet file carries a check (SHA-256 over a tag, the seed and the address), so a node trusts the
file's address without deriving it from the key, which would load pyca/cryptography at every
start (tests/test_startup.py checks that a node does not load it). Each case writes a file, changes
what a damaged or older file would have, and loads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def test_a_wallet_is_written_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node killed while it creates its wallet (its first start) must not leave an empty or
    partial wallet.json, which every later start refuses as malformed: a failure while writing
    leaves no file (and no temporary one), and the next save writes it. The file is 0600, and an
    existing one is never replaced unless asked."""
    path = tmp_path / "wallet.json"

    def dies_mid_write(doc: object, f: Any) -> None:
        f.write('{"version": 1, "seed": "')
        f.flush()
        raise KeyboardInterrupt  # (as a signal would)

    with monkeypatch.context() as m:
        m.setattr(json, "dump", dies_mid_write)
        with pytest.raises(KeyboardInterrupt):
            Wallet.generate().save(path)
    assert list(tmp_path.iterdir()) == []
    wallet = Wallet.load_or_create(path)
    assert Wallet.load(path) == wallet and path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["wallet.json"]
    with pytest.raises(WalletError, match="already exists"):
        Wallet.generate().save(path)
    other = Wallet.generate()
    other.save(path, overwrite=True)
    assert Wallet.load(path) == other and path.stat().st_mode & 0o777 == 0o600


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


def test_a_wallet_path_naming_a_directory_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "fresh"
    with pytest.raises(WalletError, match="names a directory"):
        Wallet.generate().save(f"{target}/")
    assert not target.exists()
