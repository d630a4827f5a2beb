"""A queue worker for tests/test_claims.py: claims jobs until none is left. Importable by
the processes it spawns (multiprocessing, spawn), each with an engine of its own."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, object_session

import litestate
from litestate.sqlite import enable_savepoints
from tests.queue_models import Job

LOCK_TIMEOUT_MS = 20  # a worker that waited on another's lock would fail with an error
#: InnoDB's lock wait timeout counts whole seconds: a worker that waited a second fails;
#: the server's count of row lock waits (``innodb_row_lock_waits``) catches shorter ones.
INNODB_LOCK_WAIT_S = 1


def worker_engine(url: str) -> sa.Engine:
    """PostgreSQL: any wait on a lock longer than LOCK_TIMEOUT_MS is an error. MariaDB: any
    wait of INNODB_LOCK_WAIT_S. SQLite: the database lock serialises writers, who wait
    for it."""
    if url.startswith("sqlite"):
        return enable_savepoints(sa.create_engine(url, connect_args={"timeout": 60}))
    if url.startswith("mysql") or url.startswith("mariadb"):
        return sa.create_engine(url, pool_size=10, connect_args={
            "init_command": f"SET SESSION innodb_lock_wait_timeout = {INNODB_LOCK_WAIT_S}"})
    return sa.create_engine(url, pool_size=10, connect_args={
        "options": f"-c lock_timeout={LOCK_TIMEOUT_MS}ms"})


def row_lock_waits(engine: sa.Engine) -> int:
    """MariaDB: how many times any transaction has waited for a row lock, since the
    server started (InnoDB's own count: a wait of a microsecond counts)."""
    with engine.connect() as conn:
        row = conn.exec_driver_sql("SHOW GLOBAL STATUS LIKE 'Innodb_row_lock_waits'").one()
        return int(row[1])


def claim_until_empty(engine: sa.Engine, name: str, wait: Any) -> tuple[list[int], int]:
    """Claim up to 3 jobs at a time, committing each claim, until none is left. Returns the
    ids claimed and the number of ``transition_committed`` signals heard for them."""
    claimed: list[int] = []
    heard: list[int] = []
    session = Session(engine)

    def committed(sender: Any, *, event: str, record: Any, record_id: Any,
                  **extra: Any) -> None:
        if event == "start" and object_session(record) is session:  # not another thread's
            heard.append(record_id)

    with litestate.transition_committed.connected_to(committed, sender=Job), session:
        wait()
        while True:
            with litestate.context(worker=name):
                jobs = litestate.claim(session, Job.start, order_by=[Job.id], limit=3)
            ids = [job.id for job in jobs]
            session.commit()
            if not ids:
                return claimed, len(heard)
            claimed += ids


def process_main(url: str, name: str, barrier: Any, results: Any) -> None:
    engine = worker_engine(url)
    try:
        results.put((name, *claim_until_empty(engine, name, barrier.wait)))
    except BaseException as exc:
        results.put((name, repr(exc), -1))
        raise
    finally:
        engine.dispose()
