"""Random sequences of calls: the object, the row and the signals always agree."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from litestate import TransitionError
from tests.conftest import SignalLog, recording
from tests.models import Job, JobFailed


@dataclass(frozen=True)
class Ref:
    state: str = "new"
    attempts: int = 0
    allow: bool = True
    stamped: bool = False


# event: (allowed from, to, guard, whether the body increments attempts)
EVENTS: dict[str, tuple[set[str] | None, str, Callable[[Ref], bool], bool]] = {
    "run": ({"new"}, "running", lambda ref: ref.allow, True),
    "finish": ({"running"}, "done", lambda ref: ref.attempts > 0, False),
    "cancel": ({"new", "running"}, "canceled", lambda ref: True, False),
    "reset": (None, "new", lambda ref: True, False),
}


@dataclass
class Expect:
    ref: Ref = field(default_factory=Ref)
    committed_ref: Ref = field(default_factory=Ref)
    signals: dict[str, int] = field(default_factory=lambda: {
        name: 0 for name in ("transition-succeeded", "transition-invalid", "transition-failed",
                             "transition-committed")})
    uncommitted: int = 0  # successes since the last commit

    def fire(self, event: str, fail: bool, in_memory: bool) -> str:
        frm, to, guard, counts = EVENTS[event]
        ref = self.ref
        if (frm is not None and ref.state not in frm) or not guard(ref):
            self.signals["transition-invalid"] += 1
            return "refused"
        if fail and event != "reset":
            self.signals["transition-failed"] += 1
            if in_memory and counts:  # in memory, only state and timestamp are restored
                self.ref = replace(ref, attempts=ref.attempts + 1)
            return "failed"
        self.signals["transition-succeeded"] += 1
        self.uncommitted += 1
        self.ref = replace(ref, state=to, attempts=ref.attempts + counts,
                           stamped=ref.stamped or event == "run")
        return "ok"


def _fire(job: Job, event: str, fail: bool) -> str:
    try:
        if event == "reset":
            job.reset()
        else:
            getattr(job, event)(fail=fail)
    except TransitionError:
        return "refused"
    except JobFailed:
        return "failed"
    return "ok"


fire_step = st.tuples(st.just("fire"), st.sampled_from(sorted(EVENTS)), st.booleans())
steps = st.lists(st.one_of(
    fire_step,
    st.just(("toggle", "", False)),
    st.just(("commit", "", False)),
    st.just(("rollback", "", False)),
    st.tuples(st.sampled_from(["nested-keep", "nested-undo"]), st.sampled_from(sorted(EVENTS)),
              st.booleans()),
), max_size=25)

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(steps=steps, listen=st.booleans())
def test_a_job_in_a_session_stays_consistent(
        engine: sa.Engine, steps: list[tuple[str, str, bool]], listen: bool) -> None:
    """With receivers (a SAVEPOINT for every transition) and without (none for reset)."""
    expect = Expect()
    with contextlib.ExitStack() as stack:
        signals = stack.enter_context(recording()) if listen else None
        session = stack.enter_context(Session(engine))
        job = Job(state="new", attempts=0, allow=True)
        session.add(job)
        session.commit()
        for kind, event, fail in steps:
            if kind == "fire":
                assert _fire(job, event, fail) == expect.fire(event, fail, in_memory=False)
            elif kind == "toggle":
                job.allow = not job.allow
                expect.ref = replace(expect.ref, allow=not expect.ref.allow)
            elif kind == "commit":
                session.commit()
                expect.signals["transition-committed"] += expect.uncommitted
                expect.uncommitted, expect.committed_ref = 0, expect.ref
            elif kind == "rollback":
                session.rollback()
                expect.uncommitted, expect.ref = 0, expect.committed_ref
            else:
                before, pending = expect.ref, expect.uncommitted
                savepoint = session.begin_nested()
                assert _fire(job, event, fail) == expect.fire(event, fail, in_memory=False)
                if kind == "nested-keep":
                    savepoint.commit()
                else:
                    savepoint.rollback()
                    expect.ref, expect.uncommitted = before, pending
            _check(session, job, expect, signals)


def _check(session: Session, job: Job, expect: Expect, signals: SignalLog | None) -> None:
    ref = expect.ref
    assert (job.state, job.attempts, job.allow) == (ref.state, ref.attempts, ref.allow)
    assert (job.started_at is not None) == ref.stamped
    row = session.execute(sa.select(Job.state, Job.attempts, Job.started_at)
                          .where(Job.id == job.id)).one()  # autoflush: the caller's view
    assert (row.state, row.attempts, row.started_at is not None) == (
        ref.state, ref.attempts, ref.stamped)
    if signals is not None:
        assert {name: len(signals.of(name)) for name in expect.signals} == expect.signals


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.one_of(fire_step, st.just(("toggle", "", False))), max_size=30))
def test_a_job_outside_a_session_stays_consistent(
        signals: SignalLog, steps: list[tuple[str, str, bool]]) -> None:
    signals.clear()
    expect = Expect()
    job = Job(state="new", attempts=0, allow=True)
    for kind, event, fail in steps:
        if kind == "fire":
            assert _fire(job, event, fail) == expect.fire(event, fail, in_memory=True)
        else:
            job.allow = not job.allow
            expect.ref = replace(expect.ref, allow=not expect.ref.allow)
        ref = expect.ref
        assert (job.state, job.attempts, job.allow) == (ref.state, ref.attempts, ref.allow)
        assert (job.started_at is not None) == ref.stamped
        assert {name: len(signals.of(name)) for name in expect.signals} == expect.signals


@pytest.mark.parametrize("unused", [None])
def test_the_reference_model_refuses_like_the_library(unused: Any) -> None:
    """A sanity check of the reference model itself, so the properties cannot pass vacuously."""
    expect = Expect()
    assert expect.fire("finish", False, in_memory=False) == "refused"
    assert expect.fire("run", True, in_memory=False) == "failed"
    assert expect.fire("run", False, in_memory=False) == "ok"
    assert expect.ref == Ref(state="running", attempts=1, stamped=True)
