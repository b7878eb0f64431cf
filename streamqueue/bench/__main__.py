"""``python -m streamqueue.bench [--quick] [--out bench-results]``: run every scenario, write results."""

from __future__ import annotations

import argparse
import functools
import importlib.util
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from streamqueue.bench import lifecycle as lc
from streamqueue.bench import scenarios as sc
from streamqueue.bench.aio import run as aio_run
from streamqueue.bench.common import BenchContext, machine_description
from streamqueue.bench.config import BenchConfig, ThroughputPlan
from streamqueue.bench.consumers import (
    KIND_FLOOR,
    KIND_FLOOR_HANDOFF,
    KIND_FLOOR_PUSH,
    KIND_POLLING,
    KIND_PUSH,
    Kind,
    worker_kind,
)
from streamqueue.bench.control import control
from streamqueue.bench.dashboard import dashboard_reads
from streamqueue.bench.fleet_herd import BACKLOG_FLOORS, FLEET, HERD, TRICKLE_FLOORS, fleet_herd
from streamqueue.bench.report import (
    Results,
    evaluate,
    markdown,
    performance_markdown,
    write_json,
    write_plots,
)
from streamqueue.bench.schedules import schedules
from streamqueue.bench.tasks import tasks_bench
from streamqueue.testing import ReplicaSet

SCENARIOS = ("latency", "idle", "throughput", "herd", "fleet", "depth", "lifecycle", "control",
             "schedules", "dashboard", "tasks", "aio")
QUIET_LOAD = 1.0


def say(message: str) -> None:
    sys.stderr.write(f"[bench] {message}\n")
    sys.stderr.flush()


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m streamqueue.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short run (under 2 minutes)")
    parser.add_argument("--out", default="bench-results", help="output directory")
    parser.add_argument("--uri", help="use this replica set instead of starting one")
    parser.add_argument("--jobs", type=int, help="jobs per throughput run (overrides the plan)")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, help="run only these scenarios")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="first wait up to SECONDS for the 1-minute load average to fall "
                             f"below {QUIET_LOAD} (a shared machine skews every number)")
    return parser.parse_args(argv)


def wait_quiet(limit: float) -> None:
    deadline = time.monotonic() + limit
    while os.getloadavg()[0] >= QUIET_LOAD and time.monotonic() < deadline:
        say(f"load average {os.getloadavg()[0]:.1f}: waiting for a quieter machine")
        time.sleep(15)


def busy_note(results: Results, threshold: float) -> str | None:
    rows: list[tuple[str, float | None]] = [
        *((f"throughput {r.label}, {r.plan}", r.other_cpu) for r in results.throughput),
        *((f"latency {r.label}", r.other_cpu) for r in results.latency),
        *((f"idle {r.label}", r.other_cpu) for r in results.idle),
        *((f"depth {r.label}, {r.depth:,}", r.other_cpu) for r in results.depth),
        *((f"herd {r.mode} {r.label} x{r.consumers}", r.other_cpu) for r in results.herd),
        *((f"fleet {r.design} {r.mode} {r.label}", r.other_cpu) for r in results.fleet),
    ]
    known = [(name, share) for name, share in rows if share is not None]
    if not known:
        return ("Other processes' CPU use was not measured (--uri): on a shared machine these "
                "numbers may be disturbed.")
    disturbed = [f"{name} ({share:.0%})" for name, share in known if share > threshold]
    if not disturbed:
        return (f"Other processes took at most {max(s for _, s in known):.0%} of the machine's "
                "CPU during any run: the numbers are undisturbed.")
    return (f"{len(disturbed)} run(s) shared the machine with other work (over {threshold:.0%} "
            f"of the CPU, after re-runs): {', '.join(disturbed)}. Those are slower than on an "
            "idle machine.")


R = TypeVar("R", sc.ThroughputRow, sc.LatencyRow, sc.HerdRow)


class Reruns:
    """Run a case again (twice at most) while other processes took much of the CPU.

    Keeps the least disturbed result; all reruns together stay within ``budget`` seconds.
    """

    def __init__(self, ctx: BenchContext, budget: float, threshold: float) -> None:
        self.ctx = ctx
        self.left = budget
        self.threshold = threshold

    def run(self, make: Callable[[], R]) -> R:
        best = make()
        for _ in range(2):
            other = best.other_cpu
            if other is None or other <= self.threshold or self.left <= 0:
                break
            self.ctx.progress(f"  ({other:.0%} of the CPU went to other processes: running it again)")
            began = time.monotonic()
            again = make()
            self.left -= time.monotonic() - began
            if again.other_cpu is not None and again.other_cpu < other:
                best = again
        return best


def _other(value: float | None) -> str:
    return "" if value is None else f"  [other load {value:.0%}]"


Attempt = Callable[[str, Callable[[], None]], None]


def _in_rounds(ctx: BenchContext, rounds: int, kinds: Sequence[Kind], attempt: Attempt,
               scenario: str, measure: Callable[[Kind], R],
               describe: Callable[[R], str]) -> dict[str, list[R]]:
    """Every kind once per round, round after round, so whatever the server is
    doing meanwhile (a checkpoint, the last run's deletes) falls on all kinds alike.
    Every other round runs them in reverse: no kind always follows the same one."""
    runs: dict[str, list[R]] = {kind.label: [] for kind in kinds}

    def step(kind: Kind) -> None:
        row = measure(kind)
        runs[kind.label].append(row)
        ctx.progress(f"  {kind.label:40} {describe(row)}")

    for round_ in range(rounds):
        if rounds > 1:
            ctx.progress(f"  round {round_ + 1} of {rounds}")
        for kind in sc.round_order(kinds, round_):
            attempt(f"{scenario}: {kind.label}", functools.partial(step, kind))
    return runs


def _describe_throughput(row: sc.ThroughputRow) -> str:
    server = ("" if row.server_cpu_ms_per_job is None
              else f"  server {row.server_cpu_ms_per_job:.2f} ms/job")
    if row.client_cpu_ms_per_job is not None:
        server += f"  client {row.client_cpu_ms_per_job:.2f} ms/job"
    return (f"{row.jobs_per_s:8,.0f} jobs/s{server}  "
            f"dup {row.duplicates} lost {row.lost} left {row.left}"
            + (f"  errors: {row.errors[:1]}" if row.errors else "") + _other(row.other_cpu))


def _describe_latency(row: sc.LatencyRow) -> str:
    return (f"p50 {row.latency.p50:7.2f} ms  p99 {row.latency.p99:7.2f} ms  "
            f"max {row.latency.max:7.2f} ms" + _other(row.other_cpu))


def _run_throughput_plan(ctx: BenchContext, config: BenchConfig, plan: ThroughputPlan,
                         reruns: Reruns, attempt: Attempt, results: Results) -> None:
    rounds = f", {plan.rounds} interleaved rounds" if plan.rounds > 1 else ""
    ctx.progress(f"throughput: {plan.jobs:,} jobs, {plan.name}{rounds}")
    kinds = sc.throughput_kinds(plan, config)
    runs = _in_rounds(
        ctx, plan.rounds, kinds, attempt, f"throughput {plan.name}",
        lambda kind: reruns.run(lambda: sc.throughput(
            ctx, plan, kind, poll_interval=config.poll_interval,
            stall_timeout=config.stall_timeout)),
        _describe_throughput)
    results.throughput.extend(sc.median_round(runs[kind.label]) for kind in kinds
                              if runs[kind.label])


LATENCY_KINDS = (KIND_PUSH, Kind("worker", 1), KIND_POLLING, KIND_FLOOR, KIND_FLOOR_PUSH,
                 KIND_FLOOR_HANDOFF)


def _run_fleet(ctx: BenchContext, config: BenchConfig, attempt: Attempt, results: Results) -> None:
    ctx.progress(f"fleet: worker processes x slots {config.fleet_shapes}; "
                 f"{config.fleet_trickle_jobs} jobs every {config.fleet_trickle_interval * 1000:.0f} ms, "
                 f"then a backlog of {config.fleet_backlog_jobs:,}")
    for processes, slots in config.fleet_shapes:
        for jobs, interval, design in _fleet_runs(config, slots):
            def run(processes: int = processes, slots: int = slots, jobs: int = jobs,
                    interval: float = interval, design: str = design) -> None:
                row = fleet_herd(ctx, processes, slots, jobs=jobs, interval=interval,
                                 stall_timeout=config.stall_timeout, design=design)
                results.fleet.append(row)
                ctx.progress(f"  {row.design:5} {row.mode:7} {row.label:22} "
                             f"{row.jobs_per_s:7,.0f} jobs/s  claims/job "
                             f"{row.claims_per_job:5.2f}  wasted/job {row.wasted_per_job:5.2f}  "
                             f"p50 {row.latency.p50:6.2f} ms" + _other(row.other_cpu))
            attempt(f"fleet {design} {processes}x{slots}", run)


def _fleet_runs(config: BenchConfig, slots: int) -> list[tuple[int, float, str]]:
    """(jobs, interval, design) for one shape: both designs at a trickle and on a backlog,
    and for 1-slot shapes the bare-pymongo floors of both."""
    trickle = (config.fleet_trickle_jobs, config.fleet_trickle_interval)
    backlog = (config.fleet_backlog_jobs, 0.0)
    trickle_floors = TRICKLE_FLOORS if slots == 1 else ()
    backlog_floors = BACKLOG_FLOORS if slots == 1 else ()
    return [(*trickle, design) for design in (HERD, FLEET, *trickle_floors)] + [
        (*backlog, design) for design in (HERD, FLEET, *backlog_floors)]


def _run_latency(ctx: BenchContext, config: BenchConfig, reruns: Reruns, attempt: Attempt,
                 results: Results) -> None:
    per_round = math.ceil(config.latency_jobs / config.latency_rounds)
    ctx.progress(f"latency: {per_round * config.latency_rounds} jobs every "
                 f"{config.latency_interval * 1000:.0f} ms, {config.latency_rounds} interleaved "
                 f"rounds of {per_round}")
    runs = _in_rounds(
        ctx, config.latency_rounds, LATENCY_KINDS, attempt, "latency",
        lambda kind: reruns.run(lambda: sc.latency(
            ctx, kind, jobs=per_round, warmup=config.latency_warmup,
            interval=config.latency_interval, poll_interval=config.poll_interval,
            stall_timeout=config.stall_timeout)),
        _describe_latency)
    results.latency.extend(sc.pool_latency_rounds(runs[kind.label]) for kind in LATENCY_KINDS
                           if runs[kind.label])
    sc.add_latency_ratios(results.latency)


def run_all(ctx: BenchContext, config: BenchConfig, results: Results,
            only: Sequence[str] = SCENARIOS) -> None:
    def attempt(name: str, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:
            ctx.progress(f"{name} FAILED: {type(exc).__name__}: {exc}")
            traceback.print_exc(file=sys.stderr)
            results.failures.append(f"{name}: {type(exc).__name__}: {exc}")

    poll = config.poll_interval
    reruns = Reruns(ctx, config.rerun_budget, config.disturbed)
    if "latency" in only:
        _run_latency(ctx, config, reruns, attempt, results)

    if "idle" in only:
        ctx.progress(f"idle: {config.idle_processes} processes x {config.idle_seconds:.0f} s each")
        idle_kinds: list[tuple[Kind | None, int]] = [
            (None, 1), (KIND_PUSH, 1), (worker_kind(4), 4), (KIND_POLLING, 1), (KIND_FLOOR, 1)]
        for idle_kind, threads in idle_kinds:
            def run_idle(kind: Kind | None = idle_kind, threads: int = threads) -> None:
                row = sc.idle(ctx, kind, processes=config.idle_processes, seconds=config.idle_seconds,
                              threads=threads, poll_interval=poll)
                results.idle.append(row)
                ctx.progress(f"  {row.label:40} {row.raw_ops_per_s:8.2f} server ops/s (raw)"
                             + _other(row.other_cpu))
            attempt(f"idle {idle_kind.label if idle_kind else 'baseline'}", run_idle)
        sc.add_idle_net(results.idle)

    if "throughput" in only:
        for plan in config.throughput:
            _run_throughput_plan(ctx, config, plan, reruns, attempt, results)
        sc.add_floor_ratios(results.throughput)

    if "herd" in only:
        herd_runs: list[tuple[Kind, int, int, float]] = []
        many, few = config.herd_consumers, config.herd_baseline_consumers
        trickle_kinds = [KIND_PUSH, worker_kind(many), KIND_POLLING, KIND_FLOOR]
        if config.herd_queue_per_thread:
            trickle_kinds.insert(1, Kind("push", queue_per_thread=True))
        for kind in trickle_kinds:
            herd_runs.append((kind, many, config.herd_trickle_jobs, config.herd_trickle_interval))
        for count in (few, many):
            for kind in (KIND_PUSH, worker_kind(count), KIND_POLLING, KIND_FLOOR):
                herd_runs.append((kind, count, config.herd_burst_jobs, 0.0))
        ctx.progress(f"herd: {many} consumers waiting, {config.herd_trickle_jobs} jobs every "
                     f"{config.herd_trickle_interval * 1000:.0f} ms; {config.herd_burst_jobs} "
                     f"back to back with {few} and {many}")
        for kind, count, jobs, interval in herd_runs:
            def run_herd(kind: Kind = kind, count: int = count, jobs: int = jobs,
                         interval: float = interval) -> None:
                row = reruns.run(lambda: sc.herd(
                    ctx, kind, count, jobs=jobs, interval=interval, poll_interval=poll,
                    stall_timeout=config.stall_timeout))
                results.herd.append(row)
                ctx.progress(f"  {row.mode:7} {row.label:40} x{count:<3} {row.jobs_per_s:7,.0f} jobs/s "
                             f"wasted/job {row.wasted_per_job:6.2f}  server claims/job "
                             f"{row.server_claims_per_job:5.2f}" + _other(row.other_cpu))
            attempt(f"herd {kind.label} x{count}", run_herd)
        sc.add_herd_ratios(results.herd)

    if "fleet" in only:
        _run_fleet(ctx, config, attempt, results)

    if "depth" in only:
        for level in config.depth_levels:
            ctx.progress(f"depth: {level:,} jobs waiting, {config.depth_samples} claims per consumer")

            def run_depth(level: int = level) -> None:
                rows = sc.depth(ctx, level, (KIND_PUSH, KIND_POLLING, KIND_FLOOR),
                                samples=config.depth_samples)
                results.depth.extend(rows)
                for row in rows:
                    ctx.progress(f"  {row.label:40} claim p50 {row.claim.p50:6.2f} ms p99 "
                                 f"{row.claim.p99:6.2f} ms; keys examined {row.keys_examined}"
                                 + _other(row.other_cpu))
            attempt(f"depth {level}", run_depth)

    if "lifecycle" in only:
        _run_lifecycle(ctx, config, attempt, results)

    if "control" in only:
        ctx.progress(f"control: {config.control_samples} samples each of pause to stop, "
                     "resume to first claim and cancel to handler")

        def run_control() -> None:
            results.control.extend(control(ctx, samples=config.control_samples))
        attempt("control", run_control)

    if "schedules" in only:
        ctx.progress(f"schedules: every=1 with 3 schedulers for {config.schedule_seconds:g} s; "
                     f"idle schedulers for {config.schedule_idle_seconds:g} s")

        def run_schedules() -> None:
            row = schedules(ctx, seconds=config.schedule_seconds,
                            idle_seconds=config.schedule_idle_seconds)
            results.schedules.append(row)
            ctx.progress(f"  lateness p50 {row.lateness.p50:.2f} ms p99 {row.lateness.p99:.2f} ms "
                         f"({row.ticks} ticks, {row.duplicates} twice, {row.gaps} gaps); idle "
                         f"{row.idle_ops_per_s_per_scheduler:.2f} ops/s per scheduler")
        attempt("schedules", run_schedules)
    if "tasks" in only:
        _run_tasks(ctx, config, attempt, results)
    if "dashboard" in only:
        ctx.progress(f"dashboard: the pages' reads on a queue of {config.dashboard_jobs:,} jobs, "
                     f"{config.dashboard_samples} samples each")

        def run_dashboard() -> None:
            rows = dashboard_reads(ctx, jobs=config.dashboard_jobs, samples=config.dashboard_samples)
            results.dashboard.extend(rows)
            for row in rows:
                ctx.progress(f"  {row.name:55} p50 {row.latency.p50:8.2f} ms  "
                             f"p99 {row.latency.p99:8.2f} ms  ({row.shows})")
        attempt("dashboard", run_dashboard)
    if "aio" in only:
        ctx.progress(f"aio: the asyncio API against the sync one, {config.aio_rounds} rounds of "
                     f"{config.aio_jobs:,} jobs, worker drains of {config.aio_worker_jobs:,}")

        def run_aio() -> None:
            results.aio = aio_run(ctx.uri, config.aio_jobs, config.aio_rounds,
                                  config.latency_jobs, config.idle_seconds, ctx.progress,
                                  config.aio_worker_jobs)
        attempt("aio", run_aio)


def _run_tasks(ctx: BenchContext, config: BenchConfig, attempt: Attempt,
               results: Results) -> None:
    ctx.progress(f"tasks: defer() against put(), {config.tasks_calls} calls each; idle task "
                 f"workers (1 queue, 10 queues) for {config.tasks_idle_seconds:g} s each")

    def run_tasks() -> None:
        row = tasks_bench(ctx, calls=config.tasks_calls, idle_seconds=config.tasks_idle_seconds,
                          drain_jobs=config.tasks_drain_jobs)
        results.tasks.append(row)
        ctx.progress(f"  defer {row.defer_us:.0f} us / put {row.put_us:.0f} us = "
                     f"{row.defer_ratio:.3f}x; idle commands/s sent (server ops/s net): "
                     f"1 queue {row.one_queue_commands_per_s:.3f} "
                     f"({row.one_queue_ops_per_s:.2f}), 10 queues "
                     f"{row.ten_queues_commands_per_s:.3f} ({row.ten_queues_ops_per_s:.2f}), "
                     f"10 single-queue Workers {row.ten_workers_commands_per_s:.3f} "
                     f"({row.ten_workers_ops_per_s:.2f}); drain {row.drain_jobs} jobs: "
                     f"{row.drain_one_queue_jobs_per_s:,.0f} jobs/s from 1 queue, "
                     f"{row.drain_ten_queues_jobs_per_s:,.0f} from 10")
    attempt("tasks", run_tasks)


def _run_lifecycle(ctx: BenchContext, config: BenchConfig, attempt: Attempt,
                   results: Results) -> None:
    ctx.progress(f"lifecycle: result() wake-up over {config.result_wakeup_jobs} jobs; "
                 f"keep_completed A/B, {config.retention_rounds} rounds of "
                 f"{config.retention_jobs:,} jobs x {config.retention_threads} threads")

    def wakeup() -> None:
        row = lc.result_wakeup(ctx, jobs=config.result_wakeup_jobs)
        results.result_wakeup.append(row)
        ctx.progress(f"  result() wake-up p50 {row.after_ack.p50:.2f} ms p99 "
                     f"{row.after_ack.p99:.2f} ms after complete() returned")

    def retention() -> None:
        row = lc.retention_ab(ctx, jobs=config.retention_jobs,
                              threads=config.retention_threads,
                              rounds=config.retention_rounds, progress=ctx.progress)
        results.retention.append(row)
        ctx.progress(f"  keep_completed on/off: {row.on_jobs_per_s:,.0f} / "
                     f"{row.off_jobs_per_s:,.0f} jobs/s = {row.ratio:.3f}x")

    def txn_put() -> None:
        row = lc.txn_put_wakeup(ctx, jobs=config.result_wakeup_jobs)
        results.txn_put.append(row)
        ctx.progress(f"  claim after a transactional put's commit p50 "
                     f"{row.after_commit.p50:.2f} ms p99 {row.after_commit.p99:.2f} ms")

    attempt("lifecycle: result() wake-up", wakeup)
    attempt("lifecycle: transactional put", txn_put)
    attempt("lifecycle: retention A/B", retention)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    config = BenchConfig.quick_plan() if args.quick else BenchConfig.full()
    if args.jobs:
        config = config.with_jobs(args.jobs)
    if importlib.util.find_spec("kombu") is None:
        config = replace(config, kombu=False, notes=(
            *config.notes, "kombu is not installed (pip install '.[bench]'): no kombu row."))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.wait_quiet > 0:
        wait_quiet(args.wait_quiet)
    began = time.monotonic()
    replica_set: ReplicaSet | None = None
    if args.uri:
        uri = args.uri
    else:
        say("starting a single-node replica set (streamqueue.testing)")
        replica_set = ReplicaSet(nodes=1)
        uri = replica_set.start()
    ctx = BenchContext(uri, server_pids=[] if replica_set is None else [
        m.process.pid for m in replica_set.members if m.process is not None])
    try:
        results = Results(
            mode="quick" if config.quick else "full",
            started=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            seconds=0.0, machine=machine_description(ctx.client),
            config=asdict(config), notes=list(config.notes),
        )
        run_all(ctx, config, results, args.only or SCENARIOS)
    finally:
        ctx.close()
        if replica_set is not None:
            replica_set.stop()
    results.seconds = time.monotonic() - began
    results.machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    note = busy_note(results, config.disturbed)
    if note:
        results.notes.append(note)
    results.targets = evaluate(results, worker_batch=config.worker_batch)
    write_json(results, out / "results.json")
    (out / "results.md").write_text(markdown(results))
    (out / "PERFORMANCE.md").write_text(performance_markdown(results))
    plots = write_plots(results, out)
    say(f"done in {results.seconds / 60:.1f} min; wrote {out / 'results.json'}, "
        f"{out / 'results.md'} and {len(plots)} plots")
    for target in results.targets:
        verdict = {True: "PASS", False: "MISS", None: "n/a "}[target.passed]
        say(f"{verdict}  {target.name}: {target.measured} (needs {target.requirement})")
    return 1 if results.failures else 0


if __name__ == "__main__":
    sys.exit(main())
