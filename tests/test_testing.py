"""litestate.testing: capture_signals, assert_transitions, force_state, frozen_clock and
captured_on_commit, through their public API."""

from __future__ import annotations

import dataclasses
import enum
import gc
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import litestate
from litestate import TransitionError, state_column, transition
from litestate.diagram import diagram
from litestate.testing import (
    FrozenClock,
    Signal,
    assert_transitions,
    capture_signals,
    captured_on_commit,
    force_state,
    frozen_clock,
)
from tests.conftest import load
from tests.mapping_models import Charge, Phase
from tests.models import Job, JobFailed, PaymentIntent, PaymentStatus, Subscription, Todo

SIGNALS = (litestate.transition_succeeded, litestate.transition_invalid,
           litestate.transition_failed, litestate.transition_committed)
NOON = datetime(2031, 5, 6, 12, 0, 0)


class Light(enum.Enum):
    off = "Off"
    on = "On"


@state_column("state")
class Lamp:
    """A plain class whose states are Enum members."""

    def __init__(self) -> None:
        self.state = Light.off
        self.switched_at: datetime | None = None

    @transition(frm=Light.off, to=Light.on, timestamp="switched_at")
    def switch_on(self) -> None:
        pass

    @transition(frm="*", to=Light.off)
    def switch_off(self) -> None:
        pass


class Robot:
    """Two state columns and no @state_column: every transition names its column."""

    def __init__(self) -> None:
        self.power, self.mode = "off", "idle"

    @transition(frm="off", to="on", column="power")
    def boot(self) -> None:
        pass

    @transition(frm="idle", to="busy", column="mode")
    def work(self) -> None:
        pass


class Plain:
    """A class that declares no transitions."""


@state_column("state")
@dataclass
class Draft:
    """A dataclass starting in a state no transition names: its field default."""

    state: str = "draft"

    @transition(frm="*", to="review")
    def submit(self) -> None:
        pass

    @transition(frm="review", to="published")
    def publish(self) -> None:
        pass


@state_column("state")
class Memo:
    """A plain class starting in a state no transition names: its class attribute."""

    state = "draft"

    @transition(frm="*", to="review")
    def submit(self) -> None:
        pass



class Fan:
    """One state column, named by its transitions: no @state_column."""

    def __init__(self) -> None:
        self.speed = "off"

    @transition(frm="off", to="slow", column="speed")
    def turn_on(self) -> None:
        pass


class Swapped(enum.Enum):
    """Each member's value is the other's name."""

    a = "b"
    b = "a"


class SwappedBase(DeclarativeBase):
    """Never created: force_state and assert_transitions send no SQL."""


@state_column("by_name")
class Crossed(SwappedBase):
    __tablename__ = "lst_crossed"
    id: Mapped[int] = mapped_column(primary_key=True)
    by_name: Mapped[Swapped] = mapped_column(sa.Enum(Swapped), default=Swapped.a)
    by_value: Mapped[Swapped] = mapped_column(
        sa.Enum(Swapped, values_callable=lambda e: [m.value for m in e]), default=Swapped.a)

    @transition(frm=Swapped.a, to=Swapped.b)
    def flip_name(self) -> None:
        pass

    @transition(frm=Swapped.a, to=Swapped.b, column="by_value")
    def flip_value(self) -> None:
        pass


def new_todo(session: Session) -> Todo:
    todo = Todo()
    session.add(todo)
    session.commit()
    return todo


def start_and_commit(session: Session, user: str) -> None:
    """A todo started by ``user``, committed by its session."""
    new_todo(session).start(user)
    session.commit()


def receivers() -> list[set[Any]]:
    return [set(signal.receivers) for signal in SIGNALS]


# -- capture_signals -----------------------------------------------------------------------


def test_a_capture_records_succeeded_then_committed_with_their_payloads(
        engine: sa.Engine) -> None:
    with Session(engine) as session, capture_signals() as heard:
        todo = new_todo(session)
        todo.start("ada")
        todo_id = todo.id
        session.commit()
    assert heard.names() == ["succeeded", "committed"]
    for signal in heard:
        assert (signal.sender, signal.event, signal.record, signal.record_id) == (
            Todo, "start", todo, todo_id)
        assert (signal.column, signal.from_state, signal.to_state) == ("status", "pending",
                                                                       "doing")
        assert (signal.args, dict(signal.kwargs), signal.reason, signal.error) == (
            ("ada",), {}, None, None)
        assert signal.payload["event"] == "start"


def test_a_capture_records_a_refusal_with_its_reason_and_error(engine: sa.Engine) -> None:
    with Session(engine) as session, capture_signals() as heard:
        todo = new_todo(session)
        with pytest.raises(TransitionError) as info:
            todo.reopen()
    [refusal] = heard.of("invalid")
    assert (refusal.event, refusal.reason, refusal.from_state) == ("reopen", "invalid",
                                                                   "pending")
    assert refusal.error is info.value


def test_a_capture_records_a_failed_body_with_its_exception(engine: sa.Engine) -> None:
    with Session(engine) as session, capture_signals() as heard:
        job = Job()
        session.add(job)
        session.commit()
        with pytest.raises(JobFailed) as info:
            job.run(fail=True)
        session.commit()
    assert heard.names() == ["failed"]
    assert heard[0].error is info.value
    assert (heard[0].kwargs, heard[0].reason) == ({"fail": True}, None)


def test_a_capture_hears_plain_objects_too() -> None:
    lamp = Lamp()
    with capture_signals() as heard:
        lamp.switch_on()
    assert heard.names() == ["succeeded"]
    assert (heard[0].sender, heard[0].record_id, heard[0].to_state) == (Lamp, None, Light.on)


def test_payload_keys_without_a_field_are_kept() -> None:
    """Keys a later litestate adds (a duration, say) are in Signal.payload, read-only."""
    lamp = Lamp()
    with capture_signals() as heard:
        litestate.transition_committed.send(Lamp, record=lamp, event="switch_on",
                                            duration=0.25)
    [signal] = heard
    assert (signal.payload["duration"], signal.event, signal.args) == (0.25, "switch_on", ())
    with pytest.raises(TypeError):
        signal.payload["duration"] = 1.0  # type: ignore[index]


def test_receivers_are_held_strongly_while_capturing() -> None:
    lamp = Lamp()
    with capture_signals() as heard:
        gc.collect()
        lamp.switch_on()
    assert heard.events() == ["switch_on"]


def test_receivers_are_disconnected_when_the_block_raises() -> None:
    before = receivers()
    lamp = Lamp()
    with pytest.raises(RuntimeError), capture_signals() as heard:
        raise RuntimeError("the test failed")
    lamp.switch_on()
    assert (list(heard), receivers()) == ([], before)


def test_a_capture_records_the_transitions_of_every_thread() -> None:
    """The receivers are global: a server thread's transitions are heard (as another
    test's would be); sender= narrows it."""
    with capture_signals() as heard, capture_signals(sender=Robot) as robots:
        worker = threading.Thread(target=Lamp().switch_on)
        worker.start()
        worker.join()
    assert (heard.events(), robots.events()) == (["switch_on"], [])


def test_a_capture_for_one_sender_hears_only_it() -> None:
    with capture_signals(sender=Lamp) as heard:
        Lamp().switch_on()
        Robot().boot()
    assert heard.events() == ["switch_on"]


def test_signals_are_filtered_by_name_event_and_sender() -> None:
    lamp, robot = Lamp(), Robot()
    with capture_signals() as heard:
        lamp.switch_on()
        with pytest.raises(TransitionError):
            lamp.switch_on()
        robot.boot()
    assert heard.events() == ["switch_on", "switch_on", "boot"]
    assert heard.events("invalid") == ["switch_on"]
    assert heard.of("succeeded", event="boot") == [heard[2]]
    assert heard.of(sender=Robot) == heard[2:]
    assert heard.of("committed") == []
    assert heard == list(heard) != []
    heard.clear()
    assert heard == []



def test_a_signal_is_frozen() -> None:
    with capture_signals() as heard:
        Lamp().switch_on()
    with pytest.raises(dataclasses.FrozenInstanceError):
        heard[0].event = "switch_off"  # type: ignore[misc]


def test_an_unknown_signal_name_is_a_value_error() -> None:
    with capture_signals() as heard, pytest.raises(ValueError, match=r"'comitted'.*'committed'"):
        heard.of("comitted")  # type: ignore[arg-type]


def test_a_signal_reads_as_what_happened() -> None:
    lamp = Lamp()
    with capture_signals() as heard:
        lamp.switch_on()
        with pytest.raises(TransitionError):
            lamp.switch_on()
    assert repr(heard[0]) == "<Signal succeeded Lamp.switch_on None: <Light.off: 'Off'> -> " \
        "<Light.on: 'On'>>"
    assert repr(heard[1]).endswith("(invalid)>")
    assert repr(heard).startswith("Signals([<Signal succeeded")


# -- assert_transitions --------------------------------------------------------------------

TODO_TABLE: dict[str, tuple[Any, Any]] = {
    "start": ("pending", "doing"),
    "complete": (("pending", "doing"), "completed"),
    "unblock": ("blocked", "pending"),
    "dismiss": (["doing", "pending"], "dismissed"),
    "reopen": ("completed", "doing"),
}


def test_the_exact_table_passes() -> None:
    assert_transitions(Todo, TODO_TABLE)


@pytest.mark.parametrize("spelled", [
    {"process": (PaymentStatus.pending, PaymentStatus.processing)},
    {"process": ("pending", "processing")},
    {"process": ({"pending"}, PaymentStatus.processing)},
], ids=["members", "strings", "a-set-and-a-member"])
def test_states_are_compared_as_the_enum_column_holds_them(spelled: dict[str, Any]) -> None:
    assert_transitions(PaymentIntent, {
        **spelled,
        "succeed": ("processing", "succeeded"),
        "fail": ("processing", "failed"),
        "retry": ("failed", "pending"),
        "cancel": ((PaymentStatus.pending, "processing"), "canceled"),
    })


@pytest.mark.parametrize("pending", [Phase.pending, "pending", "Pending"],
                         ids=["member", "name", "value"])
def test_an_enum_state_may_be_written_by_member_name_or_value(pending: object) -> None:
    for column in ("by_name", "by_value"):
        event = "advance_name" if column == "by_name" else "advance_value"
        assert_transitions(Charge, {event: (pending, Phase.processing)}, column=column)


def test_a_plain_class_takes_its_enum_states_by_value_or_name() -> None:
    assert_transitions(Lamp, {"switch_on": ("Off", "on"), "switch_off": ("*", Light.off)})


def test_any_state_is_written_as_a_star() -> None:
    assert_transitions(Job, {
        "run": ("new", "running"), "finish": ("running", "done"),
        "cancel": (("new", "running"), "canceled"), "reset": ("*", "new")})


def test_a_missing_transition_fails_naming_it() -> None:
    table = {**TODO_TABLE, "archive": ("*", "archived")}
    with pytest.raises(AssertionError) as info:
        assert_transitions(Todo, table)
    assert str(info.value) == "\n".join([
        "Todo's transitions are not the expected ones:",
        "  missing  archive: '*' -> 'archived'",
        "declared:",
        "  {",
        "    'start': ('pending', 'doing'),",
        "    'complete': (('doing', 'pending'), 'completed'),",
        "    'unblock': ('blocked', 'pending'),",
        "    'dismiss': (('doing', 'pending'), 'dismissed'),",
        "    'reopen': ('completed', 'doing'),",
        "  }",
    ])


def test_an_extra_transition_fails_naming_it() -> None:
    table = {event: row for event, row in TODO_TABLE.items() if event != "dismiss"}
    with pytest.raises(AssertionError) as info:
        assert_transitions(Todo, table)
    assert str(info.value).splitlines()[:2] == [
        "Todo's transitions are not the expected ones:",
        "  extra    dismiss: 'doing' | 'pending' -> 'dismissed'",
    ]


@pytest.mark.parametrize(("row", "line"), [
    (("pending", "started"),
     "  differs  start: expected 'pending' -> 'started', declared 'pending' -> 'doing'"),
    ((("pending", "blocked"), "doing"),
     "  differs  start: expected 'blocked' | 'pending' -> 'doing', declared 'pending' -> "
     "'doing'"),
    (("*", "doing"), "  differs  start: expected '*' -> 'doing', declared 'pending' -> 'doing'"),
], ids=["to", "frm", "any"])
def test_a_different_transition_fails_showing_both(row: tuple[Any, Any], line: str) -> None:
    with pytest.raises(AssertionError) as info:
        assert_transitions(Todo, {**TODO_TABLE, "start": row})
    assert str(info.value).splitlines()[:2] == [
        "Todo's transitions are not the expected ones:", line]


def test_every_difference_is_listed_missing_extra_then_different() -> None:
    with pytest.raises(AssertionError) as info:
        assert_transitions(PaymentIntent, {
            "process": ("pending", "processing"), "succeed": ("processing", "failed"),
            "fail": ("processing", "failed"), "retry": ("failed", "pending"),
            "refund": ("succeeded", "pending")})
    assert str(info.value).splitlines()[:4] == [
        "PaymentIntent's transitions are not the expected ones:",
        "  missing  refund: PaymentStatus.succeeded -> PaymentStatus.pending",
        "  extra    cancel: PaymentStatus.pending | PaymentStatus.processing -> "
        "PaymentStatus.canceled",
        "  differs  succeed: expected PaymentStatus.processing -> PaymentStatus.failed, "
        "declared PaymentStatus.processing -> PaymentStatus.succeeded",
    ]



def test_a_state_an_enum_column_cannot_hold_is_shown_as_written() -> None:
    with pytest.raises(AssertionError) as info:
        assert_transitions(Charge, {"advance_name": ("pending", "refunded")}, column="by_name")
    assert str(info.value).splitlines()[1] == (
        "  differs  advance_name: expected Phase.pending -> 'refunded', declared "
        "Phase.pending -> Phase.processing")


def test_column_restricts_the_table_to_one_state_column() -> None:
    assert_transitions(Subscription, {"mark_paid": ("unpaid", "paid"),
                                      "refund": ("paid", "refunded")}, column="payment_status")
    with pytest.raises(AssertionError) as info:
        assert_transitions(Subscription, {"mark_paid": ("unpaid", "paid")},
                           column="payment_status")
    assert str(info.value).splitlines()[:2] == [
        "Subscription's transitions on payment_status are not the expected ones:",
        "  extra    refund: 'paid' -> 'refunded'"]



def test_a_failure_is_reported_at_the_callers_line() -> None:
    """pytest hides assert_transitions' own frame from the traceback."""
    with pytest.raises(AssertionError) as info:
        assert_transitions(Todo, {})
    assert [entry.name for entry in info.traceback.filter(info)] == [
        "test_a_failure_is_reported_at_the_callers_line"]


def test_a_column_no_transition_uses_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"no transitions on 'stauts'.*\['status'\]"):
        assert_transitions(Todo, {}, column="stauts")


@pytest.mark.parametrize("frm", [("*",), ["pending", "*"], {"*"}])
def test_a_star_among_states_is_a_value_error_naming_it(frm: Any) -> None:
    """As @transition(frm=["*"]) is: a bare "*" means any state."""
    with pytest.raises(ValueError, match=r"'start' starts from .*: '\*' means any state and "
                                         r"is written alone, not among states"):
        assert_transitions(Todo, {"start": (frm, "doing")})


def test_no_state_at_all_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"'start' starts from \(\): name at least one state"):
        assert_transitions(Todo, {"start": ((), "doing")})


@pytest.mark.parametrize("row", ["pending", ("pending",), ("a", "b", "c")])
def test_a_row_that_is_not_frm_and_to_is_a_type_error(row: Any) -> None:
    with pytest.raises(TypeError, match="write \\(frm, to\\)"):
        assert_transitions(Todo, {"start": row})


def test_a_class_without_transitions_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="declares no transitions"):
        assert_transitions(Plain, {})


# -- force_state ---------------------------------------------------------------------------


def test_a_forced_state_is_written_by_the_next_flush_without_signals(
        engine: sa.Engine) -> None:
    with Session(engine) as session, capture_signals() as heard:
        todo = new_todo(session)
        assert force_state(todo, "doing") is todo
        assert todo.status == "doing"
        session.commit()
        todo_id = todo.id
    with Session(engine) as session:
        stored = load(session, Todo, todo_id)
        assert (stored.status, stored.started_at) == ("doing", None)
    assert list(heard) == []


def test_a_transition_starts_from_a_forced_state(engine: sa.Engine) -> None:
    with Session(engine) as session:
        todo = force_state(Todo(), "completed")
        session.add(todo)
        session.commit()
        todo.reopen()
        session.commit()
        assert todo.status == "doing"


@pytest.mark.parametrize("state", [PaymentStatus.failed, "failed"], ids=["member", "name"])
def test_an_enum_column_takes_a_member_or_its_name(engine: sa.Engine, state: object) -> None:
    with Session(engine) as session:
        payment = force_state(PaymentIntent(), state)
        seen = [payment.status]
        session.add(payment)
        session.commit()
        payment.retry()
        session.commit()
        seen.append(payment.status)
    assert seen == [PaymentStatus.failed, PaymentStatus.pending]


@pytest.mark.parametrize("state", [Phase.failed, "failed", "Failed"],
                         ids=["member", "name", "value"])
def test_an_enum_state_is_forced_by_member_name_or_value(state: object) -> None:
    charge = Charge()
    force_state(charge, state, "by_name")
    force_state(charge, state, "by_value")
    assert (charge.by_name, charge.by_value) == (Phase.failed, Phase.failed)


@pytest.mark.parametrize(("obj", "state", "message"), [
    (Todo(), "doign", "Todo.status cannot hold 'doign'; its states are ['pending', 'doing', "
     "'completed', 'blocked', 'dismissed']"),
    (PaymentIntent(), "refunded", "PaymentIntent.status cannot hold 'refunded'; its states "
     "are ['pending', 'processing', 'succeeded', 'failed', 'canceled']"),
    (Subscription(), "gone", "Subscription.status cannot hold 'gone'; its states are "
     "['trialing', 'active', 'past_due', 'suspended', 'terminated', 'canceled', 'enrolled']"),
    (Lamp(), "dim", "Lamp.state cannot hold 'dim'; its states are ['off', 'on']"),
    (Todo(), None, "Todo.status cannot hold None"),
    (Todo(), "*", "Todo.status cannot hold '*'"),
], ids=["string", "enum", "string-enum", "plain", "none", "star"])
def test_a_state_the_column_cannot_hold_is_a_value_error(obj: object, state: object,
                                                         message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[")):
        force_state(obj, state)


@pytest.mark.parametrize("cls", [Draft, Memo], ids=["dataclass", "plain"])
def test_the_initial_state_a_diagram_draws_can_be_forced(cls: type) -> None:
    """A dataclass field's or class attribute's default, as a mapped column's default."""
    assert '    state "draft" as s' in diagram(cls)
    obj = force_state(cls(), "review")
    assert force_state(obj, "draft") is obj
    assert obj.state == "draft"
    with pytest.raises(ValueError, match=r"cannot hold 'x'; its states are \[.*'draft'\]"):
        force_state(obj, "x")


def test_a_string_enum_column_takes_its_strings() -> None:
    assert force_state(Subscription(), "suspended").status == "suspended"


def test_column_names_another_state_column(engine: sa.Engine) -> None:
    with Session(engine) as session:
        subscription = force_state(Subscription(), "paid", column="payment_status")
        session.add(subscription)
        session.commit()
        subscription.refund()
        assert (subscription.status, subscription.payment_status) == ("trialing", "refunded")


def test_a_plain_object_is_set_too() -> None:
    lamp = force_state(Lamp(), "On")
    seen = [lamp.state]
    lamp.switch_off()
    seen.append(lamp.state)
    assert seen == [Light.on, Light.off]


def test_several_state_columns_without_a_state_column_need_column() -> None:
    robot = Robot()
    with pytest.raises(ValueError, match=r"several state columns \['power', 'mode'\]"):
        force_state(robot, "on")
    assert force_state(robot, "busy", column="mode").mode == "busy"



def test_the_one_column_the_transitions_name_needs_no_column() -> None:
    assert force_state(Fan(), "slow").speed == "slow"
    assert_transitions(Fan, {"turn_on": ("off", "slow")})
    with pytest.raises(AssertionError, match=r"missing  stop: 'slow' -> 'off'"):
        assert_transitions(Fan, {"turn_on": ("off", "slow"), "stop": ("slow", "off")})


def test_the_string_an_enum_column_stores_wins_over_a_members_value() -> None:
    """By name, "b" is the member b; stored by value, "a" is the member b too."""
    crossed = force_state(Crossed(), "b")
    force_state(crossed, "a", column="by_value")
    assert (crossed.by_name, crossed.by_value) == (Swapped.b, Swapped.b)
    assert_transitions(Crossed, {"flip_name": ("a", "b")}, column="by_name")
    assert_transitions(Crossed, {"flip_value": ("b", "a")}, column="by_value")


def test_a_column_no_transition_uses_cannot_be_forced() -> None:
    with pytest.raises(ValueError, match=r"Todo.title is not a state column"):
        force_state(Todo(), "x", column="title")


# -- frozen_clock ---------------------------------------------------------------------------


def test_timestamps_equal_the_frozen_time(engine: sa.Engine) -> None:
    with Session(engine) as session, frozen_clock(NOON) as clock:
        todo = new_todo(session)
        todo.start("ada")
        assert todo.started_at == NOON == clock.now
        session.commit()
        todo_id = todo.id
    with Session(engine) as session:
        assert load(session, Todo, todo_id).started_at == NOON


def test_an_aware_time_is_written_to_a_naive_column_as_naive_utc(engine: sa.Engine) -> None:
    aware = datetime(2031, 5, 6, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    with Session(engine) as session, frozen_clock(aware):
        todo = new_todo(session)
        todo.start("ada")
        session.commit()
        todo_id = todo.id
    with Session(engine) as session:
        assert load(session, Todo, todo_id).started_at == NOON


def test_a_plain_object_gets_the_time_as_given() -> None:
    aware = NOON.replace(tzinfo=UTC)
    for now in (NOON, aware):
        lamp = Lamp()
        with frozen_clock(now):
            lamp.switch_on()
        assert lamp.switched_at == now
        assert (lamp.switched_at.tzinfo is None) == (now.tzinfo is None)


def test_the_clock_moves_only_when_told() -> None:
    with frozen_clock(NOON) as clock:
        first, second = Lamp(), Lamp()
        first.switch_on()
        assert clock.tick() == NOON + timedelta(seconds=1)
        assert clock.tick(timedelta(minutes=5)) == NOON + timedelta(minutes=5, seconds=1)
        second.switch_on()
        assert clock.move_to(NOON - timedelta(days=1)) == clock() == clock.now
    assert (first.switched_at, second.switched_at) == (NOON, NOON + timedelta(minutes=5,
                                                                              seconds=1))
    assert repr(clock) == "<FrozenClock at 2031-05-05T12:00:00>"


def test_the_previous_clock_comes_back_even_on_error() -> None:
    later = NOON + timedelta(hours=1)
    with frozen_clock(NOON):
        with pytest.raises(RuntimeError), frozen_clock(later):
            raise RuntimeError("the test failed")
        lamp = Lamp()
        lamp.switch_on()
        assert lamp.switched_at == NOON
    lamp = Lamp()
    before = datetime.now(UTC)
    lamp.switch_on()
    assert lamp.switched_at is not None
    assert lamp.switched_at >= before


@pytest.mark.parametrize("bad", ["2031-05-06", 1_900_000_000, None])
def test_a_frozen_clock_takes_a_datetime(bad: Any) -> None:
    with pytest.raises(TypeError, match="a frozen clock shows a datetime"):
        FrozenClock(bad)
    with pytest.raises(TypeError, match="tick\\(\\) takes a timedelta"):
        FrozenClock(NOON).tick(60)  # type: ignore[arg-type]


# -- captured_on_commit ---------------------------------------------------------------------

JOIN: Final = "create_savepoint"


def test_what_the_outer_commit_would_send_is_captured(engine: sa.Engine) -> None:
    """The test connects no receiver: the capture makes litestate queue the signal."""
    with engine.connect() as conn:
        outer = conn.begin()
        with Session(bind=conn, join_transaction_mode=JOIN) as session, \
                captured_on_commit(conn) as sent:
            todo = new_todo(session)
            todo.start("ada")
            todo_id = todo.id
            session.commit()
            assert list(sent) == []  # filled when the block ends
        outer.rollback()
    [signal] = sent
    assert isinstance(signal, Signal)
    assert (signal.name, signal.sender, signal.event, signal.record_id, signal.args) == (
        "committed", Todo, "start", todo_id, ("ada",))


def test_without_execute_nothing_is_sent_and_the_signals_stay_queued(
        engine: sa.Engine) -> None:
    for outcome, expected in (("rollback", []), ("commit", ["start"])):
        with engine.connect() as conn, capture_signals() as heard:
            outer = conn.begin()
            with Session(bind=conn, join_transaction_mode=JOIN) as session, \
                    captured_on_commit(conn) as sent:
                start_and_commit(session, "ada")
            assert (sent.events(), heard.events("committed")) == (["start"], [])
            getattr(outer, outcome)()
            assert heard.events("committed") == expected


def test_execute_sends_them_now_and_once(engine: sa.Engine) -> None:
    with engine.connect() as conn, capture_signals() as heard:
        outer = conn.begin()
        with Session(bind=conn, join_transaction_mode=JOIN) as session:
            with captured_on_commit(conn, execute=True) as sent:
                start_and_commit(session, "ada")
                assert heard.events("committed") == []
            assert heard.of("committed") == list(sent)
        outer.commit()  # taken off the queue: not sent again
    assert heard.events("committed") == ["start"]


def test_only_what_is_queued_inside_the_block_is_captured(engine: sa.Engine) -> None:
    with engine.connect() as conn, capture_signals() as heard:
        outer = conn.begin()
        with Session(bind=conn, join_transaction_mode=JOIN) as session:
            start_and_commit(session, "ada")
            with captured_on_commit(conn, execute=True) as sent:
                start_and_commit(session, "bob")
        assert [s.args for s in sent] == [("bob",)]
        assert [s.args for s in heard.of("committed")] == [("bob",)]
        outer.commit()
    assert [s.args for s in heard.of("committed")] == [("bob",), ("ada",)]


def test_a_savepoint_rolled_back_inside_the_block_drops_its_signals(
        engine: sa.Engine) -> None:
    with engine.connect() as conn:
        outer = conn.begin()
        with captured_on_commit(conn) as sent:
            undone = conn.begin_nested()
            with Session(bind=conn, join_transaction_mode=JOIN) as session:
                start_and_commit(session, "ada")
            undone.rollback()
            with Session(bind=conn, join_transaction_mode=JOIN) as session:
                start_and_commit(session, "bob")
        outer.rollback()
    assert [s.args for s in sent] == [("bob",)]


def test_a_session_that_commits_after_the_block_is_not_captured(engine: sa.Engine) -> None:
    """Its signals reach the connection's queue at its commit: commit inside the block."""
    with engine.connect() as conn:
        outer = conn.begin()
        with Session(bind=conn, join_transaction_mode=JOIN) as session:
            todo = new_todo(session)
            with captured_on_commit(conn) as sent:
                todo.start("ada")
            session.commit()
        outer.rollback()
    assert list(sent) == []


def start_and_fail(session: Session) -> None:
    start_and_commit(session, "ada")
    raise RuntimeError("the test failed")


def test_a_block_that_raises_is_captured_but_not_executed(engine: sa.Engine) -> None:
    with engine.connect() as conn, capture_signals() as heard:
        outer = conn.begin()
        with Session(bind=conn, join_transaction_mode=JOIN) as session, \
                pytest.raises(RuntimeError), captured_on_commit(conn, execute=True) as sent:
            start_and_fail(session)
        outer.rollback()
    assert (sent.events(), heard.events("committed")) == (["start"], [])


def test_execute_also_sends_what_the_receivers_commit(engine: sa.Engine) -> None:
    """As Django runs on-commit callbacks that callbacks register."""
    with engine.connect() as conn:

        def complete(sender: type, *, event: str, record_id: int, **extra: Any) -> None:
            if event == "start":
                with Session(bind=conn, join_transaction_mode=JOIN) as session:
                    load(session, Todo, record_id).complete("bot")
                    session.commit()

        outer = conn.begin()
        with litestate.transition_committed.connected_to(complete, sender=Todo), \
                Session(bind=conn, join_transaction_mode=JOIN) as session, \
                captured_on_commit(conn, execute=True) as sent:
            start_and_commit(session, "ada")
        outer.rollback()
    assert sent.events() == ["start", "complete"]


def test_a_receiver_error_propagates_after_every_receiver_heard(engine: sa.Engine) -> None:
    def broken(sender: type, **extra: Any) -> None:
        raise LookupError("queue down")

    with engine.connect() as conn, capture_signals() as heard:
        outer = conn.begin()
        with litestate.transition_committed.connected_to(broken), \
                Session(bind=conn, join_transaction_mode=JOIN) as session, \
                pytest.raises(LookupError, match="queue down"), \
                captured_on_commit(conn, execute=True) as sent:
            start_and_commit(session, "ada")
        outer.rollback()
    assert sent.events() == heard.events("committed") == ["start"]


def test_captured_on_commit_takes_a_connection(engine: sa.Engine) -> None:
    with pytest.raises(TypeError, match=r"takes the sa\.Connection"), \
            captured_on_commit(engine):  # type: ignore[arg-type]
        pass


def test_the_declared_table_shows_any_state_as_a_star() -> None:
    with pytest.raises(AssertionError) as info:
        assert_transitions(Job, {"run": ("new", "running")})
    assert "    'reset': ('*', 'new')," in str(info.value).splitlines()


class Step(enum.Enum):
    doing = "doing"


def test_an_enum_member_forced_on_a_string_column_is_its_value() -> None:
    todo = force_state(Todo(), Step.doing)
    assert todo.status == "doing"
    assert type(todo.status) is str


def test_two_captures_compare_by_what_they_heard() -> None:
    with capture_signals() as heard:
        Lamp().switch_on()
    with capture_signals() as nothing:
        pass
    with capture_signals() as nothing_either:
        pass
    assert nothing == nothing_either
    assert heard != nothing


class Twin:
    """Two state columns and no @state_column: states are compared as written."""

    left = "off"
    right = "off"

    @transition(frm="off", to="on", column="left")
    def left_on(self) -> None:
        pass

    @transition(frm="off", to="on", column="right")
    def right_on(self) -> None:
        pass


def test_a_class_without_a_default_column_is_compared_as_written() -> None:
    assert_transitions(Twin, {"left_on": ("off", "on"), "right_on": ("off", "on")})
    with pytest.raises(AssertionError, match="differs  right_on"):
        assert_transitions(Twin, {"left_on": ("off", "on"), "right_on": ("on", "off")})


def test_a_capture_has_a_length() -> None:
    with capture_signals() as heard:
        Lamp().switch_on()
    assert len(heard) == len(list(heard)) > 0
