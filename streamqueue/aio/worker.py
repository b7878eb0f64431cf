"""``AsyncWorker``: ``async def`` handlers on one event loop, as many in flight as ``concurrency``.

One claim loop (one claim per wake-up, never one per coroutine), sized as the
threaded ``Worker``'s by ``streamqueue.prefetch`` (one job per claim at a
trickle, bigger claims and a short buffer in a backlog), one change stream
(the queue's), heartbeats for every held job, completions written in bulk
(``streamqueue.aio.completions``), ordered shutdown. A cancel request for a
running job cancels its handler's task and the job ends cancelled. After
``stop()`` (SIGTERM/SIGINT) nothing more is claimed, running
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
from typing import Any, TypeVar

from streamqueue.aio.completions import Completions
from streamqueue.aio.queue import AsyncJob, AsyncQueue
from streamqueue.errors import LeaseLost, PermissionDenied, StreamQueueError
from streamqueue.prefetch import ClaimSizing
from streamqueue.queuebase import traceback_text
from streamqueue.storage.arunner import arun
from streamqueue.validation import Backoff
from streamqueue.wakeups import Wake
from streamqueue.worker import (
    CANCEL_TICK,
    CANCEL_WATCH_AFTER,
    OUTAGE_PAUSE,
    check_claims_in_flight,
    check_count,
    lease_keeping,
    wants_job,
)

log = logging.getLogger(__name__)

AsyncHandler = Callable[..., Awaitable[object]]
T = TypeVar("T")
# A claim loop that found nothing waits this long at most before it looks again.
CLAIM_WAIT = 30.0
# After stop(), a claim still in flight this long (an outage) is cancelled.
CLAIM_STOP_WAIT = 5.0


class AsyncWorker:
    """Run the coroutine function ``handler`` on jobs from ``queue`` until stopped.

    As ``Worker``: the handler gets the payload (and the ``AsyncJob`` when it asks
    for it); returning completes the job, raising calls ``error()`` with the
    traceback, retried after ``backoff``.

    ``batch`` is, as for ``Worker``, the most jobs one round trip claims. By
    default it adapts (``ClaimSizing.for_coroutines``): one job per claim at a
    trickle; in a backlog up to ``concurrency`` per claim and a buffer of what
    the handlers finish during one claim round trip (none for slow handlers). A
    fixed ``batch`` above ``concurrency`` prefetches: up to ``batch`` jobs held,
    ``concurrency`` running and the rest buffered with their leases extended,
    the buffer topped up half a batch at a time; up to ``concurrency`` it claims
    once a quarter of the places (at most 100) are free. Completions are
    written in bulk unless ``batch=1``.

    ``claims_in_flight`` (a fixed ``batch`` above 1 only), as for ``Worker``:
    in a backlog that many batch claims overlap (the claim loop's and
    ``claims_in_flight - 1`` claim-ahead coroutines'), so the loop is not idle
    for a whole claim round trip between batches.
    """

    def __init__(self, queue: AsyncQueue, handler: AsyncHandler, *, concurrency: int = 100,
                 heartbeat: float | None = None, shutdown_grace: float = 30.0,
                 burst: bool = False, backoff: Backoff | None = None,
                 batch: int | None = None, claims_in_flight: int = 1) -> None:
        if not asyncio.iscoroutinefunction(handler):
            raise TypeError("AsyncWorker runs coroutine functions (async def); "
                            "use Worker for plain functions")
        self.queue = queue
        self.handler = handler
        self.slots = check_count("concurrency", concurrency)
        if batch is not None:
            check_count("batch", batch)
        self.claims_in_flight = check_claims_in_flight(claims_in_flight, batch)
        self.sizing = ClaimSizing.for_coroutines(self.slots, batch,
                                                 claims_in_flight=claims_in_flight)
        # The most jobs one claim asks for (above 1, completions go in bulk).
        self.batch = self.sizing.most
        # The last claim came back full: more may be due, so claim again without
        # waiting for a wake-up. True at first: nothing is known about the queue yet.
        self._backlog = True
        # Claims that came back full so far: a short claim ends the backlog only
        # if none came back full while it ran (another claim in flight).
        self._full_claims = 0
        # Places claims in flight have reserved for the jobs they may bring.
        self._reserved = 0
        self.burst = burst
        self.heartbeat, self.shutdown_grace, self.backoff = lease_keeping(
            queue.lease, heartbeat, shutdown_grace, backoff)
        self._pass_job = wants_job(handler)
        # Every held job has a task from its claim until it is settled; a task
        # runs its handler once it has one of the ``slots``, buffered until then.
        self._tasks: dict[asyncio.Task[None], AsyncJob] = {}
        self._free_slots = asyncio.Semaphore(self.slots)
        self._buffered: set[AsyncJob] = set()  # waiting for a slot
        self._running: set[AsyncJob] = set()  # in their handler (not settling)
        # When each running handler started (monotonic): a buffered job is not running.
        self._started: dict[AsyncJob, float] = {}
        self._completions = Completions(queue) if self.batch > 1 else None
        self._room = asyncio.Event()
        self._stopping = asyncio.Event()
        # What stop() interrupts: waits for a wake-up at once, claims only if stuck.
        self._waits: set[asyncio.Future[Any]] = set()
        self._claims: set[asyncio.Future[Any]] = set()
        heard = queue._events.on_cancel

        def on_cancel(job_id: object) -> None:
            if heard is not None:
                heard(job_id)  # type: ignore[arg-type]
            self._cancel_requested_tasks()

        queue._events.on_cancel = on_cancel

    @property
    def busy_slots(self) -> int:
        """Handlers running now (buffered jobs are not counted)."""
        return len(self._running)

    @property
    def held(self) -> int:
        """Jobs this worker holds a lease on: running, buffered or awaiting completion."""
        return len(self._tasks) + (self._completions.pending if self._completions else 0)

    def stop(self) -> None:
        """Stop claiming; running handlers get ``shutdown_grace`` seconds, then are cancelled."""
        self._stopping.set()
        self._room.set()  # the claim loop may be waiting for room
        for wait in list(self._waits):
            wait.cancel()
        # A claim in flight returns within a round trip, and its jobs are handed
        # back with the buffer. Only one stuck in an outage is cancelled: its
        # locks are then handed back by a clean-up the loop may not live to run.
        if self._claims:
            asyncio.get_running_loop().call_later(CLAIM_STOP_WAIT, self._cancel_claims)

    def _cancel_claims(self) -> None:
        for claim in list(self._claims):
            claim.cancel()  # a cancelled claim hands back whatever it locked

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
        await self.queue.watcher.start()
        log.info("async worker %s consuming %s with %d in flight", self.queue.consumer_id,
                 self.queue.name, self.slots)
        helpers = [asyncio.create_task(self._heartbeat_loop()),
                   asyncio.create_task(self._watch_cancels())]
        writer = asyncio.create_task(self._completions.run()) if self._completions else None
        ahead = [asyncio.create_task(self._claim_ahead_loop())
                 for _ in range(1, self.claims_in_flight)]
        try:
            # One waiter on the board for the worker's life: a wake-up that comes
            # while the loop claims or waits for room is kept, never lost.
            with self.queue.board.waiting():
                await self._claim_loop()
        finally:
            self.stop()  # claims still in flight (claim-ahead) hand back what they lock
            await asyncio.gather(*ahead, return_exceptions=True)
            await self._shut_down()
            if writer is not None and self._completions is not None:
                await self._completions.finish(writer)
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        log.info("async worker %s stopped", self.queue.consumer_id)

    # -- claiming ------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        woken = False
        while not self._stopping.is_set():
            if not self._has_room():
                await self._wait_for_room()
                continue
            if not self._backlog and not self.burst:
                # The last claim came back short: wait for a job, not for nothing.
                wake = await self._interruptible(
                    self.queue.wait_for_wakeup(time.monotonic() + CLAIM_WAIT), self._waits)
                if wake is None:
                    continue
                woken = wake not in (Wake.TIMEOUT, Wake.RESUME)
                if not woken and self.queue.knows_empty():
                    continue  # a sweep, but the fleet view knows a claim would find nothing
                if not self._has_room():
                    continue
            # A claim that finds nothing proves the queue drained only if no job of
            # ours ran (or was being claimed) meanwhile: a failing handler requeues.
            idle_before = not self._tasks and not self._reserved
            jobs = await self._claim_batch(self._want())
            if jobs is None:
                self._backlog = True  # the outage may have hidden new jobs
                continue
            if not jobs and woken:
                self.queue.hooks.claim_empty(self.queue.name)
            woken = False
            if self.burst and not jobs:
                # Burst mode stops at the first empty claim made while no handler
                # ran (one that fails requeues its job) and no other claim was out.
                if idle_before and not self._tasks and not self._reserved:
                    log.info("burst mode: nothing due and no handler running; stopping")
                    return
                if self._tasks:  # else they all finished during the claim: claim again
                    await self._wait_for_room()
                # A handler that failed meanwhile requeued its job: claim, do not wait.
                self._backlog = True

    async def _claim_ahead_loop(self) -> None:
        """Another claim in flight beside the claim loop's, in a backlog only.

        It never waits for wake-ups (the claim loop does): it claims while the
        last claims came back full and there is room for another batch. A claim
        that comes back short ends the backlog, and it waits for the next one.
        """
        while not self._stopping.is_set():
            if not (self._backlog and self._has_room()):
                await self._wait_for_room()
                continue
            await self._claim_batch(self._want(), ahead=True)

    def _has_room(self) -> bool:
        return self.sizing.has_room(len(self._tasks) + self._reserved, self._backlog)

    def _want(self) -> int:
        return self.sizing.want(len(self._tasks) + self._reserved, self._backlog)

    async def _wait_for_room(self) -> None:
        """Until a handler finishes, a claim hands back places, a backlog starts, or stop()."""
        self._room.clear()
        await self._room.wait()

    async def _claim_batch(self, want: int, *, ahead: bool = False) -> list[AsyncJob] | None:
        """Claim up to ``want`` jobs into places reserved meanwhile and start their tasks;
        note whether the claim came back full. None if interrupted or after an outage."""
        full_before = self._full_claims
        self._reserved += want
        started = time.monotonic()
        try:
            jobs = await self._claim(want, ahead=ahead)
        finally:
            self._reserved -= want
        for job in jobs or ():
            task = asyncio.create_task(self._run_job(job))
            self._tasks[task] = job
            task.add_done_callback(self._finished)
        if jobs is not None:
            self.sizing.note_claim(time.monotonic() - started)
            if self._note_claimed(full_before, full=len(jobs) == want) and ahead:
                # The claim loop may wait for a wake-up while this claim found a
                # new backlog: let it look again.
                self.queue.board.notify(1)
        if len(jobs or ()) < want:
            self._room.set()  # places reserved and not filled are free again
        return jobs

    def _note_claimed(self, full_before: int, *, full: bool) -> bool:
        """A full claim means a backlog; a short one its end, unless another came back
        full meanwhile. True if this claim started a backlog."""
        started = full and not self._backlog
        if full:
            self._full_claims += 1
            self._backlog = True
            if started:
                self._room.set()  # a claim-ahead coroutine waits for a backlog
        elif self._full_claims == full_before:
            self._backlog = False
        return started

    async def _claim(self, want: int, *, ahead: bool = False) -> list[AsyncJob] | None:
        """Up to ``want`` jobs, in one claim; None if interrupted or after an outage."""
        try:
            return await self._interruptible(self.queue.claim(want), self._claims)
        except StreamQueueError as exc:
            if isinstance(exc, PermissionDenied) and not ahead:
                raise  # waiting will not cure it (the claim loop's ends the worker)
            if ahead:
                log.warning("claim ahead failed; trying again in %.0fs", OUTAGE_PAUSE)
            else:
                log.exception("claim failed; trying again in %.0fs", OUTAGE_PAUSE)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), OUTAGE_PAUSE)
            return None

    async def _interruptible(self, step: Awaitable[T],
                             kept_in: set[asyncio.Future[Any]]) -> T | None:
        """Await ``step`` as a task ``stop()`` may cancel (found in ``kept_in``); None if it did."""
        task: asyncio.Future[T] = asyncio.ensure_future(step)
        kept_in.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            if self._stopping.is_set():
                return None
            raise
        finally:
            kept_in.discard(task)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._room.set()

    # -- handling ------------------------------------------------------------------------

    async def _run_job(self, job: AsyncJob) -> None:
        self._buffered.add(job)
        try:
            await self._free_slots.acquire()
        except asyncio.CancelledError:
            await self._settle_cancelled(job, started=False)
            return
        finally:
            self._buffered.discard(job)
        try:
            if self._stopping.is_set():
                await self._settle_cancelled(job, started=False)
            else:
                await self._handle(job)
        finally:
            self._free_slots.release()

    async def _handle(self, job: AsyncJob) -> None:
        failure: BaseException | None = None
        self._running.add(job)
        began = self._started[job] = time.monotonic()
        try:
            if self._pass_job:
                await self.handler(job.payload, job)
            else:
                await self.handler(job.payload)
        except (asyncio.CancelledError, Exception) as exc:
            failure = exc
        finally:
            # Settling is never cancelled (see _cancellable): a write cut off
            # half-way would leave the job to its lease.
            self._running.discard(job)
            self._started.pop(job, None)
            self.sizing.note_handler(time.monotonic() - began)
        if isinstance(failure, asyncio.CancelledError):
            await self._settle_cancelled(job, started=True)
        elif failure is not None:
            delay = self.backoff(job.attempts) if callable(self.backoff) else self.backoff
            await self._settle(job, job.error(
                traceback_text(type(failure), failure, failure.__traceback__), retry_in=delay))
        elif not job.settled and not (self._completions and self._completions.add(job)):
            await self._settle(job, job.complete())

    def _cancellable(self, job: AsyncJob) -> bool:
        """Its task may be cancelled: waiting for a slot, or in its handler."""
        return job in self._buffered or job in self._running

    async def _settle_cancelled(self, job: AsyncJob, *, started: bool) -> None:
        if job.settled:
            return
        if job.cancel_requested:
            # With the request stored, error() ends the job cancelled.
            await self._settle(job, job.error("cancelled on request while running"))
            log.info("job %s: handler cancelled on request; the job is cancelled", job.id)
        elif not started:
            await self._settle(job, job.release())
            log.info("job %s: buffered, never started, and the worker is stopping: released",
                     job.id)
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
            if job.cancel_requested and self._cancellable(job) and not task.done():
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
            # From the handler's start: a job waiting in the buffer is not running long.
            now = time.monotonic()
            wanted = any(now - began >= CANCEL_WATCH_AFTER for began in self._started.values())
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
        # Let tasks made by the last claim start: a task cancelled before its first
        # step never runs its body, and its job would stay locked until the lease ends.
        await asyncio.sleep(0)
        # Buffered jobs go back at once, not after the grace (their tasks release them).
        for task, job in list(self._tasks.items()):
            if job in self._buffered:
                task.cancel()
        if self._tasks:
            deadline = time.monotonic() + self.shutdown_grace
            while self._tasks and time.monotonic() < deadline:
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), deadline - time.monotonic())
        leftovers = list(self._tasks.items())
        for task, job in leftovers:
            if self._cancellable(job):
                task.cancel()  # the task releases its job (see _settle_cancelled)
        await asyncio.gather(*(task for task, _ in leftovers), return_exceptions=True)
