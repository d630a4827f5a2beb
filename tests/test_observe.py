"""litestate.observe: the signals forwarded to logging and OpenTelemetry, at no cost
once disconnected."""

from __future__ import annotations

import enum
import gc
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
from opentelemetry import trace
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer
from sqlalchemy.orm import Session

import litestate
import litestate.core
from litestate import GuardError, InvalidStateError, state_column, transition
from litestate.observe import Subscription, log_transitions, record_metrics, trace_transitions
from tests.conftest import recording
from tests.models import Job, JobFailed, PaymentIntent, Todo

OUTCOME = "litestate_outcome"


@state_column("state")
class Lamp:
    """In memory: no session, an ``id`` for the record id, a body that waits or raises."""

    def __init__(self, id: int | None = 7) -> None:
        self.id = id
        self.state = "off"
        self.opened: Subscription | None = None

    @transition(frm="off", to="on")
    def switch_on(self, wait: float = 0.0) -> None:
        time.sleep(wait)

    @transition(frm="on", to="off")
    def switch_off(self) -> None:
        raise OSError("fuse blown")

    @transition(frm="off", to="on")
    def observed_on(self) -> None:
        """Starts listening during the call: the call itself was not timed."""
        self.opened = log_transitions()



class Brightness(enum.Enum):
    """A value that is a string and differs from the name, and one that is not a string."""

    dim = "Dim light"
    full = 2


@state_column("level")
class Dimmer:
    def __init__(self) -> None:
        self.id = 3
        self.level = Brightness.dim

    @transition(frm=Brightness.dim, to=Brightness.full)
    def brighten(self) -> None:
        pass


@pytest.fixture(autouse=True)
def nothing_stays_connected() -> Iterator[None]:
    """Each test starts and must end with no receiver and litestate not timing."""
    signals = (litestate.transition_succeeded, litestate.transition_failed,
               litestate.transition_invalid, litestate.transition_committed)
    assert not any(s.receivers for s in signals)
    assert litestate.core._timing is False
    yield
    assert not any(s.receivers for s in signals)
    assert litestate.core._timing is False


@pytest.fixture
def caplog_info(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="litestate")
    return caplog


@pytest.fixture
def spans() -> Iterator[tuple[Tracer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("tests"), exporter
    provider.shutdown()


@pytest.fixture
def meter() -> Iterator[tuple[Meter, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield provider.get_meter("tests"), reader
    provider.shutdown()


def _todo(session: Session) -> Todo:
    todo = Todo(title="observe")
    session.add(todo)
    session.commit()
    return todo


def _job(session: Session, **values: Any) -> Job:
    job = Job(**values)
    session.add(job)
    session.commit()
    return job


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k.startswith("litestate_")}


def _points(reader: InMemoryMetricReader, name: str) -> dict[tuple[Any, ...], Any]:
    """The named metric's data points, by their attributes (sorted items)."""
    data = reader.get_metrics_data()
    found: dict[tuple[Any, ...], Any] = {}
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        found[tuple(sorted((point.attributes or {}).items()))] = point
    return found


def _outcomes(reader: InMemoryMetricReader) -> dict[str, int]:
    """The counter's totals by outcome, over every model and event."""
    totals: dict[str, int] = {}
    for key, point in _points(reader, "litestate.transitions").items():
        outcome = dict(key)["litestate.outcome"]
        totals[outcome] = totals.get(outcome, 0) + point.value
    return totals


# -- logging ------------------------------------------------------------------------------


def test_a_succeeded_transition_is_logged_with_its_fields_and_then_its_commit(
        session: Session, caplog_info: pytest.LogCaptureFixture) -> None:
    todo = _todo(session)
    with log_transitions():
        todo.start("ada")
        [record] = caplog_info.records
        assert (record.name, record.levelno) == ("litestate", logging.INFO)
        assert record.getMessage().startswith(f"Todo {todo.id}: start() pending -> doing "
                                              "succeeded in ")
        assert record.getMessage().endswith(" ms")
        fields = _fields(record)
        duration_ms = fields.pop("litestate_duration_ms")
        assert isinstance(duration_ms, float)
        assert duration_ms > 0
        assert fields == {
            "litestate_outcome": "succeeded", "litestate_model": "Todo",
            "litestate_event": "start", "litestate_record_id": todo.id,
            "litestate_column": "status", "litestate_from_state": "pending",
            "litestate_to_state": "doing", "litestate_reason": None, "litestate_error": None}
        session.commit()
    committed = caplog_info.records[1]
    assert committed.levelno == logging.INFO
    assert committed.getMessage() == f"Todo {todo.id}: start() pending -> doing committed"
    assert _fields(committed) == {**fields, OUTCOME: "committed", "litestate_duration_ms": None}


def test_committed_is_logged_only_after_the_commit_and_never_after_a_rollback(
        session: Session, caplog_info: pytest.LogCaptureFixture) -> None:
    todo = _todo(session)
    with log_transitions():
        todo.start("ada")
        session.rollback()
        todo.start("bob")
        assert [getattr(r, OUTCOME) for r in caplog_info.records] == ["succeeded", "succeeded"]
        session.commit()
    assert [getattr(r, OUTCOME) for r in caplog_info.records] == [
        "succeeded", "succeeded", "committed"]


@pytest.mark.parametrize(("values", "reason", "error"), [
    ({"state": "done"}, "invalid", InvalidStateError),
    ({"allow": False}, "guard", GuardError),
])
def test_a_refusal_is_logged_as_a_warning_with_its_reason(
        session: Session, caplog_info: pytest.LogCaptureFixture, values: dict[str, Any],
        reason: str, error: type[Exception]) -> None:
    job = _job(session, **values)
    with log_transitions(), pytest.raises(error) as info:
        job.run()
    [record] = caplog_info.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert message.startswith(f"Job {job.id}: run() {values.get('state', 'new')} -> running "
                              f"refused ({reason}) in ")
    assert isinstance(info.value, litestate.TransitionError)
    assert message.endswith(f" ms: {info.value.detail}")
    fields = _fields(record)
    assert fields[OUTCOME] == "invalid"
    assert fields["litestate_reason"] == reason
    assert fields["litestate_error"] == f"{error.__name__}: {info.value}"
    assert fields["litestate_duration_ms"] > 0


def test_a_failure_is_logged_as_an_error_with_the_exception(
        session: Session, caplog_info: pytest.LogCaptureFixture) -> None:
    job = _job(session)
    with log_transitions(), pytest.raises(JobFailed):
        job.run(fail=True)
    [record] = caplog_info.records
    assert record.levelno == logging.ERROR
    assert record.getMessage().startswith(f"Job {job.id}: run() new -> running failed in ")
    assert record.getMessage().endswith(" ms: JobFailed")
    fields = _fields(record)
    assert (fields[OUTCOME], fields["litestate_error"]) == ("failed", "JobFailed")
    assert fields["litestate_reason"] is None
    session.commit()  # nothing to commit: no committed record
    assert len(caplog_info.records) == 1


def test_an_enum_state_is_logged_as_its_value(
        session: Session, caplog_info: pytest.LogCaptureFixture) -> None:
    payment = PaymentIntent(amount=5)
    session.add(payment)
    session.commit()
    with log_transitions():
        payment.process()
    [record] = caplog_info.records
    assert f"PaymentIntent {payment.id}: process() pending -> processing" in record.getMessage()
    assert _fields(record)["litestate_from_state"] == "pending"
    assert _fields(record)["litestate_to_state"] == "processing"



def test_an_enum_member_is_logged_as_its_string_value_else_its_name(
        caplog_info: pytest.LogCaptureFixture, spans: tuple[Tracer, InMemorySpanExporter]
        ) -> None:
    tracer, exporter = spans
    with log_transitions(), trace_transitions(tracer):
        Dimmer().brighten()
    [record] = caplog_info.records
    assert record.getMessage().startswith("Dimmer 3: brighten() Dim light -> full succeeded")
    fields = _fields(record)
    assert (fields["litestate_from_state"], fields["litestate_to_state"]) == ("Dim light",
                                                                              "full")
    [span] = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert (attributes["litestate.from_state"], attributes["litestate.to_state"]) == (
        "Dim light", "full")


def test_the_message_and_the_field_give_the_same_duration_in_milliseconds(
        caplog_info: pytest.LogCaptureFixture) -> None:
    with log_transitions(), recording() as log:
        Lamp().switch_on(wait=0.05)
        litestate.transition_succeeded.send(
            Lamp, record=None, record_id=8, event="switch_on", from_state="off",
            to_state="on", column="state", duration=0.0125)
    duration = log.of("transition-succeeded")[0].payload["duration"]
    timed, sent = caplog_info.records
    assert _fields(timed)["litestate_duration_ms"] == duration * 1000 >= 50
    assert timed.getMessage().endswith(f" succeeded in {duration * 1000:.2f} ms")
    assert sent.getMessage() == "Lamp 8: switch_on() off -> on succeeded in 12.50 ms"
    assert _fields(sent)["litestate_duration_ms"] == 12.5


def test_in_memory_objects_are_logged_without_a_commit(
        caplog_info: pytest.LogCaptureFixture) -> None:
    lamp, anonymous = Lamp(), Lamp(id=None)
    with log_transitions():
        lamp.switch_on()
        with pytest.raises(OSError, match="fuse"):
            lamp.switch_off()
        with pytest.raises(InvalidStateError):
            lamp.switch_on()
        anonymous.switch_on()
    messages = [r.getMessage() for r in caplog_info.records]
    assert messages[0].startswith("Lamp 7: switch_on() off -> on succeeded in ")
    assert messages[1].startswith("Lamp 7: switch_off() on -> off failed in ")
    assert messages[1].endswith(" ms: OSError: fuse blown")
    assert messages[2].startswith("Lamp 7: switch_on() on -> on refused (invalid) in ")  # restored
    assert messages[3].startswith("Lamp: switch_on() off -> on succeeded in ")
    assert [r.levelno for r in caplog_info.records] == [
        logging.INFO, logging.ERROR, logging.WARNING, logging.INFO]
    assert _fields(caplog_info.records[3])["litestate_record_id"] is None


def test_the_logger_and_the_levels_are_the_callers(
        caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.observe.audit")
    caplog.set_level(logging.INFO, logger=logger.name)
    with log_transitions(logger, level=logging.DEBUG, refused_level=logging.INFO,
                         failed_level=logging.CRITICAL):
        lamp = Lamp()
        lamp.switch_on()  # DEBUG: below the logger's level, not logged
        with pytest.raises(InvalidStateError):
            lamp.switch_on()
        with pytest.raises(OSError, match="fuse"):
            lamp.switch_off()
    assert [(r.name, r.levelno, getattr(r, OUTCOME)) for r in caplog.records] == [
        (logger.name, logging.INFO, "invalid"), (logger.name, logging.CRITICAL, "failed")]


def test_sender_limits_the_records_to_one_model(
        session: Session, caplog_info: pytest.LogCaptureFixture) -> None:
    todo, job = _todo(session), _job(session)
    with log_transitions(sender=Todo):
        job.run()
        todo.start("ada")
        session.commit()
    assert [(_fields(r)["litestate_model"], getattr(r, OUTCOME)) for r in caplog_info.records] == [
        ("Todo", "succeeded"), ("Todo", "committed")]


def test_a_call_that_starts_listening_is_logged_without_a_duration(
        caplog_info: pytest.LogCaptureFixture) -> None:
    """litestate times a call only if a receiver listened when it began."""
    lamp = Lamp()
    lamp.observed_on()
    assert lamp.opened is not None
    lamp.opened.close()
    [record] = caplog_info.records
    assert record.getMessage() == "Lamp 7: observed_on() off -> on succeeded"
    assert _fields(record)["litestate_duration_ms"] is None


# -- subscriptions -------------------------------------------------------------------------


def test_closing_disconnects_every_receiver_and_stops_the_timing(
        caplog_info: pytest.LogCaptureFixture) -> None:
    subscription = log_transitions()
    assert litestate.core._timing is True
    assert not subscription.closed
    assert "transition-succeeded" in repr(subscription)
    subscription.close()
    assert subscription.closed
    assert repr(subscription) == "<Subscription closed>"
    assert litestate.core._timing is False
    subscription.close()  # twice: nothing happens
    Lamp().switch_on()
    assert caplog_info.records == []


@pytest.mark.parametrize("close", ["call", "with", "close"])
def test_calling_or_leaving_the_block_closes_as_close_does(
        close: str, spans: tuple[Tracer, InMemorySpanExporter],
        meter: tuple[Meter, InMemoryMetricReader]) -> None:
    subscriptions = [log_transitions(), trace_transitions(spans[0]),
                     record_metrics(meter[0])]
    assert litestate.core._timing is True
    for subscription in subscriptions:
        if close == "call":
            subscription()
        elif close == "with":
            with subscription as entered:
                assert entered is subscription
        else:
            subscription.close()
    assert all(s.closed for s in subscriptions)
    Lamp().switch_on()
    assert spans[1].get_finished_spans() == ()
    assert _outcomes(meter[1]) == {}


def _listen_in_a_function() -> Subscription:
    return log_transitions()


def test_the_receivers_are_held_strongly(caplog_info: pytest.LogCaptureFixture) -> None:
    """Unlike a receiver connected to blinker directly, which is a weak reference."""
    subscription = _listen_in_a_function()
    gc.collect()
    Lamp().switch_on()
    subscription.close()
    assert len(caplog_info.records) == 1



def test_a_subscription_dropped_at_once_keeps_logging(
        caplog_info: pytest.LogCaptureFixture) -> None:
    """As the module's synopsis calls ``log_transitions()`` without keeping the result."""
    log_transitions()
    gc.collect()
    try:
        Lamp().switch_on()
        assert [getattr(r, OUTCOME) for r in caplog_info.records] == ["succeeded"]
    finally:  # no handle left to close: disconnect what it connected
        for signal in (litestate.transition_succeeded, litestate.transition_failed,
                       litestate.transition_invalid, litestate.transition_committed):
            for receiver in list(signal.receivers.values()):
                signal.disconnect(receiver)


def test_importing_the_module_imports_no_opentelemetry() -> None:
    code = ("import sys, litestate.observe; "
            "assert not [m for m in sys.modules if m.startswith('opentelemetry')]")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("function", [trace_transitions, record_metrics])
def test_without_opentelemetry_the_error_names_the_extra(
        monkeypatch: pytest.MonkeyPatch, function: Any) -> None:
    for name in [m for m in sys.modules if m.startswith("opentelemetry")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ImportError, match=r"pip install 'litestate\[otel\]'") as info:
        function()
    assert f"litestate.observe.{function.__name__}()" in str(info.value)
    assert isinstance(info.value.__cause__, ImportError)


# -- OpenTelemetry spans ----------------------------------------------------------------------


def test_a_span_per_transition_with_its_attributes_under_the_current_span(
        session: Session, spans: tuple[Tracer, InMemorySpanExporter]) -> None:
    tracer, exporter = spans
    todo = _todo(session)
    with trace_transitions(tracer), tracer.start_as_current_span("request") as request:
        todo.start("ada")
        session.commit()  # the commit adds no span
    [span, parent] = exporter.get_finished_spans()
    assert (span.name, span.kind, span.status.status_code) == (
        "Todo.start", SpanKind.INTERNAL, StatusCode.UNSET)
    assert dict(span.attributes or {}) == {
        "litestate.model": "Todo", "litestate.event": "start", "litestate.outcome": "succeeded",
        "litestate.column": "status", "litestate.from_state": "pending",
        "litestate.to_state": "doing", "litestate.record_id": todo.id}
    assert parent.name == "request"
    assert span.parent is not None
    assert span.parent.span_id == request.get_span_context().span_id
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "tests"


def test_a_span_lasts_the_calls_duration_and_ends_at_the_signal(
        spans: tuple[Tracer, InMemorySpanExporter]) -> None:
    tracer, exporter = spans
    with trace_transitions(tracer), recording() as log:
        before = time.time_ns()
        Lamp().switch_on(wait=0.02)
        after = time.time_ns()
    [span] = exporter.get_finished_spans()
    duration = log.of("transition-succeeded")[0].payload["duration"]
    assert duration >= 0.02
    assert span.start_time is not None
    assert span.end_time is not None
    assert span.end_time - span.start_time == round(duration * 1e9)
    slack = 2_000_000  # perf_counter and time_ns are different clocks: allow 2 ms
    assert before - slack <= span.start_time
    assert span.end_time <= after


def test_a_failed_span_has_error_status_and_the_exception(
        session: Session, spans: tuple[Tracer, InMemorySpanExporter]) -> None:
    tracer, exporter = spans
    job = _job(session)
    with trace_transitions(tracer), pytest.raises(JobFailed):
        job.run(fail=True)
    [span] = exporter.get_finished_spans()
    assert span.name == "Job.run"
    assert (span.status.status_code, span.status.description) == (StatusCode.ERROR, "JobFailed")
    attributes = dict(span.attributes or {})
    assert attributes["litestate.outcome"] == "failed"
    assert attributes["error.type"] == "tests.models.JobFailed"
    [event] = span.events
    assert event.name == "exception"
    assert dict(event.attributes or {})["exception.type"] == "tests.models.JobFailed"
    assert event.timestamp == span.end_time


def test_a_refused_span_keeps_status_unset_and_has_the_reason(
        session: Session, spans: tuple[Tracer, InMemorySpanExporter]) -> None:
    tracer, exporter = spans
    job = _job(session, allow=False)
    with trace_transitions(tracer), pytest.raises(GuardError):
        job.run()
    [span] = exporter.get_finished_spans()
    assert span.status.status_code == StatusCode.UNSET
    assert span.events == ()
    attributes = dict(span.attributes or {})
    assert (attributes["litestate.outcome"], attributes["litestate.reason"]) == (
        "invalid", "guard")
    assert "error.type" not in attributes


def test_a_span_leaves_out_what_is_not_an_attribute_value(
        spans: tuple[Tracer, InMemorySpanExporter]) -> None:
    """No record id: no attribute; a key that is not a str or number: its str()."""
    tracer, exporter = spans
    with trace_transitions(tracer):
        Lamp(id=None).switch_on()
        lamp = Lamp()
        lamp.id = cast(int, (1, "a"))
        lamp.switch_on()
    first, second = exporter.get_finished_spans()
    assert "litestate.record_id" not in (first.attributes or {})
    assert (second.attributes or {})["litestate.record_id"] == "(1, 'a')"


def test_a_call_that_starts_tracing_has_a_span_of_no_length(
        spans: tuple[Tracer, InMemorySpanExporter]) -> None:
    tracer, exporter = spans

    @state_column("state")
    class Probe:
        def __init__(self) -> None:
            self.state = "idle"
            self.opened: list[Subscription] = []

        @transition(frm="idle", to="busy")
        def work(self) -> None:
            self.opened.append(trace_transitions(tracer))

    probe = Probe()
    probe.work()
    probe.opened[0].close()
    [span] = exporter.get_finished_spans()
    assert span.start_time == span.end_time


def test_the_default_tracer_is_litestates_from_the_global_provider(
        monkeypatch: pytest.MonkeyPatch, spans: tuple[Tracer, InMemorySpanExporter]) -> None:
    asked: list[tuple[str, str | None]] = []

    def get_tracer(name: str, version: str | None = None) -> Tracer:
        asked.append((name, version))
        return spans[0]

    monkeypatch.setattr(trace, "get_tracer", get_tracer)
    with trace_transitions():
        Lamp().switch_on()
    assert asked == [("litestate", litestate.__version__)]
    assert len(spans[1].get_finished_spans()) == 1


def test_sender_limits_the_spans_to_one_model(
        spans: tuple[Tracer, InMemorySpanExporter]) -> None:
    tracer, exporter = spans
    with trace_transitions(tracer, sender=Lamp):
        Lamp().switch_on()
        Job(state="new", allow=True, attempts=0).run()  # transient: another model
    assert [s.name for s in exporter.get_finished_spans()] == ["Lamp.switch_on"]


# -- OpenTelemetry metrics --------------------------------------------------------------------


def test_metrics_count_each_outcome_and_the_commit(
        session: Session, meter: tuple[Meter, InMemoryMetricReader]) -> None:
    todo, job = _todo(session), _job(session)
    with record_metrics(meter[0]):
        todo.start("ada")
        session.commit()
        job.run()
        session.rollback()  # succeeded, never committed
        with pytest.raises(InvalidStateError):
            todo.start("bob")
        with pytest.raises(JobFailed):
            job.run(fail=True)
    assert _outcomes(meter[1]) == {"succeeded": 2, "committed": 1, "invalid": 1, "failed": 1}
    counts = {tuple(sorted(dict(key).items())): point.value
              for key, point in _points(meter[1], "litestate.transitions").items()}
    assert counts[(("litestate.event", "start"), ("litestate.model", "Todo"),
                   ("litestate.outcome", "invalid"), ("litestate.reason", "invalid"))] == 1
    assert counts[(("error.type", "tests.models.JobFailed"), ("litestate.event", "run"),
                   ("litestate.model", "Job"), ("litestate.outcome", "failed"))] == 1


def test_the_duration_histogram_records_each_call_in_seconds(
        meter: tuple[Meter, InMemoryMetricReader]) -> None:
    lamp = Lamp()
    with record_metrics(meter[0]), recording() as log:
        lamp.switch_on(wait=0.01)
        Lamp().switch_on()
        with pytest.raises(OSError, match="fuse"):
            lamp.switch_off()
    points = _points(meter[1], "litestate.transition.duration")
    succeeded = points[(("litestate.event", "switch_on"), ("litestate.model", "Lamp"),
                        ("litestate.outcome", "succeeded"))]
    failed = points[(("error.type", "OSError"), ("litestate.event", "switch_off"),
                     ("litestate.model", "Lamp"), ("litestate.outcome", "failed"))]
    assert isinstance(succeeded, HistogramDataPoint)
    assert isinstance(failed, HistogramDataPoint)
    durations = [h.payload["duration"] for h in log.of("transition-succeeded")]
    assert (succeeded.count, failed.count) == (2, 1)
    assert failed.sum == pytest.approx(log.of("transition-failed")[0].payload["duration"])
    assert succeeded.sum == pytest.approx(sum(durations))
    assert succeeded.max >= 0.01
    assert succeeded.explicit_bounds[:4] == (0.0001, 0.00025, 0.0005, 0.001)
    assert succeeded.explicit_bounds[-1] == 10.0


def test_a_meter_that_takes_no_bucket_advice_still_records(
        meter: tuple[Meter, InMemoryMetricReader]) -> None:
    """opentelemetry-api before 1.23 has no ``explicit_bucket_boundaries_advisory``."""
    real = meter[0]

    class OldMeter:
        def create_histogram(self, name: str, unit: str = "", description: str = "") -> Any:
            return real.create_histogram(name, unit, description)

        def create_counter(self, name: str, unit: str = "", description: str = "") -> Any:
            return real.create_counter(name, unit, description)

    with record_metrics(cast(Meter, OldMeter())):
        Lamp().switch_on()
    [point] = _points(meter[1], "litestate.transition.duration").values()
    assert point.count == 1


def test_the_default_meter_is_litestates_from_the_global_provider(
        monkeypatch: pytest.MonkeyPatch, meter: tuple[Meter, InMemoryMetricReader]) -> None:
    from opentelemetry import metrics

    asked: list[tuple[str, str]] = []

    def get_meter(name: str, version: str = "") -> Meter:
        asked.append((name, version))
        return meter[0]

    monkeypatch.setattr(metrics, "get_meter", get_meter)
    with record_metrics():
        Lamp().switch_on()
    assert asked == [("litestate", litestate.__version__)]
    assert _outcomes(meter[1]) == {"succeeded": 1}
