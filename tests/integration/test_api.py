"""The public API against the real replica set: put/next/settle, MongoQueue, inspection."""

from __future__ import annotations

from datetime import timedelta

import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.write_concern import WriteConcern

import streamqueue
from streamqueue import LeaseLost, MongoQueue, Queue, StreamQueueError
from streamqueue.storage import CLAIM_SORT, READY_AND_DUE, Document, _claim_pipeline
from tests.helpers import server_now
from tests.integration.conftest import API_PARAMS, QueueFactory


@pytest.fixture(params=API_PARAMS)
def api(request: pytest.FixtureRequest) -> str:
    """These semantics tests run against Queue and AsyncQueue alike."""
    return str(request.param)



def test_public_names() -> None:
    assert issubclass(LeaseLost, StreamQueueError)
    assert {"Queue", "Job", "MongoQueue"} <= set(streamqueue.__all__)


def test_put_then_next_then_complete(queue: Queue, mongo_client: MongoClient[Document]) -> None:
    before = server_now(mongo_client)
    job_id = queue.put({"task": "resize", "size": 3})
    after = server_now(mongo_client)
    assert isinstance(job_id, ObjectId)

    stored = queue.collection.find_one({"_id": job_id})
    assert stored is not None
    assert stored["state"] == "ready"
    assert stored["attempts"] == 0
    assert stored["priority"] == 0
    # Dates come from the server's clock.
    slack = timedelta(milliseconds=50)
    assert before - slack <= stored["enqueued_at"] <= after + slack
    assert stored["available_at"] == stored["enqueued_at"]

    job = queue.next()
    assert job is not None
    assert job.id == job_id
    assert job.payload == {"task": "resize", "size": 3}
    assert job.priority == 0
    assert job.attempts == 1
    assert job.consumer_id == queue.consumer_id
    assert job.last_error is None
    assert job.locked_until - job.data["locked_at"] == timedelta(seconds=queue.lease)

    job.complete()
    assert queue.collection.count_documents({}) == 0
    assert queue.failed.count_documents({}) == 0
    assert queue.next() is None


def test_next_on_an_empty_queue_is_none(queue: Queue) -> None:
    assert queue.next() is None
    assert queue.next(timeout=0) is None


def test_put_many(queue: Queue) -> None:
    ids = queue.put_many([{"n": i} for i in range(5)], priority=2)
    assert len(ids) == 5
    assert len(set(ids)) == 5
    assert queue.put_many([]) == []
    claimed = [queue.next() for _ in range(5)]
    assert [job.payload["n"] for job in claimed if job] == [0, 1, 2, 3, 4]
    assert all(job is not None and job.priority == 2 for job in claimed)


def test_consumer_id_is_recorded(make_queue: QueueFactory) -> None:
    named = make_queue(consumer_id="worker-7")
    named.put({})
    job = named.next()
    assert job is not None
    assert job.consumer_id == "worker-7"
    assert named.collection.find_one({"_id": job.id}, {"consumer_id": 1}) == {
        "_id": job.id, "consumer_id": "worker-7"}
    # Without one, each Queue gets its own id.
    assert make_queue().consumer_id != make_queue().consumer_id


def test_settling_twice_raises_lease_lost(queue: Queue) -> None:
    queue.put({})
    job = queue.next()
    assert job is not None
    job.complete()
    with pytest.raises(LeaseLost):
        job.complete()
    with pytest.raises(LeaseLost):
        job.release()


# -- MongoQueue --------------------------------------------------------------------------------


def test_mongoqueue_signature(collection: Collection[Document]) -> None:
    with MongoQueue(collection, "consumer-1", timeout=7, max_attempts=2) as old:
        assert old.lease == 7.0
        assert old.max_attempts == 2
        assert old.consumer_id == "consumer-1"
    with MongoQueue(collection, "consumer-2", 11, 4) as positional:
        assert positional.lease == 11.0
        assert positional.max_attempts == 4
    with MongoQueue(collection, "consumer-3") as defaults:
        assert defaults.lease == 300.0
        assert defaults.max_attempts == 3


def test_mongoqueue_works_like_the_old_library(collection: Collection[Document]) -> None:
    with MongoQueue(collection, "c", timeout=60, max_attempts=2) as old:
        old.put({"priority": 1, "x": 1})
        old.put({"priority": 5, "x": 2})
        job = old.next()
        assert job is not None
        assert job.payload == {"priority": 5, "x": 2}
        assert job.data["consumer_id"] == "c"
        job.complete()
        assert old.size() == 1
        assert old.repair() == 0
        old.drop()
        assert old.size() == 0


# -- durability and indexes ---------------------------------------------------------------------


@pytest.mark.sync_only
def test_writes_default_to_majority(queue: Queue) -> None:
    assert queue.store.jobs.write_concern.document == {"w": "majority"}
    assert queue.failed.write_concern.document == {"w": "majority"}


@pytest.mark.sync_only
def test_an_explicit_write_concern_is_kept(make_queue: QueueFactory,
                                          collection: Collection[Document]) -> None:
    explicit = collection.with_options(write_concern=WriteConcern(w=1, j=True))
    queue = make_queue(explicit)
    assert queue.store.jobs.write_concern.document == {"w": 1, "j": True}


def test_indexes_are_created_on_first_use(make_queue: QueueFactory) -> None:
    queue = make_queue()
    db = queue.collection.database
    # A Queue object alone writes nothing.
    assert queue.collection.name not in db.list_collection_names()
    queue.put({})
    names = set(queue.collection.index_information())
    assert {"claim", "due", "leases"} <= names
    assert "failed_at" in queue.failed.index_information()
    claim_key = queue.collection.index_information()["claim"]["key"]
    assert [field for field, _ in claim_key] == ["state", "priority", "available_at", "_id"]


def test_index_creation_is_idempotent(make_queue: QueueFactory) -> None:
    first = make_queue()
    first.put({})
    second = make_queue()
    second.put({})  # creates the same indexes again: no error
    assert second.next() is not None
    # _id + 4 + the two partial listing indexes (finished jobs, tags) + the two
    # partial key indexes (listing, unique active key); no TTL index without keep_completed.
    assert len(first.collection.index_information()) == 9


def test_claim_query_is_served_by_the_claim_index(
    queue: Queue, mongo_client: MongoClient[Document]
) -> None:
    # 5,000 jobs, most of them delayed, many of those at a higher priority than
    # the due ones, so a scan that ignored available_at would walk them all.
    queue.put_many([{"n": i} for i in range(2000)], priority=9, delay=3600)
    queue.put_many([{"n": i} for i in range(2000)], priority=1, delay=3600)
    queue.put_many([{"n": i} for i in range(500)], priority=1)
    queue.put_many([{"n": i} for i in range(500)], priority=0)
    assert queue.size() == 5000

    explain = mongo_client[queue.collection.database.name].command(
        "explain",
        {
            "findAndModify": queue.collection.name,
            "query": READY_AND_DUE,
            "sort": dict(CLAIM_SORT),
            "update": _claim_pipeline("explainer", "token", 60.0),
            "new": True,
        },
        verbosity="executionStats",
    )
    winning = explain["queryPlanner"]["winningPlan"]
    scans = list(_stages(winning, "IXSCAN"))
    assert scans, winning
    assert scans[0]["indexName"] == "claim"
    assert not list(_stages(winning, "COLLSCAN"))
    assert not list(_stages(winning, "SORT")), "the index must provide the order"
    stats = explain["executionStats"]
    assert stats["totalDocsExamined"] <= 2, stats
    assert stats["totalKeysExamined"] <= 10, stats
    # The claim really takes the oldest due job of the highest due priority.
    job = queue.next()
    assert job is not None
    assert job.priority == 1
    assert job.payload == {"n": 0}


def _stages(plan: Document, name: str) -> list[Document]:
    found = []
    if plan.get("stage") == name:
        found.append(plan)
    for key in ("inputStage", "queryPlan"):
        if isinstance(plan.get(key), dict):
            found += _stages(plan[key], name)
    for child in plan.get("inputStages", []):
        found += _stages(child, name)
    return found


# -- looking ----------------------------------------------------------------------------------


def test_size_stats_and_clear(make_queue: QueueFactory) -> None:
    queue = make_queue(max_attempts=1)
    assert queue.size() == 0
    assert queue.stats() == {"available": 0, "locked": 0, "expired": 0, "delayed": 0, "dead": 0,
                             "failed": 0, "completed": 0, "cancelled": 0, "total": 0}
    queue.put_many([{"n": 1}, {"n": 2}, {"n": 3}])
    queue.put({"n": 4}, delay=600)
    locked = queue.next()
    dead = queue.next()
    assert locked is not None
    assert dead is not None
    dead.error("boom")  # max_attempts=1: straight to the error queue

    assert queue.size() == 3  # available + locked + delayed, not the error queue
    # "failed" is the deprecated name of "dead" (the error queue), kept for one release.
    assert queue.stats() == {"available": 1, "locked": 1, "expired": 0, "delayed": 1, "dead": 1,
                             "failed": 1, "completed": 0, "cancelled": 0, "total": 4}

    queue.clear()
    assert queue.size() == 0
    assert queue.stats()["total"] == 0
    assert queue.failed.count_documents({}) == 0
    with pytest.raises(LeaseLost):
        locked.complete()


def test_retry_failed_one_and_all(make_queue: QueueFactory) -> None:
    queue = make_queue(max_attempts=2)
    ids = queue.put_many([{"n": i} for i in range(3)])
    for _ in range(2):  # two failed attempts each: all three die
        for _ in ids:
            job = queue.next()
            assert job is not None
            job.error(f"failed {job.payload['n']}")
    assert queue.size() == 0
    assert queue.failed.count_documents({}) == 3

    assert queue.retry_failed(ids[1]) == 1
    assert queue.failed.count_documents({}) == 2
    back = queue.collection.find_one({"_id": ids[1]})
    assert back is not None
    assert back["state"] == "ready"
    assert back["attempts"] == 0
    assert "failed_at" not in back
    assert back["payload"] == {"n": 1}
    assert back["last_error"] == "failed 1"  # the history is kept
    # A fresh set of attempts: it can fail max_attempts more times before dying.
    job = queue.next()
    assert job is not None
    assert job.id == ids[1]
    assert job.attempts == 1
    job.error("again")
    assert queue.failed.count_documents({"_id": ids[1]}) == 0
    job = queue.next()
    assert job is not None
    assert job.attempts == 2
    job.complete()

    assert queue.retry_failed(ObjectId()) == 0
    assert queue.retry_failed() == 2
    assert queue.failed.count_documents({}) == 0
    assert {doc["_id"] for doc in queue.collection.find()} == {ids[0], ids[2]}
    assert queue.retry_failed() == 0


def test_a_hand_written_job_without_dates_is_claimed(queue: Queue) -> None:
    # Documents written by other tools may lack the dates the metrics read;
    # the claim must still hand the job out instead of failing on them.
    queue.collection.insert_one({"payload": {"by": "hand"}, "state": "ready", "priority": 0,
                                 "attempts": 0, "max_attempts": 3})
    job = queue.next()
    assert job is not None and job.payload == {"by": "hand"}
    assert job.wait_seconds == 0.0
    job.complete()
    assert queue.size() == 0
