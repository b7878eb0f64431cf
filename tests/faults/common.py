"""Small shared pieces of the fault scenarios: names, progress lines, server-side counts."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
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


def change_stream_cursors(client: MongoClient[Document], namespace: str) -> int:
    """Open change streams on ``namespace`` (``db.coll``), idle or in a getMore, on this server."""
    db, _, coll = namespace.partition(".")
    pipeline: list[Document] = [
        {"$currentOp": {"allUsers": True, "idleCursors": True}},
        {"$match": {"cursor.originatingCommand.aggregate": coll,
                    "cursor.originatingCommand.$db": db}},
    ]
    cursors = set()
    for op in client.admin.aggregate(pipeline):
        stages = op["cursor"]["originatingCommand"].get("pipeline", [])
        if stages and "$changeStream" in stages[0]:
            cursors.add(op["cursor"]["cursorId"])
    return len(cursors)


def connections(client: MongoClient[Document]) -> int:
    """Connections the server has open right now (``serverStatus.connections.current``)."""
    return int(client.admin.command("serverStatus")["connections"]["current"])


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
