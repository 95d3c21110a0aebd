"""``@record``: a frozen dataclass that is cheaper to define.

``@dataclass(frozen=True)`` writes six methods of each class as source text and compiles each
(``__init__``, ``__repr__``, ``__eq__``, ``__hash__``, ``__setattr__``, ``__delattr__``). Python
3.11 compiles them one by one when the class is created, and a node has about forty frozen types
(the wire messages, the ledger's, settings): measured with callgrind, those compiles were a fifth
of the instructions a node spends from spawn to accepting peers.

A record is the same dataclass (``dataclasses.fields``, ``replace`` and ``asdict`` work on it; its
fields, defaults, ``default_factory``, metadata and ``__post_init__`` are dataclasses' own), with
the same methods and results: only ``__init__`` is compiled, once per class, when the class is
first built (or inspected); the other five are shared functions that read the class's field
names. Type checkers see a frozen dataclass (``dataclass_transform``).
``@record(frozen=False, eq=..., slots=...)`` stands for ``@dataclass(eq=..., slots=...)`` the
same way (fields set by assignment; with ``eq`` instances are unhashable, as dataclass makes them).

Limits, checked when the class is defined: every field is an ``__init__`` argument (no
``init=False``, ``InitVar`` or ``kw_only``), no base class defines its own ``__init__`` or
``__setattr__`` (that would be lost or bypassed), and frozen and mutable records do not inherit
from each other. A frozen record's fields are stored straight into the instance's ``__dict__``,
as the frozen ``__init__`` does through ``object.__setattr__``. ``__dataclass_params__`` tells
what dataclass itself was asked for (no init, repr, eq or frozen), not the record's behaviour.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import operator
import reprlib
import sys
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, dataclass_transform, overload

_T = TypeVar("_T")
_KEY = "__record_key__"  # per class: the compared fields' values of an instance, as a tuple
_REPR = "__record_repr__"  # per class: the names of the fields repr shows
_HASH = "__record_hash__"  # per class: the hashed fields' values of an instance, as a tuple


def _key_getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    if len(names) >= 2:
        return operator.attrgetter(*names)  # a tuple for 2 or more names
    if names:
        name = names[0]
        return lambda obj: (getattr(obj, name),)
    return lambda obj: ()


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is self.__class__:
        key = getattr(self.__class__, _KEY)
        return key(self) == key(other)
    return NotImplemented


def _hash(self: Any) -> int:
    return hash(getattr(self.__class__, _HASH)(self))


@reprlib.recursive_repr()
def _repr(self: Any) -> str:
    cls = self.__class__
    return f"{cls.__qualname__}({', '.join(f'{name}={getattr(self, name)!r}' for name in getattr(cls, _REPR))})"


def _setattr(self: Any, name: str, value: Any) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def _delattr(self: Any, name: str) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")


class _NoValue:
    def __repr__(self) -> str:
        return "<factory>"


_NO_VALUE = _NoValue()  # an argument left to its default_factory (dataclasses shows it so too)


def _init(cls: type, flds: list[dataclasses.Field[Any]]) -> Callable[..., None]:
    """The ``__init__`` the dataclass would get, compiled once: each argument stored as the field of
    its name (straight into ``__dict__`` if frozen), then ``__post_init__`` if the class has one."""
    env: dict[str, Any] = {"__no_value": _NO_VALUE}  # what the function's text refers to
    frozen = cls.__dict__.get("__setattr__") is _setattr
    params, body = [], ["__d = self.__dict__"] if frozen else []
    for f in flds:
        name = f.name
        if f.default is not dataclasses.MISSING:
            env[f"__default_{name}"] = f.default
            params.append(f"{name}=__default_{name}")
        elif f.default_factory is not dataclasses.MISSING:
            env[f"__factory_{name}"] = f.default_factory
            params.append(f"{name}=__no_value")
            body.append(f"if {name} is __no_value: {name} = __factory_{name}()")
        else:
            params.append(name)
        body.append(f"__d[{name!r}] = {name}" if frozen else f"self.{name} = {name}")
    if hasattr(cls, "__post_init__"):
        body.append("self.__post_init__()")
    body = body or ["pass"]  # (a mutable record without fields)
    lines = [
        f"def __make__({', '.join(env)}):",
        f"  def __init__(self, {', '.join(params)}):",
        *(f"    {line}" for line in body),
        "  return __init__",
    ]
    namespace: dict[str, Any] = {}
    exec("\n".join(lines), {}, namespace)
    init: Callable[..., None] = namespace["__make__"](*env.values())
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__annotations__ = {f.name: f.type for f in flds} | {"return": None}
    return init


def _compiled_init(cls: type) -> Callable[..., None]:
    """``cls``'s own ``__init__``, compiled now if it was not yet."""
    init: Callable[..., None] = cls.__dict__["__init__"]
    if init.__code__ is _DEFERRED_CODE:
        init = _init(cls, list(dataclasses.fields(cls)))
        cls.__init__ = init  # type: ignore[misc]
    return init


def _bound_once(cls: type, self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """What the compiled ``__init__`` does, for a call that binds plainly (each field once, by
    position or name, the others to their defaults); False, having done nothing, for any other
    call, which the compiled ``__init__`` then refuses with Python's own message."""
    flds = dataclasses.fields(cls)
    if len(args) > len(flds):
        return False
    rest = flds[len(args) :]
    if kwargs and not kwargs.keys() <= {f.name for f in rest}:
        return False  # an unknown name, or one also given by position
    if any(f.name not in kwargs and f.default is _MISSING and f.default_factory is _MISSING for f in rest):
        return False  # a required field left out
    values = {f.name: value for f, value in zip(flds, args, strict=False)}  # (args may be fewer)
    for f in rest:
        if f.name in kwargs:
            values[f.name] = kwargs[f.name]
        else:
            values[f.name] = f.default if f.default is not _MISSING else f.default_factory()  # type: ignore[operator]
    if cls.__dict__.get("__setattr__") is _setattr:  # frozen: straight into __dict__, in field order
        self.__dict__.update(values)
    else:
        for name, value in values.items():
            setattr(self, name, value)
    if hasattr(cls, "__post_init__"):
        self.__post_init__()
    return True


def _deferred_init(cls: type) -> Callable[..., None]:
    """``cls.__init__`` until its second call, which compiles the class's own and calls it: most
    record types (the rarer wire messages among them) are never built by a given process, and
    many others only once (a node's settings, its relay and mempool state), for which binding the
    arguments once in Python costs a hundredth of compiling an ``__init__`` (a start compiled
    nine, 3 % of its instructions)."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if cls not in _BUILT_ONCE and _bound_once(cls, self, args, kwargs):
            _BUILT_ONCE.add(cls)
            return
        _compiled_init(cls)(self, *args, **kwargs)

    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    return __init__


_MISSING: Any = dataclasses.MISSING
_BUILT_ONCE: set[type] = set()  # record classes whose first instance was made without compiling


_DEFERRED_CODE = _deferred_init(object).__code__  # shared by every deferred __init__
_RECORDS: list[type] = []  # every record class made, in order (compile_all)


def compile_all() -> int:
    """Compile now the ``__init__`` of every record class made so far that has not been built
    yet (~0.1-0.3 ms each); how many. For a process about to answer a request whose first
    answer would otherwise compile a dozen on its way."""
    compiled = 0
    for cls in _RECORDS:
        if cls.__dict__["__init__"].__code__ is _DEFERRED_CODE:
            _compiled_init(cls)
            compiled += 1
    return compiled


class _Signature:
    """``inspect.signature(cls)`` reads ``cls.__signature__`` first: this compiles the class's
    ``__init__`` and answers None, so that inspect goes on to read that ``__init__``'s signature."""

    def __init__(self, cls: type) -> None:
        self.cls = cls

    def __get__(self, obj: object, owner: type | None = None) -> None:
        _compiled_init(self.cls)


@dataclasses.dataclass(init=False, repr=False, eq=False)
class _Probe:
    """What dataclass leaves on a class it processes as record asks (no method generated): the
    params object, and the kinds of its fields, read here rather than from dataclasses' privates."""

    field: int
    classvar: ClassVar[int] = 0


_PARAMS = _Probe.__dataclass_params__  # type: ignore[attr-defined]  # the same for every record
_FIELD_KIND = _Probe.__dataclass_fields__["field"]._field_type  # type: ignore[attr-defined]
_CLASSVAR_KIND = _Probe.__dataclass_fields__["classvar"]._field_type  # type: ignore[attr-defined]
_SPECIAL = ("ClassVar", "InitVar", "KW_ONLY")  # annotations dataclass reads by name: only ClassVar[...] here


def _classvar(namespace: dict[str, Any], annotation: Any) -> bool | None:
    """Whether ``annotation`` (a string under ``from __future__ import annotations``) is a
    ``ClassVar``; None for what dataclass itself must judge (an InitVar, KW_ONLY, a ClassVar
    spelled otherwise than ``ClassVar[...]`` of typing's, bound so in the class's module, whose
    ``namespace`` is given)."""
    if isinstance(annotation, str):
        # dataclass reads the leading name (``name[...]``, ``module.name[...]``) in the class's
        # module: a special one under any name, or a module's, is left to dataclass
        head = annotation.split("[", 1)[0].strip()
        if "." in head:
            return None if namespace.get(head.split(".", 1)[0].strip()) in (typing, dataclasses) else False
        bound = namespace.get(head)
        if bound is ClassVar and head == "ClassVar" and annotation.endswith("]"):
            return True
        special = bound is ClassVar or bound is dataclasses.InitVar or bound is dataclasses.KW_ONLY
        return None if special or head in _SPECIAL else False
    if annotation is ClassVar or typing.get_origin(annotation) is ClassVar:
        return True
    special = annotation is dataclasses.KW_ONLY or annotation is dataclasses.InitVar
    return None if special or isinstance(annotation, dataclasses.InitVar) else False


def _collect_fields(cls: type) -> bool:
    """Do what ``dataclass(init=False, repr=False, eq=False)`` does to ``cls`` (collect its fields,
    base records' first, set ``__dataclass_fields__``, ``__dataclass_params__`` and
    ``__match_args__``, and each field's class attribute to its default) without its per-class
    cost (about a third of what defining a record cost: a start defines some fifty). False, having
    changed nothing, for a class whose annotations need dataclass's own reading."""
    # the class's own, as 3.11's dataclass reads them: not through inspect, which a node's start
    # otherwise never loads (p2pchain.cli)
    annotations = cls.__dict__.get("__annotations__", {})  # noqa: RUF063
    namespace = getattr(sys.modules.get(cls.__module__), "__dict__", {})  # where dataclass looks names up
    kinds = {}
    for name, annotation in annotations.items():
        kind = _classvar(namespace, annotation)
        if kind is None:
            return False
        kinds[name] = kind
    flds: dict[str, Any] = {}  # name -> Field (Any: dataclasses' _field_type, which its stubs leave out)
    for base in cls.__mro__[-1:0:-1]:
        flds.update(getattr(base, "__dataclass_fields__", {}))
    for name, annotation in annotations.items():
        default = getattr(cls, name, dataclasses.MISSING)
        if isinstance(default, types.MemberDescriptorType):  # a base's slot: no default (as dataclass)
            default = dataclasses.MISSING
        f: Any = default if isinstance(default, dataclasses.Field) else dataclasses.field(default=default)
        f.name, f.type = name, annotation
        if kinds[name]:
            f._field_type = _CLASSVAR_KIND
            if f.default_factory is not dataclasses.MISSING:
                raise TypeError(f"field {name} cannot have a default factory")
        else:
            f._field_type = _FIELD_KIND
            if f.default is not dataclasses.MISSING and f.default.__class__.__hash__ is None:
                raise ValueError(
                    f"mutable default {type(f.default)} for field {name} is not allowed: use default_factory"
                )
        if f.kw_only is dataclasses.MISSING:
            f.kw_only = False
        flds[name] = f
        if isinstance(default, dataclasses.Field):
            if f.default is dataclasses.MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, f.default)
    for name, value in cls.__dict__.items():
        if isinstance(value, dataclasses.Field) and name not in annotations:
            raise TypeError(f"{name!r} is a field but has no type annotation")
    cls.__dataclass_fields__ = flds  # type: ignore[attr-defined]
    cls.__dataclass_params__ = _PARAMS  # type: ignore[attr-defined]
    if "__match_args__" not in cls.__dict__:
        args = tuple(f.name for f in flds.values() if f._field_type is _FIELD_KIND and f.init and not f.kw_only)
        setattr(cls, "__match_args__", args)  # noqa: B010  (a class's, which mypy will not let be assigned)
    if hasattr(cls, "__abstractmethods__"):
        abc.update_abstractmethods(cls)
    return True


def _signature(flds: list[dataclasses.Field[Any]]) -> str:
    """What ``inspect.signature`` shows of the ``__init__`` (dataclasses' ``__doc__`` for a class
    without a docstring), without building a Signature."""
    parts = []
    for f in flds:
        # (a string annotation, as under ``from __future__ import annotations``, shows as its repr)
        part = f"{f.name}: {f.type!r}" if isinstance(f.type, str) else f"{f.name}: {inspect.formatannotation(f.type)}"
        if f.default is not dataclasses.MISSING:
            part += f" = {f.default!r}"
        elif f.default_factory is not dataclasses.MISSING:
            part += " = <factory>"
        parts.append(part)
    return f"({', '.join(parts)})"


@overload
def record(cls: type[_T], /) -> type[_T]: ...


@overload
def record(*, frozen: bool = True, eq: bool = True, slots: bool = False) -> Callable[[type[_T]], type[_T]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, dataclasses.Field))
def record(
    cls: type[_T] | None = None, /, *, frozen: bool = True, eq: bool = True, slots: bool = False
) -> type[_T] | Callable[[type[_T]], type[_T]]:
    """Make ``cls`` a dataclass (see the module's docstring): ``@record`` is
    ``@dataclass(frozen=True)``; ``@record(frozen=False, eq=..., slots=...)`` is
    ``@dataclass(eq=..., slots=...)``."""
    if cls is None:
        return lambda c: _make(c, frozen=frozen, eq=eq, slots=slots)
    return _make(cls, frozen=True, eq=True, slots=False)


def _make(cls: type[_T], *, frozen: bool, eq: bool, slots: bool) -> type[_T]:
    for base in cls.__mro__[1:-1]:
        if _KEY not in base.__dict__ and ("__init__" in base.__dict__ or "__setattr__" in base.__dict__):
            raise TypeError(f"@record {cls.__qualname__}: its base {base.__qualname__} defines __init__ or __setattr__")
        if _KEY in base.__dict__ and (base.__dict__.get("__setattr__") is _setattr) != frozen:
            raise TypeError(f"@record {cls.__qualname__}: frozen and mutable records cannot inherit from each other")
    for name in ("__setattr__", "__delattr__"):
        if frozen and name in cls.__dict__:  # as dataclass(frozen=True) refuses
            raise TypeError(f"@record {cls.__qualname__} defines {name}: a frozen record cannot")
    own = {name: name in cls.__dict__ for name in ("__repr__", "__eq__", "__hash__")}
    if own["__eq__"] and cls.__dict__.get("__hash__", 0) is None:
        own["__hash__"] = False  # Python's None for a class that defines __eq__ only: dataclass decides
    documented = bool(cls.__doc__)
    if not documented:
        cls.__doc__ = cls.__name__  # (keeps dataclass from asking inspect; set below)
    # dataclass collects the fields (and __match_args__, and makes the slots) and generates
    # nothing: no method is asked for, and the class is not frozen in its eyes (the shared
    # __setattr__ makes it so)
    if slots or not _collect_fields(cls):  # (slots: dataclass makes a new class)
        cls = dataclasses.dataclass(init=False, repr=False, eq=False, slots=slots)(cls)
    flds = list(dataclasses.fields(cls))  # type: ignore[arg-type]
    for f in flds:
        if not f.init or f.kw_only is True:
            raise TypeError(f"@record {cls.__qualname__}.{f.name}: a field must be a positional __init__ argument")
        if frozen and hasattr(type(cls.__dict__.get(f.name)), "__set__"):
            raise TypeError(f"@record {cls.__qualname__}.{f.name}: a field of a frozen record cannot be a descriptor")
    shared: dict[str, Any] = {"__repr__": _repr}
    if eq:  # dataclass: frozen and eq hash the fields; eq alone makes instances unhashable
        shared |= {"__eq__": _eq, "__hash__": _hash if frozen else None}
    if frozen:
        shared |= {"__setattr__": _setattr, "__delattr__": _delattr}
    for name, fn in shared.items():
        if not own.get(name):
            setattr(cls, name, fn)
    cls.__init__ = _deferred_init(cls)  # type: ignore[method-assign]
    _RECORDS.append(cls)
    cls.__signature__ = _Signature(cls)  # type: ignore[attr-defined]
    setattr(cls, _KEY, _key_getter(tuple(f.name for f in flds if f.compare)))
    setattr(cls, _HASH, _key_getter(tuple(f.name for f in flds if (f.compare if f.hash is None else f.hash))))
    setattr(cls, _REPR, tuple(f.name for f in flds if f.repr))
    if not documented:
        cls.__doc__ = cls.__name__ + _signature(flds)
    return cls
