"""Job handlers the fault tests run inside real worker processes.

Workers load them by name (``python -m streamqueue.worker tests.faults.handlers:record``)
and every delivery that finishes writes one record, through a client of its own,
into the collection ``$SQ_FAULT_DB.$SQ_FAULT_RECORDS``::

    {kind: "done", job_id, attempt, pid, consumer, token, locked_at, available_at,
     prev_error, clock}

so a test can count completions per job (exactly once, or redelivered) and tell
why a redelivery happened (``prev_error`` is the job's ``last_error`` as
claimed: "lease expired while held by <consumer>" when the reaper took it
back). ``clock`` is the worker's own ``time.time()``: under ``faketime`` it
shows the skew the process ran with.

What a job does comes from its payload:

- ``do: "raise"``: always raises (a poison job).
- ``do: "raise_first"``: raises on its first delivery only.
- ``do: "die"``: SIGKILLs its own worker process.
- ``work: S``: works S seconds before finishing.
- ``before: S``: waits S seconds before doing what ``do`` says.
- ``mark: true``: also writes a ``kind: "start"`` record when a delivery begins,
  so deliveries that never finish are counted too.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError
from pymongo.write_concern import WriteConcern

from streamqueue.queue import Job

Document = dict[str, Any]

ENV_URI = "SQ_FAULT_URI"
ENV_DB = "SQ_FAULT_DB"
ENV_RECORDS = "SQ_FAULT_RECORDS"
# "majority" (default) or "1": a record written with w:1 could roll back on a
# failover, so only runs without failover may use it (it is cheaper).
ENV_W = "SQ_FAULT_W"
RECORDER_APPNAME = "sqfault-recorder"

_lock = threading.Lock()
_records: Collection[Document] | None = None


class PoisonError(RuntimeError):
    """What a poison job raises."""


def records() -> Collection[Document]:
    """The record collection, through one client per process (made on first use)."""
    global _records
    with _lock:
        if _records is None:
            w_env = os.environ.get(ENV_W, "majority")
            w: int | str = int(w_env) if w_env.isdigit() else w_env
            client: MongoClient[Document] = MongoClient(
                os.environ[ENV_URI], appname=RECORDER_APPNAME)
            _records = client[os.environ[ENV_DB]].get_collection(
                os.environ.get(ENV_RECORDS, "records"), write_concern=WriteConcern(w=w))
        return _records


def _base(job: Job, kind: str) -> Document:
    # One record per claim and kind, whatever happens to the write.
    return {"_id": f"{job.id}-{job.attempts}-{kind}", "kind": kind, "job_id": job.id,
            "attempt": job.attempts, "pid": os.getpid(), "consumer": job.consumer_id}


def _insert(doc: Document) -> None:
    """Write a record, riding out elections: a record that failed to land would
    make the handler raise, and the redelivery would blur the figures."""
    deadline = time.monotonic() + 60
    while True:
        try:
            records().insert_one(doc)
            return
        except DuplicateKeyError:
            return  # an earlier try landed
        except PyMongoError as exc:
            transient = isinstance(exc, ConnectionFailure) or exc.has_error_label(
                "RetryableWriteError")
            if not transient or time.monotonic() > deadline:
                raise
            threading.Event().wait(0.2)


def record(payload: dict[str, Any], job: Job) -> None:
    if payload.get("mark"):
        _insert(_base(job, "start"))
    before = float(payload.get("before", 0))
    if before > 0:
        threading.Event().wait(before)
    behaviour = payload.get("do")
    if behaviour == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if behaviour == "raise" or (behaviour == "raise_first" and job.attempts == 1):
        raise PoisonError(f"poison job {payload.get('i')} failed on attempt {job.attempts}")
    work = float(payload.get("work", 0))
    if work > 0:
        # An Event wait, not time.sleep: the clock-skew runs patch time.sleep.
        threading.Event().wait(work)
    data = job.data
    _insert({
        **_base(job, "done"),
        "token": job.lease_token,
        "locked_at": data.get("locked_at"),
        "available_at": data.get("available_at"),
        "prev_error": (job.last_error or "")[:300],
        "clock": time.time(),
    })


def noop(payload: dict[str, Any]) -> None:
    """For runs that count completions from the queue alone."""
