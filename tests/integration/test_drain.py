"""Many consumers in several processes: every job completed exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bson import ObjectId
from pymongo.collection import Collection

from streamqueue.children import spawn
from streamqueue.storage import Document
from tests.integration.conftest import QueueFactory

ROOT = Path(__file__).resolve().parents[2]
JOBS = 2000
PROCESSES = 2
THREADS = 8


def test_two_processes_of_eight_threads_complete_every_job_exactly_once(
    make_queue: QueueFactory, collection: Collection[Document], mongo_uri: str
) -> None:
    producer = make_queue()
    consumers: list[subprocess.Popen[str]] = []
    try:
        consumers += [
            spawn(
                [sys.executable, "-m", "tests.integration.drain_worker", mongo_uri,
                 collection.database.name, collection.name, str(THREADS)],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for _ in range(PROCESSES)
        ]
        # Jobs go in while the consumers start up and wait: both push wake-ups
        # and claims racing across processes are exercised.
        ids = []
        started = time.monotonic()
        for chunk in range(0, JOBS, 100):
            ids += producer.put_many([{"n": n} for n in range(chunk, chunk + 100)])
        results = []
        for process in consumers:
            out, err = process.communicate(timeout=90)
            assert process.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
        elapsed = time.monotonic() - started
        per_process = [len(r["completed"]) for r in results]
        print(f"\n{JOBS} jobs by {PROCESSES}x{THREADS} consumers in {elapsed:.1f}s: "
              f"{per_process} completed per process")

        completed = [ObjectId(job_id) for r in results for job_id in r["completed"]]
        # Exactly once: every job completed, none twice (within or across processes).
        assert len(completed) == JOBS
        assert set(completed) == set(ids)
        assert all(r["lost"] == 0 for r in results), results
        assert all(r["redelivered"] == 0 for r in results), results
        assert all(count > 0 for count in per_process), "one process did all the work"
        assert producer.size() == 0
        assert producer.failed.count_documents({}) == 0
    finally:
        for process in consumers:
            if process.poll() is None:
                process.kill()
                process.wait(10)
