"""A consumer whose clock is wrong, for the server-clock test (run under ``faketime``).

Usage: ``python -m tests.integration.skewed_client URI DB COLLECTION``

It tries to take what the server says it must not (a live lease, a delayed job),
then enqueues and claims one job, and prints one JSON line of what it saw.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import datetime, timezone
from typing import SupportsIndex

from pymongo import MongoClient

from streamqueue import Queue
from streamqueue.storage import Document


def _sleep(seconds: float | SupportsIndex) -> None:
    threading.Event().wait(seconds if isinstance(seconds, float) else float(seconds))


def main(argv: list[str]) -> int:
    # libfaketime 0.9.10 breaks monotonic waits (threading waits hang unless
    # FAKETIME_DONT_FAKE_MONOTONIC=1), and then time.sleep (clock_nanosleep with
    # an absolute monotonic deadline) fails with EINVAL. The wall clock, which is
    # what this test skews, stays faked; sleeps go through a monotonic wait.
    time.sleep = _sleep
    uri, db_name, name = argv
    client: MongoClient[Document] = MongoClient(uri)
    queue = Queue(client[db_name][name], consumer_id="skewed", lease=60.0, max_await=1.0)
    stolen = queue.next()
    reaped = queue.reap()
    waited = queue.next(timeout=1.0)
    left_id = queue.put({"from": "skewed", "left": True}, delay=600)
    started = time.monotonic()
    job_id = queue.put({"from": "skewed"}, delay=0.2)
    job = queue.next(timeout=10)
    report = {
        "local_now": datetime.now(timezone.utc).isoformat(),
        "stolen": None if stolen is None else str(stolen.id),
        "reaped": reaped,
        "waited": None if waited is None else str(waited.id),
        "put": str(job_id),
        "left": str(left_id),
        "claimed": None if job is None else str(job.id),
        "claim_wait": time.monotonic() - started,
    }
    if job is not None:
        job.complete()
    queue.close()
    client.close()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
