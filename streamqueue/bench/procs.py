"""Runs that need other processes: producers, multi-process drains, idle consumers.

A child is ``python -m streamqueue.bench.procs '<json spec>'``. It speaks one JSON
object per line on stdout: ``{"ready": true}`` once set up, then its result. On
stdin it reads ``go`` (start) and ``stop`` (finish and report). Its stderr is
the parent's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue as stdlib_queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from pymongo import MongoClient
from pymongo.write_concern import WriteConcern

from streamqueue.bench.common import ClaimCounter, CountingHooks
from streamqueue.bench.consumers import ConsumerGroup, Kind, RawFloor, Sink
from streamqueue.children import spawn
from streamqueue.queue import Queue
from streamqueue.storage import Document
from streamqueue.worker import Worker

Spec = dict[str, Any]


class ChildError(RuntimeError):
    pass


class Child:
    """One child process and the lines it prints."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.proc: subprocess.Popen[str] = spawn(
            [sys.executable, "-m", "streamqueue.bench.procs", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._lines: stdlib_queue.Queue[str | None] = stdlib_queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _message(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except stdlib_queue.Empty:
            raise ChildError(f"{self.spec['role']} child said nothing for {timeout:.0f}s") from None
        if line is None:
            code = self.proc.wait(timeout=10)
            raise ChildError(f"{self.spec['role']} child exited with status {code}")
        message: dict[str, Any] = json.loads(line)
        if "error" in message:
            raise ChildError(f"{self.spec['role']} child failed: {message['error']}")
        return message

    def wait_ready(self, timeout: float = 60.0) -> None:
        message = self._message(timeout)
        if not message.get("ready"):
            raise ChildError(f"expected ready, got {message}")

    def send(self, word: str) -> None:
        if self.proc.stdin is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.write(word + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass

    def result(self, timeout: float) -> dict[str, Any]:
        message = self._message(timeout)
        self.proc.wait(timeout=30)
        return message

    def close(self) -> None:
        """Kill the child if it still runs; close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextmanager
def children(specs: Sequence[Spec], ready_timeout: float = 60.0) -> Iterator[list[Child]]:
    """Start every child, wait until all are ready; kill whatever is left on the way out."""
    started = [Child(spec) for spec in specs]
    try:
        for child in started:
            child.wait_ready(ready_timeout)
        yield started
    finally:
        for child in started:
            child.close()


def go_all(kids: Sequence[Child]) -> float:
    """Send ``go`` to every child; return the wall-clock time it was sent."""
    began = time.time()
    for child in kids:
        child.send("go")
    return began


# -- the child side ------------------------------------------------------------------------

def _say(message: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class _Control:
    """stdin words as events."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.stop = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            word = line.strip()
            if word == "go":
                self.go.set()
            elif word == "stop":
                self.go.set()
                self.stop.set()
        # The parent went away: finish.
        self.go.set()
        self.stop.set()


def _collection(spec: Spec) -> tuple[MongoClient[Document], Any]:
    client: MongoClient[Document] = MongoClient(spec["uri"])
    db = client.get_database(spec["db"], write_concern=WriteConcern("majority"))
    return client, db[spec["collection"]]


def run_producer(spec: Spec, control: _Control) -> dict[str, Any]:
    """Enqueue ``count`` jobs one at a time, every ``interval`` seconds (0: back to back).

    Each payload carries ``t``, the wall-clock time just before the enqueue call.
    """
    client, collection = _collection(spec)
    count, interval, start = int(spec["count"]), float(spec["interval"]), int(spec.get("start", 0))
    if spec["mode"] == "floor":
        floor = RawFloor(collection)
        floor.ensure_index()
        put = floor.put
    else:
        queue = Queue(collection)
        queue.store.ensure_indexes()
        put = queue.put  # type: ignore[assignment]
    client.admin.command("ping")
    _say({"ready": True})
    control.go.wait()
    began = time.time()
    next_at = time.monotonic()
    sent = 0
    for seq in range(start, start + count):
        if control.stop.is_set():
            break
        if interval > 0:
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            next_at += interval
        put({"i": seq, "t": time.time()})
        sent += 1
    ended = time.time()
    client.close()
    return {"sent": sent, "began": began, "ended": ended}


def run_drain(spec: Spec, control: _Control) -> dict[str, Any]:
    """Consume with ``threads`` consumers of ``kind`` until told to stop (a Worker: until drained)."""
    client, collection = _collection(spec)
    kind = Kind.from_json(spec["kind"])
    sink = Sink()
    hooks = CountingHooks()
    group = ConsumerGroup(kind, collection, int(spec["threads"]), sink, hooks=hooks,
                          poll_interval=float(spec["poll_interval"]), burst=bool(spec.get("burst")))
    group.prepare()
    _say({"ready": True})
    control.go.wait()
    began = time.time()
    group.start()
    if group.worker is not None and group.burst:
        while group.running and not control.stop.wait(0.05):
            pass
    else:
        control.stop.wait()
    group.stop()
    group.close()
    client.close()
    return {
        "began": began,
        "seqs": sink.seqs,
        "last_done": sink.last_done,
        "finished_at": group.finished_at,
        "empty_claims": sink.empty_claims,
        "claim_empty_hook": hooks.empty,
        "errors": group.errors,
    }


def run_fleet_consumer(spec: Spec, control: _Control) -> dict[str, Any]:
    """One worker process of a fleet: a ``Worker`` with ``slots`` slots, its claims counted.

    ``start_now``: start at once and say ready once it waits (the trickle);
    otherwise start on ``go`` (the backlog).
    """
    counter = ClaimCounter()
    client: MongoClient[Document] = MongoClient(spec["uri"], event_listeners=[counter])
    collection = client.get_database(spec["db"], write_concern=WriteConcern("majority"))[
        spec["collection"]]
    sink = Sink()
    hooks = CountingHooks()
    slots = int(spec["slots"])
    queue = Queue(collection, hooks=hooks, fleet=slots if spec.get("fleet") else None)
    worker = Worker(queue, lambda payload: sink.record(payload, time.time(), time.time()),
                    concurrency=slots)
    runner = threading.Thread(target=worker.run, name="fleet-worker", daemon=True)
    empty_before = 0
    if spec["start_now"]:
        runner.start()
        deadline = time.monotonic() + 60
        while queue.board.waiters < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        fleet = queue.watcher.fleet
        while fleet is not None and not fleet.view.known and time.monotonic() < deadline:
            time.sleep(0.01)  # a member counts once its view is known, as in a steady fleet
        counter.reset()  # its start-up claim is not the herd's
        empty_before = hooks.empty
    _say({"ready": True})
    control.go.wait()
    if not runner.is_alive():
        runner.start()
    control.stop.wait()
    worker.stop()
    runner.join(30)
    queue.close()
    client.close()
    return {"seqs": sink.seqs, "latencies": [lat for _, lat in sink.samples],
            "last_done": sink.last_done, "claims": counter.claims,
            "claim_empty_hook": hooks.empty - empty_before, "errors": []}


def run_floor_consumer(spec: Spec, control: _Control) -> dict[str, Any]:
    """The floor of the fleet's trickle: bare pymongo, one thread, its own change stream of
    inserts; on each event a ``find_one_and_update`` claim, then a delete. With ``owner``
    ([index, processes]) only the process a hash of the job's id names claims it. With
    ``every_state`` the stream also carries claims and deletes (a fleet view's events),
    which wake the process and are dropped.

    What N Python processes on this machine can do at best, with no fleet view, no
    patience, no membership: the physical limit the fleet's latency is judged against.
    """
    counter = ClaimCounter()
    client: MongoClient[Document] = MongoClient(spec["uri"], event_listeners=[counter])
    collection = client.get_database(spec["db"], write_concern=WriteConcern("majority"))[
        spec["collection"]]
    sink = Sink()
    heard = ["insert", "update", "delete"] if spec.get("every_state") else ["insert"]
    with collection.watch([{"$match": {"operationType": {"$in": heard}}}],
                          max_await_time_ms=100) as stream:
        _say({"ready": True})
        empty = _floor_loop(stream, RawFloor(collection), sink, spec.get("owner"), control.stop)
    client.close()
    return {"seqs": sink.seqs, "latencies": [lat for _, lat in sink.samples],
            "last_done": sink.last_done, "claims": counter.claims,
            "claim_empty_hook": empty, "errors": []}


def _floor_loop(stream: Any, floor: RawFloor, sink: Sink, owner: list[int] | None,
                stop: threading.Event) -> int:
    """Claim on every insert event (this process's, with ``owner``); return the empty claims."""
    empty = 0
    while not stop.is_set():
        event = stream.try_next()
        if event is None or event.get("operationType") != "insert":
            continue
        if owner is not None and not _owns(event, *owner):
            continue
        doc = floor.claim()
        if doc is None:
            empty += 1
            continue
        sink.record(doc["payload"], time.time(), time.time())
        floor.complete(doc)
    return empty


def run_floor_drain(spec: Spec, control: _Control) -> dict[str, Any]:
    """The floor of the fleet's backlog: bare pymongo, one thread, no stream; from ``go``,
    claim ``batch`` jobs (``find_one_and_update`` when 1, else the minimal batch claim) and
    delete them, until a claim comes back empty and nothing is ready.

    What N Python processes on this machine can drain at best, with no lease by the
    server's clock, no token-guarded settle, no wake-ups: the limit the fleet's throughput
    at many processes is judged against.
    """
    counter = ClaimCounter()
    client: MongoClient[Document] = MongoClient(spec["uri"], event_listeners=[counter])
    collection = client.get_database(spec["db"], write_concern=WriteConcern("majority"))[
        spec["collection"]]
    floor, batch, sink = RawFloor(collection), int(spec["batch"]), Sink()
    client.admin.command("ping")
    _say({"ready": True})
    control.go.wait()
    while not control.stop.is_set():
        docs = _floor_take(floor, batch)
        if not docs and floor.jobs.find_one({"state": "ready"}, {"_id": 1}) is None:
            break  # a batch claim can lose every job to other processes: empty only if none left
        for doc in docs:
            sink.record(doc["payload"], time.time(), time.time())
        _floor_settle(floor, docs)
    control.stop.wait()
    client.close()
    return {"seqs": sink.seqs, "latencies": [], "last_done": sink.last_done,
            "claims": counter.claims, "claim_empty_hook": 0, "errors": []}


def _floor_take(floor: RawFloor, batch: int) -> list[Document]:
    if batch > 1:
        return floor.claim_many(batch)
    doc = floor.claim()
    return [] if doc is None else [doc]


def _floor_settle(floor: RawFloor, docs: Sequence[Document]) -> None:
    if len(docs) > 1:
        floor.complete_many(docs)
    elif docs:
        floor.complete(docs[0])


def _owns(event: Mapping[str, Any], index: int, processes: int) -> bool:
    job_id = event.get("documentKey", {}).get("_id")
    digest = hashlib.blake2b(str(job_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % processes == index


def run_idle(spec: Spec, control: _Control) -> dict[str, Any]:
    """An idle consumer of ``kind``; ready once it is waiting (or polling); runs until stop."""
    client, collection = _collection(spec)
    kind = Kind.from_json(spec["kind"])
    sink = Sink()
    hooks = CountingHooks()
    group = ConsumerGroup(kind, collection, int(spec["threads"]), sink, hooks=hooks,
                          poll_interval=float(spec["poll_interval"]),
                          push_wait=float(spec.get("push_wait", 3600.0)))
    group.prepare()
    group.start()
    group.wait_idle()
    _say({"ready": True})
    control.stop.wait()
    group.stop(timeout=5)
    group.close()
    client.close()
    return {"empty_claims": sink.empty_claims, "claim_empty_hook": hooks.empty,
            "errors": group.errors}


ROLES = {"produce": run_producer, "drain": run_drain, "idle": run_idle,
         "fleet-consume": run_fleet_consumer, "floor-consume": run_floor_consumer,
         "floor-drain": run_floor_drain}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: python -m streamqueue.bench.procs '<json spec>'\n")
        return 2
    spec: Spec = json.loads(args[0])
    control = _Control()
    try:
        result = ROLES[spec["role"]](spec, control)
    except Exception as exc:
        _say({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    _say(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
