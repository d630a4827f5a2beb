"""``python -m litestate diagram``, run as a subprocess: stdout, -o, the marked blocks that
--check checks and --write updates, and errors as exit statuses with a message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from examples.models import Subscription, Todo
from litestate.__main__ import main
from litestate.diagram import diagram

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TODO_MARKER = "<!-- litestate diagram examples.models:Todo -->"


def litestate(*args: str | Path, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    """``python -m litestate ARGS`` from the repository's root, where examples/ imports."""
    return subprocess.run([sys.executable, "-m", "litestate", *map(str, args)],
                          capture_output=True, text=True, check=False, cwd=ROOT, env=env,
                          timeout=120)


def block(marker: str, text: str, fence: str = "mermaid") -> str:
    return f"{marker}\n```{fence}\n{text}```\n"


# -- drawing ------------------------------------------------------------------------------


def test_the_diagram_goes_to_stdout() -> None:
    done = litestate("diagram", "examples.models:Todo")
    assert (done.returncode, done.stdout, done.stderr) == (0, diagram(Todo), "")


def test_format_and_column_are_diagrams_options() -> None:
    done = litestate("diagram", "examples.models:Subscription", "--format", "dot",
                     "--column", "payment_status")
    assert done.stdout == diagram(Subscription, format="dot", column="payment_status")


def test_output_writes_the_diagram_to_a_file(tmp_path: Path) -> None:
    out = tmp_path / "todo.dot"
    done = litestate("diagram", "examples.models:Todo", "--format", "dot", "-o", out)
    assert (done.returncode, done.stdout) == (0, "")
    assert out.read_text() == diagram(Todo, format="dot")



def test_main_returns_the_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    """``main()`` returns 0 when it draws, not ``None`` (which ``sys.exit`` reads as 0)."""
    assert main(["diagram", "examples.models:Todo"]) == 0
    assert capsys.readouterr().out == diagram(Todo)
    assert main(["diagram", "examples.models:Todo", "-o", str(tmp_path / "todo.mmd")]) == 0
    assert (tmp_path / "todo.mmd").read_text() == diagram(Todo)


def test_the_text_does_not_depend_on_the_hash_seed() -> None:
    """Several frm states are a frozenset, whose order changes with PYTHONHASHSEED."""
    texts = {litestate("diagram", "examples.models:Subscription", "--format", "dot",
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout
             for seed in ("0", "1", "2")}
    assert len(texts) == 1


# -- --check ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [
    "examples.models:Todo", "examples.models:PaymentIntent", "examples.models:Subscription"])
def test_the_readme_holds_the_current_diagrams(target: str) -> None:
    done = litestate("diagram", target, "--check", README)
    assert done.returncode == 0, done.stderr


def test_check_passes_on_a_current_block(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Todo\n\n{block(TODO_MARKER, diagram(Todo))}\nMore text.\n")
    done = litestate("diagram", "examples.models:Todo", "--check", readme)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_check_fails_on_a_stale_block_saying_which_and_how_to_regenerate(
        tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    stale = diagram(Todo).replace("    s2 --> s1: reopen\n", "")
    readme.write_text(f"# Todo\n\n{block(TODO_MARKER, stale)}")
    done = litestate("diagram", "examples.models:Todo", "--check", readme)
    assert done.returncode == 1
    assert f"{readme}:3: the diagram under {TODO_MARKER} is stale" in done.stderr
    assert f"python -m litestate diagram examples.models:Todo --write {readme}" in done.stderr


def test_check_fails_when_the_block_is_missing(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Todo\n\n```mermaid\n{diagram(Todo)}```\n")
    done = litestate("diagram", "examples.models:Todo", "--check", readme)
    assert done.returncode == 1
    assert f"no diagram block {TODO_MARKER}" in done.stderr


def test_check_fails_when_the_marker_has_no_fenced_block_under_it(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"{TODO_MARKER}\n\n```mermaid\n{diagram(Todo)}```\n")
    done = litestate("diagram", "examples.models:Todo", "--check", readme)
    assert done.returncode == 1
    assert f"{readme}:1: {TODO_MARKER} is not followed by a fenced diagram" in done.stderr


def test_the_marker_names_the_format_and_the_column(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    marker = ("<!-- litestate diagram examples.models:Subscription format=dot "
              "column=payment_status -->")
    text = diagram(Subscription, format="dot", column="payment_status")
    readme.write_text(block(marker, text, "dot"))
    args = ("diagram", "examples.models:Subscription", "--format", "dot", "--column",
            "payment_status", "--check", readme)
    assert litestate(*args).returncode == 0
    readme.write_text(block(TODO_MARKER, text, "dot"))
    done = litestate(*args)
    assert done.returncode == 1
    assert ("--format dot --column payment_status --write") in done.stderr


def test_several_state_columns_have_one_block_each(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    blocks = [block(f"<!-- litestate diagram examples.models:Subscription column={c} -->",
                    diagram(Subscription, column=c)) for c in ("status", "payment_status")]
    readme.write_text("\n".join(blocks))
    assert litestate("diagram", "examples.models:Subscription", "--check", readme
                     ).returncode == 0
    readme.write_text(blocks[0])
    done = litestate("diagram", "examples.models:Subscription", "--check", readme)
    assert done.returncode == 1
    assert "column=payment_status -->" in done.stderr


# -- --write ------------------------------------------------------------------------------


def test_write_updates_a_stale_block_in_place_and_nothing_else(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    before, after = "# Todo\n\nSome prose.\n\n", "\nThe end.\n"
    readme.write_text(before + block(TODO_MARKER, "stateDiagram-v2\n    old\n") + after)
    done = litestate("diagram", "examples.models:Todo", "--write", readme)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"updated {readme}:5: {TODO_MARKER}\n"
    assert readme.read_text() == before + block(TODO_MARKER, diagram(Todo)) + after
    assert litestate("diagram", "examples.models:Todo", "--check", readme).returncode == 0


def test_write_puts_a_block_under_a_marker_alone(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"Diagrams:\n{TODO_MARKER}")
    assert litestate("diagram", "examples.models:Todo", "--write", readme).returncode == 0
    assert readme.read_text() == f"Diagrams:\n{block(TODO_MARKER, diagram(Todo))}"


def test_write_leaves_a_current_file_untouched(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(block(TODO_MARKER, diagram(Todo)))
    done = litestate("diagram", "examples.models:Todo", "--write", readme)
    assert (done.returncode, done.stdout) == (0, "")


def test_write_without_the_marker_fails_saying_where_it_goes(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Todo\n")
    done = litestate("diagram", "examples.models:Todo", "--write", readme)
    assert done.returncode == 1
    assert f"no line {TODO_MARKER}; add it where the diagram goes" in done.stderr
    assert readme.read_text() == "# Todo\n"


def test_write_keeps_the_files_crlf_line_endings(tmp_path: Path) -> None:
    """Only the block changes, written with the marker line's ending; --check reads it."""
    readme = tmp_path / "README.md"
    before, after = b"# Todo\r\n\r\nSome prose.\r\n", b"\r\nThe end.\r\n"
    stale = block(TODO_MARKER, "stateDiagram-v2\n    old\n").replace("\n", "\r\n")
    readme.write_bytes(before + stale.encode() + after)
    done = litestate("diagram", "examples.models:Todo", "--write", readme)
    assert (done.returncode, done.stderr) == (0, "")
    current = block(TODO_MARKER, diagram(Todo)).replace("\n", "\r\n")
    assert readme.read_bytes() == before + current.encode() + after
    done = litestate("diagram", "examples.models:Todo", "--check", readme)
    assert (done.returncode, done.stderr) == (0, "")


def test_write_under_a_last_marker_line_uses_the_files_line_ending(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_bytes(f"Diagrams:\r\n{TODO_MARKER}".encode())
    assert litestate("diagram", "examples.models:Todo", "--write", readme).returncode == 0
    current = block(TODO_MARKER, diagram(Todo)).replace("\n", "\r\n")
    assert readme.read_bytes() == f"Diagrams:\r\n{current}".encode()


def test_check_fails_on_a_stale_crlf_block(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    stale = diagram(Todo).replace("    s2 --> s1: reopen\n", "")
    readme.write_bytes(block(TODO_MARKER, stale).replace("\n", "\r\n").encode())
    done = litestate("diagram", "examples.models:Todo", "--check", readme)
    assert done.returncode == 1
    assert f"{readme}:1: the diagram under {TODO_MARKER} is stale" in done.stderr


def indented(text: str, indent: str = "  ") -> str:
    return "".join(indent + line if line.strip() else line
                   for line in text.splitlines(keepends=True))


def test_an_indented_marker_is_followed_by_its_block_at_the_same_indentation(
        tmp_path: Path) -> None:
    """A marker in a Markdown list item: its fence is indented as it is."""
    readme = tmp_path / "README.md"
    readme.write_text("- the states:\n\n" + indented(block(TODO_MARKER, diagram(Todo))))
    done = litestate("diagram", "examples.models:Todo", "--check", readme)
    assert (done.returncode, done.stderr) == (0, "")


def test_write_replaces_an_indented_block_in_place_indented(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    before, after = "- the states:\n\n", "\n- more\n"
    readme.write_text(before + indented(block(TODO_MARKER, "stateDiagram-v2\n    old\n"))
                      + after)
    done = litestate("diagram", "examples.models:Todo", "--write", readme)
    assert (done.returncode, done.stderr) == (0, "")
    assert readme.read_text() == before + indented(block(TODO_MARKER, diagram(Todo))) + after
    assert litestate("diagram", "examples.models:Todo", "--check", readme).returncode == 0


def test_write_puts_an_indented_block_under_an_indented_marker_alone(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"- the states:\n\n  {TODO_MARKER}\n- more\n")
    assert litestate("diagram", "examples.models:Todo", "--write", readme).returncode == 0
    assert readme.read_text() == ("- the states:\n\n" +
                                  indented(block(TODO_MARKER, diagram(Todo))) + "- more\n")


def test_a_block_keeps_the_indentation_its_fence_has(tmp_path: Path) -> None:
    """An indented marker over an unindented block (as an earlier --write put it there):
    that is its block, rewritten where it is, not a second one."""
    readme = tmp_path / "README.md"
    readme.write_text(f"- item\n\n  {block(TODO_MARKER, diagram(Todo))}")
    assert litestate("diagram", "examples.models:Todo", "--check", readme).returncode == 0
    stale = block(TODO_MARKER, "stateDiagram-v2\n    old\n")
    readme.write_text(f"- item\n\n  {stale}")
    assert litestate("diagram", "examples.models:Todo", "--write", readme).returncode == 0
    assert readme.read_text() == f"- item\n\n  {block(TODO_MARKER, diagram(Todo))}"


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "message"), [
    ("examples.models", "'examples.models' is not a target: write package.module:Model"),
    ("examples.models:", "is not a target"),
    ("examples/models.py:Todo", "is not a target"),
    ("examples.absent:Todo", "cannot import examples.absent: ModuleNotFoundError"),
    ("examples.models:Absent", "examples.models has no Absent"),
    ("examples.models:Todo.absent", "examples.models has no Todo.absent"),
    ("examples.models:TodoEvent", "cannot draw examples.models:TodoEvent: TodoEvent declares "
                                  "no transitions"),
])
def test_a_bad_target_exits_2_with_a_message(target: str, message: str) -> None:
    done = litestate("diagram", target)
    assert (done.returncode, done.stdout) == (2, "")
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_module_that_fails_to_import_exits_2_with_its_error(tmp_path: Path) -> None:
    (tmp_path / "broken_models.py").write_text("raise RuntimeError('no database here')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = litestate("diagram", "broken_models:Todo", env=env)
    assert done.returncode == 2
    assert "cannot import broken_models: RuntimeError: no database here" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("code", "said"), [("3", "sys.exit(3)"), ("'bye'", "sys.exit('bye')"),
                                            ("", "sys.exit(None)")])
def test_a_module_that_exits_while_imported_exits_2_saying_so(tmp_path: Path, code: str,
                                                               said: str) -> None:
    (tmp_path / "exiting_models.py").write_text(f"import sys\nsys.exit({code})\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = litestate("diagram", "exiting_models:Todo", env=env)
    assert (done.returncode, done.stdout) == (2, "")
    assert f"litestate: cannot import exiting_models: it called {said}\n" == done.stderr


def test_an_unknown_column_exits_2_naming_the_columns() -> None:
    done = litestate("diagram", "examples.models:Todo", "--column", "state")
    assert done.returncode == 2
    assert "Todo has no transitions on 'state'; its state columns are ['status']" in done.stderr


def test_a_file_that_cannot_be_read_exits_2(tmp_path: Path) -> None:
    done = litestate("diagram", "examples.models:Todo", "--check", tmp_path / "absent.md")
    assert done.returncode == 2
    assert "cannot read" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("args", [(), ("diagram",), ("diagram", "examples.models:Todo",
                                                     "--format", "svg"),
                                  ("diagram", "examples.models:Todo", "-o", "x", "--check",
                                   "y")])
def test_a_bad_command_line_exits_2_with_the_usage(args: tuple[str, ...]) -> None:
    done = litestate(*args)
    assert done.returncode == 2
    assert "usage: python -m litestate" in done.stderr
