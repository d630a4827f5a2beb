"""The in-memory paths of one litestate source tree, for comparing two versions.

``python benchmarks/ab.py DIR`` imports ``litestate`` from ``DIR`` (a checkout or worktree
of any version) and prints, per case, the best of seven timings in nanoseconds. Run it
for two trees, alternately, several times each, and compare the minimums: one process per
version keeps the two from sharing caches or a compiled class.
"""

from __future__ import annotations

import sys
import timeit
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def cases() -> dict[str, tuple[Callable[[], object], int]]:
    """name -> (a function, how many transitions or probes one call makes)."""
    from litestate import available_transitions, can_transition, state_column, transition

    class Base(DeclarativeBase):
        pass

    @state_column("status")
    class Todo(Base):
        __tablename__ = "ab_todos"
        id: Mapped[int] = mapped_column(primary_key=True)
        status: Mapped[str] = mapped_column(sa.String(20), default="pending")
        size: Mapped[int] = mapped_column(default=1)

        @transition(frm="pending", to="doing")
        def start(self) -> None:
            pass

        @transition(frm="doing", to="pending")
        def stop(self) -> None:
            pass

        @transition(frm="pending", to="doing", guard=lambda self: self.size > 0)
        def guarded_start(self) -> None:
            pass

        @transition(frm="doing", to="done")
        def finish(self) -> None:
            pass

    todo = Todo(status="pending", size=1)

    def plain() -> None:
        todo.start()
        todo.stop()

    def guarded() -> None:
        todo.guarded_start()
        todo.stop()

    return {"a transition": (plain, 2), "the same, guarded": (guarded, 2),
            "can_transition": (lambda: can_transition(todo, "start"), 1),
            "available_transitions": (lambda: available_transitions(todo), 1)}


def best(fn: Callable[[], object], per_call: int) -> float:
    return min(timeit.repeat(fn, number=20000, repeat=7)) / 20000 / per_call * 1e9


def main() -> None:
    sys.path.insert(0, sys.argv[1])
    import litestate

    found = cases()
    timings = {name: best(fn, per_call) for name, (fn, per_call) in found.items()}

    def receive(_sender: Any, **_payload: Any) -> None:
        pass

    litestate.transition_succeeded.connect(receive)
    timings["a transition heard by one receiver"] = best(*found["a transition"])
    litestate.transition_succeeded.disconnect(receive)
    print(f"litestate from {litestate.__file__}")
    for name, ns in timings.items():
        print(f"{name}: {ns:,.0f} ns")


if __name__ == "__main__":
    main()
