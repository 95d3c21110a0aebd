"""Wire protocol: frames and messages round-trip, framing survives any split of the stream,
every malformed input is a ProtocolError (never another exception, never a big allocation),
and the hex vectors in docs/protocol.md are what the code produces."""

import ast
import asyncio
import contextlib
import importlib.util
import itertools
import re
import struct
import tracemalloc
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pchain import limits, wire
from p2pchain.errors import ProtocolError
from p2pchain.keys import Wallet
from p2pchain.ledger.block import Block
from p2pchain.ledger.tx import Tx, make_tx
from p2pchain.params import NetworkParams
from p2pchain.store import pack_block

ROOT = Path(__file__).resolve().parent.parent
PARAMS = NetworkParams()
GENESIS = PARAMS.genesis
ALICE = Wallet.from_seed(bytes([7]) * 32)
BOB = Wallet.from_seed(bytes([8]) * 32)
TX = make_tx(ALICE, BOB.address, 10, 1, 0, PARAMS.network_id)
H = bytes(range(32))

SAMPLES: list[wire.Message] = [
    wire.Hello(1, PARAMS.network_id, bytes(16), 7000, 3, H, 2**200 + 5, "p2pchain/0.1.0"),
    wire.Hello(1, PARAMS.network_id, b"\xff" * 16, 0, 0, GENESIS.hash, 0, ""),
    wire.Ping(2**64 - 1),
    wire.Pong(0),
    wire.GetChain((H, GENESIS.hash), 500),
    wire.Chain((GENESIS, GENESIS), True),
    wire.Chain((), False),
    wire.NewTx(TX),
    wire.NewBlock(GENESIS),
    wire.GetPeers(),
    wire.Peers(("127.0.0.1:7000", "[::1]:8333", "node.example:1")),
    wire.GetStatus(1),
    wire.Status(
        2,
        {
            "node_id": "ab" * 16,
            "network": PARAMS.network_id.hex(),
            "height": 7,
            "tip": H.hex(),
            "work": str(2**70),
            "peers": [{"addr": "127.0.0.1:7001", "inbound": True, "height": 7}],
            "mempool": 0,
            "address": ALICE.address,
        },
    ),
    wire.GetAccount(3, ALICE.address),
    wire.Account(3, ALICE.address, limits.MAX_MONEY, 4, 6),
    wire.GetTx(4, TX.txid),
    wire.TxInfo(4, TX.txid, "confirmed", 12, H, 3, TX),
    wire.TxInfo(4, TX.txid, "unknown", None, None, 0, None),
    wire.SubmitTx(5, TX),
    wire.SubmitResult(5, TX.txid, False, "nonce-gap", "expected nonce 0"),
    wire.GetBlocks(6, 0, 500),
    wire.GetBlock(7, GENESIS.hash),
    wire.Blocks(7, (GENESIS,), 0),
    # version 2 relay messages (kept before ERROR: the cases below index SAMPLES)
    wire.Hello(2, PARAMS.network_id, bytes(16), 7000, 3, H, 1, "p2pchain/0.2.0", ("inv-tx", "cmpct-block")),
    wire.InvTx((TX.txid, H)),
    wire.InvTx(()),
    wire.GetTxs((TX.txid,)),
    wire.Txs((TX, TX)),
    wire.CmpctBlock(GENESIS.header, 2**64 - 1, (b"\x01" * 6, bytes(6)), ((0, GENESIS.txs[0]), (3, TX))),
    wire.GetBlockTxn(H, (1, 3999)),
    wire.BlockTxn(H, (TX,)),
    wire.BlockTxn(H, ()),
    wire.SendCmpct(True),
    wire.SendCmpct(False),
    wire.InvBlock((H, GENESIS.hash)),
    wire.GetCmpct(H),
    wire.Error(8, "unknown block"),
]
BY_TYPE = {m.TYPE: m for m in reversed(SAMPLES)}  # the first sample of each type


def payload_of(msg: wire.Message, **changes: object) -> bytes:
    """The message's payload with some fields replaced (a value of ... deletes the field)."""
    doc = msgpack.unpackb(msg.payload(), raw=False)
    for key, value in changes.items():
        if value is ...:
            del doc[key]
        else:
            doc[key] = value
    return bytes(msgpack.packb(doc, use_bin_type=True))


# --- round trips ------------------------------------------------------------------------------
def test_samples_cover_every_message_type() -> None:
    assert {m.TYPE for m in SAMPLES} == set(wire.MESSAGE_TYPES)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: m.TYPE)
def test_message_round_trip(msg: wire.Message) -> None:
    frame = msg.encode()
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert wire.FrameDecoder().feed(frame) == [frame[4:]]
    decoded = wire.decode_message(frame[4:])
    assert decoded == msg
    assert type(decoded) is type(msg)
    assert decoded.encode() == frame


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: m.TYPE)
def test_a_message_with_its_own_payload_encodes_the_fields_as_doc_says(msg: wire.Message) -> None:
    """SUBMIT_RESULT writes its map out (the answer to every SUBMIT_TX); every type's payload
    must still be the msgpack of ``doc()``, accepted or refused."""
    variants = [msg]
    if isinstance(msg, wire.SubmitResult):
        variants += [replace(msg, accepted=True, code="", error=""), replace(msg, id=2**32 - 1, accepted=False)]
    for m in variants:
        assert m.payload() == msgpack.packb(m.doc(), use_bin_type=True)


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "SUBMIT_TX", "id": 7, "tx": TX.to_wire()},
        {"type": "SUBMIT_TX", "tx": TX.to_wire()},
        {"type": "SUBMIT_TX", "id": True, "tx": TX.to_wire()},
        {"type": "SUBMIT_TX", "id": -1, "tx": TX.to_wire()},
        {"type": "SUBMIT_TX", "id": 2**32, "tx": TX.to_wire()},
        {"type": "SUBMIT_TX", "id": 7},
        {"type": "SUBMIT_TX", "id": 7, "tx": TX.to_wire()[:6]},
        {"type": "SUBMIT_TX", "id": 7, "tx": [*TX.to_wire()[:2], -1, *TX.to_wire()[3:]]},
        {"type": "NEW_TX", "tx": TX.to_wire()},
        {"type": "NEW_TX"},
        {"type": "NEW_TX", "tx": "x"},
    ],
)
def test_transaction_messages_decode_alike_through_the_short_path_and_the_table(fields: dict[str, Any]) -> None:
    """A small SUBMIT_TX or NEW_TX is decoded without the table's walk (the ingest); the same
    fields padded past MAX_SMALL_MESSAGE_BYTES take the walk: same message, or same error."""

    def outcome(data: bytes) -> object:
        try:
            return wire.decode_message(data)
        except ProtocolError as e:
            return str(e)

    small = msgpack.packb(fields, use_bin_type=True)
    padded = msgpack.packb({**fields, "pad": "p" * limits.MAX_SMALL_MESSAGE_BYTES}, use_bin_type=True)
    assert len(small) <= limits.MAX_SMALL_MESSAGE_BYTES < len(padded)
    assert outcome(small) == outcome(padded)


def test_a_frame_built_from_stored_block_bytes_is_the_encoded_message() -> None:
    """A server sends the blocks' stored msgpack bytes as they are (p2pchain/serve.py): the frame
    must be byte for byte the one the message with those blocks encodes to."""
    paying = Block(GENESIS.header, (*GENESIS.txs, TX))  # its merkle root is wrong: bytes are bytes here
    for blocks in ((), (GENESIS,), (GENESIS, paying, GENESIS)):
        bodies = [pack_block(b) for b in blocks]
        for more in (True, False):
            assert wire.frame_with_blocks(wire.Chain((), more), bodies) == wire.Chain(blocks, more).encode()
        assert wire.frame_with_blocks(wire.Blocks(7, (), 12), bodies) == wire.Blocks(7, blocks, 12).encode()


def test_the_size_of_a_stored_transaction_is_its_canonical_size() -> None:
    for tx in (TX, GENESIS.txs[0], make_tx(BOB, "0" * 40, 2**64 - 1, 2**64 - 1, 2**64 - 1, PARAMS.network_id)):
        assert Tx.wire_size(tx.to_wire()) == tx.size


def test_unknown_fields_are_ignored() -> None:
    payload = payload_of(wire.Ping(9), extra=[1, 2, {"x": b"y"}], later_version=True)
    assert wire.decode_message(payload) == wire.Ping(9)


def test_work_is_minimal_big_endian() -> None:
    assert wire.encode_work(0) == b""
    assert wire.encode_work(65536) == b"\x01\x00\x00"
    hello = SAMPLES[0]
    assert isinstance(hello, wire.Hello)
    assert wire.decode_message(payload_of(hello, work=b"\x01\x00\x00")) == replace(hello, work=65536)
    for bad in (b"\x00\x01", b"\x01" * 65, 5, "01"):
        with pytest.raises(ProtocolError):
            wire.decode_message(payload_of(hello, work=bad))


# --- framing ----------------------------------------------------------------------------------
STREAM = b"".join(m.encode() for m in SAMPLES)
PAYLOADS = [m.payload() for m in SAMPLES]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=40))
def test_frame_decoder_any_split_yields_same_payloads(cuts: list[int]) -> None:
    decoder = wire.FrameDecoder()
    out: list[bytes] = []
    bounds = [0, *sorted(cuts), len(STREAM)]
    for a, b in itertools.pairwise(bounds):
        out += decoder.feed(STREAM[a:b])
    assert out == PAYLOADS
    assert decoder.buffered == 0


def test_frame_decoder_byte_by_byte_keeps_only_one_frame() -> None:
    decoder = wire.FrameDecoder()
    out: list[bytes] = []
    biggest = max(len(p) for p in PAYLOADS)
    for i in range(len(STREAM)):
        out += decoder.feed(STREAM[i : i + 1])
        assert decoder.buffered < 4 + biggest
    assert out == PAYLOADS


@pytest.mark.parametrize("length", [0, limits.MAX_FRAME_BYTES + 1, 2**32 - 1])
def test_frame_decoder_refuses_bad_length_from_header_alone(length: int) -> None:
    decoder = wire.FrameDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed(struct.pack(">I", length))  # the header alone: no payload needed to refuse
    with pytest.raises(ProtocolError):  # the stream has lost its framing: the decoder stays failed
        decoder.feed(wire.Ping(1).encode())


def test_frame_decoder_gives_the_frames_before_a_bad_length_then_raises() -> None:
    ping, pong = wire.Ping(1).encode(), wire.Pong(2).encode()
    decoder = wire.FrameDecoder()
    assert decoder.feed(ping + pong + struct.pack(">I", 2**32 - 1)) == [ping[4:], pong[4:]]
    assert decoder.pending
    with pytest.raises(ProtocolError, match="frame"):  # the bad length's own error, at the next feed
        decoder.feed(b"")
    assert not decoder.pending
    with pytest.raises(ProtocolError, match="already failed"):  # and the decoder stays failed
        decoder.feed(ping)


def test_frame_decoder_limit_is_a_tunable() -> None:
    decoder = wire.FrameDecoder()
    decoder.max_frame_bytes = 10
    assert decoder.feed(wire.encode_frame(b"\x90" * 10)) == [b"\x90" * 10]
    with pytest.raises(ProtocolError):
        decoder.feed(wire.encode_frame(b"\x90" * 11))


def test_encode_frame_refuses_empty_and_oversized_payloads() -> None:
    with pytest.raises(ProtocolError):
        wire.encode_frame(b"")
    with pytest.raises(ProtocolError):
        wire.encode_frame(bytes(limits.MAX_FRAME_BYTES + 1))


def _read_frames(data: bytes, eof: bool = True) -> list[bytes | Exception]:
    """Run read_frame on a stream holding ``data``; collect payloads until it raises."""

    async def go() -> list[bytes | Exception]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        if eof:
            reader.feed_eof()
        out: list[bytes | Exception] = []
        while True:
            try:
                out.append(await asyncio.wait_for(wire.read_frame(reader), 5))
            except (ProtocolError, asyncio.IncompleteReadError) as e:
                out.append(e)
                return out

    return asyncio.run(go())


def test_read_frame_reads_payloads_then_stops_at_eof() -> None:
    out = _read_frames(STREAM)
    assert out[:-1] == PAYLOADS
    assert isinstance(out[-1], asyncio.IncompleteReadError)


@pytest.mark.parametrize("length", [0, limits.MAX_FRAME_BYTES + 1])
def test_read_frame_refuses_bad_length_before_reading_payload(length: int) -> None:
    # No EOF and no payload: if read_frame tried to read the payload it would wait, not raise.
    out = _read_frames(wire.Ping(1).encode() + struct.pack(">I", length), eof=False)
    assert out[0] == wire.Ping(1).payload()
    assert isinstance(out[1], ProtocolError)


# --- malformed messages -------------------------------------------------------------------------
def _array32(n: int) -> bytes:
    return b"\xdd" + struct.pack(">I", n)


HELLO, CHAIN = SAMPLES[0], SAMPLES[5]
GOOD_BLOCK = GENESIS.to_wire()
GOOD_TX = TX.to_wire()
MALFORMED: dict[str, bytes] = {
    "empty": b"",
    "not msgpack": b"\xc1",
    "truncated": wire.Ping(5).payload()[:-1],
    "trailing data": wire.Ping(5).payload() + b"\x00",
    "not a map": msgpack.packb([1, 2, 3]),
    "map with int keys": msgpack.packb({1: 2}),
    "ext type": msgpack.packb({"type": "PING", "nonce": msgpack.ExtType(5, b"x")}),
    "bad utf-8": b"\x81\xa4type\xa2\xff\xfe",
    "no type": msgpack.packb({"nonce": 1}),
    "type not a string": msgpack.packb({"type": 1}),
    "type as bin": msgpack.packb({"type": b"PING", "nonce": 1}, use_bin_type=True),
    "unknown type": msgpack.packb({"type": "INV"}),
    "missing field": payload_of(HELLO, agent=...),
    "int as string": payload_of(wire.Ping(1), nonce="1"),
    "int as float": payload_of(wire.Ping(1), nonce=1.0),
    "int as bool": payload_of(wire.Ping(1), nonce=True),
    "negative int": payload_of(wire.Ping(1), nonce=-1),
    "port out of range": payload_of(HELLO, port=65536),
    "version out of range": payload_of(HELLO, version=2**32),
    "GET_CHAIN max 0": payload_of(SAMPLES[4], max=0),
    "hash too short": payload_of(HELLO, best=b"\x00" * 31),
    "hash as str": payload_of(HELLO, best="00" * 32),
    "node_id too long": payload_of(HELLO, node_id=b"\x00" * 17),
    "agent too long": payload_of(HELLO, agent="a" * (limits.USER_AGENT_MAX + 1)),
    "agent too long in utf-8": payload_of(HELLO, agent="é" * (limits.USER_AGENT_MAX // 2 + 1)),
    "bool as int": payload_of(CHAIN, more=1),
    "locator too long": payload_of(SAMPLES[4], locator=[H] * (limits.MAX_LOCATOR_HASHES + 1)),
    "locator not a list": payload_of(SAMPLES[4], locator=H),
    "chain too long": payload_of(CHAIN, blocks=[GOOD_BLOCK] * (limits.MAX_BLOCKS_PER_CHAIN + 1)),
    "peers too many": payload_of(SAMPLES[10], peers=["1.2.3.4:5"] * (limits.MAX_PEERS_PER_MESSAGE + 1)),
    "peer without port": payload_of(SAMPLES[10], peers=["1.2.3.4"]),
    "peer port 0": payload_of(SAMPLES[10], peers=["1.2.3.4:0"]),
    "peer port unicode digits": payload_of(SAMPLES[10], peers=["h:١٢"]),
    "peer address too long": payload_of(SAMPLES[10], peers=["a" * 300 + ":1"]),
    "string over limit": payload_of(SAMPLES[-1], message="x" * (limits.MAX_WIRE_STR_BYTES + 1)),
    "status not a map": payload_of(SAMPLES[12], status=[1]),
    "status too deep": payload_of(SAMPLES[12], status={"a": [[[[1]]]]}),
    "tx status unknown word": payload_of(SAMPLES[16], status="lost"),
    "address too long": payload_of(SAMPLES[13], address="a" * (limits.MAX_ADDRESS_CHARS + 1)),
    "address empty": payload_of(SAMPLES[13], address=""),
    "id over u32": payload_of(SAMPLES[11], id=2**32),
    # huge claims: a few bytes that announce 2**31 items must fail before allocating them
    "huge array top level": _array32(2**31),
    "huge array field": b"\x82\xa4type\xa5PEERS\xa5peers" + _array32(2**31),
    "huge map": b"\xdf" + struct.pack(">I", 2**31),
    "huge str": b"\xdb" + struct.pack(">I", 2**31),
    "huge bin": b"\xc6" + struct.pack(">I", 2**31),
    "block txs over limit": b"\x82\xa4type\xa9NEW_BLOCK\xa5block\x92\x90" + _array32(limits.MAX_BLOCK_TXS + 1),
    "deep nesting": b"\x91" * 5000,
    # bad block and transaction arrays
    "tx short": payload_of(SAMPLES[7], tx=GOOD_TX[:6]),
    "tx not a list": payload_of(SAMPLES[7], tx={"sender": "x"}),
    "tx amount negative": payload_of(SAMPLES[7], tx=[*GOOD_TX[:2], -1, *GOOD_TX[3:]]),
    "tx pubkey as str": payload_of(SAMPLES[7], tx=[*GOOD_TX[:5], "key", GOOD_TX[6]]),
    "tx sender empty": payload_of(SAMPLES[7], tx=["", *GOOD_TX[1:]]),
    "submit tx short": payload_of(SAMPLES[18], tx=GOOD_TX[:6]),
    "block not a pair": payload_of(SAMPLES[8], block=[GOOD_BLOCK[0]]),
    "header short": payload_of(SAMPLES[8], block=[GOOD_BLOCK[0][:6], GOOD_BLOCK[1]]),
    "header bits over u32": payload_of(SAMPLES[8], block=[[*GOOD_BLOCK[0][:5], 2**32, 0], GOOD_BLOCK[1]]),
    "header prev hash short": payload_of(SAMPLES[8], block=[[1, 0, b"", *GOOD_BLOCK[0][3:]], GOOD_BLOCK[1]]),
    "block tx bad": payload_of(SAMPLES[8], block=[GOOD_BLOCK[0], [[1, 2]]]),
    "chain with one bad block": payload_of(CHAIN, blocks=[GOOD_BLOCK, [GOOD_BLOCK[0], 5]]),
    "blocks reply bad block": payload_of(SAMPLES[22], blocks=[None]),
    "hello relay not a list": payload_of(SAMPLES[0], relay="inv-tx"),
    "hello relay name too long": payload_of(SAMPLES[0], relay=["x" * (limits.RELAY_FEATURE_MAX_BYTES + 1)]),
    "hello relay too many": payload_of(SAMPLES[0], relay=["a"] * (limits.RELAY_FEATURES_MAX + 1)),
    "inv too many": payload_of(BY_TYPE["INV_TX"], txids=[H] * (limits.MAX_INV_TXIDS + 1)),
    "inv txid short": payload_of(BY_TYPE["INV_TX"], txids=[H[:31]]),
    "get_txs too many": payload_of(BY_TYPE["GET_TXS"], txids=[H] * (limits.MAX_INV_TXIDS + 1)),
    "txs too many": payload_of(BY_TYPE["TXS"], txs=[GOOD_TX] * (limits.MAX_TXS_PER_MESSAGE + 1)),
    "cmpct short id of 8 bytes": payload_of(BY_TYPE["CMPCT_BLOCK"], short_ids=[bytes(8)]),
    "cmpct prefilled not a pair": payload_of(BY_TYPE["CMPCT_BLOCK"], prefilled=[[0]]),
    "cmpct prefilled index too big": payload_of(BY_TYPE["CMPCT_BLOCK"], prefilled=[[limits.MAX_BLOCK_TXS, GOOD_TX]]),
    "cmpct nonce negative": payload_of(BY_TYPE["CMPCT_BLOCK"], nonce=-1),
    "cmpct header short": payload_of(BY_TYPE["CMPCT_BLOCK"], header=GOOD_BLOCK[0][:6]),
    "get_block_txn index too big": payload_of(BY_TYPE["GET_BLOCK_TXN"], indexes=[limits.MAX_BLOCK_TXS]),
    "block_txn tx bad": payload_of(BY_TYPE["BLOCK_TXN"], txs=[[1, 2]]),
}


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_payload_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        wire.decode_message(payload)


def test_a_compact_block_starts_with_the_head_of_its_header() -> None:
    """cmpct_head (what lets a node drop a copy of a block it relayed unread): every CMPCT_BLOCK
    of a header, whatever its nonce, ids and size, starts with those bytes; one of another
    header, or laid out otherwise (a valid message all the same), does not."""
    small = BY_TYPE["CMPCT_BLOCK"]
    assert isinstance(small, wire.CmpctBlock)
    head = wire.cmpct_head(small.header)
    large = replace(small, nonce=7, short_ids=tuple(i.to_bytes(6, "big") for i in range(2000)))
    assert len(large.payload()) > limits.MAX_SMALL_MESSAGE_BYTES
    assert small.payload().startswith(head) and large.payload().startswith(head)
    doc = msgpack.unpackb(small.payload(), raw=False)
    reordered = bytes(msgpack.packb({"header": doc["header"], **doc}, use_bin_type=True))
    assert wire.decode_message(reordered) == small
    other = replace(small, header=replace(small.header, nonce=small.header.nonce + 1))
    for payload in (reordered, other.payload(), payload_of(small, extra=1), BY_TYPE["NEW_BLOCK"].payload()):
        assert not payload.startswith(head)


@pytest.mark.parametrize("name", [k for k in MALFORMED if k.startswith("huge")])
def test_huge_claims_fail_without_allocating(name: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError):
            wire.decode_message(MALFORMED[name])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, f"decoding {name} peaked at {peak} bytes"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        wire.decode_message(data)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(SAMPLES), st.data())
def test_fuzz_mutated_frames_decode_or_raise_protocol_error(msg: wire.Message, data: st.DataObject) -> None:
    """Valid payloads with bytes flipped, cut or inserted: near-misses reach the field checks."""
    payload = bytearray(msg.payload())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(payload)))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and i < len(payload):
            payload[i] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del payload[i:]
        else:
            payload[i:i] = data.draw(st.binary(min_size=1, max_size=5))
    try:
        decoded = wire.decode_message(bytes(payload))
    except ProtocolError:
        return
    assert type(decoded) in wire.MESSAGE_TYPES.values()


# --- docs/protocol.md vectors -----------------------------------------------------------------
def _load_vectors_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("protocol_vectors", ROOT / "scripts" / "protocol_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_protocol_doc_vectors_match_the_code() -> None:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    found = {
        name: bytes.fromhex("".join(body.split()))
        for name, body in re.findall(r"<!-- vector: (\S+) -->\s*```hex\n(.*?)```", doc, re.DOTALL)
    }
    script = _load_vectors_script()
    assert found == script.vectors(), "regenerate with: .venv/bin/python scripts/protocol_vectors.py"
    for name, msg in script.messages().items():
        assert wire.decode_message(found[name][4:]) == msg


def test_protocol_doc_limits_table_has_the_code_values() -> None:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    rows = re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \| `([^`]*)` \|", doc, re.MULTILINE)
    assert len(rows) >= 40
    for name, value in rows:
        assert hasattr(limits, name), f"{name} is in docs/protocol.md but not in limits.py"
        assert ast.literal_eval(value) == getattr(limits, name), f"regenerate the table: {name} changed"
    for name in ("MAX_FRAME_BYTES", "MAX_LOCATOR_HASHES", "MAX_BLOCKS_PER_CHAIN", "HANDSHAKE_TIMEOUT_S"):
        assert name in dict(rows)
    names = re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", _load_vectors_script().limits_table(), re.MULTILINE)
    missing = [name for name in names if name not in dict(rows)]
    assert not missing, f"in limits.py, not in docs/protocol.md's table (regenerate it): {missing}"


# --- per-type payload limits and the container budget (issue 12, finding 7) -----------------------
def _largest_tx() -> Tx:
    return Tx("a" * limits.MAX_ADDRESS_CHARS, "b" * limits.MAX_ADDRESS_CHARS, 2**64 - 1, 2**64 - 1, 2**64 - 1,
              b"k" * 255, b"s" * 255)  # fmt: skip


def test_every_message_type_has_a_payload_limit_its_largest_valid_message_fits() -> None:
    assert set(wire.MAX_PAYLOAD_BYTES) == set(wire.MESSAGE_TYPES)
    biggest = [
        wire.Hello(2**32 - 1, H, bytes(16), 65535, 2**32 - 1, H, 2**512 - 1, "x" * limits.USER_AGENT_MAX,
                   tuple("f" * limits.RELAY_FEATURE_MAX_BYTES for _ in range(limits.RELAY_FEATURES_MAX))),
        wire.GetChain((H,) * limits.MAX_LOCATOR_HASHES, 2**32 - 1),
        wire.NewTx(_largest_tx()),
        wire.SubmitResult(2**32 - 1, H, False, "c" * limits.MAX_WIRE_STR_BYTES, "e" * limits.MAX_WIRE_STR_BYTES),
        wire.TxInfo(2**32 - 1, H, "confirmed", 2**32 - 1, H, 2**32 - 1, _largest_tx()),
        wire.Error(2**32 - 1, "e" * limits.MAX_WIRE_STR_BYTES),
        wire.InvTx((H,) * limits.MAX_INV_TXIDS),
        wire.InvBlock((H,) * limits.MAX_INV_BLOCK_HASHES),
        wire.Peers(("[" + "f" * (limits.MAX_PEER_ADDR_CHARS - 8) + "]:65535",) * limits.MAX_PEERS_PER_MESSAGE),
        wire.GetBlockTxn(H, tuple(range(limits.MAX_BLOCK_TXS))),
    ]  # fmt: skip
    fat = [replace(_largest_tx(), nonce=n) for n in range(limits.MAX_BLOCK_BYTES // _largest_tx().size)]
    block = replace(GENESIS, txs=(GENESIS.txs[0], *fat))
    assert block.size <= limits.MAX_BLOCK_BYTES < block.size + _largest_tx().size
    biggest += [wire.NewBlock(block), wire.BlockTxn(H, block.txs)]
    for msg in [*SAMPLES, *biggest]:
        data = msg.payload()
        assert len(data) <= wire.MAX_PAYLOAD_BYTES[msg.TYPE], f"a valid {msg.TYPE} is over its limit"
        assert wire.decode_message(data) == msg


def test_a_ping_padded_with_ignored_fields_is_refused_before_it_is_unpacked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4 MB PING full of unknown keys cost ~290 MB and 0.27 s to decode: now its size is
    checked against the PING's limit first, and nothing of it is unpacked."""
    pad = [[{}] * limits.MAX_WIRE_ARRAY_ITEMS] * 20
    data = payload_of(wire.Ping(1), **{f"pad{i}": pad for i in range(40)})
    assert wire.MAX_PAYLOAD_BYTES["PING"] < len(data) <= limits.MAX_FRAME_BYTES

    def unpack(payload: bytes) -> object:
        raise AssertionError("the payload was unpacked")

    monkeypatch.setattr(wire, "_unpack", unpack)
    with pytest.raises(ProtocolError, match=r"PING of .* bytes is over its"):
        wire.decode_message(data)


def test_a_payload_no_longer_than_the_containers_limit_is_unpacked_without_counting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every array or map takes at least a byte, so a payload of at most MAX_WIRE_CONTAINERS bytes
    cannot pass that limit: it is unpacked without the per-container hooks (a sync's usual
    CHAIN), a longer one with them, and both decode alike. Checked at the boundary with payloads
    of empty maps (one byte each)."""
    made: list[object] = []
    budget = wire._ContainerBudget

    def counted() -> object:
        made.append(budget())
        return made[-1]

    monkeypatch.setattr(wire, "_ContainerBudget", counted)

    def padded(maps: int) -> bytes:  # in arrays of 2,000 (under MAX_WIRE_ARRAY_ITEMS)
        return payload_of(wire.Chain((), False), ignored=[[{}] * 2000] * (maps // 2000) + [[{}] * (maps % 2000)])

    for length, hooked in ((limits.MAX_WIRE_CONTAINERS, False), (limits.MAX_WIRE_CONTAINERS + 1, True)):
        maps = length
        for _ in range(5):  # each map is one byte: a few steps find the count of the right length
            maps += length - len(padded(maps))
        data = padded(maps)
        assert len(data) == length
        made.clear()
        assert wire.decode_message(data) == wire.Chain((), False)
        assert len(made) == hooked


def test_a_container_bomb_in_a_large_message_is_refused_within_bounded_memory() -> None:
    """A CHAIN may be 4 MiB, but 4 MiB of empty maps (one byte each) would decode to 4 million
    dicts: the decoder stops at MAX_WIRE_CONTAINERS, with little memory used."""
    bomb = [[{}] * limits.MAX_WIRE_ARRAY_ITEMS] * (limits.MAX_FRAME_BYTES // limits.MAX_WIRE_ARRAY_ITEMS - 8)
    data = payload_of(wire.Chain((), False), ignored=bomb)
    assert len(data) <= limits.MAX_FRAME_BYTES
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="arrays and maps"):
            wire.decode_message(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024 * 1024, f"decoding the bomb peaked at {peak / 2**20:.0f} MiB"
