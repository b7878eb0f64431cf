"""Prometheus metrics for streamqueue: ``PrometheusHooks`` and the ``/metrics`` exporter.

This is the only module that imports ``prometheus_client``; the core talks to
it through ``streamqueue.hooks.Hooks``. The metric names below are a contract
(dashboards and alerts in ``deploy/`` query them): every series carries the
label ``queue``.

One process, one registry: construct ``PrometheusHooks`` once and share it
between queues (the ``queue`` label tells them apart). Constructing it again on
the same registry reuses the metrics already registered there, so a second
instance never fails with "Duplicated timeseries".
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from streamqueue.hooks import Hooks

log = logging.getLogger(__name__)

PREFIX = "streamqueue"

#: Attempt numbers (a count, not seconds): 1 to 10 each in its own bucket, then 12, 15, 20, +Inf.
ATTEMPT_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 20, math.inf)
#: Queue and run time, from a millisecond (a push wake-up) to an hour (a backlog), then +Inf.
SECONDS_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, math.inf,
)
#: ``stats`` keys published as ``streamqueue_queue_jobs{state=...}``. "dead" is the
#: error queue; "failed" is the same number under its deprecated name.
QUEUE_STATES = ("available", "locked", "expired", "delayed", "dead", "failed", "completed",
                "cancelled")
RUN_OUTCOMES = ("completed", "failed", "released", "lease_lost")

#: Names kept for one release after a rename, and what replaces each. "failed"
#: meant two things (attempts that raised, jobs dead-lettered); the new names
#: say which. Both are exported meanwhile, with the same values.
DEPRECATED: Mapping[str, str] = {
    "streamqueue_jobs_failed_total": "streamqueue_attempts_failed_total",
    'streamqueue_queue_jobs{state="failed"}': 'streamqueue_queue_jobs{state="dead"}',
}

#: Every metric family this module exports (histograms by base name).
METRIC_NAMES: frozenset[str] = frozenset({
    "streamqueue_jobs_enqueued_total",
    "streamqueue_jobs_deduplicated_total",
    "streamqueue_jobs_claimed_total",
    "streamqueue_jobs_completed_total",
    "streamqueue_attempts_failed_total",
    "streamqueue_jobs_failed_total",  # deprecated: streamqueue_attempts_failed_total
    "streamqueue_jobs_dead_total",
    "streamqueue_jobs_released_total",
    "streamqueue_leases_expired_total",
    "streamqueue_claims_empty_total",
    "streamqueue_changestream_restarts_total",
    "streamqueue_job_attempts",
    "streamqueue_job_wait_seconds",
    "streamqueue_job_run_seconds",
    "streamqueue_queue_jobs",
    "streamqueue_queue_oldest_available_age_seconds",
    "streamqueue_queue_paused",
    "streamqueue_worker_busy_slots",
    "streamqueue_worker_slots",
    "streamqueue_changestream_last_event_age_seconds",
    "streamqueue_schedule_ticks_fired_total",
    "streamqueue_schedule_ticks_missed_total",
    "streamqueue_schedule_lateness_seconds",
    "streamqueue_task_runs_total",
    "streamqueue_task_run_seconds",
})


@dataclass(frozen=True)
class _TrackedWorker:
    queue: str
    slots: int
    busy: Callable[[], int]
    last_event_age: Callable[[], float]


class _WorkerCollector(Collector):
    """Worker gauges, read from the workers at scrape time.

    Several workers of one queue in one process add up their slots; the
    change stream age is the freshest of them. A callback that raises is
    logged and left out of that scrape rather than failing it.
    """

    def __init__(self) -> None:
        # Registries key collectors by identity, so this class must stay hashable
        # (not a dataclass with eq).
        self.workers: dict[int, _TrackedWorker] = {}
        self.lock = threading.Lock()

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families()

    def _families(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(f"{PREFIX}_worker_busy_slots",
                              "Handler slots running a job now.", labels=["queue"]),
            GaugeMetricFamily(f"{PREFIX}_worker_slots",
                              "Handler slots (the worker's concurrency).", labels=["queue"]),
            GaugeMetricFamily(f"{PREFIX}_changestream_last_event_age_seconds",
                              ("Seconds since the worker's change stream last delivered an event "
                               "(also grows while the worker is too busy to wait and its "
                               "stream is closed)."),
                              labels=["queue"]),
        ]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.lock:
            workers = list(self.workers.values())
        busy: dict[str, float] = {}
        slots: dict[str, float] = {}
        ages: dict[str, float] = {}
        for worker in workers:
            slots[worker.queue] = slots.get(worker.queue, 0) + worker.slots
            try:
                busy[worker.queue] = busy.get(worker.queue, 0) + worker.busy()
            except Exception:
                log.warning("reading busy slots of a %s worker failed", worker.queue,
                            exc_info=True)
            try:
                age = float(worker.last_event_age())
            except Exception:
                log.warning("reading the change stream age of a %s worker failed",
                            worker.queue, exc_info=True)
            else:
                ages[worker.queue] = min(age, ages.get(worker.queue, math.inf))
        busy_family, slots_family, age_family = self._families()
        for family, values in ((busy_family, busy), (slots_family, slots), (age_family, ages)):
            for queue, value in sorted(values.items()):
                family.add_metric([queue], value)
            yield family

    def add(self, worker: _TrackedWorker) -> Callable[[], None]:
        key = id(worker)
        with self.lock:
            self.workers[key] = worker

        def untrack() -> None:
            with self.lock:
                self.workers.pop(key, None)

        return untrack


@dataclass(frozen=True)
class _Metrics:
    enqueued: Counter
    deduplicated: Counter
    claimed: Counter
    completed: Counter
    attempts_failed: Counter
    jobs_failed: Counter  # deprecated name of attempts_failed
    dead: Counter
    released: Counter
    leases_expired: Counter
    claims_empty: Counter
    changestream_restarts: Counter
    attempts: Histogram
    wait_seconds: Histogram
    run_seconds: Histogram
    queue_jobs: Gauge
    oldest_available_age: Gauge
    paused: Gauge
    workers: _WorkerCollector
    ticks_fired: Counter
    ticks_missed: Counter
    tick_lateness: Histogram
    task_runs: Counter
    task_seconds: Histogram

    @classmethod
    def register(cls, registry: CollectorRegistry) -> _Metrics:
        def counter(name: str, doc: str) -> Counter:
            # prometheus_client appends "_total" to a counter's name itself.
            return Counter(f"{PREFIX}_{name}", doc, ["queue"], registry=registry)

        workers = _WorkerCollector()
        metrics = cls(
            enqueued=counter("jobs_enqueued", "Jobs written to the queue."),
            deduplicated=counter("jobs_deduplicated",
                                 "Keyed puts that wrote nothing: an active job held the key."),
            claimed=counter("jobs_claimed", "Jobs claimed by a consumer."),
            completed=counter("jobs_completed", "Jobs completed successfully."),
            attempts_failed=counter(
                "attempts_failed",
                "Attempts that ended in an error (each Job.error()), retried or not; jobs "
                "moved to the error queue are streamqueue_jobs_dead_total."),
            jobs_failed=counter(
                "jobs_failed",
                "DEPRECATED, removed in the next release: the same count as "
                "streamqueue_attempts_failed_total (failed attempts, not failed jobs)."),
            dead=counter("jobs_dead", "Jobs moved to the error queue (dead-lettered)."),
            released=counter("jobs_released", "Jobs handed back without counting the attempt."),
            leases_expired=counter("leases_expired",
                                   "Expired leases found by the reaper (requeued or dead)."),
            claims_empty=counter("claims_empty",
                                 "Wake-ups or sweeps that found nothing to claim."),
            changestream_restarts=counter("changestream_restarts",
                                          "Times the change stream failed and was reopened."),
            attempts=Histogram(
                f"{PREFIX}_job_attempts",
                "Attempt number at completion or death (a count; buckets 1 to 10, 12, 15, 20).",
                ["queue"], buckets=ATTEMPT_BUCKETS, registry=registry),
            wait_seconds=Histogram(
                f"{PREFIX}_job_wait_seconds",
                "Seconds from a job falling due to its claim (buckets 1 ms to 1 h).",
                ["queue"], buckets=SECONDS_BUCKETS, registry=registry),
            run_seconds=Histogram(
                f"{PREFIX}_job_run_seconds",
                "Seconds from claim to settlement, by outcome (buckets 1 ms to 1 h).",
                ["queue", "outcome"], buckets=SECONDS_BUCKETS, registry=registry),
            queue_jobs=Gauge(
                f"{PREFIX}_queue_jobs",
                "Jobs by state (set by the reaper): available, locked (lease running), "
                "expired (lease run out, not yet reaped), delayed, dead (the error queue), "
                "completed and cancelled (kept by keep_completed); "
                "state failed is dead's deprecated name.",
                ["queue", "state"], registry=registry),
            oldest_available_age=Gauge(
                f"{PREFIX}_queue_oldest_available_age_seconds",
                "Seconds the longest-waiting due job has been due (set by the reaper).",
                ["queue"], registry=registry),
            paused=Gauge(
                f"{PREFIX}_queue_paused",
                "1 while the queue is paused (Queue.pause()), else 0 (set by the reaper).",
                ["queue"], registry=registry),
            workers=workers,
            ticks_fired=Counter(
                f"{PREFIX}_schedule_ticks_fired", "Schedule ticks fired (one job each).",
                ["queue", "schedule"], registry=registry),
            ticks_missed=Counter(
                f"{PREFIX}_schedule_ticks_missed",
                "Schedule ticks given up by the misfire policy after a gap with no scheduler.",
                ["queue", "schedule"], registry=registry),
            tick_lateness=Histogram(
                f"{PREFIX}_schedule_lateness_seconds",
                "Seconds from a tick to its fire, by the server's clock (buckets 1 ms to 1 h).",
                ["queue", "schedule"], buckets=SECONDS_BUCKETS, registry=registry),
            task_runs=Counter(
                f"{PREFIX}_task_runs",
                "Task runs by outcome (completed, failed, unknown); task is a registered "
                "name or \"unknown\".", ["queue", "task", "outcome"], registry=registry),
            task_seconds=Histogram(
                f"{PREFIX}_task_run_seconds",
                "Seconds a task function ran (buckets 1 ms to 1 h).",
                ["queue", "task"], buckets=SECONDS_BUCKETS, registry=registry),
        )
        registry.register(workers)
        return metrics


_registered: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()
_registered_lock = threading.Lock()


def _metrics_for(registry: CollectorRegistry) -> _Metrics:
    with _registered_lock:
        metrics = _registered.get(registry)
        if metrics is None:
            metrics = _Metrics.register(registry)
            _registered[registry] = metrics
        return metrics


class PrometheusHooks(Hooks):
    """``Hooks`` that count and time every step of a job's life in Prometheus metrics.

    ``registry`` defaults to prometheus_client's global ``REGISTRY`` (what
    ``serve_metrics`` exports by default); tests pass a fresh
    ``CollectorRegistry()`` each.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else REGISTRY
        self._m = _metrics_for(self.registry)

    # -- the Hooks interface (called by the core) ----------------------------------

    def enqueued(self, queue: str, count: int) -> None:
        self._m.enqueued.labels(queue=queue).inc(count)

    def deduplicated(self, queue: str, count: int) -> None:
        self._m.deduplicated.labels(queue=queue).inc(count)

    def claimed(self, queue: str, wait_seconds: float) -> None:
        self._m.claimed.labels(queue=queue).inc()
        self._m.wait_seconds.labels(queue=queue).observe(max(0.0, wait_seconds))

    def claim_empty(self, queue: str) -> None:
        self._m.claims_empty.labels(queue=queue).inc()

    def completed(self, queue: str, attempts: int, run_seconds: float) -> None:
        self._m.completed.labels(queue=queue).inc()
        self._m.attempts.labels(queue=queue).observe(attempts)
        self._observe_run(queue, "completed", run_seconds)

    def failed(self, queue: str, attempts: int, run_seconds: float) -> None:
        self._m.attempts_failed.labels(queue=queue).inc()
        self._m.jobs_failed.labels(queue=queue).inc()
        self._observe_run(queue, "failed", run_seconds)

    def dead(self, queue: str, attempts: int) -> None:
        self._m.dead.labels(queue=queue).inc()
        self._m.attempts.labels(queue=queue).observe(attempts)

    def released(self, queue: str, run_seconds: float) -> None:
        self._m.released.labels(queue=queue).inc()
        self._observe_run(queue, "released", run_seconds)

    def lease_lost(self, queue: str, run_seconds: float) -> None:
        self._observe_run(queue, "lease_lost", run_seconds)

    def leases_expired(self, queue: str, count: int) -> None:
        self._m.leases_expired.labels(queue=queue).inc(count)

    def changestream_restarted(self, queue: str) -> None:
        self._m.changestream_restarts.labels(queue=queue).inc()

    def changestream_event(self, queue: str) -> None:
        """Not a metric by itself: workers export the event age through ``track_worker``."""

    def tick_fired(self, queue: str, schedule: str, lateness: float) -> None:
        self._m.ticks_fired.labels(queue=queue, schedule=schedule).inc()
        self._m.tick_lateness.labels(queue=queue, schedule=schedule).observe(max(0.0, lateness))

    def ticks_missed(self, queue: str, schedule: str, count: int) -> None:
        self._m.ticks_missed.labels(queue=queue, schedule=schedule).inc(count)

    def task_ran(self, queue: str, task: str, outcome: str, seconds: float) -> None:
        self._m.task_runs.labels(queue=queue, task=task, outcome=outcome).inc()
        if outcome != "unknown":
            self._m.task_seconds.labels(queue=queue, task=task).observe(max(0.0, seconds))

    def _observe_run(self, queue: str, outcome: str, run_seconds: float) -> None:
        self._m.run_seconds.labels(queue=queue, outcome=outcome).observe(max(0.0, run_seconds))

    # -- gauges published by the reaper and the workers ----------------------------

    def observe_queue(self, queue: str, stats: Mapping[str, int], oldest_age: float) -> None:
        """Set the queue's gauges from ``Queue.stats()`` and ``Queue.oldest_available_age()``.

        A state missing from ``stats`` is left as it was (not zeroed). The
        error queue is published as state "dead" and, for one more release,
        as "failed", from either key.
        """
        counts = dict(stats)
        for new, old in (("dead", "failed"), ("failed", "dead")):
            if new not in counts and old in counts:
                counts[new] = counts[old]
        for state in QUEUE_STATES:
            if state in counts:
                self._m.queue_jobs.labels(queue=queue, state=state).set(counts[state])
        self._m.oldest_available_age.labels(queue=queue).set(max(0.0, oldest_age))

    def observe_paused(self, queue: str, paused: bool) -> None:
        """Set ``streamqueue_queue_paused`` from ``Queue.is_paused()``."""
        self._m.paused.labels(queue=queue).set(1 if paused else 0)

    def touch_queue(self, queue: str, role: str = "worker") -> None:
        """Create ``queue``'s series at zero, so they exist before the first event.

        ``rate()``/``increase()`` in alerts miss the first increment of a
        counter that only appears then. ``role="worker"`` creates every job
        counter and histogram; ``role="reaper"`` only what a reaper moves
        (expired leases, dead jobs, attempts at death), so a reaper's scrape
        does not carry a set of forever-zero worker series.
        """
        if role not in ("worker", "reaper"):
            raise ValueError(f"role must be 'worker' or 'reaper', not {role!r}")
        m = self._m
        counters = [m.leases_expired, m.dead]
        if role == "worker":
            counters += [m.enqueued, m.deduplicated, m.claimed, m.completed, m.attempts_failed, m.jobs_failed,
                         m.released,
                         m.claims_empty, m.changestream_restarts]
        for counter in counters:
            counter.labels(queue=queue)
        m.attempts.labels(queue=queue)
        if role == "worker":
            m.wait_seconds.labels(queue=queue)
            for outcome in RUN_OUTCOMES:
                m.run_seconds.labels(queue=queue, outcome=outcome)

    def track_worker(
        self,
        queue: str,
        slots: int,
        busy: Callable[[], int],
        last_event_age: Callable[[], float],
    ) -> Callable[[], None]:
        """Export a worker's slot gauges, read at every scrape; returns a function that stops it."""
        return self._m.workers.add(_TrackedWorker(queue, slots, busy, last_event_age))


@dataclass
class MetricsServer:
    """A running ``/metrics`` HTTP server; ``close()`` stops it and frees the port."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The port actually bound (useful after asking for port 0)."""
        return int(self.server.server_port)

    @property
    def address(self) -> str:
        return str(self.server.server_address[0])

    def close(self, timeout: float = 5.0) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_metrics(
    port: int, addr: str = "0.0.0.0", registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Serve ``registry`` (default: the global one) on ``http://addr:port/metrics``.

    Runs in a daemon thread; port 0 picks a free port (see ``MetricsServer.port``).
    Raises ``OSError`` if the address cannot be bound.
    """
    server, thread = _start_http_server(
        port, addr=addr, registry=registry if registry is not None else REGISTRY
    )
    metrics_server = MetricsServer(server, thread)
    log.info("serving Prometheus metrics on http://%s:%d/metrics", addr, metrics_server.port)
    return metrics_server
