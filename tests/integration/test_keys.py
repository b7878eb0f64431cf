"""Unique keys: one active job per key, enforced by the server's unique index."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from bson import ObjectId
from prometheus_client import CollectorRegistry
from pymongo import MongoClient
from pymongo.collection import Collection

from streamqueue import Queue
from streamqueue.metrics import PrometheusHooks
from streamqueue.storage import Document
from streamqueue.validation import MAX_KEY_CHARS
from tests.helpers import on
from tests.integration import test_enqueue
from tests.integration.conftest import API_PARAMS, QueueFactory
from tests.integration.failpoints import CommandHook, hooked_client
from tests.integration.test_enqueue import LostReply


@pytest.fixture(params=API_PARAMS)
def api(request: pytest.FixtureRequest) -> str:
    """These semantics tests run against Queue and AsyncQueue alike."""
    return str(request.param)


KEEP = 3600.0
# A client whose next insert is applied but answered as failed (a fixture).
lost_reply = test_enqueue.lost_reply


def test_a_second_put_with_an_active_key_writes_nothing_and_returns_the_first_id(
    queue: Queue, collection: Collection[Document],
) -> None:
    first = queue.put({"n": 1}, key="invoice-7")
    assert queue.put({"n": 2}, key="invoice-7", delay=60, tags=["x"]) == first
    assert collection.count_documents({}) == 1
    assert (collection.find_one({"_id": first}) or {})["key"] == "invoice-7"
    # Another key, and no key at all, are not affected.
    other = queue.put({"n": 3}, key="invoice-8")
    plain = [queue.put({"n": 4}), queue.put({"n": 5})]
    assert len({first, other, *plain}) == 4


@pytest.mark.parametrize("delay", [0.0, 3600.0])
def test_a_locked_or_delayed_job_still_holds_its_key(queue: Queue, delay: float) -> None:
    first = queue.put({"n": 1}, key="k", delay=delay)
    if delay == 0:
        job = queue.next()
        assert job is not None and job.id == first
    assert queue.put({"n": 2}, key="k") == first


@pytest.mark.parametrize("keep", [0.0, KEEP])
def test_the_key_is_free_once_the_job_completes(make_queue: QueueFactory, keep: float) -> None:
    queue = make_queue(keep_completed=keep)
    first = queue.put({"n": 1}, key="k")
    job = queue.next()
    assert job is not None
    job.complete()
    second = queue.put({"n": 2}, key="k")
    assert second != first
    assert queue.put({"n": 3}, key="k") == second


def test_the_key_is_free_once_the_job_is_dead_lettered(make_queue: QueueFactory) -> None:
    queue = make_queue(max_attempts=1)
    first = queue.put({"n": 1}, key="k")
    job = queue.next()
    assert job is not None
    job.error("boom")
    assert queue.get(first) is not None and queue.get(first).state == "failed"  # type: ignore[union-attr]
    assert queue.put({"n": 2}, key="k") != first


def test_the_key_is_free_once_the_job_is_cancelled(make_queue: QueueFactory,
                                                   collection: Collection[Document]) -> None:
    queue = make_queue(keep_completed=KEEP)
    first = queue.put({"n": 1}, key="k")
    # Cancel is built on another branch: the state it writes.
    collection.update_one({"_id": first}, [{"$set": {"state": "cancelled",
                                                     "finished_at": "$$NOW"}}])
    assert queue.put({"n": 2}, key="k") != first


def test_fifty_threads_putting_one_key_at_once_make_one_job(
    mongo_uri: str, collection: Collection[Document],
) -> None:
    client: MongoClient[Document] = MongoClient(mongo_uri, maxPoolSize=60)
    queue = Queue(client[collection.database.name][collection.name], max_await=1.0)
    queue.put({"warm": True})  # indexes and the clock, so the threads race on the insert
    start = threading.Barrier(50)
    ids: list[ObjectId] = []
    errors: list[BaseException] = []

    def producer(n: int) -> None:
        start.wait()
        try:
            ids.append(queue.put({"n": n}, key="one"))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(50)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        queue.close()
        client.close()
    assert errors == []
    assert len(ids) == 50 and len(set(ids)) == 1
    assert collection.count_documents({"key": "one"}) == 1


def test_dedups_are_counted_in_a_metric(make_queue: QueueFactory) -> None:
    registry = CollectorRegistry()
    queue = make_queue(hooks=PrometheusHooks(registry))
    for n in range(3):
        queue.put({"n": n}, key="k")
    labels = {"queue": queue.name}
    assert registry.get_sample_value("streamqueue_jobs_deduplicated_total", labels) == 2
    assert registry.get_sample_value("streamqueue_jobs_enqueued_total", labels) == 1


@pytest.mark.sync_only
def test_a_keyed_put_whose_reply_was_lost_is_written_once_and_not_a_dedup(
    make_queue: QueueFactory, collection: Collection[Document], lost_reply: LostReply,
) -> None:
    """The retry meets its own document: "already written" (by _id), not another job's key."""
    registry = CollectorRegistry()
    queue = make_queue(on(lost_reply.client, collection), hooks=PrometheusHooks(registry))
    queue.store.ensure_indexes()
    job_id = queue.put({"n": 1}, key="k")
    assert lost_reply.times_fired() == 1, "the fail point did not fire exactly once"
    assert [doc["_id"] for doc in collection.find({}, {"_id": 1})] == [job_id]
    labels = {"queue": queue.name}
    assert registry.get_sample_value("streamqueue_jobs_enqueued_total", labels) == 1
    assert not registry.get_sample_value("streamqueue_jobs_deduplicated_total", labels)


@pytest.mark.sync_only
def test_a_holder_finishing_between_the_refusal_and_the_read_frees_the_key(
    mongo_uri: str, make_queue: QueueFactory, collection: Collection[Document],
) -> None:
    """The put tries again (same document) instead of returning a finished job's id."""
    holder_queue = make_queue()
    holder = holder_queue.put({"n": 1}, key="k")
    job = holder_queue.next()
    assert job is not None
    hook = CommandHook()
    # The put's first command after the refused insert is the read of the holder:
    # the holder completes just before it is sent.
    hook.on("started", "find", lambda event: job.complete())
    client = hooked_client(mongo_uri, hook)
    try:
        queue = make_queue(on(client, collection))
        queue.store.ensure_indexes()
        queue.store.clock.now()
        second = queue.put({"n": 2}, key="k")
    finally:
        client.close()
    assert hook.errors == [] and job.settled
    assert second != holder
    assert [doc["_id"] for doc in collection.find({"key": "k"})] == [second]


def test_jobs_by_key_lists_every_state_through_the_key_index(
    make_queue: QueueFactory, collection: Collection[Document], mongo_client: MongoClient[Document],
) -> None:
    queue = make_queue(keep_completed=KEEP)
    old = queue.put({"n": 1}, key="k")
    job = queue.next()
    assert job is not None
    job.complete(result=1)
    new = queue.put({"n": 2}, key="k")
    queue.put_many([{"n": n} for n in range(10)])
    queue.put({"n": 3}, key="other")
    assert [(info.id, info.state, info.key) for info in queue.jobs(key="k")] == [
        (new, "ready", "k"), (old, "completed", "k")]
    assert [info.id for info in queue.jobs("completed", key="k")] == [old]
    assert [info.id for info in queue.jobs(key="k", after=new)] == [old]
    explain = mongo_client[collection.database.name].command(
        "explain", {"find": collection.name,
                    "filter": {"key": {"$eq": "k", "$exists": True},
                               "state": {"$in": ["ready", "locked", "completed", "cancelled"]}},
                    "sort": {"_id": -1}, "limit": 100}, verbosity="executionStats")
    plan = str(explain["queryPlanner"]["winningPlan"])
    assert "'indexName': 'key'" in plan and "COLLSCAN" not in plan and "'SORT'" not in plan
    assert explain["executionStats"]["totalDocsExamined"] == 2


@pytest.mark.parametrize("key, error", [
    ("", ValueError),
    ("x" * (MAX_KEY_CHARS + 1), ValueError),
    ("a\x00b", ValueError),
    (7, TypeError),
    (b"k", TypeError),
    (["k"], TypeError),
])
def test_bad_keys_write_nothing(queue: Queue, collection: Collection[Document], key: Any,
                                error: type[Exception]) -> None:
    with pytest.raises(error):
        queue.put({"n": 1}, key=key)
    assert collection.count_documents({}) == 0


def test_put_many_takes_no_key(queue: Queue) -> None:
    with pytest.raises(TypeError):
        queue.put_many([{"n": 1}], key="k")  # type: ignore[call-arg]


def test_a_dead_job_whose_key_is_taken_stays_dead_on_retry(make_queue: QueueFactory) -> None:
    # Reviving it would make two active jobs with one key: it stays in the
    # error queue, untouched, and the live holder keeps its key.
    queue = make_queue(max_attempts=1)
    dead = queue.put({"n": 1}, key="k")
    job = queue.next()
    assert job is not None
    job.error("boom")
    live = queue.put({"n": 2}, key="k")
    assert queue.retry_failed(dead) == 0
    assert queue.failed.count_documents({"_id": dead}) == 1
    assert queue.put({"n": 3}, key="k") == live
    assert (queue.get(dead) or pytest.fail("the dead job is gone")).state == "failed"
