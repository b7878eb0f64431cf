"""``RateWindow``: pure; events per second per queue over the last minutes, in fixed buckets.

Memory is bounded by the window (buckets older than it are dropped as new
ones start), so a dashboard left open for days holds the same few numbers.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable

#: How far back the rates look, and the width of one bucket (seconds).
WINDOW = 300.0
BUCKET = 10.0


class RateWindow:
    """Counts of (queue, kind) events in ``BUCKET``-second buckets covering ``WINDOW`` seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, window: float = WINDOW,
                 bucket: float = BUCKET) -> None:
        self._clock = clock
        self._bucket = bucket
        self._size = max(1, round(window / bucket))
        self._started = clock()
        self._buckets: deque[tuple[int, Counter[tuple[str, str]]]] = deque(maxlen=self._size)

    def restart(self) -> None:
        """Forget everything: the feed was closed, so the gap since holds no counted events."""
        self._started = self._clock()
        self._buckets.clear()

    def add(self, queue: str, kind: str, count: int = 1) -> None:
        index = self._index()
        if not self._buckets or self._buckets[-1][0] != index:
            self._buckets.append((index, Counter()))
        self._buckets[-1][1][(queue, kind)] += count

    def per_second(self, queue: str, kind: str) -> float:
        """The mean rate over the window, or over the time since the first event if shorter."""
        first = self._index() - self._size + 1
        total = sum(counts[(queue, kind)] for index, counts in self._buckets if index >= first)
        return total / self.span()

    def series(self, queue: str, kind: str) -> list[float]:
        """Per-second rate in each bucket of the window, oldest first (0 for empty buckets)."""
        latest = self._index()
        by_index = {index: counts[(queue, kind)] for index, counts in self._buckets}
        return [by_index.get(index, 0) / self._bucket
                for index in range(latest - self._size + 1, latest + 1)]

    def span(self) -> float:
        """Seconds the rates cover: the window, or less while it is filling."""
        return max(1.0, min(self._size * self._bucket, self._clock() - self._started))

    def _index(self) -> int:
        return int((self._clock() - self._started) // self._bucket)
