"""The peers' declarations of the benchmark machine (the bench extra installs them).

Typed loosely (see pyproject.toml): without the extra, the peers are absent and Any.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import sqlalchemy as sa

from benchmarks.models import Base, HandWritten, _Columns, allowed_guard


@functools.cache
def peer_classes() -> dict[str, Any]:
    """The peers' declarations of the same machine, where the peer is installed."""
    peers: dict[str, Any] = {}
    try:
        from sqlalchemy_fsm.sqltypes import FSMField
        from sqlalchemy_fsm.transition import transition as fsm_transition
    except ImportError:
        pass
    else:
        class FsmTodo(HandWritten, Base):
            __tablename__ = "bench_fsm"
            id = sa.Column(sa.Integer, primary_key=True)
            status = sa.Column(FSMField, nullable=False, default="pending")
            allowed = sa.Column(sa.Boolean, default=True)
            counter = sa.Column(sa.Integer, default=0)

            @fsm_transition(source="pending", target="doing")
            def start(self) -> None:
                pass

            @fsm_transition(source="doing", target="pending")
            def stop(self) -> None:
                pass

            @fsm_transition(source="pending", target="doing", conditions=[allowed_guard])
            def gstart(self) -> None:
                pass

            @fsm_transition(source="doing", target="pending", conditions=[allowed_guard])
            def gstop(self) -> None:
                pass

        peers["sqlalchemy-fsm"] = FsmTodo
    try:
        from sqlalchemy_state_machine import StateMachine, StateMachineMixin
        from sqlalchemy_state_machine import Transition as SsmTransition
    except ImportError:
        pass
    else:
        class SsmTodo(StateMachineMixin, _Columns, HandWritten, Base):
            __tablename__ = "bench_ssm"
            state_machine: ClassVar[Any] = StateMachine(
                state_attribute="status", initial="pending",
                transitions=(SsmTransition(name="start", source="pending", target="doing"),
                             SsmTransition(name="stop", source="doing", target="pending")))

        peers["sqlalchemy-state-machine"] = SsmTodo

    class TrTodo(_Columns, HandWritten, Base):
        """A mapped class for the peers that bind to a model object."""

        __tablename__ = "bench_bound"

    peers["bound"] = TrTodo
    return peers


def transitions_machine(model: Any, guarded: bool) -> Any:
    from transitions import Machine

    cond = {"conditions": "is_allowed"} if guarded else {}
    model.is_allowed = lambda: bool(model.allowed)
    return Machine(model=model, states=["pending", "doing"], initial=model.status,
                   auto_transitions=False, model_attribute="status",
                   transitions=[{"trigger": "start", "source": "pending", "dest": "doing", **cond},
                                {"trigger": "stop", "source": "doing", "dest": "pending", **cond}])


def statemachine_machine(model: Any, guarded: bool) -> Any:
    from statemachine import State, StateMachine

    if guarded:
        class Guarded(StateMachine):
            pending = State(initial=True, value="pending")
            doing = State(value="doing")
            start = pending.to(doing, cond="allowed")
            stop = doing.to(pending, cond="allowed")

        return Guarded(model=model, state_field="status")

    class Plain(StateMachine):
        pending = State(initial=True, value="pending")
        doing = State(value="doing")
        start = pending.to(doing)
        stop = doing.to(pending)

    return Plain(model=model, state_field="status")
