"""Smoke test of the benchmark: one tiny case of each scenario runs and reports well-formed rows.

No timing is asserted: numbers on a shared test server mean nothing. The real
run is ``make bench``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamqueue.bench import lifecycle as lc
from streamqueue.bench import scenarios as sc
from streamqueue.bench.common import BenchContext, CpuMeter, CpuSample
from streamqueue.bench.config import BenchConfig, ThroughputPlan
from streamqueue.bench.consumers import (
    DEFAULT_BATCH,
    FLOOR_BATCH,
    KIND_FLOOR,
    KIND_FLOOR_HANDOFF,
    KIND_FLOOR_PUSH,
    KIND_KOMBU,
    KIND_POLLING,
    KIND_PUSH,
    KIND_STORE,
    STORE_BATCH,
    WORKER,
    Kind,
    worker_kind,
)
from streamqueue.bench.control import control
from streamqueue.bench.dashboard import dashboard_reads
from streamqueue.bench.fleet_herd import (
    FLEET,
    FLOOR_ALL,
    FLOOR_DRAIN,
    FLOOR_DRAIN_BATCH,
    FLOOR_OWNER,
    FLOOR_VIEW,
    HERD,
    fleet_herd,
)
from streamqueue.bench.report import Results, evaluate, markdown, write_json, write_plots
from streamqueue.bench.schedules import schedules
from streamqueue.prefetch import MAX_CLAIM


@pytest.fixture(scope="module")
def ctx(mongo_uri: str) -> Iterator[BenchContext]:
    context = BenchContext(mongo_uri, verbose=False)
    yield context
    context.close()


@pytest.fixture(scope="module")
def results() -> Results:
    return Results(mode="smoke", started="now", seconds=0.0, machine={}, config={}, notes=[])


KINDS = [KIND_PUSH, worker_kind(1), worker_kind(4), Kind(WORKER, 4, claims_in_flight=2),
         worker_kind(DEFAULT_BATCH), KIND_POLLING,
         KIND_STORE, KIND_FLOOR, Kind(STORE_BATCH, 4), Kind(FLOOR_BATCH, 4), KIND_KOMBU]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.label)
def test_throughput_in_threads(ctx: BenchContext, results: Results, kind: Kind) -> None:
    row = sc.throughput(ctx, ThroughputPlan(threads=3, jobs=60), kind, stall_timeout=20)
    assert (row.jobs, row.consumers, row.kind) == (60, 3, kind.kind)
    assert (row.duplicates, row.lost, row.left, row.errors) == (0, 0, 0, [])
    assert row.jobs_per_s > 0
    results.throughput.append(row)


@pytest.mark.parametrize("kind", [KIND_PUSH, KIND_STORE, KIND_FLOOR], ids=lambda k: k.label)
def test_throughput_in_processes(ctx: BenchContext, results: Results, kind: Kind) -> None:
    plan = ThroughputPlan(threads=2, jobs=60, processes=2)
    row = sc.throughput(ctx, plan, kind, stall_timeout=20)
    assert (row.consumers, row.processes) == (4, 2)
    assert (row.duplicates, row.lost, row.left, row.errors) == (0, 0, 0, [])
    results.throughput.append(row)


@pytest.mark.parametrize("kind", [KIND_PUSH, worker_kind(1), KIND_POLLING, KIND_FLOOR,
                                  KIND_FLOOR_PUSH, KIND_FLOOR_HANDOFF], ids=lambda k: k.label)
def test_latency(ctx: BenchContext, results: Results, kind: Kind) -> None:
    row = sc.latency(ctx, kind, jobs=6, warmup=1, interval=0.02, stall_timeout=20)
    assert (row.jobs, row.lost, row.duplicates, row.errors) == (6, 0, 0, [])
    assert row.latency.count == 6
    assert 0 <= row.latency.p50 <= row.latency.p90 <= row.latency.p99 <= row.latency.max
    results.latency.append(row)


@pytest.mark.parametrize("kind", [None, KIND_PUSH, KIND_POLLING], ids=str)
def test_idle(ctx: BenchContext, results: Results, kind: Kind | None) -> None:
    row = sc.idle(ctx, kind, processes=1, seconds=0.5, settle=0.2)
    assert row.processes == (0 if kind is None else 1)
    assert row.raw_ops_per_s >= 0 and set(row.counters) >= {"getmore", "command"}
    assert row.errors == []
    results.idle.append(row)


def test_depth(ctx: BenchContext, results: Results) -> None:
    rows = sc.depth(ctx, 50, [KIND_PUSH, KIND_POLLING, KIND_FLOOR], samples=8, warmup=2)
    assert [r.kind for r in rows] == ["push", "polling", "floor"]
    for row in rows:
        assert row.errors == [] and row.samples == 8 and row.depth == 50
        assert row.claim.p50 <= row.claim_complete.p99
        # The claim is index-backed: explain reports the keys it read.
        assert row.keys_examined is not None and row.keys_examined >= 1
        assert "IXSCAN" in row.plan
    results.depth.extend(rows)


@pytest.mark.parametrize(("kind", "interval"), [(KIND_PUSH, 0.01), (KIND_PUSH, 0.0),
                                               (worker_kind(4), 0.0), (KIND_FLOOR, 0.0)],
                         ids=["push-trickle", "push-stream", "worker-stream", "floor-stream"])
def test_herd(ctx: BenchContext, results: Results, kind: Kind, interval: float) -> None:
    row = sc.herd(ctx, kind, 4, jobs=8, interval=interval, stall_timeout=20)
    assert (row.jobs, row.lost, row.duplicates, row.errors) == (8, 0, 0, [])
    assert row.mode == ("trickle" if interval else "stream")
    assert row.wasted_per_job >= 0 and row.server_claims_per_job >= 0
    results.herd.append(row)


@pytest.mark.parametrize("design", [HERD, FLEET])
@pytest.mark.parametrize("interval", [0.02, 0.0], ids=["trickle", "backlog"])
def test_fleet(ctx: BenchContext, results: Results, interval: float, design: str) -> None:
    row = fleet_herd(ctx, 2, 1, jobs=20, interval=interval, stall_timeout=20, design=design)
    assert (row.processes, row.slots, row.lost, row.duplicates, row.errors) == (2, 1, 0, 0, [])
    assert row.design == design
    # The processes counted their claim commands (in a backlog one batch claim of the
    # default Worker takes several jobs, so fewer commands than jobs is right there).
    assert row.claims_per_job >= (1.0 if interval else 1.0 / MAX_CLAIM)
    results.fleet.append(row)


@pytest.mark.parametrize("design", [FLOOR_ALL, FLOOR_OWNER, FLOOR_VIEW])
def test_fleet_floor(ctx: BenchContext, results: Results, design: str) -> None:
    row = fleet_herd(ctx, 2, 1, jobs=20, interval=0.02, stall_timeout=20, design=design)
    assert (row.lost, row.duplicates, row.errors) == (0, 0, [])
    # Every process claims on every insert, or only the hashed owner does.
    assert row.claims_per_job == (2.0 if design == FLOOR_ALL else 1.0)
    results.fleet.append(row)


@pytest.mark.parametrize("design", [FLOOR_DRAIN, FLOOR_DRAIN_BATCH])
def test_fleet_drain_floor(ctx: BenchContext, results: Results, design: str) -> None:
    row = fleet_herd(ctx, 2, 1, jobs=40, interval=0.0, stall_timeout=20, design=design)
    assert (row.lost, row.duplicates, row.errors) == (0, 0, [])
    assert row.jobs_per_s > 0
    # One findAndModify per job, or one locking update per batch of up to 16 (a batch
    # claim that another process beat to every job still counts).
    if design == FLOOR_DRAIN:
        assert row.claims_per_job >= 1.0
    else:
        assert 40 / 16 / 40 <= row.claims_per_job < 1.0
    results.fleet.append(row)


def test_lifecycle(ctx: BenchContext, results: Results) -> None:
    wake = lc.result_wakeup(ctx, jobs=3)
    assert wake.jobs == wake.after_ack.count == wake.after_call.count == 3
    assert 0 <= wake.after_ack.p50 <= wake.after_ack.max
    retention = lc.retention_ab(ctx, jobs=40, threads=2, rounds=2)
    assert retention.off_jobs_per_s > 0 and retention.on_jobs_per_s > 0
    assert retention.ratio > 0
    txn = lc.txn_put_wakeup(ctx, jobs=3)
    assert txn.jobs == txn.after_commit.count == 3 and txn.after_commit.p50 >= 0
    results.txn_put.append(txn)
    results.result_wakeup.append(wake)
    results.retention.append(retention)


def test_control(ctx: BenchContext, results: Results) -> None:
    rows = control(ctx, samples=2)
    assert [r.name for r in rows] == ["pause to stop", "resume to first claim",
                                      "cancel to handler"]
    for row in rows:
        assert row.errors == [] and row.samples == 2 and row.latency.p50 >= 0
    results.control.extend(rows)


def test_schedules(ctx: BenchContext, results: Results) -> None:
    row = schedules(ctx, seconds=3.0, idle_seconds=1.0)
    assert row.ticks >= 2 and row.duplicates == 0 and row.gaps == 0
    assert row.lateness.count == row.ticks and row.lateness.p50 >= 0
    assert row.idle_ops_per_s_per_scheduler >= 0
    results.schedules.append(row)


def test_dashboard(ctx: BenchContext, results: Results) -> None:
    rows = dashboard_reads(ctx, jobs=1_000, samples=2)
    assert len(rows) == 8 and all(r.latency.count == 2 and r.latency.p50 >= 0 for r in rows)
    assert rows[0].shows.startswith("ready 400, delayed 1,000, locked 100")
    assert "failed 500" in rows[0].shows and "locked 100" in rows[0].shows
    assert rows[1].shows == "50 rows"
    results.dashboard.extend(rows)


def test_report(results: Results, tmp_path: Path) -> None:
    """Runs last in this module: the rows gathered above make a complete report."""
    if not results.throughput:
        pytest.skip("needs the scenario tests of this module to run first")
    sc.add_floor_ratios(results.throughput)
    sc.add_latency_ratios(results.latency)
    sc.add_idle_net(results.idle)
    sc.add_herd_ratios(results.herd)
    results.targets = evaluate(results, target_plan="3 threads", worker_batch=4)
    write_json(results, tmp_path / "results.json")
    data = json.loads((tmp_path / "results.json").read_text())
    assert {"throughput", "latency", "idle", "depth", "herd", "control", "targets"} <= set(data)
    assert data["result_wakeup"] and data["retention"] and data["txn_put"]
    assert all(t["passed"] in (True, False, None) for t in data["targets"])
    text = markdown(results)
    assert "## Targets" in text and "## 5. Herd" in text and "## 8. Control" in text
    assert "## 9. Schedules" in text and "## 10. Dashboard" in text
    assert "## 6. result() wake-up" in text and "## 7. Throughput with keep_completed" in text
    assert "## 5b. Fleet" in text
    assert "the queue's own claim and complete called bare" in text
    write_plots(results, tmp_path)
    floor = next(r for r in results.throughput if r.kind == "floor" and r.processes == 1)
    assert floor.ratio_to_floor is not None and math.isclose(floor.ratio_to_floor, 1.0)
    # The scale-out targets found their rows (measured, whatever the verdict).
    scale_out = [t for t in results.targets if "batched floor" in t.name or "kombu" in t.name]
    assert len(scale_out) == 2 and all(t.passed is not None for t in scale_out)
    judged = [t for t in results.targets if "push floor" in t.name or "batch=1 vs next()" in t.name]
    assert len(judged) == 3 and all(t.passed is not None for t in judged)


def test_plans_are_sane() -> None:
    for config in (BenchConfig.full(), BenchConfig.quick_plan()):
        assert {p.consumers for p in config.throughput} >= {1, 4, 16}
        assert len(config.depth_levels) == 2
    assert BenchConfig.full().latency_jobs >= 500
    assert all(p.jobs == 7 for p in BenchConfig.full().with_jobs(7).throughput)


def test_other_load_meter() -> None:
    meter = CpuMeter([os.getpid()])
    start = meter.sample()
    if start is None:
        pytest.skip("no /proc here")
    share = meter.other_share(start)
    assert share is not None and 0.0 <= share <= 1.0
    assert CpuMeter([]).sample() is None  # server unknown (--uri): no figure rather than a wrong one


def spin_from(meter: CpuMeter, seconds: float = 0.3) -> CpuSample:
    """A sample, then ``seconds`` of this process's CPU (skip without /proc)."""
    start = meter.sample()
    if start is None:
        pytest.skip("no /proc here")
    deadline = time.process_time() + seconds
    while time.process_time() < deadline:
        pass
    return start


def test_server_cpu_meter_counts_the_server_processes_only() -> None:
    meter = CpuMeter([os.getpid()])  # this process stands in for the server
    used = meter.server_seconds(spin_from(meter))
    assert used is not None and 0.2 <= used <= 5.0
    assert CpuMeter([]).server_seconds(None) is None


def test_client_cpu_meter_counts_this_process_not_the_server() -> None:
    idle_server = subprocess.Popen(["sleep", "60"])  # stands in for a server doing nothing
    try:
        meter = CpuMeter([idle_server.pid])
        start = spin_from(meter)
        used = meter.client_seconds(start)
        assert used is not None and 0.2 <= used <= 5.0
        assert (meter.server_seconds(start) or 0.0) < 0.05
    finally:
        idle_server.kill()
        idle_server.wait()
    assert CpuMeter([]).client_seconds(None) is None
