"""Scenario 2: primary failover on a three-member replica set while 5,000 jobs flow.

Producers, workers and a reaper keep running through a ``replSetStepDown`` and,
in a second run, a SIGKILL of the primary's ``mongod``. Nothing is restarted.
Write concern is majority (the library's default), so no acknowledged write
can roll back: nothing may be lost. Reported: how long until jobs flow again.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from streamqueue import Queue
from streamqueue.testing import ReplicaSet
from tests.faults.common import FAULT_DB, change_streams, log
from tests.faults.conftest import Report
from tests.faults.evidence import gather
from tests.faults.procs import Fleet
from tests.helpers import wait_until

Document = dict[str, Any]

JOBS = 5000
WORKERS = 3
LEASE = 15.0
FAIL_AFTER = 2000  # jobs produced before the failover
TARGET_RECOVERY = 15.0


class Producer:
    """Enqueues ``total`` jobs in batches at a steady pace from its own client."""

    def __init__(self, uri: str, queue_name: str, total: int, batch: int = 50,
                 tick: float = 0.25) -> None:
        self.client: MongoClient[Document] = MongoClient(uri)
        self.queue = Queue(self.client[FAULT_DB][queue_name])
        self.total = total
        self.batch = batch
        self.tick = tick
        self.ids: list[ObjectId] = []
        self.error: BaseException | None = None
        self.slowest_put = 0.0
        self.thread = threading.Thread(target=self._run, name="producer", daemon=True)

    def _run(self) -> None:
        try:
            next_at = time.monotonic()
            while len(self.ids) < self.total:
                count = min(self.batch, self.total - len(self.ids))
                start = len(self.ids)
                t0 = time.monotonic()
                self.ids += self.queue.put_many(
                    [{"i": start + k, "work": 0.005} for k in range(count)])
                self.slowest_put = max(self.slowest_put, time.monotonic() - t0)
                next_at += self.tick
                time.sleep(max(0.0, next_at - time.monotonic()))
        except BaseException as exc:
            self.error = exc

    def close(self) -> None:
        self.thread.join(120)
        self.queue.close()
        self.client.close()


def utc_seconds(moment: datetime) -> float:
    return moment.replace(tzinfo=timezone.utc).timestamp()


def run_failover(
    how: str,
    rs: ReplicaSet,
    queue_name: str,
    fleet_factory: Callable[..., Fleet],
    sheet: Report,
) -> None:
    client: MongoClient[Document] = MongoClient(rs.uri)
    try:
        _run_failover(how, rs, client, queue_name, fleet_factory, sheet)
    finally:
        client.close()


def _run_failover(
    how: str,
    rs: ReplicaSet,
    client: MongoClient[Document],
    queue_name: str,
    fleet_factory: Callable[..., Fleet],
    sheet: Report,
) -> None:
    coll = client[FAULT_DB][queue_name]
    records = client[FAULT_DB][f"{queue_name}.records"]
    fleet = fleet_factory(rs.uri, queue_name)
    fleet.reaper(interval=1.0)
    workers = [fleet.worker(concurrency=4, lease=LEASE, heartbeat=1.0) for _ in range(WORKERS)]
    assert all(w.wait_for_output(" consuming ", 60) for w in workers), fleet.output()
    producer = Producer(rs.uri, queue_name, JOBS)
    producer.thread.start()
    assert wait_until(lambda: len(producer.ids) >= FAIL_AFTER or producer.error is not None,
                      timeout=120, interval=0.05)
    # Jobs must be flowing when the primary goes.
    assert wait_until(lambda: records.estimated_document_count() > 200, timeout=60)

    old = rs.primary()
    t0 = time.time()
    m0 = time.monotonic()
    if how == "stepdown":
        # 60 s: the old primary (priority 2) may not take the role back during the run.
        direct: MongoClient[Document] = MongoClient(rs.direct_uri(old),
                                                    serverSelectionTimeoutMS=5000)
        with direct:
            try:
                direct.admin.command("replSetStepDown", 60, secondaryCatchUpPeriodSecs=10)
            except PyMongoError as exc:  # the stepdown may drop this very connection
                log(f"failover: replSetStepDown answered {exc!r}")
    else:
        old.kill()
    new_host = wait_until(lambda: rs.wait_for_primary(60) != old.host, timeout=60, interval=0.05)
    elected = time.monotonic() - m0
    seen_at = datetime.now(timezone.utc).replace(tzinfo=None)
    new_primary = rs.wait_for_primary(5)
    assert new_host and new_primary != old.host
    log(f"failover ({how}): {new_primary} is primary after {elected:.1f}s")

    # Jobs flow again: the first completion of a job claimed (server clock, same
    # host) after the test saw the new primary, counted from the failover.
    # Conservative: the test polls for the new primary every 50 ms or so.
    def first_flow() -> float | None:
        rec = records.find_one({"kind": "done", "locked_at": {"$gt": seen_at}},
                               sort=[("clock", 1)])
        return None if rec is None else float(rec["clock"]) - t0

    assert wait_until(lambda: first_flow() is not None, timeout=60, interval=0.05), (
        fleet.output()[-6000:])
    producer.close()
    assert producer.error is None, f"the producer failed: {producer.error!r}"
    assert wait_until(lambda: coll.count_documents({}) == 0, timeout=120, interval=0.2), (
        f"{coll.count_documents({})} jobs left\n{fleet.output()[-6000:]}")
    run_seconds = time.monotonic() - m0
    recovery = first_flow()
    assert recovery is not None

    # Each worker still follows one change stream. Not necessarily on the new
    # primary: since 4.2 a stepdown kills writes only, so a stream's cursor may
    # live on, and keep delivering, on the member that is now a secondary.
    def live_streams() -> int:
        return sum(change_streams(member_client, coll.full_name).live
                   for member_client in member_clients)

    member_clients: list[MongoClient[Document]] = [
        MongoClient(rs.direct_uri(m), serverSelectionTimeoutMS=5000)
        for m in rs.members if m.alive()]
    try:
        streams_ok = wait_until(lambda: live_streams() == WORKERS, timeout=30, interval=0.2)
        streams = live_streams()
    finally:
        for member_client in member_clients:
            member_client.close()
    evidence = gather(coll, records, producer.ids, killed_pids=fleet.killed_pids)
    per_second = Counter(math.floor(rec["clock"] - t0) for rec in records.find(
        {"kind": "done"}, {"clock": 1}) if -3 <= rec["clock"] - t0 < 15)
    output = fleet.output()
    sheet.update(evidence.figures())
    sheet.update({
        "failover": how, "workers": WORKERS, "lease_seconds": LEASE,
        "jobs_before_failover": FAIL_AFTER,
        "new_primary_after_seconds": round(elected, 2),
        "jobs_flowing_again_after_seconds": round(recovery, 2),
        "completions_per_second_around_failover": [per_second.get(s, 0) for s in range(-3, 15)],
        "slowest_enqueue_seconds": round(producer.slowest_put, 2),
        "change_streams_live_after": streams,
        "stream_recoveries_logged": output.count("push wake-ups resumed"),
        "retries_logged": output.count("retrying:"),
        "run_seconds_from_failover": round(run_seconds, 1),
    })
    log(f"failover ({how}): {sheet.figures}")
    evidence.assert_sound()
    assert evidence.completed == len(producer.ids) == JOBS
    assert evidence.duplicates == 0, f"a completion was lost in the failover\n{output[-6000:]}"
    assert not evidence.expired_live, "a live worker lost its lease in the failover"
    assert recovery < TARGET_RECOVERY, f"jobs flowed again only after {recovery:.1f}s"
    assert all(w.alive() for w in workers), output[-4000:]
    assert streams_ok, f"{streams} change streams on the new primary for {WORKERS} workers"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_primary_stepdown_loses_nothing(
    rs3: ReplicaSet,
    queue_name: str,
    fleet_factory: Callable[..., Fleet],
    report: Callable[[str], Report],
) -> None:
    run_failover("stepdown", rs3, queue_name, fleet_factory, report("failover_stepdown"))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_primary_sigkill_loses_nothing(
    rs3: ReplicaSet,
    queue_name: str,
    fleet_factory: Callable[..., Fleet],
    report: Callable[[str], Report],
) -> None:
    run_failover("sigkill", rs3, queue_name, fleet_factory, report("failover_sigkill"))
