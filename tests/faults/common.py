"""Small shared pieces of the fault scenarios: names, progress lines, server-side counts."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pymongo import MongoClient

Document = dict[str, Any]

FAULT_DB = "sqfaults"


def log(message: str) -> None:
    """A progress line; shown live with ``-s``, and in the captured output of a failure."""
    print(f"[faults {time.strftime('%H:%M:%S')}] {message}", flush=True)


def enqueue(put_many: Callable[[list[Document]], list[ObjectId]], payloads: Iterable[Document],
            chunk: int = 1000) -> list[ObjectId]:
    """Put ``payloads`` in chunks of ``chunk`` jobs; return every id, in order."""
    ids: list[ObjectId] = []
    batch: list[Document] = []
    for payload in payloads:
        batch.append(payload)
        if len(batch) == chunk:
            ids += put_many(batch)
            batch = []
    if batch:
        ids += put_many(batch)
    return ids


@dataclass(frozen=True)
class StreamCount:
    live: int  # in a getMore now, or idle but polled within ``stale_after`` seconds
    stale: int  # idle and untouched: a cursor whose client is gone (it times out on the server)


def change_streams(client: MongoClient[Document], namespace: str,
                   stale_after: float = 12.0) -> StreamCount:
    """Change-stream cursors open on ``namespace`` (``db.coll``) on the server ``client`` uses.

    ``$currentOp`` with ``idleCursors`` lists cursors between two getMores as
    well as those in one. A consumer's stream runs a getMore at least every
    ``max_await`` (5 s by default), so an idle one older than ``stale_after``
    has no client: pymongo abandons a cursor whose connection broke without
    killing it (it cannot reach it), and the server keeps it until
    ``cursorTimeoutMillis`` (10 minutes).
    """
    db, _, coll = namespace.partition(".")
    now = client.admin.command("hello")["localTime"]
    pipeline: list[Document] = [
        {"$currentOp": {"allUsers": True, "idleCursors": True}},
        {"$match": {"cursor.originatingCommand.aggregate": coll,
                    "cursor.originatingCommand.$db": db}},
    ]
    live: set[int] = set()
    stale: set[int] = set()
    for op in client.admin.aggregate(pipeline):
        cursor = op["cursor"]
        stages = cursor["originatingCommand"].get("pipeline", [])
        if not stages or "$changeStream" not in stages[0]:
            continue
        idle_for = (now - cursor["lastAccessDate"]).total_seconds()
        if op.get("type") == "op" or idle_for < stale_after:
            live.add(cursor["cursorId"])
        else:
            stale.add(cursor["cursorId"])
    return StreamCount(live=len(live), stale=len(stale - live))


def connections(client: MongoClient[Document]) -> int:
    """Connections the server has open right now (``serverStatus.connections.current``)."""
    return int(client.admin.command("serverStatus")["connections"]["current"])


def connections_by_app(client: MongoClient[Document]) -> dict[str, int]:
    """Open client connections on the server, by the application name each client sent.

    One entry per connection: ``$currentOp`` also lists, by default, each session idle in
    an open transaction (a worker moving a job to its error queue) beside its connection's
    own entry, which once counted 42 worker connections while the server had at most 64
    in all (24 of them the recorder's, 10 the reaper's and the test's).
    """
    counts: dict[str, int] = {}
    for op in client.admin.aggregate([{"$currentOp": {
            "allUsers": True, "idleConnections": True, "idleCursors": False,
            "idleSessions": False}}]):
        if "client" not in op or op.get("type", "op") != "op":
            continue  # the server's own threads; not a connection
        app = op.get("appName") or "-"
        counts[app] = counts.get(app, 0) + 1
    return dict(sorted(counts.items()))


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB, read from outside the process; None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
