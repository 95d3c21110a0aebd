"""http auth: who may mine, spend the node's wallet or make it dial, through the HTTP shim.

Node processes on loopback with each --http-auth mode: the cookie (its mode, its removal at a
clean stop), Bearer and Basic tokens, 401 JSON with WWW-Authenticate that changes nothing, the
per-address failure limit, the endpoints that stay open, a fixed --http-token-file, and the
refusals at start (one line on stderr, exit 2). What a request from another host meets is in
tests/test_multihost.py (network namespaces); here ``always`` takes that path from loopback.
"""

from __future__ import annotations

import base64
import json
import stat
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import NodeFactory
from harness import NodeProc

from p2pchain import cli, limits
from p2pchain.http_auth import COOKIE_FILE, PROTECTED, AuthMode, FailureLimiter, Guard, is_loopback

OTHER = "ab" * 20
ARGS = ["--miner-procs", "1"]


def request(
    node: NodeProc, method: str, path: str, body: Any = None, auth: str | None = None
) -> tuple[int, Any, dict[str, list[str]]]:
    """(status, JSON, headers by lower-case name) of one request; ``auth`` is the Authorization header."""
    assert node.http_port is not None
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{node.http_port}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, raw, msg = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as e:
        status, raw, msg = e.code, e.read(), e.headers
    by_name: dict[str, list[str]] = {}
    for k, v in msg.items():
        by_name.setdefault(k.lower(), []).append(v)
    return status, json.loads(raw or b"null"), by_name


def bearer(token: str) -> str:
    return f"Bearer {token}"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def assert_401(reply: tuple[int, Any, dict[str, list[str]]]) -> None:
    status, doc, headers = reply
    assert (status, doc.get("code")) == (401, "auth-required"), doc
    assert "token" in doc["error"]
    assert {h.split()[0] for h in headers["www-authenticate"]} == {"Bearer", "Basic"}


def cookie_of(node: NodeProc) -> str:
    return (node.data_dir / COOKIE_FILE).read_text().strip()


def test_cookie_is_private_new_at_each_start_and_removed_at_a_clean_stop(nodes: NodeFactory) -> None:
    node = nodes("n", args=ARGS).start()
    path = node.data_dir / COOKIE_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = cookie_of(node)
    assert len(first) == 64 and int(first, 16) >= 0
    assert node.stop() == 0
    assert not path.exists(), "a clean stop must remove the cookie"
    node.start()
    assert cookie_of(node) != first
    # auto: loopback clients need no token, as in the tutorial's curl session
    status, doc, _ = request(node, "GET", "/mine")
    assert (status, doc["message"]) == (200, "New Block Forged")


def test_always_guards_every_acting_endpoint_and_leaves_the_rest_open(nodes: NodeFactory) -> None:
    node = nodes("n", args=[*ARGS, "--http-auth", "always"]).start()
    token = cookie_of(node)
    me = node.http("GET", "/wallet")[1]["address"]

    for method, path, body in [
        ("GET", "/mine", None),
        ("GET", "/mine_block", None),
        ("POST", "/transactions/new", {"recipient": OTHER, "amount": 1}),
        ("POST", "/add_transaction", {"receiver": OTHER, "amount": 1}),
        ("POST", "/nodes/register", {"nodes": ["127.0.0.1:1"]}),
        ("POST", "/connect_node", {"nodes": ["127.0.0.1:1"]}),
        ("GET", "/nodes/resolve", None),
        ("GET", "/replace_chain", None),
    ]:
        assert_401(request(node, method, path, body))
    assert_401(request(node, "GET", "/mine", auth=bearer("0" * 64)))
    assert_401(request(node, "GET", "/mine", auth=basic("alice", token)))  # the user must be __cookie__
    assert_401(request(node, "GET", "/mine", auth="Basic !!notbase64"))
    st = node.status()
    assert st is not None
    assert (st["height"], st["mempool"], st["peers"]) == (0, 0, [])  # nothing happened
    assert node.http("GET", "/status")[0] == 200

    status, mined, _ = request(node, "GET", "/mine", auth=bearer(token))
    assert status == 200 and mined["index"] == 2
    status, doc, _ = request(
        node, "POST", "/transactions/new", {"recipient": OTHER, "amount": 1}, auth=basic("__cookie__", token)
    )
    assert status == 201, doc
    for path in ("/", "/status", "/chain", "/is_valid", f"/balance/{me}", "/wallet", f"/blocks/{mined['hash']}"):
        assert node.http("GET", path)[0] == 200, path
    # a transaction signed elsewhere is no more than a peer's NEW_TX: open (here malformed: 400, not 401)
    status, doc, _ = request(node, "POST", "/transactions", {"sender": me})
    assert (status, doc["code"]) == (400, "missing-field")


def test_failures_from_one_address_are_rate_limited(nodes: NodeFactory) -> None:
    node = nodes("n", args=[*ARGS, "--http-auth", "always"]).start()
    for _ in range(limits.HTTP_AUTH_MAX_FAILURES):
        assert_401(request(node, "GET", "/mine", auth=bearer("wrong-token-0123456789")))
    status, doc, headers = request(node, "GET", "/mine", auth=bearer(cookie_of(node)))
    assert (status, doc["code"]) == (429, "auth-rate-limited"), doc
    assert 0 < int(headers["retry-after"][0]) <= limits.HTTP_AUTH_FAILURE_WINDOW_S + 1
    assert node.height() == 0
    assert node.http("GET", "/status")[0] == 200  # reads stay open


def test_token_file_replaces_the_cookie(nodes: NodeFactory, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("correct-horse-battery-staple-42\n")
    node = nodes("n", args=[*ARGS, "--http-auth", "always", "--http-token-file", str(token_file)]).start()
    assert not (node.data_dir / COOKIE_FILE).exists()
    assert_401(request(node, "GET", "/mine"))
    status, _, _ = request(node, "GET", "/mine", auth=bearer("correct-horse-battery-staple-42"))
    assert status == 200


def test_none_on_a_loopback_shim_needs_no_token_and_writes_no_cookie(nodes: NodeFactory) -> None:
    node = nodes("n", args=[*ARGS, "--http-auth", "none"]).start()
    assert not (node.data_dir / COOKIE_FILE).exists()
    status, doc, _ = request(node, "GET", "/mine", auth=bearer("anything-at-all-0123"))  # a token is not even read
    assert (status, doc["message"]) == (200, "New Block Forged")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--http-host", "0.0.0.0", "--http-auth", "none"], "--http-token-file FILE"),
        (["--http-host", "192.0.2.7", "--http-auth", "none"], "remove --http-auth none"),
        (["--http-token-file", "{dir}/missing"], "cannot read --http-token-file"),
        (["--http-token-file", "{dir}/short"], "at least 16 printable characters"),
        (["--http-auth", "none", "--http-token-file", "{dir}/good"], "drop one of them"),
    ],
)
def test_refused_settings_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    (tmp_path / "short").write_text("abc\n")
    (tmp_path / "good").write_text("x" * 32)
    argv = ["--port", "0", "--http-port", "0", "--data-dir", str(tmp_path / "d")]
    argv += [a.format(dir=tmp_path) for a in args]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err
    assert not (tmp_path / "d").exists(), "nothing may be started or written"


def test_guard_rules_without_a_network() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "::ffff:10.0.0.1", "example.org", "::"))
    assert "/transactions" not in PROTECTED and "/mine" in PROTECTED


def test_guard_token_forms_and_modes(tmp_path: Path) -> None:
    from p2pchain.http_auth import AuthSettings

    guard = Guard(AuthSettings(AuthMode.AUTO, "t" * 20), tmp_path)
    assert guard.presented(bearer("abc")) == "abc"
    assert guard.presented(basic("__cookie__", "abc:def")) == "abc:def"
    assert guard.presented(basic("root", "abc")) is None
    assert guard.presented("Digest abc") is None
    assert guard.allows("t" * 20) and not guard.allows("t" * 19) and not guard.allows(None)
    assert not guard.needs_token("127.0.0.1") and guard.needs_token("10.1.2.3") and guard.needs_token(None)
    assert Guard(AuthSettings(AuthMode.ALWAYS, "t" * 20), tmp_path).needs_token("127.0.0.1")
    assert not Guard(AuthSettings(AuthMode.NONE), tmp_path).needs_token("10.1.2.3")
    assert not (tmp_path / COOKIE_FILE).exists()  # a fixed token or none: no cookie


def test_a_header_that_is_not_ascii_or_utf8_is_a_wrong_token_not_a_500(tmp_path: Path) -> None:
    """Found by fuzz/http_bodies.py: a Bearer token with bytes that are not UTF-8 (aiohttp hands
    them over as lone surrogates) made allows() raise UnicodeEncodeError, and a Basic value that
    is not ASCII made b64decode raise ValueError: both answered 500 instead of 401."""
    from p2pchain.http_auth import AuthSettings

    token = "t" * 20
    guard = Guard(AuthSettings(AuthMode.ALWAYS, token), tmp_path)
    surrogates = b"Bearer \xff\xfe".decode("utf-8", "surrogateescape")
    assert not guard.allows(guard.presented(surrogates))
    assert not guard.allows(guard.presented("Basic \xff\xe9"))
    assert guard.presented("Basic \xff\xe9") is None
    assert guard.allows(guard.presented(bearer(token)))  # the right token still passes


def test_failure_limiter_window_and_bound() -> None:
    lim = FailureLimiter(max_failures=3, window_s=10.0, tracked_max=2)
    for _ in range(3):
        assert lim.retry_after("a", 0.0) == 0
        lim.failed("a", 0.0)
    assert lim.retry_after("a", 1.0) == pytest.approx(9.0)
    assert lim.retry_after("a", 10.0) == 0  # the window ended
    lim.failed("b", 11.0)
    lim.failed("c", 11.0)
    lim.failed("d", 11.0)
    assert len(lim._by_addr) == 2  # the oldest address is forgotten, not the newest


def test_the_cli_offers_every_auth_mode_and_no_other() -> None:
    """cli.py names --http-auth's choices as strings (so that it need not load this module for a
    node without HTTP): they must be AuthMode's values, in its order."""
    assert tuple(mode.value for mode in AuthMode) == cli.AUTH_MODES
