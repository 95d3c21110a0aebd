"""connmgr: address parsing, and which gossiped addresses a node is willing to dial."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pchain.connmgr import ConnectionManager, is_ip_addr, is_loopback, parse_addr
from p2pchain.peer import Tunables
from p2pchain.store import Store


def bare_connmgr(store: Store) -> ConnectionManager:
    """A ConnectionManager on ``store`` with no node behind it: for its bans."""
    return ConnectionManager(
        node_id=b"\1" * 16,
        network=b"\0" * 32,
        store=store,
        make_hello=None,  # type: ignore[arg-type]
        on_hello=None,  # type: ignore[arg-type]
        handle=None,  # type: ignore[arg-type]
        on_close=None,  # type: ignore[arg-type]
        tunables=Tunables(),
    )


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


def test_bans_are_bounded_dropping_the_one_that_ends_soonest(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A many-address attacker cannot grow the ban list (or its table) without bound."""
    from p2pchain import limits

    monkeypatch.setattr(limits, "MAX_BANS", 3)
    store = Store(tmp_path / "chain.sqlite")
    cm = bare_connmgr(store)
    now = [1_000_000]
    monkeypatch.setattr(cm, "_now_ms", lambda: now[0])
    for i in range(5):
        now[0] += 1000
        cm.ban(f"10.0.0.{i}", "test")
    assert sorted(cm.bans) == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
    assert sorted(b.host for b in store.bans(now[0])) == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
    store.close()


def test_an_ipv6_ban_covers_the_addresses_64(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Issue 12, finding 10: bans were per exact address, and an IPv6 host owns a /64 (2**64
    addresses) to walk around them with. An IPv4 ban still covers one address."""
    store = Store(tmp_path / "chain.sqlite")
    cm = bare_connmgr(store)
    cm.ban("2001:db8:1:2::5", "test")
    cm.ban("10.0.0.1", "test")
    assert cm.is_banned("2001:db8:1:2:ffff:1:2:3")
    assert not cm.is_banned("2001:db8:1:3::5")
    assert not cm.is_banned("10.0.0.2")
    assert sorted(b.host for b in cm.current_bans()) == ["10.0.0.1", "2001:db8:1:2::/64"]
    store.close()


def test_the_mempool_push_goes_once_per_address_and_a_bounded_number_of_times_per_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12, finding 10 (tests/test_p2p_mempool_push.py runs it through a node): an address
    gets the push once per MEMPOOL_PUSH_INTERVAL_S, a host at most MEMPOOL_PUSHES_PER_HOST times
    in it whatever ports it claims, loopback without the host bound unless --ban-loopback; a
    client (no listening address) never."""
    from p2pchain import connmgr, limits

    now = [1000.0]
    monkeypatch.setattr(connmgr.time, "monotonic", lambda: now[0])
    store = Store(tmp_path / "chain.sqlite")
    cm = bare_connmgr(store)
    allowed = cm.mempool_push_allowed
    assert not allowed(None, "10.0.0.1")
    assert [allowed("10.0.0.1:7000", "10.0.0.1") for _ in range(3)] == [True, False, False]
    ports = range(7001, 7001 + limits.MEMPOOL_PUSHES_PER_HOST)
    assert [allowed(f"10.0.0.1:{p}", "10.0.0.1") for p in ports] == [True] * (limits.MEMPOOL_PUSHES_PER_HOST - 1) + [
        False
    ]
    assert allowed("[2001:db8::1]:7000", "2001:db8::1") and allowed("10.0.0.2:7000", "10.0.0.2")  # other hosts
    loopback = [allowed(f"127.0.0.1:{p}", "127.0.0.1") for p in range(8000, 8000 + 2 * limits.MEMPOOL_PUSHES_PER_HOST)]
    assert all(loopback)  # a local swarm shares 127.0.0.1
    now[0] += limits.MEMPOOL_PUSH_INTERVAL_S + 1
    assert allowed("10.0.0.1:7000", "10.0.0.1")  # the interval passed
    cm.ban_loopback = True  # (the pushes above are forgotten: the interval passed)
    assert all(allowed(f"127.0.0.1:{p}", "127.0.0.1") for p in ports)
    assert not allowed("127.0.0.1:9999", "127.0.0.1")  # --ban-loopback: the host bound applies
    store.close()
