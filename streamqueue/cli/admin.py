"""The one-shot commands: ``put``, ``stats``, ``show``, ``jobs``, ``cancel``, ``pause``,
``resume`` and ``failed list|retry|purge``.

Each connects, does one thing to a queue, prints the result and exits; a
dead server fails within ``--server-timeout`` rather than after a minute of
retries. The tables and JSON they print are made here too, since only these
commands print them. ``streamqueue.queue`` is imported inside each command so
``--help`` does not pay for it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from bson import json_util
from pymongo.errors import PyMongoError

from streamqueue.cli.options import PROG, CliError, UsageError
from streamqueue.cli.runtime import (
    Session,
    _note,
    _output,
    database_name,
    one_shot_retry,
    open_session,
)
from streamqueue.exitcodes import ExitCode
from streamqueue.jobinfo import JobInfo
from streamqueue.storage import Document

if TYPE_CHECKING:
    from streamqueue.queue import Queue


@contextlib.contextmanager
def _open_queue(args: argparse.Namespace, appname: str,
                **options: Any) -> Iterator[tuple[Session, Queue]]:
    """The command's session and a Queue on its (first) queue, closed on the way out."""
    from streamqueue.queue import Queue

    session = open_session(args, appname)
    try:
        queue = Queue(session.collection(), retry=one_shot_retry(args), **options)
        try:
            yield session, queue
        finally:
            queue.close()
    finally:
        session.close()


def cmd_put(args: argparse.Namespace) -> int:
    from streamqueue.queue import Queue

    payload = _read_payload(args.payload)
    session = open_session(args, "streamqueue-put")
    try:
        queue = Queue(session.collection(), max_attempts=args.max_attempts,
                      retry=one_shot_retry(args))
        try:
            job_id = queue.put(payload, priority=args.priority, delay=args.delay,
                               tags=args.tags or (), key=args.key)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"payload rejected: {exc}") from None
    finally:
        session.close()
    _output(job_id)
    return ExitCode.OK


def _read_payload(text: str) -> dict[str, Any]:
    source = "stdin" if text == "-" else "payload"
    if text == "-":
        text = sys.stdin.read()
    try:
        payload = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (json.JSONDecodeError, _NonFinite) as exc:
        raise UsageError(f"{source} is not valid JSON: {exc}") from None
    except RecursionError:
        raise UsageError(f"{source} is nested too deeply") from None
    if not isinstance(payload, dict):
        raise UsageError(f"the payload must be a JSON object ({{...}}), not a "
                         f"{type(payload).__name__}")
    return payload


class _NonFinite(ValueError):
    """A number JSON itself has no spelling for (NaN, Infinity) or that overflows a float."""


def _refuse_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity, which JSON does not: a handler
    # would get nan/inf (the Python API refuses them for times for the same reason).
    raise _NonFinite(f"{name} is not a JSON number; only finite numbers are allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(f"{text} is out of range for a float; only finite numbers are allowed")
    return value


def cmd_stats(args: argparse.Namespace) -> int:
    from streamqueue.queue import Queue

    session = open_session(args, "streamqueue-stats")
    rows: dict[str, dict[str, Any]] = {}
    try:
        existing = _existing_collections(session)
        for name in session.queues:
            queue = Queue(session.collection(name), retry=one_shot_retry(args))
            stats: dict[str, Any] = dict(queue.stats())
            stats["oldest_available_age_seconds"] = round(queue.oldest_available_age(), 3)
            stats["exists"] = name in existing or f"{name}.failed" in existing
            stats["paused"] = stats["exists"] and queue.is_paused()
            rows[name] = stats
    finally:
        session.close()
    for name, stats in rows.items():
        if not stats["exists"]:
            _note(f"{PROG}: note: {session.db}.{name} does not exist (yet)")
    if args.json:
        _output(json.dumps(rows, indent=2, sort_keys=True))
    else:
        _output(_stats_table(rows))
    return ExitCode.OK


def _existing_collections(session: Session) -> set[str]:
    wanted = [n for name in session.queues for n in (name, f"{name}.failed")]

    def names() -> list[str]:
        return session.client[session.db].list_collection_names(filter={"name": {"$in": wanted}})

    try:
        return set(names())
    except PyMongoError:
        return set(wanted)  # no listCollections privilege: assume they exist


def _stats_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    # DEAD, not FAILED: these are jobs in the error queue, not failed attempts.
    header = ["QUEUE", "AVAILABLE", "LOCKED", "EXPIRED", "DELAYED", "DEAD", "TOTAL",
              "OLDEST AVAILABLE", "PAUSED"]
    body = [
        [name, str(s["available"]), str(s["locked"]), str(s["expired"]), str(s["delayed"]),
         str(s["dead"]), str(s["total"]),
         _duration(s["oldest_available_age_seconds"]) if s["available"] else "-",
         "yes" if s.get("paused") else "no"]
        for name, s in rows.items()
    ]
    return _table(header, body, right_aligned=range(1, 8))


def _duration(value: float) -> str:
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{value / 60:.1f}m"
    if value < 86400:
        return f"{value / 3600:.1f}h"
    return f"{value / 86400:.1f}d"


def _table(header: list[str], body: list[list[str]], right_aligned: Sequence[int] = ()) -> str:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [cell.rjust(widths[i]) if i in right_aligned else cell.ljust(widths[i])
                 for i, cell in enumerate(row)]
        return "  ".join(cells).rstrip()

    return "\n".join(line(row) for row in [header, *body])


def cmd_show(args: argparse.Namespace) -> int:
    with _open_queue(args, "streamqueue-show") as (session, queue):
        info = queue.get(args.job_id)
    if info is None:
        raise CliError(f"no job {args.job_id} in {session.db}.{session.queues[0]} or its error "
                       "queue", ExitCode.NOT_FOUND)
    shown = _info_json(info)
    if args.json:
        _output(json.dumps(shown, indent=2))
    else:
        width = max(len(name) for name in shown)
        _output("\n".join(f"{name.ljust(width)}  {_cell(value)}" for name, value in shown.items()))
    return ExitCode.OK


def cmd_result(args: argparse.Namespace) -> int:
    """Wait for a job to finish and print its result as JSON (``Queue.result``)."""
    from streamqueue.errors import JobCancelled, JobFailed, JobNotFound

    where = f"{database_name(args)}.{args.queue[0]}"
    try:
        with _open_queue(args, "streamqueue-result") as (_, queue):
            value = queue.result(args.job_id, timeout=args.timeout)
    except JobNotFound:
        raise CliError(f"no job {args.job_id} in {where} or its error queue (a job completed "
                       "by a queue without keep_completed leaves no result)",
                       ExitCode.NOT_FOUND) from None
    except JobFailed as exc:
        raise CliError(f"job {args.job_id} failed: {_error_summary(exc.last_error)}",
                       ExitCode.ERROR) from None
    except JobCancelled:
        raise CliError(f"job {args.job_id} was cancelled", ExitCode.ERROR) from None
    except TimeoutError:
        raise CliError(f"job {args.job_id} did not finish within {args.timeout:g}s",
                       ExitCode.NOT_FINISHED) from None
    _output(json_util.dumps(value, json_options=json_util.RELAXED_JSON_OPTIONS))
    return ExitCode.OK


def cmd_cancel(args: argparse.Namespace) -> int:
    from streamqueue.queue import Queue

    session = open_session(args, "streamqueue-cancel")
    try:
        # Keep a cancelled job as the application does (its TTL index says how long).
        keep = Queue(session.collection(), retry=one_shot_retry(args)).store.retention()
        queue = Queue(session.collection(), retry=one_shot_retry(args), keep_completed=keep)
        cancelled = queue.cancel(args.job_id)
        info = queue.get(args.job_id)
    finally:
        session.close()
    where = f"{session.db}.{session.queues[0]}"
    if not cancelled:
        if info is None:
            raise CliError(f"no job {args.job_id} in {where} or its error queue",
                           ExitCode.NOT_FOUND)
        raise CliError(f"job {args.job_id} in {where} already finished ({info.state}); "
                       "nothing changed", ExitCode.ERROR)
    # A held job is "locked" with a request; a ready one is cancelled (or gone: not kept).
    state = "cancelled" if info is None else info.state
    outcome = "cancel requested" if state == "locked" else "cancelled"
    if args.json:
        _output(json.dumps({"id": str(args.job_id), "queue": session.queues[0],
                            "state": state, "outcome": outcome}, indent=2))
    else:
        _output(f"{args.job_id} {outcome}")
    return ExitCode.OK


def cmd_pause(args: argparse.Namespace) -> int:
    return _switch(args, paused=True)


def cmd_resume(args: argparse.Namespace) -> int:
    return _switch(args, paused=False)


def _switch(args: argparse.Namespace, *, paused: bool) -> int:
    from streamqueue.queue import Queue

    verb = "pause" if paused else "resume"
    session = open_session(args, f"streamqueue-{verb}")
    try:
        name = session.queues[0]
        # A mistyped name must not leave a paused queue nobody uses.
        if not _existing_collections(session) & {name, f"{name}.failed"}:
            raise CliError(f"no queue {session.db}.{name}", ExitCode.NOT_FOUND)
        queue = Queue(session.collection(), retry=one_shot_retry(args))
        if paused:
            queue.pause()
        else:
            queue.resume()
    finally:
        session.close()
    if args.json:
        _output(json.dumps({"queue": name, "paused": paused}, indent=2))
    else:
        _output(f"{session.db}.{name} {'paused' if paused else 'resumed'}")
    return ExitCode.OK


def cmd_jobs(args: argparse.Namespace) -> int:
    with _open_queue(args, "streamqueue-jobs") as (session, queue):
        try:
            found = queue.jobs(args.state, tag=args.tag, key=args.key, limit=args.limit,
                               after=args.after)
        except (TypeError, ValueError) as exc:
            raise UsageError(str(exc)) from None
    if args.json:
        _output(json.dumps([_info_json(info) for info in found], indent=2))
        return ExitCode.OK
    if not found:
        _note(f"{PROG}: no such jobs in {session.db}.{session.queues[0]}")
        return ExitCode.OK
    header = ["JOB ID", "STATE", "ATTEMPTS", "ENQUEUED AT (UTC)", "TAGS", "LAST ERROR"]
    body = [[str(info.id), info.state, f"{info.attempts}/{info.max_attempts}",
             _when(info.enqueued_at), ",".join(info.tags) or "-",
             _error_summary(info.last_error, width=50)] for info in found]
    _output(_table(header, body))
    return ExitCode.OK


def _info_json(info: JobInfo) -> dict[str, Any]:
    """A JobInfo as plain JSON: dates in ISO 8601 UTC (null when unset), BSON values in
    relaxed extended JSON."""
    def plain(value: object) -> Any:
        return json.loads(json_util.dumps(value, json_options=json_util.RELAXED_JSON_OPTIONS))

    shown: dict[str, Any] = {}
    for name, value in vars(info).items():
        if isinstance(value, datetime) or name.endswith("_at") or name == "locked_until":
            shown[name] = _when(value) if value is not None else None
        elif name == "id":
            shown[name] = str(value)
        elif name == "tags":
            shown[name] = list(value)
        else:
            shown[name] = plain(value)
    return shown


def _cell(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def cmd_failed_list(args: argparse.Namespace) -> int:
    with _open_queue(args, "streamqueue-failed") as (session, queue):
        docs = queue.store.list_failed(limit=args.limit)
    if args.json:
        _output(json.dumps([_failed_json(doc) for doc in docs], indent=2))
        return ExitCode.OK
    if not docs:
        _note(f"{PROG}: the error queue of {session.db}.{session.queues[0]} is empty")
        return ExitCode.OK
    header = ["JOB ID", "FAILED AT (UTC)", "ATTEMPTS", "LAST ERROR"]
    body = [[str(doc["_id"]), _when(doc.get("failed_at")),
             f"{doc.get('attempts', '?')}/{doc.get('max_attempts', '?')}",
             _error_summary(doc.get("last_error"))] for doc in docs]
    _output(_table(header, body))
    return ExitCode.OK


def _failed_json(doc: Document) -> dict[str, Any]:
    def plain(value: object) -> Any:
        return json.loads(json_util.dumps(value, json_options=json_util.RELAXED_JSON_OPTIONS))

    return {
        "id": str(doc["_id"]),
        "failed_at": _when(doc.get("failed_at")),
        "enqueued_at": _when(doc.get("enqueued_at")),
        "attempts": doc.get("attempts"),
        "max_attempts": doc.get("max_attempts"),
        "priority": doc.get("priority"),
        "last_error": doc.get("last_error"),
        "payload": plain(doc.get("payload")),
    }


def _when(value: object) -> str:
    if not isinstance(value, datetime):
        return "-"
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _error_summary(text: object, width: int = 80) -> str:
    if not isinstance(text, str) or not text.strip():
        return "-"
    # A traceback's last line names the exception; that is what a list needs.
    last = text.strip().splitlines()[-1].strip()
    return last if len(last) <= width else last[: width - 3] + "..."


def cmd_failed_retry(args: argparse.Namespace) -> int:
    with _open_queue(args, "streamqueue-failed") as (session, queue):
        moved = queue.retry_failed(args.job_id)
    where = f"{session.db}.{session.queues[0]}"
    if args.job_id is not None and moved == 0:
        raise CliError(f"no job {args.job_id} in the error queue of {where}", ExitCode.NOT_FOUND)
    _output(f"moved {moved} job{'s' if moved != 1 else ''} back to {where}")
    return ExitCode.OK


def cmd_failed_purge(args: argparse.Namespace) -> int:
    with _open_queue(args, "streamqueue-failed") as (session, queue):
        purged = queue.purge_failed(args.job_id)
    where = f"{session.db}.{session.queues[0]}"
    if args.job_id is not None and purged == 0:
        raise CliError(f"no job {args.job_id} in the error queue of {where}", ExitCode.NOT_FOUND)
    _output(f"deleted {purged} job{'s' if purged != 1 else ''} from the error queue of {where}")
    return ExitCode.OK
