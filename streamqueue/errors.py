"""The exception hierarchy: everything streamqueue raises derives from StreamQueueError.

Driver errors are translated at the storage edge (``raise ... from exc``), so
callers catch these classes and never need to import pymongo to handle them.
"""

from __future__ import annotations


class StreamQueueError(Exception):
    """Root of every error streamqueue raises on purpose."""


class LeaseLost(StreamQueueError):
    """This claim no longer holds the job: its lease expired or another consumer took it.

    Nothing was changed: the job belongs to whoever holds it now.
    """


class InvalidJob(StreamQueueError, ValueError):
    """A payload or option cannot be stored (not a mapping, not BSON, too large, bad key)."""


class ConfigurationError(StreamQueueError, ValueError):
    """The queue, URI or deployment is set up in a way streamqueue cannot work with."""


class QueueUnavailable(StreamQueueError):
    """MongoDB could not be reached, even after bounded retries."""


class PermissionDenied(StreamQueueError):
    """MongoDB refused the operation for lack of a role (authentication or authorization)."""


class StorageError(StreamQueueError):
    """Any other error MongoDB answered with; the driver's exception is the ``__cause__``."""



class JobNotFound(StreamQueueError, KeyError):
    """No job has this id, in the queue or its error queue (never put, or removed since)."""

    def __str__(self) -> str:
        # KeyError would show the message quoted, as it does a missing key.
        return Exception.__str__(self)


class JobFailed(StreamQueueError):
    """The job ran out of attempts and is in the error queue; ``last_error`` says why."""

    def __init__(self, message: str, last_error: str | None = None) -> None:
        super().__init__(message)
        self.last_error = last_error


class JobCancelled(StreamQueueError):
    """The job was cancelled: it has no result."""
