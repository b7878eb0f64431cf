"""``python -m streamqueue.bench.aio [--uri URI] [--jobs N] [--rounds R]``: the asyncio API
against the sync one, in the same run and on the same server.

- throughput: N jobs drained by 4 consumers, ``AsyncQueue.next`` on 4 coroutines of one
  loop against ``Queue.next`` on 4 threads, and the bare driver doing the same (claim,
  delete) both ways; rounds alternate, medians reported;
- latency: enqueue (from another client, one job every 20 ms) to claim by a waiting
  consumer, p50 and p99, for each API;
- idle: commands per second an idle ``AsyncQueue`` consumer (``next(timeout=None)``) sends;
- worker: an ``AsyncWorker`` at concurrency 500 draining ``--worker-jobs`` jobs whose
  handlers await 0.1 s, against the same with handlers that return at once, with the
  default batch and with a prefetch buffer; and the process's RSS while 500 handlers
  are in flight.

Prints one JSON object; without ``--uri`` it starts a single-node replica set of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pymongo import AsyncMongoClient, MongoClient, monitoring

from streamqueue.aio import AsyncQueue
from streamqueue.aio.worker import AsyncWorker
from streamqueue.bench.aio_floor import floor_async, floor_sync
from streamqueue.bench.common import percentile, timed_threads
from streamqueue.queue import Queue
from streamqueue.storage import Document
from streamqueue.testing import ReplicaSet

CONSUMERS = 4
# The async worker: handlers that await this long (I/O-bound), this many in flight.
WORKER_NAP = 0.1
WORKER_CONCURRENCY = 500
# The worker's runs: (handler's await, batch), by name; batch None is the default.
WORKER_KINDS: dict[str, tuple[float, int | None]] = {
    "instant": (0.0, None),
    "awaiting": (WORKER_NAP, None),
    "prefetch_instant": (0.0, 2 * WORKER_CONCURRENCY),
    "prefetch_awaiting": (WORKER_NAP, 2 * WORKER_CONCURRENCY),
}


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None


def _fill(uri: str, db: str, name: str, jobs: int) -> None:
    client: MongoClient[Document]
    with MongoClient(uri) as client, Queue(client[db][name]) as queue:
        for start in range(0, jobs, 1000):
            queue.put_many([{"n": n} for n in range(start, min(jobs, start + 1000))])


def sync_drain(uri: str, db: str, name: str, jobs: int) -> float:
    _fill(uri, db, name, jobs)
    client: MongoClient[Document] = MongoClient(uri)
    queue = Queue(client[db][name])
    done = [0]
    lock = threading.Lock()

    def consume() -> None:
        while True:
            job = queue.next(timeout=0.5)
            if job is None:
                if queue.size() == 0:
                    return
                continue
            job.complete()
            with lock:
                done[0] += 1

    elapsed = timed_threads(consume, CONSUMERS)
    queue.close()
    client.close()
    assert done[0] == jobs, done
    return jobs / elapsed


async def async_drain(uri: str, db: str, name: str, jobs: int) -> float:
    await asyncio.to_thread(_fill, uri, db, name, jobs)
    client: AsyncMongoClient[Document] = AsyncMongoClient(uri)
    done = 0
    async with AsyncQueue(client[db][name]) as queue:
        async def consume() -> None:
            nonlocal done
            while True:
                job = await queue.next(timeout=0.5)
                if job is None:
                    if await queue.size() == 0:
                        return
                    continue
                await job.complete()
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(consume() for _ in range(CONSUMERS)))
        elapsed = time.monotonic() - started
    await client.close()
    assert done == jobs, done
    return jobs / elapsed


def floor_drain(uri: str, db: str, name: str, jobs: int, api: str) -> float:
    """The bare driver draining ``jobs`` of a queue's documents (``aio_floor``)."""
    _fill(uri, db, name, jobs)
    if api == "sync":
        return floor_sync(uri, db, name, jobs)
    return asyncio.run(floor_async(uri, db, name, jobs))


def _produce(uri: str, db: str, name: str, count: int, gap: float,
             stop: threading.Event) -> None:
    client: MongoClient[Document]
    with MongoClient(uri) as client, Queue(client[db][name]) as producer:
        for _ in range(count):
            if stop.wait(gap):
                return
            producer.put({"t": time.monotonic()})


@contextmanager
def producing(uri: str, db: str, name: str, count: int, gap: float = 0.02) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=_produce, args=(uri, db, name, count, gap, stop))
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def sync_latency(uri: str, db: str, name: str, count: int) -> list[float]:
    client: MongoClient[Document] = MongoClient(uri)
    waits: list[float] = []
    with Queue(client[db][name]) as queue, producing(uri, db, name, count):
        while len(waits) < count:
            job = queue.next(timeout=10)
            assert job is not None
            waits.append(time.monotonic() - job.payload["t"])
            job.complete()
    client.close()
    return waits


async def async_latency(uri: str, db: str, name: str, count: int) -> list[float]:
    client: AsyncMongoClient[Document] = AsyncMongoClient(uri)
    waits: list[float] = []
    async with AsyncQueue(client[db][name]) as queue:
        await queue.next()  # the stream is opened by the first waiting next()
        with producing(uri, db, name, count):
            while len(waits) < count:
                job = await queue.next(timeout=10)
                assert job is not None
                waits.append(time.monotonic() - job.payload["t"])
                await job.complete()
    await client.close()
    return waits


async def async_idle(uri: str, db: str, name: str, seconds: float) -> float:
    commands = Commands()
    client: AsyncMongoClient[Document] = AsyncMongoClient(uri, event_listeners=[commands])
    async with AsyncQueue(client[db][name]) as queue:
        waiting = asyncio.create_task(queue.next(timeout=None))
        await asyncio.sleep(2.0)  # settled: stream open, first claim done
        before = commands.count
        await asyncio.sleep(seconds)
        sent = commands.count - before
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
    await client.close()
    return sent / seconds


def rss_mib() -> float:
    """This process's resident memory now (Linux), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def worker_drain(uri: str, db: str, name: str, jobs: int, nap: float,
                       concurrency: int, batch: int | None = None) -> tuple[float, int, float]:
    """(jobs/s, most handlers in flight, RSS MiB then) of an AsyncWorker draining ``jobs``."""
    await asyncio.to_thread(_fill, uri, db, name, jobs)
    client: AsyncMongoClient[Document] = AsyncMongoClient(uri)
    in_flight = most = 0
    peak_rss = 0.0

    async def handler(payload: dict[str, Any]) -> None:
        nonlocal in_flight, most, peak_rss
        in_flight += 1
        if in_flight > most:
            most = in_flight
            peak_rss = rss_mib()
        if nap:
            await asyncio.sleep(nap)
        in_flight -= 1

    async with AsyncQueue(client[db][name]) as queue:
        worker = AsyncWorker(queue, handler, concurrency=concurrency, burst=True, batch=batch)
        started = time.monotonic()
        await worker.run()
        elapsed = time.monotonic() - started
    await client.close()
    return jobs / elapsed, most, peak_rss


def worker_rounds(uri: str, db: str, name: Callable[[], str], jobs: int, rounds: int,
                  say: Callable[[str], None]) -> dict[str, Any]:
    """The AsyncWorker at concurrency 500: handlers returning at once, then awaiting
    ``WORKER_NAP``, with the default batch (adaptive: ``ClaimSizing.for_coroutines``) and
    with a prefetch buffer (``batch`` twice the concurrency), rounds interleaved."""
    rates: dict[str, list[float]] = {kind: [] for kind in WORKER_KINDS}
    most, rss = 0, 0.0
    for round_no in range(rounds):
        for kind, (nap, batch) in WORKER_KINDS.items():
            rate, in_flight, peak = asyncio.run(worker_drain(
                uri, db, name(), jobs, nap, WORKER_CONCURRENCY, batch))
            rates[kind].append(rate)
            if nap:
                most, rss = max(most, in_flight), max(rss, peak)
        say(f"worker round {round_no + 1}: " + ", ".join(
            f"{kind} {values[-1]:.0f} jobs/s" for kind, values in rates.items())
            + f", {most} in flight, {rss:.0f} MiB")
    median = {kind: statistics.median(values) for kind, values in rates.items()}
    # What 500 handlers that each await 0.1 s can do at most, however fast the database.
    ceiling = WORKER_CONCURRENCY / WORKER_NAP
    return {
        "concurrency": WORKER_CONCURRENCY, "jobs": jobs,
        **{f"{kind}_jobs_per_s": round(rate) for kind, rate in median.items()},
        **{f"{kind}_rounds": [round(rate) for rate in rates[kind]] for kind in rates},
        "awaiting_to_instant": round(median["awaiting"] / median["instant"], 2),
        "handler_ceiling_jobs_per_s": round(ceiling),
        # The target's premise (the database is the limit) holds only while the
        # instant rate is below the ceiling: compare with whichever limit binds.
        "awaiting_to_limit": round(median["awaiting"] / min(median["instant"], ceiling), 2),
        "prefetch_awaiting_to_limit": round(
            median["prefetch_awaiting"] / min(median["prefetch_instant"], ceiling), 2),
        "most_in_flight": most,
        "rss_mib_at_most_in_flight": round(rss, 1),
    }


def run(uri: str, jobs: int, rounds: int, latency_jobs: int, idle_seconds: float,
        say: Callable[[str], None], worker_jobs: int | None = None) -> dict[str, Any]:
    db = f"streamqueue_bench_aio_{uuid.uuid4().hex[:6]}"
    fresh = iter(range(1_000_000))

    def name() -> str:
        return f"q{next(fresh)}"

    sync_rates: list[float] = []
    async_rates: list[float] = []
    floor_rates: dict[str, list[float]] = {"sync": [], "async": []}
    for round_no in range(rounds):
        sync_rates.append(sync_drain(uri, db, name(), jobs))
        async_rates.append(asyncio.run(async_drain(uri, db, name(), jobs)))
        for api in ("sync", "async"):
            floor_rates[api].append(floor_drain(uri, db, name(), jobs, api))
        say(f"round {round_no + 1}: sync {sync_rates[-1]:.0f} jobs/s, "
            f"async {async_rates[-1]:.0f} jobs/s; bare driver sync "
            f"{floor_rates['sync'][-1]:.0f}, async {floor_rates['async'][-1]:.0f}")
    sync_waits = sync_latency(uri, db, name(), latency_jobs)
    async_waits = asyncio.run(async_latency(uri, db, name(), latency_jobs))
    idle = asyncio.run(async_idle(uri, db, name(), idle_seconds))
    worker = worker_rounds(uri, db, name, worker_jobs or jobs, rounds, say)
    dropper: MongoClient[Document]
    with MongoClient(uri) as dropper:
        dropper.drop_database(db)
    sync_rate, async_rate = statistics.median(sync_rates), statistics.median(async_rates)
    return {
        "jobs": jobs, "rounds": rounds, "consumers": CONSUMERS,
        "sync_jobs_per_s": round(sync_rate), "async_jobs_per_s": round(async_rate),
        "async_to_sync": round(async_rate / sync_rate, 2),
        "sync_rounds": [round(rate) for rate in sync_rates],
        "async_rounds": [round(rate) for rate in async_rates],
        # The driver alone (bench/aio_floor.py): how much of the gap is pymongo's.
        "driver_sync_jobs_per_s": round(statistics.median(floor_rates["sync"])),
        "driver_async_jobs_per_s": round(statistics.median(floor_rates["async"])),
        "driver_async_to_sync": round(statistics.median(floor_rates["async"])
                                      / statistics.median(floor_rates["sync"]), 2),
        "latency_ms": {
            api: {"p50": round(percentile(sorted(waits), 50) * 1000, 1),
                  "p99": round(percentile(sorted(waits), 99) * 1000, 1)}
            for api, waits in (("sync", sync_waits), ("async", async_waits))},
        "idle_async_ops_per_s": round(idle, 2),
        "worker": worker,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamqueue.bench.aio")
    parser.add_argument("--uri")
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker-jobs", type=int, default=20000,
                        help="jobs per AsyncWorker drain (default 20,000: 4 s at 5,000/s)")
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        sys.stderr.write(f"[bench.aio] {message}\n")

    if args.uri:
        result = run(args.uri, args.jobs, args.rounds, args.latency_jobs, args.idle_seconds, say,
                     args.worker_jobs)
    else:
        with ReplicaSet() as replica_set:
            result = run(replica_set.uri, args.jobs, args.rounds, args.latency_jobs,
                         args.idle_seconds, say, args.worker_jobs)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
