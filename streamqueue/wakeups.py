"""Hand wake-ups from one change stream to the threads waiting for jobs.

Pure thread logic, no I/O. Each signal wakes one waiter, not all of them, so
an event for one job costs one claim, not one per thread (no thundering herd).
Signals that arrive while every waiter is busy claiming are kept (at most one
per registered waiter), so a waiter that comes back finds them and no wake-up
is lost between its empty claim and its wait.

The board also tells the watcher when its stream is not needed: while every
consumer is busy claiming and running jobs (a backlog), none waits, yet an
open stream costs the server a scan of every write. After ``try_pause`` the
stream may close; a waiter then gets ``Wake.RESUME`` instead of blocking, so
it reopens the stream and claims again before it waits.
"""

from __future__ import annotations

import bisect
import contextlib
import enum
import math
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Protocol


class Wake(enum.Enum):
    EVENT = "event"  # the stream announced a claimable job
    DUE = "due"  # a delayed job known to the board fell due
    POLL = "poll"  # the stream is down; time for a polling claim
    TIMEOUT = "timeout"  # the caller's own time limit (deadline or sweep)
    RESUME = "resume"  # the stream was paused: reopen it, then claim before waiting


class Signal(Protocol):
    """What the board needs of its lock and wake-up: ``threading.Condition``'s shape."""

    def __enter__(self) -> object: ...
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None, /) -> object: ...
    def notify(self, n: int = 1) -> None: ...
    def notify_all(self) -> None: ...


class WakeupBoard:
    # Due times closer than this are one wake-up: the same job learnt twice.
    DUE_TOLERANCE = 0.05

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond: Signal = threading.Condition()
        self._waiters = 0
        self._permits = 0
        self._due: list[float] = []  # sorted monotonic times
        self._poll_interval: float | None = None
        # When each waiter blocked inside wait() (not claiming) decides again on its own;
        # -inf once woken to decide again (it then reads the board as it is).
        self._wake_times: dict[object, float] = {}
        self._last_blocked = clock()
        self._paused = False
        self._keep_open = False  # someone needs the stream's other news (cancel requests)
        # When the fleet view (streamqueue.fleet) owes a claim unless news comes first.
        self._gate: float | None = None

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Register the calling thread as a waiter for the duration of the block."""
        with self._cond:
            self._waiters += 1
        try:
            yield
        finally:
            with self._cond:
                self._waiters -= 1
                self._permits = min(self._permits, self._waiters)

    @property
    def waiters(self) -> int:
        return self._waiters

    @property
    def _blocked(self) -> int:
        return len(self._wake_times)

    @property
    def polling(self) -> bool:
        return self._poll_interval is not None

    @property
    def paused(self) -> bool:
        return self._paused

    def may_pause(self, idle_for: float) -> bool:
        """A lock-free first look for ``try_pause``: False means it would refuse now.

        The watcher asks after every event, right when a woken waiter wants
        the GIL; the common answer (someone waited recently) costs no lock.
        """
        return (not self._blocked and not self._keep_open
                and self._clock() - self._last_blocked >= idle_for)

    def keep_open(self, wanted: bool) -> None:
        """While wanted, the stream never pauses, waiters or not."""
        with self._cond:
            self._keep_open = wanted

    def try_pause(self, idle_for: float) -> bool:
        """Pause the stream if no waiter has blocked for ``idle_for`` seconds.

        Decided under the board's lock, so a waiter about to block either
        counts as blocked here or finds the pause and resumes the stream.
        """
        with self._cond:
            if self._paused:
                return True
            if (self._blocked or self._keep_open or self._poll_interval is not None
                    or self._clock() - self._last_blocked < idle_for):
                return False
            self._paused = True
            return True

    def unpause(self) -> None:
        """The stream is open again: every waiter claims once.

        A waiter whose empty claim ran while the stream was closed, but who
        began to wait after it reopened, would otherwise sleep through a job
        enqueued in that gap.
        """
        with self._cond:
            if not self._paused:
                return
            self._paused = False
            self._permits = self._waiters
            self._cond.notify_all()

    def notify(self, count: int = 1) -> None:
        """Wake ``count`` waiters (one per claimable job)."""
        with self._cond:
            self._permits = min(self._permits + count, self._waiters)
            self._cond.notify(count)

    def notify_all(self) -> None:
        """Every waiter claims once: after a gap in the stream, something may be waiting."""
        with self._cond:
            self._permits = self._waiters
            self._cond.notify_all()

    @property
    def permits(self) -> int:
        """Wake-ups handed out and not yet taken by a waiter."""
        return self._permits

    def set_gate(self, at: float | None) -> None:
        """Wake one waiter at the monotonic time ``at`` (None: never), replacing the last gate.

        The fleet view sets it to when its patience runs out; unlike a due
        time it is withdrawn when the news that makes it moot arrives.
        """
        with self._cond:
            self._gate = at
            # Only if no blocked waiter wakes by then on its own: a fleet member sets
            # a gate on nearly every event, and waking its waiters each time to
            # shorten their timeouts cost more CPU than the rest of the event.
            if at is not None and at < self._first_wake():
                self._redecide_all()

    def schedule(self, delay: float) -> None:
        """Wake one waiter ``delay`` seconds from now, when a delayed job falls due."""
        at = self._clock() + delay
        with self._cond:
            index = bisect.bisect_left(self._due, at)
            neighbours = self._due[max(0, index - 1) : index + 1]
            if any(abs(known - at) < self.DUE_TOLERANCE for known in neighbours):
                return
            self._due.insert(index, at)
            # Every blocked waiter must shorten its timeout: one notified waiter
            # could leave at its own deadline first, and the others would sleep
            # through the due time. Only one of them takes the DUE wake.
            self._cond.notify_all()

    def pending_due(self) -> int:
        with self._cond:
            return len(self._due)

    def set_polling(self, interval: float | None) -> None:
        """While the stream is down, waiters claim every ``interval`` seconds; None ends it."""
        with self._cond:
            self._poll_interval = interval
            self._cond.notify_all()

    def wait(self, until: float) -> Wake:
        """Block until a signal for this waiter, or until the monotonic time ``until``."""
        with self._cond:
            started = self._clock()
            while True:
                decided = self._decide(started, until)
                if isinstance(decided, Wake):
                    self._leaving()
                    return decided
                self._block(decided)

    def _decide(self, started: float, until: float) -> Wake | float:
        """The wake-up a waiter takes now, or how long it may block before asking again.

        Called under the board's lock; shared by the thread and the asyncio boards.
        """
        if self._permits > 0:
            self._permits -= 1
            return Wake.EVENT
        now = self._clock()
        if self._due and self._due[0] <= now:
            del self._due[0]
            return Wake.DUE
        if self._gate is not None and self._gate <= now:
            self._gate = None
            return Wake.EVENT
        if now >= until:
            return Wake.TIMEOUT
        if self._paused:
            return Wake.RESUME
        timeout = until - now
        if self._due:
            timeout = min(timeout, self._due[0] - now)
        if self._gate is not None:
            timeout = min(timeout, self._gate - now)
        if self._poll_interval is not None:
            poll_at = started + self._poll_interval
            if now >= poll_at:
                return Wake.POLL
            timeout = min(timeout, poll_at - now)
        return timeout

    def _block(self, timeout: float) -> None:
        token = self._blocking(timeout)
        try:
            assert isinstance(self._cond, threading.Condition)
            self._cond.wait(timeout)
        finally:
            self._unblocked(token)

    # Called under the board's lock; shared by the thread and the asyncio boards.

    def _blocking(self, timeout: float) -> object:
        """A waiter blocks for ``timeout``; pass the token to ``_unblocked``."""
        token = object()
        self._wake_times[token] = self._clock() + timeout
        return token

    def _unblocked(self, token: object) -> None:
        del self._wake_times[token]
        self._last_blocked = self._clock()

    def _first_wake(self) -> float:
        """When the first blocked waiter decides again if nobody wakes it (inf: none blocked)."""
        return min(self._wake_times.values(), default=math.inf)

    def _redecide_all(self) -> None:
        self._cond.notify_all()
        for token in self._wake_times:
            self._wake_times[token] = -math.inf

    def _leaving(self) -> None:
        """A waiter returns from wait(): if ``set_gate`` left the gate to it (it would have
        decided again first), the waiters still blocked must shorten their timeouts now."""
        if self._gate is not None and self._gate < self._first_wake() < math.inf:
            self._redecide_all()
