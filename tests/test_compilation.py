"""Compiling declarations: caches that stay bounded and keep no class alive, first use from
many threads, event names, guards without signatures, and bad declarations named."""

from __future__ import annotations

import contextlib
import gc
import inspect
import operator
import re
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from litestate import (
    DeclarationError,
    GuardError,
    InvalidStateError,
    TransitionError,
    available_transitions,
    can_transition,
    state_column,
    transition,
    transition_state,
    transitions,
)
from tests.conftest import SignalLog


class Order:
    """A plain class declaring nothing: transition_state() alone acts on it."""

    def __init__(self, state: str) -> None:
        self.state = state


@contextlib.contextmanager
def disposed(registry: sa.orm.registry) -> Iterator[sa.orm.registry]:
    """A registry that may fail to configure: disposed after, so it poisons nobody else."""
    try:
        yield registry
    finally:
        registry.dispose()


# -- 3. transition_state: iterators and the declaration cache -----------------------------


def test_an_iterator_frm_is_read_afresh_by_every_call() -> None:
    """A consumed iterator (or one compiled earlier) must not let a wrong state through."""
    shipped, paid = Order("paid"), Order("paid")
    transition_state(shipped, event="ship", frm=iter(["paid"]), to="shipped", column="state")
    assert shipped.state == "shipped"
    refusing: list[Iterator[str]] = [iter(["packed"]), (s for s in ["packed"])]
    for frm in refusing:
        with pytest.raises(InvalidStateError) as info:
            transition_state(paid, event="ship", frm=frm, to="shipped", column="state")
        assert (info.value.event, info.value.from_state) == ("ship", "paid")
        assert paid.state == "paid"
    transition_state(paid, event="ship", frm=(s for s in ["paid"]), to="shipped",
                     column="state")
    assert paid.state == "shipped"


def _fresh_guard() -> Callable[[Any], bool]:
    return lambda self: True


def test_a_thousand_distinct_lambda_guards_do_not_all_stay_alive() -> None:
    class Bounded(Order):
        pass

    order = Bounded("paid")
    refs = []
    for _ in range(1000):
        guard = _fresh_guard()
        refs.append(weakref.ref(guard))
        transition_state(order, event="touch", frm="*", to="paid", column="state", guard=guard)
    del guard
    gc.collect()
    alive = sum(ref() is not None for ref in refs)
    assert alive <= 128, f"{alive} of 1000 guards are still alive"


# -- 5. no class kept alive ---------------------------------------------------------------


def _exercise(cls: type[Any], obj: Any) -> None:
    obj.go()
    assert obj.status == "b"
    assert can_transition(obj, "back")
    assert not can_transition(obj, "go")
    assert available_transitions(obj) == ["back"]
    assert [t.event for t in transitions(cls)] == ["go", "back"]
    transition_state(obj, event="adhoc", frm="b", to="a", guard=lambda self: True)
    assert obj.status == "a"


def _mapped_class(registry: sa.orm.registry, n: int) -> type[Any]:
    @registry.mapped
    @state_column("status")
    class Mortal:
        __tablename__ = f"lsm_mortal{n}"
        id: Mapped[int] = mapped_column(primary_key=True)
        status: Mapped[str] = mapped_column(sa.String(10))

        @transition(frm="a", to="b")
        def go(self) -> None:
            pass

        @transition(frm="b", to="a", guard=lambda self: True)
        def back(self) -> None:
            pass

    return Mortal


def _plain_class() -> type[Any]:
    @state_column("status")
    class Mortal:
        def __init__(self) -> None:
            self.status = "a"

        @transition(frm="a", to="b")
        def go(self) -> None:
            pass

        @transition(frm="b", to="a", guard=lambda self: True)
        def back(self) -> None:
            pass

    return Mortal


def test_mapped_classes_with_transitions_are_not_kept_alive() -> None:
    refs = []
    for n in range(50):
        registry = sa.orm.registry()
        cls = _mapped_class(registry, n)
        obj = cls(id=1, status="a")
        _exercise(cls, obj)
        registry.dispose()
        refs.append(weakref.ref(cls))
        del cls, obj, registry
    gc.collect()
    alive = [ref() for ref in refs if ref() is not None]
    assert alive == [], f"{len(alive)} of 50 classes are still alive"


def test_plain_classes_with_transitions_are_not_kept_alive() -> None:
    refs = []
    for _ in range(50):
        cls = _plain_class()
        obj = cls()
        _exercise(cls, obj)
        refs.append(weakref.ref(cls))
        del cls, obj
    gc.collect()
    alive = [ref() for ref in refs if ref() is not None]
    assert alive == [], f"{len(alive)} of 50 classes are still alive"


# -- 6. first use from many threads at once -----------------------------------------------


def _threaded_class(registry: sa.orm.registry | None, n: int) -> type[Any]:
    """A class never used before: mapped in ``registry``, or plain without one."""
    class Machine:
        def __init__(self, status: str, flag: bool, mode: str = "x") -> None:
            self.status, self.flag, self.mode = status, flag, mode

        @transition(frm="a", to="b", column="status")
        def go(self) -> None:
            pass

        @transition(frm="x", to="y", column="mode")  # a second state column
        def shift(self) -> None:
            pass

        @transition(frm="*", to="a", column="status")
        def stay(self) -> None:
            pass

        @transition(frm="a", to="c", column="status", guard=lambda self: self.flag)
        def guarded(self) -> None:
            pass

        @transition(frm="b", to="c", column="status")
        def blocked(self) -> None:
            pass

    if registry is None:  # a subclass: compiled at its first use, whatever the version
        return type(f"Child{n}", (Machine,), {})

    @registry.mapped
    class MappedMachine(Machine):
        __tablename__ = f"lsm_threaded{n}"
        id: Mapped[int] = mapped_column(primary_key=True)
        status: Mapped[str] = mapped_column(sa.String(10))
        flag: Mapped[bool]
        mode: Mapped[str] = mapped_column(sa.String(10))

    return MappedMachine


def _probe(cls: type[Any], barrier: threading.Barrier, flag: bool,
           problems: list[object]) -> None:
    try:
        barrier.wait()
        obj = cls(status="a", flag=flag, mode="x")
        expected = ["go", "shift", "stay", "guarded"] if flag else ["go", "shift", "stay"]
        can = {"go": True, "shift": True, "stay": True, "guarded": flag, "blocked": False}
        events = list(can)
        for i in range(2000):
            found = available_transitions(obj)
            if found != expected:
                problems.append(("available_transitions", flag, found))
            event = events[i % len(events)]
            if can_transition(obj, event) is not can[event]:
                problems.append(("can_transition", flag, event))
    except BaseException as exc:
        problems.append(exc)


def test_first_use_from_eight_threads_at_once_answers_right_every_time() -> None:
    """40 fresh classes (mapped ones in a fresh registry, and plain ones), each first
    probed by 8 threads released together; two state columns, so that the answer is
    merged back into declaration order. The interpreter switches threads as often as it
    can, so that a first use is interrupted anywhere."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        _race_first_uses()
    finally:
        sys.setswitchinterval(interval)


def _race_first_uses() -> None:
    for n in range(40):
        registry = sa.orm.registry() if n % 2 == 0 else None
        cls = _threaded_class(registry, n)
        barrier = threading.Barrier(8)
        problems: list[object] = []
        threads = [threading.Thread(target=_probe, args=(cls, barrier, i % 2 == 0, problems))
                   for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        if registry is not None:
            registry.dispose()
        assert not any(thread.is_alive() for thread in threads)
        assert problems[:5] == [], (n, cls.__name__, len(problems))


# -- 9. the event is the attribute's name -------------------------------------------------


def test_a_transition_assigned_under_another_name_is_that_event(signals: SignalLog) -> None:
    class Renamed:
        def __init__(self) -> None:
            self.state = "a"

        def _implementation(self) -> None:
            pass

        go = transition(frm="a", to="b", column="state")(_implementation)

    assert [t.event for t in transitions(Renamed)] == ["go"]
    obj = Renamed()
    obj.go()
    assert obj.state == "b"
    assert [h.payload["event"] for h in signals.of("transition-succeeded")] == ["go"]
    with pytest.raises(TransitionError) as info:
        obj.go()
    assert info.value.event == "go"
    assert str(info.value).startswith("cannot go() Renamed")
    assert [h.payload["event"] for h in signals.of("transition-invalid")] == ["go"]
    assert not can_transition(obj, "go")
    with pytest.raises(ValueError, match="no transition '_implementation'"):
        can_transition(obj, "_implementation")


def test_one_decorator_applied_to_two_methods_declares_two_transitions() -> None:
    shared = transition(frm="a", to="b", column="s")

    class Two:
        def __init__(self) -> None:
            self.s, self.ran = "a", ""

        @shared
        def x(self) -> str:
            self.ran = "x"
            return "x"

        @shared
        def y(self) -> str:
            self.ran = "y"
            return "y"

    assert [(t.event, t.frm, t.to) for t in transitions(Two)] == [
        ("x", frozenset({"a"}), "b"), ("y", frozenset({"a"}), "b")]
    first, second = Two(), Two()
    assert (first.x(), first.s, first.ran) == ("x", "b", "x")
    assert (second.y(), second.s, second.ran) == ("y", "b", "y")
    with pytest.raises(InvalidStateError) as info:
        first.y()
    assert (info.value.event, first.ran) == ("y", "x")


# -- 10. guards called with the instance alone --------------------------------------------


class Gate:
    def __init__(self, ok: bool) -> None:
        self.state, self.ok = "shut", ok

    def __bool__(self) -> bool:
        return self.ok

    @transition(frm="shut", to="open", column="state", guard=operator.attrgetter("ok"))
    def open(self, by: str, *, note: str = "") -> str:
        return f"{by}{note}"

    @transition(frm="shut", to="ajar", column="state", guard=bool)
    def crack(self, by: str) -> str:
        return by


@pytest.mark.parametrize("event", ["open", "crack"])
def test_a_guard_without_a_signature_is_called_with_the_instance_alone(event: str) -> None:
    allowed, refused = Gate(True), Gate(False)
    assert can_transition(allowed, event, "ada")
    assert not can_transition(refused, event, "ada")
    assert available_transitions(allowed) == ["open", "crack"]
    assert available_transitions(refused) == []
    assert getattr(allowed, event)("ada") == "ada"
    assert allowed.state != "shut"
    with pytest.raises(GuardError) as info:
        getattr(refused, event)("ada")
    assert (info.value.event, refused.state) == (event, "shut")


class Sink:
    def __init__(self) -> None:
        self.state = "a"
        self.guarded: list[object] = []

    @transition(frm="a", to="b", column="state",
                guard=lambda self: self.guarded.append(self) is None)
    def go(self, *args: Any, **kw: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return args, kw


def test_a_self_only_guard_of_a_method_taking_anything_gets_no_arguments() -> None:
    sink = Sink()
    assert can_transition(sink, "go", 1, 2, x=3)
    assert sink.go(1, 2, x=3) == ((1, 2), {"x": 3})
    assert sink.guarded == [sink, sink]
    assert sink.state == "b"


# -- 11. a timestamp that cannot be set ---------------------------------------------------


def test_a_read_only_timestamp_fails_the_call_and_leaves_the_state(
        frozen_clock: datetime) -> None:
    @state_column("state")
    class Stamped:
        def __init__(self) -> None:
            self.state = "a"

        @property
        def done_at(self) -> datetime | None:
            return None

        @transition(frm="a", to="done", timestamp=True)
        def finish(self) -> None:
            pass

    stamped = Stamped()
    with pytest.raises(AttributeError):
        stamped.finish()
    assert stamped.state == "a"
    assert stamped.done_at is None


# -- 12. bad declarations name the bad value ----------------------------------------------


@pytest.mark.parametrize(("option", "value"), [
    ("frm", None),
    ("frm", 1.5),
    ("frm", object()),
    ("frm", b"pending"),
    ("frm", {"a": 1}),
    ("guard", 123),
], ids=["frm-None", "frm-float", "frm-object", "frm-bytes", "frm-dict", "guard-int"])
def test_a_bad_argument_to_transition_is_named(option: str, value: object) -> None:
    arguments: dict[str, Any] = {"frm": "a", "to": "b", option: value}
    with pytest.raises(DeclarationError) as info:
        transition(**arguments)
    assert f"{option}={value!r}" in str(info.value), str(info.value)


@pytest.mark.parametrize(("option", "value"), [("event", 1), ("event", ""), ("body", 42)])
def test_a_bad_argument_to_transition_state_is_named(option: str, value: object) -> None:
    order = Order("paid")
    arguments: dict[str, Any] = {"event": "ship", "frm": "paid", "to": "shipped",
                                 "column": "state", option: value}
    with pytest.raises(DeclarationError) as info:
        transition_state(order, **arguments)
    assert f"{option}={value!r}" in str(info.value), str(info.value)
    assert order.state == "paid"


def test_state_column_on_something_that_is_not_a_class_is_named() -> None:
    with pytest.raises(DeclarationError) as info:
        state_column("status")(42)  # type: ignore[type-var]
    assert "42" in str(info.value)


def test_a_state_longer_than_its_string_column_fails_at_configuration() -> None:
    registry = sa.orm.registry()

    @registry.mapped
    class Short:
        __tablename__ = "lsm_short"
        id: Mapped[int] = mapped_column(primary_key=True)
        status: Mapped[str] = mapped_column(sa.String(5))

        @transition(frm="new", to="toolong", column="status")
        def go(self) -> None:
            pass

    with disposed(registry), pytest.raises(DeclarationError) as info:
        registry.configure()
    assert str(info.value).startswith("Short.go: "), str(info.value)
    assert "'toolong'" in str(info.value)


async def _async_body(self: Any) -> None:
    pass


def _generator_body(self: Any) -> Iterator[None]:
    yield


async def _async_guard(self: Any) -> bool:
    return True


async def _async_generator_body(self: Any) -> AsyncIterator[None]:
    yield


@pytest.mark.parametrize("body", [_generator_body, _async_generator_body],
                         ids=["generator", "async generator"])
def test_a_generator_body_is_refused_by_name(body: Callable[[Any], Any]) -> None:
    decorate = transition(frm="a", to="b", column="s")
    with pytest.raises(DeclarationError) as info:
        decorate(body)
    assert body.__qualname__ in str(info.value), str(info.value)
    assert str(info.value).endswith("use a plain def or an async def")


def test_an_async_body_declares_an_async_transition() -> None:
    class Thing:
        s = "a"
        go = transition(frm="a", to="b", column="s")(_async_body)

    assert inspect.iscoroutinefunction(Thing.go)
    assert inspect.iscoroutinefunction(Thing().go)


def test_an_async_guard_of_a_sync_transition_is_refused_by_name() -> None:
    decorate = transition(frm="a", to="b", column="s", guard=_async_guard)
    with pytest.raises(DeclarationError) as info:
        decorate(_plain_body)
    assert re.search(r"guard=<function _async_guard\b", str(info.value)), str(info.value)
    assert "async def" in str(info.value)
    with pytest.raises(DeclarationError, match="_async_guard"):
        transition_state(object(), event="go", frm="a", to="b", column="s",
                         guard=_async_guard)


def _plain_body(self: Any) -> None:
    pass


@pytest.mark.parametrize(("probe", "args"), [
    (available_transitions, (None,)),
    (available_transitions, (object(),)),
    (can_transition, (None, "x")),
], ids=["available-None", "available-object", "can-None"])
def test_probing_something_without_transitions_is_a_type_error(
        probe: Callable[..., object], args: tuple[Any, ...]) -> None:
    with pytest.raises(TypeError):
        probe(*args)


def _generator_guard(self: Any) -> Iterator[bool]:
    yield True


async def _async_generator_guard(self: Any) -> AsyncIterator[bool]:
    yield True


@pytest.mark.parametrize("guards", [[_generator_guard], ["ready", _generator_guard],
                                    [_async_generator_guard]],
                         ids=["generator", "after a name", "async generator"])
def test_a_generator_guard_is_refused_wherever_it_stands(guards: list[Any]) -> None:
    with pytest.raises(DeclarationError, match="a generator guard cannot be checked"):
        transition(frm="a", to="b", column="s", guard=guards)


def test_transition_state_refuses_an_async_body() -> None:
    with pytest.raises(DeclarationError, match=r"use a plain def$"):
        transition_state(object(), event="go", frm="a", to="b", column="s",
                         body=_async_body)  # type: ignore[arg-type]
