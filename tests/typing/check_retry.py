"""litestate.retrying and litestate.is_retryable, checked by mypy --strict and pyright strict
(tests/test_tooling.py runs both), never executed.

A function decorated with ``@retrying(...)`` keeps its parameters and return type, sync or
``async def``; ``for`` and ``async for`` give :class:`~litestate.retry.Attempt` s. Each
deliberate misuse carries one ignore per checker, as in check_signatures.py.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, assert_type

from sqlalchemy.orm import Session

from litestate import is_retryable, retrying
from litestate.retry import Attempt, Retrying
from tests.models import Todo


@retrying(attempts=3)
def start(session: Session, todo_id: int, user: str) -> Todo | None:
    todo = session.get(Todo, todo_id)
    if todo is not None:
        todo.start(user)
    return todo


@retrying(backoff=lambda retry: 0.1 * retry)
async def count(items: list[int]) -> int:
    return len(items)


async def check(session: Session, error: BaseException) -> None:
    assert_type(retrying(), Retrying)
    assert_type(is_retryable(error), bool)
    assert_type(start(session, 1, "ada"), Todo | None)
    pending: Coroutine[Any, Any, int] = count([1, 2])  # (pyright infers CoroutineType)
    assert_type(await pending, int)
    for attempt in retrying(attempts=5, retry_on=is_retryable):
        assert_type(attempt, Attempt)
        with attempt:
            assert_type(attempt.number, int)
            assert_type(attempt.previous, BaseException | None)
    async for attempt in retrying():
        assert_type(attempt, Attempt)

    start(session, "1", "ada")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    start(session, 1)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    await count("12")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    retrying(attempts="5")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    retrying(backoff="fast")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    retrying(retry_on=len)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    retrying(5, 0.1)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
