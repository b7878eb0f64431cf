"""Job lifecycle figures (issue 11): ``result()`` wake-up latency, and throughput with
``keep_completed`` on and off, A/B in one run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymongo import MongoClient, monitoring
from pymongo.collection import Collection

from streamqueue.bench.common import BenchContext, Percentiles
from streamqueue.queue import Queue
from streamqueue.storage import Document

KEEP = 3600.0
# The waiter's stream answers a getMore at least this often while nothing changes (ms).
WAIT_TIMEOUT = 30.0


@dataclass(frozen=True)
class ResultWakeRow:
    """``q.result(id)`` already waiting, then the job completes on another client."""

    jobs: int
    after_ack: Percentiles  # from complete() returning to result() returning
    after_call: Percentiles  # from complete() being called (its write included)


@dataclass(frozen=True)
class TxnPutRow:
    """A consumer waiting in ``next()``; a job put in a transaction on another client."""

    jobs: int
    after_commit: Percentiles  # from commit_transaction returning to next() returning


@dataclass(frozen=True)
class RetentionRow:
    """One drain per arm per round, arms alternating, medians compared."""

    jobs: int
    threads: int
    rounds: int
    off_jobs_per_s: float  # keep_completed=0: completion deletes
    on_jobs_per_s: float  # keep_completed>0: completion marks completed, a TTL index removes

    @property
    def ratio(self) -> float:
        return self.on_jobs_per_s / self.off_jobs_per_s if self.off_jobs_per_s else 0.0


class _GetMores(monitoring.CommandListener):
    """Counts getMores sent: the first after the waiter's read means it is blocked on the stream."""

    def __init__(self) -> None:
        self.count = 0
        self.cond = threading.Condition()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "getMore":
            with self.cond:
                self.count += 1
                self.cond.notify_all()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def wait_past(self, seen: int, timeout: float) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.count > seen, timeout):
                raise TimeoutError("the result() waiter never reached its change stream")


def result_wakeup(ctx: BenchContext, *, jobs: int) -> ResultWakeRow:
    listener = _GetMores()
    waiter_client: MongoClient[Document] = MongoClient(ctx.uri, event_listeners=[listener])
    after_ack: list[float] = []
    after_call: list[float] = []
    with ctx.scratch("result_wakeup") as coll:
        producer = Queue(coll, keep_completed=KEEP, max_await=1.0)
        waiter = Queue(waiter_client[coll.database.name][coll.name], keep_completed=KEEP,
                       max_await=1.0)
        try:
            for n in range(jobs):
                ack, call = _one_wakeup(producer, waiter, listener, n)
                after_ack.append(ack)
                after_call.append(call)
        finally:
            producer.close()
            waiter.close()
            waiter_client.close()
    return ResultWakeRow(jobs, Percentiles.of_seconds(after_ack),
                         Percentiles.of_seconds(after_call))


def _one_wakeup(producer: Queue, waiter: Queue, listener: _GetMores, n: int) -> tuple[float, float]:
    """Seconds from complete() returning, and from its call, to the waiting result() returning."""
    job_id = producer.put({"n": n})
    job = producer.next()
    assert job is not None and job.id == job_id
    returned: list[float] = []

    def wait() -> None:
        waiter.result(job_id, timeout=WAIT_TIMEOUT)
        returned.append(time.perf_counter())

    seen = listener.count
    thread = threading.Thread(target=wait)
    thread.start()
    listener.wait_past(seen, WAIT_TIMEOUT)
    called = time.perf_counter()
    job.complete(result=n)
    acked = time.perf_counter()
    thread.join(WAIT_TIMEOUT)
    if not returned:
        raise TimeoutError(f"result() did not return for job {job_id}")
    # The stream can beat the write's own reply: then the wake-up counts as 0.
    return max(0.0, returned[0] - acked), returned[0] - called


def txn_put_wakeup(ctx: BenchContext, *, jobs: int) -> TxnPutRow:
    """Claim latency after the commit of a transaction that put the job."""
    listener = _GetMores()
    consumer_client: MongoClient[Document] = MongoClient(ctx.uri, event_listeners=[listener])
    delays: list[float] = []
    with ctx.scratch("txn_put") as coll:
        producer = Queue(coll, max_await=1.0)
        producer.store.ensure_indexes()
        # An open stream's next getMore (the sign the consumer waits) comes at most
        # max_await after the last: short, so each sample waits little. Events end a
        # getMore at once whatever max_await is.
        consumer = Queue(consumer_client[coll.database.name][coll.name], max_await=0.2)
        try:
            for n in range(jobs):
                delays.append(_one_txn_put(producer, consumer, listener, n))
        finally:
            producer.close()
            consumer.close()
            consumer_client.close()
    return TxnPutRow(jobs, Percentiles.of_seconds(delays))


def _one_txn_put(producer: Queue, consumer: Queue, listener: _GetMores, n: int) -> float:
    claimed: list[float] = []

    def wait() -> None:
        job = consumer.next(timeout=WAIT_TIMEOUT)
        if job is not None:
            claimed.append(time.perf_counter())
            job.complete()

    seen = listener.count
    thread = threading.Thread(target=wait)
    thread.start()
    # The consumer's stream is open and its claim found nothing once a getMore is sent.
    listener.wait_past(seen, WAIT_TIMEOUT)
    client = producer.collection.database.client
    with client.start_session() as session:
        session.start_transaction()
        producer.put({"n": n}, session=session)
        session.commit_transaction()
    committed = time.perf_counter()
    thread.join(WAIT_TIMEOUT)
    if not claimed:
        raise TimeoutError("the waiting consumer did not claim the committed job")
    return max(0.0, claimed[0] - committed)


def _drain(coll: Collection[Document], keep: float, jobs: int, threads: int) -> float:
    """Jobs per second for ``threads`` consumers draining ``jobs`` jobs, completing each."""
    queue = Queue(coll, keep_completed=keep, max_await=1.0)
    try:
        queue.put_many([{"n": n} for n in range(jobs)])
        done = [0] * threads
        errors: list[BaseException] = []

        def consume(slot: int) -> None:
            try:
                while (job := queue.next()) is not None:
                    job.complete()
                    done[slot] += 1
            except BaseException as exc:  # reported below
                errors.append(exc)

        workers = [threading.Thread(target=consume, args=(i,)) for i in range(threads)]
        began = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - began
        if errors:
            raise errors[0]
        if sum(done) != jobs:
            raise RuntimeError(f"drained {sum(done)} of {jobs} jobs")
        return jobs / elapsed
    finally:
        queue.close()


def retention_ab(ctx: BenchContext, *, jobs: int, threads: int, rounds: int,
                 progress: Callable[[str], Any] | None = None) -> RetentionRow:
    """Both arms in every round (the order alternates), each on a fresh collection."""
    rates: dict[float, list[float]] = {0.0: [], KEEP: []}
    for round_ in range(rounds):
        order = (0.0, KEEP) if round_ % 2 == 0 else (KEEP, 0.0)
        for keep in order:
            with ctx.scratch("retention") as coll:
                rate = _drain(coll, keep, jobs, threads)
            rates[keep].append(rate)
            if progress is not None:
                progress(f"  round {round_ + 1}: keep_completed={keep:g}: {rate:,.0f} jobs/s")
    return RetentionRow(jobs, threads, rounds, _median(rates[0.0]), _median(rates[KEEP]))


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
