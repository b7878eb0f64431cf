"""The consumers under test, all recording into a ``Sink``.

* push: threads calling ``Queue.next(timeout)`` on one ``Queue`` (change-stream wake-ups);
  also the ``Worker`` (one claim loop, N handler slots, batch claims).
* polling: threads calling ``Queue.next(timeout=0)``, sleeping 100 ms when it finds nothing,
  the loop mongoqueue users had to write.
* floor: bare pymongo, the least any MongoDB queue must do per job: ``insert_one``; a
  ``find_one_and_update`` claim with a sort; ``delete_one``; write concern majority. With
  no push of its own, it polls every 100 ms when empty too.
* floor-push (latency only): the floor woken by a bare change stream on inserts, the least
  any push queue on MongoDB must do; the lower bound for push latency on this machine.
* floor-batch: the floor in batches, the least a batched consumer must do: ``insert_many``;
  a claim of up to ``batch`` jobs (find their ids, ``update_many`` them to a fresh token,
  read back what that token won); one ``delete_many``. The ceiling for ``Worker(batch=...)``.
* kombu: a peer, kombu's MongoDB transport as Celery users run it: a ``SimpleQueue`` per
  thread, each message acknowledged. It deletes a message when it is received (no lease:
  a consumer that dies with it loses it) and polls when empty.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument
from pymongo.collection import Collection
from pymongo.write_concern import WriteConcern

from streamqueue.bench.kombu_peer import KombuPeer
from streamqueue.hooks import Hooks
from streamqueue.queue import Job, Queue
from streamqueue.storage import Document
from streamqueue.worker import Worker

PUSH = "push"
WORKER = "worker"
POLLING = "polling"
FLOOR = "floor"
FLOOR_PUSH = "floor-push"
# The push floor split over two threads as one stream per process must be: one reads the
# stream and wakes one waiting thread, which claims. What it loses to FLOOR_PUSH is the
# thread hand-off itself, which no design with a shared stream avoids.
FLOOR_HANDOFF = "floor-handoff"
# The queue's own claim and complete (JobStore), called bare: no Queue, Job, hooks or
# watcher. Between the floor and next(), it splits the gap into what the server pays for
# the queue's guarantees and what the client pays for its API.
STORE = "store"
# The same in batches: the queue's claim_many and complete_many, bare. Between the batched
# floor and Worker(batch=...), it splits that gap the same way.
STORE_BATCH = "store-batch"
FLOOR_BATCH = "floor-batch"
KOMBU = "kombu"
# A Worker kind with this batch runs with the Worker's default (batch = its slots).
DEFAULT_BATCH = 0


@dataclass(frozen=True)
class Kind:
    """One way of consuming: ``kind`` is push, worker, polling or floor."""

    kind: str
    batch: int = 1
    # push only: one Queue object per thread (as separate processes would have), not shared.
    queue_per_thread: bool = False
    # worker only: its claims_in_flight (a fixed batch's claims overlapping in a backlog).
    claims_in_flight: int = 1

    @property
    def label(self) -> str:
        if self.kind == PUSH:
            return "streamqueue next() [Queue per thread]" if self.queue_per_thread \
                else "streamqueue next()"
        if self.kind == WORKER:
            if self.batch == DEFAULT_BATCH:
                return "streamqueue Worker (defaults)"
            if self.claims_in_flight > 1:
                return (f"streamqueue Worker batch={self.batch}, "
                        f"{self.claims_in_flight} claims in flight")
            return f"streamqueue Worker batch={self.batch}"
        if self.kind == POLLING:
            return "polling 100 ms"
        if self.kind == FLOOR_PUSH:
            return "floor + change stream (bare pymongo)"
        if self.kind == FLOOR_HANDOFF:
            return "floor + stream hand-off (bare pymongo)"
        if self.kind == STORE:
            return "streamqueue storage ops only (no Queue)"
        if self.kind == STORE_BATCH:
            return f"streamqueue storage ops in batches of {self.batch} (no Queue)"
        if self.kind == FLOOR_BATCH:
            return f"floor in batches of {self.batch} (bare pymongo)"
        if self.kind == KOMBU:
            return "kombu MongoDB transport (SimpleQueue)"
        return "floor (bare pymongo)"

    @property
    def uses_queue_shape(self) -> bool:
        return self.kind not in (FLOOR, FLOOR_PUSH, FLOOR_HANDOFF, FLOOR_BATCH, KOMBU)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "batch": self.batch, "queue_per_thread": self.queue_per_thread,
                "claims_in_flight": self.claims_in_flight}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Kind:
        return cls(str(data["kind"]), int(data.get("batch", 1)),
                   bool(data.get("queue_per_thread", False)),
                   int(data.get("claims_in_flight", 1)))


# A job whose payload has a negative sequence number stops one push consumer.
REAL_JOBS: Document = {"payload.i": {"$gte": 0}}

KIND_PUSH = Kind(PUSH)
KIND_POLLING = Kind(POLLING)
KIND_FLOOR = Kind(FLOOR)
KIND_FLOOR_PUSH = Kind(FLOOR_PUSH)
KIND_FLOOR_HANDOFF = Kind(FLOOR_HANDOFF)
KIND_STORE = Kind(STORE)
KIND_KOMBU = Kind(KOMBU)


def worker_kind(batch: int) -> Kind:
    return Kind(WORKER, batch)


# -- the floor ---------------------------------------------------------------------------

FLOOR_SORT = [("priority", DESCENDING), ("_id", ASCENDING)]
FLOOR_INDEX = IndexModel([("state", ASCENDING), ("priority", DESCENDING), ("_id", ASCENDING)],
                         name="floor_claim")


class RawFloor:
    """Bare pymongo: insert, ``find_one_and_update`` claim with a sort, delete. No retries, no hooks."""

    def __init__(self, collection: Collection[Document], *,
                 sort: Sequence[tuple[str, int]] = FLOOR_SORT, lease: float = 300.0) -> None:
        self.jobs = collection.with_options(write_concern=WriteConcern("majority"))
        self.sort = list(sort)
        self.lease = timedelta(seconds=lease)
        self.consumer_id = f"floor-{uuid.uuid4().hex[:8]}"

    def ensure_index(self) -> None:
        self.jobs.create_indexes([FLOOR_INDEX])

    @staticmethod
    def document(payload: Mapping[str, Any]) -> Document:
        return {"_id": ObjectId(), "payload": dict(payload), "priority": 0, "state": "ready",
                "enqueued_at": datetime.now(timezone.utc)}

    def put(self, payload: Mapping[str, Any]) -> None:
        self.jobs.insert_one(self.document(payload))

    def put_many(self, payloads: Iterable[Mapping[str, Any]]) -> None:
        self.jobs.insert_many([self.document(p) for p in payloads], ordered=False)

    def claim(self) -> Document | None:
        doc: Document | None = self.jobs.find_one_and_update(
            {"state": "ready"},
            {"$set": {"state": "locked", "consumer_id": self.consumer_id,
                      "lease_token": uuid.uuid4().hex,
                      "locked_until": datetime.now(timezone.utc) + self.lease}},
            sort=self.sort,
            return_document=ReturnDocument.AFTER,
        )
        return doc

    def complete(self, doc: Document) -> bool:
        return self.jobs.delete_one({"_id": doc["_id"]}).deleted_count == 1

    def claim_many(self, limit: int) -> list[Document]:
        """Lock up to ``limit`` ready jobs in three round trips; another thread may win some."""
        ids = [d["_id"] for d in self.jobs.find({"state": "ready"}, {"_id": 1}, sort=self.sort,
                                                limit=limit)]
        if not ids:
            return []
        token = uuid.uuid4().hex
        self.jobs.update_many(
            {"_id": {"$in": ids}, "state": "ready"},
            {"$set": {"state": "locked", "consumer_id": self.consumer_id, "claim": token,
                      "locked_until": datetime.now(timezone.utc) + self.lease}})
        return list(self.jobs.find({"_id": {"$in": ids}, "claim": token}))

    def complete_many(self, docs: Sequence[Document]) -> int:
        return self.jobs.delete_many({"_id": {"$in": [d["_id"] for d in docs]}}).deleted_count


# -- recording ---------------------------------------------------------------------------

class Sink:
    """What consumers delivered: sequence numbers, latencies, empty claims; thread-safe."""

    def __init__(self, expected: int | None = None) -> None:
        self.expected = expected
        self._lock = threading.Lock()
        self.seqs: list[int] = []
        self._unique: set[int] = set()
        # (sequence number, claim time minus the producer's stamp in seconds)
        self.samples: list[tuple[int, float]] = []
        self.empty_claims = 0  # polling and floor attempts that found nothing
        self.first_claim: float | None = None
        self.last_done: float | None = None  # wall clock (time.time) of the last completion
        self.done = threading.Event()
        self._progress = time.monotonic()

    def record(self, payload: Mapping[str, Any], claimed_at: float, done_at: float) -> None:
        seq = int(payload.get("i", -1))
        if seq < 0:
            return  # a stop pill, not a job
        sent = payload.get("t")
        with self._lock:
            self.seqs.append(seq)
            self._unique.add(seq)
            if isinstance(sent, float):
                self.samples.append((seq, claimed_at - sent))
            if self.first_claim is None or claimed_at < self.first_claim:
                self.first_claim = claimed_at
            if self.last_done is None or done_at > self.last_done:
                self.last_done = done_at
            self._progress = time.monotonic()
            if self.expected is not None and len(self._unique) >= self.expected:
                self.done.set()

    def empty(self) -> None:
        with self._lock:
            self.empty_claims += 1

    @property
    def unique(self) -> int:
        with self._lock:
            return len(self._unique)

    @property
    def duplicates(self) -> int:
        with self._lock:
            return len(self.seqs) - len(self._unique)

    def idle_seconds(self) -> float:
        """Seconds since the last delivery (or since the last ``touch``)."""
        with self._lock:
            return time.monotonic() - self._progress

    def touch(self) -> None:
        with self._lock:
            self._progress = time.monotonic()

    def wait(self, stall_timeout: float, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Until every expected job came (True), or nothing came for ``stall_timeout`` (False)."""
        while not self.done.wait(0.02):
            if should_stop():
                return self.done.is_set()
            if self.idle_seconds() > stall_timeout:
                return False
        return True


# -- consumer groups ---------------------------------------------------------------------

class ConsumerGroup:
    """``threads`` consumers of one kind on one collection, started and stopped together."""

    def __init__(
        self,
        kind: Kind,
        collection: Collection[Document],
        threads: int,
        sink: Sink,
        *,
        hooks: Hooks | None = None,
        poll_interval: float = 0.1,
        burst: bool = False,
        push_wait: float = 0.25,
        uri: str | None = None,
    ) -> None:
        self.kind = kind
        self.collection = collection
        self.threads = threads
        self.sink = sink
        self.hooks = hooks or Hooks()
        self.poll_interval = poll_interval
        self.burst = burst
        self.push_wait = push_wait
        self.stop_event = threading.Event()
        self.finished_at: float | None = None  # the Worker's run() return, wall clock
        self.errors: list[str] = []
        self._threads: list[threading.Thread] = []
        self.queues: list[Queue] = []
        self.floor: RawFloor | None = None
        self.worker: Worker | None = None
        self._streams_open = threading.Semaphore(0)
        # FLOOR_HANDOFF: the reader's stream is open; wake-ups it has handed out.
        self._stream_ready = threading.Event()
        self._handoff = threading.Condition()
        self._permits = 0
        self.kombu: KombuPeer | None = None
        if kind.kind == KOMBU:
            if uri is None:
                raise ValueError("the kombu row needs the server's URI")
            self.kombu = KombuPeer(uri, collection)
        elif not kind.uses_queue_shape:
            self.floor = RawFloor(collection)
        elif kind.kind == PUSH and kind.queue_per_thread:
            self.queues = [Queue(collection, hooks=self.hooks) for _ in range(threads)]
        else:
            self.queues = [Queue(collection, hooks=self.hooks)]
        if kind.kind == WORKER:
            self.worker = Worker(self.queues[0], self._handle, concurrency=threads,
                                 batch=None if kind.batch == DEFAULT_BATCH else kind.batch,
                                 burst=burst, claims_in_flight=kind.claims_in_flight)

    def prepare(self) -> None:
        """Indexes and change streams, before any timing starts."""
        if self.floor is not None:
            self.floor.ensure_index()
        for queue in self.queues:
            queue.store.ensure_indexes()
            if self.kind.kind in (PUSH, WORKER):
                queue.watcher.start()

    def start(self) -> None:
        if self.worker is not None:
            self._spawn(self._run_worker, "bench-worker")
            return
        for index in range(self.threads):
            if self.kombu is not None:
                self._spawn(functools.partial(self.kombu.consume, self.sink.record, self.stop_event),
                            f"bench-kombu-{index}")
            elif self.kind.kind == FLOOR_PUSH:
                self._spawn(self._floor_push_loop, f"bench-floor-push-{index}")
            elif self.kind.kind == FLOOR_HANDOFF:
                if index == 0:
                    self._spawn(self._floor_reader_loop, "bench-floor-reader")
                self._spawn(self._floor_woken_loop, f"bench-floor-woken-{index}")
            elif self.kind.kind == FLOOR_BATCH:
                self._spawn(self._floor_batch_loop, f"bench-floor-batch-{index}")
            elif self.floor is not None:
                self._spawn(self._floor_loop, f"bench-floor-{index}")
            elif self.kind.kind == POLLING:
                self._spawn(self._polling_loop, f"bench-poll-{index}")
            elif self.kind.kind == STORE:
                self._spawn(self._store_loop, f"bench-store-{index}")
            elif self.kind.kind == STORE_BATCH:
                self._spawn(self._store_batch_loop, f"bench-store-batch-{index}")
            else:
                self._spawn(functools.partial(self._push_loop, self.queues[index % len(self.queues)]),
                            f"bench-push-{index}")

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Until every push waiter is parked on its queue's wake-up board (others: at once)."""
        if self.kind.kind in (FLOOR_PUSH, FLOOR_HANDOFF):
            deadline = time.monotonic() + timeout
            return all(self._streams_open.acquire(timeout=max(0.0, deadline - time.monotonic()))
                       for _ in range(self.threads))
        if self.kind.kind not in (PUSH, WORKER):
            time.sleep(min(0.2, self.poll_interval * 2))
            return True
        want = 1 if self.kind.kind == WORKER else self.threads
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(q.board.waiters for q in self.queues) >= want:
                return True
            time.sleep(0.01)
        return False

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every consumer. Push threads parked in a long ``next()`` get one pill job each."""
        self.stop_event.set()
        if self.worker is not None:
            self.worker.stop()
        elif self.kind.kind == PUSH and self.push_wait > 1.0:
            parked = sum(1 for t in self._threads if t.is_alive())
            if parked:
                Queue(self.collection).put_many([{"i": -1}] * parked)
        for thread in self._threads:
            thread.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def close(self) -> None:
        for queue in self.queues:
            queue.close()

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    # -- loops ------------------------------------------------------------------------

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        def guarded() -> None:
            try:
                target()
            except Exception as exc:  # recorded and reported; the run goes on
                self.errors.append(f"{type(exc).__name__}: {exc}")
                self.sink.touch()

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _push_loop(self, queue: Queue) -> None:
        while not self.stop_event.is_set():
            job = queue.next(timeout=self.push_wait)
            if job is not None:
                self._finish(job)

    def _polling_loop(self) -> None:
        queue = self.queues[0]
        while not self.stop_event.is_set():
            job = queue.next(timeout=0)
            if job is None:
                self.sink.empty()
                self.stop_event.wait(self.poll_interval)
                continue
            self._finish(job)

    def _finish(self, job: Job) -> None:
        claimed = time.time()
        job.complete()
        self.sink.record(job.payload, claimed, time.time())

    def _floor_loop(self) -> None:
        floor = self.floor
        assert floor is not None
        self._bare_loop(floor.claim, floor.complete)

    def _floor_batch_loop(self) -> None:
        floor = self.floor
        assert floor is not None
        self._bare_batch_loop(lambda: floor.claim_many(self.kind.batch), floor.complete_many)

    def _store_batch_loop(self) -> None:
        queue = self.queues[0]
        store = queue.store
        self._bare_batch_loop(
            lambda: store.claim_many(queue.consumer_id, queue.lease, self.kind.batch),
            lambda docs: store.complete_many([(d["_id"], d["lease_token"]) for d in docs]))

    def _bare_batch_loop(self, claim: Callable[[], list[Document]],
                         complete: Callable[[list[Document]], object]) -> None:
        """Claim a batch, complete it in one call, until stopped (empty: retry every poll)."""
        while not self.stop_event.is_set():
            docs = claim()
            if not docs:
                self.sink.empty()
                self.stop_event.wait(self.poll_interval)
                continue
            claimed = time.time()
            complete(docs)
            done = time.time()
            for doc in docs:
                self.sink.record(doc["payload"], claimed, done)

    def _store_loop(self) -> None:
        queue = self.queues[0]
        self._bare_loop(lambda: queue.store.claim(queue.consumer_id, queue.lease),
                        lambda doc: queue.store.complete(doc["_id"], doc["lease_token"]))

    def _bare_loop(self, claim: Callable[[], Document | None],
                   complete: Callable[[Document], object]) -> None:
        """Claim and complete until stopped; when empty, try again every ``poll_interval``."""
        while not self.stop_event.is_set():
            doc = claim()
            if doc is None:
                self.sink.empty()
                self.stop_event.wait(self.poll_interval)
                continue
            claimed = time.time()
            complete(doc)
            self.sink.record(doc["payload"], claimed, time.time())

    def _floor_push_loop(self) -> None:
        floor = self.floor
        assert floor is not None
        # Open the stream, then claim until empty, then wait for an insert: no lost wake-up.
        with floor.jobs.watch([{"$match": {"operationType": "insert"}}],
                              max_await_time_ms=500) as stream:
            self._streams_open.release()
            while not self.stop_event.is_set():
                doc = floor.claim()
                if doc is None:
                    self.sink.empty()
                    while not self.stop_event.is_set() and stream.try_next() is None:
                        pass
                    continue
                claimed = time.time()
                floor.complete(doc)
                self.sink.record(doc["payload"], claimed, time.time())

    def _floor_reader_loop(self) -> None:
        floor = self.floor
        assert floor is not None
        with floor.jobs.watch([{"$match": {"operationType": "insert"}}],
                              max_await_time_ms=500) as stream:
            self._stream_ready.set()
            while not self.stop_event.is_set():
                if stream.try_next() is not None:
                    with self._handoff:
                        self._permits += 1
                        self._handoff.notify()

    def _floor_woken_loop(self) -> None:
        """Claim until empty, then wait for the reader's wake-up (stream open first: no lost one)."""
        floor = self.floor
        assert floor is not None
        self._stream_ready.wait()
        self._streams_open.release()
        while not self.stop_event.is_set():
            doc = floor.claim()
            if doc is None:
                self.sink.empty()
                with self._handoff:
                    while not self._permits and not self.stop_event.is_set():
                        self._handoff.wait(0.5)
                    self._permits = max(0, self._permits - 1)
                continue
            claimed = time.time()
            floor.complete(doc)
            self.sink.record(doc["payload"], claimed, time.time())

    def _handle(self, payload: dict[str, Any]) -> None:
        now = time.time()
        self.sink.record(payload, now, now)

    def _run_worker(self) -> None:
        assert self.worker is not None
        try:
            self.worker.run()
        finally:
            self.finished_at = time.time()
            self.sink.touch()


def put_jobs(kind: Kind, collection: Collection[Document], count: int, *, start: int = 0,
             chunk: int = 1_000, uri: str | None = None) -> float:
    """Enqueue ``count`` small jobs the way ``kind`` does; return jobs/s of the enqueue."""
    began = time.perf_counter()
    if kind.kind == KOMBU:
        if uri is None:
            raise ValueError("the kombu row needs the server's URI")
        KombuPeer(uri, collection).put_many({"i": i} for i in range(start, start + count))
    elif kind.uses_queue_shape:
        queue = Queue(collection)
        for low in range(start, start + count, chunk):
            queue.put_many([{"i": i} for i in range(low, min(low + chunk, start + count))])
    else:
        floor = RawFloor(collection)
        floor.ensure_index()
        for low in range(start, start + count, chunk):
            floor.put_many([{"i": i} for i in range(low, min(low + chunk, start + count))])
    return count / max(time.perf_counter() - began, 1e-9)
