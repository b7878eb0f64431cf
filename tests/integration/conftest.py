"""Fixtures for tests against the real replica set: queues that are closed afterwards,
a second client, and a command listener for counting what a queue sends."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from typing import Any, Protocol

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection

from streamqueue import Queue
from streamqueue.storage import Document
from tests.helpers import CommandCounter


class QueueFactory(Protocol):
    def __call__(self, collection: Collection[Document] | None = None, /,
                 **options: Any) -> Queue: ...


# Queue.close() waits for the stream's blocked getMore, which the server ends at
# max_await even when the cursor is killed. Tests that do not measure idle cost
# use a shorter one so teardown is quick; push tests pass DEFAULT_MAX_AWAIT.
TEST_MAX_AWAIT = 1.0
DEFAULT_MAX_AWAIT: float = inspect.signature(Queue).parameters["max_await"].default


@pytest.fixture
def make_queue(collection: Collection[Document]) -> Iterator[QueueFactory]:
    """Build queues (on the test's collection unless given another); closes them all after."""
    queues: list[Queue] = []

    def make(target: Collection[Document] | None = None, /, **options: Any) -> Queue:
        options.setdefault("max_await", TEST_MAX_AWAIT)
        queue = Queue(collection if target is None else target, **options)
        queues.append(queue)
        return queue

    yield make
    closers = [threading.Thread(target=queue.close) for queue in queues]
    for closer in closers:
        closer.start()
    for closer in closers:
        closer.join()


@pytest.fixture
def queue(make_queue: QueueFactory) -> Queue:
    return make_queue()


@pytest.fixture
def other_client(mongo_uri: str) -> Iterator[MongoClient[Document]]:
    """A second, independent client: "another process" for producers and spies."""
    client: MongoClient[Document] = MongoClient(mongo_uri)
    yield client
    client.close()


@pytest.fixture
def counted_client(mongo_uri: str) -> Iterator[tuple[MongoClient[Document], CommandCounter]]:
    """A client whose every command is recorded."""
    counter = CommandCounter()
    client: MongoClient[Document] = MongoClient(mongo_uri, event_listeners=[counter])
    yield client, counter
    client.close()
