"""Pure tick arithmetic for schedules: when the next tick is, and what to fire after a gap.

No I/O and no clock of its own: every function takes the moments it judges
(the server's clock, as the caller estimates it). Cron expressions are
evaluated by ``cronsim`` in the schedule's IANA time zone (``zoneinfo``),
with Debian cron's handling of DST changes; ``every`` schedules count whole
milliseconds from ``start_at``, or from the Unix epoch when there is none, so
``every=60`` ticks on whole minutes (UTC) and ignores time zones altogether.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ONE_MS = timedelta(milliseconds=1)
MISFIRE_POLICIES = ("latest", "skip", "all")
# A tick found this late or less still counts as on time for misfire="skip" (APScheduler's
# misfire_grace_time default is 1 s; a failover takes longer, and then "skip" skips).
SKIP_GRACE = timedelta(seconds=1)
# Counting the ticks missed in a long gap stops here (a metric, not a decision).
MISSED_COUNT_LIMIT = 100_000
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


@dataclass(frozen=True)
class TickRule:
    """What decides a schedule's ticks: exactly one of ``cron`` and ``every_ms``."""

    cron: str | None = None
    every_ms: int | None = None
    timezone: str = "UTC"
    start_at: datetime | None = None  # aware UTC; no tick before it
    end_at: datetime | None = None  # aware UTC; no tick after it

    def next_after(self, moment: datetime) -> datetime | None:
        """The first tick strictly after ``moment`` (aware), or None when the rule has ended."""
        if self.start_at is not None and moment < self.start_at:
            moment = self.start_at - ONE_MS
        tick = self._every_after(moment) if self.every_ms is not None else self._cron_after(moment)
        if tick is None or (self.end_at is not None and tick > self.end_at):
            return None
        return tick

    def _every_after(self, moment: datetime) -> datetime:
        assert self.every_ms is not None
        anchor = self.start_at or EPOCH
        if moment < anchor:
            return anchor
        elapsed = _millis(moment - anchor)
        return anchor + timedelta(milliseconds=(elapsed // self.every_ms + 1) * self.every_ms)

    def _cron_after(self, moment: datetime) -> datetime | None:
        assert self.cron is not None
        zone = ZoneInfo(self.timezone)
        ticks = CronSim(expand_alias(self.cron), moment.astimezone(zone))
        # cronsim answers in naive-local arithmetic around DST changes; a tick
        # not after ``moment`` would fire twice, so it is never returned.
        for _ in range(4):
            try:
                tick = next(ticks).astimezone(timezone.utc)
            except StopIteration:  # no match within cronsim's 50 years
                return None
            if tick > moment:
                return tick
        return None


@dataclass(frozen=True)
class FirePlan:
    """What one firing does: the ticks to fire now, the ticks given up, the next tick."""

    fire: tuple[datetime, ...]
    missed: int
    next_at: datetime | None


def plan_fire(rule: TickRule, due: datetime, now: datetime, misfire: str,
              catch_up: int) -> FirePlan:
    """The ticks from ``due`` (the stored next tick, at or before ``now``) to ``now``, by policy.

    ``latest`` fires the most recent; ``skip`` fires it only if it is at most
    ``SKIP_GRACE`` old; ``all`` fires the most recent ``catch_up`` of them, oldest
    first. The others are missed. ``next_at`` is the first tick after ``now``.
    """
    recent, count = _ticks_until(rule, due, now, max(1, catch_up if misfire == "all" else 1))
    if misfire == "all":
        fire = tuple(recent)
    elif misfire == "skip" and now - recent[-1] > SKIP_GRACE:
        fire = ()
    else:
        fire = (recent[-1],)
    return FirePlan(fire=fire, missed=count - len(fire), next_at=rule.next_after(now))


def _ticks_until(rule: TickRule, due: datetime, now: datetime,
                 keep: int) -> tuple[list[datetime], int]:
    """The last ``keep`` ticks in [due, now] (``due`` is one) and how many there are."""
    if rule.end_at is not None:
        now = min(now, rule.end_at)
    if rule.every_ms is not None:
        count = _millis(now - due) // rule.every_ms + 1
        last = due + timedelta(milliseconds=(count - 1) * rule.every_ms)
        kept = min(keep, count)
        return [last - timedelta(milliseconds=i * rule.every_ms)
                for i in reversed(range(kept))], count
    recent = [due]
    count = 1
    tick = rule.next_after(due)
    while tick is not None and tick <= now and count < MISSED_COUNT_LIMIT:
        recent = [*recent[-(keep - 1):], tick] if keep > 1 else [tick]
        count += 1
        tick = rule.next_after(tick)
    return recent, count


def expand_alias(expression: str) -> str:
    text = expression.strip()
    return ALIASES.get(text.lower(), text)


def check_cron(expression: str) -> str:
    """A 5-field cron expression or an ``@hourly``-style alias; ValueError names what is wrong."""
    fields = expand_alias(expression).split()
    if len(fields) != 5:
        raise ValueError(f"cron must have 5 fields (minute hour day month weekday) or be one of "
                         f"{', '.join(ALIASES)}, not {expression!r}")
    try:
        CronSim(" ".join(fields), EPOCH)
    except CronSimError as exc:
        raise ValueError(f"bad cron expression {expression!r}: {exc}") from None
    return expression.strip()


def _millis(delta: timedelta) -> int:
    return math.floor(delta / ONE_MS)
