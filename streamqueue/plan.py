"""Sans-I/O plans: storage operations written once, run by a sync or an async runner.

A plan is a generator. It yields small descriptions of driver calls (``Call``),
pauses (``Sleep``) and transactions (``Transaction``) and receives each one's
result, or has its error raised at the ``yield``. The plan holds every query,
retry and reconciliation decision; ``streamqueue.storage.runner`` executes the
descriptions with pymongo's ``Collection``, ``streamqueue.storage.arunner``
with its ``AsyncCollection``. The two driver APIs share method names and
arguments, so one description serves both: the async runner awaits what the
async driver returns as awaitable, and turns cursors into lists.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """``target.method(*args, **kwargs)``; ``listed``: the result is a cursor read to a list."""

    target: Any
    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    listed: bool = False


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Transaction:
    """Run ``body(session)`` in a transaction of ``client`` (``with_transaction``, which
    may run it again after a transient error)."""

    client: Any
    body: Callable[[Any], Plan[Any]]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Invoke:
    """A step of the caller's own, not the database's: a callable such as a wait on the
    wake-up board or a method a subclass may override. The async runner awaits what it
    returns when that is awaitable."""

    fn: Callable[[], Any]


@dataclass(frozen=True)
class Detach:
    """Clean-up the plan's caller will not wait for (it was cancelled): the async runner
    runs ``plan`` as a task of its own; the sync runner has no such caller and skips it."""

    plan: Plan[Any]


Op = Call | Sleep | Transaction | Invoke | Detach
Plan = Generator[Op, Any, T]


def call(target: Any, method: str, *args: Any, **kwargs: Any) -> Call:
    return Call(target, method, args, kwargs)


def listed(target: Any, method: str, *args: Any, **kwargs: Any) -> Call:
    return Call(target, method, args, kwargs, listed=True)


def once(op: Op) -> Plan[Any]:
    """A plan of one operation, returning its result."""
    return (yield op)


def step(plan: Plan[T], value: Any, error: BaseException | None) -> tuple[bool, Any]:
    """Advance ``plan`` with the last result (or error): (True, its return) or (False, next op).

    The one piece of driving both runners share; each only executes the op.
    """
    try:
        op = plan.send(value) if error is None else plan.throw(error)
    except StopIteration as stop:
        return True, stop.value
    return False, op
