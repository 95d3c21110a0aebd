"""record: ``@record`` classes behave as ``@dataclass(frozen=True)`` ones.

Each check builds the same class both ways and compares what a user of the class sees: the
constructor's arguments and defaults, repr, equality, hashing, frozenness, ``dataclasses``'
functions, pickling and the signature; then the limits the decorator refuses.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
import sys
import types
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from p2pchain import wire
from p2pchain.params import NetworkParams
from p2pchain.record import compile_all, record

# record's flavours, each beside the dataclass it stands for
KINDS: dict[str, tuple[Any, Any]] = {
    "frozen": (record, dataclass(frozen=True)),
    "mutable": (record(frozen=False), dataclass()),
    "mutable, eq=False": (record(frozen=False, eq=False), dataclass(eq=False)),
    "mutable, slots": (record(frozen=False, slots=True), dataclass(slots=True)),
}


def both(body: dict[str, Any], annotations: dict[str, Any], kind: str = "frozen") -> tuple[type, type]:
    """The class Point with these fields made by record and by the dataclass it stands for."""
    made, name = [], "Point"
    for decorate in KINDS[kind]:
        ns = {**body, "__annotations__": dict(annotations), "__module__": __name__, "__qualname__": name}
        made.append(decorate(type(name, (), ns)))
    return made[0], made[1]


SHAPES = {
    "plain": ({}, {"x": int, "y": bytes}),
    "one field": ({}, {"x": int}),
    "no field": ({}, {}),
    "defaults": ({"y": b"", "z": field(default=3, metadata={"wire": 1})}, {"x": int, "y": bytes, "z": int}),
    "factory": ({"items": field(default_factory=list)}, {"x": int, "items": list}),
    "not compared": ({"note": field(default="", compare=False, repr=False)}, {"x": int, "note": str}),
    "classvar": ({"TYPE": "T"}, {"TYPE": ClassVar[str], "x": int}),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_a_record_behaves_as_its_dataclass(shape: str, kind: str) -> None:
    body, annotations = SHAPES[shape]
    rec, ref = both(body, annotations, kind)
    assert str(inspect.signature(rec)) == str(inspect.signature(ref))  # before its __init__ is compiled
    args = [(7, b"a"), (7, b"a"), (8, b"b")]
    required = dataclasses.MISSING, dataclasses.MISSING
    n = len([f for f in dataclasses.fields(ref) if (f.default, f.default_factory) == required])
    a, a2, b = (rec(*v[:n]) for v in args)
    ra, ra2, rb = (ref(*v[:n]) for v in args)
    assert repr(a) == repr(ra)
    assert (a == a, a == a2, a == b, a != a2, a == 1) == (ra == ra, ra == ra2, ra == rb, ra != ra2, ra == 1)
    assert [f.name for f in dataclasses.fields(rec)] == [f.name for f in dataclasses.fields(ref)]
    assert dataclasses.asdict(a) == dataclasses.asdict(ra)
    assert rec.__match_args__ == ref.__match_args__  # type: ignore[attr-defined]
    assert rec.__doc__ == ref.__doc__
    if ref.__hash__ is None:
        assert rec.__hash__ is None
    elif any(f.default_factory is not dataclasses.MISSING for f in dataclasses.fields(ref)) and kind == "frozen":
        with pytest.raises(TypeError, match="unhashable"):
            hash(a)  # (a list among the hashed fields)
    else:
        assert (hash(a) == hash(a2), hash(a) == hash(a)) == (hash(ra) == hash(ra2), True)
    for target in (a, ra):
        if not dataclasses.fields(target):
            continue
        name = dataclasses.fields(target)[0].name
        if kind == "frozen":
            with pytest.raises(dataclasses.FrozenInstanceError, match=f"cannot assign to field '{name}'"):
                setattr(target, name, 1)
            with pytest.raises(dataclasses.FrozenInstanceError):
                delattr(target, name)
        else:
            setattr(target, name, 1)
            assert getattr(target, name) == 1
    assert repr(a) == repr(ra)
    if kind == "mutable, slots":
        assert rec.__slots__ == ref.__slots__ and not hasattr(a, "__dict__")  # type: ignore[attr-defined]
    if n:
        first = dataclasses.fields(rec)[0].name
        assert repr(dataclasses.replace(a, **{first: 9})) == repr(dataclasses.replace(ra, **{first: 9}))
    assert repr(copy.deepcopy(a)) == repr(a) == repr(copy.copy(a))
    with pytest.raises(TypeError):
        rec(*range(len(dataclasses.fields(rec)) + 1))  # one argument too many, as a dataclass refuses


def test_records_pickle_as_they_go_to_mining_processes() -> None:
    params = NetworkParams(bits=8)
    header = params.genesis.header
    assert pickle.loads(pickle.dumps(header)) == header
    assert pickle.loads(pickle.dumps(params.genesis)).hash == params.genesis.hash
    assert pickle.loads(pickle.dumps(params)) == params


def test_the_init_compiled_at_the_second_call_is_the_same() -> None:
    for shape in ("one field", "defaults", "factory"):
        rec, ref = both(*SHAPES[shape])
        assert repr(rec(1)) == repr(ref(1))  # the first call binds its arguments without compiling
        assert repr(rec(1)) == repr(ref(1)) and str(inspect.signature(rec)) == str(inspect.signature(ref))
        with pytest.raises(TypeError, match="missing 1 required positional argument: 'x'"):
            rec()


def test_compile_all_builds_every_init_not_built_yet_and_they_behave_the_same() -> None:
    rec, ref = both(*SHAPES["defaults"])
    assert compile_all() >= 1  # this one at least
    assert compile_all() == 0  # nothing left
    assert repr(rec(1)) == repr(ref(1)) and str(inspect.signature(rec)) == str(inspect.signature(ref))
    assert wire.GetChain((), 1) == wire.GetChain((), 1)


def refusal(make: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(TypeError) as e:
        make(*args, **kwargs)
    return str(e.value)


@pytest.mark.parametrize("kind", KINDS)
def test_a_first_call_binds_as_the_dataclass_and_refuses_alike(kind: str) -> None:
    """The first instance of a class is made without compiling its __init__: by keyword, with
    defaults and factories, with __post_init__; a call the dataclass refuses is refused with
    the same message, whether it is the class's first call or a later one."""
    body, annotations = SHAPES["defaults"]
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((1,), {}),
        ((), {"x": 1, "z": 5}),
        ((1, b"y"), {"z": 4}),
    ]
    for args, kwargs in calls:
        rec, ref = both(body, annotations, kind)
        first, want = rec(*args, **kwargs), ref(*args, **kwargs)
        assert repr(first) == repr(want) and dataclasses.asdict(first) == dataclasses.asdict(want)
        if kind != "mutable, slots":
            assert list(vars(first)) == list(vars(want))  # the fields in their order
    bad: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((), {}),
        ((1, b"", 3, 4), {}),
        ((1,), {"x": 2}),
        ((1,), {"w": 2}),
        ((), {"y": b""}),
    ]
    for args, kwargs in bad:
        rec, ref = both(body, annotations, kind)
        assert refusal(rec, *args, **kwargs) == refusal(ref, *args, **kwargs)  # as its first call
        rec(1)
        assert refusal(rec, *args, **kwargs) == refusal(ref, *args, **kwargs)  # compiled
    posted = {**SHAPES["factory"][0], "__post_init__": lambda self: self.items.append(self.x)}
    rec, ref = both(posted, SHAPES["factory"][1], kind)
    one, two = rec(1), rec(2)
    assert (one.items, two.items) == ([1], [2]) == (ref(1).items, ref(2).items)


def test_a_factory_makes_a_new_value_for_each_instance() -> None:
    rec, _ = both(*SHAPES["factory"])
    one, two = rec(1), rec(1)
    assert one.items == [] and one.items is not two.items


def test_post_init_runs_and_may_set_fields() -> None:
    assert NetworkParams(block_time_ms=1000).half_life_ms == 48_000  # set by __post_init__
    with pytest.raises(ValueError, match="difficulty"):
        NetworkParams(bits=0)


def test_a_subclass_adds_its_fields_after_its_base() -> None:
    hello = wire.Hello(2, bytes(32), bytes(16), 7000, 0, bytes(32), 1, "a")
    assert [f.name for f in dataclasses.fields(hello)][-1] == "relay" and hello.relay == ()
    assert hello == dataclasses.replace(hello) and hello != dataclasses.replace(hello, port=7001)
    assert wire.decode_message(hello.payload()) == hello


def test_what_a_record_cannot_be_is_refused() -> None:
    class Base:
        def __init__(self) -> None:
            pass

    with pytest.raises(TypeError, match="defines __init__"):
        record(type("Sub", (Base,), {"__annotations__": {"x": int}}))
    with pytest.raises(TypeError, match="positional"):
        record(type("Hidden", (), {"__annotations__": {"x": int}, "x": field(init=False, default=0)}))
    with pytest.raises(TypeError, match="frozen"):
        record(type("Mutable", (), {"__annotations__": {"x": int}, "__setattr__": object.__setattr__}))
    frozen = record(type("Frozen", (), {"__annotations__": {"x": int}}))
    with pytest.raises(TypeError, match="frozen and mutable"):
        record(frozen=False)(type("Thawed", (frozen,), {"__annotations__": {"y": int}}))


STRING_ANNOTATED = """
from __future__ import annotations
import dataclasses
import typing
from dataclasses import field
from typing import ClassVar

@DECORATE
class Base:
    TYPE: ClassVar[str]
    x: int
    tags: tuple[str, ...] = ()

@DECORATE
class Sub(Base):
    TYPE: ClassVar[str] = "SUB"
    y: bytes = field(default=b"", metadata={"wire": 1})
    items: list[int] = field(default_factory=list, compare=False)

@DECORATE
class Spelled(Base):
    KIND: typing.ClassVar[int] = 3  # dataclass's own reading of the annotation (record defers to it)
    z: int = 0

from typing import ClassVar as CV

@DECORATE
class Renamed(Base):
    COUNT: CV[int] = 0  # a ClassVar under another name: no field (dataclass reads the name's binding)
    w: int = 0

class Slotted:
    __slots__ = ("s",)

@DECORATE
class FromSlots(Slotted):
    s: int  # the base's slot is no default: a required field
"""


def string_annotated(decorate: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The module above (``from __future__ import annotations``, as every p2pchain module is)
    with its classes made by ``decorate``; in sys.modules while the test runs (dataclass looks
    up the names of annotations in the class's module)."""
    module = types.ModuleType(f"string_annotated_{len(sys.modules)}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    module.DECORATE = decorate  # type: ignore[attr-defined]
    exec(STRING_ANNOTATED, module.__dict__)
    return module.__dict__


def fields_of(cls: type) -> list[tuple[Any, ...]]:
    return [
        (f.name, f.type, f.default, f.default_factory, f.compare, dict(f.metadata)) for f in dataclasses.fields(cls)
    ]


def test_string_annotations_make_the_fields_dataclass_makes(monkeypatch: pytest.MonkeyPatch) -> None:
    """record collects a class's fields itself (dataclass's per-class work was a third of what
    defining a record cost) and must read string annotations as dataclass does: ClassVar[...] is
    no field, a base's fields come first, a field() default becomes the class attribute or goes."""
    rec = string_annotated(record, monkeypatch)
    ref = string_annotated(dataclass(frozen=True), monkeypatch)
    for name in ("Base", "Sub", "Spelled", "Renamed", "FromSlots"):
        r, d = rec[name], ref[name]
        assert fields_of(r) == fields_of(d), name
        assert sorted(r.__dataclass_fields__) == sorted(d.__dataclass_fields__), name  # ClassVars too
        assert r.__match_args__ == d.__match_args__, name
        for attr in ("TYPE", "x", "tags", "y", "items", "KIND", "z", "COUNT", "w"):
            assert getattr(r, attr, "absent") == getattr(d, attr, "absent"), (name, attr)
    assert [f.name for f in dataclasses.fields(rec["Renamed"])] == ["x", "tags", "w"]
    for made in (rec, ref):
        with pytest.raises(TypeError, match="missing 1 required positional argument"):
            made["FromSlots"]()
    sub, ref_sub = rec["Sub"](1), ref["Sub"](1)
    assert repr(sub) == repr(ref_sub) and dataclasses.asdict(sub) == dataclasses.asdict(ref_sub)
    assert dataclasses.replace(sub, y=b"a") == rec["Sub"](1, (), b"a")


def test_a_record_refuses_what_dataclass_refuses_of_its_fields() -> None:
    for decorate in (record, dataclass(frozen=True)):
        with pytest.raises(ValueError, match="mutable default <class 'list'> for field x"):
            decorate(type("Shared", (), {"__annotations__": {"x": "list[int]"}, "x": []}))
        with pytest.raises(TypeError, match="'y' is a field but has no type annotation"):
            decorate(type("Untyped", (), {"__annotations__": {"x": "int"}, "y": field(default=1)}))
        with pytest.raises(TypeError, match="cannot have a default factory"):
            decorate(type("Factory", (), {"__annotations__": {"X": ClassVar[int]}, "X": field(default_factory=int)}))
