"""The audit trail: litestate.TransitionLog, log=, changed_at=, context(), log_data(),
history(); on SQLite and PostgreSQL."""

from __future__ import annotations

import enum
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import litestate
from litestate import (
    DeclarationError,
    TransitionError,
    TransitionLog,
    history,
    log_data,
    state_column,
    transition,
)
from tests.conftest import FROZEN, StatementLog, load


class HistoryBase(DeclarativeBase):
    pass


class TicketLog(TransitionLog, HistoryBase):
    __tablename__ = "hist_ticket_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(sa.ForeignKey("hist_tickets.id"))
    actor_id: Mapped[int | None]


class OtherLog(TransitionLog, HistoryBase):
    __tablename__ = "hist_other_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(sa.ForeignKey("hist_tickets.id"))


class TicketFailed(Exception):
    pass


@state_column("status", log=TicketLog, changed_at="status_changed_at")
@state_column("review", log=TicketLog)
class Ticket(HistoryBase):
    __tablename__ = "hist_tickets"
    __table_args__ = (sa.Index("hist_tickets_status_changed", "status", "status_changed_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="new")
    status_changed_at: Mapped[datetime | None]
    review: Mapped[str] = mapped_column(sa.String(20), default="none")
    note: Mapped[str | None] = mapped_column(sa.String(40))

    @transition(frm="new", to="open")
    def open(self) -> None:
        pass

    @transition(frm="open", to="closed", log_args=("reason",))
    def close(self, reason: str, fail: bool = False) -> None:
        self.note = reason
        log_data(invoice=42, actor_id=7)
        if fail:
            raise TicketFailed(reason)

    @transition(frm="*", to="new", log=False)
    def reset(self) -> None:
        pass

    @transition(frm="*", to="open", log=OtherLog)
    def reopen(self) -> None:
        pass

    @transition(frm="none", to="asked", column="review")
    def ask(self) -> None:
        pass


class Color(enum.Enum):
    red = "red"
    green = "green"


class ShipmentLog(TransitionLog, HistoryBase):
    __tablename__ = "hist_shipment_log"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    shipment_id: Mapped[int] = mapped_column(sa.ForeignKey("hist_shipments.id"))


class LightLog(TransitionLog, HistoryBase):
    __tablename__ = "hist_light_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    shipment_id: Mapped[int] = mapped_column(sa.ForeignKey("hist_shipments.id"))
    from_state: Mapped[int] = mapped_column()  # an Integer state column's log: integers
    to_state: Mapped[int] = mapped_column()


@state_column("status", log=ShipmentLog)
@state_column("color", log=ShipmentLog)
@state_column("level", log=LightLog)
class Shipment(HistoryBase):
    __tablename__ = "hist_shipments"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="packed")
    color: Mapped[Color] = mapped_column(default=Color.red)
    level: Mapped[int] = mapped_column(default=0)

    @transition(frm="packed", to="shipped")
    def ship(self) -> None:
        pass

    @transition(frm=Color.red, to=Color.green, column="color")
    def go(self) -> None:
        pass

    @transition(frm=0, to=1, column="level")
    def raise_level(self) -> None:
        pass


class NestLog(TransitionLog, HistoryBase):
    __tablename__ = "hist_nest_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    nest_id: Mapped[int] = mapped_column(sa.ForeignKey("hist_nests.id"))


@state_column("status", log=NestLog)
@state_column("other", log=NestLog)
class Nest(HistoryBase):
    __tablename__ = "hist_nests"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="a")
    other: Mapped[str] = mapped_column(sa.String(20), default="x")

    @transition(frm="a", to="b")
    def outer(self) -> None:
        log_data(level="outer-before")
        self.inner()
        log_data(after=True)

    @transition(frm="x", to="y", column="other")
    def inner(self) -> None:
        log_data(level="inner")


class StampLog(TransitionLog, HistoryBase):
    """A log whose ``at`` is a naive column (UTC by convention)."""

    __tablename__ = "hist_stamp_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    stamp_id: Mapped[int] = mapped_column(sa.ForeignKey("hist_stamps.id"))
    at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=False))


class StampPhaseLog(TransitionLog, HistoryBase):  # the mixin's aware ``at``
    __tablename__ = "hist_stamp_phase_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    stamp_id: Mapped[int] = mapped_column(sa.ForeignKey("hist_stamps.id"))


@state_column("status", log=StampLog, changed_at="status_changed_at")
@state_column("phase", log=StampPhaseLog)
class Stamp(HistoryBase):
    __tablename__ = "hist_stamps"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="a")
    status_changed_at: Mapped[datetime | None]
    phase: Mapped[str] = mapped_column(sa.String(20), default="x")

    @transition(frm="a", to="b")
    def go(self) -> None:
        pass

    @transition(frm="x", to="y", column="phase")
    def up(self) -> None:
        pass

    @transition(frm="y", to="x", column="phase")
    def down(self) -> None:
        pass


@pytest.fixture
def db(engine: sa.Engine) -> Iterator[sa.Engine]:
    HistoryBase.metadata.drop_all(engine)
    HistoryBase.metadata.create_all(engine)
    yield engine
    HistoryBase.metadata.drop_all(engine)


def saved(session: Session, obj: Any) -> Any:
    session.add(obj)
    session.commit()
    return obj


def rows(session: Session, log: type[Any] = TicketLog) -> list[tuple[Any, ...]]:
    return [(r.event, r.column, r.from_state, r.to_state)
            for r in session.scalars(sa.select(log).order_by(log.at, log.id))]


def test_a_transition_writes_one_row_and_stamps_changed_at_in_its_update(
        db: sa.Engine, sql: StatementLog, frozen_clock: datetime) -> None:
    with Session(db, expire_on_commit=False) as session:
        ticket = saved(session, Ticket())
        session.connection()  # the transaction has begun
        sql.statements.clear()
        ticket.open()
        assert sql.verbs() == ["SAVEPOINT", "UPDATE", "INSERT", "RELEASE"]
        assert "status_changed_at" in sql.statements[1]
        assert ticket.status_changed_at == FROZEN
        session.commit()
        [row] = history(ticket)
        assert (row.event, row.column, row.from_state, row.to_state, row.ticket_id) == (
            "open", "status", "new", "open", ticket.id)
        assert row.at.replace(tzinfo=None) == FROZEN
        assert row.data == {}
        assert session.scalar(sa.select(Ticket.status_changed_at)) == FROZEN


def test_a_failing_body_writes_no_row_and_restores_changed_at(db: sa.Engine) -> None:
    with Session(db) as session:
        ticket = saved(session, Ticket())
        ticket.open()
        stamped = ticket.status_changed_at
        with pytest.raises(TicketFailed):
            ticket.close("spam", fail=True)
        assert (ticket.status, ticket.status_changed_at) == ("open", stamped)
        session.commit()
        assert rows(session) == [("open", "status", "new", "open")]


def test_a_caller_rollback_takes_the_row_with_it(db: sa.Engine) -> None:
    with Session(db) as session:
        ticket = saved(session, Ticket())
        ticket.open()
        session.rollback()
        assert rows(session) == []
        assert ticket.status == "new"
        assert ticket.status_changed_at is None


def test_a_failed_insert_fails_the_transition(db: sa.Engine) -> None:
    """A value the JSON column cannot take: the row and the state roll back together."""
    with Session(db) as session:
        ticket = saved(session, Ticket())
        with litestate.context(when=object()), pytest.raises((TypeError, sa.exc.StatementError)):
            ticket.open()
        assert ticket.status == "new"
        session.commit()
        assert rows(session) == []
        assert session.scalar(sa.select(Ticket.status)) == "new"


def test_context_log_args_and_log_data_fill_columns_and_data(db: sa.Engine) -> None:
    with Session(db) as session:
        ticket = saved(session, Ticket())
        with litestate.context(actor_id=1, reason="ctx", request="r1"):
            ticket.open()
            with litestate.context(actor_id=2) as values:
                assert dict(values) == {"actor_id": 2, "reason": "ctx", "request": "r1"}
                ticket.close("fraud")
        session.commit()
        first, second = history(ticket)
        assert (first.actor_id, first.data) == (1, {"reason": "ctx", "request": "r1"})
        # log_args over the context, log_data over both
        assert second.actor_id == 7
        assert second.data == {"reason": "fraud", "request": "r1", "invoice": 42}


def test_litestates_own_columns_are_never_overwritten(db: sa.Engine) -> None:
    with Session(db) as session:
        ticket = saved(session, Ticket())
        with litestate.context(event="forged", ticket_id=999):
            ticket.open()
        [row] = history(ticket)
        assert (row.event, row.ticket_id) == ("open", ticket.id)
        assert row.data == {"event": "forged", "ticket_id": 999}


def test_log_false_writes_nothing_and_log_overrides_the_model(
        db: sa.Engine, sql: StatementLog) -> None:
    with Session(db) as session:
        ticket = saved(session, Ticket())
        ticket.open()
        sql.statements.clear()
        ticket.reset()
        assert sql.verbs() == ["UPDATE"]  # what a transition without log costs
        ticket.reopen()
        session.commit()
        assert rows(session) == [("open", "status", "new", "open")]
        assert rows(session, OtherLog) == [("reopen", "status", "new", "open")]
        assert [r.event for r in history(ticket)] == ["open", "reopen"]


def test_two_state_columns_log_to_one_table(db: sa.Engine) -> None:
    with Session(db) as session:
        ticket = saved(session, Ticket())
        ticket.ask()
        ticket.open()
        session.commit()
        assert [(r.event, r.column) for r in history(ticket)] == [
            ("ask", "review"), ("open", "status")]
        assert ticket.status_changed_at is not None  # review has no changed_at:
        assert rows(session)[0][1] == "review"


def test_state_columns_log_to_two_tables_with_a_uuid_key_and_plain_values(
        db: sa.Engine) -> None:
    with Session(db) as session:
        shipment = saved(session, Shipment())
        shipment.ship()
        shipment.go()
        shipment.raise_level()
        session.commit()
        found = history(shipment)
        assert [(r.event, r.from_state, r.to_state) for r in found] == [
            ("ship", "packed", "shipped"), ("go", "red", "green"), ("raise_level", 0, 1)]
        assert isinstance(found[0].id, uuid.UUID)
        assert [type(r) for r in found] == [ShipmentLog, ShipmentLog, LightLog]


def test_a_body_that_fires_another_logged_transition_keeps_each_rows_data(
        db: sa.Engine) -> None:
    with Session(db) as session:
        nest = saved(session, Nest())
        nest.outer()
        assert [(r.event, r.data) for r in history(nest)] == [
            ("inner", {"level": "inner"}), ("outer", {"level": "outer-before", "after": True})]


def test_contexts_in_concurrent_asyncio_tasks_never_mix() -> None:
    import asyncio

    async def task(n: int) -> list[dict[str, Any]]:
        seen = []
        with litestate.context(task=n) as outer:
            await asyncio.sleep(0)
            seen.append(dict(outer))
            with litestate.context(inner=n) as inner:
                await asyncio.sleep(0)
                seen.append(dict(inner))
        return seen

    async def main() -> list[list[dict[str, Any]]]:
        return list(await asyncio.gather(*(task(n) for n in range(5))))

    for n, seen in enumerate(asyncio.run(main())):
        assert seen == [{"task": n}, {"task": n, "inner": n}]


def test_log_data_outside_a_logged_body_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="log_data"):
        log_data(x=1)


@pytest.mark.postgres
def test_contexts_in_concurrent_threads_never_mix(pg: sa.Engine) -> None:
    """On PostgreSQL: SQLite serializes writers, and these threads wait for each other
    inside their transactions."""
    HistoryBase.metadata.drop_all(pg)
    HistoryBase.metadata.create_all(pg)
    db = pg
    with Session(db) as session:
        ids = [saved(session, Ticket()).id for _ in range(8)]
    barrier = threading.Barrier(len(ids))
    errors: list[BaseException] = []

    def work(n: int, ticket_id: int) -> None:
        try:
            with Session(db) as session, litestate.context(actor_id=n, worker=f"w{n}"):
                ticket = session.get(Ticket, ticket_id)
                assert ticket is not None
                barrier.wait()
                ticket.open()
                with litestate.context(step=2):
                    barrier.wait()
                    ticket.close(f"r{n}")
                session.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n, i)) for n, i in enumerate(ids)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with Session(db) as session:
        for log in session.scalars(sa.select(TicketLog)):
            n = ids.index(log.ticket_id)
            assert log.data["worker"] == f"w{n}"
            if log.event == "open":
                assert (log.actor_id, "step" in log.data) == (n, False)
            else:  # log_data's actor_id wins
                assert (log.actor_id, log.data["step"], log.data["reason"]) == (7, 2, f"r{n}")


def test_a_log_model_without_a_foreign_key_to_the_models_table_is_refused() -> None:
    class Decl(DeclarativeBase):
        pass

    class NoKey(TransitionLog, Decl):
        __tablename__ = "nokey"
        id: Mapped[int] = mapped_column(primary_key=True)

    @state_column("status", log=NoKey)
    class Thing(Decl):
        __tablename__ = "things"
        id: Mapped[int] = mapped_column(primary_key=True)
        status: Mapped[str] = mapped_column(sa.String(20))

        @transition(frm="a", to="b")
        def go(self) -> None:
            pass

    with pytest.raises(DeclarationError) as info:
        Decl.registry.configure()
    assert str(info.value) == "Thing.go: log=NoKey has no foreign key to things; add one"


def test_two_foreign_keys_are_named() -> None:
    class Decl(DeclarativeBase):
        pass

    class TwoKeys(TransitionLog, Decl):
        __tablename__ = "twokeys"
        id: Mapped[int] = mapped_column(primary_key=True)
        a_id: Mapped[int] = mapped_column(sa.ForeignKey("things.id", name="fk_a"))
        b_id: Mapped[int] = mapped_column(sa.ForeignKey("things.id", name="fk_b"))

    @state_column("status", log=TwoKeys)
    class Thing(Decl):
        __tablename__ = "things"
        id: Mapped[int] = mapped_column(primary_key=True)
        status: Mapped[str] = mapped_column(sa.String(20))

        @transition(frm="a", to="b")
        def go(self) -> None:
            pass

    with pytest.raises(DeclarationError) as info:
        Decl.registry.configure()
    assert str(info.value) == ("Thing.go: log=TwoKeys has 2 foreign keys to things: "
                               "fk_a (a_id), fk_b (b_id); it needs exactly one")


def test_a_log_model_mapped_to_a_subquery_is_refused() -> None:
    class Decl(DeclarativeBase):
        pass

    table = sa.Table("view_log", Decl.metadata, sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("thing_id", sa.ForeignKey("things.id")),
                     *(sa.Column(name, sa.String(64))
                       for name in ("event", "column", "from_state", "to_state")),
                     sa.Column("at", sa.DateTime), sa.Column("data", sa.JSON))

    class ViewLog(TransitionLog):
        pass

    Decl.registry.map_imperatively(ViewLog, sa.select(table).subquery())

    @state_column("status", log=ViewLog)
    class Thing(Decl):
        __tablename__ = "things"
        id: Mapped[int] = mapped_column(primary_key=True)
        status: Mapped[str] = mapped_column(sa.String(20))

        @transition(frm="a", to="b")
        def go(self) -> None:
            pass

    with pytest.raises(DeclarationError) as info:
        Decl.registry.configure()
    assert str(info.value) == "Thing.go: log=ViewLog is not a mapped class with a table"


@pytest.mark.parametrize(("options", "message"), [
    ({"log": 3}, "log is a TransitionLog model"),
    ({"log_args": "reason"}, "log_args is a tuple of parameter names"),
])
def test_bad_transition_options_are_refused_at_once(options: dict[str, Any],
                                                    message: str) -> None:
    with pytest.raises(DeclarationError, match=message):
        transition(frm="a", to="b", **options)


def test_log_args_must_name_parameters_and_need_a_log() -> None:
    @state_column("state")
    class Plain:
        state = "a"

        @transition(frm="a", to="b", log_args=("who",))
        def go(self, who: str) -> None:
            pass

    with pytest.raises(DeclarationError, match="log_args"):
        litestate.transitions(Plain)


def test_changed_at_on_a_plain_object_is_stamped_and_restored(frozen_clock: datetime) -> None:
    @state_column("state", changed_at="changed")
    class Door:
        def __init__(self) -> None:
            self.state = "closed"
            self.changed: datetime | None = None

        @transition(frm="closed", to="open")
        def open(self, fail: bool = False) -> None:
            if fail:
                raise TicketFailed

    door = Door()
    with pytest.raises(TicketFailed):
        door.open(fail=True)
    assert (door.state, door.changed) == ("closed", None)
    door.open()
    assert (door.state, door.changed) == ("open", FROZEN)


# -- the queries users ask for ----------------------------------------------------------

def time_in_each_state(session: Session, ticket_id: int, now: datetime) -> dict[str, timedelta]:
    """The README's recipe: each row's state lasted until the next row's ``at``."""
    found = [r for r in history_rows(session, ticket_id) if r.column == "status"]
    spent: dict[str, timedelta] = {}
    for row, following in zip(found, [*found[1:], None], strict=True):
        until = following.at if following is not None else now
        spent[row.to_state] = spent.get(row.to_state, timedelta()) + (
            until.replace(tzinfo=None) - row.at.replace(tzinfo=None))
    return spent


def history_rows(session: Session, ticket_id: int) -> list[TicketLog]:
    return list(session.scalars(sa.select(TicketLog).where(TicketLog.ticket_id == ticket_id)
                                .order_by(TicketLog.at, TicketLog.id)))


def test_time_spent_in_each_state_and_rows_stuck_in_a_state(db: sa.Engine) -> None:
    clock = [datetime(2030, 1, 1, 9)]
    previous = litestate.set_clock(lambda: clock[0])
    try:
        with Session(db) as session:
            ticket, stuck = saved(session, Ticket()), saved(session, Ticket())
            ticket.open()
            stuck.open()
            clock[0] += timedelta(hours=2)
            ticket.close("done")
            session.commit()
            now = clock[0] + timedelta(hours=3)
            assert time_in_each_state(session, ticket.id, now) == {
                "open": timedelta(hours=2), "closed": timedelta(hours=3)}
            # open for longer than 4 hours: the (status, status_changed_at) index serves it
            found = session.scalars(sa.select(Ticket.id).where(
                Ticket.status == "open",
                Ticket.status_changed_at < now - timedelta(hours=4))).all()
            assert found == [stuck.id]
    finally:
        litestate.set_clock(previous)


def as_utc(at: datetime) -> datetime:
    """A read ``at`` as naive UTC (PostgreSQL returns it aware, in the session's zone)."""
    return at if at.tzinfo is None else at.astimezone(UTC).replace(tzinfo=None)


NINE = datetime(2030, 1, 1, 9)


@pytest.mark.parametrize("reading", [NINE, NINE.replace(tzinfo=UTC),
                                     datetime(2030, 1, 1, 11, tzinfo=timezone(
                                         timedelta(hours=2)))],
                         ids=["naive", "utc", "plus-two"])
def test_the_log_time_is_the_clocks_instant_in_utc_in_a_naive_or_aware_column(
        db: sa.Engine, reading: datetime) -> None:
    """One instant, read naive (UTC), aware in UTC or aware in another zone: both log
    columns, the naive one and the aware one, and changed_at hold 09:00 UTC, whatever
    the zone of PostgreSQL's session; history() orders the rows of both logs by it."""
    clock = [reading]
    previous = litestate.set_clock(lambda: clock[0])
    try:
        with Session(db) as session:
            stamp = saved(session, Stamp())
            if db.dialect.name == "postgresql":  # a naive value would be read in it
                session.execute(sa.text("SET LOCAL TIME ZONE INTERVAL '+05:00' HOUR TO MINUTE"))
            stamp.up()
            clock[0] = reading + timedelta(hours=1)
            stamp.go()
            clock[0] = reading + timedelta(hours=2)
            stamp.down()
            ident = stamp.id
            session.commit()
        with Session(db) as session:
            stamp = load(session, Stamp, ident)
            rows = history(stamp)
            assert [(row.event, as_utc(row.at)) for row in rows] == [
                ("up", NINE), ("go", NINE + timedelta(hours=1)),
                ("down", NINE + timedelta(hours=2))]
            assert stamp.status_changed_at == NINE + timedelta(hours=1)
    finally:
        litestate.set_clock(previous)


# -- every sequence: the log is the committed transitions ---------------------------------

STEPS = st.lists(st.tuples(st.sampled_from(["open", "close", "reset", "reopen", "ask"]),
                           st.booleans(), st.sampled_from(["commit", "rollback", "none"])),
                 min_size=1, max_size=12)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
def test_the_log_always_equals_the_committed_transitions(
        db: sa.Engine, steps: list[tuple[str, bool, str]]) -> None:
    with Session(db) as session:
        session.execute(sa.delete(TicketLog))
        session.execute(sa.delete(OtherLog))
        session.execute(sa.delete(Ticket))
        ticket = saved(session, Ticket())
        committed: list[tuple[str, str, str, str]] = []
        pending: list[tuple[str, str, str, str]] = []
        for event, fail, then in steps:
            column = "review" if event == "ask" else "status"
            before = getattr(ticket, column)
            try:
                if event == "close":
                    ticket.close("why", fail=fail)
                else:
                    getattr(ticket, event)()
            except (TransitionError, TicketFailed):
                pass
            else:
                if event not in ("reset", "reopen"):  # reset logs nothing, reopen elsewhere
                    pending.append((event, column, before, getattr(ticket, column)))
            if then == "commit":
                session.commit()
                committed += pending
                pending = []
            elif then == "rollback":
                session.rollback()
                pending = []
        session.commit()
        committed += pending
        assert rows(session) == committed
