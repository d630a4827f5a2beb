"""Every use of SQLAlchemy's private API in litestate, each with the reason it is needed.

Nothing else in litestate touches a name that starts with an underscore in SQLAlchemy.
Each function here is exercised by the test suite on the oldest supported SQLAlchemy
(2.0.2, CI's second pass) and the newest (CI's first pass).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy import util as sa_util  # the greenlet bridge; present without greenlet
from sqlalchemy.orm import InstanceState, Session
from sqlalchemy.orm.session import SessionTransactionState


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


def refuse_commit_until_rollback(session: Session, error: BaseException | None = None
                                 ) -> None:
    """After a statement of litestate's failed outside a SAVEPOINT, make the session
    refuse to go on until ``rollback()``, exactly as it does after a failed flush.

    PostgreSQL has already aborted the transaction when one of its statements fails, and
    InnoDB rolls the whole transaction back for a deadlock; a later ``commit()`` would
    "succeed" and silently lose the caller's earlier work. The flush's own recipe is a
    subtransaction rolled back with ``_capture_exception``: the session becomes inactive
    and every later use raises ``PendingRollbackError`` naming ``error`` (by default the
    exception being handled). Inside a SAVEPOINT of the caller's, that rollback is a
    ROLLBACK TO SAVEPOINT, which recovers the transaction where the database kept it;
    where it fails, the database had rolled back the whole transaction: see
    :func:`abandon_transaction`.
    """
    error = sys.exc_info()[1] if error is None else error
    assert error is not None
    transaction = session._autobegin_t()  # pyright: ignore[reportPrivateUsage]
    if not transaction.is_active:  # refusing already
        return
    try:
        subtransaction = transaction._begin()  # pyright: ignore[reportPrivateUsage]
        subtransaction.rollback(_capture_exception=True)
    except sa_exc.DBAPIError:
        if not transaction.nested:
            raise
        abandon_transaction(session, error)
        return
    transaction._rollback_exception = error  # pyright: ignore[reportPrivateUsage]


def abandon_transaction(session: Session, error: BaseException) -> None:
    """The database rolled back the session's whole transaction, SAVEPOINTs included
    (InnoDB does for a deadlock's victim): make the session refuse, ``PendingRollbackError``
    naming ``error``, until ``rollback()``.

    SQLAlchemy's own rollback cannot: it would roll back the innermost SAVEPOINT (which
    fails: the database no longer has it) and leave the enclosing transactions active,
    so that once the caller's ``with session.begin_nested():`` block exits, a
    ``commit()`` would "succeed" with the caller's earlier work silently gone; closing
    the SAVEPOINT instead is refused inside its context manager. So each transaction
    from the innermost to the outermost is deactivated as SQLAlchemy's rollback
    deactivates one: its connection's SAVEPOINT or transaction rolled back (a SAVEPOINT's
    ROLLBACK fails and is ignored, the outermost ROLLBACK ends what is left), its objects
    restored from its snapshot, the error kept. Leaving a block then closes what it
    opened without SQL, and ``rollback()`` ends the rest.
    """
    transaction: Any = session._transaction  # pyright: ignore[reportPrivateUsage]
    while transaction is not None:
        if transaction.is_active:
            if transaction.parent is None or transaction.nested:  # owns its connections
                for entry in set(transaction._connections.values()):
                    connection_transaction = entry[1]
                    if connection_transaction.is_active:
                        with contextlib.suppress(sa_exc.DBAPIError):
                            connection_transaction.rollback()
                transaction._restore_snapshot(dirty_only=transaction.nested)
            transaction._state = SessionTransactionState.DEACTIVE
        if transaction._rollback_exception is None:
            transaction._rollback_exception = error
        transaction = transaction.parent


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
