"""Bad declarations fail when the class is made, naming model, event and value (semantic 8)."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, configure_mappers, mapped_column

from litestate import DeclarationError, Transition, state_column, transition, transitions
from tests.models import Subscription, Todo


class Base(DeclarativeBase):
    pass


class Color(enum.Enum):
    red = "red"
    blue = "blue"


class Stage(enum.Enum):
    draft = "draft"
    live = "live"


@contextmanager
def declaration_error(match: str) -> Iterator[sa.orm.registry]:
    """A fresh registry whose configuration must fail with a DeclarationError matching
    ``match``: a mapper that fails to configure poisons its registry, as in SQLAlchemy."""
    fresh = sa.orm.registry()
    with pytest.raises(DeclarationError) as info:  # noqa: PT012 - the class, then configure
        yield fresh
        fresh.configure()
    assert re.search(match, str(info.value)), str(info.value)
    error = info.value
    assert error.__cause__ is None, "no chained internal error in the traceback"
    assert error.__context__ is None or error.__suppress_context__
    fresh.dispose()


def test_an_unknown_state_column_names_model_event_and_column() -> None:
    with declaration_error(r"Bad1\.go: Bad1 has no column 'stat'") as base:
        @base.mapped
        class Bad1:
            __tablename__ = "bad1"
            id: Mapped[int] = mapped_column(primary_key=True)
            status: Mapped[str]

            @transition(frm="a", to="b", column="stat")
            def go(self) -> None:
                pass


def test_an_unknown_timestamp_column() -> None:
    with declaration_error(
            r"Bad2\.go: timestamp column 'b_at' is not a column of bad2") as base:
        @base.mapped
        class Bad2:
            __tablename__ = "bad2"
            id: Mapped[int] = mapped_column(primary_key=True)
            status: Mapped[str]

            @transition(frm="a", to="b", column="status", timestamp=True)
            def go(self) -> None:
                pass


def test_a_timestamp_column_that_is_not_a_datetime() -> None:
    with declaration_error(
            r"Bad3\.go: timestamp column 'note' is VARCHAR, not a DateTime") as base:
        @base.mapped
        class Bad3:
            __tablename__ = "bad3"
            id: Mapped[int] = mapped_column(primary_key=True)
            status: Mapped[str]
            note: Mapped[str]

            @transition(frm="a", to="b", column="status", timestamp="note")
            def go(self) -> None:
                pass


def test_a_state_outside_a_python_enum_column() -> None:
    with declaration_error(
            r"Bad4\.paint: state 'green' is not one of color's \['red', 'blue'\]") as base:
        @base.mapped
        class Bad4:
            __tablename__ = "bad4"
            id: Mapped[int] = mapped_column(primary_key=True)
            color: Mapped[Color]

            @transition(frm="red", to="green", column="color")
            def paint(self) -> None:
                pass


def test_a_state_outside_a_string_enum_column() -> None:
    with declaration_error(r"Bad5\.go: state 'z' is not one of st's \['a', 'b'\]") as base:
        @base.mapped
        class Bad5:
            __tablename__ = "bad5"
            id: Mapped[int] = mapped_column(primary_key=True)
            st: Mapped[str] = mapped_column(sa.Enum("a", "b", name="bad5_st"))

            @transition(frm=["a", "z"], to="b", column="st")
            def go(self) -> None:
                pass


def test_a_string_state_on_an_integer_column() -> None:
    with declaration_error(r"Bad6\.go: state 'one' is not a int, as level is") as base:
        @base.mapped
        class Bad6:
            __tablename__ = "bad6"
            id: Mapped[int] = mapped_column(primary_key=True)
            level: Mapped[int]

            @transition(frm="one", to=2, column="level")
            def go(self) -> None:
                pass


def test_a_guard_naming_a_missing_method() -> None:
    with declaration_error(r"Bad7\.go: guard 'is_ready' is not an attribute of Bad7") as base:
        @base.mapped
        class Bad7:
            __tablename__ = "bad7"
            id: Mapped[int] = mapped_column(primary_key=True)
            status: Mapped[str]

            @transition(frm="a", to="b", column="status", guard="is_ready")
            def go(self) -> None:
                pass


def test_a_guard_that_cannot_take_the_call() -> None:
    with declaration_error(
            r"Plain1\.go: guard .* can take neither the call go\(self, amount\) nor"):
        class Plain1:
            @transition(frm="a", to="b", column="s",
                        guard=lambda self, amount, currency: True)
            def go(self, amount: int) -> None:
                pass

        transitions(Plain1)


def test_two_transitions_with_one_name() -> None:
    with pytest.raises(DeclarationError, match="transition 'go' is declared twice"):
        class Twice:
            @transition(frm="a", to="b", column="s")
            def go(self) -> None:
                pass

            @transition(frm="b", to="c", column="s")  # type: ignore[no-redef]
            def go(self) -> None:  # noqa: F811 - the duplicate under test
                pass


def test_no_column_and_no_state_column_on_a_mapped_class_fails_at_mapper_configuration() -> None:
    registry = sa.orm.registry()

    class NoColumn:
        __tablename__ = "no_column"
        id: Mapped[int] = mapped_column(primary_key=True)
        status: Mapped[str]

        @transition(frm="a", to="b")
        def go(self) -> None:
            pass

    registry.mapped(NoColumn)
    with pytest.raises(DeclarationError, match=r"NoColumn\.go: no state column"):
        configure_mappers()
    registry.dispose()


def test_no_column_on_a_plain_class_fails_at_first_use() -> None:
    class Plain2:
        status = "a"

        @transition(frm="a", to="b")
        def go(self) -> None:
            pass

    with pytest.raises(DeclarationError, match=r"Plain2\.go: no state column; pass column="):
        Plain2().go()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"frm": [], "to": "b"}, r"frm=\[\]"),
    ({"frm": "a", "to": "*"}, r"to='\*'"),
    ({"frm": "a", "to": None}, r"to=None"),
    ({"frm": ["a", 1.5], "to": "b"}, r"frm=1\.5"),
    ({"frm": "a", "to": True}, r"to=True"),
    ({"frm": "a", "to": "b", "column": ""}, r"column=''"),
    ({"frm": "a", "to": "b", "timestamp": 3}, r"timestamp=3"),
    ({"frm": "a", "to": "b", "guard": [3]}, r"guard=3"),
    ({"frm": "a", "to": "b", "lock": "yes"}, r"lock='yes'"),
])
def test_bad_arguments_to_transition(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(DeclarationError, match=match):
        transition(**kwargs)  # type: ignore[arg-type]


def test_bad_state_column() -> None:
    with pytest.raises(DeclarationError, match=r"@state_column\(''\)"):
        state_column("")


def test_introspection_lists_every_transition_of_a_model() -> None:
    listed = {t.event: t for t in transitions(Todo)}
    assert list(listed) == ["start", "complete", "unblock", "dismiss", "reopen"]
    complete = listed["complete"]
    assert isinstance(complete, Transition)
    assert (complete.frm, complete.to, complete.column, complete.timestamp, complete.guards,
            complete.lock) == (frozenset({"pending", "doing"}), "completed", "status",
                               "completed_at", (), False)
    assert repr(complete) == "<Transition complete: 'doing' | 'pending' -> 'completed' on status>"


def test_introspection_shows_columns_and_guards_of_several_machines() -> None:
    listed = {t.event: t for t in transitions(Subscription)}
    assert listed["mark_paid"].column == "payment_status"
    assert listed["reactivate"].guards == ("eligible_for_reactivation",)
    assert listed["cancel"].timestamp == "canceled_at"


def test_a_subclass_inherits_and_can_override_transitions(frozen_clock: datetime) -> None:
    @state_column("state")
    class Parent:
        state = "a"

        @transition(frm="a", to="b")
        def go(self) -> None:
            pass

        @transition(frm="b", to="a")
        def back(self) -> None:
            pass

    class Child(Parent):
        @transition(frm="a", to="c")
        def go(self) -> None:
            pass

    assert [(t.event, t.to) for t in transitions(Child)] == [("go", "c"), ("back", "a")]
    child = Child()
    child.go()
    assert child.state == "c"


def test_a_mixin_is_resolved_against_each_mapped_class() -> None:
    class Lifecycle:
        @transition(frm="draft", to="live")
        def publish(self) -> None:
            pass

    @state_column("status")
    class Page(Lifecycle, Base):
        __tablename__ = "mixin_pages"
        id: Mapped[int] = mapped_column(primary_key=True)
        status: Mapped[Stage]
        published_at: Mapped[datetime | None]

    page = Page(status=Stage.draft)
    page.publish()
    assert page.status is Stage.live
    assert transitions(Page)[0].to is Stage.live


class Level(enum.IntEnum):
    low = 1
    high = 2


class Gauge(Base):
    __tablename__ = "gauges"
    id: Mapped[int] = mapped_column(primary_key=True)
    level: Mapped[int] = mapped_column(default=1)

    @transition(frm=Level.low, to=2, column="level")
    def raise_level(self) -> None:
        pass


def test_an_integer_column_takes_ints_and_int_enums_and_holds_ints() -> None:
    gauge = Gauge(level=1)
    gauge.raise_level()
    assert gauge.level == 2
    assert type(gauge.level) is int
    frm = transitions(Gauge)[0].frm
    assert frm == frozenset({1})
    assert [type(state) for state in frm] == [int]


@pytest.mark.parametrize("wrap", [staticmethod, classmethod])
def test_a_transition_under_staticmethod_or_classmethod_is_a_declaration_error(
        wrap: Any) -> None:
    class Thing:
        state = "a"
        go = wrap(transition(frm="a", to="b", column="state")(lambda self: None))

    with pytest.raises(DeclarationError, match=rf"Thing.go: .* remove @{wrap.__name__}"):
        transitions(Thing)


def test_transition_applied_twice_to_one_method_is_a_declaration_error() -> None:
    def go(self: Any) -> None:
        pass

    once = transition(frm="a", to="b", column="state")(go)
    with pytest.raises(DeclarationError, match=r"applied twice to .*go"):
        transition(frm="b", to="c", column="state")(once)
