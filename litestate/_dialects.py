"""What litestate's SQL does differently per database, decided where SQLAlchemy compiles it.

The conditional UPDATE is built once per transition, when its class is compiled, but the
database is known only when it runs: a construct of SQLAlchemy's compiler extension renders
per dialect, and SQLAlchemy caches each dialect's compiled form, so nothing is decided per
call.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

__all__ = ["SNAPSHOT_READS", "same_state"]

#: Dialects whose plain SELECT, under REPEATABLE READ (InnoDB's default), shows the
#: transaction's snapshot rather than the row the conditional UPDATE just saw: after a
#: lost race the row is read with SELECT ... FOR UPDATE, a locking read, which sees the
#: latest committed row. Under REPEATABLE READ the failed UPDATE already holds that row's
#: lock (InnoDB keeps the locks of the rows an UPDATE scanned), so this adds none.
SNAPSHOT_READS = frozenset({"mysql", "mariadb"})


class _ExactlyEqual(FunctionElement[bool]):
    """``column = :state``, true only for the same characters: MySQL and MariaDB compare
    strings under the column's collation, and their usual ones (``utf8mb4_general_ci``,
    ``utf8mb4_unicode_ci``, ``utf8mb4_0900_ai_ci``) ignore case, accents and trailing
    spaces, so a row holding ``'ACTIVE'`` would match a transition that read
    ``'active'``."""

    name = "litestate_exactly_equal"
    inherit_cache = True  # its SQL depends on its two clauses alone
    # No Boolean type: MySQL's compiler would append "= 1" to a boolean function.


def same_state(column: Any, state: Any) -> Any:
    """The WHERE clause that the row still holds ``state`` (a bind parameter), compared
    exactly on every database: ``column = :state`` where that is already exact."""
    if isinstance(column.type, sa.String):  # sa.Enum too: a non-native one is a VARCHAR
        return _ExactlyEqual(column, state)
    return column == state


@compiles(_ExactlyEqual)
def _equal(element: _ExactlyEqual, compiler: Any, **kw: Any) -> str:
    """SQLite, PostgreSQL and the rest: ``=`` compares strings exactly (collations that
    say otherwise are the column's declared choice, and rare)."""
    column, state = element.clauses.clauses
    return str(compiler.process(column == state, **kw))


@compiles(_ExactlyEqual, "mysql")
@compiles(_ExactlyEqual, "mariadb")
def _equal_bytes(element: _ExactlyEqual, compiler: Any, **kw: Any) -> str:
    """The UTF-8 bytes of both sides: no collation, no padding, whatever the column's
    character set (each side converted to utf8mb4, which holds every character)."""
    column, state = (compiler.process(clause, **kw) for clause in element.clauses.clauses)
    return (f"CAST(CONVERT({column} USING utf8mb4) AS BINARY) = "
            f"CAST(CONVERT({state} USING utf8mb4) AS BINARY)")
