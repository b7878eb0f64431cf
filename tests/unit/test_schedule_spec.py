"""Checking what Queue.schedule is given, before anything is written."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from streamqueue.schedule import ScheduleInfo, check_schedule

START = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize(("options", "message"), [
    ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"cron": "* * * * *", "timezone": "../etc/passwd"}, "unknown time zone"),
    ({"cron": "70 * * * *"}, "bad cron expression"),
    ({"cron": "* * *"}, "5 fields"),
    ({"every": 0.5}, "from 1 second"),
    ({"every": timedelta(milliseconds=999)}, "from 1 second"),
    ({"every": float("nan")}, "from 1 second"),
    ({}, "exactly one of cron= and every="),
    ({"cron": "* * * * *", "every": 60}, "exactly one of cron= and every="),
    ({"every": 60, "start_at": START, "end_at": START}, "must be after start_at"),
    ({"every": 60, "start_at": START, "end_at": START - timedelta(seconds=1)},
     "must be after start_at"),
    ({"every": 60, "start_at": datetime(2026, 1, 1)}, "timezone-aware"),
    ({"every": 60, "misfire": "sometimes"}, "misfire must be one of latest, skip, all"),
    ({"every": 60, "catch_up": 0}, "catch_up must be from 1"),
])
def test_bad_input_is_refused_with_one_line(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        check_schedule("report", **options)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("options", [{"cron": 5}, {"every": "60"}, {"every": True},
                                     {"every": 60, "start_at": "2026-01-01"}])
def test_wrong_types_are_type_errors(options: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        check_schedule("report", **options)


def test_a_bad_name_is_refused() -> None:
    with pytest.raises(ValueError, match="schedule name"):
        check_schedule("", every=60)
    with pytest.raises(TypeError):
        check_schedule(7, every=60)


def test_the_revision_names_the_definition() -> None:
    one = check_schedule("report", every=60, payload={"a": 1})
    assert one.revision == check_schedule("report", every=timedelta(minutes=1),
                                          payload={"a": 1}).revision
    assert one.revision != check_schedule("report", every=60, payload={"a": 2}).revision
    assert one.revision != check_schedule("report", every=60, payload={"a": 1},
                                          misfire="all").revision


def test_info_reads_a_stored_document_back() -> None:
    spec = check_schedule("report", cron="@daily", timezone="Europe/Berlin", priority=5)
    doc = {"_id": "report", **spec.stored_fields(), "revision": spec.revision,
           "next_at": datetime(2026, 1, 1, 23), "fired": 2}
    info = ScheduleInfo.from_document(doc)
    assert info.cron == "@daily" and info.every is None and info.priority == 5
    assert info.next_at == datetime(2026, 1, 1, 23, tzinfo=timezone.utc)
    assert info.rule == spec.rule and info.fired == 2 and info.missed == 0
