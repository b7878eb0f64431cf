"""Pure formatting for the pages: durations, dates, BSON values as readable JSON text.

Every value here becomes text that the templates escape; nothing returns HTML.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from bson import json_util

_RELAXED = json_util.JSONOptions(json_mode=json_util.JSONMode.RELAXED, tz_aware=True,
                                 tzinfo=timezone.utc)


def pretty_json(value: Any) -> str:
    """A payload or result as indented JSON (dates and ids in MongoDB's relaxed extended JSON)."""
    return json.dumps(json.loads(json_util.dumps(value, json_options=_RELAXED)), indent=2,
                      sort_keys=False, ensure_ascii=False)


def short_json(value: Any, limit: int = 80) -> str:
    text = json_util.dumps(value, json_options=_RELAXED)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def duration(seconds: float | None) -> str:
    """``1h 02m``, ``3m 04s``, ``5.2s``; an em dash for None."""
    if seconds is None:
        return "—"
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{sign}{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{sign}{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{sign}{hours}h {minutes:02d}m"
    return f"{sign}{hours // 24}d {hours % 24:02d}h"


def when(moment: datetime | None) -> str:
    """A stored date (naive UTC, the server's clock) as ISO 8601 UTC to the millisecond."""
    if moment is None:
        return "—"
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.isoformat(timespec="milliseconds") + "Z"


def seconds_between(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return (_naive(later) - _naive(earlier)).total_seconds()


def _naive(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment
