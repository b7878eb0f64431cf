"""Tasks (issue 18): what ``defer()`` costs against ``put()``, and what an idle worker
serving ten queues costs the server against one serving one.

``defer`` vs ``put``: the same payload through both, on one client, in interleaved
rounds (each round runs both, in alternating order), per-call times pooled.
Idle: the server's operation counters while a task worker waits on empty queues,
less the counters with nobody running (the baseline); for context, ten ordinary
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

from pymongo import MongoClient

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
    idle_ratio: float  # ten queues / one queue
    errors: list[str] = field(default_factory=list)


def tasks_bench(ctx: BenchContext, *, calls: int = 2000, rounds: int = 6,
                idle_seconds: float = 30.0) -> TasksRow:
    db_name = f"{ctx.db_name}_tasks_{uuid.uuid4().hex[:6]}"
    client: MongoClient[Document] = MongoClient(ctx.uri)
    try:
        put_us, defer_us = _defer_vs_put(client, db_name, calls, rounds)
        client.drop_database(db_name)
        baseline = _ops(ctx, idle_seconds, None)
        one = _ops(ctx, idle_seconds, lambda: _task_worker(client, db_name, 1))
        ten = _ops(ctx, idle_seconds, lambda: _task_worker(client, db_name, 10))
        naive = _ops(ctx, idle_seconds, lambda: _single_workers(client, db_name, 10))
    finally:
        client.drop_database(db_name)
        client.close()
    net = [max(0.0, value - baseline) for value in (one, ten, naive)]
    return TasksRow(calls=calls, rounds=rounds, put_us=put_us, defer_us=defer_us,
                    defer_ratio=defer_us / put_us if put_us else 0.0,
                    idle_seconds=idle_seconds, baseline_ops_per_s=baseline,
                    one_queue_ops_per_s=net[0], ten_queues_ops_per_s=net[1],
                    ten_workers_ops_per_s=net[2],
                    idle_ratio=net[1] / net[0] if net[0] else 0.0)


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


def _ops(ctx: BenchContext, seconds: float, start: Callable[[], Callable[[], None]] | None,
         settle: float = 1.0) -> float:
    """Server ops/s over ``seconds`` while what ``start`` started idles (None: nothing)."""
    finish: Any = start() if start is not None else None
    try:
        time.sleep(settle)
        before = ctx.server_ops()
        time.sleep(seconds)
        return ctx.server_ops().since(before).per_second
    finally:
        if finish is not None:
            finish()
