"""The dashboard's pure parts: rates, event classification, auth, binding, formats, page keys."""

from __future__ import annotations

import base64
from datetime import datetime
from pathlib import Path

import pytest
from bson import ObjectId

from streamqueue.dashboard import format as fmt
from streamqueue.dashboard.auth import (
    SESSION_COOKIE,
    SESSION_SECONDS,
    Authenticator,
    CsrfGuard,
    load_secret,
    same_origin,
)
from streamqueue.dashboard.config import check_bind, is_loopback
from streamqueue.dashboard.live import event_rate
from streamqueue.dashboard.pages import BadRequest, decode_key, encode_key, parse_filter
from streamqueue.dashboard.rates import RateWindow
from streamqueue.dashboard.schedules import ScheduleRow
from streamqueue.errors import ConfigurationError
from streamqueue.schedule import ScheduleInfo
from streamqueue.storage.dashboard import PageKey, StateCounts, claim_order_after, claim_sort
from tests.helpers import FakeClock

SECRET = "s3cret-token-0123"


def test_rates_average_over_the_window_and_forget_old_buckets() -> None:
    clock = FakeClock(0.0)
    rates = RateWindow(clock, window=60, bucket=10)
    rates.add("q", "enqueued", 30)
    clock.advance(30)
    assert rates.per_second("q", "enqueued") == pytest.approx(1.0)  # 30 events in 30 s
    assert rates.per_second("q", "finished") == 0.0
    clock.advance(60)
    assert rates.per_second("q", "enqueued") == 0.0  # out of the window
    rates.add("q", "enqueued", 12)
    assert rates.series("q", "enqueued")[-1] == pytest.approx(1.2)
    assert len(rates.series("q", "enqueued")) == 6


def test_rates_hold_a_bounded_number_of_buckets() -> None:
    clock = FakeClock(0.0)
    rates = RateWindow(clock, window=60, bucket=10)
    for _ in range(1000):
        rates.add("q", "enqueued")
        clock.advance(10)
    assert len(rates._buckets) == 6


def test_restart_forgets_what_was_counted() -> None:
    clock = FakeClock(0.0)
    rates = RateWindow(clock, window=60, bucket=10)
    rates.add("q", "dead", 5)
    rates.restart()
    clock.advance(5)
    assert rates.per_second("q", "dead") == 0.0


@pytest.mark.parametrize(("event", "counted"), [
    ({"operationType": "insert", "ns": {"coll": "q"}, "fullDocument": {"state": "ready"}},
     ("q", "enqueued")),
    ({"operationType": "insert", "ns": {"coll": "q"}, "fullDocument": {"state": "enqueue-check"}},
     None),
    ({"operationType": "insert", "ns": {"coll": "q.failed"}}, ("q", "dead")),
    ({"operationType": "delete", "ns": {"coll": "q.failed"}}, None),
    # A schedule created, fired or removed is no job: no rate moves.
    ({"operationType": "insert", "ns": {"coll": "q.schedules"}, "fullDocument": {}}, None),
    ({"operationType": "delete", "ns": {"coll": "q.schedules"}, "documentKey": {"_id": "s"}},
     None),
    ({"operationType": "delete", "ns": {"coll": "q"}, "documentKey": {"_id": ObjectId()}},
     ("q", "finished")),
    ({"operationType": "update", "ns": {"coll": "q"},
      "updateDescription": {"updatedFields": {"state": "completed"}}}, ("q", "finished")),
    ({"operationType": "update", "ns": {"coll": "q"},
      "updateDescription": {"updatedFields": {"state": "locked"}}}, None),
    # A fleet member leaving (its document deleted) finished no job.
    ({"operationType": "delete", "ns": {"coll": "q"},
      "documentKey": {"_id": "streamqueue.member.host:1:ab"}}, None),
])
def test_which_events_count_toward_which_rate(event: dict[str, object],
                                              counted: tuple[str, str] | None) -> None:
    assert event_rate(event) == counted


def test_token_auth_accepts_bearer_and_signed_sessions_only() -> None:
    clock = FakeClock(1_000_000.0)
    auth = Authenticator("token", SECRET, clock=clock)
    assert auth.allows({"authorization": f"Bearer {SECRET}"}, {})
    assert not auth.allows({"authorization": f"Bearer {SECRET}x"}, {})
    assert not auth.allows({}, {})
    session = auth.new_session()
    assert SECRET not in session
    assert auth.allows({}, {SESSION_COOKIE: session})
    forged = session[:-1] + ("1" if session.endswith("0") else "0")
    assert not auth.allows({}, {SESSION_COOKIE: forged})
    other = Authenticator("token", SECRET)  # another process: another signing key
    assert not other.allows({}, {SESSION_COOKIE: session})
    clock.advance(SESSION_SECONDS + 1)
    assert not auth.allows({}, {SESSION_COOKIE: session})
    assert SECRET not in repr(auth)


def test_basic_auth() -> None:
    auth = Authenticator("basic", "admin:" + SECRET)
    good = base64.b64encode(f"admin:{SECRET}".encode()).decode()
    assert auth.allows({"authorization": f"Basic {good}"}, {})
    assert not auth.allows({"authorization": "Basic !!!"}, {})
    assert not auth.allows({"authorization": f"Bearer admin:{SECRET}"}, {})
    assert not auth.token_matches("admin:" + SECRET)
    with pytest.raises(ConfigurationError, match="user:password"):
        Authenticator("basic", SECRET)


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="too short"):
        Authenticator("token", "abc")


def test_the_secret_comes_from_a_file_or_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    assert load_secret(str(path), {}) == SECRET
    assert load_secret(None, {"STREAMQUEUE_DASHBOARD_SECRET": SECRET}) == SECRET
    with pytest.raises(ConfigurationError, match="empty or unset"):
        load_secret(None, {})
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_secret(str(tmp_path / "missing"), {})


def test_csrf_and_origin_checks() -> None:
    guard = CsrfGuard()
    assert guard.valid(guard.token)
    assert not guard.valid(None) and not guard.valid(guard.token + "x")
    assert CsrfGuard().token != guard.token
    assert same_origin({"host": "127.0.0.1:8080"})  # no Origin: not a cross-site browser post
    assert same_origin({"host": "127.0.0.1:8080", "origin": "http://127.0.0.1:8080"})
    assert not same_origin({"host": "127.0.0.1:8080", "origin": "http://evil.example"})
    assert not same_origin({"host": "127.0.0.1:8080", "origin": "null"})


def test_binding_beyond_loopback_needs_auth_or_read_only() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert is_loopback(host)
        check_bind(host, auth=False, read_only=False)
    with pytest.raises(ConfigurationError, match="--auth"):
        check_bind("0.0.0.0", auth=False, read_only=False)
    with pytest.raises(ConfigurationError, match="--read-only"):
        check_bind("dashboard.example", auth=False, read_only=False)
    check_bind("0.0.0.0", auth=True, read_only=False)
    check_bind("0.0.0.0", auth=False, read_only=True)


def test_formats() -> None:
    assert fmt.duration(None) == "—"
    assert fmt.duration(5.25) == "5.2s"
    assert fmt.duration(185) == "3m 05s"
    assert fmt.duration(3 * 3600 + 120) == "3h 02m"
    assert fmt.duration(50 * 3600) == "2d 02h"
    assert fmt.when(datetime(2026, 1, 2, 3, 4, 5, 6000)) == "2026-01-02T03:04:05.006Z"
    oid = ObjectId()
    assert f'"$oid": "{oid}"' in fmt.pretty_json({"id": oid})
    assert fmt.pretty_json({"html": "<b>"}) == '{\n  "html": "<b>"\n}'  # text; the template escapes
    assert fmt.short_json({"x": "y" * 200}).endswith("…")


def test_page_keys_round_trip_and_bad_ones_are_refused() -> None:
    key = PageKey(ObjectId(), -3, datetime(2026, 5, 6, 7, 8, 9, 123000))
    assert decode_key(encode_key(key)) == key
    assert decode_key(None) is None
    for bad in ("x", "zz.1.2", f"{ObjectId()}.one.2"):
        with pytest.raises(BadRequest):
            decode_key(bad)


def test_filters() -> None:
    assert parse_filter({}).state == "ready"
    with pytest.raises(BadRequest):
        parse_filter({"state": "nope"})
    with pytest.raises(BadRequest):
        parse_filter({"id": "123"})
    with pytest.raises(BadRequest):
        parse_filter({"order": "random"})


def test_claim_order_keyset_mirrors_the_sort() -> None:
    key = PageKey(ObjectId(), 2, datetime(2026, 1, 1))
    forward = claim_order_after(key, descending=False)["$or"]
    assert forward[0] == {"priority": {"$lt": 2}}
    assert forward[2]["_id"] == {"$gt": key.id}
    backward = claim_order_after(key, descending=True)["$or"]
    assert backward[0] == {"priority": {"$gt": 2}}
    assert claim_sort(True) == [("priority", 1), ("available_at", -1), ("_id", -1)]


def test_shown_counts_say_which_are_estimated() -> None:
    counts = StateCounts({"ready": 1234567, "failed": 3, "delayed": 100001},
                         estimated=frozenset({"ready"}), at_least=frozenset({"delayed"}))
    assert counts.shown("ready") == "~1,234,567"
    assert counts.shown("failed") == "3"
    assert counts.shown("delayed") == "≥ 100,001"
    assert counts.shown("locked") == "0"


def _info(**fields: object) -> ScheduleInfo:
    return ScheduleInfo.from_document({"_id": "s", "every_ms": 90_000, **fields})


@pytest.mark.parametrize(("fields", "next_in"), [
    ({"next_at": datetime(2026, 1, 1, 12, 1, 30)}, "1m 30s"),
    ({"next_at": datetime(2026, 1, 1, 12, 0, 0)}, "due"),
    ({"next_at": datetime(2026, 1, 1, 11, 59)}, "due"),
    ({"next_at": None}, "ended"),
])
def test_a_schedule_row_times_its_next_fire_by_the_server_instant(
        fields: dict[str, object], next_in: str) -> None:
    row = ScheduleRow("q", _info(**fields), datetime(2026, 1, 1, 12, 0, 0))
    assert row.next_in == next_in
    assert row.rule == "every 1m 30s"


def test_a_schedule_row_shows_the_last_fire_and_its_lateness() -> None:
    job = ObjectId()
    row = ScheduleRow("q", _info(cron="0 3 * * *", last_tick=datetime(2026, 1, 1, 3),
                                 last_fired_at=datetime(2026, 1, 1, 3, 0, 0, 250_000),
                                 last_job_id=job), datetime(2026, 1, 1, 12))
    assert row.rule == "cron 0 3 * * *" and row.lateness == "0.2s"
    assert row.as_json()["last_job"] == str(job)
    assert row.as_json()["last_tick"] == "2026-01-01T03:00:00.000Z"
    never = ScheduleRow("q", _info(), datetime(2026, 1, 1, 12))
    assert (never.lateness, never.last_job, never.as_json()["last_tick"]) == ("—", "", "—")
