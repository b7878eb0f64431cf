"""A standalone mongod (no change streams, no transactions): polling and two-step moves."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection

from streamqueue import Job, Queue
from streamqueue.errors import ConfigurationError
from streamqueue.storage import Document
from streamqueue.testing import MongodProcess, find_mongod, free_port
from tests.helpers import Background, wait_until
from tests.integration.conftest import QueueFactory
from tests.integration.failpoints import CommandHook, fail_point, hooked_client

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
              "--bind_ip", "127.0.0.1", "--wiredTigerCacheSizeGB", "0.25",
              "--setParameter", "enableTestCommands=1"],
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


def test_kept_jobs_and_listing_work_on_a_standalone_but_waiting_for_a_result_needs_streams(
        make_queue: QueueFactory, standalone: Collection[Document]) -> None:
    queue: Queue = make_queue(standalone, keep_completed=600)
    job_id = queue.put({"n": 1}, tags=["t"])
    job = queue.next()
    assert job is not None
    job.complete(result=7)
    assert [info.id for info in queue.jobs("completed", tag="t")] == [job_id]
    assert queue.result(job_id) == 7  # finished: no waiting needed
    pending = queue.put({"n": 2})
    with pytest.raises(ConfigurationError, match="needs change streams"):
        queue.result(pending, timeout=1)


def test_two_reapers_interleaved_never_lose_a_dead_job(
    make_queue: QueueFactory, standalone: Collection[Document], standalone_uri: str,
) -> None:
    # Reaper B runs its whole move while reaper A is about to delete the
    # original (A's copy is made), and A then goes on only after B is done.
    # Before moves marked their source, B overwrote A's copy, A deleted the
    # original, and B, missing it, deleted "its" copy: the job was nowhere.
    hook_a, hook_b = CommandHook(), CommandHook()
    with hooked_client(standalone_uri, hook_a) as client_a, \
            hooked_client(standalone_uri, hook_b) as client_b:
        name = standalone.name
        reaper_a = make_queue(client_a["streamqueue_test"][name], max_attempts=1, lease=0.2)
        reaper_b = make_queue(client_b["streamqueue_test"][name], max_attempts=1, lease=0.2)
        job_id = reaper_a.put({"n": 1})
        assert reaper_a.next() is not None
        assert wait_until(lambda: standalone.count_documents(
            {"_id": job_id, "$expr": {"$lt": ["$locked_until", "$$NOW"]}}) == 1, 10)
        b_at_delete, a_deleted = threading.Event(), threading.Event()
        reaping_b = Background(reaper_b.reap)

        def run_b(_: object) -> None:
            reaping_b.start()
            wait_until(lambda: b_at_delete.is_set() or reaping_b.finished_at is not None, 10)

        def b_waits_for_a(_: object) -> None:
            b_at_delete.set()
            a_deleted.wait(10)

        def a_waits_for_b(_: object) -> None:
            a_deleted.set()
            reaping_b.join(10)

        hook_a.on("started", "delete", run_b)
        hook_a.on("succeeded", "delete", a_waits_for_b)
        hook_b.on("started", "delete", b_waits_for_a)
        reaper_a.reap()
        reaping_b.join(10)
        assert not hook_a.errors and not hook_b.errors
        assert standalone.count_documents({"_id": job_id}) == 0
        dead = reaper_a.failed.find_one({"_id": job_id})
        assert dead is not None, "the job is in neither collection"
        assert dead["state"] == "failed"
        assert "_move" not in dead


def test_a_bury_retried_after_its_steps_applied_reports_success(
    make_queue: QueueFactory, standalone: Collection[Document], standalone_uri: str,
) -> None:
    # The last step (deleting the original) is cut twice (the driver's retry
    # too): the library's retry finds its own marked move and finishes it.
    hook = CommandHook()
    with hooked_client(standalone_uri, hook) as client:
        queue = make_queue(client["streamqueue_test"][standalone.name], max_attempts=1)
        job_id = queue.put({"n": 1})
        job = queue.next()
        assert job is not None
        data = {"failCommands": ["delete"], "closeConnection": True,
                "appName": client.options.pool_options.metadata["application"]["name"]}
        with fail_point(client, {"times": 2}, data):
            job.error("boom")
        assert hook.count("failed", "delete") == 2
        assert standalone.count_documents({"_id": job_id}) == 0
        dead = queue.failed.find_one({"_id": job_id})
        assert dead is not None
        assert dead["last_error"] == "boom"
        assert "_move" not in dead


def test_a_dead_job_whose_key_is_taken_stays_dead_on_retry_without_transactions(
    make_queue: QueueFactory, standalone: Collection[Document],
) -> None:
    # The revival copies first: a copy refused by the key index leaves the
    # dead job where it was (it used to be deleted, and so lost).
    queue = make_queue(standalone, max_attempts=1)
    dead = queue.put({"n": 1}, key="k")
    job = queue.next()
    assert job is not None
    job.error("boom")
    live = queue.put({"n": 2}, key="k")
    assert queue.retry_failed() == 0
    assert queue.failed.count_documents({"_id": dead}) == 1
    assert standalone.count_documents({"key": "k"}) == 1
    assert queue.put({"n": 3}, key="k") == live


def test_schedules_are_refused_without_a_replica_set(
        make_queue: QueueFactory, standalone: Collection[Document]) -> None:
    from streamqueue.scheduler import Scheduler

    queue = make_queue(standalone)
    with pytest.raises(ConfigurationError, match="need a replica set"):
        queue.schedule("tick", every=1)
    with pytest.raises(ConfigurationError, match="need a replica set"):
        Scheduler(queue).start()
