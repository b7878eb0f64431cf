"""The ``streamqueue`` command line (also ``python -m streamqueue``).

Subcommands: ``worker``, ``reaper``, ``devserver``, ``put``, ``stats``, ``show``,
``jobs``, ``cancel``, ``pause``, ``resume``, ``failed list|retry|purge`` and ``dashboard``.
Every option can also come from an environment variable
(``STREAMQUEUE_URI``, ``STREAMQUEUE_DB``, ...; the option wins), so a
URI with a password never has to appear in ``ps``. Errors are one line on
stderr with a named exit status (``streamqueue.exitcodes``); passwords are
never printed or logged (``streamqueue.uri.redact_uri``).

This module is the entry point: ``main`` parses, runs the command and turns
whatever it raises into that one line and exit status. The rest is split by
job: ``options`` (option values, environment variables, usage errors),
``parser`` (the commands and their options), ``runtime`` (logging, the MongoDB
connection, output), ``admin`` (the one-shot commands) and ``services`` (the
long-running ones).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence

from streamqueue.cli.options import ENV_PREFIX, PROG, CliError, UsageError
from streamqueue.cli.parser import DEFAULT_SERVER_TIMEOUT, build_parser, parse_args
from streamqueue.cli.runtime import (
    MAX_ERROR_CHARS,
    RedactingFormatter,
    _note,
    _one_line,
    configure_logging,
    database_name,
)
from streamqueue.cli.services import cmd_reaper, cmd_worker
from streamqueue.errors import StreamQueueError
from streamqueue.exitcodes import ExitCode
from streamqueue.exitcodes import for_error as exit_code_for
from streamqueue.uri import redact_text

__all__ = [
    "DEFAULT_SERVER_TIMEOUT",
    "CliError",
    "RedactingFormatter",
    "UsageError",
    "_one_line",
    "build_parser",
    "cmd_reaper",
    "cmd_worker",
    "configure_logging",
    "database_name",
    "main",
    "parse_args",
]

log = logging.getLogger(__name__)


COMMANDS = ("worker", "reaper", "devserver", "put", "stats", "failed", "cancel", "pause", "resume",
            "dashboard")
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
