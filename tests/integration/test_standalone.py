"""A standalone mongod (no change streams, no transactions): polling and two-step moves."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection

from streamqueue import Job, Queue
from streamqueue.storage import Document
from streamqueue.testing import MongodProcess, find_mongod, free_port
from tests.helpers import Background, wait_until
from tests.integration.conftest import QueueFactory

POLL = 0.2


@pytest.fixture(scope="module")
def standalone_uri() -> Iterator[str]:
    root = Path(tempfile.mkdtemp(prefix="streamqueue-standalone-"))
    port = free_port()
    member = MongodProcess(
        port=port,
        dbpath=root / "data",
        logpath=root / "mongod.log",
        args=[find_mongod(), "--dbpath", str(root / "data"), "--port", str(port),
              "--bind_ip", "127.0.0.1", "--wiredTigerCacheSizeGB", "0.25"],
    )
    member.start()
    uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    try:
        client: MongoClient[Document] = MongoClient(uri, serverSelectionTimeoutMS=1000)
        with client:
            def answers() -> bool:
                try:
                    client.admin.command("ping")
                except Exception:  # not listening yet
                    return False
                return True

            assert wait_until(answers, 30), member.log_tail()
            assert "setName" not in client.admin.command("hello")
        yield uri
    finally:
        member.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def standalone(standalone_uri: str) -> Iterator[Collection[Document]]:
    client: MongoClient[Document] = MongoClient(standalone_uri)
    db = client["streamqueue_test"]
    name = f"q_{uuid.uuid4().hex[:12]}"
    yield db[name]
    db.drop_collection(name)
    db.drop_collection(f"{name}.failed")
    client.close()


def fallback_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.levelno == logging.WARNING and r.name.startswith("streamqueue")]


def test_next_polls_and_warns_once_without_change_streams(
    make_queue: QueueFactory, standalone: Collection[Document], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="streamqueue")
    consumer = make_queue(standalone, poll_interval=POLL)
    producer = make_queue(standalone)

    assert consumer.next(timeout=0.5) is None
    assert consumer.board.polling

    waiting = Background(lambda: consumer.next(timeout=10)).start()
    assert wait_until(lambda: consumer.board.waiters == 1)
    put_at = time.monotonic()
    job_id = producer.put({"n": 1})
    job = waiting.join(15)
    assert isinstance(job, Job)
    assert job.id == job_id
    assert waiting.finished_at is not None
    assert waiting.finished_at - put_at < POLL + 0.5
    job.complete()

    # A delayed job is found by polling too.
    due_at = producer.put({"n": 2}, delay=0.3)
    stored = standalone.find_one({"_id": due_at})
    assert stored is not None
    early = consumer.next()
    assert early is None or early.data["locked_at"] >= stored["available_at"]
    later = early or consumer.next(timeout=5)
    assert later is not None
    assert later.data["locked_at"] >= stored["available_at"]
    later.complete()

    warnings = fallback_warnings(caplog)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "change streams are not available" in warnings[0].getMessage()


def test_each_queue_object_warns_once(
    make_queue: QueueFactory, standalone: Collection[Document], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="streamqueue")
    queue = make_queue(standalone, poll_interval=POLL)
    for _ in range(3):
        assert queue.next(timeout=0.3) is None
    assert len(fallback_warnings(caplog)) == 1


def test_dead_letter_without_transactions(
    make_queue: QueueFactory, standalone: Collection[Document]
) -> None:
    queue = make_queue(standalone, max_attempts=1, lease=0.2)
    assert not queue.store.supports_transactions()
    by_error, by_reaper = queue.put({"n": 1}), queue.put({"n": 2})
    first = queue.next()
    assert first is not None
    assert first.id == by_error
    first.error("boom")
    assert queue.next() is not None  # by_reaper, left to expire
    assert wait_until(lambda: queue.reap() == 1, 10)
    for job_id in (by_error, by_reaper):
        assert standalone.count_documents({"_id": job_id}) == 0
        dead = queue.failed.find_one({"_id": job_id})
        assert dead is not None
        assert "_move" not in dead
    assert queue.retry_failed() == 2
    assert queue.failed.count_documents({}) == 0
    assert queue.size() == 2


def test_reap_finishes_a_half_done_move(
    make_queue: QueueFactory, standalone: Collection[Document]
) -> None:
    # A process died between copying a dead job into the error queue and deleting
    # the original: the job is in both. The next reap must finish the move.
    queue = make_queue(standalone, max_attempts=1, lease=0.2)
    job_id = queue.put({"n": 1})
    assert queue.next() is not None
    held = standalone.find_one({"_id": job_id})
    assert held is not None
    queue.failed.insert_one({**held, "state": "failed", "_move": "crashed-mover"})
    assert wait_until(lambda: queue.reap() == 1, 10)
    assert standalone.count_documents({"_id": job_id}) == 0
    dead = queue.failed.find_one({"_id": job_id})
    assert dead is not None
    assert dead["state"] == "failed"
    assert "_move" not in dead
    assert "lease_token" not in dead


def test_queue_works_on_a_standalone(make_queue: QueueFactory,
                                     standalone: Collection[Document]) -> None:
    queue: Queue = make_queue(standalone)
    assert queue.store.jobs.write_concern.document == {"w": "majority"}
    queue.put_many([{"n": i} for i in range(3)])
    assert queue.stats()["available"] == 3
    jobs = queue.next_batch(3)
    assert len(jobs) == 3
    for job in jobs:
        job.complete()
    assert queue.size() == 0
