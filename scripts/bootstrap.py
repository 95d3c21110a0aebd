"""Create ./.venv and install p2pchain into it (editable, with test tools), once.

Used by `bash scripts/test` and by scripts/swarm.py when it is started from a bare Python, so
that a fresh machine needs nothing installed by hand. Re-running is cheap: a stamp file records
the hash of pyproject.toml that was installed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".p2pchain-installed"


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv() -> Path:
    """Return the venv's python, creating and installing it when pyproject.toml changed."""
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == want and venv_python().exists():
        return venv_python()
    if not venv_python().exists():
        print(f"bootstrap: creating {VENV}", file=sys.stderr)
        venv.create(VENV, with_pip=True)
    print("bootstrap: installing p2pchain and its test tools into .venv", file=sys.stderr)
    subprocess.run(
        [
            str(venv_python()),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-e",
            f"{ROOT}[test,dev]",
        ],
        check=True,
    )
    # ensurepip (Python 3.11) puts setuptools into every new venv, and its distutils-precedence.pth
    # imports _distutils_hack in every process the venv starts (~2.3 M instructions, 1 % of a node's
    # start). Nothing here uses it: pip builds p2pchain in an isolated environment with the setuptools
    # pyproject.toml asks for (Python 3.12's venvs come without it).
    done = subprocess.run(  # ("Skipping setuptools as it is not installed" on stderr: nothing to do)
        [str(venv_python()), "-m", "pip", "uninstall", "--quiet", "--yes", "setuptools"], capture_output=True, text=True
    )
    if done.returncode:
        sys.exit(f"bootstrap: pip could not uninstall setuptools from the venv:\n{done.stderr}")
    STAMP.write_text(want)
    return venv_python()


def compile_package() -> None:
    """Byte-compile p2pchain (only what changed): an editable install is not compiled by pip, and
    under PYTHONDONTWRITEBYTECODE=1 every node process a test starts would compile it again."""
    subprocess.run([str(venv_python()), "-m", "compileall", "-q", str(ROOT / "p2pchain")], check=True)


if __name__ == "__main__":
    ensure_venv()
    compile_package()
