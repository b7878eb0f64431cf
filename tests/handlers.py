"""Job handlers for worker subprocess tests (``tests.handlers:record`` and friends).

Handlers write what they do to a MongoDB collection named by environment
variables, so a test can wait on real conditions ("job 3 started in pid X")
instead of sleeping:

    STREAMQUEUE_TEST_RECORD_URI         connection string
    STREAMQUEUE_TEST_RECORD_DB          database
    STREAMQUEUE_TEST_RECORD_COLLECTION  collection for the records

Each record is ``{n, pid, event: "started"|"done"|"failed", attempt}``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection

from streamqueue.queue import Job

_lock = threading.Lock()
_records: Collection[dict[str, Any]] | None = None


def records() -> Collection[dict[str, Any]]:
    """The record collection of this process (one client per process)."""
    global _records
    with _lock:
        if _records is None:
            client: MongoClient[dict[str, Any]] = MongoClient(
                os.environ["STREAMQUEUE_TEST_RECORD_URI"])
            _records = client[os.environ["STREAMQUEUE_TEST_RECORD_DB"]][
                os.environ["STREAMQUEUE_TEST_RECORD_COLLECTION"]]
        return _records


def _note(payload: dict[str, Any], job: Job, event: str) -> None:
    records().insert_one({"n": payload.get("n"), "pid": os.getpid(), "event": event,
                          "attempt": job.attempts, "job_id": job.id})


def record(payload: dict[str, Any], job: Job) -> None:
    """Record the start, maybe fail, work for ``payload["work"]`` seconds, record the end.

    ``payload["fail_attempts"] = k``: attempts 1..k raise after recording "failed".
    ``payload["hang_first"]``: on the first attempt, work for 120 s instead (long
    enough for a test to kill the process mid-job; no test waits for it).
    """
    _note(payload, job, "started")
    if job.attempts <= int(payload.get("fail_attempts", 0)):
        _note(payload, job, "failed")
        raise RuntimeError(f"job {payload.get('n')} failed on purpose (attempt {job.attempts})")
    work = float(payload.get("work", 0.0))
    if payload.get("hang_first") and job.attempts == 1:
        work = 120.0
    if work:
        # Simulated work, not synchronisation: the tests wait on the records.
        time.sleep(work)
    _note(payload, job, "done")
