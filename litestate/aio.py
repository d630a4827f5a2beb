"""asyncio: transitions of objects in an ``AsyncSession``, with async bodies, guards and
receivers.

An ``AsyncSession`` runs its sync ``Session``'s work inside SQLAlchemy's greenlet bridge,
where sync code can await the driver. litestate runs a whole transition there: the
checks, the conditional UPDATE, the SAVEPOINT and the signals are the sync code, with
the same semantics, and an async body, guard or receiver is awaited from inside it::

    await aio.call(order.pay, amount)           # a sync transition, from async code
    await order.charge(amount)                  # an `async def` transition
    await aio.can_transition(order, "ship")     # probes that load expired attributes

Importing this module imports nothing async; the bridge needs the ``greenlet`` package
(``pip install 'litestate[asyncio]'``).
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, overload

from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import InstanceState, object_session

from litestate import _sqla, core

__all__ = ["actions", "available_transitions", "call", "can_transition", "fire", "history"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


@overload
def call(method: Callable[_P, Coroutine[Any, Any, _R]], /, *args: _P.args,
         **kwargs: _P.kwargs) -> Coroutine[Any, Any, _R]: ...
@overload
def call(method: Callable[_P, _R], /, *args: _P.args,
         **kwargs: _P.kwargs) -> Coroutine[Any, Any, _R]: ...
def call(method: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
    """Fire ``obj.method(*args, **kwargs)`` from async code, for an object in an
    ``AsyncSession`` (or in none, in memory): exactly what the sync call does, with its
    SQL awaited. An ``async def`` transition is awaited as it is."""
    spec = getattr(method, "__litestate__", None)
    if not isinstance(spec, core._Spec) or getattr(method, "__self__", None) is None:  # pyright: ignore[reportPrivateUsage]
        raise TypeError(f"aio.call() takes a transition of an object, as in "
                        f"aio.call(order.pay, ...), not {method!r}")
    if inspect.iscoroutinefunction(spec.fn):
        return method(*args, **kwargs)  # type: ignore[no-any-return]
    return _sqla.greenlet_spawn(method, *args, **kwargs)  # type: ignore[no-any-return]


async def fire(obj: object, event: str, /, *args: Any, **kwargs: Any) -> Any:
    """:func:`litestate.fire` from async code: the transition named ``event``, returning
    what it returns."""
    plans = core._machine_of_instance(obj).plans  # pyright: ignore[reportPrivateUsage]
    plan = plans.get(event) if isinstance(event, str) else None  # pyright: ignore[reportUnnecessaryIsInstance]
    spec = None if plan is None else plan.spec
    if spec is not None and inspect.iscoroutinefunction(spec.fn):
        return await core.fire(obj, event, *args, **kwargs)
    return await _sqla.greenlet_spawn(core.fire, obj, event, *args, **kwargs)


async def can_transition(obj: object, event: str, /, *args: Any, **kwargs: Any) -> bool:
    """:func:`litestate.can_transition`, loading expired attributes and awaiting async
    guards."""
    return bool(await _sqla.greenlet_spawn(core.can_transition, obj, event, *args, **kwargs))


async def available_transitions(obj: object) -> list[str]:
    """:func:`litestate.available_transitions`, loading expired attributes and awaiting
    async guards."""
    found: list[str] = await _sqla.greenlet_spawn(core.available_transitions, obj)
    return found


async def actions(obj: object) -> list[core.Action]:
    """:func:`litestate.actions`, loading expired attributes and awaiting async guards."""
    found: list[core.Action] = await _sqla.greenlet_spawn(core.actions, obj)
    return found


async def history(obj: object) -> list[Any]:
    """:func:`litestate.history` for an object in an ``AsyncSession``: its log rows,
    oldest first."""
    from litestate.history import history as rows_of

    found: list[Any] = await _sqla.greenlet_spawn(rows_of, obj)
    return found


# -- what the core asks of this module ------------------------------------------------


def async_method(spec: core._Spec) -> Callable[..., Coroutine[Any, Any, Any]]:  # pyright: ignore[reportPrivateUsage]
    """The method an ``async def`` transition becomes: the whole transition runs in the
    bridge, its body (and async guards) awaited in the atomic section."""
    assert spec.fn is not None

    @functools.wraps(spec.fn)
    async def method(self: object, *args: Any, **kwargs: Any) -> Any:
        plan = core._plan_for(type(self), spec)  # pyright: ignore[reportPrivateUsage]
        _refuse_a_sync_session(plan, self)
        fire = core._fire_timed if core._timing else core._fire  # pyright: ignore[reportPrivateUsage]
        return await _sqla.greenlet_spawn(fire, plan, self, args, kwargs)

    return method


def compile_async(plan: core._Plan) -> None:  # pyright: ignore[reportPrivateUsage]
    """Make an async transition's body and guards await, from inside the bridge."""
    body = plan.fn
    if body is not None:
        plan.fn = _awaiting_body(body)
    plan.guards = tuple((label, _awaiting_guard(plan.event, label, guard), with_args, askable)
                        for label, guard, with_args, askable in plan.guards)


def awaiting_receiver(receiver: Callable[..., Any]) -> Callable[..., Any]:
    """An ``async def`` receiver, awaited in the bridge; outside it, a clear error (before
    its coroutine is made, so no "never awaited" warning)."""
    name = getattr(receiver, "__qualname__", repr(receiver))

    def receive(sender: Any, **payload: Any) -> Any:
        if not _sqla.in_greenlet():
            raise TypeError(_outside_asyncio(name, sender, payload))
        return _awaited_here(receiver(sender, **payload))

    return receive


def await_result(receiver: Callable[..., Any], result: Any) -> Any:
    """The awaitable a plain receiver returned (a lambda or an object with an async
    ``__call__``): awaited in the bridge; outside it, closed and refused."""
    if not _sqla.in_greenlet():
        close = getattr(result, "close", None)
        if close is not None:
            close()  # no "never awaited" warning: it is reported here
        raise TypeError(_outside_asyncio(getattr(receiver, "__qualname__", repr(receiver)),
                                         None, {}))
    return _awaited_here(result)


def _outside_asyncio(name: str, sender: Any, payload: dict[str, Any]) -> str:
    heard = f" heard {payload['event']}() of {getattr(sender, '__name__', sender)}" \
        if "event" in payload else ""
    return (f"the async receiver {name}{heard} outside asyncio: async receivers are awaited "
            "only for transitions run under an AsyncSession or litestate.aio; connect a "
            "plain def for sync sessions")


def _awaited_here(awaitable: Any) -> Any:
    """Await from the bridge; an error raised while another is handled (a failed
    receiver's, during the body's) keeps that one as its ``__context__``, as it would
    in sync code: the event loop side where the coroutine ran knew nothing of it."""
    handling = sys.exc_info()[1]
    try:
        return _sqla.await_only(awaitable)
    except BaseException as exc:
        if handling is not None and exc is not handling and exc.__context__ is None:
            exc.__context__ = handling
        raise


def _awaiting_body(body: Callable[..., Any]) -> Callable[..., Any]:
    def run(obj: object, *args: Any, **kwargs: Any) -> Any:
        _load_expired(obj)
        return _sqla.await_only(body(obj, *args, **kwargs))

    return run


def _awaiting_guard(event: str, label: str, guard: Callable[..., object]
                    ) -> Callable[..., object]:
    """A guard of an async transition: its awaitable result is awaited, in the bridge."""

    def ask(obj: object, *args: Any, **kwargs: Any) -> object:
        if _sqla.in_greenlet():
            _load_expired(obj)
        answer: Any = guard(obj, *args, **kwargs)
        if not inspect.isawaitable(answer):
            return answer
        if not _sqla.in_greenlet():
            close = getattr(answer, "close", None)
            if close is not None:
                close()  # no "never awaited" warning: it is reported here
            raise TypeError(f"guard {label} of {event}() is async: ask with `await "
                            "litestate.aio.can_transition(...)` (or aio.available_transitions)")
        return _sqla.await_only(answer)

    return ask


def _load_expired(obj: object) -> None:
    """Load the object's expired attributes, here in the bridge, before an async guard or
    body reads them. A coroutine runs outside the bridge, where the load a sync guard or
    body would do on first read raises MissingGreenlet; a failed transition's rollback,
    for one, leaves every attribute but the state expired. (A lazy relationship is not
    loaded: as anywhere under asyncio, load it eagerly or with ``awaitable_attrs``.)"""
    state = sa_inspect(obj, raiseerr=False)
    if isinstance(state, InstanceState) and state.expired_attributes and \
            state.session is not None:
        getattr(obj, next(iter(state.expired_attributes)))  # loads every expired column


def _refuse_a_sync_session(plan: core._Plan, obj: object) -> None:  # pyright: ignore[reportPrivateUsage]
    """An async transition of an object in a plain (sync) Session: its body would await
    while the session's SQL blocks the event loop."""
    if not plan.mapped:
        return
    session = object_session(obj)
    if session is None:
        return
    from sqlalchemy.ext.asyncio import async_session

    if async_session(session) is None:
        raise sa_exc.InvalidRequestError(
            f"{plan.event}() of {type(obj).__name__} is an async transition, and the object "
            "is in a sync Session: use an AsyncSession, or declare it with a plain def")
