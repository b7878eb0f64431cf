"""Tasks and multi-queue task workers against a real replica set (issue 18)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pymongo import MongoClient
from pymongo.database import Database

from streamqueue import Hooks, Queue, Tasks
from streamqueue.metrics import PrometheusHooks
from streamqueue.multiqueue import TaskWorker
from streamqueue.storage import Document
from tests.helpers import Background, CommandCounter, stays_false, wait_until
from tests.integration.test_standalone import standalone_uri  # noqa: F401  (a fixture)


@pytest.fixture
def database(mongo_client: MongoClient[Document]) -> Iterator[Database[Document]]:
    """A fresh database per test: its queues ("default", "emails"...) are its own."""
    name = f"tasks_{uuid.uuid4().hex[:10]}"
    yield mongo_client[name]
    mongo_client.drop_database(name)


class Runs:
    """What the tasks ran, in order, thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, Any]] = []

    def add(self, name: str, value: Any) -> None:
        with self.lock:
            self.calls.append((name, value))

    def count(self) -> int:
        with self.lock:
            return len(self.calls)

    def names(self) -> list[str]:
        with self.lock:
            return [name for name, _ in self.calls]


def stored(database: Database[Document], name: str, query: Any) -> Document:
    doc = database[name].find_one(query if isinstance(query, dict) else {"_id": query})
    assert doc is not None, f"nothing in {name} matches {query}"
    return doc


def running(worker: TaskWorker) -> Background:
    return Background(worker.run, "task-worker").start()


def stop(worker: TaskWorker, background: Background) -> None:
    worker.stop()
    background.join()
    worker.close()


def test_defer_runs_sync_and_async_tasks_with_args_and_kwargs(database: Database[Document]) -> None:
    tasks = Tasks(database)
    runs = Runs()

    @tasks.task(queue="emails")
    def send_email(to: str, subject: str, *, cc: list[str] | None = None) -> None:
        runs.add("send_email", (to, subject, cc))

    @tasks.task
    async def resize(path: str, width: int = 100) -> None:
        await asyncio.sleep(0)
        runs.add("resize", (path, width, threading.current_thread().name))

    send_email("local@example.com", "runs here")  # still a plain call
    assert runs.calls == [("send_email", ("local@example.com", "runs here", None))]
    first = send_email.defer("ada@example.com", subject="hi", cc=["bob@example.com"])
    second = resize.defer("/tmp/a.png", width=64)
    assert stored(database, "emails", first)["payload"] == {
        "task": send_email.name, "args": ["ada@example.com"],
        "kwargs": {"subject": "hi", "cc": ["bob@example.com"]}}
    assert database["default"].find_one({"_id": second}) is not None
    assert send_email.name == f"{__name__}.test_defer_runs_sync_and_async_tasks_with_args_and_kwargs" \
        ".<locals>.send_email"

    worker = tasks.worker(concurrency=2)
    background = running(worker)
    try:
        assert wait_until(lambda: runs.count() == 3)
    finally:
        stop(worker, background)
    by_name = dict(runs.calls[1:])
    assert by_name["send_email"] == ("ada@example.com", "hi", ["bob@example.com"])
    path, width, thread = by_name["resize"]
    assert (path, width, thread) == ("/tmp/a.png", 64, "streamqueue-tasks-loop")
    assert database["emails"].count_documents({"state": {"$exists": True}}) == 0


def test_configure_sets_delay_priority_key_tags_and_max_attempts(
        database: Database[Document]) -> None:
    tasks = Tasks(database)

    @tasks.task(max_attempts=7, priority=3, lease=45.0)
    def noop(n: int) -> None:
        pass

    job_id = noop.configure(delay=60, key="k:1", tags=["signup"]).defer(1)
    again = noop.configure(key="k:1").defer(2)
    doc = database["default"].find_one({"_id": job_id})
    assert doc is not None and again == job_id
    assert (doc["max_attempts"], doc["priority"], doc["key"], doc["tags"], doc["lease_ms"]) == (
        7, 3, "k:1", ["signup"], 45_000)
    assert (doc["available_at"] - doc["enqueued_at"]).total_seconds() >= 59
    assert noop.configure(priority=9).defer(3) != job_id
    assert stored(database, "default", {"payload.args": [3]})["priority"] == 9


@pytest.mark.parametrize("bad", [{1, 2}, object(), 2**70, {"$set": 1}, b"x" * (17 * 1024 * 1024)])
def test_arguments_bson_cannot_store_are_refused_with_nothing_written(
        database: Database[Document], bad: Any) -> None:
    tasks = Tasks(database)

    @tasks.task
    def take(value: Any) -> None:
        pass

    with pytest.raises((TypeError, ValueError)) as caught:
        take.defer(value=bad)
    assert take.name in str(caught.value) or "payload" in str(caught.value)
    assert "default" not in database.list_collection_names()


def test_a_job_naming_an_unknown_task_is_dead_lettered_at_once(
        database: Database[Document]) -> None:
    old = Tasks(database)

    @old.task(name="reports.build", max_attempts=5)
    def build(n: int) -> None:
        pass

    job_id = build.defer(1)
    # A job from a plain Queue.put, in a task queue: it names no task at all.
    Queue(database["default"]).put({"no": "task"})
    registry = CollectorRegistry()
    new = Tasks(database, hooks=PrometheusHooks(registry))

    @new.task
    def other() -> None:
        pass

    worker = new.worker(concurrency=1)
    background = running(worker)
    try:
        assert wait_until(lambda: database["default.failed"].count_documents({}) == 2)
    finally:
        stop(worker, background)
    dead = database["default.failed"].find_one({"_id": job_id})
    assert dead is not None and dead["attempts"] == 1
    assert "unknown task 'reports.build'" in dead["last_error"]
    assert database["default"].count_documents({"state": {"$exists": True}}) == 0
    assert registry.get_sample_value("streamqueue_task_runs_total", {
        "queue": "default", "task": "unknown", "outcome": "unknown"}) == 2


def test_a_pinned_name_runs_jobs_deferred_before_a_rename(database: Database[Document]) -> None:
    before = Tasks(database)

    @before.task(name="billing.charge")
    def charge(amount: int) -> None:
        pass

    charge.defer(42)
    after = Tasks(database)  # the next deploy: the function was renamed and moved
    runs = Runs()

    @after.task(name="billing.charge")
    def charge_customer(amount: int) -> None:
        runs.add("charge_customer", amount)

    worker = after.worker(concurrency=1)
    background = running(worker)
    try:
        assert wait_until(lambda: runs.count() == 1)
    finally:
        stop(worker, background)
    assert runs.calls == [("charge_customer", 42)]


def test_a_failing_task_keeps_its_own_max_attempts_and_backoff(
        database: Database[Document]) -> None:
    tasks = Tasks(database)
    runs = Runs()

    @tasks.task(max_attempts=2, backoff=0.0)
    def flaky() -> None:
        runs.add("flaky", None)
        raise RuntimeError("boom")

    job_id = flaky.defer()
    worker = tasks.worker(concurrency=1)
    background = running(worker)
    try:
        assert wait_until(lambda: database["default.failed"].count_documents({}) == 1)
    finally:
        stop(worker, background)
    assert runs.count() == 2
    assert "RuntimeError: boom" in stored(database, "default.failed", job_id)["last_error"]


def three_queue_registry(database: Database[Document], runs: Runs) -> Tasks[Any]:
    tasks = Tasks(database)
    for queue in ("high", "mid", "low"):
        def body(n: int, queue: str = queue) -> None:
            runs.add(queue, n)
        tasks.task(queue=queue, name=f"work.{queue}")(body)
    return tasks


def test_three_queues_in_priority_order(database: Database[Document]) -> None:
    runs = Runs()
    tasks = three_queue_registry(database, runs)
    for queue in ("low", "mid", "high"):
        task = tasks.get(f"work.{queue}")
        assert task is not None
        for n in range(4):
            task.defer(n)
    worker = tasks.worker(["high", "mid", "low"], order="priority", concurrency=1)
    background = running(worker)
    try:
        assert wait_until(lambda: runs.count() == 12)
    finally:
        stop(worker, background)
    assert runs.names() == ["high"] * 4 + ["mid"] * 4 + ["low"] * 4


def test_three_queues_shared_fairly(database: Database[Document]) -> None:
    runs = Runs()
    tasks = three_queue_registry(database, runs)
    for queue in ("high", "mid", "low"):
        task = tasks.get(f"work.{queue}")
        assert task is not None
        for n in range(6):
            task.defer(n)
    worker = tasks.worker(["high", "mid", "low"], order="fair", concurrency=1)
    background = running(worker)
    try:
        assert wait_until(lambda: runs.count() == 18)
    finally:
        stop(worker, background)
    names = runs.names()
    # Turn by turn: every window of three runs holds each queue once.
    for start in range(0, 18, 3):
        assert sorted(names[start:start + 3]) == ["high", "low", "mid"], names


def test_one_database_stream_wakes_the_right_queue_and_honours_pause(
        mongo_uri: str, database: Database[Document]) -> None:
    counter = CommandCounter()
    client: MongoClient[Document] = MongoClient(mongo_uri, event_listeners=[counter])
    runs = Runs()
    tasks = three_queue_registry(client[database.name], runs)
    worker = tasks.worker(["high", "mid", "low"], concurrency=2)
    background = running(worker)
    try:
        assert wait_until(lambda: worker.group.watcher.stream_epoch() is not None)
        mid = tasks.get("work.mid")
        assert mid is not None
        mid.defer(1)
        assert wait_until(lambda: runs.calls == [("mid", 1)])
        low = Queue(database["low"])
        low.pause()
        low_task = tasks.get("work.low")
        assert low_task is not None
        low_task.defer(2)
        assert stays_false(lambda: runs.count() > 1, 1.0)
        low.resume()
        assert wait_until(lambda: runs.calls[-1:] == [("low", 2)])
        streams = [body for name, body in counter.commands if name == "aggregate"
                   and any("$changeStream" in stage for stage in body.get("pipeline", []))]
        assert len(streams) == 1 and streams[0]["aggregate"] == 1  # a database stream
    finally:
        stop(worker, background)
        client.close()


def test_the_cli_serves_a_registry_and_the_reaper_reaps_its_queues(
        mongo_uri: str, database: Database[Document]) -> None:
    from tests.integration.processes import child_env, run_cli

    producer = Tasks(database)  # the app's names, pinned, without importing the app

    @producer.task(queue="emails", name="app.send_email")
    def send_email(to: str, subject: str) -> None: ...

    @producer.task(name="app.ping")
    def ping(n: int) -> None: ...

    send_email.defer("ada@example.com", subject="hi")
    ping.defer(7)
    env = child_env(STREAMQUEUE_TEST_TASKS_URI=mongo_uri,
                    STREAMQUEUE_TEST_TASKS_DB=database.name)
    done = run_cli("streamqueue", "worker", "tests.task_app:tasks", "--uri", mongo_uri,
                   "--db", database.name, "--queues", "emails,default", "--burst", env=env)
    assert done.returncode == 0, done.stderr
    assert "emails,default (priority)" in done.stderr
    records = {doc["task"]: doc for doc in database["records"].find()}
    assert records["send_email"]["to"] == "ada@example.com"
    assert records["ping"]["n"] == 7
    reaped = run_cli("streamqueue", "reaper", "--tasks", "tests.task_app:tasks", "--uri",
                     mongo_uri, "--db", database.name, "--once", env=env)
    assert reaped.returncode == 0, reaped.stderr
    assert f"{database.name}.emails: 0 expired leases" in reaped.stderr
    assert f"{database.name}.default: 0 expired leases" in reaped.stderr


def test_a_long_task_keeps_its_lease_and_hears_its_cancel_request(
        database: Database[Document]) -> None:
    from streamqueue.tasks import current_job

    tasks = Tasks(database)
    runs = Runs()
    started = threading.Event()

    long_started = threading.Event()

    @tasks.task(queue="slow", lease=1.5)  # heart-beaten every 0.5 s
    def outlive_the_lease(n: int) -> None:
        long_started.set()
        time.sleep(2.5)  # longer than the lease: only heartbeats keep it
        runs.add("outlived", n)

    @tasks.task(queue="other")
    async def until_cancelled() -> None:
        job = current_job()
        assert job is not None
        started.set()
        while not job.cancel_requested:
            await asyncio.sleep(0.05)
        runs.add("cancelled", job.id)

    long_id = outlive_the_lease.defer(1)
    cancel_id = until_cancelled.defer()
    worker = tasks.worker(concurrency=2)
    background = running(worker)
    try:
        assert started.wait(10) and long_started.wait(10)
        reaper = Queue(database["slow"])
        # Without heartbeats the 1.5 s lease would run out and the reaper take it back.
        assert stays_false(lambda: reaper.reap() > 0, 2.2)
        assert Queue(database["other"]).cancel(cancel_id)
        assert wait_until(lambda: runs.count() == 2)
    finally:
        stop(worker, background)
    assert sorted(name for name, _ in runs.calls) == ["cancelled", "outlived"]
    assert database["slow"].find_one({"_id": long_id}) is None  # completed once, deleted
    assert database["slow.failed"].count_documents({}) == 0


def test_an_async_registry_defers_and_a_sync_one_defers_from_async_code(
        mongo_uri: str, database: Database[Document]) -> None:
    from pymongo import AsyncMongoClient

    async def main() -> list[Any]:
        client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_uri)
        try:
            atasks = Tasks(client[database.name])

            @atasks.task(name="a.add")
            def add(x: int, y: int) -> None: ...

            sync = Tasks(database)

            @sync.task(name="a.add")
            def add_sync(x: int, y: int) -> None: ...

            return [await add.defer(1, y=2), await add.defer_async(3, y=4),
                    await add_sync.defer_async(5, y=6)]
        finally:
            await client.close()

    ids = asyncio.run(main())
    stored_args = [stored(database, "default", job_id)["payload"]["args"] for job_id in ids]
    assert stored_args == [[1], [3], [5]]


def test_a_queue_dropped_under_the_worker_gets_its_indexes_back(
        database: Database[Document]) -> None:
    runs = Runs()
    tasks = three_queue_registry(database, runs)
    worker = tasks.worker(["high", "mid", "low"], concurrency=1)
    background = running(worker)
    try:
        mid = tasks.get("work.mid")
        assert mid is not None
        mid.defer(4)  # the producer made the indexes once and will not again
        assert wait_until(lambda: runs.calls == [("mid", 4)])
        database.drop_collection("mid")
        mid.defer(5)
        assert wait_until(lambda: runs.calls == [("mid", 4), ("mid", 5)])
        assert "claim" in database["mid"].index_information()
    finally:
        stop(worker, background)


def test_the_registry_reaper_hands_on_expired_leases_of_every_queue(
        database: Database[Document]) -> None:
    tasks = Tasks(database)

    @tasks.task(queue="emails")
    def send(to: str) -> None: ...

    @tasks.task
    def ping() -> None: ...

    send.defer("a@example.com")
    ping.defer()
    # Two crashed consumers: claimed with a short lease, never settled.
    held = [Queue(database[name], lease=0.2).claim(1) for name in ("emails", "default")]
    assert all(len(jobs) == 1 for jobs in held)
    reaper = tasks.reaper()
    reaped: dict[str, int] = {}

    def reap() -> bool:
        for name, count in reaper.run_once().reaped.items():
            reaped[name] = reaped.get(name, 0) + count
        return reaped == {"emails": 1, "default": 1}

    assert wait_until(reap, timeout=10, interval=0.1)
    assert database["emails"].count_documents({"state": "ready"}) == 1
    assert database["default"].count_documents({"state": "ready"}) == 1


def test_put_stores_a_lease_and_max_attempts_that_claims_and_extensions_keep(
        database: Database[Document]) -> None:
    producer = Queue(database["jobs"])
    own = producer.put({"n": 1}, lease=2.0, max_attempts=9)
    plain = producer.put({"n": 2})
    consumer = Queue(database["jobs"], lease=300.0)
    held = {job.id: job for job in consumer.claim(2)}
    assert set(held) == {own, plain}

    def lease_seconds(job_id: Any) -> float:
        doc = stored(database, "jobs", job_id)
        return float((doc["locked_until"] - doc["locked_at"]).total_seconds())

    assert lease_seconds(own) == pytest.approx(2.0, abs=0.01)
    assert lease_seconds(plain) == pytest.approx(300.0, abs=0.01)
    assert held[own].max_attempts == 9
    held[own].progress(1)  # an extension also keeps the job's own lease
    doc = stored(database, "jobs", own)
    assert doc["locked_until"] <= doc["locked_at"] + timedelta(seconds=2.0 + 5.0)
    consumer.store.heartbeat([(own, held[own].lease_token)], 300.0)
    doc = stored(database, "jobs", own)
    assert doc["locked_until"] <= doc["locked_at"] + timedelta(seconds=2.0 + 5.0)
    with pytest.raises(ValueError):
        producer.put({"n": 3}, lease=0)


def test_a_task_worker_process_serves_until_sigterm_then_drains(
        mongo_uri: str, database: Database[Document]) -> None:
    import signal

    from tests.integration.processes import CliProcess, child_env, cli_processes

    producer = Tasks(database)

    @producer.task(queue="emails", name="app.send_email")
    def send_email(to: str, subject: str) -> None: ...

    env = child_env(STREAMQUEUE_TEST_TASKS_URI=mongo_uri,
                    STREAMQUEUE_TEST_TASKS_DB=database.name)
    with cli_processes() as started:
        worker = CliProcess("streamqueue", [
            "worker", "tests.task_app:tasks", "--uri", mongo_uri, "--db", database.name,
            "--concurrency", "2"], env)
        started.append(worker)
        # Every queue of the registry, the default one first, shared fairly.
        assert worker.wait_for_log(".default,emails,slow (fair)"), worker.describe()
        send_email.defer("late@example.com", subject="after start")  # a wake-up, not a sweep
        assert wait_until(lambda: database["records"].count_documents({}) == 1), \
            worker.describe()
        worker.send(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.describe()


def test_a_task_whose_worker_is_killed_is_handed_on_by_the_registry_reaper(
        mongo_uri: str, database: Database[Document]) -> None:
    from tests.integration.processes import CliProcess, child_env, cli_processes

    producer = Tasks(database)

    @producer.task(queue="slow", name="app.slow", lease=2.0)
    def slow(n: int) -> None: ...

    env = child_env(STREAMQUEUE_TEST_TASKS_URI=mongo_uri,
                    STREAMQUEUE_TEST_TASKS_DB=database.name)
    args = ["worker", "tests.task_app:tasks", "--uri", mongo_uri, "--db", database.name,
            "--queues", "slow"]
    records = database["records"]
    slow.defer(1)
    with cli_processes() as started:
        first = CliProcess("streamqueue", args, env)
        started.append(first)
        assert wait_until(lambda: records.count_documents({"attempt": 1}) == 1, 30), \
            first.describe()
        first.kill()  # SIGKILL mid-task: its job stays locked under a 2 s lease
        second = CliProcess("streamqueue", args, env)
        started.append(second)
        reaper = producer.reaper()
        assert wait_until(lambda: reaper.run_once().reaped.get("slow", 0) > 0, 15)
        assert wait_until(lambda: records.count_documents({"event": "done"}) == 1, 30), \
            second.describe()
    done = records.find_one({"event": "done"})
    assert done is not None and (done["attempt"], done["pid"]) == (2, second.pid)
    assert records.count_documents({"event": "done", "attempt": 1}) == 0


def test_the_tasks_bench_scenario_runs_and_reports(mongo_uri: str) -> None:
    from streamqueue.bench.common import BenchContext
    from streamqueue.bench.report import Results, evaluate, markdown
    from streamqueue.bench.tasks import tasks_bench

    ctx = BenchContext(mongo_uri, verbose=False)
    try:
        row = tasks_bench(ctx, calls=20, rounds=2, idle_seconds=0.5, drain_jobs=40)
    finally:
        ctx.close()
    assert row.put_us > 0 and row.defer_us > 0 and row.calls == 20  # no timing asserted
    assert row.drain_one_queue_jobs_per_s > 0 and row.drain_ten_queues_jobs_per_s > 0
    results = Results(mode="smoke", started="now", seconds=0.0, machine={}, config={},
                      notes=[], tasks=[row])
    results.targets = evaluate(results)
    names = [target.name for target in results.targets if target.passed is not None]
    assert names == ["defer() against put()", "Idle task worker: 10 queues against 1"]
    assert "## 11. Tasks" in markdown(results)


def test_delayed_tasks_in_any_queue_run_when_due_not_at_the_next_sweep(
        database: Database[Document]) -> None:
    runs = Runs()
    tasks = three_queue_registry(database, runs)
    low, mid = tasks.get("work.low"), tasks.get("work.mid")
    assert low is not None and mid is not None
    low.configure(delay=1.5).defer(1)  # known only from the group's first due-time read
    worker = tasks.worker(["high", "mid", "low"], concurrency=1, sweep_interval=60.0)
    background = running(worker)
    try:
        assert wait_until(lambda: worker.group.watcher.stream_epoch() is not None)
        mid.configure(delay=1.0).defer(2)  # known from its insert event
        # Both well before the 60 s sweep: due timers from the one stream.
        assert wait_until(lambda: runs.count() == 2, timeout=10)
    finally:
        stop(worker, background)
    assert sorted(runs.calls) == [("low", 1), ("mid", 2)]


class StreamEvents(Hooks):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events = 0

    def changestream_event(self, queue: str) -> None:
        with self.lock:
            self.events += 1

    def count(self) -> int:
        with self.lock:
            return self.events


def test_a_resume_heard_with_another_queue_s_job_makes_the_claim_ask_every_queue(
        database: Database[Document]) -> None:
    from streamqueue.wakeups import Wake

    runs = Runs()
    tasks = three_queue_registry(database, runs)
    hooks = StreamEvents()
    worker = tasks.worker(["high", "mid", "low"], hooks=hooks, sweep_interval=60.0)
    group = worker.group
    low, mid = tasks.get("work.low"), tasks.get("work.mid")
    assert low is not None and mid is not None
    operator = Queue(database["low"])
    operator.pause()
    low.defer(1)  # before the stream opens: no event names it
    group.store.ensure_indexes()
    group.watcher.start()
    try:
        with group.board.waiting():
            assert group.claim(4) == []  # the probe finds low's job; low is paused
            heard = hooks.count()
            operator.resume()
            mid.defer(2)
            assert wait_until(lambda: hooks.count() >= heard + 2)  # both events handled
            assert group.wait_for_wakeup(time.monotonic() + 5) is Wake.EVENT
            jobs = group.claim(4)  # one event named mid; the resume names every queue
            assert sorted(job.payload["args"] for job in jobs) == [[1], [2]]
            for job in jobs:
                job.complete()
    finally:
        group.close()


def test_without_change_streams_a_task_worker_polls_every_queue_with_one_probe(
        standalone_uri: str) -> None:  # noqa: F811  (the fixture imported above)
    counter = CommandCounter()
    client: MongoClient[Document] = MongoClient(standalone_uri, event_listeners=[counter])
    name = f"tasks_{uuid.uuid4().hex[:10]}"
    try:
        runs = Runs()
        tasks = three_queue_registry(client[name], runs)
        worker = tasks.worker(["high", "mid", "low"], concurrency=1)
        background = running(worker)
        try:
            assert wait_until(lambda: worker.group.board.polling)
            counter.reset()
            time.sleep(2.5)  # measuring an idle window, not waiting for a condition
            # Each poll is one probe over the three queues; no queue is claimed from.
            assert counter.count("findAndModify") == 0
            assert 1 <= counter.count("aggregate", "high") <= 4
            low = tasks.get("work.low")
            assert low is not None
            low.defer(1)
            assert wait_until(lambda: runs.calls == [("low", 1)])
        finally:
            stop(worker, background)
    finally:
        client.drop_database(name)
        client.close()
