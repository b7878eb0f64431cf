"""Which driver errors are retried, and what callers see: pymongo exception objects, no server."""

from __future__ import annotations

import pytest
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConfigurationError,
    ConnectionFailure,
    CursorNotFound,
    DocumentTooLarge,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WriteConcernError,
    WriteError,
    WTimeoutError,
)

from streamqueue.errors import (
    InvalidJob,
    PermissionDenied,
    QueueUnavailable,
    StorageError,
    StreamQueueError,
)
from streamqueue.plan import Call, Plan, Sleep, once, step
from streamqueue.retry import RetryPolicy, is_transient, is_transient_bounded, translate

# A policy that retries quickly, so the unit tests take milliseconds.
FAST = RetryPolicy(max_delay=5.0, initial=0.001, cap=0.002)


def labelled(exc: PyMongoError, *labels: str) -> PyMongoError:
    for label in labels:
        exc._add_error_label(label)
    return exc


# -- is_transient ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionFailure("connection closed"),
        AutoReconnect("reconnecting"),
        NetworkTimeout("timed out"),
        NotPrimaryError("not primary", {"code": 10107}),
        ServerSelectionTimeoutError("no primary"),
        labelled(OperationFailure("interrupted at shutdown", 11600), "RetryableWriteError"),
        labelled(OperationFailure("write conflict", 112), "TransientTransactionError"),
        labelled(WriteConcernError("primary stepped down", 189), "RetryableWriteError"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_transient_errors_are_retried(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        DuplicateKeyError("E11000 duplicate key", 11000),
        labelled(DuplicateKeyError("E11000 duplicate key", 11000), "RetryableWriteError"),
        WriteError("document failed validation", 121),
        labelled(WriteError("write error", 2), "TransientTransactionError"),
        ExecutionTimeout("operation exceeded time limit", 50),
        labelled(ExecutionTimeout("operation exceeded time limit", 50), "RetryableWriteError"),
        DocumentTooLarge("BSON document too large"),
        OperationFailure("not authorized", 13),
        OperationFailure("bad value", 2),
        WTimeoutError("waiting for replication timed out", 64),
        CursorNotFound("cursor id not found", 43),
        ConfigurationError("bad uri"),
        ValueError("not a driver error"),
        KeyboardInterrupt(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_permanent_errors_are_not_retried(exc: BaseException) -> None:
    assert not is_transient(exc)


# -- translate ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionFailure("gone"), QueueUnavailable),
        (ServerSelectionTimeoutError("no primary"), QueueUnavailable),
        (NetworkTimeout("slow"), QueueUnavailable),
        (OperationFailure("not authorized on db", 13), PermissionDenied),
        (OperationFailure("auth failed", 18), PermissionDenied),
        (OperationFailure("user is not allowed", 8000), PermissionDenied),
        (OperationFailure("something else", 2), StorageError),
        (DuplicateKeyError("E11000", 11000), StorageError),
        (ExecutionTimeout("too slow", 50), StorageError),
        (ConfigurationError("bad option"), StorageError),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.__name__,
)
def test_translate_maps_driver_errors_to_queue_errors(
    exc: PyMongoError, expected: type[StreamQueueError]
) -> None:
    translated = translate(exc, "claim on db.q")
    assert type(translated) is expected
    assert isinstance(translated, StreamQueueError)
    # The message names the action and keeps the driver's text.
    assert "claim on db.q" in str(translated)
    assert str(exc) in str(translated)


def test_translate_document_too_large_is_invalid_job() -> None:
    translated = translate(DocumentTooLarge("BSON document too large"), "enqueue")
    assert isinstance(translated, InvalidJob)
    assert isinstance(translated, ValueError)


# -- RetryPolicy.call ----------------------------------------------------------------------


def test_call_returns_the_result_without_retrying() -> None:
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        return "ok"

    assert FAST.call("op", fn) == "ok"
    assert calls == [1]


def test_call_retries_transient_errors_until_success(caplog: pytest.LogCaptureFixture) -> None:
    failures = [AutoReconnect("blip"), NotPrimaryError("stepped down")]

    def fn() -> int:
        if failures:
            raise failures.pop(0)
        return 7

    assert FAST.call("claim", fn) == 7
    assert failures == []
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2
    assert "claim failed (try 1)" in retries[0] and "claim failed (try 2)" in retries[1]


def test_call_does_not_retry_a_permanent_error_and_keeps_the_cause() -> None:
    calls: list[int] = []
    original = DuplicateKeyError("E11000 duplicate key", 11000)

    def fn() -> None:
        calls.append(1)
        raise original

    with pytest.raises(StorageError) as caught:
        FAST.call("enqueue", fn)
    assert calls == [1]
    assert caught.value.__cause__ is original


def test_call_gives_up_after_max_delay_as_queue_unavailable() -> None:
    policy = RetryPolicy(max_delay=0.05, initial=0.001, cap=0.005)
    calls: list[int] = []

    def fn() -> None:
        calls.append(1)
        raise ServerSelectionTimeoutError("no primary")

    with pytest.raises(QueueUnavailable):
        policy.call("claim", fn)
    assert len(calls) >= 2


def test_call_translates_document_too_large() -> None:
    # DocumentTooLarge derives from bson's InvalidDocument, not PyMongoError: it
    # must still reach callers as a StreamQueueError (InvalidJob, a ValueError).
    calls: list[int] = []

    def fn() -> None:
        calls.append(1)
        raise DocumentTooLarge("BSON document too large (17000000 bytes)")

    with pytest.raises(InvalidJob) as caught:
        FAST.call("enqueue", fn)
    assert calls == [1]
    assert isinstance(caught.value.__cause__, DocumentTooLarge)


def test_call_lets_non_driver_errors_through_untouched() -> None:
    def fn() -> None:
        raise KeyError("bug in the callback")

    with pytest.raises(KeyError):
        FAST.call("op", fn)


@pytest.mark.parametrize("code", [189, 10107, 11602, 91])
def test_a_write_stopped_by_an_election_is_retried(code: int) -> None:
    # Multi-document writes get these as per-document errors the driver does
    # not retry itself; every streamqueue write is safe to try again.
    assert is_transient(WriteError("Not primary while writing", code))


def test_other_write_errors_are_not_retried() -> None:
    assert not is_transient(WriteError("Document failed validation", 121))


def test_an_enqueue_stopped_by_an_election_is_retried() -> None:
    stopped = BulkWriteError({"writeErrors": [
        {"index": 0, "code": 11000, "errmsg": "dup"},
        {"index": 1, "code": 189, "errmsg": "Not primary while writing"},
    ]})
    assert is_transient(stopped)


def test_an_enqueue_that_failed_for_good_is_not_retried() -> None:
    assert not is_transient(BulkWriteError({"writeErrors": [
        {"index": 0, "code": 189, "errmsg": "Not primary"},
        {"index": 1, "code": 121, "errmsg": "Document failed validation"},
    ]}))
    assert not is_transient(BulkWriteError({"writeErrors": [
        {"index": 0, "code": 11000, "errmsg": "dup"}]}))


def test_a_bulk_write_whose_majority_wait_an_election_cut_short_is_transient() -> None:
    # insert_many written, but the wait for majority was interrupted: try again
    # (the retry meets its own documents as duplicate _ids, which means done).
    assert is_transient(BulkWriteError({"writeErrors": [], "writeConcernErrors": [
        {"code": 11602, "errmsg": "operation was interrupted"}]}))
    assert is_transient(BulkWriteError({"writeErrors": [
        {"index": 0, "code": 11000, "errmsg": "dup"}], "writeConcernErrors": [
        {"code": 189, "errmsg": "Primary stepped down while waiting for replication"}]}))
    assert not is_transient(BulkWriteError({"writeErrors": [], "writeConcernErrors": [
        {"code": 64, "errmsg": "waiting for replication timed out"}]}))


@pytest.mark.parametrize(("exc", "bounded", "plain"), [
    (ExecutionTimeout("operation exceeded time limit", 50), True, False),
    (WriteConcernError("operation exceeded time limit", 50), True, False),
    (WriteConcernError("waiting for replication timed out", 64), True, False),
    (WriteConcernError("unknown replica set tag", 79), False, False),
    (DuplicateKeyError("E11000", 11000), False, False),
    (AutoReconnect("connection reset"), True, True),
])
def test_a_time_limit_that_ran_out_is_transient_for_bounded_tries_only(
    exc: BaseException, bounded: bool, plain: bool
) -> None:
    # Claims and enqueues run under a server-side limit and find an earlier
    # try's work again; other writes do not, so for them it stays an error.
    assert is_transient_bounded(exc) is bounded
    assert is_transient(exc) is plain


# -- RetryPolicy.plan: the waits are the runner's ------------------------------------------


def test_the_plan_yields_its_waits_full_jitter_doubling_up_to_the_cap() -> None:
    """No sleep inside the policy: each wait is a ``Sleep`` the runner (sync or async)
    carries out, drawn from [0, min(cap, initial * 2**(try - 1))]."""
    policy = RetryPolicy(max_delay=60.0, initial=0.05, cap=0.3)
    tries = 0

    def attempt() -> Plan[str]:
        nonlocal tries
        tries += 1
        result: str = yield Call(None, f"try {tries}")
        return result

    plan = policy.plan("claim", attempt)
    done, op = step(plan, None, None)
    waits: list[float] = []
    for _ in range(6):
        assert not done and isinstance(op, Call)
        done, op = step(plan, None, AutoReconnect("blip"))
        assert not done and isinstance(op, Sleep)
        waits.append(op.seconds)
        done, op = step(plan, None, None)
    assert not done and isinstance(op, Call)
    assert step(plan, "claimed", None) == (True, "claimed")
    bounds = [min(0.3, 0.05 * 2 ** n) for n in range(6)]
    assert all(0 <= wait <= bound for wait, bound in zip(waits, bounds, strict=True)), waits
    assert tries == 7


def test_the_plan_gives_up_by_the_clock_not_by_its_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """``max_delay`` counts from the first try by the monotonic clock: a runner that has
    not carried out the waits yet (or a slow attempt) still ends the episode on time."""
    policy = RetryPolicy(max_delay=10.0, initial=0.05, cap=0.3)
    now = [1000.0]
    monkeypatch.setattr("time.monotonic", lambda: now[0])
    plan = policy.plan("claim", lambda: once(Call(None, "find_one_and_update")))
    assert isinstance(step(plan, None, None)[1], Call)
    now[0] += 9.0
    assert isinstance(step(plan, None, AutoReconnect("blip"))[1], Sleep)
    assert isinstance(step(plan, None, None)[1], Call)
    now[0] += 1.0
    with pytest.raises(QueueUnavailable) as caught:
        step(plan, None, AutoReconnect("still down"))
    assert str(caught.value.__cause__) == "still down"
