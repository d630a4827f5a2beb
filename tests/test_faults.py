"""Faults a worker meets in production, injected for real: a connection killed between the
write and the commit, a server restarted under a worker loop, a deadlock, a serialization
failure, a lock timeout, SQLite's "database is locked". After each, the row, the object and
the signals agree, and :func:`litestate.is_retryable` tells the fault from a bug.

Each server's own SQL lives in its :class:`Faults` class (find and kill a connection, see
that one waits for a lock, set a lock timeout, read an error's code): another backend is
one more subclass and one more parameter of the ``faults`` and ``restartable`` fixtures.
No sleeps: where a worker must wait on another's lock, the server is asked that it does.

On MariaDB (InnoDB) a fault looks otherwise where the engine differs: a deadlock rolls the
victim's whole transaction back (SAVEPOINTs too), InnoDB picks the victim itself, the lock
wait timeout counts whole seconds (0: give up at once; the statement alone is rolled
back), and SERIALIZABLE makes plain reads take shared locks, so a race blocks and ends in
a deadlock or a guard's refusal, never in a serialization failure (40001).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, object_session

import litestate
from litestate import (
    ConflictError,
    GuardError,
    InvalidStateError,
    is_retryable,
    retrying,
    state_column,
    transition,
    transition_state,
)
from litestate.sqlite import Begin, enable_savepoints
from tests import mariaserver, pgserver
from tests.conftest import ALL_SIGNALS, SignalLog, load, recording, waiting_on_a_lock


class FaultBase(DeclarativeBase):
    pass


@state_column("state")
class Slot(FaultBase):
    """A row to fight over. ``hits`` counts the bodies whose writes were kept."""

    __tablename__ = "fault_slots"
    id: Mapped[int] = mapped_column(primary_key=True)
    state: Mapped[str] = mapped_column(sa.String(20), default="free")
    hits: Mapped[int] = mapped_column(default=0)
    by: Mapped[str | None] = mapped_column(sa.String(40))

    @transition(frm="*", to="taken", lock=True)
    def take(self, by: str) -> None:
        """Locked, and from any state: a deadlock's loser can take it after the winner."""
        self.hits += 1
        self.by = by

    @transition(frm="free", to="taken")
    def claim(self, by: str) -> None:
        """A body: the atomic section is a SAVEPOINT."""
        self.hits += 1
        self.by = by

    @transition(frm="free", to="taken")
    def grab(self) -> None:
        """No body: one UPDATE and no SAVEPOINT, while no transition_succeeded receiver
        listens."""

    @transition(frm="free", to="held", guard="another_is_free")
    def hold(self) -> None:
        self.hits += 1

    def another_is_free(self) -> bool:
        session = object_session(self)
        assert session is not None
        return bool(session.scalar(sa.select(sa.func.count()).where(
            Slot.state == "free", Slot.id != self.id)))


# -- the servers ---------------------------------------------------------------------------


class Server(Protocol):
    def restart(self, mode: str = ...) -> None:
        """Stop (``fast``: cleanly; ``immediate``: as in a crash) and start on the same
        port."""


class Faults:
    """A server the fault tests run on: its engine and, in its dialect, what a test asks
    of it. One subclass per backend."""

    #: The codes of the errors the tests provoke, as :meth:`code` reads them.
    codes: ClassVar[dict[str, object]] = {}
    #: Whether the transaction goes on after a deadlock inside a SAVEPOINT (rolled back to).
    savepoint_survives_deadlock = True

    def __init__(self, engine: sa.Engine, server: Server | None = None) -> None:
        self.engine = engine
        #: The server, for a test that restarts it (a private one).
        self.server = server

    def add(self, count: int = 1) -> list[int]:
        """New free slots, committed; their ids."""
        with Session(self.engine) as session:
            slots = [Slot() for _ in range(count)]
            session.add_all(slots)
            session.commit()
            return [slot.id for slot in slots]

    def row(self, slot_id: int) -> tuple[str, int, str | None]:
        """(state, hits, by) as committed, read in a new session."""
        with Session(self.engine) as session:
            slot = load(session, Slot, slot_id)
            return slot.state, slot.hits, slot.by

    def pid(self, session: Session) -> int:
        """The server's id of the session's connection (beginning its transaction)."""
        raise NotImplementedError

    def kill(self, pid: int) -> None:
        """End that connection from another one; return once it is gone."""
        raise NotImplementedError

    def wait_for_lock(self, pid: int) -> None:
        """Return once that connection waits for a lock another holds."""
        raise NotImplementedError

    def lock_timeout(self, session: Session | sa.Connection, ms: int) -> None:
        """Make the transaction give up waiting for a row lock after ``ms``."""
        raise NotImplementedError

    def detect_deadlocks(self, session: Session, ms: int) -> None:
        """Where the server lets a session choose it: look for a deadlock after ``ms`` of
        waiting (the first to look is the victim)."""

    def code(self, error: BaseException) -> object:
        """The server's code for a wrapped driver error."""
        raise NotImplementedError


class PostgresFaults(Faults):
    codes: ClassVar[dict[str, object]] = {
        "deadlock": "40P01", "serialization": "40001", "lock_timeout": "55P03"}

    def pid(self, session: Session) -> int:
        return int(session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())

    def kill(self, pid: int) -> None:
        with self.engine.connect() as conn:  # waits (up to 10 s) until it has ended
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid, 10000)"),
                                {"pid": pid}).scalar_one()

    def wait_for_lock(self, pid: int) -> None:
        deadline = time.monotonic() + 30
        with self.engine.connect() as conn:
            while not conn.execute(sa.text("SELECT cardinality(pg_blocking_pids(:pid)) > 0"),
                                   {"pid": pid}).scalar_one():
                assert time.monotonic() < deadline, f"connection {pid} never waited"
                conn.rollback()  # the next look sees the server as it is then

    def lock_timeout(self, session: Session | sa.Connection, ms: int) -> None:
        session.execute(sa.text(f"SET LOCAL lock_timeout = '{ms}ms'"))

    def detect_deadlocks(self, session: Session, ms: int) -> None:
        session.execute(sa.text(f"SET LOCAL deadlock_timeout = '{ms}ms'"))  # superuser

    def code(self, error: BaseException) -> object:
        return getattr(getattr(error, "orig", None), "sqlstate", None)


class MariaFaults(Faults):
    """InnoDB: it detects a deadlock at once and picks the victim itself (the smaller
    transaction), whose whole transaction it rolls back; its lock wait timeout counts
    whole seconds."""

    codes: ClassVar[dict[str, object]] = {"deadlock": 1213, "lock_timeout": 1205}
    savepoint_survives_deadlock = False

    def pid(self, session: Session) -> int:
        return int(session.execute(sa.text("SELECT CONNECTION_ID()")).scalar_one())

    def kill(self, pid: int) -> None:
        deadline = time.monotonic() + 30
        with self.engine.connect() as conn:
            conn.execute(sa.text(f"KILL {int(pid)}"))
            while conn.execute(sa.text("SELECT COUNT(*) FROM information_schema.processlist "
                                       "WHERE id = :pid"), {"pid": pid}).scalar_one():
                assert time.monotonic() < deadline, f"connection {pid} never ended"

    def wait_for_lock(self, pid: int) -> None:
        waiting_on_a_lock(self.engine, pid)

    def lock_timeout(self, session: Session | sa.Connection, ms: int) -> None:
        """Whole seconds, rounded down: 0 gives up at once, with the same error (1205).
        For this connection's session: :func:`maria_engine` resets it at checkout."""
        session.execute(sa.text(f"SET SESSION innodb_lock_wait_timeout = {ms // 1000}"))

    def code(self, error: BaseException) -> object:
        orig = getattr(error, "orig", None)
        return orig.args[0] if orig is not None and orig.args else None


def maria_engine(url: str, **options: Any) -> sa.Engine:
    """An engine whose connections start each checkout with the server's lock wait
    timeout: a test's ``SET SESSION`` would outlive its transaction in the pool."""
    engine = sa.create_engine(url, pool_size=5, **options)

    def reset(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        with contextlib.closing(dbapi_connection.cursor()) as cursor:
            cursor.execute("SET SESSION innodb_lock_wait_timeout = DEFAULT")

    sa.event.listen(engine, "checkout", reset)
    return engine


@pytest.fixture(scope="module")
def pg_slots(pg_engine: sa.Engine) -> sa.Engine:
    FaultBase.metadata.drop_all(pg_engine)
    FaultBase.metadata.create_all(pg_engine)
    return pg_engine


@pytest.fixture(scope="module")
def maria_slots(mariadb_url: str) -> Iterator[sa.Engine]:
    engine = maria_engine(mariadb_url)
    FaultBase.metadata.drop_all(engine)
    FaultBase.metadata.create_all(engine)
    yield engine
    FaultBase.metadata.drop_all(engine)
    engine.dispose()


def pg_faults_of(request: pytest.FixtureRequest) -> Faults:
    engine: sa.Engine = request.getfixturevalue("pg_slots")
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL lock_timeout = '20s'")  # a leaked lock fails here
        conn.exec_driver_sql("TRUNCATE fault_slots RESTART IDENTITY")
    return PostgresFaults(engine)


def maria_faults_of(request: pytest.FixtureRequest) -> Faults:
    engine: sa.Engine = request.getfixturevalue("maria_slots")
    with engine.begin() as conn:
        conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 20")  # a leaked lock
        conn.exec_driver_sql("DELETE FROM fault_slots")  # fails here (reset at checkout)
        conn.exec_driver_sql("ALTER TABLE fault_slots AUTO_INCREMENT = 1")
    return MariaFaults(engine)


_FAULTS = {"postgresql": pg_faults_of, "mariadb": maria_faults_of}
SERVERS = [pytest.param("postgresql", marks=pytest.mark.postgres),
           pytest.param("mariadb", marks=pytest.mark.mariadb)]


@pytest.fixture(params=SERVERS)
def faults(request: pytest.FixtureRequest) -> Faults:
    """The shared test server of each backend, its slots emptied."""
    return _FAULTS[request.param](request)


@pytest.fixture
def pg_faults(request: pytest.FixtureRequest) -> Faults:
    """PostgreSQL alone: its serialization failures (InnoDB has none)."""
    return pg_faults_of(request)


@pytest.fixture
def maria_faults(request: pytest.FixtureRequest) -> Faults:
    return maria_faults_of(request)


@contextlib.contextmanager
def private_server(name: str) -> Iterator[Faults]:
    """A fresh server of ``name``'s own whose commits survive a crash, as a real server's
    do (PostgreSQL's ``synchronous_commit``, InnoDB's flush at each commit), and an engine
    with the pool's pre-ping."""
    if name == "postgresql":
        pg = pgserver.running_server(synchronous_commit="on")
        with pg as server:
            engine = sa.create_engine(server.url, pool_pre_ping=True, pool_size=2)
            try:
                FaultBase.metadata.create_all(engine)
                yield PostgresFaults(engine, server)
            finally:
                engine.dispose()
        return
    with mariaserver.running_server("--innodb-flush-log-at-trx-commit=1") as maria:
        engine = maria_engine(maria.url, pool_pre_ping=True)
        try:
            FaultBase.metadata.create_all(engine)
            yield MariaFaults(engine, maria)
        finally:
            engine.dispose()


_UNAVAILABLE = {"postgresql": (pgserver.URL_ENV, pgserver.ServerUnavailable, "PostgreSQL"),
                "mariadb": (mariaserver.URL_ENV, mariaserver.ServerUnavailable, "MariaDB")}


@pytest.fixture(params=SERVERS)
def restartable(request: pytest.FixtureRequest) -> Iterator[Faults]:
    """A private server of each backend, to restart: the shared one stays up."""
    url_env, unavailable, what = _UNAVAILABLE[request.param]
    if os.environ.get(url_env):
        pytest.skip(f"${url_env} names a server of yours: the tests restart only their own")
    with contextlib.ExitStack() as stack:
        try:
            faults = stack.enter_context(private_server(request.param))
        except unavailable as exc:
            if os.environ.get("CI"):
                pytest.fail(f"CI must run the {what} tests: {exc}", pytrace=False)
            pytest.skip(f"no {what} server could start here: {exc}")
        yield faults


# -- the routes through a transition ----------------------------------------------------------


class Route(NamedTuple):
    """One way through a transition's atomic section, and what a failure in it keeps."""

    fire: Callable[[Slot], None]
    #: The signals recorded: without transition_succeeded, ``grab`` needs no SAVEPOINT.
    signals: tuple[Any, ...]
    #: What the body adds to ``hits``.
    hits: int
    #: Whether a failed write leaves the caller's transaction usable (a SAVEPOINT).
    keeps_transaction: bool


def _claim(slot: Slot) -> None:
    slot.claim("ada")


def _grab(slot: Slot) -> None:
    slot.grab()


def _take(slot: Slot) -> None:
    slot.take("ada")


WITHOUT_SUCCEEDED = (litestate.transition_invalid, litestate.transition_failed,
                     litestate.transition_committed)
SAVEPOINT = Route(_claim, ALL_SIGNALS, 1, True)
UPDATE_ONLY = Route(_grab, WITHOUT_SUCCEEDED, 0, False)
LOCKED = Route(_take, ALL_SIGNALS, 1, False)  # the lock is taken before the SAVEPOINT
WRITES = [pytest.param(SAVEPOINT, id="savepoint"), pytest.param(UPDATE_ONLY, id="update-only")]


def committed_ids(log: SignalLog) -> list[int]:
    return sorted(h.payload["record_id"] for h in log.of("transition-committed"))


def failed_errors(log: SignalLog) -> list[BaseException]:
    return [h.payload["error"] for h in log.of("transition-failed")]


def run_threads(work: Sequence[Callable[[], Any]], main: Callable[[], None],
                barriers: Sequence[threading.Barrier] = ()) -> list[Any]:
    """Run each of ``work`` in a thread and ``main`` in this one; the threads' results.
    An error anywhere breaks the barriers (no one waits forever) and is re-raised."""
    results: list[Any] = [None] * len(work)
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            results[i] = work[i]()
        except BaseException as exc:
            errors.append(exc)
            for barrier in barriers:
                barrier.abort()

    threads = [threading.Thread(target=target, args=(i,)) for i in range(len(work))]
    for thread in threads:
        thread.start()
    try:
        main()
    except BaseException:
        for barrier in barriers:
            barrier.abort()
        raise
    finally:
        for thread in threads:
            thread.join(timeout=60)
            assert not thread.is_alive(), "a worker is stuck"
    if errors:
        raise errors[0]
    return results


# -- the connection dies -------------------------------------------------------------------


@pytest.mark.parametrize("route", WRITES)
def test_a_connection_killed_before_the_commit_loses_the_write_and_says_so(
        faults: Faults, route: Route) -> None:
    [slot_id] = faults.add()
    with recording(*route.signals) as log, Session(faults.engine) as session:
        slot = load(session, Slot, slot_id)
        pid = faults.pid(session)
        route.fire(slot)  # the UPDATE, in the open transaction
        assert slot.state == "taken"
        faults.kill(pid)
        with pytest.raises(sa_exc.OperationalError) as info:
            session.commit()
        assert info.value.connection_invalidated
        assert is_retryable(info.value)
        assert committed_ids(log) == []
        assert failed_errors(log) == []  # the transition finished; the commit failed
        session.rollback()
        assert (slot.state, slot.hits) == ("free", 0)  # read again: the row as it is
        route.fire(slot)  # the session goes on, on a new connection
        session.commit()
    assert faults.row(slot_id)[:2] == ("taken", route.hits)
    assert committed_ids(log) == [slot_id]


def test_a_connection_killed_inside_the_body_fails_the_transition(faults: Faults) -> None:
    """The body's own statement meets the dead connection: the caller gets that error,
    not the failed ROLLBACK TO SAVEPOINT's, and the session refuses to go on."""
    [slot_id, other_id] = faults.add(2)
    with recording() as log, Session(faults.engine) as session:
        slot = load(session, Slot, slot_id)
        pid = faults.pid(session)

        def body() -> None:
            faults.kill(pid)
            session.execute(sa.update(Slot).where(Slot.id == other_id).values(hits=7))

        with pytest.raises(sa_exc.OperationalError) as info:
            transition_state(slot, event="pair", frm="free", to="taken", body=body)
        assert info.value.connection_invalidated
        assert is_retryable(info.value)
        assert failed_errors(log) == [info.value]
        assert slot.state == "free"
        with pytest.raises(sa_exc.PendingRollbackError):
            session.commit()
        session.rollback()
    assert faults.row(slot_id)[0] == faults.row(other_id)[0] == "free"
    assert faults.row(other_id)[1] == 0
    assert committed_ids(log) == []


def test_a_worker_loop_goes_on_across_server_restarts(restartable: Faults) -> None:
    """Restarted between two transactions, the pool's pre-ping replaces the dead
    connection and nothing fails; restarted inside one (written, not yet committed), the
    commit fails and the retry applies it, once."""
    server = restartable.server
    assert server is not None
    ids = restartable.add(12)
    meet = threading.Barrier(2, timeout=60)
    tries: list[tuple[int, int]] = []
    retried_after: list[BaseException] = []

    def pause() -> None:
        meet.wait()  # the worker is here: the test restarts the server
        meet.wait()  # the server is up again

    def worker() -> None:
        for n, slot_id in enumerate(ids):
            if n == 4:
                pause()  # between transactions
            for attempt in retrying(attempts=3, backoff=0):
                with attempt, Session(restartable.engine) as session, session.begin():
                    tries.append((n, attempt.number))
                    if attempt.previous is not None:
                        retried_after.append(attempt.previous)
                    load(session, Slot, slot_id).claim("worker")
                    if n == 8 and attempt.number == 1:
                        pause()  # after the write, before the commit

    def restarts() -> None:
        for mode in ("fast", "immediate"):
            meet.wait()
            server.restart(mode)
            meet.wait()

    with recording() as log:
        run_threads([worker], restarts, [meet])
    assert tries == [(n, 1) for n in range(9)] + [(8, 2)] + [(n, 1) for n in range(9, 12)]
    [error] = retried_after
    assert isinstance(error, sa_exc.OperationalError)
    assert is_retryable(error)
    assert [restartable.row(slot_id) for slot_id in ids] == [("taken", 1, "worker")] * 12
    assert committed_ids(log) == ids
    assert len(log.of("transition-succeeded")) == 13  # the lost commit's transition too
    assert failed_errors(log) == []


# -- deadlocks ------------------------------------------------------------------------------


def test_two_locking_transitions_in_opposite_order_deadlock_one_caller(faults: Faults) -> None:
    """Worker 0 takes A then B, worker 1 takes B then A, each ``lock=True``: the
    database's deadlock error reaches one of them, whose transaction is lost whole; the
    other completes."""
    a, b = faults.add(2)
    holding = threading.Barrier(3, timeout=30)  # both hold their first row; the test
    first_waits = threading.Event()
    pids: dict[int, int] = {}

    def worker(i: int) -> BaseException | None:
        mine, theirs = (a, b) if i == 0 else (b, a)
        with Session(faults.engine) as session:
            faults.detect_deadlocks(session, 10 if i else 10_000)  # PostgreSQL: 1 looks
            pids[i] = faults.pid(session)
            load(session, Slot, mine).take(f"w{i}")
            holding.wait()
            if i:
                assert first_waits.wait(30)
            other = load(session, Slot, theirs)
            try:
                other.take(f"w{i}")
            except sa_exc.DBAPIError as exc:
                with pytest.raises(sa_exc.PendingRollbackError):
                    session.commit()
                session.rollback()
                assert other.by in (None, f"w{1 - i}")  # read again: the row as it is
                return exc
            session.commit()
            return None

    def main() -> None:
        holding.wait()
        faults.wait_for_lock(pids[0])
        first_waits.set()

    with recording() as log:
        outcomes = run_threads([lambda: worker(0), lambda: worker(1)], main, [holding])
    [error] = [o for o in outcomes if o is not None]
    assert faults.code(error) == faults.codes["deadlock"]
    assert is_retryable(error)
    winner = f"w{outcomes.index(None)}"
    assert [faults.row(a), faults.row(b)] == [("taken", 1, winner)] * 2
    assert committed_ids(log) == [a, b]
    assert failed_errors(log) == [error]
    assert len(log.of("transition-succeeded")) == 3


def test_two_bodies_touching_each_others_row_deadlock_one_caller(faults: Faults) -> None:
    """Each transition's body updates the other's row: the victim's SAVEPOINT rolls
    back, the deadlock error (not a failed ROLLBACK's) reaches it with
    transition_failed, and where the server keeps the transaction its earlier work is
    committed."""
    a, b = faults.add(2)
    wrote = threading.Barrier(3, timeout=30)  # both wrote their own row's state; the test
    first_waits = threading.Event()
    pids: dict[int, int] = {}

    def worker(i: int) -> BaseException | None:
        mine, theirs = (a, b) if i == 0 else (b, a)
        with Session(faults.engine) as session:
            faults.detect_deadlocks(session, 10 if i else 10_000)
            pids[i] = faults.pid(session)
            earlier = Slot(by=f"earlier w{i}")
            session.add(earlier)
            slot = load(session, Slot, mine)

            def body() -> None:
                wrote.wait()
                if i:
                    assert first_waits.wait(30)
                session.execute(sa.update(Slot).where(Slot.id == theirs)
                                .values(hits=Slot.hits + 1))

            try:
                transition_state(slot, event="pair", frm="free", to="taken", body=body)
            except sa_exc.DBAPIError as exc:
                if faults.savepoint_survives_deadlock:
                    assert slot.state == "free"
                    session.commit()  # the caller's transaction goes on: `earlier` is kept
                else:  # every use raises until rollback(), reading the object too
                    with pytest.raises(sa_exc.PendingRollbackError):
                        session.commit()
                    session.rollback()
                    assert slot.state == "free"  # read again: the row as it is
                return exc
            session.commit()
            return None

    def main() -> None:
        wrote.wait()
        faults.wait_for_lock(pids[0])
        first_waits.set()

    with recording() as log:
        outcomes = run_threads([lambda: worker(0), lambda: worker(1)], main, [wrote])
    [error] = [o for o in outcomes if o is not None]
    assert faults.code(error) == faults.codes["deadlock"]
    assert is_retryable(error)
    winner = outcomes.index(None)
    won, lost = (a, b) if winner == 0 else (b, a)
    assert faults.row(won)[:2] == ("taken", 0)  # the loser's body's write is gone
    assert faults.row(lost)[:2] == ("free", 1)  # the winner's body's write is kept
    assert committed_ids(log) == [won]
    assert failed_errors(log) == [error]
    with Session(faults.engine) as check:
        kept = sorted(str(by) for by in check.scalars(
            sa.select(Slot.by).where(Slot.by.like("earlier%"))))
    assert kept == sorted([f"earlier w{winner}", *(
        [f"earlier w{1 - winner}"] if faults.savepoint_survives_deadlock else [])])


# -- serializable ---------------------------------------------------------------------------


@pytest.mark.postgres
def test_a_serializable_transition_loses_to_a_concurrent_update(pg_faults: Faults) -> None:
    """The late transaction's snapshot predates the early one's commit: its UPDATE
    raises the serialization failure (not a ConflictError: the row it sees still matches),
    inside the SAVEPOINT, and nothing of it is kept. (InnoDB: the next test.)"""
    faults = pg_faults
    [slot_id] = faults.add()
    serializable = faults.engine.execution_options(isolation_level="SERIALIZABLE")
    with recording() as log, Session(serializable) as late, Session(serializable) as early:
        theirs = load(late, Slot, slot_id)  # the late transaction's snapshot is taken
        load(early, Slot, slot_id).claim("early")
        early.commit()
        with pytest.raises(sa_exc.OperationalError) as info:
            theirs.claim("late")
        assert faults.code(info.value) == faults.codes["serialization"]
        assert is_retryable(info.value)
        assert (theirs.state, theirs.hits, theirs.by) == ("free", 0, None)
        assert failed_errors(log) == [info.value]
        late.rollback()  # the whole transaction, as a serialization failure asks
        with pytest.raises(InvalidStateError):  # a new snapshot: the retry is refused
            theirs.claim("late")
    assert faults.row(slot_id) == ("taken", 1, "early")
    assert committed_ids(log) == [slot_id]


@pytest.mark.postgres
def test_serializable_write_skew_fails_the_second_commit(pg_faults: Faults) -> None:
    """Two slots, each held only while the other is free (the guard reads it): each
    transaction holds one, so the two would leave none free. The second commit fails,
    and sends no transition_committed. (InnoDB: the next tests.)"""
    faults = pg_faults
    a, b = faults.add(2)
    serializable = faults.engine.execution_options(isolation_level="SERIALIZABLE")
    with recording() as log, Session(serializable) as one, Session(serializable) as two:
        load(one, Slot, a).hold()
        load(two, Slot, b).hold()
        one.commit()
        with pytest.raises(sa_exc.OperationalError) as info:
            two.commit()
        assert faults.code(info.value) == faults.codes["serialization"]
        assert is_retryable(info.value)
        two.rollback()
    assert [faults.row(a)[:2], faults.row(b)[:2]] == [("held", 1), ("free", 0)]
    assert committed_ids(log) == [a]
    assert failed_errors(log) == []


def settle(session: Session, fire: Callable[[], None]) -> BaseException | None:
    """Fire and commit; on a database error, check the session refuses until rollback()
    (the transaction is gone), roll back, and return the error."""
    try:
        fire()
    except sa_exc.DBAPIError as exc:
        with pytest.raises(sa_exc.PendingRollbackError):
            session.commit()
        session.rollback()
        return exc
    session.commit()
    return None


@pytest.mark.mariadb
def test_innodb_serializable_blocks_the_concurrent_update_then_deadlocks_one(
        maria_faults: Faults) -> None:
    """InnoDB has no serialization failure: under SERIALIZABLE a plain read takes a
    shared lock. The late transaction's read holds the row, so the early one's UPDATE
    waits for it; the late one's UPDATE then closes a cycle, and the deadlock error (1213,
    retryable) reaches one of the two, InnoDB's choice, inside its SAVEPOINT: its whole
    transaction is gone. The other's transition is the one committed."""
    faults = maria_faults
    [slot_id] = faults.add()
    serializable = faults.engine.execution_options(isolation_level="SERIALIZABLE")
    early_pid: list[int] = []
    ready = threading.Event()
    outcome: dict[str, BaseException | None] = {}

    def early() -> BaseException | None:
        with Session(serializable) as session:
            early_pid.append(faults.pid(session))
            slot = load(session, Slot, slot_id)
            ready.set()
            return settle(session, lambda: slot.claim("early"))  # waits for late's read

    with recording() as log, Session(serializable) as late:
        theirs = load(late, Slot, slot_id)  # a shared lock on the row

        def main() -> None:
            assert ready.wait(30)
            faults.wait_for_lock(early_pid[0])
            outcome["late"] = settle(late, lambda: theirs.claim("late"))

        [outcome["early"]] = run_threads([early], main)
    [(loser, error)] = [(name, e) for name, e in outcome.items() if e is not None]
    winner = "early" if loser == "late" else "late"
    assert faults.code(error) == faults.codes["deadlock"]
    assert is_retryable(error)
    assert faults.row(slot_id) == ("taken", 1, winner)
    assert committed_ids(log) == [slot_id]
    assert failed_errors(log) == [error]


@pytest.mark.mariadb
def test_innodb_serializable_write_skew_waits_and_the_guard_refuses(
        maria_faults: Faults) -> None:
    """The write skew of the PostgreSQL test above: InnoDB's shared locks make the second
    guard's read wait for the first's commit, and then read it, so the second is refused
    (GuardError: not retryable, the row refuses), not failed."""
    faults = maria_faults
    a, b = faults.add(2)
    serializable = faults.engine.execution_options(isolation_level="SERIALIZABLE")
    two_pid: list[int] = []
    ready = threading.Event()

    def second() -> BaseException | None:
        with Session(serializable) as two:
            two_pid.append(faults.pid(two))
            slot = load(two, Slot, b)
            ready.set()
            try:
                slot.hold()  # the guard's read waits for one's lock on a
            except litestate.TransitionError as refusal:
                two.rollback()
                return refusal
            two.commit()
            return None

    with recording() as log, Session(serializable) as one:
        load(one, Slot, a).hold()

        def main() -> None:
            assert ready.wait(30)
            faults.wait_for_lock(two_pid[0])
            one.commit()

        [refusal] = run_threads([second], main)
    assert isinstance(refusal, GuardError)
    assert not is_retryable(refusal)
    assert [faults.row(a)[:2], faults.row(b)[:2]] == [("held", 1), ("free", 0)]
    assert committed_ids(log) == [a]
    assert failed_errors(log) == []


@pytest.mark.mariadb
def test_innodb_lock_wait_timeout_is_whole_seconds_and_rolls_back_the_statement(
        maria_faults: Faults) -> None:
    """A real wait of InnoDB's shortest timeout, one second (the other tests use 0, which
    gives up at once with the same error): the statement alone is rolled back, so the
    transition's SAVEPOINT and the caller's earlier work survive."""
    faults = maria_faults
    [slot_id] = faults.add()
    with Session(faults.engine) as holder, recording() as log, \
            Session(faults.engine) as session:
        held = holder.get(Slot, slot_id, with_for_update=True)
        assert held is not None
        slot = load(session, Slot, slot_id)
        faults.lock_timeout(session, 1000)
        session.add(Slot(by="earlier"))
        session.flush()
        started = time.monotonic()
        with pytest.raises(sa_exc.OperationalError) as info:
            slot.claim("ada")
        assert time.monotonic() - started >= 1.0  # InnoDB waited its second
        assert faults.code(info.value) == faults.codes["lock_timeout"]
        assert (slot.state, slot.hits) == ("free", 0)
        holder.rollback()
        slot.claim("ada")  # the transaction goes on
        session.commit()
    assert faults.row(slot_id) == ("taken", 1, "ada")
    assert committed_ids(log) == [slot_id]
    assert failed_errors(log) == [info.value]


# -- lock timeouts --------------------------------------------------------------------------


@pytest.mark.parametrize("route", [*WRITES, pytest.param(LOCKED, id="lock")])
def test_a_lock_timeout_fails_the_transition_and_leaves_the_row(
        faults: Faults, route: Route) -> None:
    """Another transaction holds the row: the lock (``lock=True``) or the UPDATE waits,
    then the server gives up. In a SAVEPOINT the caller's transaction goes on; else the
    session refuses until rollback(). Either way the object then shows the row as the
    holder, who then took it, committed it."""
    [slot_id] = faults.add()
    with Session(faults.engine) as holder, recording(*route.signals) as log, \
            Session(faults.engine) as session:
        held = holder.get(Slot, slot_id, with_for_update=True)
        assert held is not None
        slot = load(session, Slot, slot_id)
        faults.lock_timeout(session, 20)
        session.add(Slot(by="earlier"))  # the caller's earlier work
        session.flush()
        with pytest.raises(sa_exc.OperationalError) as info:
            route.fire(slot)
        assert faults.code(info.value) == faults.codes["lock_timeout"]
        assert is_retryable(info.value)
        assert failed_errors(log) == [info.value]
        if route.keeps_transaction:
            assert (slot.state, slot.hits) == ("free", 0)  # as read, in this transaction
        held.claim("holder")
        holder.commit()
        if route.keeps_transaction:
            session.commit()
        else:  # every use raises until rollback(), reading the object too
            with pytest.raises(sa_exc.PendingRollbackError):
                session.commit()
            session.rollback()
        assert (slot.state, slot.hits, slot.by) == ("taken", 1, "holder")
    assert faults.row(slot_id) == ("taken", 1, "holder")
    with Session(faults.engine) as check:
        kept = check.scalars(sa.select(Slot.by).where(Slot.by == "earlier")).all()
    assert kept == (["earlier"] if route.keeps_transaction else [])
    assert committed_ids(log) == [slot_id]


# -- a commit the database turns into a rollback ---------------------------------------------


@pytest.mark.parametrize("bind", ["engine", "connection"])
def test_a_commit_of_a_transaction_the_database_aborted_sends_no_committed(
        faults: Faults, bind: str) -> None:
    """After the transition, a statement of the caller's times out and the caller goes on
    (wrongly) and commits. PostgreSQL has aborted the transaction: it answers COMMIT with
    a ROLLBACK, the driver raises nothing, and litestate must not report the write as
    committed. On every server: a transition_committed exactly when the row changed."""
    [slot_id, locked_id] = faults.add(2)
    stuck = sa.select(Slot).where(Slot.id == locked_id).with_for_update()
    with Session(faults.engine) as holder, recording() as log:
        holder.get(Slot, locked_id, with_for_update=True)
        if bind == "engine":
            with Session(faults.engine) as session:
                load(session, Slot, slot_id).claim("ada")
                faults.lock_timeout(session, 20)
                with pytest.raises(sa_exc.OperationalError):
                    session.execute(stuck)
                session.commit()
        else:  # a session in the caller's transaction: the caller's commit decides
            with faults.engine.connect() as conn:
                outer = conn.begin()
                with Session(bind=conn, join_transaction_mode="create_savepoint") as session:
                    load(session, Slot, slot_id).claim("ada")
                    session.commit()  # releases the session's SAVEPOINT
                faults.lock_timeout(conn, 20)
                with pytest.raises(sa_exc.OperationalError):
                    conn.execute(stuck)
                outer.commit()
        holder.rollback()
    changed = faults.row(slot_id)[0] == "taken"
    assert committed_ids(log) == ([slot_id] if changed else [])
    if isinstance(faults, PostgresFaults):
        assert not changed
    else:  # InnoDB rolled back the timed-out statement alone: the commit keeps the claim
        assert changed


# -- retrying, on real faults ---------------------------------------------------------------


def test_retrying_runs_the_unit_again_after_a_lock_timeout(faults: Faults) -> None:
    [slot_id] = faults.add()
    tries: list[int] = []
    with Session(faults.engine) as holder, recording() as log:
        holder.get(Slot, slot_id, with_for_update=True)

        def release(retry: int) -> float:  # the holder commits while the worker backs off
            holder.commit()
            return 0.0

        for attempt in retrying(attempts=3, backoff=release):
            with attempt, Session(faults.engine) as session, session.begin():
                tries.append(attempt.number)
                faults.lock_timeout(session, 20)
                load(session, Slot, slot_id).take("worker")
    assert tries == [1, 2]
    assert faults.row(slot_id) == ("taken", 1, "worker")
    assert committed_ids(log) == [slot_id]
    [error] = failed_errors(log)
    assert faults.code(error) == faults.codes["lock_timeout"]


def test_retrying_gives_up_after_its_attempts_with_the_last_error(faults: Faults) -> None:
    [slot_id] = faults.add()
    tries: list[int] = []
    waits: list[int] = []

    def backoff(retry: int) -> float:
        waits.append(retry)
        return 0.0

    def unit() -> None:
        for attempt in retrying(attempts=3, backoff=backoff):
            with attempt, Session(faults.engine) as session, session.begin():
                tries.append(attempt.number)
                faults.lock_timeout(session, 20)
                load(session, Slot, slot_id).take("worker")

    with Session(faults.engine) as holder, recording() as log:
        holder.get(Slot, slot_id, with_for_update=True)
        with pytest.raises(sa_exc.OperationalError) as info:
            unit()
        holder.rollback()
    assert (tries, waits) == ([1, 2, 3], [1, 2])
    errors = failed_errors(log)
    assert len(errors) == 3
    assert info.value is errors[-1]
    assert faults.row(slot_id) == ("free", 0, None)
    assert committed_ids(log) == []


def test_retrying_stops_at_once_on_a_refusal(faults: Faults) -> None:
    [slot_id] = faults.add()
    with Session(faults.engine) as session:
        load(session, Slot, slot_id).claim("first")
        session.commit()
    tries: list[int] = []

    def unit() -> None:
        for attempt in retrying(attempts=3, backoff=0):
            with attempt, Session(faults.engine) as session, session.begin():
                tries.append(attempt.number)
                load(session, Slot, slot_id).claim("second")

    with pytest.raises(InvalidStateError):
        unit()
    assert tries == [1]


def test_retrying_runs_a_deadlock_victim_again_and_both_units_apply_once(
        faults: Faults) -> None:
    """The loser of the deadlock takes both rows again, after the winner: each row is
    taken twice, by two committed units, and by no half of one."""
    a, b = faults.add(2)
    holding = threading.Barrier(3, timeout=30)
    first_waits = threading.Event()
    pids: dict[int, int] = {}
    tries: dict[int, list[int]] = {0: [], 1: []}

    def worker(i: int) -> None:
        order = (a, b) if i == 0 else (b, a)
        for attempt in retrying(attempts=3, backoff=0):
            with attempt, Session(faults.engine) as session, session.begin():
                tries[i].append(attempt.number)
                faults.detect_deadlocks(session, 10 if i else 10_000)
                pids[i] = faults.pid(session)
                load(session, Slot, order[0]).take(f"w{i}")
                if attempt.number == 1:
                    holding.wait()
                    if i:
                        assert first_waits.wait(30)
                load(session, Slot, order[1]).take(f"w{i}")

    def main() -> None:
        holding.wait()
        faults.wait_for_lock(pids[0])
        first_waits.set()

    with recording() as log:
        run_threads([lambda: worker(0), lambda: worker(1)], main, [holding])
    assert sorted(len(t) for t in tries.values()) == [1, 2]
    loser = "w0" if len(tries[0]) == 2 else "w1"
    assert [faults.row(a), faults.row(b)] == [("taken", 2, loser)] * 2
    assert committed_ids(log) == sorted([a, b, a, b])
    [error] = failed_errors(log)
    assert faults.code(error) == faults.codes["deadlock"]


# -- SQLite: one writer at a time -----------------------------------------------------------


def sqlite_slots(path: Path, *, timeout: float, begin: Begin = "DEFERRED") -> sa.Engine:
    """A SQLite file; ``timeout`` is the driver's busy timeout (5 s by default)."""
    engine = enable_savepoints(sa.create_engine(f"sqlite:///{path}",
                                                connect_args={"timeout": timeout}),
                               begin=begin)
    FaultBase.metadata.create_all(engine)
    return engine


@pytest.fixture
def sqlite_faults(tmp_path: Path) -> Iterator[Faults]:
    engine = sqlite_slots(tmp_path / "faults.db", timeout=0.05)
    yield Faults(engine)
    engine.dispose()


def sqlite_code(error: BaseException) -> object:
    return getattr(getattr(error, "orig", None), "sqlite_errorcode", None)


SQLITE_BUSY = 5


@pytest.mark.parametrize("route", WRITES)
def test_sqlite_busy_fails_the_second_writer_and_leaves_the_row(
        sqlite_faults: Faults, route: Route) -> None:
    """Two transactions read the row; the first writes it and holds SQLite's write lock:
    the second's UPDATE gets "database is locked" (SQLITE_BUSY), an OperationalError,
    not a ConflictError (the row it read may never have changed): retryable."""
    [slot_id] = sqlite_faults.add()
    engine = sqlite_faults.engine
    with Session(engine) as first, recording(*route.signals) as log, Session(engine) as second:
        load(first, Slot, slot_id).claim("first")
        slot = load(second, Slot, slot_id)
        with pytest.raises(sa_exc.OperationalError, match="database is locked") as info:
            route.fire(slot)
        assert sqlite_code(info.value) == SQLITE_BUSY
        assert is_retryable(info.value)
        assert failed_errors(log) == [info.value]
        if route.keeps_transaction:
            assert (slot.state, slot.hits) == ("free", 0)
            second.commit()
        else:
            with pytest.raises(sa_exc.PendingRollbackError):
                second.commit()
            second.rollback()
        first.commit()
        assert (slot.state, slot.hits, slot.by) == ("taken", 1, "first")  # read again
    assert sqlite_faults.row(slot_id) == ("taken", 1, "first")
    assert committed_ids(log) == [slot_id]


def test_sqlite_busy_at_commit_sends_no_committed(sqlite_faults: Faults) -> None:
    """The writer's COMMIT waits for a reader's open transaction, past the busy timeout:
    the commit raises, nothing is committed or reported, and a retry goes through."""
    [slot_id] = sqlite_faults.add()
    engine = sqlite_faults.engine
    with recording() as log, Session(engine) as writer, Session(engine) as reader:
        slot = load(writer, Slot, slot_id)
        slot.claim("writer")
        load(reader, Slot, slot_id)  # a read in an open transaction
        with pytest.raises(sa_exc.OperationalError, match="database is locked") as info:
            writer.commit()
        assert sqlite_code(info.value) == SQLITE_BUSY
        assert is_retryable(info.value)
        assert committed_ids(log) == []
        writer.rollback()
        assert slot.state == "free"
        reader.rollback()
        slot.claim("writer")
        writer.commit()
    assert sqlite_faults.row(slot_id) == ("taken", 1, "writer")
    assert committed_ids(log) == [slot_id]


@pytest.mark.parametrize("stale", [True, False], ids=["stale-object", "fresh-read"])
def test_sqlite_begin_immediate_makes_the_second_writer_wait_and_be_refused(
        tmp_path: Path, stale: bool) -> None:
    """The issue's two-request race: with ``begin="IMMEDIATE"`` writers queue at BEGIN
    (for the busy timeout) instead of meeting mid-transaction, so the second request gets
    the refusal a race deserves, whether it reaches BEGIN before or after the first
    commits: ConflictError for an object read before, InvalidStateError for a fresh read."""
    engine = sqlite_slots(tmp_path / "immediate.db", timeout=30, begin="IMMEDIATE")
    faults = Faults(engine)
    [slot_id] = faults.add()
    try:
        with Session(engine, expire_on_commit=False) as first, \
                Session(engine, expire_on_commit=False) as second, recording() as log:
            theirs = load(second, Slot, slot_id)
            second.commit()  # as a web request that showed the form
            if not stale:
                second.expire(theirs)
            load(first, Slot, slot_id).claim("first")  # holds the write lock
            asking = threading.Event()

            def request() -> BaseException | None:
                asking.set()
                try:
                    theirs.claim("second")  # BEGIN IMMEDIATE waits for the first's commit
                except litestate.TransitionError as refusal:
                    second.rollback()
                    return refusal
                return None

            def main() -> None:
                assert asking.wait(30)
                first.commit()

            [refusal] = run_threads([request], main)
        assert isinstance(refusal, ConflictError if stale else InvalidStateError)
        assert is_retryable(refusal) == stale  # a retry reads again, and is refused
        assert faults.row(slot_id) == ("taken", 1, "first")
        assert committed_ids(log) == [slot_id]
    finally:
        engine.dispose()


def test_enable_savepoints_refuses_an_unknown_begin(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ValueError, match=r"'LATER'.*DEFERRED, IMMEDIATE or EXCLUSIVE"):
        enable_savepoints(engine, begin="LATER")  # type: ignore[arg-type]
    engine.dispose()
