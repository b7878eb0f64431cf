"""``AsyncQueue`` and ``AsyncJob``: the queue for asyncio, on pymongo's ``AsyncMongoClient``.

Same names, arguments, defaults, errors, documents and guarantees as ``Queue``
and ``Job``: every method awaits the plan of the same step that the sync
method runs (``streamqueue.queuebase``), so a job put by one is claimable by
the other. One change stream per ``AsyncQueue``, followed by a task on its loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, ClassVar

from bson import ObjectId
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection

from streamqueue.aio.wakeups import AsyncWakeupBoard
from streamqueue.aio.watcher import AsyncStreamWatcher
from streamqueue.fleet import DEFAULT_PATIENCE
from streamqueue.fleetlink import FleetLink
from streamqueue.hooks import Hooks
from streamqueue.jobinfo import JobInfo
from streamqueue.pause import PauseFlag
from streamqueue.plan import Invoke
from streamqueue.queuebase import JobBase, QueueBase, object_id
from streamqueue.retry import RetryPolicy
from streamqueue.schedule import DEFAULT_CATCH_UP, ScheduleInfo
from streamqueue.storage import Document
from streamqueue.storage.aio import async_plans
from streamqueue.storage.arunner import arun
from streamqueue.validation import Backoff
from streamqueue.wakeups import Wake
from streamqueue.watcher import watcher_options

# An ``async for`` consumer looks at least this often whether the queue was closed.
ITERATION_SLICE = 1.0


class AsyncJob(JobBase):
    """One claim of one job (asyncio). Settle it exactly once: complete, error or release."""

    _queue: AsyncQueue

    async def complete(self, result: Any = None, *,
                       session: AsyncClientSession | None = None) -> None:
        """As ``Job.complete``; ``session``: an ``AsyncClientSession`` in a transaction."""
        await arun(self._complete(result, session))

    async def error(self, message: str | None = None, *, retry_in: float | None = None) -> None:
        """As ``Job.error``: retry after the backoff, or dead-letter once out of attempts."""
        await arun(self._error(message, retry_in))

    async def fail(self, message: str) -> None:
        """As ``Job.fail``: to the error queue now, without a retry."""
        await arun(self._fail(message))

    async def release(self, *, delay: float = 0.0) -> None:
        """As ``Job.release``: hand the job back, due after ``delay``, attempt not counted."""
        await arun(self._release(delay))

    async def progress(self, count: int | None = None) -> None:
        """As ``Job.progress``: record progress and extend the lease."""
        await arun(self._progress(count))

    async def __aenter__(self) -> dict[str, Any]:
        return self.payload

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await arun(self._exit(exc_type, exc, tb))


class AsyncQueue(QueueBase[AsyncJob]):
    """A job queue in one MongoDB collection, for one event loop."""

    job_type: ClassVar[type[AsyncJob]] = AsyncJob
    board: AsyncWakeupBoard

    def __init__(
        self,
        collection: AsyncCollection[Document],
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
        """``fleet``: as ``Queue``'s, join the queue's fleet with this many slots."""
        if not isinstance(collection, AsyncCollection):
            raise TypeError(f"collection must be a pymongo AsyncCollection, not "
                            f"{type(collection).__name__}")
        super().__init__(consumer_id, lease=lease, max_attempts=max_attempts, backoff=backoff,
                         hooks=hooks, sweep_interval=sweep_interval,
                         keep_completed=keep_completed)
        plans = async_plans(collection, retry, keep_completed=self.keep_completed)
        self.board = AsyncWakeupBoard()
        self.watcher = AsyncStreamWatcher(plans, self.board, self.hooks, **watcher_options(
            max_await=max_await, poll_interval=poll_interval,
            pause_stream_after=pause_stream_after))
        if fleet is not None:
            self.watcher.fleet = FleetLink(plans, self.board, self.consumer_id, fleet,
                                           patience=fleet_patience)
        self._attach(plans, self.board, self.watcher,
                     PauseFlag(_read_through_plans, self.watcher.stream_epoch))
        self._closed = False

    def __repr__(self) -> str:
        return f"<AsyncQueue {self.plans.jobs.full_name} consumer={self.consumer_id!r}>"

    @property
    def collection(self) -> AsyncCollection[Document]:
        jobs: AsyncCollection[Document] = self.plans.jobs
        return jobs

    @property
    def failed(self) -> AsyncCollection[Document]:
        """The error queue: dead jobs, each under its original ``_id``."""
        failed: AsyncCollection[Document] = self.plans.failed
        return failed

    def _make_job(self, doc: Document) -> AsyncJob:
        return self.job_type(self, doc)

    def _claim_step(self, limit: int) -> Invoke:
        return Invoke(lambda: self.claim(limit))

    def _wake_step(self, until: float) -> Invoke:
        if self._closed:
            return Invoke(lambda: self.board.wait_async(0.0))
        return Invoke(lambda: self.board.wait_async(until))

    def _resume_step(self) -> Invoke:
        return Invoke(self.watcher.resume)

    def _closing(self) -> bool:
        return self._closed

    def _session_client(self, session: object) -> Any:
        if not isinstance(session, AsyncClientSession):
            raise TypeError(f"session must be a pymongo AsyncClientSession, not "
                            f"{type(session).__name__}")
        return session.client

    # -- producing ------------------------------------------------------------------

    async def put(self, payload: Mapping[str, Any], *, priority: int | None = None,
                  delay: float = 0.0, key: str | None = None, tags: Sequence[str] = (),
                  session: AsyncClientSession | None = None,
                  max_attempts: int | None = None, lease: float | None = None) -> ObjectId:
        """Enqueue one job (see ``Queue.put``)."""
        return await arun(self._put(payload, priority, delay, key, tags, session,
                                    max_attempts, lease))

    async def put_many(self, payloads: Iterable[Mapping[str, Any]], *,
                       priority: int | None = None, delay: float = 0.0,
                       tags: Sequence[str] = (),
                       session: AsyncClientSession | None = None) -> list[ObjectId]:
        """Enqueue several jobs in one round trip (see ``Queue.put_many``)."""
        return await arun(self._put_many(payloads, priority, delay, tags, session))

    # -- consuming ------------------------------------------------------------------

    async def next(self, timeout: float | None = 0) -> AsyncJob | None:
        """Claim the next due job; wait up to ``timeout`` seconds (None: until one comes).

        Cancelling the wait leaves no job claimed: a claim whose reply comes
        after the cancellation is handed back.
        """
        jobs = await self.next_batch(1, timeout)
        return jobs[0] if jobs else None

    async def next_batch(self, limit: int, timeout: float | None = 0) -> list[AsyncJob]:
        """Claim up to ``limit`` due jobs, waiting as ``next`` does for the first."""
        deadline = self._deadline(limit, timeout)
        if timeout == 0 or self._closed:
            return await self.claim(limit)
        await self.watcher.start()
        with self.board.waiting():
            return await arun(self._wait_and_claim(limit, deadline))

    async def wait_for_wakeup(self, deadline: float) -> Wake:
        """As ``Queue.wait_for_wakeup``: the caller is registered on ``self.board`` and
        started the watcher before its last claim attempt."""
        return await arun(self._wait_for_wakeup(deadline))

    async def claim(self, limit: int = 1) -> list[AsyncJob]:
        """One claim attempt for up to ``limit`` jobs, without waiting; none while paused."""
        return await arun(self._claim(limit))

    def __aiter__(self) -> AsyncQueue:
        return self

    async def __anext__(self) -> AsyncJob:
        """The next job, waiting on the change stream; the iteration ends once ``close`` ran."""
        while not self._closed:
            job = await self.next(timeout=ITERATION_SLICE)
            if job is not None:
                return job
        raise StopAsyncIteration

    # -- control ----------------------------------------------------------------------

    async def cancel(self, job_id: ObjectId | str) -> bool:
        """Cancel a job (see ``Queue.cancel``)."""
        return await arun(self.plans.cancel(object_id(job_id)))

    async def pause(self) -> None:
        """Stop every consumer of this queue from claiming, until ``resume``."""
        await arun(self._set_paused(True))

    async def resume(self) -> None:
        """Undo ``pause``; waiting consumers are woken through their change streams."""
        await arun(self._set_paused(False))

    async def is_paused(self) -> bool:
        """The stored switch, read now."""
        return await arun(self.plans.is_paused())

    # -- schedules (docs/SCHEDULES.md) ------------------------------------------------

    async def schedule(self, name: str, *, cron: str | None = None,
                       every: float | timedelta | None = None,
                       payload: Mapping[str, Any] | None = None, priority: int | None = None,
                       timezone: str = "UTC", misfire: str = "latest",
                       start_at: datetime | None = None, end_at: datetime | None = None,
                       catch_up: int = DEFAULT_CATCH_UP) -> None:
        """Create or change the schedule ``name`` (see ``Queue.schedule``); the jobs it
        fires are fired by the reapers or a ``Scheduler`` (sync), as for ``Queue``."""
        await arun(self._schedule(name, cron=cron, every=every, payload=payload,
                                  priority=priority, timezone=timezone, misfire=misfire,
                                  start_at=start_at, end_at=end_at, catch_up=catch_up))

    async def unschedule(self, name: str) -> bool:
        """Remove the schedule ``name``; False if there was none. Fired jobs stay."""
        return await arun(self._unschedule(name))

    async def schedules(self) -> list[ScheduleInfo]:
        """Every schedule of this queue, by name."""
        return await arun(self._schedules())

    async def complete_many(self, jobs: Sequence[AsyncJob]) -> list[AsyncJob]:
        """Complete several held jobs in one round trip; return those whose lease was lost."""
        return await arun(self._complete_many(jobs))

    # -- looking and upkeep -----------------------------------------------------------

    async def size(self) -> int:
        """Jobs in the queue: available, locked and delayed."""
        return await arun(self.plans.size())

    async def stats(self) -> dict[str, int]:
        """Jobs by state, counted at one instant of the server's clock (see ``Queue.stats``)."""
        return await arun(self._stats())

    async def get(self, job_id: ObjectId | str) -> JobInfo | None:
        """The job as stored now, in the queue or its error queue; None if there is none."""
        return await arun(self._get(job_id))

    async def jobs(self, state: str | None = None, *, tag: str | None = None,
                   key: str | None = None, limit: int = 100,
                   after: ObjectId | str | None = None) -> list[JobInfo]:
        """Up to ``limit`` jobs, newest first, by state, tag or key (see ``Queue.jobs``)."""
        return await arun(self._jobs(state, tag, key, limit, after))

    async def result(self, job_id: ObjectId | str, *, timeout: float | None = None) -> Any:
        """Wait until the job finishes; return its result (see ``Queue.result``)."""
        return await arun(self._result(job_id, timeout))

    async def oldest_available_age(self) -> float:
        return await arun(self.plans.oldest_available_age())

    async def reap(self) -> int:
        """Handle expired leases: requeue, or dead-letter once out of attempts."""
        return await arun(self._reap())

    async def retry_failed(self, job_id: ObjectId | None = None) -> int:
        """Move one dead job (or all) back into the queue with a fresh set of attempts."""
        return await arun(self._retry_failed(job_id))

    async def purge_failed(self, job_id: ObjectId | None = None) -> int:
        return await arun(self.plans.purge_failed(job_id))

    async def clear(self) -> None:
        """Delete every job, in the queue and in its error queue."""
        await arun(self.plans.clear())

    async def close(self) -> None:
        """Stop the change stream task; ``async for`` loops end. The client is the caller's."""
        self._closed = True
        self.board.notify_all()
        await self.watcher.stop()

    async def __aenter__(self) -> AsyncQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _read_through_plans() -> bool:
    raise TypeError("an AsyncQueue reads the pause switch through its plans")
