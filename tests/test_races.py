"""Only the write decides: lost races and row locks, on two connections (semantics 3 and 4)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from litestate import ConflictError, GuardError, InvalidStateError
from tests.conftest import SignalLog, StatementLog, load
from tests.models import Account, Todo

_T = TypeVar("_T", Todo, Account)


def _load_twice(new_session: Callable[..., Session], obj: _T, cls: type[_T]
                ) -> tuple[Session, Session, _T, _T]:
    """Two sessions load one row and end their read transactions (SQLite readers block
    writers), as two web requests would; the caller holds the loaded objects."""
    setup = new_session()
    setup.add(obj)
    setup.commit()
    obj_id = obj.id
    setup.close()
    first = new_session(expire_on_commit=False)
    second = new_session(expire_on_commit=False)
    mine, theirs = load(first, cls, obj_id), load(second, cls, obj_id)
    first.commit()
    second.commit()
    return first, second, mine, theirs


def test_two_sessions_firing_start_on_one_row_one_wins_one_conflicts(
        new_session: Callable[..., Session], signals: SignalLog) -> None:
    first, second, mine, theirs = _load_twice(new_session, Todo(title="race"), Todo)
    assert mine.status == theirs.status == "pending"
    mine.start("ada")
    first.commit()
    with pytest.raises(ConflictError) as info:
        theirs.start("bob")
    assert (info.value.reason, info.value.from_state) == ("conflict", "pending")
    assert "changed before the write" in str(info.value)
    second.commit()
    assert theirs.status == "doing"  # the conflict expired the stale state: this is the row
    assert theirs.started_by == "ada"
    assert [h.payload["reason"] for h in signals.of("transition-invalid")] == ["conflict"]
    assert len(signals.of("transition-committed")) == 1


def test_a_conflict_writes_nothing_and_runs_no_body(
        engine: sa.Engine, new_session: Callable[..., Session]) -> None:
    first, second, mine, theirs = _load_twice(new_session, Todo(title="race"), Todo)
    mine.dismiss("ada")
    first.commit()
    with pytest.raises(ConflictError):
        theirs.start("bob")
    second.commit()
    with Session(engine) as check:
        row = load(check, Todo, mine.id)
        assert (row.status, row.started_at, row.started_by) == ("dismissed", None, None)


def test_a_lock_reads_the_fresh_state_and_keeps_unsaved_edits(
        engine: sa.Engine, new_session: Callable[..., Session]) -> None:
    first, second, mine, theirs = _load_twice(
        new_session, Account(balance=10, owner="ada"), Account)
    theirs.balance = 0  # someone empties the account and commits
    second.commit()
    assert mine.balance == 10  # our copy is stale
    mine.owner = "ada lovelace"  # an unsaved edit of ours
    mine.close()  # lock=True: the guard sees the committed balance of 0
    assert (mine.status, mine.balance, mine.owner) == ("closed", 0, "ada lovelace")
    first.commit()
    with Session(engine) as check:
        row = load(check, Account, mine.id)
        assert (row.status, row.owner) == ("closed", "ada lovelace")


def test_without_a_lock_the_guard_sees_the_stale_value(
        engine: sa.Engine, new_session: Callable[..., Session]) -> None:
    _, second, mine, theirs = _load_twice(new_session, Account(balance=10), Account)
    theirs.balance = 0
    second.commit()
    with pytest.raises(GuardError):
        mine.freeze()  # the guard's read is a hint; lock=True is the cure


def test_a_lock_sees_a_state_changed_by_another_session(
        engine: sa.Engine, new_session: Callable[..., Session]) -> None:
    _, second, mine, theirs = _load_twice(new_session, Account(), Account)
    theirs.freeze()
    second.commit()
    assert mine.status == "open"  # stale
    with pytest.raises(InvalidStateError) as info:
        mine.close()
    assert info.value.from_state == "frozen"  # read under the lock


def test_the_lock_is_select_for_update_then_the_checked_update(
        engine: sa.Engine, session: Session, sql: StatementLog) -> None:
    account = Account()
    session.add(account)
    session.commit()
    sql.statements.clear()
    account.close()
    assert sql.verbs() == ["BEGIN", "SELECT", "UPDATE"] if engine.dialect.name == "sqlite" \
        else ["SELECT", "UPDATE"]
    # SQLite has no FOR UPDATE (the checked UPDATE still protects it)
    assert sql.statements[-2].rstrip().endswith(
        "?" if engine.dialect.name == "sqlite" else "FOR UPDATE")
