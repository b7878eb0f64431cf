"""Drive an ``AsyncQueue`` from test threads, so one test body runs against both APIs.

``SyncFacade`` has ``Queue``'s sync methods: each call runs the ``AsyncQueue``
coroutine of the same name on an event loop in a thread of its own and waits
for it. Jobs come back as ``JobFacade`` (``AsyncJob`` driven the same way).
Nothing is mocked: the async queue talks to the real server through
``AsyncMongoClient``.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.collection import Collection

from streamqueue.aio import AsyncJob, AsyncQueue
from streamqueue.storage import Document

T = TypeVar("T")


class LoopThread:
    """An event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="aio-adapter",
                                        daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def _wrap(loop: LoopThread, value: Any) -> Any:
    if isinstance(value, AsyncJob):
        return JobFacade(loop, value)
    if isinstance(value, list) and value and isinstance(value[0], AsyncJob):
        return [JobFacade(loop, job) for job in value]
    return value


def _unwrap(value: Any) -> Any:
    if isinstance(value, list | tuple) and value and isinstance(value[0], JobFacade):
        return [job.job for job in value]
    if isinstance(value, SessionFacade):
        return value.session
    return value


class SessionFacade:
    """An ``AsyncClientSession`` in a transaction on a loop, handed to a test's sync
    callback (running in a thread of its own, see ``run_transaction``)."""

    def __init__(self, loop: LoopThread, session: AsyncClientSession) -> None:
        self.loop = loop
        self.session = session


def run_transaction(queue: SyncFacade, callback: Callable[[SessionFacade], T], *,
                    client: AsyncMongoClient[Document] | None = None) -> T:
    """``callback(session)`` in a transaction of the queue's own async client (or
    ``client``), through ``AsyncClientSession.with_transaction``, run again as it decides.

    The callback is a test's sync code: it runs in a thread while the loop awaits it,
    so its facade calls (given the ``SessionFacade``) run on the free loop.
    """
    loop = queue._loop
    owner = client if client is not None else queue.aqueue.plans.client

    async def transaction() -> T:
        async with owner.start_session() as session:
            async def body(session: AsyncClientSession) -> T:
                return await asyncio.to_thread(callback, SessionFacade(loop, session))

            result: T = await session.with_transaction(body)
            return result

    return loop.call(transaction())


def on_session(session: SessionFacade, collection: Collection[Document]) -> Any:
    """``collection`` through the session's own async client, its methods made blocking
    (a test's own writes in that transaction)."""
    client = session.session.client
    return _Driven(session.loop, client[collection.database.name][collection.name])


class _Driven:
    """Attribute access passes through; coroutine methods become blocking calls."""

    def __init__(self, loop: LoopThread, target: Any) -> None:
        self._loop = loop
        self._target = target

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        return self._blocking(attr)

    def _blocking(self, method: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            args = tuple(_unwrap(arg) for arg in args)
            kwargs = {name: _unwrap(value) for name, value in kwargs.items()}
            return _wrap(self._loop, self._loop.call(method(*args, **kwargs)))

        return call


class JobFacade(_Driven):
    def __init__(self, loop: LoopThread, job: AsyncJob) -> None:
        super().__init__(loop, job)
        self.job = job

    def __repr__(self) -> str:
        return repr(self.job)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobFacade) and other.job is self.job

    def __hash__(self) -> int:
        return hash(self.job)

    def __enter__(self) -> dict[str, Any]:
        payload: dict[str, Any] = self._loop.call(self.job.__aenter__())
        return payload

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._loop.call(self.job.__aexit__(exc_type, exc, tb))


class SyncFacade(_Driven):
    """``collection`` and ``failed`` are the sync driver's, for the tests' own reads."""

    def __init__(self, loop: LoopThread, queue: AsyncQueue,
                 collection: Collection[Document]) -> None:
        super().__init__(loop, queue)
        self.aqueue = queue
        self.collection = collection
        self.failed = collection.database[f"{collection.name}.failed"]

    def __repr__(self) -> str:
        return f"<SyncFacade of {self.aqueue!r}>"

    def __enter__(self) -> SyncFacade:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncQueues:
    """Makes ``AsyncQueue`` facades on the collections tests give; closes everything after.

    Each queue gets an event loop thread and an ``AsyncMongoClient`` of its own,
    made with the options of the sync client the test's collection came from
    (its ``appname``, so fail points reach it, and its command listeners), so
    a test's hook may drive another queue while this one's loop waits.
    """

    def __init__(self) -> None:
        self.made: list[tuple[LoopThread, AsyncMongoClient[Document], AsyncQueue]] = []

    def make(self, collection: Collection[Document], **options: Any) -> SyncFacade:
        loop = LoopThread()
        sync_client = collection.database.client

        async def build() -> tuple[AsyncMongoClient[Document], AsyncQueue]:
            client: AsyncMongoClient[Document] = AsyncMongoClient(**sync_client._init_kwargs)
            target = client[collection.database.name][collection.name]
            if not collection.write_concern.is_server_default:
                target = target.with_options(write_concern=collection.write_concern)
            return client, AsyncQueue(target, **options)

        client, queue = loop.call(build())
        self.made.append((loop, client, queue))
        return SyncFacade(loop, queue, collection)

    def close(self) -> None:
        for loop, client, queue in self.made:
            async def close(client: AsyncMongoClient[Document] = client,
                            queue: AsyncQueue = queue) -> None:
                await queue.close()
                await client.close()

            loop.call(close())
            loop.stop()


def job_for(queue: Any, doc: Document) -> Any:
    """A claim object for ``doc`` of the queue's own API: ``Job``, or ``AsyncJob`` behind a facade."""
    if isinstance(queue, SyncFacade):
        return JobFacade(queue._loop, AsyncJob(queue.aqueue, doc))
    return queue.job_type(queue, doc)
