"""litestate's pytest fixtures, installed with litestate (the ``pytest11`` entry point
``litestate``; ``-p no:litestate`` turns it off).

- ``litestate_signals``: a :func:`litestate.testing.capture_signals` for the test: every
  litestate signal sent during it, as :class:`litestate.testing.Signals`.
- ``litestate_clock``: a :func:`litestate.testing.frozen_clock` for the test, standing at
  :data:`litestate.testing.FROZEN_AT` until the test moves it (``.tick()``,
  ``.move_to()``); the real clock comes back after the test.

Nothing is autouse: a test that requests neither runs as it would without the plugin.
No receiver is connected and the clock is not touched until a fixture is requested, and
:mod:`litestate.testing` is imported then. Loading the plugin does import the
``litestate`` package (a submodule's import runs the package's ``__init__``), and with it
litestate's SQLAlchemy event listeners, which do nothing for sessions that fire no
transition.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from litestate.testing import FrozenClock, Signals

__all__ = ["litestate_clock", "litestate_signals"]


@pytest.fixture
def litestate_signals() -> Iterator[Signals]:
    """Every litestate signal sent during the test (receivers disconnected after it)."""
    from litestate.testing import capture_signals

    with capture_signals() as signals:
        yield signals


@pytest.fixture
def litestate_clock() -> Iterator[FrozenClock]:
    """Transition timestamps stand at ``litestate.testing.FROZEN_AT`` until moved."""
    from litestate.testing import FROZEN_AT, frozen_clock

    with frozen_clock(FROZEN_AT) as clock:
        yield clock
