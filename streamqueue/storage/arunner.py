"""Runs plans (``streamqueue.plan``) with pymongo's asyncio driver (``AsyncMongoClient``)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any, TypeVar

from streamqueue.plan import Call, Detach, Invoke, Op, Plan, Sleep, Transaction, step

T = TypeVar("T")
log = logging.getLogger(__name__)


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
    if isinstance(op, Detach):
        task = asyncio.get_running_loop().create_task(_detached(op.plan))
        _DETACHED.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(_DETACHED.discard)
        return None
    assert isinstance(op, Invoke)
    result = op.fn()
    return await result if inspect.isawaitable(result) else result


_DETACHED: set[asyncio.Task[Any]] = set()


async def _detached(plan: Plan[Any]) -> None:
    try:
        await arun(plan)
    except Exception:
        log.warning("clean-up after a cancelled operation failed", exc_info=True)
