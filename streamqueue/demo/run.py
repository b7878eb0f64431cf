"""``python -m streamqueue.demo``: a replica set, workers, a reaper and a producer, then a crash.

What it does, in order:

1. starts a local 3-node replica set with ``streamqueue.testing.ReplicaSet``;
2. starts one reaper and 2 workers as separate processes, exactly as you would
   (``python -m streamqueue worker streamqueue.demo.handlers:handle ...``),
   each serving Prometheus metrics on a free loopback port;
3. a producer enqueues 2,000 jobs with mixed priorities, some of them delayed;
4. once 30 % are done it SIGKILLs a worker that holds jobs, starts a
   replacement, and shows the dead worker's jobs coming back once their
   leases expire;
5. prints a summary (throughput, wait percentiles, redeliveries, error queue)
   and stops everything it started, mongod included, also on Ctrl-C/SIGTERM.

Numbers come from the database, not from guesses: the handler writes one
record per delivery (``streamqueue.demo.handlers``), completed jobs are the
ones that left the queue, and the error queue is counted directly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from bson import ObjectId
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from streamqueue.demo.display import Console, Snapshot, format_seconds, percentile
from streamqueue.demo.handlers import (
    DELIVERIES,
    ENV_FAIL_RATE,
    ENV_RECORD_DB,
    ENV_RECORD_URI,
    EXPIRED_HOLDER_PREFIX,
)
from streamqueue.demo.processes import MARKER_ENV, Child, answers, scrape, sweep
from streamqueue.errors import ConfigurationError, StreamQueueError
from streamqueue.exitcodes import ExitCode
from streamqueue.queue import Queue
from streamqueue.testing import ReplicaSet, find_mongod, free_port

Document = dict[str, Any]

DB_NAME = "streamqueue_demo"
QUEUE_NAME = "jobs"
HANDLER = "streamqueue.demo.handlers:handle"
#: Priorities the producer uses and how often: most jobs are ordinary.
PRIORITIES = (0, 5, 10)
PRIORITY_WEIGHTS = (70, 20, 10)
#: Most jobs in one enqueue: a producer that fell behind (or ``--rate 0``) catches up in these.
PRODUCER_BATCH = 50
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class DemoError(Exception):
    """The demo cannot go on; the message says why."""


class Stopped(Exception):
    """A stop signal arrived."""


# -- options ---------------------------------------------------------------------------


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within 0..1, not {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than zero, not {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m streamqueue.demo",
        description="Run streamqueue end to end on this machine: a local replica set, "
                    "worker processes, a reaper and a producer; kill a worker mid-run and "
                    "watch its jobs come back. Ctrl-C stops everything it started.",
    )
    parser.add_argument("--jobs", type=_positive_int, default=2000, metavar="N",
                        help="jobs to enqueue (default 2000)")
    parser.add_argument("--nodes", type=_positive_int, default=3, metavar="N",
                        help="replica set members (default 3)")
    parser.add_argument("--workers", type=_positive_int, default=2, metavar="N",
                        help="worker processes (default 2)")
    parser.add_argument("--concurrency", type=_positive_int, default=4, metavar="N",
                        help="handler threads per worker (default 4)")
    parser.add_argument("--lease", type=_positive_float, default=5.0, metavar="SECONDS",
                        help="lease per claim; short, so the crash shows quickly (default 5)")
    parser.add_argument("--reaper-interval", type=_positive_float, default=1.0,
                        metavar="SECONDS", help="time between reaper passes (default 1)")
    # Below what 2 workers x 4 slots of 5-50 ms handle on a 2-core machine, so the
    # wait shows the push latency rather than a growing backlog.
    parser.add_argument("--rate", type=_non_negative_float, default=100.0, metavar="JOBS_PER_S",
                        help="producer pace; 0 enqueues everything at once (default 100)")
    parser.add_argument("--delayed", type=_fraction, default=0.1, metavar="FRACTION",
                        help="share of jobs enqueued with a delay (default 0.1)")
    parser.add_argument("--max-delay", type=_positive_float, default=5.0, metavar="SECONDS",
                        help="longest delay of a delayed job (default 5)")
    parser.add_argument("--fail-rate", type=_fraction, default=0.05, metavar="FRACTION",
                        help="share of handler calls that raise (default 0.05)")
    parser.add_argument("--max-attempts", type=_positive_int, default=3, metavar="N",
                        help="deliveries before a failing job moves to the error queue "
                             "(default 3)")
    parser.add_argument("--kill-at", type=_fraction, default=0.3, metavar="FRACTION",
                        help="SIGKILL a worker once this share of jobs is done; 0: never "
                             "(default 0.3)")
    parser.add_argument("--timeout", type=_positive_float, default=600.0, metavar="SECONDS",
                        help="give up if the jobs are not all done by then (default 600)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed for the producer's choices of priority and delay")
    parser.add_argument("--plain", action="store_true",
                        help="plain progress lines even on a terminal")
    parser.add_argument("--summary-json", type=Path, default=None, metavar="PATH",
                        help="also write the summary (and every pid started) to PATH as JSON")
    parser.add_argument("--keep", action="store_true",
                        help="keep the run directory (process logs, MongoDB data)")
    return parser


# -- the producer ----------------------------------------------------------------------


class Producer(threading.Thread):
    """Enqueues ``total`` jobs at ``rate`` jobs/s, each at its own time; mixed priorities, some delayed."""

    def __init__(self, queue: Queue, total: int, *, rate: float, delayed: float,
                 max_delay: float, seed: int | None, stop: threading.Event) -> None:
        super().__init__(name="demo-producer", daemon=True)
        self.queue = queue
        self.total = total
        self.rate = rate
        self.delayed = delayed
        self.max_delay = max_delay
        self.rng = random.Random(seed)
        self.stop_event = stop
        self.enqueued = 0
        self.delayed_count = 0
        self.by_priority: dict[int, int] = dict.fromkeys(PRIORITIES, 0)
        self.started_at: float | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self._produce()
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            self.done.set()

    def _produce(self) -> None:
        self.started_at = time.monotonic()
        number = 0
        while number < self.total and not self.stop_event.is_set():
            due = jobs_due(time.monotonic() - self.started_at, self.rate, self.total)
            size = min(PRODUCER_BATCH, due - number)
            if size > 0:
                self._put(number, size)
                number += size
            else:
                # Only with a rate: nothing is due until the next job's time.
                self.stop_event.wait(max(0.0, self.started_at + number / self.rate
                                         - time.monotonic()))

    def _put(self, number: int, size: int) -> None:
        groups: dict[tuple[int, float], list[Document]] = {}
        for offset in range(size):
            priority = self.rng.choices(PRIORITIES, PRIORITY_WEIGHTS)[0]
            delay = 0.0
            if self.rng.random() < self.delayed:
                # Half-second steps keep the batches few.
                delay = max(0.5, round(self.rng.uniform(0.5, self.max_delay) * 2) / 2)
            groups.setdefault((priority, delay), []).append({"n": number + offset})
        for (priority, delay), payloads in groups.items():
            self.queue.put_many(payloads, priority=priority, delay=delay)
            self.enqueued += len(payloads)
            self.by_priority[priority] += len(payloads)
            if delay:
                self.delayed_count += len(payloads)


def jobs_due(elapsed: float, rate: float, total: int) -> int:
    """How many of ``total`` jobs are due ``elapsed`` seconds in: job k at ``k / rate``.

    Jobs go in one by one at their own time, as the bench's producer sends
    them; a batch forms only when the producer falls behind. (Batches of 50
    every half second made every job wait behind up to 49 others: the demo
    then showed the queueing of its own bursts, ten times the push latency.)
    """
    if rate <= 0:
        return total
    # The epsilon keeps float error from holding back the job due right now.
    return min(total, math.floor(elapsed * rate + 1e-9) + 1)


# -- delivery records --------------------------------------------------------------------


@dataclass
class Delivery:
    job_id: ObjectId
    attempt: int
    consumer: str
    wait: float
    lease_expired: bool
    #: The consumer whose lease expired before this delivery (None if none did).
    expired_holder: str | None = None
    #: First delivery of a job put without a delay (the bench's enqueue-to-claim).
    first_of_ready_put: bool = False


def _delivery(doc: Document) -> Delivery:
    lease_expired = bool(doc["lease_expired"])
    holder = expired_holder(str(doc.get("prev_error") or "")) if lease_expired else None
    return Delivery(doc["job_id"], int(doc["attempt"]), str(doc["consumer"]),
                    float(doc["wait"]), lease_expired, holder,
                    bool(doc.get("first_of_ready_put", False)))


def expired_holder(last_error: str) -> str | None:
    """The consumer named in the reaper's ``lease expired while held by <consumer>``."""
    if not last_error.startswith(EXPIRED_HOLDER_PREFIX):
        return None
    return last_error[len(EXPIRED_HOLDER_PREFIX):].strip() or None


def orphaned_jobs(seen_at_kill: set[ObjectId], victim: str, deliveries: list[Delivery],
                  dead: list[Document]) -> set[ObjectId]:
    """Every job the killed worker held when it died.

    The look right after the kill misses a claim the worker sent before it
    was stopped and the server committed after the look: that job is locked
    under the dead worker's id all the same, and only the reaper's note
    (``lease expired while held by <victim>``, on its next delivery or in the
    error queue) shows it. The victim is dead, so no lease of its can have
    expired for any other reason.
    """
    orphans = set(seen_at_kill)
    orphans.update(d.job_id for d in deliveries if d.expired_holder == victim)
    orphans.update(doc["_id"] for doc in dead
                   if expired_holder(str(doc.get("last_error") or "")) == victim)
    return orphans


class DeliveryTracker(threading.Thread):
    """Follows the handler's delivery records through a change stream (for the live view).

    The summary re-reads the whole collection, so a missed event can only make
    the live numbers lag, never the final ones wrong.
    """

    def __init__(self, records: Collection[Document], stop: threading.Event) -> None:
        super().__init__(name="demo-deliveries", daemon=True)
        self.records = records
        self.stop_event = stop
        self._lock = threading.Lock()
        self._new: list[Delivery] = []
        self.ready = threading.Event()

    def run(self) -> None:
        token: Any = None
        while not self.stop_event.is_set():
            try:
                with self.records.watch([{"$match": {"operationType": "insert"}}],
                                        resume_after=token, max_await_time_ms=250) as stream:
                    self.ready.set()
                    while not self.stop_event.is_set():
                        change = stream.try_next()
                        token = stream.resume_token
                        if change is not None:
                            with self._lock:
                                self._new.append(_delivery(change["fullDocument"]))
            except PyMongoError:
                # Try again shortly; the summary does not depend on this stream.
                self.stop_event.wait(0.5)

    def take(self) -> list[Delivery]:
        with self._lock:
            new, self._new = self._new, []
        return new


# -- the demo -----------------------------------------------------------------------------


@dataclass
class Totals:
    """The summary's numbers."""

    jobs: int
    enqueued: int
    done: int
    failed: int
    seconds: float
    deliveries: int
    delivered_jobs: int
    wait_p50: float | None
    wait_p99: float | None
    #: The same over first deliveries of jobs put without a delay: enqueue to claim.
    ready_wait_p50: float | None
    ready_wait_p99: float | None
    ready_deliveries: int
    redelivered_after_lease: int
    retries_after_error: int
    killed_worker: str | None
    orphaned_at_kill: int
    #: Deliveries after the lease of a worker that was NOT killed expired (a late heartbeat).
    leases_lost_by_live_workers: int = 0
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


class Demo:
    def __init__(self, args: argparse.Namespace, console: Console) -> None:
        self.args = args
        self.console = console
        self.stop_event = threading.Event()
        self.signal_received: int | None = None
        self.run_dir: Path | None = None
        self.rs: ReplicaSet | None = None
        self.client: MongoClient[Document] | None = None
        self.queue: Queue | None = None
        self.children: list[Child] = []
        self.producer: Producer | None = None
        self.tracker: DeliveryTracker | None = None
        self.env: dict[str, str] = {}
        self.uri = ""
        self.mongod_pids: list[int] = []
        self.waits: list[float] = []
        self.rates: deque[tuple[float, int]] = deque()
        self.kill_time: float | None = None  # time.time() of the kill (workers record wall time)
        self.killed: Child | None = None
        self.orphans: set[ObjectId] = set()
        self.orphans_seen: set[ObjectId] = set()
        self.summary: dict[str, Any] = {}
        self.last: Snapshot | None = None
        self._worker_count = 0

    # -- signals --------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_received is None:
            self.signal_received = signum
            self.stop_event.set()
        else:
            os.write(2, b"streamqueue demo: already stopping, please wait\n")

    def _check_stop(self) -> None:
        if self.stop_event.is_set():
            raise Stopped

    # -- main -------------------------------------------------------------------------

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        code: int = ExitCode.ERROR
        try:
            try:
                totals = self._run()
            except Stopped:
                code = ExitCode.INTERRUPTED
                name = signal.Signals(self.signal_received or signal.SIGINT).name
                self.console.close()
                self.console.line(self.console.yellow(f"{name}: stopping everything the demo "
                                                      "started"))
                self._record_partial()
            except DemoError as exc:
                self.console.close()
                self.console.line(self.console.red(f"demo failed: {exc}"))
                code = ExitCode.ERROR
            except ConfigurationError as exc:
                self.console.close()
                self.console.line(self.console.red(f"demo cannot start: {exc}"))
                code = ExitCode.CONFIG
            except (StreamQueueError, PyMongoError) as exc:
                self.console.close()
                self.console.line(self.console.red(f"demo failed: MongoDB error: {exc}"))
                code = ExitCode.ERROR
            else:
                code = ExitCode.OK
                self._print_summary(totals)
            finally:
                self.console.close()
                self._shut_down()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self._write_summary_json(code)
        return code

    def _run(self) -> Totals:
        args = self.args
        find_mongod()  # fail early, with the message saying how to get one
        self.run_dir = Path(tempfile.mkdtemp(prefix="streamqueue-demo-"))
        # Every process started from here on inherits the marker (mongod too),
        # so a final sweep can find anything the orderly shutdown missed.
        self.env = dict(os.environ)
        self.env[MARKER_ENV] = str(self.run_dir)
        os.environ[MARKER_ENV] = str(self.run_dir)
        c = self.console
        c.line(c.bold("streamqueue demo") + f": {args.nodes}-node replica set, {args.workers} "
               f"workers x {args.concurrency} slots, 1 reaper, {args.jobs} jobs. "
               "Ctrl-C stops everything.")
        c.event(f"run directory {self.run_dir} (process logs)")

        self._start_mongo()
        self._check_stop()
        self._connect()
        self._start_processes()
        self._check_stop()
        return self._process_jobs()

    # -- starting -----------------------------------------------------------------------

    def _start_mongo(self) -> None:
        assert self.run_dir is not None
        c = self.console
        c.event(f"starting a {self.args.nodes}-node replica set (mongod "
                f"{find_mongod()})")
        self.rs = ReplicaSet(nodes=self.args.nodes, root=self.run_dir / "mongo")
        # Blocks a few seconds; a signal meanwhile is acted on right after.
        self.uri = self.rs.start()
        self.mongod_pids = [m.process.pid for m in self.rs.members if m.process is not None]
        primary = self.rs.wait_for_primary()
        c.event(f"replica set rs0 up: {self.uri} (primary {primary}); mongod pids "
                f"{' '.join(str(p) for p in self.mongod_pids)}")

    def _connect(self) -> None:
        self.client = MongoClient(self.uri, appname="streamqueue-demo")
        db = self.client[DB_NAME]
        db.drop_collection(QUEUE_NAME)
        db.drop_collection(f"{QUEUE_NAME}.failed")
        db.drop_collection(DELIVERIES)
        db.create_collection(DELIVERIES)
        self.queue = Queue(db[QUEUE_NAME], "demo-producer", lease=self.args.lease,
                           max_attempts=self.args.max_attempts)
        self.queue.store.ensure_indexes()
        self.tracker = DeliveryTracker(db[DELIVERIES], self.stop_event)
        self.tracker.start()
        self._wait_for(self.tracker.ready.is_set, 30, "the delivery change stream to open")

    def _child_env(self) -> dict[str, str]:
        env = dict(self.env)
        env.update({
            ENV_RECORD_URI: self.uri,
            ENV_RECORD_DB: DB_NAME,
            ENV_FAIL_RATE: str(self.args.fail_rate),
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def _common_args(self) -> list[str]:
        return ["--uri", self.uri, "--db", DB_NAME, "--queue", QUEUE_NAME,
                "--metrics-addr", "127.0.0.1"]

    def _new_worker(self) -> Child:
        assert self.run_dir is not None
        self._worker_count += 1
        name = f"worker-{self._worker_count}"
        port = free_port()
        consumer = f"demo-{name}"
        args = [sys.executable, "-m", "streamqueue", "worker", HANDLER, *self._common_args(),
                "--concurrency", str(self.args.concurrency), "--lease", f"{self.args.lease:g}",
                # One claim round trip fills every free slot.
                "--batch", str(self.args.concurrency),
                "--backoff", "0.5", "--shutdown-grace", "5", "--consumer-id", consumer,
                "--metrics-port", str(port)]
        return Child(name, args, self.run_dir / f"{name}.log", self._child_env(), port, consumer)

    def _new_reaper(self) -> Child:
        assert self.run_dir is not None
        port = free_port()
        args = [sys.executable, "-m", "streamqueue", "reaper", *self._common_args(),
                "--interval", f"{self.args.reaper_interval:g}", "--metrics-port", str(port)]
        return Child("reaper", args, self.run_dir / "reaper.log", self._child_env(), port)

    def _start_child(self, child: Child) -> None:
        child.start()
        self.children.append(child)

    def _start_processes(self) -> None:
        c = self.console
        reaper = self._new_reaper()
        workers = [self._new_worker() for _ in range(self.args.workers)]
        shown = " ".join(workers[0].args[1:]).replace(self.uri, "URI")
        c.event(f"{workers[0].name} runs: {c.dim('python ' + shown)}")
        for child in [reaper, *workers]:
            self._start_child(child)
        for child in [reaper, *workers]:
            self._wait_ready(child)
            c.event(f"{child.name} up: pid {child.pid}, metrics {child.metrics_url}")

    def _wait_ready(self, child: Child, timeout: float = 60.0) -> None:
        url = child.metrics_url
        assert url is not None

        def ready() -> bool:
            if not child.alive():
                raise DemoError(f"{child.name} exited with status {child.returncode}:\n"
                                f"{child.log_tail()}")
            return answers(url)

        self._wait_for(ready, timeout, f"{child.name}'s metrics endpoint")

    def _wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            self._check_stop()
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {timeout:g}s waiting for {what}")
            self.stop_event.wait(0.05)

    # -- running ------------------------------------------------------------------------

    def _process_jobs(self) -> Totals:
        assert self.queue is not None
        args = self.args
        self.producer = Producer(self.queue, args.jobs, rate=args.rate, delayed=args.delayed,
                                 max_delay=args.max_delay, seed=args.seed, stop=self.stop_event)
        rate_text = f"{args.rate:g} jobs/s" if args.rate > 0 else "all at once"
        self.console.event(f"producer: {args.jobs} jobs, {rate_text}, priorities "
                           f"{'/'.join(map(str, PRIORITIES))}, about {args.delayed:.0%} delayed "
                           f"by up to {args.max_delay:g}s")
        self.producer.start()
        deadline = time.monotonic() + args.timeout
        # Each tick counts the queue by state (a few queries): often enough to look
        # live, rarely enough not to load the server the demo is measuring.
        tick = 0.25 if self.console.live else 0.5
        while True:
            self._check_stop()
            if self.producer.error is not None:
                raise DemoError(f"the producer failed: {self.producer.error!r}")
            self._check_children()
            snapshot = self._snapshot()
            self._maybe_kill(snapshot)
            self._report_redeliveries()
            if self.producer.done.is_set() and snapshot.enqueued == args.jobs and \
                    snapshot.available + snapshot.locked + snapshot.delayed == 0 and \
                    self.queue.size() == 0:
                self.console.update(snapshot, force=True)
                break
            self.console.update(snapshot)
            if time.monotonic() > deadline:
                raise DemoError(f"not done after {args.timeout:g}s: {snapshot.finished} of "
                                f"{args.jobs} jobs finished")
            self.stop_event.wait(tick)
        finished_at = time.monotonic()
        self.console.close()
        self.console.event(self.console.green(f"all {args.jobs} jobs finished"))
        return self._totals(finished_at)

    def _snapshot(self) -> Snapshot:
        assert self.queue is not None and self.producer is not None
        enqueued = self.producer.enqueued
        stats = self.queue.stats()
        in_queue = stats["available"] + stats["locked"] + stats["expired"] + stats["delayed"]
        done = max(0, enqueued - in_queue - stats["failed"])
        if self.tracker is not None:
            self.waits.extend(d.wait for d in self.tracker.take())
        now = time.monotonic()
        self.rates.append((now, done))
        while len(self.rates) > 2 and now - self.rates[0][0] > 3.0:
            self.rates.popleft()
        first_t, first_done = self.rates[0]
        rate = (done - first_done) / (now - first_t) if now > first_t else 0.0
        started = self.producer.started_at or now
        self.last = Snapshot(
            total=self.args.jobs, enqueued=enqueued, done=done,
            available=stats["available"], locked=stats["locked"], delayed=stats["delayed"],
            failed=stats["failed"], rate=rate, wait_p50=percentile(self.waits, 0.5),
            elapsed=now - started, processes=self._process_states(),
        )
        return self.last

    def _process_states(self) -> list[tuple[str, str]]:
        states = []
        for child in self.children:
            if child.killed:
                state = "killed"
            elif child.alive():
                state = "up"
            else:
                state = f"exited {child.returncode}"
            states.append((child.name, state))
        return states

    def _check_children(self) -> None:
        for child in self.children:
            if not child.killed and not child.alive():
                raise DemoError(f"{child.name} (pid {child.pid}) exited with status "
                                f"{child.returncode}; last lines of its log:\n{child.log_tail()}")

    # -- the crash ------------------------------------------------------------------------

    def _maybe_kill(self, snapshot: Snapshot) -> None:
        if self.killed is not None or self.args.kill_at <= 0 or not snapshot.enqueued:
            return
        if snapshot.finished < self.args.kill_at * self.args.jobs:
            return
        victim = next((c for c in self.children if c.consumer_id and c.alive()), None)
        if victim is None or victim.process is None:
            return
        assert self.queue is not None
        held = {"state": "locked", "consumer_id": victim.consumer_id}
        # Freeze it first so what it holds cannot change between looking and killing.
        victim.signal_group(signal.SIGSTOP)
        try:
            holding = self.queue.collection.count_documents(held)
        except BaseException:
            victim.signal_group(signal.SIGCONT)
            raise
        if holding == 0:
            victim.signal_group(signal.SIGCONT)  # idle right now: try again next tick
            return
        victim.kill()
        self.kill_time = time.time()
        self.killed = victim
        self.orphans = {doc["_id"] for doc in self.queue.collection.find(held, {"_id": 1})}
        c = self.console
        c.event(c.red(f"SIGKILL {victim.name} (pid {victim.pid}) while it held "
                      f"{len(self.orphans)} job{'s' if len(self.orphans) != 1 else ''}") +
                f": their leases run out within {self.args.lease:g}s, then the reaper "
                f"(every {self.args.reaper_interval:g}s) puts them back")
        replacement = self._new_worker()
        self._start_child(replacement)
        c.event(f"{replacement.name} started as a replacement: pid {replacement.pid}, "
                f"metrics {replacement.metrics_url}")

    def _report_redeliveries(self) -> None:
        if self.killed is None or self.client is None:
            return
        assert self.kill_time is not None
        records = self.client[DB_NAME][DELIVERIES]
        names = {c.consumer_id: c.name for c in self.children if c.consumer_id}
        from_victim = {"lease_expired": True,
                       "prev_error": f"{EXPIRED_HOLDER_PREFIX}{self.killed.consumer_id}"}
        for doc in records.find(from_victim):
            job_id = doc["job_id"]
            if job_id in self.orphans_seen:
                continue
            self.orphans_seen.add(job_id)
            late = job_id not in self.orphans
            self.orphans.add(job_id)
            after = doc["at"] - self.kill_time
            who = names.get(doc["consumer"], doc["consumer"])
            self.console.event(self.console.green(
                f"job {job_id} redelivered to {who} (attempt {doc['attempt']}), "
                f"{after:.1f}s after the kill: lease expired, reaper requeued it") +
                (" (its claim reached the server after the kill)" if late else ""))

    # -- the end --------------------------------------------------------------------------

    def _totals(self, finished_at: float) -> Totals:
        assert self.client is not None and self.producer is not None and self.queue is not None
        db = self.client[DB_NAME]
        docs = [_delivery(d) for d in db[DELIVERIES].find({}, {"_id": 0})]
        waits = [d.wait for d in docs]
        ready_waits = [d.wait for d in docs if d.first_of_ready_put]
        failed = self.queue.failed.count_documents({})
        victim = self.killed.consumer_id if self.killed else None
        if victim is not None:
            dead = list(self.queue.failed.find({}, {"last_error": 1}))
            self.orphans = orphaned_jobs(self.orphans, victim, docs, dead)
        metrics: dict[str, dict[str, float]] = {}
        for child in self.children:
            if child.alive() and child.metrics_url:
                with contextlib.suppress(OSError, ValueError):
                    metrics[child.name] = {
                        name: value for name, value in scrape(child.metrics_url).items()
                        if name.startswith("streamqueue_")
                    }
        started = self.producer.started_at or finished_at
        return Totals(
            jobs=self.args.jobs,
            enqueued=self.producer.enqueued,
            done=self.producer.enqueued - failed,
            failed=failed,
            seconds=finished_at - started,
            deliveries=len(docs),
            delivered_jobs=len({d.job_id for d in docs}),
            wait_p50=percentile(waits, 0.5),
            wait_p99=percentile(waits, 0.99),
            ready_wait_p50=percentile(ready_waits, 0.5),
            ready_wait_p99=percentile(ready_waits, 0.99),
            ready_deliveries=len(ready_waits),
            redelivered_after_lease=sum(1 for d in docs if d.lease_expired),
            retries_after_error=sum(1 for d in docs if d.attempt > 1 and not d.lease_expired),
            killed_worker=self.killed.name if self.killed else None,
            orphaned_at_kill=len(self.orphans),
            leases_lost_by_live_workers=sum(
                1 for d in docs if d.lease_expired and d.expired_holder != victim),
            metrics=metrics,
        )

    def _print_summary(self, t: Totals) -> None:
        c = self.console
        self.summary.update({
            "jobs": t.jobs, "enqueued": t.enqueued, "done": t.done, "failed": t.failed,
            "seconds": round(t.seconds, 3), "throughput": round(t.throughput, 1),
            "deliveries": t.deliveries, "delivered_jobs": t.delivered_jobs,
            "wait_p50": t.wait_p50, "wait_p99": t.wait_p99,
            "ready_wait_p50": t.ready_wait_p50, "ready_wait_p99": t.ready_wait_p99,
            "ready_deliveries": t.ready_deliveries,
            "redelivered_after_lease": t.redelivered_after_lease,
            "retries_after_error": t.retries_after_error,
            "killed_worker": t.killed_worker, "orphaned_at_kill": t.orphaned_at_kill,
            "leases_lost_by_live_workers": t.leases_lost_by_live_workers,
            "metrics": t.metrics,
        })
        label_width = 17

        def row(label: str, value: str) -> None:
            c.line(f"  {label:<{label_width}}{value}")

        c.line()
        c.line(c.bold("Summary"))
        row("jobs done", f"{t.done} of {t.jobs}" + (f" ({t.failed} in the error queue)"
                                                    if t.failed else ""))
        row("run time", f"{t.seconds:.1f}s from the first enqueue to an empty queue")
        row("throughput", f"{t.throughput:.1f} jobs/s")
        row("wait p50 / p99", f"{format_seconds(t.wait_p50)} / {format_seconds(t.wait_p99)}"
                              f"  (due to claimed, server clock, {t.deliveries} handler calls)")
        # The headline also counts delayed jobs, retries after their backoff and
        # redeliveries after a reap; this line is the bench's enqueue-to-claim.
        row("", f"{format_seconds(t.ready_wait_p50)} / {format_seconds(t.ready_wait_p99)}"
                f"  put to claimed, first deliveries of the {t.ready_deliveries} jobs put "
                "without a delay (the bench's latency rows: 1 consumer, 1-node set)")
        if t.killed_worker:
            lease = (f"{t.redelivered_after_lease} after {t.killed_worker} was killed holding "
                     f"{t.orphaned_at_kill} (lease expired, reaper requeued)")
        else:
            lease = f"{t.redelivered_after_lease} after an expired lease (no worker was killed)"
        row("redeliveries", lease)
        if t.leases_lost_by_live_workers:
            row("", c.red(f"{t.leases_lost_by_live_workers} of them after a running worker's "
                          "lease expired: a heartbeat came late (machine overloaded, or "
                          "--lease too short)"))
        row("", f"{t.retries_after_error} retries after the handler raised "
                f"({self.args.fail_rate:.0%} of calls fail)")
        row("error queue", f"{t.failed} job{'s' if t.failed != 1 else ''} in "
                           f"{DB_NAME}.{QUEUE_NAME}.failed")
        c.line()
        c.line(c.bold("Metrics endpoints") + " (scraped just before shutdown; they stop "
               "with the demo)")
        for child in self.children:
            values = t.metrics.get(child.name)
            label = f'{{queue="{QUEUE_NAME}"}}'
            if child.killed:
                note = "killed mid-run: its counters died with it"
            elif values is None:
                note = "not answering"
            elif child.consumer_id:
                note = (f"jobs_completed_total "
                        f"{values.get('streamqueue_jobs_completed_total' + label, 0):g}, "
                        f"jobs_failed_total {values.get('streamqueue_jobs_failed_total' + label, 0):g}")
            else:
                note = (f"leases_expired_total "
                        f"{values.get('streamqueue_leases_expired_total' + label, 0):g}, "
                        f"jobs_dead_total {values.get('streamqueue_jobs_dead_total' + label, 0):g}")
            c.line(f"  {child.name:<10} {child.metrics_url}  {c.dim(note)}")

    def _record_partial(self) -> None:
        if self.producer is not None:
            self.summary["enqueued"] = self.producer.enqueued
        if self.last is not None:
            self.summary["finished"] = self.last.finished
            self.console.line(f"interrupted with {self.last.finished} of {self.last.total} jobs "
                              f"finished, {self.last.enqueued} enqueued")

    # -- shutdown ---------------------------------------------------------------------------

    def _shut_down(self) -> None:
        """Stop everything, in order, whatever state the demo is in; never raises."""
        c = self.console
        self.stop_event.set()
        for helper in (self.producer, self.tracker):
            if helper is not None and helper.is_alive():
                helper.join(timeout=10)
        live = [child for child in self.children if child.alive()]
        if live:
            c.event(f"stopping {', '.join(child.name for child in live)} (SIGTERM, "
                    "workers drain)")
        threads = [threading.Thread(target=self._stop_child, args=(child,), daemon=True)
                   for child in self.children]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        if self.queue is not None:
            with contextlib.suppress(Exception):
                self.queue.close()
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        if self.rs is not None and self.rs.members:
            c.event(f"stopping {len(self.rs.members)} mongod")
            try:
                self.rs.stop()
            except Exception as exc:  # keep going: the sweep below still runs
                c.line(c.red(f"stopping mongod failed: {exc!r}"))
        if self.run_dir is not None:
            leftovers = sweep(str(self.run_dir))
            if leftovers:
                c.line(c.red(f"killed left-over processes {leftovers} (a bug: please report)"))
            if self.args.keep:
                c.event(f"kept {self.run_dir}")
            else:
                shutil.rmtree(self.run_dir, ignore_errors=True)
        os.environ.pop(MARKER_ENV, None)
        pids = {child.name: child.pid for child in self.children if child.process is not None}
        self.summary["pids"] = {"mongod": self.mongod_pids, **pids}
        self.summary["run_dir"] = str(self.run_dir) if self.run_dir else None
        if self.run_dir is not None:
            c.event("stopped: every process the demo started has exited")

    @staticmethod
    def _stop_child(child: Child) -> None:
        with contextlib.suppress(Exception):
            child.stop(grace=10.0)

    def _write_summary_json(self, code: int) -> None:
        path = self.args.summary_json
        if path is None:
            return
        self.summary["exit_code"] = int(code)
        self.summary["interrupted_by"] = (signal.Signals(self.signal_received).name
                                          if self.signal_received else None)
        path.write_text(json.dumps(self.summary, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None, stdout: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console.for_stream(stdout if stdout is not None else sys.stdout,
                                 force_plain=args.plain)
    return Demo(args, console).run()

