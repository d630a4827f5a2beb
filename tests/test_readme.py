"""The README is the manual: its Python blocks run, in order, in one namespace."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SERVERS

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.S | re.M)
# A python block followed by "It prints:" and a text block: what it must print.
PRINTS = {block: printed for block, printed in re.findall(
    r"^```python\n((?:(?!^```).)*?)^```\n\nIt prints:\n\n```text\n(.*?)^```$", README.read_text(),
    flags=re.S | re.M)}


def test_the_readme_has_examples() -> None:
    assert len(BLOCKS) >= 10


SQLITE_ENGINE = 'engine = enable_savepoints(create_engine("sqlite://"))'


@pytest.fixture(params=["sqlite", *SERVERS])
def readme_engine_line(request: pytest.FixtureRequest) -> Iterator[str]:
    """The README's engine line, or one for a database of its own on a test server (its
    tables would clash with the test models')."""
    if request.param == "sqlite":
        yield SQLITE_ENGINE
        return
    server = request.getfixturevalue(
        "pg_engine" if request.param == "postgresql" else "maria_engine")
    with server.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("DROP DATABASE IF EXISTS litestate_readme")
        conn.exec_driver_sql("CREATE DATABASE litestate_readme")
    url = server.url.set(database="litestate_readme")
    yield f"engine = create_engine({url.render_as_string(hide_password=False)!r})"


def test_the_readme_examples_run(monkeypatch: pytest.MonkeyPatch, readme_engine_line: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """As one module, registered: SQLAlchemy resolves annotations through sys.modules.
    A block the README says prints something prints exactly that."""
    module = types.ModuleType("readme")
    monkeypatch.setitem(sys.modules, "readme", module)
    assert SQLITE_ENGINE in BLOCKS[0]
    assert len(PRINTS) >= 2
    try:
        for number, block in enumerate(BLOCKS, 1):
            code = compile(block.replace(SQLITE_ENGINE, readme_engine_line),
                           f"README.md python block {number}", "exec")
            capsys.readouterr()
            exec(code, module.__dict__)
            if block in PRINTS:
                printed = capsys.readouterr().out
                assert printed == PRINTS[block], f"README.md python block {number} printed"
    finally:
        engine = module.__dict__.get("engine")
        if engine is not None:
            engine.dispose()


def test_the_readme_commands_are_the_ones_ci_runs() -> None:
    commands = re.findall(r"^```bash\n(.*?)\n```$", README.read_text(), flags=re.M)
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = next(c for c in commands if "pytest" in c)
    assert "pip install -e '.[test]'" in test_command
    assert "pip install -e '.[test]'" in ci
    assert "python -m pytest" in ci
    assert any("python -m examples.demo" in c for c in commands)
