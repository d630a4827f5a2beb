"""Tell a failure worth retrying from a bug, and retry a unit of work in a fresh transaction.

A worker meets failures that are nobody's bug: it lost a race for a row, the database
chose it as a deadlock's victim, a serializable transaction could not be serialized, a
lock was not granted in time, SQLite was busy, the connection or the server went away.
Each is over once the transaction is run again, from its start. Everything else (a
refused transition, a constraint violation, a ``TypeError``) fails the same way every
time::

    for attempt in retrying(attempts=5):
        with attempt, Session(engine) as session, session.begin():
            job = session.get(Job, job_id)
            job.run()

The ``with`` lines in that order: the transaction ends (rolled back) before ``attempt``
sees the error, and each attempt begins a new one. :func:`is_retryable` is the test
:func:`retrying` uses, for loops of your own.

What counts as retryable, read from the exception, from SQLAlchemy's wrapped driver
error (``.orig``) and from what it was raised from (``__cause__``; ``__context__`` of a
database error only: a database error raised while handling another, such as a failed
``ROLLBACK`` after a deadlock, is a consequence of it, while any other exception raised
in an ``except`` block is the code's own):

- :class:`~litestate.ConflictError` (a lost race). Its siblings, ``InvalidStateError``
  and ``GuardError``, are not: the row refuses, and will again.
- PostgreSQL (psycopg, psycopg2, asyncpg), by SQLSTATE: ``40001`` serialization failure,
  ``40P01`` deadlock, ``55P03`` lock not available (``lock_timeout``, ``NOWAIT``),
  ``57P01``/``57P02``/``57P03`` the server shutting down, crashed or starting, and class
  ``08`` (connection exceptions); a psycopg ``OperationalError`` without a SQLSTATE (the
  client lost or could not open the connection).
- MySQL and MariaDB (PyMySQL, mysqlclient, aiomysql, asyncmy, mysql-connector), by
  error number: 1213 deadlock, 1205 lock wait timeout, 3572 ``NOWAIT``, 1020 record
  changed (MariaDB's snapshot isolation), 1927 connection killed, 1053 server shutdown,
  4031 disconnected for inactivity, 2002/2003 cannot connect, 2006/2013/2055 server gone
  or connection lost (the suite meets each on MariaDB 10.11 through PyMySQL, for real or
  raised by ``SIGNAL``, but 2002, a Unix socket's, and 2055, a reconnect's).
- SQLite: ``SQLITE_BUSY`` and ``SQLITE_LOCKED`` ("database is locked"), extended codes
  included.
- A disconnect as SQLAlchemy sees it (``DBAPIError.connection_invalidated``,
  ``DisconnectionError``) and Python's ``ConnectionError`` (refused, reset, broken pipe).

Not retryable: a statement timeout or a cancel (``57014``), an aborted transaction used
again (``25P02``, ``PendingRollbackError``: an earlier error was ignored), the pool's
``TimeoutError`` (a leak or an undersized pool). Pass ``retry_on=`` to widen or narrow.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

from sqlalchemy import exc as sa_exc

from litestate.core import ConflictError, TransitionError

__all__ = ["Attempt", "Retrying", "is_retryable", "retrying"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: PostgreSQL SQLSTATEs a new transaction may not meet (besides class 08, connections).
PG_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57P01", "57P02", "57P03"})
#: MySQL and MariaDB error numbers a new transaction (or connection) may not meet.
MYSQL_ERRORS = frozenset({1020, 1053, 1205, 1213, 1927, 2002, 2003, 2006, 2013, 2055,
                          3572, 4031})
_MYSQL_DRIVERS = frozenset({"pymysql", "MySQLdb", "aiomysql", "asyncmy", "mysql"})
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
_SQLITE_DRIVERS = frozenset({"sqlite3", "pysqlcipher3", "sqlcipher3"})


def is_retryable(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure that running the whole transaction again may not
    meet (see the module's docstring for the list); ``False`` for everything else."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        error = todo.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, TransitionError):
            if isinstance(error, ConflictError):
                return True
            continue  # a refusal: what it was raised from does not change it
        if _transient(error):
            return True
        todo.extend(_origins(error))
    return False


def _transient(error: BaseException) -> bool:
    """This one exception, not its chain: a transient database or network failure."""
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, (sa_exc.DisconnectionError, ConnectionError)):
        return True
    driver = type(error).__module__.partition(".")[0]
    if driver in _MYSQL_DRIVERS:  # by number (mysql-connector's SQLSTATEs are vaguer)
        number = getattr(error, "errno", None) if driver == "mysql" else \
            (error.args[0] if error.args else None)
        return number in MYSQL_ERRORS
    sqlstate = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    if isinstance(sqlstate, str):
        return sqlstate in PG_SQLSTATES or sqlstate.startswith("08")
    if driver in ("psycopg", "psycopg2"):  # no SQLSTATE: the client's own failure
        return _named(error, "OperationalError")
    code = getattr(error, "sqlite_errorcode", None)  # sqlite3's (and so aiosqlite's)
    return isinstance(code, int) and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)


def _named(error: BaseException, name: str) -> bool:
    return any(cls.__name__ == name for cls in type(error).__mro__)


def _origins(error: BaseException) -> list[BaseException]:
    """What ``error`` wraps or was raised from, as the module docstring says."""
    found: list[BaseException] = []
    orig = getattr(error, "orig", None) if isinstance(error, sa_exc.StatementError) else None
    if isinstance(orig, BaseException):
        found.append(orig)
    if error.__cause__ is not None:
        found.append(error.__cause__)
    context = error.__context__
    if context is not None and not error.__suppress_context__ and _from_database(error):
        found.append(context)
    return found


def _from_database(error: BaseException) -> bool:
    """SQLAlchemy's error, or a driver's (the module of a known driver)."""
    driver = type(error).__module__.partition(".")[0]
    return isinstance(error, sa_exc.SQLAlchemyError) or driver in (
        "psycopg", "psycopg2", "asyncpg", *_MYSQL_DRIVERS, *_SQLITE_DRIVERS)


class _Try:
    """How one attempt's ``with`` block ended, for the loop that made it."""

    __slots__ = ("ended", "error")

    def __init__(self) -> None:
        self.ended = False
        self.error: BaseException | None = None  # the retryable error, if it was one


class Attempt:
    """One try of a unit of work: ``with attempt:`` around it lets :class:`Retrying`
    see how it ended."""

    __slots__ = ("_retrying", "_try", "number", "previous")

    def __init__(self, retrying: Retrying, number: int, previous: BaseException | None,
                 outcome: _Try) -> None:
        self._retrying, self._try = retrying, outcome
        #: 1 for the first try.
        self.number = number
        #: The retryable error that ended the try before this one (``None`` for the first).
        self.previous = previous

    def __enter__(self) -> Attempt:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> bool:
        self._try.ended = True
        retrying = self._retrying
        if (isinstance(error, Exception) and self.number < retrying.attempts
                and retrying.retry_on(error)):
            self._try.error = error
            return True  # swallowed: the loop tries again
        return False  # done, a bug, or the last try's error: it propagates as it is


class Retrying:
    """Made by :func:`retrying`: iterate it (``for`` or ``async for``) for
    :class:`Attempt` s, or decorate a function with it."""

    def __init__(self, attempts: int, backoff: float | Callable[[int], float],
                 retry_on: Callable[[BaseException], bool]) -> None:
        #: How many tries in all.
        self.attempts = attempts
        #: Seconds before retry n: ``backoff(n)``, or a random wait up to
        #: ``backoff * 2 ** (n - 1)`` (exponential, with full jitter).
        self.backoff = backoff
        #: Whether an error is worth another try (:func:`is_retryable`).
        self.retry_on = retry_on

    def delay(self, retry: int) -> float:
        """The seconds to wait before retry number ``retry`` (1 for the second try)."""
        backoff = self.backoff
        if callable(backoff):
            return backoff(retry)
        return random.uniform(0, backoff * 2 ** (retry - 1)) if backoff else 0.0

    def __iter__(self) -> Iterator[Attempt]:
        previous: BaseException | None = None
        for number in range(1, self.attempts + 1):
            if number > 1 and (wait := self.delay(number - 1)) > 0:
                time.sleep(wait)
            outcome = _Try()
            yield Attempt(self, number, previous, outcome)
            previous = _retry_after(outcome)
            if previous is None:
                return

    async def __aiter__(self) -> AsyncIterator[Attempt]:
        previous: BaseException | None = None
        for number in range(1, self.attempts + 1):
            if number > 1 and (wait := self.delay(number - 1)) > 0:
                await asyncio.sleep(wait)
            outcome = _Try()
            yield Attempt(self, number, previous, outcome)
            previous = _retry_after(outcome)
            if previous is None:
                return

    def __call__(self, fn: Callable[_P, _R]) -> Callable[_P, _R]:
        """Decorate ``fn`` (sync or ``async def``): each call runs it up to ``attempts``
        times. ``fn`` must open its own transaction."""
        if inspect.iscoroutinefunction(fn):
            async_fn = cast(Callable[..., Any], fn)

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                async for attempt in self:
                    with attempt:
                        return await async_fn(*args, **kwargs)
                raise AssertionError("unreachable: the last attempt re-raises")

            return cast(Callable[_P, _R], run_async)

        @functools.wraps(fn)
        def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            for attempt in self:
                with attempt:
                    return fn(*args, **kwargs)
            raise AssertionError("unreachable: the last attempt re-raises")

        return run


def _retry_after(outcome: _Try) -> BaseException | None:
    """The error to retry after, or None when the loop is done."""
    if not outcome.ended:
        raise RuntimeError("each attempt of retrying() must run as `with attempt:`, which "
                           "tells it how the try ended")
    return outcome.error


def retrying(attempts: int = 5, *, backoff: float | Callable[[int], float] = 0.05,
             retry_on: Callable[[BaseException], bool] = is_retryable) -> Retrying:
    """Run a unit of work up to ``attempts`` times while it fails retryably.

    ``for attempt in retrying(): with attempt, <a new transaction>: ...`` (or ``async
    for``), or ``@retrying()`` on a function that opens its own transaction. An error
    that ``retry_on`` refuses (by default: not :func:`is_retryable`) propagates at once;
    a retryable one on the last attempt propagates as it is. Between attempts it waits
    ``backoff``: a random time up to ``backoff * 2 ** (n - 1)`` seconds before retry
    ``n``, so two deadlocked workers do not meet again; or ``backoff(n)`` seconds.
    """
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ValueError(f"retrying(attempts={attempts!r}): at least 1 attempt")
    if not callable(backoff) and not backoff >= 0:
        raise ValueError(f"retrying(backoff={backoff!r}): seconds, at least 0")
    return Retrying(attempts, backoff, retry_on)
