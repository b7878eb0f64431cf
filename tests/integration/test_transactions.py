"""Transactional enqueue and completion: ``put(session=)``, ``put_many(session=)``,
``Job.complete(session=)`` joining the caller's transaction.

Run against both APIs: with ``AsyncQueue`` the transaction is an ``AsyncClientSession``'s
``with_transaction`` on the queue's loop, and the test's callback (sync code) runs in a
thread while the loop awaits it (``aio_adapter.run_transaction``)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient
from pymongo.client_session import ClientSession
from pymongo.collection import Collection

from streamqueue import LeaseLost, Queue
from streamqueue.storage import Document
from tests.helpers import Background, on, wait_until
from tests.integration.aio_adapter import SessionFacade, SyncFacade, on_session, run_transaction
from tests.integration.conftest import API_PARAMS, QueueFactory
from tests.integration.failpoints import CommandHook, fail_point, hooked_client
from tests.integration.processes import ROOT, child_env

KEEP = 3600.0


class Abort(Exception):
    """Raised in a transaction's callback to abort it."""


@pytest.fixture
def counters(collection: Collection[Document]) -> Iterator[Collection[Document]]:
    """The handler's own data, in the same database as the queue."""
    other = collection.database[f"{collection.name}_effects"]
    other.insert_one({"_id": "setup"})  # a collection cannot be created inside a transaction
    yield other
    other.drop()


@pytest.fixture(params=API_PARAMS)
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def in_transaction(queue: Queue, callback: Any) -> Any:
    """``callback(session)`` in a transaction of the queue's own client, for either API."""
    if isinstance(queue, SyncFacade):
        return run_transaction(queue, callback)
    with queue.collection.database.client.start_session() as session:
        return session.with_transaction(callback)


def mine(collection: Collection[Document], session: Any) -> Any:
    """``collection`` through the session's client: the test's own writes in its transaction."""
    if isinstance(session, SessionFacade):
        return on_session(session, collection)
    return on(session.client, collection)


def indexed(queue: Queue) -> None:
    """Indexes first: a transaction cannot create them."""
    queue.put({"setup": True})
    queue.clear()


def test_a_job_put_in_a_committed_transaction_exists_with_the_other_writes(
    queue: Queue, collection: Collection[Document], counters: Collection[Document],
) -> None:
    indexed(queue)

    def callback(session: ClientSession) -> Any:
        mine(counters, session).insert_one({"_id": "order-1"}, session=session)
        return queue.put({"order": 1}, session=session)

    job_id = in_transaction(queue, callback)
    assert counters.find_one({"_id": "order-1"}) is not None
    job = queue.next()
    assert job is not None and job.id == job_id


def test_a_job_put_in_an_aborted_transaction_never_exists(
    queue: Queue, collection: Collection[Document], counters: Collection[Document],
) -> None:
    seen: list[Any] = []

    def callback(session: ClientSession) -> None:
        seen.append(queue.put({"order": 1}, session=session))
        seen.extend(queue.put_many([{"order": 2}, {"order": 3}], session=session))
        mine(counters, session).insert_one({"_id": "order-1"}, session=session)
        raise Abort

    with pytest.raises(Abort):
        in_transaction(queue, callback)
    assert len(seen) == 3
    assert collection.count_documents({}) == 0 and counters.count_documents({}) == 1
    assert queue.next() is None


def test_a_waiting_consumer_claims_a_job_once_its_transaction_commits(
    make_queue: QueueFactory, collection: Collection[Document],
) -> None:
    producer = make_queue()
    indexed(producer)
    consumer = make_queue()
    waiter = Background(lambda: consumer.next(timeout=30))
    waiter.start()
    ids = in_transaction(producer, lambda s: producer.put_many([{"n": 1}], session=s))
    job = waiter.join(30)
    assert job is not None and job.id == ids[0]


def test_a_keyed_put_in_a_transaction_returns_the_active_holder(
    queue: Queue, collection: Collection[Document],
) -> None:
    holder = queue.put({"n": 1}, key="k")
    assert in_transaction(queue, lambda s: queue.put({"n": 2}, key="k", session=s)) == holder
    assert collection.count_documents({}) == 1


def test_complete_in_a_committed_transaction_applies_with_the_handlers_writes(
    make_queue: QueueFactory, collection: Collection[Document], counters: Collection[Document],
) -> None:
    queue = make_queue(keep_completed=KEEP)
    job_id = queue.put({"n": 1})
    job = queue.next()
    assert job is not None

    def callback(session: ClientSession) -> None:
        mine(counters, session).update_one({"_id": "n"}, {"$inc": {"n": 1}}, upsert=True,
                                           session=session)
        job.complete({"done": True}, session=session)

    in_transaction(queue, callback)
    info = queue.get(job_id)
    assert info is not None and (info.state, info.result) == ("completed", {"done": True})
    assert (counters.find_one({"_id": "n"}) or {})["n"] == 1


@pytest.mark.parametrize("keep", [0.0, KEEP])
def test_complete_in_an_aborted_transaction_leaves_the_job_locked(
    make_queue: QueueFactory, collection: Collection[Document], keep: float,
) -> None:
    queue = make_queue(keep_completed=keep)
    job_id = queue.put({"n": 1})
    job = queue.next()
    assert job is not None

    def callback(session: ClientSession) -> None:
        job.complete(session=session)
        raise Abort

    with pytest.raises(Abort):
        in_transaction(queue, callback)
    doc = collection.find_one({"_id": job_id}) or {}
    assert (doc.get("state"), doc.get("lease_token")) == ("locked", job.lease_token)


def test_complete_with_a_lost_lease_raises_and_the_transaction_commits_nothing(
    make_queue: QueueFactory, collection: Collection[Document], counters: Collection[Document],
) -> None:
    queue = make_queue(lease=0.2)
    job_id = queue.put({"n": 1})
    job = queue.next()
    assert job is not None
    wait_until(lambda: queue.reap() == 1)
    again = queue.next()
    assert again is not None and again.id == job_id

    def callback(session: ClientSession) -> None:
        mine(counters, session).update_one({"_id": "n"}, {"$inc": {"n": 1}}, upsert=True,
                                           session=session)
        job.complete(session=session)

    with pytest.raises(LeaseLost):
        in_transaction(queue, callback)
    assert counters.find_one({"_id": "n"}) is None
    assert (collection.find_one({"_id": job_id}) or {}).get("lease_token") == again.lease_token


def test_complete_again_when_with_transaction_retries_the_callback(
    mongo_uri: str, make_queue: QueueFactory, collection: Collection[Document],
    counters: Collection[Document], mongo_client: MongoClient[Document],
) -> None:
    """A transient error makes with_transaction run the callback again: complete() with it."""
    client = hooked_client(mongo_uri, CommandHook())
    try:
        queue = make_queue(on(client, collection))
        job_id = queue.put({"n": 1})
        job = queue.next()
        assert job is not None
        calls = []

        def callback(session: ClientSession) -> None:
            calls.append(1)
            mine(counters, session).update_one({"_id": "n"}, {"$inc": {"n": 1}}, upsert=True,
                                               session=session)
            job.complete(session=session)

        conflict = {"failCommands": ["delete"], "appName": client.options.pool_options.metadata[
            "application"]["name"], "errorCode": 112,
            "errorLabels": ["TransientTransactionError"]}
        with fail_point(mongo_client, {"times": 1}, conflict):
            in_transaction(queue, callback)
    finally:
        client.close()
    assert len(calls) == 2
    assert collection.find_one({"_id": job_id}) is None
    assert (counters.find_one({"_id": "n"}) or {})["n"] == 1


@contextmanager
def other_client_of(queue: Queue, mongo_uri: str) -> Iterator[Any]:
    """A second client of the queue's own flavour (``run_transaction``'s ``client``)."""
    if not isinstance(queue, SyncFacade):
        sync_client: MongoClient[Document]
        with MongoClient(mongo_uri) as sync_client:
            yield sync_client
        return
    async_client = queue._loop.call(_async_client(mongo_uri))
    try:
        yield async_client
    finally:
        queue._loop.call(async_client.close())


async def _async_client(uri: str) -> AsyncMongoClient[Document]:
    return AsyncMongoClient(uri)


def in_transaction_of(client: Any, queue: Queue, callback: Any) -> Any:
    if isinstance(queue, SyncFacade):
        return run_transaction(queue, callback, client=client)
    with client.start_session() as session:
        return session.with_transaction(callback)


@contextmanager
def session_outside_a_transaction(queue: Queue) -> Iterator[Any]:
    if not isinstance(queue, SyncFacade):
        with queue.collection.database.client.start_session() as session:
            yield session
        return
    session = queue.aqueue.plans.client.start_session()
    try:
        yield SessionFacade(queue._loop, session)
    finally:
        queue._loop.call(session.end_session())


@pytest.mark.parametrize("call", [
    lambda q, s: q.put({"n": 1}, session=s),
    lambda q, s: q.put({"n": 1}, key="k", session=s),
    lambda q, s: q.put_many([{"n": 1}], session=s),
])
def test_a_session_from_another_client_is_refused_before_anything_is_written(
    queue: Queue, collection: Collection[Document], mongo_uri: str, call: Any,
) -> None:
    def callback(session: ClientSession) -> None:
        call(queue, session)

    with other_client_of(queue, mongo_uri) as other, pytest.raises(ValueError, match="another"):
        in_transaction_of(other, queue, callback)
    assert collection.count_documents({}) == 0


def test_a_session_outside_a_transaction_or_not_a_session_is_refused(
    queue: Queue, collection: Collection[Document], mongo_uri: str,
) -> None:
    with session_outside_a_transaction(queue) as session, pytest.raises(
            ValueError, match="transaction"):
        queue.put({"n": 1}, session=session)
    with pytest.raises(TypeError):
        queue.put({"n": 1}, session="s")  # type: ignore[arg-type]
    queue.put({"n": 1})
    job = queue.next()
    assert job is not None
    with other_client_of(queue, mongo_uri) as other, pytest.raises(ValueError, match="another"):
        in_transaction_of(other, queue, lambda s: job.complete(session=s))
    assert collection.count_documents({}) == 1
    assert not job.settled
    job.complete()


@pytest.mark.sync_only  # the worker it kills is a sync process
def test_a_worker_killed_before_its_commit_applies_the_effect_exactly_once(
    mongo_uri: str, make_queue: QueueFactory, collection: Collection[Document],
    counters: Collection[Document], mongo_client: MongoClient[Document], tmp_path: Path,
) -> None:
    """The effectively-once pattern: effect and completion commit together or not at all."""
    queue = make_queue(lease=1.0)
    job_id = queue.put({"counter": "effects"})
    ready = tmp_path / "ready"
    admin = mongo_client.admin
    # A dead client's open transaction holds its locks until the server aborts it
    # (60 s by default): shortened so the lease's expiry is what the test waits for.
    limit = admin.command("getParameter", 1, transactionLifetimeLimitSeconds=1)
    admin.command("setParameter", 1, transactionLifetimeLimitSeconds=2)
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.txn_worker", mongo_uri,
         collection.database.name, collection.name, counters.name, str(ready)],
        cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: ready.exists() or child.poll() is not None, timeout=30)
        assert ready.exists(), "the worker ended before its commit"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert counters.find_one({"_id": "effects"}) is None  # the writes never committed
        wait_until(lambda: queue.reap() == 1, timeout=30)
        job = queue.next()
        assert job is not None and job.id == job_id and job.attempts == 2

        def handle(session: ClientSession) -> None:
            counters.update_one({"_id": "effects"}, {"$inc": {"n": 1}}, upsert=True,
                                session=session)
            job.complete(session=session)

        in_transaction(queue, handle)
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=10)  # closes its pipes
        admin.command("setParameter", 1,
                      transactionLifetimeLimitSeconds=limit["transactionLifetimeLimitSeconds"])
    assert (counters.find_one({"_id": "effects"}) or {})["n"] == 1
    assert collection.find_one({"_id": job_id}) is None
