"""How many jobs a worker claims at once, and when it claims again: pure decisions.

No I/O and no threads, so the sync ``Worker`` and the asyncio worker can share
them. A worker holds jobs in its slots (running) and, in a backlog, a few more
in a local buffer (prefetched, their leases kept alive like running ones).

With an explicit ``batch`` the sizes are fixed (see ``Worker``). The default
adapts to what the worker sees:

* At a trickle (the last claim came back short) it claims one job at a time:
  one round trip (``findAndModify``) is the shortest path from a wake-up to a
  running handler, and a job goes to whichever worker is free first.
* In a backlog (the last claim came back full) it claims up to ``MAX_CLAIM``
  jobs per round trip and buffers as many as its slots finish during one
  claim round trip (``slots x claim time / handler time``, at most
  ``MAX_BUFFER``). A buffered job then waits about as long as the claim it
  saved would have taken; a slow handler gets no buffer, so its jobs stay in
  the queue for other workers instead of waiting behind it.

The asyncio worker has hundreds of slots and one claim loop, so its bounds are
relative to its slots (``for_coroutines``): the loop must claim, one claim at
a time, as many jobs as its slots finish, and 16 per claim could not keep 500
slots fed; the buffer stays what the slots finish during one claim, so a
buffered job still starts about one claim round trip after it was claimed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# The most jobs one adaptive claim asks for: past this the round trips saved
# are few, and a claim's reply grows with its jobs.
MAX_CLAIM = 16
# The most jobs an adaptive worker buffers beyond its slots.
MAX_BUFFER = 16
# The most free slots a coroutine worker with a fixed batch waits for before it claims.
REFILL_CAP = 100
# Weight of the newest sample in the running means of handler and claim times.
SMOOTHING = 0.2


def _mean(previous: float | None, sample: float) -> float:
    return sample if previous is None else previous + SMOOTHING * (sample - previous)


@dataclass
class ClaimSizing:
    """Claim sizes for a worker with ``slots`` handler slots; ``batch=None`` adapts."""

    slots: int
    batch: int | None = None
    # Bounds of the adaptive sizes: the most jobs per claim and beyond the slots.
    max_claim: int = MAX_CLAIM
    max_buffer: int = MAX_BUFFER
    # With a fixed batch no larger than the slots: claim once this many slots are
    # free (or none is busy), not for every one that frees (see for_coroutines).
    least_refill: int = 1
    # A fixed batch with this many claims in flight at once in a backlog: each may
    # fill another batch, so the worker then holds up to this many batches.
    claims_in_flight: int = 1
    # Claim round trips the buffer covers (see for_coroutines).
    margin: float = 1.0
    # Running means, in seconds; None until the first sample.
    handler_seconds: float | None = field(default=None, init=False)
    claim_seconds: float | None = field(default=None, init=False)

    @classmethod
    def for_coroutines(cls, slots: int, batch: int | None = None, *,
                       claims_in_flight: int = 1) -> ClaimSizing:
        """Sizes for one claim loop feeding ``slots`` coroutines (``AsyncWorker``).

        Bounds grow with the slots: claims of up to ``slots`` jobs and a buffer
        of at most ``slots``. The buffer covers three claim round trips, not one:
        the claim's reply is read on the loop the finishing handlers share, so
        its round trip varies (17-70 ms around a 32 ms median at 500 slots of
        0.1 s handlers), and the buffer is topped up only once half a claim is
        free. Measured at 500 slots of 0.1 s handlers: one round trip 0.78x of
        the handlers' limit, two 0.85x, three 0.90x (``batch=1000``: 0.88-0.91x).
        A held job still starts within about three claim round trips.
        A fixed batch up to the slots claims once a quarter of them (at most
        ``REFILL_CAP``) are free: one claim per finished handler makes the one
        loop's round trips the limit.
        """
        return cls(slots, batch, max_claim=max(MAX_CLAIM, slots),
                   max_buffer=max(MAX_BUFFER, slots),
                   least_refill=max(1, min(REFILL_CAP, slots // 4)),
                   claims_in_flight=claims_in_flight, margin=3.0)

    @property
    def adaptive(self) -> bool:
        return self.batch is None

    @property
    def most(self) -> int:
        """The most jobs one claim may ask for (above 1: completions go in bulk)."""
        return self.max_claim if self.batch is None else self.batch

    def note_handler(self, seconds: float) -> None:
        self.handler_seconds = _mean(self.handler_seconds, max(0.0, seconds))

    def note_claim(self, seconds: float) -> None:
        self.claim_seconds = _mean(self.claim_seconds, max(0.0, seconds))

    def buffer(self, backlog: bool) -> int:
        """Jobs held beyond the slots: enough to cover one claim round trip, in a backlog."""
        if self.batch is not None:
            batches = self.claims_in_flight if backlog else 1
            return max(0, batches * self.batch - self.slots)
        if not backlog or self.handler_seconds is None or self.claim_seconds is None:
            return 0
        if self.handler_seconds <= 0:
            return self.max_buffer
        covered = self.margin * self.slots * self.claim_seconds / self.handler_seconds
        return min(self.max_buffer, math.ceil(covered)) if covered >= 0.5 else 0

    def capacity(self, backlog: bool) -> int:
        """Jobs held at most, running or buffered."""
        return self.slots + self.buffer(backlog)

    def has_room(self, held: int, backlog: bool) -> bool:
        """Worth a claim now: a slot is free, or a claim can fill a good part of the buffer."""
        if held < self.slots:
            fixed_within_slots = self.batch is not None and self.batch <= self.slots
            return (not fixed_within_slots or not held
                    or self.slots - held >= self.least_refill)
        buffer = self.buffer(backlog)
        # Top the buffer up half a claim at a time, not one job per finished handler.
        refill = self.batch if self.batch is not None else min(buffer, self.max_claim)
        return buffer > 0 and self.capacity(backlog) - held >= max(1, refill // 2)

    def want(self, held: int, backlog: bool) -> int:
        """How many jobs the next claim asks for (0: no room)."""
        room = self.capacity(backlog) - held
        if room <= 0:
            return 0
        if self.batch is None and not backlog:
            return 1
        return min(room, self.most)
