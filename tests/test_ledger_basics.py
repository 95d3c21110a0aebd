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
    """A payment's and a coinbase's full bytes are packed in one go (Tx.raw's fast paths), other
    shapes field by field: the body, full bytes and txid agree either way, whichever of body and
    raw comes first."""
    w = Wallet.from_seed(bytes([7]) * 32)
    shapes = [
        make_tx(w, "ab" * 20, 5, 2, 9, bytes(32)),  # a payment: 40-char addresses, key, signature
        make_coinbase(w.address, 50, 3),  # "0" and no key or signature
        make_coinbase("cd" * 19, 2**64 - 1, 2**64 - 1),  # a coinbase to a shorter "address"
        Tx("x", w.address, 1, 2, 3, b"k", b""),  # a one-letter sender with a key
        Tx("x", w.address, 1, 2, 3, b"", b"s"),  # ... with a signature
        Tx("ab" * 20, "0" * 5, 1, 1, 1, b"k" * 31, b"s" * 63),  # malformed, but still encodable
    ]
    for tx in shapes:
        raw_first, body_first = Tx(*tx.to_wire()), Tx(*tx.to_wire())
        assert raw_first.raw == body_first.body + bytes((len(tx.signature),)) + tx.signature
        assert (raw_first.body, raw_first.txid) == (body_first.body, body_first.txid)


def test_decoded_blocks_carry_the_bytes_and_ids_their_fields_give() -> None:
    """Block.from_wire and Header.from_wire fill the header's bytes and hash (and the block's
    hash, height and parent) as they decode: the same values a block built from its fields
    computes when they are first read."""
    w = Wallet.from_seed(bytes([3]) * 32)
    g = NetworkParams().genesis
    built = Block(g.header, (make_coinbase(w.address, 50, 0), make_tx(w, "ab" * 20, 5, 2, 0, bytes(32))))
    decoded = Block.from_wire(built.to_wire())
    fresh = Block(Header(*built.header.to_wire()), tuple(Tx(*t.to_wire()) for t in built.txs))
    for attr in ("hash", "height", "prev_hash", "size"):
        assert getattr(decoded, attr) == getattr(fresh, attr)
    assert (decoded.header.raw, decoded.header.hash) == (fresh.header.raw, fresh.header.hash)
    assert [t.txid for t in decoded.txs] == [t.txid for t in fresh.txs]
    assert decoded == fresh and decoded.computed_merkle_root() == fresh.computed_merkle_root()


def test_decoded_transactions_carry_the_bytes_and_txid_of_their_fields() -> None:
    """Tx.from_wire packs a payment's and a coinbase's full bytes and hashes its txid as it
    decodes (Block.from_wire then sums the block's size): the same bytes, body and txid as a
    transaction built from the same fields computes on first read, for every shape."""
    w = Wallet.from_seed(bytes([8]) * 32)
    shapes = [
        make_tx(w, "ab" * 20, 5, 2, 9, bytes(32)),  # a payment
        make_coinbase(w.address, 50, 3),  # a coinbase
        make_coinbase("cd" * 19, 2**64 - 1, 2**64 - 1),  # shorter recipient: no fast path
        Tx("x", w.address, 1, 2, 3, b"k", b""),
        Tx("0", w.address, 1, 0, 3, b"", b"s"),
        Tx("ab" * 20, "cd" * 20, 1, 1, 1, b"k" * 31, b"s" * 64),  # a key one byte short
        Tx("ab" * 20, "cd" * 20, 1, 1, 1, b"k" * 32, b"s" * 65),
    ]
    for tx in shapes:
        decoded, fresh = Tx.from_wire(tx.to_wire()), Tx(*tx.to_wire())
        assert (decoded.raw, decoded.txid, decoded.body) == (fresh.raw, fresh.txid, fresh.body)
        assert decoded.size == fresh.size
    g = NetworkParams().genesis
    for txs in ([shapes[1]], shapes[1:], []):
        block = Block.from_wire(Block(g.header, tuple(txs)).to_wire())
        assert block.__dict__["size"] == Block(g.header, tuple(Tx(*t.to_wire()) for t in txs)).size


def test_a_transaction_decodes_only_with_its_fields_exact_types_and_ranges() -> None:
    """Tx.from_wire's one-expression check of the usual case refuses what its field-by-field
    checks refuse (a bool is no integer here, bytes no text), and builds what they accept."""
    w = Wallet.from_seed(bytes([4]) * 32)
    good = make_tx(w, "ab" * 20, 5, 2, 9, bytes(32)).to_wire()
    assert Tx.from_wire(good) == Tx(*good)
    assert Tx.from_wire(make_coinbase(w.address, 50, 3).to_wire()) == make_coinbase(w.address, 50, 3)
    bad = [
        [*good[:2], True, *good[3:]],
        [*good[:3], -1, *good[4:]],
        [*good[:4], 2**64, *good[5:]],
        [*good[:4], 1.0, *good[5:]],
        [good[0].encode(), *good[1:]],
        ["", *good[1:]],
        [good[0], "é" * 3, *good[2:]],
        [*good[:5], "k" * 32, good[6]],
        [*good[:6], b"s" * 256],
        good[:6],
        (),
    ]
    for obj in bad:
        with pytest.raises(ProtocolError):
            Tx.from_wire(obj)
