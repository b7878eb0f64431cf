"""Option values and the environment variables behind them.

Everything here runs before a command does: each option's text is turned into
a value (or refused with a message naming the option), options left off the
command line are filled from ``STREAMQUEUE_*`` environment variables (so a
URI with a password never has to appear in ``ps``), and bad input becomes a
``UsageError`` (exit 2) rather than argparse's print-and-exit. ``CliError``
lives here too: it is the one exception every command raises to choose its
exit status. Nothing here talks to MongoDB.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from bson import ObjectId

from streamqueue.exitcodes import ExitCode
from streamqueue.uri import redact_uri

PROG = "streamqueue"
ENV_PREFIX = "STREAMQUEUE_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


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

    #: Set on subcommand parsers: argparse hands a subcommand's unknown
    #: arguments up to the top parser, whose error would point at
    #: 'streamqueue --help' instead of the subcommand's help.
    rejects_unknown = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and self.rejects_unknown:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras

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

