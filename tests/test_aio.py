"""litestate.aio: transitions of objects in an ``AsyncSession``, through ``aio.call`` and
``async def`` transitions, with async guards and receivers.

Every test that takes ``backend`` runs on aiosqlite (a file, ``enable_savepoints``) and on
PostgreSQL through psycopg's async driver and through asyncpg. Each is a plain test that
runs its coroutine with ``asyncio.run`` (``Backend.run``); nothing sleeps to order events:
``asyncio.Event``, ``asyncio.Barrier`` and questions to the server do, and
``asyncio.wait_for`` only guards against a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import litestate
from litestate import ConflictError, GuardError, InvalidStateError, TransitionError, aio
from litestate.core import TransitionArgumentError, UnknownTransitionError
from litestate.sqlite import enable_savepoints
from tests.aio_models import AioBase, GatewayError, Lamp, Order, OrderNote, Wallet
from tests.conftest import SignalLog, recording

_T = TypeVar("_T")
_O = TypeVar("_O", Order, Wallet)

#: Seconds before a test is declared hung: a guard only, every wait ends on an event.
HANG = 120.0
ROOT = Path(__file__).resolve().parent.parent
SIGNALS = {"succeeded": litestate.transition_succeeded, "invalid": litestate.transition_invalid,
           "failed": litestate.transition_failed, "committed": litestate.transition_committed}

# -- backends -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """An async driver on a database holding empty ``aio_*`` tables."""

    name: str  # aiosqlite, psycopg or asyncpg
    url: sa.URL  # the async driver's
    sync_url: sa.URL  # the same database through a sync driver

    @property
    def postgres(self) -> bool:
        return self.name != "aiosqlite"

    def run(self, main: Callable[[AsyncEngine], Coroutine[Any, Any, _T]]) -> _T:
        """``asyncio.run(main(engine))`` with a new engine, disposed on the same loop."""

        async def go() -> _T:
            engine = create_async_engine(self.url)
            if not self.postgres:
                enable_savepoints(engine)
            try:
                return await asyncio.wait_for(main(engine), HANG)
            finally:
                await engine.dispose()

        return asyncio.run(go())

    @contextlib.contextmanager
    def sync_engine(self) -> Iterator[sa.Engine]:
        engine = sa.create_engine(self.sync_url)
        if not self.postgres:
            enable_savepoints(engine)
        try:
            yield engine
        finally:
            engine.dispose()


@pytest.fixture(scope="session")
def aio_postgres(postgres_url: str) -> sa.URL:
    """The throwaway server's URL (sync psycopg), with the ``aio_*`` tables made."""
    url = sa.make_url(postgres_url).set(drivername="postgresql+psycopg")
    engine = sa.create_engine(url)
    AioBase.metadata.drop_all(engine)
    AioBase.metadata.create_all(engine)
    engine.dispose()
    return url


def _backend(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if name == "aiosqlite":
        sync_url = sa.make_url(f"sqlite:///{tmp_path / 'aio.db'}")
        engine = sa.create_engine(sync_url)
        AioBase.metadata.create_all(engine)
        engine.dispose()
        return Backend(name, sync_url.set(drivername="sqlite+aiosqlite"), sync_url)
    sync_url = request.getfixturevalue("aio_postgres")
    engine = sa.create_engine(sync_url)
    tables = ", ".join(t.name for t in AioBase.metadata.sorted_tables)
    with engine.begin() as conn:  # a leaked lock fails here, not hangs
        conn.exec_driver_sql("SET LOCAL lock_timeout = '20s'")
        conn.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    engine.dispose()
    return Backend(name, sync_url.set(drivername=f"postgresql+{name}"), sync_url)


POSTGRES = [pytest.param("psycopg", marks=pytest.mark.postgres),
            pytest.param("asyncpg", marks=pytest.mark.postgres)]


@pytest.fixture(params=["aiosqlite", *POSTGRES])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each test that takes it runs on aiosqlite, psycopg (async) and asyncpg."""
    return _backend(request.param, request, tmp_path)


@pytest.fixture(params=POSTGRES)
def pg_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """PostgreSQL alone, through psycopg (async) and asyncpg: real concurrency."""
    return _backend(request.param, request, tmp_path)


# -- helpers ------------------------------------------------------------------------------


async def _saved(session: AsyncSession, *objs: _O) -> list[int]:
    """Insert and commit (which expires them, with the default expire_on_commit); ids."""
    session.add_all(objs)
    await session.flush()
    ids = [obj.id for obj in objs]
    await session.commit()
    return ids


async def _get(session: AsyncSession, cls: type[_O], ident: int) -> _O:
    obj = await session.get(cls, ident)
    assert obj is not None, f"no {cls.__name__} {ident}"
    return obj


async def _row(engine: AsyncEngine, order_id: int) -> Any:
    """The order's row as the database has it, read on a connection of its own."""
    async with engine.connect() as conn:
        result = await conn.execute(sa.select(
            Order.status, Order.title, Order.amount, Order.receipt, Order.worker,
            Order.paid_at, Order.charged_at).where(Order.id == order_id))
        return result.one()


async def _notes(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list(await conn.scalars(sa.select(OrderNote.text).order_by(OrderNote.id)))


async def _read(session: AsyncSession, obj: object, *names: str) -> tuple[Any, ...]:
    """Attributes of ``obj``, loading expired ones (in the bridge, as the session would)."""
    return await session.run_sync(lambda _: tuple(getattr(obj, name) for name in names))


@contextlib.contextmanager
def _statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """The SQL the engine sends inside the block (BEGIN, SAVEPOINT and RELEASE included)."""
    log: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        log.append(statement)

    sa.event.listen(engine.sync_engine, "before_cursor_execute", before)
    try:
        yield log
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", before)


def _verbs(log: list[str]) -> list[str]:
    return [s.split()[0].upper() for s in log if s.split()[0].upper() != "BEGIN"]


#: The two ways to fire from async code: a sync transition through aio.call, an async one.
#: (event, state written, timestamp column, what it returns for an amount)
HOWS: dict[str, tuple[str, str, str, Callable[[int], object]]] = {
    "aio.call": ("pay", "paid", "paid_at", lambda n: n * 10),
    "async def": ("charge", "charged", "charged_at", lambda n: f"r-{n}")}


async def _fire(how: str, order: Order, amount: int) -> object:
    if how == "aio.call":
        return await aio.call(order.pay, amount)
    return await order.charge(amount)


async def _fail(how: str, order: Order, note: str) -> None:
    """A body that writes (an attribute, a flushed row), then raises GatewayError(note)."""
    if how == "aio.call":
        await aio.call(order.settle, note)
    else:
        await order.capture(note)


# -- the session path: what the sync suite proves, from async code ------------------------


@pytest.mark.parametrize("how", HOWS)
def test_a_transition_writes_state_timestamp_and_body_in_the_callers_transaction(
        backend: Backend, how: str, frozen_clock: datetime) -> None:
    _, to, stamp, returns = HOWS[how]

    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:
            (order_id,) = await _saved(session, Order(title="t"))
            order = await _get(session, Order, order_id)
            assert await _fire(how, order, 7) == returns(7)
            assert (order.status, getattr(order, stamp), order.amount) == (to, frozen_clock, 7)
            assert (await _row(engine, order_id)).status == "new"  # flushed, not committed
            await session.rollback()  # litestate never commits: the caller's rollback undoes it
            assert await _read(session, order, "status", stamp, "amount") == ("new", None, 0)
            assert await _fire(how, order, 8) == returns(8)
            await session.commit()
        row = await _row(engine, order_id)
        assert (row.status, getattr(row, stamp), row.amount) == (to, frozen_clock, 8)

    backend.run(main)


@pytest.mark.parametrize("how", HOWS)
def test_the_sql_sent_is_the_sync_paths(backend: Backend, how: str) -> None:
    """SAVEPOINT, the conditional UPDATE, the body's flush, RELEASE; an expired object
    with an empty body and one ``frm`` state costs one UPDATE, no SELECT."""

    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:
            order_id, paid_id = await _saved(session, Order(), Order(status="paid"))
            order = await _get(session, Order, order_id)
            with _statements(engine) as sql:
                await _fire(how, order, 3)
            assert _verbs(sql) == ["SAVEPOINT", "UPDATE", "UPDATE", "RELEASE"]
            write = next(s for s in sql if s.upper().startswith("UPDATE"))
            assert "status" in write.partition("WHERE")[2]  # only from the state it read
            await session.commit()
            paid = await _get(session, Order, paid_id)
            await session.commit()  # expires it
            with _statements(engine) as sql:
                await aio.call(paid.ship)
            assert _verbs(sql) == ["UPDATE"]
            await session.commit()
        assert (await _row(engine, paid_id)).status == "shipped"

    backend.run(main)


REFUSALS = [
    # (id, how the order is made, the call, error class, detail)
    ("invalid", {"status": "paid"}, ("pay", 5), InvalidStateError, "pay starts from 'new'"),
    ("guard", {}, ("pay", 0), GuardError, "guard Order.<lambda> returned false"),
    ("async-invalid", {"status": "paid"}, ("charge", 5), InvalidStateError,
     "charge starts from 'new'"),
    ("async-guard", {"gateway_open": False}, ("charge", 5), GuardError,
     "guard gateway_up returned false"),
    ("async-lambda-guard", {}, ("charge", 0), GuardError, "guard Order.<lambda> returned false"),
]


@pytest.mark.parametrize(("values", "call", "error", "detail"),
                         [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusals_send_no_sql_and_send_invalid(
        backend: Backend, signals: SignalLog, values: dict[str, Any], call: tuple[str, int],
        error: type[TransitionError], detail: str) -> None:
    event, amount = call

    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:
            (order_id,) = await _saved(session, Order(**values))
            order = await _get(session, Order, order_id)
            before = order.status
            with _statements(engine) as sql, pytest.raises(error) as info:
                await _fire("aio.call" if event == "pay" else "async def", order, amount)
            assert sql == []
            assert (info.value.event, info.value.from_state, info.value.detail) == (
                event, before, detail)
            assert info.value.reason == ("invalid" if error is InvalidStateError else "guard")
            assert signals.names() == ["transition-invalid"]
            assert signals.heard[0].payload["error"] is info.value
            assert signals.heard[0].payload["reason"] == info.value.reason
            assert (order.status, order.amount, order.receipt) == (before, 0, None)
            await session.commit()
        assert (await _row(engine, order_id)).status == before
        assert signals.of("transition-committed") == []

    backend.run(main)


@pytest.mark.parametrize("how", HOWS)
def test_a_race_lost_to_a_second_sessions_commit_is_a_conflict_with_nothing_written(
        backend: Backend, how: str, signals: SignalLog) -> None:
    event, to, _, _ = HOWS[how]

    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as setup:
            (order_id,) = await _saved(setup, Order())
        async with AsyncSession(engine, expire_on_commit=False) as first, \
                AsyncSession(engine, expire_on_commit=False) as second:
            mine, theirs = await _get(first, Order, order_id), await _get(second, Order, order_id)
            await first.commit()  # both read "new"; end the read transactions (SQLite)
            await second.commit()
            await _fire(how, mine, 3)
            await first.commit()  # the second session's commit in between
            with _statements(engine) as sql, pytest.raises(ConflictError) as info:
                await _fire(how, theirs, 4)
            assert (info.value.reason, info.value.event, info.value.from_state) == (
                "conflict", event, "new")
            assert "changed before the write (it is now " + repr(to) in str(info.value)
            assert _verbs(sql)[:2] == ["SAVEPOINT", "UPDATE"]  # the write was tried: it decides
            await second.commit()
            assert (theirs.status, theirs.amount) == (to, 3)  # the row, reloaded; no body ran
        row = await _row(engine, order_id)
        assert (row.status, row.amount) == (to, 3)
        assert [h.payload["reason"] for h in signals.of("transition-invalid")] == ["conflict"]
        assert [h.payload["args"] for h in signals.of("transition-succeeded")] == [(3,)]
        assert [h.payload["args"] for h in signals.of("transition-committed")] == [(3,)]

    backend.run(main)


@pytest.mark.parametrize("how", HOWS)
def test_a_body_that_raises_after_its_writes_rolls_back_and_keeps_the_callers_work(
        backend: Backend, how: str, signals: SignalLog) -> None:
    _, _, stamp, _ = HOWS[how]

    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            order_id, other_id = await _saved(session, Order(title="t"), Order(title="o"))
            order = await _get(session, Order, order_id)
            other = await _get(session, Order, other_id)
            other.title = "flushed before"
            await session.flush()
            order.title = "pending edit"
            with pytest.raises(GatewayError, match=r"^declined$") as info:
                await _fail(how, order, "declined")
            assert signals.names() == ["transition-failed"]
            assert signals.heard[0].payload["error"] is info.value  # the original exception
            assert await _read(session, order, "status", stamp, "receipt", "title") == (
                "new", None, None, "pending edit")
            assert await _read(session, other, "title") == ("flushed before",)
            assert list(await session.scalars(sa.select(OrderNote))) == []
            await session.commit()  # the session stays usable and keeps the caller's work
        row = await _row(engine, order_id)
        assert (row.status, getattr(row, stamp), row.receipt, row.title) == (
            "new", None, None, "pending edit")
        assert (await _row(engine, other_id)).title == "flushed before"
        assert await _notes(engine) == []
        assert signals.of("transition-committed") == []

    backend.run(main)


@pytest.mark.parametrize(("event", "to"), [("close", "closed"), ("freeze", "frozen")],
                         ids=["aio.call", "async def"])
def test_lock_true_reads_the_fresh_row_and_keeps_unsaved_edits(
        backend: Backend, event: str, to: str) -> None:
    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as setup:
            (wallet_id,) = await _saved(setup, Wallet(balance=10, owner="ada"))
        async with AsyncSession(engine, expire_on_commit=False) as first, \
                AsyncSession(engine, expire_on_commit=False) as second:
            mine = await _get(first, Wallet, wallet_id)
            theirs = await _get(second, Wallet, wallet_id)
            await first.commit()
            await second.commit()
            theirs.balance = 0  # someone empties the wallet and commits
            await second.commit()
            assert mine.balance == 10  # our copy is stale
            mine.owner = "ada lovelace"  # an unsaved edit of ours
            with _statements(engine) as sql:
                if event == "close":
                    await aio.call(mine.close)
                else:
                    await mine.freeze()  # its async guard reads the locked row
            assert (mine.status, mine.balance, mine.owner) == (to, 0, "ada lovelace")
            if backend.postgres:
                assert [s for s in sql if "FOR UPDATE" in s], sql
            await first.commit()
        async with engine.connect() as conn:
            row = (await conn.execute(sa.select(Wallet.status, Wallet.owner, Wallet.closed_at)
                                      .where(Wallet.id == wallet_id))).one()
        assert (row.status, row.owner) == (to, "ada lovelace")
        assert (row.closed_at is not None) is (event == "close")

    backend.run(main)


async def _waiting_on_a_lock(engine: AsyncEngine, pid: int) -> None:
    """Return once backend ``pid`` waits on a lock (asked of the server, not guessed)."""
    async with engine.connect() as conn:
        while True:  # each question is a round trip; HANG bounds the whole test
            state = await conn.scalar(sa.text(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid})
            await conn.rollback()
            if state == "Lock":
                return


@pytest.mark.parametrize(("event", "to"), [("close", "closed"), ("freeze", "frozen")],
                         ids=["aio.call", "async def"])
def test_a_locked_transition_awaits_a_concurrent_writers_commit_without_blocking_the_loop(
        pg_backend: Backend, event: str, to: str) -> None:
    """The writer commits from the same event loop while the locked transition waits: the
    bridge awaits the lock, it does not block the loop."""

    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as setup:
            (wallet_id,) = await _saved(setup, Wallet(balance=10))
        async with AsyncSession(engine) as writer, AsyncSession(engine) as reader:
            pid = await reader.scalar(sa.select(sa.func.pg_backend_pid()))
            assert isinstance(pid, int)
            mine = await _get(reader, Wallet, wallet_id)
            assert mine.balance == 10
            theirs = await _get(writer, Wallet, wallet_id)
            theirs.balance = 0
            await writer.flush()  # holds the row lock
            call = aio.call(mine.close) if event == "close" else mine.freeze()
            task = asyncio.create_task(call)
            await _waiting_on_a_lock(engine, pid)
            assert not task.done()
            await writer.commit()
            await task
            assert (mine.status, mine.balance) == (to, 0)
            await reader.commit()

    pg_backend.run(main)


@pytest.mark.parametrize("expiry", ["expire", "failed transition"])
def test_async_guards_and_bodies_read_expired_attributes_as_sync_ones_do(
        backend: Backend, expiry: str) -> None:
    """A coroutine runs outside the bridge, where loading an attribute would raise
    MissingGreenlet: the object's expired attributes are loaded before it runs. A failed
    transition's rollback expires every attribute but the state."""

    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:
            (wallet_id,) = await _saved(session, Wallet(owner="ada"))
            (order_id,) = await _saved(session, Order(title="t"))
            wallet = await _get(session, Wallet, wallet_id)
            order = await _get(session, Order, order_id)
            session.expire(wallet, ["balance", "owner"])  # the state stays loaded
            assert await aio.can_transition(wallet, "rename", "x") is True  # is_empty: balance
            session.expire(wallet, ["balance", "owner"])
            assert await wallet.rename("lovelace") == "ada lovelace"  # the guard and the body
            if expiry == "expire":
                session.expire(order, ["gateway_open"])
            else:
                with pytest.raises(GatewayError):
                    await aio.call(order.settle, "declined")
            assert await order.charge(3) == "r-3"  # gateway_up reads gateway_open
            await session.commit()
        async with engine.connect() as conn:
            owner = await conn.scalar(sa.select(Wallet.owner).where(Wallet.id == wallet_id))
        assert owner == "ada lovelace"
        assert (await _row(engine, order_id)).status == "charged"

    backend.run(main)


@pytest.mark.parametrize("how", ["aio.call", "async def"])
def test_transitions_inside_a_body_nest_savepoints(
        backend: Backend, how: str, signals: SignalLog) -> None:
    """bundle's sync body calls ``other.pay(1)`` (inside the bridge); gather's async body
    awaits ``aio.call(other.pay, 1)``."""
    outer = "bundle" if how == "aio.call" else "gather"

    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:
            ids = await _saved(session, Order(), Order(), Order())
            order, *others = [await _get(session, Order, i) for i in ids]
            with _statements(engine) as sql:
                if how == "aio.call":
                    assert await aio.call(order.bundle, *others) == 2
                else:
                    assert await order.gather(*others) == 2
            assert _verbs(sql).count("SAVEPOINT") == 3
            assert [o.status for o in others] == ["paid", "paid"]
            assert [h.payload["event"] for h in signals.of("transition-succeeded")] == [
                "pay", "pay", outer]  # each after its own body: the outer one last
            assert signals.of("transition-committed") == []
            await session.commit()
        assert sorted(h.payload["event"] for h in signals.of("transition-committed")) == [
            outer, "pay", "pay"]
        assert [(await _row(engine, i)).status for i in ids] == ["bundled", "paid", "paid"]

    backend.run(main)


# -- transition_committed: after the outermost commit only --------------------------------


@pytest.mark.parametrize("how", HOWS)
def test_committed_is_sent_after_the_outermost_commit_only(
        backend: Backend, how: str, signals: SignalLog) -> None:
    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:
            first_id, second_id = await _saved(session, Order(), Order())
            first = await _get(session, Order, first_id)
            second = await _get(session, Order, second_id)
            await _fire(how, first, 1)
            await session.flush()
            assert signals.of("transition-committed") == []  # a flush is no commit
            async with session.begin_nested():
                await _fire(how, second, 2)
            assert signals.of("transition-committed") == []  # nor a SAVEPOINT's release
            await session.commit()
            assert [h.payload["args"] for h in signals.of("transition-committed")] == [
                (1,), (2,)]
            await session.commit()
            assert len(signals.of("transition-committed")) == 2  # once

    backend.run(main)


@pytest.mark.parametrize("how", HOWS)
def test_committed_is_not_sent_after_a_rollback_or_a_close_without_commit(
        backend: Backend, how: str, signals: SignalLog) -> None:
    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:
            (order_id,) = await _saved(session, Order())
            await _fire(how, await _get(session, Order, order_id), 1)
            await session.rollback()
            await session.commit()
            await _fire(how, await _get(session, Order, order_id), 2)
        # closed without a commit
        assert signals.of("transition-committed") == []
        assert len(signals.of("transition-succeeded")) == 2
        assert (await _row(engine, order_id)).status == "new"

    backend.run(main)


@pytest.mark.parametrize("how", HOWS)
def test_committed_is_not_sent_when_an_enclosing_savepoint_rolls_back(
        backend: Backend, how: str, signals: SignalLog) -> None:
    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:
            first_id, second_id = await _saved(session, Order(), Order())
            first = await _get(session, Order, first_id)
            second = await _get(session, Order, second_id)
            savepoint = await session.begin_nested()
            await _fire(how, first, 1)
            await savepoint.rollback()
            await _fire(how, second, 2)
            await session.commit()
        assert [h.payload["record"] for h in signals.of("transition-committed")] == [second]
        assert (await _row(engine, first_id)).status == "new"

    backend.run(main)


@pytest.mark.parametrize("how", HOWS)
def test_committed_survives_released_nested_savepoints(
        backend: Backend, how: str, signals: SignalLog) -> None:
    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:
            (order_id,) = await _saved(session, Order())
            order = await _get(session, Order, order_id)
            async with session.begin_nested(), session.begin_nested():
                await _fire(how, order, 1)
            assert signals.of("transition-committed") == []
            await session.commit()
        assert [h.payload["record_id"] for h in signals.of("transition-committed")] == [order_id]

    backend.run(main)


@pytest.mark.parametrize("how", HOWS)
def test_an_async_committed_receiver_sees_the_committed_row(backend: Backend, how: str) -> None:
    """Sent at the end of ``async with session.begin()``, once the database committed: a
    receiver reading on another connection sees the write; a succeeded one does not yet."""
    _, to, _, _ = HOWS[how]
    seen: list[tuple[str, str]] = []

    async def main(engine: AsyncEngine) -> None:
        async def succeeded(sender: type, *, record_id: int, **extra: object) -> None:
            seen.append(("succeeded", (await _row(engine, record_id)).status))

        async def committed(sender: type, *, record_id: int, **extra: object) -> None:
            seen.append(("committed", (await _row(engine, record_id)).status))

        async with AsyncSession(engine) as session:
            (order_id,) = await _saved(session, Order())
        with litestate.transition_succeeded.connected_to(succeeded, sender=Order), \
                litestate.transition_committed.connected_to(committed, sender=Order):
            async with AsyncSession(engine) as session, session.begin():
                await _fire(how, await _get(session, Order, order_id), 1)
                assert seen == [("succeeded", "new")]
            assert seen == [("succeeded", "new"), ("committed", to)]

    backend.run(main)


# -- signals: order, payloads, async receivers --------------------------------------------


@pytest.mark.parametrize("how", HOWS)
def test_signals_order_and_payloads(backend: Backend, how: str, signals: SignalLog) -> None:
    event, to, _, _ = HOWS[how]

    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:
            order_id, paid_id, failing_id = await _saved(
                session, Order(), Order(status="paid"), Order())
            order = await _get(session, Order, order_id)
            if how == "aio.call":
                await aio.call(order.pay, amount=5)
            else:
                await order.charge(amount=5)
            assert signals.names() == ["transition-succeeded"]
            heard = signals.heard[0]
            assert heard.sender is Order
            duration = heard.payload.pop("duration")
            assert isinstance(duration, float)
            assert 0 < duration < HANG
            payload = {"record": order, "record_id": order_id, "event": event,
                       "from_state": "new", "to_state": to, "column": "status", "args": (),
                       "kwargs": {"amount": 5}}
            assert heard.payload == payload
            await session.commit()
            assert signals.names() == ["transition-succeeded", "transition-committed"]
            assert signals.heard[1].sender is Order
            assert signals.heard[1].payload == payload

            signals.clear()
            paid = await _get(session, Order, paid_id)
            with pytest.raises(InvalidStateError) as refused:
                await _fire(how, paid, 6)
            failing = await _get(session, Order, failing_id)
            with pytest.raises(GatewayError) as failed:
                await _fail(how, failing, "declined")
            assert signals.names() == ["transition-invalid", "transition-failed"]
            invalid, fail = (h.payload for h in signals.heard)
            assert (invalid["record"], invalid["event"], invalid["from_state"], invalid["args"],
                    invalid["reason"], invalid["error"]) == (
                paid, event, "paid", (6,), "invalid", refused.value)
            assert (fail["record"], fail["from_state"], fail["args"], fail["error"]) == (
                failing, "new", ("declined",), failed.value)
            await session.commit()
            assert signals.names() == ["transition-invalid", "transition-failed"]

    backend.run(main)


async def _scenario(how: str, signal: str, engine: AsyncEngine,
                    then: Callable[[], None] = lambda: None) -> None:
    """Make ``signal`` be sent once, for an order, from async code; ``then()`` right after
    the call (or the commit) that sends it."""
    async with AsyncSession(engine) as session:
        (order_id,) = await _saved(session, Order(status="paid" if signal == "invalid" else "new"))
        order = await _get(session, Order, order_id)
        if signal == "invalid":
            with pytest.raises(InvalidStateError):
                await _fire(how, order, 1)
        elif signal == "failed":
            with pytest.raises(GatewayError):
                await _fail(how, order, "declined")
        else:
            await _fire(how, order, 1)
        if signal == "committed":
            await session.commit()
        then()


@pytest.mark.parametrize("signal", SIGNALS)
@pytest.mark.parametrize("how", HOWS)
def test_an_async_receiver_of_each_signal_is_awaited_before_the_call_returns(
        backend: Backend, how: str, signal: str) -> None:
    heard: list[tuple[str, object, object]] = []

    async def receiver(sender: type, *, event: str, **payload: object) -> None:
        await asyncio.sleep(0)  # yields to the loop: the receiver really is awaited
        heard.append((event, payload.get("error"), payload.get("reason")))

    def one_heard() -> None:
        assert len(heard) == 1

    async def main(engine: AsyncEngine) -> None:
        with SIGNALS[signal].connected_to(receiver, sender=Order):
            await _scenario(how, signal, engine, then=one_heard)
        assert len(heard) == 1
        assert heard[0][0] == (HOWS[how][0] if signal != "failed" else
                               "settle" if how == "aio.call" else "capture")
        if signal == "failed":
            assert isinstance(heard[0][1], GatewayError)
        if signal == "invalid":
            assert isinstance(heard[0][1], InvalidStateError)
            assert heard[0][2] == "invalid"

    backend.run(main)


def _receivers(log: list[str], count: int) -> list[Callable[..., Any]]:
    """``count`` receivers, sync and async in turn, each logging its number; the async
    ones log it before and after an await."""
    made: list[Callable[..., Any]] = []
    for i in range(count):
        if i % 2:
            def sync(sender: type, _i: int = i, **payload: object) -> None:
                log.append(f"{_i}")
            made.append(sync)
        else:
            async def async_(sender: type, _i: int = i, **payload: object) -> None:
                log.append(f"{_i}<")
                await asyncio.sleep(0)
                log.append(f">{_i}")
            made.append(async_)
    return made


@pytest.mark.parametrize("signal", ["succeeded", "committed"])
def test_async_receivers_are_awaited_one_at_a_time(backend: Backend, signal: str) -> None:
    """Each async receiver finishes before the next receiver is called (no gather)."""
    log: list[str] = []
    receivers = _receivers(log, 8)

    async def main(engine: AsyncEngine) -> None:
        with contextlib.ExitStack() as stack:
            for receiver in receivers:
                stack.enter_context(SIGNALS[signal].connected_to(receiver, sender=Order))
            await _scenario("aio.call", signal, engine)
        assert sorted(log) == sorted([f"{i}" for i in range(1, 8, 2)] +
                                     [f"{i}<" for i in range(0, 8, 2)] +
                                     [f">{i}" for i in range(0, 8, 2)])
        for at, entry in enumerate(log):
            if entry.endswith("<"):
                assert log[at + 1] == f">{entry[:-1]}", log

    backend.run(main)


@pytest.mark.parametrize("signal", ["succeeded", "committed"])
def test_receivers_sync_and_async_are_called_in_connection_order(
        backend: Backend, signal: str) -> None:
    """The README: async receivers are awaited "in connection order with the sync ones"."""
    log: list[str] = []
    receivers = _receivers(log, 8)

    async def main(engine: AsyncEngine) -> None:
        with contextlib.ExitStack() as stack:
            for receiver in receivers:
                stack.enter_context(SIGNALS[signal].connected_to(receiver, sender=Order))
            await _scenario("aio.call", signal, engine)
        called = [entry.strip("<>") for entry in log if not entry.startswith(">")]
        assert called == [str(i) for i in range(8)]

    backend.run(main)


@pytest.mark.parametrize("how", HOWS)
def test_a_sync_and_an_async_receiver_both_hear_each_transition(
        backend: Backend, how: str) -> None:
    heard: list[tuple[str, str, int]] = []

    def sync(sender: type, *, event: str, record_id: int, **payload: object) -> None:
        heard.append(("sync", event, record_id))

    async def async_(sender: type, *, event: str, record_id: int, **payload: object) -> None:
        await asyncio.sleep(0)
        heard.append(("async", event, record_id))

    async def main(engine: AsyncEngine) -> None:
        with litestate.transition_succeeded.connected_to(sync, sender=Order), \
                litestate.transition_succeeded.connected_to(async_, sender=Order):
            async with AsyncSession(engine) as session:
                ids = await _saved(session, Order(), Order())
                for order_id in ids:
                    await _fire(how, await _get(session, Order, order_id), 1)
                await session.commit()
        event = HOWS[how][0]
        assert sorted(heard) == sorted((kind, event, i) for kind in ("sync", "async")
                                       for i in ids)

    backend.run(main)


@pytest.mark.parametrize("how", HOWS)
def test_an_async_succeeded_receiver_that_raises_undoes_the_transition(
        backend: Backend, how: str, signals: SignalLog) -> None:
    async def veto(sender: type, **payload: object) -> None:
        await asyncio.sleep(0)
        raise PermissionError("audit log is down")

    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:
            (order_id,) = await _saved(session, Order())
            order = await _get(session, Order, order_id)
            with litestate.transition_succeeded.connected_to(veto, sender=Order), \
                    pytest.raises(PermissionError, match="audit log is down"):
                await _fire(how, order, 1)
            assert await _read(session, order, "status", "amount") == ("new", 0)
            assert signals.names()[-1] == "transition-failed"
            await session.commit()
        assert (await _row(engine, order_id)).status == "new"
        assert signals.of("transition-committed") == []

    backend.run(main)


@pytest.mark.parametrize("signal", SIGNALS)
def test_an_async_receiver_under_a_sync_session_is_a_clear_type_error(
        backend: Backend, signal: str, signals: SignalLog) -> None:
    """Never an un-awaited coroutine (filterwarnings=error would catch its warning). For
    succeeded, invalid and failed nothing is written; committed is sent after the commit,
    so the commit stands and ``commit()`` raises."""
    called: list[str] = []

    async def listener(sender: type, **payload: object) -> None:
        called.append("ran")  # never: the coroutine is not even made

    name = listener.__qualname__
    with backend.sync_engine() as engine, Session(engine) as session, \
            SIGNALS[signal].connected_to(listener, sender=Order):
        order = Order(status="paid" if signal == "invalid" else "new")
        session.add(order)
        session.commit()
        order_id = order.id

        def act() -> None:
            if signal == "failed":
                order.settle("declined")
            else:
                order.pay(5)
                session.commit()

        with pytest.raises(TypeError) as info:
            act()
        assert str(info.value).startswith(
            f"the async receiver {name} heard {'settle' if signal == 'failed' else 'pay'}() "
            "of Order outside asyncio: async receivers are awaited only for transitions run "
            "under an AsyncSession or litestate.aio; connect a plain def for sync sessions")
        if signal == "invalid":
            assert info.value.__notes__[0].startswith(
                "raised by a transition_invalid receiver while refusing: cannot pay()")
        if signal == "failed":
            assert info.value.__notes__ == [
                "raised by a transition_failed receiver while reporting: "
                "GatewayError('declined')"]
        if signal == "succeeded":
            assert signals.names()[-1] == "transition-failed"
        session.rollback()
        with engine.connect() as conn:
            status = conn.execute(sa.select(Order.status).where(Order.id == order_id)).scalar()
            notes = conn.execute(sa.select(sa.func.count()).select_from(OrderNote)).scalar()
        assert status == {"committed": "paid", "invalid": "paid"}.get(signal, "new")
        assert notes == 0
    assert called == []
    if signal != "committed":
        assert signals.of("transition-committed") == []


@pytest.mark.parametrize("end", ["commit", "rollback"])
def test_under_a_connection_of_the_callers_committed_waits_for_its_commit(
        backend: Backend, end: str, signals: SignalLog) -> None:
    """``AsyncSession(bind=connection)`` in a transaction of the caller's: the session's
    commit commits nothing; the connection's does (and its rollback sends nothing)."""
    heard: list[int] = []

    async def committed(sender: type, *, record_id: int, **extra: object) -> None:
        await asyncio.sleep(0)
        heard.append(record_id)

    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as setup:
            (order_id,) = await _saved(setup, Order())
        with litestate.transition_committed.connected_to(committed, sender=Order):
            async with engine.connect() as conn:
                await conn.begin()
                async with AsyncSession(bind=conn) as session:
                    await _fire("aio.call", await _get(session, Order, order_id), 1)
                    await session.commit()
                assert signals.of("transition-committed") == []
                assert heard == []
                if end == "commit":
                    await conn.commit()
                else:
                    await conn.rollback()
        kept = end == "commit"
        assert heard == ([order_id] if kept else [])
        assert len(signals.of("transition-committed")) == (1 if kept else 0)
        assert (await _row(engine, order_id)).status == ("paid" if kept else "new")

    backend.run(main)


def test_aiosqlite_without_enable_savepoints_still_gets_a_real_savepoint(
        tmp_path: Path, signals: SignalLog) -> None:
    """litestate sends the BEGIN that the driver's legacy transaction control skips, so a
    failing body's rollback keeps the caller's earlier work, and RELEASE commits nothing."""
    sync = sa.create_engine(f"sqlite:///{tmp_path / 'legacy.db'}")
    AioBase.metadata.create_all(sync)
    sync.dispose()

    async def main() -> int:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'legacy.db'}")
        try:
            async with AsyncSession(engine) as session:
                order_id, other_id = await _saved(session, Order(), Order())
                other = await _get(session, Order, other_id)
                await aio.call(other.pay, 2)  # the caller's earlier work
                order = await _get(session, Order, order_id)
                with pytest.raises(GatewayError):
                    await aio.call(order.settle, "declined")
                assert await order.charge(3) == "r-3"  # a SAVEPOINT released: not committed
                assert (await _row(engine, order_id)).status == "new"
                await session.rollback()
            assert [(await _row(engine, i)).status for i in (order_id, other_id)] == [
                "new", "new"]
            async with AsyncSession(engine) as session:
                await aio.call((await _get(session, Order, other_id)).pay, 2)
                with pytest.raises(GatewayError):
                    await aio.call((await _get(session, Order, order_id)).settle, "x")
                await session.commit()
            assert [(await _row(engine, i)).status for i in (order_id, other_id)] == [
                "new", "paid"]
            assert await _notes(engine) == []
            return other_id
        finally:
            await engine.dispose()

    other_id = asyncio.run(asyncio.wait_for(main(), HANG))
    assert [h.payload["record_id"] for h in signals.of("transition-committed")] == [other_id]


def test_enable_savepoints_takes_an_async_engine_and_returns_it() -> None:
    engine = create_async_engine("sqlite+aiosqlite://")
    assert enable_savepoints(engine) is engine
    postgres = create_async_engine("postgresql+psycopg://nobody@localhost/none")  # no connect
    with pytest.raises(ValueError, match="is for SQLite engines"):
        enable_savepoints(postgres)
    with pytest.raises(TypeError, match="takes an Engine or an AsyncEngine"):
        enable_savepoints(AsyncSession(engine))  # type: ignore[type-var]


# -- probes, firing by name, and the errors of sync code in an async world ----------------


def test_the_aio_probes_load_expired_attributes_and_await_async_guards(
        backend: Backend) -> None:
    from_new = ["pay", "settle", "start", "bundle", "charge", "capture", "begin", "hold",
                "gather"]

    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:  # expire_on_commit=True
            open_id, closed_id = await _saved(session, Order(), Order(gateway_open=False))
            order = await _get(session, Order, open_id)
            closed = await _get(session, Order, closed_id)
            await session.commit()  # expires both
            assert await aio.can_transition(order, "pay", 5) is True
            assert await aio.can_transition(order, "pay", 0) is False
            assert await aio.can_transition(order, "ship") is False
            assert await aio.can_transition(order, "charge", 5) is True
            await session.commit()
            assert await aio.can_transition(closed, "charge", 5) is False  # gateway_up: False
            await session.commit()
            assert await aio.available_transitions(order) == from_new
            await session.commit()
            assert await aio.available_transitions(closed) == [
                e for e in from_new if e != "charge"]
            await session.commit()
            actions = {a.event: a for a in await aio.actions(closed)}
            assert list(actions) == ["pay", "ship", "settle", "start", "bundle", "charge",
                                     "capture", "begin", "hold", "gather"]
            assert [a.event for a in actions.values() if a.allowed] == [
                e for e in from_new if e != "charge"]
            charge = actions["charge"]
            assert (charge.allowed, charge.reason, charge.detail) == (
                False, "guard", "guard gateway_up returned false")
            assert (actions["ship"].reason, actions["ship"].detail) == (
                "invalid", "ship starts from 'paid'")

    backend.run(main)


def test_aio_fire_fires_sync_and_async_transitions_by_name(
        backend: Backend, signals: SignalLog) -> None:
    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:
            first_id, second_id = await _saved(session, Order(), Order())
            first = await _get(session, Order, first_id)
            second = await _get(session, Order, second_id)
            await session.commit()  # expired: fire loads them
            assert await aio.fire(first, "pay", 5) == 50
            assert await aio.fire(second, "charge", amount=6) == "r-6"
            with pytest.raises(UnknownTransitionError, match="has no transition 'gateway_up'"):
                await aio.fire(first, "gateway_up")
            with pytest.raises(TransitionArgumentError):
                await aio.fire(first, "pay")
            with pytest.raises(TransitionArgumentError):
                await aio.fire(second, "charge", 1, 2)
            with pytest.raises(InvalidStateError):
                await aio.fire(first, "charge", 1)
            await session.commit()
        assert [(await _row(engine, i)).status for i in (first_id, second_id)] == [
            "paid", "charged"]
        assert [h.payload["event"] for h in signals.of("transition-committed")] == [
            "pay", "charge"]

    backend.run(main)


def test_the_sync_probes_of_an_expired_object_name_the_aio_probes(backend: Backend) -> None:
    """As the sync call does, before any SQL: a load tried outside the bridge fails in the
    driver (wrapped or not), and leaves the driver's un-awaited coroutines behind."""

    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:
            (order_id,) = await _saved(session, Order())
            order = await _get(session, Order, order_id)
            await session.commit()  # expires it
            probes: list[Callable[[], object]] = [
                lambda: litestate.can_transition(order, "pay", 5),
                lambda: litestate.available_transitions(order),
                lambda: litestate.actions(order)]
            for probe in probes:
                kind, missing, said, sql = _refusal_of(probe, engine)
                gc.collect()  # a driver coroutine left un-awaited is reported here, not later
                assert missing, f"{kind} is no MissingGreenlet: {said}"
                assert f"status of Order {order_id} is expired and its session is an " \
                    "AsyncSession's: ask with `await litestate.aio.can_transition(...)` or " \
                    "`await litestate.aio.available_transitions(...)`, which load it" in said, (
                        f"{kind} names no aio probe: {said}")
                assert sql == [], "SQL was sent outside the bridge"
            assert await aio.can_transition(order, "pay", 5) is True  # still usable

    backend.run(main)


def _refusal_of(probe: Callable[[], object], engine: AsyncEngine
                ) -> tuple[str, bool, str, list[str]]:
    """What the probe raised, as plain data (the error's traceback, which may hold the
    driver's coroutines, dies here): its type's name, whether it is or wraps a
    MissingGreenlet, its text and notes, the SQL sent."""
    with _statements(engine) as sql, \
            pytest.raises((sa_exc.MissingGreenlet, sa_exc.StatementError)) as info:
        probe()  # SQLAlchemy may wrap the MissingGreenlet (StatementError, DBAPIError)
    error = info.value
    said = "\n".join([str(error), *getattr(error, "__notes__", [])])
    return (type(error).__name__,
            isinstance(getattr(error, "orig", error), sa_exc.MissingGreenlet), said, sql)


def test_a_sync_probe_of_an_async_guard_names_aio_can_transition(backend: Backend) -> None:
    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:
            (order_id,) = await _saved(session, Order())
            order = await _get(session, Order, order_id)  # loaded: only the guard is async
            with pytest.raises(TypeError, match=r"^guard gateway_up of charge\(\) is async: "
                                                r"ask with `await litestate\.aio\.can_"):
                litestate.can_transition(order, "charge", 5)
            with pytest.raises(TypeError, match="guard gateway_up of charge"):
                litestate.available_transitions(order)
            assert await aio.can_transition(order, "charge", 5) is True

    backend.run(main)


@pytest.mark.parametrize("shape", ["expired", "loaded", "pending", "edited"])
def test_a_sync_call_outside_the_bridge_raises_missing_greenlet_naming_aio_call_before_any_sql(
        backend: Backend, shape: str, signals: SignalLog) -> None:
    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:
            if shape == "pending":
                order = Order()
                session.add(order)
            else:
                (order_id,) = await _saved(
                    session, Order(status="draft" if shape == "edited" else "new"))
                order = await _get(session, Order, order_id)
                if shape == "expired":
                    await session.commit()
                if shape == "edited":
                    order.status = "new"  # an unsaved state edit: the call would flush it
            with _statements(engine) as sql, pytest.raises(sa_exc.MissingGreenlet) as info:
                order.pay(5)
            described = "Order" if shape == "pending" else "Order 1"  # no id before the INSERT
            assert str(info.value).startswith(
                f"pay() on {described}: its session belongs to an AsyncSession, whose SQL must "
                "be awaited: use `await litestate.aio.call(obj.pay, ...)`; nothing was sent")
            assert sql == []
            assert signals.names() == []
            assert await aio.call(order.pay, 5) == 50  # nothing was spoiled
            await session.commit()
        assert signals.names() == ["transition-succeeded", "transition-committed"]

    backend.run(main)


def test_an_async_transition_of_an_object_in_a_sync_session_is_an_invalid_request_error(
        backend: Backend, signals: SignalLog) -> None:
    with backend.sync_engine() as engine, Session(engine) as session:
        order = Order()
        session.add(order)
        session.commit()
        order_id = order.id
        calls: list[Callable[[], Coroutine[Any, Any, object]]] = [
            lambda: order.charge(5), lambda: aio.call(order.charge, 5),
            lambda: aio.fire(order, "charge", 5)]
        for call in calls:
            with pytest.raises(sa_exc.InvalidRequestError) as info:
                asyncio.run(call())
            assert str(info.value) == (
                "charge() of Order is an async transition, and the object is in a sync "
                "Session: use an AsyncSession, or declare it with a plain def")
        session.commit()
        assert order.status == "new"
        with engine.connect() as conn:
            assert conn.execute(sa.select(Order.status).where(Order.id == order_id)).scalar() \
                == "new"
    assert signals.names() == []


# -- in memory ----------------------------------------------------------------------------


def test_plain_objects_fire_in_memory_through_aio_call_and_async_transitions(
        frozen_clock: datetime, signals: SignalLog) -> None:
    async def main() -> None:
        lamp = Lamp()
        assert await aio.call(lamp.switch_on, "ada") == "ada"
        assert (lamp.state, lamp.switched_at) == ("on", frozen_clock)
        with pytest.raises(InvalidStateError):
            await aio.call(lamp.switch_on, "bob")
        assert await lamp.switch_off() == "dark"  # its async guard awaited
        assert lamp.state == "off"
        assert await aio.can_transition(lamp, "switch_off") is False
        assert await aio.available_transitions(lamp) == ["switch_on", "flicker"]
        fresh = Lamp()
        with pytest.raises(GatewayError, match="bulb"):
            await fresh.flicker()
        assert (fresh.state, fresh.switched_at) == ("off", None)  # restored

    asyncio.run(main())
    assert signals.names() == ["transition-succeeded", "transition-invalid",
                               "transition-succeeded", "transition-failed"]
    assert [h.sender for h in signals.heard] == [Lamp] * 4


def test_transient_mapped_objects_fire_in_memory_through_aio_call_and_async_transitions(
        frozen_clock: datetime, signals: SignalLog) -> None:
    async def main() -> None:
        # in no session: nothing to load or write (and no INSERT to apply column defaults)
        order = Order()
        assert await aio.call(order.pay, 3) == 30
        assert (order.status, order.paid_at, order.amount) == ("paid", frozen_clock, 3)
        other = Order(gateway_open=True)
        assert await other.charge(4) == "r-4"
        assert (other.status, other.charged_at, other.receipt) == (
            "charged", frozen_clock, "r-4")
        closed = Order(gateway_open=False)
        with pytest.raises(GuardError, match="guard gateway_up returned false"):
            await closed.charge(4)
        assert await aio.available_transitions(closed) == [
            "pay", "settle", "start", "bundle", "capture", "begin", "hold", "gather"]
        with pytest.raises(InvalidStateError):
            await aio.call(order.pay, 3)

    asyncio.run(main())
    assert signals.names() == ["transition-succeeded", "transition-succeeded",
                               "transition-invalid", "transition-invalid"]


# -- aio.call's own errors ----------------------------------------------------------------


BAD_CALLS: dict[str, Callable[[Any], Coroutine[Any, Any, object]]] = {
    "missing": lambda order: aio.call(order.pay),
    "too many": lambda order: aio.call(order.pay, 1, 2),
    "unknown keyword": lambda order: aio.call(order.pay, 1, cents=2),
    "async missing": lambda order: aio.call(order.charge),
    "async direct": lambda order: order.charge(amount=1, cents=2),
}


@pytest.mark.parametrize("call", BAD_CALLS.values(), ids=BAD_CALLS.keys())
@pytest.mark.parametrize("shape", ["loaded", "expired"])
def test_a_call_that_does_not_fit_the_method_is_a_type_error_before_any_sql(
        backend: Backend, shape: str, call: Callable[[Any], Coroutine[Any, Any, object]],
        signals: SignalLog) -> None:
    """As the method would raise it (tests/typing/check_aio.py: mypy refuses them too)."""

    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:
            (order_id,) = await _saved(session, Order())
            order = await _get(session, Order, order_id)
            if shape == "expired":
                await session.commit()
            with _statements(engine) as sql, pytest.raises(TypeError) as info:
                await call(order)
            assert sql == []
            assert signals.names() == []
            assert str(info.value).startswith(("Order.pay() ", "Order.charge() "))
        assert (await _row(engine, order_id)).status == "new"

    backend.run(main)


@pytest.mark.parametrize("method", [
    lambda order: order.gateway_up,  # an async method, not a transition
    lambda order: order.__repr__,
    lambda order: Order.pay,  # a transition, but of no object
    lambda order: print,
    lambda order: lambda: None,
], ids=["async method", "plain method", "unbound transition", "builtin", "lambda"])
def test_aio_call_of_anything_but_a_bound_transition_is_a_type_error(
        method: Callable[[Order], Callable[..., Any]]) -> None:
    """Raised by the call itself: no coroutine is made (none is left un-awaited)."""
    order = Order()
    with pytest.raises(TypeError, match=r"^aio\.call\(\) takes a transition of an object, as "
                                        r"in aio\.call\(order\.pay, \.\.\.\), not "):
        aio.call(method(order))  # type: ignore[unused-coroutine]  # raises: nothing to await
    assert order.status is None


# -- cancellation -------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["async body", "async succeeded receiver"])
def test_a_task_cancelled_inside_the_atomic_section_leaves_row_object_and_signals_consistent(
        backend: Backend, where: str, signals: SignalLog) -> None:
    """hold()'s body writes, then waits on an Event it never gets; or pay()'s succeeded
    receiver does. The task is cancelled there."""

    async def main(engine: AsyncEngine) -> None:
        entered, never = asyncio.Event(), asyncio.Event()

        async def stuck(sender: type, **payload: object) -> None:
            entered.set()
            await never.wait()

        async with AsyncSession(engine) as session:
            order_id, later_id = await _saved(session, Order(title="t"), Order())
            order = await _get(session, Order, order_id)
            with litestate.transition_succeeded.connected_to(stuck, sender=Order):
                task: asyncio.Task[object]
                if where == "async body":
                    task = asyncio.create_task(order.hold(entered, never))
                else:
                    task = asyncio.create_task(aio.call(order.pay, 5))
                await entered.wait()  # inside the atomic section: its writes are flushed
                assert order.status == ("held" if where == "async body" else "paid")
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert task.cancelled()
            assert signals.names()[-1] == "transition-failed"
            assert isinstance(signals.heard[-1].payload["error"], asyncio.CancelledError)
            assert signals.heard[-1].payload["event"] == ("hold" if where == "async body"
                                                          else "pay")
            if where == "async body":
                assert signals.names() == ["transition-failed"]  # no succeeded
            # the object: the old state, the row's values
            assert await _read(session, order, "status", "title", "amount", "paid_at") == (
                "new", "t", 0, None)
            assert list(await session.scalars(sa.select(OrderNote))) == []
            row = await _row(engine, order_id)  # another connection
            assert (row.status, row.title) == ("new", "t")
            await session.rollback()
            await session.commit()
            assert signals.of("transition-committed") == []
            # the session is still usable
            assert await order.charge(2) == "r-2"
            assert await aio.call((await _get(session, Order, later_id)).pay, 3) == 30
            await session.commit()
        assert [h.payload["event"] for h in signals.of("transition-committed")] == [
            "charge", "pay"]
        assert [(await _row(engine, i)).status for i in (order_id, later_id)] == [
            "charged", "paid"]
        assert await _notes(engine) == []

    backend.run(main)


@pytest.mark.parametrize("event", ["pay", "ship"], ids=["savepoint", "no savepoint"])
def test_a_task_cancelled_while_its_update_waits_on_a_row_lock_leaves_signals_and_rows_agreeing(
        pg_backend: Backend, event: str, signals: SignalLog) -> None:
    """The statement itself is cancelled (its fate unknown to the driver), after earlier
    work of the caller's in the same transaction: whatever the session then allows, the
    committed signals are exactly the writes the database kept, and the cancelled write
    is never one of them."""

    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as setup:
            order_id, earlier_id, spare_id = await _saved(
                setup, Order(status="paid" if event == "ship" else "new"), Order(), Order())
        async with AsyncSession(engine) as writer, AsyncSession(engine) as session:
            pid = await session.scalar(sa.select(sa.func.pg_backend_pid()))
            assert isinstance(pid, int)
            mine = await _get(session, Order, order_id)
            earlier = await _get(session, Order, earlier_id)
            assert await aio.call(earlier.pay, 1) == 10  # the caller's earlier work
            theirs = await _get(writer, Order, order_id)
            theirs.title = "writer"
            await writer.flush()  # holds the row lock: our UPDATE waits on it
            task = asyncio.create_task(aio.call(mine.pay, 5) if event == "pay"
                                       else aio.call(mine.ship))
            await _waiting_on_a_lock(engine, pid)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert signals.names()[-1] == "transition-failed"
            assert isinstance(signals.heard[-1].payload["error"], asyncio.CancelledError)
            await writer.commit()
            try:
                await session.commit()
            except sa_exc.SQLAlchemyError:  # the connection was invalidated: nothing kept
                await session.rollback()
            await aio.call((await _get(session, Order, spare_id)).start, "w")  # still usable
            await session.commit()
        row, first = await _row(engine, order_id), await _row(engine, earlier_id)
        assert (row.status, row.title, row.amount) == (
            "new" if event == "pay" else "paid", "writer", 0)  # the cancelled write is not kept
        committed = [h.payload["record_id"] for h in signals.of("transition-committed")]
        assert committed == [*([earlier_id] if first.status == "paid" else []), spare_id]
        assert (await _row(engine, spare_id)).status == "started"

    pg_backend.run(main)


# -- concurrency (PostgreSQL) -------------------------------------------------------------


def test_eight_tasks_racing_on_two_hundred_rows_transition_each_row_exactly_once(
        pg_backend: Backend) -> None:
    """Every task loads every row, waits for the others to have loaded them, then fires
    each row's start (even tasks through aio.call, odd ones through the async begin):
    every attempt either wins or is a conflict, and each row is won once."""
    rows, workers = 200, 8
    committed: list[tuple[int, str]] = []

    async def on_commit(sender: type, *, record_id: int, args: tuple[str], **extra: object
                        ) -> None:
        await asyncio.sleep(0)
        committed.append((record_id, args[0]))

    async def main(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:
            ids = await _saved(session, *(Order(title=f"row {n}") for n in range(rows)))
        loaded = asyncio.Barrier(workers)

        async def work(i: int) -> Counter[str]:
            order = ids[:]
            random.Random(i).shuffle(order)
            tally: Counter[str] = Counter()
            # expire_on_commit=False: each commit leaves the other rows as this task read them
            async with AsyncSession(engine, expire_on_commit=False) as session:
                mine = {o.id: o for o in await session.scalars(sa.select(Order))}
                await session.commit()
                await loaded.wait()
                for order_id in order:
                    try:
                        if i % 2:
                            await mine[order_id].begin(f"w{i}")
                        else:
                            await aio.call(mine[order_id].start, f"w{i}")
                    except ConflictError:
                        tally["conflict"] += 1
                        continue
                    await session.commit()
                    tally["ok"] += 1
            return tally

        tasks = [asyncio.create_task(work(i)) for i in range(workers)]
        with recording() as signals, \
                litestate.transition_committed.connected_to(on_commit, sender=Order):
            tallies = await asyncio.gather(*tasks)
        assert not [t for t in tasks if t.cancelled()]
        total: Counter[str] = sum(tallies, Counter())
        assert total == {"ok": rows, "conflict": rows * (workers - 1)}
        assert sum(total.values()) == rows * workers  # every attempt accounted for
        assert len(signals.of("transition-succeeded")) == rows
        assert len(signals.of("transition-committed")) == rows
        assert sorted(record_id for record_id, _ in committed) == sorted(ids)
        async with engine.connect() as conn:
            result = await conn.execute(sa.select(Order.id, Order.worker)
                                        .where(Order.status == "started"))
            found = {row.id: row.worker for row in result}
        assert found == dict(committed)  # each row's worker is the one whose commit was sent

    pg_backend.run(main)


# -- imports ------------------------------------------------------------------------------


def test_importing_litestate_aio_imports_nothing_async() -> None:
    """Beyond what SQLAlchemy itself imports (SQLAlchemy 2.0 imports greenlet; 2.1 does not)."""
    code = (
        "import sys, sqlalchemy, sqlalchemy.orm\n"
        "before = set(sys.modules)\n"
        "import litestate, litestate.aio\n"
        "print(sorted(m for m in set(sys.modules) - before\n"
        "             if m.split('.')[0] == 'greenlet' or m.startswith('sqlalchemy.ext.asyncio')\n"
        "             or m in ('aiosqlite', 'asyncpg', 'psycopg')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
