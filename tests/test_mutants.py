"""Behaviour that mutation testing of litestate/core.py found unpinned by the other tests."""

from __future__ import annotations

import enum
import functools
import gc
import operator
import weakref
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, SessionTransaction, mapped_column

import litestate
from litestate import (
    ConflictError,
    DeclarationError,
    available_transitions,
    can_transition,
    state_column,
    transition,
    transition_committed,
    transitions,
)
from tests.conftest import SignalLog, StatementLog
from tests.models import Account, Job, PaymentIntent, PaymentStatus, Todo, TodoEvent


class MutantBase(DeclarativeBase):
    pass


@state_column("status")
class Counted(MutantBase):
    """The ORM's own version counter (``version_id_col`` with the default generator)."""

    __tablename__ = "mutant_counted"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="new")
    note: Mapped[str] = mapped_column(sa.String(20), default="")
    version: Mapped[int] = mapped_column(nullable=False)
    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 - declarative reads it

    @transition(frm="new", to="open")
    def open(self) -> None:
        pass


@state_column("status")
class Bumped(MutantBase):
    """A version the database bumps itself (a trigger), ``version_id_generator=False``."""

    __tablename__ = "mutant_bumped"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="new")
    version: Mapped[int] = mapped_column(nullable=False, server_default="1",
                                         server_onupdate=sa.FetchedValue())
    __mapper_args__ = {  # noqa: RUF012 - declarative reads it
        "version_id_col": version, "version_id_generator": False}

    @transition(frm="new", to="open")
    def open(self) -> None:
        pass


@state_column("status")
class Stamped(MutantBase):
    """An empty body and a timestamp: no SAVEPOINT, nothing flushed before the UPDATE."""

    __tablename__ = "mutant_stamped"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="new")
    opened_at: Mapped[datetime | None]

    @transition(frm="new", to="open", timestamp="opened_at")
    def open(self) -> None:
        pass


@state_column("phase")
class Drafted(MutantBase):
    """A column default that is no state the column could hold (too long for it)."""

    __tablename__ = "mutant_drafted"
    id: Mapped[int] = mapped_column(primary_key=True)
    phase: Mapped[str] = mapped_column(sa.String(3), default="draft")

    @transition(frm="*", to="new")
    def restart(self) -> None:
        pass


_TRIGGERS = {
    "sqlite": [
        "CREATE TRIGGER mutant_bump AFTER UPDATE OF status ON mutant_bumped BEGIN "
        "UPDATE mutant_bumped SET version = version + 1 WHERE id = NEW.id; END",
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION mutant_bump() RETURNS trigger AS $$ BEGIN "
        "NEW.version := OLD.version + 1; RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER mutant_bump BEFORE UPDATE ON mutant_bumped FOR EACH ROW "
        "EXECUTE FUNCTION mutant_bump()",
    ],
    "mysql": [
        "CREATE TRIGGER mutant_bump BEFORE UPDATE ON mutant_bumped FOR EACH ROW "
        "SET NEW.version = OLD.version + 1",
    ],
}


@pytest.fixture
def tables(engine: sa.Engine) -> Iterator[sa.Engine]:
    MutantBase.metadata.drop_all(engine)
    MutantBase.metadata.create_all(engine)
    with engine.begin() as conn:
        for ddl in _TRIGGERS[engine.dialect.name]:
            conn.exec_driver_sql(ddl)
    yield engine
    MutantBase.metadata.drop_all(engine)


def read(engine: sa.Engine, query: sa.Select[Any]) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(query)]


# -- declarations -------------------------------------------------------------------------


@pytest.mark.parametrize("frm", [1.5, b"on", {"on": 1}, None])
def test_frm_that_is_no_state_nor_an_iterable_of_states_is_refused_at_once(frm: Any) -> None:
    with pytest.raises(DeclarationError, match=r"frm is a state \(str, int or Enum\)"):
        transition(frm=frm, to="on")


def test_a_guard_naming_an_async_method_is_a_declaration_error() -> None:
    @state_column("state")
    class Lamp:
        state = "off"

        async def ready(self) -> bool:
            return True

        @transition(frm="off", to="on", guard="ready")
        def switch(self) -> None:
            pass

    with pytest.raises(DeclarationError, match="guard 'ready' is an async or generator"):
        transitions(Lamp)


def test_a_state_column_decorator_applied_after_compilation_recompiles_the_class() -> None:
    @state_column("a")
    class Lamp:
        a = b = "off"

        @transition(frm="off", to="on")
        def switch(self) -> None:
            pass

    class Spotlight(Lamp):
        pass

    assert transitions(Spotlight)[0].column == "a"
    state_column("b")(Spotlight)
    assert transitions(Spotlight)[0].column == "b"
    spot = Spotlight()
    spot.switch()
    assert (spot.a, spot.b) == ("off", "on")


def test_an_object_whose_class_declares_no_transitions_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="is not an object with transitions"):
        available_transitions(None)
    with pytest.raises(TypeError, match="declares no transitions"):
        transitions(int)


def test_a_mapped_class_without_transitions_is_a_type_error() -> None:
    sa.orm.configure_mappers()
    with pytest.raises(TypeError, match="TodoEvent declares no transitions"):
        transitions(TodoEvent)
    with pytest.raises(TypeError, match="is not an object with transitions"):
        available_transitions(TodoEvent(todo_id=1, name="x"))


def test_a_class_with_a_state_column_but_no_transitions_has_none_available() -> None:
    @state_column("state")
    class Bare:
        state = "off"

    assert available_transitions(Bare()) == []
    assert transitions(Bare) == ()


# -- arguments and guards -----------------------------------------------------------------


@state_column("state")
class Door:
    def __init__(self) -> None:
        self.state = "closed"
        self.key = ""
        self.ok = True

    @transition(frm="closed", to="open", guard=lambda self, key, /: key == "k")
    def open(self, key: str, /) -> None:
        self.key = key

    @transition(frm="closed", to="ajar", guard=operator.attrgetter("ok"))
    def nudge(self, force: int) -> None:
        pass

    @transition(frm="closed", to="shut")
    def shut(self, how: str, /) -> None:
        pass

    @transition(frm="closed", to="tagged")
    def tag(self, *labels: str, by: str) -> None:
        self.key = ",".join(labels) + f" by {by}"

    @transition(frm="closed", to="labelled", guard=lambda self: self.ok)
    def label(self, *labels: str) -> None:
        self.key = ",".join(labels)

    @transition(frm="closed", to="locked",
                guard=lambda self, *, code, who: bool(code and who))
    def lock(self, *, code: str, who: str) -> None:
        pass


def test_positional_only_parameters_are_kept_and_reach_the_guard() -> None:
    door = Door()
    assert can_transition(door, "open", "k")
    assert not can_transition(door, "open", "x")
    with pytest.raises(TypeError, match="positional-only arguments passed as keyword"):
        door.open(key="k")  # type: ignore[call-arg]
    door.open("k")
    assert (door.state, door.key) == ("open", "k")


def test_a_positional_only_parameter_passed_by_keyword_is_refused_before_anything_runs(
        ) -> None:
    door = Door()
    with pytest.raises(TypeError, match="positional-only arguments passed as keyword"):
        door.shut(how="hard")  # type: ignore[call-arg]
    assert door.state == "closed"
    door.shut("hard")
    assert door.state == "shut"


def test_star_args_before_keyword_only_parameters_are_kept() -> None:
    door = Door()
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'by'"):
        door.tag("a")  # type: ignore[call-arg]
    door.tag("a", "b", by="ada")
    assert (door.state, door.key) == ("tagged", "a,b by ada")


def test_a_guard_that_cannot_take_extra_positional_arguments_takes_the_instance_alone(
        ) -> None:
    door = Door()
    assert can_transition(door, "label", "a", "b")
    door.label("a", "b")
    assert (door.state, door.key) == ("labelled", "a,b")


def test_keyword_only_parameters_are_kept_and_reach_the_guard() -> None:
    door = Door()
    assert can_transition(door, "lock", code="1", who="ada")
    assert not can_transition(door, "lock", code="", who="ada")
    with pytest.raises(TypeError):
        door.lock("1", "ada")  # type: ignore[call-arg]
    door.lock(code="1", who="ada")
    assert door.state == "locked"


def test_a_guard_without_a_signature_takes_the_instance_alone() -> None:
    door = Door()
    assert can_transition(door, "nudge", 3)
    door.ok = False
    assert not can_transition(door, "nudge", 3)
    door.ok = True
    door.nudge(3)
    assert door.state == "ajar"


def _positive(self: object, n: int) -> bool:
    return n > 0


def test_available_transitions_still_asks_the_guards_after_one_it_cannot_ask() -> None:
    @state_column("state")
    class Worker:
        state = "idle"
        allowed = False

        @transition(frm="idle", to="busy", guard=[_positive, "allowed"])
        def work(self, n: int) -> None:
            pass

    worker = Worker()
    assert available_transitions(worker) == []
    worker.allowed = True
    assert available_transitions(worker) == ["work"]


def test_available_transitions_asks_guards_that_need_no_argument_the_call_requires() -> None:
    @state_column("state")
    class Press:
        state = "idle"
        armed = False

        @transition(frm="idle", to="pressing", guard="armed")
        def press(self, force: int) -> None:
            pass

        @transition(frm="idle", to="tapping", guard=lambda self, force=1: force > 0)
        def tap(self, force: int = 1) -> None:
            pass

        @transition(frm="idle", to="stopped", guard=lambda self, force=0: force > 0)
        def stop(self, force: int = 0) -> None:
            pass

    press = Press()
    assert available_transitions(press) == ["tap"]
    press.armed = True
    assert available_transitions(press) == ["press", "tap"]


def test_a_guard_raising_in_a_probe_gets_a_note_naming_it() -> None:
    @state_column("state")
    class Gate:
        state = "shut"

        def check(self) -> bool:
            raise RuntimeError("sensor down")

        @transition(frm="shut", to="up", guard="check")
        def lift(self) -> None:
            pass

    with pytest.raises(RuntimeError, match="sensor down") as info:
        can_transition(Gate(), "lift")
    assert info.value.__notes__ == ["raised by guard check of lift()"]


def test_a_refusal_of_a_plain_object_names_it_by_its_id() -> None:
    @state_column("state")
    class Valve:
        def __init__(self) -> None:
            self.id, self.state = 7, "shut"

        @transition(frm="open", to="shut")
        def close(self) -> None:
            pass

    heard: list[Any] = []

    def on_invalid(sender: type, **payload: Any) -> None:
        heard.append(payload["record_id"])

    with litestate.transition_invalid.connected_to(on_invalid), \
            pytest.raises(litestate.InvalidStateError) as info:
        Valve().close()
    assert str(info.value) == ("cannot close() Valve 7: state is 'shut', target 'shut' "
                               "(invalid: close starts from 'open')")
    assert heard == [7]


def test_a_mapped_class_without_transitions_in_an_unconfigured_registry_is_a_type_error(
        ) -> None:
    class Fresh(DeclarativeBase):
        pass

    class Note(Fresh):
        __tablename__ = "mutant_notes"
        id: Mapped[int] = mapped_column(primary_key=True)

    try:
        with pytest.raises(TypeError, match="Note declares no transitions"):
            transitions(Note)
    finally:
        Fresh.registry.dispose()


# -- unsaved objects ---------------------------------------------------------------------


def test_a_transient_object_reads_its_state_from_the_column_default() -> None:
    job = Job()
    assert can_transition(job, "cancel")
    assert "cancel" in available_transitions(job)
    job.cancel()
    assert job.state == "canceled"


def test_a_column_default_that_is_no_state_is_still_the_state_read() -> None:
    drafted = Drafted()
    assert available_transitions(drafted) == ["restart"]
    drafted.restart()
    assert drafted.phase == "new"


class Recorded:
    """A decorator written as a class: the body is a callable object, not a function."""

    def __init__(self, fn: Callable[..., None]) -> None:
        self.fn = fn
        self.calls = 0
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        self.fn(*args, **kwargs)


def test_a_body_that_is_a_callable_object_runs() -> None:
    @state_column("state")
    class Kettle:
        state = "cold"
        litres = 0

        @transition(frm="cold", to="hot")
        @Recorded
        def boil(self, litres: int) -> None:
            self.litres = litres

    kettle = Kettle()
    kettle.boil(2)
    assert (kettle.state, kettle.litres) == ("hot", 2)


# -- in a session ------------------------------------------------------------------------


def test_an_enum_column_holding_a_name_is_read_as_the_member(
        session: Session, signals: SignalLog) -> None:
    intent = PaymentIntent()
    session.add(intent)
    session.commit()
    intent.status = "pending"  # type: ignore[assignment]  # SQLAlchemy accepts the name
    assert can_transition(intent, "process")
    assert "process" in available_transitions(intent)
    intent.process()
    assert intent.status is PaymentStatus.processing
    [succeeded] = signals.of("transition-succeeded")
    assert succeeded.payload["from_state"] is PaymentStatus.pending


def test_a_conflict_expires_what_the_caller_did_not_edit_and_keeps_what_they_did(
        engine: sa.Engine, new_session: Callable[..., Session]) -> None:
    mine, theirs = new_session(expire_on_commit=False), new_session()
    account = Account(owner="ada")
    mine.add(account)
    mine.commit()
    theirs.execute(sa.update(Account).values(status="closed", owner="bob"))
    theirs.commit()
    account.balance = 5  # an unsaved edit of the caller's
    with pytest.raises(ConflictError):
        account.reopen()
    assert (account.status, account.owner, account.balance) == ("closed", "bob", 5)


def test_a_lock_on_a_row_deleted_by_someone_else_is_a_conflict_without_an_update(
        engine: sa.Engine, new_session: Callable[..., Session], sql: StatementLog) -> None:
    mine, theirs = new_session(expire_on_commit=False), new_session()
    account = Account()
    mine.add(account)
    mine.commit()
    theirs.execute(sa.delete(Account).where(Account.id == account.id))
    theirs.commit()
    sql.statements.clear()
    with pytest.raises(ConflictError) as info:
        account.close()
    assert (info.value.from_state, info.value.detail) == ("open", "the row no longer exists")
    assert "UPDATE" not in sql.verbs()


def test_a_clock_that_fails_keeps_the_callers_unsaved_edit_of_the_timestamp(
        tables: sa.Engine, new_session: Callable[..., Session]) -> None:
    session = new_session()
    stamped = Stamped()
    session.add(stamped)
    session.commit()
    assert stamped.status == "new"  # loaded: the call reads it from memory
    mine = datetime(2020, 1, 1)
    stamped.opened_at = mine

    def broken() -> datetime:
        raise OSError("no clock")

    previous = litestate.set_clock(broken)
    try:
        with pytest.raises(OSError, match="no clock"):
            stamped.open()
    finally:
        litestate.set_clock(previous)
    assert (stamped.status, stamped.opened_at) == ("new", mine)
    session.commit()  # the edit is still the caller's, and is written
    t = Stamped.__table__.c
    assert read(tables, sa.select(t.status, t.opened_at)) == [("new", mine)]


def test_a_transition_bumps_the_orm_version_in_the_row(tables: sa.Engine) -> None:
    with Session(tables) as session:
        counted = Counted()
        session.add(counted)
        session.commit()
        counted.open()
        session.commit()
        t = Counted.__table__.c
        assert read(tables, sa.select(t.status, t.version)) == [("open", 2)]
        assert counted.version == 2
        counted.note = "later"
        session.commit()  # the ORM's own UPDATE finds the version it expects
        assert read(tables, sa.select(t.note, t.version)) == [("later", 3)]


def test_a_version_bumped_by_the_database_is_read_back_after_a_transition(
        tables: sa.Engine) -> None:
    with Session(tables) as session:
        bumped = Bumped()
        session.add(bumped)
        session.commit()
        assert bumped.version == 1
        bumped.open()
        assert (bumped.status, bumped.version) == ("open", 2)
        session.commit()
        t = Bumped.__table__.c
        assert read(tables, sa.select(t.status, t.version)) == [("open", 2)]


def test_a_finished_savepoint_is_not_kept_alive_by_the_session(session: Session) -> None:
    todo = Todo()
    session.add(todo)
    session.commit()
    seen: list[weakref.ref[SessionTransaction]] = []

    def body(fail: bool) -> None:
        nested = session.get_nested_transaction()
        assert nested is not None
        seen.append(weakref.ref(nested))
        if fail:
            raise ValueError("body failed")

    with pytest.raises(ValueError, match="body failed"):
        litestate.transition_state(todo, event="approve", frm="pending", to="done",
                                   body=lambda: body(True))
    litestate.transition_state(todo, event="approve", frm="pending", to="done",
                               body=lambda: body(False))
    gc.collect()
    assert todo.status == "done"
    assert [ref() for ref in seen] == [None, None]


def test_every_committed_receiver_error_but_the_first_is_a_note_on_the_first(
        session: Session) -> None:
    raised = [ValueError("one"), ValueError("two")]

    def first(sender: type, **payload: Any) -> None:
        raise raised[0]

    def second(sender: type, **payload: Any) -> None:
        raise raised[1]

    todo = Todo()
    session.add(todo)
    session.commit()
    with transition_committed.connected_to(first), transition_committed.connected_to(second):
        todo.start("ada")
        with pytest.raises(ValueError, match=r"one|two") as info:
            session.commit()
    [other] = [exc for exc in raised if exc is not info.value]
    assert info.value.__notes__ == [f"another transition_committed receiver raised {other!r}"]
    assert getattr(other, "__notes__", []) == []


# -- the second mutation run (seed 20261201) -------------------------------------------------


def test_succeeded_is_sent_after_the_bodys_changes_are_flushed(tmp_path: Any) -> None:
    """Even with autoflush off, a receiver reading the row sees what the body wrote."""
    from litestate.sqlite import enable_savepoints
    from tests.models import Base

    engine = enable_savepoints(sa.create_engine(f"sqlite:///{tmp_path / 'flush.db'}"))
    Base.metadata.create_all(engine)
    seen: list[str | None] = []

    def receiver(sender: type, *, record: Todo, **extra: Any) -> None:
        session = sa.orm.object_session(record)
        assert session is not None
        seen.append(session.connection().scalar(
            sa.select(Todo.started_by).where(Todo.id == record.id)))

    with Session(engine, autoflush=False) as session, \
            litestate.transition_succeeded.connected_to(receiver, sender=Todo):
        todo = Todo(title="t")
        session.add(todo)
        session.commit()
        todo.start("ada")
    assert seen == ["ada"]
    engine.dispose()


class Named(enum.Enum):
    live = "is_live"
    two = 2


def test_timestamp_true_names_the_column_after_the_value_or_else_the_name() -> None:
    @state_column("state")
    class Show:
        state: Any = "draft"
        is_live_at: datetime | None = None
        two_at: datetime | None = None

        @transition(frm="draft", to=Named.live, timestamp=True)
        def publish(self) -> None:
            pass

        @transition(frm=Named.live, to=Named.two, timestamp=True)
        def second(self) -> None:
            pass

    assert [t.timestamp for t in transitions(Show)] == ["is_live_at", "two_at"]


def test_a_version_conflict_says_the_version_changed(tmp_path: Any) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'version.db'}")
    MutantBase.metadata.create_all(engine)
    with Session(engine, expire_on_commit=False) as mine, \
            Session(engine, expire_on_commit=False) as theirs:
        counted = Counted()
        mine.add(counted)
        mine.commit()
        stale = theirs.get(Counted, counted.id)
        assert stale is not None
        counted.note = "bumped"
        mine.commit()  # the ORM bumps the version
        with pytest.raises(ConflictError, match="row's version changed before the write"):
            stale.open()
    engine.dispose()


def test_several_state_columns_are_listed_in_declaration_order() -> None:
    class Flags:
        def __init__(self) -> None:
            self.a, self.b = "off", "off"

        @transition(frm="off", to="on", column="a")
        def a_on(self) -> None:
            pass

        @transition(frm="off", to="on", column="b")
        def b_on(self) -> None:
            pass

        @transition(frm="*", to="off", column="a")
        def a_off(self) -> None:
            pass

    assert available_transitions(Flags()) == ["a_on", "b_on", "a_off"]


def test_a_timestamp_on_another_table_is_a_declaration_error() -> None:
    registry = sa.orm.registry()

    @registry.mapped
    class Base_:
        __tablename__ = "mut_parent"
        id: Mapped[int] = mapped_column(primary_key=True)
        kind: Mapped[str] = mapped_column(sa.String(10))
        stamped_at: Mapped[datetime | None]
        __mapper_args__ = {"polymorphic_on": kind,  # noqa: RUF012
                           "polymorphic_identity": "p"}

    @registry.mapped
    @state_column("status")
    class Child(Base_):
        __tablename__ = "mut_child"
        id: Mapped[int] = mapped_column(sa.ForeignKey("mut_parent.id"), primary_key=True)
        status: Mapped[str] = mapped_column(sa.String(10))
        __mapper_args__ = {"polymorphic_identity": "c"}  # noqa: RUF012

        @transition(frm="a", to="b", timestamp="stamped_at")
        def go(self) -> None:
            pass

    try:
        with pytest.raises(DeclarationError,
                           match="timestamp column 'stamped_at' is not a column of mut_child"):
            registry.configure()
    finally:
        registry.dispose()


def test_no_state_is_no_state_even_for_a_transition_from_any() -> None:
    @state_column("state")
    class Blank:
        state: str | None = None

        @transition(frm="*", to="set")
        def fill(self) -> None:
            pass

    with pytest.raises(litestate.InvalidStateError):
        Blank().fill()
    assert Blank().state is None


def test_a_guard_without_keyword_room_on_a_method_taking_kw_gets_the_instance_alone() -> None:
    @state_column("state")
    class Form:
        state = "draft"

        @transition(frm="draft", to="sent", guard=lambda self, to=None: to is None)
        def send(self, /, **fields: str) -> None:
            pass

    form = Form()
    assert can_transition(form, "send", subject="hi")
    form.send(subject="hi", to="x")
    assert form.state == "sent"


@state_column("status")
class Unset(MutantBase):
    __tablename__ = "mutant_unset"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str | None] = mapped_column(sa.String(20))

    @transition(frm="*", to="set")
    def fill(self) -> None:
        pass


def test_a_row_without_a_state_is_refused_even_by_a_transition_from_any(
        tmp_path: Any) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'unset.db'}")
    MutantBase.metadata.create_all(engine)
    with Session(engine) as session:
        unset = Unset()
        session.add(unset)
        session.commit()
        assert unset.status is None
        with pytest.raises(litestate.InvalidStateError):
            unset.fill()
        session.commit()
        assert unset.status is None
    engine.dispose()


@state_column("status")
class Edited(MutantBase):
    __tablename__ = "mutant_edited"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(10), default="a")

    @transition(frm="b", to="c")
    def finish(self) -> None:
        pass


def test_an_unsaved_edit_of_the_state_is_written_before_a_lone_update(
        tables: sa.Engine) -> None:
    """No body, no receiver: no SAVEPOINT, whose begin would flush; litestate flushes."""
    with Session(tables) as session:
        edited = Edited()
        session.add(edited)
        session.commit()
        edited.status = "b"  # not flushed
        edited.finish()
        session.commit()
    assert read(tables, sa.select(Edited.status)) == [("c",)]


def test_a_session_without_a_bind_fails_as_sqlalchemy_does(tables: sa.Engine) -> None:
    with Session(tables) as session:
        edited = Edited(status="b")
        session.add(edited)
        session.commit()
        session.expunge(edited)
    unbound = Session()
    unbound.add(edited)
    with pytest.raises(sa.exc.UnboundExecutionError):
        edited.finish()
    unbound.close()


def test_a_receiver_the_garbage_collector_took_stops_the_timing_and_the_call_returns(
        ) -> None:
    @state_column("state")
    class Door:
        state = "shut"

        @transition(frm="shut", to="open")
        def open(self) -> str:
            return "opened"

    def receive(_sender: Any, **_payload: Any) -> None:
        pass

    litestate.transition_succeeded.connect(receive)  # weakly: no disconnect is sent
    del receive
    gc.collect()
    assert Door().open() == "opened"
    assert not litestate.core._timing  # measuring again only once someone listens
