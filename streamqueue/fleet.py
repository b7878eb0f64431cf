"""Who claims which ready job in a fleet of consumer processes: a pure view, no I/O.

Every fleet member (a ``Queue`` that joined with ``fleet=slots``) reads the
same totally ordered change stream: job inserts and requeues (a job became
ready), claims (an ``update`` setting state "locked" with the claimer's
``consumer_id``), settles (deletes, finished states) and member documents
(join, slot changes, leave). From the same events every member derives the
same ordering of the fleet's free slots, and each member claims only for its
own slots among the first R, where R is the number of ready jobs it has heard
of and not yet seen claimed. So one process, not every process, claims each
job at a trickle.

Nothing here can lose a job, only delay it:

* Patience: while the oldest ready job the view knows is older than
  ``patience`` times k, the due set is k slots wider. A stalled or dead owner
  (SIGKILLed between the event and its claim, all threads busy, a view that
  diverged) costs about ``patience`` per slot skipped, and eventually every
  member with a free slot is due. Patience adapts to the machine: it is at
  least ``PATIENCE_MARGIN`` times the usual handoff (a job's ready event to its
  lock event, as this view hears them), at most ``MAX_PATIENCE``; on a loaded
  machine the owner's claim is slow, and widening early would only add claims.
* An empty claim that started after event ``seq`` proves that no job whose
  ready event came at or before ``seq`` is still ready: those entries are
  dropped, so a view that went wrong is corrected by the claims it causes.
* Until a snapshot (members and their locked jobs, read after the stream
  opened) has been applied, the view is not ``known`` and callers behave as
  without it: every event wakes a waiter.

Jobs that were ready before the stream opened are not in the view; a claim
finds them (every waiter claims once after the stream opens). Delayed jobs
are left to the wake-up board's due timers, as without a fleet.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MEMBER_PREFIX = "streamqueue.member."
MEMBER = "member"
LOCKED = "locked"
READY = "ready"

# Heartbeats refresh a member's expiry rarely: they never reach the stream
# (only joins, slot changes and leaves do), so their cost is one write each.
HEARTBEAT = 10.0
MEMBER_TTL = 30.0
DEFAULT_PATIENCE = 0.1
# While its view shows every slot of a member held, its stream closes after this long
# without a waiter (or the queue's own pause_stream_after, if shorter), if the member
# has several slots or is draining (DRAINING full claims in a row). While a backlog
# drains, an open fleet stream carries a lock and a settle event per job to every
# member, for nothing: every member is busy. The narrow stream of a queue outside a
# fleet carries none then. A 1-slot member that is not draining keeps the queue's
# pause: one slot held is every 1-slot worker running a job, even at a trickle, and
# there (32 x 1 on a loaded machine) pausing after 0.5 s cost latency: a waiter the
# CPU did not run for half a second lost its view.
PAUSE_AFTER = 0.5
# Full claims in a row that mark a member as draining a backlog: at a trickle a 1-slot
# member's claim on a wake-up is full and the next (its slot's, once the job is done)
# finds nothing; in a backlog every claim is full.
DRAINING = 2
# Effective patience: at least this many times the smoothed handoff, at most MAX_PATIENCE.
PATIENCE_MARGIN = 3.0
MAX_PATIENCE = 1.0
# Weight of each new handoff in the smoothed one.
HANDOFF_WEIGHT = 0.1


def member_id(consumer_id: str) -> str:
    """The ``_id`` of a consumer's member document (a string: no job's ObjectId)."""
    return MEMBER_PREFIX + consumer_id


def is_member_id(doc_id: object) -> bool:
    return isinstance(doc_id, str) and doc_id.startswith(MEMBER_PREFIX)


def rank(consumer_id: str, anchor: str) -> bytes:
    """A member's place in the order an episode's first job gives (rendezvous hashing):
    the same in every process (no ``hash()`` salt), uniform over members."""
    return hashlib.blake2b(f"{anchor}\0{consumer_id}".encode(), digest_size=8).digest()


@dataclass(frozen=True)
class Change:
    """What one stream event means for the view."""

    kind: str  # "ready", "delayed", "locked", "gone", "member", "left", "other"
    doc_id: Any
    consumer_id: str | None = None
    slots: int | None = None


def classify(event: Mapping[str, Any], due_now: bool) -> Change:
    """One event of the fleet pipeline as a ``Change``; ``due_now``: a ready job is due."""
    op = event.get("operationType")
    doc_id = event.get("documentKey", {}).get("_id")
    doc = event.get("fullDocument") or event.get("updateDescription", {}).get(
        "updatedFields", {}) or {}
    if is_member_id(doc_id):
        if op == "delete":
            return Change("left", doc_id[len(MEMBER_PREFIX):])
        slots = doc.get("slots")
        if isinstance(slots, int):
            return Change("member", doc_id[len(MEMBER_PREFIX):], slots=slots)
        return Change("other", doc_id)
    if op == "delete":
        return Change("gone", doc_id)
    if op not in ("insert", "update", "replace"):
        return Change("other", doc_id)
    state = doc.get("state")
    if state == READY:
        return Change("ready" if due_now else "delayed", doc_id)
    if state == LOCKED:
        owner = doc.get("consumer_id")
        return Change("locked", doc_id, consumer_id=owner if isinstance(owner, str) else None)
    if isinstance(state, str):
        return Change("gone", doc_id)  # completed, cancelled, failed, or no job at all
    return Change("other", doc_id)


class FleetView:
    """One member's view of the fleet and the ready jobs; thread-safe, no I/O."""

    def __init__(self, me: str, *, patience: float = DEFAULT_PATIENCE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if patience <= 0:
            raise ValueError(f"patience must be positive, not {patience!r}")
        self.me = me
        self.patience = patience
        self._handoff = 0.0  # smoothed seconds from a ready event to its lock event
        self._clock = clock
        self._lock = threading.Lock()
        self.known = False
        self._generation = 0
        self._members: dict[str, int] = {}
        self._locked: dict[Any, str] = {}
        self._busy: Counter[str] = Counter()
        self._ready: dict[Any, tuple[int, float]] = {}  # job id -> (seq, heard at)
        self._seq = 0
        self._anchor = ""
        self._ring: tuple[str, tuple[str, ...], list[str]] | None = None
        self._inflight = 0
        self._unconfirmed: set[Any] = set()
        self._empty_seen = False

    # -- what the stream says ------------------------------------------------------

    def reset(self) -> None:
        """The stream closed (or never opened): the view knows nothing until the next snapshot."""
        with self._lock:
            self.known = False
            self._generation += 1
            self._members.clear()
            self._locked.clear()
            self._busy.clear()
            self._ready.clear()
            self._unconfirmed.clear()
            self._empty_seen = False

    def snapshot(self, members: Iterable[tuple[str, int]],
                 locked: Iterable[tuple[Any, str]]) -> None:
        """Members and locked jobs read after the stream opened: the view is known from now on."""
        with self._lock:
            for consumer, slots in members:
                self._members[consumer] = slots
            for job_id, consumer in locked:
                self._lock_job(job_id, consumer)
            self.known = True

    def apply(self, change: Change) -> None:
        with self._lock:
            self._seq += 1
            kind = change.kind
            if kind == "member":
                assert change.slots is not None
                self._members[change.doc_id] = change.slots
            elif kind == "left":
                self._members.pop(change.doc_id, None)
            elif kind == "ready":
                self._unlock(change.doc_id)
                if not self._ready:
                    # A new episode: rotate the ring so trickle load spreads over members.
                    self._anchor = str(change.doc_id)
                self._ready.setdefault(change.doc_id, (self._seq, self._clock()))
            elif kind == "locked":
                self._note_handoff(change)
                self._ready.pop(change.doc_id, None)
                if change.consumer_id == self.me:
                    self._unconfirmed.discard(change.doc_id)
                if change.consumer_id is not None:
                    self._lock_job(change.doc_id, change.consumer_id)
            elif kind in ("gone", "delayed"):  # delayed jobs: the board's due timers
                self._ready.pop(change.doc_id, None)
                self._unconfirmed.discard(change.doc_id)
                self._unlock(change.doc_id)

    def _note_handoff(self, lock: Change) -> None:
        entry = self._ready.get(lock.doc_id)
        # Only claims by a member that was due without widening: a claim that
        # patience brought about says nothing about the usual handoff (and
        # would feed back into patience).
        if entry is None or not self._among_first_free(lock.consumer_id, len(self._ready)):
            return
        took = self._clock() - entry[1]
        self._handoff += HANDOFF_WEIGHT * (took - self._handoff)

    def _patience(self) -> float:
        return min(MAX_PATIENCE, max(self.patience, PATIENCE_MARGIN * self._handoff))

    @property
    def effective_patience(self) -> float:
        with self._lock:
            return self._patience()

    def _lock_job(self, job_id: Any, consumer: str) -> None:
        self._unlock(job_id)
        self._locked[job_id] = consumer
        self._busy[consumer] += 1

    def _unlock(self, job_id: Any) -> None:
        owner = self._locked.pop(job_id, None)
        if owner is not None:
            self._busy[owner] -= 1
            if self._busy[owner] <= 0:
                del self._busy[owner]

    # -- what this process does ------------------------------------------------------

    def claim_started(self) -> tuple[int, int]:
        """A local claim is about to run; pass the token to ``claim_done``."""
        with self._lock:
            self._inflight += 1
            return self._generation, self._seq

    def claim_done(self, token: tuple[int, int], claimed: Iterable[Any] | None) -> None:
        """The claim returned these job ids; None: it failed (or was skipped) and proves nothing."""
        generation, seq = token
        with self._lock:
            self._inflight = max(0, self._inflight - 1)
            if generation != self._generation or claimed is None:
                return
            ids = list(claimed)
            if ids:
                self._unconfirmed.update(i for i in ids if i in self._ready)
                return
            # Nothing was ready when the claim ran: every entry heard before it is stale.
            for job_id in [j for j, (heard, _) in self._ready.items() if heard <= seq]:
                del self._ready[job_id]
            self._empty_seen = True

    def knows_empty(self) -> bool:
        """True when a claim now would find nothing meant for this process (proposal 1:
        skip it). Every job that became ready since an empty claim is in the view, and
        those in it are another member's, until patience makes them this one's (the
        board's gate then wakes a waiter)."""
        with self._lock:
            return self.known and self._empty_seen and self._owed()[0] == 0

    def forget_empty(self) -> None:
        """Something the view cannot see may have made jobs claimable (a resume, a due timer)."""
        with self._lock:
            self._empty_seen = False

    def owed(self) -> tuple[int, float | None]:
        """(claims this process should run now, the monotonic time when it owes one more).

        Only meaningful while ``known``: otherwise (0, None).
        """
        with self._lock:
            return self._owed()

    def _owed(self) -> tuple[int, float | None]:
        if not self.known or not self._ready:
            return 0, None
        now = self._clock()
        ready = len(self._ready)
        oldest = min(heard for _, heard in self._ready.values())
        patience = self._patience()
        widened = int((now - oldest) / patience)
        busy_here = self._inflight + len(self._unconfirmed)
        mine = self._positions()
        due = sum(1 for pos in mine if pos < ready + widened)
        owed = max(0, due - busy_here)
        if owed:
            return owed, None
        # The slot this process fills next: after the ones its claims fill already.
        nxt = mine[busy_here] if busy_here < len(mine) else None
        if nxt is None:
            return 0, None
        return 0, oldest + patience * (nxt - ready + 1)

    def _free(self, member: str) -> int:
        return max(0, self._members[member] - self._busy[member])

    def _among_first_free(self, member: str | None, count: int) -> bool:
        """``member`` has one of the first ``count`` free slots, in the fleet's agreed order."""
        seen = 0
        for m in self._order():
            if seen >= count:
                return False
            if m == member:
                return self._free(m) > 0
            seen += self._free(m)
        return False

    def _order(self) -> list[str]:
        members = tuple(self._members)
        if self._ring is None or self._ring[:2] != (self._anchor, members):
            ordered = sorted(members, key=lambda m: (rank(m, self._anchor), m))
            self._ring = (self._anchor, members, ordered)
        return self._ring[2]

    def _positions(self) -> list[int]:
        """This process's places among every live member's free slots, in the fleet's agreed
        order (rendezvous order from the anchor); its own slots past the end if the view
        thinks it has none free (it may be wrong: widening must reach every real waiter)."""
        # Counted, not listed: this runs on every stream event of every member.
        before = total = free_here = 0
        for m in self._order():
            free = self._free(m)
            if m == self.me:
                before, free_here = total, free
            total += free
        mine = list(range(before, before + free_here))
        slots = self._members.get(self.me, 1)
        mine += range(total, total + max(0, slots - free_here))
        return mine

    def full(self) -> bool:
        """The view knows this member holds a job in each of its slots, and it has several."""
        return self.every_slot_held() and self.my_slots() > 1

    def my_slots(self) -> int:
        with self._lock:
            return self._members.get(self.me, 0)

    def every_slot_held(self) -> bool:
        """The view knows this member holds a job in each of its slots, however many."""
        with self._lock:
            slots = self._members.get(self.me, 0)
            return self.known and 0 < slots <= self._busy[self.me]

    def ready_count(self) -> int:
        with self._lock:
            return len(self._ready)

    def members(self) -> dict[str, int]:
        with self._lock:
            return dict(self._members)
