"""The dashboard's reads on a deep queue: what the overview and queue pages ask the server.

A queue of ``jobs`` ready jobs (written with ``insert_many``) plus a few
locked, delayed and dead ones; each read is timed ``samples`` times from the
client, on this machine's loopback, so the figure is the server's time plus a
loopback round trip (an upper bound of the server time the requirement names).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamqueue.bench.common import BenchContext, Percentiles, bulk_fill, queue_documents
from streamqueue.dashboard.queues import QueueRegistry
from streamqueue.dashboard.rates import RateWindow
from streamqueue.dashboard.summary import summarize
from streamqueue.queue import Queue
from streamqueue.storage.dashboard import DashboardStore, claim_key

#: Jobs in the other states beside the deep ready backlog.
LOCKED, DELAYED, DEAD = 100, 1_000, 500
PAGE = 50


@dataclass
class DashboardRow:
    name: str
    jobs: int
    latency: Percentiles
    shows: str


def dashboard_reads(ctx: BenchContext, *, jobs: int, samples: int) -> list[DashboardRow]:
    with ctx.scratch("dashboard") as coll:
        queue = Queue(coll)
        queue.store.ensure_indexes()
        ctx.progress(f"  filling {jobs:,} jobs with insert_many")
        bulk_fill(coll, queue_documents(jobs))
        queue.put_many([{"later": i} for i in range(DELAYED)], delay=3600)
        for job in queue.claim(DEAD):
            queue.store.bury(job.id, job.lease_token, "bench: dead on purpose")
        queue.claim(LOCKED)
        reads, registry = DashboardStore(coll.database), QueueRegistry(coll.database)
        try:
            return [_timed(name, jobs, samples, read) for name, read in
                    _reads(reads, registry, queue, jobs).items()]
        finally:
            registry.close()
            queue.close()


def _reads(reads: DashboardStore, registry: QueueRegistry, queue: Queue,
           jobs: int) -> dict[str, Callable[[], Any]]:
    store, now = queue.store, reads.server_now()
    middle = list(store.jobs.find({"state": "ready"}, sort=[("priority", -1), ("available_at", 1),
                                                            ("_id", 1)], skip=jobs // 2, limit=1))
    deep = claim_key(middle[0]) if middle else None
    some = queue.jobs("ready", limit=1)[0].id

    def overview() -> Any:
        return summarize(reads, registry, [queue.name], RateWindow())

    def page(state: str, after: Any = None) -> Callable[[], Any]:
        return lambda: reads.live_page(store, state, now, after=after, descending=False,
                                       limit=PAGE)

    return {
        "overview row (7 counts, pause switch, oldest ready)": overview,
        "queue page: first 50 ready, claim order": page("ready"),
        f"queue page: 50 ready after job {jobs // 2:,}": page("ready", deep),
        "queue page: 50 locked": page("locked"),
        "queue page: 50 delayed": page("delayed"),
        "queue page: 50 dead, newest first": lambda: reads.dead_page(store, after=None,
                                                                     limit=PAGE),
        "job page: one job by id": lambda: store.find_job(some),
        "for comparison: an exact count of every ready job": lambda: store.jobs.count_documents(
            {"state": "ready", "available_at": {"$lte": now}}),
    }


def _timed(name: str, jobs: int, samples: int, read: Callable[[], Any]) -> DashboardRow:
    read()  # warm the cache: a dashboard reads the same index pages again and again
    seconds = []
    for _ in range(samples):
        started = time.perf_counter()
        shown = read()
        seconds.append(time.perf_counter() - started)
    return DashboardRow(name, jobs, Percentiles.of_seconds(seconds), _describe(shown))


def _describe(shown: Any) -> str:
    if isinstance(shown, list) and shown and hasattr(shown[0], "counts"):
        counts = shown[0].counts
        return ", ".join(f"{state} {counts.shown(state)}" for state in counts.counts)
    if hasattr(shown, "rows"):
        return f"{len(shown.rows)} rows"
    if isinstance(shown, int):
        return f"{shown:,}"
    return "found" if shown else "-"
