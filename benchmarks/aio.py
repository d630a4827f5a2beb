"""litestate.aio against hand-written async SQLAlchemy with the same guarantees.

    python -m benchmarks.aio [--quick] [--no-postgres]

Each case toggles one row (``start``: pending -> doing, ``stop``: back) on an
``AsyncSession``, then awaits ``session.flush()``; times are per transition. Compared:

- litestate: ``await aio.call(obj.start)``;
- hand-written, ``run_sync``: ``await session.run_sync(fn)``, ``fn`` the sync code of
  ``benchmarks/models.py: HandTodo`` (SAVEPOINT around a body, the conditional UPDATE,
  the rowcount check, ``set_committed_value``, RELEASE);
- hand-written, awaited: the same statements, each awaited
  (``async with session.begin_nested(): await session.execute(update(...))``);
- for reference, the tightest hand-written form: the same, with a Core UPDATE built once
  and executed on ``await session.connection()``, as litestate sends its own (an ORM
  ``update(Model)`` is built, cached by key and run through the ORM's bulk-update path
  at every call).

A transition with a body needs the SAVEPOINT; one with an empty body is a single
conditional UPDATE, for litestate and by hand. Tables are measured as ``benchmarks.run``
measures them: interleaved rounds in a shuffled order, medians, ratios to baselines
measured in the same run; SQL is counted with a ``before_cursor_execute`` listener on
the sync engine. Each case has a row of its own, and each sample a transaction of its
own (committed and begun again between samples, untimed): on PostgreSQL an UPDATE walks
past the versions that earlier UPDATEs of its row left in the same transaction, so a
shared row, or one transaction for the whole run, would slow the later cases.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm.attributes import set_committed_value

import litestate
from benchmarks.models import Base, HandTodo, LiteTodo, Refused
from benchmarks.run import _fmt, counting
from litestate import aio
from litestate.sqlite import enable_savepoints

AsyncCase = Callable[[], Awaitable[object]]
LITESTATE = "litestate: await aio.call(obj.start)"
RUN_SYNC = "hand-written: await session.run_sync(fn)"
AWAITED = "hand-written: each statement awaited"
CORE = "hand-written: awaited, a prebuilt Core UPDATE"
TARGET = 1.1
QUICK = False


async def compare(title: str, cases: dict[str, AsyncCase], baselines: tuple[str, ...], *,
                  number: int, rounds: int, per_call: int = 2,
                  extra: dict[str, str] | None = None,
                  between: Callable[[], Awaitable[None]] | None = None) -> dict[str, float]:
    """Print a table: median ns per transition of each case, its ratio to each baseline,
    and ``extra`` (the SQL it sends). ``between`` runs after each sample, untimed."""
    if QUICK:
        number, rounds = max(1, number // 10), 3
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():  # warm up: compiled statements, greenlets, lazy imports
        for _ in range(max(1, number // 10)):
            await fn()
    if between is not None:
        await between()
    for _ in range(rounds):
        order = list(cases)
        random.shuffle(order)
        for name in order:
            fn = cases[name]
            start = time.perf_counter_ns()
            for _ in range(number):
                await fn()
            samples[name].append((time.perf_counter_ns() - start) / number / per_call)
            if between is not None:
                await between()
    medians = {name: statistics.median(values) for name, values in samples.items()}
    heads = "".join(f" | x {_short(b)}" for b in baselines)
    print(f"\n### {title}\n\n| case | median{heads} | SQL per transition | target |")
    print("|---|---:" + "|---:" * len(baselines) + "|---:|---|")
    for name, value in medians.items():
        ratios = "".join(f" | {value / medians[b]:.2f}" for b in baselines)
        target = f"≤ {TARGET:.2f} x the first two" if name == LITESTATE else ""
        print(f"| {name} | {_fmt(value)}{ratios} | {(extra or {}).get(name, '')} | {target} |")
    return medians


def _short(name: str) -> str:
    return name.split(": ", 1)[1] if ": " in name else name


# -- the hand-written code, awaited statement by statement --------------------------------


async def _awaited_write(session: AsyncSession, hand: HandTodo, frm: str, to: str) -> None:
    """``HandTodo._write``, awaited: check, conditional UPDATE, rowcount, committed value."""
    if hand.status != frm:
        raise Refused
    result = await session.execute(
        sa.update(HandTodo).where(HandTodo.id == hand.id, HandTodo.status == frm)
        .values(status=to).execution_options(synchronize_session=False))
    if cast("sa.CursorResult[Any]", result).rowcount != 1:
        raise Refused("lost race")
    set_committed_value(hand, "status", to)


async def _awaited_body(session: AsyncSession, hand: HandTodo, frm: str, to: str) -> None:
    """``HandTodo.safe_bstart``, awaited: the write and the body's change in a SAVEPOINT."""
    async with session.begin_nested():
        await _awaited_write(session, hand, frm, to)
        hand.counter += 1
        await session.flush()


_table: Any = HandTodo.__table__
_CORE_UPDATE = (sa.update(_table)
                .where(_table.c.id == sa.bindparam("pk"), _table.c.status == sa.bindparam("frm"))
                .values(status=sa.bindparam("to")))


async def _core_write(session: AsyncSession, hand: HandTodo, frm: str, to: str) -> None:
    """:func:`_awaited_write` with a Core UPDATE built once, on the session's connection."""
    if hand.status != frm:
        raise Refused
    conn = await session.connection()
    result = await conn.execute(_CORE_UPDATE, {"pk": hand.id, "frm": frm, "to": to})
    if result.rowcount != 1:
        raise Refused("lost race")
    set_committed_value(hand, "status", to)


async def _core_body(session: AsyncSession, hand: HandTodo, frm: str, to: str) -> None:
    async with session.begin_nested():
        await _core_write(session, hand, frm, to)
        hand.counter += 1
        await session.flush()


# -- one database -------------------------------------------------------------------------


def _then_flush(session: AsyncSession, start: AsyncCase, stop: AsyncCase) -> AsyncCase:
    async def case() -> None:
        await start()
        await session.flush()
        await stop()
        await session.flush()
    return case


async def database(engine: AsyncEngine, label: str) -> dict[str, dict[str, float]]:
    """The two tables of one database; returns litestate's ratio to each baseline."""
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    ratios: dict[str, dict[str, float]] = {}
    async with AsyncSession(engine, expire_on_commit=False) as session:
        # A row per case: on PostgreSQL, every UPDATE of a row in one transaction adds a
        # version that the next UPDATE of it walks past, so rows must age alike.
        lite, hand, by_statement, by_core = LiteTodo(), HandTodo(), HandTodo(), HandTodo()
        session.add_all([lite, hand, by_statement, by_core])
        await session.commit()  # loaded still (expire_on_commit=False)

        async def new_transaction() -> None:
            """Between samples: commit, and BEGIN the next transaction, untimed."""
            await session.commit()
            await session.connection()

        def awaited(step: Callable[[AsyncSession, HandTodo, str, str], Awaitable[None]],
                    row: HandTodo, frm: str, to: str) -> AsyncCase:
            return lambda: step(session, row, frm, to)

        empty: dict[str, tuple[AsyncCase, AsyncCase]] = {
            LITESTATE: (lambda: aio.call(lite.start), lambda: aio.call(lite.stop)),
            RUN_SYNC: (lambda: session.run_sync(hand.safe_start),
                       lambda: session.run_sync(hand.safe_stop)),
            AWAITED: (awaited(_awaited_write, by_statement, "pending", "doing"),
                      awaited(_awaited_write, by_statement, "doing", "pending")),
            CORE: (awaited(_core_write, by_core, "pending", "doing"),
                   awaited(_core_write, by_core, "doing", "pending")),
        }
        body: dict[str, tuple[AsyncCase, AsyncCase]] = {
            LITESTATE: (lambda: aio.call(lite.bstart), lambda: aio.call(lite.bstop)),
            RUN_SYNC: (lambda: session.run_sync(hand.safe_bstart),
                       lambda: session.run_sync(hand.safe_bstop)),
            AWAITED: (awaited(_awaited_body, by_statement, "pending", "doing"),
                      awaited(_awaited_body, by_statement, "doing", "pending")),
            CORE: (awaited(_core_body, by_core, "pending", "doing"),
                   awaited(_core_body, by_core, "doing", "pending")),
        }
        for title, table in (("empty body: one conditional UPDATE", empty),
                             ("a body that changes a column: SAVEPOINT, UPDATE, RELEASE",
                              body)):
            cases = {name: _then_flush(session, *steps) for name, steps in table.items()}
            sql: dict[str, str] = {}
            sent: dict[str, tuple[str, ...]] = {}
            for name, case in cases.items():
                await new_transaction()
                await case()
                with counting(engine.sync_engine) as statements:
                    await case()
                sent[name] = tuple(statements)
                sql[name] = f"{len(statements) / 2:g} ({', '.join(sorted(set(statements)))})"
            medians = await compare(f"{label}: transition + flush, {title}", cases,
                                    (RUN_SYNC, AWAITED, CORE), number=60, rounds=15,
                                    extra=sql, between=new_transaction)
            same = len(set(sent.values())) == 1
            print(f"\nThe same statements, in the same order, for every case: "
                  f"{'yes' if same else 'NO'}.")
            if not same:
                for name, verbs in sent.items():
                    print(f"- {name}: {', '.join(verbs)}")
            ratios[title.split(":")[0]] = {b: medians[LITESTATE] / medians[b]
                                           for b in (RUN_SYNC, AWAITED, CORE)}
        await session.rollback()
    return ratios


async def run(postgres: bool) -> None:
    summary: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        engine = enable_savepoints(create_async_engine(f"sqlite+aiosqlite:///{tmp}/bench.db"))
        summary["aiosqlite file"] = await database(engine, "aiosqlite file")
        await engine.dispose()
    if postgres:
        from tests.pgserver import postgres_server

        with postgres_server() as url:  # postgresql+psycopg: its async dialect, here
            engine = create_async_engine(url)
            summary["PostgreSQL (async psycopg)"] = await database(
                engine, "PostgreSQL (async psycopg)")
            await engine.dispose()
    print("\n### Summary: litestate's time per transition, x each hand-written version\n")
    print("| database | body | x run_sync | x awaited | x prebuilt Core | target |")
    print("|---|---|---:|---:|---:|---|")
    for label, tables in summary.items():
        for title, ratios in tables.items():
            print(f"| {label} | {title} | {ratios[RUN_SYNC]:.2f} | {ratios[AWAITED]:.2f} "
                  f"| {ratios[CORE]:.2f} | ≤ {TARGET:.2f} (the first two) |")


def main(argv: list[str] | None = None) -> None:
    global QUICK
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: check it runs")
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    args = parser.parse_args(argv)
    QUICK = args.quick
    random.seed(1)
    print(f"# litestate.aio benchmarks\n\nPython {sys.version.split()[0]}, SQLAlchemy "
          f"{sa.__version__}, litestate {litestate.__version__}. Medians of interleaved "
          "rounds; ratios are to the baselines measured in the same run.")
    asyncio.run(run(postgres=not args.no_postgres))


if __name__ == "__main__":
    main()
