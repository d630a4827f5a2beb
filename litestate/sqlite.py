"""SQLite support: make pysqlite leave transactions to SQLAlchemy, so SAVEPOINT works.

pysqlite's own transaction handling emits ``BEGIN`` lazily and breaks SAVEPOINT; this is
SQLAlchemy's documented recipe ("Serializable isolation / Savepoints / Transactional
DDL" in its SQLite dialect notes), packaged::

    engine = enable_savepoints(create_engine("sqlite:///app.db"))
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, event

__all__ = ["enable_savepoints"]


def enable_savepoints(engine: Engine) -> Engine:
    """Make ``engine`` (pysqlite) emit ``BEGIN`` itself; returns it."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # no implicit BEGIN from the driver

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine
