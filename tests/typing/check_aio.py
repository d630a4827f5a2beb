"""litestate.aio's signatures, checked by mypy --strict and pyright strict (tests/test_tooling.py
runs both), never executed.

``aio.call(obj.method, *args, **kwargs)`` takes exactly the method's arguments and returns a
coroutine of its result, for a sync transition and an ``async def`` one alike; an
``async def`` transition called directly is a coroutine of its result. Each deliberate
misuse carries one ignore per checker, as in check_signatures.py.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, assert_type

from litestate import Action, aio
from tests.aio_models import Lamp, Order, Wallet


async def check(order: Order, wallet: Wallet, lamp: Lamp) -> None:
    pending = aio.call(order.pay, 5)
    _ = assert_type(pending, Coroutine[Any, Any, int])
    assert_type(await pending, int)
    assert_type(await aio.call(order.pay, amount=5), int)
    assert_type(await aio.call(order.ship), None)
    assert_type(await aio.call(order.bundle, order, order), int)
    assert_type(await aio.call(order.charge, 5), str)
    assert_type(await aio.call(wallet.close), None)
    assert_type(await aio.call(lamp.switch_on, "ada"), str)
    charging: Coroutine[Any, Any, str] = order.charge(5)  # (pyright infers CoroutineType)
    assert_type(await charging, str)
    assert_type(await order.charge(amount=5), str)
    assert_type(await wallet.freeze(), None)
    assert_type(await lamp.switch_off(), str)
    assert_type(await aio.can_transition(order, "pay", 5), bool)
    assert_type(await aio.available_transitions(order), list[str])
    assert_type(await aio.actions(order), list[Action])
    assert_type(await aio.fire(order, "pay", 5), Any)

    # aio.call is overloaded: mypy reports a call that fits neither as call-overload
    await aio.call(order.pay)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue]
    await aio.call(order.pay, "5")  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
    await aio.call(order.pay, 5, 6)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue]
    await aio.call(order.pay, cents=5)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue]
    await aio.call(order.charge)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue]
    await aio.call(order.charge, amount="5")  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
    await aio.call(order.bundle, 1)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
    await order.charge("5")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    await wallet.freeze(1)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    paid = await aio.call(order.pay, 5)
    receipt = await aio.call(order.charge, 5)
    wrong: str = paid  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    also_wrong: int = receipt  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    del wrong, also_wrong
