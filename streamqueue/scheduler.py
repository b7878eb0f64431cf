"""``Scheduler``: fires the schedules of one queue, in as many processes as run one.

Two threads. One follows a change stream on ``DB.NAME.schedules`` that carries
definition changes only (created, changed, removed), and wakes the other at
once. The other reads every schedule, fires those due, and then waits for the
earliest ``next_at`` by the server's clock (``ServerClock``: never ahead of the
server, so the timer never rings early) or for a wake-up, whichever comes
first. Idle, a scheduler sends one getMore per ``max_await`` (5 s) and one read
per ``sweep`` (60 s), the safety net for a stream that was down.

Firing is decided by the database (``ScheduleStore.fire``): any number of
schedulers may race for a tick, exactly one transaction commits it.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING

from pymongo.errors import PyMongoError

from streamqueue.errors import StreamQueueError
from streamqueue.schedule import ScheduleInfo, utc
from streamqueue.storage import Document, is_change_stream_unsupported
from streamqueue.storage.schedules import Fired, ScheduleStore
from streamqueue.ticks import plan_fire

if TYPE_CHECKING:
    from streamqueue.queue import Queue

log = logging.getLogger(__name__)

# After a lost attempt whose schedule reads back unchanged (the server's clock
# had not reached the tick, or another firer's transaction was in flight), the
# next try waits this long, doubling each time up to LOST_RETRY_MAX: a firer
# killed inside its transaction leaves it open, its write lock refusing ours,
# until the server aborts it (transactionLifetimeLimitSeconds), and nobody
# should hammer the server meanwhile.
LOST_RETRY = 0.02
LOST_RETRY_MAX = 1.0
# After an error: the next pass waits this long (the stream may be down too).
ERROR_RETRY = 1.0


class Scheduler:
    """Fire ``queue``'s schedules until ``stop()``; ``start()`` runs it in daemon threads."""

    def __init__(self, queue: Queue, *, max_await: float = 5.0, sweep: float = 60.0) -> None:
        self.queue = queue
        self.store = ScheduleStore(queue.store)
        self.max_await = max_await
        self.sweep = sweep
        self.fired = 0  # jobs this scheduler fired
        self.passes = 0
        self._changed = threading.Event()
        self._stopping = threading.Event()
        self._stream_open = threading.Event()
        self._threads: list[threading.Thread] = []
        # (next_at, revision) of the last lost attempt per schedule, and how many in a row.
        self._lost: dict[str, tuple[object, object]] = {}
        self._losses: dict[str, int] = {}
        self._failing = False
        # The schedules as last read; read again after a change, a loss, an error or
        # a sweep, not on a timer: a due tick then costs the fire's transaction only.
        self._docs: list[Document] = []
        self._reread = True
        self._last_read = 0.0

    def start(self) -> None:
        """Refuses a standalone server (``ConfigurationError``); else returns once the stream
        is open (or after 30 s of trying, when the sweep stands in for it)."""
        self.store.require_transactions()
        for target, name in ((self._follow, "stream"), (self._loop, "fire")):
            thread = threading.Thread(target=target, daemon=True,
                                      name=f"streamqueue-schedules-{name}-{self.queue.name}")
            self._threads.append(thread)
            thread.start()
        self._stream_open.wait(30.0)

    def stop(self, timeout: float = 1.0) -> None:
        self._stopping.set()
        self._changed.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    def run_pass(self) -> float:
        """Fire every due schedule once; seconds until the earliest next tick (or the sweep)."""
        self.passes += 1
        wait = self.sweep
        if self._reread or time.monotonic() - self._last_read >= self.sweep:
            self._reread = False
            self._last_read = time.monotonic()
            self._docs = self.store.all()
        for doc in self._docs:
            next_at = utc(doc.get("next_at"))
            if next_at is None:
                continue
            now = self.store.clock_now()
            if next_at > now:
                wait = min(wait, (next_at - now).total_seconds())
                continue
            wait = min(wait, self._fire(doc, next_at, now))
        return max(0.0, wait)

    def _fire(self, doc: Document, due: datetime, now: datetime) -> float:
        """Fire one due schedule; how soon to look again."""
        name = doc["_id"]
        info = ScheduleInfo.from_document(doc)
        plan = plan_fire(info.rule, due, now, info.misfire, info.catch_up)
        fired = self.store.fire(doc, plan, self.queue.consumer_id)
        if fired is None:
            seen = (doc.get("next_at"), doc.get("revision"))
            if self._lost.get(name) == seen:
                # Read back unchanged and lost again: this host's estimate of the
                # server's clock may have drifted ahead; ask the server anew.
                self.queue.store.clock.refresh()
                self._reread = True
                losses = self._losses[name] = self._losses.get(name, 0) + 1
                return min(LOST_RETRY_MAX, LOST_RETRY * 2.0 ** (losses - 1))
            self._lost[name] = seen
            self._reread = True
            return 0.0
        self._lost.pop(name, None)
        self._losses.pop(name, None)
        doc["next_at"] = plan.next_at  # committed: the cached copy follows
        self._report(name, fired)
        if plan.next_at is None:
            log.info("schedule %s of %s has ended (past its end_at)", name, self.queue.name)
            return self.sweep
        return max(0.0, (plan.next_at - self.store.clock_now()).total_seconds())

    def _report(self, name: str, fired: Fired) -> None:
        hooks = self.queue.hooks
        self.fired += len(fired.job_ids)
        if fired.job_ids:
            hooks.enqueued(self.queue.name, len(fired.job_ids))
        for tick in fired.ticks:
            lateness = (fired.fired_at - tick).total_seconds()
            hooks.tick_fired(self.queue.name, name, lateness)
            log.debug("schedule %s fired its tick %s, %.3fs late", name, tick.isoformat(), lateness)
        if fired.missed:
            hooks.ticks_missed(self.queue.name, name, fired.missed)
            log.info("schedule %s of %s: %d missed tick%s given up (misfire policy)", name,
                     self.queue.name, fired.missed, "" if fired.missed == 1 else "s")

    def _loop(self) -> None:
        self._stream_open.wait(30.0)
        while not self._stopping.is_set():
            self._changed.clear()
            try:
                wait = self.run_pass()
                self._recovered()
            except StreamQueueError as exc:
                self._reread = True
                self._failed(exc)
                wait = ERROR_RETRY
            if wait > 0 and self._changed.wait(wait):
                self._reread = True

    def _follow(self) -> None:
        """Wake the firing loop on every definition change; reopen the stream when it fails."""
        failures = 0
        while not self._stopping.is_set():
            try:
                with self.store.watch(self.max_await) as stream:
                    # Opened before the loop reads: a change after this arrives as an event.
                    self._stream_open.set()
                    self._changed.set()
                    failures = 0
                    while not self._stopping.is_set() and stream.alive:
                        if stream.try_next() is not None:
                            self._changed.set()
            except PyMongoError as exc:
                if is_change_stream_unsupported(exc):
                    log.error("schedules of %s: no change streams here (%s); not firing",
                              self.queue.name, exc)
                    self._stopping.set()
                    self._changed.set()
                    return
                failures += 1
                log.debug("schedule stream of %s failed (%s); reopening", self.queue.name, exc)
                self._changed.set()  # the loop reads once now, then waits on its timer
                self._stopping.wait(min(5.0, 0.1 * 2 ** min(failures, 6)))

    def _failed(self, exc: StreamQueueError) -> None:
        if not self._failing:
            log.error("firing the schedules of %s failed: %s (retrying; logged once until it "
                      "recovers)", self.queue.name, exc)
            self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            log.info("firing the schedules of %s works again", self.queue.name)
            self._failing = False
