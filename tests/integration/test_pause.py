"""``Queue.pause``/``resume``: cluster-wide, stored in MongoDB, heard on the change stream."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pymongo import MongoClient
from pymongo.collection import Collection

from streamqueue import Queue
from streamqueue.metrics import PrometheusHooks
from streamqueue.reaper import Reaper
from streamqueue.storage import Document
from streamqueue.worker import Worker
from tests.helpers import Background, CommandCounter, on, stays_false, wait_until
from tests.integration.conftest import API_PARAMS, QueueFactory


@pytest.fixture(params=API_PARAMS)
def api(request: pytest.FixtureRequest) -> str:
    """These semantics tests run against Queue and AsyncQueue alike."""
    return str(request.param)



def stream_open(queue: Queue) -> bool:
    return queue.watcher.stream_epoch() is not None


def test_pause_is_stored_and_seen_by_every_queue_object(
        make_queue: QueueFactory, collection: Collection[Document],
        other_client: MongoClient[Document]) -> None:
    queue = make_queue()
    job_id = queue.put({"n": 1})
    assert queue.is_paused() is False
    queue.pause()
    # Another client, as another process: a new object reads the stored switch.
    other = make_queue(on(other_client, collection))
    assert other.is_paused() is True
    assert other.next() is None and queue.next() is None
    assert other.put({"n": 2})  # put still works
    assert other.stats()["available"] == 2
    other.resume()
    assert queue.is_paused() is False
    job = make_queue(on(other_client, collection)).next()
    assert job is not None and job.id == job_id


def test_a_waiting_consumer_stops_on_pause_and_is_woken_by_resume(
        make_queue: QueueFactory, collection: Collection[Document],
        other_client: MongoClient[Document]) -> None:
    consumer = make_queue()
    control = make_queue(on(other_client, collection))
    control.pause()
    waiting = Background(lambda: consumer.next(timeout=30)).start()
    assert wait_until(lambda: consumer.board.waiters == 1 and stream_open(consumer))
    job_id = control.put({"n": 1})  # wakes the waiter, which must not claim
    assert stays_false(lambda: waiting.done.is_set(), 0.5)
    control.resume()
    job = waiting.join(15)
    assert job is not None and job.id == job_id


def test_a_consumer_that_waits_on_a_paused_queue_hears_the_pause_on_its_stream(
        make_queue: QueueFactory, collection: Collection[Document],
        other_client: MongoClient[Document]) -> None:
    consumer = make_queue(pause_stream_after=None)
    control = make_queue(on(other_client, collection))
    assert consumer.next(timeout=0.05) is None  # stream open, switch read: "running"
    control.pause()
    assert wait_until(lambda: consumer._pause.paused(), timeout=10)
    control.put({"n": 1})
    assert consumer.next(timeout=0.3) is None


def test_a_consumer_claiming_a_backlog_stops_after_a_pause(
        make_queue: QueueFactory, collection: Collection[Document],
        other_client: MongoClient[Document]) -> None:
    consumer = make_queue()
    control = make_queue(on(other_client, collection))
    control.put_many({"n": n} for n in range(5000))
    claimed = 0
    stop = threading.Event()

    def drain() -> None:
        nonlocal claimed
        while not stop.is_set():
            job = consumer.next(timeout=0.05)
            if job is not None:
                job.complete()
                claimed += 1

    worker = Background(drain).start()
    assert wait_until(lambda: claimed > 20)
    control.pause()
    # Once the pause is known, the count stops moving.
    last = -1

    def settled() -> bool:
        nonlocal last
        previous, last = last, claimed
        return previous == last

    assert wait_until(settled, timeout=10, interval=0.6)
    stopped_at = claimed
    assert stays_false(lambda: claimed != stopped_at, 1.0)
    assert control.stats()["available"] > 0
    control.resume()
    assert wait_until(lambda: claimed > stopped_at, timeout=10)
    stop.set()
    worker.join(10)


@pytest.mark.sync_only
def test_a_worker_runs_held_jobs_through_a_pause_and_claims_none(
        make_queue: QueueFactory, collection: Collection[Document],
        other_client: MongoClient[Document]) -> None:
    queue = make_queue(lease=30)
    control = make_queue(on(other_client, collection))
    started = threading.Event()
    release = threading.Event()
    seen: list[int] = []

    def handle(payload: dict[str, Any]) -> None:
        seen.append(payload["n"])
        if payload["n"] == 0:
            started.set()
            assert release.wait(30)

    worker = Worker(queue, handle, concurrency=2)
    runner = Background(worker.run).start()
    try:
        control.put({"n": 0})
        assert started.wait(15)
        control.pause()
        assert wait_until(lambda: queue._pause.paused(), timeout=10)
        control.put_many({"n": n} for n in range(1, 4))
        release.set()  # the held job finishes during the pause
        assert wait_until(lambda: control.stats()["locked"] == 0)
        assert stays_false(lambda: len(seen) > 1, 0.5)
        control.resume()
        assert wait_until(lambda: sorted(seen) == [0, 1, 2, 3], timeout=15)
    finally:
        worker.stop()
        runner.join(30)


def test_clear_keeps_a_paused_queue_paused(make_queue: QueueFactory) -> None:
    queue = make_queue()
    queue.pause()
    queue.put({"n": 1})
    queue.clear()
    assert queue.is_paused() and queue.size() == 0
    assert queue.stats()["total"] == 0
    assert queue.jobs() == []


@pytest.mark.sync_only
def test_a_paused_idle_consumer_sends_no_claims(
        make_queue: QueueFactory, collection: Collection[Document],
        counted_client: tuple[MongoClient[Document], CommandCounter]) -> None:
    client, counter = counted_client
    queue = make_queue(on(client, collection))
    queue.pause()
    queue.store.ensure_indexes()
    counter.reset()
    assert queue.next(timeout=2.0) is None
    assert counter.count("findAndModify", collection.name) == 0
    # One read of the switch once the stream is open, nothing more while it stays open.
    assert counter.count("find", collection.name) <= 1


def test_the_reaper_publishes_the_paused_gauge(make_queue: QueueFactory) -> None:
    registry = CollectorRegistry()
    queue = make_queue()
    reaper = Reaper([queue], hooks=PrometheusHooks(registry))
    queue.pause()
    assert reaper.run_once().ok
    assert registry.get_sample_value("streamqueue_queue_paused", {"queue": queue.name}) == 1
    queue.resume()
    assert reaper.run_once().ok
    assert registry.get_sample_value("streamqueue_queue_paused", {"queue": queue.name}) == 0
