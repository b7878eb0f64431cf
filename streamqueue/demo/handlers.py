"""The demo's job handler: ``streamqueue.demo.handlers:handle``.

It stands in for real work: each call sleeps 5-50 ms and raises
``DemoFailure`` 5 % of the time, so some jobs are retried (and, rarely, run
out of attempts and land in the error queue). The compose and Kubernetes
setups in ``deploy/`` run it too.

Knobs, all optional (environment of the worker process):

- ``STREAMQUEUE_DEMO_FAIL_RATE``: the share of calls that raise (default 0.05).
- ``STREAMQUEUE_DEMO_RECORD_URI`` and ``STREAMQUEUE_DEMO_RECORD_DB``: when both
  are set, every delivery first writes one document into
  ``DB.demo_deliveries`` (job id, attempt number, consumer, wait, whether it
  is the first delivery of a job put without a delay, and the job's previous
  error), through a client of its own. ``python -m
  streamqueue.demo`` counts redeliveries and wait times from these records,
  because completed jobs leave the queue and a killed worker takes its
  in-memory metrics with it.

A payload ``{"fail": true}`` always raises (a poison job, for tests and for
trying the error queue).
"""

from __future__ import annotations

import os
import random
import threading
import time
from datetime import datetime
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.write_concern import WriteConcern

from streamqueue.queue import Job

Document = dict[str, Any]

ENV_FAIL_RATE = "STREAMQUEUE_DEMO_FAIL_RATE"
ENV_RECORD_URI = "STREAMQUEUE_DEMO_RECORD_URI"
ENV_RECORD_DB = "STREAMQUEUE_DEMO_RECORD_DB"
DELIVERIES = "demo_deliveries"
DEFAULT_FAIL_RATE = 0.05
MIN_WORK = 0.005
MAX_WORK = 0.050
#: ``last_error`` the reaper writes when it takes a job back (see ``JobStore.reap``).
LEASE_EXPIRED_PREFIX = "lease expired"
#: ... followed by the consumer id that held the job.
EXPIRED_HOLDER_PREFIX = "lease expired while held by "

_lock = threading.Lock()
_deliveries: Collection[Document] | None = None
_recording: bool | None = None


class DemoFailure(RuntimeError):
    """What the handler raises on a simulated failure."""


def fail_rate() -> float:
    raw = os.environ.get(ENV_FAIL_RATE, "").strip()
    if not raw:
        return DEFAULT_FAIL_RATE
    try:
        rate = float(raw)
    except ValueError:
        raise ValueError(f"{ENV_FAIL_RATE}={raw!r} is not a number") from None
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{ENV_FAIL_RATE}={raw!r} must be within 0..1")
    return rate


def deliveries() -> Collection[Document] | None:
    """The delivery record collection, or None when recording is not configured."""
    global _deliveries, _recording
    with _lock:
        if _recording is None:
            uri = os.environ.get(ENV_RECORD_URI)
            db = os.environ.get(ENV_RECORD_DB)
            _recording = bool(uri and db)
            if uri and db:
                client: MongoClient[Document] = MongoClient(uri, appname="streamqueue-demo-recorder")
                # w:1 keeps the record cheap next to the 5-50 ms of "work"; the
                # demo has no failover that could roll one back.
                _deliveries = client[db].get_collection(DELIVERIES,
                                                        write_concern=WriteConcern(w=1))
        return _deliveries


def record_delivery(job: Job) -> None:
    records = deliveries()
    if records is None:
        return
    last_error = job.last_error or ""
    available_at = job.data.get("available_at")
    records.insert_one({
        "job_id": job.id,
        "attempt": job.attempts,
        "consumer": job.consumer_id,
        "priority": job.priority,
        "wait": job.wait_seconds,
        # First delivery of a job put without a delay: its wait runs from the
        # put, as the bench's enqueue-to-claim latency does.
        "first_of_ready_put": job.attempts == 1 and isinstance(available_at, datetime)
        and available_at <= job.enqueued_at,
        "lease_expired": job.attempts > 1 and last_error.startswith(LEASE_EXPIRED_PREFIX),
        "prev_error": last_error[:200],
        "pid": os.getpid(),
        "at": time.time(),
    })


def handle(payload: dict[str, Any], job: Job) -> None:
    """Work 5-50 ms; raise ``DemoFailure`` at the configured rate (5 % by default)."""
    record_delivery(job)
    time.sleep(random.uniform(MIN_WORK, MAX_WORK))
    if payload.get("fail"):
        raise DemoFailure(f"job {job.id}: poison payload, fails every time")
    if random.random() < fail_rate():
        raise DemoFailure(f"job {job.id}: simulated failure on attempt {job.attempts}")
