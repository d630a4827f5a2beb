"""Decorator-based, race-free state transitions for SQLAlchemy models and plain objects.

A method decorated with :func:`transition` becomes a checked, atomic state change::

    @state_column("status")
    class Todo(Base):
        ...
        @transition(frm="pending", to="doing", timestamp="started_at")
        def start(self, user: str) -> None:
            self.started_by = user

    todo.start("ada")   # or TransitionError, with nothing written

The steps of a call, in order:

1. read the current state (with ``lock=True``: ``SELECT ... FOR UPDATE`` first);
2. check it against ``frm``, else ``TransitionError(reason="invalid")``;
3. run the guards, else ``TransitionError(reason="guard")``;
4. the atomic section, for an object in a session: ``UPDATE ... WHERE pk = :pk AND
   state = :state_read`` (a lost race is ``reason="conflict"``), the body, a flush, and
   :data:`transition_succeeded`, inside a SAVEPOINT when there is a body or a
   receiver; litestate never commits. Plain objects and objects outside a session get
   the same checks in memory, and their attributes are restored if the body raises.

:data:`transition_committed` follows after the session's outermost commit. The README
is the full manual: every option, every signal's payload and the error policy.
"""

from __future__ import annotations

import dis
import enum
import functools
import inspect
import operator
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Concatenate, NoReturn, ParamSpec, TypeVar, cast

import sqlalchemy as sa
from blinker import Namespace
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Mapper, Session, SessionTransaction, registry
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.exc import DetachedInstanceError

__all__ = [
    "ConflictError",
    "DeclarationError",
    "GuardError",
    "InvalidStateError",
    "Transition",
    "TransitionError",
    "available_transitions",
    "can_transition",
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
Guard = str | Callable[..., object]

_signals = Namespace()
#: Sent inside the transaction once the state is written, the body ran and was flushed.
transition_succeeded = _signals.signal("transition-succeeded")
#: Sent when a transition is refused (``reason``: invalid, guard or conflict).
transition_invalid = _signals.signal("transition-invalid")
#: Sent when the body (or a ``transition_succeeded`` receiver) raised, after the rollback.
transition_failed = _signals.signal("transition-failed")
#: Sent once the session's outermost transaction has committed; never after a rollback.
transition_committed = _signals.signal("transition-committed")


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


class InvalidStateError(TransitionError):
    """The current state is not one the transition may start from."""


class GuardError(TransitionError):
    """A guard returned a false value."""


class ConflictError(TransitionError):
    """The row's state changed between the read and the write: a lost race."""


_ERRORS = {"invalid": InvalidStateError, "guard": GuardError, "conflict": ConflictError}


class DeclarationError(ValueError):
    """A transition or state column is declared wrongly; the message names the bad value."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


_clock: Callable[[], datetime] = _utcnow


def set_clock(clock: Callable[[], datetime] | None) -> Callable[[], datetime]:
    """Make timestamps read ``clock()`` (``None``: the real UTC clock); returns the old one."""
    global _clock
    previous, _clock = _clock, clock or _utcnow
    return previous


class _Decl:
    """A transition as written in the class body, before it is resolved for a class."""

    def __init__(self, fn: Callable[..., Any] | None, frm: Any, to: Any, column: str | None,
                 timestamp: bool | str | None, guards: tuple[Guard, ...], lock: bool) -> None:
        self.fn, self.event, self.frm, self.to = fn, getattr(fn, "__name__", ""), frm, to
        self.column, self.timestamp, self.guards, self.lock = column, timestamp, guards, lock


class Transition:
    """One transition resolved for one class, as :func:`transitions` lists it."""

    __slots__ = ("_bind", "_fn", "_guards", "_mapped", "_naive", "_pk", "_refresh", "_stmt",
                 "column", "event", "frm", "guards", "lock", "timestamp", "to")

    def __init__(self, event: str, frm: frozenset[Any] | None, to: Any, column: str,
                 timestamp: str | None, guards: tuple[str, ...], lock: bool) -> None:
        #: The method name; ``frm`` is None for ``"*"`` (any state).
        self.event, self.frm, self.to, self.column = event, frm, to, column
        self.timestamp, self.guards, self.lock = timestamp, guards, lock
        self._fn: Callable[..., Any] | None = None
        # (label, guard, whether it takes the call's arguments, whether it can run without)
        self._guards: tuple[tuple[str, Callable[..., object], bool, bool], ...] = ()
        self._mapped, self._naive = False, False
        self._stmt: Any = None  # the precompiled conditional UPDATE, for mapped classes
        self._bind: dict[str, Any] = {}
        self._pk: tuple[tuple[str, int], ...] = ()
        self._refresh: tuple[str, ...] = ()

    def __repr__(self) -> str:
        frm = "*" if self.frm is None else " | ".join(sorted(map(repr, self.frm)))
        return f"<Transition {self.event}: {frm} -> {self.to!r} on {self.column}>"


def transition(
    frm: State | Iterable[State], to: State, *, column: str | None = None,
    timestamp: bool | str | None = None, guard: Guard | Sequence[Guard] | None = None,
    lock: bool = False,
) -> Callable[[Callable[Concatenate[_M, _P], _R]], Callable[Concatenate[_M, _P], _R]]:
    """Turn a method into a checked transition from ``frm`` (``"*"``: any) to ``to``.

    ``column`` overrides the class's :func:`state_column`; ``timestamp=True`` stamps
    ``f"{to}_at"``, a string names the column; ``guard`` is a callable, a method name or
    a list of them, all of which must hold; ``lock=True`` reads the state under
    ``SELECT ... FOR UPDATE``. The method keeps its parameters and return value.
    """
    decl = _Decl(None, _states(frm), _state(to, "to"), column, timestamp, _guard_list(guard),
                 lock)
    if column is not None and (not isinstance(column, str) or not column):
        raise DeclarationError(f"@transition(column={column!r}): a column is a non-empty str")
    if not (timestamp is None or isinstance(timestamp, bool | str)) or timestamp == "":
        raise DeclarationError(f"@transition(timestamp={timestamp!r}): use True or a column")
    if not isinstance(lock, bool):
        raise DeclarationError(f"@transition(lock={lock!r}): lock is True or False")

    def decorate(fn: Callable[Concatenate[_M, _P], _R]) -> Callable[Concatenate[_M, _P], _R]:
        if not callable(fn):
            raise DeclarationError(f"@transition decorates a method, not {fn!r}")
        # Two `def start` in one class body leave one attribute; see the first one here.
        if isinstance(sys._getframe(1).f_locals.get(fn.__name__), _Declared):
            raise DeclarationError(f"transition {fn.__name__!r} is declared twice")
        decl.fn, decl.event = fn, fn.__name__
        return cast(Callable[Concatenate[_M, _P], _R], _Declared(decl))

    return decorate


def state_column(column: str) -> Callable[[_C], _C]:
    """Class decorator: the column transitions use when they do not name one."""
    if not isinstance(column, str) or not column:
        raise DeclarationError(f"@state_column({column!r}): a column is a non-empty str")

    def decorate(cls: _C) -> _C:
        setattr(cls, "__litestate_column__", column)  # noqa: B010 - a class we do not type
        _build(cls, sa.inspect(cls, raiseerr=False), strict=True)
        return cls

    return decorate


def can_transition(obj: object, event: str, /, *args: Any, **kwargs: Any) -> bool:
    """Whether ``getattr(obj, event)(*args, **kwargs)`` would pass its state and guards now.

    Reads attributes only: no write, no signal, no lock.
    """
    try:
        t = _REGISTRY[type(obj)][event]
    except KeyError:
        t = _lookup(type(obj), event)
    # A loaded mapped attribute is in __dict__: skip the descriptor; else let it load.
    current = obj.__dict__.get(t.column, _MISSING) if t._mapped else _MISSING
    if current is _MISSING:
        current = getattr(obj, t.column, None)
    if current is None or (t.frm is not None and current not in t.frm):
        return False
    for _, guard, with_args, _ in t._guards:
        if not (guard(obj, *args, **kwargs) if with_args else guard(obj)):
            return False
    return True


def available_transitions(obj: object) -> list[str]:
    """The transitions that can fire now, in declaration order, for views and templates.

    Guards that need the call's arguments cannot be asked here and count as passing.
    """
    try:
        by_column = _BY_STATE[type(obj)]
    except KeyError:
        _transitions_of(type(obj))
        by_column = _BY_STATE[type(obj)]
    found = []
    for column, by_state, any_state in by_column:
        current = getattr(obj, column, None)
        if current is None:
            continue
        for t in by_state.get(current, any_state):
            if not t._guards or all(guard(obj) for _, guard, _, argless in t._guards
                                    if argless):
                found.append(t)
    if len(by_column) > 1:  # several state columns: back to declaration order
        order = list(_REGISTRY[type(obj)].values())
        found.sort(key=order.index)
    return [t.event for t in found]


def transitions(cls: type) -> tuple[Transition, ...]:
    """Every transition of ``cls`` (inherited ones included), in declaration order."""
    return tuple(_transitions_of(cls).values())


def transition_state(
    obj: Any, *, event: str, frm: State | Iterable[State], to: State,
    column: str | None = None, timestamp: bool | str | None = None,
    guard: Guard | Sequence[Guard] | None = None, lock: bool = False,
    body: Callable[[], _R] | None = None,
) -> _R | None:
    """Fire a transition declared at the call site (the Ruby ``transition_state``).

    Same checks, atomicity and signals as a decorated method; ``body()`` runs in the
    atomic section and its result is returned. The resolved declaration is cached.
    """
    guards = _guard_list(guard)
    key = (event, repr(frm), repr(to), column, timestamp, guards, lock, body is None)
    cache = _ADHOC.setdefault(type(obj), {})
    t = cache.get(key)
    if t is None:
        decl = _Decl(_no_arguments, _states(frm), _state(to, "to"), column, timestamp, guards,
                     lock)
        decl.event = event
        t = cache[key] = _resolve(type(obj), sa.inspect(type(obj), raiseerr=False), decl)
    t_call = t if body is None else _with_body(t, body)
    return cast("_R | None", _fire(t_call, obj, (), {}))


# -- declaration ---------------------------------------------------------------------

_REGISTRY: dict[type, dict[str, Transition]] = {}
# For available_transitions: per state column, each state's candidates and "*"'s.
_BY_STATE: dict[type, list[tuple[str, dict[Any, list[Transition]], list[Transition]]]] = {}
_ADHOC: dict[type, dict[tuple[Any, ...], Transition]] = {}


class _Declared:
    """What ``@transition`` leaves in the class body until the class exists."""

    def __init__(self, decl: _Decl) -> None:
        self.__litestate__ = decl

    def __set_name__(self, owner: type, name: str) -> None:
        decl = self.__litestate__
        decl.event = name
        setattr(owner, name, _method(decl))  # a plain function: the fastest bound method
        # Every transition is in the class dict by the first __set_name__: resolve once.
        # Declarative classes wait for their mapper.
        if owner not in _REGISTRY and not isinstance(getattr(owner, "registry", None), registry):
            _build(owner, None, strict=False)

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("@transition decorates methods defined in a class body")


def _method(decl: _Decl) -> Callable[..., Any]:
    event = decl.event
    assert decl.fn is not None

    @functools.wraps(decl.fn)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            t = _REGISTRY[type(self)][event]
        except KeyError:
            t = _lookup(type(self), event)
        return _fire(t, self, args, kwargs)

    method.__litestate__ = decl  # type: ignore[attr-defined]
    return method


def _build(cls: type, mapper: Mapper[Any] | None, *, strict: bool) -> dict[str, Transition]:
    decls: dict[str, _Decl] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            decl = getattr(value, "__litestate__", None) if callable(value) else None
            if isinstance(decl, _Decl):
                decls[name] = decl
            else:
                decls.pop(name, None)  # overridden by something that is not a transition
    default = getattr(cls, "__litestate_column__", None)
    if not strict and default is None and any(d.column is None for d in decls.values()):
        return {}  # @state_column may still come: it runs after the class body
    found = {name: _resolve(cls, mapper, decl) for name, decl in decls.items()}
    by_column: dict[str, tuple[dict[Any, list[Transition]], list[Transition]]] = {}
    for t in found.values():
        by_state, any_state = by_column.setdefault(t.column, ({}, []))
        for state in t.frm or ():
            by_state.setdefault(state, list(any_state))
        for state, candidates in by_state.items():
            if t.frm is None or state in t.frm:
                candidates.append(t)
        if t.frm is None:
            any_state.append(t)
    _BY_STATE[cls] = [(column, *tables) for column, tables in by_column.items()]
    _REGISTRY[cls] = found
    _ADHOC.pop(cls, None)
    return found


def _transitions_of(cls: type) -> dict[str, Transition]:
    found = _REGISTRY.get(cls)
    return found if found is not None else _build(cls, sa.inspect(cls, raiseerr=False),
                                                  strict=True)


def _lookup(cls: type, event: str) -> Transition:
    found = _transitions_of(cls)
    if event not in found:
        raise ValueError(f"{cls.__name__} has no transition {event!r}; it has {list(found)}")
    return found[event]


@sa_event.listens_for(Mapper, "after_mapper_constructed")
def _mapper_constructed(mapper: Mapper[Any], cls: type) -> None:
    _build(cls, mapper, strict=False)


@sa_event.listens_for(Mapper, "mapper_configured")
def _mapper_configured(mapper: Mapper[Any], cls: type) -> None:
    if cls not in _REGISTRY:
        _build(cls, mapper, strict=True)


def _resolve(cls: type, mapper: Mapper[Any] | None, decl: _Decl) -> Transition:
    who = f"{cls.__name__}.{decl.event}"
    column = decl.column or getattr(cls, "__litestate_column__", None)
    if column is None:
        raise DeclarationError(f"{who}: no state column; pass column= or use @state_column")
    ts = decl.timestamp
    if ts is True:
        ts = f"{_plain(decl.to)}_at"
    ts = ts or None
    convert = _converter(who, mapper, column)
    frm = None if decl.frm is None else frozenset(convert(s) for s in decl.frm)
    labels = tuple(g if isinstance(g, str) else getattr(g, "__qualname__", repr(g))
                   for g in decl.guards)
    t = Transition(decl.event, frm, convert(decl.to), column, ts, labels, decl.lock)
    t._fn = None if _is_empty(decl.fn) else decl.fn
    assert decl.fn is not None
    t._guards = tuple(_guard(cls, who, g, decl.fn) for g in decl.guards)
    if mapper is not None:
        _resolve_table(t, who, mapper)
    return t


def _resolve_table(t: Transition, who: str, mapper: Mapper[Any]) -> None:
    state_col = mapper.column_attrs[t.column].columns[0]
    table = state_col.table
    if not isinstance(table, sa.Table):
        raise DeclarationError(f"{who}: {t.column} is not a column of a table")
    pk_keys = [mapper.get_property_by_column(c).key for c in mapper.primary_key]
    try:
        pk = tuple((f"ls_pk{i}", pk_keys.index(mapper.get_property_by_column(c).key))
                   for i, c in enumerate(table.primary_key))
    except (ValueError, sa.exc.NoReferencedColumnError) as exc:
        raise DeclarationError(f"{who}: {table.name} has no primary key to update") from exc
    values: dict[Any, Any] = {state_col: sa.bindparam("ls_to", type_=state_col.type)}
    if t.timestamp is not None:
        prop = mapper.column_attrs.get(t.timestamp)
        ts_col = prop.columns[0] if prop is not None else None
        if ts_col is None or ts_col.table is not table:
            raise DeclarationError(
                f"{who}: timestamp column {t.timestamp!r} is not a column of {table.name}")
        if not isinstance(ts_col.type, sa.DateTime):
            raise DeclarationError(f"{who}: timestamp column {t.timestamp!r} is {ts_col.type},"
                                   " not a DateTime")
        t._naive = not ts_col.type.timezone
        values[ts_col] = sa.bindparam("ls_ts", type_=ts_col.type)
    where = [c == sa.bindparam(name) for (name, _), c in zip(pk, table.primary_key, strict=True)]
    t._stmt = sa.update(table).where(*where, state_col == sa.bindparam("ls_from")).values(values)
    t._pk, t._bind, t._mapped = pk, {"mapper": mapper}, True
    t._refresh = tuple(p.key for p in mapper.column_attrs)


def _converter(who: str, mapper: Mapper[Any] | None, column: str) -> Callable[[Any], Any]:
    """How a declared state becomes the value the column's attribute holds."""
    if mapper is None:
        return lambda state: state
    prop = mapper.column_attrs.get(column)
    if prop is None:
        raise DeclarationError(f"{who}: {mapper.class_.__name__} has no column {column!r}")
    type_ = prop.columns[0].type

    def convert(state: Any) -> Any:
        if isinstance(type_, sa.Enum) and type_.enum_class is not None:
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
                python_type = _python_type(type_)
                if python_type is None or isinstance(state, python_type):
                    return state
                raise DeclarationError(
                    f"{who}: state {state!r} is not a {python_type.__name__}, as {column} is")
        raise DeclarationError(f"{who}: state {state!r} is not one of {column}'s {allowed}")

    return convert


def _python_type(type_: Any) -> type | None:
    try:
        return cast(type, type_.python_type)
    except NotImplementedError:
        return None


def _states(frm: Any) -> tuple[Any, ...] | None:
    if frm == "*":
        return None
    found = (frm,) if isinstance(frm, str | int | enum.Enum) else tuple(frm)
    if not found:
        raise DeclarationError("@transition(frm=()): name at least one state, or '*'")
    return tuple(_state(s, "frm") for s in found)


def _state(state: Any, what: str) -> Any:
    if not isinstance(state, str | int | enum.Enum) or isinstance(state, bool) or state in ("",
                                                                                           "*"):
        raise DeclarationError(f"@transition({what}={state!r}): a state is a str, int or Enum")
    return state


def _plain(state: Any) -> Any:
    if isinstance(state, enum.Enum):
        return state.value if isinstance(state.value, str) else state.name
    return state


def _guard_list(guard: Guard | Sequence[Guard] | None) -> tuple[Guard, ...]:
    guards = () if guard is None else (guard,) if isinstance(guard, str) or callable(guard) \
        else tuple(guard)
    for g in guards:
        if not (isinstance(g, str) or callable(g)):
            raise DeclarationError(f"@transition(guard={g!r}): a guard is a callable or a name")
    return guards


def _guard(cls: type, who: str, g: Guard, fn: Callable[..., Any]
           ) -> tuple[str, Callable[..., object], bool, bool]:
    """A guard as a callable taking the instance (and, if ``with_args``, the call's
    arguments), and whether it can run without the call's arguments."""
    shapes = _call_shapes(fn)
    if isinstance(g, str):
        raw = inspect.getattr_static(cls, g, None)
        if raw is None:
            raise DeclarationError(f"{who}: guard {g!r} is not an attribute of {cls.__name__}")
        if not (inspect.isfunction(raw) or isinstance(raw, staticmethod | classmethod)):
            return g, operator.attrgetter(g), False, True  # a property, a column
        target, bound = getattr(cls, g), not inspect.isfunction(raw)
        label = g
    else:
        target, bound, label = g, False, getattr(g, "__qualname__", repr(g))
    self_ = () if bound else (None,)
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # a builtin: trust it with the whole call
        with_args = True
    else:
        with_args = all(_binds(signature, self_ + a, k) for a, k in shapes)
        if not with_args and not _binds(signature, self_, {}):
            call = ", ".join(inspect.signature(fn).parameters)
            raise DeclarationError(f"{who}: guard {label} can take neither the call "
                                   f"{fn.__name__}({call}) nor the instance alone")
    # A method that takes no arguments gives its guards none: call them the cheap way.
    with_args = with_args and len(inspect.signature(fn).parameters) > 1
    argless = not with_args or not (shapes[0][0] or shapes[0][1])
    if isinstance(g, str):
        if with_args:
            return label, lambda obj, *args, **kwargs: getattr(obj, g)(*args, **kwargs), \
                True, argless
        return label, operator.methodcaller(g), False, argless
    return label, g, with_args, argless


def _call_shapes(fn: Callable[..., Any]) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Sample calls of ``fn`` without self: required only, all positional, all keyword."""
    need: list[Any] = []
    need_kw: dict[str, Any] = {}
    pos: list[Any] = []
    pos_kw: dict[str, Any] = {}
    kw_pos: list[Any] = []
    kw: dict[str, Any] = {}
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
    return [(tuple(need), need_kw), (tuple(pos), pos_kw), (tuple(kw_pos), kw)]


def _binds(signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    try:
        signature.bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def _no_arguments(self: Any) -> None:
    """The call shape of :func:`transition_state`: the instance and nothing else."""


_RETURN_NONE = ([("LOAD_CONST", None), ("RETURN_VALUE", None)], [("RETURN_CONST", None)])


def _is_empty(fn: Callable[..., Any] | None) -> bool:
    """A body that only returns None needs no SAVEPOINT and is not called at all."""
    if not inspect.isfunction(fn) or inspect.isgeneratorfunction(fn) or \
            inspect.iscoroutinefunction(fn):
        return False
    ops = [(i.opname, i.argval) for i in dis.get_instructions(fn)
           if i.opname not in ("RESUME", "NOP", "CACHE")]
    return ops in _RETURN_NONE


def _with_body(t: Transition, body: Callable[[], Any]) -> Transition:
    copy = Transition.__new__(Transition)
    for slot in Transition.__slots__:
        setattr(copy, slot, getattr(t, slot))
    copy._fn = lambda _obj: body()
    return copy


# -- firing --------------------------------------------------------------------------

_MISSING = object()
_LOCK: Any = True  # with_for_update=True; typed loosely: SQLAlchemy 2.0's stubs disagree


def _fire(t: Transition, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Every call lands here: objects in a session go on; the rest run in memory, inline
    (this is the hot path: no call that the common case does not need)."""
    if t._mapped:
        state = obj._sa_instance_state
        if state.session_id is not None:
            session = state.session
            if session is not None:
                return _fire_in_session(t, obj, state, session, args, kwargs)
        if state.key is not None:
            raise DetachedInstanceError(
                f"cannot {t.event}() {_describe(obj)}: it is detached from its session, so "
                "the write could not be checked; merge() it into a session first")
        current = obj.__dict__.get(t.column)  # transient: nothing to load, skip the descriptor
    else:
        current = getattr(obj, t.column, None)
    if current is None or (t.frm is not None and current not in t.frm):
        _check(t, obj, current, args, kwargs)  # raises
    if t._guards:  # _check's loop, inline: this is the hot path
        for label, guard, with_args, _ in t._guards:
            if not (guard(obj, *args, **kwargs) if with_args else guard(obj)):
                _refuse(t, obj, current, "guard", f"guard {label} returned false", args, kwargs)
    ts = t.timestamp
    old_ts = getattr(obj, ts, _MISSING) if ts is not None else None
    setattr(obj, t.column, t.to)
    if ts is not None:
        setattr(obj, ts, _now(t))
    try:
        result = None if t._fn is None else t._fn(obj, *args, **kwargs)
        if transition_succeeded.receivers:
            transition_succeeded.send(type(obj), **_payload(t, obj, current, args, kwargs))
    except BaseException as exc:
        setattr(obj, t.column, current)
        if ts is not None:
            if old_ts is _MISSING:
                delattr(obj, ts)
            else:
                setattr(obj, ts, old_ts)
        _failed(t, obj, current, args, kwargs, exc)
        raise
    return result


def _fire_in_session(t: Transition, obj: Any, state: Any, session: Session,
                     args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if state.key is None or t.column in state.committed_state:
        session.flush()  # a pending row, or an unsaved state: the UPDATE must see it
    if t.lock:
        keep = state.committed_state  # the caller's unsaved edits stay as they are
        session.refresh(obj, [k for k in t._refresh if k not in keep], with_for_update=_LOCK)
    current = getattr(obj, t.column)
    _check(t, obj, current, args, kwargs)
    params = {name: state.key[1][i] for name, i in t._pk}
    params["ls_from"], params["ls_to"] = current, t.to
    ts = t.timestamp
    if ts is not None:
        params["ls_ts"] = now = _now(t)
        old_ts = state.dict.get(ts, _MISSING)
    sender = type(obj)
    nested = t._fn is not None or (
        bool(transition_succeeded.receivers) and transition_succeeded.has_receivers_for(sender))
    savepoint = session.begin_nested() if nested else None
    won = False
    try:
        won = session.connection(bind_arguments=t._bind).execute(t._stmt, params).rowcount == 1
        if won:
            set_committed_value(obj, t.column, t.to)
            if ts is not None:
                set_committed_value(obj, ts, now)
            # What the ORM's flush does for a row it updated: any rollback of this
            # transaction (or of a savepoint enclosing it) now expires the object.
            session._register_altered([state])
            result = None if t._fn is None else t._fn(obj, *args, **kwargs)
            if savepoint is not None:
                session.flush()
            if transition_succeeded.receivers:
                transition_succeeded.send(sender, **_payload(t, obj, current, args, kwargs))
        if savepoint is not None:
            savepoint.commit() if won else savepoint.rollback()
    except BaseException as exc:
        if savepoint is not None and savepoint.is_active:
            savepoint.rollback()
        if savepoint is not None or not won:  # else the row keeps the write: so does memory
            set_committed_value(obj, t.column, current)
            if ts is not None:
                if old_ts is _MISSING:
                    session.expire(obj, [ts])
                else:
                    set_committed_value(obj, ts, old_ts)
        _failed(t, obj, current, args, kwargs, exc)
        raise
    if not won:  # the next read shows the row; the caller's unsaved edits stay
        session.expire(obj, [k for k in t._refresh if k not in state.committed_state])
        _refuse(t, obj, current, "conflict",
                f"it was {current!r} when read but the row changed before the write", args,
                kwargs)
    if transition_committed.receivers:
        trans = session.get_nested_transaction() or session.get_transaction()
        pending = session.info.setdefault(_PENDING, {})
        pending.setdefault(trans, []).append((sender, _payload(t, obj, current, args, kwargs)))
    return result


def _check(t: Transition, obj: Any, current: Any, args: tuple[Any, ...],
           kwargs: dict[str, Any]) -> None:
    if current is None or (t.frm is not None and current not in t.frm):
        allowed = "any state" if t.frm is None else ", ".join(sorted(map(repr, t.frm)))
        _refuse(t, obj, current, "invalid", f"{t.event} starts from {allowed}", args, kwargs)
    for label, guard, with_args, _ in t._guards:
        if not (guard(obj, *args, **kwargs) if with_args else guard(obj)):
            _refuse(t, obj, current, "guard", f"guard {label} returned false", args, kwargs)


def _refuse(t: Transition, obj: Any, current: Any, reason: str, detail: str,
            args: tuple[Any, ...], kwargs: dict[str, Any]) -> NoReturn:
    error = _ERRORS[reason](obj, t.event, current, t.to, t.column, reason, detail)
    if transition_invalid.receivers:
        try:
            transition_invalid.send(type(obj), **_payload(t, obj, current, args, kwargs),
                                    reason=reason, error=error)
        except Exception as exc:
            exc.add_note(f"raised by a transition_invalid receiver while refusing: {error}")
            raise
    raise error


def _failed(t: Transition, obj: Any, current: Any, args: tuple[Any, ...],
            kwargs: dict[str, Any], exc: BaseException) -> None:
    if transition_failed.receivers:
        try:
            transition_failed.send(type(obj), **_payload(t, obj, current, args, kwargs),
                                   error=exc)
        except Exception as receiver_exc:
            receiver_exc.add_note(
                f"raised by a transition_failed receiver while reporting: {exc!r}")
            raise


def _payload(t: Transition, obj: Any, current: Any, args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"record": obj, "record_id": _record_id(obj), "event": t.event,
            "from_state": current, "to_state": t.to, "column": t.column, "args": args,
            "kwargs": kwargs}


def _now(t: Transition) -> datetime:
    now = _clock()
    if t._naive and now.tzinfo is not None:
        return now.astimezone(UTC).replace(tzinfo=None)
    return now


def _record_id(obj: Any) -> Any:
    state = getattr(obj, "_sa_instance_state", None)
    if state is None:
        return getattr(obj, "id", None)
    identity = state.identity
    return None if identity is None else identity[0] if len(identity) == 1 else identity


def _describe(record: Any) -> str:
    record_id = _record_id(record)
    return type(record).__name__ + ("" if record_id is None else f" {record_id!r}")


# -- transition_committed: queued per transaction, sent when the root commits ----------

_PENDING, _READY = "litestate.pending", "litestate.ready"


@sa_event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    # Also fires when a SAVEPOINT is released: hand its signals to the parent.
    pending = session.info.get(_PENDING)
    trans = session.get_nested_transaction() or session.get_transaction()
    entries = pending.pop(trans, None) if pending else None
    if entries and trans is not None:
        if trans.parent is None:
            session.info.setdefault(_READY, []).extend(entries)
        else:
            pending.setdefault(trans.parent, []).extend(entries)  # type: ignore[union-attr]


@sa_event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, trans: SessionTransaction) -> None:
    # Entries still here belong to a transaction that rolled back, unless it is a
    # subtransaction (not nested), whose fate is its parent's.
    pending = session.info.get(_PENDING)
    entries = pending.pop(trans, None) if pending else None
    if entries and trans.parent is not None and not trans.nested:
        pending.setdefault(trans.parent, []).extend(entries)  # type: ignore[union-attr]
    if trans.parent is None:
        ready = session.info.pop(_READY, None)
        if ready:
            _send_committed(ready)


def _send_committed(ready: list[tuple[type, dict[str, Any]]]) -> None:
    """Every receiver hears every committed transition (blinker's send() would stop at
    the first receiver that raises); then the first receiver error, if any, propagates."""
    errors = []
    for sender, payload in ready:
        for receiver in transition_committed.receivers_for(sender):
            try:
                receiver(sender, **payload)
            except Exception as exc:
                errors.append(exc)
    if errors:
        for other in errors[1:]:
            errors[0].add_note(f"another transition_committed receiver raised {other!r}")
        raise errors[0]
