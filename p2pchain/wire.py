"""The wire protocol: frame codec and message types (docs/protocol.md is the specification).

A frame is a 4-byte big-endian unsigned payload length, then that many bytes of msgpack: a map
with a ``"type"`` string and the message's fields. Framing is separate from the transport:
``FrameDecoder`` turns bytes into payloads without a socket, ``read_frame`` does the same on an
asyncio stream. ``decode_message`` turns one payload into one frozen message dataclass and
validates everything about it; anything a peer could get wrong raises ``ProtocolError``.

This module imports the ledger's types and nothing of the node (btcd's ``wire``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field, fields
from typing import Any, ClassVar, TypeAlias, get_args

import msgpack

from p2pchain import limits
from p2pchain.errors import ProtocolError
from p2pchain.ledger.block import Block, Header
from p2pchain.ledger.tx import Tx
from p2pchain.packing import packb
from p2pchain.record import record

log = logging.getLogger(__name__)

_HEADER = limits.FRAME_HEADER_BYTES


# --- framing ------------------------------------------------------------------------------
def _check_length(n: int, max_frame_bytes: int) -> None:
    if n == 0:
        raise ProtocolError("zero-length frame")
    if n > max_frame_bytes:
        raise ProtocolError(f"frame of {n} bytes is over the {max_frame_bytes}-byte limit")


def encode_frame(payload: bytes) -> bytes:
    """The frame that carries ``payload``: its length as a big-endian u32, then the payload."""
    _check_length(len(payload), limits.MAX_FRAME_BYTES)
    return len(payload).to_bytes(_HEADER, "big") + payload


class FrameDecoder:
    """Bytes in, complete payloads out, in order, however the stream was split.

    The buffer never holds more than one incomplete frame (at most header + limit bytes) beyond
    the chunk being fed. A length prefix over the limit is refused as soon as its 4 bytes
    arrive, before any of its payload is buffered: ``feed`` raises at once if no frame before it
    completed in the same chunk; otherwise it returns those frames (a peer's messages before
    the bad prefix are handled, as if read one at a time) and the error is ``pending``: the next
    ``feed`` (``feed(b"")`` will do) raises it. After an error the decoder stays failed: the
    stream has lost its framing and the connection must be closed.
    """

    max_frame_bytes: int = limits.MAX_FRAME_BYTES  # longest payload accepted; tests may shrink it

    def __init__(self) -> None:
        self._buf = bytearray()
        self._failed: str | None = None
        self._pending: str | None = None  # a bad length met after complete frames, not yet raised

    @property
    def pending(self) -> bool:
        """A bad length was met and its error is raised by the next ``feed``."""
        return self._pending is not None

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        if self._pending is not None:
            reason, self._pending = self._pending, None
            raise ProtocolError(reason)
        if self._failed is not None:
            raise ProtocolError(f"frame decoder already failed ({self._failed})")
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        pos, end = 0, len(buf)
        while end - pos >= _HEADER:
            n = int.from_bytes(buf[pos : pos + _HEADER], "big")
            try:
                _check_length(n, self.max_frame_bytes)
            except ProtocolError as e:
                self._failed = str(e)
                buf.clear()
                if not frames:
                    raise
                self._pending = self._failed
                return frames
            if end - pos - _HEADER < n:
                break
            frames.append(bytes(buf[pos + _HEADER : pos + _HEADER + n]))
            pos += _HEADER + n
        del buf[:pos]
        return frames


async def read_frame(reader: asyncio.StreamReader, max_frame_bytes: int = limits.MAX_FRAME_BYTES) -> bytes:
    """Read one payload; the length is checked before any payload byte is read.
    Raises ``asyncio.IncompleteReadError`` when the stream ends, ``ProtocolError`` on a bad length."""
    n = int.from_bytes(await reader.readexactly(_HEADER), "big")
    _check_length(n, max_frame_bytes)
    return await reader.readexactly(n)


# --- field codecs ---------------------------------------------------------------------------
# Each message field carries in its metadata a (decode, encode) pair: decode(value, where)
# checks a value unpacked by msgpack and returns what the dataclass holds; encode does the reverse.
Decode = Callable[[Any, str], Any]
Encode = Callable[[Any], Any]
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
WORK_MAX_BYTES = 64  # HELLO work: big-endian unsigned, minimal length


def _same(value: Any) -> Any:
    return value


def _codec(decode: Decode, encode: Encode = _same) -> dict[str, Any]:
    return {"wire": (decode, encode)}


def _optional_field(codec: dict[str, Any], default: Any) -> Any:
    """A field added after version 1: a sender leaves it out when it holds ``default`` (so a
    message without it is byte for byte what a version 1 node sends), a receiver reads its
    absence as ``default``, and a version 1 receiver ignores it as an unknown key."""
    return field(default=default, metadata={**codec, "default": default})


def _uint(lo: int, hi: int) -> Decode:
    def decode(v: Any, where: str) -> int:
        if type(v) is not int:
            raise ProtocolError(f"{where} must be an integer, not {type(v).__name__}")
        if not lo <= v <= hi:
            raise ProtocolError(f"{where} = {v} is out of range {lo}..{hi}")
        return v

    return decode


def _bool(v: Any, where: str) -> bool:
    if type(v) is not bool:
        raise ProtocolError(f"{where} must be a boolean, not {type(v).__name__}")
    return v


def _bin(size: int) -> Decode:
    def decode(v: Any, where: str) -> bytes:
        if type(v) is not bytes:
            raise ProtocolError(f"{where} must be binary, not {type(v).__name__}")
        if len(v) != size:
            raise ProtocolError(f"{where} must be {size} bytes, not {len(v)}")
        return v

    return decode


def _text(max_bytes: int, *, allow_empty: bool = True) -> Decode:
    def decode(v: Any, where: str) -> str:
        if type(v) is not str:
            raise ProtocolError(f"{where} must be a string, not {type(v).__name__}")
        if not allow_empty and not v:
            raise ProtocolError(f"{where} must not be empty")
        if len(v) > max_bytes or len(v.encode()) > max_bytes:
            raise ProtocolError(f"{where} is over {max_bytes} bytes")
        return v

    return decode


def _one_of(*choices: str) -> Decode:
    def decode(v: Any, where: str) -> str:
        if type(v) is not str or v not in choices:
            raise ProtocolError(f"{where} must be one of {', '.join(choices)}")
        return v

    return decode


def _optional(inner: Decode) -> Decode:
    def decode(v: Any, where: str) -> Any:
        return None if v is None else inner(v, where)

    return decode


def _list(item: Decode, max_items: int) -> Decode:
    def decode(v: Any, where: str) -> tuple[Any, ...]:
        if type(v) is not list:
            raise ProtocolError(f"{where} must be an array, not {type(v).__name__}")
        if len(v) > max_items:
            raise ProtocolError(f"{where} has {len(v)} items, over the limit of {max_items}")
        try:  # without a path text made for each item (a CHAIN's 500 blocks)
            return tuple([item(x, where) for x in v])
        except ProtocolError:
            pass  # the same error again, now naming the item
        return tuple([item(x, f"{where}[{i}]") for i, x in enumerate(v)])

    return decode


def _block(v: Any, where: str) -> Block:
    try:
        return Block.from_wire(v)
    except ProtocolError as e:
        raise ProtocolError(f"{where}: {e}") from None


def _tx(v: Any, where: str) -> Tx:
    try:
        return Tx.from_wire(v)
    except ProtocolError as e:
        raise ProtocolError(f"{where}: {e}") from None


def _header(v: Any, where: str) -> Header:
    try:
        return Header.from_wire(v)
    except ProtocolError as e:
        raise ProtocolError(f"{where}: {e}") from None


def _prefilled(v: Any, where: str) -> tuple[int, Tx]:
    if type(v) is not list or len(v) != 2:
        raise ProtocolError(f"{where} must be an array [index, tx]")
    return _uint(0, limits.MAX_BLOCK_TXS - 1)(v[0], f"{where}.index"), _tx(v[1], f"{where}.tx")


def _decode_work(v: Any, where: str) -> int:
    if type(v) is not bytes:
        raise ProtocolError(f"{where} must be binary, not {type(v).__name__}")
    if len(v) > WORK_MAX_BYTES:
        raise ProtocolError(f"{where} is {len(v)} bytes, over {WORK_MAX_BYTES}")
    if v[:1] == b"\x00":
        raise ProtocolError(f"{where} must be minimal: no leading zero byte")
    return int.from_bytes(v, "big")


def encode_work(work: int) -> bytes:
    """Cumulative work as HELLO carries it: big-endian unsigned, minimal length (0 is empty)."""
    return work.to_bytes((work.bit_length() + 7) // 8, "big")


def _peer_addr(v: Any, where: str) -> str:
    _text(limits.MAX_PEER_ADDR_CHARS)(v, where)
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not port.isascii() or not 0 < int(port) < 65536:
        raise ProtocolError(f"{where} must be 'host:port' with a port in 1..65535")
    return str(v)


_STATUS_DEPTH = 3  # map -> list -> map -> scalar: the peers list is the deepest status value


def _plain(v: Any, where: str, depth: int) -> None:
    """A free-form value: scalars, and lists/maps with string keys, nested at most ``depth``."""
    if v is None or type(v) in (bool, int, float, str, bytes):
        return
    if depth == 0:
        raise ProtocolError(f"{where} is nested too deep")
    if type(v) is list:
        for i, x in enumerate(v):
            _plain(x, f"{where}[{i}]", depth - 1)
    elif type(v) is dict:
        for k, x in v.items():
            if type(k) is not str:
                raise ProtocolError(f"{where} keys must be strings")
            _plain(x, f"{where}.{k[:32]}", depth - 1)  # the key is the peer's: not quoted whole
    else:
        raise ProtocolError(f"{where} has a value of type {type(v).__name__}")


def _status_map(v: Any, where: str) -> dict[str, Any]:
    if type(v) is not dict:
        raise ProtocolError(f"{where} must be a map, not {type(v).__name__}")
    _plain(v, where, _STATUS_DEPTH)
    return v


U16 = _codec(_uint(0, 65535))
U32 = _codec(_uint(0, U32_MAX))
U64 = _codec(_uint(0, U64_MAX))
COUNT = _codec(_uint(1, U32_MAX))  # a requested number of items: at least one
HASH = _codec(_bin(32))
OPT_HASH = _codec(_optional(_bin(32)))
BOOL = _codec(_bool)
TEXT = _codec(_text(limits.MAX_WIRE_STR_BYTES))
ADDRESS = _codec(_text(limits.MAX_ADDRESS_CHARS, allow_empty=False))
TX = _codec(_tx, Tx.to_wire)
OPT_TX = _codec(_optional(_tx), lambda tx: None if tx is None else tx.to_wire())
BLOCK = _codec(_block, Block.to_wire)


def _blocks(max_items: int) -> dict[str, Any]:
    return _codec(_list(_block, max_items), lambda blocks: [b.to_wire() for b in blocks])


def _txs(max_items: int) -> dict[str, Any]:
    return _codec(_list(_tx, max_items), lambda txs: [t.to_wire() for t in txs])


TXIDS = _codec(_list(_bin(32), limits.MAX_INV_TXIDS))
RELAY_FEATURES = _codec(_list(_text(limits.RELAY_FEATURE_MAX_BYTES), limits.RELAY_FEATURES_MAX))


# --- messages -------------------------------------------------------------------------------
_REQUIRED = object()  # no default: the field must be present


@record
class _Message:
    TYPE: ClassVar[str]

    def doc(self) -> dict[str, Any]:
        """The fields as msgpack encodes them: "type" first, then in declaration order."""
        doc: dict[str, Any] = {"type": self.TYPE}
        spec = _ENCODERS.get(type(self)) or _encoder_spec(type(self))
        for name, encode, default in spec:
            value = getattr(self, name)
            if default is not _REQUIRED and value == default:
                continue  # an optional field at its default is left out (version 1 bytes)
            doc[name] = value if encode is None else encode(value)
        return doc

    def payload(self) -> bytes:
        """The msgpack map of ``doc``."""
        return packb(self.doc())

    def encode(self) -> bytes:
        """The full frame: length prefix and payload."""
        return encode_frame(self.payload())


def frame_with_blocks(msg: Chain | Blocks, bodies: Sequence[bytes]) -> bytes:
    """The frame of ``msg`` (made with no blocks) carrying the blocks whose msgpack encodings are
    ``bodies`` (``msgpack(block.to_wire())``, as the store keeps them): the bytes ``msg`` with
    those blocks would encode to, without building a Block of each and encoding it again (a
    sync's server spent more on that than on reading them). A map and an array are a header and
    their items back to back, so the blocks' bytes go in as they are."""
    packer = msgpack.Packer(use_bin_type=True)
    doc = msg.doc()
    parts = [packer.pack_map_header(len(doc))]
    for key, value in doc.items():
        parts.append(packer.pack(key))
        if key == "blocks":
            parts.append(packer.pack_array_header(len(bodies)))
            parts.extend(bodies)
        else:
            parts.append(packer.pack(value))
    return encode_frame(b"".join(parts))


@record
class Hello(_Message):
    """First message each side sends; nothing else is accepted before it."""

    TYPE: ClassVar[str] = "HELLO"
    version: int = field(metadata=U32)  # limits.PROTOCOL_VERSION of the sender
    network: bytes = field(metadata=HASH)  # genesis hash = network id
    node_id: bytes = field(metadata=_codec(_bin(16)))  # random per process: detects self-connections
    port: int = field(metadata=U16)  # listening port, 0 = not listening (a client)
    height: int = field(metadata=U32)  # height of the sender's best block
    best: bytes = field(metadata=HASH)  # hash of the sender's best block
    work: int = field(metadata=_codec(_decode_work, encode_work))  # cumulative work of that chain
    agent: str = field(metadata=_codec(_text(limits.USER_AGENT_MAX)))  # e.g. "p2pchain/0.1.0"
    # version 2: the relay features the sender speaks (p2pchain.relay.FEATURES); absent = none
    relay: tuple[str, ...] = _optional_field(RELAY_FEATURES, ())


@record
class Ping(_Message):
    TYPE: ClassVar[str] = "PING"
    nonce: int = field(metadata=U64)


@record
class Pong(_Message):
    TYPE: ClassVar[str] = "PONG"
    nonce: int = field(metadata=U64)  # the PING's nonce


@record
class GetChain(_Message):
    """Ask for the blocks after the first locator hash found on the responder's best chain."""

    TYPE: ClassVar[str] = "GET_CHAIN"
    locator: tuple[bytes, ...] = field(metadata=_codec(_list(_bin(32), limits.MAX_LOCATOR_HASHES)))
    max: int = field(metadata=COUNT)  # blocks wanted; the responder clamps to MAX_BLOCKS_PER_CHAIN


@record
class Chain(_Message):
    TYPE: ClassVar[str] = "CHAIN"
    blocks: tuple[Block, ...] = field(metadata=_blocks(limits.MAX_BLOCKS_PER_CHAIN))  # in height order
    more: bool = field(metadata=BOOL)  # the sender has more blocks after these


@record
class NewTx(_Message):
    TYPE: ClassVar[str] = "NEW_TX"
    tx: Tx = field(metadata=TX)


@record
class NewBlock(_Message):
    TYPE: ClassVar[str] = "NEW_BLOCK"
    block: Block = field(metadata=BLOCK)


@record
class GetPeers(_Message):
    TYPE: ClassVar[str] = "GET_PEERS"


@record
class Peers(_Message):
    TYPE: ClassVar[str] = "PEERS"
    peers: tuple[str, ...] = field(metadata=_codec(_list(_peer_addr, limits.MAX_PEERS_PER_MESSAGE)))


# Relay (version 2, between peers that both named the feature in HELLO; docs/protocol.md 7).
@record
class InvTx(_Message):
    """Transactions the sender has and the receiver may lack, by txid (feature "inv-tx")."""

    TYPE: ClassVar[str] = "INV_TX"
    txids: tuple[bytes, ...] = field(metadata=TXIDS)


@record
class GetTxs(_Message):
    """Ask for transactions the receiver announced; answered by exactly one TXS, in order."""

    TYPE: ClassVar[str] = "GET_TXS"
    txids: tuple[bytes, ...] = field(metadata=TXIDS)


@record
class Txs(_Message):
    """The answer to the oldest unanswered GET_TXS: those of its transactions the sender still
    has, in any order; an asked txid left out is not found."""

    TYPE: ClassVar[str] = "TXS"
    txs: tuple[Tx, ...] = field(metadata=_txs(limits.MAX_TXS_PER_MESSAGE))


@record
class CmpctBlock(_Message):
    """A new block as its header, a short id per transaction and the transactions sent in full
    (the coinbase at least), keyed by ``nonce`` (feature "cmpct-block"; BIP152)."""

    TYPE: ClassVar[str] = "CMPCT_BLOCK"
    header: Header = field(metadata=_codec(_header, Header.to_wire))
    nonce: int = field(metadata=U64)  # short-id salt, chosen by the sender
    short_ids: tuple[bytes, ...] = field(metadata=_codec(_list(_bin(limits.SHORT_ID_BYTES), limits.MAX_BLOCK_TXS)))
    prefilled: tuple[tuple[int, Tx], ...] = field(
        metadata=_codec(_list(_prefilled, limits.MAX_BLOCK_TXS), lambda p: [[i, tx.to_wire()] for i, tx in p])
    )  # (index in the block, tx), indexes increasing; index 0 (the coinbase) always


@record
class GetBlockTxn(_Message):
    """Ask the sender of a CMPCT_BLOCK for the block's transactions at these indexes."""

    TYPE: ClassVar[str] = "GET_BLOCK_TXN"
    hash: bytes = field(metadata=HASH)
    indexes: tuple[int, ...] = field(metadata=_codec(_list(_uint(0, limits.MAX_BLOCK_TXS - 1), limits.MAX_BLOCK_TXS)))


@record
class BlockTxn(_Message):
    """The answer to GET_BLOCK_TXN: the asked transactions in the asked order, or none when the
    sender no longer has the block."""

    TYPE: ClassVar[str] = "BLOCK_TXN"
    hash: bytes = field(metadata=HASH)
    txs: tuple[Tx, ...] = field(metadata=_txs(limits.MAX_BLOCK_TXS))


@record
class SendCmpct(_Message):
    """Ask the receiver to push each new block at once as CMPCT_BLOCK (high bandwidth, BIP152's
    sendcmpct(1)), or only to announce it by INV_BLOCK (feature "cmpct-hb")."""

    TYPE: ClassVar[str] = "SEND_CMPCT"
    high_bandwidth: bool = field(metadata=BOOL)


@record
class InvBlock(_Message):
    """New best blocks the sender has and the receiver may lack, by hash (feature "cmpct-hb")."""

    TYPE: ClassVar[str] = "INV_BLOCK"
    hashes: tuple[bytes, ...] = field(metadata=_codec(_list(_bin(32), limits.MAX_INV_BLOCK_HASHES)))


@record
class GetCmpct(_Message):
    """Ask for an announced block as CMPCT_BLOCK; answered by it, or by an empty BLOCK_TXN of the
    hash when the sender no longer has it among its recent blocks (feature "cmpct-hb")."""

    TYPE: ClassVar[str] = "GET_CMPCT"
    hash: bytes = field(metadata=HASH)


# Queries (client -> node): each request carries an id that its reply echoes.
@record
class GetStatus(_Message):
    TYPE: ClassVar[str] = "GET_STATUS"
    id: int = field(metadata=U32)


@record
class Status(_Message):
    """``status`` keys: node_id, network, tip (hex), height, work (decimal string), peers (list of
    {addr, inbound, height}), mempool (count), address (the node wallet's). See docs/protocol.md."""

    TYPE: ClassVar[str] = "STATUS"
    id: int = field(metadata=U32)
    status: dict[str, Any] = field(metadata=_codec(_status_map))


@record
class GetAccount(_Message):
    TYPE: ClassVar[str] = "GET_ACCOUNT"
    id: int = field(metadata=U32)
    address: str = field(metadata=ADDRESS)


@record
class Account(_Message):
    TYPE: ClassVar[str] = "ACCOUNT"
    id: int = field(metadata=U32)
    address: str = field(metadata=ADDRESS)
    balance: int = field(metadata=U64)  # confirmed coins
    nonce: int = field(metadata=U64)  # nonce the next confirmed transaction must carry
    pending_nonce: int = field(metadata=U64)  # the same, counting this node's mempool


@record
class GetTx(_Message):
    TYPE: ClassVar[str] = "GET_TX"
    id: int = field(metadata=U32)
    txid: bytes = field(metadata=HASH)


TX_STATUSES = ("mempool", "confirmed", "unknown")


@record
class TxInfo(_Message):
    TYPE: ClassVar[str] = "TX_INFO"
    id: int = field(metadata=U32)
    txid: bytes = field(metadata=HASH)
    status: str = field(metadata=_codec(_one_of(*TX_STATUSES)))
    height: int | None = field(metadata=_codec(_optional(_uint(0, U32_MAX))))  # confirmed only
    block: bytes | None = field(metadata=OPT_HASH)  # confirmed only
    confirmations: int = field(metadata=U32)  # 0 unless confirmed; 1 in the tip block
    tx: Tx | None = field(metadata=OPT_TX)  # None when unknown


@record
class SubmitTx(_Message):
    TYPE: ClassVar[str] = "SUBMIT_TX"
    id: int = field(metadata=U32)
    tx: Tx = field(metadata=TX)


@record
class SubmitResult(_Message):
    TYPE: ClassVar[str] = "SUBMIT_RESULT"
    id: int = field(metadata=U32)
    txid: bytes = field(metadata=HASH)
    accepted: bool = field(metadata=BOOL)
    code: str = field(metadata=TEXT)  # "" if accepted, else a RuleCode or MempoolCode value
    error: str = field(metadata=TEXT)  # "" if accepted, else a human-readable reason

    def payload(self) -> bytes:
        """``_Message.payload``'s bytes, the map written out rather than walked field by field:
        a node answers every SUBMIT_TX (the ingest's loop)."""
        return packb(
            {
                "type": "SUBMIT_RESULT",
                "id": self.id,
                "txid": self.txid,
                "accepted": self.accepted,
                "code": self.code,
                "error": self.error,
            }
        )


@record
class GetBlocks(_Message):
    TYPE: ClassVar[str] = "GET_BLOCKS"
    id: int = field(metadata=U32)
    start: int = field(metadata=U32)  # first height wanted
    limit: int = field(metadata=COUNT)  # blocks wanted; the node clamps to MAX_BLOCKS_PER_CHAIN


@record
class GetBlock(_Message):
    TYPE: ClassVar[str] = "GET_BLOCK"
    id: int = field(metadata=U32)
    hash: bytes = field(metadata=HASH)


@record
class Blocks(_Message):
    """Reply to GET_BLOCKS (best-chain blocks from ``start``) and GET_BLOCK (0 or 1 block)."""

    TYPE: ClassVar[str] = "BLOCKS"
    id: int = field(metadata=U32)
    blocks: tuple[Block, ...] = field(metadata=_blocks(limits.MAX_BLOCKS_PER_CHAIN))
    height: int = field(metadata=U32)  # the node's best height


@record
class Error(_Message):
    """Reply to a query that failed."""

    TYPE: ClassVar[str] = "ERROR"
    id: int = field(metadata=U32)
    message: str = field(metadata=TEXT)


Message: TypeAlias = (
    Hello
    | Ping
    | Pong
    | GetChain
    | Chain
    | NewTx
    | NewBlock
    | GetPeers
    | Peers
    | InvTx
    | GetTxs
    | Txs
    | CmpctBlock
    | GetBlockTxn
    | BlockTxn
    | SendCmpct
    | InvBlock
    | GetCmpct
    | GetStatus
    | Status
    | GetAccount
    | Account
    | GetTx
    | TxInfo
    | SubmitTx
    | SubmitResult
    | GetBlocks
    | GetBlock
    | Blocks
    | Error
)
MESSAGE_TYPES: Mapping[str, type[Message]] = {cls.TYPE: cls for cls in get_args(Message)}
# class -> ((field name, encode, default), ...), so that encoding does not walk dataclass fields
_ENCODERS: dict[type[_Message], tuple[tuple[str, Encode | None, Any], ...]] = {}


def _encoder_spec(cls: type[_Message]) -> tuple[tuple[str, Encode | None, Any], ...]:
    """(name, encode, default) of each field; encode None: the value goes as it is (no call)."""
    encoders = [(f, f.metadata["wire"][1]) for f in fields(cls)]
    spec = tuple((f.name, None if e is _same else e, f.metadata.get("default", _REQUIRED)) for f, e in encoders)
    _ENCODERS[cls] = spec
    return spec


# type -> (class, ((field name, decode, default, where), ...)), so that decoding does not walk
# dataclass fields nor format "TYPE.field" (what an error says) for every field of every message
_DECODERS: dict[str, tuple[type[Message], tuple[tuple[str, Decode, Any, str], ...]]] = {
    name: (
        cls,
        tuple(
            (f.name, f.metadata["wire"][0], f.metadata.get("default", _REQUIRED), f"{name}.{f.name}")
            for f in fields(cls)
        ),
    )
    for name, cls in MESSAGE_TYPES.items()
}


_SMALL, _TX, _BLOCK = limits.MAX_SMALL_MESSAGE_BYTES, limits.MAX_TX_MESSAGE_BYTES, limits.MAX_BLOCK_MESSAGE_BYTES
_HASH_ITEM = 34  # bytes of one bin32 in an array (bin 8 header, length, 32 bytes)
# Longest payload of each message type, checked before the payload is unpacked: a PING is tens of
# bytes, so a 4 MiB one full of ignored fields is refused unread instead of decoded (issue 12).
MAX_PAYLOAD_BYTES: Mapping[str, int] = {
    **dict.fromkeys(
        ("HELLO", "PING", "PONG", "GET_CHAIN", "GET_PEERS", "GET_STATUS", "GET_ACCOUNT", "ACCOUNT", "GET_TX"), _SMALL
    ),
    **dict.fromkeys(("GET_BLOCKS", "GET_BLOCK", "SEND_CMPCT", "INV_BLOCK", "GET_CMPCT"), _SMALL),
    **dict.fromkeys(("NEW_TX", "SUBMIT_TX", "TX_INFO", "SUBMIT_RESULT", "ERROR"), _TX),
    **dict.fromkeys(("INV_TX", "GET_TXS"), limits.MAX_INV_TXIDS * _HASH_ITEM + _SMALL),
    "PEERS": limits.MAX_PEERS_PER_MESSAGE * (limits.MAX_PEER_ADDR_CHARS + 3) + _SMALL,
    "GET_BLOCK_TXN": limits.MAX_BLOCK_TXS * 3 + _SMALL,  # u16 indexes: 3 bytes each at most
    **dict.fromkeys(("NEW_BLOCK", "CMPCT_BLOCK", "BLOCK_TXN"), _BLOCK),
    **dict.fromkeys(("CHAIN", "BLOCKS", "TXS", "STATUS"), limits.MAX_FRAME_BYTES),
}
_UNPACK_LIMITS: dict[str, Any] = {
    "raw": False,
    "strict_map_key": True,
    "max_str_len": limits.MAX_WIRE_STR_BYTES,
    "max_bin_len": limits.MAX_WIRE_BIN_BYTES,
    "max_array_len": limits.MAX_WIRE_ARRAY_ITEMS,
    "max_map_len": limits.MAX_WIRE_MAP_ENTRIES,
    "max_ext_len": 0,  # no extension types are used
}
_MSGPACK_ERRORS = (ValueError, TypeError, msgpack.UnpackException)  # FormatError, ExtraData, bad UTF-8...


# --- decoding -------------------------------------------------------------------------------
def _bad_msgpack(e: Exception) -> ProtocolError:
    return ProtocolError(f"payload is not valid msgpack within limits: {e or type(e).__name__}")


def peek_type(payload: bytes) -> str:
    """The ``"type"`` of a payload without unpacking the rest: the map's other values are skipped
    (in C, no object built). ProtocolError if the payload is no map or has no type string."""
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(payload), 1), **_UNPACK_LIMITS)
    unpacker.feed(payload)
    try:
        entries = unpacker.read_map_header()
    except (ValueError, msgpack.OutOfData):
        raise ProtocolError("payload must be a msgpack map") from None
    try:
        for _ in range(entries):
            if unpacker.unpack() == "type":
                kind = unpacker.unpack()
                if type(kind) is not str:
                    break
                return kind
            unpacker.skip()
    except msgpack.OutOfData:
        raise ProtocolError("payload ends inside its msgpack map") from None
    except _MSGPACK_ERRORS as e:
        raise _bad_msgpack(e) from None
    raise ProtocolError("payload has no 'type' string")


# A CMPCT_BLOCK as encode() lays it out: a 5-entry map whose first keys are "type" and "header"
_CMPCT_HEAD = b"\x85" + packb("type") + packb("CMPCT_BLOCK") + packb("header")


def cmpct_head(header: Header) -> bytes:
    """The bytes every CMPCT_BLOCK of ``header`` starts with, as encode() lays it out: its map's
    first entries up to the header's last byte. msgpack needs no delimiter, so a payload that
    starts with them is a compact block of that very header, whatever follows (which lets a
    node drop a copy of a block it has without unpacking anything, relay.Relay.known_compact)."""
    return _CMPCT_HEAD + packb(header.to_wire())


class _ContainerBudget:
    """Counts the arrays and maps msgpack builds and stops it past MAX_WIRE_CONTAINERS."""

    def __init__(self) -> None:
        self.left = limits.MAX_WIRE_CONTAINERS

    def _spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise ProtocolError(f"payload holds over {limits.MAX_WIRE_CONTAINERS} arrays and maps")

    def on_list(self, items: list[Any]) -> list[Any]:
        self.left -= 1  # _spend, inlined: called for every array of a payload
        if self.left < 0:
            raise ProtocolError(f"payload holds over {limits.MAX_WIRE_CONTAINERS} arrays and maps")
        return items

    def on_map(self, pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
        self._spend()
        return dict(pairs)


def _unpack(payload: bytes, budget: _ContainerBudget | None) -> Any:
    """Unpack within the limits; with a budget, stop past MAX_WIRE_CONTAINERS arrays and maps."""
    try:
        if budget is None:
            return msgpack.unpackb(payload, **_UNPACK_LIMITS)
        return msgpack.unpackb(payload, list_hook=budget.on_list, object_pairs_hook=budget.on_map, **_UNPACK_LIMITS)
    except _MSGPACK_ERRORS as e:
        raise _bad_msgpack(e) from None


def _as_map(doc: Any) -> dict[Any, Any]:
    if type(doc) is not dict:
        raise ProtocolError(f"payload must be a msgpack map, not {type(doc).__name__}")
    return doc


def decode_message(payload: bytes) -> Message:
    """One payload to one message, every field checked; ProtocolError if anything is wrong.
    Unknown fields are ignored, so that a newer peer may add some."""
    # Measured: a CHAIN of 500 blocks with 3 txs each (253 KiB) decodes in 4.4 ms, 0.6 ms of it
    # msgpack and the rest Block.from_wire (about 2 us per header or tx); encoding takes 1.3 ms.
    if len(payload) > limits.MAX_FRAME_BYTES:
        raise ProtocolError(f"payload of {len(payload)} bytes is over the {limits.MAX_FRAME_BYTES}-byte limit")
    # A payload no longer than the smallest limit holds too few containers to matter: unpack it at
    # once (a PING decodes 3x faster than through the type peek and the per-container hooks).
    small = len(payload) <= limits.MAX_SMALL_MESSAGE_BYTES
    if small:
        doc = _as_map(_unpack(payload, budget=None))
        kind = doc.get("type")
        if type(kind) is not str:
            raise ProtocolError("payload has no 'type' string")
        # a transaction's message (the ingest) well formed but for its tx: decoded without the
        # table's walk; anything else about it is left to the walk below, which says what is wrong
        if kind == "SUBMIT_TX":
            msg_id, tx = doc.get("id"), doc.get("tx", _REQUIRED)
            if type(msg_id) is int and 0 <= msg_id <= U32_MAX and tx is not _REQUIRED:
                return SubmitTx(msg_id, _tx(tx, "SUBMIT_TX.tx"))
        elif kind == "NEW_TX":
            tx = doc.get("tx", _REQUIRED)
            if tx is not _REQUIRED:
                return NewTx(_tx(tx, "NEW_TX.tx"))
    else:
        kind = peek_type(payload)
    entry = _DECODERS.get(kind)
    if entry is None:
        raise ProtocolError(f"unknown message type {kind[:40]!r}")
    if len(payload) > MAX_PAYLOAD_BYTES[kind]:
        raise ProtocolError(f"{kind} of {len(payload)} bytes is over its {MAX_PAYLOAD_BYTES[kind]}-byte limit")
    if not small:
        # every array or map takes at least one byte, so a payload no longer than the containers'
        # limit cannot pass it: unpacked without the per-container hooks (a 200-block CHAIN: 28 KB)
        budget = _ContainerBudget() if len(payload) > limits.MAX_WIRE_CONTAINERS else None
        doc = _as_map(_unpack(payload, budget=budget))
    cls, spec = entry
    values: dict[str, Any] = {}
    for name, decode, default, where in spec:
        try:
            value = doc[name]
        except KeyError:
            if default is _REQUIRED:
                raise ProtocolError(f"{kind} has no field {name!r}") from None
            values[name] = default
            continue
        values[name] = decode(value, where)
    return cls(**values)
