"""The seam between the queue core and whatever observes it (metrics, tests).

The core calls these methods at each step of a job's life; it never imports
``prometheus_client``. ``streamqueue.metrics.PrometheusHooks`` is one
implementation; ``Hooks`` itself does nothing, so it is the safe default.
"""

from __future__ import annotations


class Hooks:
    """Observer of queue events. Every method is a no-op; override what you need.

    Hooks are called on the thread that caused the event, often while a job is
    held, so they must be cheap and must not raise.
    """

    def enqueued(self, queue: str, count: int) -> None:
        """``count`` jobs were written to the queue."""

    def deduplicated(self, queue: str, count: int) -> None:
        """``count`` puts wrote nothing: an active job already held their unique key."""

    def claimed(self, queue: str, wait_seconds: float) -> None:
        """A job was claimed ``wait_seconds`` after it fell due (server clock)."""

    def claim_empty(self, queue: str) -> None:
        """A consumer was woken (or swept) and found nothing to claim."""

    def completed(self, queue: str, attempts: int, run_seconds: float) -> None:
        """A job finished successfully on attempt number ``attempts``."""

    def failed(self, queue: str, attempts: int, run_seconds: float) -> None:
        """An attempt failed: a handler reported an error (``Job.error``).

        The job comes back unless it was its last attempt (then ``dead`` follows).
        """

    def dead(self, queue: str, attempts: int) -> None:
        """A job was moved to the error queue after ``attempts`` deliveries."""

    def released(self, queue: str, run_seconds: float) -> None:
        """A job was handed back without counting the attempt."""

    def lease_lost(self, queue: str, run_seconds: float) -> None:
        """A consumer tried to act on a job whose lease it no longer held."""

    def leases_expired(self, queue: str, count: int) -> None:
        """The reaper found ``count`` expired leases (requeued or dead-lettered)."""

    def changestream_restarted(self, queue: str) -> None:
        """The change stream failed and is being reopened."""

    def changestream_event(self, queue: str) -> None:
        """The change stream delivered an event (a sign of life)."""

    def task_ran(self, queue: str, task: str, outcome: str, seconds: float) -> None:
        """A task worker ran a job's task: ``outcome`` "completed", "failed", or "unknown"
        (the job named no registered task; ``task`` is then "unknown", so the label's
        values are bounded by the registry)."""


    def tick_fired(self, queue: str, schedule: str, lateness: float) -> None:
        """A schedule fired a tick's job ``lateness`` seconds after the tick (server clock)."""

    def ticks_missed(self, queue: str, schedule: str, count: int) -> None:
        """A schedule gave up ``count`` ticks missed while no scheduler ran (misfire policy)."""
