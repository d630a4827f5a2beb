"""State diagrams of a class's transitions, as Mermaid or Graphviz dot text.

:func:`diagram` draws what :func:`litestate.transitions` describes, one diagram per state
column::

    from litestate.diagram import diagram

    print(diagram(Todo))                 # Mermaid stateDiagram-v2
    print(diagram(Todo, format="dot"))   # Graphviz
    print(diagram(todo))                 # an instance: its current state highlighted

What is drawn, for each state column:

- every state: those the transitions name, the column's scalar default, and every value
  of an SQLAlchemy ``Enum`` column, even one no transition reaches;
- the initial state, where the column has a scalar default (``mapped_column(default=...)``;
  for a plain class or a dataclass, a class attribute or field default): ``[*] --> state``
  in Mermaid, an arrow from a point in dot;
- one arrow per transition and state it starts from, labelled with the event and its
  guards' labels (``pay [is_funded]``); a transition from ``"*"`` is one arrow from a
  single "any state" node;
- for an instance, its current state, highlighted; none when its row is gone (deleted in
  its session, or by someone else since it was loaded).

A state is shown as the column holds it; an ``enum.Enum`` member by its value if that is a
string, else by its name. States are listed in the order the declarations first name them
(within one ``frm``, a set, those already named come first, then the initial state,
then the ``Enum`` column's order, then the names' order), then the column's default, then
the ``Enum`` column's other values: equal declarations give equal text.

Several state columns give several diagrams, in declaration order, separated by a blank
line; ``column=`` picks one (Mermaid draws one diagram per code block).

A class's diagram reads only the public description and sends no SQL. An instance's
current state is read as the probes (``available_transitions``) read it: an attribute that
is loaded, or the default of an object not yet saved, costs nothing, while an expired one is
loaded (one SELECT, as reading the attribute would send); a detached object whose state is
not loaded is a ``DetachedInstanceError`` saying so. Draw the class for a diagram that
never touches the database.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, NamedTuple, cast

import sqlalchemy as sa
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.exc import DetachedInstanceError

from litestate import core
from litestate.core import Transition, transitions

__all__ = ["Format", "diagram"]

#: The text formats :func:`diagram` writes.
Format = Literal["mermaid", "dot"]


class _Edge(NamedTuple):
    """One arrow: from the state at ``source`` (``None``: any state) to ``target``."""

    source: int | None
    target: int
    label: str
    error: bool = False  # into an ``on_error`` state: drawn dashed where the format can


class _Chart(NamedTuple):
    """One state column's diagram, before it is written in a format."""

    name: str  # "Todo.status"
    labels: tuple[str, ...]  # the states' display names; a state's number is its index
    initial: int | None
    current: int | None
    edges: tuple[_Edge, ...]


def diagram(cls_or_obj: object, *, format: Format = "mermaid", column: str | None = None
            ) -> str:
    """The state diagram of a class (or of an instance, its current state highlighted).

    ``format`` is ``"mermaid"`` (a ``stateDiagram-v2``) or ``"dot"`` (Graphviz).
    ``column`` picks one state column; by default each gets a diagram, in declaration
    order, separated by a blank line. A class without transitions is a ``TypeError``; an
    unknown format or column a ``ValueError``.

    A class's diagram sends no SQL; an instance's may load its expired state (see the
    module docstring).
    """
    write = _writer(format)
    obj = None if isinstance(cls_or_obj, type) else cls_or_obj
    cls = cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj)
    by_column = _transitions_by_column(cls)
    if column is not None and column not in by_column:
        raise ValueError(f"{cls.__name__} has no transitions on {column!r}; its state columns "
                         f"are {list(by_column)}")
    chosen = [column] if column is not None else list(by_column)
    return "\n".join(write(_chart(cls, obj, c, by_column[c])) for c in chosen)


def _writer(name: object) -> Callable[[_Chart], str]:
    writer = _WRITERS.get(name) if isinstance(name, str) else None
    if writer is None:
        raise ValueError(f"diagram(format={name!r}): the formats are "
                         f"{', '.join(map(repr, _WRITERS))}")
    return writer


def _transitions_by_column(cls: type) -> dict[str, list[Transition]]:
    """The class's transitions, grouped by state column, both in declaration order."""
    by_column: dict[str, list[Transition]] = {}
    for t in transitions(cls):
        by_column.setdefault(t.column, []).append(t)
    if not by_column:  # a @state_column alone declares a machine without transitions
        raise TypeError(f"{cls.__name__} declares no transitions")
    return by_column


# -- what one column's diagram shows ------------------------------------------------------


def _chart(cls: type, obj: object, column: str, declared: Sequence[Transition]) -> _Chart:
    col = _state_column(cls, column)
    type_ = None if col is None else col.type
    initial = _initial_state(cls, column, col)
    current = None if obj is None else _current_state(obj, column, type_)
    states = _ordered_states(declared, initial, _enum_values(type_), current)
    number = {state: i for i, state in enumerate(states)}
    edges = [_Edge(None if source is None else number[source], number[t.to], _edge_label(t))
             for t in declared for source in _sources(t, number)]
    edges += [_Edge(None if source is None else number[source], number[t.on_error],
                    f"{t.event} (error)", True)
              for t in declared if t.on_error is not None for source in _sources(t, number)]
    return _Chart(f"{cls.__name__}.{column}", tuple(_label(s) for s in states),
                  None if initial is None else number[initial],
                  None if current is None else number[current], tuple(edges))


def _ordered_states(declared: Sequence[Transition], initial: Any, enum_values: Sequence[Any],
                    current: Any) -> list[Any]:
    """In the order the declarations name them, then the default, the Enum's other values,
    and a current state that is none of those."""
    rank = {value: i for i, value in enumerate(enum_values)}
    if initial is not None:
        rank[initial] = -1
    seen: dict[Any, int] = {}  # each state, and when it was first seen
    for t in declared:
        for state in sorted(t.frm or (), key=lambda s: _placing(s, seen, rank)):
            seen.setdefault(state, len(seen))
        seen.setdefault(t.to, len(seen))
        if t.on_error is not None:
            seen.setdefault(t.on_error, len(seen))
    for state in (initial, *enum_values, current):
        if state is not None:
            seen.setdefault(state, len(seen))
    return list(seen)


def _placing(state: Any, seen: dict[Any, int], rank: dict[Any, int]) -> tuple[int, int, str, str]:
    """Where a state of one ``frm`` goes among the others (a frozenset has no order): where
    it was first seen, else the initial state, else where the Enum column lists it, else
    by its name."""
    if state in seen:
        return 0, seen[state], "", ""
    if state in rank:
        return 1, rank[state], "", ""
    return 2, 0, _label(state), type(state).__name__


def _sources(t: Transition, number: dict[Any, int]) -> list[Any]:
    """The states an arrow starts from, in drawing order; ``[None]`` for ``"*"``."""
    if t.frm is None:
        return [None]
    return sorted(t.frm, key=number.__getitem__)


def _edge_label(t: Transition) -> str:
    return f"{t.event} [{', '.join(t.guards)}]" if t.guards else t.event


def _label(state: Any) -> str:
    """A state as shown: an Enum member by its value if a str (as litestate names it in a
    timestamp column), else by its name."""
    if isinstance(state, enum.Enum):
        return state.value if isinstance(state.value, str) else state.name
    return str(state)


# -- reading the column -------------------------------------------------------------------


def _state_column(cls: type, column: str) -> Any:
    """A mapped class's state column (its type, its default); ``None`` for a plain class."""
    mapper: object = sa.inspect(cls, raiseerr=False)
    if not isinstance(mapper, Mapper):
        return None
    prop = cast(Any, mapper).column_attrs.get(column)
    return None if prop is None else prop.columns[0]


def _enum_values(type_: Any) -> list[Any]:
    """Every value an Enum column can hold, as its attribute holds them."""
    if not isinstance(type_, sa.Enum):
        return []
    if type_.enum_class is not None:
        return list(cast(Iterable[enum.Enum], type_.enum_class))
    return list(type_.enums)


def _initial_state(cls: type, column: str, col: Any) -> Any:
    """The state a new object starts in, in the column's form; ``None`` if the class does
    not say."""
    value = _default_state(cls, column)
    return value if value is None or col is None else _as_held(value, col.type)


def _default_state(cls: type, column: str) -> Any:
    """The state a new object starts in, as the class spells it: a mapped column's scalar
    default, else a dataclass field's default or a class attribute that is a state; else
    ``None``. (``litestate.testing.force_state`` accepts it too.)"""
    col = _state_column(cls, column)
    if col is not None:
        default = col.default
        return default.arg if default is not None and getattr(default, "is_scalar", False) \
            else None
    value = _dataclass_default(cls, column)
    if value is None:
        value = inspect.getattr_static(cls, column, None)
    return value if _is_state(value) else None


def _dataclass_default(cls: type, column: str) -> Any:
    if not dataclasses.is_dataclass(cls):
        return None
    field = next((f for f in dataclasses.fields(cls) if f.name == column), None)
    return None if field is None or field.default is dataclasses.MISSING else field.default


def _current_state(obj: object, column: str, type_: Any) -> Any:
    """The state the object is in, read as the probes read it (an unset state of an object
    not yet saved is the column's default); ``None`` if its row is gone."""
    machine = core._machine_of_instance(obj)  # pyright: ignore[reportPrivateUsage]
    plan = next(p for p in machine.plans.values() if p.column == column)
    if machine.mapped and core._deleted_in_session(obj):  # pyright: ignore[reportPrivateUsage]
        return None
    try:
        current = core._read_for_probe(plan, obj)  # pyright: ignore[reportPrivateUsage]
    except DetachedInstanceError:
        name = type(obj).__name__
        key: Any = sa.inspect(obj).identity  # the primary key it was loaded with
        key = key[0] if key is not None and len(key) == 1 else key
        raise DetachedInstanceError(
            f"cannot draw the current state of {name} {key!r}: it is detached from its "
            f"session and its {column} is not loaded; merge() it into a session first, or "
            f"draw the class {name}") from None
    return None if current is None else _as_held(current, type_)


def _as_held(value: Any, type_: Any) -> Any:
    """A value in the form the column's attribute holds (a member for a Python-enum column,
    whose attribute may also be set to the string it stores, the member's name or value);
    ``value`` itself if none fits."""
    if isinstance(type_, sa.Enum) and type_.enum_class is not None:
        return _member_of(type_, type_.enum_class, value)
    if type_ is not None and isinstance(value, enum.Enum):
        return value.value  # a member written to a String column is stored as its value
    return value


def _member_of(type_: sa.Enum, enum_class: type[enum.Enum], state: Any) -> Any:
    """A member of a Python-enum column's class, from a member, the string the column
    stores, a name or a value (litestate's order); ``state`` itself if none fits."""
    if isinstance(state, enum_class):
        return state
    stored = core._persisted_members(type_)  # pyright: ignore[reportPrivateUsage]
    if isinstance(state, str) and state in stored:
        return stored[state]
    return next((m for m in enum_class if state in (m.name, m.value)), state)


def _is_state(value: object) -> bool:
    return isinstance(value, str | int | enum.Enum) and not isinstance(value, bool)


# -- the formats --------------------------------------------------------------------------


def _mermaid(chart: _Chart) -> str:
    """A Mermaid ``stateDiagram-v2``: generated ids (``s0``...) carry the labels, so any
    name renders."""
    lines = ["stateDiagram-v2"]
    lines += [f'    state "{_mermaid_text(label)}" as s{i}'
              for i, label in enumerate(chart.labels)]
    if any(edge.source is None for edge in chart.edges):
        lines.append('    state "any state" as any')
    if chart.initial is not None:
        lines.append(f"    [*] --> s{chart.initial}")
    for edge in chart.edges:
        source = "any" if edge.source is None else f"s{edge.source}"
        lines.append(f"    {source} --> s{edge.target}: {_mermaid_text(edge.label)}")
    if chart.current is not None:
        lines.append("    classDef current fill:#ffd966,stroke:#7f6000,stroke-width:2px")
        lines.append(f"    class s{chart.current} current")
    return "\n".join(lines) + "\n"


def _mermaid_text(text: str) -> str:
    """Mermaid has no backslash escapes: a character that would end or break a label is
    written as its entity code (``#34;`` for ``"``), which Mermaid decodes."""
    return "".join(f"#{ord(c)};" if c in _MERMAID_SPECIAL or not c.isprintable() else c
                   for c in text)


_MERMAID_SPECIAL = frozenset('"#;<>&\\')


def _dot(chart: _Chart) -> str:
    """A Graphviz ``digraph``: every name quoted and escaped."""
    lines = [f"digraph {_dot_text(chart.name)} {{", "    rankdir=LR;",
             "    node [shape=box, style=rounded];"]
    for i, label in enumerate(chart.labels):
        look = ', style="rounded,filled", fillcolor="#ffd966"' if i == chart.current else ""
        lines.append(f"    s{i} [label={_dot_text(label)}{look}];")
    if any(edge.source is None for edge in chart.edges):
        lines.append('    any [label="any state", style="rounded,dashed"];')
    if chart.initial is not None:
        lines.append("    initial [shape=point];")
        lines.append(f"    initial -> s{chart.initial};")
    for edge in chart.edges:
        source = "any" if edge.source is None else f"s{edge.source}"
        look = ", style=dashed" if edge.error else ""
        lines.append(f"    {source} -> s{edge.target} [label={_dot_text(edge.label)}{look}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_text(text: str) -> str:
    """A dot quoted string; a backslash is doubled, as a label would read ``\\n`` and
    friends as escapes."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\r", "\\r").replace("\n", "\\n") + '"'


_WRITERS: dict[str, Callable[[_Chart], str]] = {"mermaid": _mermaid, "dot": _dot}
