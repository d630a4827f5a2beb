"""The app's model: an order ships only once paid, and a cancellation needs a reason.

Two state columns, as the Ruby article's Order: ``status`` (placed, shipped, delivered,
canceled) and ``payment_status`` (unpaid, paid). Each ``meta={"label": ...}`` is the
button's text on the list page.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from litestate import state_column, transition


class Base(DeclarativeBase):
    """The declarative base; ``SQLAlchemy(model_class=Base)`` shares its metadata.

    The models subclass ``Base`` rather than ``db.Model``: they are the same registry,
    and mypy cannot subclass an attribute of an instance (``db.Model``).
    """


@state_column("status")
class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(String(80))
    total_cents: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(String(20), default="placed")
    payment_status: Mapped[str] = mapped_column(String(20), default="unpaid")
    paid_at: Mapped[datetime | None]
    shipped_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    canceled_at: Mapped[datetime | None]
    cancel_reason: Mapped[str | None] = mapped_column(String(200))

    def is_paid(self) -> bool:
        return self.payment_status == "paid"

    def is_open(self) -> bool:
        return self.status != "canceled"

    @transition(frm="unpaid", to="paid", column="payment_status", timestamp=True,
                guard="is_open", meta={"label": "Mark paid"})
    def mark_paid(self) -> None:
        pass

    @transition(frm="placed", to="shipped", timestamp=True, guard="is_paid",
                meta={"label": "Ship"})
    def ship(self) -> None:
        pass

    @transition(frm="shipped", to="delivered", timestamp=True,
                meta={"label": "Mark delivered"})
    def deliver(self) -> None:
        pass

    @transition(frm="placed", to="canceled", timestamp=True, meta={"label": "Cancel"})
    def cancel(self, reason: str) -> None:
        self.cancel_reason = reason
