"""The Ruby article's examples, ported: each model's transitions as the article uses them."""

from __future__ import annotations

from datetime import datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import litestate
from litestate import GuardError, InvalidStateError, TransitionError
from tests.conftest import SignalLog
from tests.models import (
    BillingAudit,
    PaymentIntent,
    PaymentStatus,
    RateConfigType,
    StatutoryRateConfig,
    Subscription,
    Todo,
    TodoEvent,
)


def _saved(session: Session, obj: object) -> None:
    session.add(obj)
    session.commit()


@pytest.mark.parametrize(("event", "frm", "to"), [
    ("start", "pending", "doing"),
    ("complete", "pending", "completed"),
    ("complete", "doing", "completed"),
    ("unblock", "blocked", "pending"),
    ("dismiss", "pending", "dismissed"),
    ("dismiss", "doing", "dismissed"),
    ("reopen", "completed", "doing"),
])
def test_todo_transitions_fire_from_each_allowed_state(
        session: Session, event: str, frm: str, to: str) -> None:
    todo = Todo(status=frm)
    _saved(session, todo)
    args = ("ada",) if event in ("start", "complete", "dismiss") else ()
    getattr(todo, event)(*args)
    session.commit()
    assert todo.status == to
    assert session.scalars(sa.select(TodoEvent.name)).one() == {
        "start": "started", "complete": "completed", "unblock": "unblocked",
        "dismiss": "dismissed", "reopen": "reopened"}[event]


@pytest.mark.parametrize(("event", "frm"), [
    ("start", "doing"), ("start", "completed"), ("complete", "dismissed"),
    ("unblock", "pending"), ("reopen", "doing"), ("dismiss", "completed"),
])
def test_todo_transitions_refuse_other_states(session: Session, event: str, frm: str) -> None:
    todo = Todo(status=frm)
    _saved(session, todo)
    args = ("ada",) if event in ("start", "complete", "dismiss") else ()
    with pytest.raises(InvalidStateError) as info:
        getattr(todo, event)(*args)
    assert (info.value.event, info.value.from_state) == (event, frm)
    assert session.scalars(sa.select(TodoEvent)).all() == []


def test_todo_lifecycle_with_timestamps(session: Session, frozen_clock: datetime) -> None:
    todo = Todo(snoozed_until=datetime(2030, 1, 1))
    _saved(session, todo)
    todo.start("ada")
    assert (todo.started_at, todo.started_by, todo.snoozed_until) == (frozen_clock, "ada", None)
    todo.complete("ada")
    assert (todo.completed_at, todo.progress) == (frozen_clock, 100)
    todo.reopen()
    assert (todo.status, todo.completed_at, todo.completed_by) == ("doing", None, None)
    session.commit()
    assert list(session.scalars(sa.select(TodoEvent.name).order_by(TodoEvent.id))) == [
        "started", "completed", "reopened"]


def test_payment_intent_named_timestamps_and_audit(
        session: Session, frozen_clock: datetime) -> None:
    intent = PaymentIntent(amount=990)
    _saved(session, intent)
    intent.process()
    intent.fail(reason="card declined")
    intent.retry()
    intent.process()
    intent.succeed()
    session.commit()
    assert intent.status is PaymentStatus.succeeded
    assert (intent.processing_at, intent.failed_at, intent.pending_at, intent.succeeded_at) == (
        frozen_clock,) * 4
    assert intent.failure_reason is None
    assert list(session.scalars(sa.select(BillingAudit.entry).order_by(BillingAudit.id))) == [
        "processing", "failed: card declined", "retried", "processing", "succeeded"]


def test_payment_intent_cannot_succeed_unless_processing(session: Session) -> None:
    intent = PaymentIntent()
    _saved(session, intent)
    with pytest.raises(InvalidStateError) as info:
        intent.succeed()
    assert info.value.from_state is PaymentStatus.pending
    assert info.value.to_state is PaymentStatus.succeeded


def test_subscription_cancel_takes_its_reason_as_an_argument(
        session: Session, frozen_clock: datetime, signals: SignalLog) -> None:
    subscription = Subscription(status="active")
    _saved(session, subscription)
    assert subscription.cancel(reason="fraud") == "fraud"
    assert (subscription.status, subscription.cancel_reason, subscription.canceled_at,
            subscription.ended_at) == ("canceled", "fraud", frozen_clock, frozen_clock)
    assert signals.heard[0].payload["kwargs"] == {"reason": "fraud"}


def test_subscription_has_two_independent_state_machines(session: Session) -> None:
    subscription = Subscription(status="trialing", payment_status="unpaid", balance=30)
    _saved(session, subscription)
    subscription.activate()
    with pytest.raises(GuardError):
        subscription.mark_paid(10)  # the guard sees the call's argument
    subscription.mark_paid(amount=30)
    subscription.refund()
    session.commit()
    assert (subscription.status, subscription.payment_status, subscription.balance) == (
        "active", "refunded", 0)


def test_subscription_reactivate_needs_its_guard(session: Session) -> None:
    subscription = Subscription(status="suspended", eligible=False, cancel_reason="late")
    _saved(session, subscription)
    with pytest.raises(GuardError):
        subscription.reactivate()
    subscription.eligible = True
    subscription.reactivate()
    assert (subscription.status, subscription.cancel_reason) == ("enrolled", None)


def test_statutory_rate_config_activation_deactivates_the_others(session: Session) -> None:
    session.add_all([RateConfigType(code="vat"), RateConfigType(code="paye")])
    configs = [StatutoryRateConfig(config_type="vat") for _ in range(3)]
    other = StatutoryRateConfig(config_type="paye", status="active")
    session.add_all([*configs, other])
    session.commit()
    for config in configs:
        config.activate()
        session.commit()
    session.expire_all()
    assert [c.status for c in configs] == ["inactive", "inactive", "active"]
    assert other.status == "active"
    configs[0].archive()
    configs[0].activate()
    session.commit()
    session.expire_all()
    assert [c.status for c in configs] == ["active", "inactive", "inactive"]


def test_transition_state_is_the_escape_hatch(session: Session, signals: SignalLog,
                                              frozen_clock: datetime) -> None:
    """The Ruby Leave::Request.approve_by!: a transition declared at the call site."""
    subscription = Subscription(status="past_due")
    _saved(session, subscription)

    def approve_by(approver: str, comments: str | None = None) -> str:
        return litestate.transition_state(
            subscription, event="approve", frm=["past_due", "suspended"], to="active",
            body=lambda: f"{approver}: {comments}") or ""

    assert approve_by("grace", comments="paid late") == "grace: paid late"
    assert subscription.status == "active"
    assert signals.heard[0].payload["event"] == "approve"
    with pytest.raises(TransitionError) as info:
        approve_by("grace")
    assert (info.value.event, info.value.reason) == ("approve", "invalid")
    stamped = litestate.transition_state(subscription, event="end", frm="*", to="canceled",
                                         column="status", timestamp="canceled_at")
    assert stamped is None
    assert subscription.canceled_at == frozen_clock
