"""``streamqueue cancel``, ``pause``, ``resume`` and the PAUSED column through the real CLI."""

from __future__ import annotations

import json

import pytest
from bson import ObjectId
from pymongo.collection import Collection

from streamqueue.exitcodes import ExitCode
from streamqueue.storage import Document
from tests.integration.conftest import QueueFactory
from tests.integration.processes import run_cli


@pytest.fixture
def target(mongo_uri: str, collection: Collection[Document]) -> list[str]:
    return ["--uri", mongo_uri, "--db", collection.database.name, "--queue", collection.name]


def test_cancel_a_ready_job_a_held_job_and_a_finished_one(
        make_queue: QueueFactory, target: list[str]) -> None:
    queue = make_queue(keep_completed=600)
    running = queue.put({"n": 1})
    held = queue.next()
    assert held is not None and held.id == running
    ready = queue.put({"n": 2})

    result = run_cli("streamqueue", "cancel", *target, str(ready), "--json")
    assert result.returncode == ExitCode.OK, result.stderr
    assert json.loads(result.stdout)["outcome"] == "cancelled"
    result = run_cli("streamqueue", "cancel", *target, str(running))
    assert result.returncode == ExitCode.OK, result.stderr
    assert result.stdout.strip() == f"{running} cancel requested"
    held.progress()
    assert held.cancel_requested

    again = run_cli("streamqueue", "cancel", *target, str(ready))
    assert again.returncode == ExitCode.ERROR
    assert len(again.stderr.strip().splitlines()) == 1 and "already finished" in again.stderr
    missing = run_cli("streamqueue", "cancel", *target, str(ObjectId()))
    assert missing.returncode == ExitCode.NOT_FOUND
    assert len(missing.stderr.strip().splitlines()) == 1 and "no job" in missing.stderr


def test_pause_and_resume_show_in_stats(make_queue: QueueFactory, target: list[str]) -> None:
    queue = make_queue()
    queue.put({"n": 1})
    paused = run_cli("streamqueue", "pause", *target, "--json")
    assert paused.returncode == ExitCode.OK, paused.stderr
    assert json.loads(paused.stdout)["paused"] is True
    assert queue.is_paused()
    stats = run_cli("streamqueue", "stats", *target, "--json")
    assert next(iter(json.loads(stats.stdout).values()))["paused"] is True
    table = run_cli("streamqueue", "stats", *target)
    header, row = table.stdout.strip().splitlines()
    assert header.split()[-1] == "PAUSED" and row.split()[-1] == "yes"
    resumed = run_cli("streamqueue", "resume", *target)
    assert resumed.returncode == ExitCode.OK, resumed.stderr
    assert "resumed" in resumed.stdout and not queue.is_paused()


def test_pause_refuses_an_unknown_queue(target: list[str]) -> None:
    unknown = [*target[:-1], "no-such-queue"]
    result = run_cli("streamqueue", "pause", *unknown)
    assert result.returncode == ExitCode.NOT_FOUND
    assert len(result.stderr.strip().splitlines()) == 1 and "no queue" in result.stderr
