"""``python -m streamqueue.worker`` as a real process: crashes, drains, and its /metrics.

Handlers (``tests.handlers``) record every start and finish in a MongoDB
collection, so each test waits on what really happened, with a deadline.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo.collection import Collection

from streamqueue import Queue
from streamqueue.exitcodes import ExitCode
from streamqueue.storage import Document
from streamqueue.testing import free_port
from tests.helpers import wait_until
from tests.integration.processes import (
    CliProcess,
    child_env,
    cli_processes,
    run_cli,
    sample,
    scrape,
)

pytestmark = pytest.mark.timeout(120)

HANDLER = "tests.handlers:record"


@pytest.fixture
def records(collection: Collection[Document]) -> Iterator[Collection[Document]]:
    name = f"{collection.name}_records"
    yield collection.database[name]
    collection.database.drop_collection(name)


@pytest.fixture
def target(mongo_uri: str, collection: Collection[Document]) -> list[str]:
    return ["--uri", mongo_uri, "--db", collection.database.name, "--queue", collection.name]


@pytest.fixture
def env(mongo_uri: str, records: Collection[Document]) -> dict[str, str]:
    return child_env(
        STREAMQUEUE_TEST_RECORD_URI=mongo_uri,
        STREAMQUEUE_TEST_RECORD_DB=records.database.name,
        STREAMQUEUE_TEST_RECORD_COLLECTION=records.name,
    )


@pytest.fixture
def processes() -> Iterator[list[CliProcess]]:
    with cli_processes() as started:
        yield started


@pytest.fixture
def queue(collection: Collection[Document]) -> Iterator[Queue]:
    with Queue(collection, max_await=1.0) as q:
        yield q


def count(records: Collection[Document], **query: Any) -> int:
    return records.count_documents(query)


def start_worker(processes: list[CliProcess], env: dict[str, str], target: list[str],
                 *options: str) -> CliProcess:
    worker = CliProcess("streamqueue.worker", [HANDLER, *target, *options], env)
    processes.append(worker)
    return worker


def test_sigkill_mid_job_is_redelivered_by_the_reaper_and_completed_by_another_worker(
    queue: Queue, collection: Collection[Document], records: Collection[Document],
    env: dict[str, str], target: list[str], processes: list[CliProcess],
) -> None:
    job_id = queue.put({"n": 1, "hang_first": True})
    first = start_worker(processes, env, target, "--lease", "2", "--heartbeat", "0.3",
                         "--concurrency", "1")
    assert wait_until(lambda: count(records, n=1, event="started", pid=first.pid) == 1,
                      timeout=30), first.describe()

    # Alive and slow: heartbeats push the lease on, so nobody takes the job.
    doc = collection.find_one({"_id": job_id})
    assert doc is not None and doc["state"] == "locked"
    leased_until = doc["locked_until"]
    assert wait_until(lambda: collection.find_one({"_id": job_id})["locked_until"]  # type: ignore[index]
                      > leased_until, timeout=10), first.describe()

    first.send(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL

    second = start_worker(processes, env, target, "--lease", "30", "--concurrency", "2")
    reaper = CliProcess("streamqueue.reaper", [*target, "--interval", "0.2"], env)
    processes.append(reaper)

    assert wait_until(lambda: count(records, n=1, event="done") == 1, timeout=60), (
        f"{second.describe()}\n{reaper.describe()}")
    assert wait_until(lambda: collection.count_documents({}) == 0, timeout=10)
    done = records.find_one({"n": 1, "event": "done"})
    assert done is not None and done["pid"] == second.pid and done["attempt"] == 2
    assert count(records, n=1, event="started") == 2
    assert queue.failed.count_documents({}) == 0
    assert "1 requeued, 0 dead" in reaper.stderr

    for process in (second, reaper):
        process.send(signal.SIGTERM)
    assert second.wait(30) == ExitCode.OK, second.describe()
    assert reaper.wait(30) == ExitCode.OK, reaper.describe()


def test_sigterm_drains_running_jobs_and_claims_no_more(
    queue: Queue, collection: Collection[Document], records: Collection[Document],
    env: dict[str, str], target: list[str], processes: list[CliProcess],
) -> None:
    running = queue.put({"n": 1, "work": 1.5}, priority=10)
    waiting = queue.put({"n": 2})
    worker = start_worker(processes, env, target, "--concurrency", "1",
                          "--shutdown-grace", "30")
    assert wait_until(lambda: count(records, n=1, event="started") == 1, timeout=30), (
        worker.describe())

    worker.send(signal.SIGTERM)
    assert worker.wait(30) == ExitCode.OK, worker.describe()

    # The running job finished and was completed ...
    assert count(records, n=1, event="done") == 1
    assert collection.find_one({"_id": running}) is None
    # ... and nothing new was claimed once the signal came.
    assert count(records, n=2) == 0
    left = collection.find_one({"_id": waiting})
    assert left is not None and left["state"] == "ready" and left["attempts"] == 0


def test_sigterm_leaves_jobs_still_running_after_the_grace_period_to_their_leases(
    queue: Queue, collection: Collection[Document], records: Collection[Document],
    env: dict[str, str], target: list[str], processes: list[CliProcess],
) -> None:
    job_id = queue.put({"n": 1, "work": 60})
    worker = start_worker(processes, env, target, "--concurrency", "1",
                          "--shutdown-grace", "0.5")
    assert wait_until(lambda: count(records, n=1, event="started") == 1, timeout=30), (
        worker.describe())

    worker.send(signal.SIGTERM)
    assert worker.wait(30) == ExitCode.OK, worker.describe()
    assert "left to its lease" in worker.stderr, worker.describe()

    doc = collection.find_one({"_id": job_id})
    assert doc is not None
    # Not handed back while its handler may still run: it stays locked until
    # the lease runs out, and the cut-short attempt counts.
    assert doc["state"] == "locked" and doc["attempts"] == 1
    assert queue.next() is None
    assert count(records, n=1, event="done") == 0


@pytest.mark.parametrize(("jobs", "options"), [
    (5, []),
    (40, ["--batch", "4", "--claims-in-flight", "2"]),
], ids=["plain", "claims-in-flight"])
def test_burst_worker_drains_the_queue_and_exits(
    queue: Queue, collection: Collection[Document], records: Collection[Document],
    env: dict[str, str], target: list[str], jobs: int, options: list[str],
) -> None:
    queue.put_many([{"n": n} for n in range(jobs)])
    result = run_cli("streamqueue.worker", HANDLER, *target, "--burst", "--concurrency", "2",
                     *options, env=env)
    assert result.returncode == ExitCode.OK, result.stderr
    assert count(records, event="done") == jobs
    assert collection.count_documents({}) == 0


def test_claims_in_flight_without_a_fixed_batch_is_a_usage_error(
    queue: Queue, env: dict[str, str], target: list[str],
) -> None:
    queue.put({"n": 1})
    result = run_cli("streamqueue.worker", HANDLER, *target, "--burst",
                     "--claims-in-flight", "2", env=env)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "claims_in_flight" in result.stderr
    assert queue.size() == 1  # nothing claimed


def test_metrics_counters_match_the_jobs_run(
    queue: Queue, collection: Collection[Document], records: Collection[Document],
    env: dict[str, str], target: list[str], processes: list[CliProcess],
) -> None:
    name = collection.name
    queue.put_many([{"n": n} for n in range(8)])  # succeed at once
    queue.put_many([{"n": n, "fail_attempts": 1} for n in (8, 9)])  # succeed on attempt 2
    with Queue(collection, max_attempts=2, max_await=1.0) as strict:
        strict.put({"n": 10, "fail_attempts": 99})  # fails twice, then dead

    port = free_port()
    worker = start_worker(processes, env, target, "--concurrency", "3", "--backoff", "0",
                          "--metrics-port", str(port), "--metrics-addr", "127.0.0.1")
    assert wait_until(lambda: count(records, event="done") == 10
                      and queue.failed.count_documents({}) == 1, timeout=60), worker.describe()

    expected = {
        "streamqueue_jobs_claimed_total": 14,  # 8 + 2 * 2 + 2
        "streamqueue_jobs_completed_total": 10,
        "streamqueue_attempts_failed_total": 4,  # 2 retried + 2 by the dead job
        "streamqueue_jobs_failed_total": 4,  # its deprecated name, kept for one release
        "streamqueue_jobs_dead_total": 1,
        "streamqueue_jobs_released_total": 0,
        "streamqueue_jobs_enqueued_total": 0,  # enqueued by this test, not the worker
        "streamqueue_job_attempts_count": 11,  # at completion (10) and at death (1)
        "streamqueue_job_attempts_sum": 14,  # 8 * 1 + 2 * 2 + 2
        "streamqueue_job_wait_seconds_count": 14,
        "streamqueue_worker_busy_slots": 0,
        "streamqueue_worker_slots": 3,
    }

    def mismatches() -> dict[str, float | None]:
        samples = scrape(port)
        return {metric: sample(samples, metric, queue=name) for metric, want in expected.items()
                if sample(samples, metric, queue=name) != want}

    assert wait_until(lambda: not mismatches(), timeout=30, interval=0.1), (
        f"{mismatches()}\n{worker.describe()}")
    samples = scrape(port)
    for outcome, runs in (("completed", 10), ("failed", 4), ("released", 0), ("lease_lost", 0)):
        assert sample(samples, "streamqueue_job_run_seconds_count", queue=name,
                      outcome=outcome) == runs
    age = sample(samples, "streamqueue_changestream_last_event_age_seconds", queue=name)
    assert age is not None and 0 <= age < 120

    worker.send(signal.SIGTERM)
    assert worker.wait(30) == ExitCode.OK, worker.describe()
