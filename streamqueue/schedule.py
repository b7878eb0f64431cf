"""A schedule as the caller describes it (``ScheduleSpec``, checked) and as it is stored (``ScheduleInfo``).

Pure: validation and conversion only. The tick arithmetic is ``streamqueue.ticks``;
the queries are ``streamqueue.storage.schedules``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bson import ObjectId

from streamqueue.ticks import MISFIRE_POLICIES, TickRule, check_cron
from streamqueue.validation import check_payload, check_priority, check_text

MAX_NAME_CHARS = 200
# misfire="all" fires at most this many missed ticks after a gap (the most recent ones).
DEFAULT_CATCH_UP = 100
MAX_CATCH_UP = 1000


@dataclass(frozen=True)
class ScheduleSpec:
    """Everything ``Queue.schedule`` was asked for, checked; ``revision`` names it."""

    name: str
    rule: TickRule
    misfire: str = "latest"
    catch_up: int = DEFAULT_CATCH_UP
    payload: Mapping[str, Any] = field(default_factory=dict)
    priority: int = 0
    max_attempts: int = 3

    @property
    def revision(self) -> str:
        """A digest of the definition: equal for an identical ``schedule()`` call, so a
        repeated call changes nothing, and different otherwise."""
        text = json.dumps(self.stored_fields(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def stored_fields(self) -> dict[str, Any]:
        rule = self.rule
        return {"cron": rule.cron, "every_ms": rule.every_ms, "timezone": rule.timezone,
                "start_at": rule.start_at, "end_at": rule.end_at, "misfire": self.misfire,
                "catch_up": self.catch_up, "payload": dict(self.payload),
                "priority": self.priority, "max_attempts": self.max_attempts}


def check_schedule(name: object, *, cron: object = None, every: object = None,
                   payload: object = None, priority: object = None, timezone: object = "UTC",
                   misfire: object = "latest", start_at: object = None, end_at: object = None,
                   catch_up: object = DEFAULT_CATCH_UP, max_attempts: int = 3) -> ScheduleSpec:
    """The checked spec; TypeError or ValueError with one line naming the bad input."""
    if (cron is None) == (every is None):
        raise ValueError("give exactly one of cron= and every=")
    zone = check_timezone(timezone)
    rule = TickRule(
        cron=None if cron is None else _check_cron(cron),
        every_ms=None if every is None else check_every(every),
        timezone=zone, start_at=_check_moment("start_at", start_at),
        end_at=_check_moment("end_at", end_at))
    if rule.start_at is not None and rule.end_at is not None and rule.end_at <= rule.start_at:
        raise ValueError(f"end_at ({rule.end_at.isoformat()}) must be after start_at "
                         f"({rule.start_at.isoformat()})")
    if misfire not in MISFIRE_POLICIES:
        raise ValueError(f"misfire must be one of {', '.join(MISFIRE_POLICIES)}, not {misfire!r}")
    return ScheduleSpec(name=check_name(name), rule=rule, misfire=str(misfire),
                        catch_up=_check_catch_up(catch_up),
                        payload=check_payload({} if payload is None else payload),
                        priority=0 if priority is None else check_priority(priority),
                        max_attempts=max_attempts)


def check_name(name: object) -> str:
    return check_text("a schedule name", name, MAX_NAME_CHARS)


def check_timezone(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"timezone must be an IANA name (str), not {type(name).__name__}")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name, e.g. Europe/Berlin)") from None
    return name


def check_every(every: object) -> int:
    """Whole milliseconds, at least one second."""
    if isinstance(every, timedelta):
        seconds = every.total_seconds()
    elif isinstance(every, int | float) and not isinstance(every, bool):
        seconds = float(every)
    else:
        raise TypeError(f"every must be seconds or a timedelta, not {type(every).__name__}")
    if not seconds >= 1 or seconds > 366 * 86400:  # also refuses NaN
        raise ValueError(f"every must be from 1 second to a year, not {every!r}")
    return round(seconds * 1000)


def _check_cron(cron: object) -> str:
    if not isinstance(cron, str):
        raise TypeError(f"cron must be a str, not {type(cron).__name__}")
    return check_cron(cron)


def _check_moment(name: str, value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (a naive datetime is ambiguous)")
    moment = value.astimezone(timezone.utc)
    # Stored in BSON: whole milliseconds.
    return moment.replace(microsecond=moment.microsecond - moment.microsecond % 1000)


def _check_catch_up(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"catch_up must be an int, not {type(value).__name__}")
    if not 1 <= value <= MAX_CATCH_UP:
        raise ValueError(f"catch_up must be from 1 to {MAX_CATCH_UP}, not {value}")
    return value


@dataclass(frozen=True)
class ScheduleInfo:
    """A stored schedule; every date is the server's clock (aware UTC)."""

    name: str
    cron: str | None
    every: float | None  # seconds
    timezone: str
    misfire: str
    catch_up: int
    payload: dict[str, Any]
    priority: int
    start_at: datetime | None
    end_at: datetime | None
    next_at: datetime | None  # None: ended (past end_at)
    last_tick: datetime | None  # the tick the last fire was for
    last_fired_at: datetime | None  # when it was fired
    last_job_id: ObjectId | None
    last_fired_by: str | None  # the consumer id of the scheduler that fired it
    fired: int  # jobs fired so far
    missed: int  # ticks given up by the misfire policy so far
    revision: str

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> ScheduleInfo:
        every_ms = doc.get("every_ms")
        return cls(
            name=doc["_id"], cron=doc.get("cron"),
            every=None if every_ms is None else every_ms / 1000.0,
            timezone=doc.get("timezone", "UTC"), misfire=doc.get("misfire", "latest"),
            catch_up=int(doc.get("catch_up", DEFAULT_CATCH_UP)),
            payload=dict(doc.get("payload") or {}), priority=int(doc.get("priority", 0)),
            start_at=utc(doc.get("start_at")), end_at=utc(doc.get("end_at")),
            next_at=utc(doc.get("next_at")), last_tick=utc(doc.get("last_tick")),
            last_fired_at=utc(doc.get("last_fired_at")), last_job_id=doc.get("last_job_id"),
            last_fired_by=doc.get("last_fired_by"),
            fired=int(doc.get("fired", 0)), missed=int(doc.get("missed", 0)),
            revision=str(doc.get("revision", "")),
        )

    @property
    def rule(self) -> TickRule:
        every_ms = None if self.every is None else round(self.every * 1000)
        return TickRule(cron=self.cron, every_ms=every_ms, timezone=self.timezone,
                        start_at=self.start_at, end_at=self.end_at)


def utc(value: object) -> datetime | None:
    """A stored date as aware UTC (pymongo decodes naive UTC unless the client is tz_aware)."""
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
