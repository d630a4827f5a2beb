"""Models for the batch and queue tests (litestate.bulk), on a metadata of their own;
importable by the worker processes that tests/test_claims.py spawns."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from litestate import Lease, TransitionLog, state_column, transition


class QueueBase(DeclarativeBase):
    pass


class JobLog(TransitionLog, QueueBase):
    __tablename__ = "queue_job_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(sa.ForeignKey("queue_jobs.id"))
    worker: Mapped[str | None] = mapped_column(sa.String(40))
    queue: Mapped[str] = mapped_column(sa.String(20), default="main")  # a default to keep


@state_column("state", log=JobLog, changed_at="state_changed_at")
class Job(Lease, QueueBase):
    """A table of jobs: claimed, leased, finished, reclaimed; and batch transitions."""

    __tablename__ = "queue_jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    state: Mapped[str] = mapped_column(sa.String(20), default="queued")
    priority: Mapped[int] = mapped_column(default=0)
    attempts: Mapped[int] = mapped_column(default=0)
    urgent: Mapped[bool] = mapped_column(default=False)
    started_at: Mapped[datetime | None]
    state_changed_at: Mapped[datetime | None]

    @hybrid_property
    def retryable(self) -> bool:  # on the class: the SQL expression attempts < 3
        return self.attempts < 3

    @transition(frm="queued", to="running", timestamp="started_at")
    def start(self) -> None:
        pass

    @transition(frm="running", to="done", leased=True)
    def finish(self) -> None:
        pass

    @transition(frm="running", to="done")
    def complete(self) -> None:
        pass

    @transition(frm="running", to="queued")
    def requeue(self) -> None:
        pass

    @transition(frm=["queued", "running"], to="canceled")
    def cancel(self) -> None:
        pass

    @transition(frm="*", to="archived")
    def archive(self) -> None:
        pass

    @transition(frm="queued", to="running", guard="retryable")
    def retry(self) -> None:
        pass

    @transition(frm="queued", to="running", guard="urgent")
    def rush(self) -> None:
        pass

    @transition(frm="queued", to="skipped", guard=lambda self: self.priority > 0)
    def skip(self) -> None:
        pass

    @transition(frm="queued", to="running")
    def run(self) -> None:
        self.attempts += 1

    @transition(frm="queued", to="held")
    def hold(self, reason: str) -> None:
        pass


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class LampLog(TransitionLog, QueueBase):
    __tablename__ = "queue_lamp_log"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    lamp_id: Mapped[int] = mapped_column(sa.ForeignKey("queue_lamps.id"))


@state_column("color", log=LampLog)
class Lamp(QueueBase):
    """An Enum state stored by name, a log keyed by a uuid made in Python per row."""

    __tablename__ = "queue_lamps"
    id: Mapped[int] = mapped_column(primary_key=True)
    color: Mapped[Color] = mapped_column(sa.Enum(Color, name="queue_color"),
                                         default=Color.RED)

    @transition(frm=[Color.RED, Color.GREEN], to=Color.BLUE)
    def cool(self) -> None:
        pass


class TagLog(TransitionLog, QueueBase):
    __tablename__ = "queue_tag_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    tag_id: Mapped[int] = mapped_column(sa.ForeignKey("queue_tags.id"))


@state_column("status", log=TagLog)
class Tag(QueueBase):
    """Its primary key is not its table's first column."""

    __tablename__ = "queue_tags"
    label: Mapped[str] = mapped_column(sa.String(20))
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="new")

    @transition(frm="new", to="seen")
    def see(self) -> None:
        pass

    @transition(frm="seen", to="done", log_args=("why",))
    def close(self, why: str = "swept") -> None:
        pass


@state_column("status")
class Seat(QueueBase):
    """A composite primary key, no log."""

    __tablename__ = "queue_seats"
    row: Mapped[str] = mapped_column(sa.String(2), primary_key=True)
    number: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="free")

    @transition(frm="free", to="held")
    def hold(self) -> None:
        pass
