"""Every MongoDB query and index the queue uses, in one place.

A job is one document in the queue's collection::

    _id           ObjectId, made by the producer
    payload       the caller's mapping
    priority      int; higher is claimed first
    state         "ready", "locked", or, kept after it finished (``keep_completed``),
                  "completed" or "cancelled" (a ready job whose available_at
                  is in the future is "delayed")
    attempts      claims so far; max_attempts: deliveries allowed
    enqueued_at, available_at, locked_at, locked_until   server-clock dates
    consumer_id, lease_token   who holds the lease; the token names one claim
    last_error, progress
    settled_lease the token of the claim that last requeued, buried or completed it
    lease_ms      the job's own lease (ms), only when given at put; else the consumer's
    tags          list of short strings, only when given
    key           the unique key, only when given: one active (ready, delayed or
                  locked) job per key, enforced by the partial unique index ``key_active``
    finished_at, result   only on kept finished jobs
    cancel_requested   true once ``cancel`` asked for a held job; its holder's
                  next error/release (or the reaper, once the lease runs out)
                  ends it "cancelled" instead of handing it back

One document that is no job shares the collection: the control document
(``_id`` ``CONTROL_ID``, state ``"control"``) that says whether the queue is
paused. No job filter matches its state, and the one change stream each queue
object opens already carries its updates (see ``WAKE_PIPELINE``).

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
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from bson import ObjectId, Timestamp
from pymongo import ASCENDING, DESCENDING, IndexModel, ReadPreference, ReturnDocument
from pymongo.change_stream import ChangeStream
from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from streamqueue.errors import ConfigurationError, InvalidJob, QueueUnavailable, StorageError
from streamqueue.plan import Detach, Op, Plan, Sleep, Transaction, call, listed, once
from streamqueue.retry import DUPLICATE_KEY, RetryPolicy, is_transient, is_transient_bounded
from streamqueue.servertime import ServerClock
from streamqueue.storage.inflight import ClaimsInFlight
from streamqueue.storage.runner import run
from streamqueue.storage.spread import ClaimSpread
from streamqueue.tries import BoundedTries, time_limit

T = TypeVar("T")

log = logging.getLogger(__name__)

Document = dict[str, Any]

READY = "ready"
LOCKED = "locked"
FAILED = "failed"
COMPLETED = "completed"
CANCELLED = "cancelled"
FINISHED_STATES = (COMPLETED, CANCELLED)
# The queue's pause switch: a string _id no job (ObjectId) can take.
CONTROL_ID = "streamqueue.control"
CONTROL = "control"
# A cancel chasing a job between ready and locked (claims, releases) gives up after this many rounds.
CANCEL_ROUNDS = 8
NOT_CANCELLING: Document = {"cancel_requested": {"$ne": True}}

LOCK_FIELDS = ["lease_token", "consumer_id", "locked_at", "locked_until"]
# The token of the claim that last settled the job (requeue, bury): a settle
# retried after a lost reply reads it to learn whether its first try applied.
SETTLED_BY = "settled_lease"
# A job's own lease in ms, only when its producer gave one (put(lease=)).
LEASE_MS = "lease_ms"
# A two-step move (no transactions) marks its source first; see _move_in_steps.
MOVE_FIELDS = ["_move", "_move_at"]
# A marked move whose mover went quiet this long is finished by the next mover.
STALE_MOVE_MS = 60_000
# How far before its first try an unconfirmed enqueue looks for its own inserts.
ENQUEUE_LOOKBACK = 10
# How long it waits for the change stream to show them.
ENQUEUE_CHECK_TIMEOUT = 30.0
# A job's waiter checks its deadline at least this often (ms) while no change comes.
JOB_WAIT_SLICE_MS = 200
# IndexOptionsConflict, IndexKeySpecsConflict: a racing creator made it differently.
INDEX_CONFLICT_CODES = {85, 86}

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
# Only kept finished jobs and tagged jobs have these fields: the partial
# indexes below hold nothing while unused, and a write only checks their filter.
HAS_FINISHED: Document = {"finished_at": {"$exists": True}}
HAS_TAGS: Document = {"tags": {"$exists": True}}
HAS_KEY: Document = {"key": {"$exists": True}}
# The states in which a job holds its key. ($in in a partial filter needs MongoDB 6.0.)
ACTIVE_KEY: Document = {**HAS_KEY, "state": {"$in": [READY, LOCKED]}}
# How often a keyed put goes round "duplicate, but the holder finished before
# we read it": each round means another job with that key completed meanwhile.
KEY_ROUNDS = 8
LISTING_INDEXES = [
    # jobs(state="completed"|"cancelled"), newest first.
    IndexModel([("state", ASCENDING), ("_id", DESCENDING)], name="finished",
               partialFilterExpression=HAS_FINISHED),
    # jobs(tag=...), newest first.
    IndexModel([("tags", ASCENDING), ("_id", DESCENDING)], name="tags",
               partialFilterExpression=HAS_TAGS),
]
KEY_INDEXES = [
    # jobs(key=...), newest first, finished jobs included.
    IndexModel([("key", ASCENDING), ("_id", DESCENDING)], name="key",
               partialFilterExpression=HAS_KEY),
    # One active job per key: the server refuses a second insert, so fifty
    # racing producers make one job, which no read-then-write could promise.
    # A job leaves the index when it completes, is cancelled or moves to the
    # error queue, and its key is free again.
    IndexModel([("key", ASCENDING)], name="key_active", unique=True,
               partialFilterExpression=ACTIVE_KEY),
]
TTL_INDEX = "finished_ttl"
FAILED_INDEXES = [IndexModel([("failed_at", DESCENDING)], name="failed_at")]

# Events that can make a job claimable. Everything else (locks, heartbeats,
# deletes) is filtered out on the server so idle consumers are not woken.
# Rare writes a consumer must hear of: pause/resume, and a cancel request for a
# held job (its holder tells the running handler).
CONTROL_EVENTS: list[Document] = [
    {"operationType": "update", "documentKey._id": CONTROL_ID},
    {"operationType": "update", "updateDescription.updatedFields.cancel_requested": True},
]
WAKE_FIELDS: Document = {
    "operationType": 1,
    "wallTime": 1,
    "clusterTime": 1,
    "documentKey._id": 1,
    "fullDocument.available_at": 1,
    "fullDocument.paused": 1,
    "updateDescription.updatedFields.available_at": 1,
    "updateDescription.updatedFields.paused": 1,
    "updateDescription.updatedFields.cancel_requested": 1,
}
WAKE_PIPELINE: list[Document] = [
    {"$match": {"$or": [
        {"operationType": "insert"},
        {"operationType": "replace", "fullDocument.state": READY},
        {"operationType": "update", "updateDescription.updatedFields.state": READY},
        *CONTROL_EVENTS,
    ]}},
    {"$project": WAKE_FIELDS},
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
    tags: tuple[str, ...] = ()
    key: str | None = None
    lease: float | None = None  # seconds; None: the claiming consumer's


@dataclass(frozen=True)
class QueueCounts:
    available: int
    locked: int  # leases still running
    delayed: int
    failed: int
    expired: int = 0  # leases run out, not yet reaped: still "locked" in the document
    completed: int = 0  # kept finished jobs (keep_completed > 0)
    cancelled: int = 0

    @property
    def total(self) -> int:
        return (self.available + self.locked + self.expired + self.delayed + self.failed
                + self.completed + self.cancelled)


@dataclass(frozen=True)
class ClaimedBatch:
    """A batch claim's jobs. Short of its limit, it means the queue had no more due,
    unless ``raced``: concurrent claims kept taking the jobs it read, so more may be."""

    docs: list[Document]
    raced: bool = False


@dataclass(frozen=True)
class ReapResult:
    requeued: int
    dead: list[Document]
    cancelled: int = 0  # expired leases of jobs whose cancel was requested

    @property
    def expired(self) -> int:
        return self.requeued + len(self.dead) + self.cancelled


class StorePlans:
    """Every storage operation as a plan (``streamqueue.plan``), defined once.

    ``JobStore`` runs them with pymongo's sync driver, ``AsyncJobStore``
    (``streamqueue.storage.aio``) with its asyncio driver: the two share every
    filter, pipeline, sort, index, retry and reconciliation below. ``collection``
    is a ``Collection`` or an ``AsyncCollection``: their option methods
    (``with_options``, ``get_collection``) are the same and do no I/O.
    """

    def __init__(self, collection: Any, retry: RetryPolicy | None, *, keep_completed: float,
                 primary: Callable[[], object], hello: Callable[[], Mapping[str, Any]]) -> None:
        if collection.write_concern.is_server_default:
            # An acknowledged w:1 write can roll back on failover and hand a
            # claimed job to a second consumer: majority is the safe default.
            collection = collection.with_options(write_concern=WriteConcern("majority"))
        # Every read here decides something (what a batch claim locked, whether
        # a retried write applied): it goes to the primary and sees the
        # primary's own writes, also those whose acknowledgement was lost,
        # whatever the caller's client prefers. (A majority read would hide a
        # claim's lock that a new primary has not yet majority-committed, and
        # the retry would orphan it.)
        reads: dict[str, Any] = {"read_preference": ReadPreference.PRIMARY,
                                 "read_concern": ReadConcern("local")}
        collection = collection.with_options(**reads)
        self.jobs: Any = collection
        self.failed: Any = collection.database.get_collection(
            f"{collection.name}.failed", write_concern=collection.write_concern, **reads)
        # A change stream takes no explicit read concern (it reads majority-committed
        # changes by itself) and refuses "local".
        self.streams: Any = collection.with_options(read_concern=ReadConcern())
        self.retry = retry or RetryPolicy()
        self.in_flight = ClaimsInFlight()
        self.spread = ClaimSpread()
        self.client: Any = collection.database.client
        self._socket_timeout: float | None = self.client.options.pool_options.socket_timeout
        self._primary = primary
        # The primary's clock dates new jobs (see ServerClock); a new primary
        # after a failover is asked again rather than trusted to agree.
        self.clock = ServerClock(hello, server_id=primary)
        self.indexes_ready = False
        # Seconds a completed job stays readable; 0 deletes it on completion.
        self.keep_completed = keep_completed
        self._transactions: bool | None = None

    def _retry(self, action: str, attempt: Callable[[], Plan[T]],
               transient: Callable[[BaseException], bool] = is_transient) -> Plan[T]:
        return self.retry.plan(f"{action} on {self.jobs.full_name}", attempt, transient)

    def _retry_op(self, action: str, op: Op) -> Plan[Any]:
        return self._retry(action, lambda: once(op))

    # -- set-up ---------------------------------------------------------------

    def ensure_indexes(self) -> Plan[None]:
        """Create the indexes once per store; harmless when they exist already."""
        if self.indexes_ready:
            return
        yield from self._retry("create indexes", self._create_indexes)
        if self.keep_completed > 0:
            yield from self._retry("create the TTL index", self._ensure_ttl)
        self.indexes_ready = True

    def _create_indexes(self) -> Plan[None]:
        yield call(self.jobs, "create_indexes", INDEXES + LISTING_INDEXES + KEY_INDEXES)
        yield call(self.failed, "create_indexes", FAILED_INDEXES)

    def _ensure_ttl(self) -> Plan[None]:
        """The TTL index that removes kept finished jobs; the longest retention asked for wins.

        A collection has one ``expireAfterSeconds`` for the index, so Queue
        objects that disagree share the largest: each keeps its jobs at least
        as long as it asked. Lowering it is an operator's ``collMod``.
        """
        wanted = max(1, math.ceil(self.keep_completed))
        current = (yield call(self.jobs, "index_information")).get(TTL_INDEX)
        if current is None:
            try:
                yield call(self.jobs, "create_index", [("finished_at", ASCENDING)],
                           name=TTL_INDEX, expireAfterSeconds=wanted,
                           partialFilterExpression=HAS_FINISHED)
                return
            except OperationFailure as exc:
                if exc.code not in INDEX_CONFLICT_CODES:
                    raise
                current = (yield call(self.jobs, "index_information")).get(TTL_INDEX) or {}
        kept = int(current.get("expireAfterSeconds", 0))
        if kept < wanted:
            log.info("raising the retention of finished jobs on %s from %ds to %ds",
                     self.jobs.full_name, kept, wanted)
            yield call(self.jobs.database, "command", "collMod", self.jobs.name, index={
                "name": TTL_INDEX, "expireAfterSeconds": wanted})
        elif kept > wanted:
            log.warning("%s keeps finished jobs %ds (asked by another queue), more than this "
                        "queue's keep_completed=%gs: the longest retention wins",
                        self.jobs.full_name, kept, self.keep_completed)

    def retention(self) -> Plan[float]:
        """Seconds the collection's TTL index keeps finished jobs; 0 when it has none.

        For tools (the CLI) that act on a queue without knowing the
        ``keep_completed`` its application uses.
        """
        info = yield from self._retry_op("read indexes", call(self.jobs, "index_information"))
        return float(info.get(TTL_INDEX, {}).get("expireAfterSeconds", 0))

    def supports_transactions(self) -> Plan[bool]:
        if self._transactions is None:
            hello = yield from self._retry_op("hello", call(self.client.admin, "command", "hello"))
            self._transactions = "setName" in hello or hello.get("msg") == "isdbgrid"
        return self._transactions

    def now(self) -> Plan[datetime]:
        """The server's clock (``ServerClock``), asking the server only when the estimate is stale."""
        cached = self.clock.cached()
        if cached is not None:
            return cached
        return (yield from self._retry("read the server clock", self._ask_clock))

    def _ask_clock(self) -> Plan[datetime]:
        server, sent = self.clock.begin_fetch()
        reply = yield call(self.client.admin, "command", "hello")
        return self.clock.estimate(self.clock.accept(reply, server, sent))

    # -- producing --------------------------------------------------------------

    def insert(self, new_jobs: Sequence[NewJob]) -> Plan[list[ObjectId]]:
        """Write new jobs with plain inserts, dated by the server's clock; return their ids.

        Every document (ids and dates included) is made before the first try,
        so a retry sends the same documents again. A job that cannot be dated
        is refused before anything, indexes included, is written.
        """
        now = yield from self.now()
        documents = [new_document(job, now) for job in new_jobs]
        yield from self.ensure_indexes()
        yield from self.insert_documents(documents)
        return [doc["_id"] for doc in documents]

    def insert_keyed(self, job: NewJob) -> Plan[tuple[ObjectId, bool]]:
        """Write a job with a unique key; return (its id, True), or the active holder's (id, False).

        The unique index decides, not a read. After a refusal the holder is
        read; if it finished in between (the key is free), the insert is
        tried again with the same document, which was never written.
        """
        assert job.key is not None
        document = new_document(job, (yield from self.now()))
        yield from self.ensure_indexes()
        holder_query = {"key": job.key, **ACTIVE_KEY}
        for _ in range(KEY_ROUNDS):
            try:
                yield from self.insert_documents([document])
                return document["_id"], True
            except StorageError as exc:
                if not _is_duplicate_key(exc.__cause__):
                    raise
            holder = yield from self._retry_op("find a job by key", call(
                self.jobs, "find_one", holder_query, {"_id": 1}, hint="key_active"))
            if holder is not None:
                return holder["_id"], False
        raise QueueUnavailable(f"enqueue on {self.jobs.full_name}: the key {job.key!r} was "
                               f"taken and freed {KEY_ROUNDS} times in a row")

    def insert_in_transaction(self, new_jobs: Sequence[NewJob],
                              session: Any) -> Plan[list[tuple[ObjectId, bool]]]:
        """Write jobs inside the caller's transaction: one try, no reconciliation.

        The caller's ``with_transaction`` retries the whole transaction, so a
        retry here would repeat writes the transaction already holds, and the
        enqueue check (``_unwritten``) cannot see uncommitted writes. Errors
        are the driver's own, unretried and untranslated, so that its labels
        (TransientTransactionError) reach the caller's retry loop. A keyed job
        reads its key first: inside the transaction's snapshot a read-then-insert
        is safe, because a holder committed after the snapshot makes the insert
        a write conflict, which the caller's retry answers by reading again.
        """
        now = yield from self.now()
        yield from self.ensure_indexes()  # outside the transaction: DDL cannot run in one
        written: list[tuple[ObjectId, bool]] = []
        for job in new_jobs:
            if job.key is not None:
                holder = yield call(self.jobs, "find_one", {"key": job.key, **ACTIVE_KEY},
                                    {"_id": 1}, session=session)
                if holder is not None:
                    written.append((holder["_id"], False))
                    continue
            document = new_document(job, now)
            yield call(self.jobs, "insert_one", document, session=session)
            written.append((document["_id"], True))
        return written

    def insert_documents(self, documents: Sequence[Document]) -> Plan[None]:
        """Insert documents whose ``_id`` is set, exactly once however many tries it takes.

        A try whose reply was lost may have written some documents, and a
        consumer may have run and deleted them before the retry. So a retry
        first finds out which documents were written (``_unwritten``) and
        sends only the others; a duplicate ``_id`` also means "already
        written". A duplicate on any other unique index (one the application
        added) is a real refusal and is raised.
        """
        if not documents:
            return
        since = yield from self._history_start()
        tries = self._tries(len(documents))
        pending = list(documents)

        def write() -> Plan[None]:
            nonlocal pending
            if (yield from _retrying(tries)):
                pending = yield from self._unwritten(pending, since)
                if not pending:
                    return
            with tries.bounded():
                yield from _insert_ignoring_duplicate_ids(self.jobs, pending)

        yield from self._retry("enqueue", write, transient=is_transient_bounded)

    def _history_start(self) -> Plan[Timestamp]:
        """A cluster time safely before any try of a write starting now."""
        now = yield from self.now()
        # The cluster time's seconds never lag the primary's wall clock, which
        # ServerClock never runs ahead of; the margin covers another member's clock.
        return Timestamp(max(1, int(now.timestamp()) - ENQUEUE_LOOKBACK), 0)

    def _unwritten(self, documents: Sequence[Document], since: Timestamp) -> Plan[list[Document]]:
        """The documents no earlier try wrote: neither stored now nor inserted since ``since``."""
        ids = [doc["_id"] for doc in documents]
        # Majority: a copy a failover may still roll back does not count as written.
        majority = ReadConcern("majority")
        stored: set[ObjectId] = set()
        for collection in (self.jobs, self.failed):
            found = yield listed(collection.with_options(read_concern=majority), "find",
                                 {"_id": {"$in": ids}}, {"_id": 1})
            stored |= {doc["_id"] for doc in found}
        missing = [oid for oid in ids if oid not in stored]
        if missing:
            # Gone is not the same as never written: a consumer may have
            # completed them already. The oplog remembers the inserts.
            stored |= yield from self._inserted_since(since, missing)
        return [doc for doc in documents if doc["_id"] not in stored]

    def _inserted_since(self, since: Timestamp, ids: Sequence[ObjectId]) -> Plan[set[ObjectId]]:
        """Which of ``ids`` were inserted (majority-committed) since ``since``, by the change stream.

        A marker inserted after the stream opens ends the search: every
        insert committed before it has been read once the marker arrives.
        """
        marker = ObjectId()
        pipeline: list[Document] = [
            {"$match": {"operationType": "insert",
                        "documentKey._id": {"$in": [*ids, marker]}}},
            {"$project": {"documentKey": 1}},
        ]
        found: set[ObjectId] = set()
        deadline = time.monotonic() + ENQUEUE_CHECK_TIMEOUT
        try:
            stream = yield call(self.streams, "watch", pipeline, start_at_operation_time=since,
                                max_await_time_ms=500)
            try:
                yield call(self.jobs, "insert_one", {"_id": marker, "state": "enqueue-check"})
                yield call(self.jobs, "delete_one", {"_id": marker})
                while time.monotonic() < deadline:
                    event = yield call(stream, "try_next")
                    if event is None:
                        continue
                    if event["documentKey"]["_id"] == marker:
                        return found
                    found.add(event["documentKey"]["_id"])
            finally:
                yield from self.close_stream(stream)
        except OperationFailure as exc:
            if not is_change_stream_unsupported(exc):
                raise
            log.warning("enqueue on %s: a try failed and, without change streams, a job it wrote "
                        "and a consumer already finished cannot be told from one never written; "
                        "writing it again", self.jobs.full_name)
            return found
        raise QueueUnavailable(f"enqueue on {self.jobs.full_name}: could not confirm within "
                               f"{ENQUEUE_CHECK_TIMEOUT:.0f}s whether a failed try wrote its jobs")

    def _tries(self, documents: int = 1) -> BoundedTries:
        return BoundedTries(time_limit(self._socket_timeout, documents), self._primary)

    # -- claiming ---------------------------------------------------------------

    def claim(self, consumer_id: str, lease: float) -> Plan[Document | None]:
        """Lock the first due job for ``consumer_id``; ``None`` when nothing is due.

        Every try carries the same token, and each is bounded on the server
        (``BoundedTries``): a retry first looks for what an earlier try
        locked, and no earlier try can commit after the retry runs.
        """
        token = new_token()
        update = _claim_pipeline(consumer_id, token, lease)
        tries = self._tries()
        mine = {"state": LOCKED, "lease_token": token}
        held = call(self.jobs, "find_one", mine)

        def attempt() -> Plan[Document | None]:
            if (yield from _retrying(tries)) and (job := (yield held)) is not None:
                return job  # type: ignore[no-any-return]  # the failed try committed after all
            with tries.bounded():
                try:
                    claimed: Document | None = yield call(
                        self.jobs, "find_one_and_update", READY_AND_DUE, update,
                        sort=CLAIM_SORT, return_document=ReturnDocument.AFTER)
                except DuplicateKeyError:
                    # An earlier try of this claim committed meanwhile (the token is unique).
                    claimed = yield held
                return claimed

        return (yield from self._claimed_or_released("claim", attempt, mine, tries))

    def release_claim(self, job_id: ObjectId, token: str) -> Plan[bool]:
        """Undo a claim nobody will use (its caller went away): ready again, attempt uncounted."""
        return (yield from self.requeue(job_id, token, delay=0.0, error=None, count_attempt=False))

    def claim_many(self, consumer_id: str, lease: float, limit: int) -> Plan[ClaimedBatch]:
        """Lock up to ``limit`` due jobs in three round trips (two more per round lost to a race)."""
        token = new_token()
        # Each job gets its own token (the token index is unique): this claim's
        # token, a colon, and the job's id; found again by that prefix.
        per_job = {"$concat": [f"{token}:", {"$toString": "$_id"}]}
        update = _claim_pipeline(consumer_id, per_job, lease)
        query = {"state": LOCKED, "lease_token": {"$regex": f"^{token}:"}}
        mine = listed(self.jobs, "find", query, sort=CLAIM_SORT)
        tries = self._tries(limit)

        def attempt() -> Plan[ClaimedBatch]:
            # Only a retry can find jobs under this fresh token: an earlier try
            # committed (partly, perhaps: update_many is not atomic). Once
            # retrying() returns, no earlier try can lock more.
            if (yield from _retrying(tries)) and (held := (yield mine)):
                return ClaimedBatch(held)
            with tries.bounded():
                locked, raced = yield from self._lock_due(update, limit)
            mine_now: list[Document] = (yield mine) if locked else []
            return ClaimedBatch(mine_now, raced)

        return (yield from self._claimed_or_released("claim many", attempt, query, tries))

    def _claimed_or_released(self, action: str, attempt: Callable[[], Plan[T]], mine: Document,
                             tries: BoundedTries) -> Plan[T]:
        """Run a claim; if its caller is cancelled meanwhile (asyncio), release what it locked.

        A claim whose reply arrives after the cancellation would otherwise
        stay locked by nobody until its lease ran out.
        """
        try:
            return (yield from self._retry(action, attempt, transient=is_transient_bounded))
        except BaseException as exc:
            if not isinstance(exc, Exception):
                yield Detach(self._release_abandoned(mine, tries))
            raise

    def _release_abandoned(self, mine: Document, tries: BoundedTries) -> Plan[None]:
        """Hand back (uncounted) every job locked under a cancelled claim's token: now, and
        again once no try of it can still lock anything on the server."""
        while True:
            left = tries.time_left()
            found = yield from self._retry_op("release a cancelled claim", listed(
                self.jobs, "find", mine, {"_id": 1, "lease_token": 1}))
            for doc in found:
                yield from self.release_claim(doc["_id"], doc["lease_token"])
                log.info("job %s: released, its claim's caller was cancelled", doc["_id"])
            if left <= 0:
                return
            yield Sleep(left)

    def _lock_due(self, update: list[Document], limit: int) -> Plan[tuple[int, bool]]:
        """Lock up to ``limit`` due jobs with ``update``: how many, and whether the claim
        came back short only because it kept losing races (see ``ClaimedBatch``).

        Short must mean drained: a worker that took a short claim for the end of a
        backlog waits for a wake-up, which a backlog never sends.
        """
        locked, lost = 0, False
        for _ in range(CLAIM_MANY_ROUNDS):
            asked = limit - locked
            found = yield listed(self.jobs, "find", _not_in_flight(self.in_flight.listed()),
                                 {"_id": 1}, sort=CLAIM_SORT,
                                 limit=self.spread.read_limit(asked))
            candidates = self.spread.pick([doc["_id"] for doc in found], asked)
            if not candidates:
                return locked, False  # nothing due is left
            # Another consumer may take some candidates first; the filter
            # re-checks each, so a job is locked by exactly one claim.
            self.in_flight.add(candidates)
            try:
                won = (yield call(self.jobs, "update_many",
                                  {"_id": {"$in": candidates}, **READY_AND_DUE},
                                  update)).modified_count
            finally:
                self.in_flight.remove(candidates)
            locked += won
            lost_some = won < len(candidates)
            self.spread.note(lost=lost_some)
            lost = lost or lost_some
            if locked == limit or (len(candidates) < asked and not lost):
                return locked, False  # full, or it took every due job there was
            # Lost some to concurrent claims (they all read the same head of the
            # queue), or read fewer than it asked while they ran (a read that
            # overlaps their writes can come back short): read again.
        if locked:
            return locked, True
        # Lost every round: one findAndModify, which the server retries on
        # conflicts itself, so it comes back empty only when nothing is due.
        won_one = yield call(self.jobs, "find_one_and_update", READY_AND_DUE, update,
                             {"_id": 1}, sort=CLAIM_SORT)
        return (1 if won_one is not None else 0), False

    # -- settling a claim ---------------------------------------------------------

    def complete(self, job_id: ObjectId, token: str, result: Any = None) -> Plan[bool]:
        """Finish a held job: delete it, or (keeping) mark it completed with ``result``."""
        if self.keep_completed <= 0:
            # Still there means another claim holds it now. Gone means a lost
            # try deleted it, or its next holder completed it: done either way.
            return (yield from self._settle(
                "complete",
                lambda: _deleted(call(self.jobs, "delete_one", _held(job_id, token))),
                lambda: _absent_found(call(self.jobs, "find_one", {"_id": job_id}, {"_id": 1})),
            ))
        pipeline = _completed_pipeline(result)
        return (yield from self._settle(
            "complete",
            lambda: _modified(call(self.jobs, "update_one", _held(job_id, token), pipeline)),
            # Only this claim's completion writes its token: anything else is another claim's.
            lambda: _found(call(self.jobs, "find_one", _completed_by(job_id, token), {"_id": 1})),
        ))

    def complete_in_transaction(self, job_id: ObjectId, token: str, result: Any,
                                session: Any) -> Plan[bool]:
        """``complete`` inside the caller's transaction: one try, False if the lease is gone.

        No retry and no reading back: the caller's ``with_transaction`` retries
        the whole transaction, and a miss inside a snapshot is a plain miss.
        """
        if self.keep_completed <= 0:
            done = yield from _deleted(call(self.jobs, "delete_one", _held(job_id, token),
                                            session=session))
        else:
            done = yield from _modified(call(self.jobs, "update_one", _held(job_id, token),
                                             _completed_pipeline(result), session=session))
        return bool(done)

    def complete_many(self, held: Sequence[tuple[ObjectId, str]]) -> Plan[int]:
        """Finish every listed job still held by its token (as ``complete``); return how many."""
        if not held:
            return 0
        query = _all_held(held)
        if self.keep_completed <= 0:
            return (yield from self._retry("complete many", lambda: _deleted(
                call(self.jobs, "delete_many", query))))
        pipeline = _completed_pipeline(None)
        return (yield from self._retry("complete many", lambda: _modified(
            call(self.jobs, "update_many", query, pipeline))))

    def completed_by(self, held: Sequence[tuple[ObjectId, str]]) -> Plan[set[ObjectId]]:
        """Which of these claims' completions took effect (after a short ``complete_many``)."""
        ids = [job_id for job_id, _ in held]
        if self.keep_completed <= 0:
            # Still there means re-claimed by someone else after our lease ran out.
            return set(ids) - (yield from self.present(ids))
        query = _all_held(held, state=COMPLETED, claim_field=SETTLED_BY)
        found = yield from self._retry_op("find", listed(self.jobs, "find", query, {"_id": 1}))
        return {doc["_id"] for doc in found}

    def requeue(
        self, job_id: ObjectId, token: str, *, delay: float, error: str | None, count_attempt: bool
    ) -> Plan[bool]:
        """Hand a held job back: ready after ``delay``; ``count_attempt=False`` undoes the claim's count."""
        changes: Document = {"state": READY, "available_at": {"$add": [NOW, millis(delay)]}}
        if error is not None:
            changes["last_error"] = {"$literal": error}
        if not count_attempt:
            changes["attempts"] = {"$max": [0, {"$subtract": ["$attempts", 1]}]}
        changes[SETTLED_BY] = {"$literal": token}
        pipeline: list[Document] = [{"$set": changes}, {"$unset": LOCK_FIELDS}]

        def write() -> Plan[bool]:
            query = {**_held(job_id, token), **NOT_CANCELLING}
            return (bool((yield from _modified(call(self.jobs, "update_one", query, pipeline))))
                    or (yield from self._cancel_held(job_id, token)))

        return (yield from self._settle("requeue", write, lambda: self._settled_by(job_id, token)))

    def _cancel_held(self, job_id: ObjectId, token: str) -> Plan[bool]:
        """End a held job whose cancel was requested: cancelled (kept) or deleted. True if it was."""
        query = {**_held(job_id, token), "cancel_requested": True}
        if self.keep_completed <= 0:
            return bool((yield from _deleted(call(self.jobs, "delete_one", query))))
        return bool((yield from _modified(call(self.jobs, "update_one", query,
                                               _cancelled_pipeline("$lease_token")))))

    def _settled_by(self, job_id: ObjectId, token: str) -> Plan[bool]:
        """After a lost reply: did this claim's requeue or kept cancel apply?

        A cancel that deleted the job (``keep_completed == 0``) leaves no trace, and
        gone may also be another claim's completion: that rare case reads as
        ``LeaseLost``, as before cancels existed, never as a settle that did not happen.
        """
        return (yield from _found(call(self.jobs, "find_one", {"_id": job_id, SETTLED_BY: token},
                                       {"_id": 1})))

    # -- cancelling ---------------------------------------------------------------------

    def cancel(self, job_id: ObjectId) -> Plan[bool]:
        """Cancel a ready or delayed job now, or ask its holder to; False once it finished.

        Each write is filtered by the state it expects, so a cancel racing a
        claim has one winner: the claim (then the cancel becomes a request)
        or the cancel (then no claim can match the job).
        """
        def attempt() -> Plan[bool]:
            for _ in range(CANCEL_ROUNDS):
                if (yield from self._cancel_ready(job_id)):
                    return True
                if (yield call(self.jobs, "update_one", {"_id": job_id, "state": LOCKED},
                               {"$set": {"cancel_requested": True}})).matched_count:
                    return True
                doc = yield call(self.jobs, "find_one", {"_id": job_id}, {"state": 1})
                if doc is None or doc.get("state") not in (READY, LOCKED):
                    return False
            raise QueueUnavailable(f"cancel of job {job_id} on {self.jobs.full_name}: the job "
                                   f"changed state {CANCEL_ROUNDS} times under the cancel")

        # Each write is idempotent: a retry after a lost reply finds the job
        # cancelled (False, though the first try did it) or its request set (True).
        return (yield from self._retry("cancel", attempt))

    def _cancel_ready(self, job_id: ObjectId) -> Plan[bool]:
        query = {"_id": job_id, "state": READY}
        if self.keep_completed <= 0:
            return bool((yield from _deleted(call(self.jobs, "delete_one", query))))
        return bool((yield from _modified(call(self.jobs, "update_one", query,
                                               _cancelled_pipeline(None)))))

    def cancel_requests(self, held: Sequence[tuple[ObjectId, str]]) -> Plan[set[ObjectId]]:
        """Which of these claims' jobs have a cancel request."""
        if not held:
            return set()
        query = {**_all_held(held), "cancel_requested": True}
        found = yield from self._retry_op("read cancel requests",
                                          listed(self.jobs, "find", query, {"_id": 1}))
        return {doc["_id"] for doc in found}

    # -- pausing ------------------------------------------------------------------------

    def set_paused(self, paused: bool) -> Plan[None]:
        """Switch the queue's persistent pause flag (the control document)."""
        yield from self._retry_op("pause" if paused else "resume", call(
            self.jobs, "update_one", {"_id": CONTROL_ID},
            {"$set": {"paused": paused, "state": CONTROL}}, upsert=True))

    def is_paused(self) -> Plan[bool]:
        doc = yield from self._retry_op("read the pause flag", call(
            self.jobs, "find_one", {"_id": CONTROL_ID}, {"paused": 1}))
        return bool(doc and doc.get("paused"))

    def extend_lease(self, job_id: ObjectId, token: str, lease: float,
                     progress: int | None) -> Plan[Document | None]:
        """Push the lease ``lease`` seconds past now; the job's ``locked_until`` and
        ``cancel_requested`` after it, or None if the lease is lost."""
        changes: Document = {"locked_until": lease_until(lease)}
        if progress is not None:
            changes["progress"] = {"$literal": progress}
        doc: Document | None = yield from self._retry_op("extend lease", call(
            self.jobs, "find_one_and_update", _held(job_id, token), [{"$set": changes}],
            projection={"locked_until": 1, "cancel_requested": 1},
            return_document=ReturnDocument.AFTER,
        ))
        return doc

    def heartbeat(self, held: Sequence[tuple[ObjectId, str]],
                  lease: float) -> Plan[dict[ObjectId, bool]]:
        """Extend every listed lease; map each id still held to its ``cancel_requested``."""
        if not held:
            return {}
        query = _all_held(held)
        pipeline = [{"$set": {"locked_until": lease_until(lease)}}]

        def beat() -> Plan[dict[ObjectId, bool]]:
            yield call(self.jobs, "update_many", query, pipeline)
            found = yield listed(self.jobs, "find", query, {"_id": 1, "cancel_requested": 1})
            return {doc["_id"]: bool(doc.get("cancel_requested")) for doc in found}

        return (yield from self._retry("heartbeat", beat))

    def bury(self, job_id: ObjectId, token: str, error: str | None) -> Plan[bool]:
        """Move a held job to the error queue."""
        changes: Document = {"state": FAILED, "failed_at": NOW, SETTLED_BY: {"$literal": token}}
        if error is not None:
            changes["last_error"] = {"$literal": error}
        marker = new_token()

        def write() -> Plan[bool]:
            query = {**_held(job_id, token), **NOT_CANCELLING}
            return ((yield from self._move(query, changes, marker=marker)) is not None
                    or (yield from self._cancel_held(job_id, token)))

        def applied() -> Plan[bool]:
            return ((yield from _found(call(self.failed, "find_one",
                                            {"_id": job_id, SETTLED_BY: token}, {"_id": 1})))
                    or (yield from self._settled_by(job_id, token)))

        return (yield from self._settle("bury", write, applied))

    def _settle(self, action: str, write: Callable[[], Plan[int | bool]],
                applied: Callable[[], Plan[bool]]) -> Plan[bool]:
        """Run a write filtered by a lease token; True if it (or a lost earlier try) took effect.

        A miss on the first try means the lease is gone. A miss on a retry is
        ambiguous (the lost try applied, or the lease ran out meanwhile and
        the job moved on): ``applied`` reads what happened.
        """
        tries = 0

        def attempt() -> Plan[bool]:
            nonlocal tries
            tries += 1
            return bool((yield from write())) or (tries > 1 and (yield from applied()))

        return (yield from self._retry(action, attempt))

    # -- the reaper -----------------------------------------------------------------

    def reap(self, limit: int = 1000) -> Plan[ReapResult]:
        """Requeue expired leases with attempts left; bury the rest. Safe to run anywhere, often."""
        expired_note = {"$concat": ["lease expired while held by ",
                                    {"$ifNull": ["$consumer_id", "?"]}]}
        cancelled = yield from self._reap_cancelled()
        retryable = {"state": LOCKED, **NOT_CANCELLING, "$expr": {"$and": [
            LEASE_EXPIRED, {"$lt": ["$attempts", "$max_attempts"]}]}}
        requeue: list[Document] = [
            {"$set": {"state": READY, "available_at": NOW, "last_error": expired_note}},
            {"$unset": LOCK_FIELDS},
        ]
        requeued = yield from self._retry("reap", lambda: _modified(
            call(self.jobs, "update_many", retryable, requeue)))
        exhausted = {"state": LOCKED, **NOT_CANCELLING, "$expr": {"$and": [
            LEASE_EXPIRED, {"$gte": ["$attempts", "$max_attempts"]}]}}
        candidates = yield from self._retry_op("reap", listed(
            self.jobs, "find", exhausted, {"_id": 1, "lease_token": 1}, limit=limit))
        dead = []
        changes = {"state": FAILED, "failed_at": NOW, "last_error": expired_note}
        for doc in candidates:
            still_expired = {**_held(doc["_id"], doc["lease_token"]), "$expr": LEASE_EXPIRED}
            moved = yield from self._move_retried("reap", still_expired, changes)
            if moved:
                dead.append(moved)
        dead += yield from self._finish_stale_moves()
        return ReapResult(requeued=requeued, dead=dead, cancelled=cancelled)

    def _reap_cancelled(self) -> Plan[int]:
        """Expired leases of jobs whose cancel was requested end cancelled, never retried."""
        query = {"state": LOCKED, "cancel_requested": True, "$expr": LEASE_EXPIRED}
        if self.keep_completed <= 0:
            return (yield from self._retry("reap", lambda: _deleted(
                call(self.jobs, "delete_many", query))))
        return (yield from self._retry("reap", lambda: _modified(
            call(self.jobs, "update_many", query, _cancelled_pipeline("$lease_token")))))

    # -- the error queue ------------------------------------------------------------

    def retry_failed(self, job_id: ObjectId | None = None) -> Plan[int]:
        """Move one dead job (or all) back to the queue with a fresh set of attempts.

        Never overwrites: a job whose ``_id`` or unique key is in the queue
        already stays as it is, and the dead one stays dead.
        """
        if job_id is not None:
            ids = [job_id]
        else:
            ids = yield from self._retry_op("list failed", call(self.failed, "distinct", "_id"))
        revived = 0
        for oid in ids:
            revived += (yield from self._revive_retried(oid))
        return revived

    def _revive_retried(self, job_id: ObjectId) -> Plan[bool]:
        return (yield from self._retry("retry failed", lambda: self._revive(job_id)))

    def purge_failed(self, job_id: ObjectId | None = None) -> Plan[int]:
        query = {} if job_id is None else {"_id": job_id}
        return (yield from self._retry("purge failed", lambda: _deleted(
            call(self.failed, "delete_many", query))))

    def list_failed(self, limit: int = 100) -> Plan[list[Document]]:
        docs: list[Document] = yield from self._retry_op("list failed", listed(
            self.failed, "find", {}, sort=[("failed_at", DESCENDING)], limit=limit))
        return docs

    def _move(self, query: Document, changes: Document, *, marker: str) -> Plan[Document | None]:
        """Move the job matching ``query`` to the error queue (same ``_id``), changed.

        None if nothing matched. Runs once: callers retry with the same
        ``marker`` (it names the move when there are no transactions).
        """
        if not (yield from self.supports_transactions()):
            return (yield from self._move_in_steps(query, changes, marker))

        def in_transaction(session: Any) -> Plan[Document | None]:
            doc = yield call(self.jobs, "find_one_and_update", query, _changed(changes, LOCK_FIELDS),
                             session=session, return_document=ReturnDocument.AFTER)
            if doc is not None:
                yield call(self.failed, "replace_one", {"_id": doc["_id"]}, doc, upsert=True,
                           session=session)
                yield call(self.jobs, "delete_one", {"_id": doc["_id"]}, session=session)
            return doc  # type: ignore[no-any-return]

        return (yield from self._in_transaction(in_transaction))

    def _in_transaction(self, body: Callable[[Any], Plan[T]]) -> Plan[T]:
        result: T = yield Transaction(self.client, body, {
            "read_concern": ReadConcern("majority"), "write_concern": WriteConcern("majority"),
            "read_preference": ReadPreference.PRIMARY})
        return result

    def _move_retried(self, action: str, query: Document,
                      changes: Document) -> Plan[Document | None]:
        marker = new_token()
        return (yield from self._retry(action, lambda: self._move(query, changes, marker=marker)))

    def _move_in_steps(self, query: Document, changes: Document,
                       marker: str) -> Plan[Document | None]:
        """A move without transactions: mark and change the job, copy it, delete it.

        The mark is one atomic write, so exactly one mover wins the job, and a
        holder settling meanwhile no longer matches it. Only the winner copies
        and deletes; a mover that dies half-way leaves a marked job that
        ``_finish_stale_moves`` completes. No step deletes a copy, so no
        interleaving of movers can lose the job.
        """
        mark = {**changes, "_move": marker, "_move_at": NOW}
        doc = yield call(self.jobs, "find_one_and_update", query, _changed(mark, LOCK_FIELDS),
                         return_document=ReturnDocument.AFTER)
        if doc is None:
            # An earlier try of this move may have marked it before its reply was lost.
            doc = yield call(self.jobs, "find_one", {"_move": marker})
        if doc is None:
            return None
        copy = {key: value for key, value in doc.items() if key not in MOVE_FIELDS}
        yield call(self.failed, "replace_one", {"_id": doc["_id"]}, copy, upsert=True)
        # Guarded by this mover's mark: if another mover took the move over, it deletes.
        yield call(self.jobs, "delete_one", {"_id": doc["_id"], "_move": doc["_move"]})
        return doc  # type: ignore[no-any-return]

    def _finish_stale_moves(self) -> Plan[list[Document]]:
        """Complete two-step moves whose movers went quiet; return the documents moved.

        Only servers without transactions make such moves; elsewhere this
        sends nothing (the look is a scan: fine for the standalone dev server).
        """
        if (yield from self.supports_transactions()):
            return []
        stale = {"_move": {"$exists": True}, "$expr": {
            "$lt": ["$_move_at", {"$subtract": [NOW, STALE_MOVE_MS]}]}}
        found = yield from self._retry_op("find stale moves", listed(
            self.jobs, "find", stale, {"_move": 1}))
        finished = []
        for doc in found:
            # Taken over with a fresh mark, so a mover that was only slow stops.
            again = {"_id": doc["_id"], "_move": doc["_move"]}
            moved = yield from self._move_retried("finish a move", again, {})
            if moved is not None:
                finished.append(moved)
        return finished

    def _revive(self, job_id: ObjectId) -> Plan[bool]:
        """Copy one dead job back into the queue with fresh attempts, then drop it from ``.failed``.

        The copy is insert-only: it never overwrites a job in the queue, and a
        job whose unique key another active job holds stays dead (warned).
        Nothing else writes to ``.failed``, so without transactions copying
        first is enough: a retry (or a second caller) finds the copy there by
        its ``_id`` and only deletes.
        """
        try:
            if not (yield from self.supports_transactions()):
                return (yield from self._revive_steps(job_id))
            return (yield from self._in_transaction(
                lambda session: self._revive_steps(job_id, session)))
        except DuplicateKeyError:
            log.warning("dead job %s stays in %s: a job with its _id or unique key is in the "
                        "queue", job_id, self.failed.full_name)
            return False

    def _revive_steps(self, job_id: ObjectId, session: Any = None) -> Plan[bool]:
        doc = yield call(self.failed, "find_one", {"_id": job_id}, session=session)
        if doc is None:
            return False
        dead_only = {"failed_at", *LOCK_FIELDS, *MOVE_FIELDS}
        copy: list[Document] = [{"$replaceWith": {"$literal": {key: value for key, value in doc.items()
                                               if key not in dead_only}}},
                {"$set": {"state": READY, "attempts": 0, "available_at": NOW}}]
        try:
            yield call(self.jobs, "update_one", _absent(job_id), copy, upsert=True, session=session)
        except DuplicateKeyError as exc:
            if session is not None or not _is_duplicate_id(exc.details or {}):
                raise
            # Its _id is in the queue: an earlier try of this revival copied it.
        yield call(self.failed, "delete_one", {"_id": job_id}, session=session)
        return True

    # -- looking -------------------------------------------------------------------

    def counts(self) -> Plan[QueueCounts]:
        def count() -> Plan[QueueCounts]:
            # One instant of the server's clock splits every count (count_filters).
            now = (yield call(self.jobs.database, "command", "hello"))["localTime"]
            live = {}
            for name, query in count_filters(now).items():
                live[name] = yield call(self.jobs, "count_documents", query)
            return QueueCounts(**live, failed=(yield call(self.failed, "count_documents", {})))

        return (yield from self._retry("count", count))

    def size(self) -> Plan[int]:
        # Kept finished jobs are history, not queued work.
        size: int = yield from self._retry_op("size", call(
            self.jobs, "count_documents", {"state": {"$in": [READY, LOCKED]}}))
        return size

    def oldest_available_age(self) -> Plan[float]:
        """Seconds the longest-waiting due job has been due (server clock); 0 when none."""
        pipeline: list[Document] = [
            {"$match": READY_AND_DUE},
            {"$sort": {"state": 1, "available_at": 1}},
            {"$limit": 1},
            {"$project": {"age": {"$subtract": [NOW, "$available_at"]}}},
        ]
        docs = yield from self._retry_op("oldest available",
                                         listed(self.jobs, "aggregate", pipeline))
        return docs[0]["age"] / 1000.0 if docs else 0.0

    def next_due_in(self) -> Plan[float | None]:
        """Seconds until the earliest delayed job falls due (server clock); None when none."""
        pipeline: list[Document] = [
            {"$match": READY_NOT_DUE},
            {"$sort": {"state": 1, "available_at": 1}},
            {"$limit": 1},
            {"$project": {"due_in": {"$subtract": ["$available_at", NOW]}}},
        ]
        docs = yield from self._retry_op("next due", listed(self.jobs, "aggregate", pipeline))
        return max(0.0, docs[0]["due_in"] / 1000.0) if docs else None

    def present(self, ids: Sequence[ObjectId]) -> Plan[set[ObjectId]]:
        """Which of these jobs are still in the queue."""
        found = yield from self._retry_op("find", listed(
            self.jobs, "find", {"_id": {"$in": list(ids)}}, {"_id": 1}))
        return {doc["_id"] for doc in found}

    def get(self, job_id: ObjectId) -> Plan[Document | None]:
        doc: Document | None = yield from self._retry_op("get", call(
            self.jobs, "find_one", {"_id": job_id}))
        return doc

    def server_now(self) -> Plan[datetime]:
        """The server's clock now (``hello.localTime``), to judge ready against delayed."""
        reply = yield from self._retry_op("read the server clock",
                                          call(self.jobs.database, "command", "hello"))
        return reply["localTime"]  # type: ignore[no-any-return]

    def find_job(self, job_id: ObjectId) -> Plan[tuple[Document, bool] | None]:
        """The job in the queue or the error queue; True when in the error queue."""
        def find() -> Plan[tuple[Document, bool] | None]:
            # The queue again last: a retry_failed moving it back between the
            # two reads would otherwise hide it from both.
            for collection, dead in ((self.jobs, False), (self.failed, True), (self.jobs, False)):
                doc = yield call(collection, "find_one", {"_id": job_id})
                if doc is not None:
                    return doc, dead
            return None

        return (yield from self._retry("get", find))

    def list_jobs(self, state: str | None, *, tag: str | None, key: str | None, limit: int,
                  after: ObjectId | None, now: datetime) -> Plan[list[tuple[Document, bool]]]:
        """Up to ``limit`` jobs newest first (``_id`` descending), each flagged when dead.

        ``now`` (the server's clock) splits ready from delayed. Every listing
        walks an index in ``_id`` order and stops at ``limit``: the partial
        ``tags`` index for a tag, ``finished`` for kept finished jobs, else ``_id``.
        """
        query: Document = {}
        if after is not None:
            query["_id"] = {"$lt": after}
        if tag is not None:
            query["tags"] = {"$eq": tag, "$exists": True}
        if key is not None:
            # $exists lets the planner use the partial "key" index.
            query["key"] = {"$eq": key, "$exists": True}
        found: list[tuple[Document, bool]] = []
        if state in (None, FAILED):
            dead = yield from self._newest(self.failed, query, limit, tag)
            found += [(doc, True) for doc in dead]
        if state != FAILED:
            live = {**query, **_state_filter(state, now)}
            docs = yield from self._newest(self.jobs, live, limit, tag, state, key)
            found += [(doc, False) for doc in docs]
        found.sort(key=lambda item: item[0]["_id"], reverse=True)
        return found[:limit]

    def _newest(self, collection: Any, query: Document, limit: int,
                tag: str | None, state: str | None = None,
                key: str | None = None) -> Plan[list[Document]]:
        # The partial indexes match by themselves (the query implies their
        # filter, the sort is theirs) and may not exist yet on an old queue,
        # so only the _id index, which always does, is hinted: without it the
        # planner may take the claim index and sort every ready job in memory.
        hinted = collection is self.failed or (tag is None and state not in FINISHED_STATES)
        options: Document = {"hint": "_id_"} if hinted else {}
        if key is not None and collection is self.jobs:
            # The partial "key" index matches by itself (the query implies its filter).
            options = {}
        docs: list[Document] = yield from self._retry_op("list jobs", listed(
            collection, "find", query, sort=[("_id", DESCENDING)], limit=limit, **options))
        return docs

    def clear(self) -> Plan[None]:
        # The pause switch is no job: clearing the jobs leaves a paused queue paused.
        def both() -> Plan[None]:
            yield call(self.jobs, "delete_many", {"_id": {"$ne": CONTROL_ID}})
            yield call(self.failed, "delete_many", {})

        yield from self._retry("clear", both)

    # -- change streams --------------------------------------------------------------

    def watch(self, resume_after: Mapping[str, Any] | None, max_await: float,
              pipeline: list[Document] | None = None) -> Plan[Any]:
        """Open the wake-up stream (``WAKE_PIPELINE`` unless told); driver errors are left
        to the watcher, which resumes."""
        return (yield call(self.streams, "watch", pipeline or WAKE_PIPELINE,
                           resume_after=resume_after, max_await_time_ms=millis(max_await)))

    def watch_job(self, job_id: ObjectId) -> Plan[Any]:
        """Open the change stream of one job, in the queue and the error queue."""
        database = self.streams.database.with_options(read_concern=ReadConcern())
        pipeline: list[Document] = [
            {"$match": {"documentKey._id": job_id,
                        "ns.coll": {"$in": [self.jobs.name, self.failed.name]}}},
            {"$project": {"_id": 1}},
        ]

        def watch() -> Plan[Any]:
            try:
                return (yield call(database, "watch", pipeline,
                                   max_await_time_ms=JOB_WAIT_SLICE_MS))
            except OperationFailure as exc:
                if is_change_stream_unsupported(exc):
                    # Waiting without a stream would mean polling, which result() never does.
                    raise ConfigurationError(
                        f"waiting for a job on {self.jobs.full_name} needs change streams "
                        "(a replica set); this server is standalone") from exc
                raise

        return (yield from self._retry("watch a job", watch))

    def next_change(self, stream: Any) -> Plan[Document | None]:
        """One wait (up to the stream's ``max_await``) for the next event; None if none came."""
        event: Document | None = yield call(stream, "try_next")
        return event

    def close_stream(self, stream: Any) -> Plan[None]:
        yield call(stream, "close")

    def wait_job(self, stream: Any, deadline: float) -> Plan[bool]:
        """Until the job's stream shows a change (True) or the monotonic ``deadline`` passes (False)."""
        while time.monotonic() < deadline:
            event = yield from self._retry_op("wait for a job", call(stream, "try_next"))
            if event is not None:
                return True
        return False


class JobStore:
    """The queue's collection and its error queue, behind named operations (sync driver).

    Each method runs the plan of the same name (``StorePlans``).
    """

    def __init__(self, collection: Collection[Document], retry: RetryPolicy | None = None,
                 *, keep_completed: float = 0.0) -> None:
        client = collection.database.client
        self.plans = StorePlans(collection, retry, keep_completed=keep_completed,
                                primary=lambda: client.primary,
                                hello=lambda: client.admin.command("hello"))
        self._lock = threading.Lock()

    @property
    def jobs(self) -> Collection[Document]:
        jobs: Collection[Document] = self.plans.jobs
        return jobs

    @property
    def failed(self) -> Collection[Document]:
        failed: Collection[Document] = self.plans.failed
        return failed

    @property
    def name(self) -> str:
        return self.jobs.name

    @property
    def retry(self) -> RetryPolicy:
        return self.plans.retry

    @property
    def clock(self) -> ServerClock:
        return self.plans.clock

    @property
    def keep_completed(self) -> float:
        return self.plans.keep_completed

    def ensure_indexes(self) -> None:
        if not self.plans.indexes_ready:
            with self._lock:  # one creator per process, not one per thread
                run(self.plans.ensure_indexes())

    def forget_indexes(self) -> None:
        """The collection was dropped: create the indexes again on next use."""
        self.plans.indexes_ready = False

    def retention(self) -> float:
        return run(self.plans.retention())

    def supports_transactions(self) -> bool:
        return run(self.plans.supports_transactions())

    def insert(self, new_jobs: Sequence[NewJob]) -> list[ObjectId]:
        return run(self.plans.insert(new_jobs))

    def insert_keyed(self, job: NewJob) -> tuple[ObjectId, bool]:
        return run(self.plans.insert_keyed(job))

    def insert_in_transaction(self, new_jobs: Sequence[NewJob],
                              session: ClientSession) -> list[tuple[ObjectId, bool]]:
        return run(self.plans.insert_in_transaction(new_jobs, session))

    def insert_documents(self, documents: Sequence[Document]) -> None:
        run(self.plans.insert_documents(documents))

    def claim(self, consumer_id: str, lease: float) -> Document | None:
        return run(self.plans.claim(consumer_id, lease))

    def claim_many(self, consumer_id: str, lease: float, limit: int) -> list[Document]:
        return run(self.plans.claim_many(consumer_id, lease, limit)).docs

    def complete(self, job_id: ObjectId, token: str, result: Any = None) -> bool:
        return run(self.plans.complete(job_id, token, result))

    def complete_in_transaction(self, job_id: ObjectId, token: str, result: Any,
                                session: ClientSession) -> bool:
        return run(self.plans.complete_in_transaction(job_id, token, result, session))

    def complete_many(self, held: Sequence[tuple[ObjectId, str]]) -> int:
        return run(self.plans.complete_many(held))

    def completed_by(self, held: Sequence[tuple[ObjectId, str]]) -> set[ObjectId]:
        return run(self.plans.completed_by(held))

    def requeue(self, job_id: ObjectId, token: str, *, delay: float, error: str | None,
                count_attempt: bool) -> bool:
        return run(self.plans.requeue(job_id, token, delay=delay, error=error,
                                      count_attempt=count_attempt))

    def cancel(self, job_id: ObjectId) -> bool:
        return run(self.plans.cancel(job_id))

    def cancel_requests(self, held: Sequence[tuple[ObjectId, str]]) -> set[ObjectId]:
        return run(self.plans.cancel_requests(held))

    def set_paused(self, paused: bool) -> None:
        run(self.plans.set_paused(paused))

    def is_paused(self) -> bool:
        return run(self.plans.is_paused())

    def extend(self, job_id: ObjectId, token: str, lease: float,
               progress: int | None) -> datetime | None:
        """Push the lease ``lease`` seconds past now; return the new expiry, or None if lost."""
        doc = self.extend_lease(job_id, token, lease, progress)
        return None if doc is None else doc["locked_until"]

    def extend_lease(self, job_id: ObjectId, token: str, lease: float,
                     progress: int | None) -> Document | None:
        return run(self.plans.extend_lease(job_id, token, lease, progress))

    def heartbeat(self, held: Sequence[tuple[ObjectId, str]], lease: float) -> dict[ObjectId, bool]:
        return run(self.plans.heartbeat(held, lease))

    def bury(self, job_id: ObjectId, token: str, error: str | None) -> bool:
        return run(self.plans.bury(job_id, token, error))

    def reap(self, limit: int = 1000) -> ReapResult:
        return run(self.plans.reap(limit))

    def retry_failed(self, job_id: ObjectId | None = None) -> int:
        return run(self.plans.retry_failed(job_id))

    def purge_failed(self, job_id: ObjectId | None = None) -> int:
        return run(self.plans.purge_failed(job_id))

    def list_failed(self, limit: int = 100) -> list[Document]:
        return run(self.plans.list_failed(limit))

    def counts(self) -> QueueCounts:
        return run(self.plans.counts())

    def size(self) -> int:
        return run(self.plans.size())

    def oldest_available_age(self) -> float:
        return run(self.plans.oldest_available_age())

    def next_due_in(self) -> float | None:
        return run(self.plans.next_due_in())

    def present(self, ids: Sequence[ObjectId]) -> set[ObjectId]:
        return run(self.plans.present(ids))

    def get(self, job_id: ObjectId) -> Document | None:
        return run(self.plans.get(job_id))

    def server_now(self) -> datetime:
        return run(self.plans.server_now())

    def find_job(self, job_id: ObjectId) -> tuple[Document, bool] | None:
        return run(self.plans.find_job(job_id))

    def list_jobs(self, state: str | None, *, tag: str | None, key: str | None, limit: int,
                  after: ObjectId | None, now: datetime) -> list[tuple[Document, bool]]:
        return run(self.plans.list_jobs(state, tag=tag, key=key, limit=limit, after=after,
                                        now=now))

    def clear(self) -> None:
        run(self.plans.clear())

    def watch(self, resume_after: Mapping[str, Any] | None,
              max_await: float) -> ChangeStream[Document]:
        stream: ChangeStream[Document] = run(self.plans.watch(resume_after, max_await))
        return stream


def _retrying(tries: BoundedTries) -> Plan[bool]:
    """``BoundedTries.retrying`` as a plan: the wait for earlier tries is yielded, not slept."""
    wait = tries.retry_wait()
    if wait:
        yield Sleep(wait)
    return wait is not None


def _deleted(op: Op) -> Plan[int]:
    return int((yield op).deleted_count)


def _modified(op: Op) -> Plan[int]:
    return int((yield op).modified_count)


def _found(op: Op) -> Plan[bool]:
    return (yield op) is not None


def _absent_found(op: Op) -> Plan[bool]:
    return (yield op) is None


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


def event_paused(event: Mapping[str, Any]) -> bool | None:
    """What a change to the control document set the pause switch to; None if untouched."""
    document = event.get("fullDocument") or event.get("updateDescription", {}).get(
        "updatedFields", {})
    paused = document.get("paused") if isinstance(document, Mapping) else None
    return paused if isinstance(paused, bool) else None


def _utc(moment: datetime) -> datetime:
    # pymongo decodes naive UTC datetimes unless the client is tz_aware.
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def is_change_stream_unsupported(exc: BaseException) -> bool:
    """A standalone server (or a storage engine without an oplog) cannot serve streams."""
    # 40573: "$changeStream stage is only supported on replica sets".
    return isinstance(exc, OperationFailure) and exc.code in {40573, 40324}


def _changed(changes: Document, drop: Sequence[str]) -> list[Document]:
    pipeline: list[Document] = [{"$set": changes}]
    return [*pipeline, {"$unset": list(drop)}] if drop else pipeline


def _absent(job_id: ObjectId) -> Document:
    """A filter no document matches, whose upsert inserts ``_id``: an insert that can use ``$$NOW``.

    The insert fails with a duplicate key when the ``_id`` is taken.
    """
    return {"_id": job_id, "$nor": [{"_id": job_id}]}


def _not_in_flight(listed_ids: list[ObjectId]) -> Document:
    """Due jobs a batch claim may take: not those another claim of this store is locking."""
    return {**READY_AND_DUE, "_id": {"$nin": listed_ids}} if listed_ids else READY_AND_DUE


def _held(job_id: ObjectId, token: str) -> Document:
    return {"_id": job_id, "lease_token": token, "state": LOCKED}


def _all_held(held: Sequence[tuple[ObjectId, str]], *, state: str = LOCKED,
              claim_field: str = "lease_token") -> Document:
    """Every listed (id, token) pair at once: as the ``$or`` of each pair, because a token
    is made for one claim of one job (unique, and indexed so). Two ``$in`` bounds cost
    linear time; an ``$or`` of 2,000 pairs took the server 0.8 s (each branch planned)."""
    return {"_id": {"$in": [job_id for job_id, _ in held]},
            claim_field: {"$in": [token for _, token in held]}, "state": state}


def _state_filter(state: str | None, now: datetime) -> Document:
    """A literal date, not $$NOW: the filter stays a plain index bound."""
    if state is None:
        # Not the enqueue check's marker (see _inserted_since), which is no job.
        return {"state": {"$in": [READY, LOCKED, *FINISHED_STATES]}}
    if state == "delayed":
        return {"state": READY, "available_at": {"$gt": now}}
    if state == READY:
        return {"state": READY, "available_at": {"$lte": now}}
    if state in FINISHED_STATES:
        return {"state": state, **HAS_FINISHED}
    return {"state": state}


def count_filters(now: datetime) -> dict[str, Document]:
    """The filter of each state counted in the queue's own collection, by ``QueueCounts`` field.

    A literal date (the server's own clock) keeps each count a pure index
    count; a $expr would fetch every ready document to re-check it. Locked
    jobs are split at the same date, so an expired lease the reaper has not
    handed on yet is not shown as held (issue 12, item 9).
    """
    return {
        "available": {"state": READY, "available_at": {"$lte": now}},
        "locked": {"state": LOCKED, "locked_until": {"$gte": now}},
        "expired": {"state": LOCKED, "locked_until": {"$lt": now}},
        "delayed": {"state": READY, "available_at": {"$gt": now}},
        "completed": {"state": COMPLETED},
        "cancelled": {"state": CANCELLED},
    }


def _completed_by(job_id: ObjectId, token: str) -> Document:
    return {"_id": job_id, "state": COMPLETED, SETTLED_BY: token}


def _completed_pipeline(result: Any) -> list[Document]:
    """Keep a held job as completed: when, by which claim (its token), and its result.

    The job keeps ``consumer_id`` and ``locked_at`` as history; the lease is over.
    """
    return [
        {"$set": {"state": COMPLETED, "finished_at": NOW, "result": {"$literal": result},
                  SETTLED_BY: "$lease_token"}},
        {"$unset": ["lease_token", "locked_until"]},
    ]


def _cancelled_pipeline(settled_by: str | None) -> list[Document]:
    """Keep a job as cancelled; a held one keeps its consumer as history, its lease ends."""
    changes: Document = {"state": CANCELLED, "finished_at": NOW}
    if settled_by is not None:
        changes[SETTLED_BY] = settled_by
    return [{"$set": changes}, {"$unset": ["lease_token", "locked_until"]}]


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
    document = {
        "_id": ObjectId(),
        "payload": dict(job.payload),
        "priority": job.priority,
        "state": READY,
        "attempts": 0,
        "max_attempts": job.max_attempts,
        "enqueued_at": now,
        "available_at": available_at,
    }
    if job.tags:
        # Absent, not empty, when untagged: the partial tags index then skips the job.
        document["tags"] = list(job.tags)
    if job.key is not None:
        # Absent when unkeyed, so the partial key indexes hold only keyed jobs.
        document["key"] = job.key
    if job.lease is not None:
        # Absent unless given: claims and heartbeats then use the consumer's lease.
        document[LEASE_MS] = millis(job.lease)
    return document


def _insert_ignoring_duplicate_ids(collection: Any, documents: Sequence[Document]) -> Plan[None]:
    """Insert; a document whose ``_id`` is taken counts as written (a retry met its own write)."""
    try:
        if len(documents) == 1:
            yield call(collection, "insert_one", documents[0])
        else:
            yield call(collection, "insert_many", documents, ordered=False)
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


def _is_duplicate_id(error: Mapping[str, Any]) -> bool:
    """A write error that says this ``_id`` is taken: the document is already in."""
    if error.get("code") != DUPLICATE_KEY:
        return False
    # The server names the index that refused (keyPattern); a reply without
    # it is taken as the _id's, as the enqueue always did, unless its message
    # names another index (a unique key's refusal is not "already written").
    pattern = error.get("keyPattern")
    if pattern is None:
        return _refusing_index(error) in (None, "_id_")
    return list(pattern) == ["_id"]


def _refusing_index(error: Mapping[str, Any]) -> str | None:
    """The index an E11000 message names ("... index: NAME dup key: ..."), if any."""
    message = str(error.get("errmsg", ""))
    _, found, rest = message.partition(" index: ")
    return rest.split(" ", 1)[0] if found and rest else None


def _is_duplicate_key(exc: BaseException | None) -> bool:
    """A refusal by the unique key index: another active job holds the key."""
    if not isinstance(exc, DuplicateKeyError):
        return False
    details = exc.details or {}
    pattern = details.get("keyPattern")
    if pattern is None:
        return _refusing_index(details) == "key_active"
    return list(pattern) == ["key"]


def lease_until(lease: float) -> Document:
    """``locked_until`` for a lease taken or extended now: the job's own lease (``put(lease=)``)
    if it has one, else ``lease`` seconds, the consumer's."""
    return {"$add": [NOW, {"$ifNull": ["$" + LEASE_MS, millis(lease)]}]}


def _claim_pipeline(consumer_id: str, token: str | Document, lease: float) -> list[Document]:
    return [{"$set": {
        "state": LOCKED,
        "consumer_id": {"$literal": consumer_id},
        "lease_token": token,
        "attempts": {"$add": ["$attempts", 1]},
        "locked_at": NOW,
        "locked_until": lease_until(lease),
    }}]
