"""JobInfo's named state, from a stored document and the server's clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from bson import ObjectId

from streamqueue.jobinfo import JobInfo, job_state

NOW = datetime(2026, 1, 1, 12, 0, 0)


@pytest.mark.parametrize("doc, dead, state", [
    ({"state": "ready", "available_at": NOW}, False, "ready"),
    ({"state": "ready", "available_at": NOW - timedelta(seconds=1)}, False, "ready"),
    ({"state": "ready", "available_at": NOW + timedelta(milliseconds=1)}, False, "delayed"),
    ({"state": "ready"}, False, "ready"),
    ({"state": "locked"}, False, "locked"),
    ({"state": "completed"}, False, "completed"),
    ({"state": "cancelled"}, False, "cancelled"),
    ({"state": "failed"}, True, "failed"),
    ({"state": "locked"}, True, "failed"),
])
def test_job_state(doc: dict[str, object], dead: bool, state: str) -> None:
    assert job_state(doc, dead=dead, now=NOW) == state


def test_an_aware_clock_compares_in_utc() -> None:
    later = NOW + timedelta(minutes=30)
    aware_now = NOW.replace(tzinfo=timezone.utc).astimezone(timezone(timedelta(hours=5)))
    assert job_state({"state": "ready", "available_at": later}, dead=False, now=aware_now) == "delayed"


def test_from_document_defaults_for_features_not_yet_stored() -> None:
    oid = ObjectId()
    info = JobInfo.from_document({"_id": oid, "state": "ready", "payload": {"a": 1}},
                                 dead=False, now=NOW)
    assert (info.id, info.state, info.payload, info.tags, info.key, info.cancel_requested,
            info.result, info.finished_at) == (oid, "ready", {"a": 1}, (), None, False, None, None)
