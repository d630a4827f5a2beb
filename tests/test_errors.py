"""TransitionError: what, from where and why; subclasses per reason; it pickles."""

from __future__ import annotations

import pickle

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from litestate import ConflictError, GuardError, InvalidStateError, TransitionError
from tests.models import Subscription, Todo


def test_the_error_carries_its_context_as_attributes(session: Session) -> None:
    todo = Todo(status="completed")
    session.add(todo)
    session.commit()
    with pytest.raises(TransitionError) as info:
        todo.start("ada")
    error = info.value
    assert type(error) is InvalidStateError
    assert (error.record, error.event, error.from_state, error.to_state, error.column,
            error.reason) == (todo, "start", "completed", "doing", "status", "invalid")
    assert str(error) == ("cannot start() Todo 1: status is 'completed', target 'doing' "
                          "(invalid: start starts from 'pending')")


def test_a_guard_refusal_names_the_guard(session: Session) -> None:
    subscription = Subscription(status="suspended", eligible=False)
    session.add(subscription)
    session.commit()
    with pytest.raises(GuardError) as info:
        subscription.reactivate()
    assert info.value.reason == "guard"
    assert str(info.value) == (
        "cannot reactivate() Subscription 1: status is 'suspended', target 'enrolled' "
        "(guard: guard eligible_for_reactivation returned false)")


@pytest.mark.parametrize(("cls", "reason"), [
    (InvalidStateError, "invalid"), (GuardError, "guard"), (ConflictError, "conflict")])
def test_every_error_pickles_with_its_attributes(
        session: Session, cls: type[TransitionError], reason: str) -> None:
    todo = Todo(title="queued", status="doing")
    session.add(todo)
    session.commit()
    error = cls(todo, "start", "doing", "doing", "status", reason, "detail")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert isinstance(copy, TransitionError)
    assert (copy.event, copy.from_state, copy.to_state, copy.column, copy.reason,
            copy.detail) == ("start", "doing", "doing", "status", reason, "detail")
    assert sa.inspect(copy.record).identity == (1,)  # a detached copy of the same row
    assert str(copy) == str(error)


def test_an_error_about_a_plain_record_pickles_too() -> None:
    error = InvalidStateError(None, "go", "a", "b", "state", "invalid", "go starts from 'x'")
    assert str(pickle.loads(pickle.dumps(error))) == (
        "cannot go() NoneType: state is 'a', target 'b' (invalid: go starts from 'x')")
