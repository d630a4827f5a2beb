"""The Ruby article's models, ported to litestate: the demo runs them, the tests prove them.

Todo (five transitions with audit events, a transition inside a transition), PaymentIntent
(a Python Enum column, a named timestamp per state), Subscription (two state columns, a
reason argument, a guard by method name), StatutoryRateConfig (a body that locks) and
FetchJob (a history table and an error state that a retry leaves).
"""

from __future__ import annotations

import enum
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, object_session

from litestate import TransitionLog, log_data, state_column, transition


class Base(DeclarativeBase):
    pass


class TodoEvent(Base):
    """The audit trail Todo's bodies write (the Ruby ``track_event``)."""

    __tablename__ = "todo_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    todo_id: Mapped[int]
    name: Mapped[str] = mapped_column(sa.String(40))


@state_column("status")
class Todo(Base):
    __tablename__ = "todos"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(80), default="")
    status: Mapped[str] = mapped_column(sa.String(20), default="pending")
    started_at: Mapped[datetime | None]
    started_by: Mapped[str | None] = mapped_column(sa.String(40))
    snoozed_until: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    completed_by: Mapped[str | None] = mapped_column(sa.String(40))
    dismissed_at: Mapped[datetime | None]
    dismissed_by: Mapped[str | None] = mapped_column(sa.String(40))
    progress: Mapped[int] = mapped_column(default=0)
    follows_id: Mapped[int | None]

    def track_event(self, name: str) -> None:
        session = object_session(self)
        assert session is not None
        session.add(TodoEvent(todo_id=self.id, name=name))

    @transition(frm="pending", to="doing", timestamp="started_at")
    def start(self, user: str) -> None:
        self.started_by = user
        self.snoozed_until = None
        self.track_event("started")

    @transition(frm=["pending", "doing"], to="completed", timestamp=True)
    def complete(self, user: str) -> int:
        """Returns how many followers it unblocked."""
        self.completed_by = user
        self.progress = 100
        self.track_event("completed")
        session = object_session(self)
        assert session is not None
        followers = session.scalars(
            sa.select(Todo).where(Todo.follows_id == self.id, Todo.status == "blocked")).all()
        for follower in followers:
            follower.unblock()  # a transition inside a transition: a nested SAVEPOINT
        return len(followers)

    @transition(frm="blocked", to="pending")
    def unblock(self) -> None:
        self.track_event("unblocked")

    @transition(frm=["pending", "doing"], to="dismissed", timestamp=True)
    def dismiss(self, user: str) -> None:
        self.dismissed_by = user
        self.track_event("dismissed")

    @transition(frm="completed", to="doing")
    def reopen(self) -> None:
        self.completed_at = None
        self.completed_by = None
        self.track_event("reopened")


class PaymentStatus(enum.Enum):
    pending = "pending"
    processing = "processing"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"


class BillingAudit(Base):
    __tablename__ = "billing_audits"
    id: Mapped[int] = mapped_column(primary_key=True)
    payment_intent_id: Mapped[int]
    entry: Mapped[str] = mapped_column(sa.String(80))


@state_column("status")
class PaymentIntent(Base):
    """A Python Enum column and one named timestamp column per state."""

    __tablename__ = "payment_intents"
    id: Mapped[int] = mapped_column(primary_key=True)
    amount: Mapped[int] = mapped_column(default=0)
    status: Mapped[PaymentStatus] = mapped_column(default=PaymentStatus.pending)
    pending_at: Mapped[datetime | None]
    processing_at: Mapped[datetime | None]
    succeeded_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    failure_reason: Mapped[str | None] = mapped_column(sa.String(80))

    def audit(self, entry: str) -> None:
        session = object_session(self)
        assert session is not None
        session.add(BillingAudit(payment_intent_id=self.id, entry=entry))

    @transition(frm=PaymentStatus.pending, to=PaymentStatus.processing,
                timestamp="processing_at")
    def process(self) -> None:
        self.audit("processing")

    @transition(frm="processing", to="succeeded", timestamp="succeeded_at")
    def succeed(self) -> None:
        self.audit("succeeded")

    @transition(frm="processing", to="failed", timestamp="failed_at")
    def fail(self, reason: str) -> None:
        self.failure_reason = reason
        self.audit(f"failed: {reason}")

    @transition(frm="failed", to="pending", timestamp="pending_at")
    def retry(self) -> None:
        self.failure_reason = None
        self.audit("retried")

    @transition(frm=["pending", "processing"], to="canceled")
    def cancel(self) -> None:
        self.audit("canceled")


SUBSCRIPTION_STATES = ("trialing", "active", "past_due", "suspended", "terminated", "canceled",
                       "enrolled")


@state_column("status")
class Subscription(Base):
    """Two independent state columns; cancel takes a reason; a guard by method name."""

    __tablename__ = "subscriptions"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(
        sa.Enum(*SUBSCRIPTION_STATES, name="subscription_status"), default="trialing")
    payment_status: Mapped[str] = mapped_column(sa.String(20), default="unpaid")
    canceled_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    cancel_reason: Mapped[str | None] = mapped_column(sa.String(80))
    eligible: Mapped[bool] = mapped_column(default=True)
    balance: Mapped[int] = mapped_column(default=0)

    def eligible_for_reactivation(self) -> bool:
        return self.eligible

    @transition(frm="trialing", to="active")
    def activate(self) -> None:
        pass

    @transition(frm=["trialing", "active", "past_due", "suspended"], to="canceled",
                timestamp="canceled_at")
    def cancel(self, reason: str) -> str:
        assert self.canceled_at is not None
        self.ended_at = self.canceled_at
        self.cancel_reason = reason
        return reason

    @transition(frm="active", to="suspended")
    def suspend(self) -> None:
        pass

    @transition(frm=["suspended", "terminated"], to="enrolled",
                guard="eligible_for_reactivation")
    def reactivate(self) -> None:
        self.cancel_reason = None

    @transition(frm="unpaid", to="paid", column="payment_status",
                guard=lambda self, amount: amount >= self.balance)
    def mark_paid(self, amount: int) -> None:
        self.balance -= amount

    @transition(frm="paid", to="refunded", column="payment_status")
    def refund(self) -> None:
        pass


class RateConfigType(Base):
    """One row per config type: activations of one type serialize on its lock."""

    __tablename__ = "rate_config_types"
    code: Mapped[str] = mapped_column(sa.String(20), primary_key=True)


class StatutoryRateConfig(Base):
    __tablename__ = "statutory_rate_configs"
    id: Mapped[int] = mapped_column(primary_key=True)
    config_type: Mapped[str] = mapped_column(sa.ForeignKey("rate_config_types.code"))
    status: Mapped[str] = mapped_column(sa.String(20), default="inactive")

    @transition(frm=["inactive", "archived"], to="active", column="status")
    def activate(self) -> None:
        session = object_session(self)
        assert session is not None
        # The Ruby original locks only the active siblings, which two concurrent
        # activations can both miss; locking the type's row serializes them.
        session.execute(sa.select(RateConfigType).where(RateConfigType.code == self.config_type)
                        .with_for_update())
        session.execute(
            sa.update(StatutoryRateConfig)
            .where(StatutoryRateConfig.config_type == self.config_type,
                   StatutoryRateConfig.status == "active", StatutoryRateConfig.id != self.id)
            .values(status="inactive")
            .execution_options(synchronize_session=False))

    @transition(frm=["inactive", "active"], to="archived", column="status")
    def archive(self) -> None:
        pass


class FetchJobLog(TransitionLog, Base):
    """FetchJob's history: one row per transition, and one per failure."""

    __tablename__ = "fetch_job_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(sa.ForeignKey("fetch_jobs.id"))


class UpstreamDown(Exception):
    """What the demo's upstream raises while it is down."""


#: The demo's upstream: the first fetch finds it down.
UPSTREAM = {"up": True}


@state_column("status", log=FetchJobLog, changed_at="status_changed_at",
              attempts="attempts", last_error="last_error", last_error_at="last_error_at")
class FetchJob(Base):
    """A queue job (flow_state's example): fetch, fail into fetch_failed, retry."""

    __tablename__ = "fetch_jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(sa.String(200))
    status: Mapped[str] = mapped_column(sa.String(20), default="queued")
    status_changed_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(sa.String(500))
    last_error_at: Mapped[datetime | None]
    response: Mapped[str | None] = mapped_column(sa.String(200))

    @transition(frm=["queued", "fetch_failed"], to="fetching",
                guard=lambda job: job.attempts < 3)
    def start(self) -> None:
        pass

    @transition(frm="fetching", to="fetched", on_error="fetch_failed")
    def fetch(self) -> None:
        log_data(url=self.url)
        if not UPSTREAM["up"]:
            raise UpstreamDown(f"503 from {self.url}")
        self.response = "200 OK"
