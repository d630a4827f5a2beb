"""Class hierarchies, aliases and odd attributes: what the second round of attacks found."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import litestate
from litestate import (
    DeclarationError,
    GuardError,
    available_transitions,
    can_transition,
    state_column,
    transition,
    transitions,
)
from litestate.sqlite import enable_savepoints


@state_column("state")
class Task:
    def __init__(self, state: str = "pending") -> None:
        self.state = state
        self.log: list[str] = []

    @transition(frm="pending", to="doing")
    def start(self) -> str:
        self.log.append("Task.start")
        return "started"


class AuditedTask(Task):
    def start(self) -> str:  # a plain override around the transition
        self.log.append("audit")
        return super().start()


class RestartingTask(Task):
    @transition(frm="*", to="pending")
    def start(self) -> str:  # a transition of its own, then the parent's
        self.log.append("RestartingTask.start")
        return super().start()


def test_a_plain_override_calls_the_inherited_transition_through_super() -> None:
    task = AuditedTask()
    assert task.start() == "started"
    assert (task.state, task.log) == ("doing", ["audit", "Task.start"])
    assert transitions(AuditedTask) == ()  # the override is no transition


def test_an_overriding_transition_calls_the_parents_through_super() -> None:
    task = RestartingTask(state="done")
    assert task.start() == "started"
    assert (task.state, task.log) == ("doing", ["RestartingTask.start", "Task.start"])
    assert [(t.event, t.frm) for t in transitions(RestartingTask)] == [("start", None)]


class LogBase(DeclarativeBase):
    pass


@state_column("status")
class Ticket(LogBase):
    __tablename__ = "hier_tickets"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(10), default="ticket")
    status: Mapped[str] = mapped_column(sa.String(20), default="pending")
    __mapper_args__ = {"polymorphic_on": "kind",  # noqa: RUF012
                       "polymorphic_identity": "ticket"}

    @transition(frm="pending", to="doing")
    def start(self) -> None:
        pass


class LoggedTicket(Ticket):
    __mapper_args__ = {"polymorphic_identity": "logged"}  # noqa: RUF012

    def start(self) -> None:
        super().start()


def test_super_reaches_the_inherited_transition_of_a_mapped_class(tmp_path: object) -> None:
    engine = enable_savepoints(sa.create_engine("sqlite://"))
    LogBase.metadata.create_all(engine)
    with Session(engine) as session:
        ticket = LoggedTicket()
        session.add(ticket)
        session.commit()
        ticket.start()
        session.commit()
        assert ticket.status == "doing"
    engine.dispose()


def _limit(self: Order, most: int) -> bool:
    return self.amount <= most


@state_column("state")
class Order:
    def __init__(self, amount: int) -> None:
        self.state, self.amount = "new", amount

    small = functools.partialmethod(_limit, 10)

    @functools.cache  # noqa: B019 - the guard under test
    def is_vip(self) -> bool:
        return False

    @transition(frm="new", to="paid", guard="small")
    def pay(self) -> None:
        pass

    @transition(frm="new", to="vip", guard="is_vip")
    def promote(self) -> None:
        pass


def test_a_guard_named_after_a_decorated_method_is_called_not_just_read() -> None:
    order = Order(1000)
    assert (can_transition(order, "pay"), can_transition(order, "promote")) == (False, False)
    assert available_transitions(order) == []
    with pytest.raises(GuardError):
        order.pay()
    with pytest.raises(GuardError):
        order.promote()
    assert Order(5).pay() is None


def test_a_guard_that_cannot_take_every_call_gets_the_instance_alone() -> None:
    """``*items`` may be any number of arguments: a guard taking at most one cannot take
    the call, so it is called with the instance alone, never with a call it cannot take."""
    @state_column("state")
    class Cart:
        state = "open"

        @transition(frm="open", to="closed", guard=lambda self, first=None: first != "x")
        def close(self, *items: str) -> None:
            pass

    assert can_transition(Cart(), "close", "x") is True
    cart = Cart()
    cart.close("a", "b", "c")
    assert cart.state == "closed"


def test_a_call_of_transition_state_does_not_make_a_class_declare_transitions() -> None:
    class Lamp:
        state = "off"

    lamp = Lamp()
    with pytest.raises(TypeError, match=r"declares no transitions|not an object with"):
        available_transitions(lamp)
    litestate.transition_state(lamp, event="on", frm="off", to="on", column="state")
    assert lamp.state == "on"
    with pytest.raises(TypeError):
        available_transitions(lamp)
    with pytest.raises(TypeError):
        transitions(Lamp)


def test_a_state_that_cannot_be_set_is_a_declaration_error() -> None:
    @state_column("state")
    @dataclass(frozen=True)
    class Frozen:
        state: str = "open"

        @transition(frm="open", to="closed")
        def close(self) -> None:
            pass

    with pytest.raises(DeclarationError, match=r"Frozen\.close: Frozen is a frozen dataclass"):
        Frozen().close()

    @state_column("state")
    class ReadOnly:
        @property
        def state(self) -> str:
            return "open"

        @transition(frm="open", to="closed")
        def close(self) -> None:
            pass

    with pytest.raises(DeclarationError, match="state is a property without a setter"):
        can_transition(ReadOnly(), "close")


def test_a_state_setter_that_fails_still_reports_the_failure() -> None:
    heard: list[str] = []

    def failed(sender: type, *, event: str, **extra: object) -> None:
        heard.append(event)

    @state_column("state")
    class Picky:
        def __init__(self) -> None:
            self._state = "open"

        @property
        def state(self) -> str:
            return self._state

        @state.setter
        def state(self, value: str) -> None:
            raise ValueError(f"refuses {value}")

        @transition(frm="open", to="closed")
        def close(self) -> None:
            pass

    with litestate.transition_failed.connected_to(failed), \
            pytest.raises(ValueError, match="refuses closed"):
        Picky().close()
    assert heard == ["close"]


def test_an_alias_in_the_class_body_is_an_event_of_its_own_name() -> None:
    @state_column("state")
    class Job:
        state = "new"

        @transition(frm="new", to="running")
        def start(self) -> None:
            pass

        begin = start

    assert [t.event for t in transitions(Job)] == ["start", "begin"]
    assert (Job.begin.__name__, Job.start.__name__) == ("begin", "start")
    job = Job()
    job.begin()
    with pytest.raises(litestate.TransitionError) as info:
        job.begin()
    assert info.value.event == "begin"


def test_the_probes_refuse_an_object_deleted_in_this_session() -> None:
    engine = enable_savepoints(sa.create_engine("sqlite://"))
    LogBase.metadata.create_all(engine)
    for flush in (False, True):
        with Session(engine, expire_on_commit=False) as session:
            ticket = Ticket()
            session.add(ticket)
            session.commit()
            session.delete(ticket)
            if flush:
                session.flush()
            assert can_transition(ticket, "start") is False
            assert available_transitions(ticket) == []
    engine.dispose()
