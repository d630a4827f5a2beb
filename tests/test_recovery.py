"""Error states (``on_error=``): a raising body leaves its row in a state that says so,
with the error recorded, in the caller's transaction and past its rollback; on SQLite
and PostgreSQL (and asyncio)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    configure_mappers,
    mapped_column,
    object_session,
)

import litestate
import litestate.aio
from litestate import (
    ConflictError,
    DeclarationError,
    GuardError,
    InvalidStateError,
    TransitionLog,
    history,
    log_data,
    recovery,
    state_column,
    transition,
    transitions,
)
from litestate.sqlite import enable_savepoints
from tests.conftest import FROZEN, SignalLog, load


class RecoveryBase(DeclarativeBase):
    pass


class JobLog(TransitionLog, RecoveryBase):
    __tablename__ = "rec_job_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(sa.ForeignKey("rec_jobs.id"))


class FetchFailed(Exception):
    pass


class Stop(BaseException):
    """Not an Exception: a cancellation, a KeyboardInterrupt."""


@state_column("status", log=JobLog, changed_at="status_changed_at", attempts="attempts",
              last_error="last_error", last_error_at="last_error_at")
class Job(RecoveryBase):
    __tablename__ = "rec_jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="queued")
    status_changed_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(sa.String(200))
    last_error_at: Mapped[datetime | None]
    note: Mapped[str | None] = mapped_column(sa.String(40))

    @transition(frm=["queued", "fetch_failed"], to="fetching")
    def start(self) -> None:
        pass

    @transition(frm="fetching", to="fetched", on_error="fetch_failed")
    def fetch(self, fail: bool = True, message: str = "upstream said no") -> None:
        self.note = "written by the body"
        log_data(url="https://example.com/1")
        if fail:
            raise FetchFailed(message)

    @transition(frm="fetching", to="fetched", on_error="fetch_failed", lock=True)
    def fetch_locked(self) -> None:
        raise FetchFailed("locked and failed")

    @transition(frm="fetching", to="fetched", on_error="fetch_failed",
                guard=lambda job: job.note != "blocked")
    def fetch_guarded(self) -> None:
        raise FetchFailed("never runs")

    @transition(frm="fetching", to="fetched", on_error="fetch_failed")
    def fetch_interrupted(self) -> None:
        raise Stop()

    @transition(frm="fetching", to="fetched", on_error="fetch_failed")
    def fetch_and_roll_back(self) -> None:
        session = object_session(self)
        assert session is not None
        session.rollback()

    @transition(frm="fetching", to="fetched", on_error="fetch_failed")
    async def fetch_async(self, fail: bool = True) -> None:
        await asyncio.sleep(0)
        log_data(url="https://example.com/async")
        await asyncio.sleep(0)
        if fail:
            raise FetchFailed("async upstream said no")

    @transition(frm="fetch_failed", to="fetching", guard=lambda job: job.attempts < 3)
    def retry(self) -> None:
        pass


@pytest.fixture
def db(engine: sa.Engine) -> Iterator[sa.Engine]:
    RecoveryBase.metadata.drop_all(engine)
    RecoveryBase.metadata.create_all(engine)
    yield engine
    RecoveryBase.metadata.drop_all(engine)


def new_job(engine: sa.Engine, status: str = "fetching") -> int:
    with Session(engine) as session, session.begin():
        session.add(Job(id=1, status=status))
    return 1


def row(engine: sa.Engine, ident: int = 1) -> dict[str, Any]:
    with engine.connect() as conn:
        found = conn.execute(sa.select(Job.__table__).where(Job.__table__.c.id == ident))
        return dict(found.mappings().one())


def log_rows(engine: sa.Engine) -> list[tuple[str, str, str, dict[str, Any]]]:
    with Session(engine) as session:
        return [(r.event, r.from_state, r.to_state, r.data)
                for r in session.scalars(sa.select(JobLog).order_by(JobLog.id))]


ERROR_ROW = ("fetch", "fetching", "fetch_failed",
             {"url": "https://example.com/1",
              "error": {"type": "tests.test_recovery.FetchFailed",
                        "message": "upstream said no"}})


def fetch_in_a_worker(engine: sa.Engine, ident: int = 1, **kwargs: Any) -> FetchFailed:
    """The job pattern: the exception leaves ``with session.begin()``, which rolls back."""
    with pytest.raises(FetchFailed) as raised, Session(engine) as session, session.begin():
        load(session, Job, ident).fetch(**kwargs)
    return raised.value


# -- the job pattern ---------------------------------------------------------------------


def test_the_job_pattern_ends_in_the_error_state_with_the_error_recorded(
        db: sa.Engine, signals: SignalLog, frozen_clock: datetime) -> None:
    new_job(db)
    error = fetch_in_a_worker(db)
    assert str(error) == "upstream said no"
    assert not getattr(error, "__notes__", None)
    saved = row(db)
    assert saved["status"] == "fetch_failed"
    assert saved["attempts"] == 1
    assert saved["last_error"] == "tests.test_recovery.FetchFailed: upstream said no"
    assert saved["last_error_at"] == FROZEN
    assert saved["status_changed_at"] == FROZEN
    assert saved["note"] is None  # the body's write rolled back
    assert log_rows(db) == [ERROR_ROW]
    [failed] = signals.of("transition-failed")
    assert failed.payload["error"] is error
    assert failed.payload["error_state"] == "fetch_failed"
    assert signals.of("transition-committed") == []
    assert signals.of("transition-succeeded") == []


def test_the_error_state_is_an_ordinary_state_that_a_retry_leaves(db: sa.Engine) -> None:
    new_job(db)
    for attempt in (1, 2, 3):
        fetch_in_a_worker(db)
        assert row(db)["attempts"] == attempt
        with Session(db) as session, session.begin():
            job = load(session, Job, 1)
            if attempt < 3:
                job.retry()
            else:
                with pytest.raises(GuardError):
                    job.retry()
    with Session(db) as session:
        job = load(session, Job, 1)
        assert job.status == "fetch_failed"
        assert [r.to_state for r in history(job)] == ["fetch_failed", "fetching"] * 2 + [
            "fetch_failed"]


def test_a_caller_that_catches_and_commits_keeps_the_record_once_with_its_work(
        db: sa.Engine, frozen_clock: datetime) -> None:
    new_job(db)
    with Session(db) as session, session.begin():
        job = load(session, Job, 1)
        with pytest.raises(FetchFailed) as raised:
            job.fetch()
        assert job.status == "fetch_failed"
        assert job.status_changed_at == FROZEN
        assert job.attempts == 1
        assert job.last_error is not None
        assert job.note is None
        session.add(Job(id=2, status="queued"))  # the caller's own work
    assert row(db)["status"] == "fetch_failed"
    assert row(db)["attempts"] == 1
    assert row(db, 2)["status"] == "queued"
    assert log_rows(db) == [ERROR_ROW]  # not written twice
    assert not getattr(raised.value, "__notes__", None)  # nor tried again after the commit


def test_the_record_survives_a_rollback_after_the_caller_wrote_the_row(
        db: sa.Engine) -> None:
    new_job(db)
    def work(session: Session) -> None:
        job = load(session, Job, 1)
        job.note = "the caller's"
        session.flush()  # the caller's transaction holds the row
        job.fetch()

    with pytest.raises(FetchFailed), Session(db) as session, session.begin():
        work(session)
    assert row(db)["status"] == "fetch_failed"
    assert row(db)["note"] is None  # the caller's rolled-back edit is not in the record
    assert log_rows(db) == [ERROR_ROW]


def test_the_record_survives_a_rollback_after_lock_true(db: sa.Engine) -> None:
    new_job(db)
    with pytest.raises(FetchFailed), Session(db) as session, session.begin():
        load(session, Job, 1).fetch_locked()
    assert row(db)["status"] == "fetch_failed"
    assert row(db)["attempts"] == 1
    assert [event for event, *_ in log_rows(db)] == ["fetch_locked"]


def test_a_rolled_back_savepoint_of_the_caller_does_not_lose_the_record(
        db: sa.Engine) -> None:
    new_job(db)
    with Session(db) as session, session.begin():
        job = load(session, Job, 1)
        with pytest.raises(FetchFailed), session.begin_nested():
            job.fetch()
        assert job.status == "fetching"  # the row in this transaction, the record undone
        session.add(Job(id=2))
    assert row(db)["status"] == "fetch_failed"
    assert row(db)["attempts"] == 1
    assert row(db, 2)["status"] == "queued"
    assert len(log_rows(db)) == 1


def test_a_released_savepoint_hands_the_record_to_the_callers_commit(db: sa.Engine) -> None:
    new_job(db)
    with Session(db) as session, session.begin():
        job = load(session, Job, 1)
        with session.begin_nested(), pytest.raises(FetchFailed):
            job.fetch()
    assert row(db)["attempts"] == 1
    assert len(log_rows(db)) == 1


def test_a_body_that_rolls_back_the_session_still_leaves_the_record(
        db: sa.Engine, signals: SignalLog) -> None:
    new_job(db)
    with Session(db) as session:
        job = load(session, Job, 1)
        with pytest.raises(sa_exc.InvalidRequestError, match="rolled back or closed"):
            job.fetch_and_roll_back()
    assert row(db)["status"] == "fetch_failed"
    assert row(db)["attempts"] == 1
    assert [event for event, *_ in log_rows(db)] == ["fetch_and_roll_back"]
    assert signals.of("transition-failed")[0].payload["error_state"] == "fetch_failed"


def test_the_record_after_a_rollback_needs_the_row_as_it_was_read(db: sa.Engine) -> None:
    """Moved to fetching in the same transaction, the row is back in ``queued`` after the
    rollback: there is no failed fetch to record, and a note on the error says so."""
    new_job(db, status="queued")
    def work(session: Session) -> None:
        job = load(session, Job, 1)
        job.start()
        job.fetch()

    with pytest.raises(FetchFailed) as raised, Session(db) as session, session.begin():
        work(session)
    assert row(db)["status"] == "queued"
    assert row(db)["attempts"] == 0
    assert log_rows(db) == []
    assert any("no longer 'fetching'" in note for note in raised.value.__notes__)


def test_a_connection_in_the_callers_transaction_is_never_written_past(
        db: sa.Engine) -> None:
    new_job(db)
    with db.connect() as conn:
        outer = conn.begin()
        session = Session(bind=conn, join_transaction_mode="create_savepoint")
        with session, pytest.raises(FetchFailed) as raised, session.begin():
            load(session, Job, 1).fetch()
        outer.rollback()
    assert row(db)["status"] == "fetching"
    assert log_rows(db) == []
    assert any("does not write past" in note for note in raised.value.__notes__)


# -- what never enters the error state -----------------------------------------------------


def test_refusals_never_enter_the_error_state(db: sa.Engine, new_session: Any) -> None:
    new_job(db, status="queued")
    with Session(db) as session, pytest.raises(InvalidStateError):
        load(session, Job, 1).fetch()
    with Session(db) as session, session.begin():
        load(session, Job, 1).start()
    with Session(db, expire_on_commit=False) as session:
        job = load(session, Job, 1)
        job.note = "blocked"
        with pytest.raises(GuardError):
            job.fetch_guarded()
        session.rollback()
        job = load(session, Job, 1)
        assert job.status == "fetching"
        session.commit()  # SQLite: a reading transaction would keep the other writer out
        with new_session() as other, other.begin():
            load(other, Job, 1).fetch(fail=False)  # another worker gets there first
        with pytest.raises(ConflictError):
            job.fetch()
        session.commit()
    assert row(db)["status"] == "fetched"
    assert row(db)["attempts"] == 0
    assert [to for _, _, to, _ in log_rows(db)] == ["fetching", "fetched"]


def test_a_base_exception_is_not_an_error_to_record(db: sa.Engine) -> None:
    new_job(db)
    with pytest.raises(Stop), Session(db) as session, session.begin():
        load(session, Job, 1).fetch_interrupted()
    assert row(db)["status"] == "fetching"
    assert log_rows(db) == []


def test_a_successful_body_is_an_ordinary_transition(db: sa.Engine, signals: SignalLog) -> None:
    new_job(db)
    with Session(db) as session, session.begin():
        load(session, Job, 1).fetch(fail=False)
    assert row(db)["status"] == "fetched"
    assert row(db)["attempts"] == 0
    assert row(db)["last_error"] is None
    assert [to for _, _, to, _ in log_rows(db)] == ["fetched"]
    assert len(signals.of("transition-committed")) == 1


# -- the record --------------------------------------------------------------------------


def test_messages_are_cut_to_the_column_and_to_the_limit(db: sa.Engine) -> None:
    new_job(db)
    fetch_in_a_worker(db, message="x" * 5000)
    saved = row(db)["last_error"]
    assert len(saved) == 200
    assert saved.endswith("…")
    [(*_, data)] = log_rows(db)
    assert len(data["error"]["message"]) == recovery.MESSAGE_LIMIT == 1000
    assert recovery.describe(ValueError("")) == ("ValueError", "")
    assert recovery.describe(ValueError("abc"), limit=1) == ("ValueError", "…")
    assert recovery.describe(ValueError("abc"), limit=3) == ("ValueError", "abc")


def test_transitions_lists_the_error_state() -> None:
    by_event = {t.event: t for t in transitions(Job)}
    assert by_event["fetch"].on_error == "fetch_failed"
    assert by_event["retry"].on_error is None


# -- an object outside a session ------------------------------------------------------------


@dataclass
@state_column("status", changed_at="changed", attempts="tries", last_error="error")
class Task:
    status: str = "running"
    changed: datetime | None = None
    tries: int = 0
    error: str | None = None
    log: list[str] = field(default_factory=list)

    @transition(frm="running", to="done", on_error="failed")
    def finish(self) -> None:
        raise FetchFailed("in memory")


def test_an_object_outside_a_session_shows_the_error_state(
        signals: SignalLog, frozen_clock: datetime) -> None:
    task = Task()
    with pytest.raises(FetchFailed):
        task.finish()
    assert (task.status, task.tries, task.error, task.changed) == (
        "failed", 1, "tests.test_recovery.FetchFailed: in memory", FROZEN)
    assert signals.of("transition-failed")[0].payload["error_state"] == "failed"


# -- declarations ------------------------------------------------------------------------


def declare(**options: Any) -> type:
    class Base(DeclarativeBase):
        pass

    column_options = {k: v for k, v in options.items() if k != "on_error"}

    @state_column("status", **column_options)
    class Thing(Base):
        __tablename__ = "things"
        id: Mapped[int] = mapped_column(primary_key=True)
        status: Mapped[str] = mapped_column(sa.String(20))
        count: Mapped[int] = mapped_column(default=0)
        text: Mapped[str | None] = mapped_column(sa.String(20))
        when: Mapped[datetime | None]

        @transition(frm="a", to="b", on_error=options.get("on_error", "c"))
        def go(self) -> None:
            pass

    configure_mappers()
    return Thing


@pytest.mark.parametrize(("options", "message"), [
    ({"on_error": "b"}, "on_error='b' is the state it writes"),
    ({"on_error": "*"}, "on_error='\\*'"),
    ({"on_error": True}, "on_error=True"),
    ({"attempts": "text"}, "attempts column 'text' is VARCHAR\\(20\\), not an Integer"),
    ({"attempts": "nope"}, "attempts column 'nope' is not a column of things"),
    ({"last_error": "count"}, "last_error column 'count' is INTEGER, not a String"),
    ({"last_error_at": "text"}, "timestamp column 'text' is VARCHAR\\(20\\), not a DateTime"),
    ({"attempts": ""}, "attempts=''"),
])
def test_bad_error_state_declarations_name_the_bad_value(options: dict[str, Any],
                                                         message: str) -> None:
    with pytest.raises((DeclarationError, RuntimeError), match=message):
        declare(**options)


def test_a_good_declaration_compiles() -> None:
    thing = declare(attempts="count", last_error="text", last_error_at="when")
    assert transitions(thing)[0].on_error == "c"


# -- past the caller's rollback: never a hang --------------------------------------------


@pytest.mark.postgres
def test_a_row_locked_by_another_transaction_delays_the_record_at_most_the_timeout(
        pg: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another transaction takes the row the moment the worker's rollback releases it:
    the record, written again after the rollback, gives up after LOCK_TIMEOUT and says
    so on the error, and nothing hangs."""
    RecoveryBase.metadata.drop_all(pg)
    RecoveryBase.metadata.create_all(pg)
    new_job(pg)
    monkeypatch.setattr(recovery, "LOCK_TIMEOUT", 0.2)
    with Session(pg) as holder:
        worker = Session(pg)

        def take_the_row(session: Session) -> None:
            if session.get_nested_transaction() is None:  # the worker's, not a SAVEPOINT's
                holder.execute(sa.select(Job).where(Job.id == 1).with_for_update()).one()

        sa_event.listen(worker, "after_rollback", take_the_row)
        with pytest.raises(FetchFailed) as raised, worker, worker.begin():
            load(worker, Job, 1).fetch()
        holder.rollback()
    assert any("could not record its error state" in note and "lock timeout" in note
               for note in raised.value.__notes__)
    assert row(pg)["status"] == "fetching"
    assert log_rows(pg) == []
    RecoveryBase.metadata.drop_all(pg)


@pytest.mark.postgres
def test_workers_in_threads_record_every_failure(pg: sa.Engine) -> None:
    RecoveryBase.metadata.drop_all(pg)
    RecoveryBase.metadata.create_all(pg)
    with Session(pg) as session, session.begin():
        session.add_all(Job(id=i, status="fetching") for i in range(1, 41))
    errors: list[BaseException] = []

    def work(first: int) -> None:
        for ident in range(first, 41, 4):
            try:
                with Session(pg) as session, session.begin():
                    load(session, Job, ident).fetch()
            except FetchFailed:
                pass
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    with Session(pg) as session:
        statuses = session.scalars(sa.select(Job.status)).all()
        assert statuses == ["fetch_failed"] * 40
        assert session.scalar(sa.select(sa.func.count()).select_from(JobLog)) == 40
    RecoveryBase.metadata.drop_all(pg)


# -- asyncio -----------------------------------------------------------------------------


def async_urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "aiosqlite":
        path = tmp_path / "recovery.db"
        return f"sqlite:///{path}", f"sqlite+aiosqlite:///{path}"
    url = sa.make_url(request.getfixturevalue("postgres_url"))
    return (url.set(drivername="postgresql+psycopg").render_as_string(False),
            url.set(drivername="postgresql+asyncpg").render_as_string(False))


@pytest.fixture(params=["aiosqlite", pytest.param("asyncpg", marks=pytest.mark.postgres)])
def async_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[sa.Engine, str]]:
    sync_url, async_url = async_urls(request, tmp_path)
    engine = sa.create_engine(sync_url)
    if engine.dialect.name == "sqlite":
        enable_savepoints(engine)
    RecoveryBase.metadata.drop_all(engine)
    RecoveryBase.metadata.create_all(engine)
    yield engine, async_url
    RecoveryBase.metadata.drop_all(engine)
    engine.dispose()


async def aload(session: AsyncSession) -> Job:
    job = await session.get(Job, 1)  # get_one is newer than litestate's SQLAlchemy floor
    assert job is not None
    return job


def test_the_job_pattern_under_an_async_session(async_db: tuple[sa.Engine, str]) -> None:
    engine, url = async_db
    new_job(engine)

    async def worker() -> None:
        aengine = create_async_engine(url)
        if aengine.dialect.name == "sqlite":
            enable_savepoints(aengine)
        try:
            async def work() -> None:
                async with AsyncSession(aengine) as session, session.begin():
                    job = await aload(session)
                    await litestate.aio.call(job.fetch)

            with pytest.raises(FetchFailed):
                await work()
        finally:
            await aengine.dispose()

    asyncio.run(asyncio.wait_for(worker(), 60))
    assert row(engine)["status"] == "fetch_failed"
    assert row(engine)["attempts"] == 1
    assert log_rows(engine) == [ERROR_ROW]


# -- every sequence ----------------------------------------------------------------------

STEPS = st.lists(st.tuples(st.sampled_from(["fetch_ok", "fetch_fail", "retry", "start"]),
                           st.sampled_from(["commit", "rollback", "catch_and_commit"])),
                 max_size=8)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
def test_the_log_always_matches_the_row(db: sa.Engine,
                                        steps: list[tuple[str, str]]) -> None:
    """Whatever the worker does and however its transaction ends, the log's last state is
    the row's, each row follows the one before, and every failure the row shows is one
    the log shows."""
    with Session(db) as session, session.begin():
        session.execute(sa.delete(JobLog))
        session.execute(sa.delete(Job))
        session.add(Job(id=1, status="queued"))
    for action, ending in steps:
        session = Session(db)
        try:
            with session.begin():
                job = load(session, Job, 1)
                try:
                    if action == "fetch_ok":
                        job.fetch(fail=False)
                    elif action == "fetch_fail":
                        job.fetch()
                    else:
                        getattr(job, action)()
                except (FetchFailed, litestate.TransitionError):
                    if ending != "catch_and_commit":
                        raise
                if ending == "rollback":
                    raise FetchFailed("the caller rolls back")
        except (FetchFailed, litestate.TransitionError):
            pass
        finally:
            session.close()
    saved = row(db)
    logged = log_rows(db)
    states = ["queued"] + [to for _, _, to, _ in logged]
    assert all(frm == states[i] for i, (_, frm, _, _) in enumerate(logged))
    assert states[-1] == saved["status"]
    assert saved["attempts"] == sum(1 for *_, to, _ in logged if to == "fetch_failed")


def test_an_async_body_attaches_to_its_row_and_fails_into_the_error_state(
        async_db: tuple[sa.Engine, str]) -> None:
    engine, url = async_db
    new_job(engine)

    async def worker() -> list[Any]:
        aengine = create_async_engine(url)
        if aengine.dialect.name == "sqlite":
            enable_savepoints(aengine)
        try:
            async def fail() -> None:
                async with AsyncSession(aengine) as session, session.begin():
                    job = await aload(session)
                    await job.fetch_async()

            with pytest.raises(FetchFailed):
                await fail()
            async with AsyncSession(aengine) as session, session.begin():
                job = await aload(session)
                await litestate.aio.call(job.retry)
                await job.fetch_async(fail=False)
            async with AsyncSession(aengine) as session:
                job = await aload(session)
                return [(r.to_state, r.data) for r in await litestate.aio.history(job)]
        finally:
            await aengine.dispose()

    rows = asyncio.run(asyncio.wait_for(worker(), 60))
    assert rows == [
        ("fetch_failed", {"url": "https://example.com/async",
                          "error": {"type": "tests.test_recovery.FetchFailed",
                                    "message": "async upstream said no"}}),
        ("fetching", {}),
        ("fetched", {"url": "https://example.com/async"})]


def test_diagrams_draw_the_error_edges() -> None:
    chart = litestate.diagram(Task)
    assert 'state "failed" as s2' in chart
    assert "    s0 --> s2: finish (error)\n" in chart
    assert '    s0 -> s2 [label="finish (error)", style=dashed];\n' in litestate.diagram(
        Task, format="dot")


# -- a leased transition's error state ----------------------------------------------------


@state_column("status", attempts="attempts", last_error="last_error")
class LeasedJob(litestate.Lease, RecoveryBase):
    __tablename__ = "rec_leased_jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="queued")
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(sa.String(200))

    @transition(frm="queued", to="running")
    def start(self) -> None:
        pass

    @transition(frm="running", to="done", leased=True, on_error="failed")
    def finish(self) -> None:
        raise FetchFailed("the work failed")


def test_a_leased_transition_fails_into_its_error_state_and_ends_the_lease(
        db: sa.Engine) -> None:
    with Session(db) as session, session.begin():
        session.add(LeasedJob(id=1))
    with Session(db) as session:
        [job] = litestate.claim(session, LeasedJob.start, lease=timedelta(minutes=5))
        session.commit()
        with session.begin():
            assert job.lease_owner is not None
        with pytest.raises(FetchFailed), session.begin():
            job.finish()
    with Session(db) as session:
        job = load(session, LeasedJob, 1)
        assert (job.status, job.attempts, job.lease_owner, job.lease_expires_at) == (
            "failed", 1, None, None)


def test_an_error_state_needs_the_claims_lease_too(db: sa.Engine, new_session: Any) -> None:
    """A claim whose lease another worker took over cannot write the error state: the
    body never runs (the leased write refuses first), and nothing is recorded."""
    with Session(db) as session, session.begin():
        session.add(LeasedJob(id=1))
    with Session(db, expire_on_commit=False) as session:
        [job] = litestate.claim(session, LeasedJob.start, lease=timedelta(minutes=5))
        session.commit()
        with new_session() as other, other.begin():  # another claim takes the row over
            other.execute(sa.update(LeasedJob).values(lease_owner="someone else"))
        with pytest.raises(ConflictError, match="lease"), session.begin():
            job.finish()
    assert row_of_leased(db) == ("running", 0, "someone else")


def row_of_leased(engine: sa.Engine) -> tuple[Any, ...]:
    with Session(engine) as session:
        job = load(session, LeasedJob, 1)
        return job.status, job.attempts, job.lease_owner


# -- what the mutation run asked for -----------------------------------------------------


def test_a_released_savepoint_then_a_rollback_writes_the_record_again_once(
        db: sa.Engine) -> None:
    new_job(db)

    def work(session: Session) -> None:
        with session.begin_nested(), pytest.raises(FetchFailed):
            load(session, Job, 1).fetch()
        raise RuntimeError("the caller gives up")

    with pytest.raises(RuntimeError), Session(db) as session, session.begin():
        work(session)
    assert row(db)["status"] == "fetch_failed"
    assert row(db)["attempts"] == 1
    assert len(log_rows(db)) == 1


def test_a_payload_the_database_refuses_still_lets_a_committing_caller_keep_the_record(
        db: sa.Engine) -> None:
    new_job(db)
    with Session(db) as session, session.begin(), litestate.context(who=object()), \
            pytest.raises(FetchFailed) as raised:
        load(session, Job, 1).fetch()
    assert row(db)["status"] == "fetch_failed"
    [(*_, data)] = log_rows(db)
    assert set(data) == {"error"}  # the caller's values left out
    assert sum("without the body's and the context's values" in note
               for note in raised.value.__notes__) == 1


def test_a_record_the_row_no_longer_matches_says_so_once(db: sa.Engine) -> None:
    new_job(db, status="queued")

    def work(session: Session) -> None:
        job = load(session, Job, 1)
        job.start()
        job.fetch()

    with pytest.raises(FetchFailed) as raised, Session(db) as session, session.begin():
        work(session)
    assert [note for note in raised.value.__notes__ if "no longer" in note] == [
        "litestate: Job.fetch() did not record its error state 'fetch_failed' after the "
        "rollback: the row's state is no longer 'fetching' (it is 'queued')"]


def test_a_clock_that_fails_while_recording_leaves_the_original_error_with_a_note(
        db: sa.Engine) -> None:
    new_job(db)
    calls = {"n": 0}

    def clock() -> datetime:
        calls["n"] += 1
        if calls["n"] > 1:  # the transition's reading works; the error record's fails
            raise OSError("the clock broke")
        return FROZEN

    previous = litestate.set_clock(clock)
    try:
        error = fetch_in_a_worker(db)
    finally:
        litestate.set_clock(previous)
    assert str(error) == "upstream said no"
    assert any("could not enter its error state" in note and "the clock broke" in note
               for note in error.__notes__)
    assert row(db)["status"] == "fetching"


class Untitled(RecoveryBase):
    """No @state_column: the transition names its column."""

    __tablename__ = "rec_untitled"
    id: Mapped[int] = mapped_column(primary_key=True)
    stage: Mapped[str] = mapped_column(sa.String(20), default="working")

    @transition(frm="working", to="done", column="stage", on_error="broken")
    def finish(self) -> None:
        raise FetchFailed("no state_column")


def test_a_column_without_state_column_options_has_an_error_state(db: sa.Engine) -> None:
    with Session(db) as session, session.begin():
        session.add(Untitled(id=1))
    with pytest.raises(FetchFailed), Session(db) as session, session.begin():
        load(session, Untitled, 1).finish()
    with Session(db) as session:
        assert load(session, Untitled, 1).stage == "broken"


class VersionedJob(RecoveryBase):
    __tablename__ = "rec_versioned"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="queued")
    version: Mapped[int] = mapped_column(default=1)
    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 - SQLAlchemy's spelling

    @transition(frm="queued", to="fetching", column="status")
    def start(self) -> None:
        pass

    @transition(frm="fetching", to="fetched", column="status", on_error="fetch_failed")
    def fetch(self) -> None:
        raise FetchFailed("versioned")


def test_a_versioned_record_that_no_longer_matches_names_the_version(db: sa.Engine) -> None:
    with Session(db) as session, session.begin():
        session.add(VersionedJob(id=1))

    def work(session: Session) -> None:
        job = load(session, VersionedJob, 1)
        job.start()
        job.fetch()

    with pytest.raises(FetchFailed) as raised, Session(db) as session, session.begin():
        work(session)
    assert any("state or version changed (its state is now 'queued', it was 'fetching')"
               in note for note in raised.value.__notes__), raised.value.__notes__


@pytest.fixture
def server_db(server: sa.Engine) -> Iterator[sa.Engine]:
    RecoveryBase.metadata.drop_all(server)
    RecoveryBase.metadata.create_all(server)
    yield server
    RecoveryBase.metadata.drop_all(server)


def take_the_row_once(holder: Session, worker: Session, *, when: str,
                      then: Callable[[], None] = lambda: None) -> None:
    """In ``worker``'s ``after_rollback``: ``when="savepoint"``, the first ROLLBACK TO
    SAVEPOINT (the transition's, which releases the row on PostgreSQL), or ``"root"``;
    ``holder`` locks the row, then ``then()`` runs."""
    done: list[bool] = []

    def take(session: Session) -> None:
        nested = session.get_nested_transaction() is not None
        if done or nested != (when == "savepoint"):
            return
        done.append(True)
        holder.execute(sa.select(Job).where(Job.id == 1).with_for_update()).one()
        then()

    sa_event.listen(worker, "after_rollback", take)


@pytest.mark.postgres
def test_a_record_that_waited_too_long_in_the_transaction_is_written_after_it(
        pg: sa.Engine) -> None:
    """The error state in the caller's transaction meets a lock (another transaction took
    the row the moment the transition's SAVEPOINT released it) and the caller's
    lock_timeout: it is written again once the caller's transaction has ended."""
    RecoveryBase.metadata.drop_all(pg)
    RecoveryBase.metadata.create_all(pg)
    new_job(pg)
    with Session(pg) as holder:
        worker = Session(pg)
        take_the_row_once(holder, worker, when="savepoint")
        sa_event.listen(worker, "after_rollback", lambda session: holder.rollback()
                        if session.get_nested_transaction() is None else None)

        def work() -> None:
            worker.execute(sa.text("SET LOCAL lock_timeout = '100ms'"))
            load(worker, Job, 1).fetch()

        with pytest.raises(FetchFailed) as raised, worker, worker.begin():
            work()
    assert any("in the caller's transaction" in note and "lock timeout" in note
               for note in raised.value.__notes__)
    assert row(pg)["status"] == "fetch_failed"
    assert row(pg)["attempts"] == 1
    RecoveryBase.metadata.drop_all(pg)


@pytest.mark.postgres
def test_a_row_another_worker_moved_meanwhile_is_left_as_it_is(pg: sa.Engine) -> None:
    """Between the transition's SAVEPOINT rollback and its error state, another worker
    moved the row: the conditional UPDATE matches nothing, and a note says so."""
    RecoveryBase.metadata.drop_all(pg)
    RecoveryBase.metadata.create_all(pg)
    new_job(pg)
    with Session(pg) as holder:
        worker = Session(pg)

        def move_it() -> None:
            holder.execute(sa.update(Job).where(Job.id == 1).values(status="queued"))
            holder.commit()

        take_the_row_once(holder, worker, when="savepoint", then=move_it)
        with pytest.raises(FetchFailed) as raised, worker, worker.begin():
            load(worker, Job, 1).fetch()
    assert "litestate: Job.fetch() did not enter its error state 'fetch_failed': the row's " \
        "state is no longer 'fetching' (it is 'queued')" in raised.value.__notes__
    assert row(pg)["status"] == "queued"
    assert row(pg)["attempts"] == 0
    RecoveryBase.metadata.drop_all(pg)


@pytest.mark.postgres
def test_a_lease_taken_over_meanwhile_keeps_the_error_state_out(pg: sa.Engine) -> None:
    RecoveryBase.metadata.drop_all(pg)
    RecoveryBase.metadata.create_all(pg)
    with Session(pg) as session, session.begin():
        session.add(LeasedJob(id=1))
    with Session(pg) as holder:
        worker = Session(pg)
        [job] = litestate.claim(worker, LeasedJob.start, lease=timedelta(minutes=5))
        worker.commit()
        done: list[bool] = []

        def take_over(session: Session) -> None:
            if done or session.get_nested_transaction() is None:
                return
            done.append(True)
            holder.execute(sa.update(LeasedJob).values(lease_owner="another claim"))
            holder.commit()

        sa_event.listen(worker, "after_rollback", take_over)
        with pytest.raises(FetchFailed), worker, worker.begin():
            job.finish()
    assert row_of_leased(pg) == ("running", 0, "another claim")
    RecoveryBase.metadata.drop_all(pg)


@pytest.mark.mariadb
def test_on_mariadb_the_record_waits_at_most_the_timeout_and_the_pool_keeps_its_own(
        maria: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    RecoveryBase.metadata.drop_all(maria)
    RecoveryBase.metadata.create_all(maria)
    new_job(maria)
    engine = sa.create_engine(maria.url, pool_size=1, max_overflow=0)
    monkeypatch.setattr(recovery, "LOCK_TIMEOUT", 0.2)  # whole seconds on InnoDB: 1
    try:
        with engine.connect() as conn:
            default = conn.exec_driver_sql("SELECT @@SESSION.innodb_lock_wait_timeout").scalar()
        with Session(maria) as holder:
            worker = Session(engine)
            take_the_row_once(holder, worker, when="root")
            with pytest.raises(FetchFailed) as raised, worker, worker.begin():
                load(worker, Job, 1).fetch()
            holder.rollback()
        assert any("could not record its error state" in note and "1205" in note
                   for note in raised.value.__notes__)
        with engine.connect() as conn:  # the pool's one connection, as the rewrite left it
            assert conn.exec_driver_sql(
                "SELECT @@SESSION.innodb_lock_wait_timeout").scalar() == default
    finally:
        engine.dispose()
    assert row(maria)["status"] == "fetching"
    RecoveryBase.metadata.drop_all(maria)


def test_a_rewrite_the_database_refuses_is_tried_without_the_callers_values(
        db: sa.Engine) -> None:
    """The body rolled the caller's transaction back, so the record is written after it;
    its row carries a context value JSON cannot hold: written without it, with a note."""
    new_job(db)
    with litestate.context(who=object()), Session(db) as session, pytest.raises(
            sa_exc.InvalidRequestError) as raised:
        load(session, Job, 1).fetch_and_roll_back()
    assert row(db)["status"] == "fetch_failed"
    [(*_, data)] = log_rows(db)
    assert set(data) == {"error"}
    assert sum("without the body's and the context's values" in note
               for note in raised.value.__notes__) == 1


@state_column("status", attempts="tries")
class NullTries(RecoveryBase):
    __tablename__ = "rec_null_tries"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="running")
    tries: Mapped[int | None]

    @transition(frm="running", to="done", on_error="failed")
    def finish(self) -> None:
        raise FetchFailed("first failure")


def test_attempts_that_were_null_count_from_zero(db: sa.Engine) -> None:
    with Session(db) as session, session.begin():
        session.add(NullTries(id=1))
    with pytest.raises(FetchFailed), Session(db) as session, session.begin():
        load(session, NullTries, 1).finish()
    with Session(db) as session:
        assert load(session, NullTries, 1).tries == 1


def test_the_error_state_compares_states_exactly_as_the_transition_does(
        server_db: sa.Engine) -> None:
    """Once the worker's rollback has ended, another transaction writes 'FETCHING': the
    record's conditional UPDATE must not match it (MariaDB's collation ignores case)."""
    new_job(server_db)
    with Session(server_db) as other:
        worker = Session(server_db)

        def rewrite(session: Session) -> None:
            if session.get_nested_transaction() is None:
                other.execute(sa.update(Job).where(Job.id == 1).values(status="FETCHING"))
                other.commit()

        sa_event.listen(worker, "after_rollback", rewrite)
        with pytest.raises(FetchFailed) as raised, worker, worker.begin():
            load(worker, Job, 1).fetch()
    assert row(server_db)["status"] == "FETCHING"
    assert row(server_db)["attempts"] == 0
    assert any("no longer 'fetching'" in note for note in raised.value.__notes__)
