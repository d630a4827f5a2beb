"""The demo (the README's first command) runs, shows what it promises, and never replaces a
file it did not make."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import litestate
from examples.demo import APPLICATION_ID, made_by_demo, main

ROOT = Path(__file__).resolve().parent.parent
REFUSED = "exists and is not a database this demo made; it was left untouched"


def test_the_demo_runs_and_prints_transitions_signals_refusals_and_actions(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "demo.db")]) == 0
    out = capsys.readouterr().out
    assert "signal succeeded  Todo 1: start() pending -> doing" in out
    assert "signal committed  Todo 2: unblock()" in out
    assert "TransitionError: cannot start() Todo 1: status is 'completed'" in out
    assert "signal failed     Todo: start() raised ConnectionError('mail server down')" in out
    assert "follower is still pending" in out
    assert "cancel returned 'fraud'" in out
    assert "StatutoryRateConfig 1 is inactive" in out
    assert "StatutoryRateConfig 2 is active; allowed now: archive" in out
    assert "job 1 is fetch_failed, attempts=1, last_error='examples.models.UpstreamDown" in out
    assert "into fetch_failed" in out
    assert out.count("job 1 is fetched (200 OK); its history:\n") == 1
    assert ("    fetch(): fetching -> fetch_failed  [examples.models.UpstreamDown: 503 from "
            "https://upstream.example/report]\n    start(): fetch_failed -> fetching\n"
            "    fetch(): fetching -> fetched\n") in out
    assert made_by_demo(tmp_path / "demo.db")
    assert not litestate.transition_succeeded.receivers  # the demo cleaned up after itself


def test_without_arguments_the_demo_writes_litestate_demo_db_and_replaces_it_on_a_rerun(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0
    assert main([]) == 0  # its own database, from the first run: replaced, not refused
    out = capsys.readouterr().out
    assert out.count("Records:\n  Todo 1 is pending") == 2
    assert out.endswith("The database is in litestate-demo.db\n")
    assert [p.name for p in tmp_path.iterdir()] == ["litestate-demo.db"]
    with sqlite3.connect(tmp_path / "litestate-demo.db") as conn:
        assert conn.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
        assert conn.execute("SELECT count(*) FROM todos").fetchone() == (2,)
    conn.close()


def test_python_m_examples_demo_refuses_an_existing_text_file_and_leaves_it_untouched(
        tmp_path: Path) -> None:
    """The command a new user typed: exit status 2, a message, the file as it was."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "examples.demo", "notes.txt"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr == (f"python -m examples.demo: error: notes.txt {REFUSED}. "
                           "Pass a path that does not exist yet.\n")
    assert notes.read_text() == "my notes\n"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def _other_database(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    conn.close()


def _empty_file(path: Path) -> None:
    path.touch()


def _directory(path: Path) -> None:
    path.mkdir()


def _symlink_to_a_demo_database(path: Path) -> None:
    assert main([str(path.with_name("real.db"))]) == 0
    path.symlink_to("real.db")


def _snapshot(folder: Path) -> dict[str, tuple[bool, bytes | None]]:
    return {p.name: (p.is_symlink(), None if p.is_dir() else p.read_bytes())
            for p in folder.iterdir()}


@pytest.mark.parametrize("make", [_other_database, _empty_file, _directory,
                                  _symlink_to_a_demo_database])
def test_an_existing_path_the_demo_did_not_make_is_refused_and_left_as_it_was(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Callable[[Path], None]
        ) -> None:
    """Another application's database, an empty file, a directory, a symlink (even to a
    database the demo made: the link is not the demo's)."""
    target = tmp_path / "target.db"
    make(target)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert main([str(target)]) == 2
    captured = capsys.readouterr()
    assert (captured.out, REFUSED in captured.err) == ("", True)
    assert _snapshot(tmp_path) == before
