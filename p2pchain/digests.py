"""The digests a node computes, SHA-256 and keyed BLAKE2b, from the interpreter's own modules.

``import hashlib`` loads OpenSSL's libcrypto (``_hashlib``) to offer its digests: the library's
relocations, its initialisation and the list of its algorithms cost a node's start about 10 M
instructions (3 % of what it spends from spawn to accepting peers), and no p2pchain process needs
them. A node hashes short inputs (80-byte headers, transactions of a few hundred bytes, 64-byte
merkle pairs, addresses), on which CPython's own SHA-256 is about as fast (measured on 3.11 here:
0.61 against 0.47 us for 80 bytes, 1.0 against 0.7 us for 150), and the miner's inner loop
(copy + two-byte update + digest) runs faster on it (0.40 against 0.46 us a try). OpenSSL's is
faster on long inputs (a kilobyte: 4.8 against 1.4 us), which no hot path of a node hashes.

These are the constructors hashlib itself falls back to without OpenSSL (BLAKE2b is always the
interpreter's own there). A Python built without its own SHA-256 gets hashlib's.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (the builtin modules have no type stubs: they offer hashlib's interface)
    from hashlib import blake2b, sha256
else:
    try:  # (the version's own name only: a failed import searches every sys.path entry, ~0.5 M instructions)
        if sys.version_info >= (3, 12):
            from _sha2 import sha256
        else:
            from _sha256 import sha256
    except ImportError:  # an interpreter built without its own SHA-2
        from hashlib import sha256
    from _blake2 import blake2b

__all__ = ["blake2b", "sha256"]
