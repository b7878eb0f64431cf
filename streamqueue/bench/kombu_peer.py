"""kombu's MongoDB transport as a peer row: what Celery users on MongoDB run today.

kombu keeps every queue's messages in one ``messages`` collection of the
database named in its URL, takes one with ``find_one_and_delete`` (received
means gone: no lease, so a consumer that dies holding one loses it) and polls
every ``polling_interval`` seconds when a queue is empty. Imported only when
the bench runs this row (kombu is in the ``bench`` extra).
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pymongo.collection import Collection

from streamqueue.storage import Document

# How long a consumer's get() blocks before it looks at its stop flag again.
GET_TIMEOUT = 0.25


def kombu_url(uri: str, database: str) -> str:
    """``uri`` with ``database`` as its path: kombu takes its database from there."""
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


class KombuPeer:
    """One kombu queue, named after ``collection``, in ``collection``'s database."""

    def __init__(self, uri: str, collection: Collection[Document], *,
                 polling_interval: float = 0.1) -> None:
        self.url = kombu_url(uri, collection.database.name)
        self.name = collection.name
        self.messages = collection.database["messages"]
        self.options = {"polling_interval": polling_interval}

    @contextmanager
    def _queue(self) -> Iterator[Any]:
        # Imported by name: kombu ships no types, and `make lint` runs without it.
        kombu = importlib.import_module("kombu")
        with kombu.Connection(self.url, transport_options=self.options) as conn:
            queue = conn.SimpleQueue(self.name)
            try:
                yield queue
            finally:
                queue.close()
                # kombu's MongoDB channel never closes the MongoClient it made.
                conn.default_channel.client.client.close()

    def put_many(self, payloads: Iterable[Mapping[str, Any]]) -> None:
        with self._queue() as queue:
            for payload in payloads:
                queue.put(dict(payload))

    def consume(self, record: Any, stop: threading.Event) -> None:
        """Take, acknowledge and ``record(payload, claimed_at, done_at)`` until ``stop``."""
        with self._queue() as queue:
            while not stop.is_set():
                try:
                    message = queue.get(block=True, timeout=GET_TIMEOUT)
                except queue.Empty:
                    continue
                claimed = time.time()
                message.ack()
                record(message.payload, claimed, time.time())

    def left(self) -> int:
        return self.messages.count_documents({"queue": self.name})
