"""``QueueRegistry``: one ``Queue`` per queue name the dashboard acts on, made on first use."""

from __future__ import annotations

import threading

from pymongo.database import Database

from streamqueue.queue import Queue
from streamqueue.retry import RetryPolicy
from streamqueue.storage import Document, JobStore

#: Requests give up on an unreachable server after this long (a page, not a worker).
REQUEST_RETRY = RetryPolicy(max_delay=5.0)


class QueueRegistry:
    """Queues by name; each keeps finished jobs as its collection's TTL index says, so a
    cancel from the dashboard keeps or deletes a job exactly as the application's would."""

    def __init__(self, database: Database[Document]) -> None:
        self._database = database
        self._queues: dict[str, Queue] = {}
        self._lock = threading.Lock()

    def queue(self, name: str) -> Queue:
        with self._lock:
            found = self._queues.get(name)
        if found is not None:
            return found
        collection = self._database[name]
        keep = JobStore(collection, REQUEST_RETRY).retention()
        made = Queue(collection, consumer_id="streamqueue-dashboard", keep_completed=keep,
                     retry=REQUEST_RETRY)
        with self._lock:
            return self._queues.setdefault(name, made)

    def close(self) -> None:
        with self._lock:
            queues, self._queues = list(self._queues.values()), {}
        for queue in queues:
            queue.close()
