"""The pytest plugin: installed through the ``pytest11`` entry point, its fixtures work in a
suite that requests them, and a suite that does not is unaffected."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

pytest_plugins = ["pytester"]

#: The generated suites run under our own strict configuration.
STRICT_INI = """
[pytest]
addopts = --strict-markers --strict-config -p no:cacheprovider
filterwarnings = error
xfail_strict = true
"""

DOOR = '''
from litestate import state_column, transition


@state_column("state")
class Door:
    def __init__(self):
        self.state = "closed"
        self.opened_at = None

    @transition(frm="closed", to="open", timestamp="opened_at")
    def open(self):
        pass
'''

USING_THE_FIXTURES = DOOR + '''
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import litestate
from litestate.sqlite import enable_savepoints
from litestate.testing import FROZEN_AT


class Base(DeclarativeBase):
    pass


@state_column("status")
class Ticket(Base):
    __tablename__ = "tickets"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="open")
    closed_at: Mapped[datetime | None]

    @transition(frm="open", to="closed", timestamp=True)
    def close(self):
        pass


def test_signals_are_captured(litestate_signals):
    Door().open()
    assert litestate_signals.names() == ["succeeded"]
    assert litestate_signals[0].to_state == "open"


def test_a_session_is_heard_and_stamped(litestate_signals, litestate_clock):
    engine = enable_savepoints(sa.create_engine("sqlite://"))
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        ticket = Ticket()
        session.add(ticket)
        session.commit()
        ticket.close()
        session.commit()
        assert ticket.closed_at == FROZEN_AT
    assert litestate_signals.names() == ["succeeded", "committed"]


def test_the_clock_stands_still_until_moved(litestate_clock):
    door = Door()
    door.open()
    assert door.opened_at == FROZEN_AT == litestate_clock.now
    litestate_clock.tick(timedelta(minutes=1))
    later = Door()
    later.open()
    assert later.opened_at == FROZEN_AT + timedelta(minutes=1)


def test_a_failing_test_with_both_fixtures(litestate_signals, litestate_clock):
    Door().open()
    raise AssertionError("this one fails")


def test_afterwards_nothing_is_connected_and_the_clock_is_real():
    assert not litestate.transition_succeeded.receivers
    assert not litestate.transition_committed.receivers
    before = datetime.now(timezone.utc)
    door = Door()
    door.open()
    assert door.opened_at >= before
'''

NOT_USING_THEM = '''
import sys


def test_the_plugin_is_loaded_but_litestate_testing_is_not(pytestconfig):
    assert pytestconfig.pluginmanager.has_plugin("litestate")
    assert "litestate.testing" not in sys.modules


def test_no_receiver_is_connected_and_the_clock_is_real():
    from datetime import datetime, timezone

    import litestate
    from test_door import Door

    signals = (litestate.transition_succeeded, litestate.transition_invalid,
               litestate.transition_failed, litestate.transition_committed)
    assert not any(signal.receivers for signal in signals)
    before = datetime.now(timezone.utc)
    door = Door()
    door.open()
    assert door.opened_at >= before


def test_an_ordinary_test():
    assert 1 + 1 == 2
'''


def test_the_plugin_is_installed_as_a_pytest11_entry_point() -> None:
    found = [e for e in entry_points(group="pytest11") if e.name == "litestate"]
    assert [e.value for e in found] == ["litestate.pytest_plugin"]


def test_a_suite_using_the_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makeini(STRICT_INI)
    pytester.makepyfile(test_tickets=USING_THE_FIXTURES)
    result = pytester.runpytest()
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: this one fails"])


def test_a_suite_not_requesting_them_is_unaffected(pytester: pytest.Pytester) -> None:
    """In a process of its own: litestate.testing is imported only on request."""
    pytester.makeini(STRICT_INI)
    pytester.makepyfile(test_plain=NOT_USING_THEM, test_door=DOOR)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=3)


def test_the_fixtures_are_listed_with_their_docs(pytester: pytest.Pytester) -> None:
    pytester.makeini(STRICT_INI)
    result = pytester.runpytest("--fixtures")
    result.stdout.fnmatch_lines([
        "*litestate_signals*",
        "*Every litestate signal sent during the test*",
        "*litestate_clock*",
        "*Transition timestamps stand at*",
    ])


def test_the_plugin_can_be_turned_off(pytester: pytest.Pytester) -> None:
    pytester.makeini(STRICT_INI)
    pytester.makepyfile(test_off="def test_signals(litestate_signals):\n    pass\n")
    result = pytester.runpytest("-p", "no:litestate")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'litestate_signals' not found*"])
