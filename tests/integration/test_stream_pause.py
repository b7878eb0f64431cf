"""The change stream closes while every consumer is busy and reopens for the first that waits.

An open stream makes the server examine every write; a fleet draining a
backlog never waits on it. These tests pin the two halves of the rule: the
stream really closes (on the server too), and closing it loses no wake-up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection

from streamqueue import Job, Queue
from streamqueue.storage import Document
from streamqueue.worker import Worker
from tests.helpers import Background, on, stays_false, wait_until
from tests.integration.conftest import QueueFactory

# Short enough for a quick test; the sweep is far away, so only the stream
# (or the claim made on resume) can hand a job to a waiter in time.
PAUSE: dict[str, Any] = {"pause_stream_after": 0.3, "max_await": 0.2, "sweep_interval": 120.0}


def live_change_streams(client: MongoClient[Document], collection: Collection[Document]) -> int:
    """Change-stream cursors open on ``collection``, as the server lists them."""
    ops = client.admin.aggregate([
        {"$currentOp": {"allUsers": True, "idleCursors": True}},
        {"$match": {"cursor.originatingCommand.aggregate": collection.name,
                    "cursor.originatingCommand.$db": collection.database.name}},
    ])
    return sum(1 for op in ops
               if "$changeStream" in (op["cursor"]["originatingCommand"].get("pipeline") or [{}])[0])


def test_the_stream_closes_while_nobody_waits_and_reopens_for_a_waiter(
    make_queue: QueueFactory, collection: Collection[Document], other_client: MongoClient[Document],
) -> None:
    consumer = make_queue(**PAUSE)
    producer = make_queue(on(other_client, collection))
    assert consumer.next(timeout=0.05) is None  # opens the stream, then nobody waits
    assert wait_until(lambda: consumer.watcher.paused, 10)
    assert consumer.watcher.streams_paused == 1
    assert wait_until(lambda: live_change_streams(other_client, collection) == 0, 10)

    waiting = Background(lambda: consumer.next(timeout=20), name="consumer").start()
    assert wait_until(lambda: consumer.watcher.streams_opened == 2 and not consumer.watcher.paused,
                      10)
    assert live_change_streams(other_client, collection) == 1
    assert not waiting.done.wait(0.3)  # blocked: nothing was there to claim
    put_at = time.monotonic()
    job_id = producer.put({"after": "resume"})
    job = waiting.join(15)
    assert isinstance(job, Job)
    assert job.id == job_id
    assert waiting.finished_at is not None
    assert waiting.finished_at - put_at < 2.0  # the reopened stream's event, not a sweep


class EnqueuesAfterAnEmptyClaim(Queue):
    """Once armed, its next empty claim is followed by a put from elsewhere.

    That put lands after the claim looked and before the paused stream is
    reopened: no change event will ever announce it.
    """

    def __init__(self, *args: Any, producer: Queue, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.producer = producer
        self.armed = False
        self.slipped_in: list[Any] = []

    def claim(self, limit: int = 1) -> list[Job]:
        jobs = super().claim(limit)
        if not jobs and self.armed:
            self.armed = False
            assert self.watcher.paused
            self.slipped_in.append(self.producer.put({"slipped": "in"}))
        return jobs


def test_a_job_enqueued_while_the_stream_was_closed_is_claimed_on_resume(
    make_queue: QueueFactory, collection: Collection[Document], other_client: MongoClient[Document],
) -> None:
    producer = make_queue(on(other_client, collection))
    consumer = EnqueuesAfterAnEmptyClaim(collection, producer=producer, **PAUSE)
    try:
        assert consumer.next(timeout=0.05) is None
        assert wait_until(lambda: consumer.watcher.paused, 10)
        consumer.armed = True
        started = time.monotonic()
        job = consumer.next(timeout=20)
        assert isinstance(job, Job)
        assert [job.id] == consumer.slipped_in
        assert time.monotonic() - started < 5.0
    finally:
        consumer.close()


class HeldEmptyClaims(Queue):
    """A thread named in ``after_empty`` runs that callable after its first empty claim."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.after_empty: dict[str, Callable[[], None]] = {}

    def claim(self, limit: int = 1) -> list[Job]:
        jobs = super().claim(limit)
        if not jobs:
            hook = self.after_empty.pop(threading.current_thread().name, None)
            if hook is not None:
                hook()
        return jobs


def test_a_waiter_that_claimed_while_the_stream_was_closed_claims_again_once_it_reopens(
    collection: Collection[Document], other_client: MongoClient[Document],
) -> None:
    # Two jobs land while the stream is closed, after both waiters' claims
    # looked. B reopens the stream and its claim takes one; A began to wait
    # only after the reopen, so no event and no resume reaches it: the
    # reopen itself must make A claim once, or the second job waits for a sweep.
    producer = Queue(on(other_client, collection))
    consumer = HeldEmptyClaims(collection, **PAUSE)
    inserted = threading.Event()
    ids: list[Any] = []

    def a_inserts_then_holds_until_reopened() -> None:
        ids.extend(producer.put_many([{"n": 1}, {"n": 2}]))
        inserted.set()
        assert wait_until(lambda: consumer.watcher.streams_opened == 2
                          and not consumer.watcher.paused, 10)

    try:
        assert consumer.next(timeout=0.05) is None
        assert wait_until(lambda: consumer.watcher.paused, 10)
        b_looked = threading.Event()

        def b_waits_for_the_inserts() -> None:
            b_looked.set()
            assert inserted.wait(10)

        consumer.after_empty = {"a": a_inserts_then_holds_until_reopened,
                                "b": b_waits_for_the_inserts}
        b = Background(lambda: consumer.next(timeout=20), name="b").start()
        assert b_looked.wait(10)
        a = Background(lambda: consumer.next(timeout=8), name="a").start()
        got = [b.join(15), a.join(15)]
        assert all(isinstance(job, Job) for job in got), got
        assert sorted(job.id for job in got if isinstance(job, Job)) == sorted(ids)
    finally:
        consumer.close()
        producer.close()


def test_pause_stream_after_none_keeps_the_stream_open(make_queue: QueueFactory) -> None:
    consumer = make_queue(pause_stream_after=None, max_await=0.1)
    assert consumer.next(timeout=0.05) is None
    assert stays_false(lambda: consumer.watcher.paused, 1.0)
    assert consumer.watcher.streams_paused == 0
    assert consumer.watcher.streams_opened == 1


def test_a_draining_worker_closes_the_stream_and_still_takes_the_next_job(
    collection: Collection[Document], other_client: MongoClient[Document],
) -> None:
    queue = Queue(collection, **PAUSE)
    producer = Queue(on(other_client, collection))
    done: list[int] = []

    def slow(payload: dict[str, Any]) -> None:
        time.sleep(0.02)
        done.append(payload["n"])

    worker = Worker(queue, slow, concurrency=1)
    producer.put_many([{"n": n} for n in range(60)])
    runner = Background(worker.run).start()
    try:
        # The backlog keeps the only slot busy for over a second: nobody waits.
        assert wait_until(lambda: queue.watcher.streams_paused >= 1, 20)
        assert wait_until(lambda: len(done) == 60, 30)
        put_at = time.monotonic()
        producer.put({"n": 60})
        assert wait_until(lambda: len(done) == 61, 10)
        assert time.monotonic() - put_at < 5.0
        assert sorted(done) == list(range(61))
    finally:
        worker.stop()
        runner.join(30)
        queue.close()
        producer.close()
