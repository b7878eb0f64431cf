"""The dashboard's reads against the real server: bounded counts, keyset pages in claim order."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection

from streamqueue import Queue
from streamqueue.dashboard.live import event_rate
from streamqueue.scheduler import Scheduler
from streamqueue.storage import Document
from streamqueue.storage import dashboard as reads_module
from streamqueue.storage.dashboard import (
    DashboardStore,
    PageKey,
    claim_order_after,
    claim_sort,
    live_state_filter,
)
from tests.helpers import wait_until
from tests.integration.conftest import QueueFactory


@pytest.fixture
def reads(mongo_client: MongoClient[Document]) -> DashboardStore:
    return DashboardStore(mongo_client["streamqueue_test"])


@pytest.fixture
def filled(make_queue: QueueFactory) -> Iterator[Queue]:
    queue = make_queue()
    for priority in (0, 5, -3):
        queue.put_many([{"p": priority, "i": i} for i in range(40)], priority=priority)
    yield queue


def _walk(reads: DashboardStore, queue: Queue, *, descending: bool, limit: int) -> list[Document]:
    now = reads.server_now()
    rows: list[Document] = []
    after: PageKey | None = None
    while True:
        page = reads.live_page(queue.store, "ready", now, after=after, descending=descending,
                               limit=limit)
        rows += page.rows
        if page.next_key is None:
            return rows
        after = page.next_key


@pytest.mark.parametrize("descending", [False, True])
def test_pages_walk_every_ready_job_once_in_claim_order(
        reads: DashboardStore, filled: Queue, collection: Collection[Document],
        descending: bool) -> None:
    walked = _walk(reads, filled, descending=descending, limit=7)
    expected = list(collection.find({"state": "ready"}, sort=claim_sort(descending)))
    assert [doc["_id"] for doc in walked] == [doc["_id"] for doc in expected]
    assert len(walked) == 120
    if not descending:
        # Claim order is the order consumers get them.
        assert filled.claim(1)[0].id == walked[0]["_id"]


def test_a_deep_page_reads_only_its_own_keys(reads: DashboardStore, filled: Queue,
                                             collection: Collection[Document]) -> None:
    now = reads.server_now()
    rows = list(collection.find({"state": "ready"}, sort=claim_sort(False), skip=90, limit=1))
    after = PageKey(rows[0]["_id"], rows[0]["priority"], rows[0]["available_at"])
    query = {"$and": [live_state_filter("ready", now), claim_order_after(after, False)]}
    plan = collection.find(query, sort=claim_sort(False), limit=10, hint="claim").explain()
    stats = plan["executionStats"]
    assert stats["nReturned"] == 10
    # Keyset, not skip: about the page's own keys, however deep the page.
    assert stats["totalKeysExamined"] <= 12
    assert "SORT" not in str(plan["queryPlanner"]["winningPlan"]).replace("SORT_MERGE", "")


def test_counts_are_exact_below_the_cap(reads: DashboardStore, filled: Queue) -> None:
    filled.put({"later": True}, delay=3600)
    assert filled.claim(1)
    counts = reads.counts(filled.store, reads.server_now())
    assert counts.counts["ready"] == 119
    assert counts.counts["delayed"] == 1
    assert counts.counts["locked"] == 1
    assert not counts.estimated and not counts.at_least
    assert counts.shown("ready") == "119"


def test_one_state_past_the_cap_is_estimated_from_metadata(
        reads: DashboardStore, filled: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reads_module, "COUNT_CAP", 50)
    filled.pause()  # the switch's document must not count as a job
    filled.put({"later": True}, delay=3600)
    counts = reads.counts(filled.store, reads.server_now())
    assert counts.estimated == {"ready"}
    assert counts.counts["ready"] == 120  # metadata count less the exact others and the switch
    assert counts.shown("ready") == "~120"
    assert counts.counts["delayed"] == 1


def test_two_states_past_the_cap_are_shown_as_at_least(
        reads: DashboardStore, filled: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reads_module, "COUNT_CAP", 10)
    filled.put_many([{"later": i} for i in range(15)], delay=3600)
    counts = reads.counts(filled.store, reads.server_now())
    assert counts.at_least == {"ready", "delayed"}
    assert counts.shown("delayed") == "≥ 10"


def test_queue_names_skip_error_queues_and_schedules(reads: DashboardStore, filled: Queue) -> None:
    filled.store.failed.insert_one({"_id": 1})
    filled.schedule("nightly", cron="0 3 * * *")
    names = reads.queue_names()
    assert filled.name in names
    assert f"{filled.name}.failed" not in names
    assert f"{filled.name}.schedules" not in names
    assert reads.queue_names(("a", "b")) == ["a", "b"]


def test_the_feed_sees_a_schedule_created_fired_and_removed_and_counts_none_as_a_rate(
        reads: DashboardStore, make_queue: QueueFactory) -> None:
    queue, other = make_queue(), make_queue()
    with reads.watch([queue.name], 0.1) as stream:
        other.schedule("elsewhere", every=1)  # another queue's: filtered out by the server
        queue.schedule("tick", every=1, misfire="skip")
        assert wait_until(lambda: Scheduler(queue).run_pass() >= 0
                          and queue.schedules()[0].fired > 0, timeout=10)
        queue.unschedule("tick")
        events: list[Document] = []

        def seen() -> list[tuple[str, str]]:
            event = stream.next_event()
            if event is not None:
                events.append(event)
            return [(e["ns"]["coll"], e["operationType"]) for e in events]

        schedules = f"{queue.name}.schedules"
        # Created (an upsert), fired (next_at moves), removed; the fire's job is an insert.
        assert wait_until(lambda: (schedules, "delete") in seen(), timeout=10), seen()
        kinds = [kind for coll, kind in seen() if coll == schedules]
        assert kinds[0] == "insert" and "update" in kinds and kinds[-1] == "delete"
        assert (queue.name, "insert") in seen()
        assert all(coll in (queue.name, schedules) for coll, _ in seen())
        assert [event_rate(e) for e in events if e["ns"]["coll"] == schedules] == [None] * len(kinds)
