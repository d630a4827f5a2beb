"""litestate.transition_many: many rows in one statement, with timestamps, log rows and
signals, rolled back as one; on SQLite, PostgreSQL and MariaDB, on each path (one
statement with a WITH query on PostgreSQL, UPDATE ... RETURNING, and the
select-then-update path of the databases without RETURNING: MariaDB's, forced on the
others)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

import litestate
from litestate import bulk
from tests.conftest import FROZEN, SignalLog, StatementLog, load
from tests.queue_models import (
    Color,
    Job,
    JobLog,
    Lamp,
    LampLog,
    QueueBase,
    Seat,
    Tag,
    TagLog,
)

PATHS = [None, "returning", "select-then-update"]


@pytest.fixture
def db(engine: sa.Engine) -> Iterator[sa.Engine]:
    QueueBase.metadata.drop_all(engine)
    QueueBase.metadata.create_all(engine)
    yield engine
    QueueBase.metadata.drop_all(engine)


@pytest.fixture(params=PATHS, ids=["default", "returning", "select-then-update"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """Each path the dialects take; PostgreSQL and SQLite take the others when forced."""
    monkeypatch.setattr(bulk, "_force_path", request.param)
    return request.param  # type: ignore[no-any-return]


STATES = ["queued", "running", "done"]


def seed(session: Session, count: int = 30) -> None:
    session.add_all(Job(state=STATES[i % 3], priority=i % 5, attempts=i % 4,
                        urgent=i % 7 == 0) for i in range(count))
    session.commit()


def table(session: Session) -> dict[int, tuple[str, datetime | None, datetime | None]]:
    return {row.id: (row.state, row.started_at, row.state_changed_at)
            for row in session.execute(sa.select(Job.id, Job.state, Job.started_at,
                                                 Job.state_changed_at))}


def logged(session: Session) -> list[tuple[int, str, str, str, str | None]]:
    return sorted((r.job_id, r.event, r.from_state, r.to_state, r.worker)
                  for r in session.execute(sa.select(JobLog.job_id, JobLog.event,
                                                     JobLog.from_state, JobLog.to_state,
                                                     JobLog.worker)))


def naive(at: datetime | None) -> datetime | None:
    return None if at is None else at.replace(tzinfo=None)


def test_where_and_limit_move_exactly_matching_rows_in_frm_with_stamps_and_log_rows(
        db: sa.Engine, path: str | None, frozen_clock: datetime) -> None:
    with Session(db) as session:
        seed(session)
        before = table(session)
        with litestate.context(worker="batch-1", reason="nightly"):
            moved = litestate.transition_many(session, Job.start, where=Job.priority >= 2,
                                              limit=4)
        assert len(moved) == len(set(moved)) == 4
        session.commit()
        after = table(session)
        matching = {i for i, (state, *_) in before.items() if state == "queued"
                    and load(session, Job, i).priority >= 2}
        assert set(moved) <= matching
        for i, row in after.items():
            if i in moved:
                assert (row[0], naive(row[1]), naive(row[2])) == ("running", FROZEN, FROZEN)
            else:
                assert row == before[i]
        assert logged(session) == sorted((i, "start", "queued", "running", "batch-1")
                                         for i in moved)
        rows = session.scalars(sa.select(JobLog)).all()
        assert {naive(r.at) for r in rows} == {FROZEN}
        assert {str(r.data) for r in rows} == {str({"reason": "nightly"})}


def test_where_none_moves_every_row_in_frm_and_none_other(db: sa.Engine,
                                                          path: str | None) -> None:
    with Session(db) as session:
        seed(session)
        before = table(session)
        moved = litestate.transition_many(session, Job.complete)
        session.commit()
        assert set(moved) == {i for i, row in before.items() if row[0] == "running"}
        assert {i for i, row in table(session).items() if row[0] == "done"} == \
            {i for i, row in before.items() if row[0] in ("running", "done")}


def test_several_from_states_log_each_rows_own(db: sa.Engine, path: str | None,
                                               signals: SignalLog) -> None:
    with Session(db) as session:
        seed(session, 12)
        before = table(session)
        moved = litestate.transition_many(session, Job.cancel, where=Job.priority < 3)
        session.commit()
        assert set(moved) == {i for i, row in before.items()
                              if row[0] in ("queued", "running")
                              and load(session, Job, i).priority < 3}
        assert logged(session) == sorted((i, "cancel", before[i][0], "canceled", None)
                                         for i in moved)
        heard = {h.payload["record_id"]: h.payload["from_state"]
                 for h in signals.of("transition-committed")}
        assert heard == {i: before[i][0] for i in moved}


def test_a_log_column_with_a_default_gets_it_unless_the_context_fills_it(
        db: sa.Engine, path: str | None) -> None:
    with Session(db) as session:
        seed(session, 6)
        litestate.transition_many(session, Job.start)
        with litestate.context(queue="side"):
            litestate.transition_many(session, Job.complete)
        session.commit()
        assert {(r.event, r.queue) for r in session.scalars(sa.select(JobLog))} == {
            ("start", "main"), ("complete", "side")}


def test_a_key_that_is_not_the_tables_first_column(db: sa.Engine, path: str | None) -> None:
    with Session(db) as session:
        session.add_all(Tag(id=i, label=f"tag-{i}") for i in (3, 5, 8))
        session.commit()
        moved = litestate.transition_many(session, Tag.see, where=Tag.id > 3)
        session.commit()
        assert sorted(moved) == [5, 8]
        assert sorted(session.execute(sa.select(TagLog.tag_id, TagLog.from_state,
                                                TagLog.to_state)).all()) == [
            (5, "new", "seen"), (8, "new", "seen")]
        assert dict(session.execute(sa.select(Tag.id, Tag.status)).all()) == {
            3: "new", 5: "seen", 8: "seen"}


def test_a_batch_logs_the_defaults_of_log_args(db: sa.Engine, path: str | None) -> None:
    with Session(db) as session:
        session.add_all(Tag(id=i, label=f"tag-{i}", status="seen") for i in (1, 2))
        session.commit()
        with litestate.context(by="cron"):
            assert sorted(litestate.transition_many(session, Tag.close)) == [1, 2]
        session.commit()
        assert [(r.tag_id, r.data) for r in session.scalars(
            sa.select(TagLog).order_by(TagLog.tag_id))] == [
            (1, {"by": "cron", "why": "swept"}), (2, {"by": "cron", "why": "swept"})]


def test_frm_any_state_moves_every_matching_row(db: sa.Engine, path: str | None) -> None:
    with Session(db) as session:
        seed(session, 9)
        before = table(session)
        moved = litestate.transition_many(session, Job.archive, where=Job.id <= 6)
        session.commit()
        assert sorted(moved) == [1, 2, 3, 4, 5, 6]
        assert logged(session) == [(i, "archive", before[i][0], "archived", None)
                                   for i in range(1, 7)]


def test_objects_in_the_session_show_the_new_state_and_a_rollback_restores_them(
        db: sa.Engine, path: str | None, frozen_clock: datetime) -> None:
    with Session(db) as session:
        seed(session, 6)
        held = [load(session, Job, i) for i in (1, 2, 4)]  # queued, running, queued
        moved = litestate.transition_many(session, Job.start)
        assert sorted(moved) == [1, 4]
        assert [(j.state, naive(j.started_at)) for j in held] == [
            ("running", FROZEN), ("running", None), ("running", FROZEN)]
        session.rollback()
        assert [j.state for j in held] == ["queued", "running", "queued"]
        assert logged(session) == []


def test_an_unsaved_edit_is_flushed_first(db: sa.Engine, path: str | None) -> None:
    with Session(db) as session:
        seed(session, 3)
        job = load(session, Job, 2)
        job.state = "queued"  # not flushed yet: the batch sees it
        assert sorted(litestate.transition_many(session, Job.start)) == [1, 2]
        assert job.state == "running"


def test_a_failing_log_insert_rolls_the_batch_back_as_one(db: sa.Engine,
                                                          path: str | None) -> None:
    """A value the JSON column cannot take: no state moved, no row logged."""
    with Session(db) as session:
        seed(session, 6)
        held = load(session, Job, 1)
        before = table(session)
        with litestate.context(when=object()), pytest.raises(
                (TypeError, sa.exc.StatementError)):
            litestate.transition_many(session, Job.start)
        if db.dialect.name == "postgresql" and path is None:  # one statement
            with pytest.raises(sa.exc.PendingRollbackError):
                session.commit()
        else:  # a SAVEPOINT around UPDATE and INSERT
            assert held.state == "queued"
        session.rollback()
        assert held.state == "queued"
        assert table(session) == before
        assert logged(session) == []


def test_the_callers_rollback_takes_the_batch_with_it(db: sa.Engine,
                                                      signals: SignalLog) -> None:
    with Session(db) as session:
        seed(session, 6)
        before = table(session)
        litestate.transition_many(session, Job.start)
        session.rollback()
        assert table(session) == before
        assert logged(session) == []
        assert signals.of("transition-committed") == []


def test_committed_is_sent_per_row_after_the_commit_and_succeeded_inside(
        db: sa.Engine, path: str | None, signals: SignalLog) -> None:
    with Session(db) as session:
        seed(session, 9)
        held = load(session, Job, 1)
        moved = litestate.transition_many(session, Job.start)
        succeeded = signals.of("transition-succeeded")
        assert sorted(h.payload["record_id"] for h in succeeded) == sorted(moved)
        assert {h.payload["record_id"]: h.payload["record"] for h in succeeded}[1] is held
        assert all(h.payload["record"] is None for h in succeeded
                   if h.payload["record_id"] != 1)
        assert {h.sender for h in succeeded} == {Job}
        assert {(h.payload["from_state"], h.payload["to_state"], h.payload["event"],
                 h.payload["duration"]) for h in succeeded} == {
                     ("queued", "running", "start", None)}
        assert signals.of("transition-committed") == []
        session.commit()
        committed = signals.of("transition-committed")
        assert sorted(h.payload["record_id"] for h in committed) == sorted(moved)


def test_a_succeeded_receiver_that_raises_undoes_the_batch(db: sa.Engine) -> None:
    def refuse(sender: Any, **payload: Any) -> None:
        raise RuntimeError("no")

    with Session(db) as session:
        seed(session, 6)
        before = table(session)
        with litestate.transition_succeeded.connected_to(refuse, sender=Job), \
                pytest.raises(RuntimeError):
            litestate.transition_many(session, Job.start)
        session.commit()  # the SAVEPOINT rolled back: the caller's transaction goes on
        assert table(session) == before
        assert logged(session) == []


def test_sql_per_batch_is_constant(db: sa.Engine, sql: StatementLog) -> None:
    with Session(db) as session:
        seed(session, 60)
        session.connection()
        for limit in (1, 10, None):
            sql.statements.clear()
            litestate.transition_many(session, Job.start, limit=limit)
            if db.dialect.name == "postgresql":
                assert sql.verbs() == ["WITH"]  # UPDATE and its log INSERT, one statement
            elif db.dialect.name == "mysql":  # no UPDATE ... RETURNING: lock, then update
                assert sql.verbs() == ["SAVEPOINT", "SELECT", "UPDATE", "INSERT", "RELEASE"]
                assert sql.statements[1].rstrip().endswith("FOR UPDATE")
            else:
                assert sql.verbs() == ["SAVEPOINT", "UPDATE", "INSERT", "RELEASE"]
            session.rollback()
            session.connection()
        sql.statements.clear()
        session.add_all(Seat(row="A", number=i) for i in range(10))
        session.flush()
        sql.statements.clear()
        assert len(litestate.transition_many(session, Seat.hold)) == 10
        assert sql.verbs() == (["SELECT", "UPDATE"] if db.dialect.name == "mysql"
                               else ["UPDATE"])


def test_composite_keys_are_tuples(db: sa.Engine, path: str | None) -> None:
    with Session(db) as session:
        session.add_all(Seat(row=row, number=n) for row in "AB" for n in range(3))
        session.commit()
        moved = litestate.transition_many(session, Seat.hold, where=Seat.number > 0,
                                          limit=3)
        assert len(moved) == 3
        assert all(isinstance(key, tuple) and key[1] > 0 for key in moved)
        session.commit()
        held = {(r.row, r.number) for r in session.execute(
            sa.select(Seat.row, Seat.number).where(Seat.status == "held"))}
        assert held == set(moved)


def test_an_enum_state_is_logged_as_its_value_and_a_uuid_log_key_per_row(
        db: sa.Engine, path: str | None) -> None:
    with Session(db) as session:
        session.add_all(Lamp(color=c) for c in [Color.RED, Color.GREEN, Color.BLUE] * 2)
        session.commit()
        moved = litestate.transition_many(session, Lamp.cool)
        session.commit()
        assert sorted(moved) == [1, 2, 4, 5]
        rows = session.execute(sa.select(LampLog.id, LampLog.lamp_id, LampLog.from_state,
                                         LampLog.to_state)).all()
        assert sorted((r.lamp_id, r.from_state, r.to_state) for r in rows) == [
            (1, "red", "blue"), (2, "green", "blue"), (4, "red", "blue"), (5, "green", "blue")]
        assert len({r.id for r in rows}) == 4
        assert set(session.scalars(sa.select(Lamp.color))) == {Color.BLUE}


def test_guards_with_a_sql_form_apply_in_the_where(db: sa.Engine, path: str | None) -> None:
    """A hybrid_property (attempts < 3) and a Boolean column: the same rows as the single
    transition's Python guard would let through."""
    with Session(db) as session:
        seed(session, 30)
        jobs = session.scalars(sa.select(Job).where(Job.state == "queued")).all()
        retryable = {j.id for j in jobs if litestate.can_transition(j, "retry")}
        urgent = {j.id for j in jobs if j.urgent}
        assert set(litestate.transition_many(session, Job.retry)) == retryable
        session.rollback()
        assert set(litestate.transition_many(session, Job.rush)) == urgent


# -- refusals: a clear error, nothing written ---------------------------------------------


def plain_function(self: Any) -> None:
    pass


@pytest.mark.parametrize(("event", "kwargs", "error", "words"), [
    (Job.skip, {}, TypeError, "has the guard Job.<lambda>"),
    (Job.run, {}, TypeError, "has a body"),
    (Job.hold, {}, TypeError, "takes arguments"),
    (Job.finish, {}, TypeError, "leased=True"),
    (Job.start, {"where": JobLog.worker == "x"}, ValueError, "reads queue_job_log"),
    (Job.start, {"where": sa.and_(Job.id > 0, Lamp.id > 0)}, ValueError, "queue_lamps"),
    (Job.start, {"where": Job.priority}, TypeError, "a SQL condition"),
    (Job.start, {"where": "priority > 1"}, TypeError, "a SQL condition"),
    (Job.start, {"limit": 0}, ValueError, "positive int"),
    (Job.start, {"limit": -3}, ValueError, "positive int"),
    (Job.start, {"limit": True}, TypeError, "positive int"),
    (Job.start, {"limit": "3"}, TypeError, "positive int"),
    (plain_function, {}, TypeError, "takes a transition of a mapped class"),
    (Job.retryable, {}, TypeError, "takes a transition of a mapped class"),
], ids=["python guard", "body", "arguments", "leased", "other table", "other table in and",
        "not a condition", "a string", "zero", "negative", "bool", "str", "a function",
        "a hybrid"])
def test_bad_input_is_refused_before_any_sql(db: sa.Engine, sql: StatementLog, event: Any,
                                             kwargs: dict[str, Any], error: type[Exception],
                                             words: str) -> None:
    with Session(db) as session:
        seed(session, 6)
        before = table(session)
        session.connection()
        sql.statements.clear()
        with pytest.raises(error, match=words.replace("(", r"\(").replace(".", r"\.")):
            litestate.transition_many(session, event, **kwargs)
        assert sql.statements == []
        session.commit()
        assert table(session) == before


def test_a_bound_method_is_refused(db: sa.Engine) -> None:
    with Session(db) as session:
        seed(session, 1)
        job = load(session, Job, 1)
        with pytest.raises(TypeError, match=r"Job\.start"):
            litestate.transition_many(session, job.start)


def test_a_subquery_on_another_table_is_fine(db: sa.Engine) -> None:
    with Session(db) as session:
        seed(session, 6)
        with litestate.context(worker="w"):
            litestate.transition_many(session, Job.start, where=Job.id == 1)
        session.commit()
        logged_ids = sa.select(JobLog.job_id).where(JobLog.worker == "w")
        moved = litestate.transition_many(session, Job.complete,
                                          where=Job.id.in_(logged_ids))
        assert moved == [1]


# -- every batch: the rows in frm matching where, at most limit of them --------------------

ROWS = st.lists(st.tuples(st.sampled_from(["queued", "running", "done", "canceled"]),
                          st.integers(0, 4)), min_size=0, max_size=25)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ROWS, threshold=st.none() | st.integers(0, 5),
       limit=st.none() | st.integers(1, 30), path_=st.sampled_from(PATHS))
def test_a_batch_moves_exactly_the_matching_rows_up_to_limit(
        db: sa.Engine, monkeypatch: pytest.MonkeyPatch, rows: list[tuple[str, int]],
        threshold: int | None, limit: int | None, path_: str | None) -> None:
    monkeypatch.setattr(bulk, "_force_path", path_)
    with Session(db) as session:
        session.execute(sa.delete(JobLog))
        session.execute(sa.delete(Job))
        session.add_all(Job(state=state, priority=priority) for state, priority in rows)
        session.commit()
        before = {job.id: (job.state, job.priority) for job in session.scalars(sa.select(Job))}
        where = None if threshold is None else Job.priority >= threshold
        moved = litestate.transition_many(session, Job.cancel, where=where, limit=limit)
        session.commit()
        matching = {i for i, (state, priority) in before.items()
                    if state in ("queued", "running")
                    and (threshold is None or priority >= threshold)}
        assert len(moved) == len(set(moved)) == min(len(matching), limit or len(matching))
        assert set(moved) <= matching
        after = {job.id: job.state for job in session.scalars(sa.select(Job))}
        assert after == {i: "canceled" if i in moved else state
                         for i, (state, _) in before.items()}
        assert logged(session) == sorted((i, "cancel", before[i][0], "canceled", None)
                                         for i in moved)
