"""``streamqueue schedule add|list|remove``: the schedules of a queue, from the command line.

The firing is done by the reapers (``streamqueue reaper``, unless ``--no-schedules``)
and by workers started with ``--schedules``.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from streamqueue.cli.admin import _open_queue, _read_payload, _table, _when
from streamqueue.cli.options import CliError, UsageError
from streamqueue.cli.runtime import _note, _output
from streamqueue.errors import ConfigurationError
from streamqueue.exitcodes import ExitCode

if TYPE_CHECKING:
    from streamqueue.schedule import ScheduleInfo


def moment(text: str) -> datetime:
    """An ISO 8601 date with its UTC offset (``2026-01-01T09:00:00+01:00``, ``...Z``)."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date: {text!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give the UTC offset (e.g. {text}Z): {text!r}")
    return value


def cmd_schedule_add(args: argparse.Namespace) -> int:
    payload = _read_payload(args.payload) if args.payload is not None else None
    with _open_queue(args, "streamqueue-schedule") as (session, queue):
        try:
            queue.schedule(args.name, cron=args.cron, every=args.every, payload=payload,
                           priority=args.priority, timezone=args.timezone,
                           misfire=args.misfire, start_at=args.start_at, end_at=args.end_at,
                           catch_up=args.catch_up)
        except ConfigurationError:
            raise
        except (TypeError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        info = next(found for found in queue.schedules() if found.name == args.name)
    if args.json:
        _output(json.dumps(schedule_json(info), indent=2))
    else:
        _output(f"{session.db}.{session.queues[0]} schedule {info.name}: next tick "
                f"{_when(info.next_at) if info.next_at else 'none (ended)'}")
    return ExitCode.OK


def cmd_schedule_list(args: argparse.Namespace) -> int:
    with _open_queue(args, "streamqueue-schedule") as (session, queue):
        found = queue.schedules()
    if args.json:
        _output(json.dumps([schedule_json(info) for info in found], indent=2))
        return ExitCode.OK
    if not found:
        _note(f"no schedules in {session.db}.{session.queues[0]}")
        return ExitCode.OK
    header = ["NAME", "WHEN", "TIMEZONE", "MISFIRE", "NEXT (UTC)", "LAST FIRED (UTC)", "FIRED",
              "MISSED"]
    body = [[info.name, info.cron or f"every {info.every:g}s", info.timezone, info.misfire,
             _when(info.next_at) if info.next_at else "ended",
             _when(info.last_fired_at) if info.last_fired_at else "-",
             str(info.fired), str(info.missed)] for info in found]
    _output(_table(header, body, right_aligned=(6, 7)))
    return ExitCode.OK


def cmd_schedule_remove(args: argparse.Namespace) -> int:
    with _open_queue(args, "streamqueue-schedule") as (session, queue):
        removed = queue.unschedule(args.name)
    where = f"{session.db}.{session.queues[0]}"
    if not removed:
        raise CliError(f"no schedule {args.name!r} in {where}", ExitCode.NOT_FOUND)
    if args.json:
        _output(json.dumps({"queue": session.queues[0], "name": args.name, "removed": True}))
    else:
        _output(f"{where} schedule {args.name} removed")
    return ExitCode.OK


def schedule_json(info: ScheduleInfo) -> dict[str, Any]:
    """Plain JSON: dates ISO 8601 UTC (null when unset), the job id as hex."""
    shown: dict[str, Any] = {}
    for name, value in vars(info).items():
        if isinstance(value, datetime) or name.endswith("_at") or name == "last_tick":
            shown[name] = _when(value) if value is not None else None
        elif name == "last_job_id":
            shown[name] = None if value is None else str(value)
        else:
            shown[name] = value
    return shown
