"""One worker process for several queues: one claim loop, one change stream.

Composed from the single-queue pieces, which stay as they are: each queue is a
plain ``Queue`` (its claims, settles, pause switch and cancel requests), and
``QueueGroup`` stands where a ``Worker`` expects its queue. The group follows one
database-level stream (``GroupWatcher``, filtered on the queues' collections),
routes each event to its queue by collection name, and wakes one board; its
claim asks only the queues that can have a job: those an event named, or after a
sweep, a delayed job falling due, a reopened stream, a resume or any wake-up meant
for every queue (``GroupBoard``), those one ``$unionWith`` probe finds a due job in
(one command whatever the number of queues).

Order between queues: ``"priority"`` claims from the queues in the order given,
a later one only when every earlier one had less than asked; ``"fair"`` starts
each claim round one queue further among those that have jobs (that queue gets
the batch, the next ones fill what it lacks), so a backlog in one queue cannot
starve another.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from itertools import zip_longest
from typing import TYPE_CHECKING, Any, cast

from bson import ObjectId

from streamqueue.errors import PermissionDenied, StreamQueueError
from streamqueue.hooks import Hooks
from streamqueue.pause import PauseFlag
from streamqueue.queue import Job, Queue
from streamqueue.storage import CONTROL_ID, StorePlans, event_due_in
from streamqueue.storage.group import GONE, GroupPlans
from streamqueue.storage.runner import run
from streamqueue.taskcodec import decode_call
from streamqueue.tasks import _current_job
from streamqueue.wakeups import Wake, WakeupBoard
from streamqueue.watcher import ChangeStreamWatcher, watcher_options
from streamqueue.worker import Worker

if TYPE_CHECKING:
    from pymongo.database import Database

    from streamqueue.tasks import Task, Tasks

log = logging.getLogger(__name__)

ORDERS = ("fair", "priority")


def wakes_claim(event: Mapping[str, Any]) -> bool:
    """An event announcing a claimable job (not the pause switch, not a cancel request)."""
    if event.get("documentKey", {}).get("_id") == CONTROL_ID:
        return False
    fields = event.get("updateDescription", {}).get("updatedFields", {})
    return not (event.get("operationType") == "update" and "cancel_requested" in fields)


class GroupBoard(WakeupBoard):
    """A ``WakeupBoard`` that remembers a wake-up meant for every queue (a resume, a reopened
    stream, the end of an outage), so the claim after it asks them all, not only the
    queues events named."""

    def __init__(self) -> None:
        super().__init__()
        self._everyone = False
        self._everyone_lock = threading.Lock()

    def notify_all(self) -> None:
        self._note_everyone()
        super().notify_all()

    def unpause(self) -> None:
        if self.paused:
            self._note_everyone()
        super().unpause()

    def _note_everyone(self) -> None:
        # Before the wake-up itself: the claim it causes must see it.
        with self._everyone_lock:
            self._everyone = True

    def take_everyone(self) -> bool:
        with self._everyone_lock:
            everyone, self._everyone = self._everyone, False
        return everyone


class GroupWatcher(ChangeStreamWatcher):
    """``ChangeStreamWatcher`` on a database stream: each event goes to its queue."""

    def __init__(self, members: Sequence[Queue], board: WakeupBoard, hooks: Hooks,
                 **options: Any) -> None:
        super().__init__(members[0].store, board, hooks, **options)
        self.group = GroupPlans([queue.store.plans for queue in members])
        # StreamEvents needs of its plans only watch, next_change, close_stream,
        # next_due_in and jobs, which GroupPlans has for the whole group.
        self._plans = cast(StorePlans, self.group)
        self._name = ",".join(self.group.names)
        self._members = {queue.name: queue for queue in members}
        self._hints: set[str] = set()
        self._hint_lock = threading.Lock()
        for queue in members:
            # Each queue trusts what it read of its pause switch while this stream,
            # which carries the switch's changes, stays open (see PauseFlag).
            queue._pause = PauseFlag(queue.store.is_paused, self.stream_epoch)
            queue._events = self

    def take_hints(self) -> set[str]:
        """The queues events announced a due job in since the last call."""
        with self._hint_lock:
            hints, self._hints = self._hints, set()
        return hints

    def _on_event(self, event: Mapping[str, Any]) -> None:
        queue = self._members.get(event.get("ns", {}).get("coll", ""))
        if queue is None:
            return
        if event.get("operationType") in GONE:
            log.info("queue %s was dropped or renamed; its indexes are made again on the "
                     "next claim", queue.name)
            queue.store.forget_indexes()
            return
        # Only this thread reads them: the event's own queue hears its pause or cancel.
        self.on_pause = queue._pause.heard
        self.on_cancel = queue._cancel_heard
        if wakes_claim(event) and event_due_in(event) <= 0:
            with self._hint_lock:
                self._hints.add(queue.name)
        super()._on_event(event)

    def _invalidated(self) -> None:
        super()._invalidated()
        self.group.forget_indexes()


class GroupStore:
    """What a ``Worker`` asks of its queue's store, sent to each job's own queue."""

    def __init__(self, group: QueueGroup) -> None:
        self._group = group

    def ensure_indexes(self) -> None:
        for queue in self._group.members:
            queue.store.ensure_indexes()

    def heartbeat(self, held: Sequence[tuple[ObjectId, str]],
                  lease: float) -> dict[ObjectId, bool]:
        alive: dict[ObjectId, bool] = {}
        for queue, pairs in self._group.split(held, prune=True):
            alive.update(queue.store.heartbeat(pairs, queue.lease))
        return alive

    def cancel_requests(self, held: Sequence[tuple[ObjectId, str]]) -> set[ObjectId]:
        requested: set[ObjectId] = set()
        for queue, pairs in self._group.split(held):
            requested |= queue.store.cancel_requests(pairs)
        return requested


class QueueGroup:
    """Several queues of one database behind the face of one ``Queue``, for a ``Worker``."""

    def __init__(self, members: Sequence[Queue], *, order: str = "fair", hooks: Hooks | None = None,
                 max_await: float = 5.0, poll_interval: float = 1.0,
                 pause_stream_after: float | None = 2.0, sweep_interval: float = 30.0) -> None:
        names = [queue.name for queue in members]
        if not members or len(set(names)) != len(names):
            raise ValueError(f"a group needs distinct queues, not {names}")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, not {order!r}")
        self.members = list(members)
        self.order = order
        self.hooks = hooks or members[0].hooks
        self.board = GroupBoard()
        self.watcher = GroupWatcher(self.members, self.board, self.hooks, **watcher_options(
            max_await=max_await, poll_interval=poll_interval,
            pause_stream_after=pause_stream_after))
        self.store = GroupStore(self)
        self.name = ",".join(names)
        self.consumer_id = members[0].consumer_id
        # The heartbeat interval follows the shortest lease; each queue extends by its own.
        self.lease = min(queue.lease for queue in members)
        self.sweep_interval = sweep_interval
        self._wake: Wake | None = Wake.TIMEOUT  # the first claim probes every queue
        self._turn = 0  # the member queue a fair round starts from
        self._position = {queue.name: index for index, queue in enumerate(self.members)}
        self._owners: dict[str, Queue] = {}  # lease token -> queue, for heartbeats
        self._owners_lock = threading.Lock()

    def knows_empty(self) -> bool:
        """As ``Queue.knows_empty``: a group has no fleet view, so it never knows."""
        return False

    def wait_for_wakeup(self, deadline: float) -> Wake:
        """As ``Queue.wait_for_wakeup``; the claim after it asks the queues the wake names."""
        wake = self.board.wait(min(deadline, time.monotonic() + self.sweep_interval))
        if wake is Wake.RESUME:
            self.watcher.resume()
        elif wake is Wake.DUE:
            self.watcher.refresh_due()
        self._wake = wake
        return wake

    def claim(self, limit: int = 1) -> list[Job]:
        """One claim round of up to ``limit`` jobs over the queues that may have some."""
        wake, self._wake = self._wake, None
        hints = self.watcher.take_hints()
        everyone = self.board.take_everyone()
        if len(self.members) == 1:
            targets = self.members
        elif wake is Wake.EVENT and hints and not everyone:
            targets = [queue for queue in self.members if queue.name in hints]
        else:
            due = run(self.watcher.group.due_queues())
            targets = [queue for queue in self.members if queue.name in due]
        jobs = self._claim_from(targets, limit)
        with self._owners_lock:
            for job in jobs:
                self._owners[job.lease_token] = job._queue
        return jobs

    def _claim_from(self, targets: list[Queue], limit: int) -> list[Job]:
        if not targets:
            return []
        if self.order == "priority":
            taken = self._claim_each([(queue, limit) for queue in targets], limit)
            return [job for jobs in taken for job in jobs]
        # Fair: every queue with jobs gets an even share of the round, starting where the
        # last round's jobs stopped, and the jobs are run turn by turn; so one slot (or a
        # claim of several jobs) serves the queues job by job. Queues after a short one
        # fill what it lacked.
        count = len(self.members)
        turn = sorted(targets, key=lambda queue: (self._position[queue.name] - self._turn) % count)
        shares = [limit // len(turn) + (index < limit % len(turn)) for index in range(len(turn))]
        jobs = _interleaved(self._claim_each(list(zip(turn, shares, strict=True)), limit))
        if len(jobs) < limit:
            jobs += _interleaved(self._claim_each([(queue, limit) for queue in turn],
                                                  limit - len(jobs), claimed=len(jobs)))
        if jobs:
            self._turn = (self._position[jobs[-1]._queue.name] + 1) % count
        return jobs

    def _claim_each(self, asks: list[tuple[Queue, int]], limit: int,
                    claimed: int = 0) -> list[list[Job]]:
        """Each queue's jobs, in ``asks`` order, up to ``limit`` in all."""
        taken: list[list[Job]] = []
        got = 0
        for queue, wanted in asks:
            room = min(wanted, limit - got)
            if room <= 0:
                continue
            try:
                jobs = queue.claim(room)
            except PermissionDenied:
                raise
            except StreamQueueError:
                if not got and not claimed:
                    raise
                # Jobs already claimed this round must reach the worker, not their leases.
                log.warning("claim on %s failed; keeping the %d job(s) claimed from other "
                            "queues", queue.name, got + claimed, exc_info=True)
                break
            taken.append(jobs)
            got += len(jobs)
        return taken

    def split(self, held: Sequence[tuple[ObjectId, str]],
              prune: bool = False) -> Iterator[tuple[Queue, list[tuple[ObjectId, str]]]]:
        """Held claims by the queue they came from; ``prune`` forgets claims not listed."""
        by_queue: dict[str, tuple[Queue, list[tuple[ObjectId, str]]]] = {}
        with self._owners_lock:
            for job_id, token in held:
                queue = self._owners.get(token)
                if queue is not None:
                    by_queue.setdefault(queue.name, (queue, []))[1].append((job_id, token))
            if prune:
                listed = {token for _, token in held}
                self._owners = {token: queue for token, queue in self._owners.items()
                                if token in listed}
        yield from by_queue.values()

    def complete_many(self, jobs: Sequence[Job]) -> list[Job]:
        lost: list[Job] = []
        for queue in self.members:
            mine = [job for job in jobs if job._queue is queue]
            if mine:
                lost += queue.complete_many(mine)
        return lost

    def close(self) -> None:
        self.watcher.stop()
        for queue in self.members:
            queue.close()


class TaskRunner:
    """The handler of a task worker: runs the task each job names.

    A job naming no task of the registry goes to the error queue at once, not
    retried: a deploy that removed a task must not loop its jobs. ``async def``
    tasks run on one event loop of the worker's (a thread of its own), sync ones
    on the worker's handler threads.
    """

    def __init__(self, registry: Tasks[Any], hooks: Hooks) -> None:
        self.registry = registry
        self.hooks = hooks
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._loop_lock = threading.Lock()

    def __call__(self, payload: dict[str, Any], job: Job) -> None:
        queue = job._queue.name
        try:
            call = decode_call(payload)
        except ValueError as exc:
            self._unknown(job, str(exc))
            return
        task = self.registry.get(call.name)
        if task is None:
            self._unknown(job, f"unknown task {call.name!r}: this worker has no task of that "
                               f"name (it knows {', '.join(self.registry.names) or 'none'}); "
                               "not retried")
            return
        started = time.monotonic()
        try:
            self._run(task, call.args, call.kwargs, job)
        except Exception as exc:
            self.hooks.task_ran(queue, task.name, "failed", time.monotonic() - started)
            if task.options.backoff is None:
                raise  # the Worker retries it with its own backoff
            backoff = task.options.backoff
            delay = backoff(job.attempts) if callable(backoff) else backoff
            job.error("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
                      retry_in=delay)
            return
        self.hooks.task_ran(queue, task.name, "completed", time.monotonic() - started)

    def _unknown(self, job: Job, message: str) -> None:
        self.hooks.task_ran(job._queue.name, "unknown", "unknown", 0.0)
        log.error("job %s on %s: %s", job.id, job._queue.name, message)
        job.fail(message)

    def _run(self, task: Task[Any, Any, Any], args: list[Any], kwargs: dict[str, Any],
             job: Job) -> None:
        if task.is_async:
            future = asyncio.run_coroutine_threadsafe(_as_job(job, task.fn(*args, **kwargs)),
                                                      self._event_loop())
            future.result()
            return
        token = _current_job.set(job)
        try:
            task.fn(*args, **kwargs)
        finally:
            _current_job.reset(token)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._loop_thread = threading.Thread(
                    target=loop.run_forever, name="streamqueue-tasks-loop", daemon=True)
                self._loop_thread.start()
                self._loop = loop
            return self._loop

    def close(self, timeout: float = 5.0) -> None:
        """Stop the event loop of async tasks (after the worker's run returned)."""
        with self._loop_lock:
            loop, thread, self._loop, self._loop_thread = self._loop, self._loop_thread, None, None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()


def _interleaved(per_queue: list[list[Job]]) -> list[Job]:
    """One job of each queue in turn: the order the worker starts them in."""
    rounds = zip_longest(*per_queue)
    return [job for jobs in rounds for job in jobs if job is not None]


async def _as_job(job: Job, coroutine: Awaitable[Any]) -> None:
    # The loop's task copies the loop thread's context: set the job inside it.
    _current_job.set(job)
    await coroutine


class TaskWorker(Worker):
    """A ``Worker`` over a ``QueueGroup`` running a registry's tasks; ``run`` then ``close``."""

    def __init__(self, group: QueueGroup, runner: TaskRunner, **options: Any) -> None:
        # The Worker only uses what QueueGroup has of a Queue (see QueueGroup).
        super().__init__(cast(Queue, group), runner, **options)
        self.group = group
        self.runner = runner

    def close(self) -> None:
        self.group.close()
        self.runner.close()


def task_worker(registry: Tasks[Any], queues: Sequence[str] | None = None, *,
                database: Database[Any] | None = None, order: str = "fair",
                consumer_id: str | None = None, lease: float = 300.0,
                hooks: Hooks | None = None, max_await: float = 5.0,
                sweep_interval: float = 30.0, **options: Any) -> TaskWorker:
    """A worker for ``queues`` (default: every queue the registry's tasks use) on
    ``database`` (default: the registry's, which must then be a sync ``Database``).

    ``lease``: for jobs whose task sets none. ``options`` go to ``Worker``
    (``concurrency``, ``batch``, ``burst``, ``backoff``, ``shutdown_grace``...).
    """
    from pymongo.database import Database as SyncDatabase

    db = registry.database if database is None else database
    if not isinstance(db, SyncDatabase):
        raise TypeError("a task worker runs on a sync pymongo Database: pass database= "
                        "when the registry was made with an AsyncDatabase")
    names = list(queues) if queues else registry.queues()
    hooks = hooks or registry.hooks
    members = [Queue(db[name], consumer_id, lease=lease, hooks=hooks, max_await=max_await,
                     sweep_interval=sweep_interval) for name in names]
    group = QueueGroup(members, order=order, hooks=hooks, max_await=max_await,
                       sweep_interval=sweep_interval)
    # Tasks' jobs carry their own lease (put(lease=)): heart-beat often enough for the shortest.
    group.lease = min([group.lease, *registry.leases(names)])
    return TaskWorker(group, TaskRunner(registry, hooks), **options)
