"""The in-process Worker against a real replica set: handlers, retries, heartbeats, shutdown."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pymongo.collection import Collection

from streamqueue import Hooks, Job, Queue
from streamqueue.storage import Document
from streamqueue.worker import BURST_RETRY_WAIT, Worker, wants_job
from tests.helpers import Background, wait_until


class Counting(Hooks):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def _add(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + n

    def completed(self, queue: str, attempts: int, run_seconds: float) -> None:
        self._add("completed")

    def failed(self, queue: str, attempts: int, run_seconds: float) -> None:
        self._add("failed")

    def dead(self, queue: str, attempts: int) -> None:
        self._add("dead")

    def released(self, queue: str, run_seconds: float) -> None:
        self._add("released")

    def claim_empty(self, queue: str) -> None:
        self._add("claim_empty")

    def get(self, name: str) -> int:
        with self.lock:
            return self.counts.get(name, 0)


@pytest.fixture
def hooks() -> Counting:
    return Counting()


@pytest.fixture
def queue(collection: Collection[Document], hooks: Counting) -> Iterator[Queue]:
    q = Queue(collection, lease=30, max_attempts=3, hooks=hooks)
    yield q
    q.close()


def test_wants_job_reads_the_signature() -> None:
    def payload_only(payload: dict[str, Any]) -> None: ...
    def with_job(payload: dict[str, Any], job: Job) -> None: ...
    def named_job(payload: dict[str, Any], *, job: Job) -> None: ...

    assert not wants_job(payload_only)
    assert wants_job(with_job)
    assert wants_job(named_job)


@pytest.mark.parametrize("batch", [1, 8, 32])
def test_burst_drains_every_job_exactly_once(queue: Queue, hooks: Counting, batch: int) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def handle(payload: dict[str, Any]) -> None:
        with lock:
            seen.append(payload["n"])

    queue.put_many([{"n": n} for n in range(300)])
    Worker(queue, handle, concurrency=4, batch=batch, burst=True).run()
    assert sorted(seen) == list(range(300))
    assert queue.size() == 0
    assert hooks.get("completed") == 300


@pytest.mark.parametrize(("heartbeat", "fragment"), [(10.0, "shorter than the lease"),
                                                     (2.0, "at most half the lease")])
def test_worker_refuses_a_heartbeat_that_would_let_the_lease_run_out(
        collection: Collection[Document], heartbeat: float, fragment: str) -> None:
    with Queue(collection, lease=3.0) as queue:
        with pytest.raises(ValueError, match=fragment):
            Worker(queue, lambda payload: None, heartbeat=heartbeat)
        assert Worker(queue, lambda payload: None).heartbeat == 1.0  # the default: lease / 3


def test_handler_gets_the_job_when_it_asks(queue: Queue) -> None:
    attempts: list[int] = []
    queue.put({"x": 1})
    Worker(queue, lambda payload, job: attempts.append(job.attempts), burst=True).run()
    assert attempts == [1]


def test_raising_handler_is_retried_then_dead_lettered(queue: Queue, hooks: Counting) -> None:
    calls: list[int] = []

    def always_fails(payload: dict[str, Any], job: Job) -> None:
        calls.append(job.attempts)
        raise RuntimeError("handler exploded")

    job_id = queue.put({"x": 1})
    Worker(queue, always_fails, concurrency=2, backoff=0.0, burst=True).run()
    assert calls == [1, 2, 3]
    dead = queue.failed.find_one({"_id": job_id})
    assert dead is not None
    assert "RuntimeError: handler exploded" in dead["last_error"]
    assert queue.size() == 0
    assert (hooks.get("failed"), hooks.get("dead")) == (3, 1)


def test_every_failed_attempt_is_logged_with_a_one_line_summary(
        collection: Collection[Document], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="streamqueue.queue")
    queue = Queue(collection, lease=30, max_attempts=3)
    job_id = queue.put({"x": 1})

    def always_fails(payload: dict[str, Any], job: Job) -> None:
        raise RuntimeError(f"boom {job.attempts}")

    try:
        Worker(queue, always_fails, concurrency=1, backoff=0.0, burst=True).run()
    finally:
        queue.close()
    ours = [r for r in caplog.records if r.name == "streamqueue.queue" and str(job_id) in
            r.getMessage()]
    warnings = [r.getMessage() for r in ours if r.levelno == logging.WARNING]
    assert warnings == [
        f"job {job_id} attempt 1/3 failed: RuntimeError: boom 1; retrying in 0.0s",
        f"job {job_id} attempt 2/3 failed: RuntimeError: boom 2; retrying in 0.0s",
        f"job {job_id} failed for good after 3 attempts: RuntimeError: boom 3",
    ]
    # The tracebacks go to DEBUG, one per attempt, never into the WARNING lines.
    debug = [r.getMessage() for r in ours if r.levelno == logging.DEBUG]
    assert len(debug) == 3 and all("Traceback (most recent call last)" in m for m in debug)
    assert all("boom" in m for m in debug)


def test_burst_waits_out_the_default_backoff_of_its_own_retries(queue: Queue) -> None:
    job_id = queue.put({"x": 1})
    starts: list[float] = []

    def fails(payload: dict[str, Any]) -> None:
        starts.append(time.monotonic())
        raise ValueError("try later")

    # One run drains the job: two retries after backoffs of 0.5-1 s and 1-2 s,
    # then the error queue. Without the wait it stopped after the first failure.
    Worker(queue, fails, burst=True).run()
    assert len(starts) == 3
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 0.5 and gaps[1] >= 1.0  # the backoff was applied, not skipped
    assert queue.size() == 0 and queue.failed.count_documents({"_id": job_id}) == 1


def test_burst_drains_retries_that_fall_due_shortly(queue: Queue, hooks: Counting) -> None:
    queue.put_many([{"n": n} for n in range(3)])

    def fails_twice(payload: dict[str, Any], job: Job) -> None:
        if job.attempts < 3:
            raise RuntimeError("not yet")

    runner = Background(Worker(queue, fails_twice, concurrency=2, backoff=0.3,
                               burst=True).run).start()
    runner.join(30)
    assert (hooks.get("failed"), hooks.get("completed")) == (6, 3)
    assert queue.size() == 0


def test_burst_leaves_a_retry_due_later_than_its_bound_delayed(
        queue: Queue, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="streamqueue.worker")
    queue.put({"x": 1})

    def fails(payload: dict[str, Any]) -> None:
        raise ValueError("try much later")

    runner = Background(Worker(queue, fails, backoff=BURST_RETRY_WAIT + 60,
                               burst=True).run).start()
    runner.join(BURST_RETRY_WAIT)  # it does not wait for a retry it will not see
    stats = queue.stats()
    assert stats["delayed"] == 1 and stats["available"] == 0
    assert "stopping with 1 retry due in more than" in caplog.text


def test_heartbeat_keeps_a_slow_job_past_its_lease(collection: Collection[Document]) -> None:
    queue = Queue(collection, lease=1.0)
    queue.put({"slow": True})
    release = threading.Event()
    started = threading.Event()

    def slow(payload: dict[str, Any]) -> None:
        started.set()
        release.wait(20)

    worker = Worker(queue, slow, concurrency=1, heartbeat=0.2)
    runner = Background(worker.run).start()
    assert started.wait(10)
    # Three lease lengths later the job is still held: the reaper finds nothing expired.
    assert not wait_until(lambda: queue.reap() > 0, timeout=3.0)
    assert queue.stats()["locked"] == 1
    release.set()
    assert wait_until(lambda: queue.size() == 0, timeout=10)
    worker.stop()
    runner.join()
    queue.close()


def test_stop_lets_running_handlers_finish(queue: Queue, hooks: Counting) -> None:
    queue.put({"x": 1})
    started = threading.Event()
    finish = threading.Event()

    def handler(payload: dict[str, Any]) -> None:
        started.set()
        finish.wait(10)

    worker = Worker(queue, handler, concurrency=1, shutdown_grace=10)
    runner = Background(worker.run).start()
    assert started.wait(10)
    worker.stop()
    assert not runner.done.wait(0.2)  # still draining
    finish.set()
    runner.join()
    assert hooks.get("completed") == 1
    assert queue.size() == 0


def hold_until_stopped(queue: Queue, worker: Worker, started: threading.Event) -> None:
    """Run ``worker`` until its handler has started, then stop it and wait for ``run()``."""
    runner = Background(worker.run).start()
    assert started.wait(10)
    worker.stop()
    runner.join()


def test_a_job_still_running_after_the_grace_is_left_to_its_lease(
        collection: Collection[Document], hooks: Counting, make_queue: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    # A lease several times the grace: it cannot run out before the checks below.
    queue = Queue(collection, lease=4.0, max_attempts=3, hooks=hooks)
    other = make_queue(lease=30.0)
    job_id = queue.put({"x": 1})
    started, finish = threading.Event(), threading.Event()

    def blocks(payload: dict[str, Any]) -> None:
        started.set()
        finish.wait(30)

    try:
        hold_until_stopped(queue, Worker(queue, blocks, concurrency=1, heartbeat=0.5,
                                         shutdown_grace=0.5), started)
        # The handler still runs: nobody else may take its job until the lease runs out.
        assert other.next() is None
        assert other.reap() == 0
        assert hooks.get("released") == 0
        # Heartbeats stopped with the grace: the lease runs out and the reaper
        # hands the job on with the attempt counted.
        assert wait_until(lambda: other.reap() == 1, timeout=10)
        second = other.next()
        assert second is not None and second.id == job_id and second.attempts == 2
        # The first handler finishes late; its outcome must not touch the new holder's claim.
        finish.set()
        assert wait_until(lambda: "after the shutdown grace, but its lease had run out"
                          in caplog.text, timeout=10)
        doc = queue.collection.find_one({"_id": job_id})
        assert doc is not None and doc["lease_token"] == second.lease_token
        second.complete()
    finally:
        finish.set()
        queue.close()


@pytest.mark.parametrize("batch", [1, 4], ids=["one-by-one", "bulk-completion"])
def test_a_late_handler_still_settles_while_its_lease_is_ours(
        queue: Queue, hooks: Counting, caplog: pytest.LogCaptureFixture, batch: int) -> None:
    queue.put({"x": 1})
    started, finish = threading.Event(), threading.Event()

    def blocks(payload: dict[str, Any]) -> None:
        started.set()
        finish.wait(30)

    try:
        hold_until_stopped(queue, Worker(queue, blocks, concurrency=1, batch=batch,
                                         shutdown_grace=0.3), started)
        assert queue.stats()["locked"] == 1  # neither released nor completed yet
        finish.set()
        # run() has returned (and, in bulk mode, the completer with it): the
        # late completion is still written, not queued for a flush that never comes.
        assert wait_until(lambda: queue.size() == 0, timeout=10)
        assert wait_until(lambda: "after the shutdown grace; settled" in caplog.text)
    finally:
        finish.set()
    assert (hooks.get("completed"), hooks.get("released")) == (1, 0)


def hangs_after_setting(started: threading.Event,
                        never: threading.Event) -> Callable[[dict[str, Any]], None]:
    def hangs(payload: dict[str, Any]) -> None:
        started.set()
        never.wait(30)

    return hangs


def test_a_handler_that_always_hangs_dead_letters_through_the_reaper(
        collection: Collection[Document], make_queue: Any) -> None:
    queue = Queue(collection, lease=1.0, max_attempts=2)
    reaper = make_queue()
    job_id = queue.put({"x": 1})
    never = threading.Event()
    try:
        for attempt in (1, 2):
            started = threading.Event()
            hangs = hangs_after_setting(started, never)
            hold_until_stopped(queue, Worker(queue, hangs, concurrency=1, heartbeat=0.2,
                                             shutdown_grace=0.2), started)
            doc = queue.collection.find_one({"_id": job_id})
            assert doc is not None and doc["state"] == "locked" and doc["attempts"] == attempt
            assert wait_until(lambda: reaper.reap() == 1, timeout=10)
        dead = queue.failed.find_one({"_id": job_id})
        assert dead is not None and dead["attempts"] == 2
        assert queue.size() == 0
    finally:
        never.set()
        queue.close()


def test_an_idle_worker_wakes_once_per_job(queue: Queue, hooks: Counting) -> None:
    done: list[int] = []
    worker = Worker(queue, lambda payload: done.append(payload["n"]), concurrency=4)
    runner = Background(worker.run).start()
    try:
        for n in range(20):
            queue.put({"n": n})
            assert wait_until(lambda n=n: len(done) == n + 1, timeout=10)  # type: ignore[misc]
        assert hooks.get("claim_empty") <= 20
        assert queue.watcher.streams_opened == 1
    finally:
        worker.stop()
        runner.join()


def test_a_batch_above_concurrency_prefetches_and_keeps_the_buffer_alive(
        collection: Collection[Document], hooks: Counting) -> None:
    queue = Queue(collection, lease=1.0, hooks=hooks)
    queue.put_many([{"n": n} for n in range(20)])
    started = threading.Event()
    finish = threading.Event()

    def first_blocks(payload: dict[str, Any]) -> None:
        started.set()
        finish.wait(20)

    worker = Worker(queue, first_blocks, concurrency=1, batch=8, heartbeat=0.2, shutdown_grace=20)
    runner = Background(worker.run).start()
    try:
        assert started.wait(10)
        # One claim took a whole batch: one job running, seven waiting in the buffer.
        assert wait_until(lambda: queue.stats()["locked"] == 8, timeout=10)
        assert (worker.busy_slots, worker.held) == (1, 8)
        # Three lease lengths on, the buffered jobs are still held (the heartbeat covers them).
        assert not wait_until(lambda: queue.reap() > 0, timeout=3.0)
        assert queue.stats()["locked"] == 8
        worker.stop()
        # The buffer goes back at once, while the running handler still has its grace.
        assert wait_until(lambda: queue.stats()["locked"] == 1, timeout=10)
        # Each release's hook runs just after its write, so the count can trail the store briefly.
        assert wait_until(lambda: hooks.get("released") == 7, timeout=10)
        assert not runner.done.is_set()
        assert queue.collection.count_documents({"state": "ready", "attempts": 0}) == 19
    finally:
        finish.set()
        runner.join()
        queue.close()
    assert hooks.get("completed") == 1
    assert queue.size() == 19


class HoldsTheFirstFailure(Counting):
    """Keeps the slot that failed a job busy until the job's next attempt has started."""

    def __init__(self) -> None:
        super().__init__()
        self.second_started = threading.Event()

    def failed(self, queue: str, attempts: int, run_seconds: float) -> None:
        super().failed(queue, attempts, run_seconds)
        if attempts == 1:
            assert self.second_started.wait(10)


def test_a_job_claimed_again_while_its_last_attempt_settles_is_still_held(
        collection: Collection[Document]) -> None:
    hooks = HoldsTheFirstFailure()
    queue = Queue(collection, lease=30, hooks=hooks)
    queue.put({"x": 1})
    finish = threading.Event()

    def fails_once(payload: dict[str, Any], job: Job) -> None:
        if job.attempts == 1:
            raise RuntimeError("first attempt fails")
        hooks.second_started.set()
        finish.wait(10)

    worker = Worker(queue, fails_once, concurrency=2, backoff=0.0, burst=True)
    runner = Background(worker.run).start()
    try:
        assert hooks.second_started.wait(10)
        # The first attempt's slot has now finished; the second attempt must
        # still count as held (heart-beaten, waited for), so burst mode waits.
        assert wait_until(lambda: worker.busy_slots == 1, timeout=10)
        assert worker.held == 1
        assert not runner.done.wait(0.5)
    finally:
        finish.set()
        runner.join()
        queue.close()
    assert (hooks.get("failed"), hooks.get("completed")) == (1, 1)
    assert queue.size() == 0


class SlowEmptyClaims(Queue):
    """A queue whose empty claims, once armed, return only after the worker holds nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.worker: Worker | None = None
        self.armed = False
        self.empty_claim_done = threading.Event()

    def claim(self, limit: int = 1) -> list[Job]:
        jobs = super().claim(limit)
        if not jobs and self.armed and self.worker is not None:
            self.armed = False
            self.empty_claim_done.set()
            worker = self.worker
            assert wait_until(lambda: worker.held == 0, timeout=10)
        return jobs


def test_burst_mode_does_not_stop_on_a_claim_that_overlapped_a_failing_handler(
        collection: Collection[Document], hooks: Counting) -> None:
    queue = SlowEmptyClaims(collection, lease=30, max_attempts=3, hooks=hooks)
    calls: list[int] = []

    def fails_twice(payload: dict[str, Any], job: Job) -> None:
        calls.append(job.attempts)
        if job.attempts == 2:
            # A stray wake-up: the loop claims (finding nothing) while this
            # handler runs, and that claim returns only after the requeue below.
            queue.armed = True
            queue.board.notify(1)
            assert queue.empty_claim_done.wait(10)
        if job.attempts < 3:
            raise RuntimeError("not yet")

    queue.put({"x": 1})
    worker = Worker(queue, fails_twice, concurrency=2, backoff=0.0, burst=True)
    queue.worker = worker
    Background(worker.run).start().join(30)
    queue.close()
    assert calls == [1, 2, 3]
    assert (hooks.get("failed"), hooks.get("completed")) == (2, 1)
