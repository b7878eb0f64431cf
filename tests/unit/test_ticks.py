"""Tick arithmetic and misfire plans with injected times: DST changes, month ends, gaps."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from streamqueue.ticks import SKIP_GRACE, TickRule, check_cron, plan_fire

UTC = timezone.utc
NEW_YORK = "America/New_York"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[arg-type, misc]


def ticks(rule: TickRule, start: datetime, count: int) -> list[datetime]:
    found: list[datetime] = []
    moment: datetime | None = start
    for _ in range(count):
        assert moment is not None
        moment = rule.next_after(moment)
        if moment is None:
            break
        found.append(moment)
    return found


def local(moments: list[datetime], zone: str) -> list[str]:
    return [m.astimezone(ZoneInfo(zone)).strftime("%m-%d %H:%M %Z") for m in moments]


def test_every_ticks_on_multiples_since_the_epoch_strictly_after() -> None:
    rule = TickRule(every_ms=60_000)
    assert rule.next_after(utc(2026, 1, 1, 10, 0, 0)) == utc(2026, 1, 1, 10, 1)
    assert rule.next_after(utc(2026, 1, 1, 10, 0, 30)) == utc(2026, 1, 1, 10, 1)
    assert rule.next_after(utc(2026, 1, 1, 10, 0, 59, 999000)) == utc(2026, 1, 1, 10, 1)


def test_every_counts_from_start_at_and_stops_after_end_at() -> None:
    start = utc(2026, 1, 1, 10, 0, 0) + timedelta(milliseconds=250)
    rule = TickRule(every_ms=1500, start_at=start, end_at=start + timedelta(seconds=3))
    assert ticks(rule, utc(2025, 1, 1), 5) == [
        start, start + timedelta(seconds=1.5), start + timedelta(seconds=3)]


def test_cron_in_a_time_zone_is_converted_to_utc() -> None:
    rule = TickRule(cron="0 9 * * *", timezone="Europe/Berlin")
    assert rule.next_after(utc(2026, 7, 1, 12)) == utc(2026, 7, 2, 7)  # CEST
    assert rule.next_after(utc(2026, 12, 1, 12)) == utc(2026, 12, 2, 8)  # CET


def test_a_daily_time_skipped_by_spring_forward_fires_once_at_the_jump() -> None:
    # 2026-03-08 02:00 EST becomes 03:00 EDT: 02:30 does not exist that day.
    rule = TickRule(cron="30 2 * * *", timezone=NEW_YORK)
    found = ticks(rule, utc(2026, 3, 6, 12), 3)
    assert local(found, NEW_YORK) == ["03-07 02:30 EST", "03-08 03:00 EDT", "03-09 02:30 EDT"]


def test_a_daily_time_repeated_by_fall_back_fires_once() -> None:
    # 2026-11-01 02:00 EDT becomes 01:00 EST: 01:30 happens twice, fires the first time.
    rule = TickRule(cron="30 1 * * *", timezone=NEW_YORK)
    found = ticks(rule, utc(2026, 10, 31, 12), 2)
    assert local(found, NEW_YORK) == ["11-01 01:30 EDT", "11-02 01:30 EST"]
    assert found[1] - found[0] == timedelta(hours=25)


def test_frequent_cron_follows_real_time_through_fall_back() -> None:
    # Minute-granularity jobs run normally (Debian cron): both 01:xx hours fire.
    rule = TickRule(cron="*/30 * * * *", timezone=NEW_YORK)
    found = ticks(rule, utc(2026, 11, 1, 4, 45), 5)
    assert local(found, NEW_YORK) == ["11-01 01:00 EDT", "11-01 01:30 EDT", "11-01 01:00 EST",
                                      "11-01 01:30 EST", "11-01 02:00 EST"]
    assert all(b - a == timedelta(minutes=30) for a, b in itertools.pairwise(found))


def test_month_end_days_skip_short_months() -> None:
    rule = TickRule(cron="0 0 31 * *")
    found = ticks(rule, utc(2026, 1, 1), 4)
    assert [m.strftime("%Y-%m-%d") for m in found] == [
        "2026-01-31", "2026-03-31", "2026-05-31", "2026-07-31"]


def test_leap_day_and_aliases() -> None:
    assert TickRule(cron="0 12 29 2 *").next_after(utc(2026, 3, 1)) == utc(2028, 2, 29, 12)
    assert TickRule(cron="@hourly").next_after(utc(2026, 1, 1, 10, 5)) == utc(2026, 1, 1, 11)
    assert TickRule(cron="@monthly").next_after(utc(2026, 1, 31, 23)) == utc(2026, 2, 1)


def test_next_after_is_always_strictly_later() -> None:
    for rule in (TickRule(cron="30 1 * * *", timezone=NEW_YORK),
                 TickRule(cron="0 * * * *", timezone=NEW_YORK), TickRule(every_ms=1000)):
        moment = utc(2026, 10, 31, 20)
        for _ in range(60):
            following = rule.next_after(moment)
            assert following is not None and following > moment
            moment = following


@pytest.mark.parametrize("bad", ["* * * *", "61 * * * *", "* * * * * *", "@sometimes", "x"])
def test_check_cron_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="cron"):
        check_cron(bad)


EVERY_SECOND = TickRule(every_ms=1000)


def test_on_time_fires_the_one_tick_due() -> None:
    due = utc(2026, 1, 1, 10, 0, 0)
    for misfire in ("latest", "skip", "all"):
        plan = plan_fire(EVERY_SECOND, due, due + timedelta(milliseconds=3), misfire, 100)
        assert plan.fire == (due,) and plan.missed == 0
        assert plan.next_at == due + timedelta(seconds=1)


def test_after_a_gap_latest_fires_the_most_recent_tick_only() -> None:
    due = utc(2026, 1, 1, 10, 0, 0)
    now = due + timedelta(seconds=9.5)
    plan = plan_fire(EVERY_SECOND, due, now, "latest", 100)
    assert plan.fire == (due + timedelta(seconds=9),)
    assert plan.missed == 9
    assert plan.next_at == due + timedelta(seconds=10)


def test_after_a_gap_skip_fires_nothing_unless_the_latest_is_within_grace() -> None:
    rule = TickRule(every_ms=10_000)
    due = utc(2026, 1, 1, 10, 0, 0)
    late = plan_fire(rule, due, due + timedelta(seconds=36), "skip", 100)
    assert late.fire == () and late.missed == 4
    assert late.next_at == due + timedelta(seconds=40)
    just = plan_fire(rule, due, due + timedelta(seconds=30) + SKIP_GRACE, "skip", 100)
    assert just.fire == (due + timedelta(seconds=30),) and just.missed == 3


def test_after_a_gap_all_fires_at_most_catch_up_most_recent_ticks_in_order() -> None:
    due = utc(2026, 1, 1, 10, 0, 0)
    now = due + timedelta(seconds=9.5)
    every = plan_fire(EVERY_SECOND, due, now, "all", 100)
    assert every.fire == tuple(due + timedelta(seconds=i) for i in range(10))
    assert every.missed == 0
    bounded = plan_fire(EVERY_SECOND, due, now, "all", 3)
    assert bounded.fire == tuple(due + timedelta(seconds=i) for i in (7, 8, 9))
    assert bounded.missed == 7


def test_cron_gap_counts_and_bounds_like_every() -> None:
    rule = TickRule(cron="0 * * * *", timezone=NEW_YORK)
    due = utc(2026, 11, 1, 4)  # 00:00 EDT; fall back repeats 01:00 locally: 5 real hours follow
    now = utc(2026, 11, 1, 9, 30)
    plan = plan_fire(rule, due, now, "all", 4)
    assert plan.fire == tuple(utc(2026, 11, 1, h) for h in (6, 7, 8, 9))
    assert plan.missed == 2
    assert plan_fire(rule, due, now, "latest", 100).fire == (utc(2026, 11, 1, 9),)


def test_an_ended_rule_has_no_next_tick() -> None:
    due = utc(2026, 1, 1, 10, 0, 0)
    rule = TickRule(every_ms=1000, end_at=due)
    plan = plan_fire(rule, due, due + timedelta(seconds=5), "latest", 100)
    assert plan.fire == (due,) and plan.next_at is None
