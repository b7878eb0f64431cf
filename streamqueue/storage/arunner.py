"""Runs plans (``streamqueue.plan``) with pymongo's asyncio driver (``AsyncMongoClient``)."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, TypeVar

from streamqueue.plan import Call, Invoke, Op, Plan, Sleep, Transaction, step

T = TypeVar("T")


async def arun(plan: Plan[T]) -> T:
    """Drive ``plan`` to its end on the running event loop.

    A cancellation is raised inside the plan like any error, so its cleanup
    (closing a stream, releasing a claim) still runs before it propagates.
    """
    done, item = step(plan, None, None)
    while not done:
        try:
            value, error = await aexecute(item), None
        except BaseException as exc:  # the plan decides, as if it had made the call itself
            value, error = None, exc
        done, item = step(plan, value, error)
    result: T = item
    return result


async def aexecute(op: Op) -> Any:
    if isinstance(op, Call):
        result = getattr(op.target, op.method)(*op.args, **op.kwargs)
        if inspect.isawaitable(result):
            result = await result
        return await result.to_list(None) if op.listed else result
    if isinstance(op, Sleep):
        await asyncio.sleep(op.seconds)
        return None
    if isinstance(op, Transaction):
        async with op.client.start_session() as session:
            return await session.with_transaction(lambda s: arun(op.body(s)), **op.options)
    assert isinstance(op, Invoke)
    return op.fn()
