"""The command line's grammar: which commands exist and which options each takes.

``build_parser`` declares every subcommand with its options, help text and
examples, and binds each to the function that runs it; ``parse_args`` turns
``argv`` plus the environment into a checked ``argparse.Namespace``, refusing
option combinations no command accepts. Parsing never connects to anything,
so a usage error costs nothing and ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from streamqueue import __version__
from streamqueue.cli.admin import (
    cmd_cancel,
    cmd_failed_list,
    cmd_failed_purge,
    cmd_failed_retry,
    cmd_jobs,
    cmd_pause,
    cmd_put,
    cmd_result,
    cmd_resume,
    cmd_show,
    cmd_stats,
)
from streamqueue.cli.dashboard import add_dashboard_command
from streamqueue.cli.options import (
    LOG_LEVELS,
    PROG,
    ArgumentParser,
    Options,
    UsageError,
    any_int,
    apply_environment,
    log_level,
    object_id,
    port_number,
    positive_int,
    positive_seconds,
    queue_names,
    seconds,
)
from streamqueue.cli.schedules import (
    cmd_schedule_add,
    cmd_schedule_list,
    cmd_schedule_remove,
    moment,
)
from streamqueue.cli.services import cmd_devserver, cmd_reaper, cmd_worker
from streamqueue.jobinfo import JOB_STATES
from streamqueue.validation import check_heartbeat

DEFAULT_SERVER_TIMEOUT = 5.0

TOP_EPILOG = """\
examples:
  python -m streamqueue devserver                     # a local replica set; prints its URI
  export STREAMQUEUE_URI='mongodb://127.0.0.1:27017/?replicaSet=rs0'
  streamqueue put --db app --queue emails '{"to": "a@example.com"}'
  streamqueue worker myapp.tasks:send_email --db app --queue emails --concurrency 8
  streamqueue reaper --db app --queue emails --metrics-port 9101
  streamqueue stats --db app --queue emails
  streamqueue jobs --db app --queue emails --state failed
  streamqueue show --db app --queue emails 65f1c0ffee0123456789abcd
  streamqueue failed list --db app --queue emails
  streamqueue dashboard --db app                        # http://127.0.0.1:8080/

Every option also reads an environment variable, shown in each command's --help;
the command line wins. Exit status: 0 ok, 1 error, 2 usage, 3 configuration,
4 MongoDB unreachable, 5 permission denied, 6 job not found, 130 interrupted.
"""

WORKER_EPILOG = """\
examples:
  streamqueue worker myapp.tasks:resize --uri "$URI" --db app --queue images
  STREAMQUEUE_URI=... STREAMQUEUE_DB=app STREAMQUEUE_QUEUE=images \\
      python -m streamqueue.worker myapp.tasks:resize --concurrency 8 --metrics-port 9100
  streamqueue worker myapp.tasks:resize --db app --queue images --burst   # drain, then exit
  streamqueue worker myapp.tasks:tasks --queues high,low      # a task registry (docs/TASKS.md)

A streamqueue.Tasks registry instead of a handler serves every queue of the
registry (or --queues, in that priority order; --fair shares them) in one
process: one claim loop, one change stream; each job runs the task it names.

The handler is called with the job's payload (and the Job, if it takes a second
argument or one named "job"); returning completes the job, raising retries it
with exponential backoff until the job's own max_attempts (set when it was
enqueued, e.g. put --max-attempts), then moves it to the error queue.
SIGTERM/SIGINT: stop claiming, release jobs not yet started, let running jobs
finish within --shutdown-grace and leave any still running to their leases
(the reaper hands them on, counting the attempt), exit 0; a second signal
exits at once. Whatever MongoDB does, the process exits at most 5 s after the
grace: if it is unreachable, what could not be settled is left to its lease
and the exit status is 4.
"""

REAPER_EPILOG = """\
examples:
  streamqueue reaper --uri "$URI" --db app --queue images --queue emails --metrics-port 9101
  STREAMQUEUE_QUEUE=images,emails python -m streamqueue.reaper --db app --interval 10
  streamqueue reaper --db app --queue images --once      # one pass (cron, tests)
  streamqueue reaper --tasks myapp.tasks:tasks           # every queue of a task registry

Each pass requeues expired leases with attempts left, moves exhausted jobs to
the error queue (DB.NAME.failed) and publishes the queue gauges. Several
reapers at once are safe.
"""

DEVSERVER_EPILOG = """\
examples:
  python -m streamqueue.devserver                  # one node on a free port
  streamqueue devserver --nodes 3 --port 27017     # ports 27017..27019
  streamqueue devserver --port 27017 --dbpath ~/.streamqueue-data   # keeps data across runs

Prints the URI on stdout; every mongod stops on Ctrl-C or SIGTERM.
"""

PUT_EPILOG = """\
examples:
  streamqueue put --db app --queue emails '{"to": "a@example.com"}'
  streamqueue put --db app --queue emails --priority 10 --delay 60 '{"to": "b@example.com"}'
  echo '{"n": 1}' | streamqueue put --db app --queue emails -

Prints the new job's id.
"""

STATS_EPILOG = """\
examples:
  streamqueue stats --db app --queue emails --queue images
  streamqueue stats --db app --queue emails --json | jq .emails.available
"""

SHOW_EPILOG = """\
examples:
  streamqueue show --db app --queue emails 65f1c0ffee0123456789abcd
  streamqueue show --db app --queue emails 65f1c0ffee0123456789abcd --json | jq .state

Looks in the queue and its error queue; exit status 6 when the job is in neither.
"""

JOBS_EPILOG = """\
examples:
  streamqueue jobs --db app --queue emails                      # newest first
  streamqueue jobs --db app --queue emails --state failed --limit 20
  streamqueue jobs --db app --queue emails --tag welcome --json
  streamqueue jobs --db app --queue emails --after 65f1c0ffee0123456789abcd   # next page

States: ready, delayed, locked, completed, cancelled, failed (the error queue).
"""

RESULT_EPILOG = """\
examples:
  streamqueue result --db app --queue thumbs 65f1c0ffee0123456789abcd              # wait for it
  streamqueue result --db app --queue thumbs 65f1c0ffee0123456789abcd --timeout 0  # ask once

Waits on a change stream until the job finishes, then prints its result as JSON
(the queue must keep finished jobs: Queue(..., keep_completed=...)). Exit status 1
when it failed or was cancelled, 6 when there is no such job, 7 when --timeout ran out.
"""

CANCEL_EPILOG = """\
examples:
  streamqueue cancel --db app --queue emails 65f1c0ffee0123456789abcd
  streamqueue cancel --db app --queue emails 65f1c0ffee0123456789abcd --json | jq .outcome

A ready or delayed job is cancelled at once; a running one gets a cancel request
(its handler sees job.cancel_requested). Exit status 6 when there is no such job,
1 when it already finished (nothing changed).
"""

PAUSE_EPILOG = """\
examples:
  streamqueue pause --db app --queue emails
  streamqueue resume --db app --queue emails
  streamqueue stats --db app --queue emails          # the PAUSED column

Stored in MongoDB: every consumer of the queue, in every process, stops claiming
within a second and stays stopped (across restarts) until resume; running jobs
finish and put still works. Exit status 6 when the queue does not exist.
"""

FAILED_EPILOG = """\
examples:
  streamqueue failed list --db app --queue emails
  streamqueue dashboard --db app                        # http://127.0.0.1:8080/
  streamqueue failed retry --db app --queue emails 65f1c0ffee0123456789abcd
  streamqueue failed retry --db app --queue emails            # every dead job
  streamqueue failed purge --db app --queue emails --all
"""

SCHEDULE_EPILOG = """\
examples:
  streamqueue schedule add --db app --queue reports nightly --cron '0 3 * * *' \\
      --timezone Europe/Berlin --payload '{"report": "sales"}'
  streamqueue schedule add --db app --queue pings heartbeat --every 30 --misfire skip
  streamqueue schedule list --db app --queue reports --json
  streamqueue schedule remove --db app --queue reports nightly

Each tick fires one job, exactly once, from whichever reaper (or worker run
with --schedules) gets there first. add with the same options again changes
nothing; with other options the schedule is changed. remove: exit status 6
when there is no such schedule. See docs/SCHEDULES.md.
"""


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="A job queue in a MongoDB collection: run workers and the reaper, "
                    "enqueue jobs, look at queues.",
        epilog=TOP_EPILOG,
        formatter_class=_formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    worker = _subparser(commands, "worker", "run a handler on a queue's jobs", WORKER_EPILOG)
    opts = Options(worker)
    opts.add("handler", env="HANDLER", positional=True, metavar="MODULE:FUNCTION",
             required=True, help="the job handler, e.g. myapp.tasks:send_email, or a task "
                                 "registry (streamqueue.Tasks), e.g. myapp.tasks:tasks")
    _connection_options(opts, several_queues=False, queue_required=False)
    opts.add("--queues", env="QUEUES", convert=queue_names, metavar="A,B",
             help="with a task registry: serve these queues, in strict priority order "
                  "(default: every queue of the registry, shared fairly)")
    opts.flag("--fair", env="FAIR",
              help="with --queues: share claims fairly between them instead of in order")
    opts.add("--concurrency", env="CONCURRENCY", convert=positive_int, default=4, metavar="N",
             help="handler threads")
    opts.add("--lease", env="LEASE", convert=positive_seconds, default=300.0, metavar="SECONDS",
             help="how long a claim holds a job before the reaper may hand it on")
    opts.add("--heartbeat", env="HEARTBEAT", convert=positive_seconds, metavar="SECONDS",
             help="extend leases of running jobs this often; at most lease/2; default lease/3")
    opts.add("--shutdown-grace", env="SHUTDOWN_GRACE", convert=seconds, default=30.0,
             metavar="SECONDS", help="on SIGTERM, how long running jobs may take to finish")
    opts.add("--batch", env="BATCH", convert=positive_int, metavar="N",
             help="claim up to N jobs per round trip; default: adaptive (one at a trickle, up "
                  "to 16 in a backlog, or to --concurrency for async def handlers, buffered only "
                  "for fast handlers). Above --concurrency, "
                  "the extra jobs wait in a local buffer (prefetch) with their leases kept alive")
    opts.add("--claims-in-flight", env="CLAIMS_IN_FLIGHT", convert=positive_int, default=1,
             metavar="N", help="with a fixed --batch above 1 (a handler function, one queue): in a "
                               "backlog, up to N batch claims overlap and the worker holds up "
                               "to N x batch jobs; for tiny, fast jobs")
    opts.add("--backoff", env="BACKOFF", convert=seconds, default=1.0, metavar="SECONDS",
             help="retry delay after the first failure; doubles each attempt, with jitter")
    opts.add("--backoff-cap", env="BACKOFF_CAP", convert=seconds, default=300.0,
             metavar="SECONDS", help="longest retry delay")
    opts.add("--consumer-id", env="CONSUMER_ID", metavar="ID",
             help="name of this consumer in claimed jobs; default host:pid:random")
    _metrics_options(opts)
    opts.flag("--schedules", env="SCHEDULES",
              help="also fire the queue's schedules (reapers do by default)")
    opts.flag("--burst", env="BURST",
              help="exit once nothing is due and every slot is idle; retries this worker "
                   "caused that fall due within 10 s are waited for and run first")
    opts.flag("--fleet", env="FLEET",
              help="join the queue's fleet with --concurrency slots: the worker processes "
                   "that do agree which one claims each job (about one claim per job, not "
                   "one per process); see docs/DESIGN.md, 'The fleet'")
    _log_option(opts, "INFO")
    worker.set_defaults(run=cmd_worker)

    reaper = _subparser(commands, "reaper", "hand expired leases on; publish queue gauges",
                        REAPER_EPILOG)
    opts = Options(reaper)
    _connection_options(opts, several_queues=True, queue_required=False)
    opts.add("--tasks", env="TASKS", metavar="MODULE:OBJECT",
             help="also reap every queue of this task registry (streamqueue.Tasks)")
    opts.add("--interval", env="INTERVAL", convert=positive_seconds, default=5.0,
             metavar="SECONDS", help="time between passes")
    _metrics_options(opts)
    opts.flag("--once", env="ONCE", help="run one pass and exit (0 if every queue was reaped)")
    opts.flag("--no-schedules", env="NO_SCHEDULES",
              help="do not fire the queues' schedules (by default every reaper does)")
    _log_option(opts, "INFO")
    reaper.set_defaults(run=cmd_reaper)

    devserver = _subparser(commands, "devserver",
                           "run a local MongoDB replica set in the foreground", DEVSERVER_EPILOG)
    opts = Options(devserver)
    opts.add("--nodes", env="DEVSERVER_NODES", convert=positive_int, default=1, metavar="N",
             help="replica set members")
    opts.add("--port", env="DEVSERVER_PORT", convert=port_number, metavar="PORT",
             help="port of the first member (the others follow); default: free ports")
    opts.add("--dbpath", env="DEVSERVER_DBPATH", convert=Path, metavar="DIR",
             help="keep data in DIR across runs (needs --port); default: a temporary "
                  "directory, deleted on exit")
    _log_option(opts, "INFO")
    devserver.set_defaults(run=cmd_devserver)

    put = _subparser(commands, "put", "enqueue one job", PUT_EPILOG)
    opts = Options(put)
    put.add_argument("payload", metavar="JSON",
                     help="the payload, a JSON object with finite numbers (no NaN, Infinity "
                          "or 1e400); '-' reads it from stdin")
    _connection_options(opts, several_queues=False)
    opts.add("--priority", env="PRIORITY", convert=any_int, metavar="N",
             help="higher is claimed first; default: the payload's \"priority\" key, else 0")
    opts.add("--delay", env="DELAY", convert=seconds, default=0.0, metavar="SECONDS",
             help="claimable only after this long")
    opts.add("--max-attempts", env="MAX_ATTEMPTS", convert=positive_int, default=3, metavar="N",
             help="deliveries before the job moves to the error queue")
    put.add_argument("--tag", action="append", dest="tags", metavar="TAG",
                     help="a tag to find the job by (repeat for several)")
    put.add_argument("--key", metavar="KEY",
                     help="a unique key: while a job with it is ready, delayed or locked, "
                          "write nothing and print that job's id")
    _log_option(opts, "WARNING")
    put.set_defaults(run=cmd_put)

    show = _subparser(commands, "show", "show one job, in the queue or its error queue",
                      SHOW_EPILOG)
    show.add_argument("job_id", type=object_id, metavar="JOB_ID", help="the job's id")
    opts = Options(show)
    _connection_options(opts, several_queues=False)
    opts.flag("--json", env="JSON", help="print JSON instead of a list of fields")
    _log_option(opts, "WARNING")
    show.set_defaults(run=cmd_show)

    jobs = _subparser(commands, "jobs", "list jobs newest first, by state or tag", JOBS_EPILOG)
    opts = Options(jobs)
    _connection_options(opts, several_queues=False)
    jobs.add_argument("--state", choices=JOB_STATES, help="only jobs in this state")
    jobs.add_argument("--tag", metavar="TAG", help="only jobs with this tag")
    jobs.add_argument("--key", metavar="KEY", help="only jobs with this unique key")
    jobs.add_argument("--after", type=object_id, metavar="JOB_ID",
                      help="the page after this id (the last one shown)")
    opts.add("--limit", env="LIMIT", convert=positive_int, default=100, metavar="N",
             help="show at most N jobs")
    opts.flag("--json", env="JSON", help="print JSON instead of a table")
    _log_option(opts, "WARNING")
    jobs.set_defaults(run=cmd_jobs)

    result = _subparser(commands, "result", "wait for a job to finish; print its result",
                        RESULT_EPILOG)
    result.add_argument("job_id", type=object_id, metavar="JOB_ID", help="the job's id")
    opts = Options(result)
    _connection_options(opts, several_queues=False)
    result.add_argument("--timeout", type=seconds, default=None, metavar="SECONDS",
                        help="give up after this long (exit 7); default: wait until it finishes")
    _log_option(opts, "WARNING")
    result.set_defaults(run=cmd_result)

    cancel = _subparser(commands, "cancel", "cancel a job, or ask its running handler to stop",
                        CANCEL_EPILOG)
    cancel.add_argument("job_id", type=object_id, metavar="JOB_ID", help="the job's id")
    opts = Options(cancel)
    _connection_options(opts, several_queues=False)
    opts.flag("--json", env="JSON", help="print JSON instead of a line")
    _log_option(opts, "WARNING")
    cancel.set_defaults(run=cmd_cancel)

    for verb, summary, run in (("pause", "stop every consumer of a queue from claiming", cmd_pause),
                               ("resume", "let the consumers of a paused queue claim again",
                                cmd_resume)):
        switch = _subparser(commands, verb, summary, PAUSE_EPILOG)
        opts = Options(switch)
        _connection_options(opts, several_queues=False)
        opts.flag("--json", env="JSON", help="print JSON instead of a line")
        _log_option(opts, "WARNING")
        switch.set_defaults(run=run)

    stats = _subparser(commands, "stats", "show job counts by state", STATS_EPILOG)
    opts = Options(stats)
    _connection_options(opts, several_queues=True)
    opts.flag("--json", env="JSON", help="print JSON instead of a table")
    _log_option(opts, "WARNING")
    stats.set_defaults(run=cmd_stats)

    failed = _subparser(commands, "failed", "look at, retry or purge the error queue",
                        FAILED_EPILOG)
    actions = failed.add_subparsers(dest="action", metavar="ACTION", required=True)
    failed_list = _subparser(actions, "list", "list dead jobs, newest first", FAILED_EPILOG)
    opts = Options(failed_list)
    _connection_options(opts, several_queues=False)
    opts.add("--limit", env="LIMIT", convert=positive_int, default=100, metavar="N",
             help="show at most N jobs")
    opts.flag("--json", env="JSON", help="print JSON instead of a table")
    _log_option(opts, "WARNING")
    failed_list.set_defaults(run=cmd_failed_list)

    failed_retry = _subparser(actions, "retry",
                              "move dead jobs back to the queue with fresh attempts",
                              FAILED_EPILOG)
    failed_retry.add_argument("job_id", nargs="?", type=object_id, metavar="JOB_ID",
                              help="only this job; default: every dead job")
    opts = Options(failed_retry)
    _connection_options(opts, several_queues=False)
    _log_option(opts, "WARNING")
    failed_retry.set_defaults(run=cmd_failed_retry)

    failed_purge = _subparser(actions, "purge", "delete dead jobs for good", FAILED_EPILOG)
    failed_purge.add_argument("job_id", nargs="?", type=object_id, metavar="JOB_ID",
                              help="only this job")
    # Deliberately no environment variable: deleting everything must be typed.
    failed_purge.add_argument("--all", action="store_true", dest="all",
                              help="delete every dead job (required when no JOB_ID is given)")
    opts = Options(failed_purge)
    _connection_options(opts, several_queues=False)
    _log_option(opts, "WARNING")
    failed_purge.set_defaults(run=cmd_failed_purge)
    _schedule_commands(commands)

    add_dashboard_command(commands, _subparser, _log_option)
    return parser


def _schedule_commands(commands: Any) -> None:
    schedule = _subparser(commands, "schedule", "add, list or remove periodic jobs",
                          SCHEDULE_EPILOG)
    actions = schedule.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = _subparser(actions, "add", "create or change a schedule", SCHEDULE_EPILOG)
    add.add_argument("name", metavar="NAME", help="the schedule's name, unique in the queue")
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR",
                      help="a 5-field cron expression or @hourly, @daily, @weekly, ...")
    when.add_argument("--every", type=positive_seconds, metavar="SECONDS",
                      help="a tick every SECONDS (at least 1)")
    add.add_argument("--payload", metavar="JSON", help="each job's payload; default {}")
    add.add_argument("--priority", type=any_int, metavar="N", help="each job's priority")
    add.add_argument("--timezone", default="UTC", metavar="TZ",
                     help="IANA time zone the cron expression is read in; default UTC")
    add.add_argument("--misfire", choices=("latest", "skip", "all"), default="latest",
                     help="ticks missed while no scheduler ran: fire the latest (default), "
                          "skip them, or fire all (up to --catch-up)")
    add.add_argument("--catch-up", type=positive_int, default=100, metavar="N",
                     help="with --misfire all, fire at most the N most recent missed ticks")
    add.add_argument("--start-at", type=moment, metavar="ISO",
                     help="no tick before this date (with its UTC offset)")
    add.add_argument("--end-at", type=moment, metavar="ISO", help="no tick after this date")
    listing = _subparser(actions, "list", "list the queue's schedules", SCHEDULE_EPILOG)
    remove = _subparser(actions, "remove", "remove a schedule (its fired jobs stay)",
                        SCHEDULE_EPILOG)
    remove.add_argument("name", metavar="NAME", help="the schedule's name")
    for action, run in ((add, cmd_schedule_add), (listing, cmd_schedule_list),
                        (remove, cmd_schedule_remove)):
        opts = Options(action)
        _connection_options(opts, several_queues=False)
        opts.flag("--json", env="JSON", help="print JSON instead of text")
        _log_option(opts, "WARNING")
        action.set_defaults(run=run)


def _subparser(commands: Any, name: str, summary: str, epilog: str) -> ArgumentParser:
    parser: ArgumentParser = commands.add_parser(
        name, help=summary, description=summary[:1].upper() + summary[1:] + ".",
        epilog=epilog, formatter_class=_formatter,
    )
    parser.rejects_unknown = True
    return parser


def _connection_options(opts: Options, *, several_queues: bool,
                        queue_required: bool = True) -> None:
    opts.add("--uri", env="URI", required=True, secret=True, metavar="URI",
             help="MongoDB connection string (a replica set, for push wake-ups)")
    opts.add("--db", env="DB", metavar="DB",
             help="database; default: the one named in the URI")
    if several_queues:
        opts.add("--queue", env="QUEUE", convert=queue_names, append=True,
                 required=queue_required, metavar="NAME",
                 help="queue (collection) name; repeat or comma-separate for several")
    else:
        opts.add("--queue", env="QUEUE", convert=queue_names, append=True,
                 required=queue_required, metavar="NAME", help="queue (collection) name")
    opts.add("--server-timeout", env="SERVER_TIMEOUT", convert=positive_seconds,
             default=DEFAULT_SERVER_TIMEOUT, metavar="SECONDS",
             help="give up on an unreachable server after this long")


def _metrics_options(opts: Options) -> None:
    opts.add("--metrics-port", env="METRICS_PORT", convert=port_number, metavar="PORT",
             help="serve Prometheus metrics on http://ADDR:PORT/metrics; default: none")
    opts.add("--metrics-addr", env="METRICS_ADDR", default="0.0.0.0", metavar="ADDR",
             help="address the metrics server binds")


def _log_option(opts: Options, default: str) -> None:
    opts.add("--log-level", env="LOG_LEVEL", convert=log_level, default=default,
             metavar="LEVEL", help=f"log threshold, one of {', '.join(LOG_LEVELS)}")


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> argparse.Namespace:
    """Parse ``argv`` and fill unset options from ``environ`` (default ``os.environ``).

    Raises ``UsageError`` for anything wrong; ``SystemExit(0)`` for --help/--version.
    """
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    apply_environment(args, os.environ if environ is None else environ)
    if getattr(args, "queue", None) is not None:
        args.queue = _flatten_queues(args.queue)
    _check_combinations(args)
    return args


def _flatten_queues(values: list[list[str]] | list[str]) -> list[str]:
    names: list[str] = []
    for value in values:
        for name in [value] if isinstance(value, str) else value:
            if name not in names:
                names.append(name)
    return names


def _check_combinations(args: argparse.Namespace) -> None:
    command = (f"{args.command} {args.action}" if args.command in ("failed", "schedule")
               else args.command)
    queues: list[str] | None = getattr(args, "queue", None)
    single = command in ("worker", "put", "failed list", "failed retry", "failed purge",
                         "schedule add", "schedule list", "schedule remove")
    if single and queues is not None and len(queues) > 1:
        raise UsageError(f"{command} takes one queue, not {len(queues)} ({', '.join(queues)})")
    if command == "reaper" and not queues and args.tasks is None:
        raise UsageError("reaper needs --queue or --tasks")
    if command == "worker" and args.queues is not None and queues:
        raise UsageError("--queues is for a task registry, --queue for a handler: not both")
    if command == "worker" and args.heartbeat is not None:
        try:
            check_heartbeat(args.heartbeat, args.lease)
        except ValueError as exc:
            raise UsageError(f"--heartbeat {args.heartbeat:g} with --lease {args.lease:g}: "
                             f"{exc}") from None
    if command == "failed purge" and args.job_id is None and not args.all:
        raise UsageError("failed purge deletes for good: name a JOB_ID, or pass --all")
    if command == "failed purge" and args.job_id is not None and args.all:
        raise UsageError("failed purge takes a JOB_ID or --all, not both")
    if command == "devserver" and args.dbpath is not None and args.port is None:
        raise UsageError("--dbpath needs --port: a kept replica set must find its members "
                         "on the same ports")
    if command == "devserver" and args.port is not None and args.port + args.nodes - 1 > 65535:
        raise UsageError(f"--port {args.port} leaves no room for {args.nodes} members")

