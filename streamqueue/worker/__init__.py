"""A long-running consumer: one claim loop feeding a fixed set of handler threads.

The claim loop is the only thread that waits for wake-ups, so a process makes
one claim per wake-up, never one per thread. It claims only while it has room
(a free slot, or room in its prefetch buffer; see ``streamqueue.prefetch``),
and waits on the queue's change stream when the queue has nothing due. With
``batch=1`` a slot that finishes a job during a backlog claims its next job
itself, as a ``next()`` loop would, instead of handing the claim to the loop
thread and waiting for it: one claim in flight per slot, not one per process.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import queue as stdlib_queue
import signal
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType

from bson import ObjectId

from streamqueue.backoff import ExponentialBackoff
from streamqueue.errors import LeaseLost, PermissionDenied, StreamQueueError
from streamqueue.exitcodes import ExitCode
from streamqueue.prefetch import ClaimSizing
from streamqueue.queue import Job, Queue
from streamqueue.validation import Backoff, check_backoff, check_heartbeat, check_seconds
from streamqueue.wakeups import Wake

log = logging.getLogger(__name__)

Handler = Callable[..., object]

# Pause between claims once the storage layer's own retries have given up.
OUTAGE_PAUSE = 5.0
# Burst mode waits this long at most for a retry of its own to fall due before
# it exits: short backoffs (the default's first ones are 0.5-4 s) drain in one run,
# a retry due later is left delayed for the next run or another worker.
BURST_RETRY_WAIT = 10.0
# A handler running this long gets cancel requests through the change stream,
# kept open for it (see _watch_cancels); shorter jobs in a backlog leave the
# stream paused, which their throughput needs. Looked at every CANCEL_TICK.
CANCEL_WATCH_AFTER = 0.5
CANCEL_TICK = 0.25
# After SIGTERM/SIGINT the process exits at most this long after the grace,
# whatever MongoDB does: each storage call may retry for a minute, and an
# orchestrator's kill would come first. What is unsettled is left to its lease.
EXIT_MARGIN = 5.0


def wants_job(handler: Handler) -> bool:
    """True when the handler takes the Job too: a second positional parameter or one named ``job``."""
    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.name == "job" for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)


def check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, not {value!r}")
    return value


def check_claims_in_flight(claims_in_flight: object, batch: int | None) -> int:
    """``claims_in_flight`` as both workers accept it: a positive int, above 1 only
    with a fixed ``batch`` above 1."""
    count = check_count("claims_in_flight", claims_in_flight)
    if count > 1 and (batch is None or batch == 1):
        raise ValueError("claims_in_flight above 1 needs a fixed batch above 1: it lets "
                         "a backlog fill several batches at once")
    return count


def lease_keeping(lease: float, heartbeat: float | None, shutdown_grace: float,
                  backoff: Backoff | None) -> tuple[float, float, Backoff]:
    """(heartbeat, shutdown_grace, backoff) as every worker checks them: the heartbeat
    defaults to a third of the lease, and the backoff to exponential with jitter."""
    return (check_heartbeat(lease / 3 if heartbeat is None else heartbeat, lease),
            check_seconds("shutdown_grace", shutdown_grace),
            ExponentialBackoff() if backoff is None else check_backoff(backoff))


class Worker:
    """Run ``handler`` on jobs from ``queue`` until stopped.

    The handler gets the payload (and the ``Job`` when it asks for it, see
    ``wants_job``). Returning completes the job; raising calls ``error()``
    with the traceback, retried after ``backoff`` (exponential with jitter by
    default). Leases of running jobs are extended every ``heartbeat`` seconds
    (default: a third of the queue's lease; more than half of it is refused).

    ``batch`` is the most jobs one round trip claims. By default it adapts
    (``streamqueue.prefetch``): one job per claim at a trickle, and in a
    backlog up to 16 per claim with a buffer sized to what the slots finish
    during one claim round trip (none for slow handlers). A fixed ``batch``
    above ``concurrency`` prefetches: the worker holds up to ``batch`` jobs,
    ``concurrency`` running and the rest waiting in a local buffer with their
    leases extended like running ones, and tops the buffer up half a batch at
    a time. That keeps the slots fed with few round trips (fast handlers, deep
    queues); the cost is that buffered jobs wait behind slow handlers instead
    of going to another worker. ``batch=1`` claims one job per round trip,
    each slot for itself while there is a backlog.

    ``claims_in_flight`` (a fixed ``batch`` above 1 only) lets that many batch
    claims overlap in a backlog, holding up to ``claims_in_flight x batch``
    jobs: for tiny jobs, whose drain rate one claim at a time bounds at
    ``batch`` per claim round trip.
    """

    def __init__(
        self,
        queue: Queue,
        handler: Handler,
        *,
        concurrency: int = 4,
        heartbeat: float | None = None,
        shutdown_grace: float = 30.0,
        batch: int | None = None,
        burst: bool = False,
        backoff: Backoff | None = None,
        claims_in_flight: int = 1,
    ) -> None:
        if not callable(handler):
            raise TypeError("handler must be callable")
        check_count("concurrency", concurrency)
        if batch is not None:
            check_count("batch", batch)
        check_claims_in_flight(claims_in_flight, batch)
        self.queue = queue
        self.handler = handler
        self.slots = concurrency
        self.sizing = ClaimSizing(concurrency, batch, claims_in_flight=claims_in_flight)
        self.claims_in_flight = claims_in_flight
        # The most jobs one claim asks for (above 1, completions go in bulk).
        self.batch = self.sizing.most
        # The last claim came back full: more may be due, so claim again without
        # waiting for a wake-up. True at first: nothing is known about the queue yet.
        self._backlog = True
        # Claims that came back full so far: an empty claim that began before
        # the latest full one ended must not end the backlog (stale news).
        self._full_claims = 0
        # Places reserved by claims in flight: a slot claiming its own next job
        # (batch=1, in a backlog) reserves one, a claim loop the jobs it asked for.
        self._claiming = 0
        self._running = 0
        self.burst = burst
        self.heartbeat, self.shutdown_grace, self.backoff = lease_keeping(
            queue.lease, heartbeat, shutdown_grace, backoff)
        self._pass_job = wants_job(handler)
        self._stopping = threading.Event()
        self._drained = threading.Event()
        self._slots_cond = threading.Condition()
        # Keyed by lease token, not job id: a job this worker failed and then
        # claimed again is held twice while the first slot is still settling it.
        self._held: dict[str, Job] = {}
        # When each held job's handler started (monotonic), by lease token.
        self._started: dict[str, float] = {}
        self._work: stdlib_queue.SimpleQueue[Job | None] = stdlib_queue.SimpleQueue()
        self._signals = 0
        # Batch mode completes in bulk: finished jobs wait here for one delete.
        self._completions: list[Job] = []
        self._completions_cond = threading.Condition()
        self._completer: threading.Thread | None = None
        self._flushing: list[Job] = []  # the completer's batch being written now
        self._returned = threading.Event()  # run() has finished its shutdown
        # Set (under _completions_cond) once the completer has flushed for the last time.
        self._completer_gone = False
        # Burst mode: retries this worker requeued, by job id, and when each falls
        # due (monotonic, taken after the requeue returned, so never early by the server).
        self._retries: dict[ObjectId, float] = {}

    @property
    def busy_slots(self) -> int:
        """Slots running a handler now (buffered jobs are not counted)."""
        return self._running

    @property
    def held(self) -> int:
        """Jobs this worker holds a lease on: running, buffered or awaiting completion."""
        return len(self._held)

    # -- lifecycle ---------------------------------------------------------------------

    def run(self) -> None:
        """Block until ``stop()`` (or, in burst mode, until nothing is due and all slots idle)."""
        self.queue.store.ensure_indexes()
        self.queue.watcher.start()
        self._start_threads()
        log.info("worker %s consuming %s with %d slots", self.queue.consumer_id,
                 self.queue.name, self.slots)
        try:
            with self.queue.board.waiting():
                self._claim_loop()
        finally:
            self._shut_down()
            self._returned.set()

    def stop(self) -> None:
        """Stop claiming; running handlers get ``shutdown_grace`` seconds to finish.

        Jobs still running after that are left to their leases (heartbeats
        stop), never released: the reaper hands them on and counts the attempt.
        """
        self._stopping.set()
        # Wake the claim loop wherever it waits.
        self.queue.board.notify_all()
        with self._slots_cond:
            self._slots_cond.notify_all()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: drain and exit; a second signal exits at once.

        For a process that exists to run this worker: after the first signal
        it exits ``shutdown_grace + EXIT_MARGIN`` seconds later at the latest,
        even if ``run()`` is still stuck on an unreachable MongoDB.
        """
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            # Leases of running jobs expire and the reaper hands them on.
            os.write(2, b"streamqueue worker: second signal, exiting now\n")
            os._exit(128 + signum)
        # stop() takes locks the interrupted main thread may hold (an Event's
        # inner lock is not reentrant), so it runs on a thread of its own.
        threading.Thread(target=self._stop_on_signal, args=(signum,), name="streamqueue-stop",
                         daemon=True).start()

    def _stop_on_signal(self, signum: int) -> None:
        log.info("signal %d: draining (send it again to exit at once)", signum)
        deadline = time.monotonic() + self.shutdown_grace + EXIT_MARGIN
        threading.Thread(target=self._exit_when_overdue, args=(deadline,),
                         name="streamqueue-exit-deadline", daemon=True).start()
        self.stop()

    def _exit_when_overdue(self, deadline: float) -> None:
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(left)
        if self._returned.is_set():
            # Only closing connections is left; every job was settled or left to its lease.
            log.info("closing connections outlasted the shutdown deadline; exiting")
            self._exit_now(ExitCode.OK)
        unsettled = self._unsettled()
        shown = ", ".join(str(job_id) for job_id in unsettled[:10])
        log.error("still shutting down %gs after the signal (MongoDB unreachable?): exiting "
                  "now. %d job(s) could not be settled and are left to their leases (at most "
                  "%gs): the reaper then hands them on, so nothing is lost%s",
                  self.shutdown_grace + EXIT_MARGIN, len(unsettled), self.queue.lease,
                  f" ({shown}{', ...' if len(unsettled) > 10 else ''})" if unsettled else "")
        self._exit_now(ExitCode.UNAVAILABLE)

    def _unsettled(self) -> list[ObjectId]:
        with self._slots_cond:
            held = [job.id for job in self._held.values()]
        with self._completions_cond:
            pending = [job.id for job in self._completions + self._flushing]
        return list(dict.fromkeys(held + pending))

    @staticmethod
    def _exit_now(code: int) -> None:
        for handler in logging.getLogger().handlers:
            # A broken handler must not keep the process alive.
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(code)

    def _start_threads(self) -> None:
        # Daemon threads: a handler stuck past the grace period must not keep
        # the process alive; its job is left to its lease (see _shut_down).
        for index in range(self.slots):
            threading.Thread(target=self._slot, name=f"streamqueue-slot-{index}",
                             daemon=True).start()
        threading.Thread(target=self._watch_cancels, name="streamqueue-cancels",
                         daemon=True).start()
        threading.Thread(target=self._heartbeat_loop, name="streamqueue-heartbeat",
                         daemon=True).start()
        for index in range(1, self.claims_in_flight):
            threading.Thread(target=self._claim_ahead_loop, name=f"streamqueue-claim-{index}",
                             daemon=True).start()
        if self.sizing.most > 1:
            self._completer = threading.Thread(target=self._completion_loop,
                                               name="streamqueue-completer", daemon=True)
            self._completer.start()

    # -- claiming ------------------------------------------------------------------------

    def _claim_loop(self) -> None:
        woken = False
        retry_due = math.inf  # in burst mode, when a retry of ours falls due
        while not self._stopping.is_set():
            want = self._wait_for_room()
            if want == 0:
                break
            if not self._backlog and not woken:
                # (A wake-up kept from a round that found no room stays pending.)
                wake = self.queue.wait_for_wakeup(retry_due)
                retry_due = math.inf
                if self._stopping.is_set():
                    break
                woken = wake not in (Wake.TIMEOUT, Wake.RESUME)
                want = self._wait_for_room()
                if want == 0:
                    break
            if not woken and self.queue.knows_empty():
                with self._slots_cond:
                    self._backlog = False  # the fleet view knows this claim would find nothing
                continue
            # A claim that finds nothing proves the queue drained only if no job
            # of ours was running (or being claimed by a slot) while it ran: a
            # handler failing meanwhile requeues its job after the claim looked.
            with self._slots_cond:
                idle_before = not self._held and not self._claiming
                full_before = self._full_claims
                # Alone, the loop keeps the room it counted; beside a claim-ahead
                # thread it reserves it, and may find it taken meanwhile.
                reserved = 0
                if self.claims_in_flight > 1:
                    want = reserved = self._reserve(want)
            if want == 0:
                continue  # the wake-up, if any, stays pending (woken)
            claim_started = time.monotonic()
            jobs: list[Job] | None = None
            try:
                jobs = self._claim(want)
            finally:
                self._take_claimed(reserved, jobs)
            if jobs is None:
                self._backlog = True  # the outage may have hidden new jobs
                continue
            self.sizing.note_claim(time.monotonic() - claim_started)
            self._note_claimed(full_before, full=len(jobs) == want)
            if not jobs and woken:
                self.queue.hooks.claim_empty(self.queue.name)
            woken = False
            for job in jobs:
                self._work.put(job)
            if self.burst and not jobs and idle_before and self._nothing_held():
                due = self._own_retry_due(claim_started)
                if due is None:
                    break
                retry_due = due

    def _nothing_held(self) -> bool:
        """No job held or being claimed now: a claim-ahead thread may have locked the
        last jobs while the claim loop's claim ran (and found nothing left). Their
        slots wake the loop again (``_slot``) once they go idle."""
        with self._slots_cond:
            return not self._held and not self._claiming

    def _own_retry_due(self, claim_started: float) -> float | None:
        """When to claim again for a retry this worker caused; None: burst mode may stop."""
        with self._slots_cond:
            # Due before the empty claim began, yet not found: another consumer took it.
            for job_id, due in list(self._retries.items()):
                if due <= claim_started:
                    del self._retries[job_id]
            soonest = min(self._retries.values(), default=None)
            later = len(self._retries)
        if soonest is None:
            log.info("burst mode: nothing due and all slots idle; stopping")
            return None
        if soonest - time.monotonic() > BURST_RETRY_WAIT:
            log.info("burst mode: nothing due and all slots idle; stopping with %d retr%s "
                     "due in more than %gs left delayed", later, "y" if later == 1 else "ies",
                     BURST_RETRY_WAIT)
            return None
        log.debug("burst mode: waiting for a retry due in %.1fs", soonest - time.monotonic())
        return soonest

    def _claim(self, want: int) -> list[Job] | None:
        """Claim up to ``want`` jobs; None after an outage outlasted the storage retries.

        A worker outlives MongoDB outages of any length: it logs, pauses and
        tries again. Only a lack of permission is fatal: waiting will not cure it.
        """
        try:
            jobs = self.queue.claim(want)
        except PermissionDenied:
            raise
        except StreamQueueError:
            log.exception("claim failed; trying again in %.0fs", OUTAGE_PAUSE)
            self._stopping.wait(OUTAGE_PAUSE)
            return None
        return jobs

    def _wait_for_room(self) -> int:
        """Wait for room to claim into; return how many jobs to claim (0 when stopping)."""
        with self._slots_cond:
            while not self._stopping.is_set():
                # A slot claiming for itself holds its place.
                held = len(self._held) + self._claiming
                if self.sizing.has_room(held, self._backlog):
                    return self.sizing.want(held, self._backlog)
                self._slots_cond.wait()
            return 0

    def _note_claimed(self, full_before: int, *, full: bool) -> bool:
        """Record a claim's outcome: a full one means a backlog, a short one its end.

        True if that started a backlog: the claim loop may have room now.
        """
        with self._slots_cond:
            started = full and not self._backlog
            if full:
                self._full_claims += 1
                self._backlog = True
            elif self._full_claims == full_before:
                self._backlog = False
            return started

    def _reserve(self, want: int) -> int:
        """Reserve places for a claim of up to ``want`` (caller holds ``_slots_cond``).

        Another claim may have reserved since the room was counted: take only
        what is left, which may be nothing.
        """
        want = min(want, self.sizing.want(len(self._held) + self._claiming, self._backlog))
        self._claiming += want
        return want

    def _take_claimed(self, reserved: int, jobs: list[Job] | None) -> None:
        """A claim returned: its reservation becomes the jobs it got (none if it failed)."""
        got = jobs or []
        with self._slots_cond:
            self._claiming -= reserved
            for job in got:
                self._held[job.lease_token] = job
                self._retries.pop(job.id, None)
            if len(got) < reserved:
                self._slots_cond.notify_all()  # room freed, or the last claim ended

    def _claim_ahead_loop(self) -> None:
        """Another claim in flight beside the claim loop's, in a backlog only.

        It never waits for wake-ups (the claim loop does): it claims while the
        last claims came back full, there is room for another batch and the
        worker is not stopping. A claim that comes back short ends the backlog,
        and it goes quiet until one comes back full again.
        """
        while True:
            with self._slots_cond:
                want = 0
                while not self._stopping.is_set():
                    held = len(self._held) + self._claiming
                    if self._backlog and self.sizing.has_room(held, True):
                        want = self._reserve(self.batch)
                        break
                    self._slots_cond.wait()
                if want == 0:
                    return
                full_before = self._full_claims
            jobs: list[Job] | None = None
            try:
                jobs = self.queue.claim(want)
            except StreamQueueError:
                log.warning("claim failed; the claim loop takes over", exc_info=True)
            finally:
                self._take_claimed(want, jobs)
            if jobs is None:
                self._stopping.wait(OUTAGE_PAUSE)
                continue
            started = self._note_claimed(full_before, full=len(jobs) == want)
            if started or (self.burst and not jobs):
                # The claim loop may wait for a wake-up while this claim found a
                # new backlog (or, in burst mode, its end): let it look again.
                self.queue.board.notify(1)
            for job in jobs:
                self._work.put(job)

    def _claim_own(self) -> Job | None:
        """A slot's own next job, claimed after it reserved its place (see ``_forget``).

        Errors are left to the claim loop, which pauses through outages:
        this slot gives its place back and goes idle.
        """
        with self._slots_cond:
            full_before = self._full_claims
        jobs: list[Job] | None = None
        try:
            jobs = self.queue.claim(1)
        except StreamQueueError:
            log.warning("claim failed; the claim loop takes over", exc_info=True)
        finally:
            with self._slots_cond:
                self._claiming -= 1
                if jobs:
                    self._held[jobs[0].lease_token] = jobs[0]
                    self._retries.pop(jobs[0].id, None)
        # The claim loop (or shutdown) waits on the room this slot held: wake it
        # only if that changed (no job came), not for every job a slot claims.
        # A failed claim (None) says nothing about the queue: the loop's next claim will.
        started = jobs is not None and self._note_claimed(full_before, full=bool(jobs))
        if started or not jobs:
            with self._slots_cond:
                self._slots_cond.notify_all()
        return jobs[0] if jobs else None

    # -- handling ------------------------------------------------------------------------

    def _slot(self) -> None:
        while True:
            job: Job | None = self._work.get()
            if job is None:
                return
            while job is not None:
                job = self._run_slot_job(job)
            if self.burst:
                # This slot went idle, and a job it finished may have requeued
                # itself: the claim loop looks again (and stops if all is done).
                self.queue.board.notify(1)

    def _run_slot_job(self, job: Job) -> Job | None:
        """Run one job; return the next one if this slot claimed it itself."""
        if self._stopping.is_set():
            # Buffered but never started: hand it back at once, not after the grace.
            self._release_unstarted(job)
            return None
        began = time.monotonic()
        with self._slots_cond:
            self._running += 1
            self._started[job.lease_token] = began
        claim_next = False
        try:
            self._handle(job)
        finally:
            with self._slots_cond:
                self._running -= 1
                self.sizing.note_handler(time.monotonic() - began)
            claim_next = self._forget(job, claim_next=self.sizing.batch == 1)
        return self._claim_own() if claim_next else None

    def _handle(self, job: Job) -> None:
        try:
            if self._pass_job:
                self.handler(job.payload, job)
            else:
                self.handler(job.payload)
        except Exception as exc:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            delays: list[float] = []

            def fail() -> None:
                delays.append(self._retry_delay(job))
                job.error(text, retry_in=delays[0])

            if self._settle(job, fail, "failed") and job.attempts < job.max_attempts:
                self._note_retry(job, delays[0])
        else:
            if job.settled or not (self.sizing.most > 1 and self._complete_later(job)):
                self._settle(job, job.complete, "finished")

    def _note_retry(self, job: Job, delay: float) -> None:
        if self.burst:
            with self._slots_cond:
                self._retries[job.id] = time.monotonic() + delay

    def _retry_delay(self, job: Job) -> float:
        return self.backoff(job.attempts) if callable(self.backoff) else self.backoff

    def _settle(self, job: Job, settle: Callable[[], None], outcome: str = "") -> bool:
        """Run ``settle``; True if it was written (False: settled already, lost, or failed)."""
        if job.settled:
            return False  # the handler settled it itself (complete/error/release)
        # Past the grace the job was left to its lease: say what became of it.
        late = bool(outcome) and self._drained.is_set()
        try:
            settle()
        except LeaseLost:
            if late:
                log.warning("job %s %s after the shutdown grace, but its lease had run out: "
                            "this outcome is dropped; the reaper hands the job on (requeued "
                            "or dead-lettered, this attempt counted)", job.id, outcome)
            else:
                log.warning("job %s: lease lost before it could be settled; another consumer "
                            "has it now", job.id)
        except StreamQueueError:
            # The lease will expire and the reaper will hand the job on.
            log.exception("job %s could not be settled", job.id)
        else:
            if late:
                log.warning("job %s %s after the shutdown grace; settled, as its lease was "
                            "still ours", job.id, outcome)
            return True
        return False

    # -- bulk completion ---------------------------------------------------------------------

    def _complete_later(self, job: Job) -> bool:
        """Queue ``job`` for the next bulk completion; False once the completer is gone."""
        with self._completions_cond:
            if self._completer_gone:
                return False
            self._completions.append(job)
            self._completions_cond.notify()
            return True

    def _completion_loop(self) -> None:
        while True:
            with self._completions_cond:
                while not self._completions and not self._drained.is_set():
                    self._completions_cond.wait()
                if not self._completions:
                    # Under the lock: a handler finishing later completes on its own.
                    self._completer_gone = True
                    return
                done, self._completions = self._completions, []
                self._flushing = done
            self._flush(done)
            with self._completions_cond:
                self._flushing = []

    def _flush(self, done: list[Job]) -> None:
        # A crash before this write only means redelivery once the leases expire.
        try:
            lost = self.queue.complete_many(done)
        except StreamQueueError:
            log.exception("could not complete %d jobs; their leases will expire", len(done))
            return
        for job in lost:
            log.warning("job %s: lease lost before it could be completed", job.id)

    # -- leases ---------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._stopping.wait(self.heartbeat):
            self._beat()
        # Keep beating while running handlers drain, so they do not lose their leases.
        while self._held and not self._drained.is_set():
            if self._drained.wait(self.heartbeat):
                break
            self._beat()

    def _watch_cancels(self) -> None:
        """Keep the change stream open while a handler runs long, so a cancel request
        reaches it (``Job.cancel_requested``) within a second."""
        watching = False
        while not self._stopping.wait(CANCEL_TICK):
            # Handlers started, not buffered jobs: a job waiting in the buffer
            # runs no handler to tell, and must not hold the stream open.
            with self._slots_cond:
                started = [(job, self._started[token]) for token, job in self._held.items()
                           if token in self._started and not job.settled]
            running = [job for job, _ in started]
            now = time.monotonic()
            wanted = any(now - at >= CANCEL_WATCH_AFTER for _, at in started)
            if wanted == watching:
                continue
            watching = wanted
            if self.queue.watcher.keep_open(wanted) and running:
                # Requests made while the stream was closed came as no event.
                self._note_cancels(running)
        self.queue.watcher.keep_open(False)

    def _note_cancels(self, jobs: list[Job]) -> None:
        try:
            requested = self.queue.store.cancel_requests([(job.id, job.lease_token)
                                                          for job in jobs])
        except StreamQueueError:
            log.warning("could not read cancel requests", exc_info=True)
            return
        for job in jobs:
            if job.id in requested:
                job._note_cancel_requested()

    def _beat(self) -> None:
        with self._slots_cond:
            beating = [job for job in self._held.values() if not job.settled]
        if not beating:
            return
        held = [(job.id, job.lease_token) for job in beating]
        try:
            alive = self.queue.store.heartbeat(held, self.queue.lease)
        except StreamQueueError:
            log.warning("heartbeat failed; will try again in %.1fs", self.heartbeat, exc_info=True)
            return
        for job in beating:
            if alive.get(job.id):
                job._note_cancel_requested()
        with self._slots_cond:
            # A job settled since the list was taken is gone for a good reason.
            lost = [job for job in beating
                    if job.id not in alive and job.lease_token in self._held and not job.settled]
        for job in lost:
            log.warning("job %s lost its lease while running", job.id)

    # -- shutdown ---------------------------------------------------------------------------

    def _forget(self, job: Job, *, claim_next: bool = False) -> bool:
        """The job is no longer ours (settled, or left to its lease): make room.

        With ``claim_next``, in a backlog, the slot keeps its place to claim its
        own next job (True): taken in the same step, so the claim loop never
        claims for a slot that is claiming for itself.
        """
        with self._slots_cond:
            self._held.pop(job.lease_token, None)
            self._started.pop(job.lease_token, None)
            reserve = (claim_next and self._backlog and not self._stopping.is_set()
                       and len(self._held) + self._claiming < self.slots)
            if reserve:
                # Held plus claiming is unchanged: nobody waiting on room needs waking.
                self._claiming += 1
            else:
                self._slots_cond.notify_all()
            return reserve

    def _release_unstarted(self, job: Job) -> None:
        self._settle(job, job.release)
        self._forget(job)

    def _release_buffered(self) -> None:
        while True:
            try:
                job = self._work.get_nowait()
            except stdlib_queue.Empty:
                return
            if job is not None:
                self._release_unstarted(job)

    def _shut_down(self) -> None:
        self._stopping.set()
        with self._slots_cond:
            self._slots_cond.notify_all()  # a claim-ahead thread waiting for room ends
        self._release_buffered()
        deadline = time.monotonic() + self.shutdown_grace
        with self._slots_cond:
            while (self._held or self._claiming) and time.monotonic() < deadline:
                self._slots_cond.wait(deadline - time.monotonic())
            leftovers = [job for job in self._held.values() if not job.settled]
        self._drained.set()
        with self._completions_cond:
            self._completions_cond.notify_all()
        if self._completer is not None:
            # It flushes what is left, then exits; run() returns after that.
            self._completer.join()
        for job in leftovers:
            # Not released: another consumer would run it while this handler
            # still does, and a handler that always hangs would get its attempt
            # back every time and never dead-letter. Heartbeats stop here, so
            # the lease runs out and the reaper requeues or dead-letters it.
            log.warning("job %s still running after the %gs shutdown grace: left to its "
                        "lease (not released, so nobody else runs it meanwhile); the attempt "
                        "counts", job.id, self.shutdown_grace)
        for _ in range(self.slots):
            self._work.put(None)
        log.info("worker %s stopped", self.queue.consumer_id)
