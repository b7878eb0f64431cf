"""``streamqueue schedule add|list|remove`` and the reaper that fires, through the real CLI."""

from __future__ import annotations

import json

import pytest
from pymongo.collection import Collection

from streamqueue.exitcodes import ExitCode
from streamqueue.storage import Document
from tests.helpers import wait_until
from tests.integration.processes import CliProcess, child_env, cli_processes, run_cli


@pytest.fixture
def target(mongo_uri: str, collection: Collection[Document]) -> list[str]:
    return ["--uri", mongo_uri, "--db", collection.database.name, "--queue", collection.name]


def test_add_list_remove(target: list[str]) -> None:
    added = run_cli("streamqueue", "schedule", "add", *target, "nightly", "--cron", "@daily",
                    "--timezone", "Asia/Tokyo", "--payload", '{"r": 1}', "--json")
    assert added.returncode == ExitCode.OK, added.stderr
    shown = json.loads(added.stdout)
    assert shown["name"] == "nightly" and shown["next_at"].endswith("T15:00:00Z")
    again = run_cli("streamqueue", "schedule", "add", *target, "nightly", "--cron", "@daily",
                    "--timezone", "Asia/Tokyo", "--payload", '{"r": 1}', "--json")
    assert json.loads(again.stdout) == shown  # the same options change nothing
    run_cli("streamqueue", "schedule", "add", *target, "ping", "--every", "30", "--misfire", "skip")
    listed = run_cli("streamqueue", "schedule", "list", *target, "--json")
    assert [s["name"] for s in json.loads(listed.stdout)] == ["nightly", "ping"]
    table = run_cli("streamqueue", "schedule", "list", *target)
    assert "every 30s" in table.stdout and "Asia/Tokyo" in table.stdout
    removed = run_cli("streamqueue", "schedule", "remove", *target, "ping")
    assert removed.returncode == ExitCode.OK and "removed" in removed.stdout
    missing = run_cli("streamqueue", "schedule", "remove", *target, "ping")
    assert missing.returncode == ExitCode.NOT_FOUND
    assert len(missing.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("options", "message"), [
    (["--cron", "61 * * * *"], "bad cron expression"),
    (["--cron", "* * * * *", "--timezone", "Nowhere/Land"], "unknown time zone"),
    (["--every", "0.5"], "from 1 second"),
    (["--every", "60", "--start-at", "2026-01-02T00:00:00Z", "--end-at", "2026-01-01T00:00:00Z"],
     "must be after start_at"),
])
def test_bad_input_is_one_line_and_exit_2(target: list[str], options: list[str],
                                          message: str) -> None:
    result = run_cli("streamqueue", "schedule", "add", *target, "bad", *options)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


def test_both_or_neither_of_cron_and_every_is_a_usage_error(target: list[str]) -> None:
    both = run_cli("streamqueue", "schedule", "add", *target, "x", "--cron", "@hourly",
                   "--every", "5")
    neither = run_cli("streamqueue", "schedule", "add", *target, "x")
    assert both.returncode == neither.returncode == ExitCode.USAGE


def test_a_reaper_fires_and_one_with_no_schedules_does_not(
        target: list[str], collection: Collection[Document]) -> None:
    run_cli("streamqueue", "schedule", "add", *target, "tick", "--every", "1")
    with cli_processes() as started:
        quiet = CliProcess("streamqueue", ["reaper", *target, "--no-schedules"], child_env())
        started.append(quiet)
        assert quiet.wait_for_log("reaper on")
        assert "firing schedules" not in quiet.stderr
        assert collection.count_documents({"schedule": "tick"}) == 0
        firing = CliProcess("streamqueue", ["reaper", *target], child_env())
        started.append(firing)
        assert firing.wait_for_log("firing schedules")
        assert wait_until(lambda: collection.count_documents({"schedule": "tick"}) >= 2, 10)


def test_a_worker_with_schedules_fires_and_runs_the_jobs(
        mongo_uri: str, target: list[str], collection: Collection[Document]) -> None:
    records = collection.database[f"{collection.name}.records"]
    env = child_env(STREAMQUEUE_TEST_RECORD_URI=mongo_uri,
                    STREAMQUEUE_TEST_RECORD_DB=collection.database.name,
                    STREAMQUEUE_TEST_RECORD_COLLECTION=records.name)
    run_cli("streamqueue", "schedule", "add", *target, "tick", "--every", "1",
            "--payload", '{"n": 7}')
    try:
        with cli_processes() as started:
            worker = CliProcess("streamqueue", ["worker", "tests.handlers:record", *target,
                                                "--schedules"], env)
            started.append(worker)
            assert wait_until(lambda: records.count_documents({"n": 7, "event": "done"}) >= 2,
                              20), worker.describe()
    finally:
        collection.database.drop_collection(records.name)
