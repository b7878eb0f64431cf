"""What only the asyncio API has: cancellation, event loops in processes, ``async for``.

The semantics both APIs share run against both (the modules whose ``api``
fixture is parametrised); these are the async-only cases of issue 13.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from pymongo import AsyncMongoClient, MongoClient
from pymongo.collection import Collection

from streamqueue import Queue
from streamqueue.aio import AsyncJob, AsyncQueue
from streamqueue.storage import Document
from tests.helpers import CommandCounter
from tests.integration.failpoints import app_name, fail_point
from tests.integration.processes import CliProcess, child_env, cli_processes

JOBS = 2_000


def test_cancelling_a_waiting_next_leaves_no_claim_and_no_waiter(
    mongo_uri: str, collection: Collection[Document],
) -> None:
    async def scenario() -> None:
        client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_uri)
        async with AsyncQueue(client[collection.database.name][collection.name],
                              max_await=1.0) as queue:
            waiting = asyncio.create_task(queue.next(timeout=None))
            await asyncio.sleep(0.3)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert queue.board.waiters == 0
            job_id = await queue.put({"after": "cancel"})
            job = await queue.next(timeout=10)
            assert job is not None and job.id == job_id and job.attempts == 1
            await job.complete()
        await client.close()

    asyncio.run(scenario())


def test_a_claim_whose_reply_comes_after_the_cancellation_is_released(
    mongo_uri: str, collection: Collection[Document], mongo_client: MongoClient[Document],
) -> None:
    """The claim reaches the server, is held there by a fail point, and commits after its
    caller was cancelled: the queue hands it back (attempt uncounted), nobody holds it."""
    appname = app_name()
    job_id = Queue(collection).put({"n": 1})
    block = {"failCommands": ["findAndModify"], "blockConnection": True, "blockTimeMS": 1500,
             "appName": appname}

    async def scenario() -> None:
        # A 3 s socket timeout makes each claim try's server-side limit 3 s, so the
        # release after the limit comes within seconds.
        client: AsyncMongoClient[Document] = AsyncMongoClient(
            mongo_uri, appname=appname, socketTimeoutMS=3000)
        async with AsyncQueue(client[collection.database.name][collection.name],
                              max_await=1.0) as queue:
            await queue.size()  # connected, indexes aside: the claim is the blocked command
            with fail_point(mongo_client, {"times": 1}, block):
                claiming = asyncio.create_task(queue.next(timeout=None))
                await asyncio.sleep(0.5)
                claiming.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await claiming

                def released() -> bool:
                    doc = collection.find_one({"_id": job_id}) or {}
                    return doc.get("state") == "ready" and "settled_lease" in doc

                # The loop must keep running for the detached release to happen.
                deadline = asyncio.get_running_loop().time() + 20
                while not released() and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.1)
        await client.close()

    asyncio.run(scenario())
    doc = collection.find_one({"_id": job_id})
    assert doc is not None
    # settled_lease is written only by a settle of a claim: the blocked claim did lock
    # the job after its caller had gone, and the release handed it back.
    assert doc["state"] == "ready" and "settled_lease" in doc, doc
    assert doc["attempts"] == 0 and "lease_token" not in doc
    job = Queue(collection).next()
    assert job is not None and job.id == job_id


def test_two_event_loops_in_two_processes_drain_2000_jobs_exactly_once(
    mongo_uri: str, collection: Collection[Document],
) -> None:
    ids = {str(job_id) for job_id in Queue(collection).put_many([{"n": i} for i in range(JOBS)])}
    args = [mongo_uri, collection.database.name, collection.name, "4"]
    with cli_processes() as procs:
        procs += [CliProcess("tests.integration.aio_drain", args, child_env()) for _ in range(2)]
        for proc in procs:
            assert proc.wait(240) == 0, proc.describe()
    done = Counter(line.split()[1] for proc in procs for line in proc.stdout.splitlines()
                   if line.startswith("done "))
    assert set(done) == ids
    assert max(done.values()) == 1, "a job was completed twice"
    assert all(any(line.startswith("done ") for line in proc.stdout.splitlines())
               for proc in procs), "one process drained everything: no contention was tested"
    assert collection.count_documents({}) == 0


def test_async_for_yields_jobs_and_ends_when_the_queue_is_closed(
    mongo_uri: str, collection: Collection[Document],
) -> None:
    async def scenario() -> list[int]:
        client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_uri)
        queue = AsyncQueue(client[collection.database.name][collection.name], max_await=1.0)
        seen: list[int] = []

        async def consume() -> None:
            async for job in queue:
                async with job as payload:
                    seen.append(payload["n"])
                if len(seen) == 3:
                    await queue.close()

        consumer = asyncio.create_task(consume())
        for n in range(3):
            await asyncio.sleep(0.1)
            await queue.put({"n": n})
        await asyncio.wait_for(consumer, 30)
        await client.close()
        return seen

    assert asyncio.run(scenario()) == [0, 1, 2]
    assert collection.count_documents({}) == 0


def test_a_sync_producer_and_an_async_consumer_share_a_queue(
    mongo_uri: str, collection: Collection[Document],
) -> None:
    producer = Queue(collection, max_await=1.0)

    async def scenario() -> AsyncJob:
        client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_uri)
        async with AsyncQueue(client[collection.database.name][collection.name],
                              max_await=1.0) as queue:
            waiting = asyncio.create_task(queue.next(timeout=30))
            await asyncio.sleep(0.3)
            await asyncio.to_thread(producer.put, {"from": "sync"})
            job = await waiting
            assert job is not None
            await job.complete()
        await client.close()
        return job

    job = asyncio.run(scenario())
    assert job.payload == {"from": "sync"}
    producer.close()


def test_async_queue_refuses_a_sync_collection(collection: Collection[Document]) -> None:
    with pytest.raises(TypeError, match="AsyncCollection"):
        AsyncQueue(collection)  # type: ignore[arg-type]


def test_close_ends_a_waiting_next_without_claiming_over_and_over(
    mongo_uri: str, collection: Collection[Document],
) -> None:
    counter = CommandCounter()

    async def scenario() -> int:
        client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_uri, event_listeners=[counter])
        queue = AsyncQueue(client[collection.database.name][collection.name], max_await=1.0)
        waiting = asyncio.create_task(queue.next(timeout=30))
        await asyncio.sleep(0.3)
        before = counter.count("findAndModify", collection.name)
        await queue.close()
        assert await asyncio.wait_for(waiting, 20) is None
        claims = counter.count("findAndModify", collection.name) - before
        await client.close()
        return claims

    # The close wakes the waiter once: one claim, then it returns instead of waiting on.
    assert asyncio.run(scenario()) <= 1
