"""Scenario 5: poison jobs, one that always raises and one that kills its own process.

Each must reach the error queue after exactly ``max_attempts`` claims, carrying
its last error, while ordinary jobs around them keep completing. That last
error is the job's own exception, or the lease expiry of a process that died:
a dying job kills whatever its process holds, a raising job beside it too, so
one of that job's claims ends by lease expiry, and may never have reached its
handler (deliveries are counted by a record written as each one starts).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from bson import ObjectId

from streamqueue import Queue
from tests.faults.common import log
from tests.faults.conftest import Scene
from tests.faults.evidence import EXPIRED_PREFIX, consumer_pid, gather
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
    death_pids = {p.pid for p in deaths}
    assert death_pids, "no dying job killed its worker: the test proved nothing"
    for oid in poison_ids:
        assert records.count_documents({"job_id": oid, "kind": "done"}) == 0
        assert_buried_as_promised(dead_docs[oid], starts.get(oid, []), MAX_ATTEMPTS, death_pids,
                                  raises=oid in raising_ids)
    # Every process that started a dying job died of it, and no other process
    # died. Two dying jobs can start in one process before either kills it, so
    # deaths are matched by pid, not counted against starts.
    dying_pids = {rec["pid"] for rec in records.find({"kind": "start", "job_id": {"$in": dying_ids}})}
    assert dying_pids == death_pids, (dying_pids, death_pids)
    assert {p.popen.returncode for p in deaths} == {-9}
    assert normal_done_before_last_burial > 0
    assert wait_until(lambda: all(p.alive() for p in fleet.workers(alive=False)
                                  if p not in deaths), timeout=1)


@pytest.mark.timeout(60)
def test_a_raising_job_killed_beside_a_dying_one_is_buried_with_its_lease_expiry(
    scene: Scene
) -> None:
    """The case that once failed the scenario above: a raising job's last claim ended
    by its process's death (a dying job beside it), not by its own exception."""
    coll, records = scene.coll, scene.records
    with Queue(coll, max_attempts=1) as queue:
        # One batch claim takes both: the dying job kills the process while the
        # raising one still waits to raise.
        raising = queue.put({"do": "raise", "before": 30.0, "mark": True, "i": "r"})
        dying = queue.put({"do": "die", "before": 0.5, "mark": True, "i": "d"})
    fleet = scene.fleet()
    fleet.reaper(interval=0.3)
    worker = fleet.worker(concurrency=2, lease=2.0, heartbeat=0.3)
    assert wait_until(lambda: scene.failed.count_documents({}) == 2, timeout=40), fleet.output()
    assert worker.popen.poll() == -9, fleet.output()
    starts = {oid: [r["attempt"] for r in records.find({"kind": "start", "job_id": oid})]
              for oid in (raising, dying)}
    assert starts == {raising: [1], dying: [1]}, starts
    dead_docs = {doc["_id"]: doc for doc in scene.failed.find()}
    assert_buried_as_promised(dead_docs[raising], starts[raising], 1, {worker.pid}, raises=True)
    assert_buried_as_promised(dead_docs[dying], starts[dying], 1, {worker.pid}, raises=False)
    assert dead_docs[raising]["last_error"].startswith(EXPIRED_PREFIX)


def assert_buried_as_promised(doc: Document, runs: list[int], max_attempts: int,
                              death_pids: set[int], *, raises: bool) -> None:
    """What the product promises for a poison job in the error queue.

    Claimed exactly ``max_attempts`` times (``runs``: the attempts whose handler
    started). Its last error is its own exception, or the lease expiry of a
    process that died: a dying job kills everything its process holds, a
    raising job beside it too, which may then never have started that claim.
    """
    assert doc["attempts"] == max_attempts, doc
    assert len(set(runs)) == len(runs) and set(runs) <= set(range(1, max_attempts + 1)), runs
    error = doc["last_error"]
    if error.startswith(EXPIRED_PREFIX):
        assert expired_holder_pid(error) in death_pids, (error, death_pids)
    else:
        assert raises, f"a dying job ended with another error: {error}"
        assert "PoisonError: poison job" in error and f"on attempt {max_attempts}" in error, error
        assert max_attempts in runs, (doc["_id"], runs)


def expired_holder_pid(error: str) -> int | None:
    """The pid of the consumer named in the reaper's ``lease expired while held by ...``."""
    return consumer_pid(error[len(EXPIRED_PREFIX):].strip())
