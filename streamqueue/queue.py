"""The public API: ``Queue`` (produce, claim, inspect) and ``Job`` (one claim of one job)."""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import traceback
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, ClassVar, TypeVar, cast

import bson
from bson import ObjectId
from pymongo.client_session import ClientSession
from pymongo.collection import Collection

from streamqueue.errors import ConfigurationError, JobCancelled, JobFailed, JobNotFound, LeaseLost
from streamqueue.hooks import Hooks
from streamqueue.jobinfo import FINISHED, JOB_STATES, JobInfo
from streamqueue.pause import PauseFlag
from streamqueue.retry import RetryPolicy
from streamqueue.schedule import DEFAULT_CATCH_UP, ScheduleInfo, check_name, check_schedule
from streamqueue.storage import Document, JobChanges, JobStore, NewJob
from streamqueue.storage.schedules import ScheduleStore
from streamqueue.validation import (
    Backoff,
    backoff_seconds,
    check_backoff,
    check_keep,
    check_key,
    check_limit,
    check_max_attempts,
    check_payload,
    check_result,
    check_seconds,
    check_tag,
    check_tags,
    resolve_priority,
    truncate_error,
)
from streamqueue.wakeups import Wake, WakeupBoard
from streamqueue.watcher import ChangeStreamWatcher

log = logging.getLogger(__name__)

_QueueT = TypeVar("_QueueT", bound="Queue")


def error_summary(text: str) -> str:
    """One line for the log: a traceback's last line (``Type: message``), else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


def default_consumer_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Job:
    """One claim of one job. Settle it exactly once: complete, error or release.

    Every method acts only while this claim holds the lease; otherwise it raises
    ``LeaseLost`` and changes nothing.
    """

    def __init__(self, queue: Queue, doc: Document) -> None:
        self._queue = queue
        self._doc = doc
        self._token: str = doc["lease_token"]
        self._claimed = time.monotonic()
        self._settled = False
        # The session whose transaction completed the job: its with_transaction
        # may run the callback again, and complete() with it again.
        self._settled_in: ClientSession | None = None
        self._cancel_requested = bool(doc.get("cancel_requested"))

    def __repr__(self) -> str:
        return f"<Job {self.id} attempt {self.attempts}/{self.max_attempts} on {self._queue.name}>"

    @property
    def id(self) -> ObjectId:
        return self._doc["_id"]  # type: ignore[no-any-return]

    @property
    def payload(self) -> dict[str, Any]:
        return self._doc["payload"]  # type: ignore[no-any-return]

    @property
    def data(self) -> dict[str, Any]:
        """The whole stored document, as claimed (mongoqueue's ``Job.data``)."""
        return dict(self._doc)

    @property
    def priority(self) -> int:
        return int(self._doc["priority"])

    @property
    def attempts(self) -> int:
        """Deliveries so far, this one included."""
        return int(self._doc["attempts"])

    @property
    def max_attempts(self) -> int:
        return int(self._doc["max_attempts"])

    @property
    def consumer_id(self) -> str:
        return str(self._doc["consumer_id"])

    @property
    def locked_until(self) -> datetime:
        """When the lease runs out, by the server's clock."""
        return self._doc["locked_until"]  # type: ignore[no-any-return]

    @property
    def last_error(self) -> str | None:
        return self._doc.get("last_error")

    @property
    def progress_count(self) -> int | None:
        return self._doc.get("progress")

    @property
    def enqueued_at(self) -> datetime:
        return self._doc["enqueued_at"]  # type: ignore[no-any-return]

    @property
    def wait_seconds(self) -> float:
        """From falling due to being claimed, by the server's clock."""
        # A document written by hand (or by another tool) may lack either date:
        # a metric must not turn that into a failed claim.
        locked_at, available_at = self._doc.get("locked_at"), self._doc.get("available_at")
        if not isinstance(locked_at, datetime) or not isinstance(available_at, datetime):
            return 0.0
        return max(0.0, float((locked_at - available_at).total_seconds()))

    @property
    def run_seconds(self) -> float:
        return time.monotonic() - self._claimed

    @property
    def settled(self) -> bool:
        return self._settled

    @property
    def cancel_requested(self) -> bool:
        """``Queue.cancel`` asked to stop this job: learnt from the queue's change stream
        (while it is open), a ``progress()`` or a Worker's heartbeat. Settling with
        ``error()``/``release()`` then ends the job cancelled; ``complete()`` still completes it."""
        return self._cancel_requested

    def _note_cancel_requested(self) -> None:
        if not self._cancel_requested:
            self._cancel_requested = True
            log.info("job %s: cancel requested", self.id)

    @property
    def lease_token(self) -> str:
        return self._token

    def complete(self, result: Any = None, *, session: ClientSession | None = None) -> None:
        """The job is done: remove it, or keep it with ``result`` when the queue keeps completed jobs.

        ``result`` must be BSON-encodable and at most ``MAX_RESULT_BYTES``
        encoded; a bad one raises before anything changes, and so does any
        result on a queue with ``keep_completed=0`` (there is nowhere to keep it).

        ``session``: complete inside the caller's transaction, with the
        handler's own writes (see ``Queue.put``). If the transaction aborts,
        the job stays locked and its lease expires as usual. If the lease is
        lost, this raises ``LeaseLost``: let it out of the ``with_transaction``
        callback, which aborts the transaction.
        """
        store = self._queue.store
        if session is not None:
            self._queue.check_session(session)
        if result is not None:
            if store.keep_completed <= 0:
                raise ValueError("complete(result=...) needs a Queue with keep_completed > 0: "
                                 "with 0 the job is deleted and the result would be lost")
            check_result(result, len(bson.encode({"payload": self.payload})))
        if session is None:
            self._settle(lambda: store.complete(self.id, self._token, result))
        else:
            if not (self._settled and self._settled_in is session):
                self._begin_settle()
            self._settled_in = session
            if not store.complete_in_transaction(self.id, self._token, result, session):
                self._lost()
        # In a transaction: counted when written, though the caller may still abort it.
        self._queue.hooks.completed(self._queue.name, self.attempts, self.run_seconds)

    def error(self, message: str | None = None, *, retry_in: float | None = None) -> None:
        """The attempt failed: retry after the backoff, or dead-letter if out of attempts.

        ``retry_in`` overrides the queue's backoff for this retry (seconds).
        """
        text = truncate_error(message if message is not None else "error() called without a message")
        queue = self._queue
        if self._cancel_requested:
            # The store ends a job with a request cancelled, whatever the attempts left.
            self._settle(lambda: queue.store.requeue(
                self.id, self._token, delay=0.0, error=text, count_attempt=True))
            log.info("job %s stopped after its cancel request: cancelled", self.id)
            return
        if self.attempts >= self.max_attempts:
            self._settle(lambda: queue.store.bury(self.id, self._token, text))
            queue.hooks.failed(queue.name, self.attempts, self.run_seconds)
            queue.hooks.dead(queue.name, self.attempts)
            log.warning("job %s failed for good after %d attempts: %s",
                        self.id, self.attempts, error_summary(text))
            log.debug("job %s: its last error in full:\n%s", self.id, text)
            return
        if retry_in is None:
            delay = backoff_seconds(queue.backoff, self.attempts)
        else:
            delay = check_seconds("retry_in", retry_in)
        self._settle(lambda: queue.store.requeue(
            self.id, self._token, delay=delay, error=text, count_attempt=True))
        queue.hooks.failed(queue.name, self.attempts, self.run_seconds)
        # Retries must leave a trace: without this line a job failing twice
        # and then succeeding would be invisible in the log.
        log.warning("job %s attempt %d/%d failed: %s; retrying in %.1fs", self.id,
                    self.attempts, self.max_attempts, error_summary(text), delay)
        log.debug("job %s attempt %d failed with:\n%s", self.id, self.attempts, text)

    def release(self, *, delay: float = 0.0) -> None:
        """Hand the job back, due after ``delay`` seconds (server clock), without counting
        this attempt ("snooze")."""
        delay = check_seconds("delay", delay)
        self._settle(lambda: self._queue.store.requeue(
            self.id, self._token, delay=delay, error=None, count_attempt=False))
        self._queue.hooks.released(self._queue.name, self.run_seconds)

    def progress(self, count: int | None = None) -> None:
        """Record progress and extend the lease by the queue's lease time."""
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise TypeError(f"progress count must be an int, not {type(count).__name__}")
        if self._settled:
            raise LeaseLost(f"job {self.id} was already settled by this consumer")
        doc = self._queue.store.extend_lease(self.id, self._token, self._queue.lease, count)
        if doc is None:
            self._lost()
            return
        self._doc["locked_until"] = doc["locked_until"]
        if doc.get("cancel_requested"):
            self._note_cancel_requested()
        if count is not None:
            self._doc["progress"] = count

    def _settle(self, write: Callable[[], bool]) -> None:
        self._begin_settle()
        if not write():
            self._lost()

    def _begin_settle(self) -> None:
        if self._settled:
            raise LeaseLost(f"job {self.id} was already settled by this consumer")
        self._settled = True

    def _lost(self) -> None:
        self._queue.hooks.lease_lost(self._queue.name, self.run_seconds)
        raise LeaseLost(
            f"job {self.id} is no longer held by this claim (its lease expired and it was "
            "requeued or taken by another consumer); nothing was changed"
        )

    def __enter__(self) -> dict[str, Any]:
        return self.payload

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.complete()
            return
        try:
            self.error("".join(traceback.format_exception(exc_type, exc, tb)))
        except LeaseLost:
            log.warning("job %s raised, but its lease was already lost", self.id)


class Queue:
    """A job queue in one MongoDB collection; thread-safe, one change stream per object."""

    #: What ``claim`` wraps each claimed document in (``MongoQueue`` uses ``MongoJob``).
    job_type: ClassVar[type[Job]] = Job

    def __init__(
        self,
        collection: Collection[Document],
        consumer_id: str | None = None,
        *,
        lease: float = 300.0,
        max_attempts: int = 3,
        backoff: Backoff = 0.0,
        hooks: Hooks | None = None,
        sweep_interval: float = 30.0,
        poll_interval: float = 1.0,
        max_await: float = 5.0,
        pause_stream_after: float | None = 2.0,
        retry: RetryPolicy | None = None,
        keep_completed: float = 0.0,
    ) -> None:
        if not isinstance(collection, Collection):
            raise TypeError(f"collection must be a pymongo Collection, not {type(collection).__name__}")
        if consumer_id is not None and not isinstance(consumer_id, str):
            raise TypeError(f"consumer_id must be a str, not {type(consumer_id).__name__}")
        self.lease = check_seconds("lease", lease, allow_zero=False)
        self.max_attempts = check_max_attempts(max_attempts)
        self.backoff = check_backoff(backoff)
        self.sweep_interval = check_seconds("sweep_interval", sweep_interval, allow_zero=False)
        self.consumer_id = consumer_id or default_consumer_id()
        self.hooks = hooks or Hooks()
        self.keep_completed = check_keep(keep_completed)
        self.store = JobStore(collection, retry, keep_completed=self.keep_completed)
        self.board = WakeupBoard()
        self.watcher = ChangeStreamWatcher(
            self.store, self.board, self.hooks,
            max_await=check_seconds("max_await", max_await, allow_zero=False),
            poll_interval=check_seconds("poll_interval", poll_interval, allow_zero=False),
            pause_after=None if pause_stream_after is None else check_seconds(
                "pause_stream_after", pause_stream_after, allow_zero=False),
        )
        self._pause = PauseFlag(self.store.is_paused, self.watcher.stream_epoch)
        self.watcher.on_pause = self._pause.heard
        # Jobs this object handed out, by id, so a cancel request heard on the
        # stream reaches the one holding it (weak: a dropped Job needs no word).
        self._holding: weakref.WeakValueDictionary[ObjectId, Job] = weakref.WeakValueDictionary()
        self.watcher.on_cancel = self._cancel_heard

    def __repr__(self) -> str:
        return f"<Queue {self.store.jobs.full_name} consumer={self.consumer_id!r}>"

    @property
    def name(self) -> str:
        return self.store.name

    @property
    def collection(self) -> Collection[Document]:
        return self.store.jobs

    @property
    def failed(self) -> Collection[Document]:
        """The error queue: dead jobs, each under its original ``_id``."""
        return self.store.failed

    # -- producing ------------------------------------------------------------------

    def put(self, payload: Mapping[str, Any], *, priority: int | None = None,
            delay: float = 0.0, key: str | None = None, tags: Sequence[str] = (),
            session: ClientSession | None = None) -> ObjectId:
        """Enqueue one job; it is claimable after ``delay`` seconds (server clock).

        ``tags``: up to ``MAX_TAGS`` short strings to find it by (``jobs(tag=...)``).
        ``key``: while a job with this key is ready, delayed or locked in this
        queue, write nothing and return that job's id (a unique index decides).
        ``session``: write inside the caller's transaction (``session`` must be
        in one, from this queue's client): the job exists only if it commits.
        The caller's ``with_transaction`` does the retrying; this does none.
        """
        checked_key = None if key is None else check_key(key)
        if checked_key is None:
            return self.put_many([payload], priority=priority, delay=delay, tags=tags,
                                 session=session)[0]
        job = self._new_jobs([payload], priority, delay, tags, checked_key)[0]
        if session is not None:
            self.check_session(session)
            job_id, created = self.store.insert_in_transaction([job], session)[0]
        else:
            job_id, created = self.store.insert_keyed(job)
        if created:
            self.hooks.enqueued(self.name, 1)
        else:
            self.hooks.deduplicated(self.name, 1)
        return job_id

    def put_many(self, payloads: Iterable[Mapping[str, Any]], *, priority: int | None = None,
                 delay: float = 0.0, tags: Sequence[str] = (),
                 session: ClientSession | None = None) -> list[ObjectId]:
        """Enqueue several jobs in one round trip; all are checked before any is written.

        ``session``: as in ``put``, inside the caller's transaction.
        """
        if isinstance(payloads, Mapping | str | bytes):
            raise TypeError("put_many takes an iterable of payloads; use put() for one")
        new_jobs = self._new_jobs(payloads, priority, delay, tags, None)
        if session is not None:
            self.check_session(session)
        if not new_jobs:
            return []
        if session is not None:
            ids = [job_id for job_id, _ in self.store.insert_in_transaction(new_jobs, session)]
        else:
            ids = self.store.insert(new_jobs)  # creates the indexes once the jobs are known good
        self.hooks.enqueued(self.name, len(ids))
        return ids

    def _new_jobs(self, payloads: Iterable[Mapping[str, Any]], priority: int | None,
                  delay: float, tags: Sequence[str], key: str | None) -> list[NewJob]:
        delay = check_seconds("delay", delay)
        checked_tags = check_tags(tags)
        new_jobs = []
        for payload in payloads:
            checked = check_payload(payload)
            new_jobs.append(NewJob(checked, resolve_priority(checked, priority), delay,
                                   self.max_attempts, checked_tags, key))
        return new_jobs

    def check_session(self, session: object) -> ClientSession:
        """A session of this queue's client, in a transaction; else ValueError/TypeError."""
        if not isinstance(session, ClientSession):
            raise TypeError(f"session must be a pymongo ClientSession, not "
                            f"{type(session).__name__}")
        if session.client is not self.store.jobs.database.client:
            raise ValueError("session belongs to another MongoClient than this queue's "
                             "collection; a transaction cannot span clients")
        if not session.in_transaction:
            raise ValueError("session must be in a transaction (session.with_transaction or "
                             "start_transaction): outside one, the queue's own writes and "
                             "retries already make the put exactly once")
        return session

    # -- consuming ------------------------------------------------------------------

    def next(self, timeout: float | None = 0) -> Job | None:
        """Claim the next due job.

        ``timeout=0`` makes one claim attempt; a positive timeout waits up to
        that many seconds for a job; ``None`` waits until one comes.
        """
        jobs = self.next_batch(1, timeout)
        return jobs[0] if jobs else None

    def next_batch(self, limit: int, timeout: float | None = 0) -> list[Job]:
        """Claim up to ``limit`` due jobs, waiting as ``next`` does for the first."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive int, not {limit!r}")
        deadline = math.inf if timeout is None else time.monotonic() + check_seconds(
            "timeout", timeout)
        if timeout == 0:
            return self.claim(limit)
        self.watcher.start()
        with self.board.waiting():
            return self._wait_and_claim(limit, deadline)

    def _wait_and_claim(self, limit: int, deadline: float) -> list[Job]:
        woken = False
        wake: Wake | None = None
        while True:
            jobs = self.claim(limit)
            if jobs:
                if wake is Wake.DUE and len(jobs) == limit and self.board.waiters > 1:
                    # Jobs due together are one due time on the board (one wake):
                    # hand the DUE on, so waiters claim in turn until one finds none.
                    self.board.schedule(0.0)
                return jobs
            if woken:
                self.hooks.claim_empty(self.name)
            wake = self.wait_for_wakeup(deadline)
            if wake is Wake.TIMEOUT and time.monotonic() >= deadline:
                return []
            # After a resume the claim is the one made before waiting, not a wake-up.
            woken = wake is not Wake.RESUME

    def wait_for_wakeup(self, deadline: float) -> Wake:
        """Wait for a sign that a claim may succeed, a sweep, or the monotonic ``deadline``.

        The caller must be registered on ``self.board`` and must have started
        the watcher before its last claim attempt.
        """
        until = min(deadline, time.monotonic() + self.sweep_interval)
        wake = self.board.wait(until)
        if wake is Wake.RESUME:
            self.watcher.resume()
        elif wake is Wake.DUE:
            # That delayed job is due now; learn when the next one will be.
            self.watcher.refresh_due()
        return wake

    def claim(self, limit: int = 1) -> list[Job]:
        """One claim attempt for up to ``limit`` jobs, without waiting; none while paused."""
        self.store.ensure_indexes()  # a flag check, unless the collection was dropped
        if self._pause.paused():
            return []
        if limit == 1:
            doc = self.store.claim(self.consumer_id, self.lease)
            docs = [doc] if doc is not None else []
        else:
            docs = self.store.claim_many(self.consumer_id, self.lease, limit)
        jobs = [self.job_type(self, doc) for doc in docs]
        for job in jobs:
            self._holding[job.id] = job
            self.hooks.claimed(self.name, job.wait_seconds)
        return jobs

    def _cancel_heard(self, job_id: ObjectId) -> None:
        job = self._holding.get(job_id)
        if job is not None and not job.settled:
            job._note_cancel_requested()

    # -- control ----------------------------------------------------------------------

    def cancel(self, job_id: ObjectId | str) -> bool:
        """Cancel a job: a ready or delayed one at once (it is never delivered), a held one
        by asking its holder (``Job.cancel_requested``). False when it already finished
        or does not exist. Kept as "cancelled" for ``keep_completed`` seconds, deleted
        at once when that is 0."""
        return self.store.cancel(_object_id(job_id))

    def pause(self) -> None:
        """Stop every consumer of this queue, in every process, from claiming (within a
        second); held jobs run on and ``put`` still works. Stored in MongoDB: it lasts
        until ``resume``, across restarts."""
        self.store.set_paused(True)
        self._pause.heard(True)

    def resume(self) -> None:
        """Undo ``pause``; waiting consumers are woken through their change streams."""
        self.store.set_paused(False)
        self._pause.heard(False)
        self.board.notify_all()

    def is_paused(self) -> bool:
        """The stored switch, read now."""
        return self.store.is_paused()

    # -- schedules (docs/SCHEDULES.md) --------------------------------------------------

    def schedule(self, name: str, *, cron: str | None = None, every: float | timedelta | None = None,
                 payload: Mapping[str, Any] | None = None, priority: int | None = None,
                 timezone: str = "UTC", misfire: str = "latest", start_at: datetime | None = None,
                 end_at: datetime | None = None, catch_up: int = DEFAULT_CATCH_UP) -> None:
        """Create or change the schedule ``name``: a job with ``payload`` at each tick of
        ``cron`` (in ``timezone``) or of ``every`` seconds, fired by the reapers (and any
        ``Scheduler``) exactly once per tick. Calling it again with the same arguments
        changes nothing; with others, the new ticks start after now. Needs a replica set.

        ``misfire``: ticks missed while no scheduler ran: "latest" fires the most recent,
        "skip" none (unless at most 1 s late), "all" the most recent ``catch_up``.
        """
        spec = check_schedule(name, cron=cron, every=every, payload=payload, priority=priority,
                              timezone=timezone, misfire=misfire, start_at=start_at,
                              end_at=end_at, catch_up=catch_up, max_attempts=self.max_attempts)
        store = ScheduleStore(self.store)
        store.require_transactions()
        store.save(spec, store.clock_now())

    def unschedule(self, name: str) -> bool:
        """Remove the schedule ``name``; False if there was none. Fired jobs stay."""
        return ScheduleStore(self.store).remove(check_name(name))

    def schedules(self) -> list[ScheduleInfo]:
        """Every schedule of this queue, by name."""
        return [ScheduleInfo.from_document(doc) for doc in ScheduleStore(self.store).all()]

    def complete_many(self, jobs: Sequence[Job]) -> list[Job]:
        """Complete several held jobs in one round trip; return those whose lease was lost."""
        pending = [job for job in jobs if not job.settled]
        for job in pending:
            job._begin_settle()
        held = [(job.id, job.lease_token) for job in pending]
        done = self.store.complete_many(held)
        lost: list[Job] = []
        if done < len(pending):
            completed = self.store.completed_by(held)
            lost = [job for job in pending if job.id not in completed]
        for job in pending:
            if job in lost:
                self.hooks.lease_lost(self.name, job.run_seconds)
            else:
                self.hooks.completed(self.name, job.attempts, job.run_seconds)
        return lost

    # -- looking and upkeep -----------------------------------------------------------

    def size(self) -> int:
        """Jobs in the queue: available, locked and delayed (not the error queue, nor kept
        finished jobs)."""
        return self.store.size()

    def stats(self) -> dict[str, int]:
        """Jobs by state, counted at one instant of the server's clock.

        ``available`` (due, unclaimed), ``locked`` (lease running), ``expired``
        (lease run out, not yet handed on by the reaper), ``delayed`` (not yet
        due), ``dead`` (in the error queue; also under its deprecated name
        ``failed``), ``completed`` and ``cancelled`` (finished jobs kept by
        ``keep_completed``) and ``total`` (all of them, the error queue and kept jobs
        included).
        """
        counts = self.store.counts()
        return {
            "available": counts.available,
            "locked": counts.locked,
            "expired": counts.expired,
            "delayed": counts.delayed,
            "dead": counts.failed,
            "failed": counts.failed,  # deprecated name of "dead": the error queue
            "completed": counts.completed,
            "cancelled": counts.cancelled,
            "total": counts.total,
        }

    def get(self, job_id: ObjectId | str) -> JobInfo | None:
        """The job as stored now, in the queue or its error queue; None if there is none."""
        oid = _object_id(job_id)
        found = self.store.find_job(oid)
        if found is None:
            return None
        doc, dead = found
        # Only a ready job needs the clock (ready or delayed): one round trip less otherwise.
        now = self.store.server_now() if doc.get("state") == "ready" else _EPOCH
        return JobInfo.from_document(doc, dead=dead, now=now)

    def _known(self, job_id: ObjectId) -> JobInfo:
        info = self.get(job_id)
        if info is None:
            raise JobNotFound(f"no job {job_id} in {self.name} or its error queue")
        return info

    def jobs(self, state: str | None = None, *, tag: str | None = None, key: str | None = None,
             limit: int = 100, after: ObjectId | str | None = None) -> list[JobInfo]:
        """Up to ``limit`` jobs, newest first (``_id`` descending), by state, tag or key.

        ``after``: the last id of the previous page; this page holds older jobs.
        ``state``: one of ``JOB_STATES`` ("failed" is the error queue).
        """
        if state is not None and state not in JOB_STATES:
            raise ValueError(f"state must be one of {', '.join(JOB_STATES)}, not {state!r}")
        if tag is not None:
            check_tag(tag)
        if key is not None:
            check_key(key)
        limit = check_limit(limit)
        start = None if after is None else _object_id(after)
        now = self.store.server_now()
        found = self.store.list_jobs(state, tag=tag, key=key, limit=limit, after=start, now=now)
        return [JobInfo.from_document(doc, dead=dead, now=now) for doc, dead in found]

    def result(self, job_id: ObjectId | str, *, timeout: float | None = None) -> Any:
        """Wait until the job finishes; return its result (kept by ``keep_completed``).

        Raises ``JobFailed`` (dead-lettered), ``JobCancelled``, ``JobNotFound``
        (no such job, or gone: completed by a queue that keeps nothing, or
        removed by the TTL), ``TimeoutError`` after ``timeout`` seconds.
        Waits on a change stream, opened before the first read so no change is missed.
        """
        oid = _object_id(job_id)
        deadline = math.inf if timeout is None else time.monotonic() + check_seconds(
            "timeout", timeout)
        try:
            changes = JobChanges(self.store, oid)
        except ConfigurationError:
            # No change streams (standalone): a finished job still has its
            # answer, but waiting for one would mean polling.
            info = self._known(oid)
            if info.state in FINISHED:
                return _outcome(info)
            raise
        with changes:
            while True:
                info = self._known(oid)
                if info.state in FINISHED:
                    return _outcome(info)
                if not changes.wait(deadline):
                    raise TimeoutError(f"job {oid} is still {info.state} after {timeout:g}s")

    def oldest_available_age(self) -> float:
        return self.store.oldest_available_age()

    def reap(self) -> int:
        """Handle expired leases: requeue, or dead-letter once out of attempts. Returns how many."""
        self.store.ensure_indexes()
        result = self.store.reap()
        if result.expired:
            self.hooks.leases_expired(self.name, result.expired)
            log.info("reaped %d expired leases on %s: %d requeued, %d dead, %d cancelled",
                     result.expired, self.name, result.requeued, len(result.dead),
                     result.cancelled)
        for doc in result.dead:
            self.hooks.dead(self.name, int(doc.get("attempts", 0)))
        return result.expired

    def retry_failed(self, job_id: ObjectId | None = None) -> int:
        """Move one dead job (or all) back into the queue with a fresh set of attempts."""
        moved = self.store.retry_failed(job_id)
        if moved:
            # Only once something moved: a mistyped queue name must not create
            # an empty queue (and its error queue) with indexes.
            self.store.ensure_indexes()
        return moved

    def purge_failed(self, job_id: ObjectId | None = None) -> int:
        return self.store.purge_failed(job_id)

    def clear(self) -> None:
        """Delete every job, in the queue and in its error queue."""
        self.store.clear()

    def close(self) -> None:
        """Stop the change stream thread. The collection's client is the caller's to close."""
        self.watcher.stop()

    def __enter__(self: _QueueT) -> _QueueT:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_EPOCH = datetime(1970, 1, 1)


def _object_id(value: object) -> ObjectId:
    if isinstance(value, ObjectId):
        return value
    if isinstance(value, str):
        if ObjectId.is_valid(value):
            return ObjectId(value)
        raise ValueError(f"not a job id (24 hex digits): {value!r}")
    raise TypeError(f"a job id must be an ObjectId or its hex string, not {type(value).__name__}")


def _outcome(info: JobInfo) -> Any:
    if info.state == "completed":
        return info.result
    if info.state == "cancelled":
        raise JobCancelled(f"job {info.id} was cancelled")
    raise JobFailed(f"job {info.id} failed after {info.attempts} attempts: "
                    f"{error_summary(info.last_error or '')}", info.last_error)


#: The fields the 2012 mongoqueue kept in every job document, as ``MongoJob.data`` names them.
MONGOQUEUE_FIELDS = ("_id", "priority", "attempts", "locked_by", "locked_at", "last_error")


class MongoJob(Job):
    """A claimed job as mongoqueue's ``Job`` showed it: ``job_id``, ``data``, ``locked_by``.

    mongoqueue (2012) stored the dict given to ``put`` at the top level of the
    job document, so its users read their fields as ``job.data["key"]`` and
    ``with job as data: data["key"]``; later versions (0.6+) stored it under
    ``"payload"``. ``data`` answers both: the payload's keys at the top level,
    then the job's own fields over them (``_id``, ``priority``, ``attempts``,
    ``locked_by``, ``locked_at``, ``last_error``, ``payload`` and streamqueue's
    fields), which win a name clash as mongoqueue's did when it claimed a job.
    """

    @property
    def job_id(self) -> ObjectId:
        return self.id

    @property
    def locked_by(self) -> str:
        return self.consumer_id

    @property
    def locked_at(self) -> datetime | None:
        return self._doc.get("locked_at")

    @property
    def data(self) -> dict[str, Any]:
        """The put dict's keys at the top level, then the job's fields (a copy).

        ``data["attempts"]`` counts as mongoqueue did, the attempts that ended
        in an error or an expired lock before this one; ``Job.attempts`` keeps
        streamqueue's count, deliveries with this one included.
        """
        doc = dict(self._doc)
        doc["attempts"] = max(0, self.attempts - 1)
        doc["locked_by"] = doc.get("consumer_id")
        doc.setdefault("last_error", None)
        return {**self.payload, **doc}

    def __enter__(self) -> dict[str, Any]:
        return self.data


class MongoQueue(Queue):
    """The 2012 ``mongoqueue`` signature: ``timeout`` is the lease in seconds."""

    def __init__(
        self,
        collection: Collection[Document],
        consumer_id: str,
        timeout: float = 300,
        max_attempts: int = 3,
        **options: Any,
    ) -> None:
        super().__init__(collection, consumer_id, lease=timeout, max_attempts=max_attempts,
                         **options)

    job_type = MongoJob

    @property
    def timeout(self) -> float:
        """mongoqueue's name for the lease, in seconds."""
        return self.lease

    def put(self, payload: Mapping[str, Any], priority: int | None = None, *,
            delay: float = 0.0, key: str | None = None, tags: Sequence[str] = (),
            session: ClientSession | None = None) -> ObjectId:
        """Enqueue ``payload``; ``priority`` may be given by position, as mongoqueue 0.6+ took it.

        Left out, the payload's own ``"priority"`` key sets it (mongoqueue 2012), else 0.
        """
        return super().put(payload, priority=priority, delay=delay, key=key, tags=tags,
                           session=session)

    def next(self, timeout: float | None = 0) -> MongoJob | None:
        """Claim the next due job, or None at once if there is none (mongoqueue's ``next()``)."""
        return cast("MongoJob | None", super().next(timeout))  # job_type makes every job one

    def stats(self) -> dict[str, int]:
        """Queue's counts plus mongoqueue's ``errors``: jobs out of attempts (the error queue).

        mongoqueue left such jobs in the queue; here they are in ``NAME.failed``,
        and ``total`` counts them as mongoqueue's did.
        """
        stats = super().stats()
        stats["errors"] = stats["failed"]
        return stats

    def repair(self) -> int:
        """mongoqueue's name for handling expired locks."""
        return self.reap()

    def drop_max_attempts(self) -> int:
        """mongoqueue 0.6+: delete the jobs that ran out of attempts (the error queue here)."""
        return self.purge_failed()

    def drop(self) -> None:
        self.clear()
