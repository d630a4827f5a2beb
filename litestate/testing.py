"""Helpers for testing code that uses litestate: signals, declarations, states, the clock.

::

    from litestate.testing import (assert_transitions, capture_signals, captured_on_commit,
                                   force_state, frozen_clock)

    assert_transitions(Todo, {"start": ("pending", "doing"),
                              "finish": (("pending", "doing"), "done")})

    with Session(engine) as session, capture_signals() as heard, \\
            frozen_clock(datetime(2030, 1, 1, 9, 0)) as clock:
        todo = force_state(Todo(), "doing")  # no guard, no signal: a fixture's shortcut
        session.add(todo)
        session.commit()
        todo.finish()
        session.commit()
        assert heard.events() == ["finish", "finish"]
        assert heard.names() == ["succeeded", "committed"]

Nothing here changes how a transition runs, with two exceptions that any receiver would
cause too: a connected ``transition_succeeded`` receiver makes every transition in a
session use a SAVEPOINT, and a connected ``transition_committed`` receiver makes litestate
queue the committed signal.

**capture_signals(*, sender=None)** records the four signals sent inside the block, in
order, as :class:`Signal` records in a :class:`Signals` sequence (``.of(name)``,
``.events(name)``, ``.names()``, ``.clear()``). Names are ``"succeeded"``, ``"invalid"``,
``"failed"`` and ``"committed"``. Its receivers are global: every thread's transitions are
recorded while the block runs (``sender=`` narrows it to one model class). They are held
strongly while the block runs and disconnected when it ends, however it ends. Every
keyword sent is kept in ``Signal.payload``, keys added by later litestate versions
included.

**assert_transitions(cls, {event: (frm, to)}, *, column=None)** asserts the exact table
of ``litestate.transitions(cls)``: ``frm`` is a state, a tuple (or any iterable) of states,
or ``"*"`` alone (as in ``@transition``, ``"*"`` among states, or no state, is a
``ValueError``). States are written as in declarations (a string, an ``Enum`` member, its
name or its value) and compared as the column holds them. A difference raises
``AssertionError`` listing each missing, extra and different transition, then the table
as declared. ``column=`` restricts both sides to the transitions on that column.

**force_state(obj, state, column=None)** sets the state without guards, signals, SQL or
timestamps, and returns ``obj``: an ordinary attribute set, so a flush writes it. The
state is converted to the column's form (an ``Enum`` column takes a member, its name or
its value). The column defaults to the class's ``@state_column``; a state the column
cannot hold (outside its ``Enum``, or, for other columns, neither named by the class's
transitions on it nor the state a new object starts in, the initial state ``diagram()``
draws) is a ``ValueError`` naming the states it can.

**frozen_clock(now)** makes every transition timestamp ``now`` until the block ends (the
previous clock is restored, however it ends); the :class:`FrozenClock` it yields moves
with ``.tick(delta)`` and ``.move_to(dt)``. The time is written as litestate writes any
time: an aware datetime on a ``DateTime`` column without ``timezone=True`` is stored as
naive UTC, a naive one as it is. So a timestamp equals ``now`` when ``now`` is naive for a
naive column and aware for an aware one (or a plain object).

**captured_on_commit(connection, *, execute=False)** is for tests that wrap everything in
an outer ``connection.begin()`` that never commits (SQLAlchemy's "join a Session into an
external transaction" recipe). There, litestate keeps each ``transition_committed`` queued
on the connection until the outer transaction commits, so the test hears none. When the
block ends, the :class:`Signals` it yielded holds what the outer transaction's commit
would send: the signals queued on ``connection`` during the block, minus those a rollback
(of a SAVEPOINT) already dropped. A session joined to the connection queues its signals
there when it commits, so commit it inside the block. With ``execute=False`` they stay
queued, as they were; with ``execute=True`` they are taken off the queue and sent to the
``transition_committed`` receivers, as the commit would send them (signals those receivers
cause are sent too), unless the block raised. As Django's ``captureOnCommitCallbacks``.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal, TypeVar, cast, overload

import blinker
import sqlalchemy as sa

from litestate import core
from litestate.core import (
    Transition,
    set_clock,
    transition_committed,
    transition_failed,
    transition_invalid,
    transition_succeeded,
    transitions,
)
from litestate.diagram import (
    _as_held,  # pyright: ignore[reportPrivateUsage]
    _default_state,  # pyright: ignore[reportPrivateUsage]
    _state_column,  # pyright: ignore[reportPrivateUsage]
)

__all__ = [
    "FROZEN_AT",
    "FrozenClock",
    "Signal",
    "SignalName",
    "Signals",
    "assert_transitions",
    "capture_signals",
    "captured_on_commit",
    "force_state",
    "frozen_clock",
]

_T = TypeVar("_T")

# The only private names used here, by captured_on_commit alone: the transition_committed
# queue of each caller's connection, and litestate's delivery from it.
_DEFERRED = core._DEFERRED  # pyright: ignore[reportPrivateUsage]
_send_committed = core._send_committed  # pyright: ignore[reportPrivateUsage]

#: A litestate signal, as a capture names it.
SignalName = Literal["succeeded", "invalid", "failed", "committed"]

_SIGNALS: dict[SignalName, blinker.NamedSignal] = {
    "succeeded": transition_succeeded,
    "invalid": transition_invalid,
    "failed": transition_failed,
    "committed": transition_committed,
}

#: Where the ``litestate_clock`` fixture stands still: a naive UTC time, as a ``DateTime``
#: column without ``timezone=True`` holds it.
FROZEN_AT = datetime(2030, 1, 2, 3, 4, 5)


# -- signals ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signal:
    """One signal litestate sent, as a capture heard it (frozen)."""

    #: ``"succeeded"``, ``"invalid"``, ``"failed"`` or ``"committed"``.
    name: SignalName
    #: The sender: the model class.
    sender: Any
    #: The transition's name.
    event: str
    #: The object the transition was called on.
    record: Any
    #: Its identity (or ``id`` attribute), ``None`` if it has none.
    record_id: Any
    #: The attribute holding the state.
    column: str
    #: The state read when the transition was called.
    from_state: Any
    #: The state the transition writes.
    to_state: Any
    #: The call's positional arguments.
    args: tuple[Any, ...]
    #: The call's keyword arguments.
    kwargs: Mapping[str, Any]
    #: Why ``transition_invalid`` refused (``"invalid"``, ``"guard"``, ``"conflict"``).
    reason: str | None
    #: ``transition_invalid``'s ``TransitionError``, or the exception ``transition_failed``
    #: reports.
    error: BaseException | None
    #: Every keyword argument sent, read-only, including keys this class has no field for.
    payload: Mapping[str, Any]

    @classmethod
    def heard(cls, name: SignalName, sender: Any, payload: Mapping[str, Any]) -> Signal:
        """The record of ``name`` sent by ``sender`` with ``payload``."""
        get = payload.get
        return cls(name, sender, get("event", ""), get("record"), get("record_id"),
                   get("column", ""), get("from_state"), get("to_state"), get("args", ()),
                   get("kwargs", {}), get("reason"), get("error"),
                   MappingProxyType(dict(payload)))

    def __repr__(self) -> str:
        sender = getattr(self.sender, "__name__", repr(self.sender))
        why = f" ({self.reason})" if self.reason is not None else \
            f" ({self.error!r})" if self.error is not None else ""
        return (f"<Signal {self.name} {sender}.{self.event} {self.record_id!r}: "
                f"{self.from_state!r} -> {self.to_state!r}{why}>")


class Signals(Sequence[Signal]):
    """The signals a capture heard, in the order they were sent (a read-only view of
    ``log``, which the capture fills)."""

    __slots__ = ("_log",)

    def __init__(self, log: list[Signal] | None = None) -> None:
        self._log = [] if log is None else log

    @overload
    def __getitem__(self, index: int) -> Signal: ...
    @overload
    def __getitem__(self, index: slice) -> list[Signal]: ...
    def __getitem__(self, index: int | slice) -> Signal | list[Signal]:
        return self._log[index]

    def __len__(self) -> int:
        return len(self._log)

    def __eq__(self, other: object) -> bool:
        """Equal to a list of the same signals (``heard == []``), or another capture's."""
        if isinstance(other, Signals):
            return self._log == other._log
        return self._log == other if isinstance(other, list) else NotImplemented

    def __repr__(self) -> str:
        return f"Signals({self._log!r})"

    def of(self, name: SignalName | None = None, *, event: str | None = None,
           sender: Any = None) -> list[Signal]:
        """The signals named ``name`` (all, if ``None``), optionally only those of one
        event or one sender."""
        if name is not None:
            _check_signal_name(name)
        return [s for s in self._log if (name is None or s.name == name) and
                (event is None or s.event == event) and (sender is None or s.sender is sender)]

    def events(self, name: SignalName | None = None) -> list[str]:
        """The event of each signal named ``name`` (of every signal, if ``None``)."""
        return [s.event for s in self.of(name)]

    def names(self) -> list[SignalName]:
        """The name of each signal heard, in order."""
        return [s.name for s in self._log]

    def clear(self) -> None:
        """Forget what was heard so far; the capture goes on."""
        self._log.clear()


@contextlib.contextmanager
def capture_signals(*, sender: Any = None) -> Generator[Signals, None, None]:
    """Record every litestate signal sent inside the block (only ``sender``'s, if given:
    blinker compares senders by identity, so a subclass's objects are not its parent's).

    The receivers are global, so a transition of any thread is recorded while the block
    runs (a test's server thread's, say, but also another test's running at the same
    time); ``sender=`` narrows the capture to one model class. The receivers are held
    strongly while the block runs (blinker's default is weak) and are disconnected when it
    ends, however it ends.
    """
    log: list[Signal] = []
    with contextlib.ExitStack() as stack:
        for name, signal in _SIGNALS.items():
            stack.enter_context(signal.connected_to(
                _recorder(log, name), sender=blinker.ANY if sender is None else sender))
        yield Signals(log)


def _recorder(log: list[Signal], name: SignalName) -> Callable[..., None]:
    def record(sender: Any, /, **payload: Any) -> None:
        log.append(Signal.heard(name, sender, payload))

    return record


def _check_signal_name(name: object) -> None:
    if name not in _SIGNALS:
        raise ValueError(f"no litestate signal {name!r}; the signals are {list(_SIGNALS)}")


# -- transition_committed in a caller's outer transaction ---------------------------------

_Queued = tuple[int, type, dict[str, Any]]  # core's entry: (SAVEPOINT, sender, payload)


@contextlib.contextmanager
def captured_on_commit(connection: sa.Connection, *, execute: bool = False
                       ) -> Generator[Signals, None, None]:
    """What the commit of ``connection``'s outer transaction would send as
    ``transition_committed``, for the transitions committed (by their sessions) inside
    the block; filled when the block ends. ``execute=True`` also sends them now, once,
    to the connected receivers (unless the block raised). See the module docstring."""
    if not isinstance(connection, sa.Connection):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"captured_on_commit() takes the sa.Connection the outer transaction "
                        f"is on, not {connection!r}")
    log: list[Signal] = []
    # Held, so that their ids stay unique while the block runs.
    earlier = list(_DEFERRED.get(connection, ()))

    def keep_queueing(sender: Any, /, **payload: Any) -> None:
        """litestate queues transition_committed only while it has a receiver."""

    with transition_committed.connected_to(keep_queueing):
        try:
            yield Signals(log)
        except BaseException:
            log.extend(_as_signals(_queued_since(connection, earlier)))
            raise
        if execute:
            _send_queued_since(connection, earlier, log)
        else:
            log.extend(_as_signals(_queued_since(connection, earlier)))


def _send_queued_since(connection: sa.Connection, earlier: list[_Queued],
                       log: list[Signal]) -> None:
    """Take what was queued since ``earlier`` off the queue and send it as litestate does;
    then what the receivers queued meanwhile, until nothing more is queued."""
    while batch := _take_queued_since(connection, earlier):
        log.extend(_as_signals(batch))
        _send_committed([(sender, payload) for _, sender, payload in batch])


def _queued_since(connection: sa.Connection, earlier: list[_Queued]) -> list[_Queued]:
    known = {id(entry) for entry in earlier}
    return [entry for entry in _DEFERRED.get(connection, ()) if id(entry) not in known]


def _take_queued_since(connection: sa.Connection, earlier: list[_Queued]) -> list[_Queued]:
    """Take the entries queued since ``earlier`` off the connection's queue."""
    taken = _queued_since(connection, earlier)
    queue = _DEFERRED.get(connection)
    if taken and queue is not None:
        gone = {id(entry) for entry in taken}
        queue[:] = [entry for entry in queue if id(entry) not in gone]
    return taken


def _as_signals(entries: list[_Queued]) -> list[Signal]:
    return [Signal.heard("committed", sender, payload) for _, sender, payload in entries]


# -- declarations and states --------------------------------------------------------------


def assert_transitions(cls: type, expected: Mapping[str, tuple[Any, Any]], *,
                       column: str | None = None) -> None:
    """Assert that ``cls`` declares exactly ``expected``: ``{event: (frm, to)}``, ``frm`` a
    state, an iterable of states or ``"*"`` (on ``column`` only, if given)."""
    __tracebackhide__ = True  # pytest shows the caller's line
    declared = _declared_on(cls, column)
    wanted = {event: _expected_row(cls, event, row, _column_of(cls, event, declared, column))
              for event, row in expected.items()}
    lines = _differences(declared, wanted)
    if lines:
        on = "" if column is None else f" on {column}"
        raise AssertionError("\n".join([
            f"{cls.__name__}'s transitions{on} are not the expected ones:", *lines,
            "declared:", _table_text(declared)]))


_Row = tuple[frozenset[Any] | None, Any]  # (frm, None for "*"; to), as the column holds them


def _declared_on(cls: type, column: str | None) -> dict[str, Transition]:
    every = transitions(cls)
    declared = {t.event: t for t in every if column is None or t.column == column}
    if column is not None and not declared:
        raise ValueError(f"{cls.__name__} has no transitions on {column!r}; its state columns "
                         f"are {_columns_of(every)}")
    return declared


def _columns_of(every: Iterable[Transition]) -> list[str]:
    return list(dict.fromkeys(t.column for t in every))


def _column_of(cls: type, event: str, declared: Mapping[str, Transition],
               column: str | None) -> str | None:
    """The column an expected row is converted for: its transition's, else the one asked
    for, else the class's state column; ``None``: compare as written."""
    if event in declared:
        return declared[event].column
    return column or _class_column(cls)


def _expected_row(cls: type, event: str, row: object, column: str | None) -> _Row:
    pair: tuple[Any, ...] = cast(Any, row) if isinstance(row, tuple) else ()
    if len(pair) != 2:
        raise TypeError(f"assert_transitions: {event!r} maps to {row!r}; write (frm, to), "
                        "frm a state, a tuple of states or '*'")
    frm, to = pair
    form = _StateColumn.of(cls, column) if column is not None else None
    convert = form.convert if form is not None else _as_written
    if isinstance(frm, str) and frm == "*":
        return None, convert(to)
    # Refused as @transition(frm=...) refuses them (a "*" among states would also print
    # as "*" itself in the differences).
    states = _each_state(frm)
    if any(isinstance(state, str) and state == "*" for state in states):
        raise ValueError(f"assert_transitions: {event!r} starts from {frm!r}: '*' means any "
                         "state and is written alone, not among states")
    if not states:
        raise ValueError(f"assert_transitions: {event!r} starts from {frm!r}: name at least "
                         "one state, or '*'")
    return frozenset(convert(state) for state in states), convert(to)


def _each_state(frm: object) -> tuple[Any, ...]:
    if isinstance(frm, str | int | enum.Enum) or not isinstance(frm, Iterable):
        return (frm,)
    return tuple(cast(Any, frm))


def _as_written(state: Any) -> Any:
    return state


def _differences(declared: Mapping[str, Transition], wanted: Mapping[str, _Row]) -> list[str]:
    lines = [f"  missing  {event}: {_arrow(*row)}" for event, row in wanted.items()
             if event not in declared]
    lines += [f"  extra    {event}: {_arrow(t.frm, t.to)}" for event, t in declared.items()
              if event not in wanted]
    for event, t in declared.items():
        row = wanted.get(event)
        if row is not None and row != (t.frm, t.to):
            lines.append(f"  differs  {event}: expected {_arrow(*row)}, "
                         f"declared {_arrow(t.frm, t.to)}")
    return lines


def _arrow(frm: frozenset[Any] | None, to: Any) -> str:
    states = "'*'" if frm is None else " | ".join(sorted(map(_state_text, frm)))
    return f"{states} -> {_state_text(to)}"


def _table_text(declared: Mapping[str, Transition]) -> str:
    """The declared table, as an ``expected`` argument that would pass."""
    rows = [f"    {t.event!r}: ({_frm_text(t.frm)}, {_state_text(t.to)}),"
            for t in declared.values()]
    return "\n".join(["  {", *rows, "  }"])


def _frm_text(frm: frozenset[Any] | None) -> str:
    if frm is None:
        return "'*'"
    states = sorted(map(_state_text, frm))
    return states[0] if len(states) == 1 else f"({', '.join(states)})"


def _state_text(state: Any) -> str:
    if isinstance(state, enum.Enum):
        return f"{type(state).__name__}.{state.name}"
    return repr(state)


def force_state(obj: _T, state: object, column: str | None = None) -> _T:
    """Set ``obj``'s state without guards, signals or timestamps (for factories and
    fixtures); returns ``obj``. A mapped object gets an ordinary attribute set, written by
    the next flush."""
    cls = type(obj)
    name = column if column is not None else _class_column(cls)
    if name is None:
        raise ValueError(f"{cls.__name__} has several state columns "
                         f"{_columns_of(transitions(cls))}; pass column=")
    setattr(obj, name, _StateColumn.of(cls, name).accepted(state))
    return obj


def _class_column(cls: type) -> str | None:
    """The class's ``@state_column``, else the one column its transitions use."""
    declared: object = getattr(cls, "__litestate_column__", None)  # @state_column's record
    if isinstance(declared, str):
        return declared
    columns = _columns_of(transitions(cls))
    return columns[0] if len(columns) == 1 else None


@dataclass(frozen=True)
class _StateColumn:
    """One state column of a class: the form its states take and the states it takes."""

    owner: type
    name: str
    #: The states its transitions name, as the column holds them, in declaration order.
    declared: tuple[Any, ...]
    #: For a mapped column, its type; ``None`` for a plain class's attribute.
    type: Any
    #: The state a new object starts in, as the class spells it (a mapped column's scalar
    #: default, a dataclass field's default or a class attribute), or ``None``: what
    #: ``diagram()`` draws as the initial state.
    default: Any

    @classmethod
    def of(cls, owner: type, name: str) -> _StateColumn:
        every = transitions(owner)  # compiles the class: its states are in column form
        on_column = [t for t in every if t.column == name]
        if not on_column:
            raise ValueError(f"{owner.__name__}.{name} is not a state column; its state "
                             f"columns are {_columns_of(every)}")
        declared = [state for t in on_column for state in (*_sorted(t.frm), t.to)]
        column = _state_column(owner, name)
        return cls(owner, name, tuple(dict.fromkeys(declared)),
                   None if column is None else column.type, _default_state(owner, name))

    def convert(self, state: Any) -> Any:
        """``state`` as the column holds it; unchanged if it is none of its states."""
        if self.type is not None:  # a mapped column: as a diagram reads it
            return _as_held(state, self.type)
        for known in self.declared:  # a plain class's member, written by its name or value
            if isinstance(known, enum.Enum) and not isinstance(state, enum.Enum) and \
                    state in (known.name, known.value):
                return known
        return state

    def allowed(self) -> tuple[Any, ...]:
        """The states the column can hold: its ``Enum``'s, else those its transitions
        name (and its default)."""
        enum_class = self._enum_class()
        if enum_class is not None:
            return tuple(enum_class)
        if isinstance(self.type, sa.Enum):
            return tuple(self.type.enums)
        extra = () if self.default is None else (self.convert(self.default),)
        return tuple(dict.fromkeys((*self.declared, *extra)))

    def accepted(self, state: object) -> Any:
        """``state`` in the column's form, or ``ValueError`` naming the states it takes."""
        value = self.convert(state)
        allowed = self.allowed()
        if value is None or not any(value == a and type(value) is type(a) for a in allowed):
            names = [a.name if isinstance(a, enum.Enum) else a for a in allowed]
            raise ValueError(f"{self.owner.__name__}.{self.name} cannot hold {state!r}; its "
                             f"states are {names}")
        return value

    def _enum_class(self) -> type[enum.Enum] | None:
        return self.type.enum_class if isinstance(self.type, sa.Enum) else None


def _sorted(frm: frozenset[Any] | None) -> list[Any]:
    return [] if frm is None else sorted(frm, key=_state_text)


# -- the clock ----------------------------------------------------------------------------


class FrozenClock:
    """A clock that stands still until moved: calling it returns :attr:`now`."""

    __slots__ = ("_now",)

    def __init__(self, now: datetime) -> None:
        self._now = _datetime(now)

    @property
    def now(self) -> datetime:
        """The time every transition stamps now."""
        return self._now

    def __call__(self) -> datetime:
        return self._now

    def tick(self, delta: timedelta = timedelta(seconds=1)) -> datetime:
        """Move the clock by ``delta`` (a second by default); returns the new time."""
        if not isinstance(delta, timedelta):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"tick() takes a timedelta, not {delta!r}")
        self._now += delta
        return self._now

    def move_to(self, now: datetime) -> datetime:
        """Set the clock to ``now``; returns it."""
        self._now = _datetime(now)
        return self._now

    def __repr__(self) -> str:
        return f"<FrozenClock at {self._now.isoformat()}>"


def _datetime(now: object) -> datetime:
    if not isinstance(now, datetime):
        raise TypeError(f"a frozen clock shows a datetime, not {now!r}")
    return now


@contextlib.contextmanager
def frozen_clock(now: datetime) -> Generator[FrozenClock, None, None]:
    """Make transition timestamps ``now`` inside the block (``litestate.set_clock``); the
    previous clock comes back when the block ends, however it ends."""
    clock = FrozenClock(now)
    previous = set_clock(clock)
    try:
        yield clock
    finally:
        set_clock(previous)
