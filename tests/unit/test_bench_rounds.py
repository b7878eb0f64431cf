"""Throughput rounds: the median round stands for a kind, and no round's faults are hidden."""

from __future__ import annotations

import pytest

from streamqueue.bench import scenarios as sc
from streamqueue.bench.report import _jobs_per_s, _rounds_note


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
