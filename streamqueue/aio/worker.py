"""``AsyncWorker``: ``async def`` handlers on one event loop, as many in flight as ``concurrency``.

One claim loop (one claim per wake-up, never one per coroutine), one change
stream (the queue's), heartbeats for every held job, ordered shutdown. A
cancel request for a running job cancels its handler's task and the job ends
cancelled. After ``stop()`` (SIGTERM/SIGINT) nothing more is claimed, running
handlers get ``shutdown_grace`` seconds, then their tasks are cancelled and
their jobs released (ready again, the attempt not counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable

from streamqueue.aio.queue import AsyncJob, AsyncQueue
from streamqueue.errors import LeaseLost, PermissionDenied, StreamQueueError
from streamqueue.queuebase import traceback_text
from streamqueue.storage.arunner import arun
from streamqueue.validation import Backoff
from streamqueue.worker import (
    CANCEL_TICK,
    CANCEL_WATCH_AFTER,
    OUTAGE_PAUSE,
    check_count,
    lease_keeping,
    wants_job,
)

log = logging.getLogger(__name__)

AsyncHandler = Callable[..., Awaitable[object]]
# A claim loop that found nothing waits this long at most before it looks again.
CLAIM_WAIT = 30.0
# The most free places the claim loop waits for before it claims (see _refill).
REFILL_CAP = 100


class AsyncWorker:
    """Run the coroutine function ``handler`` on jobs from ``queue`` until stopped.

    As ``Worker``: the handler gets the payload (and the ``AsyncJob`` when it asks
    for it); returning completes the job, raising calls ``error()`` with the
    traceback, retried after ``backoff``.
    """

    def __init__(self, queue: AsyncQueue, handler: AsyncHandler, *, concurrency: int = 100,
                 heartbeat: float | None = None, shutdown_grace: float = 30.0,
                 burst: bool = False, backoff: Backoff | None = None) -> None:
        if not asyncio.iscoroutinefunction(handler):
            raise TypeError("AsyncWorker runs coroutine functions (async def); "
                            "use Worker for plain functions")
        self.queue = queue
        self.handler = handler
        self.slots = check_count("concurrency", concurrency)
        self.burst = burst
        self.heartbeat, self.shutdown_grace, self.backoff = lease_keeping(
            queue.lease, heartbeat, shutdown_grace, backoff)
        self._pass_job = wants_job(handler)
        # Claim once this many places are free (while handlers run): one round trip
        # fills many places instead of one.
        self._refill = max(1, min(REFILL_CAP, concurrency // 4))
        self._tasks: dict[asyncio.Task[None], AsyncJob] = {}
        self._room = asyncio.Event()
        self._stopping = asyncio.Event()
        self._claiming: asyncio.Task[list[AsyncJob]] | None = None
        self._shutting_down = False
        heard = queue._events.on_cancel

        def on_cancel(job_id: object) -> None:
            if heard is not None:
                heard(job_id)  # type: ignore[arg-type]
            self._cancel_requested_tasks()

        queue._events.on_cancel = on_cancel

    @property
    def busy_slots(self) -> int:
        return len(self._tasks)

    @property
    def held(self) -> int:
        return len(self._tasks)

    def stop(self) -> None:
        """Stop claiming; running handlers get ``shutdown_grace`` seconds, then are cancelled."""
        self._stopping.set()
        if self._claiming is not None:
            self._claiming.cancel()  # a cancelled claim hands back whatever it locked

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: int) -> None:
        log.info("signal %d: draining", signum)
        self.stop()

    async def run(self) -> None:
        """Until ``stop()`` (or, in burst mode, until nothing is due and no handler runs)."""
        await arun(self.queue.plans.ensure_indexes())
        log.info("async worker %s consuming %s with %d in flight", self.queue.consumer_id,
                 self.queue.name, self.slots)
        helpers = [asyncio.create_task(self._heartbeat_loop()),
                   asyncio.create_task(self._watch_cancels())]
        try:
            await self._claim_loop()
        finally:
            self._stopping.set()
            await self._shut_down()
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        log.info("async worker %s stopped", self.queue.consumer_id)

    # -- claiming ------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            free = self.slots - len(self._tasks)
            if free < self._refill and self._tasks:
                # The claim loop is one coroutine: claiming one job per finished
                # handler would make its round trips the limit. Claim in batches.
                self._room.clear()
                await self._room.wait()
                continue
            idle_before = not self._tasks
            # Burst mode never waits on the stream: it stops at the first empty
            # claim made while no handler ran (one that fails requeues its job).
            jobs = await self._claim(free, wait=not self.burst)
            if jobs is None:
                continue
            for job in jobs:
                task = asyncio.create_task(self._run_job(job))
                self._tasks[task] = job
                task.add_done_callback(self._finished)
            if self.burst and not jobs:
                if idle_before:
                    log.info("burst mode: nothing due and no handler running; stopping")
                    return
                if self._tasks:  # else they all finished during the claim: claim again
                    self._room.clear()
                    await self._room.wait()

    async def _claim(self, want: int, *, wait: bool) -> list[AsyncJob] | None:
        """Up to ``want`` jobs, waiting on the stream for the first; None if interrupted."""
        self._claiming = asyncio.create_task(
            self.queue.next_batch(want, timeout=CLAIM_WAIT if wait else 0))
        try:
            return await self._claiming
        except asyncio.CancelledError:
            if self._stopping.is_set():
                return None
            raise
        except PermissionDenied:
            raise
        except StreamQueueError:
            log.exception("claim failed; trying again in %.0fs", OUTAGE_PAUSE)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), OUTAGE_PAUSE)
            return None
        finally:
            self._claiming = None

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._room.set()

    # -- handling ------------------------------------------------------------------------

    async def _run_job(self, job: AsyncJob) -> None:
        try:
            if self._pass_job:
                await self.handler(job.payload, job)
            else:
                await self.handler(job.payload)
        except asyncio.CancelledError:
            await self._settle_cancelled(job)
        except Exception as exc:
            delay = self.backoff(job.attempts) if callable(self.backoff) else self.backoff
            await self._settle(job, job.error(traceback_text(type(exc), exc, exc.__traceback__),
                                              retry_in=delay))
        else:
            if not job.settled:
                await self._settle(job, job.complete())

    async def _settle_cancelled(self, job: AsyncJob) -> None:
        if job.settled:
            return
        if job.cancel_requested:
            # With the request stored, error() ends the job cancelled.
            await self._settle(job, job.error("cancelled on request while running"))
            log.info("job %s: handler cancelled on request; the job is cancelled", job.id)
        else:
            await self._settle(job, job.release())
            log.warning("job %s still running after the %gs shutdown grace: cancelled and "
                        "released", job.id, self.shutdown_grace)

    @staticmethod
    async def _settle(job: AsyncJob, settle: Awaitable[None]) -> None:
        try:
            await settle
        except LeaseLost:
            log.warning("job %s: lease lost before it could be settled", job.id)
        except StreamQueueError:
            log.exception("job %s could not be settled; its lease will run out", job.id)

    def _cancel_requested_tasks(self) -> None:
        for task, job in list(self._tasks.items()):
            if job.cancel_requested and not job.settled and not task.done():
                task.cancel()

    # -- leases ---------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            beating = [job for job in self._tasks.values() if not job.settled]
            if not beating:
                continue
            try:
                alive = await arun(self.queue.plans.heartbeat(
                    [(job.id, job.lease_token) for job in beating], self.queue.lease))
            except StreamQueueError:
                log.warning("heartbeat failed; trying again in %.1fs", self.heartbeat,
                            exc_info=True)
                continue
            for job in beating:
                if alive.get(job.id):
                    job._note_cancel_requested()
            self._cancel_requested_tasks()

    async def _watch_cancels(self) -> None:
        """Keep the stream open while a handler runs long, so a cancel request reaches it."""
        watching = False
        while True:
            await asyncio.sleep(CANCEL_TICK)
            running = [job for job in self._tasks.values() if not job.settled]
            wanted = any(job.run_seconds >= CANCEL_WATCH_AFTER for job in running)
            if wanted == watching:
                continue
            watching = wanted
            self.queue.board.keep_open(wanted)
            if wanted and await self.queue.watcher.resume() and running:
                # Requests made while the stream was closed came as no event.
                requested = await arun(self.queue.plans.cancel_requests(
                    [(job.id, job.lease_token) for job in running]))
                for job in running:
                    if job.id in requested:
                        job._note_cancel_requested()
                self._cancel_requested_tasks()

    # -- shutdown ---------------------------------------------------------------------------

    async def _shut_down(self) -> None:
        if self._tasks:
            deadline = time.monotonic() + self.shutdown_grace
            while self._tasks and time.monotonic() < deadline:
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), deadline - time.monotonic())
        leftovers = list(self._tasks)
        for task in leftovers:
            task.cancel()  # the task releases its job (see _settle_cancelled)
        await asyncio.gather(*leftovers, return_exceptions=True)
