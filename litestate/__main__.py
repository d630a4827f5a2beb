"""The command line: ``python -m litestate diagram package.module:Model``.

::

    python -m litestate diagram examples.models:Todo                   # Mermaid, on stdout
    python -m litestate diagram examples.models:Todo --format dot -o todo.dot
    python -m litestate diagram examples.models:Todo --check README.md  # in CI
    python -m litestate diagram examples.models:Todo --write README.md  # after a change

``--check`` and ``--write`` work on marked blocks of a text file: a marker line, then
at once a fenced code block (mermaid or dot) holding the diagram::

    <!-- litestate diagram examples.models:Todo -->
    ```mermaid
    stateDiagram-v2
    ...
    ```

The marker names the target, then ``format=dot`` and ``column=C`` when those options are
given. A class with several state columns, drawn without ``--column``, has one block per
column, each marker naming its column. ``--check`` exits 1 when a block is missing or
stale, saying which and how to regenerate it; ``--write`` rewrites the blocks in place (a
marker with no block under it gets one). A bad target, an import that fails, a class
without transitions or a file that cannot be read exit 2, with a message, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, get_args

from litestate.core import transitions
from litestate.diagram import Format, diagram

__all__ = ["main"]

#: Exit statuses: a block is missing or stale; the command cannot run as given.
STALE, USAGE = 1, 2


class _Failure(Exception):
    """Ends the command: ``message`` on stderr, ``status`` as the exit status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status, self.message = status, message


class _Request(NamedTuple):
    """The diagram command's arguments, typed."""

    target: str
    format: Format
    column: str | None
    output: Path | None
    check: Path | None
    write: Path | None


class _Block(NamedTuple):
    """One diagram as a file holds it: the marker line, then the fenced diagram."""

    marker: str
    fenced: str


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line (``argv`` without the program name); return the exit status."""
    args = _parser().parse_args(argv)
    request = _Request(args.target, args.format, args.column, args.output, args.check,
                       args.write)
    try:
        return _diagram_command(request)
    except _Failure as failure:
        print(f"litestate: {failure.message}", file=sys.stderr)
        return failure.status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m litestate",
                                     description="litestate's command line.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    draw = commands.add_parser(
        "diagram", help="draw a model's state diagram",
        description="Draw the state diagram of a class with transitions, or check or "
                    "update the copy a file (a README) holds in a marked block: the line "
                    "'<!-- litestate diagram TARGET -->' followed by a fenced code block.")
    draw.add_argument("target", metavar="package.module:Model",
                      help="the class (or object) to draw, as an import path")
    draw.add_argument("--format", choices=get_args(Format), default="mermaid",
                      help="mermaid (stateDiagram-v2, the default) or dot (Graphviz)")
    draw.add_argument("--column", help="draw only this state column")
    where = draw.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", metavar="FILE", type=Path,
                       help="write the diagram to FILE instead of stdout")
    where.add_argument("--check", metavar="FILE", type=Path,
                       help="exit 1 unless FILE's marked block holds the current diagram")
    where.add_argument("--write", metavar="FILE", type=Path,
                       help="update FILE's marked block in place")
    return parser


def _diagram_command(request: _Request) -> int:
    target = _load(request.target)
    if request.check is not None:
        return _check(request, request.check, _blocks(request, target))
    if request.write is not None:
        return _write(request, request.write, _blocks(request, target))
    text = _draw(request, target, request.column)
    if request.output is None:
        sys.stdout.write(text)
    else:
        _save(request.output, text)
    return 0


# -- the target ---------------------------------------------------------------------------


def _load(target: str) -> object:
    """The object ``package.module:Name`` (or ``:Outer.Inner``) names."""
    module_name, colon, qualname = target.partition(":")
    if not colon or not _is_dotted_name(module_name) or not _is_dotted_name(qualname):
        raise _Failure(USAGE, f"{target!r} is not a target: write package.module:Model")
    try:
        found: object = importlib.import_module(module_name)
    except Exception as exc:  # whatever importing the user's module raises
        raise _Failure(USAGE, f"cannot import {module_name}: {type(exc).__name__}: {exc}"
                       ) from None
    for part in qualname.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise _Failure(USAGE, f"{module_name} has no {qualname}") from None
    return found


def _is_dotted_name(text: str) -> bool:
    return all(part.isidentifier() for part in text.split("."))


def _draw(request: _Request, target: object, column: str | None) -> str:
    try:
        return diagram(target, format=request.format, column=column)
    except Exception as exc:  # a class without transitions, a bad declaration or mapping
        raise _Failure(USAGE, f"cannot draw {request.target}: {exc}") from None


def _state_columns(request: _Request, target: object) -> list[str]:
    cls = target if isinstance(target, type) else type(target)
    try:
        return list(dict.fromkeys(t.column for t in transitions(cls)))
    except Exception as exc:
        raise _Failure(USAGE, f"cannot draw {request.target}: {exc}") from None


# -- marked blocks ------------------------------------------------------------------------


def _blocks(request: _Request, target: object) -> list[_Block]:
    """The blocks a file must hold: one, or one per state column when the class has
    several and no ``--column`` picks one."""
    columns: list[str | None] = [request.column]
    if request.column is None:
        found = _state_columns(request, target)
        if len(found) > 1:
            columns = list(found)
    return [_Block(_marker(request, column),
                   f"```{request.format}\n{_draw(request, target, column)}```\n")
            for column in columns]


def _marker(request: _Request, column: str | None) -> str:
    words = ["litestate", "diagram", request.target]
    if request.format != "mermaid":
        words.append(f"format={request.format}")
    if column is not None:
        words.append(f"column={column}")
    return f"<!-- {' '.join(words)} -->"


def _regenerate(request: _Request, path: Path) -> str:
    """The command that rewrites the file's blocks."""
    words = ["python", "-m", "litestate", "diagram", request.target]
    if request.format != "mermaid":
        words += ["--format", request.format]
    if request.column is not None:
        words += ["--column", request.column]
    return shlex.join([*words, "--write", str(path)])


def _check(request: _Request, path: Path, blocks: list[_Block]) -> int:
    lines = _read(path).splitlines(keepends=True)
    command = _regenerate(request, path)
    problems: list[str] = []
    for block in blocks:
        places = _places(lines, block.marker)
        if not places:
            problems.append(f"{path}: no diagram block {block.marker}; add that line where the "
                            f"diagram goes, then run: {command}")
        for start, end in places:
            if end is None:
                problems.append(f"{path}:{start + 1}: {block.marker} is not followed by a "
                                f"fenced diagram; write it with: {command}")
            elif _text(lines[start + 1:end]) != block.fenced:
                problems.append(f"{path}:{start + 1}: the diagram under {block.marker} is "
                                f"stale; regenerate it with: {command}")
    for problem in problems:
        print(f"litestate: {problem}", file=sys.stderr)
    return STALE if problems else 0


def _write(request: _Request, path: Path, blocks: list[_Block]) -> int:
    lines = _read(path).splitlines(keepends=True)
    edits: list[tuple[int, int, _Block]] = []  # lines[start:end] become the block
    missing: list[_Block] = []
    for block in blocks:
        places = _places(lines, block.marker)
        if not places:
            missing.append(block)
        for start, end in places:
            region = lines[start + 1:end] if end is not None else []
            if _text(region) != block.fenced:
                edits.append((start + 1, start + 1 if end is None else end, block))
    for start, end, block in sorted(edits, key=lambda edit: edit[0], reverse=True):
        if start > 0 and not lines[start - 1].endswith("\n"):
            lines[start - 1] += "\n"
        lines[start:end] = block.fenced.splitlines(keepends=True)
    if edits:
        _save(path, "".join(lines))
    for start, _, block in sorted(edits, key=lambda edit: edit[0]):
        print(f"updated {path}:{start}: {block.marker}")
    for block in missing:
        print(f"litestate: {path}: no line {block.marker}; add it where the diagram goes, "
              "then run this again", file=sys.stderr)
    return STALE if missing else 0


def _places(lines: list[str], marker: str) -> list[tuple[int, int | None]]:
    """Each line holding ``marker``, and the end of the fenced block right under it
    (``None``: no block follows)."""
    found: list[tuple[int, int | None]] = []
    for i, line in enumerate(lines):
        if line.strip() == marker:
            found.append((i, _fence_end(lines, i + 1)))
    return found


def _fence_end(lines: list[str], start: int) -> int | None:
    """The line after the fenced block opening at ``lines[start]``, if one does."""
    if start >= len(lines) or not lines[start].startswith("```"):
        return None
    for i in range(start + 1, len(lines)):
        if lines[i].rstrip() == "```":
            return i + 1
    return None


def _text(lines: list[str]) -> str:
    text = "".join(lines)
    return text if not text or text.endswith("\n") else text + "\n"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _Failure(USAGE, f"cannot read {path}: {exc}") from None


def _save(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise _Failure(USAGE, f"cannot write {path}: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
