"""wallet cli: the README's wallet walk-through, run through the real command line
(`python -m p2pchain ...` subprocesses) against real node processes; every documented failure
gives one line on stderr and its own exit code; `--json` output parses.

Every wallet file lives in the test's tmp dir, and HOME points there too, so that no command can
touch a real ~/.p2pchain. The walk-through's nodes run at difficulty 16 (the default, ~40 blocks
a second on one core) so that the chain does not race away from the test.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from harness import free_port, wait_until

from p2pchain.node import Node, NodeConfig
from p2pchain.params import DEFAULT_BITS, NetworkParams
from p2pchain.sync import PROGRESS_LOG_S
from p2pchain.wallet_cli import Exit

WALK_BITS = DEFAULT_BITS  # the README's network: blocks come fast, but not thousands a second


class Cli:
    """Runs `python -m p2pchain ARGS` in ``root`` with HOME=root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {**os.environ, "HOME": str(root), "PYTHONUNBUFFERED": "1"}

    def __call__(self, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "p2pchain", *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def many(self, *calls: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
        """Run independent commands side by side (each is mostly interpreter start-up)."""
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda argv: self(*argv), calls))

    def ok(self, *args: str) -> str:
        r = self(*args)
        assert r.returncode == 0, f"p2pchain {' '.join(args)} exited {r.returncode}: {r.stderr}"
        return r.stdout

    def json(self, *args: str) -> Any:
        """The one JSON document a --json command prints."""
        lines = self.ok(*args, "--json").splitlines()
        assert len(lines) == 1, lines
        return json.loads(lines[0])

    def events(self, *args: str) -> list[dict[str, Any]]:
        """The JSON lines a following command (send --wait, status --watch) prints."""
        return [json.loads(line) for line in self.ok(*args, "--json").splitlines()]


def assert_fails(r: subprocess.CompletedProcess[str], code: Exit, *mentions: str) -> None:
    """Exit code ``code`` and one line on stderr naming the command and the things in ``mentions``."""
    assert r.returncode == code, f"exited {r.returncode}, wanted {code.name} ({code.value}): {r.stderr!r}"
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("p2pchain "), r.stderr
    for thing in mentions:
        assert thing in lines[0], f"{thing!r} not in {lines[0]!r}"


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.mark.slow
def test_readme_walkthrough_moves_coins_between_wallets_on_two_nodes(cli, nodes):
    # Make two wallets.
    alice = cli.json("wallet", "new", "--file", "alice.json")["address"]
    bob = cli.json("wallet", "new", "--file", "bob.json")["address"]
    assert (cli.root / "alice.json").stat().st_mode & 0o777 == 0o600
    assert cli.json("wallet", "show", "--file", "alice.json")["address"] == alice
    assert cli.ok("wallet", "show", "--file", "bob.json").strip() == bob

    # Start two nodes: one mines to Alice, the other only peers with it.
    miner = nodes("node7000", bits=WALK_BITS).start(["--mine", "--miner-procs", "1", "--reward-to", alice])
    other = nodes("node7001", bits=WALK_BITS).start(["--peer", miner.addr])
    wait_until(lambda: cli.json("balance", alice, "--node", miner.addr)["balance"] >= 6, 60, "Alice to mine 6 coins")

    # Send 5 coins (+ 1 fee) to Bob and follow the transaction into a block.
    events = cli.events(
        "send", "--to", bob, "--amount", "5", "--fee", "1", "--wallet", "alice.json",
        "--node", miner.addr, "--wait", "--timeout", "60",
    )  # fmt: skip
    kinds = [e["event"] for e in events]
    assert kinds[0] == "sent" and kinds[-1] == "done", kinds
    assert "block" in kinds and "confirmations" in kinds, kinds
    txid = events[0]["txid"]
    done = events[-1]
    assert done["confirmations"] >= 1
    assert txid in [t["txid"] for t in done["block"]["txs"]]

    # Watch the balance move on the other node.
    wait_until(lambda: cli.json("balance", bob, "--node", other.addr)["balance"] == 5, 60, "Bob's 5 coins on node7001")
    seen = cli.json("tx", txid, "--node", other.addr)
    assert seen["status"] == "confirmed" and seen["block"] == done["block"]["hash"]
    assert (seen["sender"], seen["recipient"], seen["amount"], seen["fee"]) == (alice, bob, 5, 1)
    acct = cli.json("balance", "--wallet", "alice.json", "--node", other.addr)
    assert acct["address"] == alice and acct["nonce"] == 1

    # The block is in the other node's chain listing; status and watch parse.
    height = done["block"]["height"]
    listed = cli.json("chain", "--node", other.addr, "--from", str(height), "--limit", "1")
    assert [b["hash"] for b in listed] == [done["block"]["hash"]]
    newest = cli.json("chain", "--node", other.addr, "--limit", "3")
    assert len(newest) == 3 and newest[0]["height"] + 2 == newest[2]["height"]
    st = cli.json("status", "--node", other.addr)
    assert st["height"] >= height and miner.addr in [p["addr"] for p in st["peers"]]
    watched = cli.events("status", "--node", other.addr, "--watch", "--count", "2", "--interval", "0.1")
    assert len(watched) == 2 and all(w["network"] == st["network"] for w in watched)

    # The same commands print human text.
    for r in cli.many(
        ("status", "--node", other.addr),
        ("chain", "--node", other.addr, "--limit", "2"),
        ("tx", txid, "--node", other.addr),
        ("balance", bob, "--node", other.addr),
    ):
        assert r.returncode == 0 and r.stdout.strip() and not r.stderr, r

    # A nonce already used, and one far ahead, are refused as nonce errors.
    stale, gap = cli.many(
        ("send", "--to", bob, "--amount", "1", "--wallet", "alice.json", "--node", miner.addr, "--nonce", "0"),
        ("send", "--to", bob, "--amount", "1", "--wallet", "alice.json", "--node", miner.addr, "--nonce", "99"),
    )
    assert_fails(stale, Exit.NONCE, "stale-nonce", "--nonce")
    assert_fails(gap, Exit.NONCE, "nonce-gap", "--nonce")

    # Bob has 5 coins: 100 is short, on either node.
    short = cli("send", "--to", alice, "--amount", "100", "--wallet", "bob.json", "--node", other.addr)
    assert_fails(short, Exit.FUNDS, bob)

    # --wait gives up after --timeout, saying how to look later; what it printed still parses.
    r = cli(
        "send", "--to", alice, "--amount", "1", "--wallet", "bob.json", "--node", other.addr,
        "--wait", "--confirmations", "10000", "--timeout", "1", "--json",
    )  # fmt: skip
    assert_fails(r, Exit.TIMEOUT, "p2pchain tx ")
    printed = [json.loads(line) for line in r.stdout.splitlines()]
    assert printed[0]["event"] == "sent"


def test_each_failure_has_its_exit_code_and_a_one_line_message(cli, tmp_path):
    cli.ok("wallet", "new", "--file", "w.json")
    (tmp_path / "garbled.json").write_text('{"version": 1, "seed": "zz"}')
    (tmp_path / "a-directory").mkdir()
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens here
    addr = "ab" * 20
    results = cli.many(
        # node down
        ("status", "--node", nobody),
        ("status", "--node", nobody, "--watch", "--count", "1"),
        ("balance", addr, "--node", nobody),
        ("send", "--to", addr, "--amount", "1", "--wallet", "w.json", "--node", nobody),
        ("chain", "--node", nobody),
        ("tx", "00" * 32, "--node", nobody),
        # malformed address or id (checked before any connection)
        ("balance", "not-an-address", "--node", nobody),
        ("send", "--to", "ab" * 19, "--amount", "1", "--wallet", "w.json", "--node", nobody),
        ("tx", "1234", "--node", nobody),
        ("status", "--node", "no-port-here"),
        # wallet file missing, unreadable, malformed; `wallet new` never overwrites
        ("send", "--to", addr, "--amount", "1", "--wallet", "missing.json", "--node", nobody),
        ("balance", "--wallet", "missing.json", "--node", nobody),
        ("wallet", "show", "--file", "a-directory"),
        ("wallet", "show", "--file", "garbled.json"),
        ("wallet", "new", "--file", "w.json"),
        ("wallet", "show", "--file", ""),  # an unset shell variable: not the current directory
    )
    want = [
        (Exit.NODE_DOWN, nobody),
        (Exit.NODE_DOWN, nobody),
        (Exit.NODE_DOWN, nobody),
        (Exit.NODE_DOWN, nobody),
        (Exit.NODE_DOWN, nobody),
        (Exit.NODE_DOWN, nobody),
        (Exit.BAD_ADDRESS, "not-an-address"),
        (Exit.BAD_ADDRESS, "ab" * 19),
        (Exit.BAD_ADDRESS, "1234"),
        (Exit.USAGE, "no-port-here"),
        (Exit.WALLET, "missing.json"),
        (Exit.WALLET, "missing.json"),
        (Exit.WALLET, "a-directory"),
        (Exit.WALLET, "garbled.json"),
        (Exit.WALLET, "w.json"),
        (Exit.USAGE, "an empty path names no file"),
    ]
    for r, (code, mention) in zip(results, want, strict=True):
        assert_fails(r, code, mention)
        assert r.stdout == ""
    assert json.loads((tmp_path / "w.json").read_text())["seed"]  # the refused overwrite left it alone


def test_unknown_transaction_and_funds_short_on_a_fresh_node(cli, nodes):
    node = nodes("node").start()
    poor = cli.json("wallet", "new", "--file", "poor.json")["address"]
    unknown, short = cli.many(
        ("tx", "00" * 32, "--node", node.addr),
        ("send", "--to", "ab" * 20, "--amount", "1", "--wallet", "poor.json", "--node", node.addr),
    )
    assert_fails(unknown, Exit.NOT_FOUND, "00" * 32)
    assert_fails(short, Exit.FUNDS, poor)
    assert cli.json("balance", poor, "--node", node.addr) == {
        "address": poor, "balance": 0, "nonce": 0, "pending_nonce": 0, "node": node.addr,
    }  # fmt: skip
    genesis = cli.json("chain", "--node", node.addr)
    assert [b["height"] for b in genesis] == [0]
    assert cli.json("chain", "--node", node.addr, "--from", "5") == []


def test_sync_progress_is_logged_at_most_once_a_second(tmp_path, monkeypatch, caplog):
    """sync.py's "synced H of N blocks", driven by a fake clock: a line only when a second passed."""
    node = Node(NodeConfig(data_dir=tmp_path / "n", params=NetworkParams(bits=12)))
    clock = [1000.0]
    monkeypatch.setattr("p2pchain.sync.time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    try:
        caplog.set_level(logging.INFO, logger="p2pchain.sync")
        logged_at = []
        for t in [1000.0, 1000.3, 1000.9, 1001.0, 1001.2, 1001.99, 1003.5, 1003.6]:
            clock[0] = t
            before = len(caplog.records)
            node.sync.log_progress()
            if len(caplog.records) > before:
                assert caplog.records[-1].getMessage().startswith("synced ")
                logged_at.append(t)
    finally:
        node.chain.close()
    assert logged_at == [1000.0, 1001.0, 1003.5]
    assert all(b - a >= PROGRESS_LOG_S for a, b in itertools.pairwise(logged_at))
