"""Error states: a raising body leaves its row in a state that says so, durably.

``@transition(frm="fetching", to="fetched", on_error="fetch_failed")``: when the body
(or the log row, or a ``transition_succeeded`` receiver) raises, the transition's
SAVEPOINT rolls back as always, then the row moves to ``fetch_failed`` with the same
conditional UPDATE (``WHERE state = 'fetching'``), which also stamps ``changed_at`` and
sets the column's error columns::

    @state_column("status", log=JobLog, changed_at="status_changed_at",
                  attempts="attempts", last_error="last_error",
                  last_error_at="last_error_at")

``attempts`` is incremented, ``last_error`` holds the error's type and message (cut to
the column's length, or to :data:`MESSAGE_LIMIT`), ``last_error_at`` the time. A log row
records the entry, its ``data["error"]`` the type and message. ``transition_failed``
carries ``error_state=``, and the original exception propagates unchanged. Refusals
(invalid, guard, conflict) raise before any write and never enter the error state.

The error record survives the caller's rollback. It is written in the caller's
transaction, so a caller who catches the exception and commits keeps it with the rest of
its work. If that transaction rolls back instead (the exception left ``with
session.begin():``), litestate writes it again, once the rollback has ended and released
the transaction's locks, in a transaction of its own on a fresh connection of the same
engine: the same conditional UPDATE and log row, committed. Nothing the caller did is in
it, and it waits at most :data:`LOCK_TIMEOUT` seconds for a row another transaction
holds. When it cannot be written (the row changed, the database refused), a note on the
original exception says why. A session given a connection in a transaction of the
caller's (``Session(bind=connection)``) leaves the record to that transaction: litestate
never writes past a transaction it was not given.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Mapper, Session, SessionTransaction
from sqlalchemy.orm.attributes import set_committed_value

from litestate import _sqla, core
from litestate.history import LOG_ROW, LogRow, take_attached

__all__ = ["LOCK_TIMEOUT", "MESSAGE_LIMIT"]

#: The longest error message kept (a ``String(n)`` column keeps at most ``n``).
MESSAGE_LIMIT = 1000
#: Seconds the error record, written again after a rollback, waits for a locked row.
LOCK_TIMEOUT = 5.0


class _ErrorColumns(NamedTuple):
    """The attributes of the error columns a state column declares (``None``: none)."""

    attempts: str | None
    last_error: str | None
    last_error_at: str | None
    error_limit: int  # the longest ``last_error`` the column takes
    naive: bool  # last_error_at is a naive DateTime


class _Record(NamedTuple):
    """One error state to write: now, in the caller's transaction, and again after a
    rollback that undid it."""

    who: str
    error_state: Any
    engine: sa.Engine
    conn: sa.Connection  # the session's: in a transaction after the session's end = not ours
    stmt: Any
    params: dict[str, Any]
    log: LogRow | None
    log_values: dict[str, Any] | None
    error: BaseException


# -- compilation -----------------------------------------------------------------------


def _extend(cls: type, plan: core._Plan) -> None:  # pyright: ignore[reportPrivateUsage]
    if plan.on_error is None:
        return
    who = f"{cls.__name__}.{plan.event}"
    options = core.column_options(cls).get(plan.column)
    if not plan.mapped:
        columns = _ErrorColumns(*_names(options), MESSAGE_LIMIT, False)
        plan.on_failure_in_memory += (_in_memory_step(plan, columns),)
        return
    mapper = cast(Mapper[Any], plan.bind["mapper"])
    stmt, columns = _compile_update(who, plan, mapper, options)
    plan.on_failure += (_session_step(who, plan, stmt, columns),)


def _names(options: Any) -> tuple[str | None, str | None, str | None]:
    if options is None:
        return None, None, None
    return options.attempts, options.last_error, options.last_error_at


def _compile_update(who: str, plan: core._Plan, mapper: Mapper[Any],  # pyright: ignore[reportPrivateUsage]
                    options: Any) -> tuple[Any, _ErrorColumns]:
    """The error state's conditional UPDATE: the transition's, writing the error state
    and the error columns instead."""
    state_col: Any = mapper.column_attrs[plan.column].columns[0]
    table: Any = state_col.table
    key_cols = core._identity_columns(who, mapper, table)  # pyright: ignore[reportPrivateUsage]
    values: dict[Any, Any] = {state_col: sa.bindparam("ls_to", type_=state_col.type)}
    where = [c == sa.bindparam(f"ls_pk{i}", type_=c.type) for i, c in enumerate(key_cols)]
    where.append(state_col == sa.bindparam("ls_from", type_=state_col.type))
    if plan.changed_at is not None:
        changed_col = core._timestamp_column(who, mapper, table, plan.changed_at)  # pyright: ignore[reportPrivateUsage]
        values[changed_col] = sa.bindparam("ls_changed", type_=changed_col.type)
    attempts, last_error, last_error_at = _names(options)
    limit, naive = MESSAGE_LIMIT, False
    if attempts is not None:
        col = _column_of(who, mapper, table, "attempts", attempts, sa.Integer)
        values[col] = sa.func.coalesce(col, 0) + 1
    if last_error is not None:
        col = _column_of(who, mapper, table, "last_error", last_error, sa.String)
        limit = min(limit, col.type.length or limit)
        values[col] = sa.bindparam("ls_error", type_=col.type)
    if last_error_at is not None:
        col = core._timestamp_column(who, mapper, table, last_error_at)  # pyright: ignore[reportPrivateUsage]
        naive = not col.type.timezone
        values[col] = sa.bindparam("ls_error_at", type_=col.type)
    version = mapper.version_id_col
    if plan.version is not None and version is not None:
        where.append(version == sa.bindparam("ls_ver", type_=version.type))
        if plan.version.generate is not None:
            values[version] = sa.bindparam("ls_ver_new", type_=version.type)
    columns = _ErrorColumns(attempts, last_error, last_error_at, limit, naive)
    return sa.update(table).where(*where).values(values), columns


def _column_of(who: str, mapper: Mapper[Any], table: Any, option: str, name: str,
               kind: type[Any]) -> Any:
    prop = mapper.column_attrs.get(name)
    col: Any = prop.columns[0] if prop is not None else None
    if col is None or getattr(col, "table", None) is not table:
        raise core.DeclarationError(f"{who}: {option} column {name!r} is not a column of "
                                    f"{table.name}")
    if not isinstance(col.type, kind):
        raise core.DeclarationError(f"{who}: {option} column {name!r} is {col.type}, not "
                                    f"{'an' if kind is sa.Integer else 'a'} {kind.__name__}")
    return col


# -- the error record ------------------------------------------------------------------


def describe(error: BaseException, limit: int = MESSAGE_LIMIT) -> tuple[str, str]:
    """``(type, message)`` of an error as the record keeps them, the message cut to
    ``limit`` characters (an ellipsis marks a cut)."""
    kind = type(error)
    name = kind.__qualname__ if kind.__module__ == builtins.__name__ else \
        f"{kind.__module__}.{kind.__qualname__}"
    return name, _cut(str(error), limit)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:max(limit - 1, 0)] + "…"


def _last_error(error: BaseException, limit: int) -> str:
    name, message = describe(error, limit)
    return _cut(f"{name}: {message}" if message else name, limit)


def _in_memory_step(plan: core._Plan, columns: _ErrorColumns  # pyright: ignore[reportPrivateUsage]
                    ) -> Callable[[Any, Any, BaseException], Any]:
    """An object outside a session: its attributes show the error state."""
    def enter(obj: Any, current: Any, error: BaseException) -> Any:
        if not isinstance(error, Exception):
            return None
        now = core._clock()  # pyright: ignore[reportPrivateUsage]
        setattr(obj, plan.column, plan.on_error)
        if plan.changed_at is not None:
            setattr(obj, plan.changed_at, core._as_column(now, plan.changed_naive))  # pyright: ignore[reportPrivateUsage]
        if columns.attempts is not None:
            setattr(obj, columns.attempts, (getattr(obj, columns.attempts, None) or 0) + 1)
        if columns.last_error is not None:
            setattr(obj, columns.last_error, _last_error(error, columns.error_limit))
        if columns.last_error_at is not None:
            setattr(obj, columns.last_error_at, now)
        return plan.on_error

    return enter


def _session_step(who: str, plan: core._Plan, stmt: Any,  # pyright: ignore[reportPrivateUsage]
                  columns: _ErrorColumns) -> Callable[[core._Firing, BaseException], None]:  # pyright: ignore[reportPrivateUsage]
    def enter(f: core._Firing, error: BaseException) -> None:  # pyright: ignore[reportPrivateUsage]
        if not f.won or not isinstance(error, Exception):
            return  # refused, or the write itself failed: no body ran; or a cancellation
        record = _record(who, f, stmt, columns, error)
        trans = _caller_transaction(f)
        written = trans is not None and _write_in_transaction(f, record, columns)
        _keep(f.session, record, trans if written else None)
        f.error_state = plan.on_error

    return enter


def _record(who: str, f: core._Firing, stmt: Any, columns: _ErrorColumns,  # pyright: ignore[reportPrivateUsage]
            error: BaseException) -> _Record:
    plan = f.plan
    now = core._clock()  # pyright: ignore[reportPrivateUsage]
    f.at = now
    params: dict[str, Any] = {name: f.state.key[1][i] for name, i in plan.key}
    params["ls_from"], params["ls_to"] = f.current, plan.on_error
    if plan.changed_at is not None:
        params["ls_changed"] = core._as_column(now, plan.changed_naive)  # pyright: ignore[reportPrivateUsage]
    if columns.last_error is not None:
        params["ls_error"] = _last_error(error, columns.error_limit)
    if columns.last_error_at is not None:
        params["ls_error_at"] = core._as_column(now, columns.naive)  # pyright: ignore[reportPrivateUsage]
    if f.version is not None:
        read = f.version[0]
        params["ls_ver"] = read
        generate = cast(Any, plan.version).generate
        if generate is not None:
            params["ls_ver_new"] = generate(read)
    log: LogRow | None = plan.extras.get(LOG_ROW)
    values = None
    if log is not None:
        name, message = describe(error)
        attached = take_attached() if plan.fn is not None else None
        values = log.values(f, to_state=plan.on_error, attached=attached,
                            extra={"error": {"type": name, "message": message}})
    conn = cast(sa.Connection, f.conn)
    return _Record(who, plan.on_error, conn.engine, conn, stmt, params, log, values, error)


def _caller_transaction(f: core._Firing) -> SessionTransaction | None:  # pyright: ignore[reportPrivateUsage]
    """The transaction the transition's SAVEPOINT was in, if it is still usable."""
    savepoint = f.savepoint
    trans = savepoint.parent if savepoint is not None else None
    return trans if trans is not None and trans.is_active else None


def _write_in_transaction(f: core._Firing, record: _Record,  # pyright: ignore[reportPrivateUsage]
                          columns: _ErrorColumns) -> bool:
    """The error state in the caller's transaction, in a SAVEPOINT of its own: a refusal
    leaves the caller's work as it was."""
    session, plan = f.session, f.plan
    try:
        with session.begin_nested():
            conn = session.connection(bind_arguments=plan.bind)
            if conn.execute(record.stmt, record.params).rowcount != 1:
                record.error.add_note(f"litestate: {record.who}() did not enter its error "
                                      f"state {record.error_state!r}: the row's state is no "
                                      f"longer {f.current!r}")
                return False
            if record.log is not None:
                conn.execute(record.log.insert, record.log_values)
    except Exception as exc:
        record.error.add_note(f"litestate: {record.who}() could not enter its error state "
                              f"{record.error_state!r} in the caller's transaction: {exc!r}")
        return False
    _show(f, record, columns)
    return True


def _show(f: core._Firing, record: _Record, columns: _ErrorColumns) -> None:  # pyright: ignore[reportPrivateUsage]
    """The object shows what its row now holds (a rollback expires it again)."""
    plan, obj, params = f.plan, f.obj, record.params
    set_committed_value(obj, plan.column, plan.on_error)
    if plan.changed_at is not None:
        set_committed_value(obj, plan.changed_at, params["ls_changed"])
    if columns.last_error is not None:
        set_committed_value(obj, columns.last_error, params["ls_error"])
    if columns.last_error_at is not None:
        set_committed_value(obj, columns.last_error_at, params["ls_error_at"])
    expired = [columns.attempts] if columns.attempts is not None else []
    if f.version is not None:
        if "ls_ver_new" in params:
            set_committed_value(obj, cast(Any, plan.version).key, params["ls_ver_new"])
        else:
            expired.append(cast(Any, plan.version).key)
    if expired:
        f.session.expire(obj, expired)
    _sqla.register_altered(f.session, f.state)


# -- surviving the caller's rollback ---------------------------------------------------

_KEPT, _AGAIN = "litestate.error_states", "litestate.error_states_again"
_Kept = dict[SessionTransaction, list[_Record]]


def _keep(session: Session, record: _Record, trans: SessionTransaction | None) -> None:
    """Follow the record's write: ``trans`` holds it (``None``: not written), and its
    rollback, or the root's, makes litestate write it again."""
    _listen()
    if trans is None:
        if session.get_transaction() is None:  # the body rolled the caller's back
            _write_again([record])
            return
        session.info.setdefault(_AGAIN, []).append(record)
        return
    kept: _Kept = session.info.setdefault(_KEPT, {})
    kept.setdefault(trans, []).append(record)


_listening = False
_LISTENING = threading.Lock()


def _listen() -> None:
    """The session events, listened to from the first error state on: a session without
    one pays nothing. Once, whichever threads get here first."""
    global _listening
    if _listening:
        return
    with _LISTENING:
        if not _listening:
            sa_event.listen(Session, "after_commit", _after_commit)
            sa_event.listen(Session, "after_transaction_end", _after_transaction_end)
            _listening = True


def _after_commit(session: Session) -> None:
    # Also fires when a SAVEPOINT is released: its records now live in the parent.
    kept: _Kept | None = session.info.get(_KEPT)
    trans = session.get_nested_transaction() or session.get_transaction()
    if not kept or trans is None:
        return
    records = kept.pop(trans, None)
    if records and trans.parent is not None:
        kept.setdefault(trans.parent, []).extend(records)
    # The root's commit: its records are in the database; nothing to do again.


def _after_transaction_end(session: Session, trans: SessionTransaction) -> None:
    kept: _Kept | None = session.info.get(_KEPT)
    records = kept.pop(trans, None) if kept else None
    if records:
        if trans.parent is not None and not trans.nested:  # a subtransaction: the parent's
            cast(_Kept, kept).setdefault(trans.parent, []).extend(records)
        else:  # rolled back: the write is gone
            session.info.setdefault(_AGAIN, []).extend(records)
    if trans.parent is None:
        again: list[_Record] | None = session.info.pop(_AGAIN, None)
        if again:
            _write_again(again)


def _write_again(records: list[_Record]) -> None:
    for record in records:
        if record.conn.in_transaction():
            record.error.add_note(
                f"litestate: {record.who}()'s error state {record.error_state!r} was rolled "
                "back with the transaction of the connection the session was given, which "
                "litestate does not write past")
            continue
        try:
            _commit_record(record)
        except Exception as exc:
            record.error.add_note(f"litestate: {record.who}() could not record its error "
                                  f"state {record.error_state!r} after the rollback: {exc!r}")


def _commit_record(record: _Record) -> None:
    with record.engine.connect() as conn:
        with conn.begin():
            _limit_lock_wait(conn)
            if conn.execute(record.stmt, record.params).rowcount != 1:
                record.error.add_note(
                    f"litestate: {record.who}() did not record its error state "
                    f"{record.error_state!r} after the rollback: the row's state is no "
                    f"longer {record.params['ls_from']!r}")
                conn.rollback()
                return
            if record.log is not None:
                conn.execute(record.log.insert, record.log_values)
        _reset_lock_wait(conn)


def _limit_lock_wait(conn: sa.Connection) -> None:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(LOCK_TIMEOUT * 1000)}")
    elif dialect in ("mysql", "mariadb"):
        conn.exec_driver_sql(f"SET SESSION innodb_lock_wait_timeout = "
                             f"{max(int(LOCK_TIMEOUT), 1)}")


def _reset_lock_wait(conn: sa.Connection) -> None:
    if conn.dialect.name in ("mysql", "mariadb"):
        conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = DEFAULT")


core.plan_extensions.append(_extend)
