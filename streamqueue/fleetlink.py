"""A fleet member's side of the stream: its member document, its view, and the board it wakes.

Used by ``StreamEvents`` (sync and asyncio watchers alike) when a queue joined
a fleet (``Queue(..., fleet=slots)``); every step with I/O is a plan, so both
runners share it. See ``streamqueue.fleet`` for who claims what, and
docs/DESIGN.md ("The fleet: one claim per job across processes").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from streamqueue.errors import StreamQueueError
from streamqueue.fleet import (
    DEFAULT_PATIENCE,
    DRAINING,
    HEARTBEAT,
    MEMBER_TTL,
    PAUSE_AFTER,
    FleetView,
    classify,
)
from streamqueue.plan import Plan
from streamqueue.storage import Document, StorePlans
from streamqueue.storage import fleet as fleet_store
from streamqueue.wakeups import WakeupBoard

log = logging.getLogger(__name__)


class FleetLink:
    def __init__(self, plans: StorePlans, board: WakeupBoard, consumer_id: str, slots: int, *,
                 patience: float = DEFAULT_PATIENCE, heartbeat: float = HEARTBEAT,
                 ttl: float = MEMBER_TTL) -> None:
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"fleet slots must be a positive int, not {slots!r}")
        self._plans = plans
        self._board = board
        self.consumer_id = consumer_id
        self.slots = slots
        self.view = FleetView(consumer_id, patience=patience)
        self._heartbeat = heartbeat
        self._ttl = ttl
        self._next_beat = 0.0
        self._syncing = threading.Lock()
        # Full claims in a row (see DRAINING); claiming threads race on it harmlessly:
        # a lost count only delays or advances one pause.
        self._full_in_a_row = 0

    @property
    def pipeline(self) -> list[Document]:
        return fleet_store.FLEET_PIPELINE

    def pause_after(self, queue_pause_after: float) -> float:
        """How long the stream stays open without a waiter (see ``PAUSE_AFTER``)."""
        if self.view.full() or (self.draining and self.view.every_slot_held()):
            return min(queue_pause_after, PAUSE_AFTER)
        return queue_pause_after

    @property
    def draining(self) -> bool:
        return self._full_in_a_row >= DRAINING

    def note_claim(self, *, full: bool) -> None:
        """A claim of this member came back with all it asked for (or not)."""
        self._full_in_a_row = self._full_in_a_row + 1 if full else 0

    def opened(self) -> Plan[None]:
        """The stream is open: join (or refresh), then read the snapshot the view starts from."""
        self.view.reset()
        try:
            # A stream that paused a moment ago (a backlog drains in pauses and
            # reopens) left a member document that lives for most of its ttl yet.
            if time.monotonic() >= self._next_beat:
                yield from fleet_store.beat(self._plans, self.consumer_id, self.slots, self._ttl)
                self._next_beat = time.monotonic() + self._heartbeat
            members, locked = yield from fleet_store.snapshot(self._plans)
        except StreamQueueError:
            # Unknown, the view leaves every wake-up as it was without a fleet.
            log.warning("could not join the fleet of %s; waking as without one",
                        self._plans.jobs.name, exc_info=True)
            return
        self.view.snapshot(members, locked)
        self.sync()

    def beat_if_due(self) -> Plan[None]:
        if time.monotonic() < self._next_beat:
            return
        self._next_beat = time.monotonic() + self._heartbeat
        try:
            yield from fleet_store.beat(self._plans, self.consumer_id, self.slots, self._ttl)
        except StreamQueueError:
            log.warning("fleet heartbeat on %s failed", self._plans.jobs.name, exc_info=True)

    def closed(self) -> None:
        """The stream closed (pause, outage, invalidation): the view knows nothing now."""
        self.view.reset()
        self._board.set_gate(None)

    def leave(self) -> Plan[None]:
        self.closed()
        try:
            yield from fleet_store.leave(self._plans, self.consumer_id)
        except StreamQueueError:
            log.info("could not remove the member document of %s; it expires in %gs",
                     self.consumer_id, self._ttl)

    def on_event(self, event: Mapping[str, Any], due_in: float) -> str:
        """Apply a job or member event; what the watcher does as without a fleet:
        "delayed" (schedule the due time), "ready" (wake a waiter: the view is not
        known yet), or "" (nothing: the view decided)."""
        change = classify(event, due_in <= 0)
        self.view.apply(change)
        if self.view.known:
            self.sync()
        if change.kind == "delayed" or (change.kind == "ready" and not self.view.known):
            return change.kind
        return ""

    def sync(self) -> None:
        """Wake as many local waiters as the view says this process owes claims, and set
        the board's gate for when patience runs out."""
        # One at a time: a gate computed from an older state must not replace a newer one
        # (the watcher and claiming threads both call this); a lost gate is a lost wake-up.
        with self._syncing:
            owed, at = self.view.owed()
            missing = owed - self._board.permits
            if missing > 0:
                self._board.notify(missing)
            self._board.set_gate(at)
