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


class _Write(NamedTuple):
    """The error state's conditional UPDATE, and what a rewrite reads the row with."""

    stmt: Any
    key: tuple[tuple[str, Any], ...]  # (bind name, key column)
    state: Any  # the state column
    version: Any  # the version column, or None
    generate: Callable[[Any], Any] | None  # the mapper's version generator, if in Python


class _Record(NamedTuple):
    """One error state to write: now, in the caller's transaction, and again after a
    rollback that undid it."""

    who: str
    error_state: Any
    engine: sa.Engine
    conn: sa.Connection  # the session's: in a transaction after the session's end = not ours
    write: _Write
    params: dict[str, Any]
    log: LogRow | None
    log_values: tuple[dict[str, Any], ...]  # the row, then the row without the caller's values
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
    write, columns = _compile_update(who, cls, plan, mapper, options)
    plan.on_failure += (_session_step(who, plan, write, columns),)


def _names(options: Any) -> tuple[str | None, str | None, str | None]:
    if options is None:
        return None, None, None
    return options.attempts, options.last_error, options.last_error_at


def _compile_update(who: str, cls: type, plan: core._Plan, mapper: Mapper[Any],  # pyright: ignore[reportPrivateUsage]
                    options: Any) -> tuple[_Write, _ErrorColumns]:
    """The error state's conditional UPDATE: the transition's, writing the error state
    and the error columns instead."""
    state_col: Any = mapper.column_attrs[plan.column].columns[0]
    table: Any = state_col.table
    values: dict[Any, Any] = {state_col: sa.bindparam("ls_to", type_=state_col.type)}
    where = list(plan.where)  # the transition's own: key, state read (exactly), version
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
    version = mapper.version_id_col if plan.version is not None else None
    generate = None
    if plan.version is not None and version is not None:
        generate = plan.version.generate
        if generate is not None:
            values[version] = sa.bindparam("ls_ver_new", type_=version.type)
    if cast(core._Spec, plan.spec).leased:  # pyright: ignore[reportPrivateUsage]
        from litestate import bulk  # only the claim that holds the lease writes, and ends it

        held, ended = bulk.lease_held(cls, mapper, table)
        where.extend(held)
        values.update(ended)
    columns = _ErrorColumns(attempts, last_error, last_error_at, limit, naive)
    key = tuple((f"ls_pk{i}", c) for i, c in enumerate(plan.key_columns))
    write = _Write(sa.update(table).where(*where).values(values), key, state_col, version,
                   generate)
    return write, columns


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
    ``limit`` characters (an ellipsis marks a cut), a NUL written ``\\x00`` (PostgreSQL's
    text refuses it). An error whose ``str()`` raises is described as unprintable."""
    kind = type(error)
    name = kind.__qualname__ if kind.__module__ == builtins.__name__ else \
        f"{kind.__module__}.{kind.__qualname__}"
    try:
        message = str(error)
    except Exception as exc:
        message = f"<unprintable {kind.__qualname__}: str() raised {type(exc).__qualname__}>"
    return name, _cut(message.replace("\x00", "\\x00"), limit)


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


def _session_step(who: str, plan: core._Plan, write: _Write,  # pyright: ignore[reportPrivateUsage]
                  columns: _ErrorColumns) -> Callable[[core._Firing, BaseException], None]:  # pyright: ignore[reportPrivateUsage]
    def enter(f: core._Firing, error: BaseException) -> None:  # pyright: ignore[reportPrivateUsage]
        if not f.won or not isinstance(error, Exception):
            return  # refused, or the write itself failed: no body ran; or a cancellation
        try:
            f.error_state = _enter(who, f, write, columns, error)
        except Exception as exc:  # the original error propagates, whatever happens here
            error.add_note(f"litestate: {who}() could not enter its error state "
                           f"{plan.on_error!r}: {exc!r}")

    return enter


_WRITTEN, _REFUSED, _FAILED = "written", "refused", "failed"


def _enter(who: str, f: core._Firing, write: _Write, columns: _ErrorColumns,  # pyright: ignore[reportPrivateUsage]
           error: BaseException) -> Any:
    """Write the error state in the caller's transaction, or leave it for after its end;
    returns the error state, or ``None`` when the row cannot enter it."""
    record = _record(who, f, write, columns, error)
    trans = _caller_transaction(f)
    if trans is None:  # the database or the body ended the caller's transaction
        _keep(f.session, record, None)
        return record.error_state
    outcome = _write_in_transaction(f, record, columns)
    if outcome == _WRITTEN:
        _keep(f.session, record, trans)
        return record.error_state
    if outcome == _FAILED:  # perhaps for a while (a lock): tried again after the end
        _keep(f.session, record, None)
    return None


def _record(who: str, f: core._Firing, write: _Write, columns: _ErrorColumns,  # pyright: ignore[reportPrivateUsage]
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
    if cast(core._Spec, plan.spec).leased:  # pyright: ignore[reportPrivateUsage]
        from litestate import bulk

        bulk.lease_params(f, params)
    if f.version is not None:
        read = f.version[0]
        params["ls_ver"] = read
        generate = cast(Any, plan.version).generate
        if generate is not None:
            params["ls_ver_new"] = generate(read)
    log: LogRow | None = plan.extras.get(LOG_ROW)
    values: tuple[dict[str, Any], ...] = ()
    if log is not None:
        name, message = describe(error)
        extra = {"error": {"type": name, "message": message}}
        attached = f.memo if f.memo is not None else (
            take_attached() if plan.fn is not None else None)
        values = (log.values(f, to_state=plan.on_error, attached=attached, extra=extra),
                  log.values(f, to_state=plan.on_error, extra=extra, callers=False))
    conn = cast(sa.Connection, f.conn)
    return _Record(who, plan.on_error, conn.engine, conn, write, params, log, values, error)


def _caller_transaction(f: core._Firing) -> SessionTransaction | None:  # pyright: ignore[reportPrivateUsage]
    """The transaction the transition's SAVEPOINT was in, if it is still usable."""
    savepoint = f.savepoint
    trans = savepoint.parent if savepoint is not None else None
    return trans if trans is not None and trans.is_active else None


def _write_in_transaction(f: core._Firing, record: _Record,  # pyright: ignore[reportPrivateUsage]
                          columns: _ErrorColumns) -> str:
    """The error state in the caller's transaction, in a SAVEPOINT of its own: a refusal
    leaves the caller's work as it was. A log row the database refuses is tried again
    without the body's and the context's values (a value JSON cannot hold, say)."""
    session, plan = f.session, f.plan
    tries: tuple[dict[str, Any] | None, ...] = record.log_values or (None,)
    for i, values in enumerate(tries):
        try:
            with session.begin_nested():
                conn = session.connection(bind_arguments=plan.bind)
                if conn.execute(record.write.stmt, record.params).rowcount != 1:
                    record.error.add_note(f"litestate: {record.who}() did not enter its error "
                                          f"state {record.error_state!r}: "
                                          f"{_why_not_matched(conn, record)}")
                    return _REFUSED
                if values is not None:
                    conn.execute(cast(LogRow, record.log).insert, values)
        except Exception as exc:
            last = i == len(tries) - 1
            record.error.add_note(
                f"litestate: {record.who}() could not enter its error state "
                f"{record.error_state!r} in the caller's transaction: {exc!r}" if last else
                f"litestate: {record.who}()'s error row was written without the body's and "
                f"the context's values, which the database refused: {exc!r}")
            if last:
                return _FAILED
            continue
        break
    _show(f, record, columns)
    return _WRITTEN


def _show(f: core._Firing, record: _Record, columns: _ErrorColumns) -> None:  # pyright: ignore[reportPrivateUsage]
    """The object shows what its row now holds (a rollback expires it again); an object
    the body took out of the session is left as it is."""
    plan, obj, params = f.plan, f.obj, record.params
    if f.state.session_id != f.session.hash_key:
        return
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
            sa_event.listen(Session, "before_commit", _before_commit)
            sa_event.listen(Session, "after_commit", _after_commit)
            sa_event.listen(Session, "after_transaction_end", _after_transaction_end)
            _listening = True


def _before_commit(session: Session) -> None:
    """The outermost COMMIT of a transaction PostgreSQL has already aborted (a statement
    of the caller's failed, and was ignored) rolls back, and the drivers raise nothing:
    its records are written again after it."""
    kept: _Kept | None = session.info.get(_KEPT)
    root = session.get_transaction()
    if not kept or root is None or session.get_nested_transaction() is not None:
        return
    records = kept.get(root)
    if records and any(core._aborted(record.conn) for record in records):  # pyright: ignore[reportPrivateUsage]
        session.info.setdefault(_AGAIN, []).extend(kept.pop(root))


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
    if records:  # rolled back (or a subtransaction whose failure dooms its parent)
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
    """The error state in a transaction of its own, committed; a log row the database
    refuses is tried again without the body's and the context's values."""
    tries: tuple[dict[str, Any] | None, ...] = record.log_values or (None,)
    with record.engine.connect() as conn:
        try:
            for i, values in enumerate(tries):
                try:
                    if _rewrite(conn, record, values):
                        return
                    break
                except Exception as exc:
                    if i == len(tries) - 1:
                        raise
                    record.error.add_note(
                        f"litestate: {record.who}()'s error row was written without the "
                        f"body's and the context's values, which the database refused: "
                        f"{exc!r}")
        finally:
            _reset_lock_wait(conn)


def _rewrite(conn: sa.Connection, record: _Record, values: dict[str, Any] | None) -> bool:
    """One transaction: the conditional UPDATE (from the version committed now, which the
    caller's rolled-back writes may have bumped), then the log row."""
    with conn.begin() as trans:
        _limit_lock_wait(conn)
        params = record.params
        if record.write.version is not None:
            params = _with_committed_version(conn, record)
        if conn.execute(record.write.stmt, params).rowcount != 1:
            record.error.add_note(
                f"litestate: {record.who}() did not record its error state "
                f"{record.error_state!r} after the rollback: {_why_not_matched(conn, record)}")
            trans.rollback()
            return False
        if values is not None:
            conn.execute(cast(LogRow, record.log).insert, values)
    return True


def _with_committed_version(conn: sa.Connection, record: _Record) -> dict[str, Any]:
    write = record.write
    read = conn.execute(sa.select(write.version).where(*_the_row(record)).with_for_update()
                        ).scalar()
    params = dict(record.params, ls_ver=read)
    if write.generate is not None:
        params["ls_ver_new"] = write.generate(read)
    return params


def _the_row(record: _Record) -> list[Any]:
    return [col == record.params[name] for name, col in record.write.key]


def _why_not_matched(conn: sa.Connection, record: _Record) -> str:
    """Why the conditional UPDATE matched no row, from the row as it is now."""
    found = conn.execute(sa.select(record.write.state).where(*_the_row(record))).first()
    if found is None:
        return "its row does not exist (it was never committed, or was deleted)"
    if record.write.version is not None:
        return (f"the row's state or version changed (its state is now {found[0]!r}, it "
                f"was {record.params['ls_from']!r})")
    return f"the row's state is no longer {record.params['ls_from']!r} (it is {found[0]!r})"


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
