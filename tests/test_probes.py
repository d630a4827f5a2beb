"""can_transition and available_transitions: the call's checks, without side effects."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session

from litestate import available_transitions, can_transition
from tests.conftest import SignalLog, StatementLog, load
from tests.models import Account, Subscription, Todo


@pytest.mark.parametrize(("status", "allowed"), [
    ("pending", ["start", "complete", "dismiss"]),
    ("doing", ["complete", "dismiss"]),
    ("completed", ["reopen"]),
    ("blocked", ["unblock"]),
    ("dismissed", []),
])
def test_available_transitions_follow_the_state(status: str, allowed: list[str]) -> None:
    todo = Todo(status=status)
    assert available_transitions(todo) == allowed
    for event in ("start", "complete", "dismiss"):
        assert can_transition(todo, event, "ada") is (event in allowed)
    for event in ("unblock", "reopen"):
        assert can_transition(todo, event) is (event in allowed)


def test_probes_apply_guards_with_and_without_arguments() -> None:
    subscription = Subscription(status="suspended", payment_status="unpaid", balance=50,
                                eligible=False)
    assert not can_transition(subscription, "reactivate")
    assert can_transition(subscription, "mark_paid", 50)
    assert not can_transition(subscription, "mark_paid", amount=10)
    # mark_paid's guard needs the amount: available_transitions cannot ask it
    assert available_transitions(subscription) == ["cancel", "mark_paid"]
    subscription.eligible = True
    assert can_transition(subscription, "reactivate")


def test_probes_send_no_sql_and_no_signal(
        session: Session, signals: SignalLog, sql: StatementLog) -> None:
    account = Account(balance=0)
    session.add(account)
    session.flush()
    sql.statements.clear()
    assert can_transition(account, "close")  # even lock=True takes no lock in a probe
    assert available_transitions(account) == ["close", "freeze", "reopen"]
    assert sql.statements == []
    assert signals.heard == []
    assert account.status == "open"


def test_an_unknown_event_is_an_error_not_false() -> None:
    with pytest.raises(ValueError, match=r"Todo has no transition 'strat'; it has \['start'"):
        can_transition(Todo(), "strat")


def test_a_guard_named_by_a_method_receives_the_call_arguments() -> None:
    from litestate import state_column, transition

    @state_column("state")
    class Wallet:
        def __init__(self) -> None:
            self.state, self.balance = "open", 10

        def affordable(self, amount: int) -> bool:
            return amount <= self.balance

        @transition(frm="open", to="open", guard="affordable")
        def spend(self, amount: int) -> None:
            self.balance -= amount

    wallet = Wallet()
    assert can_transition(wallet, "spend", 10)
    assert not can_transition(wallet, "spend", amount=11)
    wallet.spend(4)
    assert wallet.balance == 6
    assert available_transitions(wallet) == ["spend"]  # the guard needs the amount


def _brute_force(obj: object) -> list[str]:
    """What available_transitions promises, computed the slow way."""
    from litestate import transitions

    found = []
    for t in transitions(type(obj)):
        current = getattr(obj, t.column)
        if current is None or (t.frm is not None and current not in t.frm):
            continue
        if t.event == "reactivate" and not getattr(obj, "eligible", True):
            continue
        found.append(t.event)
    return found


@pytest.mark.parametrize("status", ["pending", "doing", "completed", "dismissed", "blocked", "?"])
def test_available_transitions_agree_with_every_transition_checked(status: str) -> None:
    assert available_transitions(Todo(status=status)) == _brute_force(Todo(status=status))


@pytest.mark.parametrize("status", ["trialing", "active", "suspended", "canceled"])
@pytest.mark.parametrize("payment_status", ["unpaid", "paid", "refunded"])
@pytest.mark.parametrize("eligible", [True, False])
def test_available_transitions_of_two_state_columns_keep_declaration_order(
        status: str, payment_status: str, eligible: bool) -> None:
    subscription = Subscription(status=status, payment_status=payment_status,
                                eligible=eligible, balance=0)
    assert available_transitions(subscription) == _brute_force(subscription)


@pytest.mark.parametrize("status", ["open", "closed", "frozen", "anything"])
def test_available_transitions_include_any_state_transitions(status: str) -> None:
    account = Account(status=status, balance=0)
    assert available_transitions(account) == _brute_force(account)
    assert "reopen" in available_transitions(account)


def test_a_probe_on_an_expired_object_loads_the_current_row(
        session: Session, new_session: Callable[..., Session]) -> None:
    todo = Todo(status="pending")
    session.add(todo)
    session.commit()  # expired
    other = new_session()
    load(other, Todo, 1).status = "blocked"
    other.commit()
    assert not can_transition(todo, "start", "ada")
    assert can_transition(todo, "unblock")
    assert available_transitions(todo) == ["unblock"]
