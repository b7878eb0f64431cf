"""event_due_in on hand-built change events: server dates only, never the local clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from bson import Timestamp

from streamqueue.storage import event_due_in

COMMIT = datetime(2030, 5, 17, 12, 0, 0, 250_000)  # naive UTC, as pymongo decodes by default
COMMIT_AWARE = COMMIT.replace(tzinfo=timezone.utc)


def insert_event(available_at: object, wall_time: object = COMMIT) -> dict[str, Any]:
    return {
        "operationType": "insert",
        "wallTime": wall_time,
        "clusterTime": Timestamp(int(COMMIT_AWARE.timestamp()), 1),
        "fullDocument": {"available_at": available_at},
    }


def update_event(available_at: object) -> dict[str, Any]:
    return {
        "operationType": "update",
        "wallTime": COMMIT,
        "updateDescription": {"updatedFields": {"available_at": available_at, "state": "ready"}},
    }


def test_due_at_commit_is_due_now() -> None:
    assert event_due_in(insert_event(COMMIT)) == 0.0


def test_due_in_the_past_is_due_now() -> None:
    assert event_due_in(insert_event(COMMIT - timedelta(hours=1))) == 0.0


def test_delayed_insert_reports_the_delay() -> None:
    assert event_due_in(insert_event(COMMIT + timedelta(seconds=5))) == pytest.approx(5.0)


def test_milliseconds_are_kept() -> None:
    assert event_due_in(insert_event(COMMIT + timedelta(milliseconds=1500))) == pytest.approx(1.5)


def test_update_event_uses_the_updated_fields() -> None:
    assert event_due_in(update_event(COMMIT + timedelta(seconds=30))) == pytest.approx(30.0)
    assert event_due_in(update_event(COMMIT)) == 0.0


def test_replace_event_uses_the_full_document() -> None:
    event = insert_event(COMMIT + timedelta(seconds=2))
    event["operationType"] = "replace"
    assert event_due_in(event) == pytest.approx(2.0)


def test_far_future_is_not_clamped() -> None:
    assert event_due_in(insert_event(COMMIT + timedelta(days=2))) == pytest.approx(2 * 86400.0)


def test_independent_of_the_local_clock() -> None:
    # Dates decades away from "now" give the same answer: only the event's own
    # dates count.
    long_ago = datetime(1990, 1, 1)
    event = insert_event(long_ago + timedelta(seconds=3), wall_time=long_ago)
    assert event_due_in(event) == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("available_at", "wall_time"),
    [
        (COMMIT_AWARE + timedelta(seconds=4), COMMIT),
        (COMMIT + timedelta(seconds=4), COMMIT_AWARE),
        (COMMIT_AWARE + timedelta(seconds=4), COMMIT_AWARE),
    ],
    ids=["aware-due", "aware-commit", "both-aware"],
)
def test_tz_aware_and_naive_dates_mix(available_at: datetime, wall_time: datetime) -> None:
    # A tz_aware client decodes aware datetimes; both must work, alone or mixed.
    assert event_due_in(insert_event(available_at, wall_time)) == pytest.approx(4.0)


def test_without_wall_time_the_cluster_time_is_used() -> None:
    event = insert_event(COMMIT + timedelta(seconds=10))
    del event["wallTime"]
    # clusterTime has whole seconds: the commit is taken as 12:00:00, not 12:00:00.25.
    assert event_due_in(event) == pytest.approx(10.25)


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"operationType": "insert", "wallTime": COMMIT},
        {"operationType": "insert", "wallTime": COMMIT, "fullDocument": {}},
        {"operationType": "insert", "wallTime": COMMIT, "fullDocument": None},
        {"operationType": "insert", "fullDocument": {"available_at": COMMIT}},
        {"operationType": "insert", "wallTime": COMMIT, "fullDocument": {"available_at": None}},
        {"operationType": "insert", "wallTime": COMMIT, "fullDocument": {"available_at": "soon"}},
        {"operationType": "insert", "wallTime": "now", "fullDocument": {"available_at": COMMIT}},
        {"operationType": "update", "wallTime": COMMIT, "updateDescription": {}},
        {"operationType": "update", "wallTime": COMMIT,
         "updateDescription": {"updatedFields": {"state": "ready"}}},
    ],
    ids=["empty", "no-document", "no-available_at", "null-document", "no-commit-time",
         "null-due", "string-due", "string-commit", "no-updated-fields", "update-without-due"],
)
def test_anything_unknown_counts_as_due_now(event: dict[str, Any]) -> None:
    # When in doubt, wake a waiter: one empty claim is cheaper than a lost job.
    assert event_due_in(event) == 0.0
