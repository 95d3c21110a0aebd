"""A module imported on its first use: what a process may import but never use.

``OnFirstUse(name)`` stands in ``sys.modules`` for a module not imported yet: ``import name``
gives the stand-in, and its first attribute read (``name.x``, ``from name import x``) imports
the module and takes over its namespace, so that every holder of the stand-in reads the module's
own names from then on, directly. importlib.util.LazyLoader cannot do this in Python 3.11: an
``import`` statement reads the module's ``__spec__``, which runs a lazily loaded module at once.
p2pchain.cli puts UNUSED_AT_START so before asyncio loads.
"""

from __future__ import annotations

import sys
import threading
import types
from typing import Any

# held while a stand-in is checked and taken out of sys.modules, never across the import: an
# import may wait for another thread's import (importlib's module locks) whose module reads a
# stand-in, which must not then wait for this lock (a deadlock)
_LOADING = threading.Lock()

# Modules that a node's imports import but that a node does not call (p2pchain.cli defers them):
# - inspect (with ast and dis): asyncio's debug checks and callback reprs, dataclasses' class
#   docstrings (records have theirs), loop.add_signal_handler's check (cli.StopSignals does
#   without): ~18 M instructions of a start;
# - textwrap: traceback formats exception groups with it; argparse imports it for --help itself;
# - tokenize (with token): linecache reads source lines with it, for a traceback;
# - copy: dataclasses' asdict and astuple, argparse's append actions (--peer).
# textwrap and tokenize together: ~8 M instructions of a start (3 %); copy ~1 M.
UNUSED_AT_START = ("inspect", "textwrap", "tokenize", "copy")


class OnFirstUse(types.ModuleType):
    def __getattr__(self, name: str) -> Any:  # (called only for what the namespace lacks)
        import importlib

        if self.__class__ is OnFirstUse:
            with _LOADING:  # the check and the pop as one: another thread may be here too, and must
                # not pop the real module this one's import has put in sys.modules meanwhile
                if sys.modules.get(self.__name__) is self:
                    del sys.modules[self.__name__]
            # importlib imports it once, whichever threads ask, and hands each the whole module
            module = importlib.import_module(self.__name__)
            self.__dict__.update(module.__dict__)
            self.__class__ = types.ModuleType  # type: ignore[assignment]  # a plain module now: a name it lacks is an AttributeError
        return getattr(self, name)  # (a plain module by now: its own attribute lookup)
