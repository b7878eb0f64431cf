"""``Queue.result``: the outcome of a job, waited for on a change stream."""

from __future__ import annotations

import time

import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.collection import Collection

from streamqueue import Queue
from streamqueue.errors import JobCancelled, JobFailed, JobNotFound, StreamQueueError
from streamqueue.storage import Document
from tests.helpers import Background, CommandCounter, wait_until
from tests.integration.conftest import API_PARAMS, QueueFactory
from tests.integration.failpoints import CommandHook, hooked_client


@pytest.fixture(params=API_PARAMS)
def api(request: pytest.FixtureRequest) -> str:
    """These semantics tests run against Queue and AsyncQueue alike."""
    return str(request.param)


KEEP = 3600.0


def on(client: MongoClient[Document], collection: Collection[Document]) -> Collection[Document]:
    return client[collection.database.name][collection.name]


def finish(queue: Queue, job_id: ObjectId, result: object) -> None:
    job = queue.next()
    assert job is not None and job.id == job_id
    job.complete(result=result)


def test_the_result_of_a_completed_job(make_queue: QueueFactory) -> None:
    queue = make_queue(keep_completed=KEEP)
    job_id = queue.put({"n": 1})
    finish(queue, job_id, {"answer": 42})
    assert queue.result(job_id) == {"answer": 42}
    assert queue.result(str(job_id), timeout=0) == {"answer": 42}


def test_a_waiting_result_returns_when_the_job_completes(make_queue: QueueFactory) -> None:
    queue = make_queue(keep_completed=KEEP)
    job_id = queue.put({"n": 1})
    waiter = Background(lambda: queue.result(job_id, timeout=30))
    waiter.start()
    time.sleep(0.3)  # not a correctness wait: lets the waiter block first, as it would
    finish(make_queue(keep_completed=KEEP), job_id, [1, 2, 3])
    assert waiter.join(10) == [1, 2, 3]


def test_a_dead_job_raises_job_failed_with_its_last_error(make_queue: QueueFactory) -> None:
    queue = make_queue(keep_completed=KEEP, max_attempts=1)
    job_id = queue.put({"n": 1})
    waiter = Background(lambda: queue.result(job_id, timeout=30))
    waiter.start()
    job = queue.next()
    assert job is not None
    job.error("Traceback...\nValueError: bad input")
    with pytest.raises(JobFailed) as caught:
        waiter.join(10)
    assert caught.value.last_error == "Traceback...\nValueError: bad input"
    assert "ValueError: bad input" in str(caught.value)
    with pytest.raises(JobFailed):
        queue.result(job_id)


def test_a_cancelled_job_raises_job_cancelled(make_queue: QueueFactory,
                                              collection: Collection[Document]) -> None:
    queue = make_queue(keep_completed=KEEP)
    job_id = queue.put({"n": 1})
    # Cancellation itself is a later feature: the state it will write.
    collection.update_one({"_id": job_id}, [{"$set": {"state": "cancelled",
                                                      "finished_at": "$$NOW"}}])
    with pytest.raises(JobCancelled):
        queue.result(job_id)
    assert queue.stats()["cancelled"] == 1


def test_an_unknown_job_raises_job_not_found_a_key_error(queue: Queue) -> None:
    missing = ObjectId()
    with pytest.raises(JobNotFound) as caught:
        queue.result(missing, timeout=5)
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, StreamQueueError)
    assert str(caught.value) == f"no job {missing} in {queue.name} or its error queue"


def test_a_job_completed_without_keeping_is_gone(make_queue: QueueFactory) -> None:
    queue = make_queue()
    job_id = queue.put({"n": 1})
    waiter = Background(lambda: queue.result(job_id, timeout=30))
    waiter.start()
    time.sleep(0.3)  # lets the waiter block first
    finish_plain = queue.next()
    assert finish_plain is not None
    finish_plain.complete()
    with pytest.raises(JobNotFound):
        waiter.join(10)


def test_result_times_out(queue: Queue) -> None:
    job_id = queue.put({"n": 1}, delay=3600)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="delayed"):
        queue.result(job_id, timeout=0.5)
    assert time.monotonic() - started >= 0.5


def test_result_waits_on_the_stream_without_polling(
    mongo_uri: str, collection: Collection[Document], make_queue: QueueFactory,
) -> None:
    counter = CommandCounter()
    client: MongoClient[Document]
    with MongoClient(mongo_uri, event_listeners=[counter]) as client:
        queue = make_queue(on(client, collection), keep_completed=KEEP)
        job_id = queue.put({"n": 1})
        counter.reset()
        with pytest.raises(TimeoutError):
            queue.result(job_id, timeout=2.0)
        # One read before waiting; then only the stream's getMores (each up to 200 ms).
        assert counter.count("find") == 1, [name for name, _ in counter.commands]
        assert counter.count("aggregate") == 1


def test_a_completion_between_the_read_and_the_wait_is_not_missed(
    mongo_uri: str, collection: Collection[Document], make_queue: QueueFactory,
) -> None:
    # The job completes right after result()'s first read says "ready": the
    # stream, opened before that read, must carry the change to the wait.
    hook = CommandHook()
    completer = make_queue(keep_completed=KEEP)
    job_id = completer.put({"n": 1})
    with hooked_client(mongo_uri, hook) as client:
        waiter = make_queue(on(client, collection), keep_completed=KEEP)
        hook.on("succeeded", "find", lambda _: finish(completer, job_id, "late"), nth=1)
        started = time.monotonic()
        assert waiter.result(job_id, timeout=20) == "late"
        assert time.monotonic() - started < 10
        assert not hook.errors
    assert wait_until(lambda: completer.get(job_id) is not None)
