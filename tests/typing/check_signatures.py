"""Checked by mypy --strict and pyright strict (tests/test_tooling.py runs both), never
executed.

A decorated method keeps its parameters and return type; misuse is a type error, and each
deliberate misuse carries one ignore per checker, ``# type: ignore[code]`` for mypy and
``# pyright: ignore[rule]`` for pyright (which is set to disregard mypy's), that
warn_unused_ignores or reportUnnecessaryTypeIgnoreComment would flag if it passed.
Guards (litestate.core.Guard) take the instance first: unannotated lambdas, of the instance
alone or of the call's arguments too, leave nothing Unknown for pyright strict, and a list
of guards of several arities passes mypy.
"""

from __future__ import annotations

from typing import assert_type

from litestate import (
    Transition,
    available_transitions,
    can_transition,
    transition,
    transition_state,
    transitions,
)
from tests.models import PaymentIntent, Subscription, Todo


def check(todo: Todo, subscription: Subscription, intent: PaymentIntent) -> None:
    assert_type(todo.start("ada"), None)
    assert_type(todo.complete(user="ada"), int)
    assert_type(subscription.cancel(reason="fraud"), str)
    assert_type(subscription.mark_paid(amount=3), None)
    assert_type(intent.process(), None)
    assert_type(can_transition(todo, "start", "ada"), bool)
    assert_type(available_transitions(todo), list[str])
    assert_type(transitions(Todo), tuple[Transition, ...])

    todo.start()  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    todo.start(42)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    subscription.cancel(why="fraud")  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    intent.process("now")  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    x: str = todo.complete("ada")  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    del x


def _nonempty(self: object, why: str, /) -> bool:
    return why != ""


def _named(self: object, *, why: str) -> bool:
    return why != ""


class Plain:
    state = "a"
    ready = True

    @transition(frm="a", to="b", column="state", guard=lambda self, n: n > 0)
    def go(self, n: int, *, note: str = "") -> list[int]:
        return [n]

    @transition(frm="b", to="a", column="state", guard=lambda self: self.ready)
    def back(self) -> None:
        pass

    @transition(frm="*", to="c", column="state",
                guard=["ready", _nonempty, lambda self: self.ready, lambda self, why: why])
    def stop(self, why: str) -> str:
        return why

    @transition(frm="*", to="d", column="state", guard=(_named, "ready"))
    def halt(self, *, why: str) -> None:
        pass

    @transition(frm="*", to="e", column="state", guard=lambda: True)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    def never(self) -> None:
        pass


def check_plain(plain: Plain) -> None:
    assert_type(plain.go(1, note="x"), list[int])
    assert_type(Plain.go(plain, 2), list[int])
    assert_type(plain.back(), None)
    assert_type(plain.stop("done"), str)
    assert_type(plain.halt(why="done"), None)
    assert_type(transition_state(plain, event="reset", frm="*", to="a", column="state",
                                 guard=lambda self: self.ready, body=lambda: 1), int | None)
    plain.go("1")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    plain.stop()  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
