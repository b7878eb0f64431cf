"""Schedules: lateness of fires at ``every=1`` with racing schedulers, and what idle ones cost.

Each scheduler is a ``Scheduler`` on its own ``MongoClient`` (as a reaper process
would have), in threads of this process. Lateness is the fire's ``$$NOW``
(the job's ``enqueued_at``) minus its tick: both the server's clock. Idle cost is
the server's operation counters while the schedulers wait for an hourly tick,
less the same counters with nobody running (the baseline), per scheduler.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

from pymongo import MongoClient

from streamqueue.bench.common import BenchContext, Percentiles
from streamqueue.queue import Queue
from streamqueue.scheduler import Scheduler
from streamqueue.storage import Document


@dataclass
class ScheduleRow:
    schedulers: int
    seconds: float
    ticks: int
    duplicates: int
    gaps: int
    lateness: Percentiles
    idle_ops_per_s_per_scheduler: float
    idle_baseline_ops_per_s: float
    errors: list[str] = field(default_factory=list)


def schedules(ctx: BenchContext, *, schedulers: int = 3, seconds: float = 30.0,
              idle_seconds: float = 30.0) -> ScheduleRow:
    with ctx.scratch("schedules") as coll:
        clients = [MongoClient[Document](ctx.uri) for _ in range(schedulers)]
        runners = [Scheduler(Queue(client[ctx.db_name][coll.name])) for client in clients]
        admin = Queue(coll)
        try:
            admin.schedule("idle", cron="@hourly")
            baseline = _ops_per_second(ctx, idle_seconds)
            for runner in runners:
                runner.start()
            idle = (_ops_per_second(ctx, idle_seconds) - baseline) / schedulers
            admin.schedule("tick", every=1)
            time.sleep(seconds)
        finally:
            for runner in runners:
                runner.stop()
                runner.queue.close()
            admin.close()
            for client in clients:
                client.close()
        jobs = list(coll.find({"schedule": "tick"}, {"tick": 1, "enqueued_at": 1}))
    ticks = sorted(job["tick"] for job in jobs)
    gaps = sum(1 for a, b in itertools.pairwise(ticks) if (b - a).total_seconds() != 1)
    lateness = [(job["enqueued_at"] - job["tick"]).total_seconds() for job in jobs]
    return ScheduleRow(schedulers=schedulers, seconds=seconds, ticks=len(ticks),
                       duplicates=len(ticks) - len(set(ticks)), gaps=gaps,
                       lateness=Percentiles.of_seconds(lateness),
                       idle_ops_per_s_per_scheduler=max(0.0, idle),
                       idle_baseline_ops_per_s=baseline)


def _ops_per_second(ctx: BenchContext, seconds: float) -> float:
    before = ctx.server_ops()
    time.sleep(seconds)
    return ctx.server_ops().since(before).per_second
