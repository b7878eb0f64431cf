"""Drive an interleaving on the real server: ``failCommand`` fail points and command hooks.

The test replica sets run with ``enableTestCommands``. A fail point is scoped
to one client by its ``appName``, so the rest of the test talks to the server
normally. A ``CommandHook`` runs test code synchronously at a chosen command of
one client (before it is sent, or when its reply arrives): that is how a test
puts another consumer's work exactly between a try and its retry.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from pymongo import MongoClient, monitoring

Document = dict[str, Any]
Action = Callable[[Any], None]


@contextlib.contextmanager
def fail_point(client: MongoClient[Document], mode: Any, data: Document,
               name: str = "failCommand") -> Iterator[None]:
    client.admin.command("configureFailPoint", name, mode=mode, data=data)
    try:
        yield
    finally:
        client.admin.command("configureFailPoint", name, mode="off")


def app_name() -> str:
    return f"sq-test-{uuid.uuid4().hex[:8]}"


class CommandHook(monitoring.CommandListener):
    """Call an action on the n-th started/succeeded/failed event of a command, once."""

    def __init__(self) -> None:
        self._rules: list[tuple[str, str, int, Action]] = []
        self._seen: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self.errors: list[BaseException] = []

    def on(self, kind: str, command: str, action: Action, nth: int = 1) -> None:
        """``kind``: "started", "succeeded" or "failed"; counted from now on."""
        with self._lock:
            self._seen[(kind, command)] = 0
            self._rules.append((kind, command, nth, action))

    def count(self, kind: str, command: str) -> int:
        with self._lock:
            return self._seen.get((kind, command), 0)

    def _fire(self, kind: str, command: str, event: Any) -> None:
        with self._lock:
            seen = self._seen.get((kind, command), 0) + 1
            self._seen[(kind, command)] = seen
            due = [rule for rule in self._rules if rule[:2] == (kind, command) and rule[2] == seen]
            for rule in due:
                self._rules.remove(rule)
        for rule in due:
            try:
                rule[3](event)
            except BaseException as exc:  # reported by the test, not swallowed by pymongo
                self.errors.append(exc)
                raise

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self._fire("started", event.command_name, event)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._fire("succeeded", event.command_name, event)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._fire("failed", event.command_name, event)


def hooked_client(uri: str, hook: CommandHook, **options: Any) -> MongoClient[Document]:
    """A client whose commands ``hook`` sees; fail points can target its ``appname``."""
    options.setdefault("appname", app_name())
    return MongoClient(uri, event_listeners=[hook], **options)


def rival_locks_candidates(collection: Any, keep: int = 0) -> Action:
    """A ``CommandHook`` action for a batch claim's locking ``update``: another consumer
    locks the claim's candidates just before it, all but the first ``keep``."""

    def take(event: Any) -> None:
        candidates = event.command["updates"][0]["q"]["_id"]["$in"]
        collection.update_many({"_id": {"$in": candidates[keep:]}}, [{"$set": {
            "state": "locked", "lease_token": {"$concat": ["rival:", {"$toString": "$_id"}]}}}])

    return take


# What that rival takes, leaving one job a round, from the 8 rounds of a batch claim of 16
# (each round asks for 16 minus what the claim locked so far).
RIVAL_TAKES_FROM_16 = sum(range(8, 16))
