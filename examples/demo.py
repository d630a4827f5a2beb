"""litestate demo: the Ruby article's models on an embedded SQLite file.

Run from the repository root: ``python -m examples.demo [path.db]`` (default
``litestate-demo.db``). It prints each transition, the signals received, a refused attempt
with its error, and each record's allowed actions.

The demo writes only databases of its own: each is marked with SQLite's
``PRAGMA application_id``, and an existing path is replaced only if it carries that mark.
Any other existing path (a text file, another application's database, a directory, a
symlink) is refused with exit status 2, and left untouched.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from examples.models import (
    UPSTREAM,
    Base,
    FetchJob,
    PaymentIntent,
    RateConfigType,
    StatutoryRateConfig,
    Subscription,
    Todo,
    UpstreamDown,
)
from litestate import (
    TransitionError,
    available_transitions,
    history,
    transition_committed,
    transition_failed,
    transition_invalid,
    transition_state,
    transition_succeeded,
)
from litestate.sqlite import enable_savepoints

#: The mark of a database this demo made, in its SQLite header ("LSdm").
APPLICATION_ID = 0x4C53646D
DEFAULT_PATH = Path("litestate-demo.db")


# Receivers live at module level: blinker holds them by weak reference.
def on_succeeded(sender: type, *, event: str, record_id: Any, from_state: Any, to_state: Any,
                 **extra: Any) -> None:
    print(f"  signal succeeded  {sender.__name__} {record_id}: {event}() "
          f"{_name(from_state)} -> {_name(to_state)}")


def on_committed(sender: type, *, event: str, record_id: Any, **extra: Any) -> None:
    print(f"  signal committed  {sender.__name__} {record_id}: {event}()")


def on_invalid(sender: type, *, event: str, reason: str, **extra: Any) -> None:
    print(f"  signal invalid    {sender.__name__}: {event}() refused ({reason})")


def on_failed(sender: type, *, event: str, error: BaseException, error_state: Any = None,
              **extra: Any) -> None:
    into = f", into {_name(error_state)}" if error_state is not None else ""
    print(f"  signal failed     {sender.__name__}: {event}() raised {error!r}{into}")


def _name(state: Any) -> str:
    return str(getattr(state, "value", state))


def show(label: str, *records: Any) -> None:
    print(label)
    for record in records:
        state = _name(getattr(record, "status"))  # noqa: B009 - every demo model has one
        print(f"  {type(record).__name__} {record.id} is {state}; allowed now: "
              f"{', '.join(available_transitions(record)) or 'nothing'}")


class NotTheDemosError(FileExistsError):
    """Raised for an existing path the demo did not make: it is never replaced."""


def made_by_demo(path: Path) -> bool:
    """Whether ``path`` is a regular file holding a SQLite database this demo made."""
    if path.is_symlink() or not path.is_file():
        return False
    with path.open("rb") as file:
        header = file.read(100)
    # The header's first 16 bytes name the format; bytes 68-71 are the application id.
    return (header[:16] == b"SQLite format 3\x00"
            and int.from_bytes(header[68:72], "big") == APPLICATION_ID)


def demo(path: Path) -> None:
    """Run the demo on a new database at ``path``, replacing only one it made before."""
    if os.path.lexists(path):
        if not made_by_demo(path):
            raise NotTheDemosError(
                f"{path} exists and is not a database this demo made; it was left untouched. "
                "Pass a path that does not exist yet.")
        path.unlink()
    engine = enable_savepoints(create_engine(f"sqlite:///{path}"))
    with engine.begin() as conn:  # the mark first, so even a failed run leaves a file we own
        conn.exec_driver_sql(f"PRAGMA application_id = {APPLICATION_ID}")
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


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (2 for a path the demo will not replace)."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.demo",
        description="litestate's demo: the Ruby article's models on a new SQLite file.")
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH,
                        help=f"a new file, or one this demo made (default: {DEFAULT_PATH})")
    path: Path = parser.parse_args(argv).path
    try:
        demo(path)
    except NotTheDemosError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


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
    jobs(engine)


def work(engine: Engine, job_id: int) -> None:
    """A queue worker's two steps, each in its own transaction."""
    with Session(engine) as session, session.begin():
        job = session.get(FetchJob, job_id)
        assert job is not None
        job.start()
    with Session(engine) as session, session.begin():
        job = session.get(FetchJob, job_id)
        assert job is not None
        job.fetch()  # a raise leaves this `with`, which rolls back: the error state stays


def jobs(engine: Engine) -> None:
    """An error state survives the worker's rollback, a retry leaves it, history shows it."""
    with Session(engine) as session, session.begin():
        session.add(FetchJob(id=1, url="https://upstream.example/report"))
    print("\nA job whose fetch fails: the exception rolls the worker's transaction back")
    UPSTREAM["up"] = False
    try:
        work(engine, 1)
    except UpstreamDown as error:
        print(f"  {error!r} propagated")
    with Session(engine) as session:
        job = session.get(FetchJob, 1)
        assert job is not None
        print(f"  job 1 is {job.status}, attempts={job.attempts}, last_error={job.last_error!r}")
    print("The upstream is back: the retry starts from fetch_failed")
    UPSTREAM["up"] = True
    work(engine, 1)
    with Session(engine) as session:
        job = session.get(FetchJob, 1)
        assert job is not None
        print(f"  job 1 is {job.status} ({job.response}); its history:")
        for row in history(job):
            failure = row.data.get("error")
            print(f"    {row.event}(): {row.from_state} -> {row.to_state}"
                  + (f"  [{failure['type']}: {failure['message']}]" if failure else ""))


if __name__ == "__main__":
    sys.exit(main())
