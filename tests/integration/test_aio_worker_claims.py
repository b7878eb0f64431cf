"""``AsyncWorker(claims_in_flight=n)``: batch claims overlapping in a backlog, what it holds,
a trickle after the backlog, and stop() with claims out (as ``Worker``'s, in
test_worker_claims.py). Refused settings are in test_aio_worker.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.collection import Collection

from streamqueue import Queue
from streamqueue.aio import AsyncJob, AsyncQueue
from streamqueue.aio.worker import AsyncWorker
from streamqueue.storage import Document
from tests.helpers import wait_until_async as until
from tests.integration.failpoints import RIVAL_TAKES_FROM_16, CommandHook, rival_locks_candidates
from tests.integration.test_aio_worker import run_with_worker

pytestmark = pytest.mark.timeout(120)


class ClaimCount:
    """Wraps a queue's ``claim``: how many run at once at most, and the largest asked for."""

    def __init__(self, queue: AsyncQueue) -> None:
        self.out = self.most_out = self.largest = 0
        inner = queue.claim

        async def claim(limit: int = 1) -> list[AsyncJob]:
            self.out += 1
            self.most_out = max(self.most_out, self.out)
            self.largest = max(self.largest, limit)
            try:
                return await inner(limit)
            finally:
                self.out -= 1

        queue.claim = claim  # type: ignore[method-assign]


def test_claims_in_flight_overlap_in_a_backlog_and_bound_what_is_held(
    mongo_uri: str, collection: Collection[Document],
) -> None:
    Queue(collection).put_many([{"n": n} for n in range(600)])
    seen: list[int] = []
    most_held = 0
    worker: AsyncWorker | None = None

    async def handler(payload: dict[str, Any]) -> None:
        nonlocal most_held
        seen.append(payload["n"])
        assert worker is not None
        most_held = max(most_held, len(worker._tasks))
        await asyncio.sleep(0.001)

    async def body(queue: AsyncQueue) -> ClaimCount:
        nonlocal worker
        claims = ClaimCount(queue)
        worker = AsyncWorker(queue, handler, concurrency=4, batch=8, claims_in_flight=2,
                             burst=True)
        await asyncio.wait_for(worker.run(), 60)
        return claims

    claims = run_with_worker(mongo_uri, collection, body)
    assert sorted(seen) == list(range(600))  # each job once
    assert collection.count_documents({}) == 0
    assert claims.most_out == 2, "no two claims were ever in flight together"
    assert claims.largest <= 8
    # Running or buffered (bulk completions not yet written aside): one batch per claim.
    assert most_held <= 2 * 8


def test_a_claim_ahead_worker_takes_a_trickle_after_its_backlog(
    mongo_uri: str, collection: Collection[Document],
) -> None:
    producer = Queue(collection)
    producer.put_many([{"n": n} for n in range(100)])
    done: list[int] = []

    async def handler(payload: dict[str, Any]) -> None:
        done.append(payload["n"])

    async def body(queue: AsyncQueue) -> list[int]:
        worker = AsyncWorker(queue, handler, concurrency=2, batch=4, claims_in_flight=3)
        task = asyncio.create_task(worker.run())
        late: list[int] = []
        try:
            assert await until(lambda: len(done) == 100, 20)
            # The backlog is over: each job now comes through a wake-up.
            for n in range(100, 110):
                await asyncio.to_thread(producer.put, {"n": n})
                if not await until(lambda n=n: n in done, 10):  # type: ignore[misc]
                    late.append(n)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 30)
        return late

    late = run_with_worker(mongo_uri, collection, body)
    assert late == [], f"jobs left waiting after the backlog: {late}"
    assert sorted(done) == list(range(110))


def test_stop_with_claims_in_flight_leaves_nothing_locked(
    mongo_uri: str, collection: Collection[Document],
) -> None:
    Queue(collection).put_many([{"n": n} for n in range(2000)])
    started = asyncio.Event()

    async def handler(payload: dict[str, Any]) -> None:
        started.set()
        await asyncio.sleep(0.002)

    async def body(queue: AsyncQueue) -> None:
        worker = AsyncWorker(queue, handler, concurrency=2, batch=16, claims_in_flight=2)
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(started.wait(), 10)
        worker.stop()
        await asyncio.wait_for(task, 20)  # no claim-ahead coroutine keeps it from returning

    run_with_worker(mongo_uri, collection, body)
    # Every job is done or back in the queue: none held by a worker that has stopped.
    assert collection.count_documents({"state": "locked"}) == 0
    assert 0 < collection.count_documents({"state": "ready"}) == collection.count_documents({})



def test_claims_short_from_races_do_not_end_the_backlog(
    mongo_uri: str, collection: Collection[Document],
) -> None:
    """As test_interleavings' Worker case: rivals take all but one job of each round of the
    first batch claim; no insert and no sweep (an hour away) can wake the worker, so only
    the claim saying it was short from races keeps it draining."""
    Queue(collection).put_many([{"n": n} for n in range(200)])
    hook = CommandHook()

    for round_ in range(1, 9):
        hook.on("started", "update", rival_locks_candidates(collection, keep=1), nth=round_)
    rival = RIVAL_TAKES_FROM_16
    done: list[int] = []

    async def handler(payload: dict[str, Any]) -> None:
        done.append(payload["n"])

    async def scenario() -> bool:
        client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_uri, event_listeners=[hook])
        try:
            async with AsyncQueue(client[collection.database.name][collection.name],
                                  max_await=1.0, sweep_interval=3600) as queue:
                worker = AsyncWorker(queue, handler, concurrency=1, batch=16)
                task = asyncio.create_task(worker.run())
                drained = await until(lambda: len(done) == 200 - rival, 30)
                worker.stop()
                await asyncio.wait_for(task, 20)
                return drained
        finally:
            await client.close()

    assert asyncio.run(scenario()), f"the worker stopped at {len(done)} of {200 - rival} jobs"
    assert not hook.errors
    assert collection.count_documents({"state": "ready"}) == 0
    assert len(set(done)) == len(done) == 200 - rival
