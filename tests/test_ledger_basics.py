"""Ledger types: canonical bytes, ids and the genesis block are deterministic."""

import pytest

from p2pchain.errors import ProtocolError
from p2pchain.keys import Wallet
from p2pchain.ledger.block import HEADER_BYTES, Block, Header
from p2pchain.ledger.tx import Tx, make_coinbase, make_tx
from p2pchain.params import NetworkParams


def test_genesis_is_deterministic_and_parameter_bound():
    a, b = NetworkParams(), NetworkParams()
    assert a.network_id == b.network_id
    assert NetworkParams(bits=12).network_id != a.network_id
    assert NetworkParams(reward=2).network_id != a.network_id
    assert len(a.genesis.header.raw) == HEADER_BYTES == 92


def test_block_wire_round_trip():
    g = NetworkParams().genesis
    assert Block.from_wire(g.to_wire()) == g
    assert Block.from_wire(g.to_wire()).hash == g.hash


def test_a_wire_headers_hash_without_building_it_is_from_wires_or_none() -> None:
    """Header.wire_hash (serving a stored block checks it) agrees with Header.from_wire: the
    same hash for a well-formed array, None wherever from_wire refuses it."""
    wire = NetworkParams().genesis.header.to_wire()
    assert Header.wire_hash(wire) == Header.from_wire(wire).hash
    bad = [
        [-1, *wire[1:]],
        [2**32, *wire[1:]],
        [True, *wire[1:]],
        [*wire[:2], wire[2][:31], *wire[3:]],
        [*wire[:3], wire[3] + b"\x00", *wire[4:]],
        [*wire[:4], 2**64, *wire[5:]],
        [*wire[:5], 2**32, *wire[6:]],
        [*wire[:6], 2**64],
        [*wire[:6], 1.0],
        [*wire[:2], 1, *wire[3:]],
        wire[:6],
        {},
    ]
    for obj in bad:
        assert Header.wire_hash(obj) is None
        with pytest.raises(ProtocolError):
            Header.from_wire(obj)


def test_ids_and_canonical_bytes_are_computed_once_and_kept_on_the_object():
    """txid, raw and body (and a header's hash) are computed on the first read and then read
    back from the object (p2pchain.ledger.cached: functools.cached_property without its lock)."""
    import hashlib

    from p2pchain.ledger import cached
    from p2pchain.ledger.block import Header
    from p2pchain.ledger.tx import Tx

    t = Tx("ab" * 20, "cd" * 20, 5, 1, 0, bytes(32), bytes(64))
    assert "txid" not in t.__dict__
    first = t.txid
    assert first == hashlib.sha256(t.raw).digest() and t.raw.startswith(t.body)
    assert t.__dict__["txid"] is first and t.txid is first
    assert isinstance(Tx.txid, cached) and isinstance(Header.hash, cached)
    h = NetworkParams().genesis.header
    assert h.hash is h.hash == hashlib.sha256(h.raw).digest()
    assert Tx("ab" * 20, "cd" * 20, 6, 1, 0, bytes(32), bytes(64)).txid != first


def test_canonical_bytes_are_the_same_whichever_is_made_first() -> None:
    """A payment's full bytes are packed in one go (Tx.raw's fast path), other shapes field by
    field: the body, full bytes and txid agree either way, whichever of body and raw comes first."""
    w = Wallet.from_seed(bytes([7]) * 32)
    shapes = [
        make_tx(w, "ab" * 20, 5, 2, 9, bytes(32)),  # a payment: 40-char addresses, key, signature
        make_coinbase(w.address, 50, 3),  # "0" and no key or signature
        Tx("ab" * 20, "0" * 5, 1, 1, 1, b"k" * 31, b"s" * 63),  # malformed, but still encodable
    ]
    for tx in shapes:
        raw_first, body_first = Tx(*tx.to_wire()), Tx(*tx.to_wire())
        assert raw_first.raw == body_first.body + bytes((len(tx.signature),)) + tx.signature
        assert (raw_first.body, raw_first.txid) == (body_first.body, body_first.txid)
