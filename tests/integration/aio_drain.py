"""A consumer process for the two-event-loop drain test: ``python -m tests.integration.aio_drain``.

Arguments: URI DB COLLECTION CONSUMERS. Runs CONSUMERS coroutines on one event
loop, each claiming and completing with ``AsyncQueue.next`` until the queue
stays empty, and prints each completed job's id on its own line.
"""

from __future__ import annotations

import asyncio
import sys

from pymongo import AsyncMongoClient

from streamqueue.aio import AsyncQueue
from streamqueue.storage import Document


async def consume(queue: AsyncQueue, done: list[str]) -> None:
    while True:
        job = await queue.next(timeout=2.0)
        if job is None:
            if await queue.size() == 0:
                return
            continue
        await job.complete()
        done.append(str(job.id))


async def main(uri: str, db: str, name: str, consumers: int) -> None:
    client: AsyncMongoClient[Document] = AsyncMongoClient(uri)
    done: list[str] = []
    async with AsyncQueue(client[db][name], max_await=1.0) as queue:
        print("ready", flush=True)
        await asyncio.gather(*(consume(queue, done) for _ in range(consumers)))
    await client.close()
    sys.stdout.write("".join(f"done {job_id}\n" for job_id in done))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
