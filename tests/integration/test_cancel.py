"""``Queue.cancel``: ready and delayed jobs at once, held jobs by request, finished ones never."""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.collection import Collection

from streamqueue import Queue
from streamqueue.errors import JobCancelled, JobNotFound
from streamqueue.queue import Job
from streamqueue.storage import Document
from streamqueue.worker import Worker
from tests.helpers import Background, CommandCounter, on, stays_false, wait_until
from tests.integration.conftest import API_PARAMS, QueueFactory


@pytest.fixture(params=API_PARAMS)
def api(request: pytest.FixtureRequest) -> str:
    """These semantics tests run against Queue and AsyncQueue alike."""
    return str(request.param)


KEEP = 3600.0


def held(queue: Queue, job_id: ObjectId) -> Job:
    job = queue.next()
    assert job is not None and job.id == job_id
    return job


def test_a_ready_job_is_cancelled_and_never_delivered(make_queue: QueueFactory) -> None:
    queue = make_queue(keep_completed=KEEP)
    job_id = queue.put({"n": 1})
    assert queue.cancel(job_id) is True
    assert queue.next() is None
    info = queue.get(job_id)
    assert info is not None and info.state == "cancelled" and info.finished_at is not None
    assert info.attempts == 0
    assert queue.stats()["cancelled"] == 1
    with pytest.raises(JobCancelled):
        queue.result(job_id, timeout=0)


def test_a_delayed_job_is_cancelled_at_once(make_queue: QueueFactory) -> None:
    queue = make_queue(keep_completed=KEEP)
    job_id = queue.put({"n": 1}, delay=3600)
    assert queue.cancel(str(job_id)) is True
    info = queue.get(job_id)
    assert info is not None and info.state == "cancelled"
    assert queue.stats()["delayed"] == 0


def test_without_keeping_a_cancelled_job_is_deleted(make_queue: QueueFactory) -> None:
    queue = make_queue()
    job_id = queue.put({"n": 1})
    assert queue.cancel(job_id) is True
    assert queue.get(job_id) is None
    with pytest.raises(JobNotFound):
        queue.result(job_id, timeout=0)


def test_cancelling_a_finished_or_unknown_job_returns_false(make_queue: QueueFactory) -> None:
    queue = make_queue(keep_completed=KEEP)
    job_id = queue.put({"n": 1})
    held(queue, job_id).complete(result=7)
    before = queue.get(job_id)
    assert queue.cancel(job_id) is False
    assert queue.get(job_id) == before
    assert queue.cancel(ObjectId()) is False
    cancelled = queue.put({"n": 2})
    assert queue.cancel(cancelled) is True
    assert queue.cancel(cancelled) is False


def test_a_dead_job_is_not_cancelled(make_queue: QueueFactory) -> None:
    queue = make_queue(keep_completed=KEEP, max_attempts=1)
    job_id = queue.put({"n": 1})
    held(queue, job_id).error("boom")
    assert queue.cancel(job_id) is False
    info = queue.get(job_id)
    assert info is not None and info.state == "failed"


def test_a_held_job_gets_a_request_its_holder_sees_after_progress(
        make_queue: QueueFactory) -> None:
    queue = make_queue(keep_completed=KEEP, pause_stream_after=None)
    job_id = queue.put({"n": 1})
    job = held(queue, job_id)
    other = make_queue(keep_completed=KEEP)
    assert other.cancel(job_id) is True
    info = other.get(job_id)
    assert info is not None and info.state == "locked" and info.cancel_requested
    job.progress(1)
    assert job.cancel_requested is True


def test_a_holder_hears_a_cancel_on_its_change_stream(make_queue: QueueFactory) -> None:
    queue = make_queue(keep_completed=KEEP, pause_stream_after=None)
    queue.next(timeout=0.01)  # opens the stream, as a waiting consumer has it open
    job_id = queue.put({"n": 1})
    job = held(queue, job_id)
    assert not job.cancel_requested
    make_queue(keep_completed=KEEP).cancel(job_id)
    assert wait_until(lambda: job.cancel_requested, timeout=10)


@pytest.mark.parametrize("settle", ["release", "error", "last_error"])
def test_a_requested_cancel_ends_the_job_when_its_holder_hands_it_back(
        make_queue: QueueFactory, settle: str) -> None:
    queue = make_queue(keep_completed=KEEP, max_attempts=1 if settle == "last_error" else 3)
    job_id = queue.put({"n": 1})
    job = held(queue, job_id)
    assert queue.cancel(job_id) is True
    if settle == "release":
        job.release()
    else:
        job.error("stopped")
    info = queue.get(job_id)
    assert info is not None and info.state == "cancelled"
    assert queue.next() is None
    with pytest.raises(JobCancelled):
        queue.result(job_id, timeout=0)


def test_a_requested_cancel_without_keeping_deletes_on_release(make_queue: QueueFactory) -> None:
    queue = make_queue()
    job_id = queue.put({"n": 1})
    job = held(queue, job_id)
    assert queue.cancel(job_id) is True
    job.release()
    assert queue.get(job_id) is None


def test_a_holder_that_completes_anyway_completes(make_queue: QueueFactory) -> None:
    queue = make_queue(keep_completed=KEEP)
    job_id = queue.put({"n": 1})
    job = held(queue, job_id)
    assert queue.cancel(job_id) is True
    job.complete(result="done")
    assert queue.result(job_id, timeout=0) == "done"


def test_the_reaper_cancels_an_expired_lease_with_a_request(make_queue: QueueFactory) -> None:
    queue = make_queue(keep_completed=KEEP, lease=0.2)
    job_id = queue.put({"n": 1})
    held(queue, job_id)
    plain = queue.put({"n": 2})
    held(queue, plain)
    assert queue.cancel(job_id) is True

    def reaped() -> bool:
        queue.reap()
        return queue.stats()["locked"] + queue.stats()["expired"] == 0

    assert wait_until(reaped, timeout=10)
    info = queue.get(job_id)
    assert info is not None and info.state == "cancelled"
    # The job without a request is retried as before.
    requeued = queue.get(plain)
    assert requeued is not None and requeued.state == "ready"


def test_a_cancel_racing_claims_has_exactly_one_winner(make_queue: QueueFactory) -> None:
    """Every job ends delivered-and-completed or cancelled-never-delivered, never both."""
    jobs = 300
    producer = make_queue(keep_completed=KEEP)
    ids = producer.put_many({"n": n} for n in range(jobs))
    delivered: list[ObjectId] = []
    lock = threading.Lock()
    stop = threading.Event()

    def consume(queue: Queue) -> None:
        while not stop.is_set():
            job = queue.next(timeout=0.05)
            if job is None:
                continue
            with lock:
                delivered.append(job.id)
            job.complete()

    consumers = [Background(functools.partial(consume, make_queue(keep_completed=KEEP)))
                 for _ in range(3)]
    for consumer in consumers:
        consumer.start()
    canceller = make_queue(keep_completed=KEEP)
    answers = {job_id: canceller.cancel(job_id) for job_id in reversed(ids)}
    assert wait_until(lambda: producer.stats()["available"] == 0, timeout=60)
    stop.set()
    for consumer in consumers:
        consumer.join(10)
    assert len(delivered) == len(set(delivered))
    states = {info.id: info.state for info in producer.jobs(limit=jobs)}
    for job_id in ids:
        if job_id in delivered:
            assert states[job_id] == "completed", job_id
        else:
            assert states[job_id] == "cancelled", job_id
            assert answers[job_id] is True
    # Both outcomes happened, or the race was not a race.
    assert delivered and len(delivered) < jobs


@pytest.mark.sync_only
def test_a_worker_tells_a_long_running_handler_of_a_cancel(make_queue: QueueFactory) -> None:
    """The Worker's stream would pause (nobody waits while its one slot is busy): it is
    kept open (or reopened and read) for the running handler, so the request arrives
    long before any heartbeat (lease 300 s: every 100 s)."""
    queue = make_queue(keep_completed=KEEP, lease=300, pause_stream_after=0.2)
    started = threading.Event()
    heard: list[bool] = []

    def handle(payload: dict[str, Any], job: Job) -> None:
        started.set()
        heard.append(wait_until(lambda: job.cancel_requested, timeout=20))
        raise RuntimeError("stopped: cancelled")

    worker = Worker(queue, handle, concurrency=1)
    runner = Background(worker.run).start()
    try:
        job_id = queue.put({"n": 1})
        assert started.wait(15)
        # Past the point where, without a running handler to serve, the stream pauses
        # (0.2 s without a waiter, checked as each 1 s getMore returns): no event would come.
        began = time.monotonic()
        assert wait_until(lambda: time.monotonic() - began >= 1.5, timeout=5)
        assert make_queue(keep_completed=KEEP).cancel(job_id)
        assert wait_until(lambda: getattr(queue.get(job_id), "state", None) == "cancelled",
                          timeout=30)
        assert heard == [True]
    finally:
        worker.stop()
        runner.join(30)


def test_cancels_and_pause_events_wake_no_waiting_claimer(
        make_queue: QueueFactory, collection: Collection[Document],
        counted_client: tuple[MongoClient[Document], CommandCounter]) -> None:
    """A cancel ends or marks a job: nothing becomes claimable, so no waiter claims."""
    client, counter = counted_client
    waiting = make_queue(on(client, collection), keep_completed=KEEP)
    operator = make_queue(keep_completed=KEEP)
    ready = operator.put({"n": 1}, delay=3600)
    locked = operator.put({"n": 2})
    job = held(operator, locked)
    waiter = Background(lambda: waiting.next(timeout=30)).start()
    assert wait_until(lambda: waiting.board.waiters == 1
                      and waiting.watcher.stream_epoch() is not None)
    assert stays_false(lambda: counter.count("findAndModify", collection.name) > 1, 0.3)
    counter.reset()
    assert operator.cancel(ready) and operator.cancel(locked)
    operator.pause()
    assert stays_false(lambda: counter.count("findAndModify", collection.name) > 0, 1.0)
    operator.resume()  # the one event here that must wake it: it claims (nothing is due)
    assert wait_until(lambda: counter.count("findAndModify", collection.name) > 0)
    job.complete()
    assert not waiter.done.is_set()
