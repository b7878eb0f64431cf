"""``streamqueue show`` and ``streamqueue jobs`` through the real CLI, and ``put --tag``."""

from __future__ import annotations

import json

import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.collection import Collection

from streamqueue import Queue
from streamqueue.exitcodes import ExitCode
from streamqueue.storage import Document
from tests.helpers import wait_until
from tests.integration.conftest import QueueFactory
from tests.integration.processes import CliProcess, child_env, cli_processes, run_cli


@pytest.fixture
def target(mongo_uri: str, collection: Collection[Document]) -> list[str]:
    return ["--uri", mongo_uri, "--db", collection.database.name, "--queue", collection.name]


def test_put_tags_then_show_and_list(make_queue: QueueFactory, target: list[str]) -> None:
    put = run_cli("streamqueue", "put", *target, "--tag", "welcome", "--tag", "vip", '{"n": 1}')
    assert put.returncode == ExitCode.OK, put.stderr
    tagged = ObjectId(put.stdout.strip())
    queue: Queue = make_queue(keep_completed=600, max_attempts=1)
    # Listings are newest first by _id, whose time part has whole seconds: ids
    # made by two processes within one second sort by their random part.
    assert wait_until(lambda: ObjectId().generation_time > tagged.generation_time, 2.0)
    dead_id = queue.put({"n": 2})
    job = queue.next()  # the tagged one is older: claimed first
    assert job is not None and job.id == tagged
    job.complete(result={"sent": True})
    dead = queue.next()
    assert dead is not None and dead.id == dead_id
    dead.error("Traceback...\nRuntimeError: smtp down")

    shown = run_cli("streamqueue", "show", *target, str(tagged), "--json")
    assert shown.returncode == ExitCode.OK, shown.stderr
    info = json.loads(shown.stdout)
    assert (info["id"], info["state"], info["tags"], info["result"]) == (
        str(tagged), "completed", ["welcome", "vip"], {"sent": True})
    assert info["finished_at"].endswith("Z") and info["locked_until"] is None

    plain = run_cli("streamqueue", "show", *target, str(dead_id))
    assert plain.returncode == ExitCode.OK, plain.stderr
    assert "failed" in plain.stdout and "smtp down" in plain.stdout

    listed = run_cli("streamqueue", "jobs", *target, "--json")
    assert listed.returncode == ExitCode.OK, listed.stderr
    assert [row["id"] for row in json.loads(listed.stdout)] == [str(dead_id), str(tagged)]
    by_tag = run_cli("streamqueue", "jobs", *target, "--tag", "vip", "--json")
    assert [row["id"] for row in json.loads(by_tag.stdout)] == [str(tagged)]
    table = run_cli("streamqueue", "jobs", *target, "--state", "failed")
    assert table.returncode == ExitCode.OK, table.stderr
    header, row = table.stdout.strip().splitlines()
    assert header.split()[:3] == ["JOB", "ID", "STATE"]
    assert row.split()[:2] == [str(dead_id), "failed"] and "RuntimeError: smtp down" in row
    page = run_cli("streamqueue", "jobs", *target, "--after", str(dead_id), "--json")
    assert [row["id"] for row in json.loads(page.stdout)] == [str(tagged)]


def test_show_and_jobs_refuse_bad_input_in_one_line(target: list[str]) -> None:
    missing = run_cli("streamqueue", "show", *target, str(ObjectId()))
    assert missing.returncode == ExitCode.NOT_FOUND
    assert len(missing.stderr.strip().splitlines()) == 1 and "no job" in missing.stderr
    for args in (["show", *target, "nope"], ["jobs", *target, "--state", "running"],
                 ["jobs", *target, "--limit", "0"], ["put", *target, "--tag", "", "{}"]):
        result = run_cli("streamqueue", *args)
        assert result.returncode == ExitCode.USAGE, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_put_key_prints_the_active_holder_and_jobs_lists_by_key(target: list[str]) -> None:
    first = run_cli("streamqueue", "put", *target, "--key", "invoice-7", '{"n": 1}')
    assert first.returncode == ExitCode.OK, first.stderr
    again = run_cli("streamqueue", "put", *target, "--key", "invoice-7", '{"n": 2}')
    assert again.returncode == ExitCode.OK, again.stderr
    assert again.stdout.strip() == first.stdout.strip()
    other = run_cli("streamqueue", "put", *target, '{"n": 3}')
    assert other.stdout.strip() != first.stdout.strip()
    listed = run_cli("streamqueue", "jobs", *target, "--key", "invoice-7", "--json")
    assert listed.returncode == ExitCode.OK, listed.stderr
    assert [(row["id"], row["key"]) for row in json.loads(listed.stdout)] == [
        (first.stdout.strip(), "invoice-7")]
    for args in (["put", *target, "--key", "", "{}"], ["jobs", *target, "--key", ""]):
        result = run_cli("streamqueue", *args)
        assert result.returncode == ExitCode.USAGE, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_result_prints_a_finished_jobs_result_and_names_every_other_end(
    make_queue: QueueFactory, target: list[str],
) -> None:
    queue: Queue = make_queue(keep_completed=600, max_attempts=1)
    done, dead, running = (queue.put({"n": n}) for n in range(3))
    for job_id, settle in ((done, "complete"), (dead, "error")):
        job = queue.next()
        assert job is not None and job.id == job_id
        if settle == "complete":
            job.complete(result={"width": 128, "tags": ["a"]})
        else:
            job.error("Traceback...\nRuntimeError: smtp down")
    held = queue.next()
    assert held is not None and held.id == running

    printed = run_cli("streamqueue", "result", *target, str(done))
    assert printed.returncode == ExitCode.OK, printed.stderr
    assert json.loads(printed.stdout) == {"width": 128, "tags": ["a"]}
    failed = run_cli("streamqueue", "result", *target, str(dead))
    assert failed.returncode == ExitCode.ERROR
    assert "RuntimeError: smtp down" in failed.stderr and len(failed.stderr.splitlines()) == 1
    waiting = run_cli("streamqueue", "result", *target, str(running), "--timeout", "0.5")
    assert waiting.returncode == ExitCode.NOT_FINISHED, waiting.stderr
    missing = run_cli("streamqueue", "result", *target, str(ObjectId()), "--timeout", "0")
    assert missing.returncode == ExitCode.NOT_FOUND


def test_result_waits_for_the_job_to_finish(
    make_queue: QueueFactory, target: list[str], mongo_client: MongoClient[Document],
) -> None:
    queue: Queue = make_queue(keep_completed=600)
    job_id = queue.put({"n": 1})
    job = queue.next()
    assert job is not None
    with cli_processes() as started:
        waiting = CliProcess("streamqueue", ["result", *target, str(job_id), "--timeout", "60"],
                             child_env())
        started.append(waiting)
        # Complete the job only once the CLI waits on its change stream.
        assert wait_until(lambda: result_streams(mongo_client) > 0 or not waiting.alive(), 30)
        assert waiting.alive(), waiting.describe()
        job.complete(result=42)
        assert waiting.wait(30) == ExitCode.OK, waiting.describe()
    assert waiting.stdout.strip() == "42"


def result_streams(client: MongoClient[Document]) -> int:
    """Change streams open by ``streamqueue result`` processes (``$currentOp``)."""
    ops = client.admin.aggregate([
        {"$currentOp": {"allUsers": True, "idleCursors": True}},
        {"$match": {"appName": "streamqueue-result"}},
    ])
    return sum(1 for op in ops if "$changeStream" in str(
        op.get("cursor", {}).get("originatingCommand", op.get("command", {}))))
