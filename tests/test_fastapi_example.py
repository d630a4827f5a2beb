"""The FastAPI example (examples/fastapi_app): records listed with ``aio.actions()``, one
POST route per model firing by name with ``aio.fire()``, refusals answered with their
HTTP status and JSON body, async transitions and guards on an ``AsyncSession``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from examples.fastapi_app import DEMO_ORDERS, DEMO_TODOS, create_app, models
from examples.fastapi_app.models import FakeGateway, Order, Todo
from litestate.testing import assert_transitions, capture_signals, frozen_clock

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2030, 1, 2, 3, 4, 5)
SCHEMA = "litestate_fastapi"  # on PostgreSQL: beside the suite's tables, not among them
_B = TypeVar("_B", Order, Todo)


@dataclass
class Api:
    """The app under a TestClient, and a sync engine reading what it committed."""

    client: TestClient
    db: sa.Engine

    def add(self, record: _B) -> int:
        """Insert ``record`` as it is (no transition runs); returns its id."""
        with Session(self.db) as session:
            session.add(record)
            session.commit()
            return int(record.id)

    def row(self, model: type[_B], ident: int) -> _B:
        """The record as the database holds it now."""
        with Session(self.db, expire_on_commit=False) as session:
            found = session.get(model, ident)
            assert found is not None
            return found


@contextlib.contextmanager
def serving(url: str, *, demo: bool = False) -> Iterator[Api]:
    """The app on ``url``, its lifespan run (the tables made), for the block."""
    app = create_app(url, demo=demo)
    sync_url = sa.make_url(url)
    if sync_url.drivername == "sqlite+aiosqlite":
        sync_url = sync_url.set(drivername="sqlite")
    db = sa.create_engine(sync_url)
    try:
        with TestClient(app) as client:
            yield Api(client, db)
    finally:
        db.dispose()


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> FakeGateway:
    """A fresh fake gateway for the transitions to await."""
    fake = FakeGateway()
    monkeypatch.setattr(models, "gateway", fake)
    return fake


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """The suite's PostgreSQL server, in a schema of the example's own (async psycopg)."""
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.exec_driver_sql(f"CREATE SCHEMA {SCHEMA}")
    yield sa.make_url(postgres_url).update_query_dict(
        {"options": f"-csearch_path={SCHEMA}"}).render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {SCHEMA} CASCADE")
    admin.dispose()


@pytest.fixture
def api(sqlite_url: str, gateway: FakeGateway) -> Iterator[Api]:
    """The app on an empty SQLite file."""
    with serving(sqlite_url) as api:
        yield api


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_api(request: pytest.FixtureRequest, gateway: FakeGateway) -> Iterator[Api]:
    """The app on an empty SQLite file, then on PostgreSQL."""
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    with serving(url) as api:
        yield api


def order(status: str = "draft", payment: str = "unpaid", customer: str = "Ada") -> Order:
    return Order(customer=customer, total_cents=4200, status=status, payment_status=payment,
                 charge_id="ch_0" if payment == "paid" else None)


def action(event: str, to_state: str, label: str, refused: str | None = None,
           parameters: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    """An action as the list answers it; ``refused``: ``"invalid: ..."`` or ``"guard: ..."``."""
    reason, _, detail = refused.partition(": ") if refused else (None, "", "")
    return {"event": event, "to_state": to_state, "allowed": refused is None,
            "reason": reason, "detail": detail, "parameters": list(parameters),
            "meta": {"label": label}}


CARD = {"name": "card", "annotation": "str", "default": None, "required": True}
REASON = {"name": "reason", "annotation": "str", "default": "requested by the customer",
          "required": False}
USER = {"name": "user", "annotation": "str", "default": None, "required": True}


def test_the_models_declare_the_articles_flow() -> None:
    assert_transitions(Order, {"process": ("draft", "processing"),
                               "complete": ("processing", "completed")}, column="status")
    assert_transitions(Order, {"charge": ("unpaid", "paid"), "refund": ("paid", "refunded")},
                       column="payment_status")
    assert_transitions(Todo, {"start": ("pending", "doing"),
                              "complete": (("pending", "doing"), "completed"),
                              "unblock": ("blocked", "pending"),
                              "dismiss": (("pending", "doing"), "dismissed"),
                              "reopen": ("completed", "doing")})


def test_the_list_shows_each_order_with_its_actions_and_their_parameters(
        api: Api, gateway: FakeGateway) -> None:
    gateway.flagged.add("Mallory")
    draft = api.add(order())
    flagged = api.add(order("processing", customer="Mallory"))
    listed = api.client.get("/orders")
    assert listed.status_code == 200
    first, second = listed.json()
    assert (first["id"], first["status"], first["payment_status"]) == (draft, "draft", "unpaid")
    assert first["actions"] == [
        action("process", "processing", "Process"),
        action("charge", "paid", "Charge card", parameters=(CARD,)),
        action("complete", "completed", "Complete",
               "invalid: complete starts from 'processing'"),
        action("refund", "refunded", "Refund", "invalid: refund starts from 'paid'",
               parameters=(REASON,)),
    ]
    assert second["id"] == flagged
    assert [(a["event"], a["allowed"], a["detail"]) for a in second["actions"]] == [
        ("process", False, "process starts from 'draft'"),
        ("charge", False, "guard passes_fraud_check returned false"),  # awaited by aio.actions
        ("complete", False, "guard is_paid returned false"),
        ("refund", False, "refund starts from 'paid'"),
    ]


def test_the_list_of_todos_and_one_record_alone(api: Api) -> None:
    todo = api.add(Todo(title="Write it"))
    [listed] = api.client.get("/todos").json()
    assert [(a["event"], a["allowed"], a["parameters"]) for a in listed["actions"]] == [
        ("start", True, [USER]), ("complete", True, [USER]), ("unblock", False, []),
        ("dismiss", True, [USER]), ("reopen", False, [])]
    assert api.client.get(f"/todos/{todo}").json() == listed
    assert api.client.get("/todos/99").status_code == 404
    assert api.client.get("/orders/99").status_code == 404


def test_posting_an_allowed_action_changes_the_state_in_the_database(any_api: Api) -> None:
    order_id = any_api.add(order())
    with capture_signals(sender=Order) as heard:
        done = any_api.client.post(f"/orders/{order_id}/process")
    assert done.status_code == 200
    body = done.json()
    assert (body["event"], body["result"], body["record"]["status"]) == (
        "process", None, "processing")
    assert [a["event"] for a in body["record"]["actions"] if a["allowed"]] == ["charge"]
    assert any_api.row(Order, order_id).status == "processing"
    assert heard.names() == ["succeeded", "committed"]


def test_charging_awaits_the_gateway_inside_the_async_transition(
        any_api: Api, gateway: FakeGateway) -> None:
    order_id = any_api.add(order())
    with capture_signals(sender=Order) as heard, frozen_clock(NOW):
        done = any_api.client.post(f"/orders/{order_id}/charge", json={"card": "4242"})
    assert done.status_code == 200
    assert done.json()["result"] == "ch_1"  # what the async body returned
    assert gateway.charges == [("ch_1", 4200, "4242")]
    stored = any_api.row(Order, order_id)
    assert (stored.payment_status, stored.charge_id, stored.status) == ("paid", "ch_1", "draft")
    assert stored.paid_at is not None
    assert stored.paid_at.replace(tzinfo=None) == NOW
    assert heard.names() == ["succeeded", "committed"]
    assert heard.of("committed")[0].kwargs == {"card": "4242"}


def test_a_declined_card_rolls_the_charge_back_and_is_a_402(
        any_api: Api, gateway: FakeGateway) -> None:
    """The async body raised after the conditional UPDATE: its SAVEPOINT is undone."""
    order_id = any_api.add(order())
    with capture_signals(sender=Order) as heard:
        refused = any_api.client.post(f"/orders/{order_id}/charge",
                                      json={"card": "4000 0000 0000 0002"})
    assert refused.status_code == 402
    assert refused.json() == {"error": "the card ending 0002 was declined"}
    stored = any_api.row(Order, order_id)
    assert (stored.payment_status, stored.charge_id, stored.paid_at) == ("unpaid", None, None)
    assert heard.names() == ["failed"]
    assert any_api.client.post(f"/orders/{order_id}/charge",
                               json={"card": "4242"}).status_code == 200


def test_a_default_argument_may_be_left_out(api: Api, gateway: FakeGateway) -> None:
    order_id = api.add(order("completed", "paid"))
    assert api.client.post(f"/orders/{order_id}/refund").status_code == 200
    assert api.row(Order, order_id).refund_reason == "requested by the customer"
    assert gateway.refunds == ["ch_0"]


def test_an_action_the_state_refuses_is_a_409_with_the_refusal_as_json(api: Api) -> None:
    order_id = api.add(order())
    with capture_signals(sender=Order) as heard:
        refused = api.client.post(f"/orders/{order_id}/complete")
    assert refused.status_code == 409
    assert refused.json() == {
        "error": f"cannot complete() Order {order_id}: status is 'draft', target 'completed' "
                 "(invalid: complete starts from 'processing')",
        "event": "complete", "reason": "invalid",
        "detail": "complete starts from 'processing'", "column": "status",
        "from_state": "draft", "to_state": "completed"}
    assert heard.names() == ["invalid"]
    assert api.row(Order, order_id).status == "draft"


def test_the_async_guard_refusing_is_a_422_and_the_gateway_is_not_charged(
        api: Api, gateway: FakeGateway) -> None:
    gateway.flagged.add("Mallory")
    order_id = api.add(order(customer="Mallory"))
    refused = api.client.post(f"/orders/{order_id}/charge", json={"card": "4242"})
    assert refused.status_code == 422
    body = refused.json()
    assert (body["reason"], body["detail"], body["column"]) == (
        "guard", "guard passes_fraud_check returned false", "payment_status")
    assert gateway.charges == []
    assert api.row(Order, order_id).payment_status == "unpaid"


def test_a_sync_guard_refusing_is_a_422(api: Api) -> None:
    order_id = api.add(order("processing", "unpaid"))
    refused = api.client.post(f"/orders/{order_id}/complete")
    assert refused.status_code == 422
    assert refused.json()["detail"] == "guard is_paid returned false"
    assert api.row(Order, order_id).status == "processing"


@pytest.mark.parametrize("name", ["is_paid", "passes_fraud_check", "__init__", "__class__",
                                  "__delattr__", "_sa_instance_state", "metadata",
                                  "__litestate_machine__", "start", "unknown"])
def test_a_name_that_is_not_a_transition_is_a_404_and_runs_nothing(
        api: Api, gateway: FakeGateway, name: str) -> None:
    """``start`` is a transition of Todo, not of Order."""
    order_id = api.add(order())
    with capture_signals() as heard:
        missing = api.client.post(f"/orders/{order_id}/{name}", json={"card": "4242"})
    assert missing.status_code == 404
    assert missing.json() == {"detail": f"Order has no transition {name!r}"}
    assert not heard
    assert gateway.charges == []
    assert api.row(Order, order_id).status == "draft"


def test_a_record_that_does_not_exist_is_a_404(api: Api) -> None:
    missing = api.client.post("/orders/99/process")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Order 99 not found"})


@pytest.mark.parametrize(("path", "body", "loc", "kind"), [
    ("charge", None, ["body", "card"], "missing"),
    ("charge", {}, ["body", "card"], "missing"),
    ("charge", {"card": 4242}, ["body", "card"], "string_type"),
    ("charge", {"card": "4242", "cvc": "123"}, ["body", "cvc"], "extra_forbidden"),
    ("process", {"reason": "x"}, ["body", "reason"], "extra_forbidden"),
    ("charge", ["4242"], ["body"], "dict_type"),
])
def test_arguments_that_do_not_fit_the_transition_are_a_400_not_a_422(
        api: Api, gateway: FakeGateway, path: str, body: Any, loc: list[str],
        kind: str) -> None:
    """422 is kept for guards: FastAPI's own validation errors are answered with 400."""
    order_id = api.add(order())
    with capture_signals() as heard:
        refused = api.client.post(f"/orders/{order_id}/{path}", json=body)
    assert refused.status_code == 400
    [error] = refused.json()["detail"]
    assert (error["loc"], error["type"]) == (loc, kind)
    assert not heard
    assert gateway.charges == []
    assert api.row(Order, order_id).payment_status == "unpaid"


def test_a_path_id_that_is_not_a_number_is_a_400(api: Api) -> None:
    refused = api.client.post("/orders/first/process")
    assert refused.status_code == 400
    assert refused.json()["detail"][0]["loc"] == ["path", "order_id"]


def test_completing_a_todo_unblocks_its_followers_in_nested_transitions(api: Api) -> None:
    """A sync body run by aio.fire: it queries with the plain Session API, and each
    follower's unblock() is a transition inside the transition."""
    first = api.add(Todo(title="Write the spec", status="doing"))
    follower = api.add(Todo(title="Build it", status="blocked", follows_id=first))
    with capture_signals(sender=Todo) as heard:
        done = api.client.post(f"/todos/{first}/complete", json={"user": "ada"})
    assert done.status_code == 200
    assert done.json()["result"] == 1
    assert (api.row(Todo, first).status, api.row(Todo, first).completed_by) == (
        "completed", "ada")
    assert api.row(Todo, follower).status == "pending"
    assert heard.events("committed") == ["unblock", "complete"]


def test_a_repeated_charge_is_a_409_and_charges_the_card_once(
        api: Api, gateway: FakeGateway) -> None:
    order_id = api.add(order())
    url = f"/orders/{order_id}/charge"
    assert api.client.post(url, json={"card": "4242"}).status_code == 200
    again = api.client.post(url, json={"card": "4242"})
    assert (again.status_code, again.json()["reason"]) == (409, "invalid")
    assert len(gateway.charges) == 1


class HoldingGateway(FakeGateway):
    """Holds the first fraud screening until released: that request has read the order
    (``unpaid``) and waits in the async guard, before its conditional UPDATE."""

    def __init__(self) -> None:
        super().__init__()
        self.reached, self.released = threading.Event(), threading.Event()
        self._held = False

    async def screen(self, customer: str) -> bool:
        if not self._held:
            self._held = True
            self.reached.set()
            while not self.released.is_set():
                await asyncio.sleep(0.005)
        return await super().screen(customer)


@pytest.mark.postgres
def test_two_racing_charges_one_wins_and_the_other_is_a_409_conflict(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two requests overlap on PostgreSQL: the one that read first writes second, and its
    conditional UPDATE finds the row changed. The card is charged once.

    Not on SQLite: its transactions are serializable, so the slower request's write fails
    with "database is locked" rather than finding the row changed."""
    holding = HoldingGateway()
    monkeypatch.setattr(models, "gateway", holding)
    with serving(pg_url) as api:
        order_id = api.add(order())
        url = f"/orders/{order_id}/charge"
        answers: dict[str, Any] = {}

        def slow() -> None:
            answers["slow"] = api.client.post(url, json={"card": "1111"})

        racer = threading.Thread(target=slow)
        racer.start()
        try:
            assert holding.reached.wait(30), "the first request never reached its guard"
            fast = api.client.post(url, json={"card": "2222"})  # runs while slow waits
        finally:
            holding.released.set()
            racer.join(30)
        assert fast.status_code == 200
        slow_answer = answers["slow"]
        assert slow_answer.status_code == 409
        assert (slow_answer.json()["reason"], slow_answer.json()["from_state"]) == (
            "conflict", "unpaid")
        assert holding.charges == [("ch_1", 4200, "2222")]  # the loser's body never ran
        stored = api.row(Order, order_id)
        assert (stored.payment_status, stored.charge_id) == ("paid", "ch_1")


def test_on_a_sqlite_file_the_demo_records_fill_empty_tables_once(
        sqlite_url: str, gateway: FakeGateway) -> None:
    for _ in range(2):
        with serving(sqlite_url, demo=True) as api:
            assert len(api.client.get("/orders").json()) == len(DEMO_ORDERS)
            todos = api.client.get("/todos").json()
            assert len(todos) == len(DEMO_TODOS)
    assert todos[1]["follows_id"] == todos[0]["id"]
    with serving(sqlite_url) as api:
        assert api.client.post("/todos/1/complete", json={"user": "ada"}).json()["result"] == 1


def test_the_module_app_is_what_uvicorn_runs(tmp_path: Path) -> None:
    """``uvicorn examples.fastapi_app:app`` imports ``app``; here a TestClient serves it, on
    the database ``LITESTATE_DATABASE_URL`` names, filled with the demo records."""
    code = ("from fastapi.testclient import TestClient\n"
            "from examples.fastapi_app import app\n"
            "with TestClient(app) as client:\n"
            "    print(client.get('/orders').json()[0]['customer'])\n")
    env = {**os.environ, "LITESTATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'd.db'}"}
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == DEMO_ORDERS[0][0]
    assert (tmp_path / "d.db").exists()
