"""The demo (the README's first command) runs and shows what it promises."""

from __future__ import annotations

from pathlib import Path

import pytest

import litestate
from examples.demo import main


def test_the_demo_runs_and_prints_transitions_signals_refusals_and_actions(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(tmp_path / "demo.db")
    out = capsys.readouterr().out
    assert "signal succeeded  Todo 1: start() pending -> doing" in out
    assert "signal committed  Todo 2: unblock()" in out
    assert "TransitionError: cannot start() Todo 1: status is 'completed'" in out
    assert "signal failed     Todo: start() raised ConnectionError('mail server down')" in out
    assert "follower is still pending" in out
    assert "cancel returned 'fraud'" in out
    assert "StatutoryRateConfig 1 is inactive" in out
    assert "StatutoryRateConfig 2 is active; allowed now: archive" in out
    assert (tmp_path / "demo.db").exists()
    assert not litestate.transition_succeeded.receivers  # the demo cleaned up after itself
