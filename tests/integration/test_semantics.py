"""The issue's semantics, each against the real replica set: isolation, reliability,
error/backoff, release, progress, order, delay and the context manager."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection

from streamqueue import Job, LeaseLost, Queue
from streamqueue.storage import LOCK_FIELDS, Document
from tests.helpers import Background, server_now, wait_until
from tests.integration.aio_adapter import job_for
from tests.integration.conftest import API_PARAMS, QueueFactory


@pytest.fixture(params=API_PARAMS)
def api(request: pytest.FixtureRequest) -> str:
    """Every semantics test here runs against Queue and AsyncQueue alike."""
    return str(request.param)

SLACK = timedelta(milliseconds=100)


def claim(queue: Queue) -> Job:
    job = queue.next()
    assert job is not None, "expected a claimable job"
    return job


def where(collection: Collection[Document], queue: Queue, job_id: Any) -> list[str]:
    """Which collections hold the job: it must always be exactly one."""
    places = []
    if collection.count_documents({"_id": job_id}):
        places.append("jobs")
    if queue.failed.count_documents({"_id": job_id}):
        places.append("failed")
    return places


def expire_and_reap(queue: Queue, expected: int = 1, timeout: float = 10.0) -> None:
    """Wait (by the server's clock, through reap) until ``expected`` leases were reaped."""
    reaped = 0

    def reap() -> bool:
        nonlocal reaped
        reaped += queue.reap()
        return reaped >= expected

    assert wait_until(reap, timeout), f"reaped {reaped} of {expected}"
    assert reaped == expected


# -- isolation ------------------------------------------------------------------------------


@pytest.mark.parametrize("settle", ["complete", "error", "release", "progress"])
def test_stale_claim_cannot_touch_a_reclaimed_job(
    make_queue: QueueFactory, collection: Collection[Document], settle: str
) -> None:
    first = make_queue(consumer_id="first", lease=0.2)
    second = make_queue(consumer_id="second", lease=60.0)
    job_id = first.put({"n": 1})
    stale = claim(first)
    expire_and_reap(first)
    fresh = claim(second)
    assert fresh.id == job_id
    assert fresh.attempts == 2
    assert fresh.lease_token != stale.lease_token

    before = collection.find_one({"_id": job_id})
    with pytest.raises(LeaseLost):
        if settle == "progress":
            stale.progress(5)
        else:
            getattr(stale, settle)()
    assert collection.find_one({"_id": job_id}) == before, "a stale claim changed the job"
    assert where(collection, first, job_id) == ["jobs"]

    fresh.complete()
    assert collection.count_documents({}) == 0


@pytest.mark.parametrize("settle", ["complete", "error", "release", "progress"])
def test_stale_claim_cannot_touch_a_requeued_job(
    make_queue: QueueFactory, collection: Collection[Document], settle: str
) -> None:
    queue = make_queue(lease=0.2)
    job_id = queue.put({"n": 1})
    stale = claim(queue)
    expire_and_reap(queue)
    before = collection.find_one({"_id": job_id})
    assert before is not None
    assert before["state"] == "ready"
    with pytest.raises(LeaseLost):
        if settle == "progress":
            stale.progress()
        else:
            getattr(stale, settle)()
    assert collection.find_one({"_id": job_id}) == before


def test_stale_claim_cannot_touch_a_dead_job(
    make_queue: QueueFactory, collection: Collection[Document]
) -> None:
    queue = make_queue(lease=0.2, max_attempts=1)
    job_id = queue.put({"n": 1})
    stale = claim(queue)
    expire_and_reap(queue)
    dead = queue.failed.find_one({"_id": job_id})
    assert dead is not None
    with pytest.raises(LeaseLost):
        stale.error("too late")  # would dead-letter it, if it still held the lease
    assert queue.failed.find_one({"_id": job_id}) == dead
    assert where(collection, queue, job_id) == ["failed"]


def test_concurrent_claims_never_share_a_job(make_queue: QueueFactory) -> None:
    producer = make_queue()
    ids = producer.put_many([{"n": i} for i in range(200)])
    consumers = [make_queue(consumer_id=f"c{i}") for i in range(4)]
    claimed: list[tuple[str, Any, str]] = []
    lock = threading.Lock()

    def drain(queue: Queue) -> None:
        while (job := queue.next()) is not None:
            with lock:
                claimed.append((queue.consumer_id, job.id, job.lease_token))

    threads = [Background(lambda q=q: drain(q), name=q.consumer_id).start()  # type: ignore[misc]
               for q in consumers for _ in range(2)]
    for thread in threads:
        thread.join(60)
    assert sorted(job_id for _, job_id, _ in claimed) == sorted(ids)
    assert len({token for _, _, token in claimed}) == len(ids)


# -- reliability ------------------------------------------------------------------------------


def test_an_attempt_is_counted_when_claimed(queue: Queue, collection: Collection[Document]) -> None:
    job_id = queue.put({})
    job = claim(queue)
    assert job.attempts == 1
    stored = collection.find_one({"_id": job_id})
    assert stored is not None
    assert stored["attempts"] == 1
    assert stored["state"] == "locked"


def test_reap_requeues_an_expired_lease(
    make_queue: QueueFactory, collection: Collection[Document]
) -> None:
    queue = make_queue(consumer_id="crashed", lease=0.3, max_attempts=3)
    job_id = queue.put({"n": 1})
    claim(queue)
    assert queue.reap() == 0  # the lease is live
    expire_and_reap(queue)
    stored = collection.find_one({"_id": job_id})
    assert stored is not None
    assert stored["state"] == "ready"
    assert stored["attempts"] == 1
    assert not set(LOCK_FIELDS) & set(stored)
    assert "crashed" in stored["last_error"]
    again = claim(queue)
    assert again.id == job_id
    assert again.attempts == 2
    assert again.last_error is not None
    assert "lease expired" in again.last_error


def test_reap_dead_letters_once_out_of_attempts(
    make_queue: QueueFactory, collection: Collection[Document]
) -> None:
    queue = make_queue(lease=0.2, max_attempts=2)
    job_id = queue.put({"n": 1})
    claim(queue)
    expire_and_reap(queue)
    assert where(collection, queue, job_id) == ["jobs"]
    claim(queue)
    expire_and_reap(queue)
    assert where(collection, queue, job_id) == ["failed"]
    dead = queue.failed.find_one({"_id": job_id})
    assert dead is not None
    assert dead["state"] == "failed"
    assert dead["attempts"] == 2
    assert dead["payload"] == {"n": 1}
    assert "lease expired" in dead["last_error"]
    assert "failed_at" in dead
    assert not set(LOCK_FIELDS) & set(dead)
    assert queue.next() is None
    assert queue.reap() == 0


def test_error_dead_letters_at_max_attempts_with_the_last_error(
    make_queue: QueueFactory, collection: Collection[Document]
) -> None:
    queue = make_queue(max_attempts=3)
    job_id = queue.put({"n": 1})
    for attempt in (1, 2, 3):
        job = claim(queue)
        assert job.attempts == attempt
        job.error(f"failure {attempt}")
        assert len(where(collection, queue, job_id)) == 1
    assert where(collection, queue, job_id) == ["failed"]
    dead = queue.failed.find_one({"_id": job_id})
    assert dead is not None
    assert dead["last_error"] == "failure 3"
    assert dead["attempts"] == 3


def test_concurrent_reapers_handle_each_job_once(
    make_queue: QueueFactory, collection: Collection[Document]
) -> None:
    holder = make_queue(lease=0.2, max_attempts=1)
    ids = holder.put_many([{"n": i} for i in range(30)])
    assert len(holder.next_batch(30)) == 30
    reapers = [make_queue() for _ in range(3)]
    assert wait_until(lambda: collection.count_documents(
        {"$expr": {"$lt": ["$locked_until", "$$NOW"]}}) == 30)
    start = threading.Barrier(3)

    def reap(queue: Queue) -> int:
        start.wait(10)
        return queue.reap()

    threads = [Background(lambda q=q: reap(q)).start() for q in reapers]  # type: ignore[misc]
    assert sum(thread.join(60) for thread in threads) == 30
    for job_id in ids:
        assert where(collection, holder, job_id) == ["failed"]


# -- error, backoff, release, progress ------------------------------------------------------------


def test_error_stores_the_message_and_backs_off_by_a_number(
    make_queue: QueueFactory, collection: Collection[Document], mongo_client: MongoClient[Document]
) -> None:
    queue = make_queue(backoff=0.5)
    job_id = queue.put({})
    job = claim(queue)
    before = server_now(mongo_client)
    job.error("went wrong")
    after = server_now(mongo_client)
    stored = collection.find_one({"_id": job_id})
    assert stored is not None
    assert stored["state"] == "ready"
    assert stored["last_error"] == "went wrong"
    assert stored["attempts"] == 1
    backoff = timedelta(seconds=0.5)
    assert before + backoff - SLACK <= stored["available_at"] <= after + backoff + SLACK
    # Held back: any claim happens at or after available_at, by the server's clock
    # (a loaded machine may take that long to get here).
    early = queue.next()
    assert early is None or early.data["locked_at"] >= stored["available_at"]
    again = early or queue.next(timeout=5)
    assert again is not None
    assert again.data["locked_at"] >= stored["available_at"]
    assert again.attempts == 2
    assert again.last_error == "went wrong"


def test_backoff_callable_gets_the_attempt_count(
    make_queue: QueueFactory, collection: Collection[Document], mongo_client: MongoClient[Document]
) -> None:
    seen: list[int] = []

    def backoff(attempts: int) -> float:
        seen.append(attempts)
        return 0.2 * attempts

    queue = make_queue(backoff=backoff, max_attempts=3)
    job_id = queue.put({})
    for attempt in (1, 2):
        job = queue.next(timeout=5)
        assert job is not None
        before = server_now(mongo_client)
        job.error()
        after = server_now(mongo_client)
        stored = collection.find_one({"_id": job_id})
        assert stored is not None
        delay = timedelta(seconds=0.2 * attempt)
        assert before + delay - SLACK <= stored["available_at"] <= after + delay + SLACK
        assert stored["last_error"]  # a default message, not None
    assert seen == [1, 2]
    job = queue.next(timeout=5)
    assert job is not None
    job.error("final")  # out of attempts: dead, and no backoff asked for
    assert seen == [1, 2]
    assert where(collection, queue, job_id) == ["failed"]


def test_release_returns_the_job_at_once_without_counting(
    make_queue: QueueFactory, collection: Collection[Document]
) -> None:
    queue = make_queue(max_attempts=1)
    job_id = queue.put({})
    for _ in range(4):
        job = claim(queue)
        assert job.attempts == 1
        job.release()
        stored = collection.find_one({"_id": job_id})
        assert stored is not None
        assert stored["state"] == "ready"
        assert stored["attempts"] == 0
        assert not set(LOCK_FIELDS) & set(stored)
    job = claim(queue)  # claimable at once: no backoff
    job.error("now it counts")
    assert where(collection, queue, job_id) == ["failed"]


def test_progress_stores_the_count_and_extends_the_lease_by_the_server_clock(
    make_queue: QueueFactory, collection: Collection[Document], mongo_client: MongoClient[Document]
) -> None:
    queue = make_queue(lease=5.0)
    job_id = queue.put({})
    job = claim(queue)
    first_until = job.locked_until
    locked_at = job.data["locked_at"]
    assert first_until - locked_at == timedelta(seconds=5)
    # Let the server's clock move on, so the new expiry must be later.
    assert wait_until(lambda: server_now(mongo_client) >= locked_at + timedelta(milliseconds=100))

    before = server_now(mongo_client)
    job.progress(7)
    after = server_now(mongo_client)
    stored = collection.find_one({"_id": job_id})
    assert stored is not None
    assert stored["progress"] == 7
    assert stored["locked_until"] == job.locked_until
    assert job.locked_until > first_until
    lease = timedelta(seconds=5)
    assert before + lease - SLACK <= job.locked_until <= after + lease + SLACK
    assert job.progress_count == 7

    job.progress()  # no count: only the lease moves
    stored = collection.find_one({"_id": job_id})
    assert stored is not None
    assert stored["progress"] == 7
    with pytest.raises(TypeError):
        job.progress("half")  # type: ignore[arg-type]
    job.complete()


def test_progress_keeps_a_lease_alive(
    make_queue: QueueFactory, collection: Collection[Document]
) -> None:
    queue = make_queue(lease=0.4)
    queue.put({})
    job = claim(queue)
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:
        job.progress()
        assert queue.reap() == 0
        time.sleep(0.1)  # a heartbeat period, not a wait for a condition
    job.complete()
    assert collection.count_documents({}) == 0


# -- order ------------------------------------------------------------------------------------


def test_higher_priority_first_then_fifo(queue: Queue) -> None:
    for name, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 10), ("e", 5), ("f", -1),
                           ("g", 0)]:
        queue.put({"name": name}, priority=priority)
    order = [claim(queue).payload["name"] for _ in range(7)]
    assert order == ["d", "b", "e", "a", "c", "g", "f"]


def test_fifo_follows_when_a_job_fell_due(queue: Queue) -> None:
    queue.put({"name": "retry"})
    first = claim(queue)
    queue.put({"name": "new"})
    first.release()  # due again now: after "new", which fell due earlier
    assert [claim(queue).payload["name"] for _ in range(2)] == ["new", "retry"]


def test_priority_defaults_to_the_payload_key(queue: Queue, collection: Collection[Document]) -> None:
    low = queue.put({"name": "low"})
    high = queue.put({"name": "high", "priority": 3})
    override = queue.put({"name": "override", "priority": 3}, priority=0)
    stored = {doc["_id"]: doc["priority"] for doc in collection.find()}
    assert stored == {low: 0, high: 3, override: 0}
    order = [claim(queue).payload["name"] for _ in range(3)]
    assert order == ["high", "low", "override"]
    # The payload keeps its key.
    assert collection.count_documents({}) == 3


def test_delay_holds_a_job_back_by_the_server_clock(
    queue: Queue, collection: Collection[Document]
) -> None:
    put_at = time.monotonic()
    job_id = queue.put({"n": 1}, delay=1.0)
    stored = collection.find_one({"_id": job_id})
    assert stored is not None
    # Both dates come from one reading of the server's clock: exactly the delay apart.
    assert stored["available_at"] - stored["enqueued_at"] == timedelta(seconds=1)
    assert queue.stats()["delayed"] == 1
    assert queue.size() == 1
    early = queue.next()
    assert early is None or early.data["locked_at"] >= stored["available_at"]
    job = early or queue.next(timeout=5)
    assert job is not None
    assert job.id == job_id
    assert job.data["locked_at"] >= stored["available_at"]
    waited = time.monotonic() - put_at
    assert 1.0 <= waited < 2.0, waited


# -- the context manager --------------------------------------------------------------------------


def test_with_job_completes_on_success(queue: Queue, collection: Collection[Document]) -> None:
    queue.put({"x": 1})
    job = claim(queue)
    with job as payload:
        assert payload == {"x": 1}
    assert collection.count_documents({}) == 0
    assert queue.failed.count_documents({}) == 0


def _fail_on(payload: dict[str, Any]) -> None:
    raise ValueError(f"bad input {payload['x']}")


def test_with_job_records_the_traceback_and_reraises(
    queue: Queue, collection: Collection[Document]
) -> None:
    job_id = queue.put({"x": 1})
    job = claim(queue)
    with pytest.raises(ValueError, match="bad input 1"), job as payload:
        _fail_on(payload)
    stored = collection.find_one({"_id": job_id})
    assert stored is not None
    assert stored["state"] == "ready"
    assert stored["attempts"] == 1
    assert stored["last_error"].startswith("Traceback (most recent call last)")
    assert "_fail_on" in stored["last_error"]
    assert "ValueError: bad input 1" in stored["last_error"]


def test_with_job_on_the_last_attempt_dead_letters(
    make_queue: QueueFactory, collection: Collection[Document]
) -> None:
    queue = make_queue(max_attempts=1)
    job_id = queue.put({"x": 2})
    job = claim(queue)
    with pytest.raises(ValueError), job as payload:
        _fail_on(payload)
    assert where(collection, queue, job_id) == ["failed"]
    dead = queue.failed.find_one({"_id": job_id})
    assert dead is not None
    assert "ValueError: bad input 2" in dead["last_error"]


def test_with_job_that_lost_its_lease(
    make_queue: QueueFactory, collection: Collection[Document]
) -> None:
    first = make_queue(lease=0.2)
    second = make_queue()
    first.put({"x": 3})
    stale = claim(first)
    expire_and_reap(first)
    fresh = claim(second)
    # Success: completing a lost job must say so, and leave the new holder's job alone.
    with pytest.raises(LeaseLost), stale:
        pass
    # Failure: the handler's own exception is what the caller sees.
    with pytest.raises(ValueError), job_for(first, dict(stale.data)) as payload:
        _fail_on(payload)
    assert collection.find_one({"_id": fresh.id}) == fresh.data
