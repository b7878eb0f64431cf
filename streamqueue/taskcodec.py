"""A task call as a job payload, and back: pure, no I/O.

Stored shape (``Queue.put``'s payload)::

    {"task": "myapp.tasks.send_email", "args": ["ada@example.com"], "kwargs": {"subject": "hi"}}

``task`` is the registered name (module + qualified name unless pinned with
``name=``); ``args`` and ``kwargs`` are stored as BSON, so tuples come back as
lists and only BSON types travel (see ``check_argument``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import bson
from bson.errors import InvalidDocument

from streamqueue.errors import InvalidJob
from streamqueue.validation import check_payload

TASK = "task"
ARGS = "args"
KWARGS = "kwargs"


@dataclass(frozen=True)
class TaskCall:
    name: str
    args: list[Any]
    kwargs: dict[str, Any]


def encode_call(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The payload for ``name(*args, **kwargs)``; TypeError naming the first argument that
    BSON cannot store, ValueError (``InvalidJob``) for bad keys or an oversized payload."""
    try:
        return check_payload({TASK: name, ARGS: list(args), KWARGS: dict(kwargs)})
    except InvalidJob:
        # Only now, off the hot path, find the argument to name.
        for index, value in enumerate(args):
            check_argument(name, f"argument {index}", value)
        for key, value in kwargs.items():
            check_argument(name, f"argument {key!r}", value)
        raise


def check_argument(task: str, label: str, value: object) -> None:
    """Refuse what BSON cannot store (sets, objects, bytes keys, ints over 64 bits...)."""
    try:
        bson.encode({"v": value})
    except (InvalidDocument, TypeError, OverflowError) as exc:
        raise TypeError(f"task {task}: {label} ({type(value).__name__}) cannot be stored as "
                        f"BSON: {exc}. Pass plain data (str, int, float, bool, None, "
                        "datetime, ObjectId, lists, dicts with str keys)") from exc


def decode_call(payload: Mapping[str, Any]) -> TaskCall:
    """The call a job payload names; ValueError when it is no task payload."""
    name = payload.get(TASK)
    args = payload.get(ARGS, [])
    kwargs = payload.get(KWARGS, {})
    if not isinstance(name, str) or not name:
        raise ValueError(f"the job's payload names no task (no string {TASK!r} field); "
                         f"keys: {sorted(payload)[:10]}")
    if not isinstance(args, list) or not isinstance(kwargs, Mapping):
        raise ValueError(f"the job of task {name} has malformed {ARGS!r}/{KWARGS!r} fields")
    return TaskCall(name, args, dict(kwargs))
