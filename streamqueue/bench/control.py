"""Control latencies: pause to stop, resume to first claim, cancel to the running handler.

Each sample uses two ``Queue`` objects on separate clients, as an operator's
process and a consumer's would be. Times are the client's monotonic clock,
from just before the control call to the consumer seeing its effect.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection

from streamqueue.bench.common import BenchContext, Percentiles
from streamqueue.queue import Job, Queue
from streamqueue.storage import Document
from streamqueue.worker import Worker

# A cancel lands this far into a handler's run, spread evenly up to this: the
# Worker keeps its stream open for handlers past 0.5 s, so both sides are seen.
CANCEL_SPREAD = 1.5


@dataclass
class ControlRow:
    name: str
    requirement: str
    samples: int
    latency: Percentiles
    errors: list[str] = field(default_factory=list)


def control(ctx: BenchContext, *, samples: int) -> list[ControlRow]:
    rows = []
    for name, requirement, measure in (
            ("pause to stop", "within 1 s", _pause_to_stop),
            ("resume to first claim", "p50 <= 50 ms", _resume_to_claim),
            ("cancel to handler", "p99 <= 1 s", _cancel_to_handler)):
        with ctx.scratch("control") as coll:
            errors: list[str] = []
            try:
                seconds = measure(ctx, coll, samples)
            except Exception as exc:  # a failed scenario is reported, not fatal
                errors.append(f"{type(exc).__name__}: {exc}")
                seconds = []
            rows.append(ControlRow(name, requirement, len(seconds),
                                   Percentiles.of_seconds(seconds), errors))
            ctx.progress(f"  {name:25} p50 {rows[-1].latency.p50:8.2f} ms  "
                         f"p99 {rows[-1].latency.p99:8.2f} ms  ({len(seconds)} samples)")
    return rows


def _two_queues(ctx: BenchContext, coll: Collection[Document],
                **options: Any) -> tuple[Queue, Queue, MongoClient[Document]]:
    client: MongoClient[Document] = MongoClient(ctx.uri)
    operator = Queue(coll, **options)
    consumer = Queue(client[coll.database.name][coll.name], **options)
    return operator, consumer, client


def _pause_to_stop(ctx: BenchContext, coll: Collection[Document], samples: int) -> list[float]:
    """A consumer drains a backlog; from pause() to its last claim."""
    operator, consumer, client = _two_queues(ctx, coll)
    operator.put_many({"n": n} for n in range(20_000))
    claims: list[float] = []
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            job = consumer.next(timeout=0.05)
            if job is not None:
                claims.append(time.monotonic())
                job.complete()

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    results = []
    try:
        for _ in range(samples):
            seen = len(claims)
            _wait(lambda seen=seen: len(claims) >= seen + 20, 30)  # draining again
            began = time.monotonic()
            operator.pause()
            # Stopped: no claim for 1.5 s (longer than the 0.5 s recheck and a claim).
            last = len(claims)
            while True:
                time.sleep(1.5)
                if len(claims) == last:
                    break
                last = len(claims)
            results.append(max(0.0, claims[-1] - began) if claims else 0.0)
            operator.resume()
    finally:
        stop.set()
        thread.join(10)
        operator.close()
        consumer.close()
        client.close()
    return results


def _resume_to_claim(ctx: BenchContext, coll: Collection[Document], samples: int) -> list[float]:
    """A consumer waits on a paused queue with a job ready; from resume() to its claim."""
    operator, consumer, client = _two_queues(ctx, coll)
    results = []
    try:
        for _ in range(samples):
            operator.pause()
            operator.put({"n": 1})
            box: list[tuple[Job | None, float]] = []
            thread = threading.Thread(target=_claim_into, args=(consumer, box), daemon=True)
            thread.start()
            _wait(lambda: consumer.board.waiters == 1
                  and consumer.watcher.stream_epoch() is not None, 10)
            time.sleep(0.05)  # let it block: not a correctness wait
            began = time.monotonic()
            operator.resume()
            thread.join(30)
            job, claimed = box[0]
            if job is None:
                raise RuntimeError("the waiting consumer claimed nothing after resume")
            job.complete()
            results.append(claimed - began)
    finally:
        operator.close()
        consumer.close()
        client.close()
    return results


def _claim_into(consumer: Queue, box: list[tuple[Job | None, float]]) -> None:
    job = consumer.next(timeout=30)
    box.append((job, time.monotonic()))


def _cancel_to_handler(ctx: BenchContext, coll: Collection[Document], samples: int) -> list[float]:
    """A Worker's handler runs until it sees ``job.cancel_requested``; from cancel() to then."""
    operator, consumer, client = _two_queues(ctx, coll, lease=60)
    started = threading.Event()
    seen: list[float] = []

    def handle(payload: dict[str, Any], job: Job) -> None:
        started.set()
        deadline = time.monotonic() + 30
        while not job.cancel_requested and time.monotonic() < deadline:
            time.sleep(0.001)
        seen.append(time.monotonic())
        raise RuntimeError("cancelled")

    worker = Worker(consumer, handle, concurrency=1)
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    results = []
    try:
        for i in range(samples):
            started.clear()
            count = len(seen)
            job_id = operator.put({"n": i})
            if not started.wait(30):
                raise RuntimeError("the worker did not start the job")
            time.sleep(CANCEL_SPREAD * i / max(1, samples - 1))  # where in the run it lands
            began = time.monotonic()
            operator.cancel(job_id)
            _wait(lambda count=count: len(seen) > count, 35)
            results.append(seen[-1] - began)
    finally:
        worker.stop()
        runner.join(30)
        operator.close()
        consumer.close()
        client.close()
    return results


def _wait(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting in the control scenario")
        time.sleep(0.002)
