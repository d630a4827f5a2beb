"""Plain objects and mapped objects outside a session: the same checks, in memory (semantic 6)."""

from __future__ import annotations

import enum
from datetime import UTC, datetime

import pytest

import litestate
from litestate import GuardError, InvalidStateError, state_column, transition
from tests.conftest import SignalLog
from tests.models import PaymentIntent, PaymentStatus, Subscription, Todo


class Light(enum.Enum):
    red = "red"
    green = "green"
    amber = "amber"


@state_column("state")
class Door:
    """A plain class: no SQLAlchemy at all."""

    def __init__(self, state: str = "closed", locked: bool = False) -> None:
        self.state = state
        self.locked = locked
        self.opened_at: datetime | None = None
        self.log: list[str] = []

    @transition(frm="closed", to="open", timestamp="opened_at",
                guard=lambda self: not self.locked)
    def open(self, by: str = "someone") -> str:
        self.log.append(f"opened by {by}")
        if by == "ghost":
            raise RuntimeError("no such person")
        return by

    @transition(frm="open", to="closed")
    def close(self) -> None:
        pass

    @transition(frm="*", to="closed")
    def reset(self) -> None:
        pass


class TrafficLight:
    def __init__(self) -> None:
        self.light = Light.red

    @transition(frm=Light.red, to=Light.green, column="light")
    def go(self) -> None:
        pass


def test_a_plain_object_transitions_in_memory(frozen_clock: datetime) -> None:
    door = Door()
    assert door.open(by="ada") == "ada"
    assert (door.state, door.opened_at, door.log) == ("open", frozen_clock, ["opened by ada"])


def test_the_default_clock_is_utc() -> None:
    door = Door()
    before = datetime.now(UTC)
    door.open()
    assert door.opened_at is not None
    assert door.opened_at.tzinfo is UTC
    assert before <= door.opened_at <= datetime.now(UTC)


def test_a_raising_body_restores_state_and_timestamp(signals: SignalLog) -> None:
    door = Door()
    door.opened_at = stamped = datetime(2020, 1, 1)
    with pytest.raises(RuntimeError, match="no such person"):
        door.open(by="ghost")
    assert (door.state, door.opened_at) == ("closed", stamped)
    assert signals.names() == ["transition-failed"]
    assert isinstance(signals.heard[0].payload["error"], RuntimeError)


def test_a_plain_object_is_refused_with_its_state_and_the_allowed_ones() -> None:
    door = Door(state="open")
    with pytest.raises(InvalidStateError) as info:
        door.open()
    assert (info.value.from_state, info.value.to_state, info.value.reason) == (
        "open", "open", "invalid")
    assert "open starts from 'closed'" in str(info.value)
    locked = Door(locked=True)
    with pytest.raises(GuardError, match=r"guard Door\.<lambda> returned false"):
        locked.open()
    assert locked.state == "closed"


@pytest.mark.parametrize("state", [None, "ajar", 7])
def test_a_none_or_unknown_state_is_invalid_not_an_attribute_error(state: object) -> None:
    door = Door()
    door.state = state  # type: ignore[assignment]
    with pytest.raises(InvalidStateError):
        door.close()
    if state is None:
        with pytest.raises(InvalidStateError):
            door.reset()  # "*" means any state, and None is no state
    else:
        door.reset()
        assert door.state == "closed"


def test_an_object_without_the_attribute_is_invalid() -> None:
    door = Door.__new__(Door)
    with pytest.raises(InvalidStateError) as info:
        door.close()
    assert info.value.from_state is None


def test_plain_objects_send_succeeded_but_never_committed(signals: SignalLog) -> None:
    door = Door()
    door.open()
    assert signals.names() == ["transition-succeeded"]
    assert signals.heard[0].payload["record_id"] is None


def test_enum_states_on_a_plain_object() -> None:
    light = TrafficLight()
    light.go()
    assert light.light is Light.green


def test_a_transient_mapped_object_transitions_in_memory(signals: SignalLog) -> None:
    subscription = Subscription(status="trialing")
    subscription.activate()
    assert subscription.status == "active"
    intent = PaymentIntent(status=PaymentStatus.pending)
    with pytest.raises(AssertionError):
        intent.process()  # its body needs a session; the state is restored
    assert intent.status is PaymentStatus.pending
    assert intent.processing_at is None
    assert signals.names() == ["transition-succeeded", "transition-failed"]


def test_a_transient_enum_column_gets_a_member_even_from_a_string_declaration() -> None:
    intent = PaymentIntent(status=PaymentStatus.processing)
    litestate.transition_state(intent, event="succeed", frm="processing", to="succeeded",
                               timestamp="succeeded_at")
    assert intent.status is PaymentStatus.succeeded
    assert intent.succeeded_at is not None
    assert intent.succeeded_at.tzinfo is None  # a naive DateTime column gets naive UTC


def test_succeeded_receiver_that_raises_restores_a_plain_object() -> None:
    door = Door()

    def veto(sender: type, **extra: object) -> None:
        raise PermissionError("no")

    with litestate.transition_succeeded.connected_to(veto, sender=Door), \
            pytest.raises(PermissionError):
        door.open()
    assert (door.state, door.opened_at) == ("closed", None)


def test_a_receiver_for_another_sender_hears_nothing() -> None:
    heard: list[object] = []

    def receiver(sender: type, **extra: object) -> None:
        heard.append(sender)

    with litestate.transition_succeeded.connected_to(receiver, sender=Todo):
        Door().open()
    assert heard == []


def test_only_a_body_that_does_nothing_is_skipped() -> None:
    @state_column("state")
    class Box:
        state = "a"

        @transition(frm="a", to="b")
        def docstring_then_constant(self) -> str:
            "a docstring"
            return "kept"

        @transition(frm="b", to="a")
        def documented_only(self) -> None:
            """Nothing else."""

    box = Box()
    assert box.docstring_then_constant() == "kept"
    assert box.documented_only() is None
    assert box.state == "a"
