"""Enqueue is a plain insert dated by ServerClock: its commands, its documents, its retries."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from streamqueue import Queue
from streamqueue.errors import StorageError
from streamqueue.servertime import ServerClock
from streamqueue.storage import Document, NewJob, new_document
from tests.helpers import CommandCounter, on, server_now
from tests.integration.conftest import API_PARAMS, QueueFactory


@pytest.fixture(params=API_PARAMS)
def api(request: pytest.FixtureRequest) -> str:
    """These semantics tests run against Queue and AsyncQueue alike."""
    return str(request.param)


FIELDS = ["_id", "payload", "priority", "state", "attempts", "max_attempts", "enqueued_at",
          "available_at"]


def naive(moment: datetime) -> datetime:
    """As pymongo decodes dates: naive UTC."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


def test_the_estimate_lies_between_two_readings_of_the_server_clock(
    mongo_client: MongoClient[Document],
) -> None:
    hellos = [0]

    def hello() -> Document:
        hellos[0] += 1
        reply: Document = mongo_client.admin.command("hello")
        return reply

    clock = ServerClock(hello)
    clock.now()
    anchor = clock.anchor
    assert anchor is not None
    # Never ahead of the server; behind it by at most the anchor's round trip
    # and the millisecond both dates drop. Read back to back, within
    # milliseconds of the anchor: over longer the server's wall clock may be
    # adjusted against the monotonic one (servertime's docstring), which once
    # put an estimate 3 ms behind 1.5 s after its anchor on this VM.
    lag = timedelta(seconds=anchor.round_trip, milliseconds=2)
    for _ in range(15):
        before = server_now(mongo_client)
        estimate = naive(clock.now())
        after = server_now(mongo_client)
        assert before - lag <= estimate <= after, (before, estimate, after, anchor.round_trip)
    # Carried forward by the monotonic clock, not re-read: within the dropped
    # milliseconds of the time slept, at any plausible clock rate.
    first = naive(clock.now())
    slept = time.monotonic()
    time.sleep(0.3)
    second = naive(clock.now())
    moved = timedelta(seconds=time.monotonic() - slept)
    assert moved - timedelta(milliseconds=2) <= second - first <= moved + timedelta(milliseconds=2)
    assert hellos[0] == 1


@pytest.mark.sync_only
def test_put_is_one_insert_and_reads_the_clock_once(
    make_queue: QueueFactory, collection: Collection[Document],
    counted_client: tuple[MongoClient[Document], CommandCounter],
) -> None:
    client, counter = counted_client
    queue = make_queue(on(client, collection))
    queue.store.ensure_indexes()
    counter.reset()
    for n in range(10):
        queue.put({"n": n})
    queue.put_many([{"n": n} for n in range(10, 15)])
    assert counter.count("insert", collection.name) == 11
    assert counter.count("update", collection.name) == 0
    # One hello for the first put; the rest are carried forward (60 s).
    assert counter.count("hello") == 1
    batches = [len(body["documents"]) for name, body in counter.commands if name == "insert"]
    assert batches == [1] * 10 + [5]
    assert collection.count_documents({}) == 15


def test_the_document_is_the_queues_shape(
    queue: Queue, collection: Collection[Document], mongo_client: MongoClient[Document],
) -> None:
    before = server_now(mongo_client)
    job_id = queue.put({"n": 1, "nested": {"list": [1, {"a": None}]}}, priority=3, delay=2.5)
    after = server_now(mongo_client)
    stored = collection.find_one({"_id": job_id})
    assert stored is not None
    assert list(stored) == FIELDS  # the order the upsert used to write, too
    assert stored["payload"] == {"n": 1, "nested": {"list": [1, {"a": None}]}}
    assert (stored["priority"], stored["state"], stored["attempts"], stored["max_attempts"]) == (
        3, "ready", 0, queue.max_attempts)
    assert before - timedelta(milliseconds=50) <= stored["enqueued_at"] <= after
    assert stored["available_at"] - stored["enqueued_at"] == timedelta(seconds=2.5)
    assert queue.stats()["delayed"] == 1


@pytest.mark.sync_only
def test_the_same_documents_inserted_again_are_already_written(
    queue: Queue, collection: Collection[Document],
) -> None:
    # What a retry after a lost reply sends: the very documents of the first try,
    # some or all of which are in already.
    now = queue.store.clock.now()
    documents = [new_document(NewJob({"n": n}, 0, 0.0, 3), now) for n in range(5)]
    collection.insert_many(documents[:2])
    first_two = list(collection.find({"_id": {"$in": [d["_id"] for d in documents[:2]]}}))
    queue.store.insert_documents(documents)  # no error: two were in, three go in now
    assert collection.count_documents({}) == 5
    assert list(collection.find({"_id": {"$in": [d["_id"] for d in documents[:2]]}})) == first_two
    queue.store.insert_documents(documents[4:])  # the single-insert path
    queue.store.insert_documents(documents)
    assert collection.count_documents({}) == 5


@pytest.mark.sync_only
def test_a_duplicate_on_an_application_index_is_an_error(
    queue: Queue, collection: Collection[Document],
) -> None:
    # Only a duplicate _id means "already written"; a unique index of the
    # application's refusing a job must not pass as a successful put.
    queue.store.ensure_indexes()
    collection.create_index("payload.key", unique=True)
    queue.put({"key": 1})
    with pytest.raises(StorageError, match="duplicate key"):
        queue.put({"key": 1})
    with pytest.raises(StorageError, match="duplicate key"):
        queue.put_many([{"key": 2}, {"key": 1}])
    assert collection.count_documents({"payload.key": 1}) == 1


def test_a_delay_past_the_year_9999_is_refused_before_anything_is_written(
    queue: Queue, collection: Collection[Document],
) -> None:
    # MongoDB would store such a date but pymongo cannot read it back: every
    # claim meeting the job would fail. The upsert used to write it.
    with pytest.raises(ValueError, match="year 9999"):
        queue.put({}, delay=1e12)
    with pytest.raises(ValueError, match="year 9999"):
        queue.put_many([{}, {}], delay=1e300)
    # Not even the collection or its indexes: refused before ensure_indexes.
    assert collection.name not in collection.database.list_collection_names()


LOST_REPLY_APP = "streamqueue-test-lost-reply"


@dataclass(frozen=True)
class LostReply:
    client: MongoClient[Document]
    times_fired: Callable[[], int]


@pytest.fixture
def lost_reply(mongo_uri: str, mongo_client: MongoClient[Document]) -> Iterator[LostReply]:
    """A client whose next insert is applied but answered with a retryable WriteConcernError.

    Driver-level retries are off, so the queue's own retry sends the insert
    again: the case of a reply lost after the write. The code is 89
    (NetworkTimeout), not an election's 11602: after an election code the
    driver waits for its next server check (10 s here); the queue retries
    every code in ``retry.RETRYABLE_CODES`` alike.
    """
    try:
        # The server's count of the fail point's firings runs on across
        # configurations: firings are counted from this one.
        before = mongo_client.admin.command(
            "configureFailPoint", "failCommand", mode={"times": 1},
            data={"failCommands": ["insert"], "appName": LOST_REPLY_APP,
                  "writeConcernError": {"code": 89, "codeName": "NetworkTimeout",
                                        "errmsg": "reply lost (test fail point)"}})["count"]
    except OperationFailure as exc:
        pytest.skip(f"the test deployment has no failCommand fail point: {exc}")
    client: MongoClient[Document] = MongoClient(mongo_uri, appname=LOST_REPLY_APP,
                                                retryWrites=False)

    def times_fired() -> int:
        off = mongo_client.admin.command("configureFailPoint", "failCommand", mode="off")
        return int(off["count"]) - int(before)

    try:
        yield LostReply(client, times_fired)
    finally:
        client.close()
        mongo_client.admin.command("configureFailPoint", "failCommand", mode="off")


@pytest.mark.sync_only
@pytest.mark.parametrize("count", [1, 5], ids=["put", "put_many"])
def test_an_enqueue_whose_reply_was_lost_writes_each_job_once(
    make_queue: QueueFactory, collection: Collection[Document],
    lost_reply: LostReply, count: int,
) -> None:
    # insert_one gets the cut-short majority wait as a WriteConcernError,
    # insert_many as a BulkWriteError (writeConcernErrors only): both retried.
    queue = make_queue(on(lost_reply.client, collection))
    queue.store.ensure_indexes()
    payloads = [{"n": n} for n in range(count)]
    ids = [queue.put(payloads[0])] if count == 1 else queue.put_many(payloads)
    assert lost_reply.times_fired() == 1, "the fail point did not fire exactly once"
    assert sorted(doc["_id"] for doc in collection.find({}, {"_id": 1})) == sorted(ids)
    assert len(ids) == count
