"""A consumer process for the multi-process drain test (run with ``python -m``).

Usage: ``python -m tests.integration.drain_worker URI DB COLLECTION THREADS``

Each thread claims until the queue stays empty for a second and completes each
job. The process prints one JSON line: the ids whose ``complete()`` succeeded
here, lost leases, and jobs delivered more than once.
"""

from __future__ import annotations

import json
import os
import sys
import threading

from pymongo import MongoClient

from streamqueue import LeaseLost, Queue
from streamqueue.storage import Document


def main(argv: list[str]) -> int:
    uri, db_name, name, threads = argv
    client: MongoClient[Document] = MongoClient(uri)
    queue = Queue(client[db_name][name], consumer_id=f"drain-{os.getpid()}", lease=120.0,
                  max_await=1.0)
    completed: list[str] = []
    counts = {"lost": 0, "redelivered": 0}
    lock = threading.Lock()
    start = threading.Barrier(int(threads))

    def consume() -> None:
        start.wait(30)
        while (job := queue.next(timeout=1.0)) is not None:
            try:
                job.complete()
            except LeaseLost:
                with lock:
                    counts["lost"] += 1
                continue
            with lock:
                completed.append(str(job.id))
                counts["redelivered"] += job.attempts != 1

    workers = [threading.Thread(target=consume, name=f"drain-{i}") for i in range(int(threads))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    queue.close()
    client.close()
    print(json.dumps({"completed": completed, **counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
