"""Kept completed jobs (``keep_completed``): state, result, TTL, counts, claims and wake-ups."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta

import pytest
from bson import ObjectId
from prometheus_client import CollectorRegistry
from pymongo import MongoClient
from pymongo.collection import Collection

from streamqueue import LeaseLost, Queue
from streamqueue.errors import InvalidJob
from streamqueue.metrics import PrometheusHooks
from streamqueue.storage import (
    CLAIM_SORT,
    READY_AND_DUE,
    TTL_INDEX,
    Document,
    _claim_pipeline,
    event_due_in,
)
from streamqueue.validation import MAX_RESULT_BYTES
from streamqueue.worker import Worker
from tests.helpers import server_now, wait_until
from tests.integration.conftest import API_PARAMS, QueueFactory


@pytest.fixture(params=API_PARAMS)
def api(request: pytest.FixtureRequest) -> str:
    """These semantics tests run against Queue and AsyncQueue alike."""
    return str(request.param)


KEEP = 3600.0


def claimed(queue: Queue) -> tuple[ObjectId, str]:
    queue.put({"n": 1})
    job = queue.next()
    assert job is not None
    return job.id, job.lease_token


def test_a_kept_job_is_completed_with_its_result_and_history(
    make_queue: QueueFactory, collection: Collection[Document], mongo_client: MongoClient[Document],
) -> None:
    queue = make_queue(keep_completed=KEEP, consumer_id="c-1")
    queue.put({"n": 1})
    job = queue.next()
    assert job is not None
    before = server_now(mongo_client) - timedelta(seconds=1)
    job.complete(result={"sum": 3, "items": [1, 2]})
    doc = collection.find_one({"_id": job.id})
    assert doc is not None
    assert doc["state"] == "completed"
    assert doc["result"] == {"sum": 3, "items": [1, 2]}
    assert isinstance(doc["finished_at"], datetime) and doc["finished_at"] >= before
    assert doc["consumer_id"] == "c-1" and doc["attempts"] == 1
    assert doc["settled_lease"] == job.lease_token
    assert "lease_token" not in doc and "locked_until" not in doc
    # History, not work: not queued, not claimable.
    assert queue.size() == 0
    assert queue.next() is None
    stats = queue.stats()
    assert (stats["available"], stats["locked"], stats["completed"], stats["cancelled"]) == (0, 0, 1, 0)


def test_a_completion_without_result_is_kept_too(make_queue: QueueFactory,
                                                 collection: Collection[Document]) -> None:
    queue = make_queue(keep_completed=KEEP)
    queue.put({"n": 1})
    job = queue.next()
    assert job is not None
    job.complete()
    doc = collection.find_one({"_id": job.id})
    assert doc is not None
    assert (doc["state"], doc["result"]) == ("completed", None)


def test_without_keep_a_completion_deletes_and_a_result_is_refused(
    queue: Queue, collection: Collection[Document],
) -> None:
    queue.put({"n": 1})
    job = queue.next()
    assert job is not None
    with pytest.raises(ValueError, match="keep_completed"):
        job.complete(result=1)
    # Refused before anything: still held, still ours to settle.
    assert collection.count_documents({"_id": job.id, "lease_token": job.lease_token}) == 1
    assert not job.settled
    job.complete()
    assert collection.count_documents({}) == 0


@pytest.mark.parametrize("result", [
    object(),
    {"$bad": 1},
    b"x" * (MAX_RESULT_BYTES + 1),
])
@pytest.mark.sync_only
def test_a_bad_result_raises_before_anything_changes(
    make_queue: QueueFactory, collection: Collection[Document], result: object,
) -> None:
    queue = make_queue(keep_completed=KEEP)
    job_id, token = claimed(queue)
    held = queue.job_type(queue, collection.find_one({"_id": job_id}) or {})
    with pytest.raises(InvalidJob):
        held.complete(result=result)
    doc = collection.find_one({"_id": job_id})
    assert doc is not None and doc["state"] == "locked" and doc["lease_token"] == token
    assert "result" not in doc
    held.complete(result="fine")
    assert collection.find_one({"_id": job_id}, {"result": 1}) == {"_id": job_id, "result": "fine"}


def test_a_result_that_does_not_fit_next_to_the_payload_is_refused(
    make_queue: QueueFactory, collection: Collection[Document],
) -> None:
    queue = make_queue(keep_completed=KEEP)
    queue.put({"blob": b"x" * (15 * 1024 * 1024)})
    job = queue.next()
    assert job is not None
    with pytest.raises(InvalidJob, match="next to its payload"):
        job.complete(result=b"y" * (MAX_RESULT_BYTES - 100))
    assert collection.count_documents({"_id": job.id, "state": "locked"}) == 1


def test_complete_many_keeps_each_job_under_its_own_token_and_reports_lost_ones(
    make_queue: QueueFactory, collection: Collection[Document],
) -> None:
    queue = make_queue(keep_completed=KEEP)
    queue.put_many([{"n": i} for i in range(3)])
    jobs = queue.next_batch(3)
    assert len(jobs) == 3
    # The third lease moved on: another claim holds that job now.
    collection.update_one({"_id": jobs[2].id}, {"$set": {"lease_token": "someone-else"}})
    lost = queue.complete_many(jobs)
    assert lost == [jobs[2]]
    for job in jobs[:2]:
        doc = collection.find_one({"_id": job.id})
        assert doc is not None
        assert (doc["state"], doc["settled_lease"]) == ("completed", job.lease_token)
        assert isinstance(doc["finished_at"], datetime)
    assert collection.count_documents({"_id": jobs[2].id, "state": "locked"}) == 1


def test_the_ttl_index_covers_finished_jobs_only_and_the_longest_retention_wins(
    make_queue: QueueFactory, collection: Collection[Document], caplog: pytest.LogCaptureFixture,
) -> None:
    make_queue().put({})  # keep_completed=0: no TTL index
    assert TTL_INDEX not in collection.index_information()
    make_queue(keep_completed=60.5).put({})
    ttl = collection.index_information()[TTL_INDEX]
    assert ttl["key"] == [("finished_at", 1)]
    assert ttl["expireAfterSeconds"] == math.ceil(60.5)
    assert ttl["partialFilterExpression"] == {"finished_at": {"$exists": True}}
    make_queue(keep_completed=120).put({})
    assert collection.index_information()[TTL_INDEX]["expireAfterSeconds"] == 120
    with caplog.at_level(logging.WARNING, logger="streamqueue.storage"):
        make_queue(keep_completed=30).put({})
    assert collection.index_information()[TTL_INDEX]["expireAfterSeconds"] == 120
    assert any("longest retention wins" in r.getMessage() for r in caplog.records)


@pytest.fixture
def fast_ttl(mongo_client: MongoClient[Document]) -> object:
    before = mongo_client.admin.command("getParameter", 1, ttlMonitorSleepSecs=1)
    mongo_client.admin.command("setParameter", 1, ttlMonitorSleepSecs=1)
    yield None
    mongo_client.admin.command("setParameter", 1,
                               ttlMonitorSleepSecs=before["ttlMonitorSleepSecs"])


@pytest.mark.sync_only
def test_mongodb_removes_a_kept_job_after_keep_completed(
    make_queue: QueueFactory, collection: Collection[Document], fast_ttl: object,
) -> None:
    queue = make_queue(keep_completed=1)
    job_id, _ = claimed(queue)
    live_id = queue.put({"n": 2})
    job = queue.collection.find_one({"_id": job_id})
    assert job is not None
    queue.job_type(queue, job).complete(result=1)
    # Against a server started without the fast monitor, it may be mid-sleep at
    # its old interval (60 s) when the test starts.
    assert wait_until(lambda: collection.find_one({"_id": job_id}) is None, 90)
    assert collection.find_one({"_id": live_id}) is not None  # live jobs are not touched


def test_a_claim_reads_one_index_key_with_many_finished_jobs_kept(
    make_queue: QueueFactory, collection: Collection[Document], mongo_client: MongoClient[Document],
) -> None:
    queue = make_queue(keep_completed=KEEP)
    queue.put({"warm": 1})  # indexes
    now = server_now(mongo_client)
    kept = 20_000
    for start in range(0, kept, 5000):
        collection.insert_many([{
            "payload": {"n": i}, "priority": 9, "state": "completed", "attempts": 1,
            "max_attempts": 3, "enqueued_at": now, "available_at": now, "finished_at": now,
            "result": i, "settled_lease": f"t{i}",
        } for i in range(start, start + 5000)])
    assert queue.stats()["completed"] == kept
    explain = mongo_client[collection.database.name].command(
        "explain",
        {"findAndModify": collection.name, "query": READY_AND_DUE, "sort": dict(CLAIM_SORT),
         "update": _claim_pipeline("explainer", "token", 60.0), "new": True},
        verbosity="executionStats",
    )
    stats = explain["executionStats"]
    assert stats["totalKeysExamined"] == 1, stats
    assert stats["totalDocsExamined"] == 1, stats
    job = queue.next()
    assert job is not None and job.payload == {"warm": 1}


@pytest.mark.sync_only
def test_a_completion_does_not_wake_consumers(make_queue: QueueFactory) -> None:
    queue = make_queue(keep_completed=KEEP)
    queue.put({})  # indexes
    job = queue.next()
    assert job is not None
    with queue.store.watch(None, 0.5) as stream:
        queue.put({"n": 1})
        held = queue.next()
        assert held is not None
        held.complete(result="done")
        # The stream projects events down to dates: the marker is the job due in a day.
        queue.put({"marker": True}, delay=86_400)
        events: list[Document] = []

        def marker_seen() -> bool:
            event = stream.try_next()
            if event is None:
                return False
            events.append(event)
            return event_due_in(event) > 3600

        assert wait_until(marker_seen, 10)
    # Two inserts; the completion (an update to "completed") and the claim sent nothing.
    assert [event["operationType"] for event in events] == ["insert", "insert"]
    job.complete()


@pytest.mark.sync_only
def test_a_lost_complete_of_a_kept_job_that_another_claim_completed_is_lease_lost(
    make_queue: QueueFactory, collection: Collection[Document],
) -> None:
    queue = make_queue(keep_completed=KEEP, lease=30)
    job_id, token = claimed(queue)
    # Another claim took the job over and completed it: the store's retry
    # confirmation must not take that completion for this claim's.
    collection.update_one({"_id": job_id}, [{"$set": {
        "state": "completed", "settled_lease": "other-claim", "finished_at": "$$NOW"}}])
    assert queue.store.completed_by([(job_id, token)]) == set()
    assert queue.store.completed_by([(job_id, "other-claim")]) == {job_id}
    held = queue.job_type(queue, {"_id": job_id, "lease_token": token, "attempts": 1,
                                  "max_attempts": 3, "payload": {}})
    with pytest.raises(LeaseLost):
        held.complete()


@pytest.mark.sync_only
@pytest.mark.parametrize("batch", [1, 8])
def test_a_worker_keeps_what_it_completes(make_queue: QueueFactory, batch: int) -> None:
    # batch 8 completes through the bulk path (complete_many).
    queue = make_queue(keep_completed=KEEP)
    ids = queue.put_many([{"n": n} for n in range(40)])
    Worker(queue, lambda payload: None, concurrency=4, batch=batch, burst=True).run()
    assert queue.size() == 0
    assert queue.stats()["completed"] == 40
    kept = queue.jobs("completed", limit=100)
    assert sorted(info.id for info in kept) == sorted(ids)
    assert all(info.finished_at is not None and info.consumer_id == queue.consumer_id
               for info in kept)


def test_the_queue_gauge_shows_kept_jobs(make_queue: QueueFactory) -> None:
    # What the reaper publishes each pass: observe_queue(stats()).
    queue = make_queue(keep_completed=KEEP)
    queue.put_many([{"n": n} for n in range(3)])
    for _ in range(2):
        job = queue.next()
        assert job is not None
        job.complete()
    registry = CollectorRegistry()
    PrometheusHooks(registry).observe_queue(queue.name, queue.stats(), 0.0)

    def gauge(state: str) -> float | None:
        return registry.get_sample_value("streamqueue_queue_jobs",
                                         {"queue": queue.name, "state": state})

    assert (gauge("available"), gauge("completed"), gauge("cancelled")) == (1.0, 2.0, 0.0)
