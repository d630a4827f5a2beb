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
marker with no block under it gets one). Nothing else in the file changes: its line
endings (LF or CRLF) are kept, and the block is written with the marker line's. A marker
may be indented (in a Markdown list item, say): a new block is written at its indentation,
and a block already under it is rewritten at the indentation its fence has. A bad target,
an import that fails (or exits), a class without transitions or a file that cannot be read
exit 2, with a message, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import re
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
    # Whatever importing the user's module raises, a sys.exit() included; not ^C.
    except (Exception, SystemExit) as exc:
        error = f"it called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else \
            f"{type(exc).__name__}: {exc}"
        raise _Failure(USAGE, f"cannot import {module_name}: {error}") from None
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
    lines = _lines(_read(path))
    command = _regenerate(request, path)
    problems: list[str] = []
    for block in blocks:
        places = _places(lines, block.marker)
        if not places:
            problems.append(f"{path}: no diagram block {block.marker}; add that line where the "
                            f"diagram goes, then run: {command}")
        for place in places:
            if place.end is None:
                problems.append(f"{path}:{place.marker + 1}: {block.marker} is not followed by "
                                f"a fenced diagram; write it with: {command}")
            elif not place.holds(lines, block):
                problems.append(f"{path}:{place.marker + 1}: the diagram under {block.marker} "
                                f"is stale; regenerate it with: {command}")
    for problem in problems:
        print(f"litestate: {problem}", file=sys.stderr)
    return STALE if problems else 0


def _write(request: _Request, path: Path, blocks: list[_Block]) -> int:
    lines = _lines(_read(path))
    edits: list[tuple[_Place, _Block]] = []  # the lines under place.marker become the block
    missing: list[_Block] = []
    for block in blocks:
        places = _places(lines, block.marker)
        if not places:
            missing.append(block)
        edits += [(place, block) for place in places if not place.holds(lines, block)]
    for place, block in sorted(edits, key=lambda edit: edit[0].marker, reverse=True):
        newline = _newline(lines, place.marker)
        if not _ending(lines[place.marker]):  # the marker ends the file
            lines[place.marker] += newline
        start = place.marker + 1
        lines[start:start if place.end is None else place.end] = [
            line + newline for line in place.indented(block)]
    if edits:
        _save(path, "".join(lines))
    for place, block in sorted(edits, key=lambda edit: edit[0].marker):
        print(f"updated {path}:{place.marker + 1}: {block.marker}")
    for block in missing:
        print(f"litestate: {path}: no line {block.marker}; add it where the diagram goes, "
              "then run this again", file=sys.stderr)
    return STALE if missing else 0


class _Place(NamedTuple):
    """Where a file holds a marker: its line, the end of the fenced block right under it
    (``None``: no block follows), and the block's indentation (that of its fence, else the
    marker's)."""

    marker: int
    end: int | None
    indent: str

    def indented(self, block: _Block) -> list[str]:
        """The block's lines (without line endings) as written under this marker."""
        lines = block.fenced.removesuffix("\n").split("\n")  # not at a U+2028 in a label
        return [self.indent + line if line else line for line in lines]

    def holds(self, lines: list[str], block: _Block) -> bool:
        """Whether the fenced block under the marker is ``block``, line endings aside."""
        if self.end is None:
            return False
        found = [line[:len(line) - len(_ending(line))]
                 for line in lines[self.marker + 1:self.end]]
        return found == self.indented(block)


def _places(lines: list[str], marker: str) -> list[_Place]:
    """Each line holding ``marker`` (alone, perhaps indented), and the block under it."""
    found: list[_Place] = []
    for i, line in enumerate(lines):
        if line.strip() == marker:
            fence = lines[i + 1] if i + 1 < len(lines) else ""
            end = _fence_end(lines, i + 1, _indent(fence))
            found.append(_Place(i, end, _indent(line if end is None else fence)))
    return found


def _indent(line: str) -> str:
    return line[:len(line) - len(line.lstrip())]


def _fence_end(lines: list[str], start: int, indent: str) -> int | None:
    """The line after the fenced block opening at ``lines[start]`` with ``indent``, if one
    does (its closing fence has the same indentation)."""
    if start >= len(lines) or not lines[start].startswith(indent + "```"):
        return None
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if line.startswith(indent) and line[len(indent):].rstrip() == "```":
            return i + 1
    return None


#: A line and its ending; only these three end a line here (str.splitlines() would also
#: split at a form feed or U+2028, which a file may hold inside a line).
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


def _lines(text: str) -> list[str]:
    """The file's lines, each with its own line ending (the last perhaps without)."""
    return _LINE.findall(text)


def _ending(line: str) -> str:
    return line[len(line.rstrip("\r\n")):]


def _newline(lines: list[str], i: int) -> str:
    """The line ending to write under ``lines[i]``: its own, else the file's first, else
    LF."""
    return _ending(lines[i]) or next((e for e in map(_ending, lines) if e), "\n")


def _read(path: Path) -> str:
    try:
        with path.open(encoding="utf-8", newline="") as file:  # "\r\n" stays as it is
            return file.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise _Failure(USAGE, f"cannot read {path}: {exc}") from None


def _save(path: Path, text: str) -> None:
    try:
        with path.open("w", encoding="utf-8", newline="") as file:  # no "\n" translated
            file.write(text)
    except OSError as exc:
        raise _Failure(USAGE, f"cannot write {path}: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
