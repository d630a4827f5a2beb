"""The core issue's session cases: the database refusing the write, a body that commits,
"committed" under an external transaction, bad calls, key edits, pysqlite, vanished rows."""

from __future__ import annotations

import gc
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, object_session
from sqlalchemy.orm.exc import DetachedInstanceError

import litestate
from litestate import ConflictError, InvalidStateError, state_column, transition
from tests.conftest import SignalLog, StatementLog, recording


class TrustBase(DeclarativeBase):
    pass


def _session_of(obj: object) -> Session:
    session = object_session(obj)
    assert session is not None
    return session


@state_column("status")
class Order(TrustBase):
    __tablename__ = "trust_orders"
    __table_args__ = (sa.CheckConstraint("status <> 'banned'", name="trust_orders_banned"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="new")
    note: Mapped[str] = mapped_column(sa.String(40), default="")
    paid_at: Mapped[datetime | None]

    @transition(frm="new", to="banned")
    def ban(self) -> None:
        """The CHECK constraint refuses this UPDATE; no body, so no SAVEPOINT."""

    @transition(frm="new", to="banned")
    def ban_noting(self, note: str) -> None:
        self.note = note

    @transition(frm="new", to="paid", timestamp=True)
    def pay(self) -> None:
        pass

    @transition(frm="new", to="packed")
    def pack(self, note: str) -> None:
        self.note = note

    @transition(frm="new", to="paid")
    def pay_and_commit(self) -> None:
        _session_of(self).commit()

    @transition(frm="new", to="held", lock=True)
    def hold(self) -> None:
        pass

    @transition(frm="*", to="new")
    def reset(self, reason: str, *, by: str = "") -> None:
        self.note = f"{reason} {by}".strip()


@pytest.fixture
def orders(engine: sa.Engine) -> sa.Engine:
    TrustBase.metadata.drop_all(engine)
    TrustBase.metadata.create_all(engine)
    return engine


def _new_order(session: Session, **values: Any) -> Order:
    order = Order(**values)
    session.add(order)
    session.commit()
    return order


def _status(engine: sa.Engine, order_id: int) -> str | None:
    """The row as the database has it, on a connection of its own."""
    with engine.connect() as conn:
        return conn.scalar(sa.select(Order.status).where(Order.id == order_id))


def _sent(sql: StatementLog) -> list[str]:
    """The statements' verbs, without the BEGIN that SQLite's enable_savepoints sends."""
    return [verb for verb in sql.verbs() if verb != "BEGIN"]


def _check_violation(engine: sa.Engine) -> type[sa.exc.DBAPIError]:
    """What a failed CHECK constraint raises: MariaDB's error 4025 has no SQLSTATE class
    PyMySQL maps, so it arrives as an OperationalError."""
    return sa.exc.OperationalError if engine.dialect.name == "mysql" else sa.exc.IntegrityError


def _count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(sa.select(sa.func.count()).select_from(Order)) or 0


# -- 2. the database refuses litestate's UPDATE -------------------------------------------


def test_a_refused_update_without_a_savepoint_makes_the_session_refuse_to_commit(
        orders: sa.Engine) -> None:
    """Either the caller's work survives or the session says it did not: never a commit
    that silently lost it. Without a SAVEPOINT (no body, no transition_succeeded
    receiver), the session refuses until rollback()."""
    heard: list[str] = []

    def failed(sender: type, *, error: BaseException, **extra: Any) -> None:
        heard.append(f"failed {type(error).__name__}")

    def committed(sender: type, *, event: str, **extra: Any) -> None:
        heard.append(f"committed {event}")

    with Session(orders) as session, litestate.transition_failed.connected_to(failed), \
            litestate.transition_committed.connected_to(committed):
        order, paid = _new_order(session), _new_order(session)
        ids = (order.id, paid.id)
        paid.pay()  # queued for transition_committed
        session.add(Order(note="flushed work"))
        session.flush()
        refused = _check_violation(orders)
        with pytest.raises(refused, match="banned"):
            order.ban()
        assert heard == [f"failed {refused.__name__}"]
        with pytest.raises(sa.exc.PendingRollbackError):
            session.commit()
        session.rollback()
        assert heard == [f"failed {refused.__name__}"]
        assert (order.status, paid.status) == ("new", "new")
    assert (_status(orders, ids[0]), _status(orders, ids[1]), _count(orders)) == (
        "new", "new", 2)


def test_a_refused_update_inside_a_body_savepoint_keeps_the_callers_work(
        orders: sa.Engine, signals: SignalLog) -> None:
    with Session(orders) as session:
        order, paid = _new_order(session), _new_order(session)
        ids = (order.id, paid.id)
        paid.pay()
        session.add(Order(note="flushed work"))
        session.flush()
        with pytest.raises(_check_violation(orders), match="banned"):
            order.ban_noting("no")
        assert (order.status, order.note) == ("new", "")
        session.commit()  # the SAVEPOINT rolled back; the caller's transaction is intact
        assert [h.payload["record"] for h in signals.of("transition-committed")] == [paid]
    assert (_status(orders, ids[0]), _status(orders, ids[1]), _count(orders)) == (
        "new", "paid", 3)


# A lock wait that gives up at once, for the rest of the transaction (MariaDB's is a
# session setting: restored after, the pooled connection keeps it otherwise).
_NO_WAIT = {"postgresql": ["SET LOCAL lock_timeout = '50ms'"],
            "mysql": ["SET SESSION innodb_lock_wait_timeout = 0"]}
_WAIT_AGAIN = {"postgresql": [], "mysql": ["SET SESSION innodb_lock_wait_timeout = DEFAULT"]}


def test_a_lock_that_fails_makes_the_session_refuse_to_commit(
        server: sa.Engine, signals: SignalLog) -> None:
    """SELECT ... FOR UPDATE fails (here a lock timeout; a lost deadlock is the same).
    PostgreSQL has dropped the transaction; MariaDB rolled back the statement (the whole
    transaction for a deadlock). Either way the session refuses until rollback(), and
    earlier transitions are not reported committed."""
    TrustBase.metadata.drop_all(server)
    TrustBase.metadata.create_all(server)
    dialect = server.dialect.name
    with Session(server) as holder, Session(server) as session:
        order, paid = _new_order(session), _new_order(session)
        paid_id = paid.id
        holder.execute(sa.select(Order).where(Order.id == order.id).with_for_update())
        paid.pay()
        for statement in _NO_WAIT[dialect]:
            session.execute(sa.text(statement))
        with pytest.raises(sa.exc.OperationalError):
            order.hold()
        assert signals.names()[-1] == "transition-failed"
        with pytest.raises(sa.exc.PendingRollbackError):
            session.commit()
        session.rollback()
        for statement in _WAIT_AGAIN[dialect]:
            session.execute(sa.text(statement))
        session.commit()
        holder.rollback()
    assert signals.of("transition-committed") == []
    assert _status(server, paid_id) == "new"


# -- 5. a body that commits -------------------------------------------------------------


def test_a_body_that_commits_is_refused_and_row_object_and_signals_agree(
        orders: sa.Engine, signals: SignalLog) -> None:
    with Session(orders) as session:
        order = _new_order(session)
        order_id = order.id
        with pytest.raises(sa.exc.InvalidRequestError, match=r"commit\(\) inside a transition"):
            order.pay_and_commit()
        assert order.status == "new"
        assert _status(orders, order_id) == "new"
        assert signals.names() == ["transition-failed"]
        order.note = "still usable"
        session.commit()
    assert _status(orders, order_id) == "new"
    assert signals.of("transition-committed") == []


def test_a_savepoint_of_the_bodys_own_may_be_released(orders: sa.Engine) -> None:
    with Session(orders) as session:
        order = _new_order(session)
        order_id = order.id

        def body() -> None:
            with session.begin_nested():
                order.note = "inner"

        litestate.transition_state(order, event="pack", frm="new", to="packed", body=body)
        session.commit()
    assert _status(orders, order_id) == "packed"


# -- 6. committed means the database committed ---------------------------------------------


@pytest.mark.parametrize("mode", ["create_savepoint", "conditional_savepoint",
                                  "rollback_only"])
@pytest.mark.parametrize("outer", ["commit", "rollback"])
def test_committed_waits_for_the_external_transaction(
        orders: sa.Engine, mode: Any, outer: str) -> None:
    """SQLAlchemy's "join a Session into an external transaction" recipe: the session's
    commit() does not commit the database; the outer transaction's end decides."""
    rows_when_heard: list[str | None] = []

    def heard(sender: type, *, record_id: int, **extra: Any) -> None:
        rows_when_heard.append(_status(orders, record_id))

    with orders.connect() as conn, litestate.transition_committed.connected_to(heard):
        transaction = conn.begin()
        with Session(bind=conn, join_transaction_mode=mode) as session:
            order = _new_order(session)
            order.pay()
            session.commit()
            assert rows_when_heard == []
        getattr(transaction, outer)()
        expected = ["paid"] if outer == "commit" else []
        assert rows_when_heard == expected


def test_committed_is_dropped_when_an_enclosing_savepoint_of_the_callers_rolls_back(
        orders: sa.Engine, signals: SignalLog) -> None:
    with orders.connect() as conn:
        transaction = conn.begin()
        kept = conn.begin_nested()
        with Session(bind=conn, join_transaction_mode="create_savepoint") as session:
            first = _new_order(session)
            first_id = first.id
            first.pay()
            session.commit()
        kept.commit()
        undone = conn.begin_nested()
        with Session(bind=conn, join_transaction_mode="create_savepoint") as session:
            second = _new_order(session)
            second.pay()
            session.commit()
        undone.rollback()
        transaction.commit()
    assert [h.payload["record_id"] for h in signals.of("transition-committed")] == [first_id]


def test_a_session_on_an_engine_still_sends_committed_after_its_commit(
        orders: sa.Engine, signals: SignalLog) -> None:
    with Session(orders) as session:
        order = _new_order(session)
        order.pay()
        assert signals.of("transition-committed") == []
        session.commit()
        assert [h.payload["record"] for h in signals.of("transition-committed")] == [order]


# -- 7, 8. nothing passes that should be refused -------------------------------------------


@state_column("state")
class Gate:
    def __init__(self) -> None:
        self.state = "shut"

    async def is_open(self) -> bool:
        return False

    @transition(frm="shut", to="open", guard=lambda self: self.is_open())
    def open(self) -> None:
        pass


def test_a_guard_returning_an_awaitable_is_an_error_not_a_pass() -> None:
    gate = Gate()
    with pytest.raises(TypeError, match=r"guard .* of open\(\) returned an awaitable"):
        gate.open()
    with pytest.raises(TypeError, match="awaitable"):
        litestate.can_transition(gate, "open")
    gc.collect()  # the coroutine was closed: no "never awaited" warning (warnings are errors)
    assert gate.state == "shut"


@pytest.mark.parametrize(("call", "message"), [
    (lambda o: o.pay("x", 42), r"Order\.pay\(\) takes 1 positional argument"),
    (lambda o: o.pay(bogus=True), r"Order\.pay\(\) got an unexpected keyword argument"),
    (lambda o: o.reset(), r"Order\.reset\(\) missing 1 required positional argument"),
    (lambda o: o.reset("x", "y"), r"Order\.reset\(\) takes 2 positional arguments"),
    (lambda o: o.pack(note="a", other=1), r"unexpected keyword argument 'other'"),
])
def test_a_call_that_does_not_fit_the_method_fails_before_any_sql_or_signal(
        orders: sa.Engine, sql: StatementLog, signals: SignalLog,
        call: Callable[[Order], object], message: str) -> None:
    with Session(orders) as session:
        order = _new_order(session, status="new")
        assert order.status == "new"
        sql.statements.clear()
        with pytest.raises(TypeError, match=message):
            call(order)
        assert sql.statements == []
        assert signals.heard == []
        transient = Order(status="new")
        with pytest.raises(TypeError, match=message):
            call(transient)
        assert transient.status == "new"
        if "takes 1 positional" in message:
            with pytest.raises(TypeError, match=message):
                litestate.can_transition(order, "pay", "x", 42)


# -- 15. an unsaved key edit ------------------------------------------------------------


@pytest.mark.parametrize("with_receiver", [False, True])
def test_an_unsaved_primary_key_edit_does_not_make_a_conflict(
        orders: sa.Engine, with_receiver: bool) -> None:
    def receiver(sender: type, **extra: Any) -> None:
        pass

    with Session(orders) as session, recording() as log:
        order = _new_order(session, id=1)
        order.id = 99
        if with_receiver:
            with litestate.transition_succeeded.connected_to(receiver):
                order.pay()
        else:
            order.pack("moved")
        session.commit()
        assert log.names()[-1] == "transition-committed"
    assert _status(orders, 99) == ("paid" if with_receiver else "packed")
    assert _status(orders, 1) is None


# -- 19. SQLite through pysqlite's own transaction handling -----------------------------------


def test_sqlite_without_enable_savepoints_rolls_a_body_back_with_the_transaction(
        tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'plain.db'}")
    TrustBase.metadata.create_all(engine)
    with Session(engine) as session:
        order = _new_order(session)
        order.pack("first write of the transaction")
        session.rollback()
        assert order.status == "new"
        order.pack("again")
        order_id = order.id
        session.commit()
    assert _status(engine, order_id) == "packed"
    with Session(engine) as session:
        other = _new_order(session)
        other_id = other.id

        def explode() -> None:
            raise RuntimeError("body failed")

        with pytest.raises(RuntimeError):
            litestate.transition_state(other, event="pack", frm="new", to="packed",
                                       body=explode)
        session.commit()
    assert _status(engine, other_id) == "new"
    engine.dispose()


# -- 20. vanished rows, raising guards, detached objects ------------------------------------


def test_a_locked_transition_on_a_row_deleted_by_another_session_is_a_conflict(
        orders: sa.Engine, signals: SignalLog) -> None:
    with Session(orders, expire_on_commit=False) as session, Session(orders) as other:
        order = _new_order(session)  # loaded, and no read lock held on SQLite
        other.execute(sa.delete(Order).where(Order.id == order.id))
        other.commit()
        with pytest.raises(ConflictError) as info:
            order.hold()
        assert (info.value.reason, info.value.detail) == ("conflict", "the row no longer exists")
        assert signals.names() == ["transition-invalid"]


def test_an_expired_object_whose_row_was_deleted_is_a_conflict(orders: sa.Engine) -> None:
    with Session(orders) as session, Session(orders) as other:
        order = _new_order(session)
        order_id = order.id
        session.commit()  # expired; SQLite's read lock released
        other.execute(sa.delete(Order).where(Order.id == order_id))
        other.commit()
        with pytest.raises(ConflictError, match="no longer exists"):
            order.pay()
        with pytest.raises(ConflictError, match="no longer exists"):
            order.pack("x")
        assert litestate.can_transition(order, "pay") is False


def test_a_raising_guard_propagates_unchanged_with_a_note(signals: SignalLog) -> None:
    class Boom(Exception):
        pass

    def guard(self: object) -> bool:
        raise Boom("the guard failed")

    @state_column("state")
    class Valve:
        state = "shut"

        @transition(frm="shut", to="open", guard=guard)
        def open(self) -> None:
            pass

    valve = Valve()
    with pytest.raises(Boom) as info:
        valve.open()
    assert any("raised by guard" in note and "open()" in note
               for note in info.value.__notes__)
    with pytest.raises(Boom):
        litestate.can_transition(valve, "open")
    assert valve.state == "shut"
    assert signals.heard == []


def test_a_detached_object_asked_whether_it_can_transition(orders: sa.Engine) -> None:
    with Session(orders, expire_on_commit=False) as session:
        loaded, expired = _new_order(session), _new_order(session)
        session.expire(expired)
    assert litestate.can_transition(loaded, "pay") is True  # answers from what it loaded
    with pytest.raises(DetachedInstanceError, match=r"cannot ask pay\(\) of Order"):
        litestate.can_transition(expired, "pay")
    with pytest.raises(DetachedInstanceError, match=r"cannot pay\(\) Order"):
        loaded.pay()


# -- one UPDATE where hand-written compare-and-set sends one ---------------------------------


def test_an_expired_object_without_guards_or_body_is_one_update(
        orders: sa.Engine, sql: StatementLog, frozen_clock: datetime) -> None:
    with Session(orders) as session:
        order = _new_order(session)
        sql.statements.clear()
        order.pay()
        assert _sent(sql) == ["UPDATE"]
        assert (order.status, order.paid_at) == ("paid", frozen_clock)
        order_id = order.id
        session.commit()
    assert _status(orders, order_id) == "paid"


def test_an_expired_object_in_another_state_is_refused_as_invalid_after_one_read(
        orders: sa.Engine, sql: StatementLog) -> None:
    heard: list[object] = []

    def invalid(sender: type, *, from_state: object, **extra: Any) -> None:
        heard.append(from_state)

    with Session(orders) as session, litestate.transition_invalid.connected_to(invalid):
        order = _new_order(session, status="shipped")
        sql.statements.clear()
        with pytest.raises(InvalidStateError) as info:
            order.pay()
        assert _sent(sql) == ["UPDATE", "SELECT"]
        assert (info.value.from_state, info.value.reason) == ("shipped", "invalid")
        assert heard == ["shipped"]
        order_id = order.id
        session.commit()
    assert _status(orders, order_id) == "shipped"



# -- found by attacking the core ------------------------------------------------------------


@state_column("status")
class Ticket(TrustBase):
    __tablename__ = "trust_tickets"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="new")
    title: Mapped[str | None] = mapped_column(sa.String(20), nullable=False, default="t")

    @transition(frm="new", to="open")
    def open(self, title: str | None) -> None:
        self.title = title  # None: the body's flush fails (NOT NULL)

    @transition(frm="new", to="open")
    def open_and_roll_back(self) -> None:
        _session_of(self).rollback()

    @transition(frm="new", to="open")
    def open_plain(self) -> None:
        pass


def test_a_body_whose_flush_fails_leaves_the_session_usable_with_the_callers_work(
        orders: sa.Engine) -> None:
    with Session(orders) as session:
        ticket, other = Ticket(), Ticket()
        session.add_all([ticket, other])
        session.commit()
        ids = (ticket.id, other.id)
        other.title = "caller"
        with pytest.raises(sa.exc.IntegrityError):
            ticket.open(None)
        assert ticket.status == "new"
        session.commit()
    with orders.connect() as conn:
        rows = dict(conn.execute(sa.select(Ticket.id, Ticket.title).order_by(Ticket.id)).all())
        statuses = set(conn.scalars(sa.select(Ticket.status)))
    assert (rows[ids[1]], statuses) == ("caller", {"new"})


def test_a_body_that_rolls_back_the_session_is_a_clear_error(
        orders: sa.Engine, signals: SignalLog) -> None:
    with Session(orders) as session:
        ticket = Ticket()
        session.add(ticket)
        session.commit()
        with pytest.raises(sa.exc.InvalidRequestError, match="rolled back or closed"):
            ticket.open_and_roll_back()
        assert ticket.status == "new"
        assert signals.names() == ["transition-failed"]
        session.commit()
        assert ticket.status == "new"


def test_an_object_deleted_in_this_session_is_a_conflict(
        orders: sa.Engine, signals: SignalLog) -> None:
    with Session(orders, expire_on_commit=False) as session:
        ticket = Ticket()
        session.add(ticket)
        session.commit()
        session.delete(ticket)
        with pytest.raises(ConflictError, match="deleted in this session"):
            ticket.open_plain()
        with pytest.raises(ConflictError, match="deleted in this session"):
            ticket.open("new title")
    refusals = signals.of("transition-invalid")
    assert [(h.payload["record"], h.payload["args"]) for h in refusals] == [
        (ticket, ()), (ticket, ("new title",))]


def test_an_update_that_matches_several_rows_is_undone_and_refused(tmp_path: Path) -> None:
    """A mapper-only primary key that is not unique in the table: never write two rows."""
    registry = sa.orm.registry()
    jobs = sa.Table("jobs", registry.metadata, sa.Column("code", sa.Integer),
                    sa.Column("status", sa.String(10)))

    @state_column("status")
    class Job:
        @transition(frm="new", to="done")
        def finish(self) -> None:
            pass

    registry.map_imperatively(Job, jobs, primary_key=[jobs.c.code])
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    registry.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(jobs.insert(), [{"code": 1, "status": "new"}] * 2)
    with Session(engine) as session:
        job = session.scalars(sa.select(Job).limit(1)).one()
        with pytest.raises(sa.orm.exc.StaleDataError, match="matched 2 rows"):
            job.finish()
        with pytest.raises(sa.exc.PendingRollbackError):
            session.commit()
    with engine.connect() as conn:
        assert set(conn.scalars(sa.select(jobs.c.status))) == {"new"}
    engine.dispose()
    registry.dispose()


def _configure_fails(registry: sa.orm.registry, match: str) -> None:
    try:
        with pytest.raises(litestate.DeclarationError, match=match):
            registry.configure()
    finally:
        registry.dispose()


def test_a_state_column_in_the_primary_key_is_a_declaration_error() -> None:
    registry = sa.orm.registry()

    @registry.mapped
    @state_column("status")
    class Keyed:
        __tablename__ = "keyed"
        id: Mapped[int] = mapped_column(primary_key=True)
        status: Mapped[str] = mapped_column(sa.String(10), primary_key=True)

        @transition(frm="new", to="done")
        def finish(self) -> None:
            pass

    _configure_fails(registry, r"Keyed\.finish: status is part of the mapper's identity")


def test_an_application_managed_version_is_a_declaration_error() -> None:
    registry = sa.orm.registry()

    @registry.mapped
    @state_column("status")
    class Doc:
        __tablename__ = "docs"
        id: Mapped[int] = mapped_column(primary_key=True)
        status: Mapped[str] = mapped_column(sa.String(10))
        version: Mapped[int] = mapped_column(default=1)
        __mapper_args__ = {"version_id_col": version,  # noqa: RUF012
                           "version_id_generator": False}

        @transition(frm="draft", to="live")
        def publish(self) -> None:
            pass

    _configure_fails(registry, r"Doc\.publish: version_id_generator=False")


def test_joined_inheritance_with_a_child_key_of_its_own_name(tmp_path: Path) -> None:
    registry = sa.orm.registry()

    @registry.mapped
    class Party:
        __tablename__ = "party"
        id: Mapped[int] = mapped_column(primary_key=True)
        kind: Mapped[str] = mapped_column(sa.String(10))
        __mapper_args__ = {"polymorphic_on": kind,  # noqa: RUF012
                           "polymorphic_identity": "party"}

    @registry.mapped
    @state_column("pstate")
    class Person(Party):
        __tablename__ = "person"
        person_id: Mapped[int] = mapped_column(sa.ForeignKey("party.id"), primary_key=True)
        pstate: Mapped[str] = mapped_column(sa.String(10), default="a")
        __mapper_args__ = {"polymorphic_identity": "person"}  # noqa: RUF012

        @transition(frm="a", to="b")
        def flip(self) -> None:
            pass

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'party.db'}")
    registry.metadata.create_all(engine)
    with Session(engine) as session:
        people = [Person(), Person()]
        session.add_all(people)
        session.commit()
        people[0].flip()
        session.commit()
        assert [p.pstate for p in people] == ["b", "a"]
    engine.dispose()
    registry.dispose()


def test_an_unhashable_guard_works_in_transition_state() -> None:
    class AtLeast:
        __hash__ = None  # type: ignore[assignment]

        def __init__(self, level: int) -> None:
            self.level = level

        def __call__(self, obj: Any) -> bool:
            return bool(obj.level >= self.level)

    @state_column("state")
    class Hatch:
        level = 3
        state = "closed"

    hatch = Hatch()
    litestate.transition_state(hatch, event="open", frm="closed", to="open", guard=AtLeast(1))
    assert hatch.state == "open"


@pytest.mark.parametrize("mode", ["rollback_only", "conditional_savepoint"])
def test_a_savepoint_opened_after_the_write_does_not_own_it(
        orders: sa.Engine, signals: SignalLog, mode: Any) -> None:
    with orders.connect() as conn:
        transaction = conn.begin()
        with Session(bind=conn, join_transaction_mode=mode) as session:
            order = _new_order(session)
            order_id = order.id
            order.pay()
            later = conn.begin_nested()  # opened after the write: its rollback undoes nothing
            session.commit()
            later.rollback()
        transaction.commit()
    assert _status(orders, order_id) == "paid"
    assert [h.payload["record_id"] for h in signals.of("transition-committed")] == [order_id]


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_a_two_phase_transaction_sends_committed_once_or_never(
        server: sa.Engine, signals: SignalLog, outcome: str) -> None:
    TrustBase.metadata.drop_all(server)
    TrustBase.metadata.create_all(server)
    with server.connect() as conn:
        transaction = conn.begin_twophase()
        with Session(bind=conn, join_transaction_mode="create_savepoint") as session:
            order = _new_order(session)
            order_id = order.id
            order.pay()
            session.commit()
        getattr(transaction, outcome)()
        conn.begin().commit()  # an unrelated transaction on the same connection
    assert len(signals.of("transition-committed")) == (1 if outcome == "commit" else 0)
    assert _status(server, order_id) == ("paid" if outcome == "commit" else None)
