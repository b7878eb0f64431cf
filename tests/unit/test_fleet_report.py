"""The fleet bench's judgement of p50 at many processes against few, beside its floor."""

from __future__ import annotations

from streamqueue.bench.common import Percentiles
from streamqueue.bench.fleet_herd import (
    BACKLOG,
    FLEET,
    FLOOR_ALL,
    FLOOR_DRAIN,
    FLOOR_DRAIN_BATCH,
    FLOOR_OWNER,
    FLOOR_VIEW,
    TRICKLE,
    FleetRow,
)
from streamqueue.bench.report import fleet_targets


def row(design: str, processes: int, p50: float, mode: str = TRICKLE,
        jobs_per_s: float = 100.0) -> FleetRow:
    return FleetRow(mode=mode, processes=processes, slots=1, jobs=300, interval_ms=10.0,
                    seconds=3.0, jobs_per_s=jobs_per_s, claims_per_job=1.0, wasted_per_job=0.0,
                    latency=Percentiles(300, p50, p50, p50, p50, p50), lost=0, duplicates=0,
                    design=design)


def latency_target(floors: list[FleetRow]) -> tuple[str, bool | None]:
    rows = [row(FLEET, 4, 10.0), row(FLEET, 32, 80.0), row(FLEET, 4, 0.0, BACKLOG),
            row(FLEET, 32, 0.0, BACKLOG), *floors]
    (target,) = [t for t in fleet_targets(rows) if "latency p50" in t.name]
    return target.measured, target.passed


def test_the_judgement_says_when_the_floor_misses_too() -> None:
    measured, passed = latency_target([row(FLOOR_ALL, 4, 5.0), row(FLOOR_ALL, 32, 35.0),
                                       row(FLOOR_OWNER, 4, 5.0), row(FLOOR_OWNER, 32, 120.0)])
    assert passed is False
    assert "every process claims 35.00 vs 5.00 ms" in measured
    assert "the floor misses too" in measured


def test_the_judgement_says_when_the_one_owner_floor_reaches_it() -> None:
    measured, _ = latency_target([row(FLOOR_OWNER, 4, 5.0), row(FLOOR_OWNER, 32, 5.1)])
    assert "the one-owner floor reaches it: the gap is the fleet's" in measured


def test_the_judgement_says_when_only_claiming_everywhere_reaches_it() -> None:
    measured, _ = latency_target([row(FLOOR_ALL, 4, 5.0), row(FLOOR_ALL, 32, 5.1),
                                  row(FLOOR_OWNER, 4, 5.0), row(FLOOR_OWNER, 32, 120.0)])
    assert "only the floor where every process claims reaches it, at 32 claims" in measured


def test_the_judgement_sets_the_fleet_beside_the_floor_that_hears_what_its_view_hears() -> None:
    measured, passed = latency_target([row(FLOOR_OWNER, 4, 5.0), row(FLOOR_OWNER, 32, 20.0),
                                       row(FLOOR_VIEW, 4, 5.0), row(FLOOR_VIEW, 32, 64.0)])
    assert passed is False
    assert "one hashed owner hearing every claim and settle 64.00 vs 5.00 ms" in measured
    # The fleet's row at 32 processes has p50 80 ms: 80 / 64.
    assert measured.endswith("the fleet at 32 is 1.25x the floor hearing every claim and settle")


def test_without_floor_rows_the_judgement_says_so() -> None:
    measured, _ = latency_target([])
    assert measured.endswith("floor not measured")


def backlog_target(floors: list[FleetRow]) -> tuple[str, bool | None]:
    rows = [row(FLEET, 4, 10.0), row(FLEET, 32, 10.0),
            row(FLEET, 4, 0.0, BACKLOG, 1000.0), row(FLEET, 32, 0.0, BACKLOG, 500.0), *floors]
    (target,) = [t for t in fleet_targets(rows) if "backlog throughput" in t.name]
    return target.measured, target.passed


def test_the_backlog_judgement_says_when_the_drain_floor_misses_too() -> None:
    measured, passed = backlog_target([
        row(FLOOR_DRAIN, 4, 0.0, BACKLOG, 900.0), row(FLOOR_DRAIN, 32, 0.0, BACKLOG, 450.0),
        row(FLOOR_DRAIN_BATCH, 4, 0.0, BACKLOG, 4000.0),
        row(FLOOR_DRAIN_BATCH, 32, 0.0, BACKLOG, 2000.0)])
    assert passed is False
    assert measured.startswith("500 vs 1,000 jobs/s = 0.500x")
    assert "one job per claim 450 vs 900 jobs/s = 0.500x" in measured
    assert "batches of 16 2,000 vs 4,000 jobs/s = 0.500x" in measured
    assert "the floor misses too" in measured


def test_the_backlog_judgement_says_when_a_drain_floor_reaches_it() -> None:
    measured, _ = backlog_target([
        row(FLOOR_DRAIN, 4, 0.0, BACKLOG, 900.0), row(FLOOR_DRAIN, 32, 0.0, BACKLOG, 850.0),
        row(FLOOR_DRAIN_BATCH, 4, 0.0, BACKLOG, 4000.0),
        row(FLOOR_DRAIN_BATCH, 32, 0.0, BACKLOG, 2000.0)])
    assert "a floor reaches it: the gap is the queue's" in measured


def test_without_drain_floor_rows_the_backlog_judgement_says_so() -> None:
    measured, _ = backlog_target([])
    assert measured.endswith("drain floor not measured")
