# ruff: noqa: PT011, PT012, RUF012, RUF059, SIM117
"""Attacks on the audit trail (history.py) and error states (recovery.py): odd mappings,
odd session states, odd errors, odd engines. Each test states what litestate promises;
SQLite and PostgreSQL through the ``engine`` fixture."""

from __future__ import annotations

import asyncio
import enum
import uuid
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    MappedAsDataclass,
    Session,
    configure_mappers,
    mapped_column,
    object_session,
)
from sqlalchemy.pool import StaticPool

import litestate
import litestate.aio
from litestate import TransitionLog, history, log_data, state_column, transition
from litestate.sqlite import enable_savepoints
from tests.conftest import SignalLog, load


class AttackBase(DeclarativeBase):
    pass


class Boom(Exception):
    pass


# -- the plain job ----------------------------------------------------------------------


class AJobLog(TransitionLog, AttackBase):
    __tablename__ = "atk_job_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(sa.ForeignKey("atk_jobs.id"))
    actor_id: Mapped[int | None]


@state_column("status", log=AJobLog, changed_at="status_changed_at", attempts="attempts",
              last_error="last_error", last_error_at="last_error_at")
class AJob(AttackBase):
    __tablename__ = "atk_jobs"
    __table_args__ = (sa.CheckConstraint("status <> 'forbidden_failed'", name="atk_no_ff"),
                      sa.CheckConstraint("note IS NULL OR note <> 'refused'", name="atk_note"))
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
    def fetch(self, error: BaseException | None = None, payload: Any = None) -> None:
        if payload is not None:
            log_data(payload=payload)
        if error is not None:
            raise error

    @transition(frm="fetching", to="fetched", on_error="forbidden_failed")
    def fetch_forbidden(self) -> None:
        raise Boom("refused by CHECK")

    @transition(frm="fetching", to="fetched", on_error="fetch_failed")
    def fetch_and_commit(self) -> None:
        session = object_session(self)
        assert session is not None
        session.commit()

    @transition(frm="fetching", to="fetched", on_error="fetch_failed")
    def fetch_overflowing(self) -> None:
        self.note = "refused"  # a CHECK constraint refuses it at the flush after the body

    @transition(frm="fetching", to="fetched", on_error="fetch_failed")
    def fetch_and_fail_other(self, other: AJob, catch: bool) -> None:
        try:
            other.fetch(error=Boom("inner"))
        except Boom:
            if not catch:
                raise
        raise Boom("outer")

    @transition(frm="fetching", to="fetched", on_error="fetch_failed")
    def fetch_with_inner_success(self, other: AJob) -> None:
        other.fetch()
        raise Boom("outer after inner success")

    @transition(frm="fetched", to="verified", on_error="verify_failed")
    def verify(self) -> None:
        raise Boom("verify")

    @transition(frm="fetching", to="fetched", on_error="fetch_failed")
    def fetch_then_verify(self) -> None:
        self.verify()

    @transition(frm="fetching", to="fetched", on_error="fetch_failed",
                log_args=("extra", "more"))
    def fetch_star(self, *extra: Any, **more: Any) -> None:
        raise Boom("star")


@pytest.fixture
def db(engine: sa.Engine) -> Iterator[sa.Engine]:
    AttackBase.metadata.drop_all(engine)
    AttackBase.metadata.create_all(engine)
    yield engine
    AttackBase.metadata.drop_all(engine)


def new_job(engine: sa.Engine, ident: int = 1, status: str = "fetching") -> int:
    with Session(engine) as session, session.begin():
        session.add(AJob(id=ident, status=status))
    return ident


def job_row(engine: sa.Engine, ident: int = 1) -> dict[str, Any]:
    table = AJob.__table__
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(table).where(table.c.id == ident)).mappings().one())


def job_log(engine: sa.Engine, ident: int | None = None) -> list[tuple[Any, ...]]:
    table = AJobLog.__table__
    stmt = sa.select(table).order_by(table.c.id)
    if ident is not None:
        stmt = stmt.where(table.c.job_id == ident)
    with engine.connect() as conn:
        return [(r.event, r.from_state, r.to_state, r.data) for r in conn.execute(stmt)]


def notes(error: BaseException) -> list[str]:
    return list(getattr(error, "__notes__", []))


def job_pattern(engine: sa.Engine, error: BaseException, ident: int = 1,
                **kwargs: Any) -> BaseException:
    with pytest.raises(type(error)) as raised, Session(engine) as session, session.begin():
        load(session, AJob, ident).fetch(error=error, **kwargs)
    return raised.value


# -- odd errors ------------------------------------------------------------------------


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


def test_an_exception_whose_str_raises_still_propagates_unchanged(db: sa.Engine) -> None:
    """The original exception propagates unchanged, whatever its __str__ does."""
    new_job(db)
    with pytest.raises(Exception) as raised, Session(db) as session, session.begin():
        load(session, AJob, 1).fetch(error=Unprintable())
    assert type(raised.value) is Unprintable


def test_a_message_with_surrogates_is_recorded(db: sa.Engine) -> None:
    """A file name decoded with surrogateescape (os.listdir of non-UTF-8 bytes) is an
    ordinary error message: the job still ends in its error state."""
    new_job(db)
    error = job_pattern(db, FileNotFoundError(2, "No such file", "caf\udce9.txt"))
    assert job_row(db)["status"] == "fetch_failed", notes(error)
    assert job_row(db)["attempts"] == 1


def test_a_message_with_a_nul_byte_is_recorded(db: sa.Engine) -> None:
    """PostgreSQL text cannot hold NUL; an error about binary data often quotes it."""
    new_job(db)
    error = job_pattern(db, ValueError("bad frame b'\x00\x01'"))
    assert job_row(db)["status"] == "fetch_failed", notes(error)


def test_a_huge_message_is_bounded(db: sa.Engine) -> None:
    new_job(db)
    job_pattern(db, Boom("y" * 100_000), payload="z" * 100_000)
    saved = job_row(db)
    assert saved["status"] == "fetch_failed"
    assert len(saved["last_error"]) <= 200
    [(_, _, _, data)] = job_log(db)
    assert len(data["error"]["message"]) <= recovery_limit()
    assert data["payload"] == "z" * 100_000


def recovery_limit() -> int:
    return litestate.recovery.MESSAGE_LIMIT


def test_a_body_payload_that_is_not_json_still_lets_the_job_fail(db: sa.Engine) -> None:
    """The body attached something JSON cannot hold, then raised: the job must still end
    in its error state with the error recorded (the job pattern), not stay 'fetching'
    forever because the error's own log row carries the bad payload."""
    new_job(db)
    error = job_pattern(db, Boom("upstream"), payload=object())
    assert job_row(db)["status"] == "fetch_failed", notes(error)
    assert job_row(db)["attempts"] == 1
    assert [to for _, _, to, _ in job_log(db)] == ["fetch_failed"]


def test_a_context_value_that_is_not_json_fails_with_a_clear_error(db: sa.Engine) -> None:
    """Pinned: a context value that JSON cannot hold fails the transition (and the error
    state, whose row carries it too) with an error naming the type."""
    new_job(db)
    with litestate.context(who=object()):
        error = job_pattern(db, Boom("upstream"))
    # The error state is still entered: its row leaves the caller's values out, and says so.
    assert job_row(db)["status"] == "fetch_failed"
    assert any("without the body's and the context's values" in n and
               "not JSON serializable" in n for n in notes(error)), notes(error)


# -- the database refuses the error state ----------------------------------------------


def test_a_check_constraint_refusing_the_error_state(db: sa.Engine, signals: SignalLog) -> None:
    new_job(db)
    with Session(db) as session, session.begin():
        job = load(session, AJob, 1)
        with pytest.raises(Boom) as raised:
            job.fetch_forbidden()
        assert job.status == "fetching"
        session.add(AJob(id=2, status="queued"))  # the caller's work survives
    assert job_row(db)["status"] == "fetching"
    assert job_row(db, 2)["status"] == "queued"
    assert any("could not enter its error state" in n for n in notes(raised.value))
    assert job_log(db) == []
    [failed] = signals.of("transition-failed")
    # The error state was refused: a receiver must not be told the row is in it.
    assert failed.payload["error_state"] is None


def test_a_flush_failure_after_the_body_enters_the_error_state(db: sa.Engine) -> None:
    new_job(db)
    with pytest.raises(sa_exc.DBAPIError), Session(db) as session, session.begin():
        load(session, AJob, 1).fetch_overflowing()
    saved = job_row(db)
    assert saved["status"] == "fetch_failed"
    assert saved["note"] is None
    assert saved["attempts"] == 1


# -- odd session states ------------------------------------------------------------------


def test_a_pending_object_rolled_back_leaves_no_row_and_says_so(db: sa.Engine) -> None:
    with pytest.raises(Boom) as raised, Session(db) as session, session.begin():
        job = AJob(id=1, status="fetching")
        session.add(job)
        job.fetch(error=Boom("new"))
    with Session(db) as session:
        assert session.get(AJob, 1) is None
    assert job_log(db) == []
    # The note must not claim the row's state changed: the row never existed.
    assert not any("no longer 'fetching'" in n for n in notes(raised.value)), notes(raised.value)
    assert any("its row does not exist" in n for n in notes(raised.value)), notes(raised.value)


def test_an_expired_object_in_an_autoflush_off_session(db: sa.Engine) -> None:
    new_job(db)
    with pytest.raises(Boom), Session(db, autoflush=False) as session, session.begin():
        job = load(session, AJob, 1)
        session.expire(job)
        job.fetch(error=Boom("expired"))
    assert job_row(db)["status"] == "fetch_failed"
    assert job_row(db)["attempts"] == 1


def test_two_failures_of_one_row_in_one_transaction_then_rollback(db: sa.Engine) -> None:
    new_job(db)
    with pytest.raises(Boom), Session(db) as session, session.begin():
        job = load(session, AJob, 1)
        with pytest.raises(Boom):
            job.fetch(error=Boom("first"))
        job.start()
        job.fetch(error=Boom("second"))
    saved = job_row(db)
    logged = job_log(db)
    assert saved["status"] == "fetch_failed"
    assert saved["attempts"] == sum(1 for *_, to, _ in logged if to == "fetch_failed")
    assert [to for _, _, to, _ in logged][-1] == "fetch_failed"


def test_two_rows_failing_in_one_transaction_then_rollback_both_recorded(
        db: sa.Engine) -> None:
    new_job(db, 1)
    new_job(db, 2)
    with pytest.raises(Boom), Session(db) as session, session.begin():
        with pytest.raises(Boom):
            load(session, AJob, 1).fetch(error=Boom("one"))
        load(session, AJob, 2).fetch(error=Boom("two"))
    assert job_row(db, 1)["status"] == "fetch_failed"
    assert job_row(db, 2)["status"] == "fetch_failed"
    assert len(job_log(db)) == 2


def test_a_nested_savepoint_rolled_back_inside_another_then_root_rollback(
        db: sa.Engine) -> None:
    new_job(db)
    with pytest.raises(Boom), Session(db) as session, session.begin():
        job = load(session, AJob, 1)
        with session.begin_nested(), pytest.raises(Boom), session.begin_nested():
            job.fetch(error=Boom("deep"))
        raise Boom("the caller gives up")
    assert job_row(db)["status"] == "fetch_failed"
    assert job_row(db)["attempts"] == 1
    assert len(job_log(db)) == 1


def test_a_deferred_constraint_failing_the_callers_commit_records_once(pg: sa.Engine) -> None:
    """Catch-and-commit, and the COMMIT itself fails: the record is replayed once."""
    AttackBase.metadata.drop_all(pg)
    AttackBase.metadata.create_all(pg)
    with pg.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE atk_deferred (id int PRIMARY KEY, job_id int "
                             "REFERENCES atk_jobs(id) DEFERRABLE INITIALLY DEFERRED)")
    try:
        new_job(pg)
        with pytest.raises(sa_exc.IntegrityError), Session(pg) as session, session.begin():
            with pytest.raises(Boom):
                load(session, AJob, 1).fetch(error=Boom("caught"))
            session.execute(sa.text("INSERT INTO atk_deferred VALUES (1, 999)"))
        assert job_row(pg)["status"] == "fetch_failed"
        assert job_row(pg)["attempts"] == 1
        assert len(job_log(pg)) == 1
    finally:
        with pg.begin() as conn:
            conn.exec_driver_sql("DROP TABLE atk_deferred")
        AttackBase.metadata.drop_all(pg)


def test_a_body_that_commits_leaves_no_state_without_its_log_row(db: sa.Engine) -> None:
    """The body committed the transition's write; whatever happens next, the row must not
    be in a state its history does not show."""
    new_job(db)
    with Session(db) as session, pytest.raises(sa_exc.InvalidRequestError):
        load(session, AJob, 1).fetch_and_commit()
    status = job_row(db)["status"]
    logged = [to for _, _, to, _ in job_log(db)]
    assert (logged[-1] if logged else "fetching") == status, (status, logged)


def test_an_inner_failure_on_another_row_survives_the_outers_rollback(db: sa.Engine) -> None:
    new_job(db, 1)
    new_job(db, 2)
    with pytest.raises(Boom), Session(db) as session, session.begin():
        outer, inner = load(session, AJob, 1), load(session, AJob, 2)
        outer.fetch_and_fail_other(inner, catch=True)
    assert job_row(db, 1)["status"] == "fetch_failed"
    assert job_row(db, 2)["status"] == "fetch_failed"
    assert job_row(db, 1)["attempts"] == job_row(db, 2)["attempts"] == 1


def test_an_inner_failure_on_another_row_with_the_caller_committing(db: sa.Engine) -> None:
    new_job(db, 1)
    new_job(db, 2)
    with Session(db) as session, session.begin():
        outer, inner = load(session, AJob, 1), load(session, AJob, 2)
        with pytest.raises(Boom):
            outer.fetch_and_fail_other(inner, catch=False)
    assert job_row(db, 1)["status"] == "fetch_failed"
    assert job_row(db, 2)["status"] == "fetch_failed"
    assert job_row(db, 1)["attempts"] == job_row(db, 2)["attempts"] == 1
    assert len(job_log(db)) == 2


def test_an_inner_error_state_on_the_same_row_then_the_outer_fails(db: sa.Engine) -> None:
    new_job(db)
    with pytest.raises(Boom) as raised, Session(db) as session, session.begin():
        load(session, AJob, 1).fetch_then_verify()
    saved = job_row(db)
    assert saved["status"] == "fetch_failed", notes(raised.value)
    assert saved["attempts"] == 1
    assert [(frm, to) for _, frm, to, _ in job_log(db)] == [("fetching", "fetch_failed")]


def test_an_inner_success_rolled_back_with_the_outer_is_never_committed(
        db: sa.Engine, signals: SignalLog) -> None:
    new_job(db, 1)
    new_job(db, 2)
    with Session(db) as session, session.begin():
        outer, inner = load(session, AJob, 1), load(session, AJob, 2)
        with pytest.raises(Boom):
            outer.fetch_with_inner_success(inner)
    assert job_row(db, 2)["status"] == "fetching"
    assert job_row(db, 1)["status"] == "fetch_failed"
    assert signals.of("transition-committed") == []
    assert [to for _, _, to, _ in job_log(db)] == ["fetch_failed"]


def test_a_transition_failed_receiver_raising_keeps_the_record(db: sa.Engine) -> None:
    new_job(db)

    def receiver(sender: Any, **payload: Any) -> None:
        raise LookupError("receiver broke")

    with litestate.transition_failed.connected_to(receiver):
        with pytest.raises(LookupError), Session(db) as session, session.begin():
            load(session, AJob, 1).fetch(error=Boom("body"))
    assert job_row(db)["status"] == "fetch_failed"
    assert job_row(db)["attempts"] == 1


def test_a_succeeded_receiver_raising_enters_the_error_state(db: sa.Engine) -> None:
    new_job(db)

    def receiver(sender: Any, **payload: Any) -> None:
        raise LookupError("succeeded receiver broke")

    with litestate.transition_succeeded.connected_to(receiver):
        with pytest.raises(LookupError), Session(db) as session, session.begin():
            load(session, AJob, 1).fetch(payload="kept")
    assert job_row(db)["status"] == "fetch_failed"
    [(_, _, _, data)] = job_log(db)
    assert data["error"]["type"] == "LookupError"
    # The body attached a payload before the receiver broke: the error row keeps it, as
    # it does when the body itself raises.
    assert data.get("payload") == "kept", data


# -- log_args, context keys ------------------------------------------------------------


def test_log_args_naming_star_args_and_star_kwargs(db: sa.Engine) -> None:
    new_job(db)
    with pytest.raises(Boom), Session(db) as session, session.begin():
        load(session, AJob, 1).fetch_star(1, 2, flag=True)
    [(_, _, _, data)] = job_log(db)
    assert data["extra"] == [1, 2]
    assert data["more"] == {"flag": True}


def test_context_keys_naming_litestates_own_columns_go_into_data(db: sa.Engine) -> None:
    new_job(db)
    with litestate.context(event="x", to_state="y", job_id=99, data="d", at="now",
                           column="c", actor_id=5):
        job_pattern(db, Boom("ctx"))
    [(event, frm, to, data)] = job_log(db)
    assert (event, frm, to) == ("fetch", "fetching", "fetch_failed")
    assert data["job_id"] == 99
    assert data["event"] == "x"
    with Session(db) as session:
        [logged] = session.scalars(sa.select(AJobLog)).all()
        assert logged.actor_id == 5
        assert logged.job_id == 1


# -- odd engines -----------------------------------------------------------------------


def test_sqlite_in_memory_static_pool_job_pattern() -> None:
    engine = enable_savepoints(sa.create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}))
    AttackBase.metadata.create_all(engine)
    new_job(engine)
    error = job_pattern(engine, Boom("memory"))
    assert job_row(engine)["status"] == "fetch_failed", notes(error)
    assert job_row(engine)["attempts"] == 1
    engine.dispose()


@pytest.mark.parametrize("lock", [False, True])
def test_a_pool_of_one_connection(engine: sa.Engine, lock: bool) -> None:
    small = sa.create_engine(engine.url, pool_size=1, max_overflow=0, pool_timeout=5)
    if small.dialect.name == "sqlite":
        enable_savepoints(small)
    AttackBase.metadata.drop_all(small)
    AttackBase.metadata.create_all(small)
    try:
        new_job(small)
        with pytest.raises(Boom) as raised, Session(small) as session, session.begin():
            job = load(session, AJob, 1)
            if lock:
                session.refresh(job, with_for_update=True)
            job.fetch(error=Boom("small pool"))
        assert job_row(small)["status"] == "fetch_failed", notes(raised.value)
    finally:
        AttackBase.metadata.drop_all(small)
        small.dispose()


def test_a_session_bound_to_a_connection_without_a_transaction(db: sa.Engine) -> None:
    new_job(db)
    with db.connect() as conn:
        with pytest.raises(Boom) as raised, Session(bind=conn) as session, session.begin():
            load(session, AJob, 1).fetch(error=Boom("bound"))
    assert job_row(db)["status"] == "fetch_failed", notes(raised.value)
    assert job_row(db)["attempts"] == 1


# -- odd mappings ----------------------------------------------------------------------


class PairLog(TransitionLog, AttackBase):
    __tablename__ = "atk_pair_log"
    __table_args__ = (sa.ForeignKeyConstraint(["pair_b", "pair_a"],
                                              ["atk_pairs.b", "atk_pairs.a"]),)
    id: Mapped[int] = mapped_column(primary_key=True)
    pair_b: Mapped[str] = mapped_column(sa.String(10))  # in the other order than the key
    pair_a: Mapped[int]


@state_column("status", log=PairLog, attempts="attempts")
class Pair(AttackBase):
    __tablename__ = "atk_pairs"
    __table_args__ = (sa.Index("atk_pairs_b_a", "b", "a"),)  # InnoDB: the FK's order
    a: Mapped[int] = mapped_column(primary_key=True)
    b: Mapped[str] = mapped_column(sa.String(10), primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="fetching")
    attempts: Mapped[int] = mapped_column(default=0)

    @transition(frm="fetching", to="fetched", on_error="fetch_failed")
    def fetch(self, fail: bool = True) -> None:
        if fail:
            raise Boom("pair")


def test_a_composite_key_with_a_log_foreign_key_on_two_columns(db: sa.Engine) -> None:
    with Session(db) as session, session.begin():
        session.add_all([Pair(a=1, b="x"), Pair(a=1, b="y"), Pair(a=2, b="x")])
    with pytest.raises(Boom), Session(db) as session, session.begin():
        load(session, Pair, (1, "y")).fetch()
    with Session(db) as session, session.begin():
        load(session, Pair, (2, "x")).fetch(fail=False)
    with Session(db) as session:
        statuses = {(p.a, p.b): (p.status, p.attempts) for p in session.scalars(sa.select(Pair))}
        assert statuses == {(1, "x"): ("fetching", 0), (1, "y"): ("fetch_failed", 1),
                            (2, "x"): ("fetched", 0)}
        assert [(r.pair_a, r.pair_b, r.to_state) for r in history(load(session, Pair, (1, "y")))
                ] == [(1, "y", "fetch_failed")]
        assert [(r.pair_a, r.pair_b, r.to_state) for r in history(load(session, Pair, (2, "x")))
                ] == [(2, "x", "fetched")]
        assert history(load(session, Pair, (1, "x"))) == []


class AnimalLog(TransitionLog, AttackBase):
    __tablename__ = "atk_animal_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    animal_id: Mapped[int] = mapped_column(sa.ForeignKey("atk_animals.id"))


class Animal(AttackBase):
    __tablename__ = "atk_animals"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(20))
    status: Mapped[str] = mapped_column(sa.String(20), default="fetching")
    attempts: Mapped[int] = mapped_column(default=0)
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "animal"}


@state_column("status", log=AnimalLog, attempts="attempts")
@state_column("mood", log=AnimalLog)
class Dog(Animal):
    __tablename__ = "atk_dogs"
    id: Mapped[int] = mapped_column(sa.ForeignKey("atk_animals.id"), primary_key=True)
    mood: Mapped[str] = mapped_column(sa.String(20), default="calm")
    __mapper_args__ = {"polymorphic_identity": "dog"}

    @transition(frm="fetching", to="fetched", on_error="fetch_failed")
    def fetch(self) -> None:
        raise Boom("dog")

    @transition(frm="calm", to="happy", column="mood", on_error="grumpy")
    def cheer(self) -> None:
        raise Boom("mood")


def test_joined_inheritance_with_the_log_pointing_at_the_parent_table(db: sa.Engine) -> None:
    with Session(db) as session, session.begin():
        session.add(Dog(id=7))
    with pytest.raises(Boom), Session(db) as session, session.begin():
        load(session, Dog, 7).fetch()
    with pytest.raises(Boom), Session(db) as session, session.begin():
        load(session, Dog, 7).cheer()
    with Session(db) as session:
        dog = load(session, Dog, 7)
        assert (dog.status, dog.mood, dog.attempts) == ("fetch_failed", "grumpy", 1)
        assert [(r.animal_id, r.column, r.to_state) for r in history(dog)] == [
            (7, "status", "fetch_failed"), (7, "mood", "grumpy")]


class CodedLog(TransitionLog, AttackBase):
    __tablename__ = "atk_coded_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    coded_code: Mapped[str] = mapped_column(sa.ForeignKey("atk_coded.code"))


@state_column("status", log=CodedLog)
class Coded(AttackBase):
    __tablename__ = "atk_coded"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    code: Mapped[str] = mapped_column(sa.String(10), unique=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="fetching")

    @transition(frm="fetching", to="fetched", on_error="fetch_failed")
    def fetch(self) -> None:
        raise Boom("coded")


def test_a_log_foreign_key_to_a_unique_column_and_a_uuid_key(db: sa.Engine) -> None:
    ident = uuid.uuid4()
    with Session(db) as session, session.begin():
        session.add(Coded(id=ident, code="C-1"))
    with pytest.raises(Boom), Session(db) as session, session.begin():
        coded = load(session, Coded, ident)
        session.expire(coded)
        coded.fetch()
    with Session(db) as session:
        coded = load(session, Coded, ident)
        assert coded.status == "fetch_failed"
        assert [(r.coded_code, r.to_state) for r in history(coded)] == [("C-1", "fetch_failed")]


class VerLog(TransitionLog, AttackBase):
    __tablename__ = "atk_ver_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    ver_id: Mapped[int] = mapped_column(sa.ForeignKey("atk_vers.id"))


@state_column("status", log=VerLog, attempts="attempts")
class Ver(AttackBase):
    __tablename__ = "atk_vers"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="fetching")
    attempts: Mapped[int] = mapped_column(default=0)
    note: Mapped[str | None] = mapped_column(sa.String(40))
    version: Mapped[int] = mapped_column(default=1)
    __mapper_args__ = {"version_id_col": version}

    @transition(frm="fetching", to="fetched", on_error="fetch_failed")
    def fetch(self) -> None:
        raise Boom("versioned")


def test_version_id_col_job_pattern(db: sa.Engine) -> None:
    with Session(db) as session, session.begin():
        session.add(Ver(id=1))
    with pytest.raises(Boom), Session(db) as session, session.begin():
        load(session, Ver, 1).fetch()
    with Session(db) as session:
        ver = load(session, Ver, 1)
        assert (ver.status, ver.attempts, ver.version) == ("fetch_failed", 1, 2)


def test_version_id_col_catch_and_commit_then_edit(db: sa.Engine) -> None:
    with Session(db) as session, session.begin():
        session.add(Ver(id=1))
    with Session(db) as session, session.begin():
        ver = load(session, Ver, 1)
        with pytest.raises(Boom):
            ver.fetch()
        ver.note = "after"  # the ORM's own versioned UPDATE must see the bumped version
    with Session(db) as session:
        ver = load(session, Ver, 1)
        assert (ver.status, ver.attempts, ver.note, ver.version) == ("fetch_failed", 1,
                                                                     "after", 3)


def test_version_id_col_record_survives_a_rollback_after_the_caller_wrote_the_row(
        db: sa.Engine) -> None:
    """As test_recovery pins for an unversioned model: the caller edited the row (and so
    bumped its version) before the failing transition, then rolled back. The job must
    still end in its error state."""
    with Session(db) as session, session.begin():
        session.add(Ver(id=1))
    with pytest.raises(Boom) as raised, Session(db) as session, session.begin():
        ver = load(session, Ver, 1)
        ver.note = "the caller's"
        session.flush()
        ver.fetch()
    with Session(db) as session:
        ver = load(session, Ver, 1)
        assert ver.status == "fetch_failed", notes(raised.value)
        assert ver.note is None
        assert ver.version == 2  # one bump from the committed version, not from the caller's


class Phase(enum.Enum):
    fetching = "fetching"
    fetched = "fetched"
    failed = "failed"


class Level(enum.IntEnum):
    low = 1
    high = 2
    broken = 3


class EnumLog(TransitionLog, AttackBase):
    __tablename__ = "atk_enum_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    enumed_id: Mapped[int] = mapped_column(sa.ForeignKey("atk_enumed.id"))


class IntLog(TransitionLog, AttackBase):
    __tablename__ = "atk_int_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    enumed_id: Mapped[int] = mapped_column(sa.ForeignKey("atk_enumed.id"))
    from_state: Mapped[int] = mapped_column()
    to_state: Mapped[int] = mapped_column()


@state_column("phase", log=EnumLog)
@state_column("level", log=IntLog, attempts="attempts")
class Enumed(AttackBase):
    __tablename__ = "atk_enumed"
    id: Mapped[int] = mapped_column(primary_key=True)
    phase: Mapped[Phase] = mapped_column(default=Phase.fetching)
    level: Mapped[int] = mapped_column(default=1)
    attempts: Mapped[int] = mapped_column(default=0)

    @transition(frm=Phase.fetching, to=Phase.fetched, on_error=Phase.failed)
    def by_member(self) -> None:
        raise Boom("member")

    @transition(frm="fetching", to="fetched", on_error="failed")
    def by_string(self) -> None:
        raise Boom("string")

    @transition(frm=1, to=2, column="level", on_error=3)
    def lift(self) -> None:
        raise Boom("int")


@pytest.mark.parametrize("event", ["by_member", "by_string"])
def test_enum_state_columns_with_on_error(db: sa.Engine, event: str) -> None:
    with Session(db) as session, session.begin():
        session.add(Enumed(id=1))
    with pytest.raises(Boom), Session(db) as session, session.begin():
        getattr(load(session, Enumed, 1), event)()
    with Session(db) as session:
        obj = load(session, Enumed, 1)
        assert obj.phase is Phase.failed
        assert [(r.from_state, r.to_state) for r in history(obj)] == [("fetching", "failed")]


def test_enum_catch_and_commit_shows_the_member(db: sa.Engine) -> None:
    with Session(db) as session, session.begin():
        session.add(Enumed(id=1))
    with Session(db) as session, session.begin():
        obj = load(session, Enumed, 1)
        with pytest.raises(Boom):
            obj.by_string()
        assert obj.phase is Phase.failed


def test_an_integer_state_column_with_on_error(db: sa.Engine) -> None:
    with Session(db) as session, session.begin():
        session.add(Enumed(id=1))
    with pytest.raises(Boom), Session(db) as session, session.begin():
        load(session, Enumed, 1).lift()
    with Session(db) as session:
        obj = load(session, Enumed, 1)
        assert (obj.level, obj.attempts) == (3, 1)
        assert [(r.from_state, r.to_state) for r in history(obj)] == [(1, 3)]


def dataclass_models(log_on_the_dataclass_base: bool = True) -> tuple[Any, type[Any]]:
    """A MappedAsDataclass base, its log model and its model, declared on demand. The log
    model on the dataclass base itself, or on a plain base sharing its MetaData (the
    workaround)."""

    class DataBase(MappedAsDataclass, DeclarativeBase):
        pass

    class PlainBase(DeclarativeBase):
        metadata = DataBase.metadata

    if log_on_the_dataclass_base:
        class DcLog(TransitionLog, DataBase):
            __tablename__ = "atk_dc_log"
            id: Mapped[int] = mapped_column(primary_key=True, init=False)
            dc_id: Mapped[int] = mapped_column(sa.ForeignKey("atk_dcs.id"), init=False)
        log: type[Any] = DcLog
    else:
        class PlainDcLog(TransitionLog, PlainBase):
            __tablename__ = "atk_dc_log"
            id: Mapped[int] = mapped_column(primary_key=True)
            dc_id: Mapped[int] = mapped_column(sa.ForeignKey("atk_dcs.id"))
        log = PlainDcLog

    @state_column("status", log=log, attempts="attempts", last_error="last_error")
    class Dc(DataBase):
        __tablename__ = "atk_dcs"
        id: Mapped[int] = mapped_column(primary_key=True)
        status: Mapped[str] = mapped_column(sa.String(20), default="fetching")
        attempts: Mapped[int] = mapped_column(default=0)
        last_error: Mapped[str | None] = mapped_column(sa.String(200), default=None)

        @transition(frm="fetching", to="fetched", on_error="fetch_failed")
        def fetch(self) -> None:
            raise Boom("dataclass")

    configure_mappers()
    return DataBase.metadata, Dc


def test_a_dataclass_mapped_model_with_its_log_on_a_plain_base(engine: sa.Engine) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sa_exc.SADeprecationWarning)
        metadata, Dc = dataclass_models(log_on_the_dataclass_base=False)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    try:
        with Session(engine) as session, session.begin():
            session.add(Dc(id=1))
        with Session(engine) as session, session.begin():
            dc = load(session, Dc, 1)
            with pytest.raises(Boom):
                dc.fetch()
            assert (dc.status, dc.attempts) == ("fetch_failed", 1)
        with pytest.raises(Boom), Session(engine) as session, session.begin():
            load(session, Dc, 1).status = "fetching"
            session.flush()
            load(session, Dc, 1).fetch()
        with Session(engine) as session:
            dc = load(session, Dc, 1)
            assert (dc.status, dc.attempts) == ("fetch_failed", 1)
            assert [r.to_state for r in history(dc)] == ["fetch_failed"]
    finally:
        metadata.drop_all(engine)


class StrictLog(TransitionLog, AttackBase):
    __tablename__ = "atk_strict_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    strict_id: Mapped[int] = mapped_column(sa.ForeignKey("atk_stricts.id"))
    actor_id: Mapped[int]  # NOT NULL, no default: only a context can fill it
    source: Mapped[str] = mapped_column(sa.String(10), server_default="app")


@state_column("status", log=StrictLog)
class Strict(AttackBase):
    __tablename__ = "atk_stricts"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="fetching")

    @transition(frm="fetching", to="fetched", on_error="fetch_failed")
    def fetch(self, fail: bool) -> None:
        if fail:
            raise Boom("strict")


def test_a_log_model_with_a_required_column_nobody_fills(db: sa.Engine) -> None:
    """Pinned: a success fails with the database's IntegrityError (and enters the error
    state, whose row fails the same way: so nothing is written); a failing body
    propagates its own error with a note naming the refused log row."""
    with Session(db) as session, session.begin():
        session.add(Strict(id=1))
    # MariaDB reports a missing value as an OperationalError (1364).
    with pytest.raises(sa_exc.DBAPIError) as integrity, Session(db) as session, \
            session.begin():
        load(session, Strict, 1).fetch(fail=False)
    assert any("could not" in n for n in notes(integrity.value)), notes(integrity.value)
    with pytest.raises(Boom) as raised, Session(db) as session, session.begin():
        load(session, Strict, 1).fetch(fail=True)
    assert any("IntegrityError" in n or "1364" in n for n in notes(raised.value)), \
        notes(raised.value)
    with litestate.context(actor_id=3):
        with pytest.raises(Boom), Session(db) as session, session.begin():
            load(session, Strict, 1).fetch(fail=True)
    with Session(db) as session:
        strict = load(session, Strict, 1)
        assert strict.status == "fetch_failed"
        [logged] = history(strict)
        assert (logged.actor_id, logged.source) == (3, "app")


# -- asyncio ---------------------------------------------------------------------------


class AsyncJob(AJob):
    """The same table, with an async body."""

    @transition(frm="fetching", to="fetched", on_error="fetch_failed")
    async def afetch(self, fail: bool = True) -> None:
        await asyncio.sleep(0)
        log_data(fetched_by="async")
        await asyncio.sleep(0)
        if fail:
            raise Boom("async body")


def test_an_async_body_with_on_error_and_log_data(tmp_path: Path) -> None:
    path = tmp_path / "async.db"
    sync = enable_savepoints(sa.create_engine(f"sqlite:///{path}"))
    AttackBase.metadata.create_all(sync)
    new_job(sync)

    async def work() -> list[Any]:
        aengine = create_async_engine(f"sqlite+aiosqlite:///{path}")
        enable_savepoints(aengine)
        try:
            with pytest.raises(Boom):
                async with AsyncSession(aengine) as session, session.begin():
                    job = await session.get(AsyncJob, 1)
                    assert job is not None
                    with litestate.context(actor_id=11):
                        await job.afetch()
            async with AsyncSession(aengine) as session:
                job = await session.get(AsyncJob, 1)
                return await session.run_sync(lambda _: history(job))
        finally:
            await aengine.dispose()

    logged = asyncio.run(asyncio.wait_for(work(), 60))
    assert [(r.to_state, r.actor_id, r.data["fetched_by"]) for r in logged] == [
        ("fetch_failed", 11, "async")]
    assert job_row(sync)["status"] == "fetch_failed"
    sync.dispose()


def test_history_under_an_async_session_says_how_to_call_it(tmp_path: Path) -> None:
    """history() of an AsyncSession's object: either it works or the error says how."""
    path = tmp_path / "async.db"
    sync = enable_savepoints(sa.create_engine(f"sqlite:///{path}"))
    AttackBase.metadata.create_all(sync)
    new_job(sync)

    async def work() -> None:
        aengine = create_async_engine(f"sqlite+aiosqlite:///{path}")
        try:
            async with AsyncSession(aengine) as session:
                job = await session.get(AJob, 1)
                with pytest.raises(sa_exc.MissingGreenlet, match=r"aio\.history"):
                    history(job)
                assert await litestate.aio.history(job) == []
        finally:
            await aengine.dispose()

    asyncio.run(asyncio.wait_for(work(), 60))
    sync.dispose()


# -- history's order, log_data's reach --------------------------------------------------


class TickLog(TransitionLog, AttackBase):
    __tablename__ = "atk_tick_log"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tick_id: Mapped[int] = mapped_column(sa.ForeignKey("atk_ticks.id"))


class TockLog(TransitionLog, AttackBase):
    __tablename__ = "atk_tock_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    tick_id: Mapped[int] = mapped_column(sa.ForeignKey("atk_ticks.id"))


@state_column("status", log=TickLog)
@state_column("other", log=TockLog)
class Tick(AttackBase):
    __tablename__ = "atk_ticks"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="a")
    other: Mapped[str] = mapped_column(sa.String(20), default="x")

    @transition(frm="a", to="b")
    def ab(self) -> None:
        pass

    @transition(frm="b", to="a")
    def ba(self) -> None:
        pass

    @transition(frm="x", to="y", column="other")
    def xy(self) -> None:
        pass

    @transition(frm="y", to="x", column="other")
    def yx(self) -> None:
        pass


def test_history_keeps_the_write_order_when_the_clock_ties_and_the_key_is_ordered(
        db: sa.Engine, frozen_clock: datetime) -> None:
    """A frozen clock (freezegun in the user's tests), a coarse one, or a database that
    keeps whole seconds: rows with the same ``at`` come back in the log model's key
    order, which an autoincrement key keeps (the README says so; a UUID key cannot)."""
    with Session(db) as session, session.begin():
        session.add(Tick(id=1))
    with Session(db) as session, session.begin():
        tick = load(session, Tick, 1)
        for _ in range(4):
            tick.xy()
            tick.yx()
    with Session(db) as session:
        order = [(r.from_state, r.to_state) for r in history(load(session, Tick, 1))]
    assert order == [("x", "y"), ("y", "x")] * 4


class QuietLog(TransitionLog, AttackBase):
    __tablename__ = "atk_quiet_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    quiet_id: Mapped[int] = mapped_column(sa.ForeignKey("atk_quiets.id"))


@state_column("status", log=QuietLog)
class Quiet(AttackBase):
    __tablename__ = "atk_quiets"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="a")
    muted: Mapped[bool] = mapped_column(default=False)

    @transition(frm="a", to="b")
    def loud(self, other: Quiet) -> None:
        other.hush()

    @transition(frm="a", to="b", log=False)
    def hush(self) -> None:
        log_data(leaked="from hush")

    @transition(frm="a", to="b")
    def loud_then_note(self, other: Quiet) -> None:
        other.mute()
        log_data(after="mute")

    @transition(frm="a", to="b", log=False)
    def mute(self) -> None:
        self.muted = True  # a body: an empty one is never called

    @transition(frm="a", to="b", log_args=("reason", "loudness"))
    def note(self, reason: str, loudness: int = 3) -> None:
        pass


def test_log_data_in_an_unlogged_body_does_not_land_in_another_rows_log(
        db: sa.Engine) -> None:
    """hush() writes no log row: its log_data() must not silently decorate the row of
    the transition that called it (another object's)."""
    with Session(db) as session, session.begin():
        session.add_all([Quiet(id=1), Quiet(id=2)])
    with Session(db) as session, session.begin():
        one, two = load(session, Quiet, 1), load(session, Quiet, 2)
        try:
            one.loud(two)
        except RuntimeError:
            return  # refused, as outside any logged body: fine
        [logged] = history(one)
        assert "leaked" not in logged.data, logged.data


def test_log_data_after_an_unlogged_inner_transition_fills_the_outer_row(
        db: sa.Engine) -> None:
    """mute() writes no row; once it returns, loud_then_note()'s body has its own row to
    fill again."""
    with Session(db) as session, session.begin():
        session.add_all([Quiet(id=1), Quiet(id=2)])
    with Session(db) as session, session.begin():
        one, two = load(session, Quiet, 1), load(session, Quiet, 2)
        one.loud_then_note(two)
        assert [row.data for row in history(one)] == [{"after": "mute"}]
        assert (two.status, two.muted, history(two)) == ("b", True, [])


def test_log_args_naming_a_parameter_left_to_its_default(db: sa.Engine) -> None:
    with Session(db) as session, session.begin():
        session.add(Quiet(id=1))
    with Session(db) as session, session.begin():
        load(session, Quiet, 1).note("calm")
        assert [row.data for row in history(load(session, Quiet, 1))] == [
            {"reason": "calm", "loudness": 3}]


def test_a_succeeding_body_whose_log_row_fails_enters_the_error_state(db: sa.Engine) -> None:
    """Pinned: the log INSERT fails (a payload JSON cannot hold) after a body that
    succeeded: the transition fails with that error and the row enters its error state
    (the error's row, without the payload, is written)."""
    new_job(db)
    # SQLite's driver path wraps the TypeError in a StatementError; psycopg's does not.
    with pytest.raises((sa_exc.StatementError, TypeError)), Session(db) as session, \
            session.begin():
        load(session, AJob, 1).fetch(payload={1, 2})
    assert job_row(db)["status"] == "fetch_failed"
    [(_, _, to, data)] = job_log(db)
    assert "payload" not in data


def test_a_commit_that_postgresql_turns_into_a_rollback_keeps_the_record(
        pg: sa.Engine) -> None:
    """Catch-and-commit, after a statement of the caller's failed and was ignored: the
    transaction is aborted, PostgreSQL answers the COMMIT with a ROLLBACK, and psycopg
    raises nothing (core's _forget_aborted knows it for transition_committed). The error
    record went with it, and nothing replays it."""
    AttackBase.metadata.drop_all(pg)
    AttackBase.metadata.create_all(pg)
    try:
        new_job(pg)
        with Session(pg) as session, session.begin():
            with pytest.raises(Boom):
                load(session, AJob, 1).fetch(error=Boom("caught"))
            with pytest.raises(sa_exc.DBAPIError):
                session.execute(sa.text("SELECT 1/0"))
        assert job_row(pg)["status"] == "fetch_failed"
        assert job_row(pg)["attempts"] == 1
    finally:
        AttackBase.metadata.drop_all(pg)


class Expunging(Exception):
    pass


class ExpungingJob(AJob):
    """The same table, with a body that takes its object out of the session."""

    @transition(frm="fetching", to="fetched", on_error="fetch_failed")
    def fetch_expunged(self) -> None:
        session = object_session(self)
        assert session is not None
        session.expunge(self)
        raise Expunging("gone from the session")


def test_a_body_that_expunges_its_object_still_propagates_its_error(db: sa.Engine) -> None:
    new_job(db)
    with Session(db) as session, session.begin():
        job = load(session, ExpungingJob, 1)
        with pytest.raises(Exception) as raised:
            job.fetch_expunged()
        assert type(raised.value) is Expunging, repr(raised.value)
    assert job_row(db)["status"] == "fetch_failed"
