"""The driver alone, for ``bench.aio``: bare pymongo claims and deletes on 4 threads against
4 coroutines of ``AsyncMongoClient``, on a queue's documents. What the asyncio API's drain
ratio can be compared with: the part of the gap that is the driver's, not streamqueue's."""

from __future__ import annotations

import asyncio
import time
import uuid

from pymongo import AsyncMongoClient, MongoClient, ReturnDocument
from pymongo.write_concern import WriteConcern

from streamqueue.bench.common import timed_threads
from streamqueue.storage import CLAIM_SORT, Document

CONSUMERS = 4
READY = {"state": "ready"}  # every job here is due: no $$NOW test, only the claim order
MAJORITY = WriteConcern("majority")


def lock() -> Document:
    # The queue's token index is unique among locked jobs: each claim brings its own.
    return {"$set": {"state": "locked", "lease_token": uuid.uuid4().hex}}


def floor_sync(uri: str, db: str, name: str, jobs: int) -> float:
    """Jobs/s of 4 threads draining ``jobs`` ready documents (claim, then delete each)."""
    client: MongoClient[Document] = MongoClient(uri)
    jobs_collection = client[db].get_collection(name, write_concern=MAJORITY)

    def consume() -> None:
        while (doc := jobs_collection.find_one_and_update(
                READY, lock(), sort=CLAIM_SORT, return_document=ReturnDocument.AFTER)) is not None:
            jobs_collection.delete_one({"_id": doc["_id"], "state": "locked"})

    elapsed = timed_threads(consume, CONSUMERS)
    client.close()
    return jobs / elapsed


async def floor_async(uri: str, db: str, name: str, jobs: int) -> float:
    """The same with 4 coroutines on one ``AsyncMongoClient``."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(uri)
    jobs_collection = client[db].get_collection(name, write_concern=MAJORITY)

    async def consume() -> None:
        while (doc := await jobs_collection.find_one_and_update(
                READY, lock(), sort=CLAIM_SORT, return_document=ReturnDocument.AFTER)) is not None:
            await jobs_collection.delete_one({"_id": doc["_id"], "state": "locked"})

    started = time.monotonic()
    await asyncio.gather(*(consume() for _ in range(CONSUMERS)))
    elapsed = time.monotonic() - started
    await client.close()
    return jobs / elapsed
