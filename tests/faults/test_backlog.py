"""Found by the soak: workers sharing a backlog must all keep working.

Every worker's batch claim reads the same head of the queue, so concurrent
claims collide. A claim that comes back short because another consumer took
its candidates says nothing about the queue being drained; a worker that
takes it that way waits for a wake-up that a backlog never sends (no new
inserts), until its 30 s sweep. Seen before the fix: of 2,000 queued jobs of
50 ms, one worker ran 1,932 and three ran 2, 11 and 55 (28 s instead of 11 s).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from streamqueue import Queue
from tests.faults.common import enqueue, log
from tests.faults.conftest import Scene
from tests.helpers import wait_until

Document = dict[str, Any]

JOBS = 2000
WORKERS = 4


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_workers_sharing_a_backlog_all_keep_working(scene: Scene) -> None:
    sheet = scene.report("backlog_shared")
    coll, records = scene.coll, scene.records
    fleet = scene.fleet(record_w="1")
    workers = [fleet.worker(concurrency=4, lease=30.0) for _ in range(WORKERS)]
    assert all(w.wait_for_output(" consuming ", 60) for w in workers), fleet.output()
    # The backlog arrives in two inserts; after them nothing wakes anyone. 50 ms
    # of work per job: the run is bound by the workers' slots, not the CPU, so
    # each worker should get about a quarter of the jobs.
    started = time.monotonic()
    producer = Queue(coll)
    enqueue(producer.put_many, ({"i": i, "work": 0.05} for i in range(JOBS)))
    producer.close()
    assert wait_until(lambda: coll.count_documents({}) == 0, timeout=120, interval=0.2), (
        f"{coll.count_documents({})} left")
    elapsed = time.monotonic() - started
    by_pid = {doc["_id"]: doc["n"] for doc in records.aggregate(
        [{"$group": {"_id": "$pid", "n": {"$sum": 1}}}])}
    shares = sorted(by_pid.get(w.pid, 0) for w in workers)
    sheet.update({"jobs": JOBS, "workers": WORKERS, "jobs_per_worker": shares,
                  "run_seconds": round(elapsed, 1)})
    log(f"backlog: {sheet.figures}")
    assert sum(shares) == JOBS
    # An even split is 25 % each.
    assert shares[0] >= JOBS * 0.10, f"a worker sat idle beside a backlog: {shares}"
