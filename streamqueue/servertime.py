"""The database server's clock, estimated in the client without trusting the client's wall clock.

A plain insert cannot ask the server for ``$$NOW``, so enqueue dates come from
an estimate of the server's clock: the ``localTime`` of a ``hello`` reply,
moved forward by the client's *monotonic* clock since that reply arrived::

    estimate = localTime + (monotonic_now - monotonic_when_the_reply_arrived)

The estimate does not run ahead of the server: the server read ``localTime``
before the reply left it, BSON dates are whole milliseconds (truncated), and
the estimate is truncated to the millisecond too. It runs behind the server by
at most the ``hello`` round trip plus a millisecond (``Anchor.round_trip``
records the round trip). The one error that can go either way is the rate
difference between this host's monotonic clock and the server's clock over the
anchor's age: none when both run on one host, a few parts per million between
NTP-synced hosts (under a millisecond over a minute), 30 ms at NTP's 500 ppm
limit. (A step of the server's clock, say by NTP, reaches the estimate with
the next anchor.) The wall clock (``time.time()``) plays no part, so a host whose clock
is an hour off enqueues with the same dates as a correct one.

Pure logic: the caller passes a callable that runs ``hello`` (and, optionally,
one that names the server it would reach), so this module needs no driver and
its tests need no database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from streamqueue.errors import StorageError

Hello = Callable[[], Mapping[str, Any]]

# Long enough that a busy producer sends one extra command a minute; short
# enough that the rate drift between the two clocks (see above) stays small.
DEFAULT_MAX_AGE = 60.0


@dataclass(frozen=True)
class Anchor:
    """One ``hello`` reply: the server's time then, and when (monotonic) the reply arrived."""

    server_time: datetime  # aware, UTC
    received: float  # the client's monotonic clock when the reply was in hand
    round_trip: float  # seconds from sending hello to the reply: how far the estimate may lag
    server: Hashable  # which server answered, as ``server_id`` named it (None without one)


class ServerClock:
    """Thread-safe estimate of the server's current time, refreshed lazily.

    ``hello`` runs the ``hello`` command and returns its reply; it is called on
    the first ``now()`` and again when the anchor is ``max_age`` seconds old or
    ``server_id()`` names another server than the one that answered (after a
    failover the new primary's clock is the one that judges the queue). An idle
    process sends nothing. Errors from ``hello`` propagate and leave the old
    anchor in place; the next call tries again.
    """

    def __init__(
        self,
        hello: Hello,
        *,
        max_age: float = DEFAULT_MAX_AGE,
        server_id: Callable[[], Hashable] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not max_age > 0:
            raise ValueError(f"max_age must be more than zero seconds, not {max_age!r}")
        self._hello = hello
        self._max_age = max_age
        self._server_id = server_id
        self._monotonic = monotonic
        self._lock = threading.Lock()
        # Replaced whole, never mutated: readers need no lock to use it.
        self._anchor: Anchor | None = None

    @property
    def anchor(self) -> Anchor | None:
        """The reply the estimate rests on; None before the first ``now()``."""
        return self._anchor

    def now(self) -> datetime:
        """The server's current time (aware UTC, whole milliseconds), never ahead of it."""
        anchor = self._anchor
        if anchor is None or self._stale(anchor):
            with self._lock:
                # Another thread may have refreshed it while this one waited.
                anchor = self._anchor
                if anchor is None or self._stale(anchor):
                    anchor = self._fetch()
        return self._estimate(anchor)

    def cached(self) -> datetime | None:
        """``now()`` if it needs no ``hello``; None when the anchor is missing or stale.

        Never sends a command, so a caller can skip its retry machinery (tens
        of microseconds) on the common path and keep it for the refresh.
        """
        anchor = self._anchor
        if anchor is None or self._stale(anchor):
            return None
        return self._estimate(anchor)

    def _estimate(self, anchor: Anchor) -> datetime:
        # A monotonic clock never goes back; the guard is for injected clocks.
        elapsed = max(0.0, self._monotonic() - anchor.received)
        return _whole_millis(anchor.server_time + timedelta(seconds=elapsed))

    def refresh(self) -> Anchor:
        """Ask the server now, whatever the anchor's age."""
        with self._lock:
            return self._fetch()

    def _stale(self, anchor: Anchor) -> bool:
        if self._monotonic() - anchor.received >= self._max_age:
            return True
        return self._server_id is not None and self._server_id() != anchor.server

    def _fetch(self) -> Anchor:
        server, sent = self.begin_fetch()
        return self.accept(self._hello(), server, sent)

    def begin_fetch(self) -> tuple[Hashable | None, float]:
        """Before sending ``hello`` yourself (a plan does): the server meant, and when it was sent."""
        # Named before asking: if the primary changes in between, the next
        # call sees a different name and asks again, rather than trusting a
        # reply from a server it did not mean.
        server = self._server_id() if self._server_id is not None else None
        return server, self._monotonic()

    def accept(self, reply: Mapping[str, Any], server: Hashable | None, sent: float) -> Anchor:
        """Anchor the estimate on a ``hello`` reply; return it."""
        # Anchored at arrival, not at sending nor half-way: the server's
        # localTime is then at most this old, so the estimate errs low.
        received = self._monotonic()
        local_time = reply.get("localTime")
        if not isinstance(local_time, datetime):
            raise StorageError(
                f"the server's hello reply has no localTime date (got {local_time!r}); "
                "streamqueue needs it to date jobs by the server's clock")
        anchor = Anchor(server_time=_utc(local_time), received=received,
                        round_trip=max(0.0, received - sent), server=server)
        self._anchor = anchor
        return anchor

    def estimate(self, anchor: Anchor) -> datetime:
        """The server's time now, carried forward from ``anchor``."""
        return self._estimate(anchor)


def _utc(moment: datetime) -> datetime:
    # pymongo decodes naive UTC datetimes unless the client is tz_aware.
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _whole_millis(moment: datetime) -> datetime:
    # BSON keeps milliseconds and pymongo truncates the rest; truncating here
    # makes the stored date the one computed (and keeps the estimate low).
    return moment.replace(microsecond=moment.microsecond - moment.microsecond % 1000)
