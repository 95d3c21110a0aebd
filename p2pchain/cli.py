"""The command line: `p2pchain --port 7000 --peer host:7001 ...` runs a node."""

from __future__ import annotations

import gc
import sys

# A process that starts here (not yet running asyncio: the node's, a wallet command's), whether
# as `python -m p2pchain` or as the `p2pchain` console script:
# - importing what a node needs allocates some 100,000 objects that live as long as the process,
#   and the cyclic garbage collector would traverse them again and again meanwhile: it is off
#   until these imports are done (and, for a node, until it listens: run_node_command);
# - asyncio imports ssl at its own import only to offer TLS, which neither a node nor the wallet
#   commands speak (peers, clients and the HTTP shim are plain TCP): the ssl module costs a start
#   about 5 ms and its memory about 1 MB. asyncio is imported with ssl hidden, then ssl is
#   importable again for whatever wants it later (aiohttp, with --http-port, imports its own);
# - asyncio imports inspect (which imports ast and dis) for what a node never calls (debug checks,
#   the reprs of callbacks; loop.add_signal_handler's check, which StopSignals does without), and
#   so does dataclasses: ~18 M instructions, 6 % of a node's start. inspect is imported when first
#   used (p2pchain.onfirstuse), so a node that does not use it never loads it.
if "asyncio" not in sys.modules:
    _STARTING = gc.isenabled()  # (and so to be enabled again)
    gc.disable()
    from p2pchain.onfirstuse import UNUSED_AT_START, OnFirstUse

    for _name in UNUSED_AT_START:
        if _name not in sys.modules:
            sys.modules[_name] = OnFirstUse(_name)
    sys.modules["ssl"] = None  # type: ignore[assignment]  # import ssl raises ImportError meanwhile
    try:
        import asyncio
    finally:
        del sys.modules["ssl"]
else:
    _STARTING = False

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from p2pchain import __version__, limits, logs
from p2pchain import config as config_file
from p2pchain.connmgr import parse_addr
from p2pchain.errors import StoreError, WalletError
from p2pchain.keys import is_address
from p2pchain.node import RELAY_MODES, VERIFY_PROCS_DEFAULT, NodeConfig, run_node
from p2pchain.params import DEFAULT_BITS, DEFAULT_HALF_LIFE_BLOCKS, NetworkParams
from p2pchain.peer import Tunables

if TYPE_CHECKING:
    from p2pchain.http_auth import AuthSettings

if _STARTING:
    # what the imports made lives as long as the process: moved out of the collector's generations
    # (no collection traverses it again), which also empties the youngest one, so enabling the
    # collector does not start one at once (that collection of ~100,000 objects cost 8.6 M
    # instructions, 3 % of a node's start)
    gc.freeze()
    gc.enable()

log = logging.getLogger(__name__)

# --http-auth's choices: p2pchain.http_auth.AuthMode's values, as strings here, so that the module
# (with hmac) loads only for a node that serves HTTP or reads a token file (http_auth_settings)
AUTH_MODES = ("auto", "always", "none")


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def _peer(text: str) -> str:
    try:
        parse_addr(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _address(text: str) -> str:
    if not is_address(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an address (40 lowercase hex digits)")
    return text


def _bits(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r}: difficulty is 1..64 leading zero bits")
    return int(text)


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (also used by scripts/swarm.py)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _procs(text: str) -> int:
    """argparse type: a whole number of processes, 0 .. 64."""
    if not text.isdigit() or int(text) > 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 0 to 64")
    return int(text)


def _millis(text: str) -> int:
    """Seconds (a decimal number) as whole milliseconds, 0.01 s .. 49 days (a u32 of ms)."""
    try:
        value = round(float(text) * 1000)
    except (ValueError, OverflowError):
        value = -1
    if not 10 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0.01 .. 4294967)")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0-3600)")
    return value


def _path(text: str) -> str:
    """A file or directory name, kept as str (a node starts without pathlib); an empty one (an
    unset shell variable, ``key = ""`` in a config file) is refused, not read as "none given"."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path names no file")
    return text


def terminal_columns() -> int:
    """``shutil.get_terminal_size().columns`` (COLUMNS, else the terminal of stdout, else 80)
    without importing shutil, which loads zlib, bz2 and lzma: argparse's default help formatter
    imports it when a parser is built (a formatter checks each added argument), not only for --help."""
    with contextlib.suppress(KeyError, ValueError):
        if (columns := int(os.environ["COLUMNS"])) > 0:
            return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, as wide as it would make itself (its width less 2)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=terminal_columns() - 2)


def node_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="p2pchain",
        formatter_class=HelpFormatter,
        description="Run a p2pchain node: a peer-to-peer proof-of-work blockchain node.",
        epilog="Wallet and query commands: p2pchain wallet|balance|send|status|chain|tx --help",
    )
    p.add_argument("--version", action="version", version=f"p2pchain {__version__}")
    p.add_argument(  # (paths are str: a node starts without pathlib, see NodeConfig.data_dir)
        "--config",
        type=_path,
        metavar="FILE",
        help="read flags from this TOML file, keys named as the long flags (port = 7000, peer = [...]); "
        "flags given here override it",
    )
    p.add_argument("--port", type=_port, default=7000, help="TCP port for peers (default 7000; 0 picks a free one)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 listens on every interface)",
    )
    p.add_argument(
        "--peer",
        type=_peer,
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a peer to keep connected to; repeat for several",
    )
    p.add_argument(
        "--no-discover",
        action="store_true",
        help="dial only the --peer addresses, never addresses learnt from other peers (fixed topologies)",
    )
    p.add_argument("--data-dir", type=_path, help="where the chain, wallet and bans live (default ./node<PORT>)")
    p.add_argument("--mine", action="store_true", help="mine blocks continuously")
    p.add_argument("--miner-procs", type=positive_int, help="mining processes (default: one per core)")
    p.add_argument(
        "--verify-procs",
        type=_procs,
        default=VERIFY_PROCS_DEFAULT,
        help="processes that check arriving transactions' signatures, started on the first ones and "
        f"gone after {limits.VERIFY_PROC_IDLE_S:g} s without any (default: one per core on more than one core; "
        "0: threads of the node's process check them)",
    )
    p.add_argument(
        "--reward-to",
        type=_address,
        metavar="ADDRESS",
        help="pay mining rewards to this address (default: the node's own wallet)",
    )
    p.add_argument("--http-port", type=_port, help="serve the HTTP shim (tutorial endpoints, /status) on this port")
    p.add_argument(
        "--http-host",
        default="127.0.0.1",
        help="address the HTTP shim listens on (default 127.0.0.1, whatever --host is); any other "
        "address needs authentication on (see --http-auth)",
    )
    p.add_argument(
        "--http-auth",
        choices=AUTH_MODES,
        default=AUTH_MODES[0],
        help="who needs the token for /mine, /transactions/new, /nodes/register and /nodes/resolve: "
        "auto (default: clients not on loopback), always (every client), none (nobody; loopback "
        "--http-host only). The token is in DATA_DIR/.cookie (new at each start) or --http-token-file",
    )
    p.add_argument(
        "--http-token-file",
        type=_path,
        metavar="FILE",
        help="a fixed token (one line, at least 16 characters) instead of the cookie",
    )
    p.add_argument(
        "--difficulty",
        type=_bits,
        default=DEFAULT_BITS,
        help=f"leading zero bits per block hash, the target 2**(256-BITS) (default {DEFAULT_BITS}); "
        "with --block-time the start difficulty; part of the network id",
    )
    p.add_argument(
        "--block-time",
        type=_millis,
        metavar="SECONDS",
        help="retarget every block (ASERT) so that blocks come this many seconds apart; "
        "without it the difficulty is fixed; part of the network id",
    )
    p.add_argument(
        "--half-life",
        type=_millis,
        metavar="SECONDS",
        help=f"with --block-time: seconds ahead of (behind) schedule that double (halve) the target "
        f"(default {DEFAULT_HALF_LIFE_BLOCKS} block times); part of the network id",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default INFO)",
    )
    p.add_argument(
        "--log-format",
        default="text",
        choices=logs.FORMATS,
        help="text (default), or json: one JSON object a line (time, level, logger, message, peer, height, reason)",
    )
    p.add_argument(
        "--ban-loopback",
        action="store_true",
        help="treat loopback peers like remote ones: ban them for misbehaviour and hold them to the "
        "per-address connection limit (by default they are only disconnected; for tests)",
    )
    p.add_argument(
        "--relay",
        choices=RELAY_MODES,
        default=RELAY_MODES[0],
        help="compact (default): announce transactions by id and send blocks compact to peers that "
        "speak it (protocol version 2); flood: speak version 1, every transaction and block in full",
    )
    p.add_argument(
        "--ping-interval",
        type=_seconds,
        default=limits.PING_INTERVAL_S,
        help=f"seconds of silence before a PING (default {limits.PING_INTERVAL_S:g}); "
        "the PONG must follow within as long again",
    )
    return p


def tune_interpreter() -> None:
    """The process-wide interpreter settings a node runs with: the GIL switch interval
    (limits.GIL_SWITCH_INTERVAL_S), the garbage collector's young threshold
    (limits.GC_YOUNG_THRESHOLD) and glibc's mmap threshold (limits.MALLOC_MMAP_THRESHOLD_BYTES).
    They belong to whoever owns the process: the node command sets them; tests that embed a Node
    keep Python's defaults, and the benches that embed one to measure what a node process does set
    them too (docs/benchmarks.md)."""
    sys.setswitchinterval(limits.GIL_SWITCH_INTERVAL_S)  # the store's thread gets the GIL back sooner
    gc.set_threshold(limits.GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])  # a sync's batches are not promoted
    # glibc raises its mmap threshold to the size of the largest mmapped block freed (mallopt(3)):
    # one made and freed now, so that asyncio's 256 KiB socket reads come from the heap. (Not
    # mallopt itself: ctypes would cost a start ~3 ms; another C library ignores this.) bytes, not
    # bytearray: bytes(n) is calloc'd, and a fresh mapping is zero already, so none of its 256
    # pages is touched; bytearray(n) writes zeros over all of them (page faults, ~0.5 ms of a start)
    bytes(limits.MALLOC_MMAP_THRESHOLD_BYTES)


def collect_again(node: object) -> None:
    """run_node's on_ready: the garbage collector, off while a process starts, is on again."""
    gc.enable()


class StopSignals:
    """SIGINT and SIGTERM stop the node, by loop.add_signal_handler's mechanism without its check
    that the callback is no coroutine function, which imports inspect (see the top of this
    module): ``installed()``, around asyncio.run in the main thread, sets the handlers (so that
    asyncio.run leaves SIGINT to them too) and puts the previous ones back after; ``waking(stop)``,
    in the loop, makes a signal set ``stop``. The handler runs in the main thread; the signal
    module's C handler writes to the wakeup fd, which wakes the loop whichever thread the signal
    reached. A signal before ``waking`` (while the node is built) stops the node once started."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received = False
        self._stop: Callable[[], object] | None = None

    def _on_signal(self, signum: int, frame: object) -> None:
        self.received = True
        if self._stop is not None:
            self._stop()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in self.SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @contextlib.contextmanager
    def waking(self, stop: asyncio.Event) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        wake_r, wake_w = socket.socketpair()
        with wake_r, wake_w:
            wake_r.setblocking(False)
            wake_w.setblocking(False)
            loop.add_reader(wake_r, _drain, wake_r)
            previous_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
            self._stop = functools.partial(loop.call_soon_threadsafe, stop.set)
            if self.received:
                stop.set()
            try:
                yield
            finally:
                self._stop = None
                signal.set_wakeup_fd(previous_fd)
                loop.remove_reader(wake_r)


def _drain(sock: socket.socket) -> None:
    """Empty the wakeup socket (one byte per signal): waking the loop was its only purpose."""
    with contextlib.suppress(OSError):
        sock.recv(4096)


def http_auth_settings(args: argparse.Namespace) -> AuthSettings | None:
    """What --http-auth and --http-token-file ask of the HTTP shim, checked against --http-host;
    None (p2pchain.http_auth not loaded) for a node that neither serves HTTP nor names a token
    file. AuthConfigError (a ValueError) for settings the node must refuse."""
    if args.http_port is None and args.http_token_file is None:
        return None
    from p2pchain.http_auth import AuthMode, AuthSettings, read_token_file

    token = read_token_file(args.http_token_file) if args.http_token_file is not None else None
    auth = AuthSettings(AuthMode(args.http_auth), token)
    if args.http_port is not None:
        auth.check(args.http_host)
    return auth


def run_node_command(argv: list[str]) -> int:
    try:
        args = config_file.parse_with_config(node_parser(), argv)
        auth = http_auth_settings(args)
    except (config_file.ConfigError, ValueError) as e:  # ValueError: http_auth.AuthConfigError
        print(f"p2pchain: {e}", file=sys.stderr)
        return 2
    if args.half_life is not None and args.block_time is None:
        print("p2pchain: --half-life needs --block-time (without it the difficulty is fixed)", file=sys.stderr)
        return 2
    logs.setup(args.log_level, args.log_format)
    config = NodeConfig(
        data_dir=args.data_dir or f"node{args.port}",
        host=args.host,
        port=args.port,
        peers=args.peer,
        params=NetworkParams(
            bits=args.difficulty, block_time_ms=args.block_time or 0, half_life_ms=args.half_life or 0
        ),
        mine=args.mine,
        miner_procs=args.miner_procs,
        verify_procs=args.verify_procs,
        http_port=args.http_port,
        http_host=args.http_host,
        reward_to=args.reward_to,
        ban_loopback=args.ban_loopback,
        discover=not args.no_discover,
        relay=args.relay,
        tunables=Tunables(ping_interval=args.ping_interval, pong_timeout=args.ping_interval),
    )

    signals = StopSignals()

    async def serve() -> None:
        stop = asyncio.Event()
        start_http = None
        if auth is not None and config.http_port is not None:
            from p2pchain.http import start_http as http_starter  # aiohttp is loaded only with --http-port

            start_http = functools.partial(http_starter, auth=auth)
        with signals.waking(stop):
            await run_node(config, stop, on_ready=collect_again if _STARTING else None, start_http=start_http)

    tune_interpreter()
    if _STARTING:
        gc.disable()  # until the node listens (see the top of this module): its store's index loads meanwhile
    try:
        with signals.installed():
            asyncio.run(serve())
    except (StoreError, WalletError) as e:
        print(f"p2pchain: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"p2pchain: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and not argv[0].startswith("-"):  # a node's arguments are all options: the wallet's code only here
        from p2pchain.wallet_cli import COMMANDS, run_command

        if argv[0] in COMMANDS:  # p2pchain wallet|balance|send|status|chain|tx ...
            return run_command(argv)
    return run_node_command(argv)
