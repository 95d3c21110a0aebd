"""Who may use the HTTP shim's endpoints that act: mine, spend the node's wallet, make it dial
or download (bitcoind's RPC rules: bound to loopback by default, a cookie file, a fixed token).

- The token is the cookie (``DATA_DIR/.cookie``: 32 random bytes in hex, mode 0600, written at
  each start and removed at a clean stop) or the content of ``--http-token-file``.
- A client sends ``Authorization: Bearer TOKEN`` or HTTP Basic with user ``__cookie__`` and the
  token as password (``curl --user __cookie__:TOKEN``).
- ``auto`` (default): a request from a loopback address needs no token; ``always``: every
  request to a protected endpoint does; ``none``: none does, allowed only on a loopback shim.
- A missing or wrong token is a 401 JSON error with code ``auth-required`` and a
  ``WWW-Authenticate`` header; after HTTP_AUTH_MAX_FAILURES wrong ones (an Authorization header
  that does not match) from one address within HTTP_AUTH_FAILURE_WINDOW_S, that address gets
  429 on the protected endpoints until the window ends. Tokens are compared
  in constant time. Read-only endpoints, and ``POST /transactions`` (a transaction signed
  elsewhere, no more than a peer's NEW_TX), stay open.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import time
from collections import OrderedDict
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from p2pchain import limits
from p2pchain.connmgr import is_loopback
from p2pchain.record import record

if TYPE_CHECKING:  # aiohttp (and its multidict) is loaded by http.py, only when the node serves HTTP
    from aiohttp import web
    from multidict import CIMultiDict

log = logging.getLogger(__name__)

COOKIE_FILE = ".cookie"
COOKIE_USER = "__cookie__"
TOKEN_MIN_CHARS = 16  # a --http-token-file shorter than this is refused: guessable
# The endpoints that act (their canonical route paths, aliases included). Any other route is open.
PROTECTED = frozenset(
    {
        "/mine",
        "/mine_block",
        "/transactions/new",
        "/add_transaction",
        "/nodes/register",
        "/connect_node",
        "/nodes/resolve",
        "/replace_chain",
    }
)


class AuthMode(StrEnum):
    AUTO = "auto"
    ALWAYS = "always"
    NONE = "none"


class AuthConfigError(ValueError):
    """Settings the node must refuse to start with; the message is one line saying what to do."""


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The token in ``path`` (surrounding whitespace stripped); AuthConfigError if unusable."""
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise AuthConfigError(f"cannot read --http-token-file {path}: {getattr(e, 'strerror', None) or e}") from None
    if len(token) < TOKEN_MIN_CHARS or not token.isprintable() or any(c.isspace() for c in token):
        raise AuthConfigError(
            f"--http-token-file {path} must hold one token of at least {TOKEN_MIN_CHARS} printable characters "
            "without spaces (e.g. the output of: openssl rand -hex 32)"
        )
    return token


@record
class AuthSettings:
    """What the command line chose: the mode, and the fixed token if ``--http-token-file``."""

    mode: AuthMode = AuthMode.AUTO
    token: str | None = None  # None: a fresh cookie at each start (unless mode is none)

    def check(self, http_host: str) -> None:
        """Refuse a shim reachable from other hosts with no authentication."""
        if self.mode is AuthMode.NONE and self.token is not None:
            raise AuthConfigError("--http-token-file has no use with --http-auth none: drop one of them")
        if self.mode is AuthMode.NONE and not is_loopback(http_host):
            raise AuthConfigError(
                f"--http-host {http_host} is reachable from other hosts, and --http-auth none would let anyone "
                "mine and spend this node's wallet: remove --http-auth none (a cookie is then written to the "
                "data dir) or add --http-token-file FILE"
            )


def write_cookie(path: Path) -> str:
    """A new random token in ``path``, mode 0600 from the moment it exists (written aside, then
    renamed over any stale cookie, so no reader sees a half-written or wider-open file)."""
    import secrets  # (with base64 below: loaded only by a node that serves HTTP, as the cli imports this module)

    token = secrets.token_hex(32)
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return token


class FailureLimiter:
    """Failed attempts per client address in a fixed window; at most HTTP_AUTH_TRACKED_MAX
    addresses are remembered (the oldest window goes first), so no client grows it."""

    def __init__(self, max_failures: int, window_s: float, tracked_max: int) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.tracked_max = tracked_max
        self._by_addr: OrderedDict[str, tuple[float, int]] = OrderedDict()  # addr -> (window start, count)

    def retry_after(self, addr: str, now: float) -> float:
        """Seconds until ``addr`` may try again; 0 if it may now."""
        entry = self._by_addr.get(addr)
        if entry is None:
            return 0.0
        start, count = entry
        if now - start >= self.window_s:
            del self._by_addr[addr]
            return 0.0
        return start + self.window_s - now if count >= self.max_failures else 0.0

    def failed(self, addr: str, now: float) -> None:
        start, count = self._by_addr.pop(addr, (now, 0))
        self._by_addr[addr] = (start, count + 1)
        while len(self._by_addr) > self.tracked_max:
            self._by_addr.popitem(last=False)


class Guard:
    """The shim's authentication: the token, the cookie file it wrote, the failure limiter."""

    def __init__(self, settings: AuthSettings, data_dir: str | os.PathLike[str]) -> None:
        self.mode = settings.mode
        self.cookie: Path | None = None
        self.token: str | None = settings.token
        if self.token is None and self.mode is not AuthMode.NONE:
            self.cookie = Path(data_dir) / COOKIE_FILE
            self.token = write_cookie(self.cookie)
        self.limiter = FailureLimiter(
            limits.HTTP_AUTH_MAX_FAILURES, limits.HTTP_AUTH_FAILURE_WINDOW_S, limits.HTTP_AUTH_TRACKED_MAX
        )

    def describe(self) -> str:
        if self.mode is AuthMode.NONE:
            return "no authentication (--http-auth none)"
        where = f"cookie {self.cookie}" if self.cookie is not None else "--http-token-file"
        scope = "from other hosts" if self.mode is AuthMode.AUTO else "from every client"
        return f"token ({where}) required {scope} for {', '.join(sorted(PROTECTED))}"

    def close(self) -> None:
        """Remove the cookie (a clean stop): a stale one must not look valid."""
        if self.cookie is not None:
            with contextlib.suppress(FileNotFoundError):
                self.cookie.unlink()

    def presented(self, header: str | None) -> str | None:
        """The token in an Authorization header (Bearer, or Basic ``__cookie__:TOKEN``)."""
        if not header:
            return None
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            return value
        if scheme.lower() == "basic":
            import base64  # (loaded by the first Basic header: this module is imported by every node's cli)

            try:
                user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):  # binascii.Error, and a value that is not ASCII
                return None
            return password if sep and user == COOKIE_USER else None
        return None

    def needs_token(self, remote: str | None) -> bool:
        if self.mode is AuthMode.NONE:
            return False
        return self.mode is AuthMode.ALWAYS or remote is None or not is_loopback(remote)

    def allows(self, token: str | None) -> bool:
        expected = self.token
        if token is None or expected is None:
            return False
        # constant time; a header's bytes that are not UTF-8 reach us as lone surrogates
        # (surrogateescape), which plain encode() refused with a 500 (found by fuzz/http_bodies.py)
        return hmac.compare_digest(token.encode("utf-8", "surrogateescape"), expected.encode())


@record
class Denial:
    """A refused request: the HTTP status, the error JSON's message and code, extra headers."""

    status: int
    message: str
    code: str
    headers: CIMultiDict[str]


def check(guard: Guard, request: web.Request) -> Denial | None:
    """None if ``request`` may go on to its handler, else why not."""
    from multidict import CIMultiDict  # here, not at the top: the CLI imports this module for every node

    resource = request.match_info.route.resource
    if resource is None or resource.canonical not in PROTECTED or not guard.needs_token(request.remote):
        return None
    addr = request.remote or "?"
    now = time.monotonic()
    wait = guard.limiter.retry_after(addr, now)
    if wait > 0:
        retry = int(wait) + 1
        message = f"too many failed authentication attempts from {addr}: try again in {retry} s"
        return Denial(429, message, "auth-rate-limited", CIMultiDict({"Retry-After": str(retry)}))
    header = request.headers.get("Authorization")
    if guard.allows(guard.presented(header)):
        return None
    if header is not None:  # a guess: counted (no credentials at all guess nothing)
        guard.limiter.failed(addr, now)
    log.log(
        logging.WARNING if header else logging.INFO,
        "HTTP %s %s from %s: %s token",
        request.method,
        request.path,
        addr,
        "wrong" if header else "no",
    )
    headers = CIMultiDict([("WWW-Authenticate", 'Bearer realm="p2pchain"')])
    headers.add("WWW-Authenticate", 'Basic realm="p2pchain"')
    where = "the node's DATA_DIR/.cookie" if guard.cookie is not None else "the node's --http-token-file"
    message = (
        f"{request.path} needs the node's token: send 'Authorization: Bearer TOKEN' or "
        f"'curl --user {COOKIE_USER}:TOKEN', the token being in {where}"
    )
    return Denial(401, message, "auth-required", headers)
