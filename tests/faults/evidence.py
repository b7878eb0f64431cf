"""Turn the handlers' records and the queue's final state into the figures each scenario asserts.

Definitions, used in every scenario:

- *completed*: a job with at least one ``kind: "done"`` record (its handler
  returned on some delivery).
- *lost*: a job that was enqueued, is not in the queue any more, is not in the
  error queue, and never completed. Also counted as lost: anything still in
  the queue when the scenario ends (a stuck or orphaned claim).
- *duplicate*: a job with more than one ``done`` record. It is *justified* only
  when every earlier finisher's lease truly expired: its process was SIGKILLed
  by the test, or a later delivery of the job was claimed with
  ``last_error = "lease expired while held by <that consumer>"``, which only
  the reaper writes, and only after ``locked_until < $$NOW`` on the server.
- *redeliveries*: claims beyond the first, over all completed jobs (the
  attempt number of a job's last completion, minus one).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection as Sized
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId
from pymongo.collection import Collection

Document = dict[str, Any]

EXPIRED_PREFIX = "lease expired while held by "


def consumer_pid(consumer: str) -> int | None:
    """The pid inside a default consumer id ``host:pid:random``."""
    parts = consumer.split(":")
    if len(parts) >= 3 and parts[-2].isdigit():
        return int(parts[-2])
    return None


@dataclass
class Evidence:
    enqueued: int
    completed: int
    lost: list[ObjectId]
    left_in_queue: list[Document]
    dead: set[ObjectId]
    dead_unexpected: set[ObjectId]
    dead_missing: set[ObjectId]
    duplicates: int
    unjustified_duplicates: list[ObjectId]
    same_claim_twice: list[ObjectId]
    redeliveries: int
    redelivered_jobs: int
    expired_consumers: set[str] = field(default_factory=set)
    expired_live: set[str] = field(default_factory=set)

    def figures(self) -> dict[str, Any]:
        return {
            "jobs": self.enqueued,
            "completed": self.completed,
            "lost": len(self.lost),
            "left_in_queue": len(self.left_in_queue),
            "dead": len(self.dead),
            "duplicates": self.duplicates,
            "unjustified_duplicates": len(self.unjustified_duplicates),
            "redeliveries": self.redeliveries,
            "redelivered_jobs": self.redelivered_jobs,
            "consumers_whose_lease_expired": len(self.expired_consumers),
            "live_consumers_whose_lease_expired": len(self.expired_live),
        }

    def assert_sound(self) -> None:
        """The four promises every scenario checks."""
        assert not self.left_in_queue, f"jobs still in the queue: {self.left_in_queue[:5]}"
        assert not self.lost, f"{len(self.lost)} jobs lost, e.g. {self.lost[:5]}"
        assert not self.same_claim_twice, (
            f"one claim (attempt number) finished twice: {self.same_claim_twice[:5]}")
        assert not self.unjustified_duplicates, (
            f"duplicates without an expired lease: {self.unjustified_duplicates[:5]}")
        assert not self.dead_unexpected, (
            f"in the error queue without exhausting attempts: {sorted(self.dead_unexpected)[:5]}")
        assert not self.dead_missing, (
            f"exhausted their attempts but not in the error queue: {sorted(self.dead_missing)[:5]}")


def gather(
    queue: Collection[Document],
    records: Collection[Document],
    enqueued: Iterable[ObjectId],
    *,
    expected_dead: Sized[ObjectId] = frozenset(),
    killed_pids: Sized[int] = frozenset(),
) -> Evidence:
    """Read the final state: the queue, its error queue and every ``done`` record."""
    ids = list(enqueued)
    failed = queue.database[f"{queue.name}.failed"]
    done: dict[ObjectId, list[Document]] = defaultdict(list)
    expired_consumers: set[str] = set()
    for rec in records.find({"kind": "done"}, {"_id": 0, "job_id": 1, "attempt": 1, "pid": 1,
                                                 "consumer": 1, "prev_error": 1}):
        done[rec["job_id"]].append(rec)
        prev = rec.get("prev_error") or ""
        if prev.startswith(EXPIRED_PREFIX):
            expired_consumers.add(prev[len(EXPIRED_PREFIX):].strip())
    # Dead jobs carry the same message when the reaper buried them.
    dead_docs = list(failed.find({}, {"_id": 1, "last_error": 1}))
    for doc in dead_docs:
        text = doc.get("last_error") or ""
        if text.startswith(EXPIRED_PREFIX):
            expired_consumers.add(text[len(EXPIRED_PREFIX):].strip())
    dead = {doc["_id"] for doc in dead_docs}
    left = list(queue.find({}, {"payload": 0}))
    left_ids = {doc["_id"] for doc in left}
    lost = [oid for oid in ids if oid not in done and oid not in dead and oid not in left_ids]

    unjustified: list[ObjectId] = []
    same_claim: list[ObjectId] = []
    duplicates = 0
    redeliveries = 0
    redelivered_jobs = 0
    for oid, recs in done.items():
        attempts = [r["attempt"] for r in recs]
        if len(set(attempts)) != len(attempts):
            same_claim.append(oid)
        last = max(attempts)
        redeliveries += last - 1
        redelivered_jobs += last > 1
        if len(recs) > 1:
            duplicates += 1
            for rec in sorted(recs, key=lambda r: r["attempt"])[:-1]:
                expired = rec["consumer"] in expired_consumers
                if not (rec["pid"] in killed_pids or expired):
                    unjustified.append(oid)
                    break
    live = {c for c in expired_consumers if consumer_pid(c) not in killed_pids}
    expected = set(expected_dead)
    return Evidence(
        enqueued=len(ids),
        completed=len(done),
        lost=lost,
        left_in_queue=left,
        dead=dead,
        dead_unexpected=dead - expected,
        dead_missing=expected - dead,
        duplicates=duplicates,
        unjustified_duplicates=unjustified,
        same_claim_twice=same_claim,
        redeliveries=redeliveries,
        redelivered_jobs=redelivered_jobs,
        expired_consumers=expired_consumers,
        expired_live=live,
    )
