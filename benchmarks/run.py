"""litestate against hand-written SQLAlchemy and its peers, side by side, in one process.

    python -m benchmarks.run [--quick] [--no-postgres]

Every table is measured with interleaved rounds (each round runs every case once, in a
shuffled order) and reports medians, with ratios to a baseline measured in the same run:
the machines are noisy, ratios within one run are not.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

import litestate
from benchmarks.models import (
    Base,
    HandLoggedTodo,
    HandTodo,
    LiteTodo,
    LoggedTodo,
    PlainTodo,
    ProbeTodo,
    Refused,
)
from benchmarks.peers import peer_classes, statemachine_machine, transitions_machine
from litestate import TransitionError, available_transitions, can_transition
from litestate.sqlite import enable_savepoints

Case = Callable[[], object]
QUICK = False


def compare(title: str, cases: dict[str, Case], baseline: str, *, number: int, rounds: int,
            per_call: int = 2, extra: dict[str, str] | None = None,
            target: dict[str, str] | None = None) -> dict[str, float]:
    """Print a table: median ns per transition of each case and its ratio to ``baseline``."""
    if QUICK:
        number, rounds = max(1, number // 10), 3
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():  # warm up caches, compiled statements, lazy imports
        for _ in range(max(1, number // 10)):
            fn()
    for _ in range(rounds):
        order = list(cases)
        random.shuffle(order)
        for name in order:
            fn = cases[name]
            start = time.perf_counter_ns()
            for _ in range(number):
                fn()
            samples[name].append((time.perf_counter_ns() - start) / number / per_call)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    base = medians[baseline]
    extra_head = " | SQL per transition" if extra else ""
    target_head = " | target" if target else ""
    print(f"\n### {title}\n\n| case | median | x {baseline}{extra_head}{target_head} |")
    print("|---|---:|---:" + ("|---:" if extra else "") + ("|---" if target else "") + "|")
    for name, value in medians.items():
        row = f"| {name} | {_fmt(value)} | {value / base:.2f}"
        if extra:
            row += f" | {extra.get(name, '')}"
        if target:
            row += f" | {target.get(name, '')}"
        print(row + " |")
    return medians


def _fmt(ns: float) -> str:
    return f"{ns:,.0f} ns" if ns < 10_000 else f"{ns / 1000:,.1f} µs"


# -- 1 and 2: in memory, and the probes -------------------------------------------------


def toggle(start: Callable[[], object], stop: Callable[[], object]) -> Case:
    def case() -> None:
        start()
        stop()
    return case


def by_name(obj: Any) -> Case:
    """sqlalchemy-state-machine fires transitions by name."""
    return toggle(lambda: obj.transition("start"), lambda: obj.transition("stop"))


def in_memory() -> None:
    plain, lite = PlainTodo(), LiteTodo(status="pending", allowed=True, counter=0)
    peers = peer_classes()
    cases: dict[str, Case] = {
        "hand-written, plain object": toggle(plain.h_start, plain.h_stop),
        "litestate, plain object": toggle(plain.start, plain.stop),
        "hand-written, mapped": toggle(lite.h_start, lite.h_stop),
        "litestate, mapped": toggle(lite.start, lite.stop),
    }
    guarded: dict[str, Case] = {
        "hand-written, mapped": toggle(lite.h_gstart, lite.h_gstop),
        "litestate, mapped": toggle(lite.gstart, lite.gstop),
    }
    bound = peers["bound"]
    for flavour, table in ((False, cases), (True, guarded)):
        obj = bound(status="pending", allowed=True, counter=0)
        transitions_machine(obj, flavour)
        table["transitions"] = toggle(obj.start, obj.stop)
        sm = statemachine_machine(bound(status="pending", allowed=True, counter=0), flavour)
        table["python-statemachine"] = toggle(sm.start, sm.stop)
        if "sqlalchemy-fsm" in peers:
            fsm = peers["sqlalchemy-fsm"](status="pending", allowed=True, counter=0)
            table["sqlalchemy-fsm"] = (toggle(fsm.gstart.set, fsm.gstop.set) if flavour
                                       else toggle(fsm.start.set, fsm.stop.set))
        if "sqlalchemy-state-machine" in peers and not flavour:
            ssm = peers["sqlalchemy-state-machine"](status="pending", allowed=True, counter=0)
            table["sqlalchemy-state-machine"] = by_name(ssm)
    compare("1. One transition in memory (start + stop, per transition)", cases,
            "hand-written, mapped", number=20_000, rounds=15,
            target={"litestate, mapped": "≤ 1.30"})
    compare("1b. Guarded (a guard reading a column), in memory", guarded,
            "hand-written, mapped", number=20_000, rounds=15,
            target={"litestate, mapped": "≤ 1.30"})

    obj = bound(status="pending", allowed=True, counter=0)
    transitions_machine(obj, False)
    sm = statemachine_machine(bound(status="pending", allowed=True, counter=0), False)
    probe = ProbeTodo(status="pending", allowed=True, counter=0)
    probes: dict[str, Case] = {
        "hand-written: obj.status == 'pending'": lambda: probe.status == "pending",
        "litestate can_transition": lambda: can_transition(probe, "start"),
        "litestate available_transitions": lambda: available_transitions(probe),
        "transitions may_start()": obj.may_start,
        "python-statemachine allowed_events": lambda: sm.start in sm.allowed_events,
    }
    if "sqlalchemy-fsm" in peers:
        fsm = peers["sqlalchemy-fsm"](status="pending", allowed=True, counter=0)
        probes["sqlalchemy-fsm can_proceed()"] = fsm.start.can_proceed
    if "sqlalchemy-state-machine" in peers:
        ssm = peers["sqlalchemy-state-machine"](status="pending", allowed=True, counter=0)
        probes["sqlalchemy-state-machine can_transition"] = lambda: ssm.can_transition("start")
        probes["sqlalchemy-state-machine available_transitions"] = ssm.available_transitions
    compare("2. Probes (per call, mapped instance)", probes,
            "hand-written: obj.status == 'pending'", number=50_000, rounds=15, per_call=1,
            target={"litestate can_transition": "≤ 2.00"})


# -- 4: signals ---------------------------------------------------------------------------


def signals() -> None:
    """Receivers are connected for a whole table: every case in it pays for them."""
    lite = LiteTodo(status="pending", allowed=True, counter=0)
    receivers = [(lambda sender, **extra: None) for _ in range(10)]
    ratios: dict[int, float] = {}
    for n in (0, 1, 10):
        with contextlib.ExitStack() as stack:
            for receiver in receivers[:n]:
                stack.enter_context(litestate.transition_succeeded.connected_to(
                    receiver, LiteTodo))
            medians = compare(f"4. Signals: {n} receiver(s) of transition_succeeded (mapped, "
                              "in memory)", {
                                  "hand-written, mapped": toggle(lite.h_start, lite.h_stop),
                                  "litestate, mapped": toggle(lite.start, lite.stop)},
                              "hand-written, mapped", number=20_000, rounds=15)
        ratios[n] = medians["litestate, mapped"] / medians["hand-written, mapped"]
        if n == 0:
            unheard = medians["litestate, mapped"]
    check: Case = lambda: litestate.transition_succeeded.receivers  # noqa: E731
    nothing: Case = lambda: None  # noqa: E731
    checks = compare("4b. The price of an unheard signal: one `receivers` check", {
        "empty call": nothing, "call + receivers check": check}, "empty call",
        number=200_000, rounds=15, per_call=1)
    cost = checks["call + receivers check"] - checks["empty call"]
    print(f"\nA transition with 0, 1, 10 receivers: {ratios[0]:.2f}x, {ratios[1]:.2f}x, "
          f"{ratios[10]:.2f}x hand-written. One unheard signal costs {cost:.0f} ns, "
          f"{100 * cost / unheard:.1f} % of an in-memory transition (target ≤ 5 %; "
          "send() is never called without a receiver).")


# -- 3: with a database -------------------------------------------------------------------


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


def database(engine: sa.Engine, label: str) -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    peers = peer_classes()
    session = Session(engine)
    lite, hand = LiteTodo(), HandTodo()
    naive = HandTodo()
    session.add_all([lite, hand, naive])
    others: dict[str, Any] = {}
    if "sqlalchemy-fsm" in peers:
        others["sqlalchemy-fsm"] = peers["sqlalchemy-fsm"](status="pending")
    if "sqlalchemy-state-machine" in peers:
        others["sqlalchemy-state-machine"] = peers["sqlalchemy-state-machine"](status="pending")
    tr_obj = peers["bound"](status="pending", allowed=True, counter=0)
    session.add_all([*others.values(), tr_obj])
    session.commit()
    transitions_machine(tr_obj, False)

    def naive_body(frm: str, to: str) -> Callable[[], None]:
        def step() -> None:
            if naive.status != frm:
                raise Refused
            naive.status = to
            naive.counter += 1
            session.flush()
        return step

    def each_then(finish: Callable[[], None]) -> Callable[..., Case]:
        """Cases that run each step, then ``finish`` (a flush or a commit)."""
        def make(*steps: Callable[[], object]) -> Case:
            def case() -> None:
                for step in steps:
                    step()
                    finish()
            return case
        return make

    flushed, committed = each_then(session.flush), each_then(session.commit)

    empty = {
        "hand-written, same guarantees": (lambda: hand.safe_start(session),
                                          lambda: hand.safe_stop(session)),
        "litestate": (lite.start, lite.stop),
        "hand-written, naive": (naive.h_start, naive.h_stop),
        "transitions (naive write)": (tr_obj.start, tr_obj.stop),
    }
    if "sqlalchemy-fsm" in others:
        fsm = others["sqlalchemy-fsm"]
        empty["sqlalchemy-fsm (naive write)"] = (fsm.start.set, fsm.stop.set)
    if "sqlalchemy-state-machine" in others:
        ssm = others["sqlalchemy-state-machine"]
        empty["sqlalchemy-state-machine (naive write)"] = (lambda: ssm.transition("start"),
                                                           lambda: ssm.transition("stop"))
    body = {
        "hand-written, same guarantees": (lambda: hand.safe_bstart(session),
                                          lambda: hand.safe_bstop(session)),
        "litestate": (lite.bstart, lite.bstop),
        "hand-written, naive": (naive_body("pending", "doing"), naive_body("doing", "pending")),
    }
    for title, table in (("empty body", empty), ("a body that changes a column", body)):
        for mode, wrap in (("+ flush", flushed), ("+ commit", committed)):
            cases = {name: wrap(*steps) for name, steps in table.items()}
            sql: dict[str, str] = {}
            for name, case in cases.items():
                case()
                with counting(engine) as statements:
                    case()
                per = statements
                sql[name] = f"{len(per) / 2:g} ({', '.join(sorted(set(per)))})"
            compare(f"3. {label}: transition {mode}, {title}", cases,
                    "hand-written, same guarantees", number=60, rounds=9, extra=sql,
                    target={"litestate": "≤ 1.05"})
    savepoint_cost(session, hand, label)
    logged(session, engine, label)
    session.close()


def logged(session: Session, engine: sa.Engine, label: str) -> None:
    """A transition and its log row (``@state_column(..., log=...)``) against the same
    statements by hand: SAVEPOINT, conditional UPDATE, INSERT, RELEASE."""
    lite, hand = LoggedTodo(), HandLoggedTodo()
    session.add_all([lite, hand])
    session.commit()
    steps: dict[str, tuple[Case, Case]] = {
        "hand-written, same guarantees": (lambda: hand.log_start(session),
                                          lambda: hand.log_stop(session)),
        "litestate, log=": (lite.start, lite.stop),
    }
    for mode, finish in (("+ flush", session.flush), ("+ commit", session.commit)):
        def make(start: Case, stop: Case, finish: Callable[[], None] = finish) -> Case:
            def toggled() -> None:
                start()
                finish()
                stop()
                finish()
            return toggled
        cases = {name: make(*pair) for name, pair in steps.items()}
        sql: dict[str, str] = {}
        for name, case in cases.items():
            case()
            with counting(engine) as statements:
                case()
            sql[name] = f"{len(statements) / 2:g} ({', '.join(sorted(set(statements)))})"
        compare(f"3d. {label}: transition + log row {mode}", cases,
                "hand-written, same guarantees", number=60, rounds=9, extra=sql,
                target={"litestate, log=": "≤ 1.05"})


def savepoint_cost(session: Session, hand: Any, label: str) -> None:
    """What a SAVEPOINT around every empty-body UPDATE would cost: the other way to keep
    the caller's work when the database refuses the write (litestate makes the session
    refuse to commit instead, as a failed flush does)."""
    def nested(step: Callable[[Session], None]) -> Callable[[], None]:
        def run() -> None:
            with session.begin_nested():
                step(session)
        return run

    cases = {
        "one UPDATE (litestate's choice)": (lambda: hand.safe_start(session),
                                            lambda: hand.safe_stop(session)),
        "SAVEPOINT, UPDATE, RELEASE": (nested(hand.safe_start), nested(hand.safe_stop)),
    }
    for mode, finish in (("+ flush", session.flush), ("+ commit", session.commit)):
        def make(start: Case, stop: Case, finish: Callable[[], None] = finish) -> Case:
            def case() -> None:
                start()
                finish()
                stop()
                finish()
            return case
        compare(f"3c. {label}: the price of a SAVEPOINT around an empty body, {mode}",
                {name: make(*steps) for name, steps in cases.items()},
                "one UPDATE (litestate's choice)", number=60, rounds=9)


# -- 5: scale on PostgreSQL -----------------------------------------------------------------


def scale(engine: sa.Engine) -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    per_thread = 30 if QUICK else 150
    print("\n### 5. PostgreSQL: transitions per second (each one committed) by worker threads\n")
    print("| workers | rows | litestate /s | litestate refused | naive /s | naive 'successes' |")
    print("|---:|---|---:|---:|---:|---:|")
    for workers in (1, 2, 4, 8):
        for contended in (False, True):
            with Session(engine) as session:
                session.execute(sa.delete(LiteTodo))
                session.execute(sa.delete(HandTodo))
                count = 4 if contended else workers * 20
                session.add_all(LiteTodo() for _ in range(count))
                session.add_all(HandTodo() for _ in range(count))
                session.commit()
                lite_ids = list(session.scalars(sa.select(LiteTodo.id)))
                hand_ids = list(session.scalars(sa.select(HandTodo.id)))
            lite_rate, lite_refused, _ = _workers(engine, workers, per_thread, contended,
                                                  LiteTodo, lite_ids)
            naive_rate, _, naive_ok = _workers(engine, workers, per_thread, contended,
                                               HandTodo, hand_ids)
            print(f"| {workers} | {'4 shared' if contended else 'distinct'} | "
                  f"{lite_rate:,.0f} | {lite_refused} | {naive_rate:,.0f} | {naive_ok} |")


def _workers(engine: sa.Engine, workers: int, per_thread: int, contended: bool,
             cls: Any, ids: list[int]) -> tuple[float, int, int]:
    barrier = threading.Barrier(workers)
    refused = [0] * workers
    done = [0] * workers

    def work(i: int) -> None:
        mine = ids if contended else ids[i::workers]
        rng = random.Random(i)
        with Session(engine) as session:
            barrier.wait()
            for _ in range(per_thread):
                obj: Any = session.get(cls, rng.choice(mine))
                try:
                    if cls is LiteTodo:
                        obj.start() if obj.status == "pending" else obj.stop()
                    else:
                        obj.h_start() if obj.status == "pending" else obj.h_stop()
                    session.commit()
                    done[i] += 1
                except (TransitionError, Refused):
                    session.rollback()
                    refused[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    return sum(done) / elapsed, sum(refused), sum(done)


def main(argv: list[str] | None = None) -> None:
    global QUICK
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: check it runs")
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL parts")
    args = parser.parse_args(argv)
    QUICK = args.quick
    random.seed(1)
    print(f"# litestate benchmarks\n\nPython {sys.version.split()[0]}, SQLAlchemy "
          f"{sa.__version__}, litestate {litestate.__version__}. Medians of interleaved "
          "rounds; ratios are to the baseline measured in the same run.")
    in_memory()
    signals()
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        engine = enable_savepoints(sa.create_engine(f"sqlite:///{tmp}/bench.db"))
        database(engine, "SQLite file")
        engine.dispose()
    if args.no_postgres:
        return
    from tests.pgserver import postgres_server
    with postgres_server() as url:
        engine = sa.create_engine(url, pool_size=10)
        database(engine, "PostgreSQL")
        scale(engine)
        engine.dispose()


if __name__ == "__main__":
    main()
