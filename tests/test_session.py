"""Objects in a session: the atomic section, the caller's transaction, signals.

Semantics 1, 2, 5 and 7 of the core issue."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import DetachedInstanceError

import litestate
from litestate import GuardError, InvalidStateError
from tests.conftest import SignalLog, StatementLog, load, recording
from tests.models import Job, PaymentIntent, PaymentStatus, Todo, TodoEvent


def _todo(session: Session, **values: object) -> Todo:
    todo = Todo(title="write tests", **values)
    session.add(todo)
    session.commit()
    return todo


def _row(session: Session, todo_id: int) -> Any:
    """The row as the database has it, read on a connection of its own."""
    bind = session.get_bind()
    assert isinstance(bind, sa.Engine)
    with bind.connect() as conn:
        row = conn.execute(sa.select(Todo.status, Todo.started_at).where(Todo.id == todo_id)).one()
    return row


def test_a_transition_writes_state_timestamp_and_body_in_the_callers_transaction(
        session: Session, frozen_clock: datetime) -> None:
    todo = _todo(session)
    assert todo.start("ada") is None
    assert (todo.status, todo.started_at, todo.started_by) == ("doing", frozen_clock, "ada")
    session.rollback()  # litestate did not commit: the caller's rollback undoes it all
    assert todo.status == "pending"
    assert todo.started_at is None
    assert session.scalars(sa.select(TodoEvent)).all() == []


def test_the_write_is_flushed_but_not_committed(session: Session) -> None:
    todo = _todo(session)
    todo.start("ada")
    assert session.in_transaction()
    assert _row(session, todo.id).status == "pending"  # another connection: not committed
    session.commit()
    assert _row(session, todo.id).status == "doing"


def test_the_body_return_value_and_arguments_pass_through(session: Session) -> None:
    follower = Todo(title="after", status="blocked")
    todo = _todo(session)
    follower.follows_id = todo.id
    session.add(follower)
    session.commit()
    assert todo.complete(user="grace") == 1
    assert (todo.status, todo.completed_by, follower.status) == ("completed", "grace", "pending")


def test_a_raising_body_rolls_back_its_savepoint_and_keeps_the_callers_work(
        session: Session, signals: SignalLog) -> None:
    todo = _todo(session)
    other = _todo(session)
    other.title = "flushed before"
    session.flush()
    todo.title = "pending edit"

    class Boom(Exception):
        pass

    boom = Boom("x")

    def explode() -> None:
        raise boom

    with pytest.raises(Boom) as info:
        litestate.transition_state(todo, event="start", frm="pending", to="doing",
                                   timestamp="started_at", body=explode)
    assert info.value is boom  # the original exception, unchanged
    assert (todo.status, todo.started_at) == ("pending", None)
    assert (todo.title, other.title) == ("pending edit", "flushed before")
    assert _row(session, todo.id).status == "pending"
    assert signals.names() == ["transition-failed"]
    assert signals.heard[0].payload["error"] is info.value
    session.commit()  # the session stays usable and keeps the caller's changes
    session.expire_all()
    assert (todo.status, todo.title, other.title) == ("pending", "pending edit", "flushed before")


def test_a_body_that_fails_after_writing_leaves_no_trace(session: Session) -> None:
    todo = _todo(session)

    def body() -> None:
        todo.started_by = "half done"
        session.add(TodoEvent(todo_id=todo.id, name="half"))
        session.flush()
        raise RuntimeError("after the flush")

    with pytest.raises(RuntimeError, match="after the flush"):
        litestate.transition_state(todo, event="start", frm="pending", to="doing",
                                   timestamp="started_at", body=body)
    assert (todo.status, todo.started_by) == ("pending", None)
    assert session.scalars(sa.select(TodoEvent)).all() == []
    session.commit()
    assert _row(session, todo.id).status == "pending"


def test_invalid_and_guard_refusals_write_nothing_and_send_invalid(
        session: Session, signals: SignalLog, sql: StatementLog) -> None:
    todo = _todo(session, status="doing")
    assert todo.status == "doing"
    sql.statements.clear()
    with pytest.raises(InvalidStateError) as info:
        todo.start("ada")
    assert sql.statements == []
    assert info.value.reason == "invalid"
    assert [h.payload["reason"] for h in signals.heard] == ["invalid"]
    assert signals.heard[0].payload["error"] is info.value


def test_signals_order_and_payload(session: Session, signals: SignalLog) -> None:
    todo = _todo(session)
    todo.start("ada")
    assert signals.names() == ["transition-succeeded"]
    heard = signals.heard[0]
    assert heard.sender is Todo
    duration = heard.payload.pop("duration")
    assert isinstance(duration, float)
    assert 0 < duration < 60
    assert heard.payload == {
        "record": todo, "record_id": todo.id, "event": "start", "from_state": "pending",
        "to_state": "doing", "column": "status", "args": ("ada",), "kwargs": {}}
    session.commit()
    assert signals.names() == ["transition-succeeded", "transition-committed"]
    assert signals.heard[1].payload["event"] == "start"


def test_succeeded_is_sent_inside_the_transaction(session: Session) -> None:
    todo = _todo(session)
    seen: list[tuple[bool, str]] = []

    def receiver(sender: type, record: Todo, **extra: object) -> None:
        seen.append((session.in_transaction(), _row(session, record.id).status))

    with litestate.transition_succeeded.connected_to(receiver, sender=Todo):
        todo.start("ada")
    assert seen == [(True, "pending")]  # in the transaction, not yet visible to others


def test_committed_is_sent_once_after_the_outermost_commit(
        session: Session, signals: SignalLog) -> None:
    todo = _todo(session)
    with session.begin_nested():
        todo.start("ada")
    assert signals.of("transition-committed") == []  # the savepoint's release is no commit
    session.commit()
    assert len(signals.of("transition-committed")) == 1
    session.commit()
    assert len(signals.of("transition-committed")) == 1


def test_committed_is_not_sent_after_a_rollback(session: Session, signals: SignalLog) -> None:
    todo = _todo(session)
    todo.start("ada")
    session.rollback()
    session.commit()
    assert signals.of("transition-committed") == []


def test_committed_is_not_sent_when_an_enclosing_savepoint_rolls_back(
        session: Session, signals: SignalLog) -> None:
    first, second = _todo(session), _todo(session)
    savepoint = session.begin_nested()
    first.start("ada")
    savepoint.rollback()
    second.start("ada")
    session.commit()
    assert [h.payload["record"] for h in signals.of("transition-committed")] == [second]
    assert first.status == "pending"


def test_committed_survives_nested_savepoints_that_are_released(
        session: Session, signals: SignalLog) -> None:
    todo = _todo(session)
    with session.begin_nested(), session.begin_nested():
        todo.start("ada")
    assert signals.of("transition-committed") == []
    session.commit()
    assert [h.payload["event"] for h in signals.of("transition-committed")] == ["start"]


def test_committed_is_not_sent_when_the_session_closes_without_commit(
        engine: sa.Engine, signals: SignalLog) -> None:
    with Session(engine) as session:
        todo = _todo(session)
        todo.start("ada")
    assert signals.of("transition-committed") == []


def test_transitions_inside_a_body_nest_savepoints(session: Session, signals: SignalLog) -> None:
    todo = _todo(session)
    blocked = [Todo(status="blocked", follows_id=todo.id) for _ in range(2)]
    session.add_all(blocked)
    session.commit()
    assert todo.complete("grace") == 2
    session.commit()
    assert sorted(h.payload["event"] for h in signals.of("transition-committed")) == [
        "complete", "unblock", "unblock"]
    names = sorted(session.scalars(sa.select(TodoEvent.name)))
    assert names == ["completed", "unblocked", "unblocked"]


def test_an_enum_column_holds_members_after_a_transition(session: Session) -> None:
    intent = PaymentIntent(amount=5)
    session.add(intent)
    session.commit()
    intent.process()
    assert intent.status is PaymentStatus.processing
    session.commit()
    session.expire_all()
    assert intent.status is PaymentStatus.processing


def test_a_pending_object_is_flushed_then_transitioned(session: Session) -> None:
    todo = Todo(title="new")
    session.add(todo)
    todo.start("ada")
    session.commit()
    assert _row(session, todo.id).status == "doing"


def test_an_unsaved_state_edit_is_flushed_before_the_checked_write(session: Session) -> None:
    todo = _todo(session)
    todo.status = "blocked"
    todo.unblock()
    assert todo.status == "pending"
    session.commit()
    assert _row(session, todo.id).status == "pending"


def test_an_expired_object_is_reloaded_before_the_check(session: Session) -> None:
    todo = _todo(session)
    todo_id = todo.id
    session.commit()  # every attribute is expired, and no transaction holds a lock
    with Session(session.get_bind()) as other:
        load(other, Todo, todo_id).start("bob")
        other.commit()
    with pytest.raises(InvalidStateError) as info:
        todo.start("ada")
    assert info.value.from_state == "doing"


def test_a_detached_object_is_refused_with_nothing_written(engine: sa.Engine) -> None:
    with Session(engine, expire_on_commit=False) as session:
        todo = _todo(session)
    with pytest.raises(DetachedInstanceError, match=r"cannot start\(\) Todo 1: it is detached"):
        todo.start("ada")
    assert todo.status == "pending"
    with Session(engine) as session:
        assert load(session, Todo, todo.id).status == "pending"


def test_an_empty_body_costs_one_update_and_no_savepoint(
        session: Session, sql: StatementLog) -> None:
    intent = PaymentIntent(amount=1)
    session.add(intent)
    session.flush()
    sql.statements.clear()
    litestate.transition_state(intent, event="cancel_fast", frm="pending", to="canceled")
    assert sql.verbs() == ["UPDATE"]


def test_a_body_costs_savepoint_update_flush_release(session: Session, sql: StatementLog) -> None:
    todo = _todo(session)
    todo.title = "loaded"
    session.flush()
    sql.statements.clear()
    litestate.transition_state(todo, event="start", frm="pending", to="doing",
                               body=lambda: setattr(todo, "started_by", "ada"))
    assert sql.verbs() == ["SAVEPOINT", "UPDATE", "UPDATE", "RELEASE"]


def test_a_succeeded_receiver_that_raises_undoes_the_transition(
        session: Session, signals: SignalLog) -> None:
    todo = _todo(session)

    def veto(sender: type, **extra: object) -> None:
        raise PermissionError("audit log is down")

    with litestate.transition_succeeded.connected_to(veto), \
            pytest.raises(PermissionError):
        litestate.transition_state(todo, event="freeze", frm="pending", to="blocked")
    assert todo.status == "pending"
    # blinker does not order receivers: ours may have heard succeeded before the veto
    assert signals.names()[-1] == "transition-failed"
    assert set(signals.names()) <= {"transition-succeeded", "transition-failed"}
    session.commit()
    assert _row(session, todo.id).status == "pending"


def test_an_invalid_receiver_that_raises_replaces_the_refusal(session: Session) -> None:
    todo = _todo(session, status="doing")

    def loud(sender: type, **extra: object) -> None:
        raise LookupError("receiver bug")

    with litestate.transition_invalid.connected_to(loud), \
            pytest.raises(LookupError) as info:
        todo.start("ada")
    assert info.value.__notes__ == [
        "raised by a transition_invalid receiver while refusing: cannot start() Todo 1: status "
        "is 'doing', target 'doing' (invalid: start starts from 'pending')"]
    assert todo.status == "doing"


def test_a_failed_receiver_that_raises_is_chained_to_the_body_error(session: Session) -> None:
    todo = _todo(session)

    def loud(sender: type, **extra: object) -> None:
        raise LookupError("receiver bug")

    def body() -> None:
        raise KeyError("body bug")

    with litestate.transition_failed.connected_to(loud), pytest.raises(LookupError) as info:
        litestate.transition_state(todo, event="start", frm="pending", to="doing", body=body)
    assert isinstance(info.value.__context__, KeyError)
    assert info.value.__notes__ == [
        "raised by a transition_failed receiver while reporting: KeyError('body bug')"]
    assert todo.status == "pending"


def test_a_committed_receiver_that_raises_leaves_the_commit_and_other_signals(
        session: Session, signals: SignalLog) -> None:
    first, second = _todo(session), _todo(session)

    def flaky(sender: type, record: Todo, **extra: object) -> None:
        if record is first:
            raise ConnectionError("queue down")

    first.start("ada")
    second.start("ada")
    with litestate.transition_committed.connected_to(flaky), \
            pytest.raises(ConnectionError):
        session.commit()
    # whichever order blinker calls the receivers in, ours heard both transitions
    assert [h.payload["record"] for h in signals.of("transition-committed")] == [first, second]
    assert _row(session, first.id).status == "doing"
    third = _todo(session)  # the session is usable
    third.start("ada")
    session.commit()


@pytest.mark.parametrize("listen", [False, True])
def test_a_callers_savepoint_rollback_undoes_a_transition_in_memory_too(
        session: Session, listen: bool) -> None:
    """With no receiver, cancel_fast has no SAVEPOINT of its own; either way the
    caller's rollback must expire what the transition wrote."""
    intent = PaymentIntent()
    session.add(intent)
    session.commit()
    with contextlib.ExitStack() as stack:
        if listen:
            stack.enter_context(recording())
        savepoint = session.begin_nested()
        litestate.transition_state(intent, event="cancel_fast", frm="pending", to="canceled")
        savepoint.rollback()
    assert intent.status is PaymentStatus.pending
    session.commit()
    session.expire_all()
    assert intent.status is PaymentStatus.pending


def test_a_guard_may_name_a_column_or_property(session: Session) -> None:
    job = Job(allow=False)
    session.add(job)
    session.commit()
    with pytest.raises(GuardError, match="guard allow returned false"):
        job.run()
    job.allow = True
    job.run()
    assert job.state == "running"


def test_a_body_that_changes_nothing_costs_savepoint_update_release(
        session: Session, sql: StatementLog) -> None:
    todo = _todo(session)
    todo.title = "loaded"
    session.flush()
    sql.statements.clear()
    assert litestate.transition_state(todo, event="start", frm="pending", to="doing",
                                      body=lambda: 42) == 42
    assert sql.verbs() == ["SAVEPOINT", "UPDATE", "RELEASE"]


def test_every_committed_receiver_hears_every_transition_even_when_others_raise(
        session: Session) -> None:
    first, second = _todo(session), _todo(session)
    heard: list[tuple[str, int]] = []

    def recorder(name: str) -> Any:
        def receiver(sender: type, record: Todo, **extra: object) -> None:
            heard.append((name, record.id))
            raise ConnectionError(name)
        return receiver

    a, b = recorder("a"), recorder("b")
    ids = sorted([first.id, second.id])
    with litestate.transition_committed.connected_to(a), \
            litestate.transition_committed.connected_to(b):
        first.start("ada")
        second.start("ada")
        with pytest.raises(ConnectionError) as info:
            session.commit()
    assert sorted(heard) == [("a", ids[0]), ("a", ids[1]), ("b", ids[0]), ("b", ids[1])]
    assert len(info.value.__notes__) == 3  # the three other receiver errors
