"""``ScheduleRow``: one schedule's line on the Schedules page, read through ``Queue.schedules()``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from streamqueue.dashboard import format as fmt
from streamqueue.dashboard.pages import Sources
from streamqueue.schedule import ScheduleInfo


@dataclass(frozen=True)
class ScheduleRow:
    """A schedule of ``queue`` as the page shows it, timed against the server instant ``now``."""

    queue: str
    info: ScheduleInfo
    now: datetime

    @property
    def rule(self) -> str:
        if self.info.cron is not None:
            return f"cron {self.info.cron}"
        return f"every {fmt.duration(self.info.every)}"

    @property
    def next_in(self) -> str:
        """How long until the next tick by the server's clock; "due" once it has come."""
        if self.info.next_at is None:
            return "ended"
        left = fmt.seconds_between(self.info.next_at, self.now)
        return "due" if left is None or left <= 0 else fmt.duration(left)

    @property
    def lateness(self) -> str:
        """How long after its tick the last fire committed."""
        return fmt.duration(fmt.seconds_between(self.info.last_fired_at, self.info.last_tick))

    @property
    def last_job(self) -> str:
        return "" if self.info.last_job_id is None else str(self.info.last_job_id)

    def as_json(self) -> dict[str, Any]:
        """The fields that change as it fires, as the page shows them (text only)."""
        info = self.info
        return {"queue": self.queue, "name": info.name, "next_at": fmt.when(info.next_at),
                "next_in": self.next_in, "last_tick": fmt.when(info.last_tick),
                "lateness": self.lateness, "last_job": self.last_job, "fired": info.fired,
                "missed": info.missed}


def schedule_rows(sources: Sources, names: list[str]) -> list[ScheduleRow]:
    """Every schedule of the listed queues, by queue then name."""
    now = sources.reads.server_now()
    return [ScheduleRow(name, info, now) for name in names
            for info in sources.registry.queue(name).schedules()]
