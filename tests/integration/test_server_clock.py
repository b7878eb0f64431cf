"""Leases and delays are judged by the server's clock, never the consumer's."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.collection import Collection

from streamqueue import Queue
from streamqueue.storage import Document
from tests.helpers import server_now
from tests.integration.conftest import API_PARAMS, QueueFactory
from tests.skew import faketime_prefix, libfaketime


@pytest.fixture(params=API_PARAMS)
def api(request: pytest.FixtureRequest) -> str:
    """These semantics tests run against Queue and AsyncQueue alike."""
    return str(request.param)


ROOT = Path(__file__).resolve().parents[2]


def craft(collection: Collection[Document], **fields: Any) -> ObjectId:
    """Write a job whose dates are computed by the server: ``{"$$NOW": seconds}`` offsets."""
    job_id = ObjectId()
    changes: Document = {"payload": {"crafted": True}, "priority": 0, "attempts": 1,
                         "max_attempts": 3, "enqueued_at": "$$NOW"}
    for name, value in fields.items():
        if isinstance(value, dict) and "$$NOW" in value:
            changes[name] = {"$add": ["$$NOW", round(value["$$NOW"] * 1000)]}
        else:
            changes[name] = {"$literal": value}
    collection.update_one({"_id": job_id}, [{"$set": changes}], upsert=True)
    return job_id


def live_lease(collection: Collection[Document], minutes: float = 10) -> ObjectId:
    return craft(collection, state="locked", lease_token="someone-elses", consumer_id="other",
                 locked_at={"$$NOW": 0}, locked_until={"$$NOW": minutes * 60},
                 available_at={"$$NOW": -60})


def delayed(collection: Collection[Document], minutes: float = 10) -> ObjectId:
    return craft(collection, state="ready", attempts=0, available_at={"$$NOW": minutes * 60})


@pytest.mark.sync_only
def test_a_lease_live_by_the_server_clock_cannot_be_taken(
    make_queue: QueueFactory, collection: Collection[Document]
) -> None:
    queue = make_queue()
    queue.store.ensure_indexes()
    job_id = live_lease(collection, minutes=10)
    before = collection.find_one({"_id": job_id})
    assert queue.next() is None
    assert queue.reap() == 0
    assert queue.next(timeout=0.3) is None
    assert collection.find_one({"_id": job_id}) == before
    assert queue.stats()["locked"] == 1


def test_a_lease_expired_by_the_server_clock_is_reaped(
    make_queue: QueueFactory, collection: Collection[Document]
) -> None:
    queue = make_queue()
    job_id = craft(collection, state="locked", lease_token="gone", consumer_id="crashed",
                   locked_at={"$$NOW": -61}, locked_until={"$$NOW": -1},
                   available_at={"$$NOW": -120})
    # Expired by the server's clock: shown apart from live leases until reaped.
    assert (queue.stats()["locked"], queue.stats()["expired"]) == (0, 1)
    assert queue.reap() == 1
    job = queue.next()
    assert job is not None
    assert job.id == job_id
    assert job.attempts == 2


@pytest.mark.sync_only
def test_a_job_delayed_by_the_server_clock_is_not_claimable_early(
    make_queue: QueueFactory, collection: Collection[Document]
) -> None:
    queue = make_queue()
    queue.store.ensure_indexes()
    delayed(collection, minutes=10)
    due = craft(collection, state="ready", attempts=0, available_at={"$$NOW": -1})
    job = queue.next()
    assert job is not None
    assert job.id == due
    assert queue.next() is None
    assert queue.stats() == {"available": 0, "locked": 1, "expired": 0, "delayed": 1, "dead": 0,
                             "failed": 0, "completed": 0, "cancelled": 0, "total": 2}


def test_stored_dates_are_the_servers(
    queue: Queue, collection: Collection[Document], mongo_client: MongoClient[Document]
) -> None:
    before = server_now(mongo_client)
    job_id = queue.put({}, delay=30)
    after = server_now(mongo_client)
    stored = collection.find_one({"_id": job_id})
    assert stored is not None
    assert before - timedelta(milliseconds=50) <= stored["enqueued_at"] <= after
    assert stored["available_at"] - stored["enqueued_at"] == timedelta(seconds=30)


@pytest.mark.sync_only
@pytest.mark.skipif(libfaketime() is None, reason="needs libfaketime (apt install faketime)")
@pytest.mark.parametrize("skew", ["+1h", "-1h"])
def test_a_consumer_whose_clock_is_an_hour_off(
    make_queue: QueueFactory, collection: Collection[Document], mongo_uri: str,
    mongo_client: MongoClient[Document], skew: str,
) -> None:
    make_queue().store.ensure_indexes()
    lease_id = live_lease(collection, minutes=10)
    delayed_id = delayed(collection, minutes=10)
    lease_before = collection.find_one({"_id": lease_id})
    delayed_before = collection.find_one({"_id": delayed_id})

    run = subprocess.run(
        [*faketime_prefix(skew), sys.executable, "-m", "tests.integration.skewed_client",
         mongo_uri, collection.database.name, collection.name],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    now = server_now(mongo_client)
    local = datetime.fromisoformat(seen["local_now"]).replace(tzinfo=None)
    assert abs((local - now).total_seconds()) > 3000, "faketime did not skew the clock"

    # Nothing the server says is unavailable was taken.
    assert seen["stolen"] is None
    assert seen["reaped"] == 0
    assert seen["waited"] is None
    assert collection.find_one({"_id": lease_id}) == lease_before
    assert collection.find_one({"_id": delayed_id}) == delayed_before
    # Its own delayed job came after the delay, by the server's clock.
    assert seen["claimed"] == seen["put"]
    assert 0.2 <= seen["claim_wait"] < 2.0  # from before its put to its claim
    left = collection.find_one({"_id": ObjectId(seen["left"])})
    assert left is not None
    assert abs((left["enqueued_at"] - now).total_seconds()) < 30
    assert left["available_at"] - left["enqueued_at"] == timedelta(seconds=600)
