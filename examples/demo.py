"""litestate demo: the Ruby article's models on an embedded SQLite file.

Run from the repository root: ``python -m examples.demo [path.db]``. It prints each transition,
the signals received, a refused attempt with its error, and each record's allowed actions.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from examples.models import (
    Base,
    PaymentIntent,
    RateConfigType,
    StatutoryRateConfig,
    Subscription,
    Todo,
)
from litestate import (
    TransitionError,
    available_transitions,
    transition_committed,
    transition_failed,
    transition_invalid,
    transition_state,
    transition_succeeded,
)
from litestate.sqlite import enable_savepoints


# Receivers live at module level: blinker holds them by weak reference.
def on_succeeded(sender: type, *, event: str, record_id: Any, from_state: Any, to_state: Any,
                 **extra: Any) -> None:
    print(f"  signal succeeded  {sender.__name__} {record_id}: {event}() "
          f"{_name(from_state)} -> {_name(to_state)}")


def on_committed(sender: type, *, event: str, record_id: Any, **extra: Any) -> None:
    print(f"  signal committed  {sender.__name__} {record_id}: {event}()")


def on_invalid(sender: type, *, event: str, reason: str, **extra: Any) -> None:
    print(f"  signal invalid    {sender.__name__}: {event}() refused ({reason})")


def on_failed(sender: type, *, event: str, error: BaseException, **extra: Any) -> None:
    print(f"  signal failed     {sender.__name__}: {event}() raised {error!r}")


def _name(state: Any) -> str:
    return str(getattr(state, "value", state))


def show(label: str, *records: Any) -> None:
    print(label)
    for record in records:
        state = _name(getattr(record, "status"))  # noqa: B009 - every demo model has one
        print(f"  {type(record).__name__} {record.id} is {state}; allowed now: "
              f"{', '.join(available_transitions(record)) or 'nothing'}")


def main(path: Path) -> None:
    path.unlink(missing_ok=True)
    engine = enable_savepoints(create_engine(f"sqlite:///{path}"))
    Base.metadata.create_all(engine)
    receivers = ((transition_succeeded, on_succeeded), (transition_committed, on_committed),
                 (transition_invalid, on_invalid), (transition_failed, on_failed))
    for signal, receiver in receivers:
        signal.connect(receiver)
    try:
        run(engine)
    finally:
        for signal, receiver in receivers:
            signal.disconnect(receiver)
        engine.dispose()
    print(f"\nThe database is in {path}")


def run(engine: Engine) -> None:
    with Session(engine) as session:
        todo = Todo(title="Port LiteState")
        session.add(todo)
        session.flush()
        follower = Todo(title="Announce it", status="blocked", follows_id=todo.id)
        intent = PaymentIntent(amount=4200)
        subscription = Subscription(status="trialing", balance=30)
        session.add_all([follower, intent, subscription, RateConfigType(code="vat")])
        session.flush()
        old_rate = StatutoryRateConfig(config_type="vat", status="active")
        new_rate = StatutoryRateConfig(config_type="vat")
        session.add_all([old_rate, new_rate])
        session.commit()
        show("Records:", todo, follower, intent, subscription, old_rate, new_rate)

        print("\ntodo.start('ada'), then commit")
        todo.start("ada")
        session.commit()
        print("todo.complete('ada') unblocks its follower (a transition inside a transition)")
        todo.complete("ada")
        session.commit()

        print("\nA refused attempt: todo.start('bob') on a completed todo")
        try:
            todo.start("bob")
        except TransitionError as error:
            print(f"  TransitionError: {error}")

        print("\nA body that raises rolls back its SAVEPOINT: follower.start() with a failing"
              " notification")

        def notify() -> None:
            raise ConnectionError("mail server down")

        try:
            transition_state(follower, event="start", frm="pending", to="doing",
                             timestamp="started_at", body=notify)
        except ConnectionError as error:
            print(f"  {error!r} propagated; follower is still {follower.status}")

        print("\nintent.process(), intent.fail(reason='card declined'), intent.retry(),"
              " then rollback")
        intent.process()
        intent.fail(reason="card declined")
        intent.retry()
        session.rollback()
        print("  (no committed signal: the transaction rolled back)")
        intent.process()
        intent.succeed()
        session.commit()
        print(f"  succeeded_at = {intent.succeeded_at}")

        print("\nsubscription.activate(), mark_paid(amount=30), cancel(reason='fraud')")
        subscription.activate()
        subscription.mark_paid(amount=30)
        print(f"  cancel returned {subscription.cancel(reason='fraud')!r}")
        session.commit()
        print(f"  status={subscription.status}, payment_status={subscription.payment_status},"
              f" cancel_reason={subscription.cancel_reason}")

        print("\nnew_rate.activate() deactivates the other active config, atomically")
        new_rate.activate()
        session.commit()

        show("\nRecords now:", todo, follower, intent, subscription, old_rate, new_rate)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "litestate-demo.db"))
