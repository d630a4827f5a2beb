"""The README is the manual: its Python blocks run, in order, in one namespace."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.S | re.M)


def test_the_readme_has_examples() -> None:
    assert len(BLOCKS) >= 10


def test_the_readme_examples_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """As one module, registered: SQLAlchemy resolves annotations through sys.modules."""
    module = types.ModuleType("readme")
    monkeypatch.setitem(sys.modules, "readme", module)
    for number, block in enumerate(BLOCKS, 1):
        code = compile(block, f"README.md python block {number}", "exec")
        exec(code, module.__dict__)


def test_the_readme_commands_are_the_ones_ci_runs() -> None:
    commands = re.findall(r"^```bash\n(.*?)\n```$", README.read_text(), flags=re.M)
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = next(c for c in commands if "pytest" in c)
    assert "pip install -e '.[test]'" in test_command
    assert "pip install -e '.[test]'" in ci
    assert "python -m pytest" in ci
    assert any("python -m examples.demo" in c for c in commands)
