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
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from p2pchain import wire
from p2pchain.params import NetworkParams
from p2pchain.record import record


def both(body: dict[str, Any], annotations: dict[str, Any], name: str = "Point") -> tuple[type, type]:
    """The class ``name`` with these fields made by ``@record`` and by ``@dataclass(frozen=True)``."""
    made = []
    for decorate in (record, dataclass(frozen=True)):
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


@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
def test_a_record_behaves_as_a_frozen_dataclass(shape: str) -> None:
    body, annotations = SHAPES[shape]
    rec, ref = both(body, annotations)
    assert str(inspect.signature(rec)) == str(inspect.signature(ref))  # before its __init__ is compiled
    args = [(7, b"a"), (7, b"a"), (8, b"b")]
    required = dataclasses.MISSING, dataclasses.MISSING
    n = len([f for f in dataclasses.fields(ref) if (f.default, f.default_factory) == required])
    a, a2, b = (rec(*v[:n]) for v in args)
    ra, ra2, rb = (ref(*v[:n]) for v in args)
    assert repr(a) == repr(ra)
    assert (a == a2, a == b, a != a2, a == 1) == (ra == ra2, ra == rb, ra != ra2, ra == 1)
    assert [f.name for f in dataclasses.fields(rec)] == [f.name for f in dataclasses.fields(ref)]
    assert dataclasses.asdict(a) == dataclasses.asdict(ra)
    assert rec.__match_args__ == ref.__match_args__  # type: ignore[attr-defined]
    assert rec.__doc__ == ref.__doc__
    hashable = all(f.default_factory is dataclasses.MISSING for f in dataclasses.fields(ref))
    if hashable:
        assert hash(a) == hash(a2) and {a: 1}[a2] == 1
    else:
        with pytest.raises(TypeError):
            hash(a)
    for target in (a, ra):
        name = dataclasses.fields(target)[0].name if dataclasses.fields(target) else "x"
        with pytest.raises(dataclasses.FrozenInstanceError, match=f"cannot assign to field '{name}'"):
            setattr(target, name, 1)
        with pytest.raises(dataclasses.FrozenInstanceError):
            delattr(target, name)
    if n:
        first = dataclasses.fields(rec)[0].name
        assert repr(dataclasses.replace(a, **{first: 9})) == repr(dataclasses.replace(ra, **{first: 9}))
    assert copy.deepcopy(a) == a and copy.copy(a) == a
    with pytest.raises(TypeError):
        rec(*range(len(dataclasses.fields(rec)) + 1))  # one argument too many, as a dataclass refuses


def test_records_pickle_as_they_go_to_mining_processes() -> None:
    params = NetworkParams(bits=8)
    header = params.genesis.header
    assert pickle.loads(pickle.dumps(header)) == header
    assert pickle.loads(pickle.dumps(params.genesis)).hash == params.genesis.hash
    assert pickle.loads(pickle.dumps(params)) == params


def test_the_init_compiled_at_the_first_call_is_the_same() -> None:
    for shape in ("one field", "defaults", "factory"):
        rec, ref = both(*SHAPES[shape])
        assert repr(rec(1)) == repr(ref(1))  # the first call compiles it
        assert repr(rec(1)) == repr(ref(1)) and str(inspect.signature(rec)) == str(inspect.signature(ref))
        with pytest.raises(TypeError, match="missing 1 required positional argument: 'x'"):
            rec()


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
