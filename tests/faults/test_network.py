"""Scenario 3: network trouble between consumers and MongoDB, injected with ``failCommand``.

The fail points target the workers' connections only (``appName``) and are
bounded (``times``); each is waited on with ``waitForFailPoint`` until it has
fired as often as configured, so the test knows every fault really happened.
No reaper runs and leases are long: a claim orphaned by a fault would stay
locked and the queue would never drain.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient

from streamqueue import Queue
from streamqueue.testing import ReplicaSet
from tests.faults.common import FAULT_DB, change_streams, log
from tests.faults.conftest import Report, Scene
from tests.faults.evidence import gather
from tests.helpers import wait_until

Document = dict[str, Any]

WORKER_APP = "streamqueue-worker"  # the appname the worker CLI connects with
RETRYABLE = ["RetryableWriteError"]
WCE_INTERRUPTED = {"code": 11602, "codeName": "InterruptedDueToReplStateChange",
                   "errmsg": "operation was interrupted"}

# (what it simulates, failCommand data, times)
FAULTS: list[tuple[str, Document, int]] = [
    ("claim: connection cut", {"failCommands": ["findAndModify"], "closeConnection": True}, 3),
    # Not 91 (ShutdownInProgress): after it the driver waits for its next
    # heartbeat (10 s) instead of checking at once, as the server is expected
    # to go away; a fail point leaves it up, so that would only slow the test.
    ("claim: primary stepped down", {"failCommands": ["findAndModify"], "errorCode": 189,
                                     "errorLabels": RETRYABLE}, 3),
    ("complete: connection cut", {"failCommands": ["delete"], "closeConnection": True}, 3),
    ("complete: interrupted by an election", {"failCommands": ["delete"], "errorCode": 11602,
                                              "errorLabels": RETRYABLE}, 3),
    ("heartbeat: connection cut", {"failCommands": ["update"], "closeConnection": True}, 2),
    ("change stream getMore: connection cut", {"failCommands": ["getMore"],
                                               "closeConnection": True}, 2),
    ("change stream getMore and reopen: connection cut",
     {"failCommands": ["getMore", "aggregate"], "closeConnection": True}, 4),
    ("change stream: history lost (token unusable)", {"failCommands": ["getMore"],
                                                      "errorCode": 286}, 1),
    ("heartbeat read-back: connection cut", {"failCommands": ["find"], "closeConnection": True}, 2),
    # What an election does to a write waiting for majority: the write is
    # applied, the reply carries a WriteConcernError. Batch claims, bulk
    # completions and heartbeats are multi-document writes, which the driver
    # never retries. (After this error the driver waits for its next server
    # check, up to 10 s, as the server did not really change: one fault for both.)
    ("batch claim, heartbeat, bulk complete: applied, majority wait interrupted",
     {"failCommands": ["update", "delete"], "writeConcernError": WCE_INTERRUPTED}, 4),
]


# pymongo's own housekeeping: its background kill-cursors finds no primary while a
# fault leaves none, and logs the traceback itself (the server reaps those cursors).
DRIVER_HOUSEKEEPING = "ERROR pymongo.client: MongoClient background task encountered an error"
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT|=====)")


def without_driver_housekeeping(output: str) -> str:
    """The workers' output without pymongo's background-task error records."""
    kept: list[str] = []
    skipping = False
    for line in output.splitlines():
        if DRIVER_HOUSEKEEPING in line:
            skipping = True
        elif LOG_LINE.match(line):
            skipping = False
        if not skipping:
            kept.append(line)
    return "\n".join(kept)


def fail_point(client: MongoClient[Document], data: Document, times: int) -> int:
    """Arm ``failCommand`` for the workers; return how often it had fired before."""
    reply = client.admin.command("configureFailPoint", "failCommand", mode={"times": times},
                                 data={**data, "appName": WORKER_APP})
    return int(reply["count"])


def wait_for_fail_point(client: MongoClient[Document], entered: int, timeout: float) -> None:
    client.admin.command("waitForFailPoint", "failCommand", timesEntered=entered,
                         maxTimeMS=int(timeout * 1000))


@contextmanager
def fail_points_off(client: MongoClient[Document]) -> Iterator[None]:
    try:
        yield
    finally:
        client.admin.command("configureFailPoint", "failCommand", mode="off")


class Producer:
    """Puts ``per_tick`` jobs every ``tick`` seconds until stopped (a steady flow)."""

    def __init__(self, queue: Queue, per_tick: int = 5, tick: float = 0.05) -> None:
        self.queue = queue
        self.per_tick = per_tick
        self.tick = tick
        self.ids: list[ObjectId] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)

    def _run(self) -> None:
        n = 0
        try:
            while not self._stop.wait(self.tick):
                batch = [{"i": n + k, "work": 0.005} for k in range(self.per_tick)]
                n += self.per_tick
                self.ids += self.queue.put_many(batch)
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Producer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_network_faults_orphan_nothing_and_lose_nothing(scene: Scene) -> None:
    sheet = scene.report("network")
    coll, records = scene.coll, scene.records
    producer_queue = Queue(coll, max_attempts=5)
    ids = producer_queue.put_many([{"i": -k, "work": 0.005} for k in range(1, 301)])
    fleet = scene.fleet()
    workers = [fleet.worker(concurrency=4, lease=60.0, heartbeat=0.3) for _ in range(2)]
    assert all(w.wait_for_output(" consuming ", 60) for w in workers), fleet.output()

    fired: dict[str, float] = {}
    started = time.monotonic()
    with fail_points_off(scene.client), Producer(producer_queue) as producer:
        for name, data, times in FAULTS:
            before = fail_point(scene.client, data, times)
            t0 = time.monotonic()
            wait_for_fail_point(scene.client, before + times, timeout=30)
            fired[name] = round(time.monotonic() - t0, 2)
            log(f"network: fired {name!r} x{times} in {fired[name]}s")
    assert producer.error is None, producer.error
    ids += producer.ids
    drained = wait_until(lambda: coll.count_documents({}) == 0, timeout=60, interval=0.2)
    locked = list(coll.find({"state": "locked"}, {"payload": 0}))
    assert drained, f"not drained; still locked: {locked[:5]}\n{fleet.output()[-6000:]}"
    elapsed = time.monotonic() - started

    # Every worker still follows exactly one change stream on the server.
    streams_ok = wait_until(
        lambda: change_streams(scene.client, coll.full_name).live == len(workers), timeout=30,
        interval=0.2)
    streams = change_streams(scene.client, coll.full_name)
    # And push wake-ups work: one job at a time, enqueue to completion.
    latencies: list[float] = []
    for k in range(5):
        t0 = time.monotonic()
        probe = producer_queue.put({"i": f"probe{k}"})
        ids.append(probe)
        assert wait_until(partial(records.count_documents, {"job_id": probe}),
                          timeout=10, interval=0.005)
        latencies.append(time.monotonic() - t0)
    producer_queue.close()
    assert wait_until(lambda: coll.count_documents({}) == 0, timeout=10, interval=0.1)

    evidence = gather(coll, records, ids, killed_pids=fleet.killed_pids)
    output = fleet.output()
    sheet.update(evidence.figures())
    sheet.update({
        "faults": {name: times for name, _, times in FAULTS},
        "seconds_until_fired": fired,
        "run_seconds": round(elapsed, 1),
        "change_streams_live_after": streams.live,
        # Cursors of streams whose connection was cut: the driver cannot kill
        # them, the server times them out after 10 minutes.
        "change_stream_cursors_abandoned": streams.stale,
        "stream_restarts_logged": output.count("polling every"),
        "stream_recoveries_logged": output.count("push wake-ups resumed"),
        "retries_logged": output.count("retrying:"),
        "probe_latency_ms": sorted(round(x * 1000) for x in latencies),
    })
    log(f"network: {sheet.figures}")
    evidence.assert_sound()
    assert evidence.completed == len(ids)
    assert evidence.duplicates == 0 and evidence.redeliveries == 0
    assert not evidence.expired_consumers
    assert all(w.alive() for w in workers), output[-4000:]
    assert streams_ok, f"{streams} change streams open for {len(workers)} workers"
    assert "push wake-ups resumed" in output, output[-4000:]
    ours = without_driver_housekeeping(output)
    assert "Traceback" not in ours, ours[-6000:]


AMBIGUOUS_APP = "sqfault-ambiguous"


@pytest.mark.timeout(60)
def test_a_claim_retried_while_its_first_try_is_in_flight_orphans_nothing(
    fault_rs: ReplicaSet,
    fault_client: MongoClient[Document],
    queue_name: str,
    report: Callable[[str], Report],
) -> None:
    """The reply of a claim is lost *before* the server has run it (a socket timeout while the
    command waits on the server), then the server runs it anyway. ``blockConnection`` holds
    the command 1.5 s on the server; the client's socket timeout is 0.3 s."""
    sheet = report("network_ambiguous_claim")
    coll = fault_client[FAULT_DB][queue_name]
    Queue(coll).put_many([{"i": i} for i in range(5)])
    client: MongoClient[Document] = MongoClient(fault_rs.uri, socketTimeoutMS=300,
                                                appname=AMBIGUOUS_APP)
    queue = Queue(client[FAULT_DB][queue_name], lease=60)
    queue.store.ensure_indexes()
    in_flight: list[Document] = [{"$currentOp": {"allUsers": True}},
                 {"$match": {"appName": AMBIGUOUS_APP, "command.findAndModify": queue_name}}]
    try:
        with fail_points_off(fault_client):
            fault_client.admin.command(
                "configureFailPoint", "failCommand", mode={"times": 2},
                data={"failCommands": ["findAndModify"], "blockConnection": True,
                      "blockTimeMS": 1500, "appName": AMBIGUOUS_APP})
            job = queue.next()
            # Let the abandoned tries finish on the server before looking.
            assert wait_until(lambda: not list(fault_client.admin.aggregate(in_flight)),
                              timeout=20, interval=0.1)
        locked = list(coll.find({"state": "locked"}, {"lease_token": 1}))
        sheet.update({"claimed": 1 if job else 0, "locked_after": len(locked),
                      "orphaned": len([d for d in locked if job is None or d["_id"] != job.id])})
        log(f"ambiguous claim: {sheet.figures}")
        assert job is not None
        assert [d["_id"] for d in locked] == [job.id], (
            f"claim returned {job.id}, but these are locked: {locked}")
    finally:
        queue.close()
        client.close()
