"""start-up: a node loads only what it uses, whichever way it is started.

A node without --http-port never loads the HTTP stack, nor what only the HTTP shim, a config
file or TLS would need, nor Ed25519 (pyca/cryptography) before a signature is checked; with
--http-port the shim is there and answers. Each case runs a real node
process (as `python -m p2pchain` and as the `p2pchain` console script, README's two commands),
talks to it, stops it, and reads the modules it had loaded when it exited: a sitecustomize put on
PYTHONPATH writes ``sys.modules`` at exit (and whether the garbage collector, off while a node
starts, is on, and the interpreter settings the node command sets). The help text, made without shutil, is as wide as
argparse's own formatter makes it. After the node command's interpreter settings, glibc serves
asyncio's 256 KiB socket reads from its heap.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from harness import TEST_BITS, NodeProc, run

from p2pchain import limits
from p2pchain.cli import node_parser
from p2pchain.keys import Wallet
from p2pchain.onfirstuse import OnFirstUse
from p2pchain.threadpool import ThreadPoolOnFirstUse

# module -> why a node without --http-port (or --config) must not load it
NOT_LOADED = {
    "aiohttp": "the HTTP shim's web framework: only with --http-port",
    "multidict": "aiohttp's",
    "p2pchain.http": "the HTTP shim",
    "p2pchain.explorer": "the block explorer (mounted by the HTTP shim)",
    "ssl": "asyncio offers TLS, which no p2pchain process speaks (hidden while asyncio loads)",
    "tomllib": "read only with --config",
    "shutil": "argparse's help formatter imports it (and zlib, bz2, lzma) for the terminal's width",
    "secrets": "the HTTP shim's cookie",
    "base64": "the HTTP shim's Basic authentication",
    "p2pchain.http_auth": "the HTTP shim's authentication (--http-auth is a string until then)",
    "hmac": "the HTTP shim's token comparison",
    "cryptography": "Ed25519, loaded at the first signature to check or make (the wallet file has its check)",
    "ast": "inspect's: asyncio and dataclasses import inspect, which a node never uses (UNUSED_AT_START)",
    "token": "tokenize's, which linecache imports to read source lines for a traceback (UNUSED_AT_START)",
    "dis": "inspect's, as ast",
    "_hashlib": "OpenSSL's digests, ~10 M instructions to load: p2pchain.digests takes the interpreter's own",
    "pathlib": "a node names its files with os.path; setuptools' editable import hook loaded it in every "
    "process until pyproject.toml named the package dir (then the install is a plain .pth path)",
    "urllib.parse": "pathlib's (with pathlib and ipaddress ~17 M instructions, 7 % of a start)",
    "ipaddress": "read only for an IP literal not in inet_ntop's form (addrman.ip_bytes): a peer's never is",
    "p2pchain.miner": "the nonce search and its worker processes: imported at the first block mined",
}
LAUNCHERS = {
    "python -m p2pchain": [sys.executable, "-m", "p2pchain"],
    "p2pchain": [str(Path(sys.executable).parent / "p2pchain")],  # the console script bootstrap.py installs
}
SITECUSTOMIZE = """\
import atexit, builtins, gc, os, sys
compiled = []
def compile(source, *args, __compile=builtins.compile, **kwargs):
    if isinstance(source, str):  # (not a module's source bytes, which importlib compiles when its bytecode is stale)
        compiled.append(repr(source)[:40].replace(" ", "_"))
    return __compile(source, *args, **kwargs)
builtins.compile = compile
def dump():
    lines = [*sorted(sys.modules), f"gc:{gc.isenabled()}", f"gc0:{gc.get_threshold()[0]}"]
    lines += [f"compiled:{source}" for source in compiled]
    lines.append(f"switch:{sys.getswitchinterval()}")
    open(os.environ["P2PCHAIN_TEST_MODULES"], "w").write("\\n".join(lines))
atexit.register(dump)
"""


def modules_of_a_run(tmp_path: Path, launcher: list[str], *flags: str) -> tuple[set[str], NodeProc]:
    """The modules a node had loaded when it exited, after a client's handshake and STATUS query."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    out = tmp_path / "modules.txt"
    node = NodeProc(tmp_path, "n0", bits=TEST_BITS, http="--http-port" in flags)
    Wallet.generate().save(node.data_dir / "wallet.json")  # a restart's (a new one is made with Ed25519)
    cmd = launcher + node.command()[3:] + [f for f in flags if f != "--http-port"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "P2PCHAIN_TEST_MODULES": str(out)}
    with open(node.log_path, "wb") as log:
        node.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        node.wait_ready(30)  # the P2P port open (and /status answered, with --http-port)

        async def talk() -> None:
            async with node.client() as client:
                assert (await client.status())["height"] == 0

        run(talk(), timeout=30)
        assert node.stop(signal.SIGTERM) == 0, node.log_tail()
    finally:
        node.kill()
    return set(out.read_text().split()), node


@pytest.mark.parametrize("launcher", LAUNCHERS, ids=list(LAUNCHERS))
def test_a_node_without_http_loads_only_what_it_uses(tmp_path: Path, launcher: str) -> None:
    loaded, _ = modules_of_a_run(tmp_path, LAUNCHERS[launcher])
    assert "p2pchain.node" in loaded and "asyncio" in loaded  # (the list is the node's)
    assert "gc:True" in loaded  # the garbage collector, off while the node started, is on again
    # the process's interpreter settings, which the node command sets (cli.tune_interpreter)
    assert {f"gc0:{limits.GC_YOUNG_THRESHOLD}", f"switch:{limits.GIL_SWITCH_INTERVAL_S}"} <= loaded
    wrong = {name: why for name, why in NOT_LOADED.items() if name in loaded}
    assert not wrong, f"a node without --http-port loaded: {wrong}"
    # a process's first compile() builds every AST type (~9 M instructions, 3 % of a start): a
    # node compiles nothing (typing.NamedTuple's class form compiles its string annotations)
    assert not [line for line in loaded if line.startswith("compiled:")], "a node without --http-port called compile()"


def test_with_http_port_the_shim_is_loaded_and_answers(tmp_path: Path) -> None:
    loaded, node = modules_of_a_run(tmp_path, LAUNCHERS["python -m p2pchain"], "--http-port")
    assert {"aiohttp", "p2pchain.http", "p2pchain.explorer", "secrets"} <= loaded
    assert node.log_path.read_text().count("Traceback") == 0


@pytest.mark.parametrize("columns", ["50", "150"])
def test_help_is_as_wide_as_argparse_would_make_it(monkeypatch: pytest.MonkeyPatch, columns: str) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    reference = node_parser()
    reference.formatter_class = argparse.HelpFormatter  # argparse's own, which asks shutil
    assert node_parser().format_help() == reference.format_help()


MALLOC_CHECK = """\
import ctypes, sys
from p2pchain import limits
from p2pchain.cli import tune_interpreter
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS.split()]
libc = ctypes.CDLL(None)
if not hasattr(libc, "mallinfo2"):
    print("no glibc >= 2.33"); sys.exit(0)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1:] == ["tuned"]:
    tune_interpreter()
before = libc.mallinfo2().hblks
buf = b"\\0" * (limits.MALLOC_MMAP_THRESHOLD_BYTES - 64 * 1024)
print(libc.mallinfo2().hblks - before)
"""


def test_the_node_command_serves_large_allocations_from_the_heap() -> None:
    """asyncio's socket reads each ask for 256 KiB: after tune_interpreter (what the node command
    and the benches call), glibc serves a block of up to MALLOC_MMAP_THRESHOLD_BYTES from its heap,
    not with a mapping of its own (an mmap, page faults and a munmap for every read)."""
    untuned, tuned = (
        subprocess.run(
            [sys.executable, "-c", MALLOC_CHECK, *how], capture_output=True, text=True, timeout=60, check=True
        )
        for how in ([], ["tuned"])
    )
    if tuned.stdout.startswith("no glibc"):
        pytest.skip("mallinfo2 needs glibc 2.33 or later")
    # the control: without tune_interpreter the same block gets a mapping of its own
    assert untuned.stdout.strip() == "1", f"mapped blocks added by one allocation, untuned: {untuned.stdout!r}"
    assert tuned.stdout.strip() == "0", f"mapped blocks added by one allocation: {tuned.stdout!r}"


def test_a_module_on_first_use_is_imported_then_and_is_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """p2pchain.onfirstuse (how a node defers inspect): ``import`` gives the stand-in without
    running the module; the first name read imports it, and the stand-in then has the module's
    names, as the module in sys.modules has; a name the module lacks is an AttributeError."""
    name = "colorsys"  # a small stdlib module that nothing here imports
    monkeypatch.delitem(sys.modules, name, raising=False)
    stand_in = OnFirstUse(name)
    monkeypatch.setitem(sys.modules, name, stand_in)
    import colorsys

    assert colorsys is stand_in and "rgb_to_hsv" not in vars(stand_in)  # not run yet
    assert colorsys.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
    real = sys.modules[name]
    assert real is not stand_in and real.rgb_to_hsv is stand_in.rgb_to_hsv
    from colorsys import hls_to_rgb

    assert hls_to_rgb is real.hls_to_rgb
    with pytest.raises(AttributeError):
        stand_in.no_such_name  # noqa: B018


DEFERRED_CHECK = """\
import sys
import p2pchain.cli as cli
from p2pchain.onfirstuse import UNUSED_AT_START, OnFirstUse
assert all(type(sys.modules[name]) is OnFirstUse for name in UNUSED_AT_START)
assert not {"ast", "dis", "token"} & set(sys.modules)
import traceback
def fails():
    raise ValueError("the source line of this raise shows in the traceback")
try:
    fails()
except ValueError:
    print(traceback.format_exc())  # linecache reads the lines with tokenize
cli.node_parser().print_help()  # argparse wraps the help with textwrap
import inspect
print(inspect.signature(fails))
import copy
assert copy.deepcopy({"a": [1]}) == {"a": [1]}
print(sorted(name for name in UNUSED_AT_START if type(sys.modules[name]) is OnFirstUse))
"""


def test_what_the_node_command_defers_works_when_used(tmp_path: Path) -> None:
    """UNUSED_AT_START (inspect, textwrap, tokenize, copy): importing p2pchain.cli in a fresh process
    leaves them unloaded (and ast, dis and token with them), and each works when first used: a
    traceback shows its source lines, --help is wrapped, inspect answers, copy copies."""
    script = tmp_path / "deferred_check.py"  # a file: a traceback shows the lines of files
    script.write_text(DEFERRED_CHECK)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True).stdout
    assert 'raise ValueError("the source line of this raise shows in the traceback")' in out
    assert "--ping-interval PING_INTERVAL" in out and "show this help message and exit" in out
    assert out.rstrip().endswith("()\n[]")


def test_a_thread_pool_on_first_use_is_made_at_its_first_task() -> None:
    """p2pchain.threadpool (a node's signature checkers and block server): no pool, no thread,
    until the first submit; then it runs tasks as ThreadPoolExecutor does; after shutdown a
    submit is refused with RuntimeError (what SignatureBatcher expects), made or not."""
    unused = ThreadPoolOnFirstUse(2, thread_name_prefix="p2pchain-test-unused")
    unused.shutdown(wait=True)  # never made: nothing to stop
    with pytest.raises(RuntimeError):
        unused.submit(print)
    pool = ThreadPoolOnFirstUse(2, thread_name_prefix="p2pchain-test-pool")
    assert pool._pool is None
    try:
        names = {pool.submit(lambda: threading.current_thread().name).result(timeout=10) for _ in range(4)}
        assert pool._pool is not None and all(name.startswith("p2pchain-test-pool") for name in names)
        assert pool.submit(pow, 2, 10).result(timeout=10) == 1024
    finally:
        pool.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        pool.submit(print)


DEADLOCK_CHECK = """\
import os, sys, threading
sys.path.insert(0, sys.argv[1])
from p2pchain.onfirstuse import OnFirstUse
import shared
for name in ("mod_a", "mod_b"):
    sys.modules[name] = OnFirstUse(name)
import mod_a
got = []
importer = threading.Thread(target=lambda: got.append(__import__("m_slow").VALUE))
importer.start()
shared.m_started.wait(10)
def first_read():
    shared.reading.set()
    got.append(mod_a.X)
reader = threading.Thread(target=first_read)
reader.start()
reader.join(10)
importer.join(10)
print("stuck" if reader.is_alive() or importer.is_alive() else sorted(got), flush=True)
os._exit(0)  # (threads stuck for good would keep the process alive)
"""
DEADLOCK_MODULES = {
    "shared.py": "import threading\nm_started, reading = threading.Event(), threading.Event()\n",
    # imported by one thread: it holds m_slow's import lock while its body reads stand-in mod_b
    "m_slow.py": "import time, shared\nshared.m_started.set()\nshared.reading.wait(10)\n"
    "time.sleep(0.3)  # ok: the other thread is in its first read of mod_a by now, waiting for m_slow\n"
    "import mod_b\nVALUE = mod_b.Y\n",
    "mod_a.py": "import m_slow\nX = 1\n",  # its import waits for m_slow's
    "mod_b.py": "Y = 2\n",
}


def test_two_threads_each_in_an_import_that_needs_the_others_do_not_deadlock(tmp_path: Path) -> None:
    """One thread imports m_slow, whose body reads stand-in mod_b; meanwhile another makes the
    first read of stand-in mod_a, whose module imports m_slow, and so waits for the first
    thread's import. The stand-ins' lock (onfirstuse._LOADING) must not be held across that
    import (it was: the first thread then waited for it for good, a deadlock). In a child
    process, which exits even if its threads are stuck."""
    for name, text in DEADLOCK_MODULES.items():
        (tmp_path / name).write_text(text)
    proc = subprocess.run([sys.executable, "-c", DEADLOCK_CHECK, str(tmp_path)], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[1, 2]", f"{proc.stdout.strip()}: a thread waits for the stand-ins' lock for good"
