"""Queries over several queues of one database at once (a multi-queue worker).

``GroupPlans`` holds what one process serving many queues sends instead of one
command per queue: one database-level change stream filtered on the queues'
collections, one probe for "which queues have a due job", one read of the
earliest due time. Each runs on the first queue's ``StorePlans`` (its retry
policy, read preference and concern) and reaches the others with ``$unionWith``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pymongo.read_concern import ReadConcern

from streamqueue.errors import ConfigurationError
from streamqueue.plan import Plan, call, listed
from streamqueue.storage import (
    NOW,
    READY_AND_DUE,
    READY_NOT_DUE,
    WAKE_PIPELINE,
    Document,
    StorePlans,
    millis,
)

#: Events saying a queue's collection went away (with its indexes).
GONE = ("drop", "rename")


def group_wake_pipeline(names: Sequence[str]) -> list[Document]:
    """``WAKE_PIPELINE`` for a database stream: only the queues' collections, and the
    collection name kept so each event can be routed to its queue."""
    stages: list[Document] = [{"$match": {"ns.coll": {"$in": list(names)}}}]
    for stage in WAKE_PIPELINE:
        if "$match" in stage:
            # A database stream is not invalidated by a dropped collection: the drop
            # comes as an event, which tells that queue to recreate its indexes.
            stage = {"$match": {"$or": [{"operationType": {"$in": list(GONE)}},
                                        stage["$match"]]}}
        if "$project" in stage:
            stage = {"$project": {**stage["$project"], "ns.coll": 1}}
        stages.append(stage)
    return stages


def _union(names: Sequence[str], per_queue: Any) -> list[Document]:
    """``per_queue(name)`` on the first collection, each other one's appended by ``$unionWith``."""
    stages: list[Document] = list(per_queue(names[0]))
    for name in names[1:]:
        stages.append({"$unionWith": {"coll": name, "pipeline": per_queue(name)}})
    return stages


def _due_probe(name: str) -> list[Document]:
    return [{"$match": READY_AND_DUE}, {"$limit": 1},
            {"$project": {"_id": 0, "queue": {"$literal": name}}}]


def _next_due(name: str) -> list[Document]:
    return [{"$match": READY_NOT_DUE}, {"$sort": {"state": 1, "available_at": 1}}, {"$limit": 1},
            {"$project": {"_id": 0, "due_in": {"$subtract": ["$available_at", NOW]}}}]


def due_probe_pipeline(names: Sequence[str]) -> list[Document]:
    """One document ``{queue: name}`` for each queue holding a due, unclaimed job."""
    return _union(names, _due_probe)


def next_due_pipeline(names: Sequence[str]) -> list[Document]:
    """At most one document ``{due_in: ms}``: the earliest delayed job of any queue."""
    return [*_union(names, _next_due), {"$group": {"_id": None, "due_in": {"$min": "$due_in"}}}]


class GroupPlans:
    """The group's reads and stream as plans, run by the caller's runner."""

    def __init__(self, members: Sequence[StorePlans]) -> None:
        if not members:
            raise ValueError("a group needs at least one queue")
        databases = {plans.jobs.database.name for plans in members}
        if len(databases) != 1:
            raise ValueError(f"every queue of a group must be in one database, not {databases}")
        self.members = list(members)
        self.names = [plans.jobs.name for plans in members]
        self._first = members[0]
        #: For ``StreamEvents``, which logs and labels by the stream's name.
        self.jobs = self._first.jobs
        self.indexes_ready = True  # each member keeps its own flag (see forget_indexes)

    def forget_indexes(self) -> None:
        for plans in self.members:
            plans.indexes_ready = False

    def due_queues(self) -> Plan[set[str]]:
        """Which queues hold a due job now: one command for the whole group."""
        docs = yield from self._first._retry_op("probe queues", listed(
            self._first.jobs, "aggregate", due_probe_pipeline(self.names)))
        return {doc["queue"] for doc in docs}

    def next_due_in(self) -> Plan[float | None]:
        """Seconds until the earliest delayed job of any queue falls due; None when none."""
        docs = yield from self._first._retry_op("next due", listed(
            self._first.jobs, "aggregate", next_due_pipeline(self.names)))
        due = docs[0].get("due_in") if docs else None
        return None if due is None else max(0.0, due / 1000.0)

    def watch(self, resume_after: Mapping[str, Any] | None, max_await: float,
              pipeline: list[Document] | None = None) -> Plan[Any]:
        """One stream for every queue of the group (a database stream).

        ``pipeline`` is the fleet's wider stream, which a group never asks for:
        a task worker does not join a fleet (yet).
        """
        if pipeline is not None:
            raise ConfigurationError("a queue group cannot join a fleet")
        database = self._first.streams.database.with_options(read_concern=ReadConcern())
        return (yield call(database, "watch", group_wake_pipeline(self.names),
                           resume_after=resume_after, max_await_time_ms=millis(max_await)))

    def next_change(self, stream: Any) -> Plan[Document | None]:
        return (yield from self._first.next_change(stream))

    def close_stream(self, stream: Any) -> Plan[None]:
        yield from self._first.close_stream(stream)
