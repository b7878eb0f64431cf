"""One change stream per queue object, turned into wake-ups on a WakeupBoard.

The stream is a hint, never the job: an event wakes one waiter, which then
runs the claim. Delayed jobs produce no event when they fall due, so the
watcher also tells the board when the next known delayed job is due.

While no consumer has waited for ``pause_after`` seconds (all of them busy
with a backlog) the stream is closed: every open change stream makes the
server examine each write: with four processes draining a backlog, closing
their streams raised throughput from 624 to 778 jobs/s (interleaved A/B,
15,000 jobs, 3 rounds). The first consumer that needs to wait again reopens
it (fresh, not resumed: events from the pause are not worth reading back) and
every waiter claims once, which finds whatever arrived meanwhile.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from bson import ObjectId
from pymongo.errors import OperationFailure, PyMongoError

from streamqueue.errors import StreamQueueError
from streamqueue.fleetlink import FleetLink
from streamqueue.hooks import Hooks
from streamqueue.plan import Invoke, Plan
from streamqueue.storage import (
    CONTROL_ID,
    JobStore,
    StorePlans,
    event_due_in,
    event_paused,
    is_change_stream_unsupported,
)
from streamqueue.storage.runner import run
from streamqueue.validation import check_seconds
from streamqueue.wakeups import WakeupBoard

log = logging.getLogger(__name__)

# ChangeStreamHistoryLost, ChangeStreamFatalError, InvalidResumeToken: the
# saved token can never work again; reusing it would loop forever.
TOKEN_DEAD_CODES = frozenset({286, 280, 260})


class Flag(Protocol):
    """``threading.Event`` and ``asyncio.Event`` both: what the shared logic sets and reads."""

    def set(self) -> None: ...
    def clear(self) -> None: ...
    def is_set(self) -> bool: ...


class StreamEvents:
    """What the wake-up stream's openings, events and outages mean for the board.

    Shared by ``ChangeStreamWatcher`` (a thread) and the asyncio watcher
    (``streamqueue.aio.watcher``): they differ only in how they wait.
    ``_ready``: the first opening is over (stream or polling); ``_live``: waking
    is guaranteed now (cleared while the stream is paused); ``_wanted``: a
    waiter asked for the paused stream back; ``_stopping``.
    """

    _ready: Flag
    _live: Flag
    _wanted: Flag
    _stopping: Flag

    def __init__(self, plans: StorePlans, board: WakeupBoard, hooks: Hooks, *,
                 max_await: float, poll_interval: float, pause_after: float | None) -> None:
        self._plans = plans
        self._max_await = max_await
        self._name: str = plans.jobs.name
        self._board = board
        self._hooks = hooks
        self._poll_interval = poll_interval
        self._pause_after = pause_after
        self._resume_token: Mapping[str, Any] | None = None
        self._last_event = time.monotonic()
        self._in_outage = False
        self.streams_opened = 0
        self._claim_on_open = False
        self.streams_paused = 0
        # Counts the streams opened; None while none is open (see stream_epoch).
        self._epoch: int | None = None
        #: Set when the queue joined a fleet (``streamqueue.fleetlink``).
        self.fleet: FleetLink | None = None
        #: Told of pause/resume events (True: paused) and cancel requests for held jobs.
        self.on_pause: Callable[[bool], None] | None = None
        self.on_cancel: Callable[[ObjectId], None] | None = None

    def stream_epoch(self) -> int | None:
        """Names the stream open now (every change since it opened comes as an event); None if none."""
        return self._epoch

    def last_event_age(self) -> float:
        return time.monotonic() - self._last_event

    @property
    def paused(self) -> bool:
        return self._board.paused

    def _stopped(self) -> None:
        self._stopping.set()
        self._wanted.set()
        # Waiters then block until their own deadline, as after any close,
        # instead of asking a stopped watcher to resume over and over.
        self._board.unpause()
        self._live.set()

    def refresh_due_plan(self) -> Plan[None]:
        """Ask the server when the next delayed job falls due and tell the board."""
        try:
            due_in = yield from self._plans.next_due_in()
        except StreamQueueError:
            log.warning("could not read the next due time of %s", self._name, exc_info=True)
            return
        if due_in is not None:
            self._board.schedule(due_in)

    def _invalidated(self) -> None:
        """The stream ended by itself (collection dropped or renamed): the token is spent."""
        log.info("change stream on %s was invalidated; reopening", self._name)
        self._resume_token = None
        # A dropped collection took its indexes along; without them a
        # claim scans the collection and the lease-token guard is gone.
        self._plans.indexes_ready = False
        # Waiters claim again once the fresh stream is open: a claim
        # before that could miss a job inserted before the reopen.
        self._claim_on_open = True

    def _wait_wanted(self) -> object:
        """Until a waiter wants the paused stream back (awaitable, for asyncio)."""
        raise NotImplementedError

    def _rest(self, seconds: float) -> object:
        """Wait ``seconds`` or until stopped (awaitable, for asyncio)."""
        raise NotImplementedError

    def _run(self) -> Plan[None]:
        """Follow the stream, reopening it after a pause or an outage, until stopped."""
        failures = 0
        while not self._stopping.is_set():
            try:
                if (yield from self._follow_stream()):
                    yield Invoke(self._wait_wanted)
                failures = 0
            except PyMongoError as exc:
                if self.fleet is not None:
                    self.fleet.closed()
                if self._stopping.is_set():
                    break
                if is_change_stream_unsupported(exc):
                    self._fall_back_to_polling(exc)
                    return
                failures += 1
                self._note_outage(exc)
                yield Invoke(functools.partial(self._rest, outage_backoff(failures)))
            except Exception:
                log.exception("change stream watcher of %s crashed; polling", self._name)
                self._board.set_polling(self._poll_interval)
                self._poll_instead()
                return
        if self.fleet is not None:
            yield from self.fleet.leave()

    def _follow_stream(self) -> Plan[bool]:
        """Follow the stream until stopped, invalidated or paused (then True)."""
        fleet = self.fleet
        stream = yield from self._plans.watch(self._resume_token, self._max_await,
                                              fleet.pipeline if fleet is not None else None)
        try:
            self.streams_opened += 1
            if fleet is not None:
                # Before _opened wakes anyone: their claims then count in the view.
                yield from fleet.opened()
            self._opened()
            yield from self.refresh_due_plan()
            try:
                while not self._stopping.is_set() and stream.alive:
                    event = yield from self._plans.next_change(stream)
                    self._resume_token = stream.resume_token
                    if event is not None:
                        self._on_event(event)
                    if fleet is not None:
                        yield from fleet.beat_if_due()
                    if self._pause_if_unneeded():
                        return True
            finally:
                self._epoch = None
                if fleet is not None:
                    fleet.closed()
            if not stream.alive and not self._stopping.is_set():
                self._invalidated()
            return False
        finally:
            yield from self._plans.close_stream(stream)

    def _opened(self) -> None:
        """A stream is open: every change from now on arrives as an event."""
        self._epoch = self.streams_opened
        if self._claim_on_open:
            self._claim_on_open = False
            self._board.notify_all()
        if self._in_outage:
            log.info("change stream on %s is back; push wake-ups resumed", self._name)
            self._in_outage = False
            self._board.set_polling(None)
            # Events from the gap are replayed when resumed with a token; after a
            # fresh start they are not, so every waiter claims once.
            self._board.notify_all()
        self._board.unpause()
        self._live.set()
        self._ready.set()

    def _pause_if_unneeded(self) -> bool:
        if self._pause_after is None:
            return False
        pause_after = (self._pause_after if self.fleet is None
                       else self.fleet.pause_after(self._pause_after))
        if not self._board.may_pause(pause_after):
            return False
        # Cleared before the board can pause: a waiter told to resume must
        # find the stream not live, or it would claim before the reopen.
        self._live.clear()
        self._wanted.clear()
        # A stop (which sets _stopping, then _wanted) that came before the clear
        # is seen here; one after it leaves _wanted set. Either way the thread
        # ends and leaves the fleet instead of waiting for a resume forever.
        if self._stopping.is_set() or not self._board.try_pause(pause_after):
            self._live.set()
            return False
        self._resume_token = None
        self.streams_paused += 1
        log.debug("no consumer of %s waited for %.1fs; change stream closed until one does",
                  self._name, pause_after)
        return True

    def _poll_instead(self) -> None:
        """Polling stands in for the stream: nobody should wait for a resume."""
        self._board.unpause()
        self._live.set()
        self._ready.set()

    def _on_event(self, event: Mapping[str, Any]) -> None:
        self._last_event = time.monotonic()
        self._hooks.changestream_event(self._name)
        if event.get("documentKey", {}).get("_id") == CONTROL_ID:
            self._on_pause_event(event)
            return
        if event.get("operationType") == "update" and "cancel_requested" in event.get(
                "updateDescription", {}).get("updatedFields", {}):
            if self.on_cancel is not None:
                self.on_cancel(event["documentKey"]["_id"])
            return  # a held job: nothing to claim
        due_in = event_due_in(event)
        if self.fleet is not None:
            self._on_fleet_event(event, due_in)
            return
        # Even a job due in a millisecond gets a timer: a claim sent before
        # then would miss it, and no other event would come for it.
        if due_in <= 0:
            self._board.notify(1)
        else:
            self._board.schedule(due_in)

    def _on_fleet_event(self, event: Mapping[str, Any], due_in: float) -> None:
        """The fleet view decides who claims; as without one until it is known."""
        assert self.fleet is not None
        action = self.fleet.on_event(event, due_in)
        if action == "delayed":
            self._board.schedule(due_in)
        elif action == "ready":
            self._board.notify(1)

    def _on_pause_event(self, event: Mapping[str, Any]) -> None:
        paused = event_paused(event)
        if paused is None:
            return
        if self.on_pause is not None:
            self.on_pause(paused)
        if self.fleet is not None:
            self.fleet.view.forget_empty()
        if not paused:
            # Every waiter that saw "paused" claims again.
            self._board.notify_all()

    def _note_outage(self, exc: PyMongoError) -> None:
        if isinstance(exc, OperationFailure) and exc.code in TOKEN_DEAD_CODES:
            self._resume_token = None
        self._hooks.changestream_restarted(self._name)
        if not self._in_outage:
            # Once per episode: a flapping network must not flood the log.
            log.warning("change stream on %s failed (%s); polling every %.1fs until it reopens",
                        self._name, exc, self._poll_interval)
            self._in_outage = True
            self._board.set_polling(self._poll_interval)
        self._poll_instead()

    def _fall_back_to_polling(self, exc: PyMongoError) -> None:
        log.warning(
            "change streams are not available on this deployment (%s); %s will poll every %.1fs. "
            "Run MongoDB as a replica set for push wake-ups.",
            exc, self._name, self._poll_interval,
        )
        self._board.set_polling(self._poll_interval)
        self._poll_instead()


class ChangeStreamWatcher(StreamEvents):
    """Owns the stream's thread; ``start`` returns once waking is guaranteed."""

    _ready: threading.Event
    _live: threading.Event
    _wanted: threading.Event
    _stopping: threading.Event

    def __init__(
        self,
        store: JobStore,
        board: WakeupBoard,
        hooks: Hooks,
        *,
        max_await: float = 5.0,
        poll_interval: float = 1.0,
        pause_after: float | None = 2.0,
    ) -> None:
        super().__init__(store.plans, board, hooks, max_await=max_await,
                         poll_interval=poll_interval, pause_after=pause_after)
        self._store = store
        self._ready = threading.Event()
        self._live = threading.Event()
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Open the stream (once per watcher) before the caller's first claim.

        Anything committed after this returns reaches the board as an event;
        anything before it is found by the caller's claim: no lost wake-up.
        (Once the stream has paused, the board sends ``Wake.RESUME`` instead,
        and the same holds for the claim made after ``resume``.)
        """
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=lambda: run(self._run()), name=f"streamqueue-watch-{self._store.name}", daemon=True
                )
                self._thread.start()
        if not self._ready.wait(timeout):
            # Not open in time: poll until it is, rather than risk a lost wake-up.
            self._board.set_polling(self._poll_interval)

    def stop(self, timeout: float = 0.2) -> None:
        """Ask the thread to stop; it finishes within one ``max_await`` on its own.

        Not joined for long: the thread is a daemon blocked in a getMore, and
        pymongo cursors are not safe to close from another thread. It closes
        its stream itself as soon as the getMore returns.
        """
        self._stopped()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def resume(self, timeout: float = 30.0) -> bool:
        """Reopen a paused stream; True once waking is guaranteed again.

        A waiter calls this on ``Wake.RESUME`` and claims after it returns,
        so a job enqueued while the stream was closed is found by that claim.
        """
        self._wanted.set()
        return self._live.wait(timeout)

    def keep_open(self, wanted: bool, timeout: float = 30.0) -> bool:
        """Keep the stream open even while nobody waits (a Worker whose handlers run long
        wants their cancel requests); True once it is open, when wanted."""
        self._board.keep_open(wanted)
        if not wanted:
            return False
        self._wanted.set()
        return self._live.wait(timeout) and self._epoch is not None

    def refresh_due(self) -> None:
        """Ask the server when the next delayed job falls due and tell the board."""
        run(self.refresh_due_plan())

    def _wait_wanted(self) -> object:
        return self._wanted.wait()

    def _rest(self, seconds: float) -> object:
        return self._stopping.wait(seconds)


def watcher_options(*, max_await: float, poll_interval: float,
                    pause_stream_after: float | None) -> dict[str, Any]:
    """A queue's stream options, checked, as the watchers take them."""
    return {
        "max_await": check_seconds("max_await", max_await, allow_zero=False),
        "poll_interval": check_seconds("poll_interval", poll_interval, allow_zero=False),
        "pause_after": None if pause_stream_after is None else check_seconds(
            "pause_stream_after", pause_stream_after, allow_zero=False),
    }


def outage_backoff(failures: int) -> float:
    """Seconds before reopening a stream after ``failures`` failures in a row."""
    return float(min(5.0, 0.1 * 2**min(failures, 6)))
