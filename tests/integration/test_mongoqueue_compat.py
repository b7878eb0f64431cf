"""MongoQueue as a drop-in for mongoqueue code (kapilt/mongoqueue), against the real replica set.

Each test is written the way a mongoqueue user wrote their program: the 2012
releases (the put dict's keys at the top level of ``job.data``), and 0.6+
(``put(payload, priority)``, ``job.payload``, the document under ``with job``).
Only the import line changes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from bson import ObjectId
from pymongo.collection import Collection

from streamqueue import MongoJob, MongoQueue, Queue
from streamqueue.storage import Document
from tests.helpers import wait_until


def test_a_2012_mongoqueue_program_runs_unchanged(collection: Collection[Document]) -> None:
    queue = MongoQueue(collection, "consumer-1", timeout=300, max_attempts=3)
    try:
        handled = _old_program(queue)
    finally:
        queue.close()
    assert handled == ["bob", "alice", "mike"]


def _old_program(queue: MongoQueue) -> list[str]:
    """Code as a 2012 mongoqueue user wrote it (only ``print`` turned into a list)."""
    queue.put({"priority": 1, "name": "alice", "data": [1, 2, 3]})
    queue.put({"priority": 2, "name": "bob", "data": [4]})
    queue.put({"priority": 0, "name": "mike", "data": []})
    assert queue.size() == 3
    handled = []
    while True:
        job = queue.next()
        if job is None:
            break
        assert isinstance(job.job_id, ObjectId)
        assert job.data["_id"] == job.job_id
        assert job.data["locked_by"] == "consumer-1"
        with job as data:
            handled.append(data["name"])
            assert data["priority"] == {"alice": 1, "bob": 2, "mike": 0}[data["name"]]
            assert isinstance(data["data"], list)
    assert queue.size() == 0
    return handled


def test_2012_context_manager_error_counts_an_attempt(collection: Collection[Document]) -> None:
    with MongoQueue(collection, "consumer-1") as queue:
        queue.put({"foobar": 1})
        job = queue.next()
        assert job is not None
        assert job.data["attempts"] == 0
        with pytest.raises(SyntaxError), job as data:
            assert data["foobar"] == 1
            raise SyntaxError("boom")
        job = queue.next()
        assert job is not None
        assert job.data["foobar"] == 1
        # mongoqueue counted the attempts that failed before this one.
        assert job.data["attempts"] == 1
        assert job.attempts == 2  # streamqueue's count: deliveries, this one included
        assert "SyntaxError: boom" in job.data["last_error"]
        with job as data:
            assert data["foobar"] == 1
        assert queue.next() is None


def test_stats_has_mongoqueues_keys_and_counts_errors(collection: Collection[Document]) -> None:
    with MongoQueue(collection, "consumer-1", max_attempts=2) as queue:
        queue.put({"n": 0, "priority": 1})  # comes back ahead of the others
        stats = queue.stats()
        assert {"available", "locked", "errors", "total"} <= stats.keys()
        job = queue.next()
        assert job is not None
        for n in range(1, 5):
            queue.put({"n": n})
        stats = queue.stats()
        assert (stats["available"], stats["locked"], stats["errors"], stats["total"]) == (4, 1, 0, 5)
        job.error("problem")
        again = queue.next()
        assert again is not None and again.job_id == job.job_id
        again.error("problem again")  # out of attempts: an error now
        stats = queue.stats()
        assert (stats["available"], stats["locked"], stats["errors"], stats["total"]) == (4, 0, 1, 5)
        assert queue.drop_max_attempts() == 1
        assert queue.stats()["errors"] == 0


def test_a_0_6_mongoqueue_program_runs_unchanged(collection: Collection[Document]) -> None:
    with MongoQueue(collection, "consumer-1", timeout=300, max_attempts=3) as queue:
        low = queue.put({"foobar": 0})
        queue.put({"foobar": 1}, 5)  # priority by position, as 0.6 took it
        job = queue.next()
        assert job is not None
        assert job.payload == {"foobar": 1}
        assert job.priority == 5
        assert job.locked_by == "consumer-1"
        assert isinstance(job.locked_at, datetime)
        assert job.last_error is None
        job.progress(10)
        job.release()
        job = queue.next()
        assert job is not None and job.payload == {"foobar": 1}
        with job as data:
            # 0.6 handed over the whole document, the put dict under "payload".
            assert data["payload"] == {"foobar": 1}
            assert data["priority"] == 5
        job = queue.next()
        assert job is not None and job.job_id == low
        job.complete()
        assert queue.next() is None
        queue.clear()
        assert queue.size() == 0


def test_repair_hands_back_a_timed_out_lock(collection: Collection[Document]) -> None:
    with MongoQueue(collection, "crashed", timeout=1) as crashed, \
            MongoQueue(collection, "consumer-2") as queue:
        crashed.put({"foobar": 1})
        assert crashed.timeout == 1.0
        held = crashed.next()
        assert held is not None  # and never settled: its consumer "died"
        assert queue.next() is None
        assert wait_until(lambda: queue.repair() == 1, timeout=15)
        job = queue.next()
        assert job is not None and job.job_id == held.job_id
        assert job.data["attempts"] == 1
        assert job.data["locked_by"] == "consumer-2"
        job.complete()


def test_data_keeps_the_jobs_own_fields_on_a_name_clash(collection: Collection[Document]) -> None:
    with MongoQueue(collection, "consumer-1") as queue:
        payload: dict[str, Any] = {"attempts": "mine", "payload": "mine", "own": 1}
        queue.put(payload)
        job = queue.next()
        assert job is not None
        assert job.data["own"] == 1
        assert job.data["attempts"] == 0
        assert job.data["payload"] == payload
        assert job.payload == payload
        job.complete()


def test_queue_itself_is_unchanged(collection: Collection[Document]) -> None:
    with Queue(collection, "plain") as queue:
        queue.put({"foobar": 1})
        job = queue.next()
        assert job is not None and not isinstance(job, MongoJob)
        assert "foobar" not in job.data
        assert not hasattr(job, "job_id")
        with job as payload:
            assert payload == {"foobar": 1}
        assert "errors" not in queue.stats()
