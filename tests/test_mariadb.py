"""Where MariaDB (and MySQL) differ from PostgreSQL and SQLite, and what litestate does
about it: InnoDB's deadlock victim loses its whole transaction, REPEATABLE READ keeps the
old snapshot after a lost race, string comparisons follow the column's case-insensitive
collation, UPDATE counts matched rows, DATETIME keeps whole seconds.

Tests that take ``maria`` run on MariaDB alone (the behaviour is InnoDB's), marked
``mariadb`` as the parametrised ones are; those that take ``engine`` or ``server`` check
that the other backends agree."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import litestate
from tests.conftest import SignalLog, backend_id, load, server_engine, waiting_on_a_lock
from tests.models import (
    Account,
    Job,
    PaymentIntent,
    PaymentStatus,
    Subscription,
    Todo,
    TodoEvent,
)

MARIADB_DEADLOCK = 1213  # ER_LOCK_DEADLOCK: InnoDB rolled the whole transaction back


# -- a deadlock inside the transition's SAVEPOINT ------------------------------------------


class Rival:
    """Another transaction, in a thread: it writes ``weight`` rows (so that InnoDB, which
    sacrifices the transaction that wrote less, picks ours as the deadlock victim), locks
    row ``holds``, then updates row ``wants`` and waits there until ours ends."""

    def __init__(self, engine: sa.Engine, holds: int, wants: int,
                 model: type[Todo | Account] = Todo, weight: int = 50) -> None:
        self.engine, self.holds, self.wants, self.weight = engine, holds, wants, weight
        self.table = cast(sa.Table, model.__table__)
        self.holding = threading.Event()
        self.pid = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        id_ = self.table.c.id
        try:
            with Session(self.engine) as rival:
                self.pid = backend_id(rival)
                rival.add_all(TodoEvent(todo_id=0, name="weight") for _ in range(self.weight))
                rival.flush()
                rival.execute(sa.select(id_).where(id_ == self.holds).with_for_update())
                self.holding.set()
                rival.execute(sa.update(self.table).where(id_ == self.wants)
                              .values(status=self.table.c.status))
                rival.rollback()
        except BaseException as exc:
            self.error = exc
            self.holding.set()

    def __enter__(self) -> Rival:
        self.thread.start()
        assert self.holding.wait(60)
        if self.error is None:
            waiting_on_a_lock(self.engine, self.pid)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.thread.join(60)
        assert not self.thread.is_alive(), "the rival is stuck"
        if self.error is not None:
            raise self.error


def _is_deadlock(error: sa.exc.DBAPIError) -> bool:
    return error.orig is not None and error.orig.args[0] == MARIADB_DEADLOCK


def _todos(session: Session, count: int) -> list[Todo]:
    todos = [Todo(title=f"t{n}") for n in range(count)]
    session.add_all(todos)
    session.commit()
    return todos


def _lock_in_body(session: Session, row: int) -> Callable[[], None]:
    def body() -> None:
        session.execute(sa.select(Todo.id).where(Todo.id == row).with_for_update())
    return body


def _edit_in_body(session: Session, row: int) -> Callable[[], None]:
    def body() -> None:
        load(session, Todo, row).title = "edited in the body"  # flushed in the SAVEPOINT
    return body


@pytest.fixture
def statuses(maria: sa.Engine) -> Callable[[], dict[int, str]]:
    def read() -> dict[int, str]:
        with maria.connect() as conn:
            return {row.id: row.status for row in conn.execute(sa.select(Todo.id, Todo.status))}
    return read


@pytest.mark.mariadb
@pytest.mark.parametrize("body", [_lock_in_body, _edit_in_body],
                         ids=["a statement of the body", "the body's flush"])
def test_a_deadlock_in_the_savepoint_propagates_and_the_session_refuses_to_commit(
        maria: sa.Engine, signals: SignalLog, statuses: Callable[[], dict[int, str]],
        body: Callable[[Session, int], Callable[[], None]]) -> None:
    """InnoDB's victim loses its whole transaction, SAVEPOINTs included: the deadlock is
    what the caller sees (not the failed ROLLBACK TO SAVEPOINT), transition_failed says
    so, and commit() cannot report the discarded writes as committed."""
    with Session(maria) as session:
        earlier, todo, other = _todos(session, 3)
        ids = (earlier.id, todo.id, other.id)
        earlier.start("ada")  # queued for transition_committed: the deadlock discards it
        session.execute(sa.select(Todo.id).where(Todo.id == todo.id).with_for_update())
        with Rival(maria, holds=other.id, wants=todo.id), \
                pytest.raises(sa.exc.OperationalError) as info:
            litestate.transition_state(todo, event="start", frm="pending", to="doing",
                                       body=body(session, other.id))
        assert _is_deadlock(info.value)
        failed = signals.of("transition-failed")
        assert [h.payload["error"] for h in failed] == [info.value]
        with pytest.raises(sa.exc.PendingRollbackError, match="Deadlock"):
            session.commit()
        session.rollback()
        assert (earlier.status, todo.status) == ("pending", "pending")
    assert signals.of("transition-committed") == []
    assert statuses() == dict.fromkeys(ids, "pending")


@pytest.mark.mariadb
def test_a_deadlock_on_the_write_itself_inside_the_savepoint(
        maria: sa.Engine, signals: SignalLog, statuses: Callable[[], dict[int, str]]) -> None:
    """The transition's own UPDATE is the statement that deadlocks (a body waits to run)."""
    with Session(maria) as session:
        earlier, todo, other = _todos(session, 3)
        ids = (earlier.id, todo.id, other.id)
        earlier.start("ada")
        session.execute(sa.select(Todo.id).where(Todo.id == other.id).with_for_update())
        with Rival(maria, holds=todo.id, wants=other.id), \
                pytest.raises(sa.exc.OperationalError) as info:
            todo.start("bob")  # a body: in a SAVEPOINT; its UPDATE waits on the rival
        assert _is_deadlock(info.value)
        assert [h.payload["error"] for h in signals.of("transition-failed")] == [info.value]
        with pytest.raises(sa.exc.PendingRollbackError):
            session.commit()
        session.rollback()
    assert signals.of("transition-committed") == []
    assert statuses() == dict.fromkeys(ids, "pending")


@pytest.mark.mariadb
def test_a_deadlock_in_a_transition_inside_the_callers_savepoint_refuses_the_session(
        maria: sa.Engine, signals: SignalLog, statuses: Callable[[], dict[int, str]]) -> None:
    """The caller's SAVEPOINT is gone too: leaving its block does not bring the caller's
    transaction back; the session refuses until rollback()."""
    with Session(maria) as session:
        earlier, todo, other = _todos(session, 3)
        ids = (earlier.id, todo.id, other.id)
        earlier.start("ada")
        session.execute(sa.select(Todo.id).where(Todo.id == todo.id).with_for_update())
        with Rival(maria, holds=other.id, wants=todo.id), \
                pytest.raises(sa.exc.OperationalError) as info, session.begin_nested():
            litestate.transition_state(todo, event="start", frm="pending", to="doing",
                                       body=_lock_in_body(session, other.id))
        assert _is_deadlock(info.value)
        assert "the database had rolled back the whole transaction" in str(
            info.value.__notes__)
        with pytest.raises(sa.exc.PendingRollbackError, match="Deadlock"):
            session.execute(sa.select(Todo.id))
        with pytest.raises(sa.exc.PendingRollbackError, match="Deadlock"):
            session.commit()
        session.rollback()
    assert signals.of("transition-committed") == []
    assert statuses() == dict.fromkeys(ids, "pending")


@pytest.mark.mariadb
def test_a_deadlock_of_a_lone_update_inside_the_callers_savepoint(maria: sa.Engine) -> None:
    """No SAVEPOINT of litestate's (an empty body, nobody hears transition_succeeded):
    the session refuses all the same, past the caller's SAVEPOINT."""
    heard: list[str] = []

    def failed(sender: type, *, error: BaseException, **extra: Any) -> None:
        heard.append(f"failed {type(error).__name__}")

    def committed(sender: type, *, event: str, **extra: Any) -> None:
        heard.append(f"committed {event}")

    with Session(maria) as session, litestate.transition_failed.connected_to(failed), \
            litestate.transition_committed.connected_to(committed):
        accounts = [Account(status="frozen") for _ in range(3)]
        session.add_all(accounts)
        session.commit()
        earlier, account, other = accounts
        earlier.reopen()
        session.execute(sa.select(Account.id).where(Account.id == other.id).with_for_update())
        with Rival(maria, holds=account.id, wants=other.id, model=Account), \
                pytest.raises(sa.exc.OperationalError) as info, session.begin_nested():
            account.reopen()  # one UPDATE, waiting on the rival's lock
        assert _is_deadlock(info.value)
        assert heard == ["failed OperationalError"]
        with pytest.raises(sa.exc.PendingRollbackError, match="Deadlock"):
            session.commit()
        session.rollback()
        assert heard == ["failed OperationalError"]
    with maria.connect() as conn:
        assert set(conn.scalars(sa.select(Account.status))) == {"frozen"}


# -- a lost race under REPEATABLE READ -----------------------------------------------------


def _race(engine: sa.Engine, isolation: str) -> tuple[Session, Todo]:
    """``theirs`` reads a todo in an open transaction (under REPEATABLE READ, its snapshot),
    then another transaction starts it and commits: theirs is stale. Returns theirs."""
    engine = engine.execution_options(isolation_level=isolation)
    with Session(engine) as setup:
        todo = Todo(title="race")
        setup.add(todo)
        setup.commit()
        todo_id = todo.id
    theirs_session = Session(engine)
    theirs = load(theirs_session, Todo, todo_id)
    assert theirs.status == "pending"
    with Session(engine) as mine_session:
        load(mine_session, Todo, todo_id).start("ada")
        mine_session.commit()
    return theirs_session, theirs


@pytest.mark.parametrize(("backend", "isolation"), [
    pytest.param("mariadb", "REPEATABLE READ", marks=pytest.mark.mariadb),
    pytest.param("mariadb", "READ COMMITTED", marks=pytest.mark.mariadb),
    pytest.param("postgresql", "READ COMMITTED", marks=pytest.mark.postgres),
])
def test_after_a_lost_race_the_object_shows_the_row_as_committed_and_a_retry_starts_there(
        request: pytest.FixtureRequest, backend: str, isolation: str) -> None:
    """On MariaDB's REPEATABLE READ (its default) a plain read would show the old
    snapshot, so the retry would conflict forever; litestate reads the row under a lock,
    which sees what was committed. (PostgreSQL's REPEATABLE READ refuses the write
    itself: see below.)"""
    engine = server_engine(request, backend)
    session, theirs = _race(engine, isolation)
    todo_id = theirs.id
    with session:
        with pytest.raises(litestate.ConflictError) as info:
            theirs.start("bob")
        assert info.value.from_state == "pending"
        assert "(it is now 'doing')" in info.value.detail
        assert (theirs.status, theirs.started_by) == ("doing", "ada")
        with pytest.raises(litestate.InvalidStateError):
            theirs.start("bob")  # the same transaction: from the row as it is now
        theirs.complete("bob")
        session.commit()
    with Session(engine) as check:
        row = load(check, Todo, todo_id)
        assert (row.status, row.started_by, row.completed_by) == ("completed", "ada", "bob")


@pytest.mark.postgres
def test_on_postgresql_repeatable_read_a_lost_race_is_the_servers_serialization_failure(
        pg: sa.Engine, signals: SignalLog) -> None:
    """PostgreSQL refuses an UPDATE of a row changed since the snapshot: the lost race is
    SQLSTATE 40001 from the write, not a ConflictError. Nothing is written, the SAVEPOINT
    keeps the caller's transaction, and a retry must take a new transaction (in this one
    it fails the same way)."""
    session, theirs = _race(pg, "REPEATABLE READ")
    todo_id = theirs.id
    with session:
        for _ in range(2):
            with pytest.raises(sa.exc.OperationalError) as info:
                theirs.start("bob")
            assert getattr(info.value.orig, "sqlstate", None) == "40001"
            assert signals.of("transition-failed")[-1].payload["error"] is info.value
            assert theirs.status == "pending"  # what this transaction's snapshot shows
        session.rollback()  # a new transaction: the row as committed
        with pytest.raises(litestate.InvalidStateError) as refused:
            theirs.start("bob")
        assert refused.value.from_state == "doing"
    with Session(pg) as check:
        assert load(check, Todo, todo_id).started_by == "ada"


# -- states compared exactly, whatever the column's collation -------------------------------

# States that a case- and accent-insensitive collation with PAD SPACE (MariaDB's and
# MySQL's usual utf8mb4 ones) calls equal to 'open'.
NOT_OPEN = pytest.mark.parametrize("stored", ["OPEN", "Open", "opén", "open "],
                                   ids=["upper", "title", "accent", "trailing-space"])


def _stale_open_account(engine: sa.Engine, stored: str) -> tuple[Session, Account]:
    """An account loaded as 'open' in a session (its read transaction ended, as a web
    request's would), whose row another transaction then set to ``stored``."""
    with Session(engine) as setup:
        account = Account()
        setup.add(account)
        setup.commit()
        account_id = account.id
    session = Session(engine, expire_on_commit=False)
    account = load(session, Account, account_id)
    session.commit()
    with engine.begin() as conn:
        conn.execute(sa.update(Account).where(Account.id == account_id).values(status=stored))
    return session, account


def _row_status(engine: sa.Engine, account_id: int) -> str | None:
    with engine.connect() as conn:
        return conn.scalar(sa.select(Account.status).where(Account.id == account_id))


@NOT_OPEN
def test_the_write_compares_states_exactly_whatever_the_collation(
        engine: sa.Engine, stored: str) -> None:
    session, account = _stale_open_account(engine, stored)
    account_id = account.id
    with session:
        with pytest.raises(litestate.ConflictError) as info:
            account.freeze()  # read 'open'; the row holds another state
        assert info.value.detail.endswith(f"(it is now {stored!r})")
        assert account.status == stored
        session.commit()
    assert _row_status(engine, account_id) == stored


@NOT_OPEN
def test_the_one_update_path_compares_states_exactly_too(
        engine: sa.Engine, stored: str) -> None:
    """An expired object, one frm state, no guard, body or lock: the UPDATE decides alone,
    and the refusal's first look at the row says what it holds."""
    session, account = _stale_open_account(engine, stored)
    account_id = account.id
    with session:
        session.expire(account)
        with pytest.raises(litestate.InvalidStateError) as info:
            litestate.transition_state(account, event="shut", frm="open", to="frozen")
        assert info.value.from_state == stored
        session.commit()
    assert _row_status(engine, account_id) == stored


@NOT_OPEN
def test_a_lock_and_the_probes_compare_states_exactly(engine: sa.Engine, stored: str) -> None:
    session, account = _stale_open_account(engine, stored)
    account_id = account.id
    with session:
        with pytest.raises(litestate.InvalidStateError) as info:
            account.close()  # lock=True: the row read under FOR UPDATE
        assert info.value.from_state == stored
        assert not litestate.can_transition(account, "freeze")
        assert litestate.available_transitions(account) == ["reopen"]
        session.commit()
    assert _row_status(engine, account_id) == stored


# -- a self-transition: MySQL's UPDATE counts changed rows unless told otherwise -----------


@pytest.mark.parametrize("path", ["read", "one update"])
def test_a_self_transition_matches_its_row_though_it_changes_nothing(
        engine: sa.Engine, signals: SignalLog, path: str) -> None:
    """``new -> new`` writes the value the row holds: MySQL's affected-rows count is 0,
    but SQLAlchemy's MySQL dialects connect with CLIENT_FOUND_ROWS, so the rowcount is
    the one matched row, not a lost race."""
    with Session(engine) as session:
        job = Job()
        session.add(job)
        session.commit()
        if path == "read":
            assert job.state == "new"
            job.reset()  # frm="*": the state is read, then written unchanged
        else:  # expired, one frm state, no guard, body or lock: the UPDATE alone decides
            litestate.transition_state(job, event="renew", frm="new", to="new")
        assert job.state == "new"
        session.commit()
    assert [h.payload["event"] for h in signals.of("transition-committed")] == [
        "reset" if path == "read" else "renew"]
    assert signals.of("transition-invalid") == []


# -- timestamps: DATETIME keeps whole seconds; a zone is the column's to keep ---------------


class StampBase(DeclarativeBase):
    pass


@litestate.state_column("status")
class Stamp(StampBase):
    """One timestamp column of each kind: naive, aware, and naive with microseconds on
    MySQL/MariaDB too (their DATETIME keeps whole seconds unless given a precision)."""

    __tablename__ = "backend_stamps"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="new")
    naive_at: Mapped[datetime | None] = mapped_column(sa.DateTime())
    aware_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    fine_at: Mapped[datetime | None] = mapped_column(
        sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"))

    @litestate.transition(frm="new", to="naive", timestamp="naive_at")
    def stamp_naive(self) -> None:
        pass

    @litestate.transition(frm="new", to="aware", timestamp="aware_at")
    def stamp_aware(self) -> None:
        pass

    @litestate.transition(frm="new", to="fine", timestamp="fine_at")
    def stamp_fine(self) -> None:
        pass


@pytest.fixture
def stamps(engine: sa.Engine) -> Iterator[sa.Engine]:
    StampBase.metadata.drop_all(engine)
    StampBase.metadata.create_all(engine)
    yield engine
    StampBase.metadata.drop_all(engine)


CLOCK = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
IN_UTC = datetime(2026, 1, 2, 1, 4, 5, 123456)  # CLOCK's instant, as naive UTC


def _in_utc(value: datetime | None) -> datetime | None:
    """A value read back, as naive UTC (an aware column's value may come back aware)."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


@pytest.mark.parametrize(("event", "column", "whole_seconds_on_mysql"), [
    ("stamp_naive", "naive_at", True), ("stamp_aware", "aware_at", True),
    ("stamp_fine", "fine_at", False)])
def test_a_timestamp_is_the_clocks_instant_in_utc_at_the_columns_precision(
        stamps: sa.Engine, event: str, column: str, whole_seconds_on_mysql: bool) -> None:
    """An aware clock is written as UTC: naive UTC to a naive column, UTC to an aware one
    (MySQL's DATETIME keeps no zone and SQLAlchemy drops the offset: the clock's own
    wall time would be another instant). MariaDB's DATETIME truncates to whole seconds
    unless declared with fsp; the object keeps the microseconds until it is reloaded, as
    after any ORM write."""
    previous = litestate.set_clock(lambda: CLOCK)
    try:
        with Session(stamps) as session:
            stamp = Stamp()
            session.add(stamp)
            session.commit()
            getattr(stamp, event)()
            assert _in_utc(getattr(stamp, column)) == IN_UTC
            session.commit()
            stored = IN_UTC.replace(microsecond=0) if (
                whole_seconds_on_mysql and stamps.dialect.name == "mysql") else IN_UTC
            assert _in_utc(getattr(stamp, column)) == stored  # reloaded: the row
    finally:
        litestate.set_clock(previous)


# -- enum columns: a native ENUM on MySQL/MariaDB ---------------------------------------


@pytest.mark.mariadb
def test_an_enum_column_is_a_native_enum_on_mariadb_and_transitions_write_it(
        maria: sa.Engine) -> None:
    columns = {c["name"]: c["type"] for c in sa.inspect(maria).get_columns("subscriptions")}
    assert isinstance(columns["status"], mysql.ENUM)
    with Session(maria) as session:
        subscription, intent = Subscription(), PaymentIntent()
        session.add_all([subscription, intent])
        session.commit()
        subscription.activate()
        intent.process()
        session.commit()
        session.expire_all()
        assert (subscription.status, intent.status) == ("active", PaymentStatus.processing)
    with maria.connect() as conn:  # the server refuses a value the ENUM does not list
        with pytest.raises(sa.exc.DataError):
            conn.exec_driver_sql("UPDATE subscriptions SET status = 'ACTIVE!'")
        conn.rollback()
