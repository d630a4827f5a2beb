"""Diagrams: every state, the initial one, one arrow per transition and state it starts
from, in Mermaid and dot, drawn from the public description alone; an instance's current
state, read as the probes read it."""

from __future__ import annotations

import enum
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.orm.exc import DetachedInstanceError

from examples import models
from examples.models import PaymentIntent, PaymentStatus, StatutoryRateConfig, Subscription, Todo
from litestate import state_column, transition
from litestate.diagram import diagram


class Base(DeclarativeBase):
    pass


class Shade(enum.Enum):
    """Stored by name: ``mapped_column`` of a Python enum."""

    draft = "draft"
    review = "review"
    published = "published"
    withdrawn = "withdrawn"  # no transition reaches it


class Level(enum.Enum):
    low = 1
    high = 2
    critical = 3


@state_column("shade")
class Article(Base):
    """A Python-enum column (its default spelled as a string), a string Enum column and an
    int-valued enum, each with values no transition reaches."""

    __tablename__ = "articles"
    id: Mapped[int] = mapped_column(primary_key=True)
    shade: Mapped[Shade] = mapped_column(default="draft")
    review: Mapped[str] = mapped_column(sa.Enum("none", "asked", "done", "skipped",
                                                name="review"), default="none")
    level: Mapped[Level] = mapped_column(default=lambda: Level.low)

    @transition(frm="draft", to=Shade.review)
    def submit(self) -> None:
        pass

    @transition(frm=Shade.review, to="published", guard=["is_checked", "has_title"])
    def publish(self) -> None:
        pass

    @transition(frm="none", to="asked", column="review")
    def ask(self) -> None:
        pass

    @transition(frm=Level.low, to=Level.high, column="level")
    def escalate(self) -> None:
        pass

    def is_checked(self) -> bool:
        return True

    def has_title(self) -> bool:
        return True


@state_column("state")
class Door:
    """A plain class: a class attribute is its initial state; "*" is any state."""

    state = "closed"

    @transition(frm="closed", to="open")
    def open(self) -> None:
        pass

    @transition(frm="open", to="closed")
    def close(self) -> None:
        pass

    @transition(frm="*", to="broken")
    def kick(self) -> None:
        pass


@state_column("phase")
@dataclass
class Job:
    """A dataclass: its field default is its initial state."""

    phase: str = "queued: waiting"

    @transition(frm="queued: waiting", to="in progress")
    def begin(self) -> None:
        pass

    @transition(frm=["in progress", "half-done"], to='say "done"')
    def end(self) -> None:
        pass


@state_column("state")
class Bare:
    """No default anywhere: no initial state."""

    def __init__(self) -> None:
        self.state = "a"

    @transition(frm="a", to="b")
    def go(self) -> None:
        pass



@state_column("phase")
@dataclass(slots=True)
class Ticket:
    """A dataclass with slots: no class attribute holds its field default."""

    phase: str = "open"

    @transition(frm="open", to="closed")
    def close(self) -> None:
        pass


class Power(enum.Enum):
    off = "Off"
    on = "On"


@state_column("power")
class Switch:
    """A plain class whose states are Enum members."""

    def __init__(self) -> None:
        self.power = Power.off

    @transition(frm=Power.off, to=Power.on)
    def flip(self) -> None:
        pass


@state_column("status")
class Memo(Base):
    """A String column whose default and states are Enum members: held as their values."""

    __tablename__ = "memos"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(10), default=Power.off)

    @transition(frm=Power.off, to=Power.on)
    def flip(self) -> None:
        pass



@state_column("state")
class Seat(Base):
    """A composite primary key."""

    __tablename__ = "seats"
    row: Mapped[str] = mapped_column(primary_key=True)
    number: Mapped[int] = mapped_column(primary_key=True)
    state: Mapped[str] = mapped_column(default="free")

    @transition(frm="free", to="taken")
    def take(self) -> None:
        pass


@state_column("state")
class Nothing:
    """A state column and no transitions."""


# -- the demo models ----------------------------------------------------------------------

TODO = """\
stateDiagram-v2
    state "pending" as s0
    state "doing" as s1
    state "completed" as s2
    state "blocked" as s3
    state "dismissed" as s4
    [*] --> s0
    s0 --> s1: start
    s0 --> s2: complete
    s1 --> s2: complete
    s3 --> s0: unblock
    s0 --> s4: dismiss
    s1 --> s4: dismiss
    s2 --> s1: reopen
"""

PAYMENT_INTENT = """\
stateDiagram-v2
    state "pending" as s0
    state "processing" as s1
    state "succeeded" as s2
    state "failed" as s3
    state "canceled" as s4
    [*] --> s0
    s0 --> s1: process
    s1 --> s2: succeed
    s1 --> s3: fail
    s3 --> s0: retry
    s0 --> s4: cancel
    s1 --> s4: cancel
"""

SUBSCRIPTION_STATUS = """\
stateDiagram-v2
    state "trialing" as s0
    state "active" as s1
    state "past_due" as s2
    state "suspended" as s3
    state "canceled" as s4
    state "terminated" as s5
    state "enrolled" as s6
    [*] --> s0
    s0 --> s1: activate
    s0 --> s4: cancel
    s1 --> s4: cancel
    s2 --> s4: cancel
    s3 --> s4: cancel
    s1 --> s3: suspend
    s3 --> s6: reactivate [eligible_for_reactivation]
    s5 --> s6: reactivate [eligible_for_reactivation]
"""

SUBSCRIPTION_PAYMENT_STATUS = """\
stateDiagram-v2
    state "unpaid" as s0
    state "paid" as s1
    state "refunded" as s2
    [*] --> s0
    s0 --> s1: mark_paid [Subscription.#60;lambda#62;]
    s1 --> s2: refund
"""

STATUTORY_RATE_CONFIG = """\
stateDiagram-v2
    state "inactive" as s0
    state "archived" as s1
    state "active" as s2
    [*] --> s0
    s0 --> s2: activate
    s1 --> s2: activate
    s0 --> s1: archive
    s2 --> s1: archive
"""

TODO_DOT = """\
digraph "Todo.status" {
    rankdir=LR;
    node [shape=box, style=rounded];
    s0 [label="pending"];
    s1 [label="doing"];
    s2 [label="completed"];
    s3 [label="blocked"];
    s4 [label="dismissed"];
    initial [shape=point];
    initial -> s0;
    s0 -> s1 [label="start"];
    s0 -> s2 [label="complete"];
    s1 -> s2 [label="complete"];
    s3 -> s0 [label="unblock"];
    s0 -> s4 [label="dismiss"];
    s1 -> s4 [label="dismiss"];
    s2 -> s1 [label="reopen"];
}
"""


@pytest.mark.parametrize(("model", "expected"), [
    (Todo, TODO),
    (PaymentIntent, PAYMENT_INTENT),
    (StatutoryRateConfig, STATUTORY_RATE_CONFIG),
])
def test_a_demo_model_is_drawn_in_mermaid(model: type, expected: str) -> None:
    """States in the order the declarations name them; a ``frm`` of several states (a set)
    puts the initial state first (StatutoryRateConfig's inactive)."""
    assert diagram(model) == expected


def test_the_mermaid_format_is_the_default_and_dot_the_other() -> None:
    assert diagram(Todo, format="mermaid") == TODO
    assert diagram(Todo, format="dot") == TODO_DOT


def test_two_state_columns_give_two_diagrams_in_declaration_order() -> None:
    assert diagram(Subscription) == SUBSCRIPTION_STATUS + "\n" + SUBSCRIPTION_PAYMENT_STATUS


def test_column_picks_one_state_column() -> None:
    assert diagram(Subscription, column="payment_status") == SUBSCRIPTION_PAYMENT_STATUS
    assert diagram(Subscription, column="status") == SUBSCRIPTION_STATUS


def test_an_unknown_column_is_a_value_error_naming_the_columns() -> None:
    with pytest.raises(ValueError, match="no transitions on 'plan'") as info:
        diagram(Subscription, column="plan")
    assert "['status', 'payment_status']" in str(info.value)


# -- states -------------------------------------------------------------------------------


def test_an_enum_column_lists_its_unreachable_values_after_the_declared_states() -> None:
    """A Python enum's members (withdrawn), a string Enum's values (done, skipped), an
    int-valued enum's members by name; a callable default is no initial state."""
    assert diagram(Article) == """\
stateDiagram-v2
    state "draft" as s0
    state "review" as s1
    state "published" as s2
    state "withdrawn" as s3
    [*] --> s0
    s0 --> s1: submit
    s1 --> s2: publish [is_checked, has_title]

stateDiagram-v2
    state "none" as s0
    state "asked" as s1
    state "done" as s2
    state "skipped" as s3
    [*] --> s0
    s0 --> s1: ask

stateDiagram-v2
    state "low" as s0
    state "high" as s1
    state "critical" as s2
    s0 --> s1: escalate
"""


def test_a_transition_from_any_state_is_one_arrow_from_one_any_node() -> None:
    assert diagram(Door) == """\
stateDiagram-v2
    state "closed" as s0
    state "open" as s1
    state "broken" as s2
    state "any state" as any
    [*] --> s0
    s0 --> s1: open
    s1 --> s0: close
    any --> s2: kick
"""
    assert diagram(Door, format="dot") == """\
digraph "Door.state" {
    rankdir=LR;
    node [shape=box, style=rounded];
    s0 [label="closed"];
    s1 [label="open"];
    s2 [label="broken"];
    any [label="any state", style="rounded,dashed"];
    initial [shape=point];
    initial -> s0;
    s0 -> s1 [label="open"];
    s1 -> s0 [label="close"];
    any -> s2 [label="kick"];
}
"""


def test_names_with_spaces_dashes_colons_and_quotes_render() -> None:
    """Mermaid: generated ids carry the labels, a quote is its entity code; dot: quoted,
    escaped. The dataclass field default is the initial state."""
    assert diagram(Job) == """\
stateDiagram-v2
    state "queued: waiting" as s0
    state "in progress" as s1
    state "half-done" as s2
    state "say #34;done#34;" as s3
    [*] --> s0
    s0 --> s1: begin
    s1 --> s3: end
    s2 --> s3: end
"""
    assert diagram(Job, format="dot") == """\
digraph "Job.phase" {
    rankdir=LR;
    node [shape=box, style=rounded];
    s0 [label="queued: waiting"];
    s1 [label="in progress"];
    s2 [label="half-done"];
    s3 [label="say \\"done\\""];
    initial [shape=point];
    initial -> s0;
    s0 -> s1 [label="begin"];
    s1 -> s3 [label="end"];
    s2 -> s3 [label="end"];
}
"""


def test_characters_that_would_break_a_label_are_escaped() -> None:
    @state_column("state")
    class Odd:
        @transition(frm="a;b", to='#1 <b> & \\n "q"')
        def go(self) -> None:
            pass

    assert diagram(Odd).splitlines()[1:3] == [
        '    state "a#59;b" as s0', '    state "#35;1 #60;b#62; #38; #92;n #34;q#34;" as s1']
    assert diagram(Odd, format="dot").splitlines()[3:5] == [
        '    s0 [label="a;b"];', '    s1 [label="#1 <b> & \\\\n \\"q\\""];']


def test_without_a_default_there_is_no_initial_state() -> None:
    assert diagram(Bare) == 'stateDiagram-v2\n    state "a" as s0\n    state "b" as s1\n' \
        "    s0 --> s1: go\n"
    assert "initial" not in diagram(Bare, format="dot")



def test_a_slotted_dataclass_starts_in_its_field_default() -> None:
    assert diagram(Ticket) == ('stateDiagram-v2\n    state "open" as s0\n'
                               '    state "closed" as s1\n    [*] --> s0\n'
                               "    s0 --> s1: close\n")


# -- an instance --------------------------------------------------------------------------


def test_an_instance_has_its_current_state_highlighted() -> None:
    todo = Todo(status="doing")
    assert diagram(todo) == TODO + (
        "    classDef current fill:#ffd966,stroke:#7f6000,stroke-width:2px\n"
        "    class s1 current\n")
    assert '    s1 [label="doing", style="rounded,filled", fillcolor="#ffd966"];' in \
        diagram(todo, format="dot").splitlines()


def test_an_unsaved_instance_without_a_state_is_in_its_initial_state() -> None:
    assert diagram(Todo()).endswith("    class s0 current\n")
    assert diagram(Door()).endswith("    class s0 current\n")


@pytest.mark.parametrize("status", [PaymentStatus.failed, "failed"])
def test_an_enum_state_is_highlighted_however_it_was_set(status: object) -> None:
    assert diagram(PaymentIntent(status=status)).endswith("    class s3 current\n")


def test_each_state_column_of_an_instance_highlights_its_own_state() -> None:
    subscription = Subscription(status="active", payment_status="paid")
    status, payment_status = diagram(subscription).split("\n\n")
    assert status.endswith("    class s1 current")
    assert payment_status.endswith("    class s1 current\n")


def test_a_current_state_no_declaration_names_is_drawn_too() -> None:
    door = Door()
    door.state = "ajar"
    assert diagram(door).splitlines()[4:5] == ['    state "ajar" as s3']
    assert diagram(door).endswith("    class s3 current\n")



SWITCH = """\
stateDiagram-v2
    state "Off" as s0
    state "On" as s1
"""
SWITCHED = """\
    s0 --> s1: flip
    classDef current fill:#ffd966,stroke:#7f6000,stroke-width:2px
    class s0 current
"""


def test_an_enum_member_is_the_current_state_its_declarations_name() -> None:
    """A plain class's attribute holds the member; a String column's, its value."""
    assert diagram(Switch()) == SWITCH + SWITCHED
    assert diagram(Memo()) == SWITCH + "    [*] --> s0\n" + SWITCHED
    assert diagram(Memo(status="Off")) == SWITCH + "    [*] --> s0\n" + SWITCHED


# -- an instance in a session -------------------------------------------------------------

HIGHLIGHT = "    classDef current"


@pytest.fixture
def saved() -> Iterator[tuple[Session, Todo, list[str]]]:
    """A Todo saved as "doing", its session (the Todo expired by the commit), and the SQL
    sent from then on."""
    engine = sa.create_engine("sqlite://")
    models.Base.metadata.create_all(engine)
    sent: list[str] = []
    with Session(engine) as session:
        todo = Todo(status="doing")
        session.add(todo)
        session.commit()

        @sa.event.listens_for(engine, "before_cursor_execute")
        def record(*args: Any) -> None:
            sent.append(args[2])  # the statement

        yield session, todo, sent
    engine.dispose()


def test_an_expired_instance_loads_its_state_with_one_select(
        saved: tuple[Session, Todo, list[str]]) -> None:
    _, todo, sent = saved
    assert diagram(todo).endswith("    class s1 current\n")
    assert len(sent) == 1
    assert sent[0].startswith("SELECT")
    diagram(todo)
    assert len(sent) == 1  # now loaded


def test_an_instance_whose_row_is_gone_has_no_current_state(
        saved: tuple[Session, Todo, list[str]]) -> None:
    """Deleted by someone else since it was loaded: drawn as its class is."""
    session, todo, _ = saved
    session.connection().execute(sa.text("DELETE FROM todos"))
    assert diagram(todo) == diagram(Todo)


def test_an_instance_deleted_in_its_session_has_no_current_state(
        saved: tuple[Session, Todo, list[str]]) -> None:
    session, todo, _ = saved
    assert HIGHLIGHT in diagram(todo)
    session.delete(todo)
    assert diagram(todo) == diagram(Todo)
    session.flush()
    assert diagram(todo) == diagram(Todo)


def test_a_detached_instance_without_its_state_is_an_error_saying_what_to_do(
        saved: tuple[Session, Todo, list[str]]) -> None:
    session, todo, sent = saved
    session.close()  # detached, its attributes expired by the commit
    with pytest.raises(DetachedInstanceError) as info:
        diagram(todo)
    assert str(info.value).startswith(
        "cannot draw the current state of Todo 1: it is detached from its session and its "
        "status is not loaded; merge() it into a session first, or draw the class Todo")
    assert sent == []



def test_a_detached_instance_with_a_composite_key_is_named_by_the_whole_key() -> None:
    engine = sa.create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        seat = Seat(row="B", number=12)
        session.add(seat)
        session.commit()
    with pytest.raises(DetachedInstanceError, match=r"^cannot draw the current state of "
                                                    r"Seat \('B', 12\): it is detached"):
        diagram(seat)
    engine.dispose()


def test_a_detached_instance_with_its_state_loaded_is_drawn(
        saved: tuple[Session, Todo, list[str]]) -> None:
    session, todo, _ = saved
    session.refresh(todo)
    session.close()
    assert diagram(todo).endswith("    class s1 current\n")


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["svg", "Mermaid", None])
def test_an_unknown_format_is_a_value_error_naming_the_formats(bad: Any) -> None:
    with pytest.raises(ValueError, match="the formats are 'mermaid', 'dot'"):
        diagram(Todo, format=bad)


@pytest.mark.parametrize("target", [Nothing, Nothing(), object, None, Base])
def test_a_class_without_transitions_is_a_type_error(target: object) -> None:
    with pytest.raises(TypeError, match="declares no transitions"):
        diagram(target)


# -- every declaration (hypothesis) -------------------------------------------------------

STATES: list[str | int] = ["a", "b c", "d-e", "f:g", 'h"i', "j#k;", "l<m>", "n\\o", 1, 2]
GUARDS = ["ok", "ready"]
DECLARATION = st.tuples(
    st.one_of(st.just("*"), st.lists(st.sampled_from(STATES), min_size=1, max_size=4)),
    st.sampled_from(STATES),
    st.lists(st.sampled_from(GUARDS), max_size=2, unique=True))
Declaration = tuple[str | list[str | int], str | int, list[str]]


def _body() -> Any:
    def body(self: object) -> None:
        pass
    return body


def _machine(declarations: Sequence[Declaration]) -> type:
    """A plain class declaring ``e0``, ``e1``... in order."""
    namespace: dict[str, Any] = {name: lambda self: True for name in GUARDS}
    for i, (frm, to, guards) in enumerate(declarations):
        namespace[f"e{i}"] = transition(frm=frm, to=to, guard=guards or None)(_body())
    return state_column("state")(type("Generated", (), namespace))


def _mermaid_unescaped(text: str) -> str:
    return re.sub(r"#(\d+);", lambda code: chr(int(code[1])), text)


def _mermaid_graph(text: str) -> tuple[list[str], Counter[tuple[str, str, str]]]:
    """The states' labels, and each arrow as (source label, target label, label)."""
    labels = {ident: _mermaid_unescaped(label)
              for label, ident in re.findall(r'^    state "(.*)" as (\w+)$', text, re.M)}
    arrows = re.findall(r"^    (\w+) --> (\w+): (.*)$", text, re.M)
    return ([label for ident, label in labels.items() if ident != "any"],
            Counter((labels[s], labels[t], _mermaid_unescaped(e)) for s, t, e in arrows))


def _dot_unescaped(text: str) -> str:
    return re.sub(r"\\(.)", lambda escape: escape[1], text)


def _dot_graph(text: str) -> tuple[list[str], Counter[tuple[str, str, str]]]:
    quoted = r'"((?:[^"\\]|\\.)*)"'
    labels = {ident: _dot_unescaped(label)
              for ident, label in re.findall(rf"^    (\w+) \[label={quoted}", text, re.M)}
    arrows = re.findall(rf"^    (\w+) -> (\w+) \[label={quoted}\];$", text, re.M)
    return ([label for ident, label in labels.items() if ident != "any"],
            Counter((labels[s], labels[t], _dot_unescaped(e)) for s, t, e in arrows))


def _expected_arrows(declarations: Sequence[Declaration]) -> Counter[tuple[str, str, str]]:
    arrows: Counter[tuple[str, str, str]] = Counter()
    for i, (frm, to, guards) in enumerate(declarations):
        label = f"e{i} [{', '.join(guards)}]" if guards else f"e{i}"
        for source in ["any state"] if frm == "*" else {str(state) for state in frm}:
            arrows[source, str(to), label] += 1
    return arrows


@settings(max_examples=80, deadline=None)
@given(st.lists(DECLARATION, min_size=1, max_size=6), st.sampled_from(["mermaid", "dot"]))
def test_every_declared_transition_is_one_arrow_from_each_state_it_starts_from(
        declarations: list[Declaration], format: Any) -> None:
    """And every state named is drawn exactly once; "*" is one arrow from "any state"."""
    text = diagram(_machine(declarations), format=format)
    states, arrows = (_mermaid_graph if format == "mermaid" else _dot_graph)(text)
    assert arrows == _expected_arrows(declarations)
    named = {str(to) for _, to, _ in declarations} | {
        str(state) for frm, _, _ in declarations if frm != "*" for state in frm}
    assert sorted(states) == sorted(named)


@settings(max_examples=50, deadline=None)
@given(st.lists(DECLARATION, min_size=1, max_size=6))
def test_the_order_states_are_listed_in_a_frm_changes_nothing(
        declarations: list[Declaration]) -> None:
    """A frm is a set: equal declarations give equal text."""
    reordered = [(frm if frm == "*" else frm[::-1], to, guards)
                 for frm, to, guards in declarations]
    assert diagram(_machine(reordered)) == diagram(_machine(declarations))


class Tone(enum.Enum):
    """Stored as neither its names nor its values: ``values_callable`` lowercases names."""

    LOUD = 1
    SOFT = 2


@state_column("tone")
class Speaker(Base):
    __tablename__ = "speakers"
    id: Mapped[int] = mapped_column(primary_key=True)
    tone: Mapped[Tone] = mapped_column(
        sa.Enum(Tone, values_callable=lambda e: [m.name.lower() for m in e]),
        default=Tone.SOFT)

    @transition(frm=Tone.SOFT, to=Tone.LOUD)
    def raise_voice(self) -> None:
        pass


def test_an_enum_column_holding_the_string_it_stores_highlights_the_member() -> None:
    speaker = Speaker()
    speaker.tone = "loud"  # type: ignore[assignment]  # what the column stores for LOUD
    drawn = diagram(speaker)
    assert 'state "LOUD" as s1' in drawn
    assert drawn.endswith("    class s1 current\n")


@state_column("state")
class Gauge:
    """A state read through a property: no class-level default to start from."""

    def __init__(self) -> None:
        self._state = "low"

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        self._state = value

    @transition(frm="low", to="high")
    def rise(self) -> None:
        pass


@state_column("state")
class Switch2:
    state = True  # a flag, not a state: no initial state from it

    @transition(frm="off", to="on")
    def flip(self) -> None:
        pass


@pytest.mark.parametrize("cls", [Gauge, Switch2])
def test_a_class_attribute_that_is_no_state_gives_no_initial_state(cls: type) -> None:
    assert "[*]" not in diagram(cls)


@state_column("state")
@dataclass
class Memo2:
    state: ClassVar[str] = "draft"  # a class attribute, not a dataclass field

    @transition(frm="draft", to="sent")
    def send(self) -> None:
        pass


def test_a_dataclass_state_that_is_no_field_starts_in_its_class_attribute() -> None:
    assert "    [*] --> s0\n" in diagram(Memo2)
    assert 'state "draft" as s0' in diagram(Memo2)


@state_column("step")
class Relay(Base):
    __tablename__ = "relays"
    id: Mapped[int] = mapped_column(primary_key=True)
    step: Mapped[str] = mapped_column(sa.Enum("b", "a", "d", name="relay_step"))

    @transition(frm="a", to="d")
    def forward(self) -> None:
        pass

    @transition(frm=["d", "b"], to="a")
    def back(self) -> None:
        pass


def test_a_state_already_drawn_comes_before_one_the_enum_lists_first() -> None:
    labels = re.findall(r'state "(\w)" as s\d', diagram(Relay))
    assert labels == ["a", "d", "b"]
