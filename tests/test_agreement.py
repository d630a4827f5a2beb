"""The probes and the call agree, for every state, object lifecycle and event (hypothesis).

``can_transition(obj, e)`` is True exactly when ``getattr(obj, e)()`` succeeds,
``available_transitions(obj)`` lists exactly those events, in declaration order, and
``actions(obj)`` allows those and gives each refusal the reason the call raises.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from litestate import (
    TransitionError,
    actions,
    available_transitions,
    can_transition,
    state_column,
    transition,
    transitions,
)


class Phase(enum.Enum):
    draft = "draft"
    review = "in review"
    live = "live"
    gone = "gone"


class AgreeBase(DeclarativeBase):
    pass


@state_column("phase")
class Article(AgreeBase):
    __tablename__ = "agree_articles"
    id: Mapped[int] = mapped_column(primary_key=True)
    phase: Mapped[Phase] = mapped_column(sa.Enum(Phase, name="agree_phase"),
                                         default=Phase.draft)
    words: Mapped[int] = mapped_column(default=0)
    flag: Mapped[str] = mapped_column(sa.String(10), default="no")

    def long_enough(self) -> bool:
        return self.words >= 10

    @transition(frm="draft", to="review", guard="long_enough")
    def submit(self) -> None:
        pass

    @transition(frm=["draft", Phase.review], to=Phase.live,
                guard=lambda self: self.words < 100)
    def publish(self) -> None:
        self.words += 0

    @transition(frm="*", to="gone")
    def remove(self) -> None:
        pass

    @transition(frm="no", to="yes", column="flag")
    def raise_flag(self) -> None:
        pass


EVENTS = [t.event for t in transitions(Article)]
SPELLINGS = {  # every way the attribute may hold a state
    "member": lambda p: p,
    "name": lambda p: p.name,
    "value": lambda p: p.value,
}


@pytest.fixture(scope="module")
def agree_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    from litestate.sqlite import enable_savepoints

    engine = enable_savepoints(sa.create_engine(
        f"sqlite:///{tmp_path_factory.mktemp('agree') / 'agree.db'}"))
    AgreeBase.metadata.create_all(engine)
    yield engine
    engine.dispose()


def _refusal(obj: Article, event: str, session: Session | None) -> str | None:
    """The reason the call is refused, None if it succeeds; undone afterwards in a
    SAVEPOINT of its own."""
    savepoint = session.begin_nested() if session is not None else None
    try:
        getattr(obj, event)()
    except TransitionError as error:
        return error.reason
    finally:
        if savepoint is not None:
            savepoint.rollback()
    return None


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(phase=st.sampled_from(list(Phase)), spelling=st.sampled_from(sorted(SPELLINGS)),
       words=st.sampled_from([0, 9, 10, 99, 100]), flag=st.sampled_from(["no", "yes"]),
       life=st.sampled_from(["transient", "pending", "loaded", "expired", "edited"]),
       event=st.sampled_from(EVENTS))
def test_the_probes_answer_what_the_call_does(
        agree_engine: sa.Engine, phase: Phase, spelling: str, words: int, flag: str,
        life: str, event: str) -> None:
    state: Any = SPELLINGS[spelling](phase)
    with Session(agree_engine) as session:
        article = Article(phase=state if life in ("transient", "pending") else phase,
                          words=words, flag=flag)
        if life != "transient":
            session.add(article)
        if life in ("loaded", "expired", "edited"):
            session.commit()
            if life == "loaded":
                session.refresh(article)
            if life == "edited":
                article.phase = state  # an unsaved edit, in any spelling
        probed = [e for e in EVENTS if can_transition(article, e)]
        assert available_transitions(article) == probed
        shown = {action.event: action for action in actions(article)}
        assert list(shown) == EVENTS
        assert [e for e, action in shown.items() if action.allowed] == probed
        expected = can_transition(article, event)
        reason = _refusal(article, event, None if life == "transient" else session)
        assert (reason is None) is expected
        assert shown[event].reason == reason
        session.rollback()
