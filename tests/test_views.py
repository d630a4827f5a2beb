"""For views: firing by name, actions with reasons and parameters, meta, HTTP statuses and
the signals' duration."""

from __future__ import annotations

import enum
import inspect
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import litestate
from litestate import (
    HTTP_STATUS,
    Action,
    ConflictError,
    DeclarationError,
    GuardError,
    InvalidStateError,
    TransitionArgumentError,
    UnknownTransitionError,
    actions,
    available_transitions,
    fire,
    state_column,
    transition,
    transitions,
)
from tests.conftest import SignalLog, load
from tests.models import Todo


class Size(enum.Enum):
    small = "small"
    large = "large"


@state_column("status")
@dataclass
class Order:
    status: str = "cart"
    size: Size = Size.small
    paid: bool = False
    notes: list[str] | None = None

    def is_paid(self) -> bool:
        return self.paid

    @transition(frm="cart", to="placed", meta={"label": "Place order", "icon": "cart"})
    def place(self) -> None:
        pass

    @transition(frm="placed", to="shipped", guard="is_paid")
    def ship(self, carrier: str, *, tracking: str | None = None) -> str:
        return f"{carrier}:{tracking}"

    @transition(frm=["cart", "placed"], to="cancelled",
                meta={"confirm": "Cancel this order?"})
    def cancel(self, reason: str = "changed my mind") -> None:
        self.notes = [reason]

    @transition(frm=Size.small, to=Size.large, column="size")
    def grow(self) -> None:
        pass


def test_fire_calls_the_transition_named_with_its_arguments() -> None:
    order = Order(status="placed", paid=True)
    assert fire(order, "ship", "ups", tracking="1Z") == "ups:1Z"
    assert order.status == "shipped"


@pytest.mark.parametrize("name", ["is_paid", "__init__", "__class__", "status", "nope", "",
                                  "ship ", 3])
def test_fire_refuses_any_name_that_is_not_a_transition(name: Any) -> None:
    order = Order()
    with pytest.raises(ValueError, match=r"no transition .*; it has \['place', 'ship', "
                                         r"'cancel', 'grow'\]"):
        fire(order, name)
    assert order == Order()


def test_fire_refuses_as_the_method_does() -> None:
    order = Order()
    with pytest.raises(InvalidStateError):
        fire(order, "ship", "ups")


@pytest.mark.parametrize(("args", "kwargs"), [
    ((), {}), (("ups", "extra"), {}), (("ups",), {"bogus": 1}), ((), {"tracking": "1Z"})])
def test_arguments_that_do_not_fit_are_a_transition_argument_error_before_anything_runs(
        args: tuple[Any, ...], kwargs: dict[str, Any], signals: SignalLog) -> None:
    order = Order(status="placed", paid=True)
    with pytest.raises(TransitionArgumentError, match=r"ship\(\)") as info:
        fire(order, "ship", *args, **kwargs)
    assert isinstance(info.value, TypeError)
    assert order.status == "placed"
    assert signals.heard == []


def test_a_type_error_of_the_transition_itself_is_not_an_argument_error() -> None:
    class Strict(Order):
        @transition(frm="cart", to="placed")
        def place(self) -> None:
            raise TypeError("the body's own bug")

    with pytest.raises(TypeError, match="the body's own bug") as info:
        fire(Strict(), "place")
    assert not isinstance(info.value, TransitionArgumentError)


def test_an_unknown_name_is_an_unknown_transition_error() -> None:
    with pytest.raises(UnknownTransitionError) as info:
        fire(Order(), "__init__")
    assert isinstance(info.value, ValueError)


def test_fire_takes_a_subclass_override() -> None:
    class Rush(Order):
        @transition(frm="cart", to="rushed")
        def place(self) -> None:
            pass

    order = Rush()
    fire(order, "place")
    assert order.status == "rushed"


def test_fire_needs_an_object_with_transitions() -> None:
    with pytest.raises(TypeError, match="not an object with transitions"):
        fire(object(), "start")


def test_actions_list_every_transition_with_whether_and_why() -> None:
    order = Order(status="placed")
    found = actions(order)
    assert [(a.event, a.to_state, a.allowed, a.reason) for a in found] == [
        ("place", "placed", False, "invalid"),
        ("ship", "shipped", False, "guard"),
        ("cancel", "cancelled", True, None),
        ("grow", Size.large, True, None),
    ]
    assert found[0].detail == "place starts from 'cart'"
    assert found[1].detail == "guard is_paid returned false"
    assert found[2].detail == ""
    assert [a.event for a in found if a.allowed] == available_transitions(order)
    order.paid = True
    assert actions(order)[1].allowed


def test_an_action_carries_the_parameters_a_form_needs() -> None:
    ship, cancel = actions(Order())[1:3]
    assert [(p.name, p.kind, p.annotation, p.default) for p in ship.parameters] == [
        ("carrier", inspect.Parameter.POSITIONAL_OR_KEYWORD, "str", inspect.Parameter.empty),
        ("tracking", inspect.Parameter.KEYWORD_ONLY, "str | None", None),
    ]
    assert [(p.name, p.default) for p in cancel.parameters] == [("reason", "changed my mind")]
    assert actions(Order())[0].parameters == ()


def test_meta_is_on_the_transition_and_the_action_and_read_only() -> None:
    place = transitions(Order)[0]
    assert dict(place.meta) == {"label": "Place order", "icon": "cart"}
    assert transitions(Order)[1].meta == {}
    action = actions(Order())[0]
    assert action.meta is place.meta
    assert action.transition is place
    with pytest.raises(TypeError):
        place.meta["label"] = "changed"  # type: ignore[index]


def test_meta_is_copied_at_declaration() -> None:
    given = {"label": "Go"}

    class Thing:
        state = "a"

        @transition(frm="a", to="b", column="state", meta=given)
        def go(self) -> None:
            pass

    given["label"] = "changed"
    assert transitions(Thing)[0].meta == {"label": "Go"}
    assert hash(transitions(Thing)[0]) == hash(transitions(Thing)[0])


@pytest.mark.parametrize("meta", [["label"], "label", {1: "x"}, 3])
def test_meta_that_is_not_a_mapping_of_names_is_a_declaration_error(meta: Any) -> None:
    with pytest.raises(DeclarationError, match=r"meta=.*a mapping with str keys"):
        transition(frm="a", to="b", meta=meta)


def test_actions_of_an_object_deleted_in_its_session(session: Session) -> None:
    todo = Todo()
    session.add(todo)
    session.flush()
    session.delete(todo)
    session.flush()
    found = actions(todo)
    assert [a.allowed for a in found] == [False] * len(found)
    assert {a.reason for a in found} == {"invalid"}
    assert found[0].detail == "the object was deleted in this session"


def test_actions_of_a_mapped_object_read_the_row(engine: sa.Engine) -> None:
    with Session(engine) as session:
        todo = Todo()
        session.add(todo)
        session.commit()  # expired: actions() loads the state as the call would
        found = actions(todo)
        assert [a.event for a in found if a.allowed] == available_transitions(todo)
        assert found[0].allowed
        fire(todo, "start", "ada")
        session.commit()
        assert not actions(load(session, Todo, todo.id))[0].allowed


def test_actions_of_a_row_deleted_elsewhere(engine: sa.Engine) -> None:
    with Session(engine) as session:
        todo = Todo()
        session.add(todo)
        session.commit()
        with engine.begin() as conn:
            conn.execute(sa.delete(Todo))
        found = actions(todo)
        assert {(a.allowed, a.reason, a.detail) for a in found} == {
            (False, "invalid", "the row no longer exists")}


def test_actions_of_an_object_with_no_state_yet() -> None:
    order = Order(status=None)  # type: ignore[arg-type]
    place = actions(order)[0]
    assert (place.allowed, place.reason, place.detail) == (False, "invalid",
                                                           "status is not set")


@pytest.mark.parametrize(("error", "status"), [
    (InvalidStateError, 409), (ConflictError, 409), (GuardError, 422)])
def test_each_refusal_has_an_http_status(error: type[litestate.TransitionError],
                                         status: int) -> None:
    reason = {InvalidStateError: "invalid", ConflictError: "conflict", GuardError: "guard"}
    refusal = error(Order(), "ship", Size.small, "shipped", "status", reason[error], "why")
    assert refusal.http_status == status == HTTP_STATUS[refusal.reason]


def test_http_status_covers_every_reason_and_is_read_only() -> None:
    assert dict(HTTP_STATUS) == {"invalid": 409, "conflict": 409, "guard": 422}
    with pytest.raises(TypeError):
        HTTP_STATUS["guard"] = 403  # type: ignore[index]


def test_a_refusal_as_json_for_an_error_response() -> None:
    order = Order(size=Size.large)
    with pytest.raises(InvalidStateError) as info:
        order.grow()
    body = info.value.as_dict()
    assert json.loads(json.dumps(body)) == body
    assert body == {"error": str(info.value), "event": "grow", "reason": "invalid",
                    "detail": "grow starts from <Size.small: 'small'>", "column": "size",
                    "from_state": "large", "to_state": "large"}


@pytest.fixture
def durations() -> Iterator[list[tuple[str, Any]]]:
    heard: list[tuple[str, Any]] = []

    def receiver(name: str) -> Any:
        def receive(_sender: Any, **payload: Any) -> None:
            heard.append((name, payload["duration"]))
        return receive

    receivers = {name: receiver(name) for name in ("succeeded", "failed", "invalid")}
    litestate.transition_succeeded.connect(receivers["succeeded"])
    litestate.transition_failed.connect(receivers["failed"])
    litestate.transition_invalid.connect(receivers["invalid"])
    yield heard
    litestate.transition_succeeded.disconnect(receivers["succeeded"])
    litestate.transition_failed.disconnect(receivers["failed"])
    litestate.transition_invalid.disconnect(receivers["invalid"])


def _positive(heard: list[tuple[str, Any]]) -> list[str]:
    assert all(isinstance(d, float) and 0 < d < 60 for _, d in heard), heard
    return [name for name, _ in heard]


def test_succeeded_failed_and_invalid_carry_the_duration_in_memory(
        durations: list[tuple[str, Any]]) -> None:
    order = Order()
    order.place()
    with pytest.raises(InvalidStateError):
        order.place()

    class Boom(Order):
        @transition(frm="placed", to="cancelled")
        def cancel(self, reason: str = "") -> None:
            raise RuntimeError(reason)

    with pytest.raises(RuntimeError):
        Boom(status="placed").cancel()
    assert _positive(durations) == ["succeeded", "invalid", "failed"]


def test_the_duration_covers_the_body(engine: sa.Engine,
                                      durations: list[tuple[str, Any]]) -> None:
    with Session(engine) as session:
        todo = Todo()
        session.add(todo)
        session.flush()
        litestate.transition_state(todo, event="start", frm="pending", to="doing",
                                   body=lambda: sum(range(200_000)))
        with pytest.raises(InvalidStateError):
            todo.start("ada")
    assert _positive(durations) == ["succeeded", "invalid"]
    quick = []
    with Session(engine) as session:
        todo = Todo()
        session.add(todo)
        session.flush()
        litestate.transition_state(todo, event="start", frm="pending", to="doing")
        quick.append(durations[-1][1])
    assert durations[0][1] > quick[0]


def test_committed_carries_no_duration(session: Session, signals: SignalLog) -> None:
    todo = Todo()
    session.add(todo)
    session.flush()
    todo.start("ada")
    session.commit()
    assert signals.names() == ["transition-succeeded", "transition-committed"]
    assert "duration" in signals.heard[0].payload
    assert "duration" not in signals.heard[1].payload


def test_an_action_is_frozen() -> None:
    action = actions(Order())[0]
    assert isinstance(action, Action)
    with pytest.raises(AttributeError):
        action.allowed = False  # type: ignore[misc]


def test_actions_and_transitions_are_hashable_whatever_the_defaults_and_meta() -> None:
    class Tagged:
        state = "a"

        @transition(frm="a", to="b", column="state", meta={"tags": ["x"]})
        def go(self, tags: list[str] = []) -> None:  # noqa: B006 - an unhashable default
            pass

    found = actions(Tagged())
    assert len({*found, *actions(Tagged())}) == 1
    assert {transitions(Tagged)[0]} == {found[0].transition}


def test_an_error_with_a_reason_of_its_own_is_a_409() -> None:
    error = litestate.TransitionError(Order(), "ship", "cart", "shipped", "status", "custom")
    assert error.http_status == 409


def test_a_plain_objects_id_that_is_no_value_is_no_record_id(
        durations: list[tuple[str, Any]]) -> None:
    @state_column("state")
    class Gate:
        state = "closed"

        @property
        def id(self) -> int:
            raise RuntimeError("no id yet")

        @transition(frm="closed", to="open")
        def open(self) -> None:
            pass

    class Door(Gate):
        def id(self) -> int:  # type: ignore[override]
            return 1

    for cls in (Gate, Door):
        gate = cls()
        gate.open()
        with pytest.raises(InvalidStateError) as info:
            gate.open()
        assert str(info.value).startswith(f"cannot open() {cls.__name__}: state is 'open'")
        assert info.value.as_dict()["from_state"] == "open"
    assert _positive(durations) == ["succeeded", "invalid"] * 2


def test_can_transition_with_an_event_that_is_no_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no transition"):
        litestate.can_transition(Order(), ["place"])  # type: ignore[arg-type]


@pytest.mark.parametrize("only", ["succeeded", "failed", "invalid"])
def test_one_listened_signal_is_enough_for_its_duration(only: str) -> None:
    heard: list[Any] = []

    def receive(_sender: Any, **payload: Any) -> None:
        heard.append(payload["duration"])

    signal = getattr(litestate, f"transition_{only}")
    signal.connect(receive)
    try:
        order = Order()
        order.place()
        with pytest.raises(InvalidStateError):
            order.place()

        class Boom(Order):
            @transition(frm="placed", to="cancelled")
            def cancel(self, reason: str = "") -> None:
                raise RuntimeError(reason)

        with pytest.raises(RuntimeError):
            Boom(status="placed").cancel()
    finally:
        signal.disconnect(receive)
    assert len(heard) == 1
    assert isinstance(heard[0], float)
