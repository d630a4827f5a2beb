"""Many rows at once: set-based transitions, and queue workers that claim rows with leases.

A transition of a mapped class, named as ``Model.event``, moves every row in one of its
``frm`` states (and matching ``where``) in one statement::

    moved = litestate.transition_many(session, Invoice.send, where=Invoice.total > 0,
                                      limit=500)          # the primary keys moved

and a worker claims rows from a table of jobs, skipping those other workers hold::

    class Job(litestate.Lease, Base):        # lease_owner, lease_expires_at
        ...
        @transition(frm="queued", to="running")
        def start(self) -> None: ...

        @transition(frm="running", to="done", leased=True)
        def finish(self) -> None: ...

        @transition(frm="running", to="queued")
        def requeue(self) -> None: ...

    jobs = litestate.claim(session, Job.start, order_by=[Job.id], limit=10,
                           lease=timedelta(minutes=5))
    session.commit()                           # the claim is visible to every worker
    ...                                        # work; litestate.renew(job, lease) on the way
    job.finish()                               # ConflictError if the lease was lost
    litestate.reclaim(session, Job.requeue)    # elsewhere: expired leases back to queued

**What a batch does.** The transition's timestamp and its column's ``changed_at`` are
stamped with one reading of litestate's clock; log rows (:mod:`litestate.history`) are
written with :func:`litestate.context`'s values and the ``log_args``' defaults; objects of
the moved rows already in the session show what the rows now hold; on a failure the batch
rolls back as one (a SAVEPOINT when it sends more than one statement, else, as a single
transition, the session refuses to commit until ``rollback()``). litestate never commits.
:data:`~litestate.transition_succeeded` is sent per row, in the batch, only while it has
a receiver for the class (``record`` is the object if the session holds it, else
``None``; ``record_id`` is the key; ``duration`` is ``None``), and
:data:`~litestate.transition_committed` per row after the commit. A transition whose body
or guards need Python per row is refused (``TypeError``): a guard has a SQL form when it
names a Boolean column or a ``hybrid_property`` (its class-level expression goes into the
WHERE, and the single transition keeps evaluating its Python side).

**The statements.** On PostgreSQL, one: ``UPDATE ... WHERE <frm> AND <where> [AND pk IN
(SELECT pk ... LIMIT n [FOR UPDATE SKIP LOCKED])] RETURNING``, its log rows written by an
``INSERT ... SELECT`` from it in the same statement (a ``WITH`` query). On SQLite (3.35+,
``UPDATE ... RETURNING``) the UPDATE, then one ``executemany`` INSERT of the log rows.
Where the state moved from varies (several ``frm`` states) and a log row or a signal needs
it, PostgreSQL locks the chosen rows in the same statement to read it; other databases
take the path of those without ``UPDATE ... RETURNING`` (MariaDB): ``SELECT ... FOR UPDATE
[SKIP LOCKED]``, then ``UPDATE ... WHERE pk IN (<the keys>)``, then the load of the objects.

**Leases.** ``claim(..., lease=timedelta)`` writes a random owner token (per claim) and an
expiry computed by the database's clock (``statement_timestamp()`` on PostgreSQL, not the
transaction's start; ``'now'`` on SQLite; ``UTC_TIMESTAMP(6)`` on MariaDB and MySQL,
which, unlike ``NOW()``, no session's ``time_zone`` shifts), into the :class:`Lease`
columns (on MariaDB and MySQL a ``DATETIME(6)``: a plain ``DATETIME`` keeps whole seconds,
and would cut up to a second off each lease). SQLite and MariaDB keep it as a UTC time
without a zone; PostgreSQL as a ``timestamptz``. The token is kept with the claimed object (on its
``InstanceState``), so a reload of the row, which may show another worker's token, never
makes a lost claim look like one's own. A ``@transition(..., leased=True)`` writes only
while the row's owner is that token and the lease has not expired, and ends the lease
(both columns ``NULL``); otherwise it is a :class:`~litestate.ConflictError`.
"""

from __future__ import annotations

import inspect
import secrets
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Concatenate, NamedTuple, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.mysql import DATETIME
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import Mapped, Mapper, Session, mapped_column
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.sql.functions import FunctionElement

from litestate import _sqla, core
from litestate.history import BatchRows, batch_rows

__all__ = ["Lease", "claim", "db_now", "reclaim", "renew", "transition_many"]

_M = TypeVar("_M")
_TOKEN = "litestate.lease"  # InstanceState.info: the token of the claim that loaded it


class Lease:
    """Declarative mixin: the two columns a lease is kept in, for ``claim(lease=...)``,
    :func:`renew`, :func:`reclaim` and ``@transition(..., leased=True)``."""

    #: The token of the claim that holds the row (32 hex digits), or ``None``.
    lease_owner: Mapped[str | None] = mapped_column(sa.String(32))
    #: When the lease ends, by the database's clock; ``None``: not leased. To the
    #: microsecond on every backend (MariaDB's and MySQL's ``DATETIME`` keeps seconds).
    lease_expires_at: Mapped[datetime | None] = mapped_column(
        sa.DateTime(timezone=True).with_variant(DATETIME(fsp=6), "mysql", "mariadb"))


def transition_many(session: Session, event: Callable[..., object], *, where: Any = None,
                    limit: int | None = None) -> list[Any]:
    """Move every row in one of ``event``'s ``frm`` states that matches ``where`` (a SQL
    expression on the model's table; ``None``: all of them), at most ``limit`` of them, to
    its ``to`` state, in one atomic step. Returns the primary keys moved (a scalar each,
    a tuple for a composite key), in no particular order."""
    batch = _batch_of(event, "transition_many")
    conditions = [*batch.frm, *batch.guards, *_where(batch, "transition_many", where)]
    call = _Call(conditions, batch.values(), _limit("transition_many", limit, None), (),
                 skip_locked=False)
    return _run(session, batch, call).keys


def claim(session: Session, event: Callable[Concatenate[_M, ...], object], *, where: Any = None,
          order_by: Any = (), limit: int = 1, lease: timedelta | None = None) -> list[_M]:
    """Claim up to ``limit`` rows in one of ``event``'s ``frm`` states (matching
    ``where``), chosen in ``order_by`` order and skipping rows other transactions hold,
    by moving them to its ``to`` state in one statement. Returns the objects, loaded in
    the session (in no particular order). With ``lease``, each row records this claim's
    owner token and ``now + lease`` by the database's clock (the model is a
    :class:`Lease`)."""
    batch = _batch_of(event, "claim")
    values = batch.values()
    seconds = _lease_seconds("claim", batch, lease)
    token = None
    if seconds is not None:
        owner, expires = cast(tuple[Any, Any], batch.lease)
        token = secrets.token_hex(16)
        values[owner] = token
        values[expires] = _db_later(sa.bindparam("ls_lease_for", seconds, type_=sa.Float))
    conditions = [*batch.frm, *batch.guards, *_where(batch, "claim", where)]
    order = tuple(_order_by(batch, order_by))
    call = _Call(conditions, values, _limit("claim", limit, 1), order, skip_locked=True,
                 load=True)
    objects = _run(session, batch, call).objects
    for obj in objects:
        info = sa.inspect(obj).info
        if token is None:
            info.pop(_TOKEN, None)
        else:
            info[_TOKEN] = token
    return cast(list[_M], objects)


def renew(obj: object, lease: timedelta) -> bool:
    """Extend the lease of a claimed object to ``now + lease`` (the database's clock),
    only if its claim still holds it (the row's owner is this claim's token and the lease
    has not expired). Returns whether it did. Sent in the object's session: commit to
    make it count for the other workers."""
    state: Any = sa.inspect(obj)
    session = state.session
    if session is None:
        raise sa_exc.InvalidRequestError(f"renew({obj!r}): the object is in no session")
    batch = _lease_batch(type(obj))
    seconds = _lease_seconds("renew", batch, lease)
    token = state.info.get(_TOKEN)
    if token is None or state.key is None:
        return False
    owner, expires = cast(tuple[Any, Any], batch.lease)
    stmt = sa.update(batch.table).where(
        *[col == value for col, value in zip(batch.keys, state.key[1], strict=True)],
        owner == token, expires > _db_now()).values(
            {expires: _db_later(sa.bindparam("ls_lease_for", seconds, type_=sa.Float))})
    conn = session.connection(bind_arguments={"mapper": batch.mapper})
    try:
        if conn.dialect.update_returning:
            until = conn.execute(stmt.returning(expires)).scalar()
            renewed = until is not None
            if renewed:
                set_committed_value(obj, batch.lease_keys[1], until)
        else:
            renewed = conn.execute(stmt).rowcount == 1
            if renewed:
                session.expire(obj, [batch.lease_keys[1]])
    except Exception:
        _sqla.refuse_commit_until_rollback(session)
        raise
    if renewed:
        _sqla.register_altered(session, state)
    return renewed


def reclaim(session: Session, event: Callable[..., object], *, where: Any = None,
            limit: int | None = None) -> list[Any]:
    """Move every row in one of ``event``'s ``frm`` states whose lease has expired (by the
    database's clock) to its ``to`` state, ending the lease, in one statement; rows a
    transaction holds are skipped. Returns their primary keys."""
    batch = _batch_of(event, "reclaim")
    if batch.lease is None:
        raise TypeError(f"reclaim({batch.who}): {batch.cls.__name__} has no lease columns; "
                        f"declare it as class {batch.cls.__name__}(litestate.Lease, ...)")
    owner, expires = batch.lease
    conditions = [*batch.frm, expires <= _db_now(), *batch.guards,
                  *_where(batch, "reclaim", where)]
    values = batch.values()
    values[owner] = values[expires] = None
    call = _Call(conditions, values, _limit("reclaim", limit, None), (), skip_locked=True,
                 shown={key: None for key in batch.lease_keys})
    return _run(session, batch, call).keys


# -- the database's clock ------------------------------------------------------------------


def db_now() -> sa.ColumnElement[datetime]:
    """The database's clock, as leases are judged by it, for a query of your own:
    ``select(Job.id).where(Job.lease_expires_at < litestate.bulk.db_now())``."""
    return _db_now()


class _db_now(FunctionElement[datetime]):
    """The database's clock, read once per statement: every worker's lease is judged by
    it, whatever the workers' own clocks say."""

    type = sa.DateTime(timezone=True)
    inherit_cache = True


class _db_later(FunctionElement[datetime]):
    """``_db_now()`` plus a bound number of seconds."""

    type = sa.DateTime(timezone=True)
    inherit_cache = True


# SQLite keeps a DateTime as text in SQLAlchemy's format (microseconds, six digits), which
# compares as text; its 'now' has milliseconds: three more zeros make the same format.
_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now'"


@compiles(_db_now, "postgresql")
def _now_postgresql(element: Any, compiler: Any, **kw: Any) -> str:
    return "statement_timestamp()"  # now() is the transaction's start


@compiles(_db_later, "postgresql")
def _later_postgresql(element: Any, compiler: Any, **kw: Any) -> str:
    return f"(statement_timestamp() + {compiler.process(element.clauses, **kw)} * " \
           "interval '1 second')"


@compiles(_db_now, "sqlite")
def _now_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    return _SQLITE_NOW + ")"


@compiles(_db_later, "sqlite")
def _later_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    return f"{_SQLITE_NOW}, printf('%+.6f seconds', {compiler.process(element.clauses, **kw)}))"


@compiles(_db_now, "mysql")
@compiles(_db_now, "mariadb")
def _now_mysql(element: Any, compiler: Any, **kw: Any) -> str:
    return "UTC_TIMESTAMP(6)"  # NOW() is in the session's time_zone, which workers may set


@compiles(_db_later, "mysql")
@compiles(_db_later, "mariadb")
def _later_mysql(element: Any, compiler: Any, **kw: Any) -> str:
    seconds = compiler.process(element.clauses, **kw)
    return f"(UTC_TIMESTAMP(6) + INTERVAL ROUND({seconds} * 1000000) MICROSECOND)"


@compiles(_db_now)
@compiles(_db_later)
def _no_clock(element: Any, compiler: Any, **kw: Any) -> str:
    raise sa_exc.CompileError(f"litestate's leases read the database's clock, which they "
                              f"know on PostgreSQL, SQLite and MariaDB, not on "
                              f"{compiler.dialect.name}")


# -- one transition, compiled for batches ---------------------------------------------------


class _Batch(NamedTuple):
    """A transition of a mapped class, compiled once for :func:`transition_many`,
    :func:`claim` and :func:`reclaim` (kept in the class's ``__dict__``)."""

    cls: type
    who: str  # "Job.start"
    plan: core._Plan  # pyright: ignore[reportPrivateUsage]
    mapper: Mapper[Any]
    table: sa.Table
    state: Any  # the state column
    keys: tuple[Any, ...]  # the identity's columns, in the mapper's order
    frm: tuple[Any, ...]  # the WHERE clause of frm ((): any state)
    single_from: Any  # the one state frm allows, else _VARIES
    stamps: tuple[tuple[Any, str, bool], ...]  # (column, attribute, naive): timestamps
    guards: tuple[Any, ...]  # the guards' SQL forms
    refused: str | None  # why the transition cannot run on many rows
    lease: tuple[Any, Any] | None  # (owner, expires) columns of a Lease model
    lease_keys: tuple[str, str]
    log: BatchRows | None
    log_sql: _LogSelect | None
    from_sql: Callable[[Any], Any]  # a stored state (SQL) -> the log's from_state (SQL)
    returned: tuple[Any, ...]  # the columns RETURNING gives a batch: keys, the log's refs

    def values(self) -> dict[Any, Any]:
        """The SET clause of one call: the state and, with one clock reading, the
        timestamps (as bound values: the call's reading)."""
        at = core._clock()  # pyright: ignore[reportPrivateUsage]
        values: dict[Any, Any] = {self.state: self.plan.to, _AT: at}
        for col, _, naive in self.stamps:
            values[col] = core._as_column(at, naive)  # pyright: ignore[reportPrivateUsage]
        return values


_VARIES: Any = object()
_AT: Any = object()  # the clock reading of a call, carried in its values
_BATCHES = "__litestate_batches__"  # the class's compiled _Batch per event
_LEASE_KEYS = ("lease_owner", "lease_expires_at")


def _batch_of(event: object, api: str) -> _Batch:
    spec = getattr(event, "__litestate__", None)
    owner = getattr(event, "__litestate_owner__", None)
    declared = isinstance(spec, core._Spec)  # pyright: ignore[reportPrivateUsage]
    if not declared or not isinstance(owner, type) or getattr(event, "__self__", None) \
            is not None:
        raise TypeError(f"{api}() takes a transition of a mapped class, as in "
                        f"{api}(session, Job.start), not {event!r}")
    event_name: str = cast(Any, spec).event
    batch = _compiled(owner, event_name)
    if batch.refused is not None or (cast(Any, spec).leased and api != "renew"):
        reason = batch.refused or (
            "is leased=True: only the worker holding one row's lease may fire it, on the "
            "object its claim returned")
        raise TypeError(f"{api}({batch.who}): {batch.who} {reason}")
    return batch


def _compiled(cls: type, event: str) -> _Batch:
    machine = core._machine_of(cls)  # pyright: ignore[reportPrivateUsage]
    plan = machine.plans[event]
    cache: dict[str, _Batch] | None = cls.__dict__.get(_BATCHES)
    batch = None if cache is None else cache.get(event)
    if batch is None or batch.plan is not plan:  # compiled anew: a class decorated late
        batch = _compile(cls, plan)
        if cache is None:
            cache = {}
            type.__setattr__(cls, _BATCHES, cache)
        cache[event] = batch
    return batch


def _lease_batch(cls: type) -> _Batch:
    """The lease of a claimed object's class: any of its transitions' compiled batch."""
    machine = core._machine_of(cls)  # pyright: ignore[reportPrivateUsage]
    batch = _compiled(cls, next(iter(machine.plans))) if machine.plans else None
    if batch is None or batch.lease is None:
        raise TypeError(f"renew(): {cls.__name__} has no lease columns; declare it as "
                        f"class {cls.__name__}(litestate.Lease, ...)")
    return batch


def _compile(cls: type, plan: core._Plan) -> _Batch:  # pyright: ignore[reportPrivateUsage]
    who = f"{cls.__name__}.{plan.event}"
    if not plan.mapped:
        raise TypeError(f"{who} is a transition of a class that is not mapped: there are no "
                        "rows to move")
    mapper = cast(Mapper[Any], plan.bind["mapper"])
    table = cast(sa.Table, plan.stmt.table)
    state = mapper.column_attrs[plan.column].columns[0]
    keys = tuple(core._identity_columns(who, mapper, table))  # pyright: ignore[reportPrivateUsage]
    frm: tuple[Any, ...] = () if plan.frm is None else (state.in_(sorted(
        plan.frm, key=repr)),)
    single = next(iter(plan.frm)) if plan.frm is not None and len(plan.frm) == 1 \
        else _VARIES
    stamps = tuple((mapper.column_attrs[name].columns[0], name, naive)
                   for name, naive in ((plan.timestamp, plan.naive),
                                       (plan.changed_at, plan.changed_naive))
                   if name is not None)
    guards, refused = _sql_guards(cls, mapper, table, plan)
    lease = _lease_columns(cls, mapper, table)
    log = batch_rows(cls, plan)
    returned = list(keys)
    if log is not None:
        returned += [col for _, col in log.refs if not any(col is k for k in returned)]
    return _Batch(cls, who, plan, mapper, table, state, keys, frm, single, stamps, guards,
                  refused, lease, _LEASE_KEYS, log,
                  None if log is None else _log_select(log),
                  _from_sql(state, log), tuple(returned))


def _sql_guards(cls: type, mapper: Mapper[Any], table: sa.Table,
                plan: core._Plan) -> tuple[tuple[Any, ...], str | None]:  # pyright: ignore[reportPrivateUsage]
    """The guards' SQL forms, or why the transition cannot run on many rows."""
    spec = cast(core._Spec, plan.spec)  # pyright: ignore[reportPrivateUsage]
    if plan.fn is not None:
        return (), "has a body, which runs in Python on each object; a batch moves rows"
    try:
        plan.check(None)
    except TypeError:
        return (), "takes arguments, which a batch has none of"
    if plan.version is not None and plan.version.generate is not None:
        return (), ("has a version_id_col bumped in Python on each object (the mapper's "
                    "version_id_generator)")
    forms: list[Any] = []
    for guard in spec.guards:
        form = _sql_form(cls, mapper, guard) if isinstance(guard, str) else None
        if form is None:
            label = guard if isinstance(guard, str) else getattr(guard, "__qualname__", guard)
            return (), (f"has the guard {label}, which runs in Python on each object; a "
                        "guard naming a Boolean column or a hybrid_property has a SQL form, "
                        "which a batch applies in its WHERE")
        other = _other_tables(form, table)
        if other:
            return (), f"has the guard {guard}, whose SQL form reads {other}"
        forms.append(form)
    return tuple(forms), None


def _sql_form(cls: type, mapper: Mapper[Any], name: str) -> Any:
    """A guard's SQL form: a Boolean column, or a hybrid_property's boolean expression."""
    raw = inspect.getattr_static(cls, name, None)
    if isinstance(raw, hybrid_property) or name in mapper.column_attrs:
        form: Any = _clause(getattr(cls, name))
        if isinstance(form, sa.ColumnElement) and isinstance(cast(Any, form).type, sa.Boolean):
            return cast(Any, form)
    return None


def _lease_columns(cls: type, mapper: Mapper[Any],
                   table: sa.Table) -> tuple[Any, Any] | None:
    if not issubclass(cls, Lease):
        return None
    owner, expires = (mapper.column_attrs[key].columns[0] for key in _LEASE_KEYS)
    if owner.table is not table or expires.table is not table:
        raise core.DeclarationError(f"{cls.__name__}: the Lease columns are not on "
                                    f"{table.name}, the table of its state")
    return owner, expires


def _from_sql(state: Any, log: BatchRows | None) -> Callable[[Any], Any]:
    """A state as the column stores it -> as the log's ``from_state`` stores it (what
    ``from_state`` converts in Python): an Enum's stored name -> the member's plain value,
    anything else cast to the log column's type."""
    if log is None:
        return lambda expr: expr
    target: Any = log.target.table.c[log.target.keys["from_state"]]
    persisted = core._persisted_members(state.type)  # pyright: ignore[reportPrivateUsage]
    if persisted:
        whens = {stored: log.from_state(member) for stored, member in persisted.items()}
        return lambda expr: sa.case(whens, value=sa.cast(expr, sa.String),
                                    else_=sa.cast(expr, sa.String))
    python_type = core._python_type  # pyright: ignore[reportPrivateUsage]
    if python_type(target.type) is str and python_type(state.type) is not str:
        return lambda expr: sa.cast(expr, target.type)
    return lambda expr: expr


class _LogSelect(NamedTuple):
    """The INSERT ... SELECT of a batch's log rows from the rows it moved, with the
    defaults of the log model's other columns. A call that leaves a column with a Python
    default computed per row (a uuid4 key) unfilled cannot use it: a single
    INSERT ... SELECT would compute it once."""

    per_row: frozenset[str]  # the columns with such a default
    build: Callable[[Any, dict[str, Any], Any], Any]  # (moved, shared, from_state)

    def fits(self, shared: dict[str, Any]) -> bool:
        return self.per_row.issubset(shared)


def _log_select(log: BatchRows) -> _LogSelect:
    table = log.target.table
    own = {*log.target.keys.values(), *(col.key for col, _ in log.refs)}
    defaults: dict[str, Any] = {}
    for col in table.columns:
        default: Any = col.default
        if col.key in own or default is None:
            continue
        if default.is_callable:
            defaults[col.key] = _PER_ROW
        elif default.is_sequence:
            defaults[col.key] = default.next_value()
        elif default.is_clause_element:
            defaults[col.key] = default.arg
        else:
            defaults[col.key] = sa.literal(default.arg, type_=col.type)
    from_key = log.target.keys["from_state"]

    def build(moved: Any, shared: dict[str, Any], from_state: Any) -> Any:
        names: list[str] = []
        exprs: list[Any] = []
        for col, source in log.refs:
            names.append(col.key)
            exprs.append(moved.c[source.key])
        names.append(from_key)
        exprs.append(from_state)
        for key, value in shared.items():
            names.append(key)
            exprs.append(sa.bindparam(f"ls_log_{key}", value, type_=table.c[key].type))
        for key, expr in defaults.items():
            if key not in shared:
                names.append(key)
                exprs.append(expr)
        return sa.insert(table).from_select(names, sa.select(*exprs).select_from(moved),
                                            include_defaults=False)

    per_row = frozenset(key for key, value in defaults.items() if value is _PER_ROW)
    return _LogSelect(per_row, build)


_PER_ROW: Any = object()


# -- the arguments of a call ---------------------------------------------------------------


def _clause(value: Any) -> Any:
    clause_element = getattr(value, "__clause_element__", None)
    return clause_element() if callable(clause_element) else value


def _where(batch: _Batch, api: str, where: Any) -> list[Any]:
    if where is None:
        return []
    clause: Any = _clause(where)
    if not isinstance(clause, sa.ColumnElement) or not isinstance(
            cast(Any, clause).type, sa.Boolean | sa.types.NullType):
        raise TypeError(f"{api}(where={where!r}): where is a SQL condition on "
                        f"{batch.table.name}, as in {batch.cls.__name__}.id > 10")
    other = _other_tables(cast(Any, clause), batch.table)
    if other:
        raise ValueError(
            f"{api}(where=...): the condition reads {other}, a table other than "
            f"{batch.table.name}, the one {batch.who} updates (the UPDATE would join every "
            f"row of it); put it in a subquery, as in {batch.cls.__name__}.id.in_(select(...))")
    return [clause]


def _order_by(batch: _Batch, order_by: Any) -> Iterable[Any]:
    items: Sequence[Any] = cast(Sequence[Any], order_by) if isinstance(
        order_by, list | tuple) else (order_by,)
    for item in items:
        clause = _clause(item)
        if not isinstance(clause, sa.ColumnElement):
            raise TypeError(f"claim(order_by={order_by!r}): order_by is a list of columns or "
                            f"SQL expressions of {batch.table.name}, as in "
                            f"[{batch.cls.__name__}.id]")
        other = _other_tables(cast(Any, clause), batch.table)
        if other:
            raise ValueError(f"claim(order_by=...): {item} reads {other}, a table other than "
                             f"{batch.table.name}")
        yield clause


def _other_tables(clause: Any, table: sa.Table) -> str:
    """The tables (other than ``table``) a condition reads outside its own subqueries,
    which an UPDATE would join to every row."""
    found: set[str] = set()
    stack: list[Any] = [clause]
    while stack:
        element: Any = stack.pop()
        if isinstance(element, sa.ScalarSelect | sa.sql.expression.SelectBase):
            continue  # a subquery has FROMs of its own
        other = getattr(element, "table", None)
        if isinstance(element, sa.ColumnClause) and other is not None and other is not table:
            found.add(str(getattr(other, "name", other)))
        stack.extend(cast(Any, element).get_children())
    return ", ".join(sorted(found))


def _limit(api: str, limit: object, default: int | None) -> int | None:
    if limit is None and default is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"{api}(limit={limit!r}): limit is a positive int"
                        + (" or None" if default is None else ""))
    if limit < 1:
        raise ValueError(f"{api}(limit={limit!r}): limit is a positive int"
                         + (" or None (no limit)" if default is None else ""))
    return limit


def _lease_seconds(api: str, batch: _Batch, lease: object) -> float | None:
    if lease is None and api == "claim":
        return None
    if not isinstance(lease, timedelta):
        raise TypeError(f"{api}(lease={lease!r}): a lease is a timedelta")
    if lease <= timedelta(0):
        raise ValueError(f"{api}(lease={lease!r}): a lease is longer than zero")
    if batch.lease is None:
        raise TypeError(f"{api}(lease=...): {batch.cls.__name__} has no lease columns; "
                        f"declare it as class {batch.cls.__name__}(litestate.Lease, ...)")
    return lease.total_seconds()


# -- running a call ------------------------------------------------------------------------


class _Call(NamedTuple):
    conditions: list[Any]  # the WHERE on the table, frm included
    values: dict[Any, Any]  # the SET, and the clock reading under _AT
    limit: int | None
    order_by: tuple[Any, ...]
    skip_locked: bool
    load: bool = False  # claim: load the objects
    shown: dict[str, Any] | None = None  # attributes the objects in the session show, too


class _Moved(NamedTuple):
    keys: list[Any]  # each row's identity: a scalar, or a tuple for a composite key
    froms: list[Any] | None  # each row's state before, if it varies and was read
    sources: list[Any] | None  # each row's values of _Batch.returned (Row objects)
    objects: list[Any]  # loaded (claim), else those the session held, or None, per row


# Testing the path of databases without UPDATE ... RETURNING (MariaDB) on the others:
# "select-then-update" forces it; "returning" forces the path without WITH queries.
_force_path: str | None = None


def _run(session: Session, batch: _Batch, call: _Call) -> _Moved:
    session.flush()  # the UPDATE must see the session's pending rows and edits
    conn = session.connection(bind_arguments={"mapper": batch.mapper})
    dialect = conn.dialect
    cls = batch.cls
    heard = bool(core.transition_succeeded.receivers) and \
        core.transition_succeeded.has_receivers_for(cls)
    told = bool(core.transition_committed.receivers)
    need_from = batch.single_from is _VARIES and (batch.log is not None or heard or told)
    ctes = dialect.name == "postgresql"
    path = _force_path or ("cte" if ctes else "returning")
    if path == "returning" and (not dialect.update_returning or need_from):
        path = "select-then-update"
    if path == "cte" and not dialect.update_returning:
        path = "select-then-update"
    at = call.values.pop(_AT)
    shared = None if batch.log is None else batch.log.shared(at)
    log_in_sql = path == "cte" and shared is not None and \
        cast(_LogSelect, batch.log_sql).fits(shared)
    nested = heard or (batch.log is not None and not log_in_sql)
    savepoint = None
    if nested:
        core._begin_pysqlite(conn)  # pyright: ignore[reportPrivateUsage]
        savepoint = session.begin_nested()
        opened: list[Any] = session.info.setdefault(core._OPEN, [])  # pyright: ignore[reportPrivateUsage]
        opened.append(savepoint)
        conn = session.connection(bind_arguments={"mapper": batch.mapper})
    try:
        if path == "select-then-update":
            moved = _select_then_update(session, conn, batch, call)
        else:
            moved = _update_returning(session, conn, batch, call, need_from,
                                      shared if log_in_sql else None)
        if shared is not None and not log_in_sql and moved.keys:
            _insert_log(conn, batch, moved, shared)
        if not call.load:
            moved = moved._replace(objects=_show(session, batch, call, moved.keys, at))
        else:  # loaded with populate_existing; a rollback of the section expires them
            for obj in moved.objects:
                _sqla.register_altered(session, sa.inspect(obj))
        if heard:
            _send_succeeded(batch, moved)
        if savepoint is not None:
            session.info[core._OPEN].remove(savepoint)  # pyright: ignore[reportPrivateUsage]
            savepoint.commit()
    except BaseException:
        if savepoint is None:
            _sqla.refuse_commit_until_rollback(session)
        else:
            opened = session.info.get(core._OPEN, [])  # pyright: ignore[reportPrivateUsage]
            if savepoint in opened:
                opened.remove(savepoint)
            if savepoint.is_active:
                savepoint.rollback()
        raise
    if told and moved.keys:
        _queue_committed(session, conn, batch, moved)
    return moved


def _restrict(batch: _Batch, call: _Call, dialect: Any) -> list[Any]:
    """``pk IN (SELECT pk ... LIMIT n [FOR UPDATE SKIP LOCKED])``, when the call chooses
    (SQLite, which runs such a subquery once, has no row locks: only a limit needs it)."""
    locking = call.skip_locked and dialect.name != "sqlite"
    if call.limit is None and not locking:
        return []
    pick = sa.select(*batch.keys).where(*call.conditions).order_by(*call.order_by) \
        .limit(call.limit).correlate(None)
    if locking:
        pick = pick.with_for_update(skip_locked=True)
    if len(batch.keys) == 1:
        return [batch.keys[0].in_(pick.scalar_subquery())]
    return [sa.tuple_(*batch.keys).in_(pick)]


def _update_returning(session: Session, conn: sa.Connection, batch: _Batch, call: _Call,
                      need_from: bool, shared: dict[str, Any] | None) -> _Moved:
    """``UPDATE ... RETURNING``; with ``shared`` (PostgreSQL), its log rows by an
    ``INSERT ... SELECT`` from it, in the same statement."""
    table: Any = batch.table
    loads_rows = call.load and len(batch.mapper.tables) == 1
    returned: tuple[Any, ...] = tuple(batch.table.columns) if loads_rows else batch.returned
    from_state: Any = None
    update: Any
    if conn.dialect.name == "postgresql" and (
            need_from or call.limit is not None or call.skip_locked):
        # The rows chosen (with the state they had), in a WITH query of their own, which
        # PostgreSQL runs once: `pk IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)` may be
        # run again for each row of the UPDATE, each run skipping the rows the UPDATE has
        # already written, and move more than n rows.
        picked = [batch.state.label("ls_from")] if need_from else []
        pick = sa.select(*batch.keys, *picked).where(*call.conditions).order_by(
            *call.order_by).limit(call.limit)
        if need_from or call.skip_locked:
            pick = pick.with_for_update(skip_locked=call.skip_locked)
        chosen: Any = pick.cte("ls_chosen").prefix_with("MATERIALIZED")
        update = cast(Any, sa.update(table)).where(
            *[key == chosen.c[key.key] for key in batch.keys], *call.conditions).values(
                call.values).returning(*returned, *([chosen.c.ls_from] if need_from else []))
    else:
        update = cast(Any, sa.update(table)).where(*call.conditions, *_restrict(
            batch, call, conn.dialect)).values(call.values).returning(*returned)
    stmt: Any = update
    if shared is not None:
        log = cast(BatchRows, batch.log)
        moved: Any = update.cte("ls_moved")
        if need_from:
            from_state = batch.from_sql(moved.c.ls_from)
        else:
            from_state = sa.literal(log.from_state(batch.single_from),
                                    type_=log.target.table.c[log.target.keys["from_state"]].type)
        logged = cast(_LogSelect, batch.log_sql).build(moved, shared, from_state)
        stmt = sa.select(*moved.c).add_cte(logged.cte("ls_logged"))
    n = len(batch.keys)
    if loads_rows:
        entities: list[Any] = [batch.mapper]
        if need_from:
            entities.append(sa.literal_column("ls_from"))
        loaded: list[Any] = list(session.execute(sa.select(*entities).from_statement(
            stmt).execution_options(populate_existing=True)).all())
        objects = [row[0] for row in loaded]
        froms = [row[1] for row in loaded] if need_from else None
        return _Moved([_key(sa.inspect(obj).identity, n) for obj in objects], froms, None,
                      objects)
    result = conn.execute(stmt)
    sources_needed = batch.log is not None and shared is None  # an executemany INSERT's
    if n == 1 and not need_from and not sources_needed:
        keys: list[Any] = list(result.scalars().all())
        rows: list[Any] | None = None
    else:
        rows = list(result.all())
        keys = _keys(rows, n)
    froms = [row[-1] for row in rows] if need_from and rows is not None else None
    objects = _load(session, batch, keys) if call.load else []
    return _Moved(keys, froms, rows, objects)


def _select_then_update(session: Session, conn: sa.Connection, batch: _Batch,
                        call: _Call) -> _Moved:
    """Without ``UPDATE ... RETURNING``: lock the rows chosen, update them by their keys."""
    n = len(batch.keys)
    pick = sa.select(*batch.returned, batch.state).where(*call.conditions).order_by(
        *call.order_by).limit(call.limit).with_for_update(skip_locked=call.skip_locked)
    rows: list[Any] = list(conn.execute(pick).all())
    keys = _keys(rows, n)
    if rows:
        match = batch.keys[0].in_(keys) if n == 1 else sa.tuple_(*batch.keys).in_(keys)
        count = conn.execute(sa.update(batch.table).where(match, *call.conditions).values(
            call.values)).rowcount
        if count != len(rows):
            raise StaleDataError(f"{batch.who}: {len(rows)} rows were chosen and locked but "
                                 f"the UPDATE matched {count}")
    froms = [row[-1] for row in rows]
    objects = _load(session, batch, keys) if call.load else []
    return _Moved(keys, froms, rows, objects)


def _key(row: Any, n: int) -> Any:
    return row[0] if n == 1 else tuple(row[:n])


def _keys(rows: list[Any], n: int) -> list[Any]:
    return [row[0] for row in rows] if n == 1 else [tuple(row[:n]) for row in rows]


def _load(session: Session, batch: _Batch, keys: list[Any]) -> list[Any]:
    if not keys:
        return []
    n = len(batch.keys)
    cols = [getattr(batch.cls, batch.mapper.get_property_by_column(pk).key)
            for pk in batch.mapper.primary_key]
    match = cols[0].in_(keys) if n == 1 else sa.tuple_(*cols).in_(keys)
    query = cast(Any, sa.select(batch.cls)).where(match).execution_options(
        populate_existing=True)
    loaded: Iterable[Any] = session.scalars(query)
    found = {_key(sa.inspect(obj).identity, n): obj for obj in loaded}
    return [found[key] for key in keys]


def _insert_log(conn: sa.Connection, batch: _Batch, moved: _Moved,
                shared: dict[str, Any]) -> None:
    """One executemany INSERT of the rows' log rows."""
    log = cast(BatchRows, batch.log)
    from_key = log.target.keys["from_state"]
    refs = [(col.key, next(i for i, c in enumerate(batch.returned) if c is source))
            for col, source in log.refs]
    sources = moved.sources
    if sources is None:  # loaded objects
        sources = [tuple(getattr(obj, batch.mapper.get_property_by_column(col).key)
                         for col in batch.returned) for obj in moved.objects]
    if moved.froms is None:
        base = {**shared, from_key: log.from_state(batch.single_from)}
        if len(refs) == 1:  # the common case, a comprehension: 10,000 rows is a batch
            [(key, position)] = refs
            rows = [{**base, key: source[position]} for source in sources]
        else:
            rows = [{**base, **{key: source[p] for key, p in refs}} for source in sources]
    else:
        convert = log.from_state
        rows = [{**shared, from_key: convert(current), **{key: source[p] for key, p in refs}}
                for source, current in zip(sources, moved.froms, strict=True)]
    conn.execute(log.target.insert, rows)


def _show(session: Session, batch: _Batch, call: _Call, keys: list[Any],
          at: Any) -> list[Any]:
    """Objects of the moved rows that the session holds show what the rows now hold."""
    if not keys or not session.identity_map:
        return [None] * len(keys)
    plan = batch.plan
    shown: dict[str, Any] = {plan.column: plan.to}
    for _, name, naive in batch.stamps:
        shown[name] = core._as_column(at, naive)  # pyright: ignore[reportPrivateUsage]
    if call.shown:
        shown.update(call.shown)
    objects: list[Any] = []
    mapper, n = batch.mapper, len(batch.keys)
    for key in keys:
        obj = session.identity_map.get(mapper.identity_key_from_primary_key(
            (key,) if n == 1 else tuple(key)))
        objects.append(obj)
        if obj is None:
            continue
        for name, value in shown.items():
            set_committed_value(obj, name, value)
        state = sa.inspect(obj)
        if call.shown is not None:
            state.info.pop(_TOKEN, None)  # reclaimed: whatever claim it stood for is gone
        _sqla.register_altered(session, state)
    return objects


def _payloads(batch: _Batch, moved: _Moved) -> Iterable[tuple[type, dict[str, Any]]]:
    plan = batch.plan
    for i, key in enumerate(moved.keys):
        obj = moved.objects[i]
        current = batch.single_from if moved.froms is None else moved.froms[i]
        yield (batch.cls if obj is None else type(obj), {
            "record": obj, "record_id": key, "event": plan.event, "from_state": current,
            "to_state": plan.to, "column": plan.column, "args": (), "kwargs": {}})


def _send_succeeded(batch: _Batch, moved: _Moved) -> None:
    for sender, payload in _payloads(batch, moved):
        core._send(core.transition_succeeded, sender, **payload,  # pyright: ignore[reportPrivateUsage]
                   duration=None)


def _queue_committed(session: Session, conn: sa.Connection, batch: _Batch,
                     moved: _Moved) -> None:
    by_sender: dict[type, list[dict[str, Any]]] = {}
    for sender, payload in _payloads(batch, moved):
        by_sender.setdefault(sender, []).append(payload)
    for sender, payloads in by_sender.items():
        core.queue_committed(session, conn, sender, payloads)


# -- leased transitions: the owner's token in the conditional UPDATE ------------------------


def _extend(cls: type, plan: core._Plan) -> None:  # pyright: ignore[reportPrivateUsage]
    spec = cast(core._Spec, plan.spec)  # pyright: ignore[reportPrivateUsage]
    if not spec.leased:
        return
    who = f"{cls.__name__}.{plan.event}"
    if not plan.mapped or not issubclass(cls, Lease):
        raise core.DeclarationError(f"{who}: leased=True needs the lease columns of a mapped "
                                    f"class: class {cls.__name__}(litestate.Lease, Base)")
    mapper = cast(Mapper[Any], plan.bind["mapper"])
    held, ended = lease_held(cls, mapper, plan.stmt.table)
    plan.stmt = plan.stmt.where(*held).values(ended)
    plan.write_conditions += (core.WriteCondition(_lease_params, _lease_ended, _lease_lost),)
    plan.on_failure += (_lease_undone,)


def lease_held(cls: type, mapper: Mapper[Any], table: sa.Table
               ) -> tuple[tuple[Any, ...], dict[Any, Any]]:
    """A leased write's WHERE clauses (this claim's token, an unexpired lease by the
    database's clock) and the SET values that end the lease; its bound value is set by
    :func:`lease_params`. Also what an error state (:mod:`litestate.recovery`) writes with."""
    owner, expires = cast(tuple[Any, Any], _lease_columns(cls, mapper, table))
    held = (owner == sa.bindparam("ls_lease_owner", type_=owner.type), expires > _db_now())
    return held, {owner: None, expires: None}


def lease_params(f: core._Firing, params: dict[str, Any]) -> None:  # pyright: ignore[reportPrivateUsage]
    """The bound value of :func:`lease_held`'s clauses: the token of the object's claim."""
    params["ls_lease_owner"] = f.state.info.get(_TOKEN)  # None: no claim, no match


_lease_params = lease_params


def _lease_ended(f: core._Firing) -> None:  # pyright: ignore[reportPrivateUsage]
    for key in _LEASE_KEYS:
        set_committed_value(f.obj, key, None)


def _lease_undone(f: core._Firing, error: BaseException) -> None:  # pyright: ignore[reportPrivateUsage]
    if f.won:  # the write was rolled back: the next read shows the lease again
        f.session.expire(f.obj, list(_LEASE_KEYS))


def _lease_lost(obj: Any, unchanged: bool) -> str | None:
    """Why a leased write is refused, if the lease is to blame: this object's claim no
    longer holds the row (a conflict whatever state the row is in now), or, the state
    being the one read, the lease expired."""
    token = sa.inspect(obj).info.get(_TOKEN)
    if token is None:
        return ("this object holds no lease: a leased transition fires on an object that "
                "litestate.claim(..., lease=...) returned")
    owner = getattr(obj, _LEASE_KEYS[0])
    if owner != token:
        return "this claim's lease is lost: " + (
            "another claim holds the row" if owner is not None else
            "it ended (a leased transition, or a reclaim after it expired)")
    if unchanged:
        return (f"this claim's lease expired at {getattr(obj, _LEASE_KEYS[1])}, by the "
                "database's clock")
    return None


core.plan_extensions.append(_extend)
