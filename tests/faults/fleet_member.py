"""A fleet member process for test_fleet_handoff.

``python -m tests.faults.fleet_member URI DB QUEUE ID STALL``.

Claims with ``next()`` one job at a time, records each claim (job, consumer,
server time) and completes it. With STALL=1, every claim after the first
prints ``stalling`` and hangs before reaching the server: the moment between
"the view says this process is due" and "its claim runs", where the test
SIGKILLs it.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from pymongo import MongoClient

from streamqueue import Job, Queue


class StallingQueue(Queue):
    stall = False
    claims = 0

    def claim(self, limit: int = 1) -> list[Job]:
        self.claims += 1
        if self.stall and self.claims > 1:
            print("stalling", flush=True)
            time.sleep(3600)
        return super().claim(limit)


def main(uri: str, db: str, queue_name: str, consumer_id: str, stall: str) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    records = client[db][queue_name + ".records"]
    queue = StallingQueue(client[db][queue_name], consumer_id, fleet=1, max_await=1.0,
                          sweep_interval=60.0, fleet_patience=0.1)
    queue.stall = stall == "1"
    print("started", flush=True)
    while True:
        job = queue.next(timeout=None)
        if job is None:
            continue
        records.insert_one({"job": job.id, "consumer": consumer_id, "at": time.time()})
        job.complete()


if __name__ == "__main__":
    main(*sys.argv[1:6])
