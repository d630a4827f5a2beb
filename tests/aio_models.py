"""The asyncio tests' models (tests/test_aio.py): a registry and ``aio_*`` tables of their
own, with sync transitions (fired by ``aio.call``), ``async def`` ones, async guards, a
``lock=True`` pair and a plain class."""

from __future__ import annotations

import asyncio
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_object_session
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, object_session

from litestate import aio, state_column, transition

__all__ = ["AioBase", "GatewayError", "Lamp", "Order", "OrderNote", "Wallet"]


class AioBase(DeclarativeBase):
    pass


class GatewayError(Exception):
    """What a body raises after its own writes."""


class OrderNote(AioBase):
    """A row a body adds: it must vanish when the body fails."""

    __tablename__ = "aio_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int]
    text: Mapped[str] = mapped_column(sa.String(40))


def _note(order: Order, text: str) -> None:
    """Add a note and flush it: a sync body's own writes, sent before it raises."""
    session = object_session(order)
    assert session is not None
    session.add(OrderNote(order_id=order.id, text=text))
    session.flush()


async def _async_note(order: Order, text: str) -> None:
    """The same from an async body, which runs outside the bridge: its SQL is awaited
    through the AsyncSession (a sync flush there would raise MissingGreenlet)."""
    session = async_object_session(order)
    assert session is not None
    session.add(OrderNote(order_id=order.id, text=text))
    await session.flush()


@state_column("status")
class Order(AioBase):
    __tablename__ = "aio_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(40), default="")
    status: Mapped[str] = mapped_column(sa.String(20), default="new")
    amount: Mapped[int] = mapped_column(default=0)
    gateway_open: Mapped[bool] = mapped_column(default=True)
    receipt: Mapped[str | None] = mapped_column(sa.String(40))
    worker: Mapped[str | None] = mapped_column(sa.String(40))
    paid_at: Mapped[datetime | None]
    charged_at: Mapped[datetime | None]

    # -- sync transitions, fired with `await aio.call(order.pay, ...)` ------------------

    @transition(frm="new", to="paid", timestamp="paid_at",
                guard=lambda self, amount: amount > 0)
    def pay(self, amount: int) -> int:
        self.amount = amount
        return amount * 10

    @transition(frm="paid", to="shipped")
    def ship(self) -> None:
        """No guard, no body, one ``frm`` state: on an expired object, one UPDATE."""

    @transition(frm="new", to="paid", timestamp="paid_at")
    def settle(self, note: str) -> None:
        self.receipt = note
        _note(self, note)
        raise GatewayError(note)

    @transition(frm="new", to="started")
    def start(self, worker: str) -> None:
        self.worker = worker

    @transition(frm="new", to="bundled")
    def bundle(self, *others: Order) -> int:
        """Fires a transition of each of ``others`` inside the body (nested SAVEPOINTs)."""
        for other in others:
            other.pay(1)
        return len(others)

    # -- async transitions, `await order.charge(...)` ----------------------------------

    async def gateway_up(self) -> bool:
        await asyncio.sleep(0)  # ask the gateway
        return self.gateway_open

    @transition(frm="new", to="charged", timestamp="charged_at",
                guard=["gateway_up", lambda self, amount: amount > 0])
    async def charge(self, amount: int) -> str:
        await asyncio.sleep(0)  # the gateway's answer, awaited in the atomic section
        self.amount = amount
        self.receipt = f"r-{amount}"
        return self.receipt

    @transition(frm="new", to="charged", timestamp="charged_at")
    async def capture(self, note: str) -> None:
        self.receipt = note
        await _async_note(self, note)
        raise GatewayError(note)

    @transition(frm="new", to="started")
    async def begin(self, worker: str) -> None:
        await asyncio.sleep(0)
        self.worker = worker

    @transition(frm="new", to="held")
    async def hold(self, entered: asyncio.Event, release: asyncio.Event) -> None:
        """Sets ``entered``, then waits for ``release`` inside the atomic section."""
        self.title = "holding"
        await _async_note(self, "held")
        entered.set()
        await release.wait()

    @transition(frm="new", to="bundled")
    async def gather(self, *others: Order) -> int:
        """Awaits ``aio.call`` of each of ``others`` inside the body (nested SAVEPOINTs)."""
        for other in others:
            await aio.call(other.pay, 1)
        return len(others)


@state_column("status")
class Wallet(AioBase):
    """``lock=True``: the guards read ``balance`` on the locked, fresh row."""

    __tablename__ = "aio_wallets"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(40), default="")
    status: Mapped[str] = mapped_column(sa.String(20), default="open")
    balance: Mapped[int] = mapped_column(default=0)
    closed_at: Mapped[datetime | None]

    @transition(frm="open", to="closed", lock=True, timestamp=True,
                guard=lambda self: self.balance == 0)
    def close(self) -> None:
        pass

    async def is_empty(self) -> bool:
        await asyncio.sleep(0)
        return self.balance == 0

    @transition(frm="open", to="frozen", lock=True, guard="is_empty")
    async def freeze(self) -> None:
        await asyncio.sleep(0)

    @transition(frm="open", to="open", guard="is_empty")
    async def rename(self, name: str) -> str:
        """Reads ``owner`` after an await: outside the bridge, so it must be loaded."""
        await asyncio.sleep(0)
        self.owner = f"{self.owner} {name}"
        return self.owner


class Lamp:
    """A plain class: its transitions run in memory."""

    state = "off"
    switched_at: datetime | None = None

    @transition(frm="off", to="on", column="state", timestamp="switched_at")
    def switch_on(self, by: str) -> str:
        return by

    async def has_power(self) -> bool:
        await asyncio.sleep(0)
        return True

    @transition(frm="on", to="off", column="state", guard="has_power")
    async def switch_off(self) -> str:
        await asyncio.sleep(0)
        return "dark"

    @transition(frm="off", to="on", column="state", timestamp="switched_at")
    async def flicker(self) -> None:
        await asyncio.sleep(0)
        raise GatewayError("bulb")
