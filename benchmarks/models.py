"""The same two-state machine (pending <-> doing, optionally guarded) in every flavour.

Each mapped class also carries the hand-written methods, so every ratio compares code
on the same kind of instance. ``body`` variants change a column, as real bodies do.
"""

from __future__ import annotations

import contextlib
import importlib
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.orm.attributes import set_committed_value

from litestate import TransitionLog, state_column, transition

# sqlalchemy-fsm registers its events when imported, and a class mapped before that
# cannot fire its transitions: import it before any class here is mapped.
with contextlib.suppress(ImportError):
    importlib.import_module("sqlalchemy_fsm")


class Base(DeclarativeBase):
    pass


class Refused(Exception):
    """What the hand-written code raises."""


def allowed_guard(self: Any) -> bool:
    return bool(self.allowed)


class HandWritten:
    """What a user writes without a library: the naive check-and-set."""

    status: Any
    allowed: Any
    counter: Any

    def h_start(self) -> None:
        if self.status != "pending":
            raise Refused
        self.status = "doing"

    def h_stop(self) -> None:
        if self.status != "doing":
            raise Refused
        self.status = "pending"

    def h_gstart(self) -> None:
        if self.status != "pending" or not self.allowed:
            raise Refused
        self.status = "doing"

    def h_gstop(self) -> None:
        if self.status != "doing" or not self.allowed:
            raise Refused
        self.status = "pending"


class Toggle:
    """The machine litestate declares once, for a plain and a mapped class alike."""

    @transition(frm="pending", to="doing")
    def start(self) -> None:
        pass

    @transition(frm="doing", to="pending")
    def stop(self) -> None:
        pass


class Guarded:
    @transition(frm="pending", to="doing", guard=allowed_guard)
    def gstart(self) -> None:
        pass

    @transition(frm="doing", to="pending", guard=allowed_guard)
    def gstop(self) -> None:
        pass


@state_column("status")
class PlainTodo(Toggle, Guarded, HandWritten):
    def __init__(self) -> None:
        self.status = "pending"
        self.allowed = True
        self.counter = 0


class _Columns:
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="pending")
    allowed: Mapped[bool] = mapped_column(default=True)
    counter: Mapped[int] = mapped_column(default=0)


@state_column("status")
class LiteTodo(Toggle, Guarded, _Columns, HandWritten, Base):
    __tablename__ = "bench_lite"

    @transition(frm="pending", to="doing")
    def bstart(self) -> None:
        self.counter += 1

    @transition(frm="doing", to="pending")
    def bstop(self) -> None:
        self.counter += 1


@state_column("status")
class ProbeTodo(Toggle, _Columns, HandWritten, Base):
    """The peers' machine exactly (start, stop): what the probes compare."""

    __tablename__ = "bench_probe"


class HandTodo(_Columns, HandWritten, Base):
    """Hand-written code with litestate's guarantees: conditional UPDATE, rowcount check,
    and a SAVEPOINT around a body."""

    __tablename__ = "bench_hand"

    def _write(self, session: Session, frm: str, to: str) -> None:
        if self.status != frm:
            raise Refused
        result = session.execute(
            sa.update(HandTodo).where(HandTodo.id == self.id, HandTodo.status == frm)
            .values(status=to).execution_options(synchronize_session=False))
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise Refused("lost race")
        set_committed_value(self, "status", to)

    def safe_start(self, session: Session) -> None:
        self._write(session, "pending", "doing")

    def safe_stop(self, session: Session) -> None:
        self._write(session, "doing", "pending")

    def safe_bstart(self, session: Session) -> None:
        with session.begin_nested():
            self._write(session, "pending", "doing")
            self.counter += 1
            session.flush()

    def safe_bstop(self, session: Session) -> None:
        with session.begin_nested():
            self._write(session, "doing", "pending")
            self.counter += 1
            session.flush()


# -- history: a transition and its log row --------------------------------------------


class LoggedLog(TransitionLog, Base):
    __tablename__ = "bench_logged_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    todo_id: Mapped[int] = mapped_column(sa.ForeignKey("bench_logged.id"))


@state_column("status", log=LoggedLog)
class LoggedTodo(Toggle, _Columns, HandWritten, Base):
    """litestate with ``log=``: SAVEPOINT, UPDATE, INSERT, RELEASE."""

    __tablename__ = "bench_logged"


class HandLog(TransitionLog, Base):
    __tablename__ = "bench_hand_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    todo_id: Mapped[int] = mapped_column(sa.ForeignKey("bench_hand_logged.id"))


_HAND_UPDATE: Any = None
_HAND_INSERT: Any = None


class HandLoggedTodo(_Columns, HandWritten, Base):
    """The same guarantees by hand: SAVEPOINT, conditional UPDATE, INSERT, RELEASE, the
    statements built once."""

    __tablename__ = "bench_hand_logged"

    def logged(self, session: Session, frm: str, to: str) -> None:
        global _HAND_UPDATE, _HAND_INSERT
        if _HAND_UPDATE is None:
            table: Any = HandLoggedTodo.__table__
            _HAND_UPDATE = sa.update(table).where(
                table.c.id == sa.bindparam("pk"), table.c.status == sa.bindparam("frm")
            ).values(status=sa.bindparam("to"))
            _HAND_INSERT = sa.insert(HandLog.__table__)  # type: ignore[arg-type]
        if self.status != frm:
            raise Refused
        with session.begin_nested():
            conn = session.connection()
            if conn.execute(_HAND_UPDATE, {"pk": self.id, "frm": frm, "to": to}
                            ).rowcount != 1:
                raise Refused("lost race")
            conn.execute(_HAND_INSERT, {"todo_id": self.id, "event": "start", "column":
                                        "status", "from_state": frm, "to_state": to,
                                        "at": datetime.now(UTC), "data": {}})
            set_committed_value(self, "status", to)

    def log_start(self, session: Session) -> None:
        self.logged(session, "pending", "doing")

    def log_stop(self, session: Session) -> None:
        self.logged(session, "doing", "pending")
