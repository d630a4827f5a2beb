"""An audit trail: one row per successful transition, written in its atomic section.

Declare a history model of your own (its table, its key, its extra columns) with the
:class:`TransitionLog` mixin and a ``ForeignKey`` to the model's table, then name it on
the state column::

    class TodoLog(TransitionLog, Base):
        __tablename__ = "todo_log"
        id: Mapped[int] = mapped_column(primary_key=True)
        todo_id: Mapped[int] = mapped_column(ForeignKey("todos.id"))
        actor_id: Mapped[int | None]

    @state_column("status", log=TodoLog, changed_at="status_changed_at")
    class Todo(Base):
        ...

Every successful transition on ``status`` then inserts one ``TodoLog`` row, after the
body, inside the transition's SAVEPOINT: it rolls back with the state write, and a
failed INSERT fails the transition. ``changed_at`` is stamped in the state's own UPDATE.

- ``with litestate.context(actor_id=user.id, reason="fraud"):`` gives values to every
  row written inside the block (a context variable: threads and asyncio tasks each see
  their own). A key that names a column of the log model fills it; the others go into
  ``data`` (JSON).
- ``@transition(..., log_args=("reason",))`` copies call arguments in the same way;
  ``log=OtherLog`` overrides the column's model, ``log=False`` writes no row.
- :func:`log_data` (``litestate.log_data(invoice=42)``), called by a body, adds values to
  its own transition's row, in the same way; they win over the context and ``log_args``.
- :func:`history` lists an object's rows, oldest first.

litestate's own columns (``event``, ``column``, ``from_state``, ``to_state``, ``at``,
``data`` and the foreign key) are never overwritten by those values: a key naming one of
them goes into ``data``. Rows are written for objects in a session only; a transition in
memory (a plain object, a transient one) writes none.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Generator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, NamedTuple, cast
from weakref import WeakKeyDictionary

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Mapped, Mapper, mapped_column, object_session

from litestate import _sqla, core

__all__ = ["TransitionLog", "context", "history", "log_data"]


#: ``at``'s type: MySQL's and MariaDB's DATETIME keeps whole seconds unless told otherwise,
#: and history's order needs the clock's microseconds.
_MICROSECONDS = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql",
                                                         "mariadb")


class TransitionLog:
    """Declarative mixin for a history model: the columns litestate fills.

    The model adds its primary key, a ``ForeignKey`` to the model's table, and any
    columns of its own (a column may be redeclared: ``from_state: Mapped[int]`` for an
    ``Integer`` state column). States are stored as the column's plain values: an enum
    member as its value (or its name when the value is not a string).
    """

    #: The transition's name.
    event: Mapped[str] = mapped_column(sa.String(64))
    #: The name of the state column.
    column: Mapped[str] = mapped_column(sa.String(64))
    #: The state read before the write (``Any``: a model may redeclare it as an Integer).
    from_state: Mapped[Any] = mapped_column(sa.String(64))
    #: The state written.
    to_state: Mapped[Any] = mapped_column(sa.String(64))
    #: When, in UTC, from litestate's clock (the same reading as ``timestamp`` and
    #: ``changed_at``). SQLite returns it naive.
    at: Mapped[datetime] = mapped_column(_MICROSECONDS)
    #: The context's, ``log_args``' and :func:`log_data`'s values that name no column.
    data: Mapped[dict[str, Any]] = mapped_column(sa.JSON, insert_default=dict)


_OWN = ("event", "column", "from_state", "to_state", "at", "data")
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_CONTEXT: ContextVar[Mapping[str, Any]] = ContextVar("litestate.context", default=_EMPTY)
# The row a running body attaches to, and the last one a body finished with (read by the
# INSERT step, which runs right after the body).
_ATTACHED: ContextVar[dict[str, Any] | None] = ContextVar("litestate.attached", default=None)
_FINISHED: ContextVar[dict[str, Any] | None] = ContextVar("litestate.finished", default=None)


@contextlib.contextmanager
def context(**values: Any) -> Generator[Mapping[str, Any]]:
    """Give ``values`` to every log row written inside the block; nested blocks add to
    (and override) the outer ones. Yields everything now in effect."""
    merged = MappingProxyType({**_CONTEXT.get(), **values})
    token = _CONTEXT.set(merged)
    try:
        yield merged
    finally:
        _CONTEXT.reset(token)


def log_data(**payload: Any) -> None:
    """From a transition's body: add ``payload`` to that transition's log row (a key
    naming a column of the log model fills it, the rest go into ``data``)."""
    frame = _ATTACHED.get()
    if frame is None:
        raise RuntimeError(
            "litestate.log_data() is called from the body of a transition that writes a log "
            "row (a @transition method on a column with log=, or with log= of its own)")
    frame.update(payload)


def history(obj: object) -> list[Any]:
    """The object's log rows, every state column's, oldest first (by ``at``, then by the
    log model's key). Queries the object's session."""
    machine = core._machine_of_instance(obj)  # pyright: ignore[reportPrivateUsage] - compiles
    targets = _TARGETS.get(machine.owner, {})
    session = object_session(obj)
    if session is None:
        raise sa_exc.InvalidRequestError(f"history({obj!r}): the object is in no session")
    if not _sqla.in_greenlet() and session.get_bind(type(obj)).dialect.is_async:
        raise sa_exc.MissingGreenlet(
            f"history({obj!r}): its session belongs to an AsyncSession, whose SQL must be "
            "awaited: use `await litestate.aio.history(obj)`; nothing was sent")
    state: Any = sa.inspect(obj)
    rows: list[Any] = []
    for target in targets.values():
        log: Any = target.model
        where = [col == (state.key[1][i] if i is not None else getattr(obj, key))
                 for col, i, key in target.refs]
        order = [target.table.c[target.at_key], *target.table.primary_key.columns]
        rows.extend(session.scalars(sa.select(log).where(*where).order_by(*order)))
    if len(targets) > 1:
        rows.sort(key=lambda row: _utc(row.at))
    return rows


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo is None else at.astimezone(UTC).replace(tzinfo=None)


# -- compilation: a plan extension -----------------------------------------------------


class _Target(NamedTuple):
    """A log model, compiled for one model class."""

    model: type
    table: sa.Table
    insert: Any  # the Core INSERT
    refs: tuple[tuple[Any, int | None, str], ...]  # (log column, identity index, attribute)
    fill: Mapping[str, str]  # attribute key -> column key, for the caller's values
    keys: Mapping[str, str]  # litestate's own attributes -> column keys
    at_key: str
    at_aware: bool
    plain: Mapping[str, Callable[[Any], Any]]  # from_state/to_state: a state -> the column's


# Per model class: its log models. Dies with the class.
_TARGETS: WeakKeyDictionary[type, dict[type, _Target]] = WeakKeyDictionary()


def _extend(cls: type, plan: core._Plan) -> None:  # pyright: ignore[reportPrivateUsage]
    spec = cast(core._Spec, plan.spec)  # pyright: ignore[reportPrivateUsage]
    who = f"{cls.__name__}.{plan.event}"
    log = _log_model(cls, plan)
    if log is None or log is False:
        if spec.log_args:
            raise core.DeclarationError(f"{who}: log_args={spec.log_args!r} without a log "
                                        "model (log= here or on the state column)")
        if plan.mapped:  # log_data() in its body attaches to no other transition's row
            plan.body_wrappers += (_detaching,)
        return
    assert isinstance(log, type)
    if not plan.mapped:
        raise core.DeclarationError(f"{who}: log={log.__name__} needs a mapped class, whose "
                                    "transitions run in a session")
    mapper = cast(Mapper[Any], plan.bind["mapper"])
    targets = _TARGETS.setdefault(cls, {})
    target = targets.get(log)
    if target is None:
        target = targets[log] = _compile_target(who, mapper, log)
    plan.after_write += (_row_step(who, plan, spec, target),)


def _compile_target(who: str, mapper: Mapper[Any], log: type) -> _Target:
    if not issubclass(log, TransitionLog):
        raise core.DeclarationError(f"{who}: log={log.__name__} is not a TransitionLog model")
    log_mapper = sa.inspect(log, raiseerr=False)
    table: Any = getattr(log_mapper, "local_table", None)
    if not isinstance(log_mapper, Mapper) or not isinstance(table, sa.Table):
        raise core.DeclarationError(f"{who}: log={log.__name__} is not a mapped class with a "
                                    "table")
    table = cast(Any, table)  # pyright reads the narrowed Table as Table[Unknown]
    # Mapper.columns is known before the log model's mapper is configured (we may be
    # inside the configuration of the model's own).
    keys = {key: col.key for key, col in log_mapper.columns.items()
            if getattr(col, "table", None) is table}
    missing = [name for name in _OWN if name not in keys]
    if missing:
        raise core.DeclarationError(f"{who}: log={log.__name__} has no column {missing}")
    own_tables = set(mapper.tables)
    found: list[Any] = []
    fk: Any
    for fk in table.foreign_key_constraints:
        try:
            referred = fk.referred_table
        except sa_exc.NoReferencedTableError as exc:
            raise core.DeclarationError(f"{who}: log={log.__name__}: {exc}") from exc
        if referred in own_tables:
            found.append(fk)
    found.sort(key=lambda fk: (fk.name or "", fk.column_keys))
    tables = " or ".join(sorted(t.name for t in own_tables))
    if len(found) != 1:
        named = ", ".join(f"{fk.name or 'unnamed'} ({', '.join(fk.column_keys)})"
                          for fk in found)
        raise core.DeclarationError(
            f"{who}: log={log.__name__} has {'no' if not found else len(found)} foreign "
            f"key{'s' if len(found) > 1 else ''} to {tables}" +
            (f": {named}; it needs exactly one" if found else "; add one"))
    refs: list[tuple[Any, int | None, str]] = []
    element: Any
    for element in found[0].elements:
        prop: Any = mapper.get_property_by_column(element.column)
        index = next((i for i, pk in enumerate(mapper.primary_key)
                      if mapper.get_property_by_column(pk) is prop), None)
        refs.append((element.parent, index, prop.key))
    reserved = {*_OWN, *(col.key for col, *_ in refs)}
    fill = {key: col_key for key, col_key in keys.items() if key not in reserved}
    plain = {name: _state_converter(table.c[keys[name]]) for name in ("from_state",
                                                                      "to_state")}
    at_col: Any = table.c[keys["at"]]
    return _Target(log, table, sa.insert(table), tuple(refs), MappingProxyType(fill),
                   MappingProxyType({name: keys[name] for name in _OWN}), keys["at"],
                   bool(getattr(at_col.type, "timezone", False)), MappingProxyType(plain))


def _state_converter(col: Any) -> Callable[[Any], Any]:
    """A state as the log column stores it: its plain value, as a str for a text column."""
    try:
        python_type = col.type.python_type
    except NotImplementedError:
        python_type = None
    if python_type is str:
        return lambda state: str(core._plain(state))  # pyright: ignore[reportPrivateUsage]
    return core._plain  # pyright: ignore[reportPrivateUsage]


def _row_step(who: str, plan: core._Plan, spec: core._Spec,  # pyright: ignore[reportPrivateUsage]
              target: _Target) -> Callable[[core._Firing], None]:  # pyright: ignore[reportPrivateUsage]
    """The INSERT of one row, run after the body inside the SAVEPOINT."""
    keys, fill, refs, insert = target.keys, target.fill, target.refs, target.insert
    fixed = {keys["event"]: plan.event, keys["column"]: plan.column,
             keys["to_state"]: target.plain["to_state"](plan.to)}
    from_plain = target.plain["from_state"]
    at_key, at_aware = keys["at"], target.at_aware
    data_key = keys["data"]
    signature: inspect.Signature | None = None
    if spec.log_args:
        assert spec.fn is not None
        signature = inspect.signature(spec.fn)
        unknown = [n for n in spec.log_args if n not in list(signature.parameters)[1:]]
        if unknown:
            raise core.DeclarationError(f"{who}: log_args {unknown} are not parameters of "
                                        f"{plan.event}()")
    log_args = spec.log_args
    plan.body_wrappers += (_attaching,)
    to_plain = target.plain["to_state"]
    to_key, from_key = keys["to_state"], keys["from_state"]
    # The states it starts from, as the log stores them: computed once.
    from_known = {} if plan.frm is None else {state: from_plain(state) for state in plan.frm}
    refs_by_key = tuple((col.key, index, attr) for col, index, attr in refs)

    def row_values(f: core._Firing, to_state: Any = _WRITTEN,  # pyright: ignore[reportPrivateUsage]
                   attached: Mapping[str, Any] | None = None,
                   extra: Mapping[str, Any] | None = None, callers: bool = True
                   ) -> dict[str, Any]:
        """The row's values: of the transition written, or of the error state entered
        instead (``to_state``), with the body's attachments, the context's and log_args'
        values (unless ``callers`` is false) and litestate's ``extra``."""
        current = f.current
        plain = from_known.get(current, _WRITTEN)
        at = f.at if f.at is not None else core._clock()  # pyright: ignore[reportPrivateUsage]
        values = {**fixed, from_key: from_plain(current) if plain is _WRITTEN else plain,
                  at_key: _as_log_time(at, at_aware)}
        if to_state is not _WRITTEN:
            values[to_key] = to_plain(to_state)
        state_key = f.state.key[1]
        for key, index, attr in refs_by_key:
            values[key] = state_key[index] if index is not None else getattr(f.obj, attr)
        if not callers:
            values[data_key] = dict(extra) if extra else {}
            return values
        given = _CONTEXT.get()
        if not given and signature is None and not attached and not extra:
            values[data_key] = {}
            return values
        if signature is not None:
            bound = signature.bind(f.obj, *f.args, **f.kwargs)
            bound.apply_defaults()
            given = {**given, **{n: bound.arguments[n] for n in log_args}}
        if attached:
            given = {**given, **attached}
        _fill(values, given, fill, data_key)
        if extra:
            data = cast("dict[str, Any]", values[data_key])
            data.update(extra)
        return values

    def write_row(f: core._Firing) -> None:  # pyright: ignore[reportPrivateUsage]
        assert f.conn is not None
        attached = take_attached() if f.plan.fn is not None else None
        f.memo = attached  # an error state entered later keeps them too
        f.conn.execute(insert, row_values(f, attached=attached))

    plan.extras[LOG_ROW] = LogRow(insert, row_values)
    return write_row


def take_attached() -> dict[str, Any] | None:
    """What the body that just finished attached with :func:`log_data` (once)."""
    attached = _FINISHED.get()
    if attached is not None:
        _FINISHED.set(None)
    return attached


#: ``plan.extras`` key: the plan's log row, for the modules that write one of their own.
LOG_ROW = "litestate.history"
_WRITTEN: Any = object()


class LogRow(NamedTuple):
    """A plan's log INSERT and its values: ``values(firing, to_state=..., attached=...,
    extra=...)``."""

    insert: Any
    values: Callable[..., dict[str, Any]]


def _detaching(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The body of a transition without a log row: no row for :func:`log_data` to fill
    (not even the row of a logged transition whose body fired this one)."""
    def body(obj: object, *args: Any, **kwargs: Any) -> Any:
        token = _ATTACHED.set(None)
        try:
            return fn(obj, *args, **kwargs)
        finally:
            _ATTACHED.reset(token)

    return body


def _attaching(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The body, with a row of its own for :func:`log_data` to fill."""
    def body(obj: object, *args: Any, **kwargs: Any) -> Any:
        frame: dict[str, Any] = {}
        token = _ATTACHED.set(frame)
        try:
            return fn(obj, *args, **kwargs)
        finally:
            _ATTACHED.reset(token)
            _FINISHED.set(frame)  # for the INSERT step, which runs right after the body

    return body


def _log_model(cls: type, plan: core._Plan) -> type | bool | None:  # pyright: ignore[reportPrivateUsage]
    """The transition's log model: its own ``log=``, else its state column's."""
    log = cast(core._Spec, plan.spec).log  # pyright: ignore[reportPrivateUsage]
    if log is None:
        options = core.column_options(cls).get(plan.column)
        log = options.log if options is not None else None
    return log


class BatchRows(NamedTuple):
    """How :mod:`litestate.bulk` writes the log rows of many rows moved by one transition:
    the compiled target of a single transition's row, and the values every row of one
    batch shares."""

    target: _Target
    #: (log column, the model's column it copies): the foreign key.
    refs: tuple[tuple[Any, Any], ...]
    #: A state read -> the ``from_state`` column's value.
    from_state: Callable[[Any], Any]
    #: The values every row of a batch shares, for one clock reading: litestate's own,
    #: the context's and ``log_args``' (the method's defaults: a batch has no call).
    shared: Callable[[datetime], dict[str, Any]]


def batch_rows(cls: type, plan: core._Plan) -> BatchRows | None:  # pyright: ignore[reportPrivateUsage]
    """The log rows of ``plan``'s transition, for a batch; ``None`` if it writes none."""
    log = _log_model(cls, plan)
    target = _TARGETS.get(cls, {}).get(log) if isinstance(log, type) else None
    if target is None:
        return None
    mapper = cast(Mapper[Any], plan.bind["mapper"])
    refs = tuple((col, mapper.column_attrs[attr].columns[0]) for col, _, attr in target.refs)
    keys, fill = target.keys, target.fill
    fixed = {keys["event"]: plan.event, keys["column"]: plan.column,
             keys["to_state"]: target.plain["to_state"](plan.to)}
    spec = cast(core._Spec, plan.spec)  # pyright: ignore[reportPrivateUsage]
    defaults: dict[str, Any] = {}
    if spec.log_args:
        assert spec.fn is not None
        parameters = inspect.signature(spec.fn).parameters
        defaults = {name: parameters[name].default for name in spec.log_args}

    def shared(at: datetime) -> dict[str, Any]:
        values = dict(fixed)
        values[keys["at"]] = _as_log_time(at, target.at_aware)
        _fill(values, {**_CONTEXT.get(), **defaults}, fill, keys["data"])
        return values

    return BatchRows(target, refs, target.plain["from_state"], shared)


def _fill(values: dict[str, Any], given: Mapping[str, Any], fill: Mapping[str, str],
          data_key: str) -> None:
    """The caller's values: a key naming a column fills it, the others go into ``data``."""
    data: dict[str, Any] = {}
    for key, value in given.items():
        column_key = fill.get(key)
        if column_key is None:
            data[key] = value
        else:
            values[column_key] = value
    values[data_key] = data


def _as_log_time(at: datetime, aware: bool) -> datetime:
    """A clock reading as the ``at`` column takes it: in UTC (litestate's naive readings
    are UTC). An aware reading in another zone is converted too, as core converts the
    timestamps: SQLite's and MySQL's columns keep no zone, and would store its wall time."""
    if at.tzinfo is None:
        return at.replace(tzinfo=UTC) if aware else at
    at = at.astimezone(UTC)
    return at if aware else at.replace(tzinfo=None)


core.plan_extensions.append(_extend)
