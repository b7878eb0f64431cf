"""Every MongoDB query and index the queue uses, in one place.

A job is one document in the queue's collection::

    _id           ObjectId, made by the producer
    payload       the caller's mapping
    priority      int; higher is claimed first
    state         "ready" or "locked" (a ready job whose available_at is in
                  the future is "delayed")
    attempts      claims so far; max_attempts: deliveries allowed
    enqueued_at, available_at, locked_at, locked_until   server-clock dates
    consumer_id, lease_token   who holds the lease; the token names one claim
    last_error, progress

Every time comparison uses the server's ``$$NOW`` inside the operation, so no
client clock is ever trusted. The one date not written by ``$$NOW`` is the
enqueue's (``enqueued_at``, ``available_at``): a plain insert cannot use it,
so those come from ``ServerClock``, the server's ``hello.localTime`` carried
forward by the client's monotonic clock (never its wall clock). Dead jobs move
to ``<collection>.failed`` with the same ``_id``, in a transaction where the
deployment has them.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument
from pymongo.change_stream import ChangeStream
from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure
from pymongo.write_concern import WriteConcern

from streamqueue.errors import InvalidJob
from streamqueue.retry import DUPLICATE_KEY, RetryPolicy
from streamqueue.servertime import ServerClock

log = logging.getLogger(__name__)

Document = dict[str, Any]

READY = "ready"
LOCKED = "locked"
FAILED = "failed"

LOCK_FIELDS = ["lease_token", "consumer_id", "locked_at", "locked_until"]

NOW = "$$NOW"
IS_DUE = {"$lte": ["$available_at", NOW]}
LEASE_EXPIRED = {"$lt": ["$locked_until", NOW]}
READY_AND_DUE: Document = {"state": READY, "$expr": IS_DUE}
READY_NOT_DUE: Document = {"state": READY, "$expr": {"$gt": ["$available_at", NOW]}}
# A batch claim that loses candidates to concurrent claims tries again for the
# rest, this many times at most (each lost round means other claims progressed).
CLAIM_MANY_ROUNDS = 8
# Highest priority first; within a priority, the job that fell due first.
CLAIM_SORT = [("priority", DESCENDING), ("available_at", ASCENDING), ("_id", ASCENDING)]

INDEXES = [
    # Equality (state), then the sort, with available_at doubling as the
    # range that $$NOW bounds: a claim reads one index key however deep the queue.
    IndexModel(
        [("state", ASCENDING), ("priority", DESCENDING), ("available_at", ASCENDING),
         ("_id", ASCENDING)],
        name="claim",
    ),
    # Next delayed job due, oldest available job, counts by state.
    IndexModel([("state", ASCENDING), ("available_at", ASCENDING)], name="due"),
    # The reaper's scan for expired leases.
    IndexModel([("state", ASCENDING), ("locked_until", ASCENDING)], name="leases"),
    # One lease token locks one job, ever. A claim retried after a lost reply
    # reuses its token, so if the first try still runs on the server after the
    # retry won, the server refuses it instead of locking an orphan.
    IndexModel([("lease_token", ASCENDING)], name="lease_token", unique=True,
               partialFilterExpression={"state": LOCKED}),
]
FAILED_INDEXES = [IndexModel([("failed_at", DESCENDING)], name="failed_at")]

# Events that can make a job claimable. Everything else (locks, heartbeats,
# deletes) is filtered out on the server so idle consumers are not woken.
WAKE_PIPELINE: list[Document] = [
    {"$match": {"$or": [
        {"operationType": "insert"},
        {"operationType": "replace", "fullDocument.state": READY},
        {"operationType": "update", "updateDescription.updatedFields.state": READY},
    ]}},
    {"$project": {
        "operationType": 1,
        "wallTime": 1,
        "clusterTime": 1,
        "fullDocument.available_at": 1,
        "updateDescription.updatedFields.available_at": 1,
    }},
]


def new_token() -> str:
    return uuid.uuid4().hex


def millis(seconds: float) -> int:
    return round(seconds * 1000)


@dataclass(frozen=True)
class NewJob:
    payload: Mapping[str, Any]
    priority: int
    delay: float
    max_attempts: int


@dataclass(frozen=True)
class QueueCounts:
    available: int
    locked: int  # leases still running
    delayed: int
    failed: int
    expired: int = 0  # leases run out, not yet reaped: still "locked" in the document

    @property
    def total(self) -> int:
        return self.available + self.locked + self.expired + self.delayed + self.failed


@dataclass(frozen=True)
class ReapResult:
    requeued: int
    dead: list[Document]

    @property
    def expired(self) -> int:
        return self.requeued + len(self.dead)


class JobStore:
    """The queue's collection and its error queue, behind named operations."""

    def __init__(self, collection: Collection[Document], retry: RetryPolicy | None = None) -> None:
        if collection.write_concern.is_server_default:
            # An acknowledged w:1 write can roll back on failover and hand a
            # claimed job to a second consumer: majority is the safe default.
            collection = collection.with_options(write_concern=WriteConcern("majority"))
        self.jobs = collection
        self.failed = collection.database.get_collection(
            f"{collection.name}.failed", write_concern=collection.write_concern
        )
        self.retry = retry or RetryPolicy()
        client = collection.database.client
        # The primary's clock dates new jobs (see ServerClock); a new primary
        # after a failover is asked again rather than trusted to agree.
        self.clock = ServerClock(lambda: client.admin.command("hello"),
                                 server_id=lambda: client.primary)
        self._indexes_ready = False
        self._transactions: bool | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.jobs.name

    def _call(self, action: str, fn: Callable[[], Any]) -> Any:
        return self.retry.call(f"{action} on {self.jobs.full_name}", fn)

    # -- set-up ---------------------------------------------------------------

    def ensure_indexes(self) -> None:
        """Create the indexes once per store; harmless when they exist already."""
        if self._indexes_ready:
            return
        with self._lock:
            if not self._indexes_ready:
                self._call("create indexes", lambda: (
                    self.jobs.create_indexes(INDEXES),
                    self.failed.create_indexes(FAILED_INDEXES),
                ))
                self._indexes_ready = True

    def forget_indexes(self) -> None:
        """The collection was dropped: create the indexes again on next use."""
        self._indexes_ready = False

    def supports_transactions(self) -> bool:
        if self._transactions is None:
            hello = self._call("hello", lambda: self.jobs.database.client.admin.command("hello"))
            self._transactions = "setName" in hello or hello.get("msg") == "isdbgrid"
        return self._transactions

    # -- producing --------------------------------------------------------------

    def insert(self, new_jobs: Sequence[NewJob]) -> list[ObjectId]:
        """Write new jobs with plain inserts, dated by the server's clock; return their ids.

        Every document (ids and dates included) is made before the first try,
        so a retry sends the same documents again. A job that cannot be dated
        is refused before anything, indexes included, is written.
        """
        # The retry wrapper only when the clock has to ask the server (once a minute).
        now: datetime = self.clock.cached() or self._call("read the server clock", self.clock.now)
        documents = [new_document(job, now) for job in new_jobs]
        self.ensure_indexes()
        self.insert_documents(documents)
        return [doc["_id"] for doc in documents]

    def insert_documents(self, documents: Sequence[Document]) -> None:
        """Insert documents whose ``_id`` is set; one already there counts as written.

        A retry after a lost reply (or of an unordered batch an election cut
        short) meets the documents the earlier try wrote as duplicate ``_id``
        keys: those mean "already written". A duplicate on any other unique
        index (one the application added) is a real refusal and is raised.
        """
        if not documents:
            return

        def write() -> None:
            try:
                if len(documents) == 1:
                    self.jobs.insert_one(documents[0])
                else:
                    self.jobs.insert_many(documents, ordered=False)
            except DuplicateKeyError as exc:
                if not _is_duplicate_id(exc.details or {}):
                    raise
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                # Duplicates alone mean "already written"; with a write concern
                # error the batch is not known to be majority-committed yet.
                if (not errors or exc.details.get("writeConcernErrors")
                        or not all(_is_duplicate_id(error) for error in errors)):
                    raise

        self._call("enqueue", write)

    # -- claiming ---------------------------------------------------------------

    def claim(self, consumer_id: str, lease: float) -> Document | None:
        """Lock the first due job for ``consumer_id``; ``None`` when nothing is due."""
        token = new_token()
        update = _claim_pipeline(consumer_id, token, lease)
        tried = False

        def held() -> Document | None:
            return self.jobs.find_one({"state": LOCKED, "lease_token": token})

        def attempt() -> Document | None:
            nonlocal tried
            if tried and (job := held()) is not None:
                return job  # the failed try committed after all
            tried = True
            try:
                return self.jobs.find_one_and_update(
                    READY_AND_DUE, update, sort=CLAIM_SORT, return_document=ReturnDocument.AFTER
                )
            except DuplicateKeyError:
                # An earlier try of this claim committed meanwhile (the token is unique).
                return held()

        result: Document | None = self._call("claim", attempt)
        return result

    def claim_many(self, consumer_id: str, lease: float, limit: int) -> list[Document]:
        """Lock up to ``limit`` due jobs in three round trips (two more per round lost to a race)."""
        token = new_token()
        # Each job gets its own token (the token index is unique): this claim's
        # token, a colon, and the job's id; found again by that prefix.
        per_job = {"$concat": [f"{token}:", {"$toString": "$_id"}]}
        update = _claim_pipeline(consumer_id, per_job, lease)
        mine = {"state": LOCKED, "lease_token": {"$regex": f"^{token}:"}}
        tried = False

        def attempt() -> list[Document]:
            nonlocal tried
            if tried:
                # Only a retry can find jobs under this fresh token: an earlier try committed.
                held = list(self.jobs.find(mine, sort=CLAIM_SORT))
                if held:
                    return held
            tried = True
            locked = 0
            for _ in range(CLAIM_MANY_ROUNDS):
                candidates = [
                    doc["_id"]
                    for doc in self.jobs.find(READY_AND_DUE, {"_id": 1}, sort=CLAIM_SORT,
                                              limit=limit - locked)
                ]
                if not candidates:
                    break
                # Another consumer may take some candidates first; the filter
                # re-checks each, so a job is locked by exactly one claim.
                won = self.jobs.update_many(
                    {"_id": {"$in": candidates}, **READY_AND_DUE}, update).modified_count
                locked += won
                if won == len(candidates):
                    break  # the claim is full, or every due job was a candidate
                # Lost some to a concurrent claim (they all read the same head of
                # the queue): a short claim would tell the caller the queue is
                # drained, and a worker would then wait for a wake-up a backlog
                # never sends. Take the next ones instead.
            if not locked:
                return []
            return list(self.jobs.find(mine, sort=CLAIM_SORT))

        result: list[Document] = self._call("claim many", attempt)
        return result

    # -- settling a claim ---------------------------------------------------------

    def complete(self, job_id: ObjectId, token: str) -> bool:
        return self._write_with_lease(
            "complete",
            lambda: self.jobs.delete_one(_held(job_id, token)).deleted_count,
        )

    def complete_many(self, held: Sequence[tuple[ObjectId, str]]) -> int:
        """Delete every listed job still held by its token; return how many went."""
        if not held:
            return 0
        query = {"$or": [_held(job_id, token) for job_id, token in held]}
        deleted: int = self._call("complete many", lambda: self.jobs.delete_many(query).deleted_count)
        return deleted

    def requeue(
        self, job_id: ObjectId, token: str, *, delay: float, error: str | None, count_attempt: bool
    ) -> bool:
        """Hand a held job back: ready after ``delay``; ``count_attempt=False`` undoes the claim's count."""
        changes: Document = {"state": READY, "available_at": {"$add": [NOW, millis(delay)]}}
        if error is not None:
            changes["last_error"] = {"$literal": error}
        if not count_attempt:
            changes["attempts"] = {"$max": [0, {"$subtract": ["$attempts", 1]}]}
        pipeline: list[Document] = [{"$set": changes}, {"$unset": LOCK_FIELDS}]
        return self._write_with_lease(
            "requeue",
            lambda: self.jobs.update_one(_held(job_id, token), pipeline).modified_count,
        )

    def extend(self, job_id: ObjectId, token: str, lease: float, progress: int | None) -> datetime | None:
        """Push the lease ``lease`` seconds past now; return the new expiry, or None if lost."""
        changes: Document = {"locked_until": {"$add": [NOW, millis(lease)]}}
        if progress is not None:
            changes["progress"] = {"$literal": progress}
        doc = self._call("extend lease", lambda: self.jobs.find_one_and_update(
            _held(job_id, token), [{"$set": changes}],
            projection={"locked_until": 1}, return_document=ReturnDocument.AFTER,
        ))
        return None if doc is None else doc["locked_until"]

    def extend_many(self, held: Sequence[tuple[ObjectId, str]], lease: float) -> set[ObjectId]:
        """Heartbeat: extend every listed lease; return the ids still held."""
        if not held:
            return set()
        query = {"$or": [_held(job_id, token) for job_id, token in held]}
        pipeline = [{"$set": {"locked_until": {"$add": [NOW, millis(lease)]}}}]

        def beat() -> set[ObjectId]:
            self.jobs.update_many(query, pipeline)
            return {doc["_id"] for doc in self.jobs.find(query, {"_id": 1})}

        result: set[ObjectId] = self._call("heartbeat", beat)
        return result

    def bury(self, job_id: ObjectId, token: str, error: str | None) -> bool:
        """Move a held job to the error queue."""
        changes: Document = {"state": FAILED, "failed_at": NOW}
        if error is not None:
            changes["last_error"] = {"$literal": error}
        return self._move(self.jobs, self.failed, _held(job_id, token), changes, "bury") is not None

    def _write_with_lease(self, action: str, write: Callable[[], int]) -> bool:
        """Run a write filtered by a lease token; True if it took effect.

        A miss on the first try means the lease is gone. A miss on a retry
        means the lost try already took effect: the token is single-use.
        """
        tried = False

        def attempt() -> bool:
            nonlocal tried
            retrying, tried = tried, True
            return bool(write()) or retrying

        result: bool = self._call(action, attempt)
        return result

    # -- the reaper -----------------------------------------------------------------

    def reap(self, limit: int = 1000) -> ReapResult:
        """Requeue expired leases with attempts left; bury the rest. Safe to run anywhere, often."""
        expired_note = {"$concat": ["lease expired while held by ",
                                    {"$ifNull": ["$consumer_id", "?"]}]}
        retryable = {"state": LOCKED, "$expr": {"$and": [
            LEASE_EXPIRED, {"$lt": ["$attempts", "$max_attempts"]}]}}
        requeue: list[Document] = [
            {"$set": {"state": READY, "available_at": NOW, "last_error": expired_note}},
            {"$unset": LOCK_FIELDS},
        ]
        requeued: int = self._call(
            "reap", lambda: self.jobs.update_many(retryable, requeue).modified_count
        )
        exhausted = {"state": LOCKED, "$expr": {"$and": [
            LEASE_EXPIRED, {"$gte": ["$attempts", "$max_attempts"]}]}}
        candidates = self._call("reap", lambda: list(
            self.jobs.find(exhausted, {"_id": 1, "lease_token": 1}, limit=limit)))
        dead = []
        for doc in candidates:
            still_expired = {**_held(doc["_id"], doc["lease_token"]), "$expr": LEASE_EXPIRED}
            changes = {"state": FAILED, "failed_at": NOW, "last_error": expired_note}
            moved = self._move(self.jobs, self.failed, still_expired, changes, "reap")
            if moved:
                dead.append(moved)
        return ReapResult(requeued=requeued, dead=dead)

    # -- the error queue ------------------------------------------------------------

    def retry_failed(self, job_id: ObjectId | None = None) -> int:
        """Move one dead job (or all) back to the queue with a fresh set of attempts."""
        if job_id is not None:
            ids = [job_id]
        else:
            ids = self._call("list failed", lambda: self.failed.distinct("_id"))
        changes = {"state": READY, "attempts": 0, "available_at": NOW}
        moved = 0
        for oid in ids:
            if self._move(self.failed, self.jobs, {"_id": oid}, changes, "retry failed",
                          drop=["failed_at", *LOCK_FIELDS]):
                moved += 1
        return moved

    def purge_failed(self, job_id: ObjectId | None = None) -> int:
        query = {} if job_id is None else {"_id": job_id}
        purged: int = self._call("purge failed", lambda: self.failed.delete_many(query).deleted_count)
        return purged

    def list_failed(self, limit: int = 100) -> list[Document]:
        result: list[Document] = self._call("list failed", lambda: list(
            self.failed.find({}, sort=[("failed_at", DESCENDING)], limit=limit)))
        return result

    def _move(
        self,
        source: Collection[Document],
        target: Collection[Document],
        query: Document,
        changes: Document,
        action: str,
        drop: Sequence[str] = LOCK_FIELDS,
    ) -> Document | None:
        """Move the document matching ``query`` to ``target``, same ``_id``; None if none matched."""
        def copy_pipeline(doc: Document) -> list[Document]:
            return [{"$replaceWith": {"$literal": doc}}, {"$set": changes}, {"$unset": list(drop)}]

        if not self.supports_transactions():
            return self._move_without_transaction(source, target, query, copy_pipeline, action)

        def in_transaction(session: ClientSession) -> Document | None:
            doc = source.find_one_and_delete(query, session=session)
            if doc is not None:
                target.update_one({"_id": doc["_id"]}, copy_pipeline(doc), upsert=True,
                                  session=session)
            return doc

        def run() -> Document | None:
            with source.database.client.start_session() as session:
                moved: Document | None = session.with_transaction(in_transaction)
                return moved

        result: Document | None = self._call(action, run)
        return result

    def _move_without_transaction(
        self,
        source: Collection[Document],
        target: Collection[Document],
        query: Document,
        copy_pipeline: Callable[[Document], list[Document]],
        action: str,
    ) -> Document | None:
        # Standalone servers have no transactions: copy first, then delete; if
        # the source changed meanwhile, take the copy back.
        def run() -> Document | None:
            doc = source.find_one(query)
            if doc is None:
                return None
            marker = new_token()
            pipeline = [*copy_pipeline(doc), {"$set": {"_move": marker}}]
            target.update_one({"_id": doc["_id"]}, pipeline, upsert=True)
            if source.delete_one(query).deleted_count == 0:
                target.delete_one({"_id": doc["_id"], "_move": marker})
                return None
            target.update_one({"_id": doc["_id"]}, {"$unset": {"_move": ""}})
            return doc

        result: Document | None = self._call(action, run)
        return result

    # -- looking -------------------------------------------------------------------

    def counts(self) -> QueueCounts:
        def count() -> QueueCounts:
            # A literal date (the server's own clock) keeps each count a pure
            # index count; a $expr would fetch every ready document to re-check it.
            now = self.jobs.database.command("hello")["localTime"]
            return QueueCounts(
                available=self.jobs.count_documents({"state": READY, "available_at": {"$lte": now}}),
                # Split at the same literal date, so an expired lease the reaper has
                # not handed on yet is not shown as held (issue 12, item 9).
                locked=self.jobs.count_documents({"state": LOCKED, "locked_until": {"$gte": now}}),
                expired=self.jobs.count_documents({"state": LOCKED, "locked_until": {"$lt": now}}),
                delayed=self.jobs.count_documents({"state": READY, "available_at": {"$gt": now}}),
                failed=self.failed.count_documents({}),
            )

        result: QueueCounts = self._call("count", count)
        return result

    def size(self) -> int:
        size: int = self._call("size", lambda: self.jobs.count_documents({}))
        return size

    def oldest_available_age(self) -> float:
        """Seconds the longest-waiting due job has been due (server clock); 0 when none."""
        pipeline: list[Document] = [
            {"$match": READY_AND_DUE},
            {"$sort": {"state": 1, "available_at": 1}},
            {"$limit": 1},
            {"$project": {"age": {"$subtract": [NOW, "$available_at"]}}},
        ]
        docs = self._call("oldest available", lambda: list(self.jobs.aggregate(pipeline)))
        return docs[0]["age"] / 1000.0 if docs else 0.0

    def next_due_in(self) -> float | None:
        """Seconds until the earliest delayed job falls due (server clock); None when none."""
        pipeline: list[Document] = [
            {"$match": READY_NOT_DUE},
            {"$sort": {"state": 1, "available_at": 1}},
            {"$limit": 1},
            {"$project": {"due_in": {"$subtract": ["$available_at", NOW]}}},
        ]
        docs = self._call("next due", lambda: list(self.jobs.aggregate(pipeline)))
        return max(0.0, docs[0]["due_in"] / 1000.0) if docs else None

    def present(self, ids: Sequence[ObjectId]) -> set[ObjectId]:
        """Which of these jobs are still in the queue."""
        found: list[Document] = self._call("find", lambda: list(
            self.jobs.find({"_id": {"$in": list(ids)}}, {"_id": 1})))
        return {doc["_id"] for doc in found}

    def get(self, job_id: ObjectId) -> Document | None:
        doc: Document | None = self._call("get", lambda: self.jobs.find_one({"_id": job_id}))
        return doc

    def clear(self) -> None:
        self._call("clear", lambda: (self.jobs.delete_many({}), self.failed.delete_many({})))

    # -- change streams --------------------------------------------------------------

    def watch(self, resume_after: Mapping[str, Any] | None, max_await: float) -> ChangeStream[Document]:
        """Open the wake-up stream; driver errors are left to the watcher, which resumes."""
        return self.jobs.watch(
            WAKE_PIPELINE,
            resume_after=resume_after,
            max_await_time_ms=millis(max_await),
        )


def event_due_in(event: Mapping[str, Any]) -> float:
    """Seconds from an event's commit until the job it announces falls due (0 if due).

    Both dates are the server's, so the consumer's clock plays no part.
    """
    document = event.get("fullDocument") or event.get("updateDescription", {}).get(
        "updatedFields", {}
    )
    due = document.get("available_at") if isinstance(document, Mapping) else None
    committed = event.get("wallTime")
    if committed is None and event.get("clusterTime") is not None:
        # Servers before 6.0 have no wallTime; clusterTime has whole seconds.
        committed = datetime.fromtimestamp(event["clusterTime"].time, timezone.utc)
    if not isinstance(due, datetime) or not isinstance(committed, datetime):
        return 0.0
    return max(0.0, (_utc(due) - _utc(committed)).total_seconds())


def _utc(moment: datetime) -> datetime:
    # pymongo decodes naive UTC datetimes unless the client is tz_aware.
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def is_change_stream_unsupported(exc: BaseException) -> bool:
    """A standalone server (or a storage engine without an oplog) cannot serve streams."""
    # 40573: "$changeStream stage is only supported on replica sets".
    return isinstance(exc, OperationFailure) and exc.code in {40573, 40324}


def _held(job_id: ObjectId, token: str) -> Document:
    return {"_id": job_id, "lease_token": token, "state": LOCKED}


def new_document(job: NewJob, now: datetime) -> Document:
    """A new job's document; ``now`` is the server's time (``ServerClock.now()``).

    The fields and their order are those the enqueue upsert wrote before
    enqueue became a plain insert; claims, indexes and counts rely on them.
    """
    try:
        available_at = now + timedelta(milliseconds=millis(job.delay))
    except OverflowError:
        # Past year 9999: MongoDB would store it, but pymongo cannot decode
        # it, so every claim that met the job would fail. Refused, unwritten.
        raise InvalidJob(f"delay of {job.delay:g} seconds puts the job past the year 9999") from None
    return {
        "_id": ObjectId(),
        "payload": dict(job.payload),
        "priority": job.priority,
        "state": READY,
        "attempts": 0,
        "max_attempts": job.max_attempts,
        "enqueued_at": now,
        "available_at": available_at,
    }


def _is_duplicate_id(error: Mapping[str, Any]) -> bool:
    """A write error that says this ``_id`` is taken: the document is already in."""
    if error.get("code") != DUPLICATE_KEY:
        return False
    # The server names the index that refused (keyPattern); a reply without
    # the name is taken as the _id's, as the enqueue always did.
    pattern = error.get("keyPattern")
    return pattern is None or list(pattern) == ["_id"]


def _claim_pipeline(consumer_id: str, token: str | Document, lease: float) -> list[Document]:
    return [{"$set": {
        "state": LOCKED,
        "consumer_id": {"$literal": consumer_id},
        "lease_token": token,
        "attempts": {"$add": ["$attempts", 1]},
        "locked_at": NOW,
        "locked_until": {"$add": [NOW, millis(lease)]},
    }}]
