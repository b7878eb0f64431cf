"""Scenario 5: poison jobs, one that always raises and one that kills its own process.

Each must reach the error queue after exactly ``max_attempts`` deliveries
(counted by a record written as each delivery starts), carrying its last error,
while ordinary jobs around them keep completing.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from bson import ObjectId

from streamqueue import Queue
from tests.faults.common import log
from tests.faults.conftest import Scene
from tests.faults.evidence import EXPIRED_PREFIX, gather
from tests.faults.procs import Proc
from tests.helpers import wait_until

Document = dict[str, Any]

NORMAL = 600
RAISING = 10
DYING = 3
MAX_ATTEMPTS = 3


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_poison_jobs_end_in_the_error_queue_after_max_attempts(scene: Scene) -> None:
    sheet = scene.report("poison")
    coll, records = scene.coll, scene.records
    poison_queue = Queue(coll, max_attempts=MAX_ATTEMPTS)
    # Ordinary jobs get room for redeliveries when a dying job takes their worker down.
    normal_queue = Queue(coll, max_attempts=20)
    raising_ids: list[ObjectId] = []
    dying_ids: list[ObjectId] = []
    normal_ids: list[ObjectId] = []
    # Poison spread through the queue, so ordinary jobs run before, between and after.
    step = NORMAL // (RAISING + DYING)
    poison = [{"do": "raise", "mark": True} for _ in range(RAISING)] + [
        {"do": "die", "mark": True} for _ in range(DYING)]
    for i in range(NORMAL):
        if i % step == 0 and poison:
            payload = {**poison.pop(), "i": f"p{i}"}
            (raising_ids if payload["do"] == "raise" else dying_ids).append(
                poison_queue.put(payload))
        normal_ids.append(normal_queue.put({"i": i, "work": 0.01}))
    assert not poison
    poison_queue.close()
    normal_queue.close()

    fleet = scene.fleet()

    def start_worker() -> Proc:
        return fleet.worker(concurrency=4, lease=3.0, heartbeat=0.5, backoff=0.2)

    fleet.reaper(interval=0.5)
    start_worker()
    start_worker()
    started = time.monotonic()
    deaths: list[Proc] = []
    while coll.count_documents({}, limit=1):
        assert time.monotonic() - started < 150, (
            f"queue not drained: {coll.count_documents({})} left\n{fleet.output()[-4000:]}")
        deaths += fleet.replace_dead_workers(start_worker)
        time.sleep(0.1)
    elapsed = time.monotonic() - started

    poison_ids = set(raising_ids) | set(dying_ids)
    evidence = gather(coll, records, [*normal_ids, *poison_ids], expected_dead=poison_ids,
                      killed_pids=fleet.killed_pids)
    starts: dict[Any, list[int]] = {}
    for rec in records.find({"kind": "start"}):
        starts.setdefault(rec["job_id"], []).append(rec["attempt"])
    dead_docs = {doc["_id"]: doc for doc in scene.failed.find()}
    last_burial = max(doc["failed_at"] for doc in dead_docs.values())
    normal_done_before_last_burial = records.count_documents(
        {"kind": "done", "locked_at": {"$lt": last_burial}})
    sheet.update(evidence.figures())
    sheet.update({
        "normal_jobs": NORMAL, "raising_jobs": RAISING, "dying_jobs": DYING,
        "max_attempts": MAX_ATTEMPTS, "worker_deaths": len(deaths),
        "handler_runs_per_raising_job": sorted({len(starts.get(k, [])) for k in raising_ids}),
        "handler_runs_per_dying_job": sorted({len(starts.get(k, [])) for k in dying_ids}),
        "normal_completions_before_last_burial": normal_done_before_last_burial,
        "run_seconds": round(elapsed, 1),
    })
    log(f"poison: {sheet.figures}")

    evidence.assert_sound()
    assert evidence.completed == NORMAL
    assert set(dead_docs) == poison_ids
    for oid in poison_ids:
        # Claimed exactly max_attempts times, and never finished.
        assert dead_docs[oid]["attempts"] == MAX_ATTEMPTS
        assert records.count_documents({"job_id": oid, "kind": "done"}) == 0
    for oid in raising_ids:
        assert sorted(starts.get(oid, [])) == [1, 2, 3], (oid, starts.get(oid))
        error = dead_docs[oid]["last_error"]
        assert "PoisonError: poison job" in error and "on attempt 3" in error, error
    for oid in dying_ids:
        # A dying job's claim can also end unstarted: a second dying job in
        # the same process killed it first. That claim still counts.
        assert set(starts.get(oid, [])) <= {1, 2, 3} and starts.get(oid), (oid, starts.get(oid))
        assert dead_docs[oid]["last_error"].startswith(EXPIRED_PREFIX), dead_docs[oid]
    # Every process that started a dying job died of it, and no other process
    # died. Two dying jobs can start in one process before either kills it, so
    # deaths are matched by pid, not counted against starts.
    dying_pids = {rec["pid"] for rec in records.find({"kind": "start", "job_id": {"$in": dying_ids}})}
    assert dying_pids == {p.pid for p in deaths}, (dying_pids, [p.pid for p in deaths])
    assert {p.popen.returncode for p in deaths} == {-9}
    assert normal_done_before_last_burial > 0
    assert wait_until(lambda: all(p.alive() for p in fleet.workers(alive=False)
                                  if p not in deaths), timeout=1)
