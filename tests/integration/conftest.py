"""Fixtures for tests against the real replica set: queues that are closed afterwards,
a second client, and a command listener for counting what a queue sends."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from typing import Any, Protocol, cast

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection

from streamqueue import Queue
from streamqueue.storage import Document
from tests.helpers import CommandCounter
from tests.integration.aio_adapter import AsyncQueues


class QueueFactory(Protocol):
    def __call__(self, collection: Collection[Document] | None = None, /,
                 **options: Any) -> Queue: ...


# Queue.close() waits for the stream's blocked getMore, which the server ends at
# max_await even when the cursor is killed. Tests that do not measure idle cost
# use a shorter one so teardown is quick; push tests pass DEFAULT_MAX_AWAIT.
TEST_MAX_AWAIT = 1.0
DEFAULT_MAX_AWAIT: float = inspect.signature(Queue).parameters["max_await"].default


@pytest.fixture
def api() -> str:
    """Which API ``make_queue`` builds: "sync" here; modules of semantics tests that hold
    for both override this fixture with ``params=["sync", "async"]`` (see ``API_PARAMS``)."""
    return "sync"


#: For ``@pytest.fixture(params=API_PARAMS) def api(...)``: run a module against both APIs.
API_PARAMS = ["sync", "async"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``sync_only`` run only as their sync variant."""
    items[:] = [item for item in items if not (
        item.get_closest_marker("sync_only") is not None
        and getattr(getattr(item, "callspec", None), "params", {}).get("api") == "async")]


@pytest.fixture
def make_queue(collection: Collection[Document], api: str) -> Iterator[QueueFactory]:
    """Build queues (on the test's collection unless given another); closes them all after.

    With ``api == "async"`` each queue is an ``AsyncQueue`` driven through
    ``SyncFacade`` (the same methods, run on an event loop thread).
    """
    queues: list[Queue] = []
    async_queues = AsyncQueues() if api == "async" else None

    def make(target: Collection[Document] | None = None, /, **options: Any) -> Queue:
        options.setdefault("max_await", TEST_MAX_AWAIT)
        target = collection if target is None else target
        if async_queues is not None:
            return cast(Queue, async_queues.make(target, **options))
        queue = Queue(target, **options)
        queues.append(queue)
        return queue

    yield make
    closers = [threading.Thread(target=queue.close) for queue in queues]
    for closer in closers:
        closer.start()
    for closer in closers:
        closer.join()
    if async_queues is not None:
        async_queues.close()


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
