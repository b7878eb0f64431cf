"""Lost replies, late tries and retries, driven to the real replica set with fail points.

Each test puts another consumer's work exactly between a try and its retry
(``CommandHook``) or keeps a try running on the server after the client gave
up on it (``blockConnection``), and checks the promises: no job runs twice,
none is orphaned or lost, and a settle reports what really happened.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection

from streamqueue import LeaseLost, Queue
from streamqueue.storage import Document
from streamqueue.worker import Worker
from tests.helpers import Background, stays_false, wait_until
from tests.integration.conftest import API_PARAMS, TEST_MAX_AWAIT, QueueFactory
from tests.integration.failpoints import (
    RIVAL_TAKES_FROM_16,
    CommandHook,
    fail_point,
    hooked_client,
    rival_locks_candidates,
)


@pytest.fixture(params=API_PARAMS)
def api(request: pytest.FixtureRequest) -> str:
    """These semantics tests run against Queue and AsyncQueue alike."""
    return str(request.param)


# Codes the retry policy treats as transient: 89 (NetworkInterfaceExceededTimeLimit)
# arrives as a write concern error, so the insert itself was applied.
WRITE_CONCERN_TIMEOUT = {"code": 89, "errmsg": "fail point: majority wait cut short"}


@pytest.fixture
def hook() -> CommandHook:
    return CommandHook()


def on(client: MongoClient[Document], collection: Collection[Document]) -> Collection[Document]:
    return client[collection.database.name][collection.name]


def locked(collection: Collection[Document]) -> int:
    return collection.count_documents({"state": "locked"})


# -- 1. a retried enqueue ------------------------------------------------------------


@pytest.mark.sync_only
@pytest.mark.parametrize(("retry_writes", "failures"), [(False, 1), (True, 2)])
@pytest.mark.parametrize("outcome", ["completed", "dead-lettered"])
def test_an_enqueue_retried_after_its_job_was_consumed_writes_nothing_again(
    mongo_uri: str, collection: Collection[Document], make_queue: QueueFactory,
    hook: CommandHook, retry_writes: bool, failures: int, outcome: str,
) -> None:
    # The insert applies but its reply carries a write concern error (the
    # driver's own retry, when on, gets it too). Before the library's retry, a
    # consumer runs the job to its end: the retry must not enqueue it again.
    with hooked_client(mongo_uri, hook, retryWrites=retry_writes) as producer_client:
        producer = make_queue(on(producer_client, collection), max_attempts=1)
        consumer = make_queue()
        consumer.store.ensure_indexes()
        runs: list[Any] = []

        def consume(_: Any) -> None:
            job = consumer.next()
            assert job is not None
            runs.append(job.id)
            if outcome == "completed":
                job.complete()
            else:
                job.error("boom")

        hook.on("succeeded", "insert", consume, nth=failures)
        data = {"failCommands": ["insert"], "appName": app_of(producer_client),
                "writeConcernError": WRITE_CONCERN_TIMEOUT}
        with fail_point(producer_client, {"times": failures}, data):
            job_id = producer.put({"n": 1})
        assert not hook.errors
        assert runs == [job_id]
        assert collection.count_documents({}) == 0, "the job was enqueued a second time"
        assert consumer.next() is None
        assert consumer.failed.count_documents({}) == (1 if outcome == "dead-lettered" else 0)


def test_an_enqueue_whose_try_was_not_applied_is_written_on_retry(
    mongo_uri: str, collection: Collection[Document], make_queue: QueueFactory, hook: CommandHook,
) -> None:
    # The other side of the check: a try cut before it ran is sent again.
    with hooked_client(mongo_uri, hook, retryWrites=False) as producer_client:
        producer = make_queue(on(producer_client, collection))
        data = {"failCommands": ["insert"], "closeConnection": True,
                "appName": app_of(producer_client)}
        with fail_point(producer_client, {"times": 1}, data):
            ids = producer.put_many([{"n": 1}, {"n": 2}])
        assert hook.count("failed", "insert") == 1
        assert sorted(doc["_id"] for doc in collection.find()) == sorted(ids)


def app_of(client: MongoClient[Document]) -> str:
    name: str = client.options.pool_options.metadata["application"]["name"]
    return name


# -- 2. a claim whose first try runs late ------------------------------------------------


@pytest.mark.sync_only
@pytest.mark.parametrize("batch", [1, 2])
def test_a_claim_try_the_client_gave_up_on_cannot_lock_a_job_later(
    mongo_uri: str, mongo_client: MongoClient[Document], collection: Collection[Document],
    make_queue: QueueFactory, hook: CommandHook, batch: int,
) -> None:
    # The first try is held on the server past the client's socket timeout; the
    # retry claims; the test settles that claim at once. When the server lets
    # the first try go, it must not lock anything under the abandoned token.
    block_ms = 2500
    # Without the driver's own retry, which would wait for the first try's session.
    with hooked_client(mongo_uri, hook, socketTimeoutMS=1000, retryWrites=False) as consumer_client:
        consumer = make_queue(on(consumer_client, collection))
        make_queue().put_many([{"n": i} for i in range(4)])
        consumer.store.ensure_indexes()
        command = "findAndModify" if batch == 1 else "update"
        data = {"failCommands": [command], "blockConnection": True, "blockTimeMS": block_ms,
                "appName": app_of(consumer_client)}
        started = time.monotonic()
        # Turning a fail point off waits for the blocked command: not on a short timeout.
        with fail_point(mongo_client, {"times": 1}, data):
            jobs = consumer.next_batch(batch)
            assert jobs
            for job in jobs:
                job.release()  # ready again: a late first try could lock it now
            assert time.monotonic() - started < block_ms / 1000, "the retry ran after the block"
            assert locked(collection) == 0
        # Past the block: the late try has been let go on the server by now.
        assert stays_false(lambda: locked(collection) > 0,
                           block_ms / 1000 - (time.monotonic() - started) + 1.0)


# -- 5. a settle whose retry misses ------------------------------------------------------


def test_a_complete_retried_after_its_lease_moved_on_raises_lease_lost(
    mongo_uri: str, collection: Collection[Document], make_queue: QueueFactory, hook: CommandHook,
) -> None:
    # complete() is cut twice (the driver's retry too); before the library's
    # retry, the lease expires, the reaper requeues the job and another consumer
    # claims it. The retry then matches nothing: that is a lost lease, not success.
    with hooked_client(mongo_uri, hook) as holder_client:
        holder = make_queue(on(holder_client, collection), lease=0.3)
        other = make_queue(lease=30)
        holder.put({"n": 1})
        job = holder.next()
        assert job is not None
        taken: list[Any] = []

        def move_on(_: Any) -> None:
            assert wait_until(lambda: other.reap() == 1, 10)
            taken.append(other.next())

        hook.on("failed", "delete", move_on, nth=2)
        data = {"failCommands": ["delete"], "closeConnection": True, "appName": app_of(holder_client)}
        with fail_point(holder_client, {"times": 2}, data), pytest.raises(LeaseLost):
            job.complete()
        assert not hook.errors
        assert taken and taken[0] is not None
        assert collection.find_one({"_id": job.id, "lease_token": taken[0].lease_token}) is not None


@pytest.mark.parametrize("settle", ["complete", "error", "release"])
def test_a_settle_whose_lost_try_applied_reports_success(
    mongo_uri: str, collection: Collection[Document], make_queue: QueueFactory, hook: CommandHook,
    settle: str,
) -> None:
    # The inverse: the first try applied but its reply carried an error, so the
    # retry misses because of its own first try. That is success.
    with hooked_client(mongo_uri, hook, retryWrites=False) as holder_client:
        holder = make_queue(on(holder_client, collection), max_attempts=3)
        holder.put({"n": 1})
        job = holder.next()
        assert job is not None
        command = "delete" if settle == "complete" else "update"
        data = {"failCommands": [command], "writeConcernError": WRITE_CONCERN_TIMEOUT,
                "appName": app_of(holder_client)}
        with fail_point(holder_client, {"times": 1}, data):
            if settle == "complete":
                job.complete()
            elif settle == "error":
                job.error("boom", retry_in=0)
            else:
                job.release()
        assert hook.count("succeeded", command) >= 2, "the settle was not retried"
        expected = 0 if settle == "complete" else 1
        assert collection.count_documents({"state": "ready"}) == expected


def test_a_kept_completion_whose_lost_try_applied_reports_success(
    mongo_uri: str, collection: Collection[Document], make_queue: QueueFactory, hook: CommandHook,
) -> None:
    # Keeping completed jobs, a completion is an update and the job stays: the
    # retry must recognise its own try by the token (settled_lease), not by
    # the job being gone.
    with hooked_client(mongo_uri, hook, retryWrites=False) as holder_client:
        holder = make_queue(on(holder_client, collection), keep_completed=3600)
        holder.put({"n": 1})
        job = holder.next()
        assert job is not None
        data = {"failCommands": ["update"], "writeConcernError": WRITE_CONCERN_TIMEOUT,
                "appName": app_of(holder_client)}
        with fail_point(holder_client, {"times": 1}, data):
            job.complete(result={"ok": True})
        assert hook.count("succeeded", "update") >= 2, "the settle was not retried"
        doc = collection.find_one({"_id": job.id})
        assert doc is not None
        assert (doc["state"], doc["result"], doc["settled_lease"]) == (
            "completed", {"ok": True}, job.lease_token)


def test_a_bury_retried_after_it_applied_reports_success(
    mongo_uri: str, collection: Collection[Document], make_queue: QueueFactory, hook: CommandHook,
) -> None:
    # The last attempt's error() moves the job to the error queue in a
    # transaction; its commit is answered with a write concern error, which
    # pymongo's with_transaction retries. Once in the error queue, the job must
    # not be reported as a lost lease.
    with hooked_client(mongo_uri, hook) as holder_client:
        holder = make_queue(on(holder_client, collection), max_attempts=1)
        holder.put({"n": 1})
        job = holder.next()
        assert job is not None
        data = {"failCommands": ["commitTransaction"], "writeConcernError": WRITE_CONCERN_TIMEOUT,
                "appName": app_of(holder_client)}
        with fail_point(holder_client, {"times": 1}, data):
            job.error("boom")
        assert holder.failed.count_documents({"_id": job.id}) == 1
        assert collection.count_documents({}) == 0


def test_moves_to_the_error_queue_commit_with_majority(
    mongo_uri: str, collection: Collection[Document], make_queue: QueueFactory, hook: CommandHook,
) -> None:
    seen: list[Document] = []
    hook.on("started", "commitTransaction", lambda event: seen.append(event.command))
    with hooked_client(mongo_uri, hook) as client:
        queue = make_queue(on(client, collection), max_attempts=1)
        queue.put({"n": 1})
        job = queue.next()
        assert job is not None
        job.error("boom")
        assert seen and seen[0].get("writeConcern", {}).get("w") == "majority"
        seen.clear()
        hook.on("started", "commitTransaction", lambda event: seen.append(event.command))
        assert queue.retry_failed() == 1
        assert seen and seen[0].get("writeConcern", {}).get("w") == "majority"


def test_retry_failed_never_overwrites_a_job_in_the_queue(
    collection: Collection[Document], make_queue: QueueFactory,
) -> None:
    queue = make_queue(max_attempts=1)
    job_id = queue.put({"n": 1})
    job = queue.next()
    assert job is not None
    job.error("boom")
    # A copy under the same _id is live in the queue (and locked by someone).
    dead = queue.failed.find_one({"_id": job_id})
    assert dead is not None
    live = {**dead, "state": "locked", "lease_token": "live"}
    collection.insert_one(live)
    assert queue.retry_failed(job_id) == 0
    assert collection.find_one({"_id": job_id}, {"lease_token": 1}) == {"_id": job_id,
                                                                         "lease_token": "live"}
    assert queue.failed.count_documents({"_id": job_id}) == 1


# -- invalidate: waiters claim after the fresh stream is open -----------------------------


def test_after_an_invalidate_a_job_enqueued_before_the_reopen_is_claimed(
    mongo_uri: str, collection: Collection[Document], make_queue: QueueFactory, hook: CommandHook,
) -> None:
    with hooked_client(mongo_uri, hook) as consumer_client:
        consumer = make_queue(on(consumer_client, collection), sweep_interval=60,
                              pause_stream_after=None)
        producer = make_queue()
        producer.put({"n": 0})
        first = consumer.next(timeout=5)
        assert first is not None
        first.complete()
        waiting = Background(lambda: consumer.next(timeout=8)).start()
        assert wait_until(lambda: consumer.board.waiters == 1)
        # The stream's aggregate and the due-time look-up's: both done.
        assert wait_until(lambda: hook.count("succeeded", "aggregate") >= 2)
        claims_before = hook.count("succeeded", "findAndModify")
        enqueued: list[Any] = []

        def enqueue_before_reopen(_: Any) -> None:
            # Give a waiter woken by the invalidate the time to claim (and find
            # nothing), then enqueue while the fresh stream is not open yet.
            wait_until(lambda: hook.count("succeeded", "findAndModify") > claims_before, 1.0)
            enqueued.append(producer.put({"n": 1}))

        # Counted from now: the stream the waiter waits on is open already.
        hook.on("started", "aggregate", enqueue_before_reopen)
        collection.drop()
        job = waiting.join(15)
        assert not hook.errors
        assert enqueued
        assert job is not None, "the waiter missed the job enqueued before the stream reopened"
        assert job.id == enqueued[0]


# -- 6. reads follow the primary whatever the client prefers ---------------------------------


@pytest.fixture(scope="module")
def lagging_set() -> Iterator[tuple[str, str]]:
    """A 3-node set: primary, a hidden secondary (the majority's second vote), and a
    visible secondary whose replication the tests stop. Yields (uri, lagger's host)."""
    from streamqueue.testing import ReplicaSet

    with ReplicaSet(nodes=3) as rs:
        client: MongoClient[Document]
        with MongoClient(rs.uri) as client:
            config = client.admin.command("replSetGetConfig")["config"]
            config["version"] += 1
            config["members"][1].update(hidden=True, priority=0)
            config["members"][2].update(priority=0)
            client.admin.command("replSetReconfig", config)
        yield rs.uri, rs.members[2].host


def test_batch_claims_read_what_they_locked_on_the_primary(
    lagging_set: tuple[str, str],
) -> None:
    uri, lagger = lagging_set
    client: MongoClient[Document]
    lagging: MongoClient[Document]
    reader: MongoClient[Document]
    with MongoClient(uri) as client, MongoClient(
            f"mongodb://{lagger}/?directConnection=true") as lagging, MongoClient(
            uri, readPreference="secondaryPreferred") as reader:
        collection: Collection[Document] = client["streamqueue_test"]["lagging"]
        collection.drop()
        producer = Queue(collection, max_await=TEST_MAX_AWAIT)
        producer.put_many([{"n": i} for i in range(12)])
        # The lagging secondary has the jobs as ready; then it stops replicating.
        assert wait_until(lambda: lagging["streamqueue_test"]["lagging"].count_documents({}) == 12,
                          30)
        consumer = Queue(reader["streamqueue_test"]["lagging"], max_await=TEST_MAX_AWAIT)
        try:
            with fail_point(lagging, "alwaysOn", {}, name="stopReplProducer"):
                claimed = sum(len(consumer.next_batch(4)) for _ in range(5))
                assert claimed == collection.count_documents({"state": "locked"}) == 12
        finally:
            producer.close()
            consumer.close()
            collection.drop()


def test_a_batch_claim_that_loses_every_round_still_takes_a_due_job(
    mongo_uri: str, collection: Collection[Document], make_queue: QueueFactory, hook: CommandHook,
) -> None:
    """An empty claim must mean an empty queue: a worker that hears "empty" waits
    for a wake-up, and a backlog sends none (seen with 8 processes on one queue:
    a batch claim of 4 came back empty with 4,000 jobs ready)."""
    make_queue().put_many([{"n": i} for i in range(40)])

    for round_ in range(1, 9):  # every round the batch claim may try
        hook.on("started", "update", rival_locks_candidates(collection), nth=round_)
    with hooked_client(mongo_uri, hook) as consumer_client:
        consumer = make_queue(on(consumer_client, collection))
        claimed = consumer.next_batch(4)
    assert not hook.errors
    assert hook.count("started", "update") == 8, "the rival did not take every round"
    assert len(claimed) == 1
    assert collection.count_documents({"state": "ready"}) == 40 - 8 * 4 - 1


@pytest.mark.sync_only
def test_a_worker_whose_claims_come_back_short_from_races_drains_the_backlog(
    mongo_uri: str, collection: Collection[Document], make_queue: QueueFactory, hook: CommandHook,
) -> None:
    """A short claim means the end of a backlog, and the worker then waits for a wake-up,
    which a backlog never sends. One short only because rivals kept taking what it read
    (seen with four worker processes on one backlog: two of them sat idle while the other
    two drained it) must not: the worker claims again without waiting for the sweep."""
    make_queue().put_many([{"n": i} for i in range(200)])

    for round_ in range(1, 9):  # every round of the worker's first claim
        hook.on("started", "update", rival_locks_candidates(collection, keep=1), nth=round_)
    done: list[int] = []
    with hooked_client(mongo_uri, hook) as consumer_client:
        # No insert event and no sweep (hours away) can wake it: only the claim itself.
        consumer = make_queue(on(consumer_client, collection), sweep_interval=3600)
        worker = Worker(consumer, lambda payload: done.append(payload["n"]), concurrency=1,
                        batch=16)
        running = Background(worker.run).start()
        rival = RIVAL_TAKES_FROM_16
        try:
            assert wait_until(lambda: len(done) == 200 - rival, 30), (
                f"the worker stopped at {len(done)} of {200 - rival} jobs")
        finally:
            worker.stop()
            running.join()
    assert not hook.errors
    assert collection.count_documents({"state": "ready"}) == 0
    assert len(set(done)) == len(done)


def test_a_batch_claim_leaves_out_what_another_claim_of_its_queue_is_locking(
    collection: Collection[Document],
) -> None:
    """Two batch claims of one queue that start together would read the same head of
    the queue, and one would lose its round; the candidates of a claim in flight are
    listed, and a claim that reads meanwhile skips them (a hint: the update decides)."""
    queue = Queue(collection, max_await=TEST_MAX_AWAIT)
    try:
        ids = queue.put_many([{"n": i} for i in range(8)])
        in_flight = queue.store.plans.in_flight
        in_flight.add(ids[:4])  # as a claim between its read and its update would
        try:
            claimed = queue.claim(4)
        finally:
            in_flight.remove(ids[:4])
        assert sorted(job.payload["n"] for job in claimed) == [4, 5, 6, 7]
        assert sorted(job.payload["n"] for job in queue.claim(4)) == [0, 1, 2, 3]
    finally:
        queue.close()
