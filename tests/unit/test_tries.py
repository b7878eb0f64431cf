"""BoundedTries: when a retry must wait for an earlier try to be over on the server."""

from __future__ import annotations

import pytest
from pymongo import _csot
from pymongo.errors import AutoReconnect, NetworkTimeout, OperationFailure

from streamqueue.tries import WRITE_TIME_LIMIT, BoundedTries, time_limit
from tests.helpers import FakeClock


class Primary:
    def __init__(self) -> None:
        self.address: object = ("a", 1)

    def __call__(self) -> object:
        return self.address


def tries_with(clock: FakeClock, primary: Primary, slept: list[float],
               limit: float = 5.0) -> BoundedTries:
    return BoundedTries(limit, primary, sleep=slept.append, clock=clock)


def fail_once(tries: BoundedTries, exc: Exception) -> None:
    with pytest.raises(type(exc)), tries.bounded():
        raise exc


def test_the_first_try_is_not_a_retry() -> None:
    slept: list[float] = []
    tries = tries_with(FakeClock(), Primary(), slept)
    assert not tries.retrying()
    assert slept == []


def test_each_try_runs_under_the_client_side_timeout() -> None:
    tries = tries_with(FakeClock(), Primary(), [], limit=3.0)
    with tries.bounded():
        remaining = _csot.remaining()
        assert remaining is not None
        assert 0 < remaining <= 3.0
    assert _csot.remaining() is None


def test_a_broken_connection_on_the_same_primary_is_waited_out() -> None:
    clock, primary, slept = FakeClock(), Primary(), list[float]()
    tries = tries_with(clock, primary, slept, limit=5.0)
    fail_once(tries, AutoReconnect("connection reset"))
    clock.advance(1.5)
    assert tries.retrying()
    assert slept == [pytest.approx(3.5)]


def test_a_try_that_timed_out_is_already_over() -> None:
    clock, primary, slept = FakeClock(), Primary(), list[float]()
    tries = tries_with(clock, primary, slept, limit=5.0)
    fail_once(tries, NetworkTimeout("timed out"))
    clock.advance(5.0)  # the client-side timeout ran out with the server's limit
    assert tries.retrying()
    assert slept == [0.0]


def test_no_wait_after_a_failover_or_a_server_reply() -> None:
    clock, primary, slept = FakeClock(), Primary(), list[float]()
    tries = tries_with(clock, primary, slept)
    fail_once(tries, AutoReconnect("connection reset"))
    primary.address = ("b", 2)  # a late write on the old primary is rolled back
    assert tries.retrying()
    fail_once(tries, OperationFailure("not primary", code=10107))  # the server answered
    assert tries.retrying()
    assert slept == []


def test_time_limit_never_exceeds_the_clients_socket_timeout() -> None:
    assert time_limit(None) == WRITE_TIME_LIMIT
    assert time_limit(1.5) == 1.5
    assert time_limit(None, documents=1001) == pytest.approx(WRITE_TIME_LIMIT + 1.0)
