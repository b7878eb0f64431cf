"""``AsyncWorker``: coroutine handlers in flight together, cancel requests, ordered shutdown,
and ``streamqueue worker`` picking it for an ``async def`` handler."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring
from pymongo.collection import Collection

import streamqueue.aio.worker as aio_worker_module
from streamqueue import Queue
from streamqueue.aio import AsyncQueue
from streamqueue.aio.worker import AsyncWorker
from streamqueue.exitcodes import ExitCode
from streamqueue.storage import Document
from tests.helpers import wait_until_async as until
from tests.integration.processes import child_env, run_cli

pytestmark = pytest.mark.timeout(120)


def run_with_worker(mongo_uri: str, collection: Collection[Document],
                    body: Callable[[AsyncQueue], Awaitable[Any]], **queue_options: Any) -> Any:
    async def scenario() -> Any:
        client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_uri)
        try:
            async with AsyncQueue(client[collection.database.name][collection.name],
                                  max_await=1.0, **queue_options) as queue:
                return await body(queue)
        finally:
            await client.close()

    return asyncio.run(scenario())


def test_handlers_that_await_run_together_up_to_concurrency(
    mongo_uri: str, collection: Collection[Document],
) -> None:
    Queue(collection).put_many([{"n": n} for n in range(200)])
    in_flight = 0
    most = 0
    done: list[int] = []

    async def handler(payload: dict[str, Any]) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.2)
        in_flight -= 1
        done.append(payload["n"])

    async def body(queue: AsyncQueue) -> None:
        await AsyncWorker(queue, handler, concurrency=50, burst=True).run()

    run_with_worker(mongo_uri, collection, body)
    assert sorted(done) == list(range(200))
    assert most == 50, "handlers did not overlap up to the concurrency"
    assert collection.count_documents({}) == 0


def test_a_raising_handler_retries_then_dead_letters(
    mongo_uri: str, collection: Collection[Document],
) -> None:
    Queue(collection, max_attempts=2).put({"n": 1})
    attempts: list[int] = []

    async def handler(payload: dict[str, Any], job: Any) -> None:
        attempts.append(job.attempts)
        raise ValueError("boom")

    async def body(queue: AsyncQueue) -> None:
        await AsyncWorker(queue, handler, burst=True, backoff=0.0).run()

    run_with_worker(mongo_uri, collection, body)
    assert attempts == [1, 2]
    dead = collection.database[f"{collection.name}.failed"].find_one({})
    assert dead is not None and "ValueError: boom" in dead["last_error"]


def test_a_cancel_request_cancels_the_running_handler_and_the_job_ends_cancelled(
    mongo_uri: str, collection: Collection[Document],
) -> None:
    producer = Queue(collection, keep_completed=3600)
    job_id = producer.put({"n": 1})
    started = asyncio.Event()
    cancelled: list[bool] = []

    async def handler(payload: dict[str, Any]) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def body(queue: AsyncQueue) -> None:
        worker = AsyncWorker(queue, handler, concurrency=4)
        running = asyncio.create_task(worker.run())
        await asyncio.wait_for(started.wait(), 30)
        assert await queue.cancel(job_id)  # the job is held: a request
        for _ in range(300):
            if cancelled and worker.held == 0:
                break
            await asyncio.sleep(0.1)
        worker.stop()
        await asyncio.wait_for(running, 30)

    run_with_worker(mongo_uri, collection, body, keep_completed=3600)
    assert cancelled == [True]
    info = producer.get(job_id)
    assert info is not None and info.state == "cancelled"
    producer.close()


def test_stop_waits_the_grace_then_cancels_handlers_and_releases_their_jobs(
    mongo_uri: str, collection: Collection[Document],
) -> None:
    quick, slow = Queue(collection).put_many([{"seconds": 0.1}, {"seconds": 3600}])
    started: list[float] = []
    finished: list[float] = []

    async def handler(payload: dict[str, Any]) -> None:
        started.append(payload["seconds"])
        await asyncio.sleep(payload["seconds"])
        finished.append(payload["seconds"])

    async def body(queue: AsyncQueue) -> None:
        worker = AsyncWorker(queue, handler, concurrency=4, shutdown_grace=1.0)
        running = asyncio.create_task(worker.run())
        while len(started) < 2:
            await asyncio.sleep(0.05)
        worker.stop()
        await asyncio.wait_for(running, 30)

    run_with_worker(mongo_uri, collection, body)
    assert finished == [0.1], "the quick handler finishes within the grace"
    assert collection.find_one({"_id": quick}) is None
    doc = collection.find_one({"_id": slow})
    assert doc is not None and doc["state"] == "ready" and doc["attempts"] == 0, doc


@pytest.mark.parametrize("extra", [[], ["--batch", "4", "--claims-in-flight", "2"]],
                         ids=["plain", "claims-in-flight"])
def test_the_worker_command_runs_an_async_def_handler_on_an_event_loop(
    mongo_uri: str, collection: Collection[Document], extra: list[str],
) -> None:
    Queue(collection).put_many([{"seconds": 0.05} for _ in range(30)])
    result = run_cli("streamqueue.worker", "tests.integration.aio_handlers:nap", "--uri",
                     mongo_uri, "--db", collection.database.name, "--queue", collection.name,
                     "--burst", "--concurrency", "20", *extra, env=child_env())
    assert result.returncode == ExitCode.OK, result.stderr
    assert "async worker" in result.stderr, result.stderr
    assert collection.count_documents({}) == 0


def plain(payload: dict[str, Any]) -> None:
    return None


def test_an_async_worker_refuses_a_plain_function(
    mongo_uri: str, collection: Collection[Document],
) -> None:
    async def body(queue: AsyncQueue) -> None:
        with pytest.raises(TypeError, match="async def"):
            AsyncWorker(queue, plain)  # type: ignore[arg-type]

    run_with_worker(mongo_uri, collection, body)


class Deletes(monitoring.CommandListener):
    def __init__(self) -> None:
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "delete":
            self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None


def test_completions_are_written_in_bulk(
    mongo_uri: str, collection: Collection[Document],
) -> None:
    # 300 handlers returning in waves: one delete per handler made the database's
    # round trips the worker's limit.
    Queue(collection).put_many([{"n": n} for n in range(300)])
    deletes = Deletes()
    done: list[int] = []

    async def handler(payload: dict[str, Any]) -> None:
        await asyncio.sleep(0.05)
        done.append(payload["n"])

    async def scenario() -> None:
        client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_uri,
                                                              event_listeners=[deletes])
        try:
            async with AsyncQueue(client[collection.database.name][collection.name]) as queue:
                await AsyncWorker(queue, handler, concurrency=100, burst=True).run()
        finally:
            await client.close()

    asyncio.run(scenario())
    assert sorted(done) == list(range(300))
    assert collection.count_documents({}) == 0
    assert deletes.count <= 30, f"{deletes.count} deletes for 300 jobs"


def test_batch_above_concurrency_prefetches_and_stop_releases_the_buffer_at_once(
    mongo_uri: str, collection: Collection[Document],
) -> None:
    Queue(collection).put_many([{"n": n} for n in range(30)])
    running = 0
    most = 0
    release = asyncio.Event()

    async def handler(payload: dict[str, Any]) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await release.wait()
        finally:
            running -= 1

    async def body(queue: AsyncQueue) -> tuple[int, int, bool]:
        worker = AsyncWorker(queue, handler, concurrency=4, batch=10, shutdown_grace=60.0)
        task = asyncio.create_task(worker.run())
        for _ in range(300):
            if worker.held == 10 and worker.busy_slots == 4:
                break
            await asyncio.sleep(0.05)
        held, busy = worker.held, worker.busy_slots
        worker.stop()
        # The buffered six are handed back now, not after the 60 s grace.
        for _ in range(200):
            if collection.count_documents({"state": "locked"}) == 4:
                break
            await asyncio.sleep(0.05)
        back = collection.count_documents({"state": "locked"}) == 4
        release.set()
        await asyncio.wait_for(task, 30)
        return held, busy, back

    held, busy, back = run_with_worker(mongo_uri, collection, body)
    assert (held, busy, most) == (10, 4, 4)
    assert back, "buffered jobs waited for the running handlers' grace"
    assert collection.count_documents({}) == 26  # 4 completed, the buffered 6 and 20 ready
    assert collection.count_documents({"state": "ready", "attempts": 0}) == 26


@pytest.mark.parametrize(("options", "named"), [
    ({"batch": 0}, "batch"),
    # Claims in flight need a fixed batch above 1, and a positive count.
    ({"batch": None, "claims_in_flight": 2}, "claims_in_flight"),
    ({"batch": 1, "claims_in_flight": 2}, "claims_in_flight"),
    ({"batch": 8, "claims_in_flight": 0}, "claims_in_flight"),
], ids=["batch-0", "claims-without-batch", "claims-with-batch-1", "claims-0"])
def test_bad_claim_settings_are_refused(
    mongo_uri: str, collection: Collection[Document], options: dict[str, Any], named: str,
) -> None:
    async def handler(payload: dict[str, Any]) -> None:
        return None

    async def body(queue: AsyncQueue) -> None:
        with pytest.raises(ValueError, match=named):
            AsyncWorker(queue, handler, **options)

    run_with_worker(mongo_uri, collection, body)


def test_stop_hands_an_adaptive_buffer_back_at_once(
    mongo_uri: str, collection: Collection[Document],
) -> None:
    # As the threaded Worker's (test_worker_claims.py): fast handlers get a buffer
    # behind a slow one by default, and stop() hands it back at once, uncounted.
    Queue(collection).put_many([{"n": n} for n in range(300)])
    blocking = asyncio.Event()
    finish = asyncio.Event()

    async def fast_then_blocks(payload: dict[str, Any]) -> None:
        if payload["n"] >= 200 and not blocking.is_set():
            blocking.set()
            await finish.wait()

    async def body(queue: AsyncQueue) -> tuple[int, bool]:
        worker = AsyncWorker(queue, fast_then_blocks, concurrency=1, shutdown_grace=20.0)
        task = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(blocking.wait(), 20)
            for _ in range(200):
                if len(worker._tasks) > 1:  # a buffer behind the blocked handler
                    break
                await asyncio.sleep(0.05)
            buffered = len(worker._tasks) - 1
            worker.stop()
            for _ in range(200):
                if collection.count_documents({"state": "locked"}) == 1:
                    break
                await asyncio.sleep(0.05)
            back = collection.count_documents({"state": "locked"}) == 1 and not task.done()
        finally:
            finish.set()
            await asyncio.wait_for(task, 30)
        return buffered, back

    buffered, back = run_with_worker(mongo_uri, collection, body)
    assert buffered >= 1
    assert back, "buffered jobs waited for the running handler's grace"
    assert collection.count_documents({}) == 99
    assert collection.count_documents({"state": "ready", "attempts": 0}) == 99


def test_a_buffered_job_does_not_hold_the_stream_open_for_cancel_requests(
    mongo_uri: str, collection: Collection[Document], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A wide margin between the watcher's ticks and "running long", for a loaded machine.
    monkeypatch.setattr(aio_worker_module, "CANCEL_WATCH_AFTER", 2.0)
    Queue(collection).put_many([{"n": n} for n in range(4)])
    first_done = asyncio.Event()
    release = asyncio.Event()
    started: list[int] = []

    async def handler(payload: dict[str, Any]) -> None:
        started.append(payload["n"])
        await (first_done if payload["n"] == 0 else release).wait()

    async def body(queue: AsyncQueue) -> tuple[bool, int, bool, bool]:
        worker = AsyncWorker(queue, handler, concurrency=1, batch=4)
        task = asyncio.create_task(worker.run())
        try:
            # The first handler runs long: the stream is kept open for its cancel requests.
            opened = await until(lambda: queue.board._keep_open, 10)
            held = len(worker._tasks)  # three more wait in the buffer, as long as it ran
            first_done.set()
            second = await until(lambda: len(started) == 2, 10)
            # The next handler has only just started, although its job was claimed long ago.
            closed = await until(lambda: not queue.board._keep_open, 1.5)
        finally:
            first_done.set()
            release.set()
            worker.stop()
            await asyncio.wait_for(task, 30)
        return opened, held, second, closed

    assert run_with_worker(mongo_uri, collection, body) == (True, 4, True, True)
