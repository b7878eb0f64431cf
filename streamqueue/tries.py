"""The tries of one write, each bounded on the server, so no try outlives the next one.

A write whose reply was lost may still be running on the server. If the
client then tries again, the late first try can commit after the retry: a
claim locks a second job nobody holds, an enqueue writes a job again after it
was consumed. Two rules close that window:

- every try runs under pymongo's client-side timeout, which sends the server a
  ``maxTimeMS`` a little shorter than the socket's wait, so a try the client
  gave up on because it timed out is already over on the server;
- a try whose connection broke (no reply, no timeout) may still run on the
  same primary until its time limit: the next try waits until then. A new
  primary needs no wait: a late write on the old one never reaches a majority
  and is rolled back.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import pymongo
from pymongo.errors import ConnectionFailure

# A claim or an enqueue takes milliseconds; this bounds one try on the server.
WRITE_TIME_LIMIT = 10.0
# A large batch insert gets this much more time per document.
PER_DOCUMENT = 0.001


def time_limit(socket_timeout: float | None, documents: int = 1) -> float:
    """The server-side limit for one try: never longer than the client's own socket timeout."""
    limit = WRITE_TIME_LIMIT + PER_DOCUMENT * max(0, documents - 1)
    return limit if socket_timeout is None else min(limit, socket_timeout)


class BoundedTries:
    """Count and bound the tries of one logical write.

    ``primary`` reports the current primary's address (``MongoClient.primary``).
    """

    def __init__(self, limit: float, primary: Callable[[], object],
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.count = 0
        self._primary = primary
        self._sleep = sleep
        self._clock = clock
        self._last_primary: object = None
        self._over_at = 0.0
        self._broken = False

    @contextlib.contextmanager
    def bounded(self) -> Iterator[None]:
        """Run one try under the time limit, noting how it ended."""
        self.count += 1
        self._last_primary = self._primary()
        self._over_at = self._clock() + self.limit
        self._broken = False
        try:
            with pymongo.timeout(self.limit):
                yield
        except ConnectionFailure:
            self._broken = True
            raise

    def retrying(self) -> bool:
        """False before the first try; on a retry, True once every earlier try is over."""
        if self.count == 0:
            return False
        wait = self._earlier_try_left()
        if wait is not None:
            self._sleep(wait)
        return True

    def retry_wait(self) -> float | None:
        """None before the first try; on a retry, how long until every earlier try is over.

        For plans, which yield the wait instead of blocking on it.
        """
        if self.count == 0:
            return None
        return self._earlier_try_left() or 0.0

    def time_left(self) -> float:
        """Seconds until the last try is over on the server, whatever became of its reply."""
        return max(0.0, self._over_at - self._clock()) if self.count else 0.0

    def _earlier_try_left(self) -> float | None:
        if self._broken and self._primary() == self._last_primary:
            return max(0.0, self._over_at - self._clock())
        return None
