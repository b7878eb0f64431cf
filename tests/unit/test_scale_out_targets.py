"""Issue 16's targets 2-5 as the bench judges them, from rows measured in one run."""

from __future__ import annotations

from dataclasses import replace

from streamqueue.bench import scenarios as sc
from streamqueue.bench.common import Percentiles
from streamqueue.bench.config import BenchConfig, ThroughputPlan
from streamqueue.bench.consumers import (
    DEFAULT_BATCH,
    FLOOR_BATCH,
    FLOOR_HANDOFF,
    STORE_BATCH,
    WORKER,
)
from streamqueue.bench.report import (
    Target,
    batched_floor_target,
    job_cpu_ms,
    latency_floor_targets,
    paired_share,
    scale_out_targets,
)


def tp(kind: str, jobs_per_s: float, *, batch: int = 1, plan: str = "4 threads") -> sc.ThroughputRow:
    return sc.ThroughputRow(
        plan=plan, threads=4, processes=1, consumers=4, kind=kind, label=f"{kind} {batch}",
        batch=batch, jobs=100, seconds=100 / jobs_per_s, jobs_per_s=jobs_per_s, duplicates=0,
        lost=0, left=0, enqueue_per_s=1000.0)


def lat(kind: str, p50: float, p99: float) -> sc.LatencyRow:
    samples = [p50] * 98 + [p99] * 2
    return sc.LatencyRow(kind=kind, label=kind, jobs=100, warmup=1, interval_ms=20.0,
                         latency=Percentiles.of_seconds([ms / 1000 for ms in samples]), lost=0,
                         duplicates=0, samples_ms=samples)


def by_name(targets: list[Target], fragment: str) -> list[Target]:
    return [t for t in targets if fragment in t.name]


ROWS = [
    tp("push", 600.0), tp(WORKER, 590.0), tp("push", 300.0, plan="1 thread"),
    tp(WORKER, 270.0, plan="1 thread"), tp("push", 800.0, plan="16 threads"),
    tp(WORKER, 500.0, plan="16 threads"),
    tp(WORKER, 2000.0, batch=DEFAULT_BATCH), tp("kombu", 1000.0),
    tp(WORKER, 2500.0, batch=8), tp(FLOOR_BATCH, 3000.0, batch=8),
    tp(WORKER, 2800.0, batch=16), tp(FLOOR_BATCH, 3000.0, batch=16),
]


def test_every_scale_out_target_is_judged_from_one_run() -> None:
    targets = scale_out_targets(ROWS, 16, latency=[
        lat("push", 4.0, 6.0), lat(WORKER, 5.0, 6.0), lat("floor-push", 3.6, 5.0)])
    latency = by_name(targets, "push floor")
    assert [t.passed for t in latency] == [True, False]  # 1.11x / 1.20x; 1.39x / 1.20x
    worker = by_name(targets, "batch=1 vs next()")[0]
    # Judged on one slot and the target plan (0.90x fails it); 16 threads shown only.
    assert worker.passed is False and "16 threads: 0.625x" in worker.measured
    batched = by_name(targets, "batched floor")[0]
    assert batched.passed is True and batched.measured.endswith("reached at batch=16")
    assert "batch=8: 0.833x" in batched.measured
    kombu = by_name(targets, "kombu")[0]
    assert kombu.passed is True and "2.000x" in kombu.measured


def rounds(row: sc.ThroughputRow, *jobs_per_s: float) -> sc.ThroughputRow:
    return replace(row, rounds_jobs_per_s=list(jobs_per_s))


def test_target_3_is_judged_on_paired_rounds_and_shows_the_medians_ratio_too() -> None:
    # The Worker is ahead in two rounds of three; its slow round fell in a round where
    # next() was fast, so the two medians (taken from different rounds) say 0.925x.
    rows = [rounds(tp("push", 400.0, plan="1 thread"), 400.0, 300.0, 500.0),
            rounds(tp(WORKER, 370.0, plan="1 thread"), 440.0, 330.0, 370.0),
            tp("push", 600.0), tp(WORKER, 600.0)]
    worker = by_name(scale_out_targets(rows, 16), "batch=1 vs next()")[0]
    assert worker.passed is True
    assert worker.measured == ("1 thread: 1.100x (median of 3 paired rounds 1.10x / 1.10x / "
                               "0.74x; ratio of the medians 0.925x), 4 threads: 1.000x")


def test_paired_rounds_can_fail_a_target_the_medians_would_pass() -> None:
    rows = [rounds(tp("push", 400.0, plan="1 thread"), 300.0, 400.0, 500.0),
            rounds(tp(WORKER, 400.0, plan="1 thread"), 270.0, 400.0, 450.0),
            tp("push", 600.0), tp(WORKER, 600.0)]
    worker = by_name(scale_out_targets(rows, 16), "batch=1 vs next()")[0]
    assert worker.passed is False and worker.measured.startswith("1 thread: 0.900x")


def test_rows_without_the_same_rounds_are_compared_on_their_medians() -> None:
    mine = rounds(tp(WORKER, 390.0), 390.0, 330.0, 400.0)
    assert paired_share(mine, rounds(tp("push", 400.0), 400.0, 300.0)) == (0.975, "")
    assert paired_share(tp(WORKER, 390.0), tp("push", 400.0)) == (0.975, "")


def test_targets_4_and_5_are_judged_on_paired_rounds_too() -> None:
    rows = [rounds(tp(WORKER, 2000.0, batch=DEFAULT_BATCH), 2000.0, 1500.0, 2400.0),
            rounds(tp("kombu", 1000.0), 1200.0, 900.0, 1000.0),
            rounds(tp(WORKER, 2600.0, batch=8), 2600.0, 2800.0, 2500.0),
            rounds(tp(FLOOR_BATCH, 3000.0, batch=8), 2600.0, 3000.0, 3100.0)]
    targets = scale_out_targets(rows, 16)
    kombu = by_name(targets, "kombu")[0]
    assert kombu.passed is True  # paired 1.667x; the medians' ratio would say 2.000x
    assert "= 1.667x (median of 3 paired rounds" in kombu.measured
    batched = by_name(targets, "batched floor")[0]
    assert batched.passed is True  # paired 0.933x; the medians' ratio would say 0.867x
    assert "batch=8: 0.933x (median of 3 paired rounds" in batched.measured


def test_latency_is_judged_on_paired_rounds_so_a_floor_stall_proves_nothing() -> None:
    # The floor stalled in round 1: its pooled p99 is far above every round of next().
    ours = replace(lat("push", 6.0, 15.0), rounds_p50_ms=[7.0, 6.0, 6.0, 6.0, 6.0],
                   rounds_p99_ms=[15.0, 30.0, 30.0, 12.0, 30.0])
    floor = replace(lat("floor-push", 5.0, 150.0), rounds_p50_ms=[5.0, 5.0, 5.0, 5.0, 5.0],
                    rounds_p99_ms=[150.0, 15.0, 15.0, 15.0, 15.0])
    target = latency_floor_targets([ours, floor])[0]
    # Pooled, the p99 would pass at 0.10x; paired, three rounds of five are at 2.0x.
    assert target.passed is False
    assert target.measured.endswith(
        "= 1.20x / 2.00x (medians of 5 paired rounds; pooled 1.20x / 0.10x)")


def test_latency_without_paired_rounds_is_judged_pooled() -> None:
    ours = replace(lat("push", 6.0, 7.0), rounds_p50_ms=[6.0, 6.0], rounds_p99_ms=[7.0, 7.0])
    target = latency_floor_targets([ours, lat("floor-push", 5.0, 5.0)])[0]
    assert target.passed is True and target.measured.endswith("= 1.20x / 1.40x")


def test_targets_without_their_rows_are_not_measured() -> None:
    targets = scale_out_targets([tp("push", 600.0)], 16)
    assert {t.passed for t in targets} == {None}


def test_the_batch_sweep_runs_in_the_plan_the_targets_use_only() -> None:
    config = BenchConfig.full()
    assert config.batch_sizes(ThroughputPlan(threads=4, jobs=10)) == [8, 16, 32]
    assert config.batch_sizes(ThroughputPlan(threads=16, jobs=10)) == [16]
    assert config.batch_sizes(ThroughputPlan(threads=4, jobs=10, processes=4)) == [16]


def test_the_hand_off_floor_is_shown_against_the_push_floor_not_judged() -> None:
    targets = scale_out_targets(ROWS, 16, latency=[
        lat("push", 4.0, 6.0), lat("floor-push", 3.6, 5.0), lat(FLOOR_HANDOFF, 4.0, 5.5)])
    handoff = by_name(targets, "hand-off")
    assert len(handoff) == 1 and handoff[0].passed is None
    assert "= 1.11x / 1.10x the push floor" in handoff[0].measured
    assert len(by_name(targets, "push floor")) == 1  # judged: next() only


def with_cpu(row: sc.ThroughputRow, client: float, server: float) -> sc.ThroughputRow:
    row.client_cpu_ms_per_job, row.server_cpu_ms_per_job = client, server
    return row


def test_the_batched_target_shows_the_bare_storage_calls_and_each_jobs_cpu() -> None:
    rows = [with_cpu(tp(WORKER, 2100.0, batch=8), 0.12, 0.34),
            with_cpu(tp(STORE_BATCH, 2200.0, batch=8), 0.10, 0.33),
            with_cpu(tp(FLOOR_BATCH, 3000.0, batch=8), 0.09, 0.21),
            tp(WORKER, 2000.0, batch=16), tp(FLOOR_BATCH, 3000.0, batch=16)]
    target = batched_floor_target(rows, 16)
    assert target.passed is False
    assert ("batch=8: 0.700x (storage ops bare 0.733x; "
            "CPU/job Worker 0.460 / storage 0.430 / floor 0.300 ms)") in target.measured
    # Without the storage row or the CPU figures, the share stands alone.
    assert "batch=16: 0.667x;" in target.measured


def test_a_jobs_cpu_is_unknown_when_either_side_is() -> None:
    assert job_cpu_ms(tp(WORKER, 100.0)) is None
    assert job_cpu_ms(with_cpu(tp(WORKER, 100.0), 0.25, 0.5)) == 0.75


def test_a_worker_with_claims_in_flight_is_judged_and_named() -> None:
    ahead = tp(WORKER, 2800.0, batch=8)
    ahead.claims_in_flight = 2
    rows = [tp(WORKER, 2100.0, batch=8), ahead, tp(FLOOR_BATCH, 3000.0, batch=8)]
    target = batched_floor_target(rows, 16)
    assert target.passed is True
    assert "batch=8: 0.700x" in target.measured
    assert "batch=8 with 2 claims in flight: 0.933x" in target.measured
    assert target.measured.endswith("reached at batch=8 with 2 claims in flight")
