"""The test models: the Ruby article's (shared with the demo) and two of the tests' own."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from examples.models import (
    SUBSCRIPTION_STATES,
    Base,
    BillingAudit,
    PaymentIntent,
    PaymentStatus,
    RateConfigType,
    StatutoryRateConfig,
    Subscription,
    Todo,
    TodoEvent,
)
from litestate import state_column, transition

__all__ = [
    "SUBSCRIPTION_STATES",
    "Account",
    "Base",
    "BillingAudit",
    "Job",
    "JobFailed",
    "PaymentIntent",
    "PaymentStatus",
    "RateConfigType",
    "StatutoryRateConfig",
    "Subscription",
    "Todo",
    "TodoEvent",
]


@state_column("status")
class Account(Base):
    """``lock=True``: the guard reads ``balance`` on the locked, fresh row."""

    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(40), default="")
    status: Mapped[str] = mapped_column(sa.String(20), default="open")
    balance: Mapped[int] = mapped_column(default=0)
    closed_at: Mapped[datetime | None]

    @transition(frm="open", to="closed", lock=True, timestamp=True,
                guard=lambda self: self.balance == 0)
    def close(self) -> None:
        pass

    @transition(frm="open", to="frozen", guard=lambda self: self.balance == 0)
    def freeze(self) -> None:
        pass

    @transition(frm="*", to="open")
    def reopen(self) -> None:
        pass


class JobFailed(Exception):
    """What a Job body raises when asked to fail."""


@state_column("state")
class Job(Base):
    """For the property tests: guards, failing bodies, an empty body, a '*' transition."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    state: Mapped[str] = mapped_column(sa.String(20), default="new")
    attempts: Mapped[int] = mapped_column(default=0)
    allow: Mapped[bool] = mapped_column(default=True)
    started_at: Mapped[datetime | None]

    @transition(frm="new", to="running", timestamp="started_at", guard="allow")
    def run(self, fail: bool = False) -> None:
        self.attempts += 1
        if fail:
            raise JobFailed

    @transition(frm="running", to="done", guard=lambda self, fail=False: self.attempts > 0)
    def finish(self, fail: bool = False) -> None:
        if fail:
            raise JobFailed

    @transition(frm=["new", "running"], to="canceled")
    def cancel(self, fail: bool = False) -> None:
        if fail:
            raise JobFailed

    @transition(frm="*", to="new")
    def reset(self) -> None:
        pass
