"""litestate.is_retryable and litestate.retrying: which failures a new transaction may not
meet, read from real errors of real drivers; and the retry loop's rules.

PostgreSQL's errors are the server's own, raised with the SQLSTATE under test (``RAISE
... USING ERRCODE``), through psycopg (sync and async) and asyncpg; tests/test_faults.py
provokes the main ones for real (deadlock, serialization failure, lock timeout, a killed
connection, a restart). MariaDB's are the server's own too, through PyMySQL: a real
deadlock, lock wait timeout, connection lost after ``KILL`` and duplicate key, and the
other numbers raised with ``SIGNAL ... SET MYSQL_ERRNO``; tests/test_faults.py provokes
them in transitions and retries a real deadlock's victim.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

import litestate
from litestate import ConflictError, GuardError, InvalidStateError, is_retryable, retrying
from litestate.retry import Retrying
from litestate.sqlite import enable_savepoints
from tests.conftest import load, waiting_on_a_lock
from tests.models import Account, Base, Todo
from tests.pgserver import free_port

#: PyMySQL's OperationalError (PyMySQL ships no type hints)
PyMySQLError: Any = importlib.import_module("pymysql.err").OperationalError

RETRYABLE_SQLSTATES = ["40001", "40P01", "55P03", "57P01", "57P02", "57P03", "08000",
                       "08003", "08006"]
#: unique and foreign-key violations, division by zero, no such table, a statement in an
#: aborted transaction, a cancelled statement (a statement_timeout), a RAISE of your own
BUG_SQLSTATES = ["23505", "23503", "22012", "42P01", "25P02", "57014", "P0001"]


def raising(sqlstate: str) -> str:
    return f"DO $$ BEGIN RAISE EXCEPTION 'fault' USING ERRCODE = '{sqlstate}'; END $$"


def classify_sync(url: str) -> dict[str, bool]:
    engine = sa.create_engine(url)
    found: dict[str, bool] = {}
    try:
        with engine.connect() as conn:
            for sqlstate in RETRYABLE_SQLSTATES + BUG_SQLSTATES:
                with pytest.raises(sa_exc.DBAPIError) as info:
                    conn.exec_driver_sql(raising(sqlstate))
                conn.rollback()
                found[sqlstate] = is_retryable(info.value)
                assert info.value.orig is not None
                assert is_retryable(info.value.orig) == found[sqlstate]  # the driver's own
    finally:
        engine.dispose()
    return found


async def classify_async(url: str) -> dict[str, bool]:
    engine = create_async_engine(url)
    found: dict[str, bool] = {}
    try:
        async with engine.connect() as conn:
            for sqlstate in RETRYABLE_SQLSTATES + BUG_SQLSTATES:
                with pytest.raises(sa_exc.DBAPIError) as info:
                    await conn.exec_driver_sql(raising(sqlstate))
                await conn.rollback()
                found[sqlstate] = is_retryable(info.value)
                assert info.value.orig is not None
                assert is_retryable(info.value.orig) == found[sqlstate]
    finally:
        await engine.dispose()
    return found


EXPECTED = {**dict.fromkeys(RETRYABLE_SQLSTATES, True), **dict.fromkeys(BUG_SQLSTATES, False)}


@pytest.mark.postgres
@pytest.mark.parametrize("driver", ["psycopg", "psycopg-async", "asyncpg"])
def test_postgresql_errors_are_classified_by_sqlstate(postgres_url: str, driver: str) -> None:
    if driver == "psycopg":
        found = classify_sync(postgres_url)
    else:
        url = postgres_url.replace("+psycopg", "+asyncpg") if driver == "asyncpg" \
            else postgres_url
        found = asyncio.run(classify_async(url))
    assert found == EXPECTED


@pytest.mark.postgres
def test_a_refused_psycopg_connection_is_retryable() -> None:
    """The server is down (a restart): psycopg's OperationalError carries no SQLSTATE."""
    engine = sa.create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x")
    with pytest.raises(sa_exc.OperationalError) as info:
        engine.connect()
    assert not info.value.connection_invalidated
    assert is_retryable(info.value)
    engine.dispose()


@pytest.mark.postgres
def test_a_psycopg_error_of_the_client_without_a_sqlstate_is_a_bug(pg: sa.Engine) -> None:
    """Only psycopg's OperationalError without a SQLSTATE is the connection's failure; a
    ProgrammingError psycopg raises before sending anything is the code's."""
    with pg.connect() as conn, pytest.raises(sa_exc.ProgrammingError) as info:
        conn.exec_driver_sql("SELECT %s, %s", (1,))
    assert getattr(info.value.orig, "sqlstate", "?") is None
    assert not is_retryable(info.value)


def test_a_refused_asyncpg_connection_is_retryable() -> None:
    """asyncpg lets the socket's ConnectionRefusedError through, unwrapped."""

    async def connect() -> None:
        engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x")
        try:
            async with engine.connect():
                pass
        finally:
            await engine.dispose()

    with pytest.raises(ConnectionRefusedError) as info:
        asyncio.run(connect())
    assert is_retryable(info.value)


# -- MariaDB ---------------------------------------------------------------------------------


def maria_error(conn: sa.Connection, sql: str, *args: Any) -> sa_exc.DBAPIError:
    with pytest.raises(sa_exc.DBAPIError) as info:
        conn.exec_driver_sql(sql, *args)
    conn.rollback()
    return info.value


def killed(engine: sa.Engine, conn: sa.Connection) -> None:
    """End ``conn`` from another connection; return once the server has let it go."""
    pid = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one()
    with engine.connect() as other:
        other.exec_driver_sql(f"KILL {int(pid)}")
        while other.exec_driver_sql("SELECT COUNT(*) FROM information_schema.processlist "
                                    f"WHERE id = {int(pid)}").scalar_one():
            pass  # asking the server, until the connection is gone


def deadlock(engine: sa.Engine) -> sa_exc.DBAPIError:
    """Two connections lock two rows in opposite order: InnoDB's 1213, for one of them."""
    table = "retry_rows"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
        conn.exec_driver_sql(f"INSERT INTO {table} VALUES (1), (2)")
    lock = f"SELECT id FROM {table} WHERE id = %s FOR UPDATE"
    errors: list[sa_exc.DBAPIError] = []
    try:
        with engine.connect() as first, engine.connect() as second:
            first.exec_driver_sql(lock, (1,))
            second.exec_driver_sql(lock, (2,))
            pid = first.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one()

            def wait() -> None:
                try:
                    first.exec_driver_sql(lock, (2,))
                except sa_exc.DBAPIError as exc:
                    errors.append(exc)
                first.rollback()

            thread = threading.Thread(target=wait)
            thread.start()
            waiting_on_a_lock(engine, pid)
            try:
                second.exec_driver_sql(lock, (1,))
            except sa_exc.DBAPIError as exc:
                errors.append(exc)
            second.rollback()
            thread.join(timeout=60)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE {table}")
    [error] = errors
    return error


#: Server error numbers raised by SIGNAL: record changed (snapshot isolation), killed,
#: shutdown, NOWAIT, inactivity; and bugs: no such table, syntax, a foreign key.
SIGNALLED = {1020: True, 1927: True, 1053: True, 3572: True, 4031: True,
             1146: False, 1064: False, 1452: False, 1644: False}


@pytest.mark.mariadb
def test_mariadb_errors_are_classified_by_number(maria: sa.Engine) -> None:
    found: dict[object, bool] = {}
    errors: list[sa_exc.DBAPIError] = [deadlock(maria)]
    with maria.connect() as conn:
        conn.exec_driver_sql("CREATE TEMPORARY TABLE dup (id INT PRIMARY KEY)")
        conn.exec_driver_sql("INSERT INTO dup VALUES (1)")
        conn.commit()
        errors.append(maria_error(conn, "INSERT INTO dup VALUES (1)"))  # 1062
        for number in SIGNALLED:
            errors.append(maria_error(conn, "SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = "
                                            f"{number}, MESSAGE_TEXT = 'fault'"))
    with maria.begin() as conn:  # a real lock wait timeout: 0 s, InnoDB gives up at once
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS retry_held (id INT PRIMARY KEY)")
        conn.exec_driver_sql("INSERT INTO retry_held VALUES (1)")
    try:
        with maria.connect() as holder, maria.connect() as conn:
            holder.exec_driver_sql("SELECT id FROM retry_held FOR UPDATE")
            conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 0")
            errors.append(maria_error(conn, "UPDATE retry_held SET id = 2"))
            conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = DEFAULT")
            holder.rollback()
    finally:
        with maria.begin() as conn:
            conn.exec_driver_sql("DROP TABLE retry_held")
    for size in (1, 4_000_000):  # read back, or written into a closed socket
        conn = maria.connect()
        killed(maria, conn)
        errors.append(maria_error(conn, "SELECT %s", ("x" * size,)))
        assert errors[-1].connection_invalidated
        conn.close()
    for error in errors:
        assert error.orig is not None
        number = error.orig.args[0]
        found[number] = is_retryable(error)
        assert is_retryable(error.orig) == found[number]  # the driver's own
    assert found == {1213: True, 1062: False, **SIGNALLED, 1205: True, 2013: True,
                     2006: True}


def test_a_refused_pymysql_connection_is_retryable() -> None:
    """Nothing listens (a server restarting): PyMySQL's 2003, can't connect."""
    engine = sa.create_engine(f"mysql+pymysql://x:y@127.0.0.1:{free_port()}/x")
    with pytest.raises(sa_exc.OperationalError) as info:
        engine.connect()
    assert info.value.orig is not None
    assert info.value.orig.args[0] == 2003
    assert is_retryable(info.value)
    engine.dispose()


# -- SQLite ----------------------------------------------------------------------------------


@contextlib.contextmanager
def sqlite_busy(path: Path) -> Iterator[sa_exc.OperationalError]:
    """A real "database is locked": another connection holds the write lock."""
    engine = enable_savepoints(sa.create_engine(f"sqlite:///{path}",
                                                connect_args={"timeout": 0}),
                               begin="IMMEDIATE")
    try:
        with engine.connect() as holder:
            holder.exec_driver_sql("SELECT 1")  # BEGIN IMMEDIATE: the write lock
            with pytest.raises(sa_exc.OperationalError) as info, engine.connect() as other:
                other.exec_driver_sql("SELECT 1")
            yield info.value
    finally:
        engine.dispose()


def test_sqlite_busy_is_retryable(tmp_path: Path) -> None:
    with sqlite_busy(tmp_path / "busy.db") as error:
        assert isinstance(error.orig, sqlite3.OperationalError)
        assert error.orig.sqlite_errorcode == sqlite3.SQLITE_BUSY
        assert is_retryable(error)
        assert is_retryable(error.orig)


def test_aiosqlite_busy_is_retryable(tmp_path: Path) -> None:
    async def busy() -> BaseException:
        engine = enable_savepoints(create_async_engine(
            f"sqlite+aiosqlite:///{tmp_path / 'busy.db'}", connect_args={"timeout": 0}),
            begin="IMMEDIATE")
        try:
            async with engine.connect() as holder:
                await holder.exec_driver_sql("SELECT 1")
                async with engine.connect() as other:
                    try:
                        await other.exec_driver_sql("SELECT 1")
                    except sa_exc.OperationalError as exc:
                        return exc
        finally:
            await engine.dispose()
        raise AssertionError("no busy error")

    error = asyncio.run(busy())
    assert is_retryable(error)


def test_sqlite_bugs_are_not_retryable(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'bugs.db'}")
    table = sa.Table("t", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("day", sa.Date))
    table.create(engine)
    try:
        with engine.connect() as conn:
            conn.execute(table.insert(), {"id": 1})
            with pytest.raises(sa_exc.IntegrityError) as duplicate:
                conn.execute(table.insert(), {"id": 1})
            with pytest.raises(sa_exc.OperationalError, match="no such table") as missing:
                conn.exec_driver_sql("SELECT * FROM nowhere")
            with pytest.raises(sa_exc.StatementError) as bad_value:  # wraps a TypeError
                conn.execute(table.insert(), {"id": 2, "day": "2026-01-01"})
        assert isinstance(bad_value.value.orig, TypeError)
        for error in (duplicate.value, missing.value, bad_value.value):
            assert not is_retryable(error), error
    finally:
        engine.dispose()


# -- litestate's refusals, on every backend ----------------------------------------------------


def test_a_lost_race_is_retryable_and_the_other_refusals_are_not(
        new_session: Callable[..., Session]) -> None:
    setup = new_session()
    todo, account = Todo(), Account(balance=5)
    setup.add_all([todo, account])
    setup.commit()
    todo_id, account_id = todo.id, account.id
    setup.close()  # its read would hold SQLite's lock
    first, second = new_session(expire_on_commit=False), new_session(expire_on_commit=False)
    mine, theirs = load(first, Todo, todo_id), load(second, Todo, todo_id)
    first.commit()
    second.commit()
    mine.start("ada")
    first.commit()
    with pytest.raises(ConflictError) as conflict:
        theirs.start("bob")
    second.rollback()
    with pytest.raises(InvalidStateError) as invalid:
        theirs.start("bob")  # the retry reads the row: started already, and refused
    second.rollback()
    with pytest.raises(GuardError) as guard:
        load(second, Account, account_id).freeze()
    assert is_retryable(conflict.value)
    assert not is_retryable(invalid.value)
    assert not is_retryable(guard.value)


def test_a_refusal_raised_from_a_transient_error_is_still_a_refusal(tmp_path: Path) -> None:
    with sqlite_busy(tmp_path / "busy.db") as busy:
        refusal = InvalidStateError(None, "start", "doing", "doing", "status", "invalid")
        refusal.__cause__ = busy
        assert not is_retryable(refusal)


# -- the chain ---------------------------------------------------------------------------------


def test_the_chain_is_read_through_causes_and_database_contexts(tmp_path: Path) -> None:
    with sqlite_busy(tmp_path / "busy.db") as busy:
        wrapped = RuntimeError("job 7 failed")
        wrapped.__cause__ = busy  # `raise RuntimeError(...) from busy`
        assert is_retryable(wrapped)

        rollback_failed = sa_exc.InvalidRequestError("ROLLBACK TO SAVEPOINT failed")
        rollback_failed.__context__ = busy  # a database error while handling one
        assert is_retryable(rollback_failed)

        handler_bug = NameError("logger")
        handler_bug.__context__ = busy  # the code's own error, in an except block
        assert not is_retryable(handler_bug)

        hidden = sa_exc.InvalidRequestError("raise ... from None")
        hidden.__context__, hidden.__suppress_context__ = busy, True
        assert not is_retryable(hidden)

    looped = ValueError("a")
    looped.__cause__ = ValueError("b")
    looped.__cause__.__cause__ = looped
    assert not is_retryable(looped)


def test_a_drivers_own_error_raised_while_handling_a_busy_one_is_its_consequence(
        tmp_path: Path) -> None:
    """Without SQLAlchemy in between (a raw DB-API connection): the driver's failed
    ROLLBACK carries the busy error as its context."""
    with sqlite_busy(tmp_path / "busy.db") as busy:
        assert isinstance(busy.orig, sqlite3.OperationalError)
        rollback_failed = sqlite3.OperationalError("cannot rollback - no transaction is active")
        rollback_failed.__context__ = busy.orig
        assert is_retryable(rollback_failed)


def test_only_sqlalchemys_statement_error_is_read_through_orig(tmp_path: Path) -> None:
    """``.orig`` is SQLAlchemy's wrapped driver error; another exception's attribute of
    that name (here a job's record of its last failure) is nobody's chain."""
    with sqlite_busy(tmp_path / "busy.db") as busy:
        assert busy.orig is not None
        unchained = sa_exc.OperationalError("BEGIN IMMEDIATE", None, busy.orig)
        assert unchained.__cause__ is None  # made, not raised from the driver's error
        assert is_retryable(unchained)

        class JobFailed(Exception):
            def __init__(self, orig: BaseException) -> None:
                super().__init__("job failed")
                self.orig = orig

        assert not is_retryable(JobFailed(busy))


def test_a_session_used_after_an_ignored_error_is_a_bug(tmp_path: Path) -> None:
    """PendingRollbackError: the caller went on after a failure without rollback()."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'pending.db'}")
    Base.metadata.create_all(engine)
    try:
        with Session(engine) as session:
            session.add_all([Todo(id=1), Todo(id=1)])
            with pytest.raises(sa_exc.IntegrityError):
                session.flush()
            with pytest.raises(sa_exc.PendingRollbackError) as info:
                session.execute(sa.select(Todo))
        assert not is_retryable(info.value)
    finally:
        engine.dispose()


@pytest.mark.parametrize("error", [
    ConnectionResetError(104, "Connection reset by peer"), BrokenPipeError(),
    sa_exc.DisconnectionError("pre-ping: the connection was closed"),
    sa_exc.InterfaceError("SELECT 1", None, Exception("connection already closed"),
                          connection_invalidated=True),
    # the numbers no error of the suite's MariaDB gives through PyMySQL: a Unix socket's
    # refusal (mysqlclient's), a refusal without the OSError PyMySQL chains to its 2003
    # (mysqlclient's), a reconnect's lost connection
    PyMySQLError(2002, "Can't connect to local server through socket"),
    PyMySQLError(2003, "Can't connect to server on '127.0.0.1'"),
    PyMySQLError(2055, "Lost connection to server at 'reading'"),
], ids=lambda error: f"{type(error).__name__}{error.args[:1]}")
def test_network_failures_are_retryable(error: BaseException) -> None:
    assert is_retryable(error)


@pytest.mark.parametrize("error", [
    TypeError("start() missing 1 required positional argument"), ValueError(),
    KeyboardInterrupt(), TimeoutError(), sa_exc.TimeoutError("QueuePool limit reached"),
    litestate.DeclarationError("bad"),
], ids=type)
def test_other_errors_are_not(error: BaseException) -> None:
    assert not is_retryable(error)


# -- retrying ----------------------------------------------------------------------------------


class Flaky:
    """A unit of work that fails ``failures`` times with ``error``, then returns."""

    def __init__(self, failures: int, error: Callable[[], BaseException]) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self, value: int = 1) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error()
        return value * 10


def run(policy: Retrying, work: Callable[[], object]) -> None:
    """The loop a worker writes, around ``work``."""
    for attempt in policy:
        with attempt:
            work()


def reset() -> BaseException:
    return ConnectionResetError("reset")


def test_retrying_returns_after_the_first_success() -> None:
    work = Flaky(0, reset)
    seen: list[tuple[int, BaseException | None]] = []
    for attempt in retrying(attempts=3, backoff=0):
        with attempt:
            seen.append((attempt.number, attempt.previous))
            work()
    assert seen == [(1, None)]


def test_retrying_tells_each_attempt_what_ended_the_one_before() -> None:
    errors: list[BaseException] = []

    def fail() -> BaseException:
        errors.append(ConnectionResetError(len(errors)))
        return errors[-1]

    work = Flaky(2, fail)
    seen: list[tuple[int, BaseException | None]] = []
    for attempt in retrying(attempts=3, backoff=0):
        with attempt:
            seen.append((attempt.number, attempt.previous))
            work()
    assert seen == [(1, None), (2, errors[0]), (3, errors[1])]


def test_retrying_reraises_the_last_retryable_error_as_it_is() -> None:
    errors: list[BaseException] = []

    def fail() -> BaseException:
        errors.append(ConnectionResetError())
        return errors[-1]

    work = Flaky(5, fail)
    with pytest.raises(ConnectionResetError) as info:
        run(retrying(attempts=3, backoff=0), work)
    assert (work.calls, info.value) == (3, errors[2])


@pytest.mark.parametrize("error", [TypeError, KeyboardInterrupt])
def test_retrying_raises_anything_else_at_once(error: type[BaseException]) -> None:
    work = Flaky(1, error)
    with pytest.raises(error):
        run(retrying(attempts=3, backoff=0), work)
    assert work.calls == 1


def test_retrying_asks_retry_on() -> None:
    asked: list[BaseException] = []

    def only_value_errors(error: BaseException) -> bool:
        asked.append(error)
        return isinstance(error, ValueError)

    work = Flaky(1, ValueError)
    policy = retrying(attempts=2, backoff=0, retry_on=only_value_errors)
    run(policy, work)
    assert (work.calls, len(asked)) == (2, 1)
    with pytest.raises(ConnectionResetError):
        run(policy, Flaky(1, reset))


def test_an_attempt_must_run_as_a_with_block() -> None:
    with pytest.raises(RuntimeError, match="`with attempt:`"):
        for _attempt in retrying(attempts=2):
            pass


def test_the_backoff_is_exponential_with_jitter_or_yours() -> None:
    default = retrying()
    for retry in (1, 2, 3, 4):
        assert all(0 <= default.delay(retry) <= 0.05 * 2 ** (retry - 1) for _ in range(50))
    assert retrying(backoff=0).delay(3) == 0
    assert retrying(backoff=lambda n: n / 10).delay(3) == 0.3


def test_retrying_sleeps_between_attempts() -> None:
    asked: list[int] = []

    def backoff(retry: int) -> float:
        asked.append(retry)
        return 0.001

    work = Flaky(2, reset)
    for attempt in retrying(attempts=3, backoff=backoff):
        with attempt:
            work()
    assert asked == [1, 2]


def test_retrying_waits_the_backoff_between_attempts() -> None:
    work = Flaky(2, reset)
    started = time.monotonic()
    for attempt in retrying(attempts=3, backoff=lambda retry: 0.05):
        with attempt:
            work()
    assert time.monotonic() - started >= 0.1  # two waits of 50 ms, at least


def test_async_retrying_asks_the_backoff_before_each_retry_and_waits_it() -> None:
    asked: list[int] = []

    def backoff(retry: int) -> float:
        asked.append(retry)
        return 0.05

    async def loop() -> float:
        work = Flaky(2, reset)
        started = time.monotonic()
        async for attempt in retrying(attempts=3, backoff=backoff):
            with attempt:
                work()
        return time.monotonic() - started

    assert asyncio.run(loop()) >= 0.1
    assert asked == [1, 2]


def test_one_attempt_is_a_loop_without_retries() -> None:
    work = Flaky(1, reset)
    with pytest.raises(ConnectionResetError):
        run(retrying(attempts=1), work)
    assert work.calls == 1


def test_an_attempt_is_its_own_with_target() -> None:
    for attempt in retrying(attempts=1):
        with attempt as entered:
            assert entered is attempt


@pytest.mark.parametrize(("options", "message"), [
    ({"attempts": 0}, "attempts=0"), ({"attempts": True}, "attempts=True"),
    ({"attempts": "3"}, "attempts='3'"), ({"backoff": -1}, "backoff=-1"),
    ({"backoff": float("nan")}, "backoff=nan"),
])
def test_retrying_refuses_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        retrying(**options)


def test_retrying_decorates_a_function() -> None:
    work = Flaky(2, reset)

    @retrying(attempts=3, backoff=0)
    def run(value: int) -> int:
        """Docs stay."""
        return work(value)

    assert (run(4), work.calls, run.__name__, run.__doc__) == (40, 3, "run", "Docs stay.")


def test_retrying_decorates_an_async_function_and_iterates_async() -> None:
    work = Flaky(2, reset)
    policy = retrying(attempts=3, backoff=0.001)

    @policy
    async def run(value: int) -> int:
        await asyncio.sleep(0)
        return work(value)

    async def loop() -> list[int]:
        tries: list[int] = []
        again = Flaky(1, reset)
        async for attempt in policy:
            with attempt:
                tries.append(attempt.number)
                again()
        return tries

    assert asyncio.run(run(4)) == 40
    assert asyncio.run(loop()) == [1, 2]
    assert isinstance(policy, Retrying)


@pytest.mark.postgres
def test_async_retrying_runs_an_asyncpg_unit_again_after_a_lock_timeout(
        postgres_url: str, pg: sa.Engine) -> None:
    """Through litestate.aio, on asyncpg: the lock the first attempt could not get is
    released while the worker backs off."""
    from litestate import aio

    with Session(pg) as setup:
        account = Account()
        setup.add(account)
        setup.commit()
        account_id = account.id
    tries: list[int] = []

    async def work() -> None:
        from sqlalchemy.ext.asyncio import AsyncSession

        engine = create_async_engine(postgres_url.replace("+psycopg", "+asyncpg"))
        with Session(pg) as holder:
            holder.get(Account, account_id, with_for_update=True)

            def release(retry: int) -> float:
                holder.commit()
                return 0.0

            try:
                async for attempt in retrying(attempts=3, backoff=release):
                    with attempt:
                        async with AsyncSession(engine) as session, session.begin():
                            tries.append(attempt.number)
                            await session.execute(sa.text("SET LOCAL lock_timeout = '20ms'"))
                            mine = await session.get(Account, account_id)
                            assert mine is not None
                            await aio.call(mine.close)
            finally:
                await engine.dispose()

    asyncio.run(work())
    assert tries == [1, 2]
    with Session(pg) as check:
        assert load(check, Account, account_id).status == "closed"


def test_the_module_exports() -> None:
    assert litestate.is_retryable is is_retryable
    assert litestate.retrying is retrying
    assert {"is_retryable", "retrying"} <= set(litestate.__all__)
