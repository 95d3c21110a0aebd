"""A thread pool made at its first task (``ThreadPoolOnFirstUse``).

Not in p2pchain.onfirstuse: that module is imported before p2pchain.cli puts its stand-ins in
place, and concurrent.futures would load logging, traceback and with them textwrap and tokenize
(~8 M instructions) before they could be deferred.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")


class ThreadPoolOnFirstUse(concurrent.futures.Executor):
    """A ``concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix=...)`` made at the
    first ``submit``: the pool's module (concurrent.futures.thread, with queue) is imported then,
    not while a node starts (~2 M instructions: a node builds two pools it may not use for a
    while, the signature checkers' and the block server's). Submitting after ``shutdown`` raises
    RuntimeError, as the pool does."""

    def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
        self.max_workers = max_workers
        self.thread_name_prefix = thread_name_prefix
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._shutdown = False
        self._lock = threading.Lock()  # (the first submit and shutdown may come from two threads)

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> concurrent.futures.Future[_T]:
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._shutdown:
                    raise RuntimeError("cannot schedule new futures after shutdown")
                if self._pool is None:
                    self._pool = concurrent.futures.ThreadPoolExecutor(
                        self.max_workers, thread_name_prefix=self.thread_name_prefix
                    )
                pool = self._pool
        return pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            pool = self._pool
        if pool is not None:
            pool.shutdown(wait, cancel_futures=cancel_futures)
