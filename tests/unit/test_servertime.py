"""ServerClock on hand-written hello replies and a hand-moved monotonic clock.

The hello callable stands in for the server the way a hand-built change event
does in test_event_due_in: the logic under test is pure arithmetic and locking.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from streamqueue.errors import StorageError
from streamqueue.servertime import ServerClock
from tests.helpers import FakeClock

SERVER = datetime(2030, 5, 17, 12, 0, 0, 250_000)  # naive UTC, as pymongo decodes by default
SERVER_UTC = SERVER.replace(tzinfo=timezone.utc)


class FakeServer:
    """Answers hello with its own time; each answer takes ``round_trip`` of the client's clock.

    Half the round trip passes before the server reads its clock, half after,
    as on a network: the true server time at arrival is localTime + half of it.
    """

    def __init__(self, clock: FakeClock, start: datetime = SERVER, round_trip: float = 0.0) -> None:
        self.clock = clock
        self.start = start
        self.started_at = clock()
        self.round_trip = round_trip
        self.calls = 0

    def true_time(self) -> datetime:
        moment = self.start + timedelta(seconds=self.clock() - self.started_at)
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)

    def __call__(self) -> Mapping[str, Any]:
        self.calls += 1
        self.clock.advance(self.round_trip / 2)
        # BSON dates are whole milliseconds: the server's reply is truncated.
        local = self.start + timedelta(seconds=self.clock() - self.started_at)
        local = local.replace(microsecond=local.microsecond // 1000 * 1000)
        self.clock.advance(self.round_trip / 2)
        return {"isWritablePrimary": True, "localTime": local}


def make(round_trip: float = 0.0, **options: Any) -> tuple[ServerClock, FakeServer, FakeClock]:
    clock = FakeClock()
    server = FakeServer(clock, round_trip=round_trip)
    return ServerClock(server, monotonic=clock, **options), server, clock


def test_no_command_until_the_first_use() -> None:
    server_clock, server, clock = make()
    clock.advance(3600)
    assert server.calls == 0
    assert server_clock.anchor is None


def test_the_estimate_is_local_time_plus_monotonic_time_since_the_reply() -> None:
    server_clock, server, clock = make()
    assert server_clock.now() == SERVER_UTC
    clock.advance(1.5)
    assert server_clock.now() == SERVER_UTC + timedelta(seconds=1.5)
    clock.advance(58)
    assert server_clock.now() == SERVER_UTC + timedelta(seconds=59.5)
    assert server.calls == 1


def test_anchored_when_the_reply_arrived_so_it_never_runs_ahead() -> None:
    # A slow hello: 400 ms there and back. Anchoring at sending (or half-way)
    # would put the estimate up to 200 ms past the server's true time.
    server_clock, server, clock = make(round_trip=0.4)
    first = server_clock.now()
    assert first <= server.true_time()
    # It errs low by what the reply spent on the way back (200 ms), no more.
    assert server.true_time() - first == timedelta(milliseconds=200)
    assert server_clock.anchor is not None
    assert server_clock.anchor.round_trip == pytest.approx(0.4)
    clock.advance(10)
    assert server_clock.now() <= server.true_time()
    assert server.true_time() - server_clock.now() == timedelta(milliseconds=200)


def test_whole_milliseconds_truncated_never_rounded_up() -> None:
    server_clock, _, clock = make()
    server_clock.now()
    clock.advance(0.0019)  # 1.9 ms
    assert server_clock.now() == SERVER_UTC + timedelta(milliseconds=1)
    clock.advance(0.0006)  # 2.5 ms
    assert server_clock.now() == SERVER_UTC + timedelta(milliseconds=2)


def test_refreshed_once_the_anchor_is_max_age_old() -> None:
    server_clock, server, clock = make(max_age=60.0)
    server_clock.now()
    clock.advance(59.9)
    server_clock.now()
    assert server.calls == 1
    clock.advance(0.1)
    server_clock.now()
    assert server.calls == 2
    anchor = server_clock.anchor
    assert anchor is not None and anchor.received == clock()


def test_a_refresh_follows_the_servers_clock_when_it_was_stepped() -> None:
    # The estimate trusts the server, not the old anchor: if the server's clock
    # is set back 10 s, the next anchor's estimate is 10 s lower too.
    server_clock, server, clock = make(max_age=5.0)
    server_clock.now()
    server.start -= timedelta(seconds=10)
    clock.advance(5.0)
    assert server_clock.now() == server.true_time()
    assert server_clock.now() == SERVER_UTC + timedelta(seconds=5) - timedelta(seconds=10)


def test_a_change_of_server_refreshes_at_once() -> None:
    primary = ["a:27017"]
    server_clock, server, clock = make(server_id=lambda: primary[0])
    server_clock.now()
    clock.advance(1)
    server_clock.now()
    assert server.calls == 1
    primary[0] = "b:27017"  # a failover: the new primary's clock judges the queue
    server_clock.now()
    assert server.calls == 2
    assert server_clock.anchor is not None and server_clock.anchor.server == "b:27017"
    server_clock.now()
    assert server.calls == 2


def test_cached_never_asks_and_is_none_when_now_would() -> None:
    server_clock, server, clock = make(max_age=60.0)
    assert server_clock.cached() is None  # no anchor yet
    assert server.calls == 0
    server_clock.now()
    clock.advance(30)
    assert server_clock.cached() == server_clock.now() == SERVER_UTC + timedelta(seconds=30)
    clock.advance(30)
    assert server_clock.cached() is None  # 60 s old: now() would ask
    assert server.calls == 1


def test_refresh_asks_whatever_the_age() -> None:
    server_clock, server, _ = make()
    server_clock.now()
    server_clock.refresh()
    assert server.calls == 2


@pytest.mark.parametrize(
    "local_time",
    [SERVER, SERVER_UTC, SERVER_UTC.astimezone(timezone(timedelta(hours=-5)))],
    ids=["naive-utc", "aware-utc", "aware-other-zone"],
)
def test_naive_and_aware_replies_give_the_same_utc_time(local_time: datetime) -> None:
    server_clock = ServerClock(lambda: {"localTime": local_time}, monotonic=FakeClock())
    now = server_clock.now()
    assert now == SERVER_UTC
    assert now.tzinfo == timezone.utc


@pytest.mark.parametrize("reply", [{}, {"localTime": None}, {"localTime": "2030-05-17"}],
                         ids=["missing", "null", "string"])
def test_a_reply_without_local_time_is_an_error(reply: Mapping[str, Any]) -> None:
    server_clock = ServerClock(lambda: reply, monotonic=FakeClock())
    with pytest.raises(StorageError, match="localTime"):
        server_clock.now()
    assert server_clock.anchor is None


def test_a_failed_hello_keeps_the_old_anchor_and_is_tried_again() -> None:
    clock = FakeClock()
    server = FakeServer(clock)
    failing = [False]

    def hello() -> Mapping[str, Any]:
        if failing[0]:
            raise ConnectionError("server unreachable")
        return server()

    server_clock = ServerClock(hello, monotonic=clock, max_age=10.0)
    server_clock.now()
    kept = server_clock.anchor
    failing[0] = True
    clock.advance(10)
    with pytest.raises(ConnectionError):
        server_clock.now()
    assert server_clock.anchor is kept
    failing[0] = False
    assert server_clock.now() == server.true_time()
    assert server.calls == 2


def test_max_age_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_age"):
        ServerClock(lambda: {"localTime": SERVER}, max_age=0)


def test_the_wall_clock_is_never_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # With the real monotonic clock: time.time() would be the easy mistake.
    calls = [0]

    def hello() -> Mapping[str, Any]:
        calls[0] += 1
        return {"localTime": SERVER}

    server_clock = ServerClock(hello, max_age=0.05)

    def wall_clock() -> float:
        raise AssertionError("ServerClock read the wall clock")

    with monkeypatch.context() as patch:
        patch.setattr(time, "time", wall_clock)
        patch.setattr(time, "time_ns", wall_clock)
        first = server_clock.now()
        time.sleep(0.06)
        second = server_clock.now()  # refreshed: the anchor was older than max_age
    assert calls[0] == 2
    assert first >= SERVER_UTC and second >= SERVER_UTC
    assert second - SERVER_UTC < timedelta(seconds=1)


def test_threads_meeting_a_stale_anchor_send_one_hello() -> None:
    # Real threads and the real monotonic clock: the first thread's hello is
    # slow, so every other thread finds the anchor missing while it runs.
    calls = [0]
    lock = threading.Lock()

    def slow_hello() -> Mapping[str, Any]:
        with lock:
            calls[0] += 1
        time.sleep(0.2)
        return {"localTime": SERVER}

    server_clock = ServerClock(slow_hello)
    start = threading.Barrier(8)
    results: list[datetime] = []

    def use() -> None:
        start.wait()
        moment = server_clock.now()
        with lock:
            results.append(moment)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert calls[0] == 1
    assert len(results) == 8
    # Every thread used the one anchor: none is ahead of what it could know.
    assert all(SERVER_UTC <= moment < SERVER_UTC + timedelta(seconds=1) for moment in results)
