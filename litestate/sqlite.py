"""SQLite support: make pysqlite leave transactions to SQLAlchemy, so SAVEPOINT works.

pysqlite's own transaction handling emits ``BEGIN`` lazily and breaks SAVEPOINT; this is
SQLAlchemy's documented recipe ("Serializable isolation / Savepoints / Transactional
DDL" in its SQLite dialect notes, and its asyncio version for aiosqlite), packaged::

    engine = enable_savepoints(create_engine("sqlite:///app.db"))
    engine = enable_savepoints(create_async_engine("sqlite+aiosqlite:///app.db"))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine, event

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["enable_savepoints"]

_E = TypeVar("_E", "Engine", "AsyncEngine")


def enable_savepoints(engine: _E) -> _E:
    """Make ``engine`` (pysqlite, or aiosqlite through an ``AsyncEngine``) emit ``BEGIN``
    itself; returns it."""
    sync_engine: Any = engine if isinstance(engine, Engine) else getattr(engine, "sync_engine",
                                                                        None)
    if not isinstance(sync_engine, Engine):
        raise TypeError(f"enable_savepoints() takes an Engine or an AsyncEngine, not {engine!r}")
    if sync_engine.dialect.name != "sqlite":
        raise ValueError(f"enable_savepoints() is for SQLite engines, not {sync_engine.url!r}")

    @event.listens_for(sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # no implicit BEGIN from the driver

    @event.listens_for(sync_engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine
