"""Checked by mypy --strict (tests/test_tooling.py runs it), never executed.

A decorated method keeps its parameters and return type; misuse is a type error, and each
deliberate misuse carries an ignore that warn_unused_ignores would flag if it passed.
"""

from __future__ import annotations

from typing import assert_type

from litestate import Transition, available_transitions, can_transition, transition, transitions
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

    todo.start()  # type: ignore[call-arg]
    todo.start(42)  # type: ignore[arg-type]
    subscription.cancel(why="fraud")  # type: ignore[call-arg]
    intent.process("now")  # type: ignore[call-arg]
    x: str = todo.complete("ada")  # type: ignore[assignment]
    del x


class Plain:
    state = "a"

    @transition(frm="a", to="b", column="state", guard=lambda self, n: n > 0)
    def go(self, n: int, *, note: str = "") -> list[int]:
        return [n]


def check_plain(plain: Plain) -> None:
    assert_type(plain.go(1, note="x"), list[int])
    assert_type(Plain.go(plain, 2), list[int])
    plain.go("1")  # type: ignore[arg-type]
