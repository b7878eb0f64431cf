"""Small helpers shared by the test suites: waiting on conditions with deadlines, clocks."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from pymongo import MongoClient, monitoring
from pymongo.collection import Collection

Document = dict[str, Any]


def wait_until(predicate: Callable[[], object], timeout: float = 10.0,
               interval: float = 0.005) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` seconds pass; return the last answer.

    Tests assert on the result (``assert wait_until(...)``) instead of sleeping a
    fixed time and hoping.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


async def wait_until_async(predicate: Callable[[], object], timeout: float = 10.0,
                           interval: float = 0.01) -> bool:
    """``wait_until`` for a coroutine: polls without blocking the event loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() >= deadline:
            return bool(predicate())
        await asyncio.sleep(interval)
    return True


def stays_false(predicate: Callable[[], object], duration: float) -> bool:
    """True if ``predicate`` stays falsy for ``duration`` seconds (a bounded negative check)."""
    return not wait_until(predicate, duration)


class FakeClock:
    """A monotonic clock the test moves by hand; thread-safe."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class Background:
    """Run a callable in a daemon thread and keep its result or exception."""

    def __init__(self, fn: Callable[[], Any], name: str = "test-background") -> None:
        self._fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished_at: float | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:  # handed to the test thread by join()
            self.error = exc
        finally:
            self.finished_at = time.monotonic()
            self.done.set()

    def start(self) -> Background:
        self.thread.start()
        return self

    def join(self, timeout: float = 30.0) -> Any:
        """Wait for the thread; re-raise its exception; return its result."""
        if not self.done.wait(timeout):
            raise AssertionError(f"{self.thread.name} did not finish within {timeout}s")
        self.thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.result


class CommandCounter(monitoring.CommandListener):
    """Records the commands a client sends (name and body), thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.commands: list[tuple[str, Document]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with self._lock:
            self.commands.append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def reset(self) -> None:
        with self._lock:
            self.commands.clear()

    def count(self, name: str, collection: str | None = None) -> int:
        """Commands called ``name``, on ``collection`` when given."""
        with self._lock:
            return sum(
                1 for command_name, body in self.commands
                if command_name == name and (collection is None or body.get(name) == collection)
            )

    def change_streams_opened(self, collection: str) -> int:
        with self._lock:
            return sum(
                1 for command_name, body in self.commands
                if command_name == "aggregate" and body.get("aggregate") == collection
                and any("$changeStream" in stage for stage in body.get("pipeline", []))
            )


def on(client: MongoClient[Document], collection: Collection[Document]) -> Collection[Document]:
    """The same collection, reached through another client ("another process")."""
    return client[collection.database.name][collection.name]


def server_now(client: MongoClient[Document]) -> datetime:
    """The server's clock, as a naive UTC datetime (how pymongo decodes dates)."""
    now: datetime = client.admin.command("hello")["localTime"]
    return now.astimezone(timezone.utc).replace(tzinfo=None) if now.tzinfo else now


def mongod_available() -> bool:
    """True when ``streamqueue.testing`` can find a ``mongod`` to start."""
    from streamqueue.errors import ConfigurationError
    from streamqueue.testing import find_mongod

    try:
        find_mongod()
    except ConfigurationError:
        return False
    return True
