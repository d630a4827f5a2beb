"""litestate.claim, leases, renew and reclaim: queue workers on SQLite, PostgreSQL and
MariaDB, threads and processes, stalled workers, and the path of databases without
RETURNING (MariaDB's own, forced on the others)."""

from __future__ import annotations

import functools
import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import litestate
from litestate import ConflictError, DeclarationError, bulk, claim, reclaim, renew
from tests.claim_worker import (
    INNODB_LOCK_WAIT_S,
    LOCK_TIMEOUT_MS,
    claim_until_empty,
    process_main,
    row_lock_waits,
    worker_engine,
)
from tests.conftest import SignalLog, StatementLog, load
from tests.queue_models import Job, JobLog, QueueBase, Seat

_T = TypeVar("_T")


@pytest.fixture
def db(engine: sa.Engine) -> Iterator[sa.Engine]:
    QueueBase.metadata.drop_all(engine)
    QueueBase.metadata.create_all(engine)
    yield engine
    QueueBase.metadata.drop_all(engine)


@pytest.fixture
def pg_db(pg: sa.Engine) -> Iterator[sa.Engine]:
    QueueBase.metadata.drop_all(pg)
    QueueBase.metadata.create_all(pg)
    yield pg
    QueueBase.metadata.drop_all(pg)


@pytest.fixture
def maria_db(maria: sa.Engine) -> Iterator[sa.Engine]:
    QueueBase.metadata.drop_all(maria)
    QueueBase.metadata.create_all(maria)
    yield maria
    QueueBase.metadata.drop_all(maria)


@pytest.fixture(params=[None, "select-then-update"], ids=["default", "select-then-update"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    monkeypatch.setattr(bulk, "_force_path", request.param)
    return request.param  # type: ignore[no-any-return]


def seed(session: Session, count: int) -> None:
    session.add_all(Job(priority=i % 4) for i in range(count))
    session.commit()


def until(what: str, ask: Callable[[], _T | None], seconds: float = 30) -> _T:
    """Poll ``ask`` until it answers; the database, not a sleep, says when."""
    deadline = time.monotonic() + seconds
    while True:
        answer = ask()
        if answer:
            return answer
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: no answer in {seconds} s")
        time.sleep(0.01)


def expired(session: Session, job_id: int) -> bool:
    """Whether the database's clock says the job's lease has expired."""
    found = session.scalar(sa.select(Job.id).where(
        Job.id == job_id, Job.lease_expires_at <= bulk.db_now()))
    session.rollback()
    return found is not None


def states(session: Session) -> dict[int, str]:
    return {row.id: row.state for row in session.execute(sa.select(Job.id, Job.state))}


def log_of(session: Session, job_id: int) -> list[tuple[str, str, str]]:
    return [(r.event, r.from_state, r.to_state) for r in session.scalars(
        sa.select(JobLog).where(JobLog.job_id == job_id).order_by(JobLog.id))]


# -- claim -----------------------------------------------------------------------------------


def test_claim_takes_the_first_rows_in_order_and_loads_them(db: sa.Engine, path: str | None,
                                                           signals: SignalLog) -> None:
    with Session(db) as session:
        seed(session, 10)
        held = load(session, Job, 4)
        jobs = claim(session, Job.start, where=Job.priority > 0,
                     order_by=[Job.priority.desc(), Job.id], limit=3)
        assert sorted(job.id for job in jobs) == [3, 4, 8]
        assert held in jobs
        assert held.state == "running"
        assert all(job.state == "running" and job.started_at is not None for job in jobs)
        assert all(job in session for job in jobs)
        session.commit()
        assert sorted(h.payload["record_id"] for h in signals.of("transition-committed")) \
            == [3, 4, 8]
        assert all(h.payload["record"] in jobs for h in signals.of("transition-committed"))
        assert [log_of(session, i) for i in (3, 4, 8)] == [[("start", "queued", "running")]] * 3
        assert sorted(job.id for job in claim(session, Job.start, limit=100)) == [
            1, 2, 5, 6, 7, 9, 10]
        assert claim(session, Job.start) == []


def test_claim_sends_one_statement_on_postgresql(pg_db: sa.Engine) -> None:
    pg = pg_db
    statements: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.split()[0])

    with Session(pg) as session:
        seed(session, 3)
        session.connection()
        sa.event.listen(pg, "before_cursor_execute", before)
        try:
            claim(session, Job.start, lease=timedelta(minutes=1))
        finally:
            sa.event.remove(pg, "before_cursor_execute", before)
        assert statements == ["WITH"]  # UPDATE ... RETURNING and the log INSERT


def test_claim_on_mariadb_locks_skipping_locked_rows_then_updates_by_keys_then_loads(
        maria_db: sa.Engine) -> None:
    """No UPDATE ... RETURNING: the rows chosen are locked (SKIP LOCKED), updated by their
    keys, loaded; the log rows follow; a SAVEPOINT makes the five one step."""
    statements: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.split()))

    with Session(maria_db) as session:
        seed(session, 3)
        session.connection()
        sa.event.listen(maria_db, "before_cursor_execute", before)
        try:
            [job] = claim(session, Job.start, order_by=[Job.id], lease=timedelta(minutes=1))
        finally:
            sa.event.remove(maria_db, "before_cursor_execute", before)
    assert [s.split()[0] for s in statements] == [
        "SAVEPOINT", "SELECT", "UPDATE", "SELECT", "INSERT", "RELEASE"]
    assert statements[1].endswith("ORDER BY queue_jobs.id LIMIT %(param_1)s "
                                  "FOR UPDATE SKIP LOCKED")
    assert "WHERE queue_jobs.id IN (__[POSTCOMPILE_id_1])" in statements[2] or \
        "WHERE queue_jobs.id IN (%(id_1_1)s)" in statements[2]
    assert "UTC_TIMESTAMP(6)" in statements[2]
    assert job.id == 1


@pytest.fixture
def server_db(server: sa.Engine) -> Iterator[sa.Engine]:
    QueueBase.metadata.drop_all(server)
    QueueBase.metadata.create_all(server)
    yield server
    QueueBase.metadata.drop_all(server)


def test_claim_skips_rows_another_transaction_holds_without_waiting(
        server_db: sa.Engine) -> None:
    engine = worker_engine(server_db.url.render_as_string(hide_password=False))
    waits = row_lock_waits(server_db) if engine.dialect.name == "mysql" else 0
    try:
        with Session(server_db) as other, Session(engine) as session:
            seed(other, 3)
            other.execute(sa.select(Job).where(Job.id == 1).with_for_update())  # holds row 1
            jobs = claim(session, Job.start, order_by=[Job.id], limit=2)
            assert sorted(job.id for job in jobs) == [2, 3]
            session.commit()
            assert claim(session, Job.start) == []
            other.commit()
            assert [job.id for job in claim(session, Job.start)] == [1]
        if engine.dialect.name == "mysql":
            assert row_lock_waits(server_db) == waits  # not even for a microsecond
    finally:
        engine.dispose()


# -- leases ------------------------------------------------------------------------------------


def test_a_lease_records_a_fresh_owner_token_and_an_expiry_by_the_databases_clock(
        db: sa.Engine, path: str | None) -> None:
    with Session(db) as session:
        seed(session, 3)
        first = claim(session, Job.start, limit=2, lease=timedelta(minutes=5))
        second = claim(session, Job.start, lease=timedelta(minutes=5))
        owners = {job.lease_owner for job in first}
        assert len(owners) == 1
        assert second[0].lease_owner not in owners
        token = second[0].lease_owner
        assert token is not None
        assert len(token) == 32
        assert int(token, 16) >= 0
        now = session.scalar(sa.select(bulk.db_now()))
        assert now is not None
        expires = second[0].lease_expires_at
        assert expires is not None
        ahead = expires.replace(tzinfo=None) - now.replace(tzinfo=None)
        assert timedelta(minutes=4) < ahead <= timedelta(minutes=5)


def test_a_lease_is_kept_to_the_microsecond(db: sa.Engine, path: str | None) -> None:
    """The expiry is the claim's clock reading plus the lease, not cut to the second (a
    DATETIME of MariaDB's would be): read the clock before and after the claim."""
    with Session(db) as session:
        seed(session, 1)
        session.commit()
        before = session.scalar(sa.select(bulk.db_now()))
        session.rollback()  # PostgreSQL: another statement's clock, in any case
        [job] = claim(session, Job.start, lease=timedelta(seconds=30))
        session.commit()
        after = session.scalar(sa.select(bulk.db_now()))
        assert before is not None
        assert after is not None
        stored = session.scalar(sa.select(Job.lease_expires_at))
        assert stored is not None
        lease = timedelta(seconds=30)
        assert before.replace(tzinfo=None) + lease <= stored.replace(tzinfo=None) <= \
            after.replace(tzinfo=None) + lease
        assert stored == job.lease_expires_at


def test_mariadb_judges_leases_by_one_clock_whatever_a_sessions_time_zone(
        maria_db: sa.Engine) -> None:
    """A worker whose connection sets another time_zone (NOW() would move with it) writes
    leases the others judge by the same clock: UTC_TIMESTAMP()."""
    url = maria_db.url.render_as_string(hide_password=False)
    zoned = sa.create_engine(url, poolclass=sa.pool.NullPool,
                             connect_args={"init_command": "SET time_zone = '-05:00'"})
    try:
        with Session(zoned) as west, Session(maria_db) as rescuer:
            seed(west, 1)
            assert west.scalar(sa.text("SELECT @@time_zone")) == "-05:00"
            [job] = claim(west, Job.start, lease=timedelta(minutes=5))
            west.commit()
            assert reclaim(rescuer, Job.requeue) == []  # five minutes to go, for everyone
            rescuer.rollback()
            assert renew(job, timedelta(minutes=5)) is True
            job.finish()
            west.commit()
            assert states(rescuer) == {1: "done"}
    finally:
        zoned.dispose()


def test_at_the_instant_a_lease_expires_renew_refuses_and_reclaim_takes_it(
        maria_db: sa.Engine) -> None:
    """MariaDB's clock pinned (SET timestamp moves UTC_TIMESTAMP(6)) to the microsecond of
    the expiry: the lease is over, for its holder as for a reclaim."""
    pinned = 1_900_000_000.25
    with maria_db.connect() as conn, Session(conn) as session:  # one connection: its clock
        seed(session, 1)
        try:
            session.execute(sa.text("SET timestamp = :at"), {"at": pinned})
            [job] = claim(session, Job.start, lease=timedelta(seconds=30))
            session.commit()
            session.execute(sa.text("SET timestamp = :at"), {"at": pinned + 30})
            assert renew(job, timedelta(minutes=5)) is False
            assert reclaim(session, Job.requeue) == [job.id]
            session.commit()
        finally:
            session.rollback()
            conn.execute(sa.text("SET timestamp = DEFAULT"))
            conn.commit()


def test_renew_extends_only_the_holders_lease(db: sa.Engine, path: str | None) -> None:
    with Session(db, expire_on_commit=False) as session, Session(db) as other:
        seed(session, 2)
        [job] = claim(session, Job.start, lease=timedelta(seconds=30))
        session.commit()
        expires = job.lease_expires_at
        assert expires is not None
        assert renew(job, timedelta(minutes=10)) is True
        renewed = job.lease_expires_at
        assert renewed is not None
        assert renewed > expires
        session.commit()
        stranger = load(other, Job, job.id)
        assert renew(stranger, timedelta(minutes=10)) is False  # it claimed nothing
        [unleased] = claim(session, Job.start)
        assert renew(unleased, timedelta(minutes=1)) is False


def test_a_leased_transition_ends_the_lease(db: sa.Engine, path: str | None) -> None:
    with Session(db) as session:
        seed(session, 1)
        [job] = claim(session, Job.start, lease=timedelta(minutes=5))
        session.commit()
        job.finish()
        assert (job.state, job.lease_owner, job.lease_expires_at) == ("done", None, None)
        session.commit()
        assert (job.state, job.lease_owner, job.lease_expires_at) == ("done", None, None)
        assert log_of(session, job.id) == [("start", "queued", "running"),
                                           ("finish", "running", "done")]


def test_a_claim_rolled_back_with_its_savepoint_leaves_its_objects_showing_the_row(
        db: sa.Engine, path: str | None) -> None:
    """The claimed objects were loaded (with the claim's state and lease); the SAVEPOINT's
    rollback expires them, so they show the row again, as it was."""
    with Session(db) as session:
        seed(session, 2)
        savepoint = session.begin_nested()
        jobs = claim(session, Job.start, limit=2, lease=timedelta(minutes=5))
        assert {(job.state, job.lease_owner is None) for job in jobs} == {("running", False)}
        savepoint.rollback()
        assert {(job.state, job.lease_owner, job.started_at) for job in jobs} == {
            ("queued", None, None)}


@pytest.mark.parametrize("expire_on_commit", [True, False])
def test_a_stalled_worker_loses_its_lease_to_one_that_reclaims_and_finishes(
        db: sa.Engine, path: str | None, expire_on_commit: bool) -> None:
    with Session(db, expire_on_commit=expire_on_commit) as stalled, \
            Session(db) as rescuer, Session(db) as clock:
        seed(stalled, 2)
        [job] = claim(stalled, Job.start, order_by=[Job.id], lease=timedelta(milliseconds=300))
        assert job.id == 1
        stalled.commit()  # and stalls: no transaction of its is open (SQLite: no lock held)
        def reclaimed() -> list[Any]:
            keys = reclaim(rescuer, Job.requeue)
            if not keys:
                rescuer.rollback()  # the next poll reads the clock in a new transaction
            return keys

        keys = until("the lease expires", reclaimed)
        assert keys == [1]
        rescuer.commit()
        [again] = claim(rescuer, Job.start, order_by=[Job.id], lease=timedelta(minutes=5))
        assert again.id == 1
        rescuer.commit()
        again.finish()
        rescuer.commit()

        assert renew(job, timedelta(minutes=5)) is False
        with pytest.raises(ConflictError) as info:
            job.finish()
        assert (info.value.reason, info.value.event) == ("conflict", "finish")
        assert "lease is lost" in info.value.detail
        stalled.commit()
        assert states(clock) == {1: "done", 2: "queued"}
        assert log_of(clock, 1) == [("start", "queued", "running"),
                                    ("requeue", "running", "queued"),
                                    ("start", "queued", "running"),
                                    ("finish", "running", "done")]


def test_an_expired_lease_refuses_its_holder_before_any_reclaim(db: sa.Engine,
                                                                 path: str | None) -> None:
    with Session(db, expire_on_commit=False) as session, Session(db) as clock:
        seed(session, 1)
        [job] = claim(session, Job.start, lease=timedelta(milliseconds=200))
        session.commit()
        until("the lease expires", lambda: expired(clock, job.id))
        assert renew(job, timedelta(minutes=5)) is False
        with pytest.raises(ConflictError) as info:
            job.finish()
        assert "lease expired" in info.value.detail
        session.rollback()
        assert states(clock) == {1: "running"}


def test_a_leased_transition_on_an_object_no_claim_returned_is_a_conflict(
        db: sa.Engine) -> None:
    with Session(db) as session, Session(db) as other:
        seed(session, 1)
        claim(session, Job.start, lease=timedelta(minutes=5))
        session.commit()
        with pytest.raises(ConflictError, match="holds no lease"):
            load(other, Job, 1).finish()
        other.rollback()
        assert states(other) == {1: "running"}


def test_reclaim_moves_only_expired_leases_and_ends_them(db: sa.Engine, path: str | None,
                                                         signals: SignalLog) -> None:
    with Session(db) as session, Session(db) as clock:
        seed(session, 4)
        short = claim(session, Job.start, order_by=[Job.id], limit=2,
                      lease=timedelta(milliseconds=200))
        long = claim(session, Job.start, order_by=[Job.id], lease=timedelta(minutes=5))
        unleased = claim(session, Job.start)
        session.commit()
        assert [j.id for j in long] == [3]
        assert [j.id for j in unleased] == [4]
        for job_id in (1, 2):
            until("the lease expires", functools.partial(expired, clock, job_id))
        signals.clear()
        assert sorted(reclaim(session, Job.requeue)) == [1, 2]
        assert all((j.state, j.lease_owner, j.lease_expires_at) == ("queued", None, None)
                   for j in short)
        assert reclaim(session, Job.requeue) == []
        session.commit()
        assert sorted(h.payload["record_id"] for h in signals.of("transition-committed")) \
            == [1, 2]
        assert states(clock) == {1: "queued", 2: "queued", 3: "running", 4: "running"}


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("call", "error", "words"), [
    (lambda s: claim(s, Job.finish), TypeError, "leased=True"),
    (lambda s: claim(s, Job.start, limit=0), ValueError, "positive int"),
    (lambda s: claim(s, Job.start, limit=None), TypeError, "positive int"),  # type: ignore[arg-type]
    (lambda s: claim(s, Job.start, lease=timedelta(0)), ValueError, "longer than zero"),
    (lambda s: claim(s, Job.start, lease=30), TypeError, "timedelta"),  # type: ignore[arg-type]
    (lambda s: claim(s, Seat.hold, lease=timedelta(1)), TypeError, "no lease columns"),
    (lambda s: claim(s, Job.start, order_by=[JobLog.id]), ValueError, "queue_job_log"),
    (lambda s: claim(s, Job.start, order_by=["id"]), TypeError, "order_by"),
    (lambda s: reclaim(s, Seat.hold), TypeError, "no lease columns"),
    (lambda s: reclaim(s, Job.finish), TypeError, "leased=True"),
], ids=["leased event", "limit 0", "limit None", "zero lease", "int lease", "no Lease",
        "order by another table", "order by a string", "reclaim without Lease",
        "reclaim a leased event"])
def test_bad_claims_are_refused_before_any_sql(db: sa.Engine, sql: StatementLog,
                                               call: Callable[[Session], Any],
                                               error: type[Exception], words: str) -> None:
    with Session(db) as session:
        seed(session, 2)
        session.connection()
        sql.statements.clear()
        with pytest.raises(error, match=words):
            call(session)
        assert sql.statements == []


def test_renew_takes_a_timedelta(db: sa.Engine) -> None:
    with Session(db) as session:
        seed(session, 1)
        [job] = claim(session, Job.start, lease=timedelta(minutes=1))
        with pytest.raises(TypeError, match="timedelta"):
            renew(job, 60)  # type: ignore[arg-type]


def test_leased_needs_the_lease_columns() -> None:
    class Other(DeclarativeBase):
        pass

    @litestate.state_column("state")
    class Unleased(Other):
        __tablename__ = "unleased"
        id: Mapped[int] = mapped_column(primary_key=True)
        state: Mapped[str] = mapped_column(sa.String(20))

        @litestate.transition(frm="a", to="b", leased=True)
        def go(self) -> None:
            pass

    with pytest.raises(DeclarationError, match=r"Unleased\.go: leased=True needs the lease"):
        sa.orm.configure_mappers()
    Other.registry.dispose()


def test_leased_is_a_flag() -> None:
    with pytest.raises(DeclarationError, match="leased=1"):
        litestate.transition(frm="a", to="b", leased=1)  # type: ignore[arg-type]


# -- many workers: each job claimed exactly once, nobody waits ----------------------------------

JOBS = 2000


@pytest.mark.timeout(600)
def test_threads_and_processes_claim_every_job_exactly_once(db: sa.Engine, tmp_path: Any,
                                                            ) -> None:
    """8 threads (one engine) and 4 spawned processes (an engine each) claim from 2,000
    jobs until none is left. On PostgreSQL every connection has a lock_timeout of 20 ms,
    so a worker that waited on another's lock would fail; on MariaDB, whose lock wait
    timeout counts seconds, InnoDB's count of row lock waits must not move."""
    url = db.url.render_as_string(hide_password=False)
    waits = row_lock_waits(db) if db.dialect.name == "mysql" else 0
    with Session(db) as session:
        session.add_all(Job() for _ in range(JOBS))
        session.commit()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(12)
    results = context.Queue()
    processes = [context.Process(target=process_main, args=(url, f"process-{i}", barrier,
                                                             results)) for i in range(4)]
    for process in processes:
        process.start()
    engine = worker_engine(url)
    outcome: dict[str, tuple[Any, int]] = {}

    def thread_main(name: str) -> None:
        try:
            outcome[name] = claim_until_empty(engine, name, barrier.wait)
        except BaseException as exc:
            outcome[name] = (repr(exc), -1)
            raise

    threads = [threading.Thread(target=thread_main, args=(f"thread-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for _ in processes:
        name, claimed, heard = results.get(timeout=300)
        outcome[name] = (claimed, heard)
    for process in processes:
        process.join(timeout=60)
    engine.dispose()

    failed = {name: claimed for name, (claimed, heard) in outcome.items() if heard < 0}
    assert failed == {}, f"workers failed (lock_timeout {LOCK_TIMEOUT_MS} ms): {failed}"
    claims = Counter(i for claimed, _ in outcome.values() for i in claimed)
    assert len(claims) == JOBS
    assert set(claims.values()) == {1}
    assert all(claimed for claimed, _ in outcome.values()), "every worker claimed jobs"
    assert {name: heard for name, (_, heard) in outcome.items()} == {
        name: len(claimed) for name, (claimed, _) in outcome.items()}
    with Session(db) as session:
        assert set(states(session).values()) == {"running"}
        by_worker = Counter(session.scalars(sa.select(JobLog.worker).where(
            JobLog.event == "start")))
        assert dict(by_worker) == {name: len(claimed)
                                   for name, (claimed, _) in outcome.items()}
    if db.dialect.name == "mysql":
        assert row_lock_waits(db) == waits, "a worker waited on another's lock"


def test_a_worker_that_waited_on_a_lock_would_fail(server_db: sa.Engine) -> None:
    """What makes the test above prove that nobody waits: the workers' lock timeout, and
    on MariaDB InnoDB's count of row lock waits, which the wait moves."""
    engine = worker_engine(server_db.url.render_as_string(hide_password=False))
    maria = engine.dialect.name == "mysql"
    waits = row_lock_waits(server_db) if maria else 0
    try:
        with Session(server_db) as other, Session(engine) as session:
            seed(other, 1)
            other.execute(sa.select(Job).where(Job.id == 1).with_for_update())
            with pytest.raises(sa.exc.OperationalError,
                               match="Lock wait timeout" if maria else "lock timeout"):
                session.execute(sa.update(Job).values(priority=5))
            if maria:
                assert session.scalar(sa.text("SELECT @@innodb_lock_wait_timeout")) == \
                    INNODB_LOCK_WAIT_S
        if maria:
            assert row_lock_waits(server_db) > waits
    finally:
        engine.dispose()
