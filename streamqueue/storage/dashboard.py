"""The dashboard's reads: which queues a database holds, bounded counts, index-backed pages.

Counts: each state is counted exactly up to ``COUNT_CAP`` with the server's
``count`` command (a COUNT_SCAN of the state's index range that stops at the
cap). A state past the cap is estimated: the collection's metadata count
(``estimated_document_count``, no scan) less the states counted exactly.
With two states past the cap, both are shown as "at least the cap".

Pages: live states are listed in claim order (priority descending, then due
time, then ``_id``) on the ``claim`` index, and the next page starts after
the last row's sort key (keyset paging: a ``$or`` of three index ranges that
the server merges, ``SORT_MERGE``; never ``skip``). Dead jobs are listed
newest first on the ``_id`` index of the error queue.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, ReadPreference
from pymongo.change_stream import ChangeStream
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import PyMongoError
from pymongo.read_concern import ReadConcern

from streamqueue.retry import RetryPolicy, translate
from streamqueue.storage import (
    CLAIM_SORT,
    CONTROL_ID,
    FAILED,
    Document,
    JobStore,
    count_filters,
    millis,
)
from streamqueue.storage.schedules import SCHEDULES_SUFFIX

T = TypeVar("T")

#: A state with more jobs than this is estimated, not counted (see the module's docstring).
COUNT_CAP = 100_000
#: Most rows one page shows.
PAGE_LIMIT = 200
FAILED_SUFFIX = ".failed"
# The states the dashboard shows, in its order; "ready" is QueueCounts' "available".
STATE_FIELDS = {"ready": "available", "delayed": "delayed", "locked": "locked",
                "expired": "expired", "failed": "failed", "completed": "completed",
                "cancelled": "cancelled"}
_NOT_QUEUES = re.compile(rf"^system\.|{re.escape(FAILED_SUFFIX)}$|{re.escape(SCHEDULES_SUFFIX)}$")


@dataclass(frozen=True)
class StateCounts:
    """Jobs per state; ``estimated`` names the states not counted exactly."""

    counts: dict[str, int]
    estimated: frozenset[str] = frozenset()
    at_least: frozenset[str] = frozenset()

    def shown(self, state: str) -> str:
        value = f"{self.counts.get(state, 0):,}"
        if state in self.at_least:
            return f"≥ {value}"
        return f"~{value}" if state in self.estimated else value


@dataclass(frozen=True)
class PageKey:
    """Where a page starts: just after this row in claim order (or ``_id`` order when dead)."""

    id: ObjectId
    priority: int = 0
    available_at: datetime | None = None


@dataclass
class Page:
    rows: list[Document] = field(default_factory=list)
    next_key: PageKey | None = None


def live_state_filter(state: str, now: datetime) -> Document:
    """The filter of one live state ("ready", "delayed", "locked", ...) at the server instant ``now``."""
    filters = count_filters(now)
    return dict(filters[STATE_FIELDS[state]])


def claim_order_after(key: PageKey, descending: bool) -> Document:
    """Rows after ``key`` in claim order (or its reverse): three index ranges, merged by the server."""
    later, earlier = ("$lt", "$gt") if descending else ("$gt", "$lt")
    # Priority sorts descending in claim order: "after" means a lower priority.
    return {"$or": [
        {"priority": {earlier: key.priority}},
        {"priority": key.priority, "available_at": {later: key.available_at}},
        {"priority": key.priority, "available_at": key.available_at, "_id": {later: key.id}},
    ]}


def claim_sort(descending: bool) -> list[tuple[str, int]]:
    if not descending:
        return list(CLAIM_SORT)
    return [(name, ASCENDING if way == DESCENDING else DESCENDING) for name, way in CLAIM_SORT]


class DashboardStore:
    """The dashboard's reads on one database; every driver error leaves as a ``StreamQueueError``."""

    def __init__(self, database: Database[Document], retry: RetryPolicy | None = None) -> None:
        self.database = database.with_options(read_preference=ReadPreference.PRIMARY,
                                              read_concern=ReadConcern("local"))
        self.retry = retry or RetryPolicy()

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        return self.retry.call(f"dashboard: {action} in {self.database.name}", fn)

    def queue_names(self, only: Sequence[str] = ()) -> list[str]:
        """The queues: ``only`` when given (in its order), else every collection but
        error queues and system ones."""
        if only:
            return list(only)
        names = self._call("list queues", lambda: self.database.list_collection_names(
            filter={"type": "collection"}))
        return sorted(name for name in names if not _NOT_QUEUES.search(name))

    def server_now(self) -> datetime:
        now: datetime = self._call("read the server clock",
                                   lambda: self.database.command("hello")["localTime"])
        return now

    def counts(self, store: JobStore, now: datetime) -> StateCounts:
        """Jobs per state at the server instant ``now``, exact up to ``COUNT_CAP`` each."""
        queries: dict[str, tuple[Collection[Document], Document]] = {
            state: (store.jobs, live_state_filter(state, now)) for state in STATE_FIELDS
            if state != FAILED}
        queries[FAILED] = (store.failed, {})
        counts = {state: self._count(coll, query) for state, (coll, query) in queries.items()}
        over = [state for state, n in counts.items() if n > COUNT_CAP]
        if not over:
            return StateCounts(counts)
        if len(over) > 1:
            return StateCounts({**counts, **dict.fromkeys(over, COUNT_CAP)},
                               at_least=frozenset(over))
        coll = store.failed if over[0] == FAILED else store.jobs
        total = self._call("estimate a count", coll.estimated_document_count)
        if over[0] != FAILED:
            total -= self._count(store.jobs, {"_id": CONTROL_ID})  # the pause switch is no job
        return StateCounts(_estimate(counts, over[0], total), estimated=frozenset(over))

    def _count(self, collection: Collection[Document], query: Document) -> int:
        return self._call("count", lambda: _capped_count(collection, query))

    def live_page(self, store: JobStore, state: str, now: datetime, *, after: PageKey | None,
                  descending: bool, limit: int) -> Page:
        """Live jobs in one state, in claim order (or reversed), ``limit`` at most."""
        query = live_state_filter(state, now)
        if after is not None:
            query = {"$and": [query, claim_order_after(after, descending)]}
        rows = self._call("list jobs", lambda: list(store.jobs.find(
            query, sort=claim_sort(descending), limit=limit + 1, hint="claim")))
        return _page(rows, limit, claim_key)

    def dead_page(self, store: JobStore, *, after: PageKey | None, limit: int) -> Page:
        """Dead jobs, newest first."""
        query: Document = {} if after is None else {"_id": {"$lt": after.id}}
        rows = self._call("list dead jobs", lambda: list(store.failed.find(
            query, sort=[("_id", DESCENDING)], limit=limit + 1, hint="_id_")))
        return _page(rows, limit, lambda doc: PageKey(doc["_id"]))

    def watch(self, names: Sequence[str] | None, max_await: float) -> FeedStream:
        """One database change stream for the listed queues and their error queues (None: all)."""
        # A change stream takes no explicit read concern and refuses "local".
        streams = self.database.with_options(read_concern=ReadConcern())
        stream = self._call("watch", lambda: streams.watch(
            feed_pipeline(names), max_await_time_ms=millis(max_await)))
        return FeedStream(stream)


class FeedStream:
    """The live feed's change stream; a context manager that closes its cursor."""

    def __init__(self, stream: ChangeStream[Document]) -> None:
        self._stream = stream

    def next_event(self) -> Document | None:
        """The next change, or None after the server's wait (``max_await``) passed without one."""
        try:
            return self._stream.try_next()
        except PyMongoError as exc:
            raise translate(exc, "dashboard: read the live feed") from exc

    def __enter__(self) -> FeedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.close()


def _estimate(counts: dict[str, int], state: str, total: int) -> dict[str, int]:
    """``state``'s count as its collection's job count (``total``) less every other exact count there."""
    rest = 0 if state == FAILED else sum(
        n for other, n in counts.items() if other not in (state, FAILED))
    return {**counts, state: max(COUNT_CAP + 1, total - rest)}


def claim_key(doc: Mapping[str, Any]) -> PageKey:
    return PageKey(doc["_id"], int(doc.get("priority", 0)), doc.get("available_at"))


def _page(rows: list[Document], limit: int, key: Any) -> Page:
    if len(rows) <= limit:
        return Page(rows)
    return Page(rows[:limit], key(rows[limit - 1]))


def _capped_count(collection: Collection[Document], query: Document) -> int:
    """How many match, counting at most ``COUNT_CAP + 1`` (the ``count`` command's COUNT_SCAN)."""
    reply = collection.database.command("count", collection.name, query=query,
                                        limit=COUNT_CAP + 1, readConcern={"level": "local"})
    return int(reply["n"])


# -- the live feed's stream --------------------------------------------------------------------

def feed_pipeline(names: Sequence[str] | None) -> list[Document]:
    """Changes that move a count: inserts, deletes, and updates that set a state or the switch;
    and a schedule's changes and fires (each moves its ``next_at``).

    Heartbeats, progress and lease extensions set neither and never reach the
    dashboard. Documents are projected away: only what the rates need travels.
    """
    kinds: Document = {"$or": [
        {"operationType": {"$in": ["insert", "delete", "replace"]}},
        {"operationType": "update", "updateDescription.updatedFields.state": {"$exists": True}},
        {"operationType": "update", "documentKey._id": CONTROL_ID},
        # Only schedules have next_at: a fire that skipped its tick inserts no job.
        {"operationType": "update", "updateDescription.updatedFields.next_at": {"$exists": True}},
    ]}
    if names is not None:
        kinds["ns.coll"] = {"$in": [*names, *(name + suffix for name in names
                                               for suffix in (FAILED_SUFFIX, SCHEDULES_SUFFIX))]}
    return [
        {"$match": kinds},
        {"$project": {"operationType": 1, "ns.coll": 1, "fullDocument.state": 1,
                      "updateDescription.updatedFields.state": 1}},
    ]
