"""SIGTERM while MongoDB is unreachable: the worker still exits within its grace.

A worker process gets SIGTERM right after its replica set (its own, started
here) is killed, while it holds running jobs. Every storage call would retry
for up to a minute; the process must exit within ``--shutdown-grace`` plus a
few seconds anyway, and say that what it could not settle is left to leases.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection

from streamqueue import Queue
from streamqueue.exitcodes import ExitCode
from streamqueue.testing import ReplicaSet
from streamqueue.worker import EXIT_MARGIN
from tests.faults.conftest import Report
from tests.helpers import wait_until
from tests.integration.processes import CliProcess, child_env

Document = dict[str, Any]

pytestmark = pytest.mark.timeout(240)

GRACE = 2.0


@pytest.fixture
def own_rs() -> Iterator[ReplicaSet]:
    """A replica set this test alone uses, because it kills it."""
    with ReplicaSet(nodes=1) as rs:
        yield rs


@pytest.fixture
def records(mongo_uri: str) -> Iterator[Collection[Document]]:
    """Handler records on the session's replica set, which stays up."""
    client: MongoClient[Document] = MongoClient(mongo_uri)
    coll = client["streamqueue_test"][f"outage_records_{uuid.uuid4().hex[:8]}"]
    yield coll
    coll.drop()
    client.close()


def test_sigterm_during_an_outage_exits_within_the_grace(
        own_rs: ReplicaSet, records: Collection[Document], mongo_uri: str,
        report: Callable[[str], Report]) -> None:
    figures = report("shutdown_outage")
    client: MongoClient[Document] = MongoClient(own_rs.uri)
    try:
        with Queue(client["app"]["jobs"], max_await=1.0) as queue:
            # Short jobs: they finish inside the grace and must then be settled.
            queue.put_many([{"n": n, "work": 1.0} for n in range(20)])
    finally:
        client.close()
    env = child_env(STREAMQUEUE_TEST_RECORD_URI=mongo_uri,
                    STREAMQUEUE_TEST_RECORD_DB=records.database.name,
                    STREAMQUEUE_TEST_RECORD_COLLECTION=records.name)
    worker = CliProcess("streamqueue.worker", [
        "tests.handlers:record", "--uri", own_rs.uri, "--db", "app", "--queue", "jobs",
        "--concurrency", "2", "--batch", "4", "--lease", "60",
        "--shutdown-grace", f"{GRACE:g}"], env)
    try:
        assert wait_until(lambda: records.count_documents({"event": "started"}) >= 2,
                          timeout=60), worker.describe()
        for member in own_rs.members:
            member.kill()
        worker.send(signal.SIGTERM)
        signalled = time.monotonic()
        try:
            code: int | None = worker.wait(timeout=GRACE + 60)
        except subprocess.TimeoutExpired:
            code = None  # still shutting down a minute later: the bug this test is about
        took = time.monotonic() - signalled
    finally:
        worker.kill()
    figures.update({"grace_seconds": GRACE, "exit_seconds_after_sigterm": round(took, 1),
                    "exit_code": code, "jobs_started": records.count_documents(
                        {"event": "started"}),
                    "last_log_line": worker.stderr.strip().splitlines()[-1:]})
    # Process start-up and interpreter exit add a little on a loaded machine.
    assert took < GRACE + EXIT_MARGIN + 3.0, worker.describe()
    assert code == ExitCode.UNAVAILABLE, worker.describe()
    assert "left to their leases" in worker.stderr, worker.describe()
