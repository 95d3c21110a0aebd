"""Block headers and blocks: canonical bytes, hash, merkle root, proof of work, wire form.

Header layout (92 bytes, big-endian), nonce last so that a miner hashes the first 84 bytes once
and reuses the SHA-256 midstate for every nonce:
    u32 version | u32 height | 32 prev_hash | 32 merkle_root | u64 timestamp (Unix ms)
    | u32 bits | u64 nonce
block hash = SHA-256(header bytes); merkle_root is RFC 6962's tree over the txids (below).
Proof of work: the hash, read as a 256-bit big-endian integer, is below the target that ``bits``
encodes (``ledger.pow``: a compact 256-bit target).
"""

from __future__ import annotations

import functools
import struct
from typing import Any, TypeGuard

from p2pchain import limits
from p2pchain.digests import sha256
from p2pchain.errors import ProtocolError
from p2pchain.ledger import cached
from p2pchain.ledger.pow import bits_to_target
from p2pchain.ledger.tx import Tx
from p2pchain.record import record

HEADER_PREFIX = struct.Struct(">II32s32sQI")  # everything before the nonce: 84 bytes
NONCE = struct.Struct(">Q")
HEADER = struct.Struct(">II32s32sQIQ")  # the whole header: HEADER_PREFIX, then NONCE
HEADER_BYTES = HEADER.size  # 92
ZERO_HASH = bytes(32)
WireHeader = list[Any]  # [version, height, prev_hash, merkle_root, timestamp, bits, nonce]
WireBlock = list[Any]  # [header, [tx, ...]]


LEAF_PREFIX = b"\x00"  # a merkle leaf is H(0x00 | txid)
NODE_PREFIX = b"\x01"  # an inner node is H(0x01 | left | right)
EMPTY_MERKLE_ROOT = sha256(b"").digest()  # RFC 6962's root of no leaves (no valid block has none)


def merkle_root(txids: list[bytes]) -> bytes:
    """RFC 6962's Merkle Tree Hash of the txids with single SHA-256. Leaves and inner nodes are
    hashed with different prefixes, so no transaction can pass for an inner node (a 64-byte
    transaction whose bytes are two txids: CVE-2017-12842's family). Level by level, a level of
    odd length carries its last node up unchanged instead of pairing it with itself, so ``[a, b,
    c]`` and ``[a, b, c, c]`` have different roots (no CVE-2012-2459); this builds exactly RFC
    6962's tree, whose left subtree holds the largest power of two below the leaf count."""
    if not txids:
        return EMPTY_MERKLE_ROOT
    sha = sha256
    if len(txids) == 1:  # a coinbase-only block: the root is the one leaf (what the loop below returns)
        return sha(LEAF_PREFIX + txids[0]).digest()
    level = [sha(LEAF_PREFIX + txid).digest() for txid in txids]
    while len(level) > 1:
        paired = [sha(NODE_PREFIX + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


# bits_to_target, remembered for the last few ``bits``: a chain's blocks share theirs for long runs
_target_of = functools.lru_cache(maxsize=64)(bits_to_target)
_WIRE_HEADER_TYPES = (int, int, bytes, bytes, int, int, int)  # each field's exact type (bool is no int here)


def _well_typed(obj: object) -> TypeGuard[list[Any]]:
    """``obj`` is a list of a header's 7 fields of the right types, both hashes of 32 bytes (the
    integers' ranges not checked)."""
    if type(obj) is not list or len(obj) != 7:
        return False
    version, height, prev, merkle, ts, bits, nonce = obj
    return (
        type(version) is int
        and type(height) is int
        and type(ts) is int
        and type(bits) is int
        and type(nonce) is int
        and type(prev) is bytes
        and len(prev) == 32
        and type(merkle) is bytes
        and len(merkle) == 32
    )


@record
class Header:
    version: int  # 1
    height: int  # genesis is 0
    prev_hash: bytes  # 32 bytes; zero in genesis
    merkle_root: bytes  # 32 bytes over the txids
    timestamp: int  # Unix time in milliseconds
    bits: int  # the target, compact (ledger.pow): the hash must be below it
    nonce: int  # u64 varied by the miner

    @cached
    def prefix(self) -> bytes:
        return HEADER_PREFIX.pack(
            self.version, self.height, self.prev_hash, self.merkle_root, self.timestamp, self.bits
        )

    @cached
    def raw(self) -> bytes:  # (in one pack, not prefix + nonce: a received header's prefix is never read)
        return HEADER.pack(
            self.version, self.height, self.prev_hash, self.merkle_root, self.timestamp, self.bits, self.nonce
        )

    @cached
    def hash(self) -> bytes:
        return sha256(self.raw).digest()

    @classmethod
    def from_raw(cls, raw: bytes) -> Header:
        """The header whose canonical 92 bytes are ``raw`` (trusted: a store's or our own)."""
        header = cls(*HEADER.unpack_from(raw))
        header.__dict__["raw"] = raw  # the cached property's slot: no need to pack it again
        return header

    @staticmethod
    def wire_hash(obj: Any) -> bytes | None:
        """``Header.from_wire(obj).hash`` of a list (what msgpack decodes an array to) without
        building the header (serving a stored block checks it: ~1.8 us a block less); None where
        ``from_wire`` raises ProtocolError, and for a tuple."""
        if not _well_typed(obj):
            return None
        try:  # the ranges: struct refuses a value outside its field
            return sha256(HEADER.pack(*obj)).digest()
        except struct.error:
            return None

    @cached
    def target(self) -> int:
        """The target ``bits`` encodes; 0 (met by no hash) when ``bits`` is not canonical."""
        return _target_of(self.bits)

    def meets_target(self) -> bool:
        return int.from_bytes(self.hash, "big") < self.target

    def to_wire(self) -> WireHeader:
        return [self.version, self.height, self.prev_hash, self.merkle_root, self.timestamp, self.bits, self.nonce]

    @classmethod
    def from_wire(cls, obj: object) -> Header:
        if type(obj) is list and len(obj) == 7:  # the usual case: _well_typed, inlined (a sync decodes 500 a CHAIN)
            version, height, prev, merkle, ts, bits, nonce = obj
            if tuple(map(type, obj)) == _WIRE_HEADER_TYPES and len(prev) == 32 and len(merkle) == 32:
                try:  # the canonical bytes and the hash, always read next; struct refuses a value outside its field
                    raw = HEADER.pack(version, height, prev, merkle, ts, bits, nonce)
                except struct.error:
                    pass  # (the checks below name the field)
                else:
                    header = cls(version, height, prev, merkle, ts, bits, nonce)
                    header.__dict__.update(raw=raw, hash=sha256(raw).digest())  # (as ``raw`` and ``hash``)
                    return header
        if not isinstance(obj, (list, tuple)) or len(obj) != 7:
            raise ProtocolError("block header must be an array of 7 fields")
        version, height, prev, merkle, ts, bits, nonce = obj
        for name, value, top in (
            ("version", version, 2**32),
            ("height", height, 2**32),
            ("timestamp", ts, 2**64),
            ("bits", bits, 2**32),
            ("nonce", nonce, 2**64),
        ):
            if type(value) is not int or not 0 <= value < top:
                raise ProtocolError(f"block header {name} out of range")
        for name, h in (("prev_hash", prev), ("merkle_root", merkle)):
            if not isinstance(h, bytes) or len(h) != 32:
                raise ProtocolError(f"block header {name} must be 32 bytes")
        return cls(version, height, prev, merkle, ts, bits, nonce)


@record
class Block:
    header: Header
    txs: tuple[Tx, ...]

    # the header's, kept in the block's own __dict__ once read: a synced block's hash is read a
    # dozen times on its way in, each a property call before
    @cached
    def hash(self) -> bytes:
        return self.header.hash

    @cached
    def height(self) -> int:
        return self.header.height

    @cached
    def prev_hash(self) -> bytes:
        return self.header.prev_hash

    @cached
    def size(self) -> int:
        """Canonical bytes: header plus each transaction's full bytes."""
        return HEADER_BYTES + sum([len(tx.raw) for tx in self.txs])

    def computed_merkle_root(self) -> bytes:
        return merkle_root([tx.txid for tx in self.txs])

    def to_wire(self) -> WireBlock:
        return [self.header.to_wire(), [tx.to_wire() for tx in self.txs]]

    @classmethod
    def from_wire(cls, obj: object) -> Block:
        if not isinstance(obj, (list, tuple)) or len(obj) != 2 or not isinstance(obj[1], (list, tuple)):
            raise ProtocolError("block must be an array [header, [tx, ...]]")
        if len(obj[1]) > limits.MAX_BLOCK_TXS:
            raise ProtocolError(f"block claims {len(obj[1])} transactions, over {limits.MAX_BLOCK_TXS}")
        header = Header.from_wire(obj[0])
        txs = tuple([Tx.from_wire(t) for t in obj[1]])
        block = cls(header, txs)
        # what the cached properties below would copy from the header (and sum) at their first
        # read, now: a received or stored block's hash and size are always read (four descriptor
        # calls fewer a block)
        size = HEADER_BYTES + (len(txs[0].raw) if len(txs) == 1 else sum([len(tx.raw) for tx in txs]))
        block.__dict__.update(hash=header.hash, height=header.height, prev_hash=header.prev_hash, size=size)
        return block
