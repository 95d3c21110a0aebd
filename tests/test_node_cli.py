"""node command line: `python -m p2pchain` explains itself and refuses bad input clearly.

--help names every flag the node parser has (each with a help text), --version prints the
package version (the `p2pchain` console script too), a malformed --peer exits 2 with a message
naming the flag and the expected form, and a data dir made for another network (or with a damaged
wallet file) exits 2 with a message naming the store (or wallet) file and what to do. Each case
runs the real command in a subprocess with a short deadline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from harness import TEST_BITS, free_port

from p2pchain import __version__
from p2pchain.chain import Chain
from p2pchain.cli import node_parser
from p2pchain.keys import Wallet
from p2pchain.params import NetworkParams
from p2pchain.store import DB_FILE

DEADLINE_S = 30.0  # a command that should exit at once gets this long before the test fails


def p2pchain(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pchain", *args], capture_output=True, text=True, timeout=DEADLINE_S, cwd=cwd
    )


def test_help_lists_every_flag() -> None:
    result = p2pchain("--help")
    assert result.returncode == 0
    for action in node_parser()._actions:
        for flag in action.option_strings:
            assert flag in result.stdout, f"--help does not mention {flag}"
        assert action.help, f"{action.option_strings} has no help text"


def test_version() -> None:
    result = p2pchain("--version")
    assert result.returncode == 0
    assert result.stdout.split() == ["p2pchain", __version__]


def test_console_script_is_the_same_command() -> None:
    script = Path(sys.executable).parent / "p2pchain"
    if not script.exists():
        pytest.skip("the package is not installed with its console script (pip install -e .)")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=DEADLINE_S)
    assert (result.returncode, result.stdout) == (0, p2pchain("--version").stdout)


@pytest.mark.parametrize("bad", ["nonsense", "127.0.0.1", "127.0.0.1:99999", ":7001"])
def test_bad_peer_is_a_usage_error(bad: str) -> None:
    result = p2pchain("--port", "0", "--peer", bad)
    assert result.returncode == 2
    assert "--peer" in result.stderr and "host:port" in result.stderr
    assert "Traceback" not in result.stderr


def test_data_dir_of_another_network_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "other"
    data_dir.mkdir()
    Chain.open(data_dir / DB_FILE, NetworkParams(bits=TEST_BITS + 1)).close()
    port = str(free_port())
    result = p2pchain("--port", port, "--data-dir", str(data_dir), "--difficulty", str(TEST_BITS), cwd=tmp_path)
    assert result.returncode == 2
    assert str(data_dir / DB_FILE) in result.stderr, result.stderr
    assert "--data-dir" in result.stderr and "Traceback" not in result.stderr


def test_a_damaged_wallet_file_is_refused_before_listening(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    wallet_file = data_dir / "wallet.json"
    Wallet.generate().save(wallet_file)
    doc = json.loads(wallet_file.read_text())
    doc["address"] = "ab" * 20  # the node would pay its rewards to an address its key does not control
    wallet_file.write_text(json.dumps(doc))
    port = free_port()
    result = p2pchain("--port", str(port), "--data-dir", str(data_dir), "--difficulty", str(TEST_BITS))
    assert result.returncode == 2
    assert str(wallet_file) in result.stderr and "corrupt" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
