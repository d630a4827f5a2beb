"""Engines (SQLite, PostgreSQL and MariaDB, one parametrised fixture), sessions, signals,
clock."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import litestate
from litestate.sqlite import enable_savepoints
from tests import mariaserver, pgserver
from tests.models import Base

FROZEN = datetime(2026, 1, 2, 3, 4, 5)
_T = TypeVar("_T")


def load(session: Session, cls: type[_T], ident: object) -> _T:
    """``session.get`` that must find the row (get_one is newer than our SQLAlchemy floor)."""
    obj = session.get(cls, ident)
    assert obj is not None, f"no {cls.__name__} {ident!r}"
    return obj


def _started(server: Callable[[], contextlib.AbstractContextManager[str]], what: str,
             unavailable: type[Exception]) -> Iterator[str]:
    """A server's URL for the session; in CI (``CI=true``) failing to start it fails the
    run, elsewhere it skips the tests that need it."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(server())
        except unavailable as exc:
            if os.environ.get("CI"):
                pytest.fail(f"CI must run the {what} tests: {exc}", pytrace=False)
            pytest.skip(f"no {what} server could start here: {exc}")
        yield url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server (or ``$LITESTATE_POSTGRES_URL``)."""
    yield from _started(pgserver.postgres_server, "PostgreSQL", pgserver.ServerUnavailable)


@pytest.fixture(scope="session")
def mariadb_url() -> Iterator[str]:
    """A throwaway MariaDB server (or ``$LITESTATE_MARIADB_URL``)."""
    yield from _started(mariaserver.mariadb_server, "MariaDB", mariaserver.ServerUnavailable)


def _server_engine(url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(url, pool_size=20, max_overflow=20)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pg_engine(postgres_url: str) -> Iterator[sa.Engine]:
    yield from _server_engine(postgres_url)


@pytest.fixture(scope="session")
def maria_engine(mariadb_url: str) -> Iterator[sa.Engine]:
    yield from _server_engine(mariadb_url)


def sqlite_engine(path: Any) -> sa.Engine:
    engine = enable_savepoints(sa.create_engine(f"sqlite:///{path}"))
    Base.metadata.create_all(engine)
    return engine


#: The servers, as parameters of a fixture: each test runs on both, marked for ``-m``.
SERVERS = [pytest.param("postgresql", marks=pytest.mark.postgres),
           pytest.param("mariadb", marks=pytest.mark.mariadb)]
_SERVER_ENGINES = {"postgresql": "pg_engine", "mariadb": "maria_engine"}


@pytest.fixture(params=["sqlite", *SERVERS])
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[sa.Engine]:
    """Each test that takes it runs on a SQLite file, on PostgreSQL and on MariaDB."""
    if request.param == "sqlite":
        engine = sqlite_engine(tmp_path / "test.db")
        yield engine
        engine.dispose()
        return
    yield emptied(request.getfixturevalue(_SERVER_ENGINES[request.param]))


def emptied(engine: sa.Engine, tables: Iterable[sa.Table] | None = None) -> sa.Engine:
    """Empty every table of a server's engine (``tables``, else the test models'),
    numbering from 1 again; a leaked lock fails here, not hangs."""
    names = [t.name for t in (Base.metadata.sorted_tables if tables is None else tables)]
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL lock_timeout = '20s'")
            conn.exec_driver_sql(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE")
            return engine
        # MariaDB: TRUNCATE is DDL (a metadata lock, then a new table file): DELETE is
        # cheaper on tables this small, and ALTER resets the counter in place.
        conn.exec_driver_sql("SET SESSION lock_wait_timeout = 20, "
                             "innodb_lock_wait_timeout = 20, foreign_key_checks = 0")
        try:
            for name in names:
                conn.exec_driver_sql(f"DELETE FROM {name}")
                conn.exec_driver_sql(f"ALTER TABLE {name} AUTO_INCREMENT = 1")
        finally:  # a pooled connection keeps its session's settings
            conn.exec_driver_sql("SET SESSION lock_wait_timeout = DEFAULT, "
                                 "innodb_lock_wait_timeout = DEFAULT, "
                                 "foreign_key_checks = DEFAULT")
    return engine


@pytest.fixture
def pg(pg_engine: sa.Engine) -> sa.Engine:
    """The PostgreSQL engine alone, emptied: for tests that need real concurrency."""
    return emptied(pg_engine)


@pytest.fixture
def maria(maria_engine: sa.Engine) -> sa.Engine:
    """The MariaDB engine alone, emptied: for tests that need real concurrency."""
    return emptied(maria_engine)


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> sa.Engine:
    """A real server, emptied: each test that takes it runs on PostgreSQL and MariaDB."""
    return server_engine(request, request.param)


def server_engine(request: pytest.FixtureRequest, name: str) -> sa.Engine:
    """The server ``name`` ("postgresql" or "mariadb"), emptied, for a test parametrised
    over the servers with parameters of its own (``pytest.param(..., marks=...)``)."""
    return emptied(request.getfixturevalue(_SERVER_ENGINES[name]))


def backend_id(session: Session) -> int:
    """The server's id of the session's connection."""
    query = "SELECT CONNECTION_ID()" if session.get_bind().dialect.name == "mysql" else \
        "SELECT pg_backend_pid()"
    return int(session.scalar(sa.text(query)) or 0)


# Whether a connection waits on a row lock, in each server's own words. InnoDB refreshes
# what information_schema.innodb_trx shows only once it has gone unread for 0.1 s
# (trx_i_s_cache's minimum idle time), so a tight loop would read a stale answer forever.
_POLL = {"postgresql": 0.0, "mysql": 0.15}
_WAITING = {
    "postgresql": "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :pid",
    "mysql": "SELECT trx_state = 'LOCK WAIT' FROM information_schema.innodb_trx "
             "WHERE trx_mysql_thread_id = :pid",
}


def waiting_on_a_lock(engine: sa.Engine, pid: int) -> None:
    """Return once backend ``pid`` waits on a lock (asked of the server, not guessed)."""
    deadline = time.monotonic() + 60
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(sa.text(_WAITING[engine.dialect.name]),
                                   {"pid": pid}).scalar()
            conn.rollback()
            if waiting:
                return
            time.sleep(_POLL[engine.dialect.name])
    raise AssertionError(f"backend {pid} never waited on a lock")


@pytest.fixture
def session(engine: sa.Engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session


@pytest.fixture
def new_session(engine: sa.Engine) -> Iterator[Callable[..., Session]]:
    """Make extra sessions on the engine (``Session`` options as keywords); all closed after."""
    made: list[Session] = []

    def make(**options: Any) -> Session:
        made.append(Session(engine, **options))
        return made[-1]

    yield make
    for session in made:
        session.close()


@dataclass
class Heard:
    signal: str
    sender: Any
    payload: dict[str, Any]


@dataclass
class SignalLog:
    heard: list[Heard] = field(default_factory=list)

    def names(self) -> list[str]:
        return [h.signal for h in self.heard]

    def of(self, name: str) -> list[Heard]:
        return [h for h in self.heard if h.signal == name]

    def clear(self) -> None:
        self.heard.clear()


ALL_SIGNALS = (litestate.transition_succeeded, litestate.transition_invalid,
               litestate.transition_failed, litestate.transition_committed)


@contextlib.contextmanager
def recording(*signals: Any) -> Iterator[SignalLog]:
    """Record every litestate signal (or those given) sent inside the block (strong
    references). Without a transition_succeeded receiver, an empty body runs without a
    SAVEPOINT: leave it out to test that path."""
    log = SignalLog()
    with contextlib.ExitStack() as stack:
        for signal in signals or ALL_SIGNALS:
            def receiver(sender: Any, _name: str = signal.name, **payload: Any) -> None:
                log.heard.append(Heard(_name, sender, payload))
            stack.enter_context(signal.connected_to(receiver))
        yield log


@pytest.fixture
def signals() -> Iterator[SignalLog]:
    """Records every litestate signal sent during the test."""
    with recording() as log:
        yield log


@pytest.fixture
def frozen_clock() -> Iterator[datetime]:
    previous = litestate.set_clock(lambda: FROZEN)
    yield FROZEN
    litestate.set_clock(previous)


class StatementLog:
    """The SQL statements an engine sends, SAVEPOINT and RELEASE included."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def verbs(self) -> list[str]:
        return [s.split()[0].upper() for s in self.statements]


@pytest.fixture
def sql(engine: sa.Engine) -> Iterator[StatementLog]:
    log = StatementLog()

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        log.statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", before)
    yield log
    sa.event.remove(engine, "before_cursor_execute", before)
