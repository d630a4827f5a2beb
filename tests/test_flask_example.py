"""The Flask example (examples/flask_app): buttons from ``actions()``, one POST route that
fires by name, refusals answered with their HTTP status and JSON body."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from examples.flask_app import DEMO_ORDERS, Order, create_app, db
from litestate import actions
from litestate.testing import assert_transitions, capture_signals, force_state, frozen_clock

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2030, 1, 2, 3, 4, 5)
MakeOrder = Callable[..., int]


@contextlib.contextmanager
def made(config: dict[str, Any]) -> Iterator[Flask]:
    """An app on ``config``'s database; its engine is closed after the test."""
    app = create_app({"TESTING": True, **config})
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def app() -> Iterator[Flask]:
    """The app on an empty in-memory database."""
    with made({"SQLALCHEMY_DATABASE_URI": "sqlite://", "DEMO_ORDERS": False}) as app:
        yield app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def make_order(app: Flask) -> MakeOrder:
    """Insert an order in the given states (no transition runs); returns its id."""
    def make(status: str = "placed", payment: str = "unpaid") -> int:
        with app.app_context():
            order = force_state(Order(customer="Ada", total_cents=4200), status)
            db.session.add(force_state(order, payment, column="payment_status"))
            db.session.commit()
            return order.id

    return make


def row(app: Flask, order_id: int) -> dict[str, Any]:
    """The order as the database holds it, read in a new app context."""
    with app.app_context():
        order = db.session.get(Order, order_id)
        assert order is not None
        return {"status": order.status, "payment_status": order.payment_status,
                "cancel_reason": order.cancel_reason, "paid_at": order.paid_at,
                "shipped_at": order.shipped_at}


class Button(NamedTuple):
    """One form of the list page, as a user sees it."""

    url: str
    label: str
    enabled: bool
    reason: str
    fields: tuple[tuple[str, bool], ...]  # (name, required)


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[dict[str, Any]] = []
        self._text: str | None = None  # the tag whose text is being read

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "form":
            self.found.append({"url": named["action"], "label": "", "enabled": True,
                               "reason": "", "fields": []})
        elif tag == "fieldset":
            self.found[-1]["enabled"] = "disabled" not in named
        elif tag == "input":
            self.found[-1]["fields"].append((named["name"], "required" in named))
        elif tag == "button":
            self._text = "label"
        elif tag == "small" and self.found:
            self._text = "reason"

    def handle_endtag(self, tag: str) -> None:
        self._text = None

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self.found[-1][self._text] += data.strip()


def buttons(page: str, order_id: int) -> list[Button]:
    """The forms of ``page`` that post to order ``order_id``."""
    parser = _Forms()
    parser.feed(page)
    return [Button(f["url"], f["label"], f["enabled"], f["reason"], tuple(f["fields"]))
            for f in parser.found if f["url"].startswith(f"/orders/{order_id}/")]


def test_the_order_declares_the_transitions_the_page_offers() -> None:
    assert_transitions(Order, {"ship": ("placed", "shipped"),
                               "deliver": ("shipped", "delivered"),
                               "cancel": ("placed", "canceled")}, column="status")
    assert_transitions(Order, {"mark_paid": ("unpaid", "paid")}, column="payment_status")


def test_the_list_shows_enabled_buttons_and_disabled_ones_with_their_reason_and_fields(
        client: FlaskClient, make_order: MakeOrder) -> None:
    unpaid = make_order()
    page = client.get("/")
    assert page.status_code == 200
    assert buttons(page.text, unpaid) == [
        Button(f"/orders/{unpaid}/mark_paid", "Mark paid", True, "", ()),
        Button(f"/orders/{unpaid}/ship", "Ship", False, "guard is_paid returned false", ()),
        Button(f"/orders/{unpaid}/deliver", "Mark delivered", False,
               "deliver starts from 'shipped'", ()),
        Button(f"/orders/{unpaid}/cancel", "Cancel", True, "", (("reason", True),)),
    ]


def test_the_buttons_are_what_actions_answers_for_every_state(
        app: Flask, client: FlaskClient, make_order: MakeOrder) -> None:
    ids = [make_order(status, payment) for status in ("placed", "shipped", "delivered",
                                                      "canceled")
           for payment in ("unpaid", "paid")]
    page = client.get("/").text
    with app.app_context():
        for order_id in ids:
            order = db.session.get(Order, order_id)
            expected = [(a.meta["label"], a.allowed, a.detail) for a in actions(order)]
            assert [(b.label, b.enabled, b.reason) for b in buttons(page, order_id)] == expected
    canceled = buttons(page, ids[-2])
    assert not any(b.enabled for b in canceled)
    assert canceled[0].reason == "guard is_open returned false"  # no paying a canceled order


def test_posting_an_allowed_action_writes_it_commits_and_redirects_to_the_list(
        app: Flask, client: FlaskClient, make_order: MakeOrder) -> None:
    order_id = make_order()
    with capture_signals(sender=Order) as heard, frozen_clock(NOW):
        paid = client.post(f"/orders/{order_id}/mark_paid")
        shipped = client.post(f"/orders/{order_id}/ship")
    assert (paid.status_code, paid.location) == (303, "/")
    assert (shipped.status_code, shipped.location) == (303, "/")
    assert row(app, order_id) == {"status": "shipped", "payment_status": "paid",
                                  "cancel_reason": None, "paid_at": NOW, "shipped_at": NOW}
    assert heard.names() == ["succeeded", "committed", "succeeded", "committed"]
    assert [(s.event, s.record_id) for s in heard.of("committed")] == [
        ("mark_paid", order_id), ("ship", order_id)]


def test_cancel_takes_its_reason_from_the_form(
        app: Flask, client: FlaskClient, make_order: MakeOrder) -> None:
    order_id = make_order()
    with capture_signals(sender=Order) as heard:
        done = client.post(f"/orders/{order_id}/cancel", data={"reason": "changed my mind"})
    assert done.status_code == 303
    assert row(app, order_id)["status"] == "canceled"
    assert row(app, order_id)["cancel_reason"] == "changed my mind"
    [committed] = heard.of("committed")
    assert committed.kwargs == {"reason": "changed my mind"}
    assert "canceled: changed my mind" in client.get("/").text


def test_an_action_the_state_refuses_is_a_409_with_the_refusal_as_json(
        app: Flask, client: FlaskClient, make_order: MakeOrder) -> None:
    order_id = make_order()
    with capture_signals(sender=Order) as heard:
        refused = client.post(f"/orders/{order_id}/deliver")
    assert refused.status_code == 409
    assert refused.get_json() == {
        "error": f"cannot deliver() Order {order_id}: status is 'placed', target 'delivered' "
                 "(invalid: deliver starts from 'shipped')",
        "event": "deliver", "reason": "invalid", "detail": "deliver starts from 'shipped'",
        "column": "status", "from_state": "placed", "to_state": "delivered"}
    assert heard.names() == ["invalid"]
    assert row(app, order_id)["status"] == "placed"


def test_an_action_a_guard_refuses_is_a_422_with_the_refusal_as_json(
        app: Flask, client: FlaskClient, make_order: MakeOrder) -> None:
    order_id = make_order(payment="unpaid")
    refused = client.post(f"/orders/{order_id}/ship")
    assert refused.status_code == 422
    body = refused.get_json()
    assert (body["reason"], body["detail"]) == ("guard", "guard is_paid returned false")
    assert row(app, order_id)["status"] == "placed"


@pytest.mark.parametrize("name", ["is_paid", "__init__", "__class__", "__delattr__",
                                  "_sa_instance_state", "metadata", "__litestate_machine__",
                                  "refund"])
def test_a_name_that_is_not_a_transition_is_a_404_and_runs_nothing(
        app: Flask, client: FlaskClient, make_order: MakeOrder, name: str) -> None:
    order_id = make_order()
    with capture_signals() as heard:
        assert client.post(f"/orders/{order_id}/{name}").status_code == 404
    assert not heard
    assert row(app, order_id)["status"] == "placed"


def test_an_order_that_does_not_exist_is_a_404(client: FlaskClient) -> None:
    assert client.post("/orders/99/ship").status_code == 404


@pytest.mark.parametrize(("event", "form", "error"), [
    ("cancel", {}, "Order.cancel() missing 1 required positional argument: 'reason'"),
    ("cancel", {"reason": ""}, "Order.cancel() missing 1 required positional argument: "
                               "'reason'"),
    ("ship", {"reason": "x"}, "Order.ship() got an unexpected keyword argument 'reason'"),
])
def test_form_fields_that_do_not_fit_the_transition_are_a_400(
        app: Flask, client: FlaskClient, make_order: MakeOrder, event: str,
        form: dict[str, str], error: str) -> None:
    order_id = make_order(payment="paid")
    with capture_signals() as heard:
        refused = client.post(f"/orders/{order_id}/{event}", data=form)
    assert refused.status_code == 400
    assert refused.get_json() == {"error": error, "event": event}
    assert not heard
    assert row(app, order_id)["status"] == "placed"


def test_a_savepoint_of_the_view_and_its_transition_roll_back_with_the_request(
        app: Flask, make_order: MakeOrder) -> None:
    """enable_savepoints reached the engine Flask-SQLAlchemy made: without it pysqlite
    sends no BEGIN, the SAVEPOINT opens a transaction of its own and its RELEASE commits."""
    order_id = make_order()
    with app.app_context():
        order = db.get_or_404(Order, order_id)
        with db.session.begin_nested():
            order.cancel("test")
        db.session.rollback()
    assert row(app, order_id)["status"] == "placed"


def test_on_a_sqlite_file_the_demo_orders_fill_an_empty_table_once(tmp_path: Path) -> None:
    config = {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'orders.db'}"}
    for _ in range(2):
        with made(config) as app, app.app_context():
            assert db.session.scalar(select(func.count(Order.id))) == len(DEMO_ORDERS)
    with made(config) as app:
        client = app.test_client()
        assert client.post("/orders/2/ship").status_code == 303
        assert row(app, 2)["status"] == "shipped"
        assert client.post("/orders/2/ship").status_code == 409


def test_the_flask_command_finds_the_app_factory() -> None:
    """``flask --app examples.flask_app`` (here ``routes``), on an in-memory database."""
    env = {**os.environ, "FLASK_SQLALCHEMY_DATABASE_URI": "sqlite://"}
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "examples.flask_app",
                           "routes"], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "orders.fire_event  POST" in done.stdout
    assert "/orders/<int:order_id>/<event>" in done.stdout
