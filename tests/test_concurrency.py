"""Real concurrent workers on PostgreSQL and MariaDB: threads, each with its own connection
and session, released together by a barrier. No sleeps: where one worker must wait on
another's lock, the test asks the server that it does."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import litestate
from litestate import GuardError, TransitionError
from tests.conftest import backend_id, load, recording, waiting_on_a_lock
from tests.models import Account, RateConfigType, StatutoryRateConfig, Todo, TodoEvent


def run_threads(count: int, work: Callable[[int, threading.Barrier], Any]) -> list[Any]:
    """Run ``work(i, barrier)`` in ``count`` threads; re-raise the first error of any."""
    barrier = threading.Barrier(count, timeout=60)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            results[i] = work(i, barrier)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
        assert not thread.is_alive(), "a worker is stuck"
    if errors:
        raise errors[0]
    return results


@pytest.fixture
def ticking_clock() -> Any:
    """Every timestamp distinct, so a timestamp written twice would show."""
    counter = itertools.count()
    start = datetime(2026, 1, 1)
    lock = threading.Lock()

    def clock() -> datetime:
        with lock:
            return start + timedelta(seconds=next(counter))

    previous = litestate.set_clock(clock)
    yield
    litestate.set_clock(previous)


def test_two_workers_start_one_row_one_wins(server: sa.Engine, ticking_clock: None) -> None:
    with Session(server) as session:
        todo = Todo(title="contended")
        session.add(todo)
        session.commit()
        todo_id = todo.id

    def work(i: int, barrier: threading.Barrier) -> str:
        with Session(server) as session:
            mine = load(session, Todo, todo_id)
            assert mine.status == "pending"  # both read pending, in open transactions
            barrier.wait()
            try:
                mine.start(f"worker-{i}")
                session.commit()
            except TransitionError as exc:
                session.rollback()
                return exc.reason
            return "ok"

    with recording() as signals:
        outcomes = run_threads(2, work)
    assert sorted(outcomes) == ["conflict", "ok"]
    assert len(signals.of("transition-committed")) == 1
    winner = signals.of("transition-committed")[0].payload["args"][0]
    with Session(server) as session:
        row = load(session, Todo, todo_id)
        assert (row.status, row.started_by) == ("doing", winner)
        assert session.scalar(sa.select(sa.func.count()).select_from(TodoEvent)) == 1
        stamps = [h.payload for h in signals.of("transition-succeeded")]
        assert len(stamps) == 1  # the loser's body never ran
        assert row.started_at is not None


def test_eight_workers_on_two_hundred_rows_no_lost_update(server: sa.Engine) -> None:
    rows, workers = 200, 8
    with Session(server) as session:
        session.add_all(Todo(title=f"row {n}") for n in range(rows))
        session.commit()
        ids = list(session.scalars(sa.select(Todo.id)))

    def work(i: int, barrier: threading.Barrier) -> Counter[str]:
        order = ids[:]
        random.Random(i).shuffle(order)
        tally: Counter[str] = Counter()
        with Session(server) as session:
            barrier.wait()
            for todo_id in order:
                try:
                    load(session, Todo, todo_id).start(f"worker-{i}")
                    session.commit()
                    tally["ok"] += 1
                except TransitionError as exc:
                    session.rollback()
                    tally[exc.reason] += 1
        return tally

    started = time.perf_counter()
    with recording() as signals:
        tallies = run_threads(workers, work)
    elapsed = time.perf_counter() - started
    total: Counter[str] = sum(tallies, Counter())
    assert total["ok"] == rows
    assert total["invalid"] + total["conflict"] == rows * (workers - 1)
    assert len(signals.of("transition-committed")) == rows
    assert len(signals.of("transition-succeeded")) == rows
    with Session(server) as session:
        assert set(session.scalars(sa.select(Todo.status))) == {"doing"}
        events = session.execute(sa.select(TodoEvent.todo_id, sa.func.count())
                                 .group_by(TodoEvent.todo_id)).all()
        assert len(events) == rows
        assert {n for _, n in events} == {1}
        starters = session.execute(sa.select(Todo.started_by)).scalars().all()
        assert len(starters) == rows
        assert None not in starters
    print(f"\n1600 attempts by 8 workers: {elapsed:.2f}s, {dict(total)}")


@pytest.mark.parametrize(("event", "outcome"), [("close", "closed"), ("freeze", "guard")])
def test_a_locked_guard_sees_the_value_a_concurrent_transaction_commits(
        server: sa.Engine, event: str, outcome: str) -> None:
    """close (lock=True) waits for the writer and sees balance 0; freeze (no lock) reads
    the stale 10 and refuses: AASM's reason for requires_lock."""
    with Session(server) as session:
        account = Account(balance=10)
        session.add(account)
        session.commit()
        account_id = account.id
    pids: dict[str, int] = {}

    def work(i: int, barrier: threading.Barrier) -> str:
        with Session(server) as session:
            pids[str(i)] = backend_id(session)
            account = load(session, Account, account_id)
            if i == 0:  # the writer: empties the account, holds its row lock
                account.balance = 0
                session.flush()
                barrier.wait()
                if event == "close":
                    waiting_on_a_lock(server, pids["1"])
                else:
                    barrier.wait()  # the reader has finished
                session.commit()
                return "wrote"
            assert account.balance == 10  # read before the writer's change
            barrier.wait()
            try:
                getattr(account, event)()
            except GuardError:
                return "guard"
            finally:
                if event != "close":
                    barrier.wait()
            session.commit()
            return account.status

    assert run_threads(2, work) == ["wrote", outcome]


def _deadlocked(error: sa.exc.OperationalError) -> bool:
    """The server chose this transaction as a deadlock's victim (and rolled it back)."""
    orig: Any = error.orig
    return getattr(orig, "sqlstate", None) == "40P01" or (  # psycopg
        bool(getattr(orig, "args", ())) and orig.args[0] == 1213)  # PyMySQL


def test_concurrent_activations_of_one_type_leave_exactly_one_active(server: sa.Engine) -> None:
    """On InnoDB the body's UPDATE of the siblings locks every row of the type it scans,
    each activating worker's own row included, which that worker locked by its write:
    deadlocks, whose victims retry in a new transaction. PostgreSQL's UPDATE skips rows
    whose committed state does not match: none."""
    workers = 8
    with Session(server) as session:
        session.add(RateConfigType(code="vat"))
        session.flush()
        active = StatutoryRateConfig(config_type="vat", status="active")
        configs = [StatutoryRateConfig(config_type="vat") for _ in range(workers)]
        session.add_all([active, *configs])
        session.commit()
        ids = [c.id for c in configs]

    def work(i: int, barrier: threading.Barrier) -> int:
        deadlocks = 0
        while True:
            with Session(server) as session:
                config = load(session, StatutoryRateConfig, ids[i])
                if not deadlocks:
                    barrier.wait()
                try:
                    config.activate()
                    session.commit()
                    return deadlocks
                except sa.exc.OperationalError as exc:
                    if not _deadlocked(exc) or deadlocks == 50:
                        raise
                    session.rollback()
                    deadlocks += 1

    deadlocks = run_threads(workers, work)
    if server.dialect.name == "postgresql":
        assert deadlocks == [0] * workers
    with Session(server) as session:
        statuses = Counter(session.scalars(sa.select(StatutoryRateConfig.status)))
    assert statuses == {"active": 1, "inactive": workers}
    print(f"\n{workers} activations on {server.dialect.name}: {sum(deadlocks)} deadlocks retried")


def test_committed_signals_under_concurrent_commits_and_rollbacks(server: sa.Engine) -> None:
    with Session(server) as session:
        session.add_all(Todo(title=f"t{n}") for n in range(6))
        session.commit()
        ids = list(session.scalars(sa.select(Todo.id).order_by(Todo.id)))

    def work(i: int, barrier: threading.Barrier) -> None:
        with Session(server) as session:
            barrier.wait()
            todo = load(session, Todo, ids[i])
            with session.begin_nested():  # released: no signal yet
                todo.start(f"w{i}")
            assert not [h for h in signals.of("transition-committed")
                        if h.payload["record"] is todo]
            if i % 2:
                session.commit()
            else:
                session.rollback()

    with recording() as signals:
        run_threads(6, work)
    committed = sorted(h.payload["args"][0] for h in signals.of("transition-committed"))
    assert committed == ["w1", "w3", "w5"]
    with Session(server) as session:
        started = session.scalars(sa.select(Todo.started_by).where(Todo.status == "doing"))
        assert sorted(name or "" for name in started) == committed
