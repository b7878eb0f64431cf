"""The ``streamqueue`` command line (also ``python -m streamqueue``).

Subcommands: ``worker``, ``reaper``, ``devserver``, ``put``, ``stats`` and
``failed list|retry|purge``. Every option can also come from an environment
variable (``STREAMQUEUE_URI``, ``STREAMQUEUE_DB``, ...; the option wins), so a
URI with a password never has to appear in ``ps``. Errors are one line on
stderr with a named exit status (``streamqueue.exitcodes``); passwords are
never printed or logged (``streamqueue.uri.redact_uri``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import IO, Any, NoReturn

from bson import ObjectId, json_util
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import (
    ConfigurationError as DriverConfigurationError,
)
from pymongo.errors import (
    ConnectionFailure,
    InvalidName,
    OperationFailure,
    PyMongoError,
)
from pymongo.uri_parser import parse_uri

from streamqueue import __version__
from streamqueue.errors import StreamQueueError
from streamqueue.exitcodes import ExitCode
from streamqueue.exitcodes import for_error as exit_code_for
from streamqueue.retry import AUTH_CODES, RetryPolicy
from streamqueue.storage import Document
from streamqueue.uri import redact_text, redact_uri

log = logging.getLogger("streamqueue.cli")

PROG = "streamqueue"
ENV_PREFIX = "STREAMQUEUE_"
DEFAULT_SERVER_TIMEOUT = 5.0
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAX_ERROR_CHARS = 400


# -- errors ------------------------------------------------------------------------------


class UsageError(Exception):
    """Bad arguments, options or environment variables (exit 2)."""


class CliError(Exception):
    """A failure the command reports as one line with a chosen exit status."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises ``UsageError`` instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


# -- option values -----------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def any_int(text: str) -> int:
    return _int(text)


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def port_number(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be within 0..65535, not {text!r}")
    return value


def positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than zero seconds, not {text!r}")
    return value


def seconds(text: str) -> float:
    value = _seconds(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more seconds, not {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, not {text!r}")
    return value


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean (use 1/0, true/false, yes/no): {text!r}")


def log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(LOG_LEVELS)}, not {text!r}")
    return level


def queue_names(text: str) -> list[str]:
    """``a,b`` or ``a``: one or several queue names."""
    names = [name.strip() for name in text.split(",")]
    if not any(names):
        raise argparse.ArgumentTypeError(f"no queue name in {text!r}")
    if not all(names):
        raise argparse.ArgumentTypeError(f"empty queue name in {text!r}")
    return names


def object_id(text: str) -> ObjectId:
    if not ObjectId.is_valid(text.strip()):
        raise argparse.ArgumentTypeError(f"not a job id (24 hex digits): {text!r}")
    return ObjectId(text.strip())


# -- options backed by environment variables ------------------------------------------------


@dataclass(frozen=True)
class EnvOption:
    """An option whose value, when not given, comes from ``env``, then ``default``."""

    dest: str
    flag: str
    env: str
    convert: Callable[[str], Any]
    default: Any = None
    required: bool = False
    secret: bool = False


class Options:
    """Adds options to one (sub)parser and remembers which environment variable backs each."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser
        self.specs: list[EnvOption] = []
        parser.set_defaults(_env_options=self.specs)

    def add(
        self,
        flag: str,
        *,
        env: str,
        help: str,
        convert: Callable[[str], Any] = str,
        default: Any = None,
        required: bool = False,
        secret: bool = False,
        metavar: str | None = None,
        append: bool = False,
        positional: bool = False,
    ) -> None:
        env_name = ENV_PREFIX + env
        shown = "" if default is None else f"; default {_show_default(default)}"
        full_help = f"{help} (env {env_name}{shown})"
        if positional:
            dest = flag
            self.parser.add_argument(flag, nargs="?", type=convert, default=None,
                                     help=full_help, metavar=metavar)
            shown_flag = metavar or flag.upper()
        else:
            dest = flag.lstrip("-").replace("-", "_")
            kwargs: dict[str, Any] = {"dest": dest, "type": convert, "default": None,
                                      "help": full_help, "metavar": metavar}
            if append:
                kwargs["action"] = "append"
            self.parser.add_argument(flag, **kwargs)
            shown_flag = flag
        self.specs.append(EnvOption(dest, shown_flag, env_name, convert, default, required, secret))

    def flag(self, flag: str, *, env: str, help: str) -> None:
        """A switch: present means true; else ``STREAMQUEUE_<env>`` as a boolean; else false."""
        env_name = ENV_PREFIX + env
        dest = flag.lstrip("-").replace("-", "_")
        self.parser.add_argument(flag, dest=dest, action="store_const", const=True,
                                 default=None, help=f"{help} (env {env_name})")
        self.specs.append(EnvOption(dest, flag, env_name, boolean, False))


def _show_default(value: object) -> str:
    return str(value)


def apply_environment(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Fill every option left unset on the command line from its environment variable."""
    specs: list[EnvOption] = getattr(args, "_env_options", [])
    for spec in specs:
        value = getattr(args, spec.dest, None)
        if value is None:
            raw = environ.get(spec.env)
            if raw is not None and raw.strip():
                try:
                    value = spec.convert(raw)
                except (argparse.ArgumentTypeError, ValueError) as exc:
                    shown = redact_uri(raw) if spec.secret else raw
                    raise UsageError(f"invalid {spec.env}={shown!r}: {exc}") from None
            else:
                value = spec.default
        if value is None and spec.required:
            raise UsageError(f"{spec.flag} is required (or set {spec.env})")
        setattr(args, spec.dest, value)


# -- the parser ---------------------------------------------------------------------------------

TOP_EPILOG = """\
examples:
  python -m streamqueue devserver                     # a local replica set; prints its URI
  export STREAMQUEUE_URI='mongodb://127.0.0.1:27017/?replicaSet=rs0'
  streamqueue put --db app --queue emails '{"to": "a@example.com"}'
  streamqueue worker myapp.tasks:send_email --db app --queue emails --concurrency 8
  streamqueue reaper --db app --queue emails --metrics-port 9101
  streamqueue stats --db app --queue emails
  streamqueue failed list --db app --queue emails

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

The handler is called with the job's payload (and the Job, if it takes a second
argument or one named "job"); returning completes the job, raising retries it
with exponential backoff until --max-attempts, then moves it to the error queue.
SIGTERM/SIGINT: stop claiming, let running jobs finish within --shutdown-grace,
release the rest, exit 0; a second signal exits at once.
"""

REAPER_EPILOG = """\
examples:
  streamqueue reaper --uri "$URI" --db app --queue images --queue emails --metrics-port 9101
  STREAMQUEUE_QUEUE=images,emails python -m streamqueue.reaper --db app --interval 10
  streamqueue reaper --db app --queue images --once      # one pass (cron, tests)

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

FAILED_EPILOG = """\
examples:
  streamqueue failed list --db app --queue emails
  streamqueue failed retry --db app --queue emails 65f1c0ffee0123456789abcd
  streamqueue failed retry --db app --queue emails            # every dead job
  streamqueue failed purge --db app --queue emails --all
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
             required=True, help="the job handler, e.g. myapp.tasks:send_email")
    _connection_options(opts, several_queues=False)
    opts.add("--concurrency", env="CONCURRENCY", convert=positive_int, default=4, metavar="N",
             help="handler threads")
    opts.add("--lease", env="LEASE", convert=positive_seconds, default=300.0, metavar="SECONDS",
             help="how long a claim holds a job before the reaper may hand it on")
    opts.add("--max-attempts", env="MAX_ATTEMPTS", convert=positive_int, default=3, metavar="N",
             help="deliveries before a failing job moves to the error queue "
                  "(for jobs this process enqueues; each job keeps its own)")
    opts.add("--heartbeat", env="HEARTBEAT", convert=positive_seconds, metavar="SECONDS",
             help="extend leases of running jobs this often; default lease/3")
    opts.add("--shutdown-grace", env="SHUTDOWN_GRACE", convert=seconds, default=30.0,
             metavar="SECONDS", help="on SIGTERM, how long running jobs may take to finish")
    opts.add("--batch", env="BATCH", convert=positive_int, metavar="N",
             help="claim up to N jobs per round trip; default: as many as there are free slots")
    opts.add("--backoff", env="BACKOFF", convert=seconds, default=1.0, metavar="SECONDS",
             help="retry delay after the first failure; doubles each attempt, with jitter")
    opts.add("--backoff-cap", env="BACKOFF_CAP", convert=seconds, default=300.0,
             metavar="SECONDS", help="longest retry delay")
    opts.add("--consumer-id", env="CONSUMER_ID", metavar="ID",
             help="name of this consumer in claimed jobs; default host:pid:random")
    _metrics_options(opts)
    opts.flag("--burst", env="BURST",
              help="exit once nothing is due and every slot is idle")
    _log_option(opts, "INFO")
    worker.set_defaults(run=cmd_worker)

    reaper = _subparser(commands, "reaper", "hand expired leases on; publish queue gauges",
                        REAPER_EPILOG)
    opts = Options(reaper)
    _connection_options(opts, several_queues=True)
    opts.add("--interval", env="INTERVAL", convert=positive_seconds, default=5.0,
             metavar="SECONDS", help="time between passes")
    _metrics_options(opts)
    opts.flag("--once", env="ONCE", help="run one pass and exit (0 if every queue was reaped)")
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
                     help="the payload, a JSON object; '-' reads it from stdin")
    _connection_options(opts, several_queues=False)
    opts.add("--priority", env="PRIORITY", convert=any_int, metavar="N",
             help="higher is claimed first; default: the payload's \"priority\" key, else 0")
    opts.add("--delay", env="DELAY", convert=seconds, default=0.0, metavar="SECONDS",
             help="claimable only after this long")
    opts.add("--max-attempts", env="MAX_ATTEMPTS", convert=positive_int, default=3, metavar="N",
             help="deliveries before the job moves to the error queue")
    _log_option(opts, "WARNING")
    put.set_defaults(run=cmd_put)

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
    return parser


def _subparser(commands: Any, name: str, summary: str, epilog: str) -> ArgumentParser:
    parser: ArgumentParser = commands.add_parser(
        name, help=summary, description=summary[:1].upper() + summary[1:] + ".",
        epilog=epilog, formatter_class=_formatter,
    )
    return parser


def _connection_options(opts: Options, *, several_queues: bool) -> None:
    opts.add("--uri", env="URI", required=True, secret=True, metavar="URI",
             help="MongoDB connection string (a replica set, for push wake-ups)")
    opts.add("--db", env="DB", metavar="DB",
             help="database; default: the one named in the URI")
    if several_queues:
        opts.add("--queue", env="QUEUE", convert=queue_names, append=True, required=True,
                 metavar="NAME", help="queue (collection) name; repeat or comma-separate "
                                      "for several")
    else:
        opts.add("--queue", env="QUEUE", convert=queue_names, append=True, required=True,
                 metavar="NAME", help="queue (collection) name")
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
    command = args.command if args.command != "failed" else f"failed {args.action}"
    queues: list[str] | None = getattr(args, "queue", None)
    single = command in ("worker", "put", "failed list", "failed retry", "failed purge")
    if single and queues is not None and len(queues) > 1:
        raise UsageError(f"{command} takes one queue, not {len(queues)} ({', '.join(queues)})")
    if command == "failed purge" and args.job_id is None and not args.all:
        raise UsageError("failed purge deletes for good: name a JOB_ID, or pass --all")
    if command == "failed purge" and args.job_id is not None and args.all:
        raise UsageError("failed purge takes a JOB_ID or --all, not both")
    if command == "devserver" and args.dbpath is not None and args.port is None:
        raise UsageError("--dbpath needs --port: a kept replica set must find its members "
                         "on the same ports")
    if command == "devserver" and args.port is not None and args.port + args.nodes - 1 > 65535:
        raise UsageError(f"--port {args.port} leaves no room for {args.nodes} members")


# -- logging ----------------------------------------------------------------------------------


class RedactingFormatter(logging.Formatter):
    """One line per record: UTC timestamp, level, logger, message; URIs' passwords hidden."""

    def __init__(self, secret_uri: str | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.secret_uri = secret_uri

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        moment = datetime.fromtimestamp(record.created, tz=timezone.utc)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record), self.secret_uri)


def configure_logging(level: str, secret_uri: str | None = None,
                      stream: IO[str] | None = None) -> None:
    """Send every log record to stderr, one line each, with passwords redacted."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(RedactingFormatter(secret_uri))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # The driver's own DEBUG output is a firehose of structured records.
    logging.getLogger("pymongo").setLevel(max(logging.getLevelName(level), logging.INFO))
    logging.captureWarnings(True)


# -- MongoDB ------------------------------------------------------------------------------------


def connect(uri: str, server_timeout: float, appname: str) -> MongoClient[Document]:
    """A client that has answered a ping, or a ``CliError`` saying why not (one line)."""
    shown = redact_uri(uri)
    timeout_ms = max(1, round(server_timeout * 1000))
    options: dict[str, Any] = {"appname": appname}
    # Timeouts written in the URI win over the command line's default.
    lowered = uri.lower()
    if "serverselectiontimeoutms=" not in lowered:
        options["serverSelectionTimeoutMS"] = timeout_ms
    if "connecttimeoutms=" not in lowered:
        options["connectTimeoutMS"] = min(timeout_ms, 20000)
    try:
        with warnings.catch_warnings():
            # The driver warns and ignores an invalid option; a command line
            # should say so and stop instead.
            warnings.simplefilter("error")
            client: MongoClient[Document] = MongoClient(uri, **options)
    except (DriverConfigurationError, ValueError, TypeError, UserWarning) as exc:
        raise CliError(f"invalid MongoDB URI {shown}: {_one_line(exc, uri)}",
                       ExitCode.CONFIG) from None
    try:
        client.admin.command("ping")
    except OperationFailure as exc:
        client.close()
        if exc.code in AUTH_CODES:
            raise CliError(f"MongoDB at {shown} refused the credentials: {_one_line(exc, uri)}",
                           ExitCode.PERMISSION) from None
        raise CliError(f"MongoDB at {shown} answered an error: {_one_line(exc, uri)}",
                       ExitCode.ERROR) from None
    except ConnectionFailure as exc:
        client.close()
        raise CliError(f"cannot reach MongoDB at {shown}: {_one_line(exc, uri)}",
                       ExitCode.UNAVAILABLE) from None
    except PyMongoError as exc:
        client.close()
        raise CliError(f"MongoDB at {shown}: {_one_line(exc, uri)}", ExitCode.ERROR) from None
    return client


def database_name(args: argparse.Namespace) -> str:
    """``--db``, else the database in the URI's path."""
    if args.db:
        return str(args.db)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = parse_uri(args.uri) if "+srv://" not in args.uri else None
    except (DriverConfigurationError, ValueError, TypeError):
        parsed = None  # connect() reports the URI itself
    name = parsed.get("database") if parsed else None
    if not name:
        raise UsageError("--db is required (or set STREAMQUEUE_DB, or name the database "
                         "in the URI)")
    return str(name)


def collection(client: MongoClient[Document], db: str, name: str) -> Collection[Document]:
    try:
        return client[db][name]
    except InvalidName as exc:
        raise UsageError(f"invalid database or queue name {db}.{name}: {exc}") from None


@dataclass
class Session:
    """The client and queue names one command works on."""

    client: MongoClient[Document]
    db: str
    queues: list[str]

    def collection(self, name: str | None = None) -> Collection[Document]:
        return collection(self.client, self.db, name if name is not None else self.queues[0])

    def close(self) -> None:
        self.client.close()


def open_session(args: argparse.Namespace, appname: str) -> Session:
    db = database_name(args)
    client = connect(args.uri, args.server_timeout, appname)
    try:
        session = Session(client, db, list(args.queue))
        for name in session.queues:
            session.collection(name)  # names are checked before anything runs
    except BaseException:
        client.close()
        raise
    return session


def one_shot_retry(args: argparse.Namespace) -> RetryPolicy:
    """Short retries for interactive commands: a dead server fails in seconds, not a minute."""
    return RetryPolicy(max_delay=float(args.server_timeout))


def _output(value: object) -> None:
    """A command's result, on stdout."""
    sys.stdout.write(f"{value}\n")
    sys.stdout.flush()


def _note(text: str) -> None:
    """A remark for the person at the terminal, on stderr (never mixed into results)."""
    sys.stderr.write(f"{text}\n")
    sys.stderr.flush()


# -- commands -------------------------------------------------------------------------------------


def cmd_put(args: argparse.Namespace) -> int:
    from streamqueue.queue import Queue

    payload = _read_payload(args.payload)
    session = open_session(args, "streamqueue-put")
    try:
        queue = Queue(session.collection(), max_attempts=args.max_attempts,
                      retry=one_shot_retry(args))
        try:
            job_id = queue.put(payload, priority=args.priority, delay=args.delay)
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
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{source} is not valid JSON: {exc}") from None
    except RecursionError:
        raise UsageError(f"{source} is nested too deeply") from None
    if not isinstance(payload, dict):
        raise UsageError(f"the payload must be a JSON object ({{...}}), not a "
                         f"{type(payload).__name__}")
    return payload


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
    header = ["QUEUE", "AVAILABLE", "LOCKED", "DELAYED", "FAILED", "TOTAL", "OLDEST AVAILABLE"]
    body = [
        [name, str(s["available"]), str(s["locked"]), str(s["delayed"]), str(s["failed"]),
         str(s["total"]), _duration(s["oldest_available_age_seconds"]) if s["available"] else "-"]
        for name, s in rows.items()
    ]
    return _table(header, body, right_aligned=range(1, 7))


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


def cmd_failed_list(args: argparse.Namespace) -> int:
    from streamqueue.queue import Queue

    session = open_session(args, "streamqueue-failed")
    try:
        queue = Queue(session.collection(), retry=one_shot_retry(args))
        docs = queue.store.list_failed(limit=args.limit)
    finally:
        session.close()
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
    from streamqueue.queue import Queue

    session = open_session(args, "streamqueue-failed")
    try:
        queue = Queue(session.collection(), retry=one_shot_retry(args))
        moved = queue.retry_failed(args.job_id)
    finally:
        session.close()
    where = f"{session.db}.{session.queues[0]}"
    if args.job_id is not None and moved == 0:
        raise CliError(f"no job {args.job_id} in the error queue of {where}", ExitCode.NOT_FOUND)
    _output(f"moved {moved} job{'s' if moved != 1 else ''} back to {where}")
    return ExitCode.OK


def cmd_failed_purge(args: argparse.Namespace) -> int:
    from streamqueue.queue import Queue

    session = open_session(args, "streamqueue-failed")
    try:
        queue = Queue(session.collection(), retry=one_shot_retry(args))
        purged = queue.purge_failed(args.job_id)
    finally:
        session.close()
    where = f"{session.db}.{session.queues[0]}"
    if args.job_id is not None and purged == 0:
        raise CliError(f"no job {args.job_id} in the error queue of {where}", ExitCode.NOT_FOUND)
    _output(f"deleted {purged} job{'s' if purged != 1 else ''} from the error queue of {where}")
    return ExitCode.OK


def cmd_worker(args: argparse.Namespace) -> int:
    from streamqueue.backoff import ExponentialBackoff
    from streamqueue.handlers import load_handler
    from streamqueue.metrics import PrometheusHooks
    from streamqueue.queue import Queue
    from streamqueue.worker import Worker

    # The console script does not put the working directory on sys.path the
    # way `python -m` does; handlers are usually found relative to it.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    handler = load_handler(args.handler)
    hooks = PrometheusHooks()
    session = open_session(args, "streamqueue-worker")
    name = session.queues[0]
    hooks.touch_queue(name)
    try:
        queue = Queue(session.collection(name), args.consumer_id, lease=args.lease,
                      max_attempts=args.max_attempts, hooks=hooks)
        worker = Worker(queue, handler, concurrency=args.concurrency, heartbeat=args.heartbeat,
                        shutdown_grace=args.shutdown_grace, batch=args.batch, burst=args.burst,
                        backoff=ExponentialBackoff(base=args.backoff, cap=args.backoff_cap))
    except (TypeError, ValueError) as exc:
        session.close()
        raise UsageError(str(exc)) from None
    untrack = hooks.track_worker(name, slots=worker.slots, busy=lambda: worker.busy_slots,
                                 last_event_age=queue.watcher.last_event_age)
    try:
        server = _serve_metrics(args, hooks)
        try:
            log.info("worker %s: %s on %s.%s via %s, %d slots, lease %gs",
                     queue.consumer_id, args.handler, session.db, name, redact_uri(args.uri),
                     worker.slots, queue.lease)
            worker.install_signal_handlers()
            worker.run()
        finally:
            if server is not None:
                server.close()
    finally:
        untrack()
        queue.close()
        session.close()
    return ExitCode.OK


def _serve_metrics(args: argparse.Namespace, hooks: Any) -> Any:
    if args.metrics_port is None:
        return None
    from streamqueue.metrics import serve_metrics

    try:
        return serve_metrics(args.metrics_port, args.metrics_addr, hooks.registry)
    except OSError as exc:
        raise CliError(f"cannot serve metrics on {args.metrics_addr}:{args.metrics_port}: "
                       f"{exc.strerror or exc}", ExitCode.CONFIG) from None


def cmd_reaper(args: argparse.Namespace) -> int:
    from streamqueue.metrics import PrometheusHooks
    from streamqueue.queue import Queue
    from streamqueue.reaper import Reaper

    hooks = PrometheusHooks()
    session = open_session(args, "streamqueue-reaper")
    try:
        # The reaper loop is itself a retry: a pass gives up after a bounded
        # while so a signal is answered promptly even in an outage.
        retry = RetryPolicy(max_delay=max(10.0, 2 * args.interval))
        queues = [Queue(session.collection(name), hooks=hooks, retry=retry)
                  for name in session.queues]
        for name in session.queues:
            hooks.touch_queue(name, role="reaper")
        reaper = Reaper(queues, interval=args.interval, hooks=hooks)
        where = ", ".join(f"{session.db}.{name}" for name in session.queues)
        if args.once:
            if args.metrics_port is not None:
                log.info("--metrics-port is ignored with --once (nothing would scrape it)")
            result = reaper.run_once()
            for name, count in result.reaped.items():
                log.info("%s.%s: %d expired lease%s handled", session.db, name, count,
                         "" if count == 1 else "s")
            if result.errors:
                name, exc = next(iter(result.errors.items()))
                raise CliError(f"reaping {session.db}.{name} failed: {_one_line(exc, args.uri)}",
                               exit_code_for(exc))
            return ExitCode.OK
        server = _serve_metrics(args, hooks)
        try:
            log.info("reaper on %s via %s, every %gs", where, redact_uri(args.uri), args.interval)
            _run_until_signalled(reaper.run, reaper.stop, "reaper")
        finally:
            if server is not None:
                server.close()
    finally:
        session.close()
    return ExitCode.OK


def _run_until_signalled(run: Callable[[], None], stop: Callable[[], None], what: str) -> None:
    """Run ``run`` in a thread; the first SIGTERM/SIGINT calls ``stop``, a second exits at once.

    The loop runs off the main thread so the signal handler never takes a lock
    the interrupted code may hold.
    """
    failure: list[BaseException] = []

    def target() -> None:
        try:
            run()
        except BaseException as exc:  # handed to the main thread below
            failure.append(exc)

    signals = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            os.write(2, f"{PROG} {what}: second signal, exiting now\n".encode())
            os._exit(128 + signum)
        log.info("signal %d: stopping after the current pass (send again to exit at once)",
                 signum)
        stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=target, name=f"streamqueue-{what}")
    try:
        thread.start()
        while thread.is_alive():
            thread.join(1.0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failure:
        raise failure[0]


def cmd_devserver(args: argparse.Namespace) -> int:
    from streamqueue.devserver import serve

    return serve(nodes=args.nodes, port=args.port, dbpath=args.dbpath)


# -- entry point ----------------------------------------------------------------------------------


def _one_line(exc: BaseException, uri: str | None = None) -> str:
    text = str(exc)
    # Server selection errors append a long topology description.
    text = text.split(", Timeout: ")[0].split(", Topology Description: ")[0]
    text = " ".join(text.split()) or type(exc).__name__
    text = redact_text(text, uri)
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


COMMANDS = ("worker", "reaper", "devserver", "put", "stats", "failed")
FAILED_ACTIONS = ("list", "retry", "purge")


def _command_words(arguments: Sequence[str]) -> str | None:
    """The subcommand named in ``arguments`` ("failed retry"), for error messages."""
    words = [a for a in arguments if not a.startswith("-")]
    if not words or words[0] not in COMMANDS:
        return None
    if words[0] == "failed" and len(words) > 1 and words[1] in FAILED_ACTIONS:
        return f"failed {words[1]}"
    return words[0]


def _report(command: str | None, message: str, uri: str | None) -> None:
    where = f"{PROG} {command}" if command else PROG
    text = " ".join(redact_text(message, uri).split())
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 3] + "..."
    _note(f"{where}: error: {text}")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the command line; return the exit status (never raises, never prints a traceback)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = _command_words(arguments)
    env = os.environ if environ is None else environ
    secret = env.get(ENV_PREFIX + "URI")
    try:
        args = parse_args(arguments, env)
    except UsageError as exc:
        _report(command, str(exc), secret)
        return ExitCode.USAGE
    except SystemExit as exc:  # --help, --version
        return int(exc.code) if isinstance(exc.code, int) else ExitCode.OK
    command = args.command if args.command != "failed" else f"failed {args.action}"
    secret = getattr(args, "uri", None) or secret
    configure_logging(args.log_level, secret)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return int(run(args))
    except UsageError as exc:
        _report(command, str(exc), secret)
        return ExitCode.USAGE
    except CliError as exc:
        _report(command, str(exc), secret)
        return exc.code
    except StreamQueueError as exc:
        _report(command, _one_line(exc, secret), secret)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        _report(command, "interrupted", secret)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`... | head`): not worth a message.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.ERROR
    except Exception as exc:
        log.debug("unexpected error", exc_info=True)
        _report(command, f"internal error: {type(exc).__name__}: {_one_line(exc, secret)} "
                         "(--log-level DEBUG shows the traceback)", secret)
        return ExitCode.ERROR
