"""Pure consensus code: types, canonical bytes, merkle, proof of work and validation.

Nothing here touches a socket, the clock or the disk: time comes in as an argument.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

_T = TypeVar("_T")


class cached(Generic[_T]):
    """``functools.cached_property`` without its lock: the value is computed on the first read
    and stored in the instance's ``__dict__``, where every later read finds it before this
    descriptor. Python 3.11's cached_property takes an RLock on each first read (gone in 3.12),
    which cost as much as the hash it guarded: a node computes a txid and the canonical bytes of
    every transaction it receives once. For immutable types only (two threads racing compute the
    same value)."""

    def __init__(self, fn: Callable[[Any], _T]) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> cached[_T]: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> _T: ...

    def __get__(self, obj: object | None, owner: type | None = None) -> cached[_T] | _T:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)
        return value
