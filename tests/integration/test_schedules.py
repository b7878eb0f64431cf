"""Schedules against the real replica set: the API, firing by racing schedulers, misfire
policies after a gap, and the change stream that makes a new schedule take effect at once.

Each test runs with schedules defined, listed and removed through ``Queue`` and through
``AsyncQueue`` (the ``api`` fixture); the schedulers that fire them are the threaded
``Scheduler`` in both cases (there is no async one)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pymongo.collection import Collection

from streamqueue import Queue
from streamqueue.hooks import Hooks
from streamqueue.scheduler import Scheduler
from streamqueue.storage import Document, JobStore
from tests.helpers import stays_false, wait_until
from tests.integration.conftest import API_PARAMS, TEST_MAX_AWAIT

SchedulerFactory = Callable[..., Scheduler]


@pytest.fixture(params=API_PARAMS)
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_scheduler(collection: Collection[Document]) -> Iterator[SchedulerFactory]:
    made: list[Scheduler] = []

    def make(**options: Any) -> Scheduler:
        # Sync whatever the test's API: the Scheduler runs on threads.
        queue = Queue(collection, hooks=options.pop("hooks", None), max_await=TEST_MAX_AWAIT)
        scheduler = Scheduler(queue, max_await=1.0, **options)
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.stop()
        scheduler.queue.close()


def server_now(queue: Queue) -> datetime:
    return JobStore(queue.collection).server_now().replace(tzinfo=timezone.utc)


def fired(collection: Collection[Document], name: str = "tick") -> list[Document]:
    return sorted(collection.find({"schedule": name}), key=lambda doc: doc["tick"])


def wait_for_server_time(queue: Queue, moment: datetime) -> None:
    """Until the server's clock reaches ``moment`` (bounded by the test's own timeout)."""
    assert wait_until(lambda: server_now(queue) >= moment, timeout=60, interval=0.05)


class Recorder(Hooks):
    def __init__(self) -> None:
        self.fired: list[tuple[str, float]] = []
        self.missed: list[tuple[str, int]] = []

    def tick_fired(self, queue: str, schedule: str, lateness: float) -> None:
        self.fired.append((schedule, lateness))

    def ticks_missed(self, queue: str, schedule: str, count: int) -> None:
        self.missed.append((schedule, count))


def test_schedule_is_idempotent_and_listed(queue: Queue) -> None:
    queue.schedule("nightly", cron="0 3 * * *", timezone="Europe/Berlin", payload={"r": 1})
    [info] = queue.schedules()
    assert (info.name, info.cron, info.every, info.timezone, info.misfire) == (
        "nightly", "0 3 * * *", None, "Europe/Berlin", "latest")
    assert info.next_at is not None and info.next_at.astimezone(
        timezone(timedelta(hours=1))).hour in (2, 3)  # 03:00 Berlin, in CET or CEST
    assert info.last_fired_at is None and info.fired == 0
    queue.schedule("nightly", cron="0 3 * * *", timezone="Europe/Berlin", payload={"r": 1})
    assert queue.schedules() == [info]
    stored = queue.collection.database[f"{queue.name}.schedules"].find_one({"_id": "nightly"})
    assert stored is not None and isinstance(stored["updated_at"], datetime)
    queue.schedule("nightly", cron="0 4 * * *", timezone="Europe/Berlin", payload={"r": 1})
    [changed] = queue.schedules()
    assert changed.revision != info.revision and changed.next_at != info.next_at
    assert queue.unschedule("nightly") is True
    assert queue.unschedule("nightly") is False
    assert queue.schedules() == []


@pytest.mark.parametrize(("options", "message"), [
    ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"cron": "99 * * * *"}, "bad cron expression"),
    ({"every": 0.5}, "from 1 second"),
    ({}, "exactly one of"),
    ({"cron": "@hourly", "every": 10}, "exactly one of"),
])
def test_bad_input_writes_nothing(queue: Queue, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        queue.schedule("bad", **options)
    database = queue.collection.database
    assert f"{queue.name}.schedules" not in database.list_collection_names()


def test_three_schedulers_fire_each_tick_exactly_once(
        queue: Queue, make_scheduler: SchedulerFactory) -> None:
    recorder = Recorder()
    schedulers = [make_scheduler(hooks=recorder) for _ in range(3)]
    queue.schedule("tick", every=1, payload={"n": 1})
    for scheduler in schedulers:
        scheduler.start()
    assert wait_until(lambda: len(fired(queue.collection)) >= 5, timeout=30)
    for scheduler in schedulers:
        scheduler.stop()
    jobs = fired(queue.collection)
    ticks = [doc["tick"] for doc in jobs]
    assert len(set(ticks)) == len(ticks)
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(ticks))
    assert all(doc["payload"] == {"n": 1} and doc["key"].startswith("schedule:tick@")
               for doc in jobs)
    assert sum(s.fired for s in schedulers) == len(jobs) == len(recorder.fired)
    [info] = queue.schedules()
    assert info.fired == len(jobs) and info.last_tick == ticks[-1].replace(tzinfo=timezone.utc)
    assert info.last_job_id == jobs[-1]["_id"]


def test_a_fired_tick_is_not_fired_again_after_its_job_is_done(
        queue: Queue, make_scheduler: SchedulerFactory) -> None:
    """The unique key frees when the job finishes: the database's CAS on next_at still holds."""
    queue.schedule("tick", every=1)
    schedulers = [make_scheduler() for _ in range(3)]
    for scheduler in schedulers:
        scheduler.start()
    done: list[datetime] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        job = queue.next(timeout=2)
        if job is not None:
            done.append(job.data["tick"])
            job.complete()
    assert len(done) >= 3 and len(set(done)) == len(done)
    assert queue.collection.count_documents({"schedule": "tick"}) <= 1  # at most one not yet taken


def test_a_new_schedule_takes_effect_at_once_through_the_change_stream(
        queue: Queue, make_scheduler: SchedulerFactory) -> None:
    scheduler = make_scheduler(sweep=600.0)  # without the stream it would wait ten minutes
    scheduler.start()
    assert stays_false(lambda: scheduler.passes > 1, 0.5)  # idle: no polling
    queue.schedule("tick", every=1)
    assert wait_until(lambda: fired(queue.collection), timeout=5)


def test_unschedule_stops_the_fires(queue: Queue, make_scheduler: SchedulerFactory) -> None:
    queue.schedule("tick", every=1)
    make_scheduler().start()
    assert wait_until(lambda: fired(queue.collection), timeout=5)
    queue.unschedule("tick")
    count = len(fired(queue.collection))
    # A fire already under way may commit; after it, nothing.
    assert stays_false(lambda: len(fired(queue.collection)) > count + 1, 2.5)


def start_after_gap(queue: Queue, make_scheduler: SchedulerFactory, gap: float,
                    **options: Any) -> tuple[datetime, Recorder]:
    """A schedule starting 1 s from now on the server, its first scheduler started ``gap``
    seconds after that: every tick in between was missed."""
    start = server_now(queue).replace(microsecond=0) + timedelta(seconds=2)
    queue.schedule("tick", start_at=start, **options)
    wait_for_server_time(queue, start + timedelta(seconds=gap))
    recorder = Recorder()
    make_scheduler(hooks=recorder).start()
    return start, recorder


def test_misfire_latest_fires_only_the_most_recent_missed_tick(
        queue: Queue, make_scheduler: SchedulerFactory) -> None:
    start, recorder = start_after_gap(queue, make_scheduler, 4.5, every=1, misfire="latest")
    assert wait_until(lambda: fired(queue.collection), timeout=5)
    first = fired(queue.collection)[0]["tick"].replace(tzinfo=timezone.utc)
    assert first >= start + timedelta(seconds=4)
    # The hook runs after the fire's commit, which the test may see first.
    assert wait_until(lambda: recorder.missed, timeout=5)
    assert recorder.missed[0][1] >= 4
    [info] = queue.schedules()
    assert info.missed >= 4


def test_misfire_skip_fires_none_and_waits_for_the_next(
        queue: Queue, make_scheduler: SchedulerFactory) -> None:
    start, recorder = start_after_gap(queue, make_scheduler, 2.5, every=10, misfire="skip")
    assert wait_until(lambda: recorder.missed, timeout=5)
    assert recorder.missed == [("tick", 1)]
    assert fired(queue.collection) == []
    [info] = queue.schedules()
    assert info.next_at == start + timedelta(seconds=10) and info.missed == 1


def test_misfire_all_fires_the_missed_ticks_up_to_catch_up(
        queue: Queue, make_scheduler: SchedulerFactory) -> None:
    start, recorder = start_after_gap(queue, make_scheduler, 5.5, every=1, misfire="all",
                                      catch_up=3)
    assert wait_until(lambda: len(fired(queue.collection)) >= 3, timeout=5)
    ticks = [doc["tick"].replace(tzinfo=timezone.utc) for doc in fired(queue.collection)]
    # t0..t5 were due at the restart: the three most recent fire, the rest are missed.
    assert ticks[:3] == [start + timedelta(seconds=s) for s in (3, 4, 5)]
    assert wait_until(lambda: recorder.missed, timeout=5)  # reported after the commit
    assert recorder.missed[0] == ("tick", 3)


def test_end_at_ends_the_schedule(queue: Queue, make_scheduler: SchedulerFactory) -> None:
    start = server_now(queue).replace(microsecond=0) + timedelta(seconds=1)
    queue.schedule("tick", every=1, start_at=start, end_at=start + timedelta(seconds=1))
    make_scheduler().start()
    assert wait_until(lambda: queue.schedules()[0].next_at is None, timeout=10)
    ticks = [doc["tick"].replace(tzinfo=timezone.utc) for doc in fired(queue.collection)]
    assert ticks == [start, start + timedelta(seconds=1)]
