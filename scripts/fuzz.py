"""Fuzz the frame decoder, the message decoder and a node's message handler.

    .venv/bin/python scripts/fuzz.py [--inputs 200000] [--workers 2] [--seed 1] [--crash-dir DIR]
    .venv/bin/python scripts/fuzz.py --replay DIR/crash-<id>.bin   # re-run one saved input

An input is the byte string a peer sends after its HELLO. It takes the node's own path:
``wire.FrameDecoder`` (fed whole or cut at random offsets), ``wire.decode_message`` for each
payload, and ``Node.handle`` of a real Node (temp data dir, no sockets) for each message, from a
real ``Peer`` whose transport is a stub; a HELLO goes through the connection manager's handshake
checks instead, and a PEERS message is followed by the node's dialler on its addresses (resolved
numerically, connects refused: nothing leaves the process). Allowed outcomes: a decoded message, ``ProtocolError``,
``Misbehaving`` (the peer is dropped, as ``Peer.run`` would). Anything else is a crash: the input
is saved with its traceback and the run goes on. Further oracles, each a crash when it fails:
- framing does not depend on how the stream was cut (a reference parser gives the frames);
- a decoded message re-encodes to a payload that decodes to the same bytes again;
- every frame the node queues to the peer (replies, relays) decodes cleanly.

Seeds are real frames of every message type; the blocks are real ones mined on a 1-bit network,
so a mutated block passes proof of work half the time and reaches the deeper rules, and the
transaction is a real signed spend. Mutations: bit flips, interesting bytes, msgpack type markers
and huge length claims, inserts, deletes, repeats, truncation, splices of two inputs, length
prefix edits, several frames in one input; and, on the unpacked map, type confusion of any value
at any depth, boundary integers, fields dropped or added, another message's type name, lists
emptied or grown past their limits, str and bin swapped. An input whose outcome (the error text
with its numbers blanked, or the handler's reply) is new joins the corpus: a cheap stand-in for
coverage feedback. The loop is plain ``random``: hypothesis would cost ~100x the time per input
(tests/test_fuzz.py uses it to generate messages).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import multiprocessing
import os
import random
import re
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import msgpack

from p2pchain import limits, relay, wire
from p2pchain.errors import ProtocolError
from p2pchain.keys import Wallet
from p2pchain.ledger.block import Block
from p2pchain.ledger.tx import Tx, make_tx
from p2pchain.miner import build_template, mine_block
from p2pchain.node import Node, NodeConfig
from p2pchain.params import NetworkParams
from p2pchain.peer import Misbehaving, Peer, Tunables

log = logging.getLogger(__name__)

FUZZ_PARAMS = NetworkParams(bits=1, reward=1000)  # half of all headers meet 1 bit: mutants reach the rules
MINER_SEED = bytes([0x21]) * 32  # wallet paid by the seed blocks' coinbases
PAYEE_SEED = bytes([0x22]) * 32
SEED_BLOCKS = 4  # blocks 1..4 on genesis; the node starts with 1..2, so 3 and 4 are new to it
CORPUS_MAX = 4096  # inputs kept (seeds stay); beyond it a random non-seed entry is replaced
MAX_STACK = 4  # mutations stacked on one input
DEFAULT_CRASH_DIR = Path(tempfile.gettempdir()) / "p2pchain-fuzz-crashes"
PEER_HOST = "192.0.2.7"  # TEST-NET-1: the stub peer's address (nothing is sent anywhere)
DIALS_PER_PEERS = 16  # addresses of one fuzzed PEERS message that the node's dialler is run on

# msgpack markers: nil, false, true, bin8/16/32, ext8/16/32, float32/64, uint8..64, int8..64,
# fixext1..16, str8/16/32, array16/32, map16/32, and the first fixmap/fixarray/fixstr/negfixint.
MSGPACK_MARKERS = bytes(range(0xC0, 0xE0)) + b"\x80\x8f\x90\x9f\xa0\xbf\xe0\xff\x7f\x00"
HUGE_CLAIMS = (  # a container or blob header that claims far more than follows
    b"\xdd\xff\xff\xff\xff",
    b"\xdc\xff\xff",
    b"\xdf\xff\xff\xff\xff",
    b"\xc6\xff\xff\xff\xff",
    b"\xdb\x7f\xff\xff\xff",
    b"\xc9\x00\x00\x10\x00\x01",
)
INTERESTING_INTS = (
    0, 1, 2, -1, -2, 7, 63, 64, 255, 256, 500, 501, 1000, 1001, 4000, 4001, 65535, 65536,
    2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**62 + 1, 2**63 - 1, 2**64 - 1, -(2**31), -(2**63),
    1_700_000_000_000, 2**40,
)  # fmt: skip
INTERESTING_STRS = (
    "", "0", "a", "HELLO", "PING", "type", "x" * 65, "é" * 40, "\x00", "127.0.0.1:0", "h:65536",
    ":", "[::1]:1", "1" * 40, "0" * 40, "mempool", "confirmed", "unknown", "x" * 4097,
)  # fmt: skip
INTERESTING_BINS = (b"", b"\x00", bytes(16), bytes(31), bytes(32), b"\xff" * 32, bytes(33), bytes(64), bytes(4097))
_VARYING = re.compile(r"'[^']*'|\"[^\"]*\"|0x[0-9a-f]+|[0-9a-f]{6,}|\d+")  # quoted input, hex, numbers


def _norm(text: str) -> str:
    """An outcome text with numbers and hashes blanked: a feature of the input that caused it."""
    return _VARYING.sub("#", text)[:80]


# --- seeds ----------------------------------------------------------------------------------
def seed_chain(params: NetworkParams = FUZZ_PARAMS) -> list[Block]:
    """Genesis and SEED_BLOCKS real blocks; block 2 also carries a signed spend."""
    miner, payee = Wallet.from_seed(MINER_SEED), Wallet.from_seed(PAYEE_SEED)
    blocks = [params.genesis]
    for height in range(1, SEED_BLOCKS + 1):
        parent = blocks[-1].header
        txs = [make_tx(miner, payee.address, 7, 2, 0, params.network_id)] if height == 2 else []
        template = build_template(params, parent, parent.timestamp, txs, miner.address, parent.timestamp + 1000)
        blocks.append(mine_block(template))
    return blocks


def seed_messages(params: NetworkParams = FUZZ_PARAMS) -> list[wire.Message]:
    """A real message of every type, the blocks and transactions valid on ``params``."""
    chain = seed_chain(params)
    miner, payee = Wallet.from_seed(MINER_SEED), Wallet.from_seed(PAYEE_SEED)
    tx = chain[2].txs[1]
    spend = make_tx(miner, payee.address, 5, 1, 1, params.network_id)  # the miner's next nonce
    h = chain[-1].hash
    msgs: list[wire.Message] = [
        wire.Hello(1, params.network_id, bytes(range(16)), 7000, 4, h, 2**5, "p2pchain/fuzz"),
        wire.Ping(2**64 - 1),
        wire.Pong(0),
        wire.GetChain((h, chain[1].hash, params.network_id), 500),
        wire.Chain(tuple(chain[1:]), False),
        wire.Chain((chain[3], chain[4]), True),
        wire.NewTx(tx),
        wire.NewTx(spend),
        *(wire.NewBlock(b) for b in chain[1:]),
        wire.GetPeers(),
        wire.Peers(("127.0.0.1:7000", "[::1]:8333", "node.example:1")),
        wire.Hello(2, params.network_id, bytes(range(16)), 7000, 4, h, 2**5, "p2pchain/fuzz", relay.FEATURES),
        wire.InvTx((tx.txid, spend.txid)),
        wire.GetTxs((spend.txid, h)),
        wire.Txs((spend, tx)),
        relay.compact_block(chain[2], 7),
        relay.compact_block(chain[3], 2**64 - 1),
        wire.GetBlockTxn(chain[2].hash, (1,)),
        wire.BlockTxn(chain[2].hash, (tx,)),
        wire.BlockTxn(h, ()),
        wire.SendCmpct(True),
        wire.SendCmpct(False),
        wire.InvBlock((chain[3].hash, h)),
        wire.GetCmpct(chain[2].hash),
        wire.GetCmpct(h),
        wire.GetStatus(1),
        wire.Status(2, {"height": 7, "tip": h.hex(), "peers": [{"addr": "10.0.0.1:7000", "inbound": True}]}),
        wire.GetAccount(3, miner.address),
        wire.Account(3, miner.address, 10, 1, 2),
        wire.GetTx(4, tx.txid),
        wire.TxInfo(4, tx.txid, "confirmed", 2, chain[2].hash, 3, tx),
        wire.TxInfo(5, tx.txid, "unknown", None, None, 0, None),
        wire.SubmitTx(5, spend),
        wire.SubmitResult(5, tx.txid, False, "nonce-gap", "expected nonce 0"),
        wire.GetBlocks(6, 0, 500),
        wire.GetBlock(7, chain[1].hash),
        wire.Blocks(7, (chain[1],), 1),
        wire.Error(8, "unknown block"),
        *consensus_shapes(chain, params),
    ]
    assert {m.TYPE for m in msgs} == set(wire.MESSAGE_TYPES), "a message type has no seed"
    return msgs


def consensus_shapes(chain: list[Block], params: NetworkParams) -> list[wire.Message]:
    """The shapes of issue 11's attacks: a 64-byte transaction (two txids' worth of bytes, the
    CVE-2017-12842 shape), a twin of a new block (its header over that transaction), a twin with
    its last transaction repeated (CVE-2012-2459) and a side block with less work than the tip."""
    sixty_four = Tx("x", "y", 1, 0, 0, bytes(32), bytes(2))
    assert sixty_four.size == 64
    twin = Block(chain[3].header, (sixty_four,))
    repeated = Block(chain[2].header, (*chain[2].txs, chain[2].txs[-1]))
    genesis = chain[0].header
    side = mine_block(
        build_template(
            params, genesis, genesis.timestamp, [], Wallet.from_seed(PAYEE_SEED).address, genesis.timestamp + 7
        )
    )
    return [wire.NewTx(sixty_four), wire.NewBlock(twin), wire.NewBlock(repeated), wire.NewBlock(side)]


# --- framing oracle -------------------------------------------------------------------------
def reference_frames(data: bytes) -> tuple[list[bytes], bool]:
    """The complete frames at the start of ``data`` and whether a bad length prefix follows them:
    the spec (docs/protocol.md section 1) as the simplest loop."""
    out: list[bytes] = []
    pos = 0
    while len(data) - pos >= 4:
        n = int.from_bytes(data[pos : pos + 4], "big")
        if n == 0 or n > limits.MAX_FRAME_BYTES:
            return out, True
        if len(data) - pos - 4 < n:
            break
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out, False


def feed_split(data: bytes, cuts: list[int]) -> tuple[list[bytes], bool]:
    """FrameDecoder fed ``data`` cut at ``cuts``: the payloads it gave, and whether it raised."""
    decoder = wire.FrameDecoder()
    out: list[bytes] = []
    pos = 0
    try:
        for cut in [*cuts, len(data)]:
            out += decoder.feed(data[pos:cut])
            pos = cut
        decoder.feed(b"")  # a bad length after the last chunk's complete frames is raised here
    except ProtocolError:
        return out, True
    return out, False


class OracleFailure(AssertionError):
    """The code did not raise, but did something the protocol says it must not."""


# --- the node under test --------------------------------------------------------------------
class _StubTransport:
    """What Peer needs of a writer's transport (it aborts a connection it drops for misbehaving)."""

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        pass


class _StubPeer(Peer):
    """A Peer without a writer task: what it sends is written to its _StubWriter (or, behind an
    undrained write, stays in its queue) for drain_replies, so nothing ever "leaves" and a
    handler must not wait for that (BlockServer waits for its answer to)."""

    async def flushed(self) -> None:
        return


class _StubWriter:
    """What Peer needs of an asyncio.StreamWriter; what the node writes is kept for drain_replies."""

    transport = _StubTransport()

    def __init__(self) -> None:
        self.written = bytearray()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (PEER_HOST, 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    async def drain(self) -> None:
        pass


async def _offline_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
    """getaddrinfo with AI_NUMERICHOST: the same checks of the name (IDNA encoding...) as a real
    lookup, and never a DNS query: a name that is not a numeric address fails as unresolvable."""
    return socket.getaddrinfo(host, port, kwargs.get("family", 0), kwargs.get("type", 0), 0, socket.AI_NUMERICHOST)


async def _refuse(sock: socket.socket, address: Any) -> None:
    raise ConnectionRefusedError(f"fuzz: the node's dialler gets no network ({address})")


class NodeTarget:
    """A Node with no sockets, and one connected Peer at a time that the fuzzer speaks for.
    Must be made inside a running event loop (the Peer's queue and event), whose resolver and
    connect this replaces: the dialler runs as far as the socket, and nothing leaves the process."""

    def __init__(self, data_dir: Path, params: NetworkParams = FUZZ_PARAMS) -> None:
        loop = asyncio.get_running_loop()
        loop.getaddrinfo = _offline_getaddrinfo  # type: ignore[method-assign]
        loop.sock_connect = _refuse  # type: ignore[method-assign]
        self.node = Node(NodeConfig(data_dir=data_dir, params=params, port=0))
        for block in seed_chain(params)[1:3]:  # a little history: blocks 1 and 2
            self.node.chain.process_block(block, block.header.timestamp)
        self.peers_made = 0
        self.peer = self._connect()
        self.used = False  # the node has handled a message from self.peer

    def _connect(self) -> Peer:
        peer = _StubPeer(
            asyncio.StreamReader(),
            cast(asyncio.StreamWriter, _StubWriter()),
            inbound=True,
            tunables=Tunables(),
        )
        node_id = self.peers_made.to_bytes(16, "big")
        self.peers_made += 1
        tip = self.node.chain.tip
        peer.hello = wire.Hello(
            2, self.node.params.network_id, node_id, 7000, tip.height, tip.hash, 0, "fuzz", relay.FEATURES
        )
        self.node.connmgr.handshaken[peer] = None  # so that relays reach it and are checked too
        self.node.relay.add_peer(peer, 2, relay.FEATURES)  # so that INV_TX, CMPCT_BLOCK... reach the relay
        return peer

    def handshake(self, hello: wire.Hello) -> None:
        """A new connection whose first message is ``hello``: the connection manager's checks and
        the node's reaction (address book, GET_PEERS, a sync if it claims more work). Raises
        Misbehaving as ConnectionManager._check_hello does; either way the old peer is gone."""
        self.used = True
        self.reconnect()
        stub = self.peer
        assert stub.hello is not None
        self.node.connmgr.handshaken.pop(stub, None)
        stub.hello = hello
        stub.best_height = hello.height  # as Peer.run does
        self.node.connmgr._check_hello(stub)  # registers the peer as handshaken
        self.node.relay.add_peer(stub, hello.version, hello.relay)
        self.used = True

    def reconnect(self) -> None:
        """The connection is gone (as after Misbehaving): a fresh peer, as connmgr._serve ends one.
        A peer the node never handled a message from is as good as new, and is kept."""
        old = self.peer
        if not self.used and not old.closed.is_set():
            return
        self.used = False
        old.close("fuzz input ended the connection", quiet=True)
        assert old.hello is not None
        self.node.connmgr.handshaken.pop(old, None)
        self.node._on_peer_closed(old)
        self.peer = self._connect()

    def drain_replies(self) -> list[str]:
        """Types of the frames the node sent the peer (written, or queued behind a write); each
        must be a valid frame."""
        peer = self.peer
        peer._uncork()  # what the handler sent in this turn of the loop, written now
        writer = cast(_StubWriter, peer.writer)
        stream, frames = bytes(writer.written), []
        writer.written.clear()
        while stream:
            n = int.from_bytes(stream[:4], "big")
            if len(stream) < 4 + n:
                raise OracleFailure(f"node wrote a frame whose length prefix is wrong: {stream[:16].hex()}")
            frames.append(stream[: 4 + n])
            stream = stream[4 + n :]
        queue = peer.queue
        while not queue.empty():
            item = queue.get_nowait()
            if item is not None and item[1]:  # not the writer's drain marker
                frames.append(item[1])
        types = []
        for frame in frames:
            if int.from_bytes(frame[:4], "big") != len(frame) - 4:
                raise OracleFailure(f"node queued a frame whose length prefix is wrong: {frame[:16].hex()}")
            try:
                types.append(wire.decode_message(frame[4:]).TYPE)
            except ProtocolError as e:
                raise OracleFailure(f"node queued a frame its own decoder refuses: {e}") from None
        return types

    def close(self) -> None:
        self.node.chain.close()


# --- mutations ------------------------------------------------------------------------------
class FastRandom(random.Random):
    """random.Random whose integer helpers are one float multiply: ~5x faster than the exact
    ones, which the profile showed as the fuzzer's top cost. The bias (under 2**-40 for sizes
    below 2**13) means nothing to a fuzzer."""

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        if stop is None:
            return int(self.random() * start)
        return start + int(self.random() * (stop - start))

    def randint(self, a: int, b: int) -> int:
        return a + int(self.random() * (b - a + 1))

    def choice(self, seq: Any) -> Any:
        return seq[int(self.random() * len(seq))]


class Mutator:
    """Makes inputs from a corpus of payloads and their unpacked maps."""

    def __init__(self, rng: random.Random, seeds: list[wire.Message]) -> None:
        self.rng = rng
        self.payloads: list[bytes] = [m.payload() for m in seeds]
        self.docs: list[dict[str, Any]] = [msgpack.unpackb(p, raw=False) for p in self.payloads]
        self.n_seeds = len(self.payloads)  # the first n_seeds payloads and docs are the seeds
        self.by_type: dict[str, list[dict[str, Any]]] = {}
        for doc in self.docs:
            self.by_type.setdefault(doc["type"], []).append(doc)

    def add(self, payload: bytes) -> None:
        """Keep an input that did something new (its map too, if it is one)."""
        try:
            doc = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except Exception:
            doc = None
        if len(self.payloads) >= CORPUS_MAX:
            i = self.rng.randrange(self.n_seeds, len(self.payloads))
            self.payloads[i] = payload
        else:
            self.payloads.append(payload)
        if isinstance(doc, dict) and len(self.docs) < CORPUS_MAX:
            self.docs.append(doc)

    def pick_payload(self) -> bytes:
        """A seed half of the time: the corpus fills with broken inputs, which mostly stay broken."""
        rng = self.rng
        return self.payloads[rng.randrange(self.n_seeds if rng.random() < 0.5 else len(self.payloads))]

    def pick_doc(self) -> dict[str, Any]:
        rng = self.rng
        return self.docs[rng.randrange(self.n_seeds if rng.random() < 0.5 else len(self.docs))]

    # -- one input: bytes and where to cut them ----------------------------------------------
    def next_input(self) -> tuple[bytes, list[int]]:
        rng = self.rng
        frames = rng.randint(2, 4) if rng.random() < 0.12 else 1  # sometimes several in one input
        data = b"".join(self.frame() for _ in range(frames))
        cuts: list[int] = []
        if rng.random() < 0.25 and len(data) > 1:
            cuts = sorted(rng.randrange(1, len(data)) for _ in range(rng.randint(1, 4)))
        return data, cuts

    def frame(self) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.45:
            payload = self.mutate_bytes(self.pick_payload())
        elif roll < 0.85:
            payload = self.pack(self.mutate_doc(self.pick_doc()))
        elif roll < 0.95:
            payload = self.pack(self.generate_doc())
        else:
            payload = self.pick_payload()  # unchanged: replays, duplicates, state changes
        header = len(payload).to_bytes(4, "big")
        if rng.random() < 0.08:  # length-prefix edits
            header = self.edit_length(len(payload))
        return header + payload

    def edit_length(self, n: int) -> bytes:
        rng = self.rng
        choice = rng.choice(
            (0, 1, n - 1, n + 1, n + rng.randint(2, 100), limits.MAX_FRAME_BYTES, limits.MAX_FRAME_BYTES + 1, 2**32 - 1)
        )
        return (choice % 2**32).to_bytes(4, "big")

    def pack(self, obj: Any) -> bytes:
        try:
            out = msgpack.packb(obj, use_bin_type=self.rng.random() < 0.9)
        except (OverflowError, ValueError, TypeError):  # an int beyond 64 bits, nesting too deep
            out = msgpack.packb(["unpackable"])
        return bytes(out) or b"\xc0"

    # -- byte level ---------------------------------------------------------------------------
    def mutate_bytes(self, data: bytes) -> bytes:
        rng = self.rng
        buf = bytearray(data)
        for _ in range(rng.randint(1, MAX_STACK)):
            op = rng.randrange(10)
            n = len(buf)
            i = rng.randrange(n) if n else 0
            if op == 0 and n:
                buf[i] ^= 1 << rng.randrange(8)
            elif op == 1 and n:
                buf[i] = rng.choice(MSGPACK_MARKERS)
            elif op == 2 and n:
                buf[i] = rng.randrange(256)
            elif op == 3:
                buf[i:i] = rng.choice(HUGE_CLAIMS)
            elif op == 4 and n:
                del buf[i : i + rng.randint(1, 8)]
            elif op == 5 and n:
                j = rng.randrange(i, min(n, i + 64) + 1)
                buf[i:i] = buf[i:j] * rng.randint(1, 4)
            elif op == 6 and n:
                del buf[rng.randrange(n) :]  # truncation
            elif op == 7:
                other = rng.choice(self.payloads)  # splice: our head, another's tail
                buf[i:] = other[rng.randrange(len(other) + 1) :]
            elif op == 8:
                buf[i:i] = rng.randbytes(rng.randint(1, 16))
            elif op == 9 and n >= 4:
                j = rng.randrange(n - 3)
                buf[j : j + 4] = rng.choice((b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"))
        return bytes(buf) or rng.randbytes(1)

    # -- structure level ---------------------------------------------------------------------
    def mutate_doc(self, doc: dict[str, Any]) -> Any:
        rng = self.rng
        roll = rng.random()
        if roll < 0.08:  # another message's type name (its fields may or may not fit)
            return {**doc, "type": rng.choice((*wire.MESSAGE_TYPES, "", "hello", "PINGX", 7, None, b"PING"))}
        if roll < 0.16:  # a field dropped, or junk added
            out = dict(doc)
            if out and rng.random() < 0.6:
                del out[rng.choice(list(out))]
            else:
                out[rng.choice(("extra", "type2", "x" * 40))] = self.random_value(2)
            return out
        if roll < 0.24:  # a field taken from another message of the same type
            same = self.by_type.get(str(doc.get("type")), [])
            out = dict(doc)
            if same:
                other = rng.choice(same)
                key = rng.choice(list(other))
                out[key] = other[key]
            return out
        return self._mutate_in(doc, 0)

    def _mutate_in(self, obj: Any, depth: int) -> Any:
        """A copy of ``obj`` with one thing changed at a random depth (only the path is copied)."""
        rng = self.rng
        if isinstance(obj, (list, dict)) and obj and depth < 10 and rng.random() < 0.8:
            if isinstance(obj, dict):
                key = rng.choice(list(obj))
                if key == "type" and len(obj) > 1 and depth == 0:
                    key = rng.choice([k for k in obj if k != "type"])
                return {**obj, key: self._mutate_in(obj[key], depth + 1)}
            if rng.random() < 0.25:
                return self.mutate_list(obj)
            i = rng.randrange(len(obj))
            return [*obj[:i], self._mutate_in(obj[i], depth + 1), *obj[i + 1 :]]
        return self.confuse(obj)

    def mutate_list(self, items: list[Any]) -> list[Any]:
        rng = self.rng
        op = rng.randrange(6)
        if op == 0:
            return []
        if op == 1:
            i = rng.randrange(len(items))
            return items[:i] + items[i + 1 :]
        if op == 2:
            i = rng.randrange(len(items))
            return [*items[: i + 1], items[i], *items[i + 1 :]]
        if op == 3:
            return items[::-1]
        if op == 4:  # past a list limit: 65 locator hashes, 501 blocks, 1001 peers, 4001 txs
            target = rng.choice((65, 501, 1001, 4001))
            return (items * (target // len(items) + 1))[:target]
        return [*items, self.random_value(2)]

    def confuse(self, value: Any) -> Any:
        """A value of the same type nearby, or of another type altogether."""
        rng = self.rng
        if rng.random() < 0.25:
            return self.random_value(2)
        if type(value) is int:
            return rng.choice((*INTERESTING_INTS, value + 1, value - 1, value ^ (1 << rng.randrange(64))))
        if type(value) is bytes:
            if value and rng.random() < 0.5:
                b = bytearray(value)
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
                return bytes(b)
            return rng.choice((*INTERESTING_BINS, value[:-1], value + b"\x00", value * 2))
        if type(value) is str:
            if value and rng.random() < 0.5:
                i = rng.randrange(len(value))
                return value[:i] + rng.choice("0aZ:[]\x00é\u2603 ") + value[i + 1 :]
            return rng.choice((*INTERESTING_STRS, value.upper(), value * 2, value[:-1]))
        if type(value) is bool:
            return not value
        return self.random_value(2)

    def random_value(self, depth: int) -> Any:
        rng = self.rng
        k = rng.randrange(12 if depth > 0 else 9)
        if k == 0:
            return None
        if k == 1:
            return rng.random() < 0.5
        if k == 2:
            return rng.choice(INTERESTING_INTS)
        if k == 3:
            return rng.choice((0.0, -0.0, 1.5, float("nan"), float("inf"), 1e300))
        if k == 4:
            return rng.choice(INTERESTING_STRS)
        if k == 5:
            return rng.choice(INTERESTING_BINS)
        if k == 6:
            return rng.randbytes(rng.randint(0, 40))
        if k == 7:
            return rng.getrandbits(64)
        if k == 8:
            return "".join(rng.choice("0123456789abcdef") for _ in range(40))  # address-shaped
        if k == 9:
            return [self.random_value(depth - 1) for _ in range(rng.randint(0, 4))]
        if k == 10:
            return {rng.choice(("type", "id", "a", "blocks", "tx")): self.random_value(depth - 1)}
        return [[[[[[[[[]]]]]]]]] if rng.random() < 0.5 else [0] * 4001

    def generate_doc(self) -> dict[str, Any]:
        """A map of a known type whose fields are each a seed's value or a random one."""
        rng = self.rng
        kind = rng.choice(list(self.by_type))
        model = rng.choice(self.by_type[kind])
        return {k: (v if k == "type" or rng.random() < 0.5 else self.random_value(2)) for k, v in model.items()}


# --- the run --------------------------------------------------------------------------------
@dataclass
class Crash:
    stage: str
    error: str  # exception type and message
    where: str  # innermost file:line
    trace: str
    data: bytes
    cuts: list[int]

    @property
    def key(self) -> tuple[str, str]:
        return (self.error.split(":", 1)[0], self.where)


@dataclass
class Report:
    inputs: int = 0  # byte strings fed
    frames: int = 0  # complete payloads the frame decoder gave
    decoded: int = 0  # payloads that decoded into a message
    handled: int = 0  # messages given to Node.handle
    misbehaving: int = 0  # of those, how many dropped the peer
    crashes: int = 0
    crash_files: list[str] = field(default_factory=list)
    features: set[str] = field(default_factory=set)
    handled_types: set[str] = field(default_factory=set)
    seconds: float = 0.0

    def merge(self, other: Report) -> None:
        for name in ("inputs", "frames", "decoded", "handled", "misbehaving", "crashes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.crash_files += other.crash_files
        self.features |= other.features
        self.handled_types |= other.handled_types
        self.seconds = max(self.seconds, other.seconds)


class Fuzzer:
    def __init__(self, target: NodeTarget, rng: random.Random, crash_dir: Path | None) -> None:
        self.target = target
        self.rng = rng
        self.mutator = Mutator(rng, seed_messages(target.node.params))
        self.crash_dir = crash_dir
        self.report = Report()
        self.seen_crashes: set[tuple[str, str]] = set()

    def _feature(self, payload: bytes, text: str) -> None:
        if text not in self.report.features:
            self.report.features.add(text)
            self.mutator.add(payload)

    async def run_input(self, data: bytes, cuts: list[int]) -> None:
        """One input, every stage; a crash is recorded, never raised."""
        report = self.report
        report.inputs += 1
        stage = "framing"
        try:
            payloads, failed = feed_split(data, cuts)
            expected, bad_length = reference_frames(data)
            if failed != bad_length or payloads != expected:  # after a bad length: every frame before it
                raise OracleFailure(f"frames depend on the cuts {cuts}: {len(payloads)} vs {len(expected)}")
            report.frames += len(payloads)
            for payload in payloads:
                stage = "decode"
                try:
                    msg = wire.decode_message(payload)
                except ProtocolError as e:
                    self._feature(payload, "P:" + _norm(str(e)))
                    self.target.reconnect()
                    return
                report.decoded += 1
                stage = "re-encode"
                again = wire.decode_message(msg.payload()).payload()
                if again != msg.payload():
                    raise OracleFailure(f"{msg.TYPE} does not re-encode to the same bytes")
                stage = "handle"
                if not await self.handle(payload, msg):
                    return
            if failed:  # a bad length prefix: Peer.run drops the connection
                self.target.reconnect()
        except Exception as e:  # everything else is a finding
            self.crash(stage, e, data, cuts)
            self.target.reconnect()

    async def handle(self, payload: bytes, msg: wire.Message) -> bool:
        """Node.handle as Peer.run calls it; False when the peer was dropped."""
        target, report = self.target, self.report
        peer = target.peer
        if isinstance(msg, wire.Chain) and self.rng.random() < 0.7:
            peer.asked_chain += 1  # as if the node had asked (_start_sync): the CHAIN gets processed
        report.handled += 1
        report.handled_types.add(msg.TYPE)
        target.used = True
        try:
            if isinstance(msg, wire.Hello):  # the first message of a new connection, half the time
                if self.rng.random() < 0.5:
                    raise Misbehaving("sent a second HELLO")  # Peer.run's own check
                target.handshake(msg)
                peer = target.peer
            else:
                await target.node.handle(peer, msg)
            if isinstance(msg, wire.Peers):  # what a hostile PEERS makes the node dial next
                for addr in msg.peers[:DIALS_PER_PEERS]:
                    await target.node.connmgr.dial(addr)
        except (Misbehaving, ProtocolError) as e:
            report.misbehaving += 1
            self._feature(payload, f"M:{msg.TYPE}:" + _norm(str(e)))
            target.drain_replies()
            target.reconnect()
            return False
        replies = target.drain_replies()
        self._feature(payload, f"H:{msg.TYPE}:{','.join(sorted(set(replies)))}")
        if peer.closed.is_set():  # e.g. its send queue overflowed
            target.reconnect()
            return False
        return True

    def crash(self, stage: str, e: BaseException, data: bytes, cuts: list[int]) -> None:
        tb = traceback.extract_tb(e.__traceback__)
        where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"
        crash = Crash(stage, f"{type(e).__name__}: {e}", where, traceback.format_exc(), data, cuts)
        self.report.crashes += 1
        log.error("crash in %s: %s at %s", stage, crash.error, where)
        if crash.key in self.seen_crashes or self.crash_dir is None:
            return
        self.seen_crashes.add(crash.key)
        self.report.crash_files.append(str(save_crash(self.crash_dir, crash)))

    async def run(self, inputs: int | None, seconds: float | None) -> Report:
        started = time.perf_counter()
        deadline = None if seconds is None else started + seconds
        mutator = self.mutator
        # every seed once, unchanged, then mutants
        for payload in list(mutator.payloads):
            await self.run_input(wire.encode_frame(payload), [])
        while (inputs is None or self.report.inputs < inputs) and (deadline is None or time.perf_counter() < deadline):
            for _ in range(256 if inputs is None else min(256, inputs - self.report.inputs)):
                data, cuts = mutator.next_input()
                await self.run_input(data, cuts)
        self.report.seconds = time.perf_counter() - started
        return self.report


def save_crash(crash_dir: Path, crash: Crash) -> Path:
    """``crash-<id>.bin`` holds the input as bytes, ``crash-<id>.txt`` the stage, cuts and traceback."""
    crash_dir.mkdir(parents=True, exist_ok=True)
    name = "crash-" + hashlib.sha256(crash.data).hexdigest()[:16]
    path = crash_dir / f"{name}.bin"
    path.write_bytes(crash.data)
    (crash_dir / f"{name}.txt").write_text(
        f"stage: {crash.stage}\nerror: {crash.error}\nwhere: {crash.where}\ncuts: {crash.cuts}\n\n{crash.trace}"
    )
    return path


@contextlib.contextmanager
def _data_dir() -> Iterator[Path]:
    shm = Path("/dev/shm")  # RAM when there is one: the node's SQLite writes cost no disk
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="p2pchain-fuzz-", dir=base) as tmp:
        yield Path(tmp)


def run(
    inputs: int | None = None, seconds: float | None = None, seed: int = 1, crash_dir: Path | None = DEFAULT_CRASH_DIR
) -> Report:
    """One fuzzing process: ``inputs`` inputs, or for ``seconds``, from ``seed`` (deterministic)."""

    async def go(data_dir: Path) -> Report:
        target = NodeTarget(data_dir)
        try:
            return await Fuzzer(target, FastRandom(seed), crash_dir).run(inputs, seconds)
        finally:
            target.close()

    with _quiet(), _data_dir() as data_dir:
        return asyncio.run(go(data_dir))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The node logs every dropped peer: a million of them would dominate the run."""
    root = logging.getLogger("p2pchain")
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(level)


def _worker(job: tuple[int, int, str | None]) -> Report:
    inputs, seed, crash_dir = job
    return run(inputs, None, seed, Path(crash_dir) if crash_dir else None)


def run_parallel(inputs: int, workers: int, seed: int = 1, crash_dir: Path | None = DEFAULT_CRASH_DIR) -> Report:
    """``inputs`` split over ``workers`` processes, each with its own node and seed."""
    if workers <= 1:
        return run(inputs, None, seed, crash_dir)
    share = -(-inputs // workers)
    jobs = [(share, seed + i, str(crash_dir) if crash_dir else None) for i in range(workers)]
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        parts = pool.map(_worker, jobs)
    total = Report()
    for part in parts:
        total.merge(part)
    total.seconds = time.perf_counter() - started
    return total


async def replay(path: Path) -> Report:
    """Run one saved input (its cuts from the .txt beside it) against a fresh node."""
    cuts: list[int] = []
    info = path.with_suffix(".txt")
    if info.exists():
        m = re.search(r"^cuts: \[(.*)\]$", info.read_text(), re.M)
        if m and m.group(1).strip():
            cuts = [int(c) for c in m.group(1).split(",")]
    with _data_dir() as data_dir:
        target = NodeTarget(data_dir)
        try:
            fuzzer = Fuzzer(target, FastRandom(0), None)
            await fuzzer.run_input(path.read_bytes(), cuts)
            return fuzzer.report
        finally:
            target.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--inputs", type=int, default=200_000, help="inputs in all (default 200,000)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes")
    parser.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "big"), help="random seed")
    parser.add_argument("--crash-dir", type=Path, default=DEFAULT_CRASH_DIR, help="where crashers are saved")
    parser.add_argument("--replay", type=Path, help="run one saved input and print its traceback")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.replay:
        report = asyncio.run(replay(args.replay))
        print(f"{args.replay}: {report.crashes} crash(es)")
        return 1 if report.crashes else 0
    print(f"seed {args.seed}, {args.inputs:,} inputs on {args.workers} process(es)")
    report = run_parallel(args.inputs, args.workers, args.seed, args.crash_dir)
    print(
        f"{report.inputs:,} inputs in {report.seconds:.1f} s ({report.inputs / report.seconds:,.0f}/s): "
        f"{report.decoded:,} decoded, {report.handled:,} handled, {len(report.features):,} outcomes, "
        f"{report.crashes} crash(es)"
    )
    for path in report.crash_files:
        print(f"  crasher: {path} (traceback in {Path(path).with_suffix('.txt')})")
    return 1 if report.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
