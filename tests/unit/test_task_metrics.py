"""The task label of the metrics: registered names, or "unknown"."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from streamqueue.metrics import PrometheusHooks


def test_task_runs_are_counted_and_timed_by_queue_task_and_outcome() -> None:
    registry = CollectorRegistry()
    hooks = PrometheusHooks(registry)
    hooks.task_ran("emails", "app.send", "completed", 0.02)
    hooks.task_ran("emails", "app.send", "failed", 0.5)
    hooks.task_ran("emails", "unknown", "unknown", 0.0)

    def runs(task: str, outcome: str) -> float | None:
        return registry.get_sample_value("streamqueue_task_runs_total", {
            "queue": "emails", "task": task, "outcome": outcome})

    assert (runs("app.send", "completed"), runs("app.send", "failed"),
            runs("unknown", "unknown")) == (1, 1, 1)
    assert registry.get_sample_value("streamqueue_task_run_seconds_count", {
        "queue": "emails", "task": "app.send"}) == 2
    # A job naming no task is not timed: its "run" did not run anything.
    assert registry.get_sample_value("streamqueue_task_run_seconds_count", {
        "queue": "emails", "task": "unknown"}) is None
