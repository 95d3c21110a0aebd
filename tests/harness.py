"""Multi-process test harness in the spirit of Bitcoin Core's functional test framework.

``NodeProc`` runs ``python -m p2pchain`` on free loopback ports with its own data dir and log;
``wait_until`` polls a predicate against a deadline and says what it waited for. Every process
a test starts is stopped by the fixture that made it (see conftest.py ``nodes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2pchain.client import Client

TEST_BITS = 12  # difficulty for tests: ~4,000 hashes a block, milliseconds per block


def _ephemeral_low() -> int:
    """The first port of the kernel's range for outgoing connections' local ports."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


PORTS_FROM = 20000  # node ports are drawn from PORTS_FROM up to the ephemeral range
_ports_given: set[int] = set()
_port_rng = random.Random()


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range, not handed out before in this
    process. A port the kernel picks (bind to 0) comes from that range, from which every outgoing
    connection also takes its local port: while a node is down (a restart, a churn test), another
    node's dial could take its port and keep it from listening again ("address already in use",
    seen in test_faults' churn)."""
    high = _ephemeral_low()
    for _ in range(1000):  # bounded: the range has thousands of free ports
        port = _port_rng.randrange(PORTS_FROM, high)
        if port in _ports_given:
            continue
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            _ports_given.add(port)
            return port
    raise RuntimeError(f"no free port in {PORTS_FROM}..{high - 1}")


CI_SEED = 1  # the seed of every randomly drawn test scenario under CI=true (random_seed)


def random_seed(env: str) -> int:
    """The seed of a test that draws its scenario or inputs at random: ``$env`` if set (a replay);
    under CI=true always CI_SEED, so that CI cannot turn red by chance on a seed no run before it
    tried (finding a bug with a new seed is the job of developers' runs, which draw a fresh seed
    every time; such a seed is then a regression case with a fixed seed); else a fresh one. The
    caller says it in its failure message or prints it, with ``env``, to replay it."""
    if os.environ.get(env):
        return int(os.environ[env])
    if os.environ.get("CI") == "true":
        return CI_SEED
    return random.randrange(2**32)


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition", poll: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns a truthy value (returned) or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as e:  # a node still starting up: keep polling, report the last error
            last_error = e
            value = None
        if value:
            return value
        time.sleep(poll)  # poll interval, not synchronisation
    raise AssertionError(
        f"timed out after {timeout:g} s waiting for {what}" + (f" (last error: {last_error})" if last_error else "")
    )


async def until(predicate: Callable[[], Any], what: str, timeout: float = 15.0, poll: float = 0.02) -> None:
    """``wait_until`` inside an event loop (in-process nodes): poll without blocking the loop."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(poll)  # poll interval, not synchronisation
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}") from None


class NodeProc:
    """One node process. ``args`` are extra command-line flags."""

    def __init__(
        self, root: Path, name: str, *, bits: int = TEST_BITS, args: list[str] | None = None, http: bool = True
    ) -> None:
        self.name = name
        self.bits = bits
        self.data_dir = root / name
        self.log_path = root / f"{name}.log"
        self.port = free_port()
        self.http_port: int | None = free_port() if http else None
        self.args = list(args or [])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "p2pchain",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--difficulty",
            str(self.bits),
            "--log-level",
            "DEBUG",
        ]
        if self.http_port is not None:
            cmd += ["--http-port", str(self.http_port)]
        return cmd + self.args

    def start(self, extra: list[str] | None = None, wait: bool = True) -> NodeProc:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already running"
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            self.command() + list(extra or []),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            return self.status() is not None if self.http_port else self._tcp_open()

        wait_until(ready, timeout, f"{self.name} to start")

    def _tcp_open(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True
        return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # --- HTTP -------------------------------------------------------------------------------
    def http(
        self, method: str, path: str, body: Any = None, timeout: float = 30.0, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """(status code, decoded JSON) of a request to this node's HTTP shim."""
        assert self.http_port is not None, f"{self.name} has no HTTP shim"
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw or b"null")
            except ValueError:
                return e.code, raw.decode(errors="replace")

    def status(self) -> dict[str, Any] | None:
        try:
            code, doc = self.http("GET", "/status", timeout=5)
        except OSError:
            return None
        return doc if code == 200 else None

    def height(self) -> int:
        st = self.status()
        return -1 if st is None else int(st["height"])

    def tip(self) -> str | None:
        st = self.status()
        return None if st is None else str(st["tip"])

    # --- protocol client --------------------------------------------------------------------
    def client(self) -> Any:
        """An async context manager: ``async with node.client() as c:``."""
        return _ClientCtx(self.port)

    # --- stopping ---------------------------------------------------------------------------
    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"{self.name} did not exit within {timeout:g} s of signal {sig}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class _ClientCtx:
    def __init__(self, port: int) -> None:
        self.port = port
        self.client: Client | None = None

    async def __aenter__(self) -> Client:
        self.client = await Client.connect("127.0.0.1", self.port)
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        if self.client is not None:
            await self.client.close()


def run(coro: Any, timeout: float = 60.0) -> Any:
    """Run a coroutine to completion from a synchronous test, under a deadline."""

    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())
