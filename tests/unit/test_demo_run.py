"""The demo's crash accounting, without MongoDB or subprocesses."""

from __future__ import annotations

from bson import ObjectId

from streamqueue.demo import run
from streamqueue.demo.run import Delivery, expired_holder, orphaned_jobs

# -- the crash accounting -----------------------------------------------------------------


def delivery(job_id: ObjectId, attempt: int, prev_error: str = "") -> Delivery:
    return run._delivery({"job_id": job_id, "attempt": attempt, "consumer": "demo-worker-2",
                          "wait": 0.01, "prev_error": prev_error,
                          "lease_expired": attempt > 1 and prev_error.startswith("lease expired")})


def test_expired_holder_reads_the_reapers_note() -> None:
    assert expired_holder("lease expired while held by demo-worker-1") == "demo-worker-1"
    assert expired_holder("lease expired while held by demo-worker-10") == "demo-worker-10"
    assert expired_holder("Traceback ...\nDemoFailure: job x") is None
    assert expired_holder("") is None


def test_a_claim_that_landed_after_the_look_at_the_kill_is_an_orphan_too() -> None:
    # Seen at the kill: a. b was claimed by the victim's last claim, which the
    # server committed after the look (seen in a run: "redelivered 2, orphaned 1").
    a, b, c, d = ObjectId(), ObjectId(), ObjectId(), ObjectId()
    deliveries = [
        delivery(a, 1), delivery(a, 2, "lease expired while held by demo-worker-1"),
        delivery(b, 2, "lease expired while held by demo-worker-1"),
        # c's lease expired on a live worker: not the killed worker's orphan.
        delivery(c, 1), delivery(c, 2, "lease expired while held by demo-worker-2"),
        delivery(d, 1), delivery(d, 2, "Traceback ...\nDemoFailure: job d"),
    ]
    buried = ObjectId()
    dead = [{"_id": buried, "last_error": "lease expired while held by demo-worker-1"},
            {"_id": ObjectId(), "last_error": "DemoFailure: poison"}]
    orphans = orphaned_jobs({a}, "demo-worker-1", deliveries, dead)
    assert orphans == {a, b, buried}
    from_victim = [x for x in deliveries if x.expired_holder == "demo-worker-1"]
    assert len(from_victim) <= len(orphans)
