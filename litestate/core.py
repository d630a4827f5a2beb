"""Decorator-based, race-free state transitions for SQLAlchemy models and plain objects.

A method decorated with :func:`transition` becomes a checked, atomic state change::

    @state_column("status")
    class Todo(Base):
        ...
        @transition(frm="pending", to="doing", timestamp="started_at")
        def start(self, user: str) -> None:
            self.started_by = user

    todo.start("ada")   # or TransitionError, with nothing written

**When a declaration is checked.** ``@transition(...)`` checks its own arguments at
once. A class's transitions are *compiled* the first time they are needed: when
SQLAlchemy configures the class's mapper (``configure_mappers()``, or the first use of
any mapped class), or, for a plain class, at its first call, probe or
:func:`transitions`. Compiling turns each declaration into a private plan (the states as
the column holds them, the guards as callables, the argument check, the precompiled
UPDATE) and a public, frozen :class:`Transition`. Declaration errors are raised there.

**The steps of a call**, in order:

1. check the call's arguments against the method's parameters (``TypeError``);
2. for an object in a session, *settle* (flush a pending row or an unsaved state edit)
   and, with ``lock=True``, *lock* (``SELECT ... FOR UPDATE``);
3. *read* the state and *check* it against ``frm`` (``reason="invalid"``) and the guards
   (``reason="guard"``);
4. the atomic section: *write* ``UPDATE ... WHERE <identity> AND state = <state read>``
   (a lost race is ``reason="conflict"``), the body, the plan's extra steps, a flush and
   :data:`transition_succeeded`, inside a SAVEPOINT when any of those can run; then
   *finish* (release, queue :data:`transition_committed`) or *undo* (roll back, restore
   the object, the plan's failure steps, :data:`transition_failed`).

litestate never commits. Plain objects and objects outside a session get the same checks
in memory, and their state and timestamp are restored if the body raises.

=======================  ==========================================  =======================
signal (sender: class)   sent                                        extra payload
=======================  ==========================================  =======================
transition_succeeded     inside the transaction, after the body      duration
transition_invalid       on a refusal, nothing written               reason, error, duration
transition_failed        after the body (or the write) failed        error, duration
transition_committed     after the database committed the write      --
=======================  ==========================================  =======================

Every payload has ``record``, ``record_id``, ``event``, ``from_state``, ``to_state``,
``column``, ``args`` and ``kwargs``. The README is the full manual.
"""

from __future__ import annotations

import contextlib
import dis
import enum
import functools
import inspect
import operator
import sqlite3
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from time import perf_counter
from types import MappingProxyType
from typing import Any, Concatenate, NamedTuple, NoReturn, ParamSpec, TypeVar, cast

import sqlalchemy as sa
from blinker import NamedSignal, Namespace
from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Mapper, QueryableAttribute, Session, SessionTransaction
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from sqlalchemy.orm.exc import DetachedInstanceError, ObjectDeletedError, StaleDataError

from litestate import _dialects, _sqla

__all__ = [
    "HTTP_STATUS",
    "Action",
    "ConflictError",
    "DeclarationError",
    "GuardError",
    "InvalidStateError",
    "Transition",
    "TransitionArgumentError",
    "TransitionError",
    "UnknownTransitionError",
    "actions",
    "available_transitions",
    "can_transition",
    "fire",
    "set_clock",
    "state_column",
    "transition",
    "transition_committed",
    "transition_failed",
    "transition_invalid",
    "transition_state",
    "transition_succeeded",
    "transitions",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_M = TypeVar("_M")
_C = TypeVar("_C", bound=type)
State = str | int | enum.Enum
#: A guard: a callable taking the instance (and, optionally, the call's arguments), or
#: the name of a method, property or column of the class. Every member means "takes the
#: instance first", spelled for the type checkers: pyright types an unannotated lambda's
#: parameters from the member it fits that has the most parameters, so each arity has a
#: ``Concatenate`` (``Callable[..., object]`` would leave them Unknown in strict mode);
#: mypy checks a list of guards against the exact arities alone.
Guard = (
    str
    | Callable[Concatenate[Any, ...], object]
    | Callable[Concatenate[Any, Any, ...], object]
    | Callable[Concatenate[Any, Any, Any, ...], object]
    | Callable[Concatenate[Any, Any, Any, Any, ...], object]
    | Callable[[Any], object]
    | Callable[[Any, Any], object]
    | Callable[[Any, Any, Any], object]
    | Callable[[Any, Any, Any, Any], object]
)

class _ConnectionOrder(dict[Any, None]):
    """A receiver-id set in connection order, for blinker's ``set_class`` hook (its own
    ``set`` iterates ids, i.e. memory addresses, in no useful order). A dict: its union
    and copy, which blinker makes on every send, cost what a set's do."""

    def add(self, item: Any) -> None:
        self[item] = None

    def discard(self, item: Any) -> None:
        self.pop(item, None)


class _Signal(NamedSignal):
    set_class = _ConnectionOrder  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]


def _ordered_signal(name: str) -> _Signal:
    return cast(_Signal, _signals.setdefault(name, _Signal(name)))


_signals = Namespace()
#: Sent inside the transaction once the state is written, the body ran and was flushed.
transition_succeeded = _ordered_signal("transition-succeeded")
#: Sent when a transition is refused (``reason``: invalid, guard or conflict).
transition_invalid = _ordered_signal("transition-invalid")
#: Sent when the body, a ``transition_succeeded`` receiver or the write itself failed.
transition_failed = _ordered_signal("transition-failed")
#: Sent once the database has committed the transaction holding the write; never after
#: a rollback of it.
transition_committed = _ordered_signal("transition-committed")


class TransitionError(Exception):
    """Raised when a transition cannot fire; ``reason`` says why and nothing was written."""

    def __init__(
        self, record: Any, event: str, from_state: Any, to_state: Any, column: str,
        reason: str, detail: str = "",
    ) -> None:
        super().__init__(record, event, from_state, to_state, column, reason, detail)
        #: The object the transition was called on.
        self.record = record
        #: The transition's name (the method name).
        self.event = event
        #: The state read when the transition was attempted.
        self.from_state = from_state
        #: The state the transition would have written.
        self.to_state = to_state
        #: The attribute holding the state.
        self.column = column
        #: ``"invalid"``, ``"guard"`` or ``"conflict"``.
        self.reason = reason
        #: What exactly refused: the allowed states, the guard, the lost race.
        self.detail = detail

    def __str__(self) -> str:
        return (
            f"cannot {self.event}() {_describe(self.record)}: {self.column} is "
            f"{self.from_state!r}, target {self.to_state!r} ({self.reason}: {self.detail})"
        )

    @property
    def http_status(self) -> int:
        """The HTTP status a web view answers this refusal with (see :data:`HTTP_STATUS`;
        a reason of your own, in an error you raise yourself, is a 409)."""
        return HTTP_STATUS.get(self.reason, 409)

    def as_dict(self) -> dict[str, Any]:
        """The refusal as JSON-ready data for an error response: the states as the column
        stores them (an Enum member as its value or name)."""
        return {"error": str(self), "event": self.event, "reason": self.reason,
                "detail": self.detail, "column": self.column,
                "from_state": _plain(self.from_state), "to_state": _plain(self.to_state)}


class InvalidStateError(TransitionError):
    """The current state is not one the transition may start from."""


class GuardError(TransitionError):
    """A guard returned a false value."""


class ConflictError(TransitionError):
    """The row changed (or vanished) between the read and the write: a lost race."""


_ERRORS = {"invalid": InvalidStateError, "guard": GuardError, "conflict": ConflictError}
#: The HTTP status for each refusal reason. ``invalid`` and ``conflict``: 409 Conflict,
#: the record's state does not allow the request (now, or any longer). ``guard``: 422
#: Unprocessable Content, the request is understood but a rule about the record refuses
#: it; who may ask is the view's to check (403) before it calls.
HTTP_STATUS: Mapping[str, int] = MappingProxyType({"invalid": 409, "conflict": 409,
                                                   "guard": 422})


class DeclarationError(ValueError):
    """A transition or state column is declared wrongly; the message names the bad value."""


class UnknownTransitionError(ValueError):
    """:func:`fire` was given a name that is not a declared transition (a 404 in a view)."""


class TransitionArgumentError(TypeError):
    """:func:`fire` was given arguments that do not fit the transition's method (a 400 in a
    view); raised before anything runs. The transition's own errors are never this."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


_clock: Callable[[], datetime] = _utcnow


def set_clock(clock: Callable[[], datetime] | None) -> Callable[[], datetime]:
    """Make timestamps read ``clock()`` (``None``: the real UTC clock); returns the old one."""
    global _clock
    previous, _clock = _clock, clock or _utcnow
    return previous


@dataclass(frozen=True, slots=True)
class Transition:
    """One compiled transition of one class, as :func:`transitions` lists it (frozen)."""

    #: The event name: the attribute the method is declared as.
    event: str
    #: The states it may start from, as the column holds them; ``None`` for ``"*"``.
    frm: frozenset[Any] | None
    #: The state it writes.
    to: Any
    #: The attribute holding the state.
    column: str
    #: The attribute stamped with the time, or ``None``.
    timestamp: str | None
    #: The guards' labels: a name as written, or a callable's qualified name.
    guards: tuple[str, ...]
    #: Whether the state is read under ``SELECT ... FOR UPDATE``.
    lock: bool
    #: The method's signature, without ``self`` (not compared: defaults may be unhashable).
    signature: inspect.Signature = field(compare=False)
    #: The declaration's ``meta=``: free-form data for views (a label, an icon), read-only.
    meta: Mapping[str, Any] = field(compare=False)
    #: The state a raising body leaves the row in (``on_error=``), or ``None``.
    on_error: Any = None

    def __repr__(self) -> str:
        frm = "*" if self.frm is None else " | ".join(sorted(map(repr, self.frm)))
        return f"<Transition {self.event}: {frm} -> {self.to!r} on {self.column}>"


@dataclass(frozen=True, slots=True)
class Action:
    """One transition of one object, as a view shows it: a button, enabled or not, and
    the form fields it needs (see :func:`actions`)."""

    #: The event name, for :func:`fire`.
    event: str
    #: The state it would write.
    to_state: Any
    #: Whether it can fire now, as :func:`available_transitions` answers.
    allowed: bool
    #: ``None`` when allowed, else ``"invalid"`` (the state) or ``"guard"``.
    reason: str | None
    #: What refuses, in words ("" when allowed): the allowed states, or the guard.
    detail: str
    #: The method's parameters beyond ``self``: names, annotations, defaults.
    parameters: tuple[inspect.Parameter, ...] = field(compare=False)
    #: The declaration's ``meta=``.
    meta: Mapping[str, Any] = field(compare=False)
    #: The compiled transition.
    transition: Transition


def transition(
    frm: State | Iterable[State], to: State, *, column: str | None = None,
    timestamp: bool | str | None = None, guard: Guard | Sequence[Guard] | None = None,
    lock: bool = False, meta: Mapping[str, Any] | None = None,
    log: type | bool | None = None, log_args: Iterable[str] = (),
    on_error: State | None = None, leased: bool = False,
) -> Callable[[Callable[Concatenate[_M, _P], _R]], Callable[Concatenate[_M, _P], _R]]:
    """Turn a method into a checked transition from ``frm`` (``"*"``: any) to ``to``.

    ``column`` overrides the class's :func:`state_column`; ``timestamp=True`` stamps
    ``f"{to}_at"``, a string names the column; ``guard`` is a callable, a method name or
    a list of them, all of which must hold; ``lock=True`` reads the state under
    ``SELECT ... FOR UPDATE``; ``meta`` is free-form data for views, kept on
    :class:`Transition` and :class:`Action`; ``log`` overrides the state column's log
    model (``False``: no row), ``log_args`` names call arguments copied into the row (see
    :mod:`litestate.history`); ``on_error`` is the state a raising body leaves the row in
    (see :mod:`litestate.recovery`); ``leased=True`` makes the write succeed only for the
    worker whose :func:`litestate.claim` holds the row's lease, and ends the lease (see
    :mod:`litestate.bulk`). The method keeps its parameters and return value.
    """
    options = _Spec(None, "", _states(frm), _state(to, "to"), _column_option(column),
                    _timestamp_option(timestamp), _guard_list(guard), _lock_option(lock),
                    _meta_option(meta), _log_option(log), _log_args_option(log_args),
                    None if on_error is None else _state(on_error, "on_error"),
                    _flag_option("leased", leased))

    def decorate(fn: Callable[Concatenate[_M, _P], _R]) -> Callable[Concatenate[_M, _P], _R]:
        if isinstance(fn, _Declared):
            raise DeclarationError(
                f"@transition applied twice to {getattr(fn.__litestate__.fn, '__qualname__', fn)}"
                ": a method is one transition; declare another method for the other")
        _check_body(fn, "@transition decorates a method", async_ok=True)
        if not inspect.iscoroutinefunction(fn):
            _check_sync_guards(options.guards)
        # Two `def start` in one class body leave one attribute; see the first one here.
        name = getattr(fn, "__name__", "")
        caller = sys._getframe(1)  # pyright: ignore[reportPrivateUsage] - the class body
        if isinstance(caller.f_locals.get(name), _Declared):
            raise DeclarationError(f"transition {name!r} is declared twice")
        return cast(Callable[Concatenate[_M, _P], _R], _Declared(options.with_fn(fn)))

    return decorate


def state_column(column: str, *, log: type | None = None, changed_at: str | None = None,
                 attempts: str | None = None, last_error: str | None = None,
                 last_error_at: str | None = None) -> Callable[[_C], _C]:
    """Class decorator: the column transitions use when they do not name one.

    ``log`` names a :class:`litestate.TransitionLog` model: every successful transition
    on the column inserts one row of it in its atomic section. ``changed_at`` names a
    ``DateTime`` column stamped, in the state's own UPDATE, by every transition on the
    column. ``attempts`` (an Integer column, incremented), ``last_error`` (a String or
    Text column: the error's type and message) and ``last_error_at`` (a ``DateTime``) are
    set in the same UPDATE that moves a row to a transition's ``on_error`` state.
    Several ``@state_column`` decorators declare several columns, each with its options;
    the top one is the default column.

    It only records them: the class is compiled later (see the module docstring), so
    a relationship to a class defined further down still works.
    """
    if not isinstance(column, str) or not column:  # pyright: ignore[reportUnnecessaryIsInstance]
        raise DeclarationError(f"@state_column({column!r}): a column is a non-empty str")
    if log is not None and (not isinstance(log, type) or log is bool):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise DeclarationError(f"@state_column({column!r}, log={log!r}): log is a "
                               "TransitionLog model class")
    named = {"changed_at": changed_at, "attempts": attempts, "last_error": last_error,
             "last_error_at": last_error_at}
    for option, value in named.items():
        if value is not None and (not isinstance(value, str) or not value):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise DeclarationError(f"@state_column({column!r}, {option}={value!r}): "
                                   f"{option} names a column")
    options = _ColumnOptions(log, changed_at, attempts, last_error, last_error_at)

    def decorate(cls: _C) -> _C:
        if not isinstance(cls, type):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise DeclarationError(f"@state_column({column!r}) decorates a class, not {cls!r}")
        type.__setattr__(cls, "__litestate_column__", column)  # the top decorator runs last
        # The class's own record, starting from what it inherits.
        columns = dict(column_options(cls))
        columns[column] = options
        type.__setattr__(cls, _COLUMNS, MappingProxyType(columns))
        if _KEY in cls.__dict__:  # compiled too early (a call before the decorator ran)
            type.__delattr__(cls, _KEY)
        return cls

    return decorate


def can_transition(obj: object, event: str, /, *args: Any, **kwargs: Any) -> bool:
    """Whether ``getattr(obj, event)(*args, **kwargs)`` would pass its state and guards now.

    Reads attributes only: no write, no signal, no lock. Arguments that do not fit the
    method raise ``TypeError``, as the call would.
    """
    o: Any = obj
    cls: Any = type(obj)
    try:  # the class's own compiled machine (an inherited one is another class's)
        machine = cls.__litestate_machine__
        plan = machine.plans[event] if machine.owner is cls else None
    except (AttributeError, KeyError, TypeError):  # TypeError: an unhashable event
        plan = None
    if plan is None:
        plan = _plan_of(obj, event)
    if args or kwargs or not plan.only_self:
        plan.check(obj, *args, **kwargs)
    # A loaded mapped attribute is in __dict__: skip the descriptor; else read as the call.
    current = None
    if plan.mapped:
        state = o._sa_instance_state
        if state.session_id is not None and _sqla.is_deleted(state):
            return False
        current = o.__dict__.get(plan.column)
    if current is None:
        current = _read_for_probe(plan, obj)
        if current is None:
            return False
    frm = plan.frm
    if frm is not None and current not in frm and plan.normalize(current) not in frm:
        return False
    return not plan.guards or _first_refusing_guard(plan, obj, args, kwargs,
                                                    askable_only=False) is None


def available_transitions(obj: object) -> list[str]:
    """The transitions that can fire now, in declaration order, for views and templates.

    Guards that need the call's arguments cannot be asked here and count as passing.
    """
    cls: Any = type(obj)
    machine = getattr(cls, _KEY, None)
    if machine is None or machine.owner is not cls or not machine.declared:
        machine = _machine_of_instance(obj)
    found: list[_Plan] = []
    if machine.mapped and _deleted_in_session(obj):
        return []
    for reader, by_state, any_state in machine.by_column:
        current = obj.__dict__.get(reader.column) if reader.mapped else None
        if current is None:
            current = _read_for_probe(reader, obj)
            if current is None:
                continue
        candidates = by_state.get(current)
        if candidates is None:
            candidates = by_state.get(reader.normalize(current), any_state)
        for plan in candidates:
            if not plan.guards or _first_refusing_guard(plan, obj, (), {},
                                                        askable_only=True) is None:
                found.append(plan)
    if len(machine.by_column) > 1:  # several state columns: back to declaration order
        found.sort(key=machine.order.__getitem__)
    return [plan.event for plan in found]


def actions(obj: object) -> list[Action]:
    """Every transition of ``obj``, in declaration order, allowed now or not and why.

    It asks what :func:`available_transitions` asks (guards that need the call's
    arguments count as passing), so the events of the allowed actions are exactly
    ``available_transitions(obj)``.
    """
    machine = _machine_of_instance(obj)
    gone = machine.mapped and _deleted_in_session(obj)
    states: dict[str, Any] = {}
    found: list[Action] = []
    for plan in machine.plans.values():
        if plan.column not in states:
            states[plan.column] = None if gone else _read_for_probe(plan, obj)
        reason, detail = _why_not(plan, obj, states[plan.column], gone)
        found.append(Action(plan.event, plan.to, reason is None, reason, detail,
                            plan.parameters, plan.desc.meta, plan.desc))
    return found


def _why_not(plan: _Plan, obj: object, current: Any, gone: bool) -> tuple[str | None, str]:
    """``(reason, detail)`` of a probe's refusal, ``(None, "")`` if it would pass."""
    if current is None:
        return "invalid", ("the object was deleted in this session" if gone else
                           f"{plan.column} is not set" if _is_unsaved(obj) else
                           "the row no longer exists")
    frm = plan.frm
    if frm is not None and current not in frm and plan.normalize(current) not in frm:
        return "invalid", plan.starts_from
    label = _first_refusing_guard(plan, obj, (), {}, askable_only=True) if plan.guards \
        else None
    return (None, "") if label is None else ("guard", f"guard {label} returned false")


def _is_unsaved(obj: object) -> bool:
    state = getattr(obj, "_sa_instance_state", None)
    return state is None or state.key is None


def fire(obj: object, event: str, /, *args: Any, **kwargs: Any) -> Any:
    """Call the transition named ``event`` of ``obj``: ``POST /orders/1/{event}`` in one
    line. Before anything runs, a name that is not a declared transition (another method,
    a dunder) is an :class:`UnknownTransitionError` (a ``ValueError``) naming the declared
    ones, and arguments that do not fit are a :class:`TransitionArgumentError` (a
    ``TypeError``): a view maps those to 404 and 400, and what the transition itself
    raises stays its own."""
    machine = _machine_of_instance(obj)
    plan = machine.plans.get(event) if isinstance(event, str) else None  # pyright: ignore[reportUnnecessaryIsInstance]
    if plan is None:
        raise UnknownTransitionError(f"{type(obj).__name__} has no transition {event!r}; it "
                                     f"has {list(machine.plans)}")
    try:
        plan.check(obj, *args, **kwargs)
    except TypeError as exc:
        raise TransitionArgumentError(str(exc)) from None
    return getattr(type(obj), event)(obj, *args, **kwargs)


def transitions(cls: type) -> tuple[Transition, ...]:
    """Every transition of ``cls`` (inherited ones included), in declaration order."""
    if not isinstance(cls, type):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"transitions() takes a class, not {cls!r}")
    machine = _machine_of(cls)
    if not machine.declared:
        raise TypeError(f"{cls.__name__} declares no transitions")
    return tuple(plan.desc for plan in machine.plans.values())


def transition_state(
    obj: object, *, event: str, frm: State | Iterable[State], to: State,
    column: str | None = None, timestamp: bool | str | None = None,
    guard: Guard | Sequence[Guard] | None = None, lock: bool = False,
    body: Callable[[], _R] | None = None,
) -> _R | None:
    """Fire a transition declared at the call site (the Ruby ``transition_state``).

    Same checks, atomicity and signals as a decorated method; ``body()`` runs in the
    atomic section and its result is returned. Compiled declarations are cached per
    class, for the last 128 distinct declarations.
    """
    if not isinstance(event, str) or not event.isidentifier():  # pyright: ignore[reportUnnecessaryIsInstance]
        raise DeclarationError(f"transition_state(event={event!r}): an event is a name")
    if body is not None:
        _check_body(body, f"transition_state(body={body!r}): a body is a function")
    spec = _Spec(_no_arguments, event, _states(frm), _state(to, "to"), _column_option(column),
                 _timestamp_option(timestamp), _guard_list(guard), _lock_option(lock), _NO_META)
    _check_sync_guards(spec.guards)
    machine = _machine_of(type(obj), adhoc=True)
    plan = machine.adhoc_plan(spec)
    if body is not None:
        def call_body(_obj: object) -> _R:
            return body()

        plan = plan.with_body(call_body)
    fire_ = _fire_timed if _timing else _fire
    return cast("_R | None", fire_(plan, obj, (), {}))


# -- declaration: what the decorator records -------------------------------------------

_KEY = "__litestate_machine__"  # the compiled machine, in the class's own __dict__
_COLUMNS = "__litestate_columns__"  # @state_column's options, per column
_MISSING: Any = object()


class _ColumnOptions(NamedTuple):
    """What ``@state_column`` records for one column."""

    log: type | None
    changed_at: str | None
    attempts: str | None = None  # the error-state columns (litestate.recovery)
    last_error: str | None = None
    last_error_at: str | None = None


_NO_COLUMNS: Mapping[str, _ColumnOptions] = MappingProxyType({})


def column_options(cls: type) -> Mapping[str, _ColumnOptions]:
    """The options ``@state_column`` recorded for each column of ``cls`` (inherited too)."""
    options: Mapping[str, _ColumnOptions] = getattr(cls, _COLUMNS, _NO_COLUMNS)
    return options


class _Spec(NamedTuple):
    """A transition as declared, its arguments checked, before it is compiled."""

    fn: Callable[..., Any] | None
    event: str
    frm: tuple[Any, ...] | None
    to: Any
    column: str | None
    timestamp: bool | str | None
    guards: tuple[Guard, ...]
    lock: bool
    meta: Mapping[str, Any]
    log: type | bool | None = None  # None: the column's; False: none
    log_args: tuple[str, ...] = ()
    on_error: Any = None  # the state a raising body leaves the row in
    leased: bool = False  # only the holder of the row's lease may write (litestate.bulk)

    def with_fn(self, fn: Callable[..., Any]) -> _Spec:
        return self._replace(fn=fn, event=getattr(fn, "__name__", ""))

    def cache_key(self) -> tuple[Any, ...]:
        """Equal for equal declarations only (a state's type counts: 1 is not True)."""
        frm: tuple[tuple[type[Any], Any], ...] | None = None
        if self.frm is not None:
            frm = tuple((state.__class__, state) for state in self.frm)
        return (self.event, frm, self.to.__class__, self.to, self.column, self.timestamp,
                self.guards, self.lock, self.log, self.log_args, self.on_error.__class__,
                self.on_error, self.leased)


class _Declared:
    """What ``@transition`` leaves in the class body until the class exists."""

    def __init__(self, spec: _Spec) -> None:
        self.__litestate__ = spec

    def __set_name__(self, owner: type, name: str) -> None:
        # The event is the attribute name; each name gets a method of its own, which
        # knows its class (litestate.transition_many(session, Model.event) needs it).
        method = _method(self.__litestate__._replace(event=name))
        method.__litestate_owner__ = owner  # type: ignore[attr-defined]  # pyright: ignore[reportFunctionMemberAccess]
        setattr(owner, name, method)

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("@transition decorates methods defined in a class body (not a "
                        "staticmethod or classmethod)")


def _method(spec: _Spec) -> Callable[..., Any]:
    """The method a transition becomes: a plain function, the fastest bound method."""
    event = spec.event
    assert spec.fn is not None
    if inspect.iscoroutinefunction(spec.fn):
        from litestate import aio

        return _named(aio.async_method(spec), spec)

    @functools.wraps(spec.fn)
    def method(self: object, *args: Any, **kwargs: Any) -> Any:
        cls: Any = type(self)
        try:  # the class's own compiled machine (an inherited one is another class's)
            machine = cls.__litestate_machine__
            plan = machine.plans[event]
            if machine.owner is not cls or plan.spec is not spec:
                raise LookupError
        except (AttributeError, LookupError):
            plan = _plan_for(cls, spec)
        if _timing:
            return _fire_timed(plan, self, args, kwargs)
        return _fire(plan, self, args, kwargs)

    return _named(method, spec)


def _named(method: Callable[..., Any], spec: _Spec) -> Callable[..., Any]:
    method.__litestate__ = spec  # type: ignore[attr-defined]  # pyright: ignore[reportFunctionMemberAccess]
    method.__name__ = spec.event  # `begin = start` in a class body declares the event "begin"
    prefix = method.__qualname__.rpartition(".")[0]
    method.__qualname__ = f"{prefix}.{spec.event}" if prefix else spec.event
    return method


def _plan_for(cls: type, spec: _Spec) -> _Plan:
    """The plan a method fires for ``cls``: its transition's, or (reached through
    ``super()`` from an override) the plan of the declaration it was made from."""
    machine = _machine_of(cls)
    plan = machine.plans.get(spec.event)
    if plan is None or plan.spec is not spec:
        plan = machine.overridden_plan(spec)
    return plan


def _specs_of(cls: type) -> dict[str, _Spec]:
    """The class's transitions, inherited ones included, in declaration order."""
    specs: dict[str, _Spec] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            spec = getattr(value, "__litestate__", None) if callable(value) else None
            if isinstance(value, _Declared):
                raise DeclarationError(
                    f"{cls.__name__}.{name}: a transition assigned after the class was "
                    "created; declare it in the class body")
            if isinstance(getattr(value, "__func__", None), _Declared):  # under @staticmethod
                raise DeclarationError(
                    f"{cls.__name__}.{name}: a transition is a method of the instance; "
                    f"remove @{type(value).__name__}")
            if not isinstance(spec, _Spec):
                specs.pop(name, None)  # overridden by something that is not a transition
            elif spec.event == name:  # else an alias (`other = start`): the same event
                specs[name] = spec
    return specs


def _column_option(column: object) -> str | None:
    if column is not None and (not isinstance(column, str) or not column):
        raise DeclarationError(f"@transition(column={column!r}): a column is a non-empty str")
    return column


def _timestamp_option(timestamp: object) -> bool | str | None:
    if not (timestamp is None or isinstance(timestamp, bool | str)) or timestamp == "":
        raise DeclarationError(f"@transition(timestamp={timestamp!r}): use True or a column")
    return timestamp


_NO_META: Mapping[str, Any] = MappingProxyType({})


def _meta_option(meta: object) -> Mapping[str, Any]:
    if meta is None:
        return _NO_META
    entries: dict[Any, Any] | None = dict(cast(Any, meta)) if isinstance(meta, Mapping) else None
    if entries is None or not all(isinstance(key, str) for key in entries):
        raise DeclarationError(f"@transition(meta={meta!r}): meta is a mapping with str keys")
    return MappingProxyType(entries)


def _log_option(log: object) -> type | bool | None:
    if log is None or log is False or (isinstance(log, type) and log is not bool):
        return cast("type | bool | None", log)
    raise DeclarationError(f"@transition(log={log!r}): log is a TransitionLog model, False "
                           "(no row) or None (the state column's)")


def _log_args_option(log_args: object) -> tuple[str, ...]:
    given: Any = log_args  # not narrowed: a tuple of Any
    names: tuple[Any, ...] = () if isinstance(log_args, str) or not isinstance(
        log_args, Iterable) else tuple(given)
    if isinstance(log_args, str) or not all(isinstance(n, str) and n.isidentifier()
                                            for n in names):
        raise DeclarationError(f"@transition(log_args={log_args!r}): log_args is a tuple of "
                               "parameter names")
    return names


def _lock_option(lock: object) -> bool:
    return _flag_option("lock", lock)


def _flag_option(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise DeclarationError(f"@transition({name}={value!r}): {name} is True or False")
    return value


def _states(frm: object) -> tuple[Any, ...] | None:
    if isinstance(frm, str) and frm == "*":
        return None
    if isinstance(frm, str | int | enum.Enum) and not isinstance(frm, bool):
        return (_state(frm, "frm"),)
    if isinstance(frm, str | bytes | bytearray | Mapping) or not isinstance(frm, Iterable):
        raise DeclarationError(
            f"@transition(frm={frm!r}): frm is a state (str, int or Enum), an iterable of "
            "states, or '*'")
    found: tuple[Any, ...] = tuple(cast(Any, frm))
    if not found:
        raise DeclarationError(f"@transition(frm={frm!r}): name at least one state, or '*'")
    return tuple(_state(s, "frm") for s in found)


def _state(state: object, what: str) -> Any:
    if not isinstance(state, str | int | enum.Enum) or isinstance(state, bool) or \
            (isinstance(state, str) and state in ("", "*")):
        raise DeclarationError(f"@transition({what}={state!r}): a state is a str, int or Enum")
    return state


def _guard_list(guard: object) -> tuple[Guard, ...]:
    if guard is None:
        return ()
    guards: object = (guard,) if isinstance(guard, str) or callable(guard) else guard
    if not isinstance(guards, list | tuple):
        raise DeclarationError(
            f"@transition(guard={guard!r}): a guard is a callable, a name, or a list of them")
    checked: tuple[Any, ...] = tuple(cast(Sequence[Any], guards))
    for g in checked:
        if isinstance(g, str) and g.isidentifier():
            continue
        if not callable(g):
            raise DeclarationError(f"@transition(guard={g!r}): a guard is a callable or a name")
        if inspect.isgeneratorfunction(g) or inspect.isasyncgenfunction(g):
            raise DeclarationError(f"@transition(guard={g!r}): a generator guard cannot be "
                                   "checked; a guard returns a bool")
    return cast(tuple[Guard, ...], checked)


def _check_sync_guards(guards: tuple[Guard, ...]) -> None:
    for g in guards:
        if inspect.iscoroutinefunction(g):
            raise DeclarationError(
                f"@transition(guard={g!r}): an async guard cannot be checked by a sync "
                "transition; it must return a bool (or make the transition an async def)")


def _check_body(fn: object, what: str, *, async_ok: bool = False) -> None:
    if not callable(fn):
        raise DeclarationError(f"{what}, not {fn!r}")
    if async_ok and inspect.iscoroutinefunction(fn):
        return
    if _runs_elsewhere(fn):
        hint = "use a plain def or an async def" if async_ok else "use a plain def"
        raise DeclarationError(
            f"{what}: {getattr(fn, '__qualname__', fn)!r} is an async or generator function, "
            f"whose body would never run inside the transition; {hint}")


def _runs_elsewhere(fn: object) -> bool:
    """An async or generator function: calling it runs none of its body."""
    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn) or \
        inspect.isgeneratorfunction(fn)


def _no_arguments(self: Any) -> None:
    """The call shape of :func:`transition_state`: the instance and nothing else."""


# -- compilation: one machine per class, made once -------------------------------------

_COMPILING = threading.RLock()
#: Functions ``(cls, plan) -> None`` that optional modules register to extend each plan as
#: it is compiled (extra statements in the atomic section, steps on failure).
plan_extensions: list[Callable[[type, _Plan], None]] = []


class WriteCondition(NamedTuple):
    """What an optional module adds to a plan's conditional UPDATE (``plan.stmt``, to
    which it adds its WHERE clauses and SET values at compile time): the bound values of
    one call, what the object shows once the row matched, and, for a refusal, whether
    the condition is to blame: ``explain(obj, unchanged)`` returns a conflict's detail, or
    ``None`` for the state's own explanation; ``unchanged`` is true when the UPDATE matched
    no row although the state is the one read (only an added condition refused)."""

    params: Callable[[_Firing, dict[str, Any]], None]
    written: Callable[[_Firing], None]
    explain: Callable[[Any, bool], str | None]


class _Guard(NamedTuple):
    """A guard compiled for one class and one method."""

    label: str
    fn: Callable[..., object]
    with_args: bool  # called with the call's arguments, else with the instance alone
    askable: bool  # can run without the call's arguments (available_transitions)


class _Plan:
    """What the runtime reads to fire one transition of one class."""

    __slots__ = ("after_write", "bind", "blind", "body_wrappers", "changed_at", "changed_naive",
                 "check", "column", "default", "desc", "event", "extras", "fn", "frm",
                 "guards", "key", "key_columns", "lock", "mapped", "naive", "nested", "normalize",
                 "on_error", "on_failure", "on_failure_in_memory", "only_self", "parameters",
                 "refresh", "spec", "starts_from", "stmt", "timestamp", "to", "version",
                 "where", "write_conditions")

    def __init__(self) -> None:
        self.event = self.column = ""
        self.spec: _Spec | None = None  # the declaration it was compiled from
        self.frm: frozenset[Any] | None = None
        self.to: Any = None
        self.timestamp: str | None = None
        self.changed_at: str | None = None  # @state_column(changed_at=...)
        self.lock = self.mapped = self.naive = self.blind = self.only_self = False
        self.changed_naive = False
        self.nested = False  # a body or an extension's step runs: always a SAVEPOINT
        self.fn: Callable[..., Any] | None = None  # None: an empty body, never called
        self.check: Callable[..., None] = _no_arguments  # raises TypeError on a bad call
        self.guards: tuple[tuple[str, Callable[..., object], bool, bool], ...] = ()
        self.normalize: Callable[[Any], Any] = _same  # a value read -> the column's form
        self.default: Any = None  # the column's scalar default, for an unsaved object
        self.desc: Transition
        self.starts_from = ""  # an invalid refusal's detail: "start starts from 'pending'"
        self.parameters: tuple[inspect.Parameter, ...] = ()  # the method's, beyond self
        # Mapped classes: the conditional UPDATE and what it needs.
        self.stmt: Any = None
        self.bind: dict[str, Any] = {}
        self.key: tuple[tuple[str, int], ...] = ()  # (bind name, index in the identity)
        #: The UPDATE's conditions (the row's key, the state read, the version) and the key's
        #: columns, for an extension's own write of the same row (an error state).
        self.where: tuple[Any, ...] = ()
        self.key_columns: tuple[Any, ...] = ()
        self.version: _Version | None = None
        self.refresh: tuple[str, ...] = ()
        #: Seams for optional modules: steps run in the atomic section after the write
        #: (``step(firing)``), and steps run after an undo (``step(firing, error)``).
        #: ``on_failure_in_memory`` steps run when the body of an object outside a session
        #: raises (``step(obj, state_read, error)``, returning the error state written);
        #: ``body_wrappers`` wrap every body, the one of :func:`transition_state` too;
        #: ``extras`` holds what a module compiled for the others to read.
        self.after_write: tuple[Callable[[_Firing], None], ...] = ()
        self.on_failure: tuple[Callable[[_Firing, BaseException], None], ...] = ()
        self.on_failure_in_memory: tuple[Callable[[Any, Any, BaseException], Any], ...] = ()
        self.body_wrappers: tuple[Callable[[Callable[..., Any]], Callable[..., Any]], ...] = ()
        self.extras: dict[str, Any] = {}
        self.on_error: Any = None  # the state a raising body leaves the row in
        #: Conditions and values an extension added to ``stmt`` (a lease's owner).
        self.write_conditions: tuple[WriteCondition, ...] = ()

    def with_body(self, fn: Callable[..., Any]) -> _Plan:
        copy = _Plan.__new__(_Plan)
        for slot in _Plan.__slots__:
            setattr(copy, slot, getattr(self, slot))
        for wrap in self.body_wrappers:
            fn = wrap(fn)
        copy.fn, copy.blind, copy.nested = fn, False, True
        return copy


class _Version(NamedTuple):
    """The mapper's ``version_id_col``, checked and bumped by the transition's UPDATE."""

    key: str
    generate: Callable[[Any], Any] | None  # None: the server bumps it


def _same(value: Any) -> Any:
    return value


class _Machine:
    """A class's compiled transitions, kept on the class: it dies with it."""

    __slots__ = ("adhoc", "by_column", "declared", "mapped", "order", "overridden", "owner",
                 "plans")

    def __init__(self, cls: type, plans: dict[str, _Plan]) -> None:
        # The class holds the machine and the machine its class: a cycle the garbage
        # collector frees with the class (no module-level registry keeps either alive).
        self.owner, self.plans = cls, plans
        self.mapped = any(plan.mapped for plan in plans.values())
        #: Whether the class declares anything: transitions, or a state column.
        self.declared = bool(plans) or _declares(cls)
        # Transitions a subclass overrode, compiled for it when super() calls them.
        self.overridden: dict[int, tuple[_Spec, _Plan]] = {}
        self.order = {plan: i for i, plan in enumerate(plans.values())}
        # For available_transitions: per state column, a plan to read it with, each
        # state's candidates and those of "*".
        self.by_column: list[tuple[_Plan, dict[Any, list[_Plan]], list[_Plan]]] = []
        columns: dict[str, tuple[_Plan, dict[Any, list[_Plan]], list[_Plan]]] = {}
        for plan in plans.values():
            _, by_state, any_state = columns.setdefault(plan.column, (plan, {}, []))
            for state in plan.frm or ():
                by_state.setdefault(state, list(any_state))
            for state, candidates in by_state.items():
                if plan.frm is None or state in plan.frm:
                    candidates.append(plan)
            if plan.frm is None:
                any_state.append(plan)
        self.by_column = list(columns.values())
        self.adhoc: OrderedDict[tuple[Any, ...], _Plan] = OrderedDict()

    def overridden_plan(self, spec: _Spec) -> _Plan:
        """The plan of a declaration this class overrode (reached through ``super()``)."""
        with _COMPILING:
            found = self.overridden.get(id(spec))
            if found is None or found[0] is not spec:
                cls = self.owner
                found = self.overridden[id(spec)] = (spec, _compile_plan(cls, _mapper_of(cls),
                                                                         spec))
        return found[1]

    def adhoc_plan(self, spec: _Spec) -> _Plan:
        """A :func:`transition_state` declaration, compiled once while it stays recent."""
        key = spec.cache_key()
        try:
            hash(key)
        except TypeError:  # an unhashable guard: compile it for this call only
            cls = self.owner
            return _compile_plan(cls, _mapper_of(cls), spec)
        with _COMPILING:
            plan = self.adhoc.get(key)
            if plan is None:
                cls = self.owner
                plan = self.adhoc[key] = _compile_plan(cls, _mapper_of(cls), spec)
                if len(self.adhoc) > 128:
                    self.adhoc.popitem(last=False)
            else:
                self.adhoc.move_to_end(key)
        return plan


def _machine_of(cls: type, *, adhoc: bool = False) -> _Machine:
    machine = cls.__dict__.get(_KEY)
    if machine is not None:
        return cast(_Machine, machine)
    mapper = _mapper_of(cls)
    if mapper is not None and not mapper.configured:
        mapper.registry.configure()  # compiles the class, in _mapper_configured
        machine = cls.__dict__.get(_KEY)
        if machine is not None:
            return cast(_Machine, machine)
    with _COMPILING:  # first use from several threads: one compiles, the others wait
        machine = cls.__dict__.get(_KEY)
        if machine is None:
            machine = _compile(cls, mapper)
            if not machine.declared and not adhoc:
                raise TypeError(f"{cls.__name__} declares no transitions")
            with contextlib.suppress(TypeError):  # a builtin type: nothing to keep
                type.__setattr__(cls, _KEY, machine)
    return cast(_Machine, machine)


def _declares(cls: type) -> bool:
    return getattr(cls, "__litestate_column__", None) is not None


def _machine_of_instance(obj: object) -> _Machine:
    try:
        machine = _machine_of(type(obj))
    except TypeError:
        machine = None
    if machine is None or not machine.declared:
        raise TypeError(f"{obj!r} is not an object with transitions")
    return machine


def _plan_of(obj: object, event: str) -> _Plan:
    machine = _machine_of_instance(obj)
    plan = machine.plans.get(event) if isinstance(event, str) else None  # pyright: ignore[reportUnnecessaryIsInstance]
    if plan is None:
        raise ValueError(f"{type(obj).__name__} has no transition {event!r}; it has "
                         f"{list(machine.plans)}")
    return plan


def _mapper_of(cls: type) -> Mapper[Any] | None:
    mapper: object = sa.inspect(cls, raiseerr=False)
    return cast(Any, mapper) if isinstance(mapper, Mapper) else None


@sa_event.listens_for(Mapper, "mapper_configured")
def _mapper_configured(mapper: Mapper[Any], cls: type) -> None:
    """The latest moment a mapped class's declarations are checked."""
    if _KEY not in cls.__dict__ and _specs_of(cls):
        with _COMPILING:
            if _KEY not in cls.__dict__:
                type.__setattr__(cls, _KEY, _compile(cls, mapper))


def _compile(cls: type, mapper: Mapper[Any] | None) -> _Machine:
    plans = {name: _compile_plan(cls, mapper, spec) for name, spec in _specs_of(cls).items()}
    return _Machine(cls, plans)


def _compile_plan(cls: type, mapper: Mapper[Any] | None, spec: _Spec) -> _Plan:
    who = f"{cls.__name__}.{spec.event}"
    assert spec.fn is not None
    plan = _Plan()
    plan.event, plan.lock, plan.spec = spec.event, spec.lock, spec
    column = spec.column or getattr(cls, "__litestate_column__", None)
    if column is None:
        raise DeclarationError(f"{who}: no state column; pass column= or use @state_column")
    plan.column = column
    if mapper is None:
        _check_settable(who, cls, column)
    ts = f"{_plain(spec.to)}_at" if spec.timestamp is True else spec.timestamp or None
    plan.timestamp = ts
    options = column_options(cls).get(column)
    plan.changed_at = options.changed_at if options is not None else None
    if plan.changed_at is not None and plan.changed_at == ts:
        raise DeclarationError(f"{who}: timestamp {ts!r} is also the changed_at column of "
                               f"{column}; stamp it once")
    if mapper is None and plan.changed_at is not None:
        _check_settable(who, cls, plan.changed_at)
    convert = _converter(who, mapper, column)
    plan.frm = None if spec.frm is None else frozenset(convert(s) for s in spec.frm)
    plan.to = convert(spec.to)
    plan.fn = None if _is_empty(spec.fn) else spec.fn
    plan.on_error = _error_state(who, spec, plan.to, convert)
    plan.check, plan.only_self = _argument_check(who, spec.fn)
    # Plain tuples: the hot loops unpack them, which a NamedTuple would slow down.
    guards = [_compile_guard(cls, who, g, spec.fn) for g in spec.guards]
    plan.guards = tuple((g.label, g.fn, g.with_args, g.askable) for g in guards)
    if inspect.iscoroutinefunction(spec.fn):
        from litestate import aio

        aio.compile_async(plan)
    if mapper is not None:
        _compile_write(plan, who, mapper, convert)
    plan.desc = Transition(plan.event, plan.frm, plan.to, column, ts,
                           tuple(label for label, *_ in plan.guards), plan.lock,
                           _signature_without_self(spec.fn), spec.meta, plan.on_error)
    allowed = "any state" if plan.frm is None else ", ".join(sorted(map(repr, plan.frm)))
    plan.starts_from = f"{plan.event} starts from {allowed}"
    plan.parameters = tuple(plan.desc.signature.parameters.values())
    for extend in plan_extensions:
        extend(cls, plan)
    for wrap in plan.body_wrappers:
        if plan.fn is not None:
            plan.fn = wrap(plan.fn)
    plan.nested = plan.fn is not None or bool(plan.after_write) or plan.on_error is not None
    plan.blind = (plan.mapped and plan.frm is not None and len(plan.frm) == 1 and
                  not plan.guards and not plan.lock and not plan.nested and
                  plan.version is None)
    return plan


def _error_state(who: str, spec: _Spec, to: Any, convert: Callable[[Any], Any]) -> Any:
    """``on_error``, as the column holds it; it must differ from the state written."""
    if spec.on_error is None:
        return None
    error_state = convert(spec.on_error)
    if error_state == to:
        raise DeclarationError(f"{who}: on_error={spec.on_error!r} is the state it writes; an "
                               "error state tells a failure from a success")
    return error_state


def _check_settable(who: str, cls: type, column: str) -> None:
    """A plain class's state attribute must take the new state."""
    params = getattr(cls, "__dataclass_params__", None)
    if getattr(params, "frozen", False):
        raise DeclarationError(f"{who}: {cls.__name__} is a frozen dataclass; its {column} "
                               "cannot be set")
    raw = inspect.getattr_static(cls, column, None)
    if isinstance(raw, property) and raw.fset is None:
        raise DeclarationError(f"{who}: {column} is a property without a setter")


def _compile_write(plan: _Plan, who: str, mapper: Mapper[Any],
                   convert: Callable[[Any], Any]) -> None:
    """The conditional UPDATE, compiled once: it names the row by the mapper's identity."""
    state_col: Any = mapper.column_attrs[plan.column].columns[0]
    table: Any = state_col.table
    if not isinstance(table, sa.Table):
        raise DeclarationError(f"{who}: {plan.column} is not a column of a table")
    table = cast(Any, table)  # pyright reads the narrowed Table as Table[Unknown]
    key_cols = _identity_columns(who, mapper, table)
    if any(c is state_col for c in key_cols):
        raise DeclarationError(f"{who}: {plan.column} is part of the mapper's identity; a "
                               "state column cannot be a primary key column")
    values: dict[Any, Any] = {state_col: sa.bindparam("ls_to", type_=state_col.type)}
    where = [c == sa.bindparam(f"ls_pk{i}", type_=c.type) for i, c in enumerate(key_cols)]
    where.append(_dialects.same_state(state_col, sa.bindparam("ls_from", type_=state_col.type)))
    if plan.timestamp is not None:
        ts_col = _timestamp_column(who, mapper, table, plan.timestamp)
        plan.naive = not ts_col.type.timezone
        values[ts_col] = sa.bindparam("ls_ts", type_=ts_col.type)
    if plan.changed_at is not None:
        changed_col = _timestamp_column(who, mapper, table, plan.changed_at)
        plan.changed_naive = not changed_col.type.timezone
        values[changed_col] = sa.bindparam("ls_changed", type_=changed_col.type)
    version_col = mapper.version_id_col
    if version_col is not None:
        if version_col.table is not table:
            raise DeclarationError(
                f"{who}: the version_id_col {version_col} is not on {table.name}, the table "
                f"of {plan.column}; litestate's UPDATE could not check it")
        generate = mapper.version_id_generator
        if not callable(generate) and version_col.server_onupdate is None:
            raise DeclarationError(
                f"{who}: version_id_generator=False and {version_col} has no server_onupdate:"
                " the application bumps the version, which litestate's UPDATE cannot")
        plan.version = _Version(mapper.get_property_by_column(version_col).key,
                                generate if callable(generate) else None)
        where.append(version_col == sa.bindparam("ls_ver", type_=version_col.type))
        if plan.version.generate is not None:
            values[version_col] = sa.bindparam("ls_ver_new", type_=version_col.type)
    plan.stmt = sa.update(table).where(*where).values(values)
    plan.where, plan.key_columns = tuple(where), tuple(key_cols)
    plan.key = tuple((f"ls_pk{i}", i) for i in range(len(key_cols)))
    plan.bind, plan.mapped = {"mapper": mapper}, True
    plan.refresh = tuple(p.key for p in mapper.column_attrs)
    plan.normalize = _normalizer(state_col.type, convert)
    plan.default = _scalar_default(state_col, convert)


def _identity_columns(who: str, mapper: Mapper[Any], table: sa.Table) -> list[Any]:
    """For each part of the mapper's identity (``mapper.primary_key``, which is the
    ``__mapper_args__`` primary key when given), its column in ``table``."""
    found: list[Any] = []
    for pk_col in mapper.primary_key:
        prop = mapper.get_property_by_column(pk_col)
        col = next((c for c in prop.columns if getattr(c, "table", None) is table), None)
        if col is None:  # joined inheritance: the child's key references the parent's
            col = next((c for c in table.primary_key if c.references(cast(Any, pk_col))), None)
        if col is None:
            raise DeclarationError(
                f"{who}: {table.name} has no column for the identity {prop.key!r}, so an "
                "UPDATE could not name one row")
        found.append(col)
    if not found:
        raise DeclarationError(f"{who}: {table.name} has no primary key to update")
    return found


def _timestamp_column(who: str, mapper: Mapper[Any], table: sa.Table, name: str) -> Any:
    prop = mapper.column_attrs.get(name)
    ts_col = prop.columns[0] if prop is not None else None
    if ts_col is None or getattr(ts_col, "table", None) is not table:
        raise DeclarationError(f"{who}: timestamp column {name!r} is not a column of "
                               f"{table.name}")
    if not isinstance(ts_col.type, sa.DateTime):
        raise DeclarationError(f"{who}: timestamp column {name!r} is {ts_col.type}, not a "
                               "DateTime")
    return ts_col


def _converter(who: str, mapper: Mapper[Any] | None, column: str) -> Callable[[Any], Any]:
    """How a declared state becomes the value the column's attribute holds."""
    if mapper is None:
        return _same
    prop = mapper.column_attrs.get(column)
    if prop is None:
        raise DeclarationError(f"{who}: {mapper.class_.__name__} has no column {column!r}")
    type_ = prop.columns[0].type
    persisted = _persisted_members(type_)

    def convert(state: Any) -> Any:
        if isinstance(type_, sa.Enum) and type_.enum_class is not None:
            if isinstance(state, str) and state in persisted:
                return persisted[state]  # what SQLAlchemy reads a string as
            for member in type_.enum_class:
                if state is member or state in (member.name, member.value):
                    return member
            allowed = [m.name for m in type_.enum_class]
        else:
            state = state.value if isinstance(state, enum.Enum) else state
            if isinstance(type_, sa.Enum):
                if state in type_.enums:
                    return state
                allowed = list(type_.enums)
            else:
                _check_fits(who, column, type_, state)
                return state
        raise DeclarationError(f"{who}: state {state!r} is not one of {column}'s {allowed}")

    return convert


def _check_fits(who: str, column: str, type_: Any, state: Any) -> None:
    python_type = _python_type(type_)
    if python_type is not None and not isinstance(state, python_type):
        raise DeclarationError(
            f"{who}: state {state!r} is not a {python_type.__name__}, as {column} is")
    length = getattr(type_, "length", None)
    if isinstance(state, str) and length is not None and len(state) > length:
        raise DeclarationError(
            f"{who}: state {state!r} is longer than {column}'s {type_} ({len(state)} > "
            f"{length})")


def _persisted_members(type_: Any) -> dict[str, Any]:
    """For an Enum column of a Python enum: each string it stores, and its member."""
    if not isinstance(type_, sa.Enum) or type_.enum_class is None:
        return {}
    members = type_.enum_class
    if type_.values_callable is not None:  # aligned with the class's members
        return dict(zip(type_.enums, members, strict=False))
    return {name: members[name] for name in type_.enums if name in members.__members__}


def _normalizer(type_: Any, convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A value read from the attribute, in the column's form. An Enum column of a Python
    enum may hold the string it stores (the member's name, or its value with
    ``values_callable``): SQLAlchemy writes that string as the member, and any other
    string as it is, so only that string is read as the member."""
    persisted = _persisted_members(type_)
    if persisted:
        return lambda value: persisted.get(value, value) if isinstance(value, str) else value

    def normalize(value: Any) -> Any:
        try:
            return convert(value)
        except DeclarationError:
            return value
    return normalize


def _scalar_default(col: Any, convert: Callable[[Any], Any]) -> Any:
    default = col.default
    if default is None or not getattr(default, "is_scalar", False) or default.arg is None:
        return None
    try:
        return convert(default.arg)
    except DeclarationError:
        return default.arg


def _python_type(type_: Any) -> type | None:
    try:
        return cast(type, type_.python_type)
    except NotImplementedError:
        return None


def _plain(state: Any) -> Any:
    if isinstance(state, enum.Enum):
        return state.value if isinstance(state.value, str) else state.name
    return state


def _signature_without_self(fn: Callable[..., Any]) -> inspect.Signature:
    signature = inspect.signature(fn)
    return signature.replace(parameters=list(signature.parameters.values())[1:])


def _argument_check(who: str, fn: Callable[..., Any]) -> tuple[Callable[..., None], bool]:
    """A function with the method's parameters and an empty body: calling it raises the
    ``TypeError`` Python would raise for the method, before any SQL or signal. Also
    whether the method takes nothing but ``self``."""
    parameters = list(inspect.signature(fn).parameters.values())
    if not parameters or parameters[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                                    inspect.Parameter.POSITIONAL_OR_KEYWORD):
        raise DeclarationError(f"{who}: a transition is a method taking self first")
    words: list[str] = []
    star = False
    for i, p in enumerate(parameters):
        if p.kind is p.KEYWORD_ONLY and not star:
            words.append("*")
            star = True
        if p.kind is p.VAR_POSITIONAL:
            star = True
        prefix = "*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else ""
        words.append(f"{prefix}{p.name}" + ("" if p.default is p.empty else "=_ls_default_"))
        if p.kind is p.POSITIONAL_ONLY and (i + 1 == len(parameters) or
                                            parameters[i + 1].kind is not p.POSITIONAL_ONLY):
            words.append("/")
    namespace: dict[str, Any] = {"_ls_default_": None}
    exec(f"def check({', '.join(words)}): pass", namespace)  # names are identifiers
    check = namespace["check"]
    qualname = getattr(fn, "__qualname__", fn.__name__)
    check.__name__, check.__qualname__ = fn.__name__, qualname  # what TypeError names
    return check, len(parameters) == 1


def _compile_guard(cls: type, who: str, g: Guard, fn: Callable[..., Any]) -> _Guard:
    """A guard as a callable taking the instance (and, if ``with_args``, the call's
    arguments), and whether it can run without the call's arguments."""
    if isinstance(g, str):
        raw: Any = inspect.getattr_static(cls, g, _MISSING)
        if raw is _MISSING:
            raise DeclarationError(f"{who}: guard {g!r} is not an attribute of {cls.__name__}")
        if isinstance(raw, property | QueryableAttribute) or not (
                callable(raw) or hasattr(raw, "__get__")):
            return _Guard(g, operator.attrgetter(g), False, True)  # a property, a column
        if not (inspect.isfunction(raw) or isinstance(raw, staticmethod | classmethod)):
            return _Guard(g, _read_guard(g), False, True)  # a method a decorator made
        target, bound, label = getattr(cls, g), not inspect.isfunction(cast(Any, raw)), g
        if _runs_elsewhere(target) and not (inspect.iscoroutinefunction(target) and
                                            inspect.iscoroutinefunction(fn)):
            raise DeclarationError(f"{who}: guard {g!r} is an async or generator method; a "
                                   "sync transition needs a bool")
    else:
        target, bound, label = g, False, getattr(g, "__qualname__", repr(g))
    with_args = _takes_the_call(who, label, target, bound, fn)
    askable = not with_args or not _required_shape(fn)
    if isinstance(g, str):
        name = g

        def call_with_args(obj: object, *a: Any, **k: Any) -> object:
            return getattr(obj, name)(*a, **k)

        call = call_with_args if with_args else operator.methodcaller(g)
        return _Guard(label, call, with_args, askable)
    return _Guard(label, g, with_args, askable)


def _read_guard(name: str) -> Callable[[object], object]:
    """A guard named after a property or a column (its value), or after a method made by
    a decorator (``functools.cache``, ``partialmethod``): called with the instance alone."""
    read = operator.attrgetter(name)

    def guard(obj: object) -> object:
        value = read(obj)
        return value() if callable(value) else value

    return guard


def _takes_the_call(who: str, label: str, target: Callable[..., Any], bound: bool,
                    fn: Callable[..., Any]) -> bool:
    """Whether a guard is called with the call's arguments: it must accept every call the
    method accepts. A guard without a signature (a builtin) takes the instance alone."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return False
    self_ = () if bound else (None,)
    if len(inspect.signature(fn).parameters) == 1:
        takes = False  # the method takes nothing more: neither does its guard
    else:
        takes = all(_binds(signature, self_ + a, k) for a, k in _call_shapes(fn))
    if not takes and not _binds(signature, self_, {}):
        call = ", ".join(inspect.signature(fn).parameters)
        raise DeclarationError(f"{who}: guard {label} can take neither the call "
                               f"{fn.__name__}({call}) nor the instance alone")
    return takes


def _call_shapes(fn: Callable[..., Any]) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Sample calls of ``fn`` without self: required only, all positional, all keyword,
    and extra positional and keyword arguments where it takes ``*args`` or ``**kw``."""
    need: list[Any] = []
    need_kw: dict[str, Any] = {}
    pos: list[Any] = []
    pos_kw: dict[str, Any] = {}
    kw_pos: list[Any] = []
    kw: dict[str, Any] = {}
    var_positional = var_keyword = False
    for p in list(inspect.signature(fn).parameters.values())[1:]:
        required = p.default is p.empty
        if p.kind is p.POSITIONAL_ONLY:
            pos.append(None)
            kw_pos.append(None)
            need += [None] if required else []
        elif p.kind is p.POSITIONAL_OR_KEYWORD:
            pos.append(None)
            kw[p.name] = None
            need += [None] if required else []
        elif p.kind is p.KEYWORD_ONLY:
            pos_kw[p.name] = kw[p.name] = None
            need_kw.update({p.name: None} if required else {})
        elif p.kind is p.VAR_POSITIONAL:
            var_positional = True
        else:
            var_keyword = True
    shapes = [(tuple(need), need_kw), (tuple(pos), pos_kw), (tuple(kw_pos), kw)]
    if var_positional:  # after the loop: with every keyword-only parameter
        shapes.append(((*pos, None, None), dict(pos_kw)))
    if var_keyword:
        shapes.append((tuple(kw_pos), {**kw, "_ls_extra_": None}))
    return shapes


def _required_shape(fn: Callable[..., Any]) -> bool:
    need, need_kw = _call_shapes(fn)[0]
    return bool(need or need_kw)


def _binds(signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    try:
        signature.bind(*args, **kwargs)
    except TypeError:
        return False
    return True


_RETURN_NONE = ([("LOAD_CONST", None), ("RETURN_VALUE", None)], [("RETURN_CONST", None)])


def _is_empty(fn: Callable[..., Any]) -> bool:
    """A body that only returns None needs no SAVEPOINT and is not called at all."""
    if not inspect.isfunction(fn):
        return False
    ops = [(i.opname, i.argval) for i in dis.get_instructions(fn)
           if i.opname not in ("RESUME", "NOP", "CACHE")]
    return ops in _RETURN_NONE


# -- firing: in memory -----------------------------------------------------------------


def _fire(plan: _Plan, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Every call lands here: objects in a session go on; the rest run in memory, inline
    (this is the hot path: no call that the common case does not need)."""
    if plan.only_self:
        if args or kwargs:
            plan.check(obj, *args, **kwargs)  # raises the method's own TypeError
    else:
        plan.check(obj, *args, **kwargs)
    if plan.mapped:
        state = obj._sa_instance_state
        if state.session_id is not None:
            session = state.session
            if session is not None:
                return _fire_in_session(plan, obj, state, session, args, kwargs)
        if state.key is not None:
            raise DetachedInstanceError(
                f"cannot {plan.event}() {_describe(obj)}: it is detached from its session, "
                "so the write could not be checked; merge() it into a session first")
        current = obj.__dict__.get(plan.column)  # transient: nothing to load
        if current is None:
            current = _unset_state(plan, obj)
    else:
        current = getattr(obj, plan.column, None)
    if current is None or (plan.frm is not None and current not in plan.frm):
        current = _check_state(plan, obj, current, args, kwargs)
    if plan.guards:  # _first_refusing_guard, inline: this is the hot path
        for label, guard, with_args, _ in plan.guards:
            try:
                ok = guard(obj, *args, **kwargs) if with_args else guard(obj)
            except Exception as exc:
                exc.add_note(f"raised by guard {label} of {plan.event}(); nothing was written")
                raise
            if ok is not True and (not ok or _awaited(plan, label, ok)):
                _refuse(plan, obj, current, "guard", f"guard {label} returned false", args,
                        kwargs)
    column, ts = plan.column, plan.timestamp
    old_ts = getattr(obj, ts, _MISSING) if ts is not None else None
    wrote = stamped = False
    changed: Any = None
    try:
        setattr(obj, column, plan.to)
        wrote = True
        if ts is not None:
            setattr(obj, ts, _now(plan))
            stamped = True
        if plan.changed_at is not None:
            changed = _stamp_changed_in_memory(plan, obj)
        result = None if plan.fn is None else plan.fn(obj, *args, **kwargs)
        if transition_succeeded.receivers:
            _send(transition_succeeded, obj.__class__,
                  **_payload(plan, obj, current, args, kwargs), duration=_elapsed())
    except BaseException as exc:
        if wrote:
            setattr(obj, column, current)
        if stamped:
            if old_ts is _MISSING:
                delattr(obj, cast(str, ts))
            else:
                setattr(obj, cast(str, ts), old_ts)
        if changed is not None:
            changed()
        error_state = None
        for step in plan.on_failure_in_memory:
            error_state = step(obj, current, exc)
        _failed(plan, obj, current, args, kwargs, exc, error_state)
        raise
    return result


def _stamp_changed_in_memory(plan: _Plan, obj: Any) -> Callable[[], None]:
    """Stamp the column's ``changed_at``; returns what puts the old value back."""
    name = cast(str, plan.changed_at)
    old = getattr(obj, name, _MISSING)
    setattr(obj, name, _as_column(_clock(), plan.changed_naive))

    def restore() -> None:
        if old is _MISSING:
            delattr(obj, name)
        else:
            setattr(obj, name, old)

    return restore


def _unset_state(plan: _Plan, obj: Any) -> Any:
    """The state of an object not yet written: its attribute (a dataclass default may live
    on the class), else the column's scalar default, which the INSERT would write."""
    current = getattr(obj, plan.column, None)
    return plan.default if current is None else current


def _deleted_in_session(obj: object) -> bool:
    state = instance_state(obj)
    return state.session_id is not None and _sqla.is_deleted(state)


def _read_for_probe(plan: _Plan, obj: Any) -> Any:
    """The state as a call would read it, without a flush, a lock or any other write."""
    if not plan.mapped:
        return getattr(obj, plan.column, None)
    current = obj.__dict__.get(plan.column)
    if current is not None:
        return current
    state = instance_state(obj)
    if state.key is None:
        return _unset_state(plan, obj)
    session = state.session
    if session is not None and plan.column in state.expired_attributes and \
            _is_async(plan, session) and not _sqla.in_greenlet():
        # Before any SQL: the load would fail in the driver, wrapped (StatementError,
        # DBAPIError) or not, and may leave the driver's coroutines un-awaited.
        raise sa_exc.MissingGreenlet(
            f"{plan.column} of {_describe(obj)} is expired and its session is an "
            "AsyncSession's: ask with `await litestate.aio.can_transition(...)` or "
            "`await litestate.aio.available_transitions(...)`, which load it")
    try:
        return getattr(obj, plan.column)
    except DetachedInstanceError:
        raise DetachedInstanceError(
            f"cannot ask {plan.event}() of {_describe(obj)}: it is detached from its session "
            f"and its {plan.column} is not loaded; merge() it into a session first") from None
    except ObjectDeletedError:
        return None  # the row is gone: nothing can fire
    except sa_exc.MissingGreenlet as exc:
        exc.add_note(f"{plan.column} of {_describe(obj)} is expired and its session is an "
                     "AsyncSession's: ask with `await litestate.aio.can_transition(...)` or "
                     "`await litestate.aio.available_transitions(...)`, which load it")
        raise


def _check_state(plan: _Plan, obj: Any, current: Any, args: tuple[Any, ...],
                 kwargs: dict[str, Any], in_session: bool = False) -> Any:
    """The state read, in the column's form, if ``frm`` allows it; else the refusal (for
    an object in a session, a conflict if a condition of the write explains it)."""
    if current is not None:
        current = plan.normalize(current)
        if plan.frm is None or current in plan.frm:
            return current
    if in_session:
        _explain_conflict(plan, obj, current, False, args, kwargs)
    _refuse(plan, obj, current, "invalid", plan.starts_from, args, kwargs)


def _explain_conflict(plan: _Plan, obj: Any, current: Any, unchanged: bool,
                      args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """A conflict, if a condition an extension added to the write is to blame."""
    for condition in plan.write_conditions:
        detail = condition.explain(obj, unchanged)
        if detail is not None:
            _refuse(plan, obj, current, "conflict", detail, args, kwargs)


def _first_refusing_guard(plan: _Plan, obj: Any, args: tuple[Any, ...],
                          kwargs: dict[str, Any], *, askable_only: bool) -> str | None:
    """The label of the first guard that refuses, or None."""
    for label, guard, with_args, askable in plan.guards:
        if askable_only and not askable:
            continue
        try:
            ok = guard(obj, *args, **kwargs) if with_args else guard(obj)
        except Exception as exc:
            exc.add_note(f"raised by guard {label} of {plan.event}()")
            raise
        if ok is not True and (not ok or _awaited(plan, label, ok)):
            return label
    return None


def _awaited(plan: _Plan, label: str, value: object) -> bool:
    """A truthy guard result is fine, unless it is an awaitable (an async guard in
    disguise, whose coroutine would be truthy whatever it would return)."""
    if inspect.isawaitable(value):
        close = getattr(value, "close", None)
        if close is not None:
            close()  # no "never awaited" warning: it is reported here
        raise TypeError(f"guard {label} of {plan.event}() returned an awaitable; guards of a "
                        "sync transition return a bool")
    return False


# -- firing: an object in a session ------------------------------------------------------
#
# The steps, each small and named: settle, lock, read, check, then the atomic section
# (open, write, body and extra steps, finish) or its undo.


class _Firing:
    """One call on an object in a session, handed from step to step (and to the plan's
    extra steps: a history row, an error state)."""

    __slots__ = ("args", "at", "blind", "changed", "conn", "current", "error_state", "kwargs",
                 "memo", "now", "obj", "old_changed", "old_ts", "plan", "result", "savepoint",
                 "session", "state", "version", "won")

    def __init__(self, plan: _Plan, obj: Any, state: Any, session: Session, current: Any,
                 args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.plan, self.obj, self.state, self.session = plan, obj, state, session
        self.current, self.args, self.kwargs = current, args, kwargs
        self.conn: sa.Connection | None = None
        self.savepoint: SessionTransaction | None = None
        self.won, self.result = False, None
        self.blind = False  # the state was not read: the UPDATE assumed plan.frm's one state
        self.at: datetime | None = None  # the clock's reading, when anything was stamped
        self.now: datetime | None = None  # the timestamp written, in its column's form
        self.old_ts: Any = _MISSING
        self.changed: datetime | None = None  # the changed_at written
        self.old_changed: Any = _MISSING
        self.version: tuple[Any, Any] | None = None  # (read, written)
        self.error_state: Any = None  # the on_error state an on_failure step wrote
        self.memo: Any = None  # what an extension's step keeps for its later steps

    def payload(self) -> dict[str, Any]:
        return _payload(self.plan, self.obj, self.current, self.args, self.kwargs)


def _fire_in_session(plan: _Plan, obj: Any, state: Any, session: Session,
                     args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if _is_async(plan, session):
        return _fire_in_task(plan, obj, state, session, args, kwargs)
    return _fire_steps(plan, obj, state, session, args, kwargs)


def _fire_steps(plan: _Plan, obj: Any, state: Any, session: Session,
                args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    _settle(plan, obj, state, session, args, kwargs)
    if plan.lock:
        _lock(plan, obj, state, session, args, kwargs)
    current = state.dict.get(plan.column, _MISSING)
    if current is _MISSING and plan.blind and not _needs_savepoint(plan, obj.__class__):
        current = next(iter(cast(frozenset[Any], plan.frm)))  # the UPDATE decides
        firing = _Firing(plan, obj, state, session, current, args, kwargs)
        firing.blind = True
        return _atomic_section(firing)
    if current is _MISSING or current is None:
        current = _load_state(plan, obj, args, kwargs)
    if current is None or (plan.frm is not None and current not in plan.frm):
        current = _check_state(plan, obj, current, args, kwargs, True)
    if plan.guards and (label := _first_refusing_guard(plan, obj, args, kwargs,
                                                       askable_only=False)):
        _refuse(plan, obj, current, "guard", f"guard {label} returned false", args,
                kwargs)
    return _atomic_section(_Firing(plan, obj, state, session, current, args, kwargs))


def _is_async(plan: _Plan, session: Session) -> bool:
    """Whether the session's SQL goes through an async driver (an AsyncSession's)."""
    bind: Any = session.bind
    if bind is None:
        try:
            bind = session.get_bind(**plan.bind)
        except sa_exc.UnboundExecutionError:
            return False
    return bool(bind.dialect.is_async)


_RUNNING = "litestate.running"  # session.info: {asyncio task: transitions it is running}


def _fire_in_task(plan: _Plan, obj: Any, state: Any, session: Session,
                  args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """An AsyncSession's transition: from inside the bridge, and from one task at a time.
    Two tasks' sections on one session would interleave on its one connection, each
    SAVEPOINT closing the other's; a transition of the same task (a body's) nests."""
    if not _sqla.in_greenlet():
        raise sa_exc.MissingGreenlet(
            f"{plan.event}() on {_describe(obj)}: its session belongs to an AsyncSession, "
            f"whose SQL must be awaited: use `await litestate.aio.call(obj.{plan.event}, "
            "...)`; nothing was sent")
    import asyncio

    task = asyncio.current_task()
    running: dict[Any, int] = session.info.setdefault(_RUNNING, {})
    if any(other is not task for other in running):
        raise sa_exc.InvalidRequestError(
            f"{plan.event}() on {_describe(obj)}: another task is running a transition on "
            "this AsyncSession, which is not safe for concurrent tasks; give each task a "
            "session of its own. Nothing was sent")
    running[task] = running.get(task, 0) + 1
    try:
        return _fire_steps(plan, obj, state, session, args, kwargs)
    finally:
        if running[task] == 1:
            del running[task]
        else:
            running[task] -= 1


def _settle(plan: _Plan, obj: Any, state: Any, session: Session, args: tuple[Any, ...],
            kwargs: dict[str, Any]) -> None:
    """A pending row, or an unsaved edit of the state: the UPDATE must see it. An object
    deleted in this session has no row to write."""
    if state.key is None or plan.column in state.committed_state:
        session.flush()
    if _sqla.is_deleted(state):
        _refuse(plan, obj, state.dict.get(plan.column), "conflict",
                "the object was deleted in this session", args, kwargs)


def _lock(plan: _Plan, obj: Any, state: Any, session: Session, args: tuple[Any, ...],
          kwargs: dict[str, Any]) -> None:
    """``SELECT ... FOR UPDATE``: reload the state and every column the caller did not
    edit, so the guards see the row as others committed it."""
    keep = state.committed_state  # the caller's unsaved edits stay as they are
    current = state.dict.get(plan.column)
    try:
        session.refresh(obj, [k for k in plan.refresh if k not in keep], with_for_update=True)
    except sa_exc.DBAPIError as exc:  # a lost deadlock: the database dropped the transaction
        _sqla.refuse_commit_until_rollback(session)
        _failed(plan, obj, current, args, kwargs, exc)
        raise
    except sa_exc.InvalidRequestError:
        _refuse(plan, obj, current, "conflict", "the row no longer exists", args, kwargs)


def _load_state(plan: _Plan, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return getattr(obj, plan.column)
    except ObjectDeletedError:
        _refuse(plan, obj, None, "conflict", "the row no longer exists", args, kwargs)


def _needs_savepoint(plan: _Plan, sender: type) -> bool:
    """Whether code other than litestate's UPDATE runs in the atomic section."""
    return plan.nested or (
        bool(transition_succeeded.receivers) and transition_succeeded.has_receivers_for(sender))


def _atomic_section(f: _Firing) -> Any:
    plan, session = f.plan, f.session
    try:
        if _needs_savepoint(plan, f.obj.__class__):
            _open_savepoint(f)
        else:
            f.conn = session.connection(bind_arguments=plan.bind)
        if _write(f):
            _run_body(f)
        _close_savepoint(f)
    except BaseException as exc:
        error = _undo(f, exc)
        if error is not exc:
            raise error  # noqa: B904 - the error a failed ROLLBACK TO SAVEPOINT hid
        raise
    if not f.won:
        _lost(f)
    if transition_committed.receivers:
        _queue_committed(f)
    return f.result


def _open_savepoint(f: _Firing) -> None:
    session = f.session
    bind = session.get_bind(**f.plan.bind)  # resolved once: connection() would twice
    if bind.dialect.name == "sqlite" and getattr(bind, "engine", bind) not in savepoints_enabled:
        _begin_pysqlite(session.connection(bind_arguments={"bind": bind}))
    f.savepoint = session.begin_nested()  # flushes: an unsaved key edit is written now
    session.info.setdefault(_OPEN, []).append(f.savepoint)
    # The SAVEPOINT is sent when the nested transaction first asks for its connection.
    f.conn = session.connection(bind_arguments={"bind": bind})


#: Engines that ``litestate.sqlite.enable_savepoints`` set up: SQLAlchemy begins their
#: transactions itself.
savepoints_enabled: weakref.WeakSet[sa.Engine] = weakref.WeakSet()


def _begin_pysqlite(conn: sa.Connection) -> None:
    """pysqlite's legacy transaction control sends no BEGIN before a SAVEPOINT, which then
    opens a transaction of its own that RELEASE commits. Begin one first, as
    ``litestate.sqlite.enable_savepoints`` makes SQLAlchemy do on every transaction."""
    if conn.dialect.name != "sqlite" or conn.engine in savepoints_enabled:
        return
    driver: Any = conn.connection.driver_connection  # sqlite3's, or the one aiosqlite wraps
    legacy = isinstance(driver, sqlite3.Connection) or conn.dialect.driver == "aiosqlite"
    if legacy and driver.isolation_level is not None and not driver.in_transaction:
        conn.exec_driver_sql("BEGIN")


def _write(f: _Firing) -> bool:
    """The conditional UPDATE; on success the object shows what the row now holds."""
    plan, obj, state = f.plan, f.obj, f.state
    params = {name: state.key[1][i] for name, i in plan.key}
    params["ls_from"], params["ls_to"] = f.current, plan.to
    ts, changed = plan.timestamp, plan.changed_at
    if ts is not None or changed is not None:
        f.at = at = _clock()
        if ts is not None:
            params["ls_ts"] = f.now = _as_column(at, plan.naive)
            f.old_ts = state.dict.get(ts, _MISSING)
        if changed is not None:
            params["ls_changed"] = f.changed = _as_column(at, plan.changed_naive)
            f.old_changed = state.dict.get(changed, _MISSING)
    if plan.version is not None:
        _version_params(f, params)
    for condition in plan.write_conditions:
        condition.params(f, params)
    assert f.conn is not None
    try:
        rowcount = f.conn.execute(plan.stmt, params).rowcount
        if rowcount > 1:
            raise StaleDataError(
                f"{plan.event}() on {_describe(obj)}: the UPDATE matched {rowcount} rows; "
                "the mapper's identity does not name one row of the table")
        f.won = rowcount == 1
    except Exception:
        if f.savepoint is None:
            _sqla.refuse_commit_until_rollback(f.session)
        raise
    if f.won:
        set_committed_value(obj, plan.column, plan.to)
        if ts is not None:
            set_committed_value(obj, ts, f.now)
        if changed is not None:
            set_committed_value(obj, changed, f.changed)
        if f.version is not None:
            _set_version(f)
        for condition in plan.write_conditions:
            condition.written(f)
        _sqla.register_altered(f.session, state)
    return f.won


def _version_params(f: _Firing, params: dict[str, Any]) -> None:
    version = cast(_Version, f.plan.version)
    read = getattr(f.obj, version.key)
    written = read if version.generate is None else version.generate(read)
    params["ls_ver"] = read
    if version.generate is not None:
        params["ls_ver_new"] = written
    f.version = (read, written)


def _set_version(f: _Firing) -> None:
    version = cast(_Version, f.plan.version)
    if version.generate is None:
        f.session.expire(f.obj, [version.key])  # the server bumped it: read it when asked
    else:
        set_committed_value(f.obj, version.key, cast(tuple[Any, Any], f.version)[1])


def _run_body(f: _Firing) -> None:
    plan = f.plan
    ran = plan.fn is not None and f.savepoint is not None  # a body ran in the SAVEPOINT
    f.result = None if plan.fn is None else plan.fn(f.obj, *f.args, **f.kwargs)
    if ran:
        _check_still_open(f)  # the body may have closed it; nothing else ran yet
    for step in plan.after_write:
        step(f)
    if ran:
        f.session.flush()  # what the body changed, inside the section
    if transition_succeeded.receivers:
        _send(transition_succeeded, f.obj.__class__, **f.payload(), duration=_elapsed())


def _close_savepoint(f: _Firing) -> None:
    savepoint = f.savepoint
    if savepoint is None:
        return
    _close_section(f)
    _check_still_open(f)
    if f.won:
        savepoint.commit()
    else:
        savepoint.rollback()


def _check_still_open(f: _Firing) -> None:
    if not _still_open(f.session, cast(SessionTransaction, f.savepoint)):
        raise sa_exc.InvalidRequestError(
            f"the body of {f.plan.event}() rolled back or closed the session's transaction, "
            "and with it the transition's write; roll back after the call returns instead")


def _still_open(session: Session, savepoint: SessionTransaction) -> bool:
    """Whether ``savepoint`` is still in the session's chain of transactions (active, or
    deactivated by a failed flush inside it), not closed by a rollback or close()."""
    trans = session.get_nested_transaction()
    if trans is savepoint:  # the common case: nothing the body opened is still open
        return True
    while trans is not None and trans.nested:
        if trans is savepoint:
            return True
        trans = trans.parent
    return False


def _close_section(f: _Firing) -> None:
    opened = f.session.info.get(_OPEN)
    if opened and f.savepoint in opened:
        opened.remove(f.savepoint)


def _undo(f: _Firing, exc: BaseException) -> BaseException:
    """Roll back the atomic section, show the object as the row now is, report; returns
    the error to raise: ``exc``, or the one a failed ROLLBACK TO SAVEPOINT hid."""
    plan, savepoint = f.plan, f.savepoint
    error = exc
    if savepoint is not None:
        _close_section(f)
        error, failed = _hidden_by_savepoint_rollback(exc)
        if _still_open(f.session, savepoint):
            try:
                savepoint.rollback()
            except sa_exc.DBAPIError as rollback_error:
                failed = rollback_error
        if failed is not None:
            _transaction_lost(f, error, failed)
    if savepoint is not None or not f.won:  # else the row keeps the write: so does memory
        _restore(f)
    for step in plan.on_failure:
        step(f, error)
    _failed(plan, f.obj, f.current, f.args, f.kwargs, error, f.error_state)
    return error


def _hidden_by_savepoint_rollback(
        exc: BaseException) -> tuple[BaseException, sa_exc.DBAPIError | None]:
    """``(the error, the failed rollback)`` when ``exc`` is SQLAlchemy's own ROLLBACK TO
    SAVEPOINT failing (a flush inside the SAVEPOINT failed, and rolling back to it failed
    too): the error is the one it was handling. Else ``(exc, None)``."""
    if not isinstance(exc, sa_exc.DBAPIError) or not (exc.statement or "").lstrip().upper() \
            .startswith("ROLLBACK TO SAVEPOINT"):
        return exc, None
    hidden, orig = exc.__context__, cast(object, exc.orig)
    while hidden is not None and hidden is orig:  # the driver's error it wraps
        hidden = hidden.__context__
    return (exc if hidden is None else hidden), exc


def _transaction_lost(f: _Firing, error: BaseException, failed: sa_exc.DBAPIError) -> None:
    """ROLLBACK TO SAVEPOINT failed: the database had already rolled back the whole
    transaction, SAVEPOINTs included (InnoDB does for a deadlock's victim). The caller's
    earlier work is gone too, so the session must refuse to commit until rollback()."""
    if failed is not error:
        error.add_note(
            f"{f.plan.event}() of {_describe(f.obj)}: then ROLLBACK TO SAVEPOINT failed "
            f"({failed.orig}): the database had rolled back the whole transaction, and the "
            "session refuses to go on until rollback()")
    _sqla.abandon_transaction(f.session, error)


def _restore(f: _Firing) -> None:
    plan, obj = f.plan, f.obj
    if not f.session.is_active:
        # The database's transaction is gone, and SQLAlchemy expired the objects with it
        # (the session refuses until rollback()): a value set now would outlive that
        # rollback and hide what the next transaction reads.
        f.session.expire(obj, _written(f))
        return
    if f.blind:  # never read: let the next read show the row
        f.session.expire(obj, [plan.column])
    else:
        set_committed_value(obj, plan.column, f.current)
    ts = plan.timestamp
    if ts is not None and f.now is not None:
        if f.old_ts is _MISSING:
            f.session.expire(obj, [ts])
        else:
            set_committed_value(obj, ts, f.old_ts)
    changed = plan.changed_at
    if changed is not None and f.changed is not None:
        if f.old_changed is _MISSING:
            f.session.expire(obj, [changed])
        else:
            set_committed_value(obj, changed, f.old_changed)
    if f.version is not None:
        set_committed_value(obj, cast(_Version, plan.version).key, f.version[0])


def _written(f: _Firing) -> list[str]:
    """The attributes the write sets."""
    plan = f.plan
    names = [plan.column]
    if plan.timestamp is not None and f.now is not None:
        names.append(plan.timestamp)
    if f.version is not None:
        names.append(cast(_Version, plan.version).key)
    return names


def _lost(f: _Firing) -> NoReturn:
    """No row matched: explain why, from the row as it is now (one SELECT)."""
    plan, obj, state, session = f.plan, f.obj, f.state, f.session
    if _sqla.is_deleted(state):
        _refuse(plan, obj, f.current, "conflict", "the object was deleted in this session",
                f.args, f.kwargs)
    # The object shows the row as committed now; the caller's unsaved edits stay.
    assert f.conn is not None
    if f.conn.dialect.name in _dialects.SNAPSHOT_READS:  # see there
        _lock(plan, obj, state, session, f.args, f.kwargs)
        actual = state.dict.get(plan.column)
    else:
        session.expire(obj, [k for k in plan.refresh if k not in state.committed_state])
        actual = _load_state(plan, obj, f.args, f.kwargs)
    if f.blind:  # the state was never read: this is the first look at it
        _check_state(plan, obj, actual, f.args, f.kwargs, True)
    if plan.write_conditions:
        unchanged = actual is not None and plan.normalize(actual) == f.current
        _explain_conflict(plan, obj, f.current, unchanged, f.args, f.kwargs)
    what = "version" if f.version is not None else "state"
    _refuse(plan, obj, f.current, "conflict",
            f"it was {f.current!r} when read but the row's {what} changed before the write "
            f"(it is now {actual!r})", f.args, f.kwargs)


# -- signals ----------------------------------------------------------------------------


def _refuse(plan: _Plan, obj: Any, current: Any, reason: str, detail: str,
            args: tuple[Any, ...], kwargs: dict[str, Any]) -> NoReturn:
    error = _ERRORS[reason](obj, plan.event, current, plan.to, plan.column, reason, detail)
    if transition_invalid.receivers:
        try:
            _send(transition_invalid, obj.__class__, **_payload(plan, obj, current, args, kwargs),
                  reason=reason, error=error, duration=_elapsed())
        except Exception as exc:
            exc.add_note(f"raised by a transition_invalid receiver while refusing: {error}")
            raise
    raise error


def _failed(plan: _Plan, obj: Any, current: Any, args: tuple[Any, ...],
            kwargs: dict[str, Any], exc: BaseException, error_state: Any = None) -> None:
    if transition_failed.receivers:
        try:
            _send(transition_failed, obj.__class__, **_payload(plan, obj, current, args, kwargs),
                  error=exc, error_state=error_state, duration=_elapsed())
        except Exception as receiver_exc:
            receiver_exc.add_note(
                f"raised by a transition_failed receiver while reporting: {exc!r}")
            raise


def _send(signal: Any, sender: type, **payload: Any) -> None:
    """``signal.send``, with ``async def`` receivers awaited (or refused) and any other
    receiver's awaitable result too: a coroutine is never dropped unawaited."""
    for receiver, result in signal.send(sender, _async_wrapper=_awaiting, **payload):
        if result is not None and inspect.isawaitable(result):
            _awaiting_result(receiver, result)


def _awaiting_result(receiver: Callable[..., Any], result: Any) -> None:
    from litestate import aio

    aio.await_result(receiver, result)


def _awaiting(receiver: Callable[..., Any]) -> Callable[..., Any]:
    """blinker's ``_async_wrapper``: an ``async def`` receiver, awaited when the signal is
    sent from :mod:`litestate.aio`'s bridge (an AsyncSession); else a clear error."""
    from litestate import aio

    return aio.awaiting_receiver(receiver)


def _payload(plan: _Plan, obj: Any, current: Any, args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"record": obj, "record_id": _record_id(obj), "event": plan.event,
            "from_state": current, "to_state": plan.to, "column": plan.column, "args": args,
            "kwargs": kwargs}


# -- durations: measured only while a succeeded, failed or invalid receiver listens ------

_STARTED: ContextVar[float | None] = ContextVar("litestate.started", default=None)
_timing = False  # whether one of those three signals may have a receiver


def _listened() -> bool:
    return bool(transition_succeeded.receivers or transition_failed.receivers or
                transition_invalid.receivers)


def _note_receivers(*_args: Any, **_kwargs: Any) -> None:
    global _timing
    _timing = _listened()


for _signal in (transition_succeeded, transition_failed, transition_invalid):
    _signal.receiver_connected.connect(_note_receivers, weak=False)
    _signal.receiver_disconnected.connect(_note_receivers, weak=False)


def _fire_timed(plan: _Plan, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """:func:`_fire`, with its start time for the signals' ``duration``."""
    if not _listened():  # the last receiver was garbage collected: stop measuring
        _note_receivers()
        return _fire(plan, obj, args, kwargs)
    token = _STARTED.set(perf_counter())
    try:
        return _fire(plan, obj, args, kwargs)
    finally:
        _STARTED.reset(token)


def _elapsed() -> float | None:
    """Seconds since the transition was called, or None if it was not measured."""
    started = _STARTED.get()
    return None if started is None else perf_counter() - started


def _now(plan: _Plan) -> datetime:
    """The clock's time as the timestamp column takes it."""
    return _as_column(_clock(), plan.naive)


def _as_column(now: datetime, naive: bool) -> datetime:
    """A clock reading as a ``DateTime`` column takes it: an aware time in UTC (naive UTC
    for a naive column). An aware column gets UTC too, the same instant: MySQL's and
    SQLite's keep no zone (SQLAlchemy drops the offset), so the clock's wall time in
    another zone would be stored as another instant. A naive time goes as it is."""
    tz = now.tzinfo
    if tz is None or (tz is UTC and not naive):
        return now
    now = now.astimezone(UTC)
    return now.replace(tzinfo=None) if naive else now


def _record_id(obj: Any) -> Any:
    state = getattr(obj, "_sa_instance_state", None)
    if state is None:  # a plain object: its `id` attribute, if it is a plain value
        try:
            record_id = getattr(obj, "id", None)
        except Exception:
            return None
        return None if callable(record_id) else record_id
    identity = state.identity
    return None if identity is None else identity[0] if len(identity) == 1 else identity


def _describe(record: Any) -> str:
    record_id = _record_id(record)
    return type(record).__name__ + ("" if record_id is None else f" {record_id!r}")


# -- a body may not commit ----------------------------------------------------------------

_OPEN = "litestate.open"  # session.info: the SAVEPOINTs of the atomic sections now running


@sa_event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    """``session.commit()`` inside a body (or a helper it calls) would commit the
    transition before it finished: refuse it, so the body raises and nothing is written.
    A SAVEPOINT the body opened itself may be released."""
    opened = session.info.get(_OPEN)
    if not opened or not any(t.is_active for t in opened):
        _forget_aborted(session)
        return
    current = session.get_nested_transaction() or session.get_transaction()
    if current is not None and (current in opened or not current.nested):
        raise sa_exc.InvalidRequestError(
            "session.commit() inside a transition's body: the transition would be committed "
            "before it finished. Commit after the call returns.")


# -- transition_committed: queued per transaction, sent when the database commits --------

_PENDING, _READY = "litestate.pending", "litestate.ready"
# A write the session does not commit itself (Session(bind=connection) in a transaction
# of the caller's): queued on the connection, with the number of the SAVEPOINT it is in.
_DEFERRED: weakref.WeakKeyDictionary[sa.Connection, list[tuple[int, type, dict[str, Any]]]] \
    = weakref.WeakKeyDictionary()
# (sender, payload, the connection written on, its innermost SAVEPOINT at the write)
_Entry = tuple[type, dict[str, Any], sa.Connection, int]
_Pending = dict[SessionTransaction, list[_Entry]]  # session.info[_PENDING]


def _queue_committed(f: _Firing) -> None:
    assert f.conn is not None
    queue_committed(f.session, f.conn, f.obj.__class__, (f.payload(),))


def queue_committed(session: Session, conn: sa.Connection, sender: type,
                    payloads: Iterable[dict[str, Any]]) -> None:
    """Queue :data:`transition_committed` for writes just made on ``conn`` in the session's
    current transaction, one signal per payload: sent once the database commits, dropped
    if it rolls back (how :mod:`litestate.bulk` sends one per row it moved)."""
    trans = session.get_nested_transaction() or session.get_transaction()
    assert trans is not None
    pending: _Pending = session.info.setdefault(_PENDING, {})
    savepoint = _sqla.savepoint_number(conn)
    pending.setdefault(trans, []).extend(
        (sender, payload, conn, savepoint) for payload in payloads)


def _forget_aborted(session: Session) -> None:
    """Before the outermost COMMIT: drop the queued writes of a transaction the database
    has already aborted (a statement of the caller's failed, and was ignored). PostgreSQL
    answers that COMMIT with a ROLLBACK and the drivers raise nothing."""
    pending: _Pending | None = session.info.get(_PENDING)
    trans = session.get_transaction()
    if not pending or trans is None or session.get_nested_transaction() is not None:
        return
    entries = pending.get(trans)
    if entries:
        entries[:] = [entry for entry in entries if not _aborted(entry[2])]


def _aborted(conn: sa.Connection) -> bool:
    """Whether the database has aborted ``conn``'s transaction, so that its COMMIT rolls
    back: what psycopg (``info.transaction_status``) and psycopg2
    (``get_transaction_status()``) report as ``INERROR``; other drivers do not say."""
    if conn.closed or conn.invalidated:
        return False  # its COMMIT raises
    driver: Any = conn.connection.driver_connection
    status = getattr(getattr(driver, "info", None), "transaction_status", None)
    if status is None:
        get_status = getattr(driver, "get_transaction_status", None)
        status = get_status() if callable(get_status) else None
    return status == _INERROR


_INERROR = 3  # libpq's PQTRANS_INERROR: idle in a failed transaction


@sa_event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    # Also fires when a SAVEPOINT is released: hand its signals to the parent.
    pending: _Pending | None = session.info.get(_PENDING)
    trans = session.get_nested_transaction() or session.get_transaction()
    if not pending or trans is None:
        return
    entries = pending.pop(trans, None)
    if entries:
        if trans.parent is None:
            session.info.setdefault(_READY, []).extend(entries)
        else:
            pending.setdefault(trans.parent, []).extend(entries)


@sa_event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, trans: SessionTransaction) -> None:
    # Entries still here belong to a transaction that rolled back, unless it is a
    # subtransaction (not nested), whose fate is its parent's.
    pending: _Pending | None = session.info.get(_PENDING)
    entries = pending.pop(trans, None) if pending else None
    if pending and entries and trans.parent is not None and not trans.nested:
        pending.setdefault(trans.parent, []).extend(entries)
    if trans.parent is None:
        ready: list[_Entry] | None = session.info.pop(_READY, None)
        if ready:
            _deliver(ready)


def _deliver(ready: list[_Entry]) -> None:
    """Send now what the database committed; a connection still in a transaction after
    the session's commit belongs to the caller, whose own commit will decide."""
    now: list[tuple[type, dict[str, Any]]] = []
    for sender, payload, conn, savepoint in ready:
        if conn.in_transaction():
            _defer(conn, sender, payload, savepoint)
        else:
            now.append((sender, payload))
    if now:
        _send_committed(now)


def _defer(conn: sa.Connection, sender: type, payload: dict[str, Any], savepoint: int) -> None:
    """Queue on the connection; ``savepoint`` is the innermost SAVEPOINT open when the
    write was made (0: none), whose rollback, or an enclosing one's, undoes it."""
    queue = _DEFERRED.get(conn)
    if queue is None:
        queue = _DEFERRED[conn] = []
        sa_event.listen(conn, "commit", _connection_commit)
        sa_event.listen(conn, "commit_twophase", _connection_commit_twophase)
        sa_event.listen(conn, "rollback", _connection_rollback)
        sa_event.listen(conn, "rollback_twophase", _connection_rollback_twophase)
        sa_event.listen(conn, "rollback_savepoint", _connection_rollback_savepoint)
    queue.append((savepoint, sender, payload))


def _connection_commit(conn: sa.Connection) -> None:
    queue = _DEFERRED.get(conn)
    if queue:
        entries = [(sender, payload) for _, sender, payload in queue]
        queue.clear()
        if _aborted(conn):
            return  # this COMMIT rolls back
        _sqla.commit_now(conn)
        _send_committed(entries)


def _connection_commit_twophase(conn: sa.Connection, xid: Any, is_prepared: bool) -> None:
    # A prepared transaction cannot be committed twice: sent as its COMMIT is issued.
    queue = _DEFERRED.get(conn)
    if queue:
        entries = [(sender, payload) for _, sender, payload in queue]
        queue.clear()
        _send_committed(entries)


def _connection_rollback_twophase(conn: sa.Connection, xid: Any, is_prepared: bool) -> None:
    _connection_rollback(conn)


def _connection_rollback(conn: sa.Connection) -> None:
    queue = _DEFERRED.get(conn)
    if queue:
        queue.clear()


def _connection_rollback_savepoint(conn: sa.Connection, name: str, context: Any) -> None:
    queue = _DEFERRED.get(conn)
    if queue:
        undone = _sqla.parse_savepoint(name)
        queue[:] = [entry for entry in queue if entry[0] < undone]


def _send_committed(ready: list[tuple[type, dict[str, Any]]]) -> None:
    """Every receiver hears every committed transition (blinker's send() would stop at
    the first receiver that raises); then the first receiver error, if any, propagates."""
    errors: list[BaseException] = []
    for sender, payload in ready:
        for receiver in transition_committed.receivers_for(sender):
            try:
                if inspect.iscoroutinefunction(receiver):
                    receiver = _awaiting(receiver)
                result = receiver(sender, **payload)
                if result is not None and inspect.isawaitable(result):
                    _awaiting_result(receiver, result)
            except BaseException as exc:  # a cancelled receiver too: the others still hear
                errors.append(exc)
    if errors:
        for other in errors[1:]:
            errors[0].add_note(f"another transition_committed receiver raised {other!r}")
        raise errors[0]
