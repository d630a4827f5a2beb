"""The app's models, from the Ruby article's flow: an Order with two state columns and a
Todo with its five transitions.

``Order`` keeps the article's two independent machines: ``status`` (draft, processing,
completed) and ``payment_status`` (unpaid, paid, refunded). Charging is an ``async def``
transition: its body awaits the payment gateway, and its guard awaits the gateway's
fraud screening. ``Todo`` is the article's: ``complete`` unblocks the todos that follow
it, a transition inside a transition.

The gateway is a fake (:class:`FakeGateway`), kept in the module attribute ``gateway``
that the transitions read at each call: a real app would set its client there at
startup; the tests put one of their own.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, object_session

from litestate import state_column, transition

__all__ = ["Base", "CardDeclined", "FakeGateway", "Order", "Todo", "gateway"]


class CardDeclined(Exception):
    """The gateway refused the card: the transition that charged it rolls back."""


class FakeGateway:
    """A payment service that answers after a short await, as a remote one would."""

    def __init__(self, *, latency: float = 0.0) -> None:
        #: The customers whose payments the screening refuses.
        self.flagged: set[str] = set()
        #: The cards it declines.
        self.declined: set[str] = {"4000 0000 0000 0002"}
        #: Every charge made: (charge id, amount in cents, card).
        self.charges: list[tuple[str, int, str]] = []
        #: Every charge refunded, by id.
        self.refunds: list[str] = []
        self._latency = latency
        self._ids = itertools.count(1)

    async def screen(self, customer: str) -> bool:
        """Whether the fraud screening lets ``customer`` pay."""
        await asyncio.sleep(self._latency)
        return customer not in self.flagged

    async def charge(self, amount_cents: int, card: str) -> str:
        """Charge ``card``; returns the charge's id, or raises :class:`CardDeclined`."""
        await asyncio.sleep(self._latency)
        if card in self.declined:
            raise CardDeclined(f"the card ending {card[-4:]} was declined")
        charge_id = f"ch_{next(self._ids)}"
        self.charges.append((charge_id, amount_cents, card))
        return charge_id

    async def refund(self, charge_id: str) -> None:
        await asyncio.sleep(self._latency)
        self.refunds.append(charge_id)


#: The payment service the transitions await: replace it to use another one.
gateway = FakeGateway()


class Base(DeclarativeBase):
    pass


@state_column("status")
class Order(Base):
    """The article's order: ``process`` and ``complete`` move ``status``; ``charge`` and
    ``refund``, on ``payment_status``, await the gateway."""

    __tablename__ = "fastapi_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(sa.String(80))
    total_cents: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(sa.String(20), default="draft")
    payment_status: Mapped[str] = mapped_column(sa.String(20), default="unpaid")
    charge_id: Mapped[str | None] = mapped_column(sa.String(40))
    refund_reason: Mapped[str | None] = mapped_column(sa.String(200))
    processing_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    paid_at: Mapped[datetime | None]
    refunded_at: Mapped[datetime | None]

    def is_paid(self) -> bool:
        return self.payment_status == "paid"

    async def passes_fraud_check(self) -> bool:
        """The async guard of ``charge``: the gateway's screening, awaited."""
        return await gateway.screen(self.customer)

    @transition(frm="draft", to="processing", timestamp=True, meta={"label": "Process"})
    def process(self) -> None:
        pass

    @transition(frm="unpaid", to="paid", column="payment_status", timestamp=True,
                guard="passes_fraud_check", meta={"label": "Charge card"})
    async def charge(self, card: str) -> str:
        """Runs after the conditional UPDATE won, in its SAVEPOINT: a request that lost
        the race never reaches the gateway, and a declined card rolls the state back.
        Returns the charge's id."""
        self.charge_id = await gateway.charge(self.total_cents, card)
        return self.charge_id

    @transition(frm="processing", to="completed", timestamp=True, guard="is_paid",
                meta={"label": "Complete"})
    def complete(self) -> None:
        pass

    @transition(frm="paid", to="refunded", column="payment_status", timestamp=True,
                meta={"label": "Refund"})
    async def refund(self, reason: str = "requested by the customer") -> None:
        assert self.charge_id is not None
        await gateway.refund(self.charge_id)
        self.refund_reason = reason


@state_column("status")
class Todo(Base):
    """The article's Todo: pending, doing, completed, dismissed, blocked."""

    __tablename__ = "fastapi_todos"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(80), default="")
    status: Mapped[str] = mapped_column(sa.String(20), default="pending")
    follows_id: Mapped[int | None] = mapped_column(sa.ForeignKey("fastapi_todos.id"))
    progress: Mapped[int] = mapped_column(default=0)
    started_at: Mapped[datetime | None]
    started_by: Mapped[str | None] = mapped_column(sa.String(40))
    completed_at: Mapped[datetime | None]
    completed_by: Mapped[str | None] = mapped_column(sa.String(40))
    dismissed_at: Mapped[datetime | None]
    dismissed_by: Mapped[str | None] = mapped_column(sa.String(40))

    @transition(frm="pending", to="doing", timestamp="started_at", meta={"label": "Start"})
    def start(self, user: str) -> None:
        self.started_by = user

    @transition(frm=["pending", "doing"], to="completed", timestamp=True,
                meta={"label": "Complete"})
    def complete(self, user: str) -> int:
        """Unblocks the todos that follow this one; returns how many.

        A sync body, run by ``aio.fire`` in SQLAlchemy's greenlet bridge: it uses the
        plain ``Session`` API, and each ``unblock()`` nests its own SAVEPOINT.
        """
        self.completed_by = user
        self.progress = 100
        session = object_session(self)
        assert session is not None
        followers = session.scalars(
            sa.select(Todo).where(Todo.follows_id == self.id, Todo.status == "blocked")).all()
        for follower in followers:
            follower.unblock()
        return len(followers)

    @transition(frm="blocked", to="pending", meta={"label": "Unblock"})
    def unblock(self) -> None:
        pass

    @transition(frm=["pending", "doing"], to="dismissed", timestamp=True,
                meta={"label": "Dismiss"})
    def dismiss(self, user: str) -> None:
        self.dismissed_by = user

    @transition(frm="completed", to="doing", meta={"label": "Reopen"})
    def reopen(self) -> None:
        self.completed_at = None
        self.completed_by = None
