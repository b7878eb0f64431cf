"""Exit statuses of the ``streamqueue`` command line, by name.

Scripts and orchestrators can tell a typo (``USAGE``) from a setting that can
never work (``CONFIG``) from a database that is down for now (``UNAVAILABLE``),
and so decide whether a restart may help.
"""

from __future__ import annotations

import enum

from streamqueue.errors import (
    ConfigurationError,
    InvalidJob,
    PermissionDenied,
    QueueUnavailable,
)


class ExitCode(enum.IntEnum):
    OK = 0
    #: Anything else went wrong (an unexpected server answer, an internal error).
    ERROR = 1
    #: Bad arguments, options, environment variables or input (argparse's own code).
    USAGE = 2
    #: A setting that cannot work: malformed URI, unknown handler, port in use.
    CONFIG = 3
    #: MongoDB could not be reached (retrying later may help).
    UNAVAILABLE = 4
    #: MongoDB refused the credentials or the operation.
    PERMISSION = 5
    #: The job named on the command line does not exist.
    NOT_FOUND = 6
    #: ``result --timeout``: the job had not finished when the time ran out.
    NOT_FINISHED = 7
    #: Stopped by SIGINT / SIGTERM before finishing (128 + SIGINT, as shells report it).
    INTERRUPTED = 130


OK = ExitCode.OK
ERROR = ExitCode.ERROR
USAGE = ExitCode.USAGE
CONFIG = ExitCode.CONFIG
UNAVAILABLE = ExitCode.UNAVAILABLE
PERMISSION = ExitCode.PERMISSION
NOT_FOUND = ExitCode.NOT_FOUND
INTERRUPTED = ExitCode.INTERRUPTED


def for_error(exc: BaseException) -> ExitCode:
    """The exit status that reports ``exc`` (a ``StreamQueueError`` or anything else)."""
    if isinstance(exc, QueueUnavailable):
        return ExitCode.UNAVAILABLE
    if isinstance(exc, PermissionDenied):
        return ExitCode.PERMISSION
    if isinstance(exc, InvalidJob):
        return ExitCode.USAGE
    if isinstance(exc, ConfigurationError):
        return ExitCode.CONFIG
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    # StorageError, other StreamQueueErrors and anything unexpected.
    return ExitCode.ERROR
