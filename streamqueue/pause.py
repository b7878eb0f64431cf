"""What one queue object believes about the queue's pause switch, and when to ask again.

Pure: the reader and the stream's state are passed in. The switch lives in
MongoDB (``JobStore.set_paused``); reading it before every claim would add a
round trip to the hot path, so a value is trusted while the change stream that
carries every later pause/resume has been open since before it was read, and
for ``RECHECK`` seconds while no stream is open (a backlog, polling).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# Without a stream, a consumer claiming a backlog learns of a pause this late at most.
RECHECK = 0.5


class PauseFlag:
    def __init__(self, read: Callable[[], bool], stream_epoch: Callable[[], int | None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``stream_epoch``: a number naming the change stream open now, None when none is."""
        self._read = read
        self._stream_epoch = stream_epoch
        self._clock = clock
        self._lock = threading.Lock()
        self._value = False
        self._read_at: float | None = None
        self._epoch: int | None = None
        self._events = 0  # pause/resume events heard so far

    def paused(self) -> bool:
        """The switch as known now, reading it when the known value may be stale."""
        known, seen = self.known()
        if known is not None:
            return known
        return self.learned(self._read(), seen)

    def known(self) -> tuple[bool | None, tuple[int | None, int]]:
        """The value if it can be trusted now, else None and what to pass to ``learned``
        with the value read next (for callers that read it themselves, such as plans)."""
        with self._lock:
            epoch = self._stream_epoch()
            # With a stream open, only a value read under that same stream is trusted: a
            # change made before the stream opened never arrives as an event, and a
            # consumer trusting an older "paused" would wait for its sweep.
            if self._read_at is not None and (
                    (epoch is not None and epoch == self._epoch)
                    or (epoch is None and self._clock() - self._read_at < RECHECK)):
                return self._value, (epoch, self._events)
            # The epoch is taken before the read: a change after it comes as an event.
            return None, (epoch, self._events)

    def learned(self, value: bool, seen: tuple[int | None, int]) -> bool:
        """The switch was read as ``value`` after ``known`` returned ``seen``; the value to use."""
        epoch, events = seen
        with self._lock:
            if self._events != events:
                # An event came during the read and may be newer than it: it wins.
                return self._value
            self._remember(value, epoch)
        return value

    def heard(self, value: bool) -> None:
        """The change stream announced a pause (True) or a resume (False)."""
        with self._lock:
            self._events += 1
            self._remember(value, self._stream_epoch())

    def forget(self) -> None:
        """The next ``paused`` reads the switch again."""
        with self._lock:
            self._read_at = None

    def _remember(self, value: bool, epoch: int | None) -> None:
        self._value = value
        self._read_at = self._clock()
        self._epoch = epoch
