"""PrometheusHooks against a private registry: names, labels, buckets, worker gauges, exporter."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from streamqueue.hooks import Hooks
from streamqueue.metrics import (
    ATTEMPT_BUCKETS,
    DEPRECATED,
    METRIC_NAMES,
    SECONDS_BUCKETS,
    PrometheusHooks,
    serve_metrics,
)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def exported_names(registry: CollectorRegistry) -> set[str]:
    return {metric.name for metric in registry.collect()}


def test_implements_every_hook() -> None:
    hook_methods = {name for name in vars(Hooks) if not name.startswith("_")}
    assert hook_methods, "Hooks has methods"
    for name in hook_methods:
        assert name in vars(PrometheusHooks), f"PrometheusHooks does not implement {name}"


def test_exports_exactly_the_contract(registry: CollectorRegistry) -> None:
    hooks = PrometheusHooks(registry)
    hooks.touch_queue("q")
    hooks.observe_queue("q", {"available": 1, "locked": 0, "delayed": 0, "failed": 0}, 0.0)
    hooks.track_worker("q", 4, lambda: 0, lambda: 0.0)
    # prometheus_client reports counters by base name; the exposition adds _total.
    names = {f"{n}_total" if n + "_total" in METRIC_NAMES else n
             for n in exported_names(registry)}
    assert names == METRIC_NAMES


def test_counters_and_histograms_follow_the_hooks(registry: CollectorRegistry) -> None:
    hooks = PrometheusHooks(registry)
    hooks.enqueued("q", 3)
    hooks.claimed("q", 0.004)
    hooks.claimed("q", 12.0)
    hooks.claim_empty("q")
    hooks.completed("q", 1, 0.02)
    hooks.failed("q", 2, 0.5)
    hooks.dead("q", 2)
    hooks.released("q", 0.1)
    hooks.lease_lost("q", 301.0)
    hooks.leases_expired("q", 2)
    hooks.changestream_restarted("q")
    hooks.changestream_event("q")
    hooks.enqueued("other", 1)

    assert value(registry, "streamqueue_jobs_enqueued_total", queue="q") == 3
    assert value(registry, "streamqueue_jobs_enqueued_total", queue="other") == 1
    assert value(registry, "streamqueue_jobs_claimed_total", queue="q") == 2
    assert value(registry, "streamqueue_claims_empty_total", queue="q") == 1
    assert value(registry, "streamqueue_jobs_completed_total", queue="q") == 1
    assert value(registry, "streamqueue_attempts_failed_total", queue="q") == 1
    assert value(registry, "streamqueue_jobs_failed_total", queue="q") == 1  # deprecated name
    assert value(registry, "streamqueue_jobs_dead_total", queue="q") == 1
    assert value(registry, "streamqueue_jobs_released_total", queue="q") == 1
    assert value(registry, "streamqueue_leases_expired_total", queue="q") == 2
    assert value(registry, "streamqueue_changestream_restarts_total", queue="q") == 1

    # Wait: milliseconds resolve in their own buckets, a backlog lands in minutes.
    assert value(registry, "streamqueue_job_wait_seconds_bucket", queue="q", le="0.005") == 1
    assert value(registry, "streamqueue_job_wait_seconds_bucket", queue="q", le="10.0") == 1
    assert value(registry, "streamqueue_job_wait_seconds_bucket", queue="q", le="30.0") == 2
    assert value(registry, "streamqueue_job_wait_seconds_bucket", queue="q", le="3600.0") == 2

    # Attempts at completion (1) and at death (2).
    assert value(registry, "streamqueue_job_attempts_count", queue="q") == 2
    assert value(registry, "streamqueue_job_attempts_sum", queue="q") == 3
    assert value(registry, "streamqueue_job_attempts_bucket", queue="q", le="1.0") == 1
    assert value(registry, "streamqueue_job_attempts_bucket", queue="q", le="20.0") == 2

    for outcome, count in (("completed", 1), ("failed", 1), ("released", 1), ("lease_lost", 1)):
        assert value(registry, "streamqueue_job_run_seconds_count", queue="q",
                     outcome=outcome) == count
    assert value(registry, "streamqueue_job_run_seconds_bucket", queue="q",
                 outcome="lease_lost", le="600.0") == 1
    assert value(registry, "streamqueue_job_run_seconds_bucket", queue="q",
                 outcome="lease_lost", le="300.0") == 0


def test_second_instance_on_one_registry_shares_the_metrics(registry: CollectorRegistry) -> None:
    first = PrometheusHooks(registry)
    second = PrometheusHooks(registry)
    first.completed("q", 1, 0.1)
    second.completed("q", 1, 0.1)
    assert value(registry, "streamqueue_jobs_completed_total", queue="q") == 2
    # A fresh registry starts from zero.
    other = CollectorRegistry()
    PrometheusHooks(other).completed("q", 1, 0.1)
    assert value(other, "streamqueue_jobs_completed_total", queue="q") == 1


def test_touch_queue_creates_zero_series(registry: CollectorRegistry) -> None:
    hooks = PrometheusHooks(registry)
    hooks.touch_queue("r", role="reaper")
    assert value(registry, "streamqueue_leases_expired_total", queue="r") == 0
    assert value(registry, "streamqueue_jobs_dead_total", queue="r") == 0
    assert value(registry, "streamqueue_jobs_completed_total", queue="r") is None
    hooks.touch_queue("w")
    assert value(registry, "streamqueue_jobs_completed_total", queue="w") == 0
    assert value(registry, "streamqueue_job_run_seconds_count", queue="w",
                 outcome="lease_lost") == 0
    with pytest.raises(ValueError, match="role"):
        hooks.touch_queue("x", role="producer")


def test_observe_queue_sets_the_gauges(registry: CollectorRegistry) -> None:
    hooks = PrometheusHooks(registry)
    hooks.observe_queue("q", {"available": 5, "locked": 2, "expired": 4, "delayed": 1,
                              "dead": 3, "failed": 3, "total": 15}, 42.5)
    for state, count in (("available", 5), ("locked", 2), ("expired", 4), ("delayed", 1),
                         ("dead", 3), ("failed", 3)):
        assert value(registry, "streamqueue_queue_jobs", queue="q", state=state) == count
    assert value(registry, "streamqueue_queue_jobs", queue="q", state="total") is None
    assert value(registry, "streamqueue_queue_oldest_available_age_seconds", queue="q") == 42.5
    hooks.observe_queue("q", {"available": 0, "locked": 0, "delayed": 0, "failed": 0}, 0.0)
    assert value(registry, "streamqueue_queue_jobs", queue="q", state="available") == 0
    assert value(registry, "streamqueue_queue_oldest_available_age_seconds", queue="q") == 0


def test_observe_queue_publishes_kept_finished_jobs(registry: CollectorRegistry) -> None:
    hooks = PrometheusHooks(registry)
    hooks.observe_queue("q", {"available": 1, "completed": 7, "cancelled": 2}, 0.0)
    assert value(registry, "streamqueue_queue_jobs", queue="q", state="completed") == 7
    assert value(registry, "streamqueue_queue_jobs", queue="q", state="cancelled") == 2


def test_failed_names_say_which_failure(registry: CollectorRegistry) -> None:
    """Attempts that raised and dead-lettered jobs have names that cannot be mixed up."""
    hooks = PrometheusHooks(registry)
    hooks.touch_queue("q")
    helps = {m.name: m.documentation for m in registry.collect()}
    assert "Attempts that ended in an error" in helps["streamqueue_attempts_failed"]
    assert "error queue" in helps["streamqueue_jobs_dead"]
    assert helps["streamqueue_jobs_failed"].startswith("DEPRECATED")
    assert "streamqueue_attempts_failed_total" in helps["streamqueue_jobs_failed"]
    assert DEPRECATED["streamqueue_jobs_failed_total"] in METRIC_NAMES
    # The error queue under its new state name and, for one release, the old one,
    # whichever key the caller (an older Queue.stats(), say) passed.
    for key in ("failed", "dead"):
        hooks.observe_queue(key, {key: 7}, 0.0)
        assert value(registry, "streamqueue_queue_jobs", queue=key, state="dead") == 7
        assert value(registry, "streamqueue_queue_jobs", queue=key, state="failed") == 7
    assert "dead (the error queue)" in helps["streamqueue_queue_jobs"]
    assert "expired (lease run out" in helps["streamqueue_queue_jobs"]


def test_histogram_help_states_the_real_buckets(registry: CollectorRegistry) -> None:
    PrometheusHooks(registry)
    helps = {m.name: m.documentation for m in registry.collect()}
    # Attempt numbers are counts, not times: their buckets run 1..20, not 1 ms..1 h.
    assert list(ATTEMPT_BUCKETS[:-1]) == [*range(1, 11), 12, 15, 20]
    assert "buckets 1 to 10, 12, 15, 20" in helps["streamqueue_job_attempts"]
    assert SECONDS_BUCKETS[0] == 0.001 and SECONDS_BUCKETS[-2] == 3600.0
    for name in ("streamqueue_job_wait_seconds", "streamqueue_job_run_seconds"):
        assert "buckets 1 ms to 1 h" in helps[name], name


def test_worker_gauges_are_read_at_scrape_time(registry: CollectorRegistry) -> None:
    hooks = PrometheusHooks(registry)
    busy = [1]

    def broken() -> float:
        raise RuntimeError("watcher gone")

    untrack_a = hooks.track_worker("q", 4, lambda: busy[0], lambda: 7.0)
    untrack_b = hooks.track_worker("q", 2, lambda: 2, lambda: 3.0)
    hooks.track_worker("z", 1, lambda: 0, broken)
    assert value(registry, "streamqueue_worker_slots", queue="q") == 6
    assert value(registry, "streamqueue_worker_busy_slots", queue="q") == 3
    assert value(registry, "streamqueue_changestream_last_event_age_seconds", queue="q") == 3.0
    busy[0] = 4
    assert value(registry, "streamqueue_worker_busy_slots", queue="q") == 6
    # A broken callback leaves its series out instead of failing the scrape.
    assert value(registry, "streamqueue_worker_slots", queue="z") == 1
    assert value(registry, "streamqueue_changestream_last_event_age_seconds", queue="z") is None
    untrack_b()
    untrack_a()
    assert value(registry, "streamqueue_worker_slots", queue="q") is None


def test_serve_metrics_over_http(registry: CollectorRegistry) -> None:
    hooks = PrometheusHooks(registry)
    hooks.enqueued("q", 2)
    with serve_metrics(0, "127.0.0.1", registry) as server:
        assert server.port > 0
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body) for s in family.samples}
    assert samples[("streamqueue_jobs_enqueued_total", (("queue", "q"),))] == 2
    with pytest.raises(OSError), urllib.request.urlopen(url, timeout=2):
        pass  # closed: the port no longer answers


def test_deduplicated_puts_are_counted_per_queue(registry: CollectorRegistry) -> None:
    hooks = PrometheusHooks(registry)
    hooks.deduplicated("q", 2)
    hooks.deduplicated("q", 1)
    assert value(registry, "streamqueue_jobs_deduplicated_total", queue="q") == 3


def test_observe_paused_sets_the_gauge(registry: CollectorRegistry) -> None:
    hooks = PrometheusHooks(registry)
    hooks.observe_paused("q", True)
    assert value(registry, "streamqueue_queue_paused", queue="q") == 1
    hooks.observe_paused("q", False)
    assert value(registry, "streamqueue_queue_paused", queue="q") == 0
