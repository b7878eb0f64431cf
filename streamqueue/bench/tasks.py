"""Tasks (issue 18): what ``defer()`` costs against ``put()``, and what an idle worker
serving ten queues costs the server against one serving one.

``defer`` vs ``put``: the same payload through both, on one client, in interleaved
rounds (each round runs both, in alternating order), per-call times pooled.
Idle: the commands the worker's own client sends while it waits on empty queues
(exact: each is one server operation), and the server's operation counters less
the counters with nobody running (the baseline; noisier, as the server's own
periodic work lands in one window or another); for context, ten ordinary
single-queue Workers in one process (one stream and one sweep each).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from pymongo import MongoClient, monitoring

from streamqueue.bench.common import BenchContext
from streamqueue.queue import Queue
from streamqueue.storage import Document
from streamqueue.tasks import Tasks
from streamqueue.worker import Worker


@dataclass
class TasksRow:
    calls: int
    rounds: int
    put_us: float  # median per call
    defer_us: float
    defer_ratio: float
    idle_seconds: float
    baseline_ops_per_s: float
    one_queue_ops_per_s: float  # net of the baseline
    ten_queues_ops_per_s: float
    ten_workers_ops_per_s: float
    idle_ratio: float  # ten queues / one queue, by the commands sent
    one_queue_commands_per_s: float = 0.0  # sent by the worker's client
    ten_queues_commands_per_s: float = 0.0
    ten_workers_commands_per_s: float = 0.0
    # Draining the same jobs in burst mode: all in 1 queue, or spread over 10.
    drain_jobs: int = 0
    drain_one_queue_jobs_per_s: float = 0.0
    drain_ten_queues_jobs_per_s: float = 0.0
    errors: list[str] = field(default_factory=list)


def tasks_bench(ctx: BenchContext, *, calls: int = 2000, rounds: int = 6,
                idle_seconds: float = 30.0, drain_jobs: int = 2000) -> TasksRow:
    db_name = f"{ctx.db_name}_tasks_{uuid.uuid4().hex[:6]}"
    client: MongoClient[Document] = MongoClient(ctx.uri)
    try:
        put_us, defer_us = _defer_vs_put(client, db_name, calls, rounds)
        client.drop_database(db_name)
        baseline, _ = _ops(ctx, idle_seconds, None)
        one = _ops(ctx, idle_seconds, lambda c: _task_worker(c, db_name, 1))
        ten = _ops(ctx, idle_seconds, lambda c: _task_worker(c, db_name, 10))
        naive = _ops(ctx, idle_seconds, lambda c: _single_workers(c, db_name, 10))
        drain = [_drain(client, f"{db_name}_drain{queues}", drain_jobs, queues)
                 for queues in (1, 10)]
    finally:
        client.drop_database(db_name)
        client.close()
    net = [max(0.0, server - baseline) for server, _ in (one, ten, naive)]
    sent = [commands for _, commands in (one, ten, naive)]
    return TasksRow(calls=calls, rounds=rounds, put_us=put_us, defer_us=defer_us,
                    defer_ratio=defer_us / put_us if put_us else 0.0,
                    idle_seconds=idle_seconds, baseline_ops_per_s=baseline,
                    one_queue_ops_per_s=net[0], ten_queues_ops_per_s=net[1],
                    ten_workers_ops_per_s=net[2],
                    idle_ratio=sent[1] / sent[0] if sent[0] else 0.0,
                    one_queue_commands_per_s=sent[0], ten_queues_commands_per_s=sent[1],
                    ten_workers_commands_per_s=sent[2], drain_jobs=drain_jobs,
                    drain_one_queue_jobs_per_s=drain[0], drain_ten_queues_jobs_per_s=drain[1])


def _defer_vs_put(client: MongoClient[Document], db_name: str, calls: int,
                  rounds: int) -> tuple[float, float]:
    tasks = Tasks(client[db_name])

    @tasks.task(queue="defer", name="bench.send")
    def send(to: str, subject: str, n: int) -> None: ...

    queue = Queue(client[db_name]["put"])
    send.defer("warm@example.com", subject="warm", n=0)  # indexes, connections
    queue.put({"task": "bench.send", "args": ["warm@example.com"],
               "kwargs": {"subject": "warm", "n": 0}})
    timings: dict[str, list[float]] = {"put": [], "defer": []}
    per_round = max(1, calls // rounds)

    def puts() -> None:
        for n in range(per_round):
            began = time.perf_counter()
            queue.put({"task": "bench.send", "args": ["ada@example.com"],
                       "kwargs": {"subject": "hi", "n": n}})
            timings["put"].append(time.perf_counter() - began)

    def defers() -> None:
        for n in range(per_round):
            began = time.perf_counter()
            send.defer("ada@example.com", subject="hi", n=n)
            timings["defer"].append(time.perf_counter() - began)

    for index in range(rounds):
        for step in ((puts, defers) if index % 2 == 0 else (defers, puts)):
            step()
    return median(timings["put"]) * 1e6, median(timings["defer"]) * 1e6


def _drain(client: MongoClient[Document], db_name: str, jobs: int, queues: int) -> float:
    """Jobs/s of a burst-mode task worker (4 slots) draining ``jobs`` no-op tasks spread
    over ``queues`` queues; the jobs are written first."""
    tasks = Tasks(client[db_name])
    names = [f"q{index}" for index in range(queues)]
    for name in names:
        tasks.task(queue=name, name=f"drain.{name}")(lambda n: None)
        queue = Queue(client[db_name][name])
        queue.put_many({"task": f"drain.{name}", "args": [n], "kwargs": {}}
                       for n in range(jobs // queues))
    worker = tasks.worker(concurrency=4, burst=True)
    began = time.perf_counter()
    try:
        worker.run()
    finally:
        worker.close()
        client.drop_database(db_name)
    return (jobs // queues * queues) / (time.perf_counter() - began)


def _task_worker(client: MongoClient[Document], db_name: str, queues: int) -> Callable[[], None]:
    tasks = Tasks(client[db_name])
    for index in range(queues):
        tasks.task(queue=f"q{index}", name=f"bench.t{index}")(lambda: None)
    worker = tasks.worker(concurrency=4)
    return _running(worker.run, worker.stop, worker.close,
                    ready=lambda: worker.group.watcher.stream_epoch() is not None)


def _single_workers(client: MongoClient[Document], db_name: str,
                    queues: int) -> Callable[[], None]:
    workers = [Worker(Queue(client[db_name][f"q{index}"]), lambda payload: None, concurrency=4)
               for index in range(queues)]
    stops = [_running(w.run, w.stop, w.queue.close,
                      ready=lambda w=w: w.queue.watcher.stream_epoch() is not None)  # type: ignore[misc]
             for w in workers]

    def stop_all() -> None:
        for stop in stops:
            stop()
    return stop_all


def _running(run: Callable[[], None], stop: Callable[[], None], close: Callable[[], None],
             ready: Callable[[], bool]) -> Callable[[], None]:
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.01)

    def finish() -> None:
        stop()
        thread.join(60)
        close()
    return finish


class _Sent(monitoring.CommandListener):
    """Counts the commands a client sends (server monitoring's hellos are not commands)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with self._lock:
            self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def _ops(ctx: BenchContext, seconds: float,
         start: Callable[[MongoClient[Document]], Callable[[], None]] | None,
         settle: float = 1.0) -> tuple[float, float]:
    """(server ops/s, commands/s sent by the idle worker's client) over ``seconds``."""
    sent = _Sent()
    client: MongoClient[Document] = MongoClient(ctx.uri, event_listeners=[sent])
    finish: Any = start(client) if start is not None else None
    try:
        time.sleep(settle)
        before, counted = ctx.server_ops(), sent.count
        time.sleep(seconds)
        delta = ctx.server_ops().since(before)
        return delta.per_second, (sent.count - counted) / delta.seconds
    finally:
        if finish is not None:
            finish()
        client.close()
