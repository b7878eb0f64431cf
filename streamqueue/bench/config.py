"""What a benchmark run measures: the full plan (about an hour on 2 cores) and the quick one (under 2)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class ThroughputPlan:
    """Drain ``jobs`` pre-enqueued jobs with ``processes`` x ``threads`` consumers."""

    threads: int
    jobs: int
    processes: int = 1
    # Each kind runs this many times, round by round (every kind once, then
    # again), and reports its median round: a drain of ~30 s may or may not
    # meet a WiredTiger checkpoint (one a minute), which moves it by 10-20 %.
    rounds: int = 1

    @property
    def consumers(self) -> int:
        return self.threads * self.processes

    @property
    def name(self) -> str:
        if self.processes == 1:
            return f"{self.threads} thread{'s' if self.threads > 1 else ''}"
        return f"{self.processes} procs x {self.threads} threads"


@dataclass(frozen=True)
class BenchConfig:
    quick: bool
    throughput: tuple[ThroughputPlan, ...]
    # Jobs a batched Worker may claim in one round trip; above its slot count the
    # rest wait in its prefetch buffer.
    worker_batch: int = 16
    # Issue 16, target 4: in the plan the targets use, the batched Worker and the
    # batched floor also run at these sizes, to find the batch that reaches 0.9x.
    batch_sweep: tuple[int, ...] = (8, 16, 32)
    # The peer row (kombu's MongoDB transport) runs in the plan with this many threads,
    # in one process; off where kombu is not installed.
    peer_threads: int = 4
    kombu: bool = True
    # p99 of 500 pooled samples was their fifth worst: the push floor's own p99 moved
    # from 6.6 to 15.8 ms between three quiet runs, so 1,500 (the fifteenth worst).
    latency_jobs: int = 1_500
    # The jobs are split over this many rounds, every kind once per round, and
    # pooled: a kind that always ran first met the server fresh from start-up.
    latency_rounds: int = 5
    latency_warmup: int = 10
    latency_interval: float = 0.02
    idle_seconds: float = 30.0
    idle_processes: int = 4
    depth_levels: tuple[int, ...] = (1_000, 1_000_000)
    depth_samples: int = 1_000
    herd_consumers: int = 32
    herd_baseline_consumers: int = 4
    herd_trickle_jobs: int = 300
    herd_trickle_interval: float = 0.01
    herd_burst_jobs: int = 2_000
    # Also 32 consumers each with its own Queue object (as 32 processes would be): slow to set up.
    herd_queue_per_thread: bool = True
    # Issue 16's herd across processes: worker processes x slots, the baseline shape first.
    fleet_shapes: tuple[tuple[int, int], ...] = ((4, 1), (16, 1), (32, 1), (8, 4))
    fleet_trickle_jobs: int = 300
    fleet_trickle_interval: float = 0.01
    fleet_backlog_jobs: int = 4_000
    # Samples of each control latency (pause to stop, resume to claim, cancel to handler).
    control_samples: int = 30
    # Schedules: seconds of every=1 ticks with 3 schedulers, and of idle schedulers.
    schedule_seconds: float = 60.0
    schedule_idle_seconds: float = 30.0
    # Tasks (issue 18): defer() against put() over this many calls each, and seconds of
    # idle task workers (1 queue, 10 queues) against the baseline.
    tasks_calls: int = 2_000
    tasks_idle_seconds: float = 30.0
    tasks_drain_jobs: int = 2_000
    # The dashboard's reads on a queue this deep (issue 15: <= 300 ms with 1,000,000 jobs).
    dashboard_jobs: int = 1_000_000
    dashboard_samples: int = 20
    # The asyncio API against the sync one (issue 13; bench/aio.py): drains, worker drains.
    aio_jobs: int = 3_000
    aio_worker_jobs: int = 20_000
    aio_rounds: int = 3
    # The polling consumer (and the floor, which has no push) claims this often when empty.
    poll_interval: float = 0.1
    # A run with no progress for this long stops and reports its losses.
    stall_timeout: float = 30.0
    # A run during which other processes took more than this share of the machine's CPU is
    # run again (keeping the least disturbed), within this many seconds for the whole bench.
    disturbed: float = 0.15
    rerun_budget: float = 150.0
    # Lifecycle (issue 11): result() wake-ups measured, and a retention A/B drain per arm
    # per round with this many jobs and consumer threads.
    result_wakeup_jobs: int = 200
    retention_jobs: int = 5_000
    retention_threads: int = 4
    retention_rounds: int = 5
    notes: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def full(cls) -> BenchConfig:
        return cls(
            quick=False,
            throughput=(
                # Target 3 is judged on one thread: single rounds of its drains
                # (about 5 s each) ranged 0.80-1.25x Worker against next(), so 5.
                ThroughputPlan(threads=1, jobs=2_000, rounds=5),
                ThroughputPlan(threads=4, jobs=20_000, rounds=3),
                ThroughputPlan(threads=16, jobs=5_000, rounds=3),
                ThroughputPlan(threads=4, jobs=20_000, processes=4),
            ),
            notes=(
                "Throughput drains 20,000 jobs for the 4-consumer rows the targets use, "
                "2,000 for 1 thread and 5,000 for 16, to keep the throughput part to about 40 minutes "
                "(`--jobs 20000` drains 20,000 everywhere). The 1- and 4-thread rows the "
                "targets use are the median of 5 and 3 interleaved rounds (all kinds once, "
                "then again in reverse order), the 16-thread row of 3: single drains moved by "
                "10-20 % from run to run.",
            ),
        )

    @classmethod
    def quick_plan(cls) -> BenchConfig:
        return cls(
            quick=True,
            throughput=(
                ThroughputPlan(threads=1, jobs=300),
                ThroughputPlan(threads=4, jobs=1_000, rounds=2),
                ThroughputPlan(threads=16, jobs=600),
                ThroughputPlan(threads=4, jobs=1_000, processes=4),
            ),
            latency_jobs=100,
            latency_warmup=5,
            latency_rounds=2,
            idle_seconds=2.0,
            depth_levels=(1_000, 100_000),
            depth_samples=150,
            herd_trickle_jobs=60,
            herd_burst_jobs=200,
            herd_queue_per_thread=False,
            fleet_shapes=((2, 1), (8, 1), (2, 4)),
            fleet_trickle_jobs=60,
            fleet_backlog_jobs=400,
            result_wakeup_jobs=50,
            retention_jobs=1_000,
            retention_rounds=3,
            control_samples=6,
            schedule_seconds=8.0,
            schedule_idle_seconds=5.0,
            dashboard_jobs=20_000,
            dashboard_samples=5,
            tasks_calls=600,
            tasks_idle_seconds=12.0,
            tasks_drain_jobs=400,
            aio_jobs=300,
            aio_worker_jobs=2_000,
            aio_rounds=1,
            stall_timeout=15.0,
            rerun_budget=15.0,
            batch_sweep=(16,),
            notes=(
                "QUICK MODE: fewer jobs (throughput 300-1,000 per run, latency 100 jobs instead of "
                ">= 500, idle windows of 2 s instead of 30 s, depth 100,000 instead of 1,000,000, "
                "no Queue-per-thread herd row); numbers are noisier and the latency target is "
                "judged on fewer than 500 samples.",
            ),
        )

    def batch_sizes(self, plan: ThroughputPlan) -> list[int]:
        """The batch sizes the batched rows of ``plan`` run with."""
        sweep = plan.threads == self.peer_threads and plan.processes == 1
        return sorted({self.worker_batch, *(self.batch_sweep if sweep else ())})

    def with_jobs(self, jobs: int) -> BenchConfig:
        """Drain ``jobs`` jobs in every throughput run."""
        return replace(
            self,
            throughput=tuple(replace(plan, jobs=jobs) for plan in self.throughput),
            notes=tuple(n for n in self.notes if not n.startswith("Throughput drains")),
        )
