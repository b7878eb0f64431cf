"""The fleet (issue 16): N Queue objects of one slot each on one queue claim each job once.

Each consumer is a ``Queue`` on a client of its own (as a process would be),
looping ``next()`` and completing what it gets; a producer trickles jobs in.
Claims are counted on the server's side of each client (findAndModify).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient
from pymongo.collection import Collection

from streamqueue import Queue
from streamqueue.aio import AsyncQueue
from streamqueue.fleet import HEARTBEAT, PAUSE_AFTER, member_id
from streamqueue.storage import Document
from streamqueue.storage import fleet as fleet_store
from streamqueue.storage.fleet import FLEET_PIPELINE
from streamqueue.storage.runner import run
from tests.helpers import CommandCounter, on, wait_until

TRICKLE_JOBS = 30
TRICKLE_GAP = 0.04


class Consumer:
    """One "process": its own client, its own Queue, a thread claiming and completing."""

    def __init__(self, uri: str, collection: Collection[Document], fleet: int | None,
                 wait: float = 0.3, **options: Any) -> None:
        self.counter = CommandCounter()
        self.client: MongoClient[Document] = MongoClient(uri, event_listeners=[self.counter])
        self.queue = Queue(on(self.client, collection), fleet=fleet, max_await=1.0, **options)
        self.wait = wait  # each next()'s timeout: its claim before waiting is a poll
        self.got: list[tuple[Any, float]] = []  # (job id, monotonic claim time)
        self.gate = threading.Event()
        self.gate.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> Consumer:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self.queue.next(timeout=self.wait)
            if job is None:
                continue
            self.got.append((job.id, time.monotonic()))
            self.gate.wait(30)
            job.complete()

    def claims(self, name: str) -> int:
        return self.counter.count("findAndModify", name)

    def close(self) -> None:
        self._stop.set()
        self.gate.set()
        self.queue.board.notify_all()
        self._thread.join(5)
        self.queue.close()
        self.client.close()


@pytest.fixture
def consumers(mongo_uri: str, collection: Collection[Document]) -> Iterator[Any]:
    made: list[Consumer] = []

    def make(count: int, fleet: int | None, **options: Any) -> list[Consumer]:
        group = [Consumer(mongo_uri, collection, fleet, **options) for _ in range(count)]
        made.extend(group)
        return group

    yield make
    closers = [threading.Thread(target=c.close) for c in made]
    for closer in closers:
        closer.start()
    for closer in closers:
        closer.join()


def _members_joined(collection: Collection[Document], count: int) -> bool:
    return collection.count_documents({"state": "member"}) >= count


def _trickle(producer: Queue, jobs: int, gap: float) -> dict[Any, float]:
    put_at = {}
    for index in range(jobs):
        put_at[producer.put({"n": index})] = time.monotonic()
        time.sleep(gap)
    return put_at


def _taken(group: list[Consumer], job: Any) -> bool:
    return any(job == got for c in group for got, _ in c.got)


def _all_claimed(group: list[Consumer], jobs: int) -> bool:
    return sum(len(c.got) for c in group) >= jobs


@pytest.mark.parametrize("fleet", [1, None], ids=["fleet", "baseline"])
def test_four_consumers_claim_each_trickled_job_about_once(
    consumers: Any, collection: Collection[Document], mongo_client: MongoClient[Document],
    fleet: int | None,
) -> None:
    producer = Queue(collection)
    producer.store.ensure_indexes()
    group = consumers(4, fleet)
    for consumer in group:
        consumer.start()
    if fleet is not None:
        assert wait_until(lambda: _members_joined(collection, 4), 15)
    # Every consumer has made its first (empty) claim and waits.
    assert wait_until(lambda: all(c.claims(collection.name) >= 1 for c in group), 15)
    time.sleep(0.5)
    before = sum(c.claims(collection.name) for c in group)
    _trickle(producer, TRICKLE_JOBS, TRICKLE_GAP)
    assert wait_until(lambda: _all_claimed(group, TRICKLE_JOBS), 20)
    time.sleep(0.3)  # claims still in flight count too
    claims = sum(c.claims(collection.name) for c in group) - before
    per_job = claims / TRICKLE_JOBS
    print(f"\n4 consumers x 1 slot, fleet={fleet}: {per_job:.2f} claims/job")
    assert len({job for c in group for job, _ in c.got}) == TRICKLE_JOBS
    if fleet is None:
        assert per_job > 2.0  # the herd this design removes (keeps the check above honest)
    else:
        assert per_job <= 1.5


def test_a_claim_reaches_the_fleet_stream_as_an_update_naming_the_claimer(
    collection: Collection[Document],
) -> None:
    queue = Queue(collection, consumer_id="claimer")
    queue.store.ensure_indexes()
    with collection.watch(FLEET_PIPELINE) as stream:
        queue.put({"a": 1})
        job = queue.next()
        assert job is not None
        job.complete()
        events = [stream.next() for _ in range(3)]
    assert [e["operationType"] for e in events] == ["insert", "update", "delete"]
    fields = events[1]["updateDescription"]["updatedFields"]
    assert fields["state"] == "locked" and fields["consumer_id"] == "claimer"


def test_a_job_put_while_every_slot_is_busy_is_claimed_when_one_frees(
    consumers: Any, collection: Collection[Document],
) -> None:
    producer = Queue(collection, sweep_interval=60)
    producer.store.ensure_indexes()
    group = consumers(3, 1, sweep_interval=60)
    for consumer in group:
        consumer.gate.clear()  # hold each job until told
        consumer.start()
    assert wait_until(lambda: _members_joined(collection, 3), 15)
    assert wait_until(lambda: all(c.claims(collection.name) >= 1 for c in group), 15)
    for index in range(3):
        producer.put({"busy": index})
    assert wait_until(lambda: _all_claimed(group, 3), 10)
    late = producer.put({"late": True})
    time.sleep(0.5)  # every view has seen it, nobody can take it
    assert (collection.find_one({"_id": late}) or {}).get("state") == "ready"
    freed = group[1]
    freed.gate.set()
    freed_at = time.monotonic()
    assert wait_until(lambda: any(job == late for c in group for job, _ in c.got), 10)
    taken_at = next(t for c in group for job, t in c.got if job == late)
    print(f"\nclaimed {taken_at - freed_at:.3f}s after a slot freed")
    assert taken_at - freed_at < 2.0


def test_a_member_that_never_claims_delays_its_jobs_by_about_its_patience(
    consumers: Any, collection: Collection[Document], mongo_client: MongoClient[Document],
) -> None:
    """A SIGKILLed member's document lives on until it expires: its share waits patience."""
    producer = Queue(collection, sweep_interval=60)
    producer.store.ensure_indexes()
    ghost_until = datetime.now(timezone.utc) + timedelta(minutes=5)
    collection.insert_one({"_id": member_id("ghost"), "state": "member", "slots": 1,
                           "expires_at": ghost_until})
    # Long next() timeouts: a claim before each wait would find the job by polling.
    group = consumers(2, 1, wait=5.0, sweep_interval=60, fleet_patience=0.1)
    for consumer in group:
        consumer.start()
    assert wait_until(lambda: _members_joined(collection, 3), 15)
    assert wait_until(lambda: all(c.claims(collection.name) >= 1 for c in group), 15)
    time.sleep(0.3)
    waits = []
    for index in range(12):  # one at a time: nothing but patience can take the ghost's share
        put_at = time.monotonic()
        job = producer.put({"n": index})
        assert wait_until(partial(_taken, group, job), 5)
        waits.append(next(t for c in group for g, t in c.got if g == job) - put_at)
    waits.sort()
    print(f"\nwith a ghost member: enqueue-to-claim max {waits[-1]:.3f}s, "
          f"median {waits[len(waits) // 2]:.3f}s")
    assert waits[-1] < 1.0  # patience (0.1 s) per slot skipped, not the 5 s wait or 60 s sweep


def test_member_documents_are_no_jobs(collection: Collection[Document]) -> None:
    queue = Queue(collection, fleet=2, max_await=1.0)
    try:
        queue.put({"a": 1})
        assert queue.next(timeout=0.5) is not None
        assert wait_until(lambda: _members_joined(collection, 1), 10)
        stats = queue.stats()
        assert stats["total"] == 1 and stats["locked"] == 1
        assert [info.payload for info in queue.jobs()] == [{"a": 1}]
        assert queue.reap() == 0
    finally:
        queue.close()
    assert wait_until(lambda: collection.count_documents({"state": "member"}) == 0, 10)


def test_an_idle_fleet_member_costs_at_most_one_server_op_per_second(
    consumers: Any, collection: Collection[Document],
) -> None:
    producer = Queue(collection)
    producer.store.ensure_indexes()
    (idle,) = consumers(1, 1, sweep_interval=60)
    idle.queue = Queue(on(idle.client, collection), fleet=1, max_await=5.0, sweep_interval=60)
    idle.start()
    assert wait_until(lambda: _members_joined(collection, 1), 15)
    time.sleep(1.0)
    idle.counter.reset()
    window = HEARTBEAT + 0.5  # at least one heartbeat (a write and a sweep of the dead) in it
    time.sleep(window)
    ops = len(idle.counter.commands)
    print(f"\nidle fleet member: {ops} commands in {window:g} s: "
          f"{sorted(name for name, _ in idle.counter.commands)}")
    assert ops / window <= 1.0


def test_async_members_claim_each_trickled_job_about_once(
    mongo_uri: str, collection: Collection[Document],
) -> None:
    """The asyncio API shares the view and its wiring: three AsyncQueue members on one loop."""
    jobs = 20

    async def member(queue: AsyncQueue, got: list[Any], stop: asyncio.Event) -> None:
        while not stop.is_set():
            job = await queue.next(timeout=0.5)
            if job is not None:
                got.append(job.id)
                await job.complete()

    async def scenario() -> tuple[int, int]:
        counters = [CommandCounter() for _ in range(3)]
        clients: list[AsyncMongoClient[Document]] = [
            AsyncMongoClient(mongo_uri, event_listeners=[c]) for c in counters]
        queues = [AsyncQueue(c[collection.database.name][collection.name], fleet=1,
                             max_await=1.0) for c in clients]
        got: list[Any] = []
        stop = asyncio.Event()
        tasks = [asyncio.create_task(member(q, got, stop)) for q in queues]
        producer = Queue(collection)
        producer.store.ensure_indexes()
        deadline = time.monotonic() + 15
        while (not all(q.watcher.fleet is not None and q.watcher.fleet.view.known
                       for q in queues) and time.monotonic() < deadline):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        before = sum(c.count("findAndModify", collection.name) for c in counters)
        for index in range(jobs):
            await asyncio.to_thread(producer.put, {"n": index})
            await asyncio.sleep(TRICKLE_GAP)
        while len(got) < jobs and time.monotonic() < deadline + 20:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        claims = sum(c.count("findAndModify", collection.name) for c in counters) - before
        stop.set()
        await asyncio.gather(*tasks)
        for queue in queues:
            await queue.close()
        for client in clients:
            await client.close()
        producer.close()
        return len(set(got)), claims

    delivered, claims = asyncio.run(scenario())
    print(f"\n3 async members: {claims / jobs:.2f} claims/job")
    assert delivered == jobs
    assert claims / jobs <= 1.5


def test_delayed_jobs_fall_due_by_the_server_clock_in_a_fleet(
    consumers: Any, collection: Collection[Document],
) -> None:
    producer = Queue(collection, sweep_interval=60)
    producer.store.ensure_indexes()
    group = consumers(3, 1, wait=2.0, sweep_interval=60)
    for consumer in group:
        consumer.start()
    assert wait_until(lambda: _members_joined(collection, 3), 15)
    assert wait_until(lambda: all(c.claims(collection.name) >= 1 for c in group), 15)
    put_at = time.monotonic()
    delayed = [producer.put({"later": i}, delay=0.5 + 0.3 * i) for i in range(3)]
    assert wait_until(lambda: all(_taken(group, job) for job in delayed), 10)
    for index, job in enumerate(delayed):
        taken_at = next(t for c in group for got, t in c.got if got == job)
        assert 0.5 + 0.3 * index - 0.05 <= taken_at - put_at < 0.5 + 0.3 * index + 2.0


def test_pause_and_resume_hold_and_release_a_fleet(
    consumers: Any, collection: Collection[Document],
) -> None:
    producer = Queue(collection, sweep_interval=60)
    producer.store.ensure_indexes()
    group = consumers(2, 1, wait=2.0, sweep_interval=60)
    for consumer in group:
        consumer.start()
    assert wait_until(lambda: _members_joined(collection, 2), 15)
    assert wait_until(lambda: all(c.claims(collection.name) >= 1 for c in group), 15)
    producer.pause()
    held = [producer.put({"held": i}) for i in range(3)]
    time.sleep(1.0)
    assert not any(_taken(group, job) for job in held)
    producer.resume()
    assert wait_until(lambda: all(_taken(group, job) for job in held), 10)


def test_only_an_empty_single_claim_proves_the_queue_empty(collection: Collection[Document]) -> None:
    """A batch claim can come back empty after losing every round to other claims, with
    jobs still ready: skipping the claim before waiting on its word could strand them."""
    queue = Queue(collection, fleet=4, max_await=1.0)
    try:
        queue.store.ensure_indexes()
        queue.watcher.start()
        fleet = queue.watcher.fleet
        assert fleet is not None
        assert wait_until(lambda: fleet.view.known, 10)
        assert queue.claim(3) == [] and not queue.knows_empty()
        assert queue.claim(1) == [] and queue.knows_empty()
    finally:
        queue.close()


def test_heartbeats_never_reach_other_members(collection: Collection[Document]) -> None:
    """Only a join (and a leave) crosses the fleet pipeline: with N members, beats seen by
    every other member would cost each idle process N/10 getMores a second."""
    queue = Queue(collection)
    plans = queue.store.plans
    with collection.watch(FLEET_PIPELINE, max_await_time_ms=200) as stream:
        run(fleet_store.beat(plans, "a", 2, 30.0))
        run(fleet_store.beat(plans, "a", 2, 30.0))
        run(fleet_store.beat(plans, "a", 2, 30.0))
        run(fleet_store.leave(plans, "a"))
        seen: list[str] = []
        deadline = time.monotonic() + 3
        while len(seen) < 2 and time.monotonic() < deadline:
            event = stream.try_next()
            if event is not None:
                seen.append(event["operationType"])
        assert stream.try_next() is None
    assert seen == ["insert", "delete"]


def test_a_full_member_stream_pauses_soon_and_reopens_without_a_beat(
    mongo_uri: str, collection: Collection[Document],
) -> None:
    """While a backlog drains every slot is held, nobody waits, and an open fleet stream
    carries a lock and a settle event per job to every member: it closes after
    PAUSE_AFTER, not after the queue's pause_stream_after. A reopen soon after (the next
    wait) rebuilds the view but sends no beat: the member document lives for most of its
    ttl yet."""
    counter = CommandCounter()
    client: MongoClient[Document] = MongoClient(mongo_uri, event_listeners=[counter])
    queue = Queue(on(client, collection), fleet=2, max_await=0.2, pause_stream_after=60.0)
    try:
        queue.put_many([{"held": 1}, {"held": 2}])
        assert len(queue.claim(2)) == 2  # both its slots are held from now on
        queue.watcher.start()
        fleet = queue.watcher.fleet
        assert fleet is not None
        assert wait_until(lambda: queue.watcher.streams_paused == 1, 20)
        counter.reset()
        assert queue.next(timeout=0.1) is None  # the wait reopens the stream
        assert queue.watcher.streams_opened == 2
        assert wait_until(lambda: fleet.view.known, 10)
        beats = [body for name, body in counter.commands
                 if name == "update" and any(u["q"].get("_id") == member_id(queue.consumer_id)
                                             for u in body.get("updates", []))]
        assert beats == []
    finally:
        queue.close()
        client.close()


def test_a_draining_one_slot_member_pauses_soon_and_one_at_a_trickle_does_not(
    collection: Collection[Document],
) -> None:
    """A 1-slot member whose claims came back full twice in a row is draining a backlog:
    with its slot held its stream closes after PAUSE_AFTER. One whose last claim found
    nothing (a trickle: one job per wake-up) keeps the queue's pause while it runs a job."""
    queue = Queue(collection, fleet=1, max_await=0.2, pause_stream_after=60.0)
    try:
        queue.put({"n": 1})
        assert len(queue.claim(1)) == 1  # its one slot is held from now on
        assert queue.claim(1) == []  # as a slot finding nothing after its job
        queue.watcher.start()
        fleet = queue.watcher.fleet
        assert fleet is not None
        assert wait_until(lambda: fleet.view.known and fleet.view.every_slot_held(), 10)
        assert not fleet.draining
        assert fleet.pause_after(60.0) == 60.0
        queue.put_many([{"n": 2}, {"n": 3}])
        assert len(queue.claim(1)) == 1 and len(queue.claim(1)) == 1
        assert fleet.draining
        assert fleet.pause_after(60.0) == PAUSE_AFTER
        assert wait_until(lambda: queue.watcher.streams_paused == 1, 20)
    finally:
        queue.close()


def test_a_member_closed_as_its_stream_pauses_still_leaves(collection: Collection[Document]) -> None:
    """close() lands while the watcher's getMore is out; when it returns the stream would
    pause (no waiter for PAUSE_AFTER, every slot held). The thread must end and delete the
    member document, not wait for a resume that nobody will ask for."""
    queue = Queue(collection, fleet=2, max_await=1.0)
    queue.put_many([{"held": 1}, {"held": 2}])
    assert len(queue.claim(2)) == 2
    queue.watcher.start()
    fleet = queue.watcher.fleet
    assert fleet is not None
    assert wait_until(lambda: fleet.view.known and _members_joined(collection, 1), 10)
    queue.close()
    assert wait_until(lambda: collection.count_documents({"state": "member"}) == 0, 10)
