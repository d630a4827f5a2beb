"""litestate.aio where an attacker broke it: two tasks on one session, receivers that
return a coroutine, a failed receiver's context, aio.fire's result, a cancelled
committed receiver. On aiosqlite (a file); the rules are the bridge's, not a driver's."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import litestate
from litestate import aio, state_column, transition
from litestate.sqlite import enable_savepoints


class EdgeBase(DeclarativeBase):
    pass


@state_column("status")
class Job(EdgeBase):
    __tablename__ = "aio_edge_jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="new")
    note: Mapped[str] = mapped_column(sa.String(20), default="")

    @transition(frm="new", to="done")
    async def run(self, gate: asyncio.Event | None = None, fail: bool = False,
                  entered: asyncio.Event | None = None) -> str:
        if entered is not None:
            entered.set()
        if gate is not None:
            await gate.wait()
        self.note = "ran"
        if fail:
            raise ValueError("the body failed")
        return "ok"

    @transition(frm="new", to="done")
    def finish(self) -> None:
        pass

    @transition(frm="new", to="read")
    async def read_note(self, fail: bool = False) -> str:
        await asyncio.sleep(0)
        if fail:
            raise ValueError("the body failed")
        return self.note  # a column, perhaps expired: loaded before the body runs

    @transition(frm="new", to="handed")
    def hand_back(self, value: Any) -> Any:
        return value


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.fixture
def url(tmp_path: Path) -> str:
    sync = sa.create_engine(f"sqlite:///{tmp_path / 'edges.db'}")
    EdgeBase.metadata.create_all(sync)
    sync.dispose()
    return f"sqlite+aiosqlite:///{tmp_path / 'edges.db'}"


def engine_for(url: str) -> AsyncEngine:
    return enable_savepoints(create_async_engine(url))


async def jobs(engine: AsyncEngine, count: int) -> list[int]:
    async with AsyncSession(engine, expire_on_commit=False) as session:
        made = [Job() for _ in range(count)]
        session.add_all(made)
        await session.commit()
        return [job.id for job in made]


async def rows(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        found = await conn.execute(sa.select(Job.id, Job.status, Job.note).order_by(Job.id))
        return [tuple(row) for row in found]


class Heard:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.errors: list[BaseException] = []

    def receiver(self, name: str) -> Callable[..., None]:
        def receive(_sender: Any, **payload: Any) -> None:
            self.names.append(f"{name} {payload['event']}")
        return receive


@pytest.fixture
def heard() -> Iterator[Heard]:
    log = Heard()
    receivers = {name: log.receiver(name) for name in ("succeeded", "failed", "committed")}
    litestate.transition_succeeded.connect(receivers["succeeded"])
    litestate.transition_failed.connect(receivers["failed"])
    litestate.transition_committed.connect(receivers["committed"])
    yield log
    litestate.transition_succeeded.disconnect(receivers["succeeded"])
    litestate.transition_failed.disconnect(receivers["failed"])
    litestate.transition_committed.disconnect(receivers["committed"])


@pytest.mark.parametrize("second", ["async", "sync"])
def test_a_second_task_on_one_session_is_refused_before_any_sql(
        url: str, heard: Heard, second: str) -> None:
    """The first task's SAVEPOINT is open while it awaits; the second's transition would
    write in it (and be undone with it) or close it: refused, nothing sent."""

    async def main() -> tuple[list[Any], list[tuple[Any, ...]]]:
        engine = engine_for(url)
        first_id, second_id = await jobs(engine, 2)
        async with AsyncSession(engine) as session:
            first, other = await session.get(Job, first_id), await session.get(Job, second_id)
            assert first is not None
            assert other is not None
            gate, entered = asyncio.Event(), asyncio.Event()
            running = asyncio.create_task(first.run(gate, fail=True, entered=entered))
            await entered.wait()  # the first task is inside its section now
            if second == "async":
                outcome: list[Any] = [await asyncio.gather(other.run(), return_exceptions=True)]
            else:
                outcome = [await asyncio.gather(aio.call(other.finish),
                                                return_exceptions=True)]
            gate.set()
            outcome.append(await asyncio.gather(running, return_exceptions=True))
            await session.commit()
        found = await rows(engine)
        await engine.dispose()
        return outcome, found

    outcome, found = run(main())
    (refused,), (failed,) = outcome
    assert isinstance(refused, sa.exc.InvalidRequestError)
    assert "another task is running a transition on this AsyncSession" in str(refused)
    assert isinstance(failed, ValueError)
    assert heard.names == ["failed run"]
    assert [status for _, status, _ in found] == ["new", "new"]


def test_one_task_may_nest_transitions_and_then_others_may_use_the_session(
        url: str, heard: Heard) -> None:
    async def main() -> list[tuple[Any, ...]]:
        engine = engine_for(url)
        ids = await jobs(engine, 3)
        async with AsyncSession(engine) as session:
            loaded = [await session.get(Job, i) for i in ids]
            assert None not in loaded
            first, second, third = (job for job in loaded if job is not None)
            assert await first.run() == "ok"
            await asyncio.create_task(aio.call(second.finish))  # another task, later
            await third.run()
            await session.commit()
        found = await rows(engine)
        await engine.dispose()
        return found

    assert [status for _, status, _ in run(main())] == ["done"] * 3
    assert heard.names.count("committed run") == 2


class AsyncCallable:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def __call__(self, _sender: Any, **payload: Any) -> None:
        await asyncio.sleep(0)
        self.log.append(payload["event"])


async def _append(log: list[str], _sender: Any, **payload: Any) -> None:
    await asyncio.sleep(0)
    log.append(payload["event"])


def _receivers(log: list[str]) -> dict[str, Callable[..., Any]]:
    def returns_a_coroutine(sender: Any, **payload: Any) -> Awaitable[None]:
        return _append(log, sender, **payload)

    return {"object": AsyncCallable(log), "lambda": returns_a_coroutine,
            "partial": functools.partial(_append, log)}


@pytest.mark.parametrize("kind", ["object", "lambda", "partial"])
@pytest.mark.parametrize("signal", ["succeeded", "committed"])
def test_a_receiver_returning_a_coroutine_is_awaited_under_asyncio(
        url: str, kind: str, signal: str) -> None:
    log: list[str] = []
    receiver = _receivers(log)[kind]
    sent = getattr(litestate, f"transition_{signal}")
    sent.connect(receiver, weak=False)

    async def main() -> None:
        engine = engine_for(url)
        (job_id,) = await jobs(engine, 1)
        async with AsyncSession(engine) as session:
            job = await session.get(Job, job_id)
            assert job is not None
            await job.run()
            await session.commit()
        await engine.dispose()

    try:
        run(main())
    finally:
        sent.disconnect(receiver)
    assert log == ["run"]


@pytest.mark.parametrize("kind", ["object", "lambda"])
def test_a_receiver_returning_a_coroutine_under_a_sync_session_is_an_error(
        url: str, kind: str) -> None:
    log: list[str] = []
    receiver = _receivers(log)[kind]
    litestate.transition_succeeded.connect(receiver, weak=False)
    engine = sa.create_engine(url.replace("+aiosqlite", ""))
    try:
        with Session(engine) as session:
            job = Job()
            session.add(job)
            session.commit()
            with pytest.raises(TypeError, match=r"async receiver .* outside asyncio"):
                job.finish()
            session.commit()
            assert job.status == "new"
    finally:
        litestate.transition_succeeded.disconnect(receiver)
        engine.dispose()
    assert log == []


def test_an_async_failed_receiver_that_raises_keeps_the_bodys_error_as_its_context(
        url: str) -> None:
    async def failing(_sender: Any, **_payload: Any) -> None:
        await asyncio.sleep(0)
        raise LookupError("the receiver failed")

    litestate.transition_failed.connect(failing)

    async def main() -> None:
        engine = engine_for(url)
        (job_id,) = await jobs(engine, 1)
        try:
            async with AsyncSession(engine) as session:
                job = await session.get(Job, job_id)
                assert job is not None
                await job.run(fail=True)
        finally:
            await engine.dispose()

    try:
        with pytest.raises(LookupError) as info:
            run(main())
    finally:
        litestate.transition_failed.disconnect(failing)
    assert isinstance(info.value.__context__, ValueError)
    assert str(info.value.__context__) == "the body failed"


def test_aio_fire_returns_what_a_sync_transition_returns_even_a_coroutine(url: str) -> None:
    async def notify() -> str:
        return "notified"

    async def main() -> tuple[Any, Any]:
        engine = engine_for(url)
        ids = await jobs(engine, 2)
        async with AsyncSession(engine) as session:
            first, second = await session.get(Job, ids[0]), await session.get(Job, ids[1])
            handed = notify()
            by_name = await aio.fire(first, "hand_back", handed)
            assert by_name is handed
            handed.close()
            ran = await aio.fire(second, "run")
            await session.commit()
        await engine.dispose()
        return by_name, ran

    _, ran = run(main())
    assert ran == "ok"


def test_a_cancelled_committed_receiver_does_not_stop_the_others(url: str) -> None:
    heard: list[int] = []
    gate = asyncio.Event()

    async def slow(_sender: Any, *, record_id: int, **_payload: Any) -> None:
        heard.append(record_id)
        if len(heard) == 1:
            await gate.wait()  # cancelled here

    litestate.transition_committed.connect(slow)

    async def main() -> None:
        engine = engine_for(url)
        ids = await jobs(engine, 2)
        async with AsyncSession(engine) as session:
            for job_id in ids:
                job = await session.get(Job, job_id)
                assert job is not None
                await job.run()
            committing = asyncio.create_task(session.commit())
            while not heard:
                await asyncio.sleep(0)
            committing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await committing
        await engine.dispose()

    try:
        run(main())
    finally:
        litestate.transition_committed.disconnect(slow)
    assert sorted(heard) == [1, 2]


def test_aiosqlite_without_enable_savepoints_keeps_the_callers_transaction(url: str) -> None:
    """pysqlite's legacy transaction handling (which aiosqlite wraps) sends no BEGIN
    before a SAVEPOINT, whose RELEASE would then commit: litestate begins one first."""

    async def main() -> list[tuple[Any, ...]]:
        engine = create_async_engine(url)  # no enable_savepoints
        (job_id,) = await jobs(engine, 1)
        async with AsyncSession(engine) as session:
            job = await session.get(Job, job_id)
            assert job is not None
            assert await job.run() == "ok"  # a body: SAVEPOINT ... RELEASE
            await session.rollback()
        found = await rows(engine)
        await engine.dispose()
        return found

    assert run(main()) == [(1, "new", "")]


def test_an_async_body_reads_columns_a_failed_transition_left_expired(url: str) -> None:
    async def main() -> str:
        engine = engine_for(url)
        (job_id,) = await jobs(engine, 1)
        try:
            async with AsyncSession(engine) as session:
                job = await session.get(Job, job_id)
                assert job is not None
                with pytest.raises(ValueError, match="the body failed"):
                    await job.read_note(fail=True)  # the rollback expires the columns
                return await job.read_note()
        finally:
            await engine.dispose()

    assert run(main()) == ""


def test_an_async_receivers_own_chained_error_keeps_its_context(url: str) -> None:
    async def failing(_sender: Any, **_payload: Any) -> None:
        await asyncio.sleep(0)
        try:
            raise KeyError("inner")
        except KeyError:
            raise LookupError("the receiver failed") from None

    litestate.transition_failed.connect(failing)

    async def main() -> None:
        engine = engine_for(url)
        (job_id,) = await jobs(engine, 1)
        try:
            async with AsyncSession(engine) as session:
                job = await session.get(Job, job_id)
                assert job is not None
                await job.run(fail=True)
        finally:
            await engine.dispose()

    try:
        with pytest.raises(LookupError) as info:
            run(main())
    finally:
        litestate.transition_failed.disconnect(failing)
    assert isinstance(info.value.__context__, KeyError)
    assert info.value.__suppress_context__
