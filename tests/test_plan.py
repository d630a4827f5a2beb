"""The compiled description and the plan's seams, which optional modules plug into."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Mapped, Session, mapped_column

from litestate import Transition, core, state_column, transition, transitions


@pytest.fixture
def audited() -> Iterator[list[str]]:
    """An extension, as a history module would be: a row in the atomic section after the
    write, and a note after an undo."""
    failures: list[str] = []

    def history(firing: Any) -> None:
        trail = firing.obj.trail_class
        firing.session.add(trail(note=f"{firing.plan.event} from {firing.current}"))

    def on_failure(firing: Any, error: BaseException) -> None:
        failures.append(f"{firing.plan.event}: {error}")

    def extend(cls: type, plan: Any) -> None:
        if cls.__name__ == "Audited":
            plan.after_write += (history,)
            plan.on_failure += (on_failure,)

    core.plan_extensions.append(extend)
    yield failures
    core.plan_extensions.remove(extend)


def test_an_extension_adds_a_statement_to_the_atomic_section_and_a_step_on_failure(
        engine: sa.Engine, audited: list[str]) -> None:
    registry = sa.orm.registry()

    @registry.mapped
    class Trail:
        __tablename__ = "plan_trail"
        id: Mapped[int] = mapped_column(primary_key=True)
        note: Mapped[str] = mapped_column(sa.String(40))

    @registry.mapped
    @state_column("status")
    class Audited:
        __tablename__ = "plan_audited"
        trail_class = Trail
        id: Mapped[int] = mapped_column(primary_key=True)
        status: Mapped[str] = mapped_column(sa.String(20), default="new")

        @transition(frm="new", to="done")
        def finish(self, fail: bool = False) -> None:
            if fail:
                raise RuntimeError("no")

        @transition(frm="new", to="done")
        def finish_quietly(self) -> None:
            pass

    registry.metadata.drop_all(engine)
    registry.metadata.create_all(engine)
    with Session(engine) as session:
        first, second = Audited(), Audited()
        session.add_all([first, second])
        session.commit()
        first.finish_quietly()  # an empty body, yet the extension's row: a SAVEPOINT
        with pytest.raises(RuntimeError):
            second.finish(fail=True)
        session.commit()
        assert session.scalars(sa.select(Trail.note)).all() == ["finish_quietly from new"]
    assert audited == ["finish: no"]
    registry.metadata.drop_all(engine)
    registry.dispose()


def test_the_public_description_is_frozen_and_carries_the_parameters() -> None:
    def level_ok(self: object, level: int = 1, *, by: str = "") -> bool:
        return level > 0

    @state_column("state")
    class Lamp:
        state = "off"

        def bright(self) -> bool:
            return True

        @transition(frm=["off", "dim"], to="on", guard=["bright", level_ok])
        def switch_on(self, level: int = 1, *, by: str = "") -> None:
            pass

    (description,) = transitions(Lamp)
    assert isinstance(description, Transition)
    assert description.frm == frozenset({"off", "dim"})
    assert description.guards[0] == "bright"
    assert description.guards[1].endswith("level_ok")
    assert list(description.signature.parameters) == ["level", "by"]
    assert description.signature.parameters["by"].kind is inspect.Parameter.KEYWORD_ONLY
    with pytest.raises(dataclasses.FrozenInstanceError):
        description.to = "off"  # type: ignore[misc]
    assert transitions(Lamp)[0] is description  # compiled once
