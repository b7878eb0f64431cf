"""Shared plumbing: the connection and progress log, percentiles, server counters, fills."""

from __future__ import annotations

import math
import os
import platform
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pymongo
from bson import ObjectId
from pymongo import MongoClient, monitoring
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.write_concern import WriteConcern

from streamqueue.hooks import Hooks
from streamqueue.storage import Document

OPCOUNTERS = ("insert", "query", "update", "delete", "getmore", "command")


class BenchContext:
    """One deployment under test: a client, a throw-away database and the progress log."""

    def __init__(self, uri: str, *, database: str | None = None, verbose: bool = True,
                 server_pids: Sequence[int] = ()) -> None:
        self.uri = uri
        # Knowing the server's processes lets every run report what else used the CPU.
        self.cpu = CpuMeter(server_pids)
        self.client: MongoClient[Document] = MongoClient(uri)
        self.db_name = database or f"streamqueue_bench_{uuid.uuid4().hex[:8]}"
        # Majority, stated explicitly: the floor and the queue write the same way.
        self.db: Database[Document] = self.client.get_database(
            self.db_name, write_concern=WriteConcern("majority"))
        self.verbose = verbose
        self._started = time.monotonic()
        self._names = 0

    def progress(self, message: str) -> None:
        if self.verbose:
            elapsed = time.monotonic() - self._started
            sys.stderr.write(f"[bench {int(elapsed) // 60:02d}:{elapsed % 60:04.1f}] {message}\n")
            sys.stderr.flush()

    def fresh(self, prefix: str) -> Collection[Document]:
        self._names += 1
        return self.db[f"{prefix}_{self._names}_{uuid.uuid4().hex[:6]}"]

    def drop(self, collection: Collection[Document]) -> None:
        self.db.drop_collection(collection.name)
        self.db.drop_collection(f"{collection.name}.failed")

    @contextmanager
    def scratch(self, prefix: str) -> Iterator[Collection[Document]]:
        """A fresh collection, dropped (with its error queue) afterwards."""
        collection = self.fresh(prefix)
        try:
            yield collection
        finally:
            self.drop(collection)

    def cpu_start(self) -> CpuSample | None:
        return self.cpu.sample()

    def other_cpu(self, start: CpuSample | None) -> float | None:
        return self.cpu.other_share(start)

    def server_cpu(self, start: CpuSample | None) -> float | None:
        return self.cpu.server_seconds(start)

    def client_cpu(self, start: CpuSample | None) -> float | None:
        return self.cpu.client_seconds(start)

    def server_ops(self) -> ServerOps:
        return ServerOps.read(self.client)

    def close(self, drop: bool = True) -> None:
        if drop:
            self.client.drop_database(self.db_name)
        self.client.close()


@dataclass(frozen=True)
class CpuSample:
    at: float
    busy: int  # every CPU of the machine, clock ticks
    ours: int  # this process, its reaped children and the server, clock ticks
    server: int = 0  # the server's processes alone, clock ticks


class CpuMeter:
    """The share of the machine's CPU that other processes took during a run.

    On a shared machine every number moves with the neighbours' load; each row
    reports this share so disturbed runs can be seen (and re-run). Linux only;
    ``None`` elsewhere, or when the server's processes are not known (``--uri``).
    """

    def __init__(self, server_pids: Sequence[int]) -> None:
        self.server_pids = list(server_pids)
        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._cpus = os.cpu_count() or 1

    def sample(self) -> CpuSample | None:
        if not self.server_pids:
            return None
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
            server = sum(_process_ticks(pid, children=False) for pid in self.server_pids)
            ours = _process_ticks(os.getpid(), children=True) + server
        except (OSError, ValueError):
            return None
        return CpuSample(time.monotonic(), user + nice + system + irq + softirq + steal, ours, server)

    def client_seconds(self, start: CpuSample | None) -> float | None:
        """CPU seconds this process and its reaped children used since ``start``."""
        end = self.sample()
        if start is None or end is None:
            return None
        return ((end.ours - end.server) - (start.ours - start.server)) / self._hz

    def server_seconds(self, start: CpuSample | None) -> float | None:
        """CPU seconds the server's processes used since ``start``."""
        end = self.sample()
        if start is None or end is None:
            return None
        return (end.server - start.server) / self._hz

    def other_share(self, start: CpuSample | None) -> float | None:
        """Other processes' CPU since ``start``, as a share of all the machine's cores."""
        end = self.sample()
        if start is None or end is None or end.at <= start.at:
            return None
        capacity = (end.at - start.at) * self._hz * self._cpus
        other = (end.busy - start.busy) - (end.ours - start.ours)
        return round(min(1.0, max(0.0, other / capacity)), 3)


def _process_ticks(pid: int, *, children: bool) -> int:
    # Fields after the command name (which may hold spaces): utime is the 12th.
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(v) for v in stat[11:15])
    return utime + stime + (cutime + cstime if children else 0)


@dataclass(frozen=True)
class ServerOps:
    """The server's operation counters at one moment."""

    at: float
    counters: dict[str, int]
    find_and_modify: int

    @classmethod
    def read(cls, client: MongoClient[Document]) -> ServerOps:
        status = client.admin.command("serverStatus")
        counters = {name: int(status["opcounters"].get(name, 0)) for name in OPCOUNTERS}
        fam = status.get("metrics", {}).get("commands", {}).get("findAndModify", {})
        return cls(at=time.monotonic(), counters=counters, find_and_modify=int(fam.get("total", 0)))

    def since(self, earlier: ServerOps) -> OpsDelta:
        return OpsDelta(
            seconds=self.at - earlier.at,
            counters={k: self.counters[k] - earlier.counters[k] for k in OPCOUNTERS},
            find_and_modify=self.find_and_modify - earlier.find_and_modify,
        )


@dataclass(frozen=True)
class OpsDelta:
    seconds: float
    counters: dict[str, int]
    find_and_modify: int

    @property
    def total(self) -> int:
        return sum(self.counters.values())

    @property
    def per_second(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0


class CountingHooks(Hooks):
    """Counts what the herd and throughput checks need; thread-safe and cheap."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.claims = 0
        self.empty = 0
        self.completed_count = 0
        self.lost = 0
        self.events = 0

    def claimed(self, queue: str, wait_seconds: float) -> None:
        with self._lock:
            self.claims += 1

    def claim_empty(self, queue: str) -> None:
        with self._lock:
            self.empty += 1

    def completed(self, queue: str, attempts: int, run_seconds: float) -> None:
        with self._lock:
            self.completed_count += 1

    def lease_lost(self, queue: str, run_seconds: float) -> None:
        with self._lock:
            self.lost += 1

    def changestream_event(self, queue: str) -> None:
        with self._lock:
            self.events += 1


@dataclass(frozen=True)
class Percentiles:
    """Milliseconds."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of_seconds(cls, values: Sequence[float]) -> Percentiles:
        if not values:
            nan = math.nan
            return cls(0, nan, nan, nan, nan, nan)
        ordered = sorted(v * 1000.0 for v in values)
        return cls(
            count=len(ordered),
            p50=percentile(ordered, 50),
            p90=percentile(ordered, 90),
            p99=percentile(ordered, 99),
            max=ordered[-1],
            mean=sum(ordered) / len(ordered),
        )


def timed_threads(target: Callable[[], None], count: int) -> float:
    """Run ``target`` in ``count`` threads at once; seconds until the last one ends."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started


def percentile(ordered: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks of an already sorted sequence."""
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(value: float, floor: float) -> float | None:
    if floor <= 0 or math.isnan(floor) or math.isnan(value):
        return None
    return value / floor


# -- fills --------------------------------------------------------------------------------

def queue_documents(count: int, start: int = 0) -> Iterator[Document]:
    """Jobs in the queue's document shape (``storage.new_document``), dates made here.

    The dates are a second in the past by this machine's clock, so every job is
    due by the server's clock too (same machine).
    """
    now = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=1)
    for seq in range(start, start + count):
        yield {
            "_id": ObjectId(),
            "payload": {"i": seq},
            "priority": 0,
            "state": "ready",
            "attempts": 0,
            "max_attempts": 3,
            "enqueued_at": now,
            "available_at": now,
        }


def bulk_fill(collection: Collection[Document], documents: Iterator[Document],
              chunk: int = 10_000) -> int:
    """insert_many in chunks; returns how many were written."""
    written = 0
    batch: list[Document] = []
    for doc in documents:
        batch.append(doc)
        if len(batch) >= chunk:
            collection.insert_many(batch, ordered=False)
            written += len(batch)
            batch = []
    if batch:
        collection.insert_many(batch, ordered=False)
        written += len(batch)
    return written


# -- the machine --------------------------------------------------------------------------

def machine_description(client: MongoClient[Document]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "pymongo": pymongo.version,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        build = client.admin.command("buildInfo")
        status = client.admin.command("serverStatus")
        hello = client.admin.command("hello")
        info["mongod"] = build.get("version")
        info["storage_engine"] = status.get("storageEngine", {}).get("name")
        info["topology"] = (f"replica set {hello.get('setName')} with {len(hello.get('hosts', []))} "
                            "member(s)" if hello.get("setName") else "standalone")
        cache = status.get("wiredTiger", {}).get("cache", {}).get("maximum bytes configured")
        if cache:
            info["wiredtiger_cache_gb"] = round(int(cache) / 2**30, 2)
    except pymongo.errors.PyMongoError as exc:  # pragma: no cover - reported, not fatal
        info["mongod_error"] = str(exc)
    return info


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gb() -> float | None:
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


def jsonable(value: object) -> object:
    """NaN and infinities are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


class ClaimCounter(monitoring.CommandListener):
    """Counts the claim commands a client sends: thread-safe, cheap."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.claims = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if is_claim(event.command_name, event.command):
            with self._lock:
                self.claims += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def reset(self) -> None:
        with self._lock:
            self.claims = 0


def is_claim(name: str, command: Mapping[str, Any]) -> bool:
    """A findAndModify, or an update whose filter selects ready jobs (a batch claim's lock)."""
    if name == "findAndModify":
        return bool(command.get("query", {}).get("state") == "ready")
    if name == "update":
        return any(u.get("q", {}).get("state") == "ready" for u in command.get("updates", []))
    return False
