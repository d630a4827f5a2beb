"""litestate in a FastAPI app on an ``AsyncSession``: records listed with the actions
``aio.actions()`` allows, one POST route per model that fires any transition by name,
refusals answered with their HTTP status.

Run from the repository root, after ``pip install -e '.[fastapi]'``::

    uvicorn examples.fastapi_app:app

then open http://127.0.0.1:8000/docs. The records live in ``litestate-fastapi.db`` in
the current directory, filled with demo orders and todos while empty: delete the file to
start again. ``LITESTATE_DATABASE_URL`` picks another database (an async URL:
``sqlite+aiosqlite://`` is in memory, ``postgresql+psycopg://...`` is PostgreSQL).

The routes:

- ``GET /orders``, ``GET /todos`` (and ``GET /orders/{id}``, ``GET /todos/{id}``): each
  record with its ``actions``, from ``await aio.actions(record)``: every transition,
  ``allowed`` or not with the ``reason`` and ``detail``, and its ``parameters`` (name,
  annotation, default, required);
- ``POST /orders/{id}/{event}``, ``POST /todos/{id}/{event}``, the body a JSON object of
  the transition's keyword arguments: ``await aio.fire(record, event, **body)``, commit,
  and the record as it is now with the transition's return value.

Status codes: 404 for a record or an event that is not there (any name but a declared
transition: another method, a dunder); 400 for a request that does not fit (a body that
is not an object, a missing or unexpected argument, a value of the wrong type); 409 when
the state refuses it or the row changed since it was read (a lost race); 422 when a
guard refuses it; 402 when the gateway declines the card (``charge``'s body raised, its
SAVEPOINT rolled back). FastAPI answers its own validation errors with 422; this app answers
them with 400, so that 422 always means "a guard said no". The refusals take one
exception handler: ``error.as_dict()`` with ``error.http_status``.

SQLite needs :func:`litestate.sqlite.enable_savepoints` for the SAVEPOINTs the
transitions open inside the request's transaction; :func:`create_app` applies it.
"""

from __future__ import annotations

import functools
import inspect
import os
import typing
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

import pydantic
from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from examples.fastapi_app.models import Base, CardDeclined, FakeGateway, Order, Todo
from litestate import Action, TransitionError, aio, transitions
from litestate.sqlite import enable_savepoints

__all__ = ["DEMO_ORDERS", "DEMO_TODOS", "Base", "CardDeclined", "FakeGateway", "Order", "Todo",
           "app", "create_app", "fire_by_name", "make_engine"]

_R = TypeVar("_R", bound=pydantic.BaseModel)

DEFAULT_URL = "sqlite+aiosqlite:///litestate-fastapi.db"
#: What an empty database is filled with: (customer, total in cents, status, payment_status).
DEMO_ORDERS = (
    ("Ada Lovelace", 4200, "draft", "unpaid"),
    ("Grace Hopper", 1999, "processing", "paid"),
    ("Alan Turing", 12500, "processing", "unpaid"),
    ("Edsger Dijkstra", 800, "completed", "paid"),
)
#: (title, status, the index in DEMO_TODOS of the todo it follows)
DEMO_TODOS = (
    ("Write the spec", "doing", None),
    ("Build it", "blocked", 0),
    ("Ship it", "pending", None),
)


def make_engine(url: str) -> AsyncEngine:
    """The app's engine; on SQLite, with SAVEPOINTs that nest in the request's
    transaction."""
    engine = create_async_engine(url)
    return enable_savepoints(engine) if engine.dialect.name == "sqlite" else engine


def create_app(database_url: str | None = None, *, demo: bool = True) -> FastAPI:
    """The app on ``database_url`` (else ``$LITESTATE_DATABASE_URL``, else
    ``litestate-fastapi.db``). At startup it creates the tables and, with ``demo``, fills
    empty ones with the demo records; at shutdown it closes the engine."""
    engine = make_engine(database_url or os.environ.get("LITESTATE_DATABASE_URL")
                         or DEFAULT_URL)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        if demo:
            await _fill(app.state.sessions)
        yield
        await engine.dispose()

    app = FastAPI(title="litestate orders and todos", lifespan=lifespan)
    # expire_on_commit=False: after the commit, the response reads the record as written
    # without a new SELECT (an AsyncSession cannot load expired attributes implicitly).
    app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
    app.include_router(router)
    app.add_exception_handler(TransitionError, _refused)
    app.add_exception_handler(RequestValidationError, _bad_request)
    app.add_exception_handler(CardDeclined, _declined)
    return app


async def _fill(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        if not await session.scalar(select(func.count(Order.id))):
            session.add_all(
                Order(customer=customer, total_cents=total, status=status,
                      payment_status=payment, charge_id="ch_demo" if payment == "paid" else None)
                for customer, total, status, payment in DEMO_ORDERS)
        if not await session.scalar(select(func.count(Todo.id))):
            todos = [Todo(title=title, status=status) for title, status, _ in DEMO_TODOS]
            session.add_all(todos)
            await session.flush()
            for todo, (_, _, follows) in zip(todos, DEMO_TODOS, strict=True):
                todo.follows_id = None if follows is None else todos[follows].id
        await session.commit()


# -- the refusals: one handler, and 400 for requests that do not fit ---------------------


async def _refused(request: Request, error: Exception) -> JSONResponse:
    """A :class:`TransitionError`: 409 (the state, a lost race) or 422 (a guard)."""
    assert isinstance(error, TransitionError)
    return JSONResponse(error.as_dict(), status_code=error.http_status)


async def _bad_request(request: Request, error: Exception) -> JSONResponse:
    """FastAPI's own validation errors (a path id that is not an int, a body that is not
    a JSON object): 400, as the arguments that do not fit, so 422 stays a guard's."""
    assert isinstance(error, RequestValidationError)
    return JSONResponse({"error": "the request does not fit this route",
                         "detail": jsonable_encoder(error.errors())}, status_code=400)


async def _declined(request: Request, error: Exception) -> JSONResponse:
    """The async body of ``charge`` raised: its SAVEPOINT was rolled back, nothing kept."""
    return JSONResponse({"error": str(error)}, status_code=402)


# -- what the routes answer -----------------------------------------------------------------


class ParameterOut(pydantic.BaseModel):
    """One argument of a transition: a form field."""

    name: str
    annotation: str | None
    default: Any
    required: bool


class ActionOut(pydantic.BaseModel):
    """One transition of one record, allowed now or not, and why (``Action``)."""

    event: str
    to_state: Any
    allowed: bool
    reason: str | None
    detail: str
    parameters: list[ParameterOut]
    meta: dict[str, Any]


class OrderOut(pydantic.BaseModel):
    id: int
    customer: str
    total_cents: int
    status: str
    payment_status: str
    charge_id: str | None
    refund_reason: str | None
    paid_at: datetime | None
    actions: list[ActionOut]


class TodoOut(pydantic.BaseModel):
    id: int
    title: str
    status: str
    follows_id: int | None
    progress: int
    started_by: str | None
    completed_by: str | None
    dismissed_by: str | None
    actions: list[ActionOut]


class Fired(pydantic.BaseModel, Generic[_R]):
    """The answer to a transition that ran and was committed."""

    event: str
    #: What the transition returned (``charge``: the charge id; ``complete``: the number
    #: of todos it unblocked).
    result: Any
    record: _R


def _parameter(parameter: inspect.Parameter) -> ParameterOut:
    annotation = parameter.annotation
    if annotation is inspect.Parameter.empty:
        shown = None
    else:  # a string under `from __future__ import annotations`, else the type itself
        shown = annotation if isinstance(annotation, str) else inspect.formatannotation(
            annotation)
    empty = parameter.default is inspect.Parameter.empty
    variadic = parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    return ParameterOut(name=parameter.name, annotation=shown,
                        default=None if empty else parameter.default,
                        required=empty and not variadic)


def _action(action: Action) -> ActionOut:
    return ActionOut(event=action.event, to_state=action.to_state, allowed=action.allowed,
                     reason=action.reason, detail=action.detail,
                     parameters=[_parameter(p) for p in action.parameters],
                     meta=dict(action.meta))


async def _out(shape: type[_R], record: Base) -> _R:
    """``record`` as ``shape``, with its actions (``aio.actions`` awaits async guards)."""
    fields = {name: getattr(record, name) for name in shape.model_fields if name != "actions"}
    actions = [_action(a) for a in await aio.actions(record)]
    return shape.model_validate({**fields, "actions": actions})


# -- firing by name -----------------------------------------------------------------------


@functools.cache
def _arguments_of(model: type[Base], event: str) -> type[pydantic.BaseModel] | None:
    """A pydantic model of the keyword arguments of ``model``'s transition ``event``
    (unknown names refused), or ``None`` when ``event`` is no transition of ``model``."""
    declared = next((t for t in transitions(model) if t.event == event), None)
    if declared is None:
        return None
    hints = typing.get_type_hints(getattr(model, event))
    fields: dict[str, Any] = {
        name: (hints.get(name, Any), ... if p.default is p.empty else p.default)
        for name, p in declared.signature.parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return pydantic.create_model(f"{model.__name__}_{event}",
                                 __config__=pydantic.ConfigDict(extra="forbid"), **fields)


async def fire_by_name(session: AsyncSession, model: type[Base], record_id: int, event: str,
                       body: Mapping[str, Any] | None) -> tuple[Base, Any]:
    """Check the event and the body, load the record, fire, commit: the POST routes."""
    arguments = _arguments_of(model, event)
    if arguments is None:  # another method, a dunder, a typo: nothing to call
        raise HTTPException(404, f"{model.__name__} has no transition {event!r}")
    try:  # before the call: a ValueError or TypeError of the body itself stays a 500
        checked = arguments.model_validate(body or {})
    except pydantic.ValidationError as error:  # answered as FastAPI's own: 400, here
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in error.errors(include_url=False)]
        ) from None
    record = await session.get(model, record_id)
    if record is None:
        raise HTTPException(404, f"{model.__name__} {record_id} not found")
    kwargs = {name: getattr(checked, name) for name in checked.model_fields_set}
    result = await aio.fire(record, event, **kwargs)
    await session.commit()
    return record, result


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request; closing it rolls back what was not committed."""
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    async with sessions() as session:
        yield session


Session = Annotated[AsyncSession, Depends(_session)]
Arguments = Annotated[dict[str, Any] | None, Body(
    description="The transition's keyword arguments, e.g. {\"card\": \"4242\"}")]

router = APIRouter()


@router.get("/orders")
async def list_orders(session: Session) -> list[OrderOut]:
    """Every order, with every transition: allowed, or refused with the reason."""
    orders = await session.scalars(select(Order).order_by(Order.id))
    return [await _out(OrderOut, order) for order in orders]


@router.get("/orders/{order_id}")
async def get_order(order_id: int, session: Session) -> OrderOut:
    order = await session.get(Order, order_id)
    if order is None:
        raise HTTPException(404, f"Order {order_id} not found")
    return await _out(OrderOut, order)


@router.post("/orders/{order_id}/{event}")
async def fire_order_event(order_id: int, event: str, session: Session,
                           body: Arguments = None) -> Fired[OrderOut]:
    """Fire the transition ``event`` of the order, with the body's arguments."""
    order, result = await fire_by_name(session, Order, order_id, event, body)
    return Fired(event=event, result=result, record=await _out(OrderOut, order))


@router.get("/todos")
async def list_todos(session: Session) -> list[TodoOut]:
    todos = await session.scalars(select(Todo).order_by(Todo.id))
    return [await _out(TodoOut, todo) for todo in todos]


@router.get("/todos/{todo_id}")
async def get_todo(todo_id: int, session: Session) -> TodoOut:
    todo = await session.get(Todo, todo_id)
    if todo is None:
        raise HTTPException(404, f"Todo {todo_id} not found")
    return await _out(TodoOut, todo)


@router.post("/todos/{todo_id}/{event}")
async def fire_todo_event(todo_id: int, event: str, session: Session,
                          body: Arguments = None) -> Fired[TodoOut]:
    """Fire the transition ``event`` of the todo, e.g. ``start`` with ``{"user": "ada"}``."""
    todo, result = await fire_by_name(session, Todo, todo_id, event, body)
    return Fired(event=event, result=result, record=await _out(TodoOut, todo))


app = create_app()
