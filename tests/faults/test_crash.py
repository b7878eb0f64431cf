"""Scenario 1: worker processes SIGKILLed every second while 5,000 jobs flow.

Four real worker processes and a reaper; once a second the longest-running
worker is killed (SIGKILL: no signal handler, no release, its leases simply
stop being extended) and a new one started. Every job must complete; a job
may run twice only if the worker that first finished it was killed before its
completion landed (its lease then expired and the reaper handed it on).
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from pymongo.collection import Collection

from streamqueue import Queue
from streamqueue.storage import READY
from tests.faults.common import enqueue, log
from tests.faults.conftest import Scene
from tests.faults.evidence import consumer_pid, gather
from tests.helpers import wait_until

Document = dict[str, Any]

JOBS = 5000
WORKERS = 4
CONCURRENCY = 4
LEASE = 6.0
HEARTBEAT = 0.5
KILL_EVERY = 1.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkilled_workers_lose_nothing(scene: Scene) -> None:
    sheet = scene.report("crash")
    coll, records = scene.coll, scene.records
    # Generous attempts: a job may be held by several killed workers in a row,
    # and this scenario is about redelivery, not the error queue.
    producer = Queue(coll, max_attempts=10)
    ids = enqueue(producer.put_many, ({"i": i, "work": 0.01} for i in range(JOBS)))
    producer.close()

    fleet = scene.fleet()
    rng = random.Random(1)
    reaper = fleet.reaper(interval=0.5)
    for _ in range(WORKERS):
        fleet.worker(concurrency=CONCURRENCY, lease=LEASE, heartbeat=HEARTBEAT)
    started = time.monotonic()
    kills = 0
    startups: list[float] = []
    stranded: set[str] = set()
    next_kill = started + KILL_EVERY
    # Kill while there is still work to hand out; then let the tail finish.
    while coll.count_documents({"state": READY}, limit=1):
        assert time.monotonic() - started < 180, "jobs stopped flowing"
        time.sleep(max(0.0, next_kill - time.monotonic()))
        next_kill += KILL_EVERY
        alive = fleet.workers()
        # A worker that is consuming holds jobs; one still starting up would
        # make the kill a no-op. Among the ready ones, a seeded random pick.
        ready = [p for p in alive if p.ready()]
        victim = rng.choice(ready) if ready else min(alive, key=lambda p: p.started)
        fleet.kill(victim)
        startups += [p.ready_at - p.started for p in ready if p.ready_at is not None]
        kills += 1
        stranded |= claims_of(coll, fleet.killed_pids)
        fleet.worker(concurrency=CONCURRENCY, lease=LEASE, heartbeat=HEARTBEAT)
    killing_done = time.monotonic()
    log(f"crash: {kills} kills in {killing_done - started:.1f}s; waiting for the tail")

    def drained() -> bool:
        stranded.update(claims_of(coll, fleet.killed_pids))
        return coll.count_documents({}) == 0

    assert wait_until(drained, timeout=90, interval=0.2), (
        f"queue not drained: {coll.count_documents({})} left\n{fleet.output()[-4000:]}")
    elapsed = time.monotonic() - started
    assert reaper.alive(), reaper.output()

    evidence = gather(coll, records, ids, killed_pids=fleet.killed_pids)
    sheet.update(evidence.figures())
    sheet.update({
        "workers": WORKERS, "concurrency": CONCURRENCY, "lease_seconds": LEASE,
        "kills": kills, "kill_every_seconds": KILL_EVERY,
        "run_seconds": round(elapsed, 1), "jobs_per_second": round(JOBS / elapsed),
        "tail_seconds": round(time.monotonic() - killing_done, 1),
        "worker_startup_seconds_max": round(max(startups, default=0.0), 2),
        "claims_stranded_by_kills": len(stranded),
    })
    log(f"crash: {sheet.figures}")
    evidence.assert_sound()
    assert evidence.completed == JOBS
    # Every redelivery is a claim a killed worker held. Not "one per slot": a
    # killed worker also holds jobs whose handler finished but whose bulk
    # completion had not landed, and a claim still in flight when it died.
    assert evidence.redeliveries <= len(stranded), (evidence.redeliveries, len(stranded))
    assert evidence.redelivered_jobs > 0, "no kill struck a running job: the test proved nothing"
    assert not evidence.expired_live, f"live workers lost leases: {evidence.expired_live}"


def claims_of(coll: Collection[Document], pids: set[int]) -> set[str]:
    """Lease tokens of the jobs locked now by the consumers of ``pids`` (all dead).

    A dead worker's claims stay locked for at least ``LEASE - HEARTBEAT``
    seconds after its death, so a look every second sees each one,
    including a claim that landed on the server after the process was gone.
    """
    held = coll.find({"state": "locked"}, {"consumer_id": 1, "lease_token": 1})
    return {doc["lease_token"] for doc in held if consumer_pid(doc["consumer_id"]) in pids}
