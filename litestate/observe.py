"""Forward litestate's signals to the standard ``logging`` module and to OpenTelemetry.

Each function connects receivers (held strongly, so a call inside a function keeps
working after it returns) and returns a :class:`Subscription` that disconnects them::

    from litestate.observe import log_transitions, record_metrics, trace_transitions

    log_transitions()                # logger "litestate": INFO, WARNING when refused, ERROR
    trace_transitions()              # a span per call, from the global TracerProvider
    record_metrics()                 # a duration histogram and a counter by outcome

    with log_transitions(logging.getLogger("audit"), sender=Todo):
        ...                          # only todos, only inside the block

**What each outcome is.** ``succeeded``, ``failed`` and ``invalid`` (a refusal; the
logs say "refused") are sent once per call, with the call's ``duration``: seconds from
the call to the signal, which litestate measures only while one of those three signals
has a receiver. ``committed`` follows a ``succeeded`` once the database commits it
(never after a rollback) and has no duration.

**Nothing connected costs nothing.** litestate checks ``signal.receivers`` before it
sends and before it reads the clock; :meth:`Subscription.close` disconnects for real,
so a closed subscription leaves the transitions as fast as if it had never existed.

**OpenTelemetry is optional.** This module imports nothing optional at import time;
:func:`trace_transitions` and :func:`record_metrics` import ``opentelemetry-api`` when
called (``pip install 'litestate[otel]'``). Spans and metrics share the attributes
``litestate.model`` (the model class's ``__name__``, the signal's sender),
``litestate.event``, ``litestate.outcome`` (succeeded, failed, invalid; committed on the
counter), ``litestate.reason`` (a refusal's: invalid, guard or conflict) and
``error.type`` (a failure's exception class); spans add ``litestate.from_state``,
``litestate.to_state``, ``litestate.column`` and ``litestate.record_id``, which would
make too many series for a metric.

The receivers never touch the record (after a commit that could load it): they read
the payload's ``record_id``, states and names.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Self

from blinker import ANY, NamedSignal

from litestate.core import (
    transition_committed,
    transition_failed,
    transition_invalid,
    transition_succeeded,
)

if TYPE_CHECKING:
    from opentelemetry.metrics import Histogram, Meter
    from opentelemetry.trace import Tracer
    from opentelemetry.util.types import AttributeValue

__all__ = ["Subscription", "log_transitions", "record_metrics", "trace_transitions"]

_Receiver = Callable[..., None]
#: For ``litestate.transition.duration``, in seconds: a transition takes from tens of
#: microseconds (in memory) to seconds (a body that waits on a lock).
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            0.5, 1.0, 2.5, 5.0, 10.0)


class Subscription:
    """The receivers one call connected. :meth:`close` disconnects them, as does calling
    the subscription or leaving its ``with`` block; closing twice does nothing."""

    __slots__ = ("_connected",)

    def __init__(self, receivers: Mapping[NamedSignal, _Receiver], sender: type | None
                 ) -> None:
        self._connected = list(receivers.items())
        for signal, receiver in self._connected:
            signal.connect(receiver, sender=ANY if sender is None else sender, weak=False)

    @property
    def closed(self) -> bool:
        """Whether the receivers were disconnected."""
        return not self._connected

    def close(self) -> None:
        """Disconnect the receivers: a signal left with none is not sent, and litestate
        stops measuring durations once none of the three that carry one has a receiver."""
        connected, self._connected = self._connected, []
        for signal, receiver in connected:
            signal.disconnect(receiver)

    def __call__(self) -> None:
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        names = ", ".join(signal.name for signal, _ in self._connected) or "closed"
        return f"<{type(self).__name__} {names}>"


# -- logging ------------------------------------------------------------------------------

_SUCCEEDED = "%s: %s() %s -> %s succeeded%s"
_COMMITTED = "%s: %s() %s -> %s committed"
_REFUSED = "%s: %s() %s -> %s refused (%s)%s: %s"
_FAILED = "%s: %s() %s -> %s failed%s: %s"


def log_transitions(logger: logging.Logger | None = None, *, level: int = logging.INFO,
                    refused_level: int = logging.WARNING, failed_level: int = logging.ERROR,
                    sender: type | None = None) -> Subscription:
    """Log every transition: one record when it succeeds (``level``), another when its
    transaction commits (``level``), one when it is refused (``refused_level``) or fails
    (``failed_level``).

    ``logger`` defaults to ``logging.getLogger("litestate")``; ``sender`` limits the
    records to one model class (exactly that class, as blinker compares senders).
    Messages read ``Todo 1: start() pending -> doing succeeded in 0.42 ms``; each record
    also carries, as attributes for structured formatters, ``litestate_outcome``
    (succeeded, committed, invalid, failed), ``litestate_model``, ``litestate_event``,
    ``litestate_record_id``, ``litestate_column``, ``litestate_from_state``,
    ``litestate_to_state`` (an Enum member as its value, or its name if the value is not
    a string), ``litestate_reason`` and ``litestate_error`` (``"ValueError: boom"``;
    None unless refused or failed) and ``litestate_duration_ms`` (None for committed).
    The prefix keeps clear of ``LogRecord``'s own attributes and of formatters that use
    ``event`` for the message.
    """
    log = logging.getLogger("litestate") if logger is None else logger

    def succeeded(model: type, **payload: Any) -> None:
        if log.isEnabledFor(level):
            duration = payload.get("duration")
            log.log(level, _SUCCEEDED, *_header(model, payload), _took(duration),
                    extra=_extra("succeeded", model, payload, duration))

    def committed(model: type, **payload: Any) -> None:
        if log.isEnabledFor(level):
            log.log(level, _COMMITTED, *_header(model, payload),
                    extra=_extra("committed", model, payload, None))

    def refused(model: type, **payload: Any) -> None:
        if log.isEnabledFor(refused_level):
            duration, error = payload.get("duration"), payload.get("error")
            detail = getattr(error, "detail", None) or _error_text(error)
            log.log(refused_level, _REFUSED, *_header(model, payload), payload.get("reason"),
                    _took(duration), detail,
                    extra=_extra("invalid", model, payload, duration, error))

    def failed(model: type, **payload: Any) -> None:
        if log.isEnabledFor(failed_level):
            duration, error = payload.get("duration"), payload.get("error")
            log.log(failed_level, _FAILED, *_header(model, payload), _took(duration),
                    _error_text(error),
                    extra=_extra("failed", model, payload, duration, error))

    return Subscription({transition_succeeded: succeeded, transition_committed: committed,
                         transition_invalid: refused, transition_failed: failed}, sender)


def _header(model: type, payload: Mapping[str, Any]) -> tuple[str, str, object, object]:
    record_id = payload.get("record_id")
    who = model.__name__ if record_id is None else f"{model.__name__} {record_id!r}"
    return (who, payload.get("event", "?"), _plain(payload.get("from_state")),
            _plain(payload.get("to_state")))


def _took(duration: float | None) -> str:
    return "" if duration is None else f" in {duration * 1000:.2f} ms"


def _extra(outcome: str, model: type, payload: Mapping[str, Any], duration: float | None,
           error: object = None) -> dict[str, object]:
    return {
        "litestate_outcome": outcome,
        "litestate_model": model.__name__,
        "litestate_event": payload.get("event"),
        "litestate_record_id": payload.get("record_id"),
        "litestate_column": payload.get("column"),
        "litestate_from_state": _plain(payload.get("from_state")),
        "litestate_to_state": _plain(payload.get("to_state")),
        "litestate_reason": payload.get("reason"),
        "litestate_error": None if error is None else _error_text(error),
        "litestate_duration_ms": None if duration is None else duration * 1000,
    }


def _error_text(error: object) -> str:
    """As a traceback's last line: ``ValueError: boom`` (the name alone if no message)."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _plain(state: object) -> object:
    """A state as the column stores it: an Enum member as its value, or its name."""
    if isinstance(state, enum.Enum):
        return state.value if isinstance(state.value, str) else state.name
    return state


# -- OpenTelemetry --------------------------------------------------------------------------


def trace_transitions(tracer: Tracer | None = None, *, sender: type | None = None
                      ) -> Subscription:
    """Record a span for every call that succeeded, failed or was refused.

    ``tracer`` defaults to ``opentelemetry.trace.get_tracer("litestate")`` (the global
    provider's, including one set later). The span is named ``Todo.start``, is a child of
    the span current at the call, starts ``duration`` seconds before the signal and ends
    at it. Its attributes are those of the module's table; a failure also has status
    ``ERROR`` and the exception as an event. A refusal keeps status unset, as an HTTP
    server's span does for a 4xx: it is an answer, not a fault. The later commit gets no
    span (the database instrumentation traces the COMMIT).
    """
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise _otel_missing("trace_transitions") from exc
    from litestate import __version__

    otel_tracer = trace.get_tracer("litestate", __version__) if tracer is None else tracer
    error_status = trace.StatusCode.ERROR

    def span(outcome: str, model: type, payload: Mapping[str, Any]) -> None:
        end = time.time_ns()
        duration = payload.get("duration")
        start = end if duration is None else end - round(duration * 1e9)
        attributes = _attributes(outcome, model, payload)
        for key in ("column", "from_state", "to_state", "record_id"):
            value = _attribute(payload.get(key))
            if value is not None:
                attributes[f"litestate.{key}"] = value
        span = otel_tracer.start_span(f"{model.__name__}.{payload.get('event')}",
                                      start_time=start, attributes=attributes)
        if outcome == "failed":
            error: BaseException = payload["error"]
            span.record_exception(error, timestamp=end)
            span.set_status(error_status, _error_text(error))
        span.end(end_time=end)

    def succeeded(model: type, **payload: Any) -> None:
        span("succeeded", model, payload)

    def refused(model: type, **payload: Any) -> None:
        span("invalid", model, payload)

    def failed(model: type, **payload: Any) -> None:
        span("failed", model, payload)

    return Subscription({transition_succeeded: succeeded, transition_invalid: refused,
                         transition_failed: failed}, sender)


def record_metrics(meter: Meter | None = None, *, sender: type | None = None
                   ) -> Subscription:
    """Record every call's duration and count every outcome.

    ``meter`` defaults to ``opentelemetry.metrics.get_meter("litestate")`` (the global
    provider's, including one set later). Two instruments, with the module table's
    ``litestate.model``, ``litestate.event``, ``litestate.outcome`` and, where they apply,
    ``litestate.reason`` and ``error.type``:

    - ``litestate.transition.duration``, a histogram in seconds, of the calls that
      succeeded, failed or were refused (buckets from 0.1 ms to 10 s, where the API
      takes bucket advice: 1.23 and later);
    - ``litestate.transitions``, a counter of the same calls plus ``committed``, counted
      again as its transaction commits: so ``succeeded - committed`` counts the
      transitions rolled back after they succeeded, and the calls are
      ``succeeded + failed + invalid``.
    """
    try:
        from opentelemetry import metrics
    except ImportError as exc:
        raise _otel_missing("record_metrics") from exc
    from litestate import __version__

    otel_meter = metrics.get_meter("litestate", __version__) if meter is None else meter
    histogram = _duration_histogram(otel_meter)
    counter = otel_meter.create_counter(
        "litestate.transitions", unit="{transition}",
        description="litestate transitions by outcome; committed counts a succeeded one "
                    "again when its transaction commits")

    def measure(outcome: str, model: type, payload: Mapping[str, Any]) -> None:
        attributes = _attributes(outcome, model, payload)
        counter.add(1, attributes)
        duration = payload.get("duration")
        if duration is not None:
            histogram.record(duration, attributes)

    def succeeded(model: type, **payload: Any) -> None:
        measure("succeeded", model, payload)

    def committed(model: type, **payload: Any) -> None:
        counter.add(1, _attributes("committed", model, payload))

    def refused(model: type, **payload: Any) -> None:
        measure("invalid", model, payload)

    def failed(model: type, **payload: Any) -> None:
        measure("failed", model, payload)

    return Subscription({transition_succeeded: succeeded, transition_committed: committed,
                         transition_invalid: refused, transition_failed: failed}, sender)


def _duration_histogram(meter: Meter) -> Histogram:
    name, unit = "litestate.transition.duration", "s"
    description = "Duration of litestate transitions, from the call to the signal"
    try:
        return meter.create_histogram(name, unit, description,
                                      explicit_bucket_boundaries_advisory=_BUCKETS)
    except TypeError:  # opentelemetry-api before 1.23 takes no bucket advice
        return meter.create_histogram(name, unit, description)


def _attributes(outcome: str, model: type, payload: Mapping[str, Any]
                ) -> dict[str, AttributeValue]:
    """The attributes spans and metrics share: few values each, fit for metrics."""
    attributes: dict[str, AttributeValue] = {
        "litestate.model": model.__name__,
        "litestate.event": str(payload.get("event")),
        "litestate.outcome": outcome,
    }
    if outcome == "invalid":
        attributes["litestate.reason"] = str(payload.get("reason"))
    elif outcome == "failed":
        error: object = payload.get("error")
        cls = type(error)
        attributes["error.type"] = (cls.__qualname__ if cls.__module__ == "builtins"
                                    else f"{cls.__module__}.{cls.__qualname__}")
    return attributes


def _attribute(value: object) -> AttributeValue | None:
    """A value OpenTelemetry accepts as an attribute (None: leave the attribute out)."""
    value = _plain(value)
    if value is None or isinstance(value, str | bool | int | float):
        return value
    return str(value)  # a composite key's tuple, a UUID


def _otel_missing(name: str) -> ImportError:
    return ImportError(f"litestate.observe.{name}() needs OpenTelemetry's API: "
                       "pip install 'litestate[otel]'")
