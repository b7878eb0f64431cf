"""Runs plans (``streamqueue.plan``) with pymongo's synchronous driver."""

from __future__ import annotations

import time
from typing import Any, TypeVar

from streamqueue.plan import Call, Detach, Invoke, Op, Plan, Sleep, Transaction, step

T = TypeVar("T")


def run(plan: Plan[T]) -> T:
    """Drive ``plan`` to its end; each operation's error is raised inside the plan."""
    done, item = step(plan, None, None)
    while not done:
        try:
            value, error = execute(item), None
        except BaseException as exc:  # the plan decides, as if it had made the call itself
            value, error = None, exc
        done, item = step(plan, value, error)
    result: T = item
    return result


def execute(op: Op) -> Any:
    if isinstance(op, Call):
        result = getattr(op.target, op.method)(*op.args, **op.kwargs)
        return list(result) if op.listed else result
    if isinstance(op, Sleep):
        time.sleep(op.seconds)
        return None
    if isinstance(op, Transaction):
        with op.client.start_session() as session:
            return session.with_transaction(lambda s: run(op.body(s)), **op.options)
    if isinstance(op, Detach):
        # Only a cancelled asyncio caller leaves work behind; a thread interrupted by
        # KeyboardInterrupt is going away, and its lease covers whatever it held.
        op.plan.close()
        return None
    assert isinstance(op, Invoke)
    return op.fn()
