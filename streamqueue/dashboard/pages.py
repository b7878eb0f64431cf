"""What each page shows, read from MongoDB (blocking: the routes run these in a threadpool)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId

from streamqueue.dashboard import format as fmt
from streamqueue.dashboard.queues import QueueRegistry
from streamqueue.dashboard.rates import RateWindow
from streamqueue.dashboard.summary import QueueSummary, summarize
from streamqueue.jobinfo import JobInfo
from streamqueue.storage import FAILED
from streamqueue.storage.dashboard import STATE_FIELDS, DashboardStore, PageKey

PAGE_SIZE = 50
#: The filters a queue page understands (query parameters).
ORDERS = ("claim", "reverse")


_EPOCH = datetime(1970, 1, 1)


class BadRequest(ValueError):
    """A query parameter the pages cannot use (shown to the user as a 400)."""


@dataclass(frozen=True)
class JobFilter:
    state: str = "ready"
    tag: str | None = None
    key: str | None = None
    job_id: ObjectId | None = None
    order: str = "claim"
    after: str | None = None


@dataclass
class JobList:
    rows: list[JobInfo] = field(default_factory=list)
    next_after: str | None = None
    order_note: str = ""


@dataclass(frozen=True)
class Sources:
    """Where pages read from: the database's dashboard reads and the queues."""

    reads: DashboardStore
    registry: QueueRegistry
    only: tuple[str, ...]

    def names(self) -> list[str]:
        return self.reads.queue_names(self.only)

    def summaries(self, rates: RateWindow, names: list[str] | None = None) -> list[QueueSummary]:
        return summarize(self.reads, self.registry, self.names() if names is None else names,
                         rates)


def parse_filter(params: dict[str, str]) -> JobFilter:
    state = params.get("state") or "ready"
    if state not in STATE_FIELDS:
        raise BadRequest(f"state must be one of {', '.join(STATE_FIELDS)}")
    order = params.get("order") or "claim"
    if order not in ORDERS:
        raise BadRequest("order must be claim or reverse")
    job_id = None
    if params.get("id"):
        if not ObjectId.is_valid(params["id"]):
            raise BadRequest("a job id is 24 hexadecimal digits")
        job_id = ObjectId(params["id"])
    return JobFilter(state=state, tag=params.get("tag") or None, key=params.get("key") or None,
                     job_id=job_id, order=order, after=params.get("after") or None)


def list_jobs(sources: Sources, name: str, wanted: JobFilter) -> JobList:
    queue = sources.registry.queue(name)
    if wanted.job_id is not None:
        found = queue.get(wanted.job_id)
        return JobList([found] if found is not None else [])
    if wanted.tag is not None or wanted.key is not None:
        # The tag and key indexes list newest first; "expired" is a split of "locked".
        state = "locked" if wanted.state == "expired" else wanted.state
        rows = queue.jobs(state, tag=wanted.tag, key=wanted.key, limit=PAGE_SIZE + 1,
                          after=_id_after(wanted.after))
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        return JobList(rows, str(rows[-1].id) if more else None, "newest first")
    return _by_state(sources, name, wanted)


def _by_state(sources: Sources, name: str, wanted: JobFilter) -> JobList:
    store = sources.registry.queue(name).store
    now = sources.reads.server_now()
    if wanted.state == FAILED:
        after = _id_after(wanted.after)
        page = sources.reads.dead_page(store, after=None if after is None else PageKey(after),
                                       limit=PAGE_SIZE)
        dead = True
        note = "newest first"
    else:
        page = sources.reads.live_page(store, wanted.state, now, after=decode_key(wanted.after),
                                       descending=wanted.order == "reverse", limit=PAGE_SIZE)
        dead = False
        note = "claim order" if wanted.order == "claim" else "reverse claim order"
    rows = [JobInfo.from_document(doc, dead=dead, now=now) for doc in page.rows]
    next_after = None if page.next_key is None else encode_key(page.next_key)
    return JobList(rows, next_after, note)


def encode_key(key: PageKey) -> str:
    due = "" if key.available_at is None else str(
        round((key.available_at.replace(tzinfo=None) - _EPOCH).total_seconds() * 1000))
    return f"{key.id}.{key.priority}.{due}"


def decode_key(text: str | None) -> PageKey | None:
    if text is None:
        return None
    parts = text.split(".")
    try:
        oid, priority, due = parts
        return PageKey(ObjectId(oid), int(priority),
                       None if not due else _EPOCH + timedelta(milliseconds=int(due)))
    except (ValueError, TypeError, InvalidId) as exc:
        raise BadRequest("the page cursor is malformed") from exc


def _id_after(text: str | None) -> ObjectId | None:
    if text is None:
        return None
    oid = text.split(".")[0]
    if not ObjectId.is_valid(oid):
        raise BadRequest("the page cursor is malformed")
    return ObjectId(oid)


@dataclass(frozen=True)
class JobView:
    info: JobInfo
    doc: dict[str, Any]
    now: datetime

    @property
    def lease_left(self) -> str:
        if self.info.state != "locked":
            return "—"
        return fmt.duration(fmt.seconds_between(self.info.locked_until, self.now))

    def timeline(self) -> list[tuple[str, str]]:
        """The job's dated events, oldest first (only the last claim and error are stored)."""
        doc = self.doc
        events = [("enqueued", doc.get("enqueued_at")), ("due", doc.get("available_at")),
                  (f"claimed (attempt {self.info.attempts})", doc.get("locked_at")),
                  ("lease ends", doc.get("locked_until")),
                  (f"finished: {self.info.state}", doc.get("finished_at")),
                  ("moved to the error queue", doc.get("failed_at"))]
        dated = [(label, moment) for label, moment in events if isinstance(moment, datetime)]
        dated.sort(key=lambda item: fmt.when(item[1]))  # ISO 8601 UTC sorts as time does
        return [(label, fmt.when(moment)) for label, moment in dated]


def job_view(sources: Sources, name: str, job_id: ObjectId) -> JobView | None:
    store = sources.registry.queue(name).store
    now = sources.reads.server_now()
    found = store.find_job(job_id)
    if found is None:
        return None
    doc, dead = found
    return JobView(JobInfo.from_document(doc, dead=dead, now=now), doc, now)
