"""The wallet and query commands: `p2pchain wallet|balance|send|status|chain|tx ...`.

Each command talks to one node over the TCP protocol through ``p2pchain.client``. A wallet's key
never leaves this machine: `send` signs locally, for the network id the node announced in its
HELLO, and submits only the signed transaction. Output is human text, or JSON with ``--json``
(one object per line: commands that follow a node, `send --wait` and `status --watch`, print
one line per event). A failure is one line on stderr that says what to do, and an exit code
from ``Exit`` (listed in every command's ``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from p2pchain import __version__, limits
from p2pchain.client import Client, NodeUnavailable, QueryError
from p2pchain.connmgr import parse_addr
from p2pchain.errors import MempoolCode, RuleCode, WalletError
from p2pchain.keys import Wallet, is_address
from p2pchain.ledger.block import Block
from p2pchain.ledger.tx import Tx, make_tx

N = TypeVar("N", int, float)
COMMANDS = frozenset({"wallet", "balance", "send", "status", "chain", "tx"})
DEFAULT_WALLET = Path("~/.p2pchain/wallet.json")
DEFAULT_NODE = "127.0.0.1:7000"
FUNDS_CODES = frozenset({MempoolCode.INSUFFICIENT_FUNDS.value, RuleCode.TX_INSUFFICIENT_FUNDS.value})
NONCE_CODES = frozenset(
    {
        MempoolCode.STALE_NONCE.value,
        MempoolCode.NONCE_CONFLICT.value,
        MempoolCode.NONCE_GAP.value,
        RuleCode.TX_BAD_NONCE.value,
    }
)


class Exit(enum.IntEnum):
    """Process exit codes; each failure has its own so that scripts can branch on it."""

    OK = 0
    REJECTED = 1  # the node refused the transaction or the query for another reason
    USAGE = 2  # bad command line (argparse's own code)
    NODE_DOWN = 3  # no node answered at --node, or it hung up
    BAD_ADDRESS = 4  # an address or transaction id is malformed
    WALLET = 5  # wallet file missing, unreadable, malformed, or (wallet new) already there
    FUNDS = 6  # the sender's coins do not cover amount + fee
    NONCE = 7  # the nonce is stale, already pooled, or leaves a gap
    NOT_FOUND = 8  # the node does not know that transaction
    TIMEOUT = 9  # send --wait gave up before the transaction had its confirmations


EXIT_HELP = "exit codes:\n" + "\n".join(
    f"  {code.value}  {text}"
    for code, text in (
        (Exit.OK, "success"),
        (Exit.REJECTED, "the node refused the transaction or query for another reason"),
        (Exit.USAGE, "bad command line"),
        (Exit.NODE_DOWN, "no node answered at --node (is it running? right HOST:PORT?)"),
        (Exit.BAD_ADDRESS, "malformed address or transaction id"),
        (Exit.WALLET, "wallet file missing, unreadable or malformed; or `wallet new` would overwrite one"),
        (Exit.FUNDS, "insufficient funds for amount + fee"),
        (Exit.NONCE, "stale or conflicting nonce"),
        (Exit.NOT_FOUND, "transaction unknown to the node"),
        (Exit.TIMEOUT, "send --wait gave up before the transaction was confirmed"),
    )
)


class CliError(Exception):
    """A failure to report as one line on stderr, with its exit code."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- argument types -------------------------------------------------------------------------
def _whole(text: str) -> int:
    if not text.isdigit():  # int() would take "+5", " 5" and "5_0"
        raise ValueError(text)
    return int(text)


def _ranged(parse: Callable[[str], N], low: N, high: N, what: str) -> Callable[[str], N]:
    """An argparse type: ``parse(text)``, which must be in ``low..high``."""

    def check(text: str) -> N:
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:  # NaN fails too
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} ({low}..{high})")
        return value

    return check


def _uint(low: int, high: int, what: str) -> Callable[[str], int]:
    return _ranged(_whole, low, high, what)


_seconds = _ranged(float, 0.01, 86_400.0, "a number of seconds")


def check_address(text: str) -> str:
    """The address in ``text`` (case-insensitive), or CliError(BAD_ADDRESS) saying what is wrong."""
    address = text.strip().lower()
    if not is_address(address):
        raise CliError(
            Exit.BAD_ADDRESS,
            f"{text!r} is not an address (40 hex digits): copy it from 'p2pchain wallet show'",
        )
    return address


def check_txid(text: str) -> bytes:
    txid = text.strip().lower()
    if len(txid) != 64 or not all(c in "0123456789abcdef" for c in txid):
        raise CliError(Exit.BAD_ADDRESS, f"{text!r} is not a transaction id (64 hex digits, as 'send' printed it)")
    return bytes.fromhex(txid)


# --- parser ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON (one object per line)")
    node = argparse.ArgumentParser(add_help=False)
    node.add_argument(
        "--node",
        default=DEFAULT_NODE,
        metavar="HOST:PORT",
        help=f"the node to ask (its --port; default {DEFAULT_NODE})",
    )
    wallet = argparse.ArgumentParser(add_help=False)
    wallet.add_argument(
        "--wallet",
        "--file",
        dest="wallet",
        default=DEFAULT_WALLET,
        metavar="FILE",
        help=f"wallet file (default {DEFAULT_WALLET})",
    )

    p = argparse.ArgumentParser(
        prog="p2pchain",
        description="Wallet and query commands. Without one of them, p2pchain runs a node (p2pchain --help).",
        epilog=EXIT_HELP,
        formatter_class=fmt,
    )
    p.add_argument("--version", action="version", version=f"p2pchain {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog=EXIT_HELP, formatter_class=fmt, parents=parents)

    w = add("wallet", "make a wallet file or show its address", [])
    wsub = w.add_subparsers(dest="action", required=True, metavar="ACTION")
    wsub.add_parser(
        "new",
        help="create a new key in a new file (mode 0600; never overwrites)",
        parents=[wallet, common],
        epilog=EXIT_HELP,
        formatter_class=fmt,
    )
    wsub.add_parser(
        "show", help="print the wallet's address", parents=[wallet, common], epilog=EXIT_HELP, formatter_class=fmt
    )

    b = add("balance", "an address's confirmed balance and nonce", [node, wallet, common])
    b.add_argument("address", nargs="?", metavar="ADDRESS", help="default: the wallet's address")

    s = add("send", "sign a payment with the wallet and submit it to the node", [node, wallet, common])
    s.add_argument("--to", required=True, metavar="ADDRESS", help="recipient address")
    s.add_argument("--amount", required=True, type=_uint(1, limits.MAX_MONEY, "a coin amount"), help="coins to send")
    s.add_argument(
        "--fee", type=_uint(0, limits.MAX_MONEY, "a coin amount"), default=0, help="coins to the miner (default 0)"
    )
    s.add_argument(
        "--nonce",
        type=_uint(0, 2**64 - 1, "a nonce"),
        help="override the nonce (default: the account's next, counting the node's mempool)",
    )
    s.add_argument("--wait", action="store_true", help="follow the transaction until it is in a block, then print it")
    s.add_argument(
        "--confirmations",
        type=_uint(1, 10_000, "a number of confirmations"),
        default=1,
        metavar="N",
        help="with --wait: blocks to wait for, counting the one holding it (default 1)",
    )
    s.add_argument(
        "--timeout",
        type=_seconds,
        default=limits.CLI_WAIT_TIMEOUT_S,
        metavar="S",
        help=f"with --wait: give up after S seconds (default {limits.CLI_WAIT_TIMEOUT_S:g})",
    )

    st = add("status", "the node's height, tip, peers and mempool", [node, common])
    st.add_argument("--watch", action="store_true", help="refresh until Ctrl-C (or --count)")
    st.add_argument(
        "--interval",
        type=_seconds,
        default=limits.CLI_WATCH_INTERVAL_S,
        metavar="S",
        help=f"with --watch: seconds between refreshes (default {limits.CLI_WATCH_INTERVAL_S:g})",
    )
    st.add_argument("--count", type=_uint(1, 2**31, "a count"), metavar="N", help="with --watch: stop after N")

    c = add("chain", "list blocks of the node's best chain", [node, common])
    c.add_argument("--from", dest="start", type=_uint(0, 2**32 - 1, "a height"), metavar="H", help="first height")
    c.add_argument(
        "--limit",
        type=_uint(1, 100_000, "a number of blocks"),
        default=limits.CLI_CHAIN_LIMIT,
        metavar="N",
        help=f"blocks to list (default {limits.CLI_CHAIN_LIMIT}: the newest, unless --from)",
    )

    t = add("tx", "where a transaction is: mempool, or block and confirmations", [node, common])
    t.add_argument("txid", metavar="ID", help="transaction id (hex)")
    return p


# --- output ---------------------------------------------------------------------------------
@dataclass
class Out:
    as_json: bool

    def emit(self, doc: dict[str, Any] | list[Any], text: str) -> None:
        """Print ``doc`` as one JSON line with --json, else ``text``."""
        self.line(json.dumps(doc, sort_keys=True) if self.as_json else text)

    def line(self, text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def tx_json(tx: Tx) -> dict[str, Any]:
    return {
        "txid": tx.txid.hex(),
        "sender": tx.sender,
        "recipient": tx.recipient,
        "amount": tx.amount,
        "fee": tx.fee,
        "nonce": tx.nonce,
        "coinbase": tx.is_coinbase,
    }


def block_json(block: Block) -> dict[str, Any]:
    h = block.header
    return {
        "hash": block.hash.hex(),
        "height": h.height,
        "prev_hash": h.prev_hash.hex(),
        "merkle_root": h.merkle_root.hex(),
        "timestamp": h.timestamp,
        "bits": h.bits,
        "nonce": h.nonce,
        "size": block.size,
        "txs": [tx_json(tx) for tx in block.txs],
    }


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def tx_line(tx: Tx) -> str:
    if tx.is_coinbase:
        return f"{tx.txid.hex()}  coinbase -> {tx.recipient}  {tx.amount} coins"
    return f"{tx.txid.hex()}  {tx.sender} -> {tx.recipient}  {tx.amount} coins (fee {tx.fee}, nonce {tx.nonce})"


def block_text(block: Block) -> str:
    lines = [
        f"block {block.hash.hex()}",
        f"  height  {block.height}",
        f"  prev    {block.prev_hash.hex()}",
        f"  time    {_when(block.header.timestamp)}",
        f"  size    {block.size} bytes, {len(block.txs)} transaction(s)",
    ]
    lines += [f"    {tx_line(tx)}" for tx in block.txs]
    return "\n".join(lines)


# --- talking to the node --------------------------------------------------------------------
@contextlib.asynccontextmanager
async def connect(node: str) -> AsyncIterator[Client]:
    try:
        host, port = parse_addr(node)
    except ValueError as e:
        raise CliError(Exit.USAGE, f"--node {e}") from None
    client = await Client.connect(host, port, timeout=limits.CLI_CONNECT_TIMEOUT_S)
    try:
        yield client
    finally:
        await client.close()


def wallet_file(name: str | Path) -> Path:
    """--wallet's file (its default is a Path); an empty name (an unset shell variable) is
    refused, not read as the current directory."""
    if name == "":
        raise CliError(Exit.USAGE, "--wallet: an empty path names no file")
    return Path(name).expanduser()


def load_wallet(name: str | Path) -> Wallet:
    return Wallet.load(wallet_file(name))


# --- commands -------------------------------------------------------------------------------
async def cmd_wallet(args: argparse.Namespace, out: Out) -> None:
    path = wallet_file(args.wallet)
    if args.action == "new":
        wallet = Wallet.generate()
        wallet.save(path)
        out.emit(
            {"address": wallet.address, "file": str(path)},
            f"new wallet {path} (mode 0600)\naddress {wallet.address}\n"
            "keep the file private and backed up: it holds the key that spends these coins",
        )
    else:
        wallet = load_wallet(path)
        out.emit({"address": wallet.address, "file": str(path)}, wallet.address)


async def cmd_balance(args: argparse.Namespace, out: Out) -> None:
    address = check_address(args.address) if args.address else load_wallet(args.wallet).address
    async with connect(args.node) as client:
        acct = await client.account(address)
    pending = acct.pending_nonce - acct.nonce
    out.emit(
        {
            "address": address,
            "balance": acct.balance,
            "nonce": acct.nonce,
            "pending_nonce": acct.pending_nonce,
            "node": args.node,
        },
        f"address  {address}\n"
        f"balance  {acct.balance} coins (confirmed)\n"
        f"nonce    {acct.nonce}" + (f" ({pending} pending in the mempool)" if pending else ""),
    )


def _refusal(code: str, error: str, tx: Tx, node: str, nonce_given: bool, next_nonce: int) -> CliError:
    if code in FUNDS_CODES:
        return CliError(
            Exit.FUNDS,
            f"insufficient funds to send {tx.amount} + fee {tx.fee} ({error}): "
            f"check 'p2pchain balance {tx.sender} --node {node}' and send less",
        )
    if code in NONCE_CODES:
        if nonce_given:
            fix = f"drop --nonce to use the account's next, {next_nonce}"
        else:
            fix = "another transaction from this wallet took it first: run the same send again"
        return CliError(Exit.NONCE, f"nonce {tx.nonce} refused ({code}: {error}): {fix}")
    return CliError(Exit.REJECTED, f"node {node} refused the transaction ({code}: {error})")


async def cmd_send(args: argparse.Namespace, out: Out) -> None:
    recipient = check_address(args.to)
    wallet = load_wallet(args.wallet)
    async with connect(args.node) as client:
        acct = await client.account(wallet.address)
        nonce = acct.pending_nonce if args.nonce is None else args.nonce
        tx = make_tx(wallet, recipient, args.amount, args.fee, nonce, client.network)
        result = await client.submit_tx(tx)
        if not result.accepted:
            raise _refusal(result.code, result.error, tx, args.node, args.nonce is not None, acct.pending_nonce)
        txid = tx.txid.hex()
        out.emit(
            {"event": "sent", "node": args.node, **tx_json(tx)},
            f"sent {tx.amount} coins to {tx.recipient} (fee {tx.fee}, nonce {tx.nonce})\ntxid {txid}",
        )
        if not args.wait:
            return
        try:
            async with asyncio.timeout(args.timeout):
                block, confirmations = await follow_tx(client, tx.txid, args.confirmations, out)
        except TimeoutError:
            raise CliError(
                Exit.TIMEOUT,
                f"transaction {txid} has fewer than {args.confirmations} confirmation(s) after {args.timeout:g} s: "
                f"check later with 'p2pchain tx {txid} --node {args.node}'",
            ) from None
    out.emit(
        {"event": "done", "txid": txid, "confirmations": confirmations, "block": block_json(block)},
        block_text(block),
    )


async def _next_gossip_or(client: Client, seconds: float) -> None:
    """Return after ``seconds``, or sooner when the node pushes something (a new block)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(client.gossip.get(), seconds)
    while not client.gossip.empty():
        client.gossip.get_nowait()


async def follow_tx(client: Client, txid: bytes, wanted: int, out: Out) -> tuple[Block, int]:
    """Report where ``txid`` is each time that changes, until it has ``wanted`` confirmations:
    (the block holding it, its confirmations). Runs until cancelled otherwise."""
    hexid = txid.hex()
    last: tuple[str, bytes | None, int] | None = None
    while True:
        info = await client.tx_info(txid)
        state = (info.status, info.block, info.confirmations)
        if state != last:
            if info.status == "mempool":
                out.emit({"event": "mempool", "txid": hexid}, "in the mempool, waiting for a block")
            elif info.status == "unknown":
                out.emit(
                    {"event": "dropped", "txid": hexid},
                    "the node no longer has it (evicted, or its block was reorganised away): still waiting",
                )
            else:
                assert info.block is not None
                if last is None or last[1] != info.block:
                    out.emit(
                        {"event": "block", "txid": hexid, "height": info.height, "block": info.block.hex()},
                        f"in block {info.block.hex()} at height {info.height}",
                    )
                out.emit(
                    {"event": "confirmations", "txid": hexid, "confirmations": info.confirmations},
                    f"{info.confirmations} confirmation(s)",
                )
            last = state
        if info.status == "confirmed" and info.confirmations >= wanted:
            assert info.block is not None
            block = await client.block(info.block)
            if block is not None:
                return block, info.confirmations
        await _next_gossip_or(client, limits.CLI_POLL_S)


def _network_text(st: dict[str, Any]) -> str:
    block_ms, start = st.get("block_time_ms"), st.get("start_difficulty")
    if isinstance(block_ms, int) and block_ms > 0:
        half_life = st.get("half_life_ms", 0) / 1000
        return f"block time {block_ms / 1000:g} s (half-life {half_life:g} s), start difficulty {start}"
    return f"difficulty {start} (fixed)"


def _rate_text(rate: object) -> str:
    """Hashes per second for people: 1234567 -> '1.23 MH/s'."""
    if not isinstance(rate, (int, float)) or rate <= 0:
        return "unknown (no blocks yet)"
    for scale, unit in ((1e12, "TH/s"), (1e9, "GH/s"), (1e6, "MH/s"), (1e3, "kH/s")):
        if rate >= scale:
            return f"{rate / scale:.3g} {unit}"
    return f"{rate:.3g} H/s"


def status_text(st: dict[str, Any], node: str) -> str:
    peers = st.get("peers", [])
    peer_text = ", ".join(
        f"{p.get('addr')} ({'in' if p.get('inbound') else 'out'}, height {p.get('height')})" for p in peers
    )
    return "\n".join(
        [
            f"node      {node} ({st.get('agent')})",
            f"network   {str(st.get('network'))[:16]}… {_network_text(st)}",
            f"target    {st.get('target')} (difficulty {st.get('difficulty')} bits)",
            f"hashrate  {_rate_text(st.get('hash_rate'))}",
            f"height    {st.get('height')}",
            f"tip       {st.get('tip')}",
            f"peers     {len(peers)}" + (f": {peer_text}" if peers else ""),
            f"mempool   {st.get('mempool')} transaction(s)",
            f"mining    {'yes' if st.get('mining') else 'no'}",
        ]
    )


def status_line(st: dict[str, Any]) -> str:
    return (
        f"{time.strftime('%H:%M:%S')}  height {st.get('height')}  tip {str(st.get('tip'))[:16]}  "
        f"peers {len(st.get('peers', []))}  mempool {st.get('mempool')}"
    )


async def cmd_status(args: argparse.Namespace, out: Out) -> None:
    async with connect(args.node) as client:
        if not args.watch:
            st = await client.status()
            out.emit({"node": args.node, **st}, status_text(st, args.node))
            return
        shown = 0
        while True:
            st = await client.status()
            out.emit({"node": args.node, **st}, status_line(st))
            shown += 1
            if args.count is not None and shown >= args.count:
                return
            await asyncio.sleep(args.interval)  # ok: --watch refreshes at the interval the user chose


async def cmd_chain(args: argparse.Namespace, out: Out) -> None:
    async with connect(args.node) as client:
        height = int((await client.status())["height"])
        start = max(0, height - args.limit + 1) if args.start is None else args.start
        blocks: list[Block] = []
        while len(blocks) < args.limit:
            want = min(args.limit - len(blocks), limits.MAX_BLOCKS_PER_CHAIN)
            reply = await client.blocks(start + len(blocks), want)
            if not reply.blocks:
                break
            blocks += reply.blocks
    if out.as_json:
        out.emit([block_json(b) for b in blocks], "")
    elif not blocks:
        out.line(f"no blocks at or above height {start}: the node's best height is {height}")
    for b in [] if out.as_json else blocks:
        miner = b.txs[0].recipient if b.txs else "-"
        out.line(f"{b.height:>7}  {b.hash.hex()}  {_when(b.header.timestamp)}  {len(b.txs)} tx  miner {miner}")


async def cmd_tx(args: argparse.Namespace, out: Out) -> None:
    txid = check_txid(args.txid)
    async with connect(args.node) as client:
        info = await client.tx_info(txid)
    if info.status == "unknown" or info.tx is None:
        raise CliError(
            Exit.NOT_FOUND,
            f"node {args.node} does not know transaction {txid.hex()}: check the id, or ask the node it was sent to",
        )
    doc = {
        "status": info.status,
        "height": info.height,
        "block": info.block.hex() if info.block else None,
        "confirmations": info.confirmations,
        **tx_json(info.tx),
    }
    where = (
        "in the mempool"
        if info.status == "mempool"
        else f"in block {doc['block']} at height {info.height} ({info.confirmations} confirmation(s))"
    )
    out.emit(doc, f"{tx_line(info.tx)}\n{where}")


HANDLERS: dict[str, Callable[[argparse.Namespace, Out], Coroutine[Any, Any, None]]] = {
    "wallet": cmd_wallet,
    "balance": cmd_balance,
    "send": cmd_send,
    "status": cmd_status,
    "chain": cmd_chain,
    "tx": cmd_tx,
}


@contextlib.contextmanager
def _errors(args: argparse.Namespace) -> Iterator[None]:
    """Turn every expected failure into CliError with its exit code and a one-line fix."""
    try:
        yield
    except NodeUnavailable as e:
        raise CliError(
            Exit.NODE_DOWN, f"{e}: start the node, or point --node at a running one (HOST:PORT, its --port)"
        ) from None
    except WalletError as e:
        if args.command == "wallet":
            hint = "pick another --file" if args.action == "new" else "or point --file at your wallet file"
        else:
            hint = "or point --wallet at your wallet file"
        raise CliError(Exit.WALLET, f"{e} ({hint})") from None
    except QueryError as e:
        raise CliError(Exit.REJECTED, f"node {getattr(args, 'node', '?')} refused the query: {e}") from None


def run_command(argv: list[str]) -> int:
    """Run one wallet/query command; the process exit code."""
    args = build_parser().parse_args(argv)
    out = Out(args.json)
    try:
        with _errors(args):
            asyncio.run(HANDLERS[args.command](args, out))
    except CliError as e:
        sys.stderr.write(f"p2pchain {args.command}: {e}\n")
        return e.code
    except KeyboardInterrupt:
        return Exit.OK if args.command == "status" else 130
    except BrokenPipeError:  # stdout closed early (| head): nothing more to say
        return Exit.OK
    return Exit.OK
