"""Which MongoDB errors are worth another try, and what callers see when they are not.

The storage layer runs every operation through ``RetryPolicy.plan`` and turns
what escapes into the ``streamqueue.errors`` hierarchy with ``translate``.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar, cast

from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DocumentTooLarge,
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
    WriteError,
)
from tenacity import (
    DoSleep,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from streamqueue.errors import (
    InvalidJob,
    PermissionDenied,
    QueueUnavailable,
    StorageError,
    StreamQueueError,
)
from streamqueue.plan import Invoke, Plan, Sleep, once

log = logging.getLogger(__name__)

T = TypeVar("T")
_ExcInfo = tuple[type[BaseException], BaseException, TracebackType]

# Server codes: Unauthorized, AuthenticationFailed, and Atlas' "user is not allowed".
AUTH_CODES = frozenset({13, 18, 8000})
TRANSIENT_LABELS = ("RetryableWriteError", "TransientTransactionError")
# Election and shutdown codes (the retryable-writes spec's list). The driver
# retries them itself only for single-document writes; the multi-document ones
# here (batch claim, bulk completion, heartbeat, reap) get them back as a
# WriteConcernError (applied, majority wait cut short) or as a per-document
# WriteError such as 189 "Not primary while writing" (stopped part-way). Each
# of those writes is idempotent or finds its own work again by lease token, so
# another try is safe; left unretried, a batch claim or a bulk completion hit
# by a stepdown left its jobs to wait out their leases.
DUPLICATE_KEY = 11000
RETRYABLE_CODES = frozenset(
    {6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})


def is_transient(exc: BaseException) -> bool:
    """True for errors another try may cure: lost connections, elections, labelled errors."""
    if isinstance(exc, DuplicateKeyError | DocumentTooLarge | ExecutionTimeout):
        return False
    if isinstance(exc, ConnectionFailure):
        return True
    if isinstance(exc, WriteConcernError | WriteError):
        return exc.code in RETRYABLE_CODES
    if isinstance(exc, BulkWriteError):
        # An unordered enqueue stopped by an election: the rows it did write
        # come back as duplicate keys on the next try, which means "done". A
        # bulk write whose majority wait an election cut short reports it in
        # writeConcernErrors: written but unconfirmed, so it is tried again too.
        errors = exc.details.get("writeErrors", []) + exc.details.get("writeConcernErrors", [])
        codes = {error.get("code") for error in errors}
        return bool(codes & RETRYABLE_CODES) and codes <= RETRYABLE_CODES | {DUPLICATE_KEY}
    if isinstance(exc, PyMongoError):
        return any(exc.has_error_label(label) for label in TRANSIENT_LABELS)
    return False


# MaxTimeMSExpired, and a majority wait cut short (wtimeout): what a try bounded
# by a time limit (storage.BoundedTries) meets when the server is slow or electing.
TIME_LIMIT_CODES = frozenset({50, 64})


def is_transient_bounded(exc: BaseException) -> bool:
    """For a claim or an enqueue, a time limit that ran out is transient too.

    Each try of those runs under a server-side time limit, and each retry
    first finds what an earlier try did (a claim by its token, an enqueue by
    its ids), so another try is safe: an interrupted try changed nothing, or
    its effect (applied, majority wait cut short) is found again.
    """
    if isinstance(exc, ExecutionTimeout):
        return True
    if isinstance(exc, WriteConcernError) and exc.code in TIME_LIMIT_CODES:
        return True
    return is_transient(exc)


def translate(exc: PyMongoError | DocumentTooLarge, action: str) -> StreamQueueError:
    """The streamqueue error for a driver error that was not (or no longer) retried."""
    if isinstance(exc, ConnectionFailure):
        return QueueUnavailable(f"{action}: MongoDB unreachable: {exc}")
    if isinstance(exc, OperationFailure) and exc.code in AUTH_CODES:
        return PermissionDenied(f"{action}: not authorized: {_server_message(exc)}")
    if isinstance(exc, DocumentTooLarge):
        return InvalidJob(f"{action}: document too large: {exc}")
    return StorageError(f"{action}: {_server_message(exc)}")


def _server_message(exc: BaseException) -> str:
    # str(OperationFailure) appends the whole reply (lsid, cluster-time
    # signature, the command's body): the server's errmsg is what people read.
    details = getattr(exc, "details", None)
    if isinstance(details, dict) and details.get("errmsg"):
        return str(details["errmsg"])
    return str(exc)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter for transient errors.

    ``max_delay`` bounds the whole episode: long enough to ride out an election
    (seconds), short enough that a dead cluster surfaces as an error.
    """

    max_delay: float = 60.0
    initial: float = 0.05
    cap: float = 2.0

    def call(
        self,
        action: str,
        fn: Callable[[], T],
        transient: Callable[[BaseException], bool] = is_transient,
    ) -> T:
        """Run ``fn``; retry errors ``transient`` accepts; translate the rest into StreamQueueError."""
        from streamqueue.storage.runner import run  # the storage layer imports this module

        result: T = run(self.plan(action, lambda: once(Invoke(fn)), transient))
        return result

    def plan(
        self,
        action: str,
        attempt: Callable[[], Plan[T]],
        transient: Callable[[BaseException], bool] = is_transient,
    ) -> Plan[T]:
        """Run the plan ``attempt()`` makes, again after each transient error, as a plan.

        Full-jitter exponential waits (``initial`` doubling up to ``cap``);
        gives up once ``max_delay`` has passed since the first try. The one
        retry loop of both the sync and the async API.

        tenacity decides after each failure (its ``iter`` answers "sleep", or
        raises once the error is not transient or time is up) but never sleeps
        itself: the wait is yielded as ``Sleep``, which the sync runner sleeps
        and the async one awaits. A try that succeeds at once (nearly all of
        them) never asks tenacity, which would cost 8 us a plan.
        """
        retrying = _retrying(self, transient)
        started = time.monotonic()
        state: RetryCallState | None = None
        while True:
            try:
                return (yield from attempt())
            # DocumentTooLarge derives from bson's InvalidDocument, not PyMongoError.
            except (PyMongoError, DocumentTooLarge):
                failure = cast(_ExcInfo, sys.exc_info())
            if state is None:
                state = RetryCallState(retrying, fn=None, args=(), kwargs={"action": action})
                state.start_time = started  # max_delay counts from the first try
            state.set_exception(failure)
            if not retrying.statistics:
                retrying.begin()  # tenacity counts its waits there (per thread)
            try:
                decision = retrying.iter(state)
            except (PyMongoError, DocumentTooLarge) as exc:  # not transient, or out of time
                raise translate(exc, action) from exc
            # iter's "attempt" (what it answers a fresh try) is the loop's next round.
            assert isinstance(decision, DoSleep), decision
            state.prepare_for_next_attempt()
            yield Sleep(float(decision))


@functools.lru_cache(maxsize=64)
def _retrying(policy: RetryPolicy, transient: Callable[[BaseException], bool]) -> Retrying:
    """One tenacity controller per policy and predicate, shared by every plan: its
    decisions read only the plan's own ``RetryCallState`` (a fresh one cost 20 us a plan)."""
    # Only driver errors reach tenacity (see RetryPolicy.plan): any other error is a
    # bug and propagates from the attempt itself, untouched.
    return Retrying(retry=retry_if_exception(transient),
                    stop=stop_after_delay(policy.max_delay),
                    wait=wait_random_exponential(multiplier=policy.initial, max=policy.cap),
                    before_sleep=_log_retry, reraise=True)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    log.warning("%s failed (try %d), retrying: %s", state.kwargs["action"],
                state.attempt_number, exc)
