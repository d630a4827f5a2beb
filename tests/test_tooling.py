"""mypy --strict, pyright strict and ruff run with the tests, so the one test command
checks everything."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.test_readme import BLOCKS, README

ROOT = Path(__file__).resolve().parent.parent
#: Where .ci/run installs the pyright it pins (npm); else pyright is looked up on PATH.
LOCAL_PYRIGHT = ROOT / ".ci" / "node" / "node_modules" / ".bin" / "pyright"
#: What pyright strict reports today that only edits to README.md or litestate/ can fix.
#: Each entry must still be reported (delete it once fixed) and nothing else may be;
#: LITESTATE_PYRIGHT_PENDING=write rewrites it from a run (tests/typing is never pending).
PENDING = ROOT / "tests" / "typing" / "pyright_pending.json"


def test_mypy_strict_is_clean_including_the_typing_checks() -> None:
    from mypy import api

    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml")])
    assert status == 0, out + err
    assert "tests/typing" not in out


def test_ruff_is_clean() -> None:
    done = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)],
                          capture_output=True, text=True, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


class Diagnostic(NamedTuple):
    file: str  # relative to the repository; README.md for the examples
    line: int
    rule: str
    message: str

    @property
    def key(self) -> tuple[str, str, str]:
        """What the pending list records: no line, as other edits move them."""
        return self.file, self.rule, self.message

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message} ({self.rule})"


def _pyright() -> str:
    """The pyright executable, or skip (fail in CI: CI must run it)."""
    local = str(LOCAL_PYRIGHT) if LOCAL_PYRIGHT.exists() and shutil.which("node") else None
    found = local or shutil.which("pyright")
    if found is None:
        why = (f"pyright is neither in {LOCAL_PYRIGHT.relative_to(ROOT)} (see .ci/run; it "
               "needs node) nor on PATH")
        if os.environ.get("CI"):
            pytest.fail(f"CI must run pyright: {why}", pytrace=False)
        pytest.skip(why)
    return found


def _readme_module(path: Path) -> list[tuple[int, int]]:
    """Write the README's examples, in order, as one strict module at ``path``; return
    (line in the module, line in README.md) for the start of each block."""
    text = README.read_text()
    lines = ["# pyright: strict"]  # the module is outside the configured strict paths
    starts: list[tuple[int, int]] = []
    at = 0
    for block in BLOCKS:
        at = text.index(block, at)
        starts.append((len(lines) + 1, text.count("\n", 0, at) + 1))
        lines.extend(block.splitlines())
        at += len(block)
    path.write_text("\n".join(lines) + "\n")
    return starts


@pytest.fixture(scope="module")
def pyright_diagnostics(tmp_path_factory: pytest.TempPathFactory) -> list[Diagnostic]:
    """One pyright run over the configured paths and the README's examples."""
    exe = _pyright()
    module = tmp_path_factory.mktemp("pyright") / "readme_examples.py"
    starts = _readme_module(module)
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pyright"]["include"]
    done = subprocess.run(
        [exe, "--outputjson", "--project", str(ROOT), "--pythonpath", sys.executable,
         *include, str(module)],
        capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode not in (0, 1):  # 1: errors reported; more: pyright itself failed
        pytest.fail(f"pyright exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    report: dict[str, Any] = json.loads(done.stdout)
    expected = sum(len(list((ROOT / path).rglob("*.py"))) for path in include) + 1
    assert report["summary"]["filesAnalyzed"] >= expected, report["summary"]

    def located(file: str, line: int) -> tuple[str, int]:
        if Path(file) == module:
            start, readme_line = max((s for s in starts if s[0] <= line), default=(1, 0))
            return "README.md", readme_line + line - start
        path = Path(file)
        return (path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else file), line

    found = []
    for d in report["generalDiagnostics"]:
        if d["severity"] == "information":
            continue
        file, line = located(d["file"], d["range"]["start"]["line"] + 1)
        message = d["message"].replace(str(module), "README.md").replace(f"{ROOT}/", "")
        found.append(Diagnostic(file, line, d.get("rule", ""), message))
    if os.environ.get("LITESTATE_PYRIGHT_PENDING") == "write":
        pending = sorted(d.key for d in found if not d.file.startswith("tests/"))
        PENDING.write_text(json.dumps([dict(zip(("file", "rule", "message"), p, strict=True))
                                       for p in pending], indent=1) + "\n")
    return found


def _assert_only_pending(found: list[Diagnostic], readme: bool) -> None:
    """The diagnostics are exactly the pending ones (those of README.md, or the others)."""
    pending = Counter((p["file"], p["rule"], p["message"]) for p in json.loads(PENDING.read_text())
                      if (p["file"] == "README.md") == readme)
    reported = Counter(d.key for d in found)
    new = [d for d in found if d.key in reported - pending]
    stale = sorted((pending - reported).elements())
    if new or stale:
        pytest.fail("\n".join(
            [f"pyright reports {len(new)} diagnostic(s) not pending (or more often):",
             *map(str, new),
             f"and {len(stale)} pending one(s) in {PENDING.relative_to(ROOT)} no longer "
             "occur (delete them):", *(f"{f}: {m} ({r})" for f, r, m in stale)]),
            pytrace=False)


def test_pyright_strict_accepts_the_typing_checks_and_the_package(
        pyright_diagnostics: list[Diagnostic]) -> None:
    """The configured paths: litestate/ and tests/typing (whose misuses pyright must flag,
    each as its `# pyright: ignore[rule]` says)."""
    _assert_only_pending([d for d in pyright_diagnostics if d.file != "README.md"], False)
    assert not [str(d) for d in pyright_diagnostics if d.file.startswith("tests/")]


def test_pyright_strict_accepts_the_readme_examples(
        pyright_diagnostics: list[Diagnostic]) -> None:
    """The README's Python blocks, as tests/test_readme.py runs them: in order, as one
    module; reportUnknown* (an unannotated guard's parameters) counts."""
    _assert_only_pending([d for d in pyright_diagnostics if d.file == "README.md"], True)
