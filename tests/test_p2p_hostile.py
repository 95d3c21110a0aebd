"""p2p_hostile: a catalogue of bad input from a peer, and the node's reaction to each.

In the spirit of Bitcoin Core's p2p_invalid_messages.py. One node process serves the whole
module (``--ban-loopback`` so that loopback attackers are really banned, ``--ping-interval 1``
so that a silent peer is found out in seconds). Each case:

1. connects an honest client from 127.0.0.1 and notes the node's tip;
2. connects an attacker from a loopback address of its own (127.0.9.N: a ban hits only it),
   handshakes (unless the case is about the handshake) and sends the bad input;
3. checks the reaction the case names: IGNORE (the attacker is still served: a PING gets its
   PONG; no ban), DISCONNECT (the node closes the connection, the log says why, no ban: the
   address may connect again at once) or BAN (closed, the log says why, /status lists the
   address, and a new connection from it is refused);
4. checks that the chain is unchanged (same tip; no rejected block stored) and that the honest
   client still gets transactions and blocks: a second honest client sends a transaction and a
   block holding it, and the node relays both to the first.

Blocks are mined in the test process at the test difficulty (milliseconds each); the node does
not mine, so its chain moves only by the honest blocks of step 4.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import os
import random
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack
import pytest
from harness import TEST_BITS, NodeProc, run, wait_until
from p2p_peer import RawPeer, connect_client, doc_of, frame, hello, next_gossip, payload, refused

from p2pchain import limits, relay, wire
from p2pchain.client import Client
from p2pchain.errors import RuleCode
from p2pchain.keys import Wallet
from p2pchain.ledger import rules
from p2pchain.ledger.block import Block, Header, merkle_root
from p2pchain.ledger.pow import target_to_bits
from p2pchain.ledger.tx import Tx, make_coinbase, make_tx
from p2pchain.miner import mine_block
from p2pchain.params import BLOCK_VERSION, NetworkParams

PARAMS = NetworkParams(bits=TEST_BITS)  # what the harness's --difficulty gives the node
NET = PARAMS.network_id
RECIPIENT = Wallet.from_seed(b"\x07" * 32).address  # where the honest transactions pay
CASE_TIMEOUT_S = 60.0  # a whole case, connections and honest exchange included


def now_ms() -> int:
    import time

    return int(time.time() * 1000)


# --- blocks and transactions ----------------------------------------------------------------
def assemble(
    parent: Header,
    mtp: int,
    txs: Sequence[Tx] = (),
    *,
    pay_to: str = RECIPIENT,
    body: Sequence[Tx] | None = None,
    coinbase: Tx | None = None,
    height: int | None = None,
    prev: bytes | None = None,
    merkle: bytes | None = None,
    timestamp: int | None = None,
    bits: int = PARAMS.start_bits,
    solve: bool = True,
) -> Block:
    """A block on ``parent``, valid unless told otherwise: the coinbase pays ``pay_to`` the reward
    plus fees, the merkle root matches the body, the nonce meets ``bits``."""
    height = parent.height + 1 if height is None else height
    if body is None:
        cb = coinbase or make_coinbase(pay_to, PARAMS.reward + sum(tx.fee for tx in txs), height)
        body = (cb, *txs)
    header = Header(
        BLOCK_VERSION,
        height,
        parent.hash if prev is None else prev,
        merkle_root([tx.txid for tx in body]) if merkle is None else merkle,
        max(now_ms(), mtp + 1) if timestamp is None else timestamp,
        bits,
        0,
    )
    block = Block(header, tuple(body))
    return mine_block(block) if solve else block


def without_pow(block: Block) -> Block:
    """``block`` with a nonce whose hash misses the target."""
    nonce = block.header.nonce
    while True:
        nonce += 1
        header = replace(block.header, nonce=nonce)
        if not header.meets_target():
            return replace(block, header=header)


def bad_signature(tx: Tx) -> Tx:
    return replace(tx, signature=bytes([tx.signature[0] ^ 1]) + tx.signature[1:])


def mtp_of(blocks: Sequence[Block]) -> int:
    return rules.median_time_past([b.header.timestamp for b in blocks])


# --- the module's node and state ------------------------------------------------------------
@dataclass
class Net:
    node: NodeProc
    funder: Wallet  # paid by the honest blocks; signs the honest transactions (balance stays 1)
    spare: Wallet  # funded once, for the case that resends a pooled transaction
    payer: Wallet  # funded twice, for the case that asks for pooled transactions (GET_TXS)
    confirmed_tx: Tx  # the funder's nonce-0 transaction, already in a block (for replays)
    sources: Iterator[str] = field(default_factory=lambda: (f"127.0.9.{n}" for n in itertools.count(2)))

    @property
    def port(self) -> int:
        return self.node.port


async def _setup(node: NodeProc, funder: Wallet, spare: Wallet, payer: Wallet) -> Tx:
    """Fund the wallets: blocks paying funder, funder, spare, payer, payer, then one holding
    funder's first tx."""
    async with await connect_client(node.port) as client:
        tx = make_tx(funder, RECIPIENT, 1, 0, 0, NET)
        for pay_to, txs in ((funder, ()), (funder, ()), (spare, ()), (payer, ()), (payer, ()), (funder, (tx,))):
            blocks = await tail(client)
            block = assemble(blocks[-1].header, mtp_of(blocks), txs, pay_to=pay_to.address)
            client.send(wire.NewBlock(block))
            await client.ping()
            assert (await client.status())["tip"] == block.hash.hex(), "the node refused a setup block"
    return tx


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    node = NodeProc(tmp_path_factory.mktemp("hostile"), "target", args=["--ban-loopback", "--ping-interval", "1"])
    try:
        node.start()
        funder, spare, payer = Wallet.generate(), Wallet.generate(), Wallet.generate()
        confirmed = run(_setup(node, funder, spare, payer))
        yield Net(node, funder, spare, payer, confirmed)
    finally:
        node.kill()


async def tail(client: Client, n: int = limits.MEDIAN_TIME_SPAN + 1) -> list[Block]:
    """The last ``n`` blocks of the node's best chain, the tip last."""
    height = int((await client.status())["height"])
    reply = await client.blocks(max(0, height - n + 1), n)
    blocks: list[Block] = list(reply.blocks)
    assert blocks and blocks[-1].height == height
    return blocks


# --- one case -------------------------------------------------------------------------------
class Reaction(enum.Enum):
    IGNORE = "ignore"  # still connected and served, no strike
    DISCONNECT = "disconnect"  # dropped, not banned
    BAN = "ban"  # dropped and the address discouraged for BAN_SECONDS


@dataclass
class Ctx:
    """What an attack needs: the module's state, an honest client, the attacker's address."""

    net: Net
    honest: Client
    source: str
    rejected: list[bytes] = field(default_factory=list)  # blocks that must not be stored

    @property
    def port(self) -> int:
        return self.net.port

    async def blocks(self) -> list[Block]:
        return await tail(self.honest)

    async def block(self, txs: Sequence[Tx] = (), **changes: Any) -> Block:
        """A block on the node's tip, changed as ``assemble`` allows."""
        blocks = await self.blocks()
        return assemble(blocks[-1].header, mtp_of(blocks), txs, **changes)

    def reject(self, block: Block) -> Block:
        self.rejected.append(block.hash)
        return block

    async def funder_nonce(self) -> int:
        return int((await self.honest.account(self.net.funder.address)).pending_nonce)

    async def funder_tx(self, amount: int = 1, nonce: int | None = None) -> Tx:
        nonce = await self.funder_nonce() if nonce is None else nonce
        return make_tx(self.net.funder, RECIPIENT, amount, 0, nonce, NET)

    async def banned(self, host: str) -> bool:
        return await asyncio.to_thread(banned, self.net.node, host)


def ban_reason(node: NodeProc, host: str) -> str | None:
    """Why GET /status says ``host`` is banned; None if it is not."""
    status = node.status()
    assert status is not None, "no answer from /status"
    return next((str(b["reason"]) for b in status["bans"] if b["host"] == host), None)


def banned(node: NodeProc, host: str) -> bool:
    return ban_reason(node, host) is not None


Attack = Callable[[Ctx, RawPeer], Awaitable["RawPeer | None"]]


@dataclass(frozen=True)
class Case:
    name: str
    reaction: Reaction
    attack: Attack  # sends the bad input; may return another connection whose fate is checked
    hello: bool = True  # handshake before the attack
    auto_pong: bool = True  # the attacker answers the node's PINGs
    code: RuleCode | None = None  # the rule the ban must name (its reason in /status carries the code)


CASES: list[Case] = []


def case(
    name: str, reaction: Reaction, *, hello: bool = True, auto_pong: bool = True, code: RuleCode | None = None
) -> Callable[[Attack], Attack]:
    def register(attack: Attack) -> Attack:
        CASES.append(Case(name, reaction, attack, hello, auto_pong, code))
        return attack

    return register


IGNORE, DISCONNECT, BAN = Reaction.IGNORE, Reaction.DISCONNECT, Reaction.BAN


# --- framing and encoding ---------------------------------------------------------------------
JUNK = random.Random(2024).randbytes(512)
assert int.from_bytes(JUNK[:4], "big") > limits.MAX_FRAME_BYTES  # the seed's junk reads as an over-long frame


@case("random bytes instead of HELLO", BAN, hello=False)
async def random_stream(ctx: Ctx, peer: RawPeer) -> None:
    peer.send_raw(JUNK)


@case("random bytes in a frame", BAN)
async def random_payload(ctx: Ctx, peer: RawPeer) -> None:
    peer.send_payload(JUNK[4:])


@case("length prefix over MAX_FRAME_BYTES", BAN)
async def frame_too_long(ctx: Ctx, peer: RawPeer) -> None:
    peer.send_raw((limits.MAX_FRAME_BYTES + 1).to_bytes(4, "big") + b"\x80" * 64)


@case("zero-length frame", BAN)
async def frame_empty(ctx: Ctx, peer: RawPeer) -> None:
    peer.send_raw(bytes(4))


@case("frame cut short, then silence (slowloris)", DISCONNECT, auto_pong=False)
async def slowloris(ctx: Ctx, peer: RawPeer) -> None:
    peer.send_raw((1000).to_bytes(4, "big") + b"\x82\xa4type")  # 9 of 1000 bytes; no PONG can follow


@case("frame cut short before HELLO, then silence", DISCONNECT, hello=False)
async def slowloris_before_hello(ctx: Ctx, peer: RawPeer) -> None:
    peer.send_raw((1000).to_bytes(4, "big") + b"\x89\xa4type")  # dropped after HANDSHAKE_TIMEOUT_S
    await peer.wait_closed(limits.HANDSHAKE_TIMEOUT_S + 20)


@case("msgpack that is not a map", BAN)
async def not_a_map(ctx: Ctx, peer: RawPeer) -> None:
    peer.send_payload(payload(["PING", 1]))


@case("map without a type", BAN)
async def no_type(ctx: Ctx, peer: RawPeer) -> None:
    peer.send_payload(payload({"nonce": 1}))


@case("unknown message type", BAN)
async def unknown_type(ctx: Ctx, peer: RawPeer) -> None:
    peer.send_payload(payload({"type": "GET_SECRETS"}))


@case("missing field", BAN)
async def missing_field(ctx: Ctx, peer: RawPeer) -> None:
    peer.send_payload(payload({"type": "PING"}))


@case("wrongly typed field", BAN)
async def wrong_type(ctx: Ctx, peer: RawPeer) -> None:
    peer.send_payload(payload({"type": "PING", "nonce": "1"}))


@case("integer field out of range", BAN)
async def out_of_range(ctx: Ctx, peer: RawPeer) -> None:
    peer.send_payload(payload({"type": "GET_BLOCKS", "id": 1, "start": 0, "limit": 0}))


@case("huge array claimed (2**31 - 1 blocks in 13 bytes)", BAN)
async def huge_array(ctx: Ctx, peer: RawPeer) -> None:
    peer.send_payload(b"\x82\xa4type\xa5CHAIN\xa6blocks\xdd\x7f\xff\xff\xff")


@case("huge string claimed", BAN)
async def huge_string(ctx: Ctx, peer: RawPeer) -> None:
    peer.send_payload(b"\x81\xa4type\xdb\x7f\xff\xff\xff")


@case("a PING padded to 3 MB with ignored fields (a decode bomb: refused by its size, unread)", BAN)
async def padded_ping(ctx: Ctx, peer: RawPeer) -> None:
    pad = [[{}] * limits.MAX_WIRE_ARRAY_ITEMS] * 20  # 80,000 empty maps: one byte each on the wire
    peer.send_payload(payload({"type": "PING", "nonce": 1, **{f"pad{i}": pad for i in range(40)}}))


@case("bytes after the msgpack object", BAN)
async def trailing_bytes(ctx: Ctx, peer: RawPeer) -> None:
    peer.send_payload(wire.Ping(1).payload() + b"\x00")


@case("msgpack extension type", BAN)
async def ext_type(ctx: Ctx, peer: RawPeer) -> None:
    peer.send_payload(payload({"type": "PING", "nonce": msgpack.ExtType(1, b"x")}))


@case("GET_CHAIN locator over MAX_LOCATOR_HASHES", BAN)
async def locator_too_long(ctx: Ctx, peer: RawPeer) -> None:
    peer.send_payload(payload({"type": "GET_CHAIN", "locator": [NET] * (limits.MAX_LOCATOR_HASHES + 1), "max": 1}))


@case("GET_BLOCKS limit over MAX_BLOCKS_PER_CHAIN (clamped)", IGNORE)
async def query_over_limit(ctx: Ctx, peer: RawPeer) -> None:
    peer.send(wire.GetBlocks(7, 0, 2**32 - 1))
    await peer.expect(lambda m: isinstance(m, wire.Blocks) and m.id == 7)


# --- handshake --------------------------------------------------------------------------------
@case("a message before HELLO", BAN, hello=False)
async def before_hello(ctx: Ctx, peer: RawPeer) -> None:
    peer.send(wire.Ping(1))


@case("a second HELLO", BAN)
async def second_hello(ctx: Ctx, peer: RawPeer) -> None:
    peer.send(hello(NET))


@case("wrong network id", DISCONNECT, hello=False)
async def wrong_network(ctx: Ctx, peer: RawPeer) -> None:
    await peer.expect(wire.Hello)
    peer.send(hello(NetworkParams(bits=TEST_BITS + 1).network_id))


@case("unsupported protocol version", DISCONNECT, hello=False)
async def old_version(ctx: Ctx, peer: RawPeer) -> None:
    await peer.handshake(version=limits.MIN_PROTOCOL_VERSION - 1)


# --- protocol state ---------------------------------------------------------------------------
@case("a reply nobody asked for (STATUS)", BAN)
async def unasked_reply(ctx: Ctx, peer: RawPeer) -> None:
    peer.send(wire.Status(1, {"height": 0}))


@case("a PONG nobody asked for", IGNORE)
async def stray_pong(ctx: Ctx, peer: RawPeer) -> None:
    peer.send(wire.Pong(12345))


@case("a CHAIN nobody asked for (of a valid block)", BAN)
async def unasked_chain(ctx: Ctx, peer: RawPeer) -> None:
    peer.send(wire.Chain((ctx.reject(await ctx.block()),), False))


CLOSED_PORT = 1  # a HELLO port that claims we listen (the node only syncs from listeners); nothing does


async def asked_for_chain(peer: RawPeer) -> None:
    """Claim more work than the node has, so that it asks us for our chain."""
    await peer.handshake(work=2**200, height=10**6, port=CLOSED_PORT)
    await peer.expect(wire.GetChain)


@case("a CHAIN whose blocks do not link", BAN, hello=False)
async def chain_not_linking(ctx: Ctx, peer: RawPeer) -> None:
    await asked_for_chain(peer)
    first = ctx.reject(await ctx.block())
    second = ctx.reject(await ctx.block())  # a sibling of the first, not its child
    peer.send(wire.Chain((first, second), False))


@case("a CHAIN holding an invalid block", BAN, hello=False, code=RuleCode.COINBASE_OVERPAYS)
async def chain_invalid(ctx: Ctx, peer: RawPeer) -> None:
    await asked_for_chain(peer)
    tip = (await ctx.blocks())[-1]
    bad = ctx.reject(await ctx.block(coinbase=make_coinbase(RECIPIENT, PARAMS.reward + 1, tip.height + 1)))
    peer.send(wire.Chain((bad,), False))


# --- blocks -------------------------------------------------------------------------------------
async def send_block(ctx: Ctx, peer: RawPeer, block: Block) -> None:
    peer.send(wire.NewBlock(ctx.reject(block)))


@case("block with bad proof of work", BAN, code=RuleCode.BAD_POW)
async def block_bad_pow(ctx: Ctx, peer: RawPeer) -> None:
    await send_block(ctx, peer, without_pow(await ctx.block()))


@case(
    "a sibling of the tip without proof of work (no more work than the tip: still checked)", BAN, code=RuleCode.BAD_POW
)
async def sibling_bad_pow(ctx: Ctx, peer: RawPeer) -> None:
    blocks = await ctx.blocks()
    assert len(blocks) >= 2, "the module's chain is too short for a sibling"
    await send_block(ctx, peer, without_pow(assemble(blocks[-2].header, mtp_of(blocks[:-1]), ())))


@case("block with the wrong difficulty", BAN, code=RuleCode.BAD_DIFFICULTY)
async def block_wrong_bits(ctx: Ctx, peer: RawPeer) -> None:
    await send_block(ctx, peer, await ctx.block(bits=target_to_bits(PARAMS.start_target * 2)))


@case("block whose parent is unknown (kept as an orphan)", IGNORE, hello=False)
async def block_unknown_parent(ctx: Ctx, peer: RawPeer) -> None:
    await peer.handshake(port=CLOSED_PORT)
    await send_block(ctx, peer, await ctx.block(prev=os.urandom(32)))
    await peer.expect(wire.GetChain)  # the node asks the sender for the missing blocks


async def found_invalid(ctx: Ctx) -> Block:
    """A block on the tip whose coinbase overpays, sent by a helper connection (banned for it):
    the node now knows the block is invalid."""
    blocks = await ctx.blocks()
    tip = blocks[-1]
    bad = ctx.reject(
        assemble(tip.header, mtp_of(blocks), coinbase=make_coinbase(RECIPIENT, PARAMS.reward + 1, tip.height + 1))
    )
    helper = await RawPeer.connect(ctx.port, next(ctx.net.sources))
    try:
        await helper.handshake()
        helper.send(wire.NewBlock(bad))
        await helper.wait_closed()
    finally:
        await helper.close()
    return bad


@case("block whose parent was found invalid", BAN, code=RuleCode.INVALID_ANCESTOR)
async def block_invalid_parent(ctx: Ctx, peer: RawPeer) -> None:
    parent = await found_invalid(ctx)
    await send_block(ctx, peer, assemble(parent.header, parent.header.timestamp))


@case("block with a wrong merkle root", BAN, code=RuleCode.BAD_MERKLE_ROOT)
async def block_bad_merkle(ctx: Ctx, peer: RawPeer) -> None:
    await send_block(ctx, peer, await ctx.block(merkle=os.urandom(32)))


@case("block with a wrong height", BAN, code=RuleCode.BAD_HEIGHT)
async def block_bad_height(ctx: Ctx, peer: RawPeer) -> None:
    tip = (await ctx.blocks())[-1]
    await send_block(ctx, peer, await ctx.block(height=tip.height + 2))


@case("block timestamp not after the median time past", BAN, code=RuleCode.TIME_TOO_OLD)
async def block_too_old(ctx: Ctx, peer: RawPeer) -> None:
    blocks = await ctx.blocks()
    await send_block(ctx, peer, await ctx.block(timestamp=mtp_of(blocks)))


@case("block timestamp over 2 h ahead (may become valid)", IGNORE)
async def block_too_new(ctx: Ctx, peer: RawPeer) -> None:
    await send_block(ctx, peer, await ctx.block(timestamp=now_ms() + limits.MAX_FUTURE_BLOCK_MS + 3_600_000))


@case("block whose coinbase nonce is not its height", BAN, code=RuleCode.BAD_COINBASE)
async def block_coinbase_shape(ctx: Ctx, peer: RawPeer) -> None:
    tip = (await ctx.blocks())[-1]
    await send_block(ctx, peer, await ctx.block(coinbase=make_coinbase(RECIPIENT, PARAMS.reward, tip.height + 5)))


@case("block whose coinbase pays more than reward + fees", BAN, code=RuleCode.COINBASE_OVERPAYS)
async def block_coinbase_overpays(ctx: Ctx, peer: RawPeer) -> None:
    tip = (await ctx.blocks())[-1]
    cb = make_coinbase(RECIPIENT, PARAMS.reward + 1, tip.height + 1)
    await send_block(ctx, peer, await ctx.block(coinbase=cb))


@case("block without a coinbase", BAN, code=RuleCode.NO_COINBASE)
async def block_no_coinbase(ctx: Ctx, peer: RawPeer) -> None:
    await send_block(ctx, peer, await ctx.block(body=[await ctx.funder_tx()]))


@case("block over MAX_BLOCK_BYTES", BAN, code=RuleCode.BLOCK_TOO_BIG)
async def block_too_big(ctx: Ctx, peer: RawPeer) -> None:
    fat = [Tx("a" * 64, "b" * 64, 1, 0, n, b"k" * 255, b"s" * 255) for n in range(1700)]  # ~666 bytes each
    block = await ctx.block(fat)
    assert block.size > limits.MAX_BLOCK_BYTES
    await send_block(ctx, peer, block)


@case("block with over MAX_BLOCK_TXS transactions", BAN)
async def block_too_many_txs(ctx: Ctx, peer: RawPeer) -> None:
    txs = [Tx("a", "b", 1, 0, n, b"", b"") for n in range(limits.MAX_BLOCK_TXS + 1)]
    await send_block(ctx, peer, await ctx.block(txs, solve=False))


@case("block holding a transaction with a bad signature", BAN, code=RuleCode.TX_BAD_SIGNATURE)
async def block_bad_tx(ctx: Ctx, peer: RawPeer) -> None:
    await send_block(ctx, peer, await ctx.block([bad_signature(await ctx.funder_tx())]))


@case("block spending more than the sender has", BAN, code=RuleCode.TX_INSUFFICIENT_FUNDS)
async def block_overspend(ctx: Ctx, peer: RawPeer) -> None:
    await send_block(ctx, peer, await ctx.block([await ctx.funder_tx(amount=1000)]))


@case("block replaying a confirmed transaction", BAN, code=RuleCode.TX_BAD_NONCE)
async def block_replay(ctx: Ctx, peer: RawPeer) -> None:
    await send_block(ctx, peer, await ctx.block([ctx.net.confirmed_tx]))


@case("block that lost a race (a sibling of the tip: no more work, not stored)", IGNORE)
async def block_lost_race(ctx: Ctx, peer: RawPeer) -> None:
    blocks = await ctx.blocks()
    peer.send(wire.NewBlock(ctx.reject(assemble(blocks[-2].header, mtp_of(blocks[:-1])))))


SIDE_FLOOD_BLOCKS = 24  # side blocks of the flood below
SIDE_FLOOD_TXS = 250  # signed payments from an empty address in each (~50 KB a block)


def store_bytes(node: NodeProc) -> int:
    return sum(f.stat().st_size for f in node.data_dir.glob("chain.sqlite*"))


@case("a flood of side blocks nobody asked for (none stored, the store does not grow)", IGNORE)
async def side_block_flood(ctx: Ctx, peer: RawPeer) -> None:
    """Issue 11, finding 2: siblings of the tip and of its parent, each with proof of work and a
    body of signed payments from an empty address (a side branch's state is never checked), sent
    as NEW_BLOCK. They bring no more work than the tip, so the node stores none of them."""
    blocks = await ctx.blocks()

    def build() -> list[Block]:  # in a thread: the test's clients keep answering the node's PINGs
        empty = Wallet.generate()
        txs = [make_tx(empty, RECIPIENT, 1, 0, n, NET) for n in range(SIDE_FLOOD_TXS)]
        flood = []
        for i in range(SIDE_FLOOD_BLOCKS):
            depth = 2 + i % 2  # a sibling of the tip, then of its parent
            parent, mtp = blocks[-depth].header, mtp_of(blocks[: len(blocks) - depth + 1])
            flood.append(assemble(parent, mtp, txs, pay_to=Wallet.generate().address))
        return flood

    flood = await asyncio.to_thread(build)
    before = await asyncio.to_thread(store_bytes, ctx.net.node)
    for block in flood:
        peer.send(wire.NewBlock(ctx.reject(block)))
    sent = sum(block.size for block in flood)
    await peer.sync_with_ping()  # all of them handled
    grown = await asyncio.to_thread(store_bytes, ctx.net.node) - before
    assert grown < sent // 10, f"the store grew {grown} bytes for {sent} bytes of side blocks"


@case("block the node already has", IGNORE)
async def block_duplicate(ctx: Ctx, peer: RawPeer) -> None:
    peer.send(wire.NewBlock((await ctx.blocks())[-1]))


# --- transactions -------------------------------------------------------------------------------
@case("transaction with a bad signature", BAN, code=RuleCode.TX_BAD_SIGNATURE)
async def tx_bad_signature(ctx: Ctx, peer: RawPeer) -> None:
    peer.send(wire.NewTx(bad_signature(await ctx.funder_tx())))


@case("transaction whose key does not match the sender", BAN, code=RuleCode.TX_KEY_MISMATCH)
async def tx_key_mismatch(ctx: Ctx, peer: RawPeer) -> None:
    other = Wallet.generate()
    unsigned = Tx(ctx.net.funder.address, RECIPIENT, 1, 0, await ctx.funder_nonce(), other.pubkey, b"")
    peer.send(wire.NewTx(replace(unsigned, signature=other.sign(unsigned.signing_message(NET)))))


@case("transaction of amount zero", BAN, code=RuleCode.TX_BAD_AMOUNT)
async def tx_zero_amount(ctx: Ctx, peer: RawPeer) -> None:
    peer.send(wire.NewTx(await ctx.funder_tx(amount=0)))


@case("transaction of a negative amount (cannot be encoded: the frame is refused)", BAN)
async def tx_negative_amount(ctx: Ctx, peer: RawPeer) -> None:
    doc = doc_of(wire.NewTx(await ctx.funder_tx()))
    doc["tx"][2] = -1
    peer.send_payload(payload(doc))


@case("a coinbase sent as a transaction", BAN, code=RuleCode.TX_SELF_COINBASE)
async def tx_coinbase(ctx: Ctx, peer: RawPeer) -> None:
    peer.send(wire.NewTx(make_coinbase(RECIPIENT, 1, 1)))


@case("transaction spending more than the sender has", IGNORE)
async def tx_overspend(ctx: Ctx, peer: RawPeer) -> None:
    peer.send(wire.NewTx(await ctx.funder_tx(amount=1000)))


@case("transaction with a replayed (already used) nonce", IGNORE)
async def tx_stale_nonce(ctx: Ctx, peer: RawPeer) -> None:
    peer.send(wire.NewTx(await ctx.funder_tx(amount=2, nonce=0)))


@case("a confirmed transaction sent again", IGNORE)
async def tx_replayed(ctx: Ctx, peer: RawPeer) -> None:
    peer.send(wire.NewTx(ctx.net.confirmed_tx))


@case("a transaction the node already has", IGNORE)
async def tx_duplicate(ctx: Ctx, peer: RawPeer) -> None:
    tx = make_tx(ctx.net.spare, RECIPIENT, 1, 0, 0, NET)
    result = await ctx.honest.submit_tx(tx)
    assert result.accepted, result.error
    peer.send(wire.NewTx(tx))


# --- floods and stalls ----------------------------------------------------------------------------
FLOOD_TXS = limits.PEER_MSG_BURST + 2000  # past the token bucket's depth: the node throttles


@case(f"a flood of {FLOOD_TXS} NEW_TX that cannot be paid", IGNORE)
async def flood_new_tx(ctx: Ctx, peer: RawPeer) -> None:
    poor = Wallet.generate()

    def frames() -> list[bytes]:  # in a thread: signing 6,000 transactions on the loop would keep
        # the honest client from answering the node's PINGs (the node runs with --ping-interval 1)
        return [frame(wire.NewTx(make_tx(poor, RECIPIENT, n + 1, 0, 0, NET)).payload()) for n in range(FLOOD_TXS)]

    for n, data in enumerate(await asyncio.to_thread(frames)):
        peer.send_raw(data)
        if n % 500 == 0:
            await peer.drain()
    await peer.drain()


# --- relay (version 2): announcements, requests, compact blocks ----------------------------------
async def relay_handshake(peer: RawPeer) -> None:
    await peer.handshake(relay=relay.FEATURES)


async def asked_txs(peer: RawPeer, inv: Sequence[bytes]) -> wire.GetTxs:
    """Announce ``inv`` and return the node's GET_TXS for it."""
    peer.send(wire.InvTx(tuple(inv)))
    request: wire.GetTxs = await peer.expect(lambda m: isinstance(m, wire.GetTxs) and inv[0] in m.txids)
    return request


@case("INV_TX from a peer that did not offer inv-tx", BAN)
async def inv_without_feature(ctx: Ctx, peer: RawPeer) -> None:
    peer.send(wire.InvTx((bytes(32),)))


@case("TXS nobody asked for (unsolicited transactions)", BAN, hello=False)
async def unasked_txs(ctx: Ctx, peer: RawPeer) -> None:
    await relay_handshake(peer)
    peer.send(wire.Txs((await ctx.funder_tx(),)))


@case("TXS holding a transaction that was not asked for", BAN, hello=False)
async def txs_not_asked(ctx: Ctx, peer: RawPeer) -> None:
    await relay_handshake(peer)
    announced, other = Wallet.generate(), await ctx.funder_tx()
    await asked_txs(peer, [make_tx(announced, RECIPIENT, 1, 0, 0, NET).txid])
    peer.send(wire.Txs((other,)))


@case("TXS without the transactions asked for (not found: the next announcer is asked)", IGNORE, hello=False)
async def txs_not_found(ctx: Ctx, peer: RawPeer) -> None:
    await relay_handshake(peer)
    await asked_txs(peer, [os.urandom(32)])
    peer.send(wire.Txs(()))


FLOOD_TXIDS = limits.RELAY_MAX_PEER_ANNOUNCED + 2 * limits.MAX_INV_TXIDS
FLOOD_SELECTIONS = 1000
FLOOD_BLOCKS = 100 * limits.MAX_INV_BLOCK_HASHES


@case(f"an announcement flood of {FLOOD_TXIDS} txids never delivered (the excess is ignored)", IGNORE, hello=False)
async def inv_flood(ctx: Ctx, peer: RawPeer) -> None:
    await relay_handshake(peer)
    for _ in range(0, FLOOD_TXIDS, limits.MAX_INV_TXIDS):
        peer.send(wire.InvTx(tuple(os.urandom(32) for _i in range(limits.MAX_INV_TXIDS))))
    peer.send(wire.Ping(7))  # its PONG follows every GET_TXS the announcements caused
    asked = 0

    def count(msg: wire.Message) -> bool:
        nonlocal asked
        asked += len(msg.txids) if isinstance(msg, wire.GetTxs) else 0
        return isinstance(msg, wire.Pong) and msg.nonce == 7

    await peer.expect(count)
    assert asked == limits.RELAY_MAX_PEER_IN_FLIGHT, f"{asked} txids asked of one silent peer"


async def compact_of(ctx: Ctx, peer: RawPeer, block: Block) -> wire.CmpctBlock:
    await relay_handshake(peer)
    return relay.compact_block(block, 1)


@case("CMPCT_BLOCK from a peer that did not offer cmpct-block", BAN)
async def cmpct_without_feature(ctx: Ctx, peer: RawPeer) -> None:
    peer.send(relay.compact_block(await ctx.block(), 1))


@case("CMPCT_BLOCK of the node's tip (known by its first bytes) from a peer without cmpct-block", BAN)
async def cmpct_known_without_feature(ctx: Ctx, peer: RawPeer) -> None:
    """A copy of a block the node relayed lately is dropped unread, but only from a peer that
    may send it: from one that did not name the feature it is a breach like any other."""
    peer.send(relay.compact_block((await ctx.blocks())[-1], 1))


@case("CMPCT_BLOCK of an old block the node has from a peer without cmpct-block", BAN)
async def cmpct_old_without_feature(ctx: Ctx, peer: RawPeer) -> None:
    peer.send(relay.compact_block((await ctx.honest.blocks(1, 1)).blocks[0], 1))


@case("compact block without proof of work", BAN, hello=False)
async def cmpct_bad_pow(ctx: Ctx, peer: RawPeer) -> None:
    block = ctx.reject(without_pow(await ctx.block()))
    peer.send(await compact_of(ctx, peer, block))


@case("compact block without its coinbase prefilled", BAN, hello=False)
async def cmpct_no_coinbase(ctx: Ctx, peer: RawPeer) -> None:
    block = ctx.reject(await ctx.block())
    peer.send(replace(await compact_of(ctx, peer, block), prefilled=()))


@case("compact block of whole transactions that do not make its merkle root", BAN, hello=False)
async def cmpct_whole_wrong_merkle(ctx: Ctx, peer: RawPeer) -> None:
    """Every transaction prefilled (no short ids: nothing to ask for), but not the block's: the
    sender's own transactions contradict its header (relay.whole_block)."""
    block = ctx.reject(await ctx.block())
    other = make_coinbase(RECIPIENT, PARAMS.reward - 1, block.height)
    peer.send(replace(await compact_of(ctx, peer, block), prefilled=((0, other),)))


@case("compact block of the node's tip, malformed after its header (dropped unread)", IGNORE, hello=False)
async def cmpct_known_malformed(ctx: Ctx, peer: RawPeer) -> None:
    """A compact block of a block the node has is dropped once its header names it (most copies a
    node gets are such): what follows is not read, so a bad short id there costs nothing."""
    tip = (await ctx.blocks())[-1]
    doc = doc_of(await compact_of(ctx, peer, tip))
    doc["short_ids"] = [bytes(8)]  # decoded, an 8-byte short id is a protocol error
    peer.send_payload(payload(doc))


@case("compact block of the node's tip over CMPCT_BLOCK's payload limit (decoded and refused)", BAN, hello=False)
async def cmpct_known_oversize(ctx: Ctx, peer: RawPeer) -> None:
    tip = (await ctx.blocks())[-1]
    doc = doc_of(await compact_of(ctx, peer, tip))
    doc["short_ids"] = [bytes(6)] * (wire.MAX_PAYLOAD_BYTES["CMPCT_BLOCK"] // 7 + 1)  # 7 bytes an id
    peer.send_payload(payload(doc))


@case("compact block that rebuilds to an invalid block", BAN, hello=False, code=RuleCode.COINBASE_OVERPAYS)
async def cmpct_invalid(ctx: Ctx, peer: RawPeer) -> None:
    blocks = await ctx.blocks()
    cb = make_coinbase(RECIPIENT, PARAMS.reward + 1, blocks[-1].height + 1)
    block = ctx.reject(assemble(blocks[-1].header, mtp_of(blocks), coinbase=cb))
    peer.send(await compact_of(ctx, peer, block))


async def asked_block_txn(ctx: Ctx, peer: RawPeer) -> Block:
    """A valid block on the tip holding a transaction the node lacks, sent compact: the node
    asks for that transaction. The block is never completed, so it must not be stored."""
    block = ctx.reject(await ctx.block([await ctx.funder_tx()]))
    peer.send(await compact_of(ctx, peer, block))
    request: wire.GetBlockTxn = await peer.expect(wire.GetBlockTxn)
    assert request.hash == block.hash and request.indexes == (1,)
    return block


@case("BLOCK_TXN whose transactions do not make the block, twice", BAN, hello=False)
async def block_txn_lie(ctx: Ctx, peer: RawPeer) -> None:
    block = await asked_block_txn(ctx, peer)
    wrong = (make_tx(Wallet.generate(), RECIPIENT, 1, 0, 0, NET),)
    peer.send(wire.BlockTxn(block.hash, wrong))  # could be a short-id collision: all is asked again
    full: wire.GetBlockTxn = await peer.expect(wire.GetBlockTxn)
    assert full.indexes == (1,)
    peer.send(wire.BlockTxn(block.hash, wrong))  # its own full answer does not match: a lie


@case("BLOCK_TXN with fewer transactions than asked", BAN, hello=False)
async def block_txn_short(ctx: Ctx, peer: RawPeer) -> None:
    block = await asked_block_txn(ctx, peer)
    peer.send(wire.BlockTxn(block.hash, (block.txs[0], block.txs[0])))


@case("BLOCK_TXN nobody asked for", BAN, hello=False)
async def block_txn_unasked(ctx: Ctx, peer: RawPeer) -> None:
    await relay_handshake(peer)
    blocks = await ctx.blocks()
    peer.send(wire.BlockTxn(blocks[-1].hash, blocks[-1].txs))


@case("BLOCK_TXN empty (the sender no longer has the block)", IGNORE, hello=False)
async def block_txn_gone(ctx: Ctx, peer: RawPeer) -> None:
    block = await asked_block_txn(ctx, peer)
    peer.send(wire.BlockTxn(block.hash, ()))


@case("GET_BLOCK_TXN for an index beyond the block", BAN, hello=False)
async def get_block_txn_beyond(ctx: Ctx, peer: RawPeer) -> None:
    await relay_handshake(peer)
    tip = (await ctx.blocks())[-1]
    peer.send(wire.GetBlockTxn(tip.hash, (len(tip.txs),)))


@case("GET_BLOCK_TXN, GET_TXS and GET_CMPCT of what the node does not have (answered empty)", IGNORE, hello=False)
async def get_unknown(ctx: Ctx, peer: RawPeer) -> None:
    await relay_handshake(peer)
    peer.send(wire.GetBlockTxn(os.urandom(32), (1,)))
    assert (await peer.expect(wire.BlockTxn)).txs == ()
    peer.send(wire.GetTxs((os.urandom(32),)))
    assert (await peer.expect(wire.Txs)).txs == ()
    peer.send(wire.GetCmpct(os.urandom(32)))
    assert (await peer.expect(wire.BlockTxn)).txs == ()


@case("SEND_CMPCT from a peer that did not offer cmpct-hb", BAN)
async def send_cmpct_without_feature(ctx: Ctx, peer: RawPeer) -> None:
    peer.send(wire.SendCmpct(True))


@case("INV_BLOCK from a peer that did not offer cmpct-hb", BAN)
async def inv_block_without_feature(ctx: Ctx, peer: RawPeer) -> None:
    peer.send(wire.InvBlock((os.urandom(32),)))


@case("INV_BLOCK of a block the node found invalid (not fetched)", IGNORE, hello=False)
async def inv_block_invalid(ctx: Ctx, peer: RawPeer) -> None:
    bad = await found_invalid(ctx)
    await relay_handshake(peer)
    peer.send(wire.InvBlock((bad.hash,)))
    peer.send(wire.Ping(9))
    asked = False

    def check(msg: wire.Message) -> bool:
        nonlocal asked
        asked |= isinstance(msg, wire.GetCmpct)
        return isinstance(msg, wire.Pong) and msg.nonce == 9

    await peer.expect(check)
    assert not asked, "the node asked for a block it had found invalid"


@case(f"a flood of {FLOOD_SELECTIONS} SEND_CMPCT (one flag per peer: the last counts)", IGNORE, hello=False)
async def send_cmpct_flood(ctx: Ctx, peer: RawPeer) -> None:
    await relay_handshake(peer)
    frames = b"".join(wire.SendCmpct(n % 2 == 0).encode() for n in range(FLOOD_SELECTIONS))
    peer.send_raw(frames)


@case(f"an INV_BLOCK flood of {FLOOD_BLOCKS} blocks never sent (a few asked, the rest ignored)", IGNORE, hello=False)
async def inv_block_flood(ctx: Ctx, peer: RawPeer) -> None:
    """Each announced block the node lacks costs it a GET_CMPCT and a want until the timeout: at
    most RELAY_MAX_PEER_BLOCK_WANTS at once per announcer, whatever it sends."""
    await relay_handshake(peer)
    step = limits.MAX_INV_BLOCK_HASHES
    for _ in range(0, FLOOD_BLOCKS, step):
        peer.send(wire.InvBlock(tuple(os.urandom(32) for _i in range(step))))
    peer.send(wire.Ping(8))  # its PONG follows every GET_CMPCT the announcements caused
    asked = 0

    def count(msg: wire.Message) -> bool:
        nonlocal asked
        asked += isinstance(msg, wire.GetCmpct)
        return isinstance(msg, wire.Pong) and msg.nonce == 8

    await peer.expect(count)
    assert asked == limits.RELAY_MAX_PEER_BLOCK_WANTS, f"{asked} blocks asked of one announcer"


@case("GET_TXS of pooled transactions again and again (each answered once, if announced to it)", IGNORE, hello=False)
async def get_txs_amplification(ctx: Ctx, peer: RawPeer) -> None:
    """A 33 KB GET_TXS of one txid 1,000 times bought 1,000 copies of the transaction, and the
    same request again bought them again (bounded only by the send queue)."""
    payer = ctx.net.payer
    unannounced = make_tx(payer, RECIPIENT, 1, 0, 0, NET)  # pooled before the peer came: never offered it
    assert (await ctx.honest.submit_tx(unannounced)).accepted
    await relay_handshake(peer)
    announced = make_tx(payer, RECIPIENT, 1, 0, 1, NET)
    assert (await ctx.honest.submit_tx(announced)).accepted
    await peer.expect(lambda m: isinstance(m, wire.InvTx) and announced.txid in m.txids)
    asked = (announced.txid,) * (limits.MAX_INV_TXIDS - 1) + (unannounced.txid,)
    peer.send(wire.GetTxs(asked))
    assert [tx.txid for tx in (await peer.expect(wire.Txs)).txs] == [announced.txid]
    peer.send(wire.GetTxs(asked))
    assert (await peer.expect(wire.Txs)).txs == ()


@case("GET_ACCOUNT of something that is not an address (answered ERROR)", IGNORE)
async def account_not_an_address(ctx: Ctx, peer: RawPeer) -> None:
    peer.send(wire.GetAccount(9, "ABCDEF" + "0" * 34))  # uppercase hex is not an address
    reply = await peer.expect(lambda m: isinstance(m, wire.Error | wire.Account) and m.id == 9)
    assert isinstance(reply, wire.Error) and "not an address" in reply.message, reply


MANY_CONNECTIONS = 200


@case(f"{MANY_CONNECTIONS} connections opened at once (the excess is refused)", DISCONNECT, hello=False)
async def many_connections(ctx: Ctx, peer: RawPeer) -> RawPeer:
    conns = await asyncio.gather(*(RawPeer.connect(ctx.port, ctx.source) for _ in range(MANY_CONNECTIONS - 1)))
    try:
        firsts = await asyncio.gather(*(asyncio.wait_for(c.messages.get(), 30) for c in conns))
        greeted = [c for c, m in zip(conns, firsts, strict=True) if m is not None]
        refused_now = [c for c, m in zip(conns, firsts, strict=True) if m is None]
        # the first connection (``peer``) holds one of the address's slots
        assert 0 < len(greeted) < limits.MAX_INBOUND_PER_IP, f"{len(greeted)} of {len(conns)} more were greeted"
        assert refused_now
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    await peer.close()
    return refused_now[0]


NEVER_READ_RCVBUF = 4096  # bytes: a tiny receive window, so the node's side backs up at once


@case("a peer that never reads (asks for the chain again and again)", DISCONNECT)
async def never_reads(ctx: Ctx, peer: RawPeer) -> RawPeer:
    stuck = await RawPeer.connect(ctx.port, ctx.source, read=False, rcvbuf=NEVER_READ_RCVBUF)
    stuck.send(hello(NET))  # without reading the node's
    request = frame(wire.GetBlocks(1, 0, limits.MAX_BLOCKS_PER_CHAIN).payload())
    async with asyncio.timeout(CASE_TIMEOUT_S / 2):
        while not stuck.writer.transport.is_closing():
            stuck.send_raw(request * 50)
            await stuck.drain()
            await asyncio.sleep(0)  # ok: a loop turn between bursts, the loop is bounded by the timeout
    await stuck.close()
    await peer.close()
    return peer


# --- the test -------------------------------------------------------------------------------------
def drop_logged(node: NodeProc, host: str) -> bool:
    text = node.log_path.read_text(errors="replace")
    return f"dropping peer {host}:" in text or f"refusing inbound connection from {host}:" in text


async def check_case(net: Net, case: Case) -> None:
    source = next(net.sources)
    honest = await connect_client(net.port)
    try:
        before = (await honest.status())["tip"]
        ctx = Ctx(net, honest, source)
        peer = await RawPeer.connect(net.port, source)
        peer.auto_pong = case.auto_pong
        try:
            if case.hello:
                await peer.handshake()
            peer = (await case.attack(ctx, peer)) or peer
            await peer.drain()
            await check_reaction(ctx, case.reaction, case.code, peer)
        finally:
            await peer.close()
        # the chain is unchanged
        assert (await honest.status())["tip"] == before, "the bad input changed the best chain"
        for block_hash in ctx.rejected:
            assert await honest.block(block_hash) is None, f"rejected block {block_hash.hex()[:16]} was stored"
        await honest_exchange(ctx)
    finally:
        await honest.close()


async def check_reaction(ctx: Ctx, reaction: Reaction, code: RuleCode | None, peer: RawPeer) -> None:
    node, source = ctx.net.node, ctx.source
    if reaction is IGNORE:
        await peer.sync_with_ping()  # still served
        assert not await ctx.banned(source)
        return
    if not peer.writer.transport.is_closing():
        await peer.wait_closed()
    await asyncio.to_thread(wait_until, lambda: drop_logged(node, source), 10, f"the log to say why {source} dropped")
    if reaction is BAN:
        reason = await asyncio.to_thread(wait_until, lambda: ban_reason(node, source), 10, f"{source} in /status bans")
        if code is not None:
            assert code.value in reason, f"banned for {reason!r}, expected {code.value}"
        assert await refused(ctx.port, source), f"a banned address {source} was let in again"
    else:
        assert not await ctx.banned(source), f"{source} was banned, expected only a disconnect"
        await eventually(lambda: greeted(ctx.port, source), f"{source} to be let in again after a disconnect")


async def greeted(port: int, source: str) -> bool:
    return not await refused(port, source)


async def eventually(predicate: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0) -> None:
    """Poll an async predicate against a deadline (harness.wait_until for coroutines)."""
    try:
        async with asyncio.timeout(timeout):
            while not await predicate():
                await asyncio.sleep(0.05)  # poll interval, not synchronisation
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}") from None


async def honest_exchange(ctx: Ctx) -> None:
    """A second honest client sends a transaction, then a block holding it; the node relays
    both to ``ctx.honest``."""
    async with await connect_client(ctx.port) as sender:
        tx = make_tx(ctx.net.funder, RECIPIENT, 1, 0, await ctx.funder_nonce(), NET)
        sender.send(wire.NewTx(tx))
        await next_gossip(ctx.honest, lambda m: isinstance(m, wire.NewTx) and m.tx.txid == tx.txid)
        blocks = await tail(sender)
        block = assemble(blocks[-1].header, mtp_of(blocks), [tx], pay_to=ctx.net.funder.address)
        sender.send(wire.NewBlock(block))
        await next_gossip(ctx.honest, lambda m: isinstance(m, wire.NewBlock) and m.block.hash == block.hash)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(net: Net, case: Case) -> None:
    run(check_case(net, case), CASE_TIMEOUT_S)


def test_catalogue_is_complete() -> None:
    assert len(CASES) >= 25
    assert {c.reaction for c in CASES} == set(Reaction)
    assert len({c.name for c in CASES}) == len(CASES)


# --- bans outside the catalogue: persistence, and loopback by default ------------------------------
async def send_junk(port: int, source: str) -> None:
    peer = await RawPeer.connect(port, source)
    try:
        await peer.handshake()
        peer.send_raw(bytes(4))  # a zero-length frame: one strike
        await peer.wait_closed()
    finally:
        await peer.close()


def test_bans_survive_a_restart(nodes: Any) -> None:
    """A ban is stored with the chain: after a restart /status still lists it and the address is
    still refused, while 127.0.0.1 is served."""
    node = nodes("banner", args=["--ban-loopback"]).start()
    attacker = "127.0.8.2"
    run(send_junk(node.port, attacker))
    wait_until(lambda: banned(node, attacker), 10, f"{attacker} to be banned")
    assert node.stop() == 0
    node.start()
    assert banned(node, attacker), "the ban did not survive the restart"

    async def after_restart() -> None:
        assert await refused(node.port, attacker), "a banned address was let in after the restart"
        async with await connect_client(node.port) as honest:
            assert (await honest.status())["height"] == 0

    run(after_restart())


def test_loopback_is_disconnected_not_banned_by_default(nodes: Any) -> None:
    """Without --ban-loopback a misbehaving loopback peer is dropped (the log says why) but not
    banned: a local swarm shares 127.0.0.1 (Bitcoin Core does the same)."""
    node = nodes("lenient").start()
    run(send_junk(node.port, "127.0.0.1"))
    wait_until(lambda: drop_logged(node, "127.0.0.1"), 10, "the log to say why the peer was dropped")
    assert ban_reason(node, "127.0.0.1") is None
    assert not run(refused(node.port, "127.0.0.1"))
