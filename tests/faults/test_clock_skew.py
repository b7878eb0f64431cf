"""Scenario 4: a worker and a reaper whose wall clocks are an hour ahead or behind.

Both run under ``faketime`` (only the wall clock moves; see ``skewed.py``).
Leases and delays are judged by the server's ``$$NOW``, so the skewed
processes must not take over leases another consumer holds, must not claim
delayed jobs early (or an hour late), and must complete ordinary jobs as usual.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from pymongo import MongoClient

from streamqueue import Job, Queue
from streamqueue.testing import ReplicaSet
from tests.faults.common import FAULT_DB, log
from tests.faults.conftest import Report
from tests.faults.evidence import gather
from tests.faults.procs import SKEW_SHIM, Fleet
from tests.helpers import wait_until
from tests.skew import faketime_prefix, libfaketime

Document = dict[str, Any]

HELD = 20
DELAYED = 20
IMMEDIATE = 200
DELAY = 4.0
SKEWS = {"+1h": 3600.0, "-1h": -3600.0}


def faketime_works() -> str | None:
    """None if ``faketime`` moves a Python process's clock here; else why not."""
    if libfaketime() is None:
        return "libfaketime is not installed (Debian package 'faketime'; `make test` installs it)"
    probe = subprocess.run(
        [*faketime_prefix("+1h"), "python3", "-c", "import time; print(time.time())"],
        capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        return f"faketime does not run here: {probe.stderr.strip()[:200]}"
    if abs(float(probe.stdout) - time.time() - 3600) > 60:
        return "faketime runs but does not move Python's time.time() here"
    return None


def server_time(client: MongoClient[Document]) -> datetime:
    now: datetime = client.admin.command("hello")["localTime"]
    return now


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("offset", list(SKEWS))
def test_a_skewed_worker_and_reaper_respect_server_time(
    offset: str,
    fault_rs: ReplicaSet,
    fault_client: MongoClient[Document],
    queue_name: str,
    fleet_factory: Callable[..., Fleet],
    report: Callable[[str], Report],
) -> None:
    reason = faketime_works()
    if reason is not None:
        pytest.skip(reason)
    sheet = report(f"clock_skew_{'ahead' if offset.startswith('+') else 'behind'}")
    coll = fault_client[FAULT_DB][queue_name]
    records = fault_client[FAULT_DB][f"{queue_name}.records"]

    # Leases held by a healthy consumer with a correct clock, for 2 minutes.
    holder = Queue(coll, lease=120.0)
    holder.put_many([{"i": f"held{i}"} for i in range(HELD)])
    held: list[Job] = holder.next_batch(HELD)
    assert len(held) == HELD

    fleet = fleet_factory(fault_rs.uri, queue_name)
    prefix = faketime_prefix(offset)
    worker = fleet.worker(concurrency=4, lease=5.0, heartbeat=1.0, prefix=prefix,
                          python=SKEW_SHIM)
    reaper = fleet.reaper(interval=0.3, prefix=prefix, python=SKEW_SHIM, log_level="DEBUG")
    assert worker.wait_for_output(" consuming ", 60), fleet.output()

    # Ordinary jobs, then delayed ones (due DELAY seconds after the put, by the
    # server's clock) while the skewed worker sits idle.
    immediate_ids = holder.put_many([{"i": i} for i in range(IMMEDIATE)])
    assert wait_until(lambda: records.count_documents({"job_id": {"$in": immediate_ids}})
                      == IMMEDIATE, timeout=60, interval=0.1), fleet.output()[-4000:]
    put_at = time.monotonic()
    delayed_ids = holder.put_many([{"i": f"delayed{i}"} for i in range(DELAYED)], delay=DELAY)
    assert wait_until(lambda: records.count_documents({"job_id": {"$in": delayed_ids}})
                      == DELAYED, timeout=DELAY + 30, interval=0.05), fleet.output()[-4000:]
    delayed_done_after = time.monotonic() - put_at

    # The healthy consumer still holds every lease it took, untouched.
    still_held = coll.count_documents({"$or": [
        {"_id": job.id, "lease_token": job.lease_token, "state": "locked", "attempts": 1}
        for job in held]})
    reaper_passes = reaper.output().count("reaped 0;")
    for job in held:
        job.complete()  # raises LeaseLost if anyone had taken it
    holder.close()
    # A record is written just before its job's completion lands.
    assert wait_until(lambda: coll.count_documents({}) == 0, timeout=30, interval=0.05)

    delayed = list(records.find({"job_id": {"$in": delayed_ids}}))
    claimed_early = [r for r in delayed if r["locked_at"] < r["available_at"]]
    claim_delay = [(r["locked_at"] - r["available_at"]).total_seconds() for r in delayed]
    skew_seen = [r["clock"] - r["locked_at"].timestamp() for r in records.find(
        {}, {"clock": 1, "locked_at": 1}).limit(50)]
    mean_skew = sum(skew_seen) / len(skew_seen)
    evidence = gather(coll, records, [*immediate_ids, *delayed_ids])
    sheet.update(evidence.figures())
    sheet.update({
        "offset": offset, "worker_clock_minus_server_seconds": round(mean_skew),
        "held_leases": HELD, "held_leases_untouched": still_held,
        "delayed_jobs": DELAYED, "delay_seconds": DELAY,
        "delayed_claimed_before_due": len(claimed_early),
        "delayed_claim_lateness_seconds_max": round(max(claim_delay), 3),
        "delayed_all_done_after_seconds": round(delayed_done_after, 2),
        "skewed_reaper_passes": reaper_passes,
    })
    log(f"clock skew {offset}: {sheet.figures}")

    assert abs(mean_skew - SKEWS[offset]) < 120, "the worker did not run with a skewed clock"
    assert still_held == HELD, "a skewed process took over a live lease"
    assert reaper_passes >= 3, reaper.output()[-3000:]
    # locked_at is the server's $$NOW; available_at the server's clock as the producer
    # estimated it (hello.localTime + monotonic time): no client wall clock in either.
    assert not claimed_early, f"delayed jobs claimed before they were due: {claimed_early}"
    assert max(claim_delay) < 3.0, "delayed jobs were claimed late"
    evidence.assert_sound()
    assert evidence.completed == IMMEDIATE + DELAYED
    assert evidence.duplicates == 0 and evidence.redeliveries == 0
    assert worker.alive() and reaper.alive(), fleet.output()[-4000:]
