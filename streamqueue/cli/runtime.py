"""What every command runs on: logging, the MongoDB connection, and output.

Commands share one way of logging (one line per record on stderr, passwords
redacted), one way of connecting (a client that has answered a ping, or a
one-line ``CliError`` with the exit status that fits the failure), and one
way of writing (results on stdout, remarks and errors on stderr, each error
folded to one redacted line). Keeping these here lets the commands say only
what they do, and keeps the MongoDB side in one place.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any

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

from streamqueue.cli.options import CliError, UsageError
from streamqueue.exitcodes import ExitCode
from streamqueue.retry import AUTH_CODES, RetryPolicy
from streamqueue.storage import Document
from streamqueue.uri import redact_text, redact_uri

MAX_ERROR_CHARS = 400


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


def client_options(uri: str, server_timeout: float, appname: str) -> dict[str, Any]:
    """The client options of every command (the async worker's client takes them too)."""
    timeout_ms = max(1, round(server_timeout * 1000))
    options: dict[str, Any] = {"appname": appname}
    # Timeouts written in the URI win over the command line's default.
    lowered = uri.lower()
    if "serverselectiontimeoutms=" not in lowered:
        options["serverSelectionTimeoutMS"] = timeout_ms
    if "connecttimeoutms=" not in lowered:
        options["connectTimeoutMS"] = min(timeout_ms, 20000)
    return options


def connect(uri: str, server_timeout: float, appname: str) -> MongoClient[Document]:
    """A client that has answered a ping, or a ``CliError`` saying why not (one line)."""
    shown = redact_uri(uri)
    options = client_options(uri, server_timeout, appname)
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


# -- output -------------------------------------------------------------------------------------


def _output(value: object) -> None:
    """A command's result, on stdout."""
    sys.stdout.write(f"{value}\n")
    sys.stdout.flush()


def _note(text: str) -> None:
    """A remark for the person at the terminal, on stderr (never mixed into results)."""
    sys.stderr.write(f"{text}\n")
    sys.stderr.flush()


def _one_line(exc: BaseException, uri: str | None = None) -> str:
    """``exc`` as one line of at most ``MAX_ERROR_CHARS``, passwords redacted."""
    text = str(exc)
    # Server selection errors append a long topology description.
    text = text.split(", Timeout: ")[0].split(", Topology Description: ")[0]
    text = " ".join(text.split()) or type(exc).__name__
    text = redact_text(text, uri)
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."
