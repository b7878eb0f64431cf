"""``streamqueue.bench.aio`` runs end to end on a small load and reports every figure.

No speed is asserted here (the figures are in docs/PERFORMANCE.md): only that each
part ran its jobs and produced a number.
"""

from __future__ import annotations

import pytest

from streamqueue.bench.aio import run
from streamqueue.bench.aio_report import aio_table, aio_target_rows

pytestmark = pytest.mark.timeout(180)


def test_the_async_bench_reports_every_figure(mongo_uri: str) -> None:
    said: list[str] = []
    result = run(mongo_uri, jobs=40, rounds=1, latency_jobs=5, idle_seconds=1.0, say=said.append)
    assert result["sync_jobs_per_s"] > 0 and result["async_jobs_per_s"] > 0
    assert set(result["latency_ms"]) == {"sync", "async"}
    assert result["latency_ms"]["async"]["p50"] > 0
    assert result["idle_async_ops_per_s"] >= 0
    worker = result["worker"]
    assert worker["instant_jobs_per_s"] > 0 and worker["awaiting_jobs_per_s"] > 0
    assert worker["most_in_flight"] == 40  # every job in flight at once: 40 < concurrency
    assert worker["rss_mib_at_most_in_flight"] > 0
    assert len(said) == 2
    # What the full bench (--only aio) reports from it: five targets, a table.
    targets = aio_target_rows(result)
    assert len(targets) == 5 and all(isinstance(passed, bool) for *_, passed in targets)
    table = aio_table(result)
    assert len(table) == 13 and "prefetch awaiting" in table[-1]
    assert result["driver_sync_jobs_per_s"] > 0 and result["driver_async_jobs_per_s"] > 0
