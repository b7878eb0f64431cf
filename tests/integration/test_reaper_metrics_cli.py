"""The reaper and the one-shot commands as real subprocesses against the real replica set.

``python -m streamqueue.reaper --once`` hands an expired lease on (requeue or
dead-letter); the long-running reaper serves /metrics, scraped over HTTP; and
``put``, ``stats``, ``failed list|retry|purge`` work through the real CLI, with
one-line errors and named exit codes when the input or the URI is bad.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import pytest
from bson import ObjectId
from pymongo.collection import Collection

from streamqueue import LeaseLost, Queue
from streamqueue.exitcodes import ExitCode
from streamqueue.storage import Document
from streamqueue.testing import free_port
from tests.helpers import Background, wait_until
from tests.integration.processes import (
    CliProcess,
    child_env,
    cli_processes,
    run_cli,
    sample,
    scrape,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def target(mongo_uri: str, collection: Collection[Document]) -> list[str]:
    """``--uri --db --queue`` for the test's collection."""
    return ["--uri", mongo_uri, "--db", collection.database.name, "--queue", collection.name]


@pytest.fixture
def processes() -> Iterator[list[CliProcess]]:
    with cli_processes() as started:
        yield started


def make_queue(collection: Collection[Document], *, lease: float = 300.0,
               max_attempts: int = 3) -> Queue:
    # A short max_await keeps Queue.close() quick at the end of each test.
    return Queue(collection, lease=lease, max_attempts=max_attempts, max_await=1.0)


def lease_expired(collection: Collection[Document], job_id: ObjectId) -> bool:
    """Judged by the server's clock, as the reaper judges it."""
    return collection.count_documents({
        "_id": job_id, "state": "locked", "$expr": {"$lt": ["$locked_until", "$$NOW"]},
    }) == 1


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    assert "Traceback" not in text
    return lines[0]


# -- the reaper ------------------------------------------------------------------------------------


def test_reaper_once_requeues_an_expired_lease(collection: Collection[Document],
                                               target: list[str]) -> None:
    with make_queue(collection, lease=0.3, max_attempts=3) as queue:
        job_id = queue.put({"n": 1})
        job = queue.next(timeout=0)
        assert job is not None and job.id == job_id
        assert wait_until(lambda: lease_expired(collection, job_id), timeout=10)

        result = run_cli("streamqueue.reaper", *target, "--once")

        assert result.returncode == ExitCode.OK, result.stderr
        assert "1 requeued, 0 dead" in result.stderr
        doc = collection.find_one({"_id": job_id})
        assert doc is not None
        assert doc["state"] == "ready"
        assert doc["attempts"] == 1
        assert doc["last_error"].startswith("lease expired while held by ")
        assert "lease_token" not in doc
        # The old claim is void: completing it changes nothing.
        with pytest.raises(LeaseLost):
            job.complete()
        again = queue.next(timeout=0)
        assert again is not None and again.id == job_id and again.attempts == 2
        again.complete()


def test_reaper_once_dead_letters_an_exhausted_job(collection: Collection[Document],
                                                   target: list[str]) -> None:
    with make_queue(collection, lease=0.3, max_attempts=1) as queue:
        job_id = queue.put({"n": 1})
        assert queue.next(timeout=0) is not None
        assert wait_until(lambda: lease_expired(collection, job_id), timeout=10)

        result = run_cli("streamqueue.reaper", *target, "--once")

        assert result.returncode == ExitCode.OK, result.stderr
        assert "0 requeued, 1 dead" in result.stderr
        assert collection.count_documents({}) == 0
        dead = queue.failed.find_one({"_id": job_id})
        assert dead is not None and dead["state"] == "failed"
        assert dead["last_error"].startswith("lease expired")

        listed = run_cli("streamqueue", "failed", "list", *target, "--json")
        assert listed.returncode == ExitCode.OK, listed.stderr
        [entry] = json.loads(listed.stdout)
        assert entry["id"] == str(job_id) and entry["payload"] == {"n": 1}


def test_reaper_once_leaves_live_leases_alone(collection: Collection[Document],
                                              target: list[str]) -> None:
    with make_queue(collection, lease=300, max_attempts=1) as queue:
        job_id = queue.put({"n": 1})
        job = queue.next(timeout=0)
        assert job is not None
        result = run_cli("streamqueue.reaper", *target, "--once")
        assert result.returncode == ExitCode.OK, result.stderr
        doc = collection.find_one({"_id": job_id})
        assert doc is not None and doc["state"] == "locked"
        job.complete()


def test_reaper_survives_an_unreachable_queue_and_logs_it_once(
        collection: Collection[Document], caplog: pytest.LogCaptureFixture) -> None:
    from prometheus_client import CollectorRegistry
    from pymongo import MongoClient

    from streamqueue.errors import QueueUnavailable
    from streamqueue.metrics import PrometheusHooks
    from streamqueue.reaper import Reaper
    from streamqueue.retry import RetryPolicy

    registry = CollectorRegistry()
    hooks = PrometheusHooks(registry)
    dead_client: MongoClient[Document] = MongoClient(
        f"mongodb://127.0.0.1:{free_port()}/?directConnection=true",
        serverSelectionTimeoutMS=100)
    try:
        with Queue(dead_client["d"]["gone"], retry=RetryPolicy(max_delay=0.2),
                   max_await=1.0) as unreachable, \
                Queue(collection, lease=0.3, hooks=hooks, max_await=1.0) as healthy:
            job_id = healthy.put({"n": 1})
            assert healthy.next(timeout=0) is not None
            assert wait_until(lambda: lease_expired(collection, job_id), timeout=10)
            reaper = Reaper([unreachable, healthy], interval=0.05, hooks=hooks)

            first = reaper.run_once()
            assert isinstance(first.errors["gone"], QueueUnavailable)
            # The other queue is reaped all the same, and its gauges published.
            assert first.reaped == {collection.name: 1}
            assert registry.get_sample_value(
                "streamqueue_queue_jobs", {"queue": collection.name, "state": "available"}) == 1

            runner = Background(reaper.run, name="reaper").start()
            assert wait_until(lambda: reaper.passes >= 4, timeout=30)
            reaper.stop()
            runner.join(30)
    finally:
        dead_client.close()
    failures = [r for r in caplog.records
                if r.name == "streamqueue.reaper" and "reaping d.gone failed" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]


def test_reaper_serves_queue_gauges_over_http(collection: Collection[Document],
                                              target: list[str],
                                              processes: list[CliProcess]) -> None:
    name = collection.name
    with make_queue(collection, lease=0.3, max_attempts=1) as short, \
            make_queue(collection, lease=300, max_attempts=3) as normal:
        doomed = short.put({"n": "doomed"})
        assert short.next(timeout=0) is not None  # expires, then dead-lettered
        normal.put({"n": "a"})
        normal.put({"n": "b"})
        held = normal.next(timeout=0)  # a: locked with a long lease
        assert held is not None
        normal.put({"n": "later"}, delay=3600)
        assert wait_until(lambda: lease_expired(collection, doomed), timeout=10)

        port = free_port()
        reaper = CliProcess("streamqueue.reaper", [*target, "--interval", "0.2",
                                                   "--metrics-port", str(port),
                                                   "--metrics-addr", "127.0.0.1"], child_env())
        processes.append(reaper)

        def gauge(state: str) -> float | None:
            return sample(scrape(port), "streamqueue_queue_jobs", queue=name, state=state)

        # Reaped before it is counted: no expired lease is left to show.
        expected = {"available": 1, "locked": 1, "expired": 0, "delayed": 1, "dead": 1,
                    "failed": 1}
        assert wait_until(lambda: all(gauge(s) == n for s, n in expected.items()),
                          timeout=30, interval=0.1), reaper.describe()
        samples = scrape(port)
        assert sample(samples, "streamqueue_leases_expired_total", queue=name) == 1
        assert sample(samples, "streamqueue_jobs_dead_total", queue=name) == 1
        assert sample(samples, "streamqueue_job_attempts_count", queue=name) == 1
        oldest = sample(samples, "streamqueue_queue_oldest_available_age_seconds", queue=name)
        assert oldest is not None and 0 <= oldest < 60
        # A reaper exports no worker series.
        assert sample(samples, "streamqueue_jobs_completed_total", queue=name) is None

        # The gauges move as jobs flow.
        held.complete()
        normal.put({"n": "c"})
        expected = {"available": 2, "locked": 0, "delayed": 1, "dead": 1, "failed": 1}
        assert wait_until(lambda: all(gauge(s) == n for s, n in expected.items()),
                          timeout=30, interval=0.1), reaper.describe()

        reaper.send(signal.SIGTERM)
        assert reaper.wait(30) == ExitCode.OK, reaper.describe()
        assert "reaper stopped" in reaper.stderr
        assert scrape(port) is None


def test_reaper_metrics_port_in_use_is_a_config_error(collection: Collection[Document],
                                                      target: list[str]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_cli("streamqueue.reaper", *target, "--metrics-port", str(port),
                         "--metrics-addr", "127.0.0.1")
    assert result.returncode == ExitCode.CONFIG
    assert "cannot serve metrics on 127.0.0.1:" in one_line(result.stderr)


# -- put and stats -----------------------------------------------------------------------------------


def test_put_and_stats(collection: Collection[Document], target: list[str]) -> None:
    first = run_cli("streamqueue", "put", *target, "--priority", "5", '{"n": 1}')
    assert first.returncode == ExitCode.OK, first.stderr
    first_id = ObjectId(first.stdout.strip())
    delayed = run_cli("streamqueue", "put", *target, "--delay", "3600", "--max-attempts", "7",
                      '{"n": 2, "tags": ["x"]}')
    assert delayed.returncode == ExitCode.OK, delayed.stderr
    piped = run_cli("streamqueue", "put", *target, "-", stdin='{"n": 3}\n')
    assert piped.returncode == ExitCode.OK, piped.stderr

    doc = collection.find_one({"_id": first_id})
    assert doc is not None
    assert (doc["payload"], doc["priority"], doc["max_attempts"]) == ({"n": 1}, 5, 3)
    late = collection.find_one({"_id": ObjectId(delayed.stdout.strip())})
    assert late is not None and late["max_attempts"] == 7
    assert (late["available_at"] - late["enqueued_at"]).total_seconds() == pytest.approx(3600)

    stats = run_cli("streamqueue", "stats", *target, "--json")
    assert stats.returncode == ExitCode.OK, stats.stderr
    numbers = json.loads(stats.stdout)[collection.name]
    assert {k: numbers[k] for k in ("available", "locked", "delayed", "dead", "total")} == {
        "available": 2, "locked": 0, "delayed": 1, "dead": 0, "total": 3}
    assert numbers["exists"] is True
    assert 0 <= numbers["oldest_available_age_seconds"] < 60

    table = run_cli("streamqueue", "stats", *target)
    assert table.returncode == ExitCode.OK, table.stderr
    header, row = table.stdout.strip().splitlines()
    assert header.split()[:7] == ["QUEUE", "AVAILABLE", "LOCKED", "EXPIRED", "DELAYED", "DEAD",
                                  "TOTAL"]
    assert row.split()[:7] == [collection.name, "2", "0", "0", "1", "0", "3"]


def test_stats_show_expired_leases_apart_from_live_ones(collection: Collection[Document],
                                                        target: list[str]) -> None:
    from prometheus_client import CollectorRegistry

    from streamqueue.metrics import PrometheusHooks

    name = collection.name
    with make_queue(collection, lease=0.3) as short, make_queue(collection) as normal:
        stuck = short.put({"n": "stuck"}, priority=1)
        assert short.next(timeout=0) is not None  # its consumer "died": never settled
        normal.put({"n": "held"})
        assert normal.next(timeout=0) is not None
        assert wait_until(lambda: lease_expired(collection, stuck), timeout=10)

        stats = normal.stats()
        assert {k: stats[k] for k in ("available", "locked", "expired", "delayed", "total")} == {
            "available": 0, "locked": 1, "expired": 1, "delayed": 0, "total": 2}

        as_json = run_cli("streamqueue", "stats", *target, "--json")
        assert as_json.returncode == ExitCode.OK, as_json.stderr
        numbers = json.loads(as_json.stdout)[name]
        assert (numbers["locked"], numbers["expired"], numbers["total"]) == (1, 1, 2)
        table = run_cli("streamqueue", "stats", *target)
        assert table.returncode == ExitCode.OK, table.stderr
        header, row = table.stdout.strip().splitlines()
        cells = dict(zip(header.split()[:7], row.split()[:7], strict=True))
        assert (cells["LOCKED"], cells["EXPIRED"], cells["TOTAL"]) == ("1", "1", "2")

        registry = CollectorRegistry()
        PrometheusHooks(registry).observe_queue(name, stats, 0.0)
        for state, value in (("locked", 1), ("expired", 1), ("available", 0)):
            assert registry.get_sample_value(
                "streamqueue_queue_jobs", {"queue": name, "state": state}) == value, state

        assert normal.reap() == 1
        stats = normal.stats()
        assert (stats["available"], stats["locked"], stats["expired"]) == (1, 1, 0)


def test_commands_read_their_settings_from_the_environment(
        mongo_uri: str, collection: Collection[Document]) -> None:
    env = child_env(STREAMQUEUE_URI=mongo_uri, STREAMQUEUE_DB=collection.database.name,
                    STREAMQUEUE_QUEUE=collection.name, STREAMQUEUE_PRIORITY="9")
    put = run_cli("streamqueue", "put", '{"n": 1}', env=env)
    assert put.returncode == ExitCode.OK, put.stderr
    doc = collection.find_one({"_id": ObjectId(put.stdout.strip())})
    assert doc is not None and doc["priority"] == 9
    stats = run_cli("streamqueue", "stats", "--json", env=env)
    assert stats.returncode == ExitCode.OK, stats.stderr
    assert json.loads(stats.stdout)[collection.name]["available"] == 1


def test_stats_of_several_queues_notes_missing_ones(collection: Collection[Document],
                                                    mongo_uri: str) -> None:
    missing = f"{collection.name}_missing"
    result = run_cli("streamqueue", "stats", "--uri", mongo_uri, "--db",
                     collection.database.name, "--queue", f"{collection.name},{missing}",
                     "--json")
    assert result.returncode == ExitCode.OK, result.stderr
    rows = json.loads(result.stdout)
    assert set(rows) == {collection.name, missing}
    assert rows[missing]["exists"] is False and rows[missing]["total"] == 0
    assert f"{missing} does not exist" in result.stderr


# -- the error queue -------------------------------------------------------------------------------


def test_failed_list_retry_purge(collection: Collection[Document], target: list[str]) -> None:
    with make_queue(collection, max_attempts=1) as queue:
        ids = [queue.put({"n": n}) for n in range(2)]
        for job in queue.next_batch(2, timeout=0):
            job.error("Traceback (most recent call last):\n  ...\nValueError: boom")
        assert queue.failed.count_documents({}) == 2

    listed = run_cli("streamqueue", "failed", "list", *target, "--json")
    assert listed.returncode == ExitCode.OK, listed.stderr
    entries = json.loads(listed.stdout)
    assert {e["id"] for e in entries} == {str(i) for i in ids}
    assert all(e["attempts"] == 1 and e["last_error"].endswith("ValueError: boom")
               for e in entries)

    table = run_cli("streamqueue", "failed", "list", *target)
    assert table.returncode == ExitCode.OK, table.stderr
    lines = table.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["JOB", "ID"] and len(lines) == 3
    assert all(line.endswith("ValueError: boom") for line in lines[1:])

    retried = run_cli("streamqueue", "failed", "retry", *target, str(ids[0]))
    assert retried.returncode == ExitCode.OK, retried.stderr
    assert retried.stdout.startswith("moved 1 job back to ")
    back = collection.find_one({"_id": ids[0]})
    assert back is not None and back["state"] == "ready" and back["attempts"] == 0

    again = run_cli("streamqueue", "failed", "retry", *target, str(ids[0]))
    assert again.returncode == ExitCode.NOT_FOUND
    assert "no job" in one_line(again.stderr)

    refused = run_cli("streamqueue", "failed", "purge", *target)
    assert refused.returncode == ExitCode.USAGE
    assert "--all" in one_line(refused.stderr)

    unknown = run_cli("streamqueue", "failed", "purge", *target, str(ObjectId()))
    assert unknown.returncode == ExitCode.NOT_FOUND

    purged = run_cli("streamqueue", "failed", "purge", *target, "--all")
    assert purged.returncode == ExitCode.OK, purged.stderr
    assert purged.stdout.startswith("deleted 1 job from the error queue")
    assert collection.database[f"{collection.name}.failed"].count_documents({}) == 0
    assert collection.count_documents({}) == 1  # the retried job is untouched


# -- errors: one line, a named exit code, nothing written --------------------------------------------


@pytest.mark.parametrize("payload", ['{"n": ', "[1, 2]", '{"$where": 1}'])
def test_bad_payload_is_one_line_and_writes_nothing(collection: Collection[Document],
                                                    target: list[str], payload: str) -> None:
    result = run_cli("streamqueue", "put", *target, payload)
    assert result.returncode == ExitCode.USAGE
    assert one_line(result.stderr).startswith("streamqueue put: error: ")
    assert result.stdout == ""
    assert collection.name not in collection.database.list_collection_names()


def test_malformed_uri_is_one_line_without_password(collection: Collection[Document]) -> None:
    result = run_cli("streamqueue", "stats", "--uri", "mongodb://app:s3cretpass@db:notaport/",
                     "--db", "d", "--queue", "q")
    assert result.returncode == ExitCode.CONFIG
    line = one_line(result.stderr)
    assert line.startswith("streamqueue stats: error: invalid MongoDB URI mongodb://app:***@")
    assert "s3cretpass" not in result.stderr + result.stdout


def test_unreachable_server_fails_fast(collection: Collection[Document]) -> None:
    uri = f"mongodb://app:s3cretpass@127.0.0.1:{free_port()}/?directConnection=true"
    started = time.monotonic()
    result = run_cli("streamqueue.reaper", "--uri", uri, "--db", "d", "--queue", "q", "--once",
                     "--server-timeout", "0.5")
    assert result.returncode == ExitCode.UNAVAILABLE
    assert time.monotonic() - started < 20
    line = one_line(result.stderr)
    assert line.startswith("streamqueue reaper: error: cannot reach MongoDB at mongodb://app:***@")
    assert "s3cretpass" not in result.stderr


def test_unknown_handler_fails_before_connecting(collection: Collection[Document]) -> None:
    result = run_cli("streamqueue.worker", "no_such_module_xyz:handle", "--uri",
                     f"mongodb://127.0.0.1:{free_port()}/", "--db", "d", "--queue", "q")
    assert result.returncode == ExitCode.CONFIG
    assert "handler module 'no_such_module_xyz' not found" in one_line(result.stderr)


# -- devserver ---------------------------------------------------------------------------------------


def test_devserver_prints_its_uri_and_stops_every_mongod(processes: list[CliProcess]) -> None:
    import socket

    from pymongo import MongoClient

    devserver = CliProcess("streamqueue.devserver", [], child_env())
    processes.append(devserver)
    assert wait_until(lambda: devserver.stdout.strip() or not devserver.alive(), timeout=60,
                      interval=0.05), devserver.describe()
    uri = devserver.stdout.strip()
    assert uri.startswith("mongodb://127.0.0.1:") and uri.endswith("/?replicaSet=rs0")
    port = int(uri.split("127.0.0.1:")[1].split("/")[0])
    client: MongoClient[Document] = MongoClient(uri, serverSelectionTimeoutMS=10000)
    try:
        assert client.admin.command("hello")["isWritablePrimary"] is True
    finally:
        client.close()

    devserver.send(signal.SIGTERM)
    assert devserver.wait(60) == ExitCode.OK, devserver.describe()

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return True
        return False

    assert wait_until(refused, timeout=10, interval=0.05)
