"""Unusual mappings: the UPDATE names exactly one row, whatever the key, the inheritance,
the version counter, the default or the enum spelling; and random mappings, generated."""

from __future__ import annotations

import contextlib
import enum
import itertools
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    MappedAsDataclass,
    Session,
    mapped_column,
    relationship,
)
from sqlalchemy.orm.exc import StaleDataError

from litestate import (
    ConflictError,
    DeclarationError,
    InvalidStateError,
    available_transitions,
    can_transition,
    state_column,
    transition,
)
from litestate.sqlite import enable_savepoints
from tests.conftest import StatementLog, emptied, load
from tests.mapping_models import (
    BASES,
    Charge,
    Coded,
    Latch,
    Party,
    PaymentStatus,
    Person,
    Phase,
    Task,
    Tenanted,
    Ticket,
    Truck,
    Vehicle,
    coded_table,
)

_MADE: weakref.WeakSet[sa.Engine] = weakref.WeakSet()  # engines with our tables made


@pytest.fixture
def mapped(engine: sa.Engine) -> sa.Engine:
    """The engine, with tests/mapping_models.py's tables on it, empty. On the shared
    servers they are remade once per run (dropping any left over), then emptied."""
    if engine in _MADE:
        return emptied(engine, [t for base in BASES for t in base.metadata.sorted_tables])
    for base in BASES:
        base.metadata.drop_all(engine)
        base.metadata.create_all(engine)
    if engine.dialect.name != "sqlite":  # each SQLite engine is a new file
        _MADE.add(engine)
    return engine


def read(engine: sa.Engine, statement: sa.Select[Any]) -> list[tuple[Any, ...]]:
    """Rows as another connection sees them (what has been committed)."""
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(statement)]


def updates(sql: StatementLog) -> list[str]:
    return [s for s in sql.statements if s.lstrip().upper().startswith("UPDATE")]


def where_of(statement: str) -> str:
    return " ".join(statement.split()).split(" WHERE ", 1)[1]


def compares(where: str, column: str) -> bool:
    """Whether ``where`` checks ``column`` (on MySQL/MariaDB a state is compared exactly,
    as the bytes of its characters)."""
    return f"{column} = " in where or f"CONVERT({column} USING utf8mb4) AS BINARY" in where


@contextlib.contextmanager
def disposed(registry: sa.orm.registry) -> Iterator[sa.orm.registry]:
    """A registry that may fail to configure: disposed after, so it poisons nobody else."""
    try:
        yield registry
    finally:
        registry.dispose()


# -- 1. the UPDATE names one row ----------------------------------------------------------


def test_a_mapper_only_primary_key_names_one_row_of_a_table_without_one(
        mapped: sa.Engine, session: Session, sql: StatementLog) -> None:
    session.add_all([Coded(code="a", status="new", note=""),
                     Coded(code="b", status="new", note="")])
    session.commit()
    first = load(session, Coded, "a")
    assert first.status == "new"
    sql.statements.clear()
    first.finish()
    session.commit()
    [update] = updates(sql)
    where = where_of(update)
    assert "lsm_coded.code = " in where, update
    assert compares(where, "lsm_coded.status"), update
    table = coded_table.c
    assert read(mapped, sa.select(table.code, table.status).order_by(table.code)) == [
        ("a", "done"), ("b", "new")]


def test_a_body_on_a_mapper_only_primary_key_writes_one_row(
        mapped: sa.Engine, session: Session, sql: StatementLog) -> None:
    session.add_all([Coded(code="a", status="new", note=""),
                     Coded(code="b", status="new", note="")])
    session.commit()
    second = load(session, Coded, "b")
    assert second.status == "new"
    sql.statements.clear()
    second.annotate("hello")
    session.commit()
    assert all("lsm_coded.code = " in where_of(u) for u in updates(sql)), sql.statements
    table = coded_table.c
    assert read(mapped, sa.select(table.code, table.status, table.note)
                .order_by(table.code)) == [("a", "new", ""), ("b", "noted", "hello")]


def test_a_composite_primary_key_names_one_row_of_two_sharing_a_key_part(
        mapped: sa.Engine, session: Session, sql: StatementLog) -> None:
    session.add_all([Tenanted(tenant=1, number=1, status="new"),
                     Tenanted(tenant=1, number=2, status="new"),
                     Tenanted(tenant=2, number=1, status="new")])
    session.commit()
    target = load(session, Tenanted, (1, 2))
    assert target.status == "new"
    sql.statements.clear()
    target.finish()
    session.commit()
    [update] = updates(sql)
    where = where_of(update)
    assert all(compares(where, f"lsm_tenanted.{c}") for c in ("tenant", "number", "status")), \
        update
    t = Tenanted.__table__.c
    assert read(mapped, sa.select(t.tenant, t.number, t.status).order_by(t.tenant, t.number)) \
        == [(1, 1, "new"), (1, 2, "done"), (2, 1, "new")]


def test_single_table_inheritance_writes_only_the_row_of_the_object(
        mapped: sa.Engine, session: Session, sql: StatementLog) -> None:
    session.add_all([Truck(id=1), Truck(id=2), Vehicle(id=3)])
    session.commit()
    truck = load(session, Truck, 1)
    assert truck.status == "new"
    sql.statements.clear()
    truck.load()
    vehicle = load(session, Vehicle, 3)
    vehicle.dispatch()
    session.commit()
    assert len(updates(sql)) == 2
    assert all("lsm_vehicles.id = " in where_of(u) for u in updates(sql)), sql.statements
    t = Vehicle.__table__.c
    assert read(mapped, sa.select(t.id, t.kind, t.status).order_by(t.id)) == [
        (1, "truck", "loaded"), (2, "truck", "new"), (3, "vehicle", "dispatched")]


def test_joined_inheritance_writes_only_the_row_of_the_child_table(
        mapped: sa.Engine, session: Session, sql: StatementLog) -> None:
    session.add_all([Person(id=1, name="ada"), Person(id=2, name="bob"),
                     Party(id=3, name="acme")])
    session.commit()
    ada = load(session, Person, 1)
    assert ada.status == "new"
    sql.statements.clear()
    ada.hire()
    session.commit()
    [update] = updates(sql)
    assert update.split()[1] == "lsm_people", update
    where = where_of(update)
    assert "lsm_people.id = " in where, update
    assert compares(where, "lsm_people.status"), update
    people, parties = Person.__table__.c, Party.__table__.c
    assert read(mapped, sa.select(people.id, people.status).order_by(people.id)) == [
        (1, "hired"), (2, "new")]
    assert read(mapped, sa.select(parties.id, parties.kind, parties.name)
                .order_by(parties.id)) == [(1, "person", "ada"), (2, "person", "bob"),
                                           (3, "party", "acme")]


# -- 2. version_id_col --------------------------------------------------------------------


def ticket_row(engine: sa.Engine, ident: int) -> tuple[Any, ...]:
    t = Ticket.__table__.c
    [row] = read(engine, sa.select(t.status, t.note, t.version).where(t.id == ident))
    return row


def test_a_transition_bumps_the_version_so_an_older_copy_is_stale(
        mapped: sa.Engine, new_session: Callable[..., Session]) -> None:
    first, second = new_session(expire_on_commit=False), new_session(expire_on_commit=False)
    ticket = Ticket()
    first.add(ticket)
    first.commit()
    assert ticket.version == 1
    old = load(second, Ticket, ticket.id)
    second.commit()
    ticket.start()
    first.commit()
    assert (ticket.status, ticket.version) == ("started", 2)
    assert ticket_row(mapped, ticket.id) == ("started", "", 2)
    old.note = "late"
    with pytest.raises(StaleDataError):
        second.flush()
    second.rollback()
    assert ticket_row(mapped, ticket.id) == ("started", "", 2)


def test_a_transition_from_a_stale_version_is_a_conflict_and_writes_nothing(
        mapped: sa.Engine, new_session: Callable[..., Session]) -> None:
    """The state read is still right ('new'); only the version shows the row changed."""
    first, second = new_session(expire_on_commit=False), new_session(expire_on_commit=False)
    ticket = Ticket()
    first.add(ticket)
    first.commit()
    stale = load(second, Ticket, ticket.id)
    second.commit()
    ticket.note = "edited"
    first.commit()
    assert ticket.version == 2
    with pytest.raises(ConflictError) as info:
        stale.start()
    assert (info.value.reason, info.value.event, info.value.from_state) == (
        "conflict", "start", "new")
    second.rollback()
    assert ticket_row(mapped, ticket.id) == ("new", "edited", 2)
    assert (stale.status, stale.note, stale.version) == ("new", "edited", 2)


def test_a_version_column_on_another_table_than_the_state_is_a_declaration_error() -> None:
    class Fresh(DeclarativeBase):
        pass

    class Contract(Fresh):
        __tablename__ = "lsm_contracts"
        id: Mapped[int] = mapped_column(primary_key=True)
        kind: Mapped[str] = mapped_column(sa.String(20))
        revision: Mapped[int] = mapped_column(nullable=False)
        __mapper_args__ = {  # noqa: RUF012 - declarative reads it
            "version_id_col": revision, "polymorphic_on": kind,
            "polymorphic_identity": "contract"}

    @state_column("status")
    class Lease(Contract):
        __tablename__ = "lsm_leases"
        id: Mapped[int] = mapped_column(sa.ForeignKey("lsm_contracts.id"), primary_key=True)
        status: Mapped[str] = mapped_column(sa.String(20))
        __mapper_args__ = {"polymorphic_identity": "lease"}  # noqa: RUF012

        @transition(frm="draft", to="signed")
        def sign(self) -> None:
            pass

    with disposed(Fresh.registry) as registry, pytest.raises(DeclarationError) as info:
        registry.configure()
    message = str(info.value)
    assert message.startswith("Lease.sign: "), message
    assert "lsm_contracts.revision" in message, message


# -- 4. compiled late: a relationship to a class defined further down ---------------------


def test_a_relationship_to_a_class_defined_later_works_once_it_is_defined(
        engine: sa.Engine) -> None:
    class Fresh(DeclarativeBase):
        pass

    @state_column("status")
    class Order(Fresh):  # does not raise: LineItem does not exist yet
        __tablename__ = "lsm_fwd_orders"
        id: Mapped[int] = mapped_column(primary_key=True)
        status: Mapped[str] = mapped_column(sa.String(20), default="new")
        lines: Mapped[list[Any]] = relationship("LineItem")

        @transition(frm="new", to="paid")
        def pay(self) -> int:
            return len(self.lines)

    class LineItem(Fresh):
        __tablename__ = "lsm_fwd_lines"
        id: Mapped[int] = mapped_column(primary_key=True)
        order_id: Mapped[int] = mapped_column(sa.ForeignKey("lsm_fwd_orders.id"))

    with disposed(Fresh.registry):
        Fresh.metadata.drop_all(engine)
        Fresh.metadata.create_all(engine)
        try:
            with Session(engine) as session:
                order = Order(lines=[LineItem(), LineItem()])
                session.add(order)
                session.commit()
                assert order.pay() == 2
                session.commit()
                assert order.status == "paid"
        finally:
            Fresh.metadata.drop_all(engine)


def test_an_unknown_column_is_reported_by_registry_configure_at_the_latest() -> None:
    class Fresh(DeclarativeBase):
        pass

    class Shipment(Fresh):  # does not raise: compiled at configuration
        __tablename__ = "lsm_fwd_shipments"
        id: Mapped[int] = mapped_column(primary_key=True)
        status: Mapped[str] = mapped_column(sa.String(20))
        parcels: Mapped[list[Any]] = relationship("Parcel")

        @transition(frm="new", to="sent", column="state")
        def send(self) -> None:
            pass

    class Parcel(Fresh):
        __tablename__ = "lsm_fwd_parcels"
        id: Mapped[int] = mapped_column(primary_key=True)
        shipment_id: Mapped[int] = mapped_column(sa.ForeignKey("lsm_fwd_shipments.id"))

    with disposed(Fresh.registry) as registry, pytest.raises(DeclarationError) as info:
        registry.configure()
    assert str(info.value).startswith("Shipment.send: "), info.value
    assert "'state'" in str(info.value), info.value


# -- 7. a state that only a default has given ---------------------------------------------


def test_a_dataclass_default_is_the_state_of_a_transient_object() -> None:
    task = Task()
    assert can_transition(task, "start")
    assert available_transitions(task) == ["start"]
    task.start()
    assert task.status == "started"


def test_a_pending_dataclass_object_starts_from_its_default(
        mapped: sa.Engine, session: Session) -> None:
    task = Task()
    session.add(task)
    assert can_transition(task, "start")
    task.start()
    session.commit()
    t = Task.__table__.c
    assert read(mapped, sa.select(t.status)) == [("started",)]


def test_a_pending_object_is_probed_from_its_column_default_without_sql(
        mapped: sa.Engine, session: Session, sql: StatementLog) -> None:
    latch = Latch()
    session.add(latch)
    sql.statements.clear()
    assert can_transition(latch, "close")
    assert available_transitions(latch) == ["close"]
    assert sql.statements == []
    latch.close()
    assert latch.status == "closed"
    session.commit()
    t = Latch.__table__.c
    assert read(mapped, sa.select(t.status)) == [("closed",)]


# -- 8. an Enum column holding a string ---------------------------------------------------

ENUM_SPELLINGS = [
    pytest.param("status", "process", "pending", "failed", PaymentStatus, id="name=value"),
    pytest.param("by_name", "advance_name", "pending", "failed", Phase, id="by-name"),
    pytest.param("by_value", "advance_value", "Pending", "Failed", Phase, id="by-value"),
]
CHARGE_EVENTS = ["process", "advance_name", "advance_value"]


@pytest.mark.parametrize("flush", [True, False], ids=["flushed", "unsaved"])
@pytest.mark.parametrize(("column", "event", "pending", "failed", "members"), ENUM_SPELLINGS)
def test_an_enum_column_holding_a_string_transitions_from_the_member(
        mapped: sa.Engine, session: Session, column: str, event: str, pending: str,
        failed: str, members: type[enum.Enum], flush: bool) -> None:
    charge = Charge()
    session.add(charge)
    session.commit()
    setattr(charge, column, pending)
    if flush:
        session.flush()
        assert charge.__dict__[column] == pending  # still the string: nothing expired it
    assert can_transition(charge, event)
    assert available_transitions(charge) == [e for e in CHARGE_EVENTS
                                             if can_transition(charge, e)]
    assert event in available_transitions(charge)
    getattr(charge, event)()
    assert getattr(charge, column) is members["processing"]
    session.commit()
    assert getattr(charge, column) is members["processing"]


@pytest.mark.parametrize("flush", [True, False], ids=["flushed", "unsaved"])
@pytest.mark.parametrize(("column", "event", "pending", "failed", "members"), ENUM_SPELLINGS)
def test_an_enum_column_holding_a_string_is_refused_with_the_member_as_from_state(
        mapped: sa.Engine, session: Session, column: str, event: str, pending: str,
        failed: str, members: type[enum.Enum], flush: bool) -> None:
    charge = Charge()
    session.add(charge)
    session.commit()
    setattr(charge, column, failed)
    if flush:
        session.flush()
    assert not can_transition(charge, event)
    assert event not in available_transitions(charge)
    assert available_transitions(charge) == [e for e in CHARGE_EVENTS
                                             if can_transition(charge, e)]
    with pytest.raises(InvalidStateError) as info:
        getattr(charge, event)()
    assert info.value.from_state is members["failed"], repr(info.value.from_state)
    session.commit()
    assert getattr(charge, column) is members["failed"]


# -- 13. generated mappings ---------------------------------------------------------------


class Stage(enum.Enum):
    new = "N"
    run = "R"
    done = "D"


# column type -> (the column's type, the three states as the attribute holds them)
STATE_TYPES: dict[str, tuple[Callable[[str], Any], tuple[Any, Any, Any]]] = {
    "string": (lambda name: sa.String(10), ("new", "run", "done")),
    "integer": (lambda name: sa.Integer(), (0, 1, 2)),
    "python-enum": (lambda name: sa.Enum(Stage, name=f"{name}_stage"),
                    (Stage.new, Stage.run, Stage.done)),
    "string-enum": (lambda name: sa.Enum("new", "run", "done", name=f"{name}_stage"),
                    ("new", "run", "done")),
}
KEY_SHAPES = ("single", "composite", "mapper-only")
# event: (from state indexes, None for "*"; to index; whether the body edits `hits`)
EVENTS: dict[str, tuple[tuple[int, ...] | None, int, bool]] = {
    "begin": ((0,), 1, False),
    "finish": ((1,), 2, True),
    "again": ((1, 2), 0, False),
    "reset": (None, 0, False),
}
_names = itertools.count()


@dataclass(frozen=True)
class Shape:
    state_type: str
    key: str
    versioned: bool
    dataclass: bool


@dataclass
class Built:
    cls: type
    table: sa.Table
    states: tuple[Any, Any, Any]

    def key_of(self, n: int) -> dict[str, Any]:
        """Row n's key values: composite keys share their first part."""
        if "tenant" in self.table.c:
            return {"tenant": 7, "number": n}
        if "code" in self.table.c:
            return {"code": f"c{n}"}
        return {"id": n}


def build(shape: Shape) -> Built:
    """A mapped class of the shape, in a registry of its own."""
    name = f"lsm_gen{next(_names)}"
    make_type, states = STATE_TYPES[shape.state_type]
    base: type[Any]
    if shape.dataclass:
        class DataclassFresh(MappedAsDataclass, DeclarativeBase, kw_only=True):
            pass
        base = DataclassFresh
    else:
        class Fresh(DeclarativeBase):
            pass
        base = Fresh
    annotations: dict[str, Any] = {}
    namespace: dict[str, Any] = {"__tablename__": name, "__annotations__": annotations}
    mapper_args: dict[str, Any] = {}

    def column(key: str, annotation: Any, *args: Any, **kw: Any) -> Any:
        mc = mapped_column(*args, **kw)
        annotations[key], namespace[key] = Mapped[annotation], mc
        return mc.column

    if shape.key == "single":
        column("id", int, primary_key=True, autoincrement=False)
    elif shape.key == "composite":
        column("tenant", int, primary_key=True, autoincrement=False)
        column("number", int, primary_key=True, autoincrement=False)
    else:
        mapper_args["primary_key"] = [column("code", str, sa.String(10), nullable=False)]
    column("state", Any, make_type(name), nullable=False)
    column("hits", int, nullable=False)
    if shape.versioned:
        extra = {"init": False} if shape.dataclass else {}
        mapper_args["version_id_col"] = column("version", int, nullable=False, **extra)
    namespace["__mapper_args__"] = mapper_args
    for event, (frm, to, edits) in EVENTS.items():
        namespace[event] = transition(
            frm="*" if frm is None else [states[i] for i in frm], to=states[to],
            column="state")(_body(edits))
    cls = type(f"Gen{name}", (base,), namespace)
    return Built(cls, cast_table(cls), states)


def cast_table(cls: type) -> sa.Table:
    table = cls.__table__  # type: ignore[attr-defined]
    assert isinstance(table, sa.Table)
    return table


def _body(edits: bool) -> Callable[[Any], None]:
    if edits:
        def body_that_edits(self: Any) -> None:
            self.hits += 1
        return body_that_edits

    def empty_body(self: Any) -> None:
        pass
    return empty_body


@dataclass
class Row:
    state: int = 0  # an index into the states
    hits: int = 0
    version: int = 1


shapes = st.builds(Shape, st.sampled_from(sorted(STATE_TYPES)), st.sampled_from(KEY_SHAPES),
                   st.booleans(), st.booleans())
steps = st.lists(st.one_of(st.sampled_from(sorted(EVENTS)),
                           st.sampled_from(["commit", "rollback", "expire"])), max_size=12)


ALL_SHAPES = [Shape(t, k, v, d) for t in sorted(STATE_TYPES) for k in KEY_SHAPES
              for v in (False, True) for d in (False, True)]


@pytest.mark.parametrize("shape", ALL_SHAPES, ids=repr)
def test_every_mapping_shape_runs_a_fixed_sequence(tmp_path: Path, shape: Shape) -> None:
    """Every combination once, so the generated test below cannot miss one."""
    run(tmp_path, shape, 2, 0, ["begin", "finish", "commit", "again", "begin", "rollback",
                                "finish", "expire", "reset", "begin", "commit", "begin"])


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=shapes, others=st.integers(1, 3), initial=st.integers(0, 2), steps=steps)
def test_a_generated_mapping_writes_only_its_row_and_agrees_with_a_reference(
        tmp_path: Path, shape: Shape, others: int, initial: int, steps: list[str]) -> None:
    run(tmp_path, shape, others, initial, steps)


def run(tmp_path: Path, shape: Shape, others: int, initial: int, steps: list[str]) -> None:
    """Build the mapping, insert ``others + 1`` rows, and drive row 0 through ``steps``:
    after each step the object, its row (as the session and as another connection see
    it) and the other rows agree with a reference."""
    built = build(shape)
    cls, table, states = built.cls, built.table, built.states
    engine = enable_savepoints(sa.create_engine(f"sqlite:///{tmp_path / table.name}.db"))
    sa.event.listen(engine, "connect", _no_fsync)
    try:
        table.create(engine)
        with Session(engine) as session:
            rows = [cls(**built.key_of(n), state=states[(initial + n) % 3], hits=0)
                    for n in range(others + 1)]
            session.add_all(rows)
            session.commit()
            obj, ident = rows[0], built.key_of(0)
            # The other rows, as inserted: they must never change.
            where = [table.c[k] == v for k, v in ident.items()]
            untouched = read(engine, sa.select(table).where(sa.not_(sa.and_(*where)))
                             .order_by(*_order(table)))
            assert len(untouched) == others
            committed = Row(state=initial)
            current = Row(state=initial)
            for step in steps:
                if step in EVENTS:
                    frm, to, edits = EVENTS[step]
                    if frm is None or current.state in frm:
                        getattr(obj, step)()
                        current.hits += edits
                        current.version += 1 + edits
                        current.state = to
                    else:
                        with pytest.raises(InvalidStateError) as info:
                            getattr(obj, step)()
                        assert info.value.from_state == states[current.state]
                elif step == "commit":
                    session.commit()
                    committed = Row(**vars(current))
                elif step == "rollback":
                    session.rollback()
                    current = Row(**vars(committed))
                else:
                    session.expire_all()
                check(engine, session, built, obj, ident, current, committed, shape, untouched)
    finally:
        engine.dispose()
        cls.registry.dispose()  # type: ignore[attr-defined]


def _no_fsync(dbapi_connection: Any, record: Any) -> None:
    """A throwaway file: its commits need not reach the disk (fsync is most of the time)."""
    dbapi_connection.execute("PRAGMA synchronous = OFF")


def check(engine: sa.Engine, session: Session, built: Built, obj: Any,
          ident: dict[str, Any], current: Row, committed: Row, shape: Shape,
          untouched: list[tuple[Any, ...]]) -> None:
    states, table = built.states, built.table
    assert (obj.state, obj.hits) == (states[current.state], current.hits)
    if shape.versioned:
        assert obj.version == current.version
    where = [table.c[k] == v for k, v in ident.items()]
    columns = [table.c.state, table.c.hits] + ([table.c.version] if shape.versioned else [])
    mine = session.execute(sa.select(*columns).where(*where)).one()  # the session's view
    expected = (states[current.state], current.hits) + (
        (current.version,) if shape.versioned else ())
    assert tuple(mine) == expected
    [theirs] = read(engine, sa.select(*columns).where(*where))  # what was committed
    assert theirs == (states[committed.state], committed.hits) + (
        (committed.version,) if shape.versioned else ())
    others = sa.select(table).where(sa.not_(sa.and_(*where)))
    assert read(engine, others.order_by(*_order(table))) == untouched
    assert [tuple(r) for r in session.execute(others.order_by(*_order(table)))] == untouched


def _order(table: sa.Table) -> list[Any]:
    return list(table.primary_key.columns) or [table.c.code]
