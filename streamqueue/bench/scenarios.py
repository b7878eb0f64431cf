"""The five scenarios of the benchmark; each function runs one case and returns its row."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bson import SON
from pymongo.collection import Collection

from streamqueue.bench.common import (
    BenchContext,
    CountingHooks,
    OpsDelta,
    Percentiles,
    bulk_fill,
    queue_documents,
    ratio,
)
from streamqueue.bench.config import BenchConfig, ThroughputPlan
from streamqueue.bench.consumers import (
    DEFAULT_BATCH,
    FLOOR,
    FLOOR_BATCH,
    FLOOR_PUSH,
    KOMBU,
    POLLING,
    PUSH,
    REAL_JOBS,
    STORE,
    STORE_BATCH,
    WORKER,
    ConsumerGroup,
    Kind,
    RawFloor,
    Sink,
    put_jobs,
)
from streamqueue.bench.kombu_peer import KombuPeer
from streamqueue.bench.procs import Child, children, go_all
from streamqueue.queue import Queue
from streamqueue.storage import CLAIM_SORT, READY_AND_DUE, Document, _claim_pipeline

# -- 1. throughput ------------------------------------------------------------------------


@dataclass
class ThroughputRow:
    plan: str
    threads: int
    processes: int
    consumers: int
    kind: str
    label: str
    batch: int
    jobs: int
    seconds: float
    jobs_per_s: float
    duplicates: int
    lost: int
    left: int
    enqueue_per_s: float
    # Share of the machine's CPU other processes used meanwhile (None: unknown).
    other_cpu: float | None = None
    ratio_to_floor: float | None = None
    errors: list[str] = field(default_factory=list)
    # Jobs/s of every round, in the order run (one entry unless the plan has rounds).
    rounds_jobs_per_s: list[float] = field(default_factory=list)
    # The server's CPU time per job over the drain (None when its processes are unknown):
    # steadier than jobs/s on a machine the client and the server saturate together.
    server_cpu_ms_per_job: float | None = None
    # The consumers' CPU time per job (this process and its consumer processes): with the
    # server's, what a job costs the machine, whose cores bound every rate here.
    client_cpu_ms_per_job: float | None = None
    # A Worker's claims_in_flight (1 for every other consumer).
    claims_in_flight: int = 1


def round_order(kinds: Sequence[Kind], round_: int) -> list[Kind]:
    """The kinds in the order round ``round_`` runs them: every other round reversed."""
    return list(kinds) if round_ % 2 == 0 else list(reversed(kinds))


def median_round(rows: Sequence[ThroughputRow]) -> ThroughputRow:
    """One kind's rounds as one row: the median round's figures, every round's faults.

    A duplicate or a lost job in any round must show, not only in the round
    that happened to be the median.
    """
    if not rows:
        raise ValueError("no rounds to summarize")
    ranked = sorted(rows, key=lambda r: r.jobs_per_s)
    middle = ranked[(len(ranked) - 1) // 2]
    return replace(
        middle,
        duplicates=sum(r.duplicates for r in rows), lost=sum(r.lost for r in rows),
        left=sum(r.left for r in rows), errors=[e for r in rows for e in r.errors],
        rounds_jobs_per_s=[r.jobs_per_s for r in rows],
    )


def throughput(ctx: BenchContext, plan: ThroughputPlan, kind: Kind, *,
               poll_interval: float = 0.1, stall_timeout: float = 30.0) -> ThroughputRow:
    """Drain ``plan.jobs`` pre-enqueued jobs; count duplicates and losses."""
    with ctx.scratch("tp") as coll:
        enqueue_rate = put_jobs(kind, coll, plan.jobs, uri=ctx.uri)
        cpu = ctx.cpu_start()
        if plan.processes == 1:
            seqs, began, ended, errors = _drain_here(coll, plan, kind, poll_interval, stall_timeout,
                                                     ctx.uri)
        else:
            seqs, began, ended, errors = _drain_in_processes(ctx, coll, plan, kind, poll_interval,
                                                             stall_timeout)
        server_cpu = ctx.server_cpu(cpu)
        client_cpu = ctx.client_cpu(cpu)
        other_cpu = ctx.other_cpu(cpu)
        left = KombuPeer(ctx.uri, coll).left() if kind.kind == KOMBU \
            else coll.count_documents(REAL_JOBS)
    unique = {s for s in seqs if 0 <= s < plan.jobs}
    seconds = max(ended - began, 1e-9)
    server_ms = _per_job_ms(server_cpu, len(unique))
    client_ms = _per_job_ms(client_cpu, len(unique))
    return ThroughputRow(
        plan=plan.name, threads=plan.threads, processes=plan.processes, consumers=plan.consumers,
        kind=kind.kind, label=kind.label, batch=kind.batch, jobs=plan.jobs,
        seconds=seconds, jobs_per_s=len(unique) / seconds,
        duplicates=len(seqs) - len(set(seqs)), lost=plan.jobs - len(unique), left=left,
        enqueue_per_s=enqueue_rate, other_cpu=other_cpu, errors=errors,
        server_cpu_ms_per_job=server_ms, client_cpu_ms_per_job=client_ms,
        claims_in_flight=kind.claims_in_flight,
    )


def _per_job_ms(seconds: float | None, jobs: int) -> float | None:
    return None if seconds is None else seconds * 1000 / max(jobs, 1)


def _drain_here(coll: Collection[Document], plan: ThroughputPlan, kind: Kind, poll_interval: float,
                stall_timeout: float, uri: str) -> tuple[list[int], float, float, list[str]]:
    sink = Sink(expected=plan.jobs)
    group = ConsumerGroup(kind, coll, plan.threads, sink, poll_interval=poll_interval, burst=True,
                          uri=uri)
    group.prepare()
    began = time.time()
    group.start()
    if group.worker is not None:
        # Burst mode: the Worker returns once nothing is due and its slots are idle.
        _wait_while(lambda: group.running, sink, stall_timeout)
    else:
        sink.wait(stall_timeout, should_stop=lambda: not group.running)
    ended = group.finished_at or sink.last_done or time.time()
    group.stop()
    group.close()
    return sink.seqs, began, ended, group.errors


def _wait_while(condition: Callable[[], bool], sink: Sink, stall_timeout: float) -> None:
    while condition() and sink.idle_seconds() < stall_timeout:
        time.sleep(0.02)


def _drain_in_processes(ctx: BenchContext, coll: Collection[Document], plan: ThroughputPlan,
                        kind: Kind, poll_interval: float,
                        stall_timeout: float) -> tuple[list[int], float, float, list[str]]:
    spec = {"role": "drain", "uri": ctx.uri, "db": ctx.db_name, "collection": coll.name,
            "kind": kind.to_json(), "threads": plan.threads, "poll_interval": poll_interval,
            "burst": True}
    with children([spec] * plan.processes) as kids:
        began = go_all(kids)
        _wait_until_empty(coll, stall_timeout, kids)
        for kid in kids:
            kid.send("stop")
        results = [kid.result(timeout=60) for kid in kids]
    seqs = [s for r in results for s in r["seqs"]]
    ends = [r["finished_at"] or r["last_done"] for r in results if r["finished_at"] or r["last_done"]]
    errors = [e for r in results for e in r["errors"]]
    return seqs, began, max(ends, default=time.time()), errors


def _wait_until_empty(coll: Collection[Document], stall_timeout: float,
                      kids: Sequence[Child]) -> None:
    """Until the collection is empty (every job deleted) or stops shrinking."""
    last, changed = coll.estimated_document_count(), time.monotonic()
    while last > 0:
        time.sleep(0.1)
        now = coll.estimated_document_count()
        if now != last:
            last, changed = now, time.monotonic()
        elif time.monotonic() - changed > stall_timeout:
            return
        if all(kid.proc.poll() is not None for kid in kids):
            return


def add_floor_ratios(rows: Sequence[ThroughputRow]) -> None:
    floors = {r.plan: r.jobs_per_s for r in rows if r.kind == FLOOR}
    for row in rows:
        if row.plan in floors:
            row.ratio_to_floor = ratio(row.jobs_per_s, floors[row.plan])


# -- 2. latency ---------------------------------------------------------------------------


@dataclass
class LatencyRow:
    kind: str
    label: str
    jobs: int
    warmup: int
    interval_ms: float
    latency: Percentiles
    lost: int
    duplicates: int
    other_cpu: float | None = None
    p50_ratio_to_floor: float | None = None
    p99_ratio_to_floor: float | None = None
    p50_ratio_to_push_floor: float | None = None
    # Every measured job in enqueue order: milliseconds from enqueue to claim.
    samples_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # p50 and p99 of every round, in the order run (one entry unless the run had rounds).
    rounds_p50_ms: list[float] = field(default_factory=list)
    rounds_p99_ms: list[float] = field(default_factory=list)


def latency(ctx: BenchContext, kind: Kind, *, jobs: int, warmup: int, interval: float,
            poll_interval: float = 0.1, stall_timeout: float = 30.0) -> LatencyRow:
    """One idle consumer; a producer process enqueues a job every ``interval`` seconds."""
    total = warmup + jobs
    cpu = ctx.cpu_start()
    with ctx.scratch("lat") as coll:
        sink = Sink(expected=total)
        group = ConsumerGroup(kind, coll, 1, sink, poll_interval=poll_interval, push_wait=30.0)
        group.prepare()
        group.start()
        group.wait_idle()
        spec = {"role": "produce", "uri": ctx.uri, "db": ctx.db_name, "collection": coll.name,
                "mode": "queue" if kind.uses_queue_shape else "floor", "count": total,
                "interval": interval}
        with children([spec]) as kids:
            go_all(kids)
            sink.wait(stall_timeout)
            kids[0].send("stop")
            kids[0].result(timeout=60)
        group.stop(timeout=10)
        group.close()
    other_cpu = ctx.other_cpu(cpu)
    measured = [lat for seq, lat in sorted(sink.samples) if seq >= warmup]
    return LatencyRow(
        kind=kind.kind, label=kind.label, jobs=len(measured), warmup=warmup,
        interval_ms=interval * 1000, latency=Percentiles.of_seconds(measured),
        lost=total - sink.unique, duplicates=sink.duplicates, other_cpu=other_cpu,
        samples_ms=[round(lat * 1000, 3) for lat in measured], errors=group.errors,
    )


def pool_latency_rounds(rows: Sequence[LatencyRow]) -> LatencyRow:
    """One kind's rounds as one row: percentiles over every round's samples together.

    Rounds are interleaved with the other kinds, so whatever the server was
    doing (a checkpoint, the previous run's deletes) falls on every kind alike
    instead of on whichever ran first.
    """
    if not rows:
        raise ValueError("no rounds to pool")
    samples = [ms for row in rows for ms in row.samples_ms]
    loads = [row.other_cpu for row in rows if row.other_cpu is not None]
    return replace(
        rows[0], jobs=len(samples), latency=Percentiles.of_seconds([ms / 1000 for ms in samples]),
        lost=sum(r.lost for r in rows), duplicates=sum(r.duplicates for r in rows),
        other_cpu=max(loads) if loads else None, samples_ms=samples,
        errors=[e for r in rows for e in r.errors],
        rounds_p50_ms=[r.latency.p50 for r in rows],
        rounds_p99_ms=[r.latency.p99 for r in rows],
    )


def add_latency_ratios(rows: Sequence[LatencyRow]) -> None:
    floor = next((r for r in rows if r.kind == FLOOR), None)
    push_floor = next((r for r in rows if r.kind == FLOOR_PUSH), None)
    for row in rows:
        if floor is not None:
            row.p50_ratio_to_floor = ratio(row.latency.p50, floor.latency.p50)
            row.p99_ratio_to_floor = ratio(row.latency.p99, floor.latency.p99)
        if push_floor is not None:
            row.p50_ratio_to_push_floor = ratio(row.latency.p50, push_floor.latency.p50)


# -- 3. idle load -------------------------------------------------------------------------


@dataclass
class IdleRow:
    kind: str
    label: str
    processes: int
    threads_per_process: int
    seconds: float
    raw_ops_per_s: float
    counters: dict[str, int]
    baseline_ops_per_s: float = 0.0
    net_ops_per_s: float = 0.0
    net_per_process: float = 0.0
    other_cpu: float | None = None
    ratio_to_floor: float | None = None
    errors: list[str] = field(default_factory=list)


def idle(ctx: BenchContext, kind: Kind | None, *, processes: int, seconds: float,
         threads: int = 1, poll_interval: float = 0.1, settle: float = 1.0) -> IdleRow:
    """Server operations while ``processes`` idle consumers wait; ``kind=None`` is the baseline."""
    with ctx.scratch("idle") as coll:
        Queue(coll).store.ensure_indexes()
        RawFloor(coll).ensure_index()
        specs = [] if kind is None else [
            {"role": "idle", "uri": ctx.uri, "db": ctx.db_name, "collection": coll.name,
             "kind": kind.to_json(), "threads": threads, "poll_interval": poll_interval}
        ] * processes
        with children(specs) as kids:
            time.sleep(settle)
            before = ctx.server_ops()
            cpu = ctx.cpu_start()
            time.sleep(seconds)
            delta = ctx.server_ops().since(before)
            other_cpu = ctx.other_cpu(cpu)
            for kid in kids:
                kid.send("stop")
            results = [kid.result(timeout=60) for kid in kids]
    return IdleRow(
        kind="baseline" if kind is None else kind.kind,
        label="no consumers (baseline)" if kind is None else kind.label,
        processes=0 if kind is None else processes, threads_per_process=threads,
        seconds=delta.seconds, raw_ops_per_s=delta.per_second, counters=delta.counters,
        other_cpu=other_cpu, errors=[e for r in results for e in r["errors"]],
    )


def add_idle_net(rows: Sequence[IdleRow]) -> None:
    baseline = next((r for r in rows if r.kind == "baseline"), None)
    base = baseline.raw_ops_per_s if baseline else 0.0
    for row in rows:
        row.baseline_ops_per_s = base
        row.net_ops_per_s = max(0.0, row.raw_ops_per_s - base)
        row.net_per_process = row.net_ops_per_s / row.processes if row.processes else 0.0
    floor = next((r for r in rows if r.kind == FLOOR), None)
    if floor is not None:
        for row in rows:
            if row.processes:
                row.ratio_to_floor = ratio(row.net_per_process, floor.net_per_process)


# -- 4. depth -----------------------------------------------------------------------------


@dataclass
class DepthRow:
    kind: str
    label: str
    depth: int
    samples: int
    claim: Percentiles
    claim_complete: Percentiles
    keys_examined: int | None
    docs_examined: int | None
    plan: str
    fill_seconds: float
    other_cpu: float | None = None
    claim_p50_ratio_to_floor: float | None = None
    errors: list[str] = field(default_factory=list)


def depth(ctx: BenchContext, level: int, kinds: Sequence[Kind], *, samples: int,
          warmup: int = 20) -> list[DepthRow]:
    """Claim+complete latency with ``level`` jobs waiting (kept constant with refills)."""
    with ctx.scratch("depth") as coll:
        Queue(coll).store.ensure_indexes()
        began = time.perf_counter()
        bulk_fill(coll, queue_documents(level))
        fill_seconds = time.perf_counter() - began
        ctx.progress(f"  depth {level:,}: filled in {fill_seconds:.1f}s")
        rows = [_depth_kind(ctx, coll, level, kind, samples, warmup, fill_seconds)
                for kind in kinds]
    floor = next((r for r in rows if r.kind == FLOOR), None)
    if floor is not None:
        for row in rows:
            row.claim_p50_ratio_to_floor = ratio(row.claim.p50, floor.claim.p50)
    return rows


def _depth_kind(ctx: BenchContext, coll: Collection[Document], level: int, kind: Kind,
                samples: int, warmup: int, fill_seconds: float) -> DepthRow:
    claims: list[float] = []
    totals: list[float] = []
    errors: list[str] = []
    refill = iter(queue_documents(samples + warmup + 10, start=level + 10_000_000 * (1 + len(
        kind.kind))))
    queue = Queue(coll)
    floor = RawFloor(coll, sort=CLAIM_SORT)
    if kind.kind == PUSH:
        queue.watcher.start()
    cpu = ctx.cpu_start()
    try:
        for index in range(samples + warmup):
            began = time.perf_counter()
            if kind.kind == FLOOR:
                doc = floor.claim()
                claimed = time.perf_counter()
                if doc is None:
                    raise RuntimeError("the floor found no job in a full queue")
                floor.complete(doc)
            else:
                job = queue.next(timeout=1.0 if kind.kind == PUSH else 0)
                claimed = time.perf_counter()
                if job is None:
                    raise RuntimeError("no job claimed from a full queue")
                job.complete()
            done = time.perf_counter()
            coll.insert_one(next(refill))
            if index >= warmup:
                claims.append(claimed - began)
                totals.append(done - began)
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        queue.close()
    other_cpu = ctx.other_cpu(cpu)
    keys, docs, plan = explain_claim(ctx, coll, floor=kind.kind == FLOOR)
    return DepthRow(
        kind=kind.kind, label=kind.label, depth=level, samples=len(claims),
        claim=Percentiles.of_seconds(claims), claim_complete=Percentiles.of_seconds(totals),
        keys_examined=keys, docs_examined=docs, plan=plan, fill_seconds=fill_seconds,
        other_cpu=other_cpu, errors=errors,
    )


def explain_claim(ctx: BenchContext, coll: Collection[Document], *,
                  floor: bool) -> tuple[int | None, int | None, str]:
    """Keys and documents the claim examines, from ``explain`` (executionStats; nothing written)."""
    if floor:
        query: Document = {"state": "ready"}
        update: Any = {"$set": {"state": "locked", "lease_token": "explain"}}
    else:
        query = READY_AND_DUE
        update = _claim_pipeline("explain", "explain", 300.0)
    command = SON([("findAndModify", coll.name), ("query", query), ("sort", SON(CLAIM_SORT)),
                   ("update", update), ("new", True)])
    try:
        out = ctx.db.command("explain", command, verbosity="executionStats")
    except Exception as exc:
        return None, None, f"explain failed: {exc}"
    stats = out.get("executionStats", {})
    return (stats.get("totalKeysExamined"), stats.get("totalDocsExamined"),
            _plan_summary(out.get("queryPlanner", {}).get("winningPlan", {})))


def _plan_summary(plan: Any) -> str:
    stages = []
    while isinstance(plan, dict) and plan:
        stage = str(plan.get("stage", "?"))
        if plan.get("indexName"):
            stage += f"({plan['indexName']})"
        stages.append(stage)
        plan = plan.get("inputStage") or (plan.get("inputStages") or [None])[0]
    return " <- ".join(stages)


# -- 5. herd ------------------------------------------------------------------------------


@dataclass
class HerdRow:
    mode: str  # "trickle": paced arrivals; "stream": one producer, back to back
    kind: str
    label: str
    queue_per_thread: bool
    consumers: int
    jobs: int
    interval_ms: float
    seconds: float
    jobs_per_s: float
    wasted_wakeups: int  # push: the claim_empty hook; polling and floor: empty claims
    wasted_per_job: float
    server_claims_per_job: float  # findAndModify commands per job, all consumers
    server_ops_per_job: float  # every counted server operation per job, producer included
    latency: Percentiles
    lost: int
    duplicates: int
    other_cpu: float | None = None
    ratio_to_floor: float | None = None
    errors: list[str] = field(default_factory=list)


def herd(ctx: BenchContext, kind: Kind, consumers: int, *, jobs: int, interval: float,
         poll_interval: float = 0.1, stall_timeout: float = 30.0) -> HerdRow:
    """``consumers`` idle consumers; a producer process enqueues jobs one at a time."""
    hooks = CountingHooks()
    cpu = ctx.cpu_start()
    with ctx.scratch("herd") as coll:
        sink = Sink(expected=jobs)
        group = ConsumerGroup(kind, coll, consumers, sink, hooks=hooks,
                              poll_interval=poll_interval, push_wait=30.0)
        group.prepare()
        group.start()
        group.wait_idle()
        spec = {"role": "produce", "uri": ctx.uri, "db": ctx.db_name, "collection": coll.name,
                "mode": "queue" if kind.uses_queue_shape else "floor", "count": jobs,
                "interval": interval}
        with children([spec]) as kids:
            before = ctx.server_ops()
            began = go_all(kids)
            sink.wait(stall_timeout)
            delta: OpsDelta = ctx.server_ops().since(before)
            wasted = hooks.empty if kind.kind in (PUSH, WORKER) else sink.empty_claims
            kids[0].send("stop")
            kids[0].result(timeout=60)
        group.stop(timeout=10)
        group.close()
    other_cpu = ctx.other_cpu(cpu)
    seconds = max((sink.last_done or time.time()) - began, 1e-9)
    delivered = max(sink.unique, 1)
    return HerdRow(
        mode="trickle" if interval > 0 else "stream", kind=kind.kind, label=kind.label,
        queue_per_thread=kind.queue_per_thread,
        consumers=consumers, jobs=jobs, interval_ms=interval * 1000, seconds=seconds,
        jobs_per_s=sink.unique / seconds, wasted_wakeups=wasted, wasted_per_job=wasted / delivered,
        server_claims_per_job=delta.find_and_modify / delivered,
        server_ops_per_job=delta.total / delivered,
        latency=Percentiles.of_seconds([lat for _, lat in sink.samples]),
        lost=jobs - sink.unique, duplicates=sink.duplicates, other_cpu=other_cpu,
        errors=group.errors,
    )


def add_herd_ratios(rows: Sequence[HerdRow]) -> None:
    floors = {(r.mode, r.consumers): r.jobs_per_s for r in rows if r.kind == FLOOR}
    for row in rows:
        key = (row.mode, row.consumers)
        if key in floors:
            row.ratio_to_floor = ratio(row.jobs_per_s, floors[key])


# -- the whole plan -----------------------------------------------------------------------


# The batched Worker rows run again with this many claims in flight (target 4).
CLAIMS_AHEAD = 2


def throughput_kinds(plan: ThroughputPlan, config: BenchConfig) -> list[Kind]:
    kinds = [Kind(PUSH), Kind(WORKER, 1)]
    batches = config.batch_sizes(plan)
    if plan.threads > 1:
        kinds.append(Kind(WORKER, DEFAULT_BATCH))
        kinds.extend(Kind(WORKER, batch) for batch in batches)
        kinds.extend(Kind(WORKER, batch, claims_in_flight=CLAIMS_AHEAD) for batch in batches)
    kinds.extend([Kind(POLLING), Kind(STORE), Kind(FLOOR)])
    if plan.threads > 1:
        kinds.extend(Kind(STORE_BATCH, batch) for batch in batches)
        kinds.extend(Kind(FLOOR_BATCH, batch) for batch in batches)
    if plan.processes == 1 and plan.threads == config.peer_threads and config.kombu:
        kinds.append(Kind(KOMBU))
    return kinds
