"""litestate.bulk against the statements you would write by hand, in one process.

    python -m benchmarks.bulk [--quick] [--no-postgres]

6. ``transition_many`` on 10,000 rows against the one-statement ``UPDATE ... RETURNING id``
   with the same effect (state, timestamp, ``changed_at``), and against a loop of single
   transitions on the same rows; then the same with a log row per row moved, against the
   UPDATE and its ``INSERT ... SELECT`` by hand. SQLite file and PostgreSQL.
7. ``claim`` throughput on PostgreSQL with 1, 2, 4 and 8 worker threads, against the ORM
   ``UPDATE ... WHERE id IN (SELECT id ... LIMIT n FOR UPDATE SKIP LOCKED) RETURNING``
   that loads the objects, and against a naive SELECT-then-UPDATE (double claims counted).

Medians of interleaved rounds; ratios are to the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import litestate
from litestate import Lease, TransitionLog, claim, state_column, transition, transition_many
from litestate.sqlite import enable_savepoints

QUICK = False
ROWS = 10_000


class Base(DeclarativeBase):
    pass


@state_column("state", changed_at="state_changed_at")
class Task(Base):
    """10,000 rows moved at once: no log."""

    __tablename__ = "bench_tasks"
    id: Mapped[int] = mapped_column(primary_key=True)
    state: Mapped[str] = mapped_column(sa.String(20), default="queued", index=True)
    started_at: Mapped[datetime | None]
    state_changed_at: Mapped[datetime | None]

    @transition(frm="queued", to="running", timestamp="started_at")
    def start(self) -> None:
        pass


class TaskLog(TransitionLog, Base):
    __tablename__ = "bench_task_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(sa.ForeignKey("bench_logged_tasks.id"))


@state_column("state", log=TaskLog, changed_at="state_changed_at")
class LoggedTask(Base):
    """The same, with a log row per row moved."""

    __tablename__ = "bench_logged_tasks"
    id: Mapped[int] = mapped_column(primary_key=True)
    state: Mapped[str] = mapped_column(sa.String(20), default="queued", index=True)
    started_at: Mapped[datetime | None]
    state_changed_at: Mapped[datetime | None]

    @transition(frm="queued", to="running", timestamp="started_at")
    def start(self) -> None:
        pass


@state_column("state", changed_at="state_changed_at")
class QueuedJob(Lease, Base):
    """A queue table for the claim throughput."""

    __tablename__ = "bench_jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    state: Mapped[str] = mapped_column(sa.String(20), default="queued")
    started_at: Mapped[datetime | None]
    state_changed_at: Mapped[datetime | None]

    @transition(frm="queued", to="running", timestamp="started_at")
    def start(self) -> None:
        pass


@contextlib.contextmanager
def counting(engine: sa.Engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.split()[0].upper())

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)


def _fmt(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 10 else f"{seconds:,.1f} s"


# -- 6: transition_many ------------------------------------------------------------------


def batches(engine: sa.Engine, label: str) -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    rows = 1_000 if QUICK else ROWS
    rounds = 3 if QUICK else 9
    for cls in (Task, LoggedTask):
        with Session(engine) as session:
            session.execute(sa.insert(cls), [{"state": "queued"} for _ in range(rows)])
            session.commit()

    def reset(session: Session, cls: Any) -> None:
        session.execute(sa.update(cls).values(state="queued", started_at=None,
                                              state_changed_at=None))
        if cls is LoggedTask:
            session.execute(sa.delete(TaskLog))
        session.commit()
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql(f"VACUUM {cls.__tablename__}")
                conn.exec_driver_sql("VACUUM bench_task_log")

    def by_hand(session: Session) -> int:
        now = datetime.now(UTC)
        t: Any = Task.__table__
        done = session.connection().execute(sa.update(t).where(t.c.state == "queued").values(
            state="running", started_at=now.replace(tzinfo=None),
            state_changed_at=now.replace(tzinfo=None)).returning(t.c.id)).all()
        return len(done)

    def by_hand_logged(session: Session) -> int:
        now = datetime.now(UTC)
        naive = now.replace(tzinfo=None)
        t: Any = LoggedTask.__table__
        log: Any = TaskLog.__table__
        update = sa.update(t).where(t.c.state == "queued").values(
            state="running", started_at=naive, state_changed_at=naive).returning(t.c.id)
        if engine.dialect.name == "postgresql":  # one statement, as litestate sends
            moved = update.cte("moved")
            rows = sa.select(moved.c.id, sa.literal("start"), sa.literal("state"),
                             sa.literal("queued"), sa.literal("running"), sa.literal(now),
                             sa.literal({}, sa.JSON))
            insert = sa.insert(log).from_select(
                ["task_id", "event", "column", "from_state", "to_state", "at", "data"],
                rows.select_from(moved)).cte("logged")
            return len(session.connection().execute(
                sa.select(moved.c.id).add_cte(insert)).all())
        with session.begin_nested():  # SQLite: UPDATE, then the INSERT of its keys
            conn = session.connection()
            ids = conn.execute(update).scalars().all()
            conn.execute(sa.insert(log), [
                {"task_id": i, "event": "start", "column": "state", "from_state": "queued",
                 "to_state": "running", "at": now, "data": {}} for i in ids])
        return len(ids)

    def loop(cls: Any) -> Callable[[Session], int]:
        def run(session: Session) -> int:
            objs = session.scalars(sa.select(cls).where(cls.state == "queued")).all()
            for obj in objs:
                obj.start()
            return len(objs)
        return run

    def many(cls: Any) -> Callable[[Session], int]:
        def run(session: Session) -> int:
            return len(transition_many(session, cls.start))
        return run

    tables: list[tuple[str, Any, dict[str, Callable[[Session], int]]]] = [
        (f"6. {label}: {rows:,} rows moved at once, + commit", Task, {
            "hand-written UPDATE ... RETURNING id": by_hand,
            "litestate.transition_many": many(Task),
            "a loop of single transitions": loop(Task),
        }),
        (f"6b. {label}: {rows:,} rows and their log rows, + commit", LoggedTask, {
            "hand-written UPDATE and INSERT of the log rows": by_hand_logged,
            "litestate.transition_many": many(LoggedTask),
            "a loop of single transitions": loop(LoggedTask),
        }),
    ]
    for title, cls, cases in tables:
        samples: dict[str, list[float]] = {name: [] for name in cases}
        sql: dict[str, str] = {}
        for rnd in range(rounds + 1):  # the first round warms up and counts statements
            order = list(cases)
            random.shuffle(order)
            for name in order:
                with Session(engine) as session:
                    reset(session, cls)
                    session.connection()  # BEGIN, untimed
                    with counting(engine) as statements:
                        start = time.perf_counter()
                        moved = cases[name](session)
                        session.commit()
                        elapsed = time.perf_counter() - start
                assert moved == rows, (name, moved)
                if rnd == 0:
                    verbs = [v for v in statements if v != "BEGIN"]
                    sql[name] = (f"{len(verbs):,} ({', '.join(sorted(set(verbs)))})"
                                 if len(verbs) < 10 else f"{len(verbs):,}")
                else:
                    samples[name].append(elapsed)
        medians = {name: statistics.median(values) for name, values in samples.items()}
        base_name = next(iter(cases))
        base = medians[base_name]
        lite = medians["litestate.transition_many"]
        print(f"\n### {title}\n\n| case | median | x {base_name} | SQL per batch | target |")
        print("|---|---:|---:|---|---|")
        for name, value in medians.items():
            target = "≤ 1.20" if name == "litestate.transition_many" else ""
            print(f"| {name} | {_fmt(value)} | {value / base:.2f} | {sql[name]} | {target} |")
        loop_time = medians["a loop of single transitions"]
        print(f"\ntransition_many is {loop_time / lite:,.1f}x faster than the loop"
              + (" (target ≥ 20x on SQLite)." if "SQLite" in label else "."))


# -- 7: claim throughput -------------------------------------------------------------------


def claims(engine: sa.Engine) -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    jobs = 300 if QUICK else 2_000
    rounds = 1 if QUICK else 3
    limit = 1
    t: Any = QueuedJob.__table__

    def by_hand(session: Session) -> list[int]:
        now = datetime.now(UTC).replace(tzinfo=None)
        pick = sa.select(QueuedJob.id).where(QueuedJob.state == "queued").order_by(
            QueuedJob.id).limit(limit).with_for_update(skip_locked=True).scalar_subquery()
        stmt = sa.update(QueuedJob).where(QueuedJob.id.in_(pick)).values(
            state="running", started_at=now, state_changed_at=now).returning(QueuedJob)
        return [job.id for job in session.scalars(
            stmt, execution_options={"populate_existing": True})]

    def naive(session: Session) -> list[int]:
        now = datetime.now(UTC).replace(tzinfo=None)
        ids = session.scalars(sa.select(QueuedJob.id).where(
            QueuedJob.state == "queued").order_by(QueuedJob.id).limit(limit)).all()
        if ids:
            session.execute(sa.update(t).where(t.c.id.in_(ids)).values(
                state="running", started_at=now, state_changed_at=now))
        return list(ids)

    def lite(session: Session) -> list[int]:
        return [job.id for job in claim(session, QueuedJob.start, order_by=[QueuedJob.id],
                                        limit=limit)]

    def leased(session: Session) -> list[int]:
        from datetime import timedelta
        return [job.id for job in claim(session, QueuedJob.start, order_by=[QueuedJob.id],
                                        limit=limit, lease=timedelta(minutes=5))]

    cases: dict[str, Callable[[Session], list[int]]] = {
        "hand-written ORM UPDATE ... IN (SELECT ... SKIP LOCKED) RETURNING": by_hand,
        "litestate.claim": lite,
        "litestate.claim, lease=": leased,
        "naive SELECT, then UPDATE": naive,
    }
    print("\n### 7. PostgreSQL: claims per second (limit=1, each claim committed), worker "
          f"threads, {jobs:,} jobs per run\n")
    print("| workers | " + " | ".join(f"{name} /s" for name in cases) +
          " | litestate x hand-written | hand-written: calls that took more than limit | "
          "naive: rows claimed twice or more |")
    print("|---:|" + "---:|" * (len(cases) + 3))
    for workers in (1, 2, 4, 8):
        rates: dict[str, list[float]] = {name: [] for name in cases}
        doubles: list[int] = []
        over: list[int] = []
        for _ in range(rounds):
            order = list(cases)
            random.shuffle(order)
            for name in order:
                with Session(engine) as session:
                    session.execute(sa.delete(QueuedJob))
                    session.execute(sa.insert(QueuedJob), [{"state": "queued"}] * jobs)
                    session.commit()
                rate, counts, greedy = _drain(engine, workers, cases[name], limit)
                assert sum(counts.values()) >= jobs, (name, sum(counts.values()))
                if name != "naive SELECT, then UPDATE":
                    assert set(counts.values()) == {1}, name
                    assert len(counts) == jobs, name
                else:
                    doubles.append(sum(1 for c in counts.values() if c > 1))
                if name.startswith("hand-written"):
                    over.append(greedy)
                else:
                    assert greedy == 0, name
                rates[name].append(rate)
        medians = {name: statistics.median(values) for name, values in rates.items()}
        ratio = medians["litestate.claim"] / medians[next(iter(cases))]
        print(f"| {workers} | " + " | ".join(f"{value:,.0f}" for value in medians.values()) +
              f" | {ratio:.2f} | {statistics.median(over):,.0f} | "
              f"{statistics.median(doubles):,.0f} |")


def _drain(engine: sa.Engine, workers: int, take: Callable[[Session], list[int]],
           limit: int) -> tuple[float, Counter[int], int]:
    """Workers take jobs until none is left: claims per second, each job's claims, and the
    calls that took more than ``limit`` rows."""
    barrier = threading.Barrier(workers)
    taken: list[list[int]] = [[] for _ in range(workers)]
    greedy = [0] * workers

    def work(i: int) -> None:
        with Session(engine) as session:
            barrier.wait()
            while True:
                ids = take(session)
                session.commit()
                if not ids:
                    return
                taken[i] += ids
                greedy[i] += len(ids) > limit

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    counts = Counter(i for ids in taken for i in ids)
    return sum(counts.values()) / elapsed, counts, sum(greedy)


def main(argv: list[str] | None = None) -> None:
    global QUICK
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: check it runs")
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL parts")
    args = parser.parse_args(argv)
    QUICK = args.quick
    random.seed(1)
    print(f"# litestate.bulk benchmarks\n\nPython {sys.version.split()[0]}, SQLAlchemy "
          f"{sa.__version__}, litestate {litestate.__version__}.")
    with tempfile.TemporaryDirectory() as tmp:
        engine = enable_savepoints(sa.create_engine(f"sqlite:///{tmp}/bench.db"))
        batches(engine, "SQLite file")
        engine.dispose()
    if args.no_postgres:
        return
    from tests.pgserver import postgres_server
    with postgres_server() as url:
        engine = sa.create_engine(url, pool_size=10)
        batches(engine, "PostgreSQL")
        claims(engine)
        engine.dispose()


if __name__ == "__main__":
    main()
