"""``QueueSummary``: one queue's line on the overview, and the snapshot of every queue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamqueue.dashboard.queues import QueueRegistry
from streamqueue.dashboard.rates import RateWindow
from streamqueue.storage.dashboard import STATE_FIELDS, DashboardStore, StateCounts

#: The rates shown per queue, as the live feed names them.
RATE_KINDS = ("enqueued", "finished", "dead")


@dataclass(frozen=True)
class QueueSummary:
    name: str
    counts: StateCounts
    paused: bool
    oldest_ready_age: float
    rates: dict[str, float]

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "counts": {state: self.counts.shown(state) for state in STATE_FIELDS},
            "paused": self.paused,
            "oldest_ready_age": self.oldest_ready_age,
            "rates": {kind: round(value, 2) for kind, value in self.rates.items()},
        }


def summarize(reads: DashboardStore, registry: QueueRegistry, names: list[str],
              rates: RateWindow) -> list[QueueSummary]:
    """Every listed queue's counts at one server instant, pause switch, oldest wait and rates."""
    now = reads.server_now()
    summaries = []
    for name in names:
        store = registry.queue(name).store
        summaries.append(QueueSummary(
            name=name,
            counts=reads.counts(store, now),
            paused=store.is_paused(),
            oldest_ready_age=store.oldest_available_age(),
            rates={kind: rates.per_second(name, kind) for kind in RATE_KINDS},
        ))
    return summaries
