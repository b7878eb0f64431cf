"""The reaper: hands expired leases on and publishes each queue's shape.

Each pass runs ``Queue.reap()`` on every queue (requeue an expired lease with
attempts left, move an exhausted one to the error queue), then sets the queue
gauges from ``Queue.stats()`` and ``Queue.oldest_available_age()``. Reaping is
idempotent and filtered on lease tokens, so several reapers at once are safe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from streamqueue.errors import StreamQueueError
from streamqueue.queue import Queue
from streamqueue.validation import check_seconds

if TYPE_CHECKING:
    # Only for the annotation: using the reaper as a library needs no prometheus_client.
    from streamqueue.metrics import PrometheusHooks

log = logging.getLogger(__name__)


@dataclass
class ReapPass:
    """What one pass did: expired leases handled per queue, and the queues that failed."""

    reaped: dict[str, int] = field(default_factory=dict)
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: dict[str, StreamQueueError] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def total_reaped(self) -> int:
        return sum(self.reaped.values())


class Reaper:
    """Reap ``queues`` every ``interval`` seconds until ``stop()``.

    ``hooks`` receives the queue gauges; pass the same ``PrometheusHooks`` the
    queues were built with so the reaped/dead counters land in the same
    registry. MongoDB errors (``StreamQueueError``) are logged, once per
    outage and queue, and the loop carries on; anything else is a bug and
    propagates.
    """

    def __init__(
        self,
        queues: Sequence[Queue],
        *,
        interval: float = 5.0,
        hooks: PrometheusHooks | None = None,
    ) -> None:
        if not queues:
            raise ValueError("a reaper needs at least one queue")
        names = [queue.collection.full_name for queue in queues]
        if len(set(names)) != len(names):
            raise ValueError(f"the same queue is listed twice: {sorted(names)}")
        self.queues = list(queues)
        self.interval = check_seconds("interval", interval, allow_zero=False)
        self.hooks = hooks
        self.passes = 0
        self._stopping = threading.Event()
        self._failing: set[str] = set()

    def run_once(self) -> ReapPass:
        """One pass over every queue; never raises a ``StreamQueueError``."""
        result = ReapPass()
        for queue in self.queues:
            name = queue.name
            try:
                reaped = queue.reap()
                result.reaped[name] = reaped
                stats = queue.stats()
                oldest = queue.oldest_available_age()
                paused = queue.is_paused()
            except StreamQueueError as exc:
                result.errors[name] = exc
                self._note_failure(queue, exc)
                continue
            result.stats[name] = stats
            self._note_success(queue)
            if self.hooks is not None:
                self.hooks.observe_queue(name, stats, oldest)
                self.hooks.observe_paused(name, paused)
            log.debug(
                "%s: reaped %d; available=%d locked=%d expired=%d delayed=%d dead=%d "
                "oldest=%.1fs", queue.collection.full_name, reaped, stats["available"],
                stats["locked"], stats["expired"], stats["delayed"], stats["dead"], oldest,
            )
        self.passes += 1
        return result

    def _note_failure(self, queue: Queue, exc: StreamQueueError) -> None:
        full_name = queue.collection.full_name
        if full_name in self._failing:
            log.debug("reaping %s failed again: %s", full_name, exc)
            return
        self._failing.add(full_name)
        log.error("reaping %s failed: %s (will retry every %.1fs; logged once until it recovers)",
                  full_name, exc, self.interval)

    def _note_success(self, queue: Queue) -> None:
        full_name = queue.collection.full_name
        if full_name in self._failing:
            self._failing.discard(full_name)
            log.info("reaping %s works again", full_name)

    def run(self) -> None:
        """Pass every ``interval`` seconds (from the start of one pass to the next) until stopped."""
        log.info("reaper started on %s, every %.1fs",
                 ", ".join(q.collection.full_name for q in self.queues), self.interval)
        next_pass = time.monotonic()
        while not self._stopping.is_set():
            self.run_once()
            next_pass += self.interval
            now = time.monotonic()
            if next_pass < now:
                # A pass longer than the interval (an outage riding out retries):
                # start the next one after a full interval rather than at once.
                next_pass = now + self.interval
            self._stopping.wait(next_pass - now)
        log.info("reaper stopped after %d passes", self.passes)

    def stop(self) -> None:
        """Ask ``run()`` to return after the current pass (callable from any thread or a signal)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()
