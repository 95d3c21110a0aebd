"""connmgr: address parsing, and which gossiped addresses a node is willing to dial."""

from __future__ import annotations

import pytest

from p2pchain.connmgr import is_ip_addr, is_loopback, parse_addr


@pytest.mark.parametrize(
    ("text", "want"),
    [("127.0.0.1:7000", ("127.0.0.1", 7000)), ("[::1]:7001", ("::1", 7001)), ("node.example:80", ("node.example", 80))],
)
def test_parse_addr(text: str, want: tuple[str, int]) -> None:
    assert parse_addr(text) == want


@pytest.mark.parametrize("text", ["7000", "host:", ":7000", "host:0", "host:65536", "host:x", ""])
def test_parse_addr_refuses_what_is_not_host_port(text: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_addr(text)


@pytest.mark.parametrize(
    ("addr", "dialable"),
    [
        ("10.1.2.3:7000", True),
        ("[::1]:7000", True),
        ("localhost:7000", False),
        ("evil.example:7000", False),
        ("a..b:7000", False),
        ("1.2.3.4:0", False),
    ],
)
def test_only_ip_literals_are_learnt_from_peers(addr: str, dialable: bool) -> None:
    """A PEERS message must not make a node resolve names the sender chose."""
    assert is_ip_addr(addr) is dialable


def test_loopback() -> None:
    assert is_loopback("127.0.0.5") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("10.0.0.1") and not is_loopback("example.com")
