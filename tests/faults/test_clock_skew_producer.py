"""Scenario 4b: producers whose wall clocks are an hour ahead or behind.

Enqueue is a plain insert dated by ``ServerClock`` (the server's
``hello.localTime`` carried forward by the monotonic clock), not by ``$$NOW``.
Each job here is put by its own ``python -m streamqueue put`` process under
``faketime`` (wall clock moved, monotonic clock not: see ``skewed.py``), so
each put anchors afresh. The server itself says when each insert committed
(the change event's ``wallTime``) and when each job was claimed (``locked_at``,
``$$NOW``): delayed jobs must fall due ``DELAY`` seconds after their put by
that clock, immediate ones must be claimable at once, neither an hour off.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId
from pymongo.collection import Collection

from streamqueue import Job, Queue
from tests.faults.common import FAULT_DB, log
from tests.faults.conftest import Scene
from tests.faults.procs import REPO_ROOT, SKEW_SHIM, cli_env
from tests.faults.test_clock_skew import SKEWS, faketime_works
from tests.helpers import Background
from tests.skew import faketime_prefix

Document = dict[str, Any]

PUTS = 3  # of each kind, one process each
DELAY = 2.0
# How far a job's dates may trail the server's clock at its insert: the
# estimate lags by the anchor's hello round trip plus a millisecond (and the
# time from the estimate to the insert's commit, a few ms), never more.
LAG_LIMIT = timedelta(milliseconds=250)
# The estimate never runs ahead of the server; both clocks here are one host's,
# so only millisecond truncation can put a date a hair past the commit's.
AHEAD_LIMIT = timedelta(milliseconds=2)


def skewed_put(scene: Scene, offset: str, payload: Document, *, delay: float,
               priority: int) -> tuple[ObjectId, float]:
    """``streamqueue put`` in a process whose wall clock is ``offset`` off; its id and run time."""
    started = time.monotonic()
    run = subprocess.run(
        [*faketime_prefix(offset), sys.executable, *SKEW_SHIM, "-m", "streamqueue", "put",
         json.dumps(payload), "--uri", scene.rs.uri, "--db", FAULT_DB, "--queue", scene.queue_name,
         "--delay", str(delay), "--priority", str(priority)],
        cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return ObjectId(run.stdout.strip().splitlines()[-1]), time.monotonic() - started


def commit_times(coll: Collection[Document], resume_after: Mapping[str, Any],
                 ids: list[ObjectId]) -> dict[ObjectId, datetime]:
    """The server's wall time of each job's insert, from the change stream opened before the puts."""
    times: dict[ObjectId, datetime] = {}
    with coll.watch([{"$match": {"operationType": "insert"}}], resume_after=resume_after,
                    max_await_time_ms=500) as stream:
        deadline = time.monotonic() + 30
        while len(times) < len(ids) and time.monotonic() < deadline:
            event = stream.try_next()
            if event is not None:
                times[event["documentKey"]["_id"]] = event["wallTime"]
    assert set(ids) <= set(times), "not every put reached the change stream"
    return {job_id: times[job_id] for job_id in ids}


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("offset", list(SKEWS))
def test_skewed_producers_date_jobs_by_the_server_clock(offset: str, scene: Scene) -> None:
    reason = faketime_works()
    if reason is not None:
        pytest.skip(reason)
    sheet = scene.report(f"clock_skew_producer_{'ahead' if offset.startswith('+') else 'behind'}")
    coll = scene.coll
    consumer = Queue(coll, lease=60.0, max_await=1.0)
    consumer.store.ensure_indexes()
    # Opened (and its position kept) before the first put: every insert's
    # commit time can be read back afterwards.
    with coll.watch([{"$match": {"operationType": "insert"}}]) as stream:
        stream.try_next()
        start_token = stream.resume_token
    assert start_token is not None

    # Immediate jobs: each is claimed by a one-shot claim right after its put.
    # Under a wall clock an hour ahead, it would be an hour in the future.
    immediate: list[Job] = []
    put_seconds: list[float] = []
    for n in range(PUTS):
        job_id, took = skewed_put(scene, offset, {"kind": "now", "n": n}, delay=0.0, priority=1)
        put_seconds.append(took)
        job = consumer.next()
        assert job is not None, f"job {job_id} from a {offset} producer was not claimable at once"
        assert job.id == job_id
        immediate.append(job)

    # Delayed jobs: a correct consumer waits for them while they are put.
    delayed_ids: list[ObjectId] = []

    def collect() -> list[Job]:
        got: list[Job] = []
        deadline = time.monotonic() + 60
        while len(got) < PUTS and time.monotonic() < deadline:
            job = consumer.next(timeout=deadline - time.monotonic())
            if job is not None:
                got.append(job)
        return got

    waiter = Background(collect, name="delayed-consumer").start()
    for n in range(PUTS):
        job_id, took = skewed_put(scene, offset, {"kind": "later", "n": n}, delay=DELAY, priority=0)
        put_seconds.append(took)
        delayed_ids.append(job_id)
    delayed: list[Job] = waiter.join(DELAY + 60)
    for job in [*immediate, *delayed]:
        job.complete()
    consumer.close()
    assert sorted(job.id for job in delayed) == sorted(delayed_ids)

    jobs = [*immediate, *delayed]
    committed = commit_times(coll, start_token, [job.id for job in jobs])
    rows = []
    for job in jobs:
        doc = job.data
        delay = timedelta(seconds=DELAY if job.payload["kind"] == "later" else 0.0)
        rows.append({
            "kind": job.payload["kind"],
            # The producer's wall clock, as ObjectId() stamped it: proof of the skew.
            "producer_clock_minus_server_s": round(
                (job.id.generation_time.replace(tzinfo=None) - committed[job.id]).total_seconds()),
            # How far the job's dates trail the insert's commit (server clock).
            "dates_behind_commit_ms": round(
                (committed[job.id] - doc["enqueued_at"]).total_seconds() * 1000, 1),
            "due_after_commit_s": round((doc["available_at"] - committed[job.id]).total_seconds(), 3),
            "stored_delay_s": (doc["available_at"] - doc["enqueued_at"]).total_seconds(),
            "claimed_after_due_s": round((doc["locked_at"] - doc["available_at"]).total_seconds(), 3),
            "expected_delay": delay,
        })
    sheet.update({
        "offset": offset, "puts": len(rows), "delay_seconds": DELAY,
        "put_process_seconds_max": round(max(put_seconds), 2),
        "producer_clock_minus_server_seconds": sorted(
            {r["producer_clock_minus_server_s"] for r in rows}),
        "dates_behind_commit_ms_max": max(r["dates_behind_commit_ms"] for r in rows),
        "dates_behind_commit_ms_min": min(r["dates_behind_commit_ms"] for r in rows),
        "delayed_due_after_commit_seconds": [r["due_after_commit_s"] for r in rows
                                             if r["kind"] == "later"],
        "claimed_after_due_seconds_max": max(r["claimed_after_due_s"] for r in rows),
    })
    log(f"producer clock skew {offset}: {sheet.figures}")

    for row in rows:
        # The producers really ran an hour off (their ObjectIds carry their wall clock).
        assert abs(row["producer_clock_minus_server_s"] - SKEWS[offset]) < 120, row
        # Dated by the server's clock at the put: not ahead of the commit, not
        # more than LAG_LIMIT behind it, and exactly the delay apart.
        behind = timedelta(milliseconds=row["dates_behind_commit_ms"])
        assert -AHEAD_LIMIT <= behind <= LAG_LIMIT, row
        assert row["stored_delay_s"] == row["expected_delay"].total_seconds(), row
        # Due ~delay after the put by the server's clock, within the same bounds.
        due_after = timedelta(seconds=row["due_after_commit_s"])
        assert row["expected_delay"] - LAG_LIMIT <= due_after <= row["expected_delay"] + AHEAD_LIMIT, row
        # Never claimed before due ($$NOW at the claim), and not an hour late.
        assert 0 <= row["claimed_after_due_s"] < 3.0, row
