"""The herd across processes (issue 16): N worker processes on one queue, claims counted per job.

Each consumer is a process of its own running a ``Worker`` with ``slots``
slots, as a deployment of N pods would. Two modes: a trickle (all idle, a
producer process paced at ``interval``) and a backlog (the jobs enqueued
first, every worker started together). Every process counts the claim
commands its client sends (``findAndModify``, and the ``update`` of a batch
claim: writes whose filter selects ready jobs), so the cost is counted where
it is paid, whatever the claim's shape.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from streamqueue.bench.common import BenchContext, Percentiles
from streamqueue.bench.consumers import KIND_FLOOR, KIND_PUSH, REAL_JOBS, put_jobs
from streamqueue.bench.procs import Child, children, go_all

TRICKLE = "trickle"
BACKLOG = "backlog"
# The two designs side by side: every process claims on every event (HERD, the
# baseline: Queue(fleet=None)), or the fleet view decides who claims (FLEET).
HERD = "herd"
FLEET = "fleet"
# The floor of a trickle (bare pymongo, no queue): every process claims on every insert
# event (FLOOR_ALL), or only the one a hash of the job's id names (FLOOR_OWNER). FLOOR_VIEW
# is FLOOR_OWNER on a stream that also carries every claim and settle, as a fleet member's
# must to know whose slots are free: what hearing the fleet's state costs, with no view.
FLOOR_ALL = "floor-all"
FLOOR_OWNER = "floor-owner"
FLOOR_VIEW = "floor-view"
TRICKLE_FLOORS = (FLOOR_ALL, FLOOR_OWNER, FLOOR_VIEW)
# The floor of a backlog (bare pymongo, no stream): every process claims and deletes until
# its claim comes back empty, one job per ``find_one_and_update`` (FLOOR_DRAIN) or
# ``DRAIN_BATCH`` per batch claim, as the Worker's default claims take them (FLOOR_DRAIN_BATCH).
FLOOR_DRAIN = "floor-drain"
FLOOR_DRAIN_BATCH = "floor-drain-batch"
DRAIN_BATCH = 16
BACKLOG_FLOORS = (FLOOR_DRAIN, FLOOR_DRAIN_BATCH)
FLOORS = (*TRICKLE_FLOORS, *BACKLOG_FLOORS)


@dataclass
class FleetRow:
    mode: str
    processes: int
    slots: int
    jobs: int
    interval_ms: float  # between arrivals; 0 for a backlog
    seconds: float
    jobs_per_s: float
    claims_per_job: float  # claim commands every process sent, per job delivered
    wasted_per_job: float  # the claim_empty hook: a wake-up whose claim found nothing
    latency: Percentiles  # enqueue to claim
    lost: int
    duplicates: int
    other_cpu: float | None = None
    errors: list[str] = field(default_factory=list)
    design: str = HERD

    @property
    def label(self) -> str:
        return f"{self.processes} procs x {self.slots} slot{'s' if self.slots > 1 else ''}"


def fleet_herd(ctx: BenchContext, processes: int, slots: int, *, jobs: int, interval: float,
               stall_timeout: float = 30.0, design: str = HERD) -> FleetRow:
    """``processes`` worker processes of ``slots`` slots; a trickle if ``interval`` > 0;
    each a fleet member when ``design`` is ``FLEET``."""
    mode = TRICKLE if interval > 0 else BACKLOG
    cpu = ctx.cpu_start()
    with ctx.scratch("fleet") as coll:
        if mode == BACKLOG:
            put_jobs(KIND_FLOOR if design in BACKLOG_FLOORS else KIND_PUSH, coll, jobs)
        with children(_specs(ctx, coll.name, processes, slots, mode, design),
                      ready_timeout=120.0) as kids:
            began = (_trickle(ctx, coll.name, jobs, interval, design) if mode == TRICKLE
                     else go_all(kids))
            _wait_drained(coll, jobs, stall_timeout)
            results = _stop(kids)
    other_cpu = ctx.other_cpu(cpu)
    seqs = [s for r in results for s in r["seqs"]]
    unique = {s for s in seqs if 0 <= s < jobs}
    ended = max((r["last_done"] for r in results if r["last_done"]), default=time.time())
    seconds = max(ended - began, 1e-9)
    delivered = max(len(unique), 1)
    return FleetRow(
        mode=mode, processes=processes, slots=slots, jobs=jobs, interval_ms=interval * 1000,
        seconds=seconds,
        jobs_per_s=len(unique) / seconds,
        claims_per_job=sum(r["claims"] for r in results) / delivered,
        wasted_per_job=sum(r["claim_empty_hook"] for r in results) / delivered,
        latency=Percentiles.of_seconds([lat for r in results for lat in r["latencies"]]),
        lost=jobs - len(unique), duplicates=len(seqs) - len(set(seqs)), other_cpu=other_cpu,
        errors=[e for r in results for e in r["errors"]], design=design,
    )


def _specs(ctx: BenchContext, collection: str, processes: int, slots: int, mode: str,
           design: str) -> list[dict[str, Any]]:
    base = {"uri": ctx.uri, "db": ctx.db_name, "collection": collection}
    if design in BACKLOG_FLOORS:
        if mode != BACKLOG or slots != 1:
            raise ValueError("the drain floors are 1-slot backlogs")
        return [{**base, "role": "floor-drain",
                 "batch": DRAIN_BATCH if design == FLOOR_DRAIN_BATCH else 1}] * processes
    if design in TRICKLE_FLOORS:
        if mode != TRICKLE or slots != 1:
            raise ValueError("the trickle floors are 1-slot trickles")
        return [{**base, "role": "floor-consume",
                 "owner": None if design == FLOOR_ALL else [index, processes],
                 "every_state": design == FLOOR_VIEW}
                for index in range(processes)]
    return [{**base, "role": "fleet-consume", "slots": slots, "start_now": mode == TRICKLE,
             "fleet": design == FLEET}] * processes


def _trickle(ctx: BenchContext, collection: str, jobs: int, interval: float,
             design: str) -> float:
    spec = {"role": "produce", "uri": ctx.uri, "db": ctx.db_name, "collection": collection,
            "mode": "floor" if design in FLOORS else "queue", "count": jobs, "interval": interval}
    with children([spec]) as producer:
        began = go_all(producer)
        producer[0].result(timeout=jobs * interval + 60)
    return began


def _wait_drained(coll: Any, jobs: int, stall_timeout: float) -> None:
    """Until no job is left (the workers delete what they finish), or nothing moved for a while."""
    last, moved = -1, time.monotonic()
    while (left := coll.count_documents(REAL_JOBS)) > 0:
        if left != last:
            last, moved = left, time.monotonic()
        elif time.monotonic() - moved > stall_timeout:
            return
        time.sleep(0.05)


def _stop(kids: list[Child]) -> list[dict[str, Any]]:
    for kid in kids:
        kid.send("stop")
    return [kid.result(timeout=60) for kid in kids]
