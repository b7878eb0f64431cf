"""Tasks: functions routed by name to queues, deferred like Celery's ``.delay()``.

``Tasks`` is the registry (one per app), ``Task`` one registered function. A
deferred call is a job whose payload names the task (``streamqueue.taskcodec``);
a worker for the registry (``Tasks.worker``, ``streamqueue worker app:tasks``)
serves every queue its tasks use from one process and runs each job's task.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar, cast, overload

from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.database import Database

from streamqueue.hooks import Hooks
from streamqueue.taskcodec import encode_call
from streamqueue.validation import Backoff, check_backoff, check_max_attempts, check_seconds

if TYPE_CHECKING:
    from streamqueue.aio.queue import AsyncQueue
    from streamqueue.metrics import PrometheusHooks
    from streamqueue.multiqueue import TaskWorker
    from streamqueue.queue import Job, Queue
    from streamqueue.reaper import Reaper

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
# What ``defer`` returns: the job id, or an awaitable of it with an AsyncDatabase.
Out = TypeVar("Out")
OutT = TypeVar("OutT")

_current_job: contextvars.ContextVar[Job | None] = contextvars.ContextVar(
    "streamqueue_current_job", default=None)


def current_job() -> Job | None:
    """The job whose task runs here (on a task worker), else None: a long task reads
    ``current_job().cancel_requested`` or calls ``progress()`` through it."""
    return _current_job.get()


#: The metrics' ``task`` label for a job naming no registered task (bounded cardinality).
UNKNOWN_TASK = "unknown"


@dataclass(frozen=True)
class TaskOptions:
    """A task's routing and retry settings, as ``Tasks.task`` checked them."""

    name: str
    queue: str
    max_attempts: int | None
    priority: int | None
    lease: float | None
    backoff: Backoff | None


@dataclass(frozen=True)
class PutOptions:
    """One ``configure()``: what a single defer adds to the task's settings."""

    delay: float = 0.0
    priority: int | None = None
    key: str | None = None
    tags: Sequence[str] = ()
    session: Any = None


class Task(Generic[P, R, Out]):
    """A registered function: call it to run it here, ``defer`` it to run on a worker."""

    def __init__(self, registry: Tasks[Out], fn: Callable[P, R], options: TaskOptions,
                 put: PutOptions | None = None) -> None:
        self.registry: Tasks[Out] = registry
        self.fn = fn
        self.options = options
        self._put = put or PutOptions()
        self.__name__ = getattr(fn, "__name__", options.name)
        self.__doc__ = fn.__doc__

    @property
    def name(self) -> str:
        return self.options.name

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.options.queue!r}>"

    def configure(self, *, delay: float = 0.0, priority: int | None = None,
                  key: str | None = None, tags: Sequence[str] = (),
                  session: Any = None) -> Task[P, R, Out]:
        """This task with settings for the next ``defer``: ``delay`` seconds (server clock),
        ``priority``, a unique ``key``, ``tags``, a caller's transaction ``session``
        (see ``Queue.put``)."""
        put = PutOptions(check_seconds("delay", delay), priority, key, tuple(tags), session)
        return Task(self.registry, self.fn, self.options, put)

    def defer(self, *args: P.args, **kwargs: P.kwargs) -> Out:
        """Enqueue a call; returns the job id (awaitable, when the registry's database is an
        ``AsyncDatabase``). Arguments BSON cannot store raise ``TypeError``; nothing is written."""
        payload = encode_call(self.name, args, kwargs)
        return self.registry._put(self.options, self._put, payload)

    async def defer_async(self, *args: P.args, **kwargs: P.kwargs) -> ObjectId:
        """``defer`` from async code, with either kind of registry."""
        payload = encode_call(self.name, args, kwargs)
        return await self.registry._put_async(self.options, self._put, payload)


class Decorator(Protocol[OutT]):
    """What ``@tasks.task(...)`` returns: it keeps each function's signature."""

    def __call__(self, fn: Callable[P, R], /) -> Task[P, R, OutT]: ...


class Tasks(Generic[Out]):
    """A registry of tasks on one database; ``defer`` writes to ``database[queue]``."""

    @overload
    def __init__(self: Tasks[ObjectId], database: Database[Any], *,
                 default_queue: str = "default", hooks: Hooks | None = None) -> None: ...

    @overload
    def __init__(self: Tasks[Awaitable[ObjectId]], database: AsyncDatabase[Any], *,
                 default_queue: str = "default", hooks: Hooks | None = None) -> None: ...

    def __init__(self, database: Database[Any] | AsyncDatabase[Any], *,
                 default_queue: str = "default", hooks: Hooks | None = None) -> None:
        if not isinstance(database, Database | AsyncDatabase):
            raise TypeError("Tasks needs a pymongo Database or AsyncDatabase, not "
                            f"{type(database).__name__}")
        self.database = database
        self.default_queue = check_queue_name(default_queue)
        self.hooks = hooks or Hooks()
        self._tasks: dict[str, Task[Any, Any, Out]] = {}
        self._queues: dict[str, Any] = {}  # producing Queue/AsyncQueue by name
        self._lock = threading.Lock()

    @property
    def is_async(self) -> bool:
        return isinstance(self.database, AsyncDatabase)

    # -- registering --------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R, Out]: ...

    @overload
    def task(self, *, queue: str | None = None, max_attempts: int | None = None,
             priority: int | None = None, lease: float | None = None,
             backoff: Backoff | None = None,
             name: str | None = None) -> Decorator[Out]: ...

    def task(self, fn: Callable[..., Any] | None = None, *, queue: str | None = None,
             max_attempts: int | None = None, priority: int | None = None,
             lease: float | None = None, backoff: Backoff | None = None,
             name: str | None = None) -> Any:
        """Register a function as a task (``@tasks.task`` or ``@tasks.task(queue=...)``).

        ``name`` pins the stored name (default: module + qualified name), so moving or
        renaming the function does not orphan queued jobs. ``max_attempts``, ``priority``
        and ``lease`` (seconds a claim holds the job) go into each job; ``backoff`` the
        delay before a retry (seconds, or a
        callable of the attempt number).
        """
        options = TaskOptions(
            name="", queue=check_queue_name(queue or self.default_queue),
            max_attempts=None if max_attempts is None else check_max_attempts(max_attempts),
            priority=check_priority(priority),
            lease=None if lease is None else check_seconds("lease", lease, allow_zero=False),
            backoff=None if backoff is None else check_backoff(backoff))

        def register(function: Callable[..., Any]) -> Task[Any, Any, Out]:
            if not callable(function):
                raise TypeError(f"a task must be a function, not {type(function).__name__}")
            task_name = name if name is not None else default_name(function)
            if not isinstance(task_name, str) or not task_name:
                raise ValueError(f"a task name must be a non-empty str, not {task_name!r}")
            task: Task[Any, Any, Out] = Task(self, function, replace(options, name=task_name))
            with self._lock:
                if task_name in self._tasks:
                    raise ValueError(f"a task named {task_name!r} is registered already; "
                                     "pin another with name=")
                self._tasks[task_name] = task
            return task

        return register if fn is None else register(fn)

    def get(self, name: str) -> Task[Any, Any, Out] | None:
        return self._tasks.get(name)

    @property
    def names(self) -> list[str]:
        return sorted(self._tasks)

    def queues(self) -> list[str]:
        """The queues the tasks use, the default one first, then by name."""
        used = {task.options.queue for task in self._tasks.values()}
        return sorted(used | {self.default_queue},
                      key=lambda queue: (queue != self.default_queue, queue))

    def leases(self, queues: Sequence[str]) -> list[float]:
        """The leases the tasks of ``queues`` set (their jobs carry them)."""
        return [task.options.lease for task in self._tasks.values()
                if task.options.queue in queues and task.options.lease is not None]

    # -- producing ------------------------------------------------------------------------

    def _put(self, options: TaskOptions, put: PutOptions, payload: Mapping[str, Any]) -> Out:
        if self.is_async:
            return cast(Out, self._put_async(options, put, payload))
        queue: Queue = self._queue(options.queue)
        job_id = queue.put(payload, **put_arguments(options, put))
        return cast(Out, job_id)

    async def _put_async(self, options: TaskOptions, put: PutOptions,
                         payload: Mapping[str, Any]) -> ObjectId:
        if not self.is_async:
            # The sync driver blocks: off the event loop.
            written: Any = await asyncio.to_thread(self._put, options, put, payload)
            return cast(ObjectId, written)
        queue: AsyncQueue = self._queue(options.queue)
        job_id: ObjectId = await queue.put(payload, **put_arguments(options, put))
        return job_id

    def _queue(self, name: str) -> Any:
        with self._lock:
            queue = self._queues.get(name)
            if queue is None:
                queue = self._queues[name] = self._new_queue(name)
            return queue

    def _new_queue(self, name: str) -> Any:
        if isinstance(self.database, AsyncDatabase):
            from streamqueue.aio.queue import AsyncQueue
            return AsyncQueue(self.database[name], hooks=self.hooks)
        from streamqueue.queue import Queue
        return Queue(self.database[name], hooks=self.hooks)

    # -- consuming ------------------------------------------------------------------------

    def worker(self, queues: Sequence[str] | None = None, *, database: Database[Any] | None = None,
               order: str = "fair", **options: Any) -> TaskWorker:
        """A ``Worker`` running this registry's tasks from ``queues`` (default: every queue
        its tasks use) in one process: see ``streamqueue.multiqueue.task_worker``."""
        from streamqueue.multiqueue import task_worker
        return task_worker(self, queues, database=database, order=order, **options)

    def reaper(self, *, database: Database[Any] | None = None, interval: float = 5.0,
               hooks: PrometheusHooks | None = None) -> Reaper:
        """A ``Reaper`` for every queue of the registry (``streamqueue reaper --tasks``)."""
        from streamqueue.queue import Queue
        from streamqueue.reaper import Reaper

        db = self.database if database is None else database
        if not isinstance(db, Database):
            raise TypeError("a reaper runs on a sync pymongo Database: pass database= "
                            "when the registry was made with an AsyncDatabase")
        queues = [Queue(db[name], hooks=hooks) for name in self.queues()]
        return Reaper(queues, interval=interval, hooks=hooks)


def put_arguments(options: TaskOptions, put: PutOptions) -> dict[str, Any]:
    return {"priority": put.priority if put.priority is not None else options.priority,
            "delay": put.delay, "key": put.key, "tags": put.tags, "session": put.session,
            "max_attempts": options.max_attempts, "lease": options.lease}


def default_name(function: Callable[..., Any]) -> str:
    module = getattr(function, "__module__", None) or "?"
    return f"{module}.{getattr(function, '__qualname__', repr(function))}"


def check_queue_name(name: object) -> str:
    if not isinstance(name, str) or not name or "$" in name or "\x00" in name:
        raise ValueError(f"a queue name must be a non-empty str without '$', not {name!r}")
    return name


def check_priority(priority: object) -> int | None:
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise TypeError(f"priority must be an int, not {type(priority).__name__}")
    return priority
