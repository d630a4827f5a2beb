"""litestate in a Flask app: a list of orders whose buttons come from ``actions()``, one
POST route that fires any transition by name, refusals answered with their HTTP status.

Run from the repository root, after ``pip install -e '.[flask]'``::

    flask --app examples.flask_app run      # or: python -m examples.flask_app

then open http://127.0.0.1:5000/. The orders live in ``litestate-orders.db`` in Flask's
instance folder (``instance/`` beside ``examples/``), filled with demo orders while the
table is empty: delete the file to start again. ``FLASK_SQLALCHEMY_DATABASE_URI`` picks
another database (``sqlite://``: in memory, fresh at every start).

The glue, all of it in this module and ``templates/orders.html``:

- the list: ``actions(order)`` gives every button, enabled or disabled with the reason,
  its label (``meta``) and its form fields (``parameters``);
- ``POST /orders/<id>/<event>``: a name that is not a declared transition is a 404, form
  fields that do not fit its parameters a 400, else :func:`litestate.fire`, commit and a
  303 redirect to the list;
- a refusal (:class:`~litestate.TransitionError`) is answered by one error handler:
  ``error.as_dict()`` as JSON, with ``error.http_status`` (409 for the state or a lost
  race, 422 for a guard).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Flask, abort, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import func, select

from examples.flask_app.models import Base, Order
from litestate import (
    TransitionArgumentError,
    TransitionError,
    UnknownTransitionError,
    actions,
    fire,
)
from litestate.sqlite import enable_savepoints

__all__ = ["DEMO_ORDERS", "Base", "Order", "create_app", "db", "orders"]

db = SQLAlchemy(model_class=Base)
orders = Blueprint("orders", __name__)

#: What an empty table is filled with: (customer, total in cents, status, payment_status).
DEMO_ORDERS = (
    ("Ada Lovelace", 4200, "placed", "unpaid"),
    ("Grace Hopper", 1999, "placed", "paid"),
    ("Alan Turing", 12500, "shipped", "paid"),
    ("Edsger Dijkstra", 800, "canceled", "unpaid"),
)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The app; ``config`` overrides the defaults and the ``FLASK_*`` environment
    (``SQLALCHEMY_DATABASE_URI``; ``DEMO_ORDERS=False`` leaves an empty table empty)."""
    app = Flask(__name__)
    app.config.from_mapping(SQLALCHEMY_DATABASE_URI="sqlite:///litestate-orders.db",
                            DEMO_ORDERS=True)
    app.config.from_prefixed_env()
    app.config.from_mapping(config or {})
    db.init_app(app)
    app.register_blueprint(orders)
    app.register_error_handler(TransitionError, lambda e: (e.as_dict(), e.http_status))
    with app.app_context():
        if db.engine.dialect.name == "sqlite":  # made by init_app, not connected yet
            enable_savepoints(db.engine)
        db.create_all()
        if app.config["DEMO_ORDERS"] and not db.session.scalar(select(func.count(Order.id))):
            db.session.add_all(Order(customer=customer, total_cents=total, status=status,
                                     payment_status=payment)
                               for customer, total, status, payment in DEMO_ORDERS)
            db.session.commit()
    return app


@orders.get("/")
def index() -> str:
    """Every order, with a button per transition: enabled, or disabled saying why."""
    found = db.session.scalars(select(Order).order_by(Order.id))
    return render_template("orders.html", orders=[(order, actions(order)) for order in found])


@orders.post("/orders/<int:order_id>/<event>")
def fire_event(order_id: int, event: str) -> ResponseReturnValue:
    """Fire ``event`` with the form's non-empty fields as keyword arguments."""
    order = db.get_or_404(Order, order_id)
    fields = {name: value for name, value in request.form.items() if value}
    try:
        fire(order, event, **fields)
    except UnknownTransitionError:  # another method, a dunder, a typo: nothing to call
        abort(404, f"Order has no transition {event!r}")
    except TransitionArgumentError as error:  # the form does not fit; the body's own
        return {"error": str(error), "event": event}, 400  # TypeError stays a 500
    db.session.commit()
    return redirect(url_for(".index"), 303)
