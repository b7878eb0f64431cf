"""Scenario 7: authentication and authorization on a replica set run with ``--keyFile``.

A user with only ``readWrite`` on the queue's database can enqueue (API and
``put``), consume (the worker process) and reap (the reaper process, which
moves a dead job in a transaction). A user without that role, and a wrong
password, get ``PermissionDenied`` from the API and exit status 5 with one
clear line from every command. No output of any process shows the password.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote_plus

import pytest
from bson import ObjectId
from pymongo import MongoClient

from streamqueue import Queue
from streamqueue.errors import PermissionDenied
from streamqueue.exitcodes import ExitCode
from tests.faults.common import log
from tests.faults.conftest import AuthSet, Report
from tests.faults.evidence import gather
from tests.faults.procs import Fleet, run_cli
from tests.helpers import wait_until

Document = dict[str, Any]


def secrets_in(text: str, password: str) -> list[str]:
    return [form for form in {password, quote_plus(password)} if form in text]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_readwrite_user_can_enqueue_consume_and_reap(
    auth_rs: AuthSet,
    fleet_factory: Callable[..., Fleet],
    report: Callable[[str], Report],
) -> None:
    sheet = report("auth_readwrite")
    uri = auth_rs.uri("app")
    name = f"auth_{uuid.uuid4().hex[:6]}"
    where = ["--uri", uri, "--db", auth_rs.db, "--queue", name]
    client: MongoClient[Document] = MongoClient(uri)
    coll = client[auth_rs.db][name]
    records = client[auth_rs.db][f"{name}.records"]
    try:
        queue = Queue(coll, lease=1.0)
        ids = queue.put_many([{"i": i} for i in range(50)])
        put = run_cli("put", '{"i": "from the command line"}', *where)
        assert put.returncode == 0, put.stderr
        ids.append(ObjectId(put.stdout.strip()))
        # Two claims abandoned with 1 s leases: one with attempts left, one without.
        doomed = Queue(coll, max_attempts=1).put({"i": "doomed"}, priority=10)
        abandoned = Queue(coll, max_attempts=3).put({"i": "abandoned"}, priority=10)
        claimed = {job.id for job in queue.next_batch(2)}
        assert claimed == {doomed, abandoned}
        ids.append(abandoned)
        assert wait_until(lambda: coll.count_documents({"state": "locked", "$expr": {
            "$lt": ["$locked_until", "$$NOW"]}}) == 2, timeout=30, interval=0.1)
        reap = run_cli("reaper", *where, "--once", "--log-level", "INFO")
        assert reap.returncode == 0, reap.stderr
        assert [d["_id"] for d in coll.database[f"{name}.failed"].find()] == [doomed]

        fleet = fleet_factory(auth_rs.rs.uri, name, db=auth_rs.db, record_uri=uri)
        worker = fleet.worker(uri=uri, concurrency=4, lease=10.0)
        assert wait_until(lambda: coll.count_documents({}) == 0, timeout=60, interval=0.1), (
            fleet.output()[-4000:])
        status = fleet.stop(worker)
        evidence = gather(coll, records, ids, expected_dead={doomed})
        output = "\n".join([put.stdout, put.stderr, reap.stdout, reap.stderr, fleet.output()])
        sheet.update(evidence.figures())
        sheet.update({"worker_exit_status": status, "password_shown": len(
            secrets_in(output, auth_rs.password)), "uri_shown_redacted": output.count(":***@")})
        log(f"auth (readWrite): {sheet.figures}")
        evidence.assert_sound()
        assert evidence.completed == len(ids)
        assert status == 0, worker.output()[-3000:]
        assert not secrets_in(output, auth_rs.password), output
    finally:
        queue.close()
        client.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_user_without_the_role_gets_a_clear_permission_error(
    auth_rs: AuthSet,
    report: Callable[[str], Report],
) -> None:
    sheet = report("auth_denied")
    name = f"auth_{uuid.uuid4().hex[:6]}"
    root: MongoClient[Document] = MongoClient(auth_rs.uri("root"))
    accounts = {
        "no readWrite on the queue's database": (auth_rs.uri("outsider"), "not authorized"),
        "wrong password": (auth_rs.uri("app", password="not-the-password"),
                           "Authentication failed"),
    }
    outputs: list[str] = []
    figures: dict[str, Any] = {}
    api_seconds: dict[str, float] = {}
    try:
        for account, (uri, expected) in accounts.items():
            # The API: every kind of call says PermissionDenied, and why. A client
            # per call: after a failed authentication the driver marks the server
            # unknown and the next call on that client waits for its next server
            # check (10 s) before failing the same way.
            api: dict[str, str] = {}
            calls: dict[str, Callable[[Queue], object]] = {
                "put": lambda queue: queue.put({"i": 1}),
                "next": lambda queue: queue.next(timeout=0),
                "reap": lambda queue: queue.reap(),
                "stats": lambda queue: queue.stats(),
            }
            for call, run in calls.items():
                client: MongoClient[Document] = MongoClient(uri, serverSelectionTimeoutMS=10000)
                queue = Queue(client[auth_rs.db][name])
                t0 = time.monotonic()
                with pytest.raises(PermissionDenied) as caught:
                    run(queue)
                api_seconds[f"{account}: {call}"] = round(time.monotonic() - t0, 1)
                queue.close()
                client.close()
                api[call] = str(caught.value)
                assert expected in api[call], (account, call, api[call])
                outputs.append(api[call])

            # The command line: exit status 5 and one line on stderr, no traceback.
            where = ["--uri", uri, "--db", auth_rs.db, "--queue", name]
            commands = {
                "put": ["put", '{"i": 1}', *where],
                "worker": ["worker", "tests.faults.handlers:record", *where, "--log-level",
                           "DEBUG"],
                "reaper": ["reaper", *where, "--once", "--log-level", "DEBUG"],
                "stats": ["stats", *where],
            }
            cli: dict[str, Any] = {}
            for command, args in commands.items():
                t0 = time.monotonic()
                done = run_cli(*args, timeout=90)
                outputs += [done.stdout, done.stderr]
                # The command's verdict is its last line (a worker or reaper may log before).
                last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
                cli[command] = {"status": done.returncode,
                                "seconds": round(time.monotonic() - t0, 1),
                                "message": last[:160]}
                assert done.returncode == ExitCode.PERMISSION, (account, command, done.stderr)
                assert "Traceback" not in done.stderr, done.stderr
                assert last.startswith(f"streamqueue {command}: error: "), done.stderr
                assert expected.lower() in last.lower() or "refused the credentials" in last, (
                    account, command, last)
            figures[account] = {"api": {k: v[:160] for k, v in api.items()}, "cli": cli}
        # Nothing was written by anyone.
        assert name not in root[auth_rs.db].list_collection_names()
    finally:
        root.close()
    shown = secrets_in("\n".join(outputs), auth_rs.password)
    sheet.update({"accounts": figures, "api_seconds": api_seconds, "password_shown": len(shown)})
    log(f"auth (denied): {sheet.figures}")
    assert not shown, "\n".join(outputs)
