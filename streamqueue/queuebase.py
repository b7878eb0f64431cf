"""What ``Queue``/``Job`` and ``AsyncQueue``/``AsyncJob`` share: validation, documents,
decisions and every step, as plans (``streamqueue.plan``).

``Queue`` runs these plans with the sync runner, ``AsyncQueue`` awaits them
with the async one; each public method of either is a line or two around the
plan of the same name here. The steps that differ by flavour (waiting on the
wake-up board, reopening the stream, the overridable ``claim``) are the
subclasses' ``_claim_step``, ``_wake_step`` and ``_resume_step``, each an
``Invoke`` the runner calls (and awaits, for asyncio).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import traceback
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, TypeVar

import bson
from bson import ObjectId

from streamqueue.errors import ConfigurationError, JobCancelled, JobFailed, JobNotFound, LeaseLost
from streamqueue.hooks import Hooks
from streamqueue.jobinfo import FINISHED, JOB_STATES, JobInfo
from streamqueue.pause import PauseFlag
from streamqueue.plan import Invoke, Plan
from streamqueue.schedule import ScheduleInfo, check_name, check_schedule
from streamqueue.storage import Document, NewJob, StorePlans
from streamqueue.storage.schedules import SchedulePlans
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
from streamqueue.watcher import StreamEvents

# Job outcomes have always been logged as "streamqueue.queue": logging set up by
# that name keeps working for Queue and AsyncQueue alike.
log = logging.getLogger("streamqueue.queue")

J = TypeVar("J", bound="JobBase")


def error_summary(text: str) -> str:
    """One line for the log: a traceback's last line (``Type: message``), else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


def default_consumer_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def traceback_text(exc_type: type[BaseException] | None, exc: BaseException | None,
                   tb: TracebackType | None) -> str:
    return "".join(traceback.format_exception(exc_type, exc, tb))


class JobBase:
    """One claim of one job: its document, and each way of settling it as a plan."""

    def __init__(self, queue: QueueBase[Any], doc: Document) -> None:
        self._queue = queue
        self._doc = doc
        self._token: str = doc["lease_token"]
        self._claimed = time.monotonic()
        self._settled = False
        # The session whose transaction completed the job: its with_transaction
        # may run the callback again, and complete() with it again.
        self._settled_in: Any = None
        self._cancel_requested = bool(doc.get("cancel_requested"))

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.id} attempt {self.attempts}/{self.max_attempts} "
                f"on {self._queue.name}>")

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
        """``cancel`` asked to stop this job: learnt from the queue's change stream
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

    def _complete(self, result: Any, session: Any) -> Plan[None]:
        queue = self._queue
        plans = queue.plans
        if session is not None:
            queue.check_session(session)
        if result is not None:
            if plans.keep_completed <= 0:
                raise ValueError("complete(result=...) needs a Queue with keep_completed > 0: "
                                 "with 0 the job is deleted and the result would be lost")
            check_result(result, len(bson.encode({"payload": self.payload})))
        if session is None:
            yield from self._settle(plans.complete(self.id, self._token, result))
        else:
            if not (self._settled and self._settled_in is session):
                self._begin_settle()
            self._settled_in = session
            if not (yield from plans.complete_in_transaction(self.id, self._token, result,
                                                             session)):
                self._lost()
        # In a transaction: counted when written, though the caller may still abort it.
        queue.hooks.completed(queue.name, self.attempts, self.run_seconds)

    def _error(self, message: str | None, retry_in: float | None) -> Plan[None]:
        text = truncate_error(message if message is not None else "error() called without a message")
        queue = self._queue
        plans = queue.plans
        if self._cancel_requested:
            # The store ends a job with a request cancelled, whatever the attempts left.
            yield from self._settle(plans.requeue(
                self.id, self._token, delay=0.0, error=text, count_attempt=True))
            log.info("job %s stopped after its cancel request: cancelled", self.id)
            return
        if self.attempts >= self.max_attempts:
            yield from self._settle(plans.bury(self.id, self._token, text))
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
        yield from self._settle(plans.requeue(
            self.id, self._token, delay=delay, error=text, count_attempt=True))
        queue.hooks.failed(queue.name, self.attempts, self.run_seconds)
        # Retries must leave a trace: without this line a job failing twice
        # and then succeeding would be invisible in the log.
        log.warning("job %s attempt %d/%d failed: %s; retrying in %.1fs", self.id,
                    self.attempts, self.max_attempts, error_summary(text), delay)
        log.debug("job %s attempt %d failed with:\n%s", self.id, self.attempts, text)

    def _fail(self, message: str) -> Plan[None]:
        """Dead-letter now, whatever the attempts left: retrying cannot help."""
        text = truncate_error(message)
        queue = self._queue
        yield from self._settle(queue.plans.bury(self.id, self._token, text))
        queue.hooks.failed(queue.name, self.attempts, self.run_seconds)
        queue.hooks.dead(queue.name, self.attempts)
        log.warning("job %s failed for good (not retried): %s", self.id, error_summary(text))

    def _release(self, delay: float) -> Plan[None]:
        delay = check_seconds("delay", delay)
        yield from self._settle(self._queue.plans.requeue(
            self.id, self._token, delay=delay, error=None, count_attempt=False))
        self._queue.hooks.released(self._queue.name, self.run_seconds)

    def _progress(self, count: int | None) -> Plan[None]:
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise TypeError(f"progress count must be an int, not {type(count).__name__}")
        if self._settled:
            raise LeaseLost(f"job {self.id} was already settled by this consumer")
        doc = yield from self._queue.plans.extend_lease(self.id, self._token, self._queue.lease,
                                                         count)
        if doc is None:
            self._lost()
            return
        self._doc["locked_until"] = doc["locked_until"]
        if doc.get("cancel_requested"):
            self._note_cancel_requested()
        if count is not None:
            self._doc["progress"] = count

    def _settle(self, write: Plan[bool]) -> Plan[None]:
        self._begin_settle()
        if not (yield from write):
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

    def _exit(self, exc_type: type[BaseException] | None, exc: BaseException | None,
              tb: TracebackType | None) -> Plan[None]:
        """Leaving ``with job``: complete on success, ``error`` with the traceback on an exception."""
        if exc is None:
            yield from self._complete(None, None)
            return
        try:
            yield from self._error(traceback_text(exc_type, exc, tb), None)
        except LeaseLost:
            log.warning("job %s raised, but its lease was already lost", self.id)


class QueueBase(Generic[J]):
    """Options, validation and every operation of a queue as a plan; see the module doc."""

    def __init__(self, consumer_id: str | None, *, lease: float, max_attempts: int,
                 backoff: Backoff, hooks: Hooks | None, sweep_interval: float,
                 keep_completed: float) -> None:
        if consumer_id is not None and not isinstance(consumer_id, str):
            raise TypeError(f"consumer_id must be a str, not {type(consumer_id).__name__}")
        self.lease = check_seconds("lease", lease, allow_zero=False)
        self.max_attempts = check_max_attempts(max_attempts)
        self.backoff = check_backoff(backoff)
        self.sweep_interval = check_seconds("sweep_interval", sweep_interval, allow_zero=False)
        self.consumer_id = consumer_id or default_consumer_id()
        self.hooks = hooks or Hooks()
        self.keep_completed = check_keep(keep_completed)
        # Jobs this object handed out, by id, so a cancel request heard on the
        # stream reaches the one holding it (weak: a dropped Job needs no word).
        self._holding: weakref.WeakValueDictionary[ObjectId, J] = weakref.WeakValueDictionary()

    def _attach(self, plans: StorePlans, board: WakeupBoard, watcher: StreamEvents,
                pause: PauseFlag) -> None:
        """The subclass's store, board and watcher, made with its own driver."""
        self.plans = plans
        self.board = board
        self._events = watcher
        self._pause = pause
        watcher.on_pause = pause.heard
        watcher.on_cancel = self._cancel_heard

    @property
    def name(self) -> str:
        name: str = self.plans.jobs.name
        return name

    # -- what differs by flavour --------------------------------------------------------

    def _make_job(self, doc: Document) -> J:
        raise NotImplementedError

    def _claim_step(self, limit: int) -> Invoke:
        """The public ``claim`` (which a subclass may override), as a step."""
        raise NotImplementedError

    def _wake_step(self, until: float) -> Invoke:
        raise NotImplementedError

    def _resume_step(self) -> Invoke:
        raise NotImplementedError

    def _session_client(self, session: object) -> Any:
        """The client of ``session`` if it is a session of this flavour; else TypeError."""
        raise NotImplementedError

    def _closing(self) -> bool:
        """True once waiters should stop waiting (an ``AsyncQueue`` after ``close``)."""
        return False

    # -- producing ------------------------------------------------------------------

    def _put(self, payload: Mapping[str, Any], priority: int | None, delay: float,
             key: str | None, tags: Sequence[str], session: Any,
             max_attempts: int | None = None, lease: float | None = None) -> Plan[ObjectId]:
        checked_key = None if key is None else check_key(key)
        if checked_key is None:
            ids = yield from self._put_many([payload], priority, delay, tags, session,
                                            max_attempts, lease)
            return ids[0]
        job = self._new_jobs([payload], priority, delay, tags, checked_key, max_attempts,
                             lease)[0]
        if session is not None:
            self.check_session(session)
            written = yield from self.plans.insert_in_transaction([job], session)
            job_id, created = written[0]
        else:
            job_id, created = yield from self.plans.insert_keyed(job)
        if created:
            self.hooks.enqueued(self.name, 1)
        else:
            self.hooks.deduplicated(self.name, 1)
        return job_id

    def _put_many(self, payloads: Iterable[Mapping[str, Any]], priority: int | None,
                  delay: float, tags: Sequence[str], session: Any,
                  max_attempts: int | None = None,
                  lease: float | None = None) -> Plan[list[ObjectId]]:
        if isinstance(payloads, Mapping | str | bytes):
            raise TypeError("put_many takes an iterable of payloads; use put() for one")
        new_jobs = self._new_jobs(payloads, priority, delay, tags, None, max_attempts, lease)
        if session is not None:
            self.check_session(session)
        if not new_jobs:
            return []
        if session is not None:
            written = yield from self.plans.insert_in_transaction(new_jobs, session)
            ids = [job_id for job_id, _ in written]
        else:
            # Creates the indexes once the jobs are known good.
            ids = yield from self.plans.insert(new_jobs)
        self.hooks.enqueued(self.name, len(ids))
        return ids

    def _new_jobs(self, payloads: Iterable[Mapping[str, Any]], priority: int | None,
                  delay: float, tags: Sequence[str], key: str | None,
                  max_attempts: int | None = None, lease: float | None = None) -> list[NewJob]:
        delay = check_seconds("delay", delay)
        checked_tags = check_tags(tags)
        # Stored in each job, so a per-job limit or lease needs nothing of the consumer.
        attempts = self.max_attempts if max_attempts is None else check_max_attempts(
            max_attempts)
        own_lease = None if lease is None else check_seconds("lease", lease, allow_zero=False)
        new_jobs = []
        for payload in payloads:
            checked = check_payload(payload)
            new_jobs.append(NewJob(checked, resolve_priority(checked, priority), delay,
                                   attempts, checked_tags, key, own_lease))
        return new_jobs

    def check_session(self, session: object) -> Any:
        """A session of this queue's client, in a transaction; else ValueError/TypeError."""
        if self._session_client(session) is not self.plans.client:
            raise ValueError("session belongs to another MongoClient than this queue's "
                             "collection; a transaction cannot span clients")
        if not getattr(session, "in_transaction", False):
            raise ValueError("session must be in a transaction (session.with_transaction or "
                             "start_transaction): outside one, the queue's own writes and "
                             "retries already make the put exactly once")
        return session

    # -- consuming ------------------------------------------------------------------

    @staticmethod
    def _deadline(limit: int, timeout: float | None) -> float:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive int, not {limit!r}")
        return math.inf if timeout is None else time.monotonic() + check_seconds(
            "timeout", timeout)

    def _wait_and_claim(self, limit: int, deadline: float) -> Plan[list[J]]:
        """Claim, and between empty claims wait for a wake-up, until jobs or the deadline.

        The caller has started the watcher and registered on the board.
        """
        woken = False
        wake: Wake | None = None
        # Proposal 1 (docs/PERFORMANCE.md): a fleet view that has seen every ready
        # job since an empty claim knows this claim would find nothing.
        skip = self.knows_empty()
        while True:
            jobs: list[J] = [] if skip else (yield self._claim_step(limit))
            skip = False
            if jobs:
                if wake is Wake.DUE and len(jobs) == limit and self.board.waiters > 1:
                    # Jobs due together are one due time on the board (one wake):
                    # hand the DUE on, so waiters claim in turn until one finds none.
                    self.board.schedule(0.0)
                return jobs
            if woken:
                self.hooks.claim_empty(self.name)
            wake = yield from self._wait_for_wakeup(deadline)
            if wake is Wake.TIMEOUT and (time.monotonic() >= deadline or self._closing()):
                return []
            # After a resume the claim is the one made before waiting, not a wake-up.
            woken = wake is not Wake.RESUME

    def _wait_for_wakeup(self, deadline: float) -> Plan[Wake]:
        until = min(deadline, time.monotonic() + self.sweep_interval)
        wake: Wake = yield self._wake_step(until)
        fleet = self._events.fleet
        if fleet is not None and (wake is Wake.DUE or (
                wake is Wake.TIMEOUT and time.monotonic() < deadline)):
            # Delayed jobs falling due and whatever a sweep is for: no event tells the view.
            fleet.view.forget_empty()
        if wake is Wake.RESUME:
            yield self._resume_step()
        elif wake is Wake.DUE:
            # That delayed job is due now; learn when the next one will be.
            yield from self._events.refresh_due_plan()
        return wake

    def _claim(self, limit: int) -> Plan[list[J]]:
        yield from self.plans.ensure_indexes()  # a flag check, unless the collection was dropped
        if (yield from self._paused_now()):
            return []
        docs = yield from self._counted_claim(limit)
        jobs = [self._make_job(doc) for doc in docs]
        for job in jobs:
            self._holding[job.id] = job
            self.hooks.claimed(self.name, job.wait_seconds)
        return jobs

    def _counted_claim(self, limit: int) -> Plan[list[Document]]:
        """The claim itself, told to the fleet view (if any): in flight, then what it found."""
        fleet = self._events.fleet
        token = fleet.view.claim_started() if fleet is not None else None
        found: list[Document] | None = None
        raced = False
        try:
            if limit == 1:
                doc = yield from self.plans.claim(self.consumer_id, self.lease)
                found = [doc] if doc is not None else []
            else:
                batch = yield from self.plans.claim_many(self.consumer_id, self.lease, limit)
                found, raced = batch.docs, batch.raced
            if raced:
                # Short only because other claims kept taking what it read: not the end
                # of a backlog. Wake a waiter to claim again, as an insert would.
                self.board.notify(1)
            return found
        finally:
            if fleet is not None:
                fleet.note_claim(full=raced or (found is not None and len(found) == limit))
            if fleet is not None and token is not None:
                # An empty batch claim may have lost every round to other claims (all
                # read the same head of the queue): only a single claim proves emptiness.
                unproven = found is None or (limit > 1 and not found)
                fleet.view.claim_done(token, None if unproven or found is None
                                      else [doc["_id"] for doc in found])
                fleet.sync()

    def knows_empty(self) -> bool:
        """True when this queue's fleet view knows a claim now would find nothing."""
        fleet = self._events.fleet
        return fleet is not None and fleet.view.knows_empty()

    def _paused_now(self) -> Plan[bool]:
        known, seen = self._pause.known()
        if known is not None:
            return known
        return self._pause.learned((yield from self.plans.is_paused()), seen)

    def _cancel_heard(self, job_id: ObjectId) -> None:
        job = self._holding.get(job_id)
        if job is not None and not job.settled:
            job._note_cancel_requested()

    # -- control ----------------------------------------------------------------------

    def _set_paused(self, paused: bool) -> Plan[None]:
        yield from self.plans.set_paused(paused)
        self._pause.heard(paused)
        if not paused:
            self.board.notify_all()

    def _complete_many(self, jobs: Sequence[J]) -> Plan[list[J]]:
        pending = [job for job in jobs if not job.settled]
        for job in pending:
            job._begin_settle()
        held = [(job.id, job.lease_token) for job in pending]
        done = yield from self.plans.complete_many(held)
        lost: list[J] = []
        if done < len(pending):
            completed = yield from self.plans.completed_by(held)
            lost = [job for job in pending if job.id not in completed]
        for job in pending:
            if job in lost:
                self.hooks.lease_lost(self.name, job.run_seconds)
            else:
                self.hooks.completed(self.name, job.attempts, job.run_seconds)
        return lost

    # -- schedules (docs/SCHEDULES.md) ------------------------------------------------

    def _schedule(self, name: str, **options: Any) -> Plan[None]:
        """``schedule``'s checks and write; ``options`` are its keyword arguments."""
        spec = check_schedule(name, max_attempts=self.max_attempts, **options)
        schedules = SchedulePlans(self.plans)
        yield from schedules.require_transactions()
        yield from schedules.save(spec, (yield from schedules.clock_now()))

    def _unschedule(self, name: str) -> Plan[bool]:
        return (yield from SchedulePlans(self.plans).remove(check_name(name)))

    def _schedules(self) -> Plan[list[ScheduleInfo]]:
        docs = yield from SchedulePlans(self.plans).all()
        return [ScheduleInfo.from_document(doc) for doc in docs]

    # -- looking and upkeep -----------------------------------------------------------

    def _stats(self) -> Plan[dict[str, int]]:
        counts = yield from self.plans.counts()
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

    def _get(self, job_id: ObjectId | str) -> Plan[JobInfo | None]:
        found = yield from self.plans.find_job(object_id(job_id))
        if found is None:
            return None
        doc, dead = found
        # Only a ready job needs the clock (ready or delayed): one round trip less otherwise.
        now = (yield from self.plans.server_now()) if doc.get("state") == "ready" else _EPOCH
        return JobInfo.from_document(doc, dead=dead, now=now)

    def _known(self, job_id: ObjectId) -> Plan[JobInfo]:
        info = yield from self._get(job_id)
        if info is None:
            raise JobNotFound(f"no job {job_id} in {self.name} or its error queue")
        return info

    def _jobs(self, state: str | None, tag: str | None, key: str | None, limit: int,
              after: ObjectId | str | None) -> Plan[list[JobInfo]]:
        if state is not None and state not in JOB_STATES:
            raise ValueError(f"state must be one of {', '.join(JOB_STATES)}, not {state!r}")
        if tag is not None:
            check_tag(tag)
        if key is not None:
            check_key(key)
        limit = check_limit(limit)
        start = None if after is None else object_id(after)
        now = yield from self.plans.server_now()
        found = yield from self.plans.list_jobs(state, tag=tag, key=key, limit=limit, after=start,
                                                now=now)
        return [JobInfo.from_document(doc, dead=dead, now=now) for doc, dead in found]

    def _result(self, job_id: ObjectId | str, timeout: float | None) -> Plan[Any]:
        oid = object_id(job_id)
        deadline = math.inf if timeout is None else time.monotonic() + check_seconds(
            "timeout", timeout)
        try:
            stream = yield from self.plans.watch_job(oid)
        except ConfigurationError:
            # No change streams (standalone): a finished job still has its
            # answer, but waiting for one would mean polling.
            info = yield from self._known(oid)
            if info.state in FINISHED:
                return outcome(info)
            raise
        try:
            while True:
                info = yield from self._known(oid)
                if info.state in FINISHED:
                    return outcome(info)
                if not (yield from self.plans.wait_job(stream, deadline)):
                    raise TimeoutError(f"job {oid} is still {info.state} after {timeout:g}s")
        finally:
            yield from self.plans.close_stream(stream)

    def _reap(self) -> Plan[int]:
        yield from self.plans.ensure_indexes()
        result = yield from self.plans.reap()
        if result.expired:
            self.hooks.leases_expired(self.name, result.expired)
            log.info("reaped %d expired leases on %s: %d requeued, %d dead, %d cancelled",
                     result.expired, self.name, result.requeued, len(result.dead),
                     result.cancelled)
        for doc in result.dead:
            self.hooks.dead(self.name, int(doc.get("attempts", 0)))
        return result.expired

    def _retry_failed(self, job_id: ObjectId | None) -> Plan[int]:
        moved = yield from self.plans.retry_failed(job_id)
        if moved:
            # Only once something moved: a mistyped queue name must not create
            # an empty queue (and its error queue) with indexes.
            yield from self.plans.ensure_indexes()
        return moved


_EPOCH = datetime(1970, 1, 1)


def object_id(value: object) -> ObjectId:
    if isinstance(value, ObjectId):
        return value
    if isinstance(value, str):
        if ObjectId.is_valid(value):
            return ObjectId(value)
        raise ValueError(f"not a job id (24 hex digits): {value!r}")
    raise TypeError(f"a job id must be an ObjectId or its hex string, not {type(value).__name__}")


def outcome(info: JobInfo) -> Any:
    if info.state == "completed":
        return info.result
    if info.state == "cancelled":
        raise JobCancelled(f"job {info.id} was cancelled")
    raise JobFailed(f"job {info.id} failed after {info.attempts} attempts: "
                    f"{error_summary(info.last_error or '')}", info.last_error)
