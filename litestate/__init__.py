"""litestate: decorator-based, race-free state machines for SQLAlchemy models."""

from importlib.metadata import PackageNotFoundError, version

from litestate import recovery as recovery  # on_error's error states (a plan extension)
from litestate.bulk import Lease, claim, reclaim, renew, transition_many
from litestate.core import (
    HTTP_STATUS,
    Action,
    ConflictError,
    DeclarationError,
    GuardError,
    InvalidStateError,
    Transition,
    TransitionArgumentError,
    TransitionError,
    UnknownTransitionError,
    actions,
    available_transitions,
    can_transition,
    fire,
    set_clock,
    state_column,
    transition,
    transition_committed,
    transition_failed,
    transition_invalid,
    transition_state,
    transition_succeeded,
    transitions,
)
from litestate.diagram import diagram
from litestate.history import TransitionLog, context, history, log_data
from litestate.retry import is_retryable, retrying

try:
    __version__ = version("litestate")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "HTTP_STATUS",
    "Action",
    "ConflictError",
    "DeclarationError",
    "GuardError",
    "InvalidStateError",
    "Lease",
    "Transition",
    "TransitionArgumentError",
    "TransitionError",
    "TransitionLog",
    "UnknownTransitionError",
    "__version__",
    "actions",
    "available_transitions",
    "can_transition",
    "claim",
    "context",
    "diagram",
    "fire",
    "history",
    "is_retryable",
    "log_data",
    "reclaim",
    "renew",
    "retrying",
    "set_clock",
    "state_column",
    "transition",
    "transition_committed",
    "transition_failed",
    "transition_invalid",
    "transition_many",
    "transition_state",
    "transition_succeeded",
    "transitions",
]
