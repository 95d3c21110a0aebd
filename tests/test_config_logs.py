"""config file and JSON logs: ``--config FILE`` (TOML, keys named as the long flags, flags win)
and ``--log-format json`` (one JSON object a line).

The file's precedence and every kind of error are checked on the command line's own parser
(each error is one line naming the key and the file, exit 2, nothing started); then two node
processes take their peers, log format and discovery from config files, and every line they
log parses as JSON with the fields a log shipper needs (peer, height, reason).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import NodeFactory
from harness import wait_until

from p2pchain import cli
from p2pchain.config import ConfigError, parse_with_config
from p2pchain.http_auth import AuthMode

PEER_A, PEER_B, PEER_C = "10.0.0.2:7000", "10.0.0.3:7000", "10.0.0.4:7000"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def parse(argv: list[str]) -> Any:
    return parse_with_config(cli.node_parser(), argv)


def test_the_file_sets_defaults_and_flags_override_them(tmp_path: Path) -> None:
    conf = write(
        tmp_path,
        f"""
port = 7001
peer = ["{PEER_A}", "{PEER_B}"]
mine = true
no-discover = true
http-port = 8001
http-host = "0.0.0.0"
http-auth = "always"
data-dir = "chain-data"
log-level = "WARNING"
log-format = "json"
ping-interval = 2.5
""",
    )
    args = parse(["--config", str(conf)])
    assert (args.port, args.peer, args.mine, args.no_discover) == (7001, [PEER_A, PEER_B], True, True)
    assert (args.http_port, args.http_host, args.http_auth) == (8001, "0.0.0.0", AuthMode.ALWAYS)
    assert (args.data_dir, args.log_level, args.log_format, args.ping_interval) == (
        "chain-data",  # (a str: the node names its files with os.path)
        "WARNING",
        "json",
        2.5,
    )
    args = parse(["--port", "7005", "--config", str(conf), "--peer", PEER_C, "--log-format", "text"])
    assert (args.port, args.peer, args.log_format) == (7005, [PEER_C], "text")  # a flag replaces the whole list
    assert args.mine and args.http_port == 8001
    assert parse(["--port", "7002"]).peer == []  # no file, nothing carried over


@pytest.mark.parametrize("flag", ["--config", "--conf", "--config="])
def test_the_file_is_read_whatever_form_of_the_flag_names_it(tmp_path: Path, flag: str) -> None:
    """argparse takes an unambiguous abbreviation of a long flag (``--conf``) and ``--flag=value``:
    the file is read however the command line names it, not only as ``--config FILE``."""
    conf = write(tmp_path, "port = 7003\n")
    argv = [flag + str(conf)] if flag.endswith("=") else [flag, str(conf)]
    assert parse([*argv, "--mine"]).port == 7003


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("prot = 7000", "unknown key 'prot'"),
        ("config = 'other.toml'", "unknown key 'config'"),
        ('port = "seven"', "port = 'seven'"),
        ("port = 70000", "port = 70000"),
        ('port = "7000"', "port must be a number, not a string '7000'"),
        ("host = 127", "host must be a string, not an integer 127"),
        ('ping-interval = "2"', "ping-interval must be a number"),
        ("port = true", "port must be a single number or string, not a boolean"),
        ('mine = "yes"', "mine must be true or false"),
        (f'peer = "{PEER_A}"', "peer must be an array"),
        ('peer = ["nonsense"]', "peer = 'nonsense'"),
        ('log-level = "LOUD"', "log-level = 'LOUD' is not one of"),
        ('http-auth = "sometimes"', "http-auth = 'sometimes'"),
        ("[http]\nport = 1", "unknown key 'http'"),
        ("port = ", "is not valid TOML"),
        ('http-token-file = ""', "an empty path names no file"),
        ('data-dir = ""', "an empty path names no file"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_key_and_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, says: str
) -> None:
    conf = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as caught:
        parse(["--config", str(conf)])
    assert says in str(caught.value) and str(conf) in str(caught.value)
    assert cli.main(["--config", str(conf), "--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and str(conf) in err, err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("flag", ["--http-token-file", "--data-dir", "--config"])
def test_an_empty_path_flag_is_refused_not_taken_as_absent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, flag: str
) -> None:
    """``--http-token-file "$UNSET"`` must not fall back to the cookie (clients would then fail
    to authenticate with no word why), nor ``--data-dir ""`` to ./node<PORT>."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as caught:  # argparse's usage error
        cli.main(["--port", "0", "--http-port", "0", flag, ""])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "an empty path names no file" in err and flag in err, err
    assert not list(tmp_path.iterdir()), "a node started anyway"


def test_a_missing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--config", str(tmp_path / "absent.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read config file" in err and "absent.toml" in err


def test_nodes_configured_by_file_log_json_lines_with_peer_height_and_reason(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    a, b = nodes("a"), nodes("b")
    conf_a = tmp_path / "a.toml"
    conf_a.write_text('log-format = "json"\nno-discover = true\n')
    conf_b = tmp_path / "b.toml"
    conf_b.write_text(f'log-format = "json"\nno-discover = true\npeer = ["{a.addr}"]\n')
    a.start(["--config", str(conf_a)])
    b.start(["--config", str(conf_b)])
    wait_until(lambda: a.status()["peers"] and b.status()["peers"], 20, "b to connect to a (its peer from the file)")
    assert b.stop() == 0

    def lines() -> list[dict[str, Any]]:
        docs = []
        for line in a.log_path.read_text().splitlines():
            doc = json.loads(line)  # every line is one JSON object
            assert {"time", "level", "logger", "message"} <= doc.keys(), doc
            assert doc["time"].endswith("Z") and "T" in doc["time"]
            docs.append(doc)
        return docs

    def dropped() -> list[dict[str, Any]]:
        return [d for d in lines() if "reason" in d and d.get("peer", "").endswith(f":{b.port}")]

    gone = wait_until(dropped, 15, "a to log b's disconnection with a reason")
    assert gone[0]["logger"] == "p2pchain.peer"
    # the handshake's line names b and its height
    assert any(d.get("peer", "").endswith(f":{b.port}") and d.get("height") == 0 for d in lines())
    assert any(d["logger"] == "p2pchain.node" and d["level"] == "INFO" for d in lines())


def test_the_operations_guide_config_example_parses_and_its_keys_are_flags(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    example = doc.split("# /etc/p2pchain/node.toml\n", 1)[1].split("\n\n", 1)[0]
    conf = write(tmp_path, "\n".join(line.removeprefix("    ") for line in example.splitlines()) + "\n")
    args = parse(["--config", str(conf)])
    assert (args.host, args.http_host, args.log_format) == ("0.0.0.0", "0.0.0.0", "json")
    table = doc.split("## The config file", 1)[1].split("\n## ", 1)[0]
    keys = re.findall(r"^\| `([a-z-]+)` \|", table, re.MULTILINE)
    flags = {o[2:] for a in cli.node_parser()._actions for o in a.option_strings if o.startswith("--")}
    assert len(keys) >= 15 and set(keys) <= flags, set(keys) - flags
