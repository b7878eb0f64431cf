"""The demo's producer pacing and its crash accounting, without MongoDB or subprocesses."""

from __future__ import annotations

import threading
import types
from typing import Any

import pytest
from bson import ObjectId

from streamqueue.demo import run
from streamqueue.demo.run import Delivery, Producer, expired_holder, orphaned_jobs

# -- the producer ------------------------------------------------------------------------


class FakeTime:
    """A clock that moves only when the producer waits or a put takes time."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


class FakeStop(threading.Event):
    def __init__(self, clock: FakeTime) -> None:
        super().__init__()
        self.clock = clock

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.clock.now += max(0.0, timeout)
        return False


class FakeQueue:
    """Records (time, jobs) per put; each put costs ``put_seconds`` of the fake clock."""

    def __init__(self, clock: FakeTime, put_seconds: float = 0.0) -> None:
        self.clock = clock
        self.put_seconds = put_seconds
        self.puts: list[tuple[float, list[int]]] = []

    def put_many(self, payloads: list[dict[str, Any]], *, priority: int,
                 delay: float) -> list[ObjectId]:
        self.puts.append((self.clock.now, [p["n"] for p in payloads]))
        self.clock.now += self.put_seconds
        return [ObjectId() for _ in payloads]


def produce(monkeypatch: pytest.MonkeyPatch, total: int, rate: float, *,
            put_seconds: float = 0.0, delayed: float = 0.1) -> tuple[Producer, FakeQueue, FakeTime]:
    clock = FakeTime()
    monkeypatch.setattr(run, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    queue = FakeQueue(clock, put_seconds)
    producer = Producer(queue, total, rate=rate, delayed=delayed, max_delay=5.0,  # type: ignore[arg-type]
                        seed=7, stop=FakeStop(clock))
    producer.run()  # in this thread: the fake clock is not thread-safe
    assert producer.error is None, producer.error
    return producer, queue, clock


def test_jobs_go_in_one_by_one_at_the_rate_not_in_bursts(monkeypatch: pytest.MonkeyPatch) -> None:
    # What made the demo's waits ten times the bench's: 50 jobs at once every
    # half second, each waiting behind the rest of its burst.
    producer, queue, _ = produce(monkeypatch, total=300, rate=100.0)
    assert producer.enqueued == 300
    assert sorted(n for _, ns in queue.puts for n in ns) == list(range(300))
    for at, numbers in queue.puts:
        assert len(numbers) == 1, (at, numbers)
        assert at == pytest.approx(numbers[0] / 100.0)


def test_a_producer_that_falls_behind_catches_up_in_bounded_batches(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every put takes 0.1 s of (fake) server time: ten jobs fall due meanwhile.
    producer, queue, clock = produce(monkeypatch, total=500, rate=100.0, put_seconds=0.1,
                                     delayed=0.0)
    assert producer.enqueued == 500
    sizes = [len(ns) for _, ns in queue.puts]
    assert max(sizes) <= run.PRODUCER_BATCH
    assert max(sizes) > 1
    # No job goes in before its time, and the pace holds: done within one catch-up
    # batch (a put per priority, three at most) of the last job's time, 4.99 s.
    for at, numbers in queue.puts:
        assert max(numbers) / 100.0 <= at + 1e-9
    assert clock.now <= 4.99 + 2 * len(run.PRIORITIES) * 0.1


def test_rate_zero_enqueues_everything_at_once_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    producer, queue, clock = produce(monkeypatch, total=120, rate=0.0, delayed=0.0)
    assert producer.enqueued == 120
    assert clock.now == 0.0
    assert max(len(ns) for _, ns in queue.puts) <= run.PRODUCER_BATCH


def test_jobs_due() -> None:
    assert run.jobs_due(0.0, 100.0, 300) == 1
    assert run.jobs_due(0.0099, 100.0, 300) == 1
    assert run.jobs_due(0.01, 100.0, 300) == 2
    assert run.jobs_due(0.07, 100.0, 300) == 8  # 0.07 * 100 is 7.000000000000001 or less
    assert run.jobs_due(60.0, 100.0, 300) == 300
    assert run.jobs_due(0.0, 0.0, 300) == 300


# -- the crash accounting -----------------------------------------------------------------


def delivery(job_id: ObjectId, attempt: int, prev_error: str = "") -> Delivery:
    return run._delivery({"job_id": job_id, "attempt": attempt, "consumer": "demo-worker-2",
                          "wait": 0.01, "prev_error": prev_error,
                          "lease_expired": attempt > 1 and prev_error.startswith("lease expired")})


def test_expired_holder_reads_the_reapers_note() -> None:
    assert expired_holder("lease expired while held by demo-worker-1") == "demo-worker-1"
    assert expired_holder("lease expired while held by demo-worker-10") == "demo-worker-10"
    assert expired_holder("Traceback ...\nDemoFailure: job x") is None
    assert expired_holder("") is None


def test_a_claim_that_landed_after_the_look_at_the_kill_is_an_orphan_too() -> None:
    # Seen at the kill: a. b was claimed by the victim's last claim, which the
    # server committed after the look (seen in a run: "redelivered 2, orphaned 1").
    a, b, c, d = ObjectId(), ObjectId(), ObjectId(), ObjectId()
    deliveries = [
        delivery(a, 1), delivery(a, 2, "lease expired while held by demo-worker-1"),
        delivery(b, 2, "lease expired while held by demo-worker-1"),
        # c's lease expired on a live worker: not the killed worker's orphan.
        delivery(c, 1), delivery(c, 2, "lease expired while held by demo-worker-2"),
        delivery(d, 1), delivery(d, 2, "Traceback ...\nDemoFailure: job d"),
    ]
    buried = ObjectId()
    dead = [{"_id": buried, "last_error": "lease expired while held by demo-worker-1"},
            {"_id": ObjectId(), "last_error": "DemoFailure: poison"}]
    orphans = orphaned_jobs({a}, "demo-worker-1", deliveries, dead)
    assert orphans == {a, b, buried}
    from_victim = [x for x in deliveries if x.expired_holder == "demo-worker-1"]
    assert len(from_victim) <= len(orphans)
