"""Print the generated parts of docs/protocol.md: hex test vectors of real frames built from
fixed inputs, and the table of limits (from p2pchain/limits.py, values and comments).

    .venv/bin/python scripts/protocol_vectors.py > /tmp/vectors.md

Everything is deterministic (fixed seeds, a fixed node id; Ed25519 signatures are deterministic),
so the output only changes when the protocol or the ledger encoding does. tests/test_wire.py
checks that the vectors in docs/protocol.md equal what ``vectors()`` produces and that the
table's values are the code's; after an intended change, paste this output over the doc's.
"""

from __future__ import annotations

import inspect
import re
import sys
import textwrap
from dataclasses import replace

from p2pchain import limits, relay, wire
from p2pchain.keys import Wallet
from p2pchain.ledger.block import Block, Header, merkle_root
from p2pchain.ledger.pow import work
from p2pchain.ledger.tx import Tx, make_coinbase, make_tx
from p2pchain.params import BLOCK_VERSION, NetworkParams

SENDER_SEED = bytes([0x01]) * 32  # the NEW_TX sender's Ed25519 seed
RECIPIENT_SEED = bytes([0x02]) * 32  # its recipient's seed (only the address is used)
NODE_ID = bytes(range(16))  # HELLO node_id 000102...0f
PING_NONCE = 0x0123456789ABCDEF
CMPCT_NONCE = 0x0123456789ABCDEF  # the CMPCT_BLOCK vector's short-id nonce
BLOCK_TIMESTAMP_MS = 1_700_000_000_000  # the height-1 block of the relay vectors (not mined: nonce 0)
HEX_BYTES_PER_LINE = 32


def messages() -> dict[str, wire.Message]:
    """Vector name -> message, in the order of the doc."""
    params = NetworkParams()  # default parameters: 16 bits, reward 1
    genesis = params.genesis
    sender, recipient = Wallet.from_seed(SENDER_SEED), Wallet.from_seed(RECIPIENT_SEED)
    tx = make_tx(sender, recipient.address, amount=5, fee=1, nonce=0, network_id=params.network_id)
    hello = wire.Hello(
        version=limits.PROTOCOL_VERSION,
        network=params.network_id,
        node_id=NODE_ID,
        port=7000,
        height=0,
        best=genesis.hash,
        work=work(genesis.header.target),
        agent="p2pchain/vectors",
        relay=relay.FEATURES,
    )
    block = relay_block(params, tx)
    return {
        "HELLO": hello,
        "HELLO_V1": replace(hello, version=1, relay=()),
        "PING": wire.Ping(nonce=PING_NONCE),
        "GET_CHAIN": wire.GetChain(locator=(genesis.hash,), max=limits.MAX_BLOCKS_PER_CHAIN),
        "NEW_TX": wire.NewTx(tx=tx),
        "NEW_BLOCK": wire.NewBlock(block=genesis),
        "INV_TX": wire.InvTx(txids=(tx.txid,)),
        "GET_TXS": wire.GetTxs(txids=(tx.txid,)),
        "TXS": wire.Txs(txs=(tx,)),
        "CMPCT_BLOCK": relay.compact_block(block, CMPCT_NONCE),
        "GET_BLOCK_TXN": wire.GetBlockTxn(hash=block.hash, indexes=(1,)),
        "BLOCK_TXN": wire.BlockTxn(hash=block.hash, txs=(tx,)),
        "SEND_CMPCT": wire.SendCmpct(high_bandwidth=True),
        "INV_BLOCK": wire.InvBlock(hashes=(block.hash,)),
        "GET_CMPCT": wire.GetCmpct(hash=block.hash),
    }


def relay_block(params: NetworkParams, tx: Tx) -> Block:
    """The relay vectors' block: height 1 on genesis, the coinbase (reward to the NEW_TX
    recipient) and the NEW_TX transaction; nonce 0, so its proof of work is not met."""
    genesis = params.genesis
    coinbase = make_coinbase(tx.recipient, params.reward + tx.fee, 1)
    txs = (coinbase, tx)
    header = Header(
        BLOCK_VERSION, 1, genesis.hash, merkle_root([t.txid for t in txs]), BLOCK_TIMESTAMP_MS, params.start_bits, 0
    )
    return Block(header, txs)


def vectors() -> dict[str, bytes]:
    """Vector name -> the full frame (length prefix and payload)."""
    return {name: msg.encode() for name, msg in messages().items()}


def to_markdown(name: str, frame: bytes) -> str:
    lines = textwrap.wrap(frame.hex(), 2 * HEX_BYTES_PER_LINE)
    return f"<!-- vector: {name} -->\n```hex\n" + "\n".join(lines) + "\n```\n"


_LIMIT = re.compile(r"^([A-Z][A-Z0-9_]*) = .*?(?:  # (.*))?$")


def limits_table() -> str:
    """A markdown table of every constant in limits.py: name, value, and its comment: the one on
    its line, else the comment lines just above; comment lines between two commented constants
    continue the first one's comment."""
    rows: list[list[str]] = []
    pending: list[str] = []
    after_row = False  # the pending comment lines follow a constant directly
    for line in inspect.getsource(limits).splitlines():
        if line.startswith("# ") and not line.startswith("# ---"):
            pending.append(line[2:])
            continue
        m = _LIMIT.match(line)
        if m:
            name, comment = m.group(1), m.group(2)
            if comment is None:
                comment, pending = " ".join(pending), []
            elif pending and after_row:
                rows[-1][2] += " " + " ".join(pending)
            rows.append([name, repr(getattr(limits, name)), comment])
            pending, after_row = [], True
        else:
            pending, after_row = [], False
    lines = ["| name | value | meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | `{value}` | {meaning.replace('|', '/')} |" for name, value, meaning in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    for name, frame in vectors().items():
        sys.stdout.write(f"{name} ({len(frame)} bytes):\n\n{to_markdown(name, frame)}\n")
    sys.stdout.write(limits_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
