"""A worker that dies inside its transaction (run with ``python -m``).

Usage: ``python -m tests.integration.txn_worker URI DB COLLECTION COUNTERS READY_FILE``

It claims one job and, in one transaction, increments the job's counter in
COUNTERS and completes the job; before the commit it writes READY_FILE and
blocks, so the test can SIGKILL it between the handler's writes and the commit.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.client_session import ClientSession

from streamqueue import Queue
from streamqueue.storage import Document


def main(argv: list[str]) -> int:
    uri, db_name, name, counters_name, ready_file = argv
    client: MongoClient[Document] = MongoClient(uri)
    queue = Queue(client[db_name][name], consumer_id=f"txn-{os.getpid()}", lease=1.0,
                  max_await=1.0)
    counters = client[db_name][counters_name]
    job = queue.next(timeout=30)
    if job is None:
        return 1

    def handle(session: ClientSession) -> None:
        counters.update_one({"_id": job.payload["counter"]}, {"$inc": {"n": 1}}, upsert=True,
                            session=session)
        job.complete(session=session)
        Path(ready_file).write_text(str(os.getpid()))
        while True:  # killed here, before the commit
            time.sleep(0.05)

    with client.start_session() as session:
        session.with_transaction(handle)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
