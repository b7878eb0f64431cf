"""Bench rounds: the median throughput round stands for a kind, latency rounds pool, no fault hides."""

from __future__ import annotations

import pytest

from streamqueue.bench import scenarios as sc
from streamqueue.bench.common import Percentiles
from streamqueue.bench.consumers import Kind
from streamqueue.bench.report import _jobs_per_s, _p50_rounds, _rounds_note, _store_note


def row(jobs_per_s: float, *, duplicates: int = 0, lost: int = 0, kind: str = "push") -> sc.ThroughputRow:
    return sc.ThroughputRow(
        plan="4 threads", threads=4, processes=1, consumers=4, kind=kind, label=kind, batch=1,
        jobs=100, seconds=100 / jobs_per_s, jobs_per_s=jobs_per_s, duplicates=duplicates,
        lost=lost, left=0, enqueue_per_s=1000.0)


def test_the_median_round_is_reported_with_every_round_in_run_order() -> None:
    merged = sc.median_round([row(700.0), row(600.0), row(650.0)])
    assert merged.jobs_per_s == 650.0
    assert merged.seconds == pytest.approx(100 / 650)
    assert merged.rounds_jobs_per_s == [700.0, 600.0, 650.0]


def test_an_even_number_of_rounds_reports_the_lower_middle() -> None:
    assert sc.median_round([row(700.0), row(600.0)]).jobs_per_s == 600.0


def test_faults_of_every_round_are_summed() -> None:
    merged = sc.median_round([row(700.0, duplicates=1), row(600.0), row(650.0, lost=2)])
    assert (merged.duplicates, merged.lost) == (1, 2)


def test_no_rounds_is_an_error() -> None:
    with pytest.raises(ValueError):
        sc.median_round([])


def test_report_shows_every_round_and_the_ratio_round_by_round() -> None:
    mine = sc.median_round([row(700.0), row(600.0), row(650.0)])
    floor = sc.median_round([row(700.0, kind="floor"), row(500.0, kind="floor"),
                             row(650.0, kind="floor")])
    assert _jobs_per_s(mine) == "650 (rounds 700 / 600 / 650)"
    assert _rounds_note(mine, floor) == "; medians of 3 rounds, round by round 1.00x / 1.20x / 1.00x"


def test_a_single_run_is_shown_plainly() -> None:
    single = sc.median_round([row(650.0)])
    assert _jobs_per_s(single) == "650"
    assert _rounds_note(single, single) == ""


# -- latency rounds --------------------------------------------------------------------------

def lat_row(samples_ms: list[float], *, lost: int = 0, other_cpu: float | None = None) -> sc.LatencyRow:
    return sc.LatencyRow(
        kind="push", label="push", jobs=len(samples_ms), warmup=1, interval_ms=20.0,
        latency=Percentiles.of_seconds([ms / 1000 for ms in samples_ms]), lost=lost, duplicates=0,
        other_cpu=other_cpu, samples_ms=samples_ms)


def test_latency_rounds_pool_their_samples_and_list_each_round_p50() -> None:
    pooled = sc.pool_latency_rounds([lat_row([1.0, 2.0, 3.0]), lat_row([10.0, 11.0, 12.0])])
    assert pooled.jobs == 6
    assert pooled.samples_ms == [1.0, 2.0, 3.0, 10.0, 11.0, 12.0]
    assert pooled.latency.max == pytest.approx(12.0)
    # The pooled p50 sits between the rounds, not on either round's own p50.
    assert 3.0 <= pooled.latency.p50 <= 10.0
    assert pooled.rounds_p50_ms == [pytest.approx(2.0), pytest.approx(11.0)]
    assert len(pooled.rounds_p99_ms) == 2 and pooled.rounds_p99_ms[1] > pooled.rounds_p99_ms[0]
    assert _p50_rounds(pooled) == " (rounds 2.00 / 11.00)"


def test_latency_rounds_sum_losses_and_keep_the_worst_other_load() -> None:
    pooled = sc.pool_latency_rounds([lat_row([1.0], lost=1, other_cpu=0.02),
                                     lat_row([2.0], other_cpu=None),
                                     lat_row([3.0], lost=2, other_cpu=0.20)])
    assert (pooled.lost, pooled.other_cpu) == (3, 0.20)


def test_one_latency_round_is_shown_plainly() -> None:
    assert _p50_rounds(sc.pool_latency_rounds([lat_row([1.0, 2.0])])) == ""
    with pytest.raises(ValueError):
        sc.pool_latency_rounds([])


def test_the_bare_storage_row_is_named_in_the_next_target() -> None:
    store = row(680.0, kind="store")
    store.ratio_to_floor = 0.95
    assert _store_note(store) == "; the queue's own claim and complete called bare (no Queue): 0.950x"
    assert _store_note(None) == ""


def test_every_other_round_runs_the_kinds_in_reverse() -> None:
    kinds = [Kind("push"), Kind("worker", 1), Kind("floor")]
    assert sc.round_order(kinds, 0) == kinds
    assert sc.round_order(kinds, 1) == kinds[::-1]
    assert sc.round_order(kinds, 2) == kinds
