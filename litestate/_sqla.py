"""Every use of SQLAlchemy's private API in litestate, each with the reason it is needed.

Nothing else in litestate touches a name that starts with an underscore in SQLAlchemy.
Each function here is exercised by the test suite on the oldest supported SQLAlchemy
(2.0.2, CI's second pass) and the newest (CI's first pass).
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import util as sa_util  # the greenlet bridge; present without greenlet
from sqlalchemy.orm import InstanceState, Session


def register_altered(session: Session, state: InstanceState[Any]) -> None:
    """Tell the session that litestate's Core UPDATE changed this object's row.

    The ORM does this for every row its flush updates: a rollback of the transaction (or
    of a SAVEPOINT enclosing the write) then expires the object, so it cannot keep
    showing a state the database no longer has. A Core UPDATE is invisible to that
    bookkeeping, and there is no public way to join it.
    """
    session._register_altered([state])  # pyright: ignore[reportPrivateUsage]


def is_deleted(state: InstanceState[Any]) -> bool:
    """Whether the object was deleted in its session, flushed or not.

    ``InstanceState.deleted`` is public but only true after the flush; before it, the
    session's ``deleted`` property builds a new set of every deleted object on each
    access, while its private ``_deleted`` dict answers for one object in O(1).
    """
    if state._deleted:  # pyright: ignore[reportPrivateUsage]
        return True
    session = state.session
    return session is not None and state in session._deleted  # pyright: ignore[reportPrivateUsage]


def refuse_commit_until_rollback(session: Session) -> None:
    """After a statement of litestate's failed outside a SAVEPOINT, make the session
    refuse to go on until ``rollback()``, exactly as it does after a failed flush.

    PostgreSQL and MariaDB have already aborted (or rolled back) the transaction when
    one of its statements fails; a later ``commit()`` would "succeed" and silently lose
    the caller's earlier work. The flush's own recipe is a subtransaction rolled back
    with ``_capture_exception``: the session becomes inactive and every later use raises
    ``PendingRollbackError`` naming the original error. Called inside ``except``.
    """
    subtransaction = session._autobegin_t()._begin()  # pyright: ignore[reportPrivateUsage]
    subtransaction.rollback(_capture_exception=True)
    assert sys.exc_info()[1] is not None


def savepoint_number(conn: sa.Connection) -> int:
    """The sequence number of the connection's innermost open SAVEPOINT (0 for none).

    SQLAlchemy names its savepoints ``sa_savepoint_N`` with N increasing per connection,
    so a write made while savepoint N is open is undone by a rollback to any savepoint
    numbered N or less that is still open. The name is kept on the private
    ``NestedTransaction._savepoint``.
    """
    nested = conn.get_nested_transaction()
    return 0 if nested is None else parse_savepoint(
        nested._savepoint)  # pyright: ignore[reportPrivateUsage]


def parse_savepoint(name: str) -> int:
    """N of ``sa_savepoint_N``; a savepoint SQLAlchemy did not name counts as 1."""
    head, _, number = name.rpartition("_")
    return int(number) if head == "sa_savepoint" and number.isdigit() else 1


def commit_now(conn: sa.Connection) -> None:
    """Commit the DBAPI connection inside SQLAlchemy's ``commit`` connection event.

    The event fires just *before* the driver's commit, and nothing fires after it; to
    send ``transition_committed`` only once the database has committed, litestate does
    the driver's commit itself (SQLAlchemy's own commit that follows finds nothing left
    to commit). A driver error is wrapped as SQLAlchemy wraps it.
    """
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None
    try:
        dbapi_connection.commit()
    except Exception as exc:  # raises it, wrapped
        conn._handle_dbapi_exception(exc, None, None, None, None)  # pyright: ignore[reportPrivateUsage]


# -- asyncio: SQLAlchemy's greenlet bridge (litestate.aio) ---------------------------------
#
# An AsyncSession runs the sync Session's work inside ``greenlet_spawn``, where
# ``await_only`` hands an awaitable to the event loop and waits for it. litestate runs a
# whole transition the same way, so its checks, UPDATE, SAVEPOINT and signals are the
# sync code, and an async body, guard or receiver is awaited from inside it. Both
# functions live in ``sqlalchemy.util``, not in SQLAlchemy's documented API; the test for
# "inside the bridge" has no public form before 2.1 (``in_greenlet``).


def greenlet_spawn(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """The awaitable running ``fn(*args, **kwargs)`` in a greenlet that may await."""
    return sa_util.greenlet_spawn(fn, *args, **kwargs)


def await_only(awaitable: Any) -> Any:
    """Await ``awaitable`` from sync code running inside :func:`greenlet_spawn`."""
    return sa_util.await_only(awaitable)


def in_greenlet() -> bool:
    """Whether this code runs inside :func:`greenlet_spawn` (so it may await)."""
    try:
        return _greenlet_test()()
    except Exception:  # no greenlet installed: no bridge to be in
        return False


@functools.cache
def _greenlet_test() -> Callable[[], bool]:
    concurrency: Any = importlib.import_module("sqlalchemy.util.concurrency")
    test: Callable[[], bool] | None = getattr(concurrency, "in_greenlet", None)  # 2.1
    if test is not None:
        return test
    bridge: Any = importlib.import_module("sqlalchemy.util._concurrency_py3k")  # 2.0

    def is_bridge_greenlet() -> bool:
        return isinstance(bridge.getcurrent(), bridge._AsyncIoGreenlet)

    return is_bridge_greenlet
