"""Engines (SQLite and PostgreSQL, one parametrised fixture), sessions, signals, clock."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import litestate
from litestate.sqlite import enable_savepoints
from tests.models import Base
from tests.pgserver import ServerUnavailable, postgres_server

FROZEN = datetime(2026, 1, 2, 3, 4, 5)
_T = TypeVar("_T")


def load(session: Session, cls: type[_T], ident: object) -> _T:
    """``session.get`` that must find the row (get_one is newer than our SQLAlchemy floor)."""
    obj = session.get(cls, ident)
    assert obj is not None, f"no {cls.__name__} {ident!r}"
    return obj


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway server; in CI (``CI=true``) failing to start it fails the run."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(postgres_server())
        except ServerUnavailable as exc:
            if os.environ.get("CI"):
                pytest.fail(f"CI must run the PostgreSQL tests: {exc}", pytrace=False)
            pytest.skip(f"no PostgreSQL server could start here: {exc}")
        yield url


@pytest.fixture(scope="session")
def pg_engine(postgres_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(postgres_url, pool_size=20, max_overflow=20)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def sqlite_engine(path: Any) -> sa.Engine:
    engine = enable_savepoints(sa.create_engine(f"sqlite:///{path}"))
    Base.metadata.create_all(engine)
    return engine


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[sa.Engine]:
    """Each test that takes it runs once on a SQLite file and once on PostgreSQL."""
    if request.param == "sqlite":
        engine = sqlite_engine(tmp_path / "test.db")
        yield engine
        engine.dispose()
        return
    yield emptied(request.getfixturevalue("pg_engine"))


def emptied(engine: sa.Engine) -> sa.Engine:
    """Empty every table of a PostgreSQL engine; a leaked lock fails here, not hangs."""
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL lock_timeout = '20s'")
        conn.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    return engine


@pytest.fixture
def pg(pg_engine: sa.Engine) -> sa.Engine:
    """The PostgreSQL engine alone, emptied: for tests that need real concurrency."""
    return emptied(pg_engine)


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
