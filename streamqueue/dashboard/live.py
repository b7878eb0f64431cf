"""``LiveFeed``: one change stream per dashboard process, open only while a page listens.

Pages listen through server-sent events. Every listener shares the one
stream and the one snapshot it causes: the feed's thread rebuilds the
snapshot after changes (at most every ``SETTLE`` seconds) and every
``REFRESH`` seconds without any (leases run out and delayed jobs fall due
without an event), then wakes each listener, which sends the newest
snapshot. A listener holds an ``asyncio.Event``, never a queue of
snapshots, so a slow or idle page holds no growing backlog. When the last
listener leaves, the thread closes the stream and ends: no cursor stays
open on the server for a page nobody looks at.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from streamqueue.dashboard.rates import RateWindow
from streamqueue.errors import StreamQueueError
from streamqueue.fleet import is_member_id
from streamqueue.storage import CONTROL_ID, READY
from streamqueue.storage.dashboard import FAILED_SUFFIX, FeedStream
from streamqueue.storage.schedules import SCHEDULES_SUFFIX

log = logging.getLogger(__name__)

#: Seconds the feed waits on the server for a change (the stream's getMore).
MAX_AWAIT = 0.25
#: Fewest seconds between two snapshots.
SETTLE = 0.25
#: A snapshot at least this often, changes or not.
REFRESH = 5.0
#: After an error, wait this long before opening the stream again.
REOPEN_AFTER = 1.0

Snapshot = list[dict[str, Any]]


def event_rate(event: Mapping[str, Any]) -> tuple[str, str] | None:
    """The (queue, rate) an event counts toward: "enqueued", "finished" or "dead"; else None."""
    coll = str(event.get("ns", {}).get("coll", ""))
    kind = event.get("operationType")
    if coll.endswith(SCHEDULES_SUFFIX):
        return None  # a schedule's change is no job's
    if coll.endswith(FAILED_SUFFIX):
        return (coll[: -len(FAILED_SUFFIX)], "dead") if kind == "insert" else None
    if kind == "insert":
        # Not the pause switch, nor an enqueue retry's marker (state "enqueue-check").
        return (coll, "enqueued") if event.get("fullDocument", {}).get("state") == READY else None
    if kind == "delete":
        # A completion with keep_completed=0, a cancel, or a move to the error queue.
        # The pause switch and fleet member documents are no jobs.
        doc_id = event.get("documentKey", {}).get("_id")
        return None if doc_id == CONTROL_ID or is_member_id(doc_id) else (coll, "finished")
    if kind == "update":
        state = event.get("updateDescription", {}).get("updatedFields", {}).get("state")
        return (coll, "finished") if state in ("completed", "cancelled") else None
    return None


class Listener:
    """One page's subscription: wakes when a newer snapshot exists."""

    def __init__(self, feed: LiveFeed, loop: asyncio.AbstractEventLoop) -> None:
        self._feed = feed
        self._loop = loop
        self._changed = asyncio.Event()
        # The page was drawn from a fresh read: a snapshot made before it joined may be
        # older than what it shows, so it waits for the next one.
        self._seen = feed.latest()[0]

    def wake(self) -> None:
        """From the feed's thread."""
        self._loop.call_soon_threadsafe(self._changed.set)

    async def next(self, timeout: float) -> Snapshot | None:
        """The newest snapshot once there is one this listener has not sent; None on timeout
        or once the feed stopped (``LiveFeed.closed``)."""
        version, snapshot = self._feed.latest()
        if snapshot is not None and version != self._seen:
            self._seen = version
            return snapshot
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            return None
        if self._feed.closed:
            return None
        self._seen, snapshot = self._feed.latest()
        return snapshot

    def close(self) -> None:
        self._feed.unsubscribe(self)


class LiveFeed:
    """``build`` makes a snapshot (blocking reads); ``watch`` opens the change stream."""

    def __init__(self, build: Callable[[RateWindow], Snapshot],
                 watch: Callable[[], FeedStream],
                 rates: RateWindow | None = None) -> None:
        self._build = build
        self._watch = watch
        self.rates = rates or RateWindow()
        self._listeners: set[Listener] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._version = 0
        self._snapshot: Snapshot | None = None
        self._closed = threading.Event()

    def subscribe(self) -> Listener:
        listener = Listener(self, asyncio.get_running_loop())
        with self._lock:
            self._listeners.add(listener)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dashboard-feed",
                                                daemon=True)
                self._thread.start()
        return listener

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.discard(listener)

    @property
    def listeners(self) -> int:
        with self._lock:
            return len(self._listeners)

    @property
    def running(self) -> bool:
        with self._lock:
            return self._thread is not None

    def latest(self) -> tuple[int, Snapshot | None]:
        with self._lock:
            return self._version, self._snapshot

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def stop(self) -> None:
        """Without blocking: wake every listener, whose page then ends its event stream (so a
        server stopping has no open response to wait for), and let the thread end."""
        self._closed.set()
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener.wake()

    def close(self) -> None:
        """``stop``, then wait for the thread (at most ``MAX_AWAIT``, the stream's wait)."""
        self.stop()
        with self._lock:
            self._listeners.clear()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=10)

    def _wanted(self) -> bool:
        """Whether to go on; if not, the thread is forgotten under the lock that subscribe takes."""
        with self._lock:
            if self._listeners and not self._closed.is_set():
                return True
            self._thread = None
            self._snapshot = None  # stale once the stream that kept it current is closed
            return False

    def _run(self) -> None:
        self.rates.restart()
        while self._wanted():
            try:
                self._follow()
            except StreamQueueError as exc:
                log.warning("dashboard: the live feed failed, reopening in %.0fs: %s",
                            REOPEN_AFTER, exc)
                self._closed.wait(REOPEN_AFTER)

    def _follow(self) -> None:
        with self._watch() as stream:
            # Opened first, then read: any change after the read arrives as an event.
            self._publish()
            published, dirty = time.monotonic(), False
            while self._wanted():
                event = stream.next_event()
                if event is not None:
                    dirty = True
                    counted = event_rate(event)
                    if counted is not None:
                        self.rates.add(*counted)
                since = time.monotonic() - published
                if (dirty and since >= SETTLE) or since >= REFRESH:
                    self._publish()
                    published, dirty = time.monotonic(), False

    def _publish(self) -> None:
        snapshot = self._build(self.rates)
        with self._lock:
            self._version += 1
            self._snapshot = snapshot
            listeners = list(self._listeners)
        for listener in listeners:
            listener.wake()
