"""``JobInfo``: what ``Queue.get`` and ``Queue.jobs`` show of one job, and its named state.

Pure: built from a stored document, the collection it was found in, and the
server's clock at the time of the read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, cast

from bson import ObjectId

JobState = Literal["ready", "delayed", "locked", "completed", "cancelled", "failed"]
JOB_STATES: tuple[JobState, ...] = ("ready", "delayed", "locked", "completed", "cancelled",
                                    "failed")
#: States whose job will not run again (``Queue.result`` returns or raises for them).
FINISHED: frozenset[JobState] = frozenset({"completed", "cancelled", "failed"})


@dataclass(frozen=True)
class JobInfo:
    """One job as stored at the moment it was read. ``key`` is None for a job put
    without one; ``cancel_requested`` is True once ``Queue.cancel`` asked for a held job."""

    id: ObjectId
    state: JobState
    payload: dict[str, Any]
    priority: int
    attempts: int
    max_attempts: int
    key: str | None
    tags: tuple[str, ...]
    consumer_id: str | None
    enqueued_at: datetime | None
    available_at: datetime | None
    locked_until: datetime | None
    finished_at: datetime | None
    last_error: str | None
    progress: int | None
    result: Any
    cancel_requested: bool

    @classmethod
    def from_document(cls, doc: dict[str, Any], *, dead: bool, now: datetime) -> JobInfo:
        """``dead``: found in the error queue. ``now``: the server's clock, naive UTC like the dates."""
        return cls(
            id=doc["_id"],
            state=job_state(doc, dead=dead, now=now),
            payload=dict(doc.get("payload") or {}),
            priority=int(doc.get("priority", 0)),
            attempts=int(doc.get("attempts", 0)),
            max_attempts=int(doc.get("max_attempts", 0)),
            key=doc.get("key"),
            tags=tuple(doc.get("tags") or ()),
            consumer_id=doc.get("consumer_id"),
            enqueued_at=doc.get("enqueued_at"),
            available_at=doc.get("available_at"),
            locked_until=doc.get("locked_until"),
            finished_at=doc.get("finished_at") or doc.get("failed_at"),
            last_error=doc.get("last_error"),
            progress=doc.get("progress"),
            result=doc.get("result"),
            cancel_requested=bool(doc.get("cancel_requested", False)),
        )


def job_state(doc: dict[str, Any], *, dead: bool, now: datetime) -> JobState:
    if dead:
        return "failed"
    state = doc.get("state")
    if state == "ready":
        due = doc.get("available_at")
        return "delayed" if isinstance(due, datetime) and _naive(due) > _naive(now) else "ready"
    if state in JOB_STATES:
        return cast("JobState", state)
    # A state this release does not know (a newer one wrote it): the nearest it knows.
    return "locked"


def _naive(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment
