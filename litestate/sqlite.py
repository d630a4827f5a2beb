"""SQLite support: make pysqlite leave transactions to SQLAlchemy, so SAVEPOINT works.

pysqlite's own transaction handling emits ``BEGIN`` lazily and breaks SAVEPOINT; this is
SQLAlchemy's documented recipe ("Serializable isolation / Savepoints / Transactional
DDL" in its SQLite dialect notes, and its asyncio version for aiosqlite), packaged::

    engine = enable_savepoints(create_engine("sqlite:///app.db"))
    engine = enable_savepoints(create_async_engine("sqlite+aiosqlite:///app.db"))

SQLite lets one transaction write at a time. With the default ``BEGIN`` (deferred), two
transactions that both read and then write meet mid-transaction: the second writer gets
``database is locked`` (``SQLITE_BUSY``) at once, whatever the busy timeout, as waiting
could deadlock. ``begin="IMMEDIATE"`` takes the write lock at ``BEGIN``, where a second
writer waits (up to the driver's busy ``timeout``, 5 s by default) and then reads what the
first committed::

    engine = enable_savepoints(create_engine("sqlite:///app.db"), begin="IMMEDIATE")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sqlalchemy import Engine, event

from litestate.core import savepoints_enabled

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["Begin", "enable_savepoints"]

_E = TypeVar("_E", "Engine", "AsyncEngine")
#: How a transaction begins: ``DEFERRED`` takes no lock until it reads or writes,
#: ``IMMEDIATE`` the write lock at once, ``EXCLUSIVE`` that and no new readers either.
Begin = Literal["DEFERRED", "IMMEDIATE", "EXCLUSIVE"]
_BEGIN: dict[str, str] = {"DEFERRED": "BEGIN", "IMMEDIATE": "BEGIN IMMEDIATE",
                          "EXCLUSIVE": "BEGIN EXCLUSIVE"}


def enable_savepoints(engine: _E, *, begin: Begin = "DEFERRED") -> _E:
    """Make ``engine`` (pysqlite, or aiosqlite through an ``AsyncEngine``) emit ``BEGIN``
    itself, ``BEGIN IMMEDIATE`` or ``BEGIN EXCLUSIVE`` as ``begin`` says; returns it."""
    sync_engine: Any = engine if isinstance(engine, Engine) else getattr(engine, "sync_engine",
                                                                        None)
    if not isinstance(sync_engine, Engine):
        raise TypeError(f"enable_savepoints() takes an Engine or an AsyncEngine, not {engine!r}")
    if sync_engine.dialect.name != "sqlite":
        raise ValueError(f"enable_savepoints() is for SQLite engines, not {sync_engine.url!r}")
    statement = _BEGIN.get(begin) if isinstance(begin, str) else None  # pyright: ignore[reportUnnecessaryIsInstance]
    if statement is None:
        raise ValueError(f"enable_savepoints(begin={begin!r}): DEFERRED, IMMEDIATE or "
                         "EXCLUSIVE")

    @event.listens_for(sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # no implicit BEGIN from the driver

    @event.listens_for(sync_engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql(statement)

    savepoints_enabled.add(sync_engine)  # litestate need not check the driver's state
    return engine
