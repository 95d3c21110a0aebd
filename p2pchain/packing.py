"""msgpack packing with one Packer per thread.

``msgpack.packb`` makes a new Packer at every call, which costs as much as packing a small
message (a SUBMIT_RESULT, a coinbase-only block): the node packs one or more things for every
transaction and block it handles. A Packer is not thread-safe, so each thread keeps its own.
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack

_packers = threading.local()


def packb(obj: Any) -> bytes:
    """``msgpack.packb(obj, use_bin_type=True)``, with this thread's Packer."""
    try:
        p: msgpack.Packer = _packers.packer
    except AttributeError:  # this thread's first
        p = _packers.packer = msgpack.Packer(use_bin_type=True)
    data: bytes = p.pack(obj)
    return data
