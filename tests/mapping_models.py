"""Models for tests/test_mappings.py: unusual keys, inheritance, versions, defaults, enums.

They live on bases of their own (their own registries and metadata), so their tables are
created and dropped by those tests' fixtures, never by tests/models.py's ``Base``.
"""

from __future__ import annotations

import enum

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedAsDataclass, mapped_column

from litestate import state_column, transition


class MappingBase(DeclarativeBase):
    pass


class DataclassBase(MappedAsDataclass, DeclarativeBase):
    pass


# -- a table with no PRIMARY KEY constraint: the mapper's primary key is `code` -----------

coded_table = sa.Table(
    "lsm_coded", MappingBase.metadata,
    sa.Column("code", sa.String(10), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("note", sa.String(20), nullable=False, default=""),
)


@state_column("status")
class Coded(MappingBase):
    __table__ = coded_table
    __mapper_args__ = {"primary_key": [coded_table.c.code]}  # noqa: RUF012 - declarative reads it
    code: Mapped[str]
    status: Mapped[str]
    note: Mapped[str]

    @transition(frm="new", to="done")
    def finish(self) -> None:
        pass

    @transition(frm="new", to="noted")
    def annotate(self, note: str) -> None:
        self.note = note


# -- a composite primary key -------------------------------------------------------------


@state_column("status")
class Tenanted(MappingBase):
    __tablename__ = "lsm_tenanted"
    tenant: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    number: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(sa.String(20), default="new")

    @transition(frm="new", to="done")
    def finish(self) -> None:
        pass


# -- single-table inheritance ------------------------------------------------------------


@state_column("status")
class Vehicle(MappingBase):
    __tablename__ = "lsm_vehicles"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(20))
    status: Mapped[str] = mapped_column(sa.String(20), default="new")
    __mapper_args__ = {  # noqa: RUF012 - declarative reads it
        "polymorphic_on": "kind", "polymorphic_identity": "vehicle"}

    @transition(frm="new", to="dispatched")
    def dispatch(self) -> None:
        pass


class Truck(Vehicle):
    __mapper_args__ = {"polymorphic_identity": "truck"}  # noqa: RUF012 - declarative reads it

    @transition(frm="new", to="loaded")
    def load(self) -> None:
        pass


# -- joined-table inheritance, the state column on the child table -----------------------


class Party(MappingBase):
    __tablename__ = "lsm_parties"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(20))
    name: Mapped[str] = mapped_column(sa.String(20), default="")
    __mapper_args__ = {  # noqa: RUF012 - declarative reads it
        "polymorphic_on": "kind", "polymorphic_identity": "party"}


@state_column("status")
class Person(Party):
    __tablename__ = "lsm_people"
    id: Mapped[int] = mapped_column(sa.ForeignKey("lsm_parties.id"), primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="new")
    __mapper_args__ = {"polymorphic_identity": "person"}  # noqa: RUF012 - declarative reads it

    @transition(frm="new", to="hired")
    def hire(self) -> None:
        pass


# -- a version counter -------------------------------------------------------------------


@state_column("status")
class Ticket(MappingBase):
    __tablename__ = "lsm_tickets"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="new")
    note: Mapped[str] = mapped_column(sa.String(20), default="")
    version: Mapped[int] = mapped_column(nullable=False)
    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 - declarative reads it

    @transition(frm="new", to="started")
    def start(self) -> None:
        pass


# -- column defaults: a plain model and a dataclass ----------------------------------------


@state_column("status")
class Latch(MappingBase):
    __tablename__ = "lsm_latches"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="open")

    @transition(frm="open", to="closed")
    def close(self) -> None:
        pass


@state_column("status")
class Task(DataclassBase):
    __tablename__ = "lsm_tasks"
    id: Mapped[int] = mapped_column(primary_key=True, init=False)
    status: Mapped[str] = mapped_column(sa.String(20), default="new")

    @transition(frm="new", to="started")
    def start(self) -> None:
        pass


# -- Python Enum columns, by member name and by member value --------------------------------


class PaymentStatus(enum.Enum):
    pending = "pending"
    processing = "processing"
    failed = "failed"


class Phase(enum.Enum):
    """Names and values differ: a column may store either."""

    pending = "Pending"
    processing = "Processing"
    failed = "Failed"


class Charge(MappingBase):
    __tablename__ = "lsm_charges"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[PaymentStatus] = mapped_column(
        sa.Enum(PaymentStatus, name="lsm_payment_status"), default=PaymentStatus.pending)
    by_name: Mapped[Phase] = mapped_column(
        sa.Enum(Phase, name="lsm_phase_name"), default=Phase.pending)
    by_value: Mapped[Phase] = mapped_column(
        sa.Enum(Phase, name="lsm_phase_value", values_callable=lambda e: [m.value for m in e]),
        default=Phase.pending)

    @transition(frm=PaymentStatus.pending, to=PaymentStatus.processing, column="status")
    def process(self) -> None:
        pass

    @transition(frm=Phase.pending, to=Phase.processing, column="by_name")
    def advance_name(self) -> None:
        pass

    @transition(frm=Phase.pending, to=Phase.processing, column="by_value")
    def advance_value(self) -> None:
        pass


BASES: tuple[type[DeclarativeBase], ...] = (MappingBase, DataclassBase)
