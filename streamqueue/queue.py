"""The public API: ``Queue`` (produce, claim, inspect) and ``Job`` (one claim of one job)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, ClassVar, TypeVar, cast

from bson import ObjectId
from pymongo.client_session import ClientSession
from pymongo.collection import Collection

from streamqueue.fleet import DEFAULT_PATIENCE
from streamqueue.fleetlink import FleetLink
from streamqueue.hooks import Hooks
from streamqueue.jobinfo import JobInfo
from streamqueue.pause import PauseFlag
from streamqueue.plan import Invoke
from streamqueue.queuebase import (
    JobBase,
    QueueBase,
    default_consumer_id,
    error_summary,
    object_id,
    outcome,
)
from streamqueue.retry import RetryPolicy
from streamqueue.schedule import DEFAULT_CATCH_UP, ScheduleInfo
from streamqueue.storage import Document, JobStore
from streamqueue.storage.runner import run
from streamqueue.validation import Backoff
from streamqueue.wakeups import Wake, WakeupBoard
from streamqueue.watcher import ChangeStreamWatcher, watcher_options

__all__ = ["Job", "MongoJob", "MongoQueue", "Queue", "default_consumer_id", "error_summary",
           "object_id", "outcome"]

_QueueT = TypeVar("_QueueT", bound="Queue")


class Job(JobBase):
    """One claim of one job. Settle it exactly once: complete, error or release.

    Every method acts only while this claim holds the lease; otherwise it raises
    ``LeaseLost`` and changes nothing.
    """

    _queue: Queue

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
        run(self._complete(result, session))

    def error(self, message: str | None = None, *, retry_in: float | None = None) -> None:
        """The attempt failed: retry after the backoff, or dead-letter if out of attempts.

        ``retry_in`` overrides the queue's backoff for this retry (seconds).
        """
        run(self._error(message, retry_in))

    def fail(self, message: str) -> None:
        """Move the job to the error queue now, without a retry (retrying cannot help:
        a bad payload, a task this worker does not know)."""
        run(self._fail(message))

    def release(self, *, delay: float = 0.0) -> None:
        """Hand the job back, due after ``delay`` seconds (server clock), without counting
        this attempt ("snooze")."""
        run(self._release(delay))

    def progress(self, count: int | None = None) -> None:
        """Record progress and extend the lease by the queue's lease time."""
        run(self._progress(count))

    def __enter__(self) -> dict[str, Any]:
        return self.payload

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        run(self._exit(exc_type, exc, tb))


class Queue(QueueBase[Job]):
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
        fleet: int | None = None,
        fleet_patience: float = DEFAULT_PATIENCE,
    ) -> None:
        """``fleet``: join the queue's fleet with this many slots (a Worker's concurrency),
        so that one process, not every one, claims each job (docs/DESIGN.md, "The fleet");
        None (the default) keeps every process claiming on every event."""
        if not isinstance(collection, Collection):
            raise TypeError(f"collection must be a pymongo Collection, not {type(collection).__name__}")
        super().__init__(consumer_id, lease=lease, max_attempts=max_attempts, backoff=backoff,
                         hooks=hooks, sweep_interval=sweep_interval,
                         keep_completed=keep_completed)
        self.store = JobStore(collection, retry, keep_completed=self.keep_completed)
        self.board = WakeupBoard()
        self.watcher = ChangeStreamWatcher(
            self.store, self.board, self.hooks, **watcher_options(
                max_await=max_await, poll_interval=poll_interval,
                pause_stream_after=pause_stream_after))
        if fleet is not None:
            self.watcher.fleet = FleetLink(self.store.plans, self.board, self.consumer_id, fleet,
                                           patience=fleet_patience)
        self._attach(self.store.plans, self.board, self.watcher,
                     PauseFlag(self.store.is_paused, self.watcher.stream_epoch))

    def __repr__(self) -> str:
        return f"<Queue {self.store.jobs.full_name} consumer={self.consumer_id!r}>"

    @property
    def collection(self) -> Collection[Document]:
        return self.store.jobs

    @property
    def failed(self) -> Collection[Document]:
        """The error queue: dead jobs, each under its original ``_id``."""
        return self.store.failed

    def _make_job(self, doc: Document) -> Job:
        return self.job_type(self, doc)

    def _claim_step(self, limit: int) -> Invoke:
        return Invoke(lambda: self.claim(limit))

    def _wake_step(self, until: float) -> Invoke:
        return Invoke(lambda: self.board.wait(until))

    def _resume_step(self) -> Invoke:
        return Invoke(self.watcher.resume)

    def _session_client(self, session: object) -> Any:
        if not isinstance(session, ClientSession):
            raise TypeError(f"session must be a pymongo ClientSession, not "
                            f"{type(session).__name__}")
        return session.client

    # -- producing ------------------------------------------------------------------

    def put(self, payload: Mapping[str, Any], *, priority: int | None = None,
            delay: float = 0.0, key: str | None = None, tags: Sequence[str] = (),
            session: ClientSession | None = None,
            max_attempts: int | None = None, lease: float | None = None) -> ObjectId:
        """Enqueue one job; it is claimable after ``delay`` seconds (server clock).

        ``max_attempts``: this job's deliveries before it is dead-lettered (default: the
        queue's); ``lease``: seconds each claim of it holds it before the reaper may
        hand it on (default: the claiming consumer's lease; a consumer must heart-beat
        more often than half of it). Both are stored in the job, so whichever consumer
        claims it keeps to them.

        ``tags``: up to ``MAX_TAGS`` short strings to find it by (``jobs(tag=...)``).
        ``key``: while a job with this key is ready, delayed or locked in this
        queue, write nothing and return that job's id (a unique index decides).
        ``session``: write inside the caller's transaction (``session`` must be
        in one, from this queue's client): the job exists only if it commits.
        The caller's ``with_transaction`` does the retrying; this does none.
        """
        return run(self._put(payload, priority, delay, key, tags, session, max_attempts,
                             lease))

    def put_many(self, payloads: Iterable[Mapping[str, Any]], *, priority: int | None = None,
                 delay: float = 0.0, tags: Sequence[str] = (),
                 session: ClientSession | None = None) -> list[ObjectId]:
        """Enqueue several jobs in one round trip; all are checked before any is written.

        ``session``: as in ``put``, inside the caller's transaction.
        """
        return run(self._put_many(payloads, priority, delay, tags, session))

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
        deadline = self._deadline(limit, timeout)
        if timeout == 0:
            return self.claim(limit)
        self.watcher.start()
        with self.board.waiting():
            return run(self._wait_and_claim(limit, deadline))

    def wait_for_wakeup(self, deadline: float) -> Wake:
        """Wait for a sign that a claim may succeed, a sweep, or the monotonic ``deadline``.

        The caller must be registered on ``self.board`` and must have started
        the watcher before its last claim attempt.
        """
        return run(self._wait_for_wakeup(deadline))

    def claim(self, limit: int = 1) -> list[Job]:
        """One claim attempt for up to ``limit`` jobs, without waiting; none while paused."""
        return run(self._claim(limit))

    # -- control ----------------------------------------------------------------------

    def cancel(self, job_id: ObjectId | str) -> bool:
        """Cancel a job: a ready or delayed one at once (it is never delivered), a held one
        by asking its holder (``Job.cancel_requested``). False when it already finished
        or does not exist. Kept as "cancelled" for ``keep_completed`` seconds, deleted
        at once when that is 0."""
        return self.store.cancel(object_id(job_id))

    def pause(self) -> None:
        """Stop every consumer of this queue, in every process, from claiming (within a
        second); held jobs run on and ``put`` still works. Stored in MongoDB: it lasts
        until ``resume``, across restarts."""
        run(self._set_paused(True))

    def resume(self) -> None:
        """Undo ``pause``; waiting consumers are woken through their change streams."""
        run(self._set_paused(False))

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
        run(self._schedule(name, cron=cron, every=every, payload=payload, priority=priority,
                           timezone=timezone, misfire=misfire, start_at=start_at,
                           end_at=end_at, catch_up=catch_up))

    def unschedule(self, name: str) -> bool:
        """Remove the schedule ``name``; False if there was none. Fired jobs stay."""
        return run(self._unschedule(name))

    def schedules(self) -> list[ScheduleInfo]:
        """Every schedule of this queue, by name."""
        return run(self._schedules())

    def complete_many(self, jobs: Sequence[Job]) -> list[Job]:
        """Complete several held jobs in one round trip; return those whose lease was lost."""
        return run(self._complete_many(jobs))

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
        return run(self._stats())

    def get(self, job_id: ObjectId | str) -> JobInfo | None:
        """The job as stored now, in the queue or its error queue; None if there is none."""
        return run(self._get(job_id))

    def jobs(self, state: str | None = None, *, tag: str | None = None, key: str | None = None,
             limit: int = 100, after: ObjectId | str | None = None) -> list[JobInfo]:
        """Up to ``limit`` jobs, newest first (``_id`` descending), by state, tag or key.

        ``after``: the last id of the previous page; this page holds older jobs.
        ``state``: one of ``JOB_STATES`` ("failed" is the error queue).
        """
        return run(self._jobs(state, tag, key, limit, after))

    def result(self, job_id: ObjectId | str, *, timeout: float | None = None) -> Any:
        """Wait until the job finishes; return its result (kept by ``keep_completed``).

        Raises ``JobFailed`` (dead-lettered), ``JobCancelled``, ``JobNotFound``
        (no such job, or gone: completed by a queue that keeps nothing, or
        removed by the TTL), ``TimeoutError`` after ``timeout`` seconds.
        Waits on a change stream, opened before the first read so no change is missed.
        """
        return run(self._result(job_id, timeout))

    def oldest_available_age(self) -> float:
        return self.store.oldest_available_age()

    def reap(self) -> int:
        """Handle expired leases: requeue, or dead-letter once out of attempts. Returns how many."""
        return run(self._reap())

    def retry_failed(self, job_id: ObjectId | None = None) -> int:
        """Move one dead job (or all) back into the queue with a fresh set of attempts."""
        return run(self._retry_failed(job_id))

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
            session: ClientSession | None = None,
            max_attempts: int | None = None, lease: float | None = None) -> ObjectId:
        """Enqueue ``payload``; ``priority`` may be given by position, as mongoqueue 0.6+ took it.

        Left out, the payload's own ``"priority"`` key sets it (mongoqueue 2012), else 0.
        """
        return super().put(payload, priority=priority, delay=delay, key=key, tags=tags,
                           session=session, max_attempts=max_attempts, lease=lease)

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
