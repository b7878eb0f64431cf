"""Looking at jobs: ``get``, ``jobs`` (states, tags, pages), tags on put, snooze, bad input."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.collection import Collection

from streamqueue import Queue
from streamqueue.jobinfo import JOB_STATES, JobInfo
from streamqueue.storage import Document
from streamqueue.validation import MAX_TAG_CHARS, MAX_TAGS
from tests.helpers import server_now
from tests.integration.conftest import API_PARAMS, QueueFactory


@pytest.fixture(params=API_PARAMS)
def api(request: pytest.FixtureRequest) -> str:
    """These semantics tests run against Queue and AsyncQueue alike."""
    return str(request.param)


KEEP = 3600.0


def one_of_each(queue: Queue) -> dict[str, ObjectId]:
    """A job in every state this release can reach, oldest first."""
    ids = {"completed": queue.put({"s": "completed"}, priority=9)}
    job = queue.next()
    assert job is not None and job.id == ids["completed"]
    job.complete(result=42)
    ids["failed"] = queue.put({"s": "failed"}, priority=8)
    job = queue.next()
    assert job is not None and job.id == ids["failed"]
    job.error("boom")
    ids["locked"] = queue.put({"s": "locked"}, priority=7)
    job = queue.next()
    assert job is not None and job.id == ids["locked"]
    ids["delayed"] = queue.put({"s": "delayed"}, delay=3600)
    ids["ready"] = queue.put({"s": "ready"}, tags=["a", "b"])
    return ids


def test_get_names_every_state_and_shows_the_fields(make_queue: QueueFactory,
                                                    mongo_client: MongoClient[Document]) -> None:
    queue = make_queue(keep_completed=KEEP, max_attempts=1, consumer_id="c-9")
    ids = one_of_each(queue)
    for state, job_id in ids.items():
        info = queue.get(job_id)
        assert info is not None and info.state == state, (state, info)
        assert info.payload == {"s": state}
    done = queue.get(ids["completed"])
    assert done is not None
    assert (done.result, done.attempts, done.consumer_id) == (42, 1, "c-9")
    assert done.finished_at is not None and done.locked_until is None
    dead = queue.get(ids["failed"])
    assert dead is not None and dead.last_error == "boom" and dead.finished_at is not None
    held = queue.get(ids["locked"])
    assert held is not None and held.locked_until is not None and held.consumer_id == "c-9"
    ready = queue.get(str(ids["ready"]))  # the hex string works too
    assert ready is not None
    assert (ready.tags, ready.key, ready.cancel_requested, ready.result) == (("a", "b"), None,
                                                                            False, None)
    later = queue.get(ids["delayed"])
    assert later is not None and later.available_at is not None
    assert later.available_at > server_now(mongo_client) + timedelta(minutes=59)
    assert queue.get(ObjectId()) is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        done.state = "ready"  # type: ignore[misc]


def test_jobs_lists_newest_first_by_state_and_pages(make_queue: QueueFactory) -> None:
    queue = make_queue(keep_completed=KEEP, max_attempts=1)
    ids = one_of_each(queue)
    newest_first = [ids[s] for s in ("ready", "delayed", "locked", "failed", "completed")]
    assert [info.id for info in queue.jobs()] == newest_first
    for state in JOB_STATES:
        listed = queue.jobs(state)
        assert [info.id for info in listed] == ([ids[state]] if state in ids else []), state
        assert all(info.state == state for info in listed)
    # Pages: two at a time, each after the last id of the one before.
    pages: list[list[JobInfo]] = [queue.jobs(limit=2)]
    while pages[-1]:
        pages.append(queue.jobs(limit=2, after=pages[-1][-1].id))
    assert [info.id for page in pages for info in page] == newest_first
    assert [len(page) for page in pages] == [2, 2, 1, 0]


def test_ready_jobs_list_newest_first_through_an_index(make_queue: QueueFactory) -> None:
    queue = make_queue()
    ids = queue.put_many([{"n": i} for i in range(50)])
    listed = queue.jobs("ready", limit=10)
    assert [info.id for info in listed] == ids[::-1][:10]
    page = queue.jobs("ready", limit=10, after=listed[-1].id)
    assert [info.id for info in page] == ids[::-1][10:20]


def test_tags_are_stored_listed_and_served_by_the_tags_index(
    make_queue: QueueFactory, collection: Collection[Document], mongo_client: MongoClient[Document],
) -> None:
    queue = make_queue(keep_completed=KEEP)
    untagged = queue.put({"n": 0})
    red = queue.put_many([{"n": 1}, {"n": 2}], tags=("red", "big", "red"))
    blue = queue.put({"n": 3}, tags=["blue"])
    assert collection.find_one({"_id": red[0]}, {"tags": 1}) == {"_id": red[0],
                                                                 "tags": ["red", "big"]}
    assert "tags" not in (collection.find_one({"_id": untagged}) or {})
    assert [info.id for info in queue.jobs(tag="red")] == red[::-1]
    assert [info.id for info in queue.jobs(tag="blue")] == [blue]
    assert queue.jobs(tag="green") == []
    job = queue.next()
    assert job is not None and job.id == untagged
    job.complete()
    assert [info.id for info in queue.jobs("ready", tag="red")] == red[::-1]
    explain = mongo_client[collection.database.name].command(
        "explain", {"find": collection.name, "filter": {"tags": {"$eq": "red", "$exists": True}},
                    "sort": {"_id": -1}, "limit": 100}, verbosity="executionStats")
    plan = str(explain["queryPlanner"]["winningPlan"])
    assert "'indexName': 'tags'" in plan and "COLLSCAN" not in plan and "'SORT'" not in plan
    assert explain["executionStats"]["totalDocsExamined"] == 2


def test_finished_jobs_are_listed_through_the_finished_index(
    make_queue: QueueFactory, collection: Collection[Document], mongo_client: MongoClient[Document],
) -> None:
    queue = make_queue(keep_completed=KEEP)
    queue.put_many([{"n": i} for i in range(20)])
    done = []
    for _ in range(5):
        job = queue.next()
        assert job is not None
        job.complete(result=job.payload["n"])
        done.append(job.id)
    assert [info.result for info in queue.jobs("completed")] == [4, 3, 2, 1, 0]
    explain = mongo_client[collection.database.name].command(
        "explain", {"find": collection.name,
                    "filter": {"state": "completed", "finished_at": {"$exists": True}},
                    "sort": {"_id": -1}, "limit": 100}, verbosity="executionStats")
    assert "'indexName': 'finished'" in str(explain["queryPlanner"]["winningPlan"])
    assert explain["executionStats"]["totalDocsExamined"] == 5


@pytest.mark.parametrize("tags, error", [
    ("red", TypeError),
    ([1], TypeError),
    ([""], ValueError),
    (["x" * (MAX_TAG_CHARS + 1)], ValueError),
    ([f"t{i}" for i in range(MAX_TAGS + 1)], ValueError),
    ([None], TypeError),
])
def test_bad_tags_write_nothing(queue: Queue, collection: Collection[Document], tags: Any,
                                error: type[Exception]) -> None:
    with pytest.raises(error):
        queue.put({"n": 1}, tags=tags)
    with pytest.raises(error):
        queue.put_many([{"n": 1}, {"n": 2}], tags=tags)
    assert collection.count_documents({}) == 0


@pytest.mark.parametrize("call, error", [
    (lambda q: q.jobs(limit=0), ValueError),
    (lambda q: q.jobs(limit=-3), ValueError),
    (lambda q: q.jobs(limit=True), TypeError),
    (lambda q: q.jobs(limit="5"), TypeError),
    (lambda q: q.jobs("running"), ValueError),
    (lambda q: q.jobs(tag=""), ValueError),
    (lambda q: q.jobs(tag=3), TypeError),
    (lambda q: q.jobs(key=""), ValueError),
    (lambda q: q.jobs(key=3), TypeError),
    (lambda q: q.jobs(after="nope"), ValueError),
    (lambda q: q.get("nope"), ValueError),
    (lambda q: q.get(17), TypeError),
    (lambda q: q.put({}, delay=-1), ValueError),
    (lambda q: q.put_many([{}], delay=-0.5), ValueError),
    (lambda q: q.result(ObjectId(), timeout=-1), ValueError),
])
def test_bad_arguments_raise_and_write_nothing(queue: Queue, collection: Collection[Document],
                                               call: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        call(queue)
    assert collection.count_documents({}) == 0


def test_snooze_puts_the_job_back_after_the_delay_without_counting_the_attempt(
    queue: Queue, collection: Collection[Document], mongo_client: MongoClient[Document],
) -> None:
    queue.put({"n": 1})
    job = queue.next()
    assert job is not None and job.attempts == 1
    before = server_now(mongo_client)
    job.release(delay=2.0)
    doc = collection.find_one({"_id": job.id})
    assert doc is not None
    assert (doc["state"], doc["attempts"]) == ("ready", 0)
    assert doc["available_at"] >= before + timedelta(seconds=2)
    info = queue.get(job.id)
    assert info is not None and info.state == "delayed"
    assert queue.next() is None  # not due yet
    again = queue.next(timeout=10)  # the due timer wakes the waiter, no event needed
    assert again is not None and again.id == job.id and again.attempts == 1
    assert server_now(mongo_client) >= before + timedelta(seconds=2)
    again.complete()


def test_a_negative_snooze_changes_nothing(queue: Queue, collection: Collection[Document]) -> None:
    queue.put({"n": 1})
    job = queue.next()
    assert job is not None
    with pytest.raises(ValueError):
        job.release(delay=-1)
    with pytest.raises(TypeError):
        job.release(delay="soon")  # type: ignore[arg-type]
    assert not job.settled
    assert collection.count_documents({"_id": job.id, "lease_token": job.lease_token,
                                       "state": "locked"}) == 1
    job.release()
    info = queue.get(job.id)
    assert info is not None and info.state == "ready"


@pytest.mark.parametrize("keep, error", [(-1, ValueError), (float("inf"), ValueError),
                                         (2**31, ValueError), ("1h", TypeError)])
def test_a_bad_keep_completed_is_refused(collection: Collection[Document], keep: Any,
                                         error: type[Exception]) -> None:
    with pytest.raises(error):
        Queue(collection, keep_completed=keep)
    assert collection.name not in collection.database.list_collection_names()
