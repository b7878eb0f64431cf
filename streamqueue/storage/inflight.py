"""The jobs this process's batch claims are locking right now, so a concurrent one skips them.

Two batch claims of one ``Queue`` that start together read the same head of
the queue: one locks every candidate, the other locks none and reads again.
A claim lists its candidates here between its read and its locking update,
and the read of a claim that starts meanwhile leaves them out. Only a hint
for the read: the update's own filter still decides who locks a job.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable

from bson import ObjectId


class ClaimsInFlight:
    """Job ids candidates of batch claims in flight (thread-safe; no I/O)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # A count, not a set: two claims may still list the same job (their reads
        # overlapped), and the first to finish must not unlist it for the other.
        self._ids: Counter[ObjectId] = Counter()

    def listed(self) -> list[ObjectId]:
        with self._lock:
            return list(self._ids)

    def add(self, ids: Iterable[ObjectId]) -> None:
        with self._lock:
            self._ids.update(ids)

    def remove(self, ids: Iterable[ObjectId]) -> None:
        with self._lock:
            self._ids.subtract(ids)
            for job_id in [i for i, n in self._ids.items() if n <= 0]:
                del self._ids[job_id]
