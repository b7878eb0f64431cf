"""Fixtures for the fault suite: its own real replica sets, worker fleets and a figures report.

Every scenario runs against ``mongod`` processes started here by
``streamqueue.testing.ReplicaSet`` (with ``enableTestCommands``, so fail points
work), never against ``$STREAMQUEUE_TEST_URI``: the suite kills and steps down
servers. Figures go to ``tests/faults/.results/NAME.json`` and to the end of
the pytest output (shown with or without ``-s``).
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection

from streamqueue.testing import ReplicaSet
from tests.faults.common import FAULT_DB
from tests.faults.procs import Fleet

Document = dict[str, Any]

RESULTS_DIR = Path(__file__).parent / ".results"

_figures: dict[str, dict[str, Any]] = {}
_outcome_key = pytest.StashKey[dict[str, pytest.TestReport]]()


class Report:
    """One scenario's figures: printed at the end of the run and saved as JSON."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = time.monotonic()
        self.figures: dict[str, Any] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        self.figures[key] = value

    def __getitem__(self, key: str) -> Any:
        return self.figures[key]

    def update(self, values: dict[str, Any]) -> None:
        self.figures.update(values)

    def save(self, outcome: str) -> None:
        data = {"scenario": self.name, "outcome": outcome,
                "load_average_1m": round(os.getloadavg()[0], 1), "cpus": os.cpu_count(),
                "seconds": round(time.monotonic() - self.started, 1),
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **self.figures}
        RESULTS_DIR.mkdir(exist_ok=True)
        (RESULTS_DIR / f"{self.name}.json").write_text(
            json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        _figures[self.name] = data


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_outcome_key, {})[report.when] = report
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _figures:
        return
    terminalreporter.section("streamqueue fault figures")
    for name, data in sorted(_figures.items()):
        shown = {k: v for k, v in data.items() if k not in ("scenario", "finished_at")}
        terminalreporter.write_line(f"{name}: {json.dumps(shown, sort_keys=True, default=str)}")
    terminalreporter.write_line(f"(saved in {RESULTS_DIR})")


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Iterator[Callable[[str], Report]]:
    """``report("name")`` makes the scenario's figure sheet; it is saved after the test."""
    made: list[Report] = []

    def make(name: str) -> Report:
        sheet = Report(name)
        made.append(sheet)
        return sheet

    yield make
    reports = request.node.stash.get(_outcome_key, {})
    call = reports.get("call")
    outcome = call.outcome if call is not None else "error"
    if call is not None and hasattr(call, "wasxfail"):
        outcome = "xfailed (known bug)" if call.skipped else "xpassed"
    for sheet in made:
        sheet.save(outcome)


# -- deployments ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fault_rs() -> Iterator[ReplicaSet]:
    """A single-node replica set for the scenarios that do not touch the servers themselves."""
    with ReplicaSet(nodes=1) as rs:
        yield rs


@pytest.fixture(scope="session")
def fault_client(fault_rs: ReplicaSet) -> Iterator[MongoClient[Document]]:
    client: MongoClient[Document] = MongoClient(fault_rs.uri)
    yield client
    client.close()


@pytest.fixture
def queue_name(request: pytest.FixtureRequest, fault_client: MongoClient[Document]) -> Iterator[str]:
    """A fresh queue name in ``FAULT_DB``; the queue, its error queue and records are dropped after."""
    base = request.node.name.split("[")[0].removeprefix("test_")[:24]
    name = f"{base}_{uuid.uuid4().hex[:6]}"
    yield name
    db = fault_client[FAULT_DB]
    for suffix in ("", ".failed", ".records", ".schedules"):
        db.drop_collection(name + suffix)


@pytest.fixture
def fleet_factory(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    """Fleets whose processes are all stopped when the test ends, pass or fail."""
    fleets: list[Fleet] = []

    def make(uri: str, queue: str, **options: Any) -> Fleet:
        logdir = tmp_path / f"fleet{len(fleets)}"
        logdir.mkdir()
        fleet = Fleet(logdir, uri, options.pop("db", FAULT_DB), queue,
                      records=options.pop("records", f"{queue}.records"), **options)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.close()


@dataclass(frozen=True)
class Scene:
    """A scenario on the shared single-node set: its queue, its records and its fleets."""

    rs: ReplicaSet
    client: MongoClient[Document]
    queue_name: str
    report: Callable[[str], Report]
    _fleets: Callable[..., Fleet]

    @property
    def coll(self) -> Collection[Document]:
        return self.client[FAULT_DB][self.queue_name]

    @property
    def records(self) -> Collection[Document]:
        """What the handlers in ``tests.faults.handlers`` write, one record per delivery."""
        return self.client[FAULT_DB][f"{self.queue_name}.records"]

    @property
    def failed(self) -> Collection[Document]:
        return self.client[FAULT_DB][f"{self.queue_name}.failed"]

    def fleet(self, **options: Any) -> Fleet:
        """Worker and reaper processes on this queue, stopped when the test ends."""
        return self._fleets(self.rs.uri, self.queue_name, **options)


@pytest.fixture
def scene(fault_rs: ReplicaSet, fault_client: MongoClient[Document], queue_name: str,
          fleet_factory: Callable[..., Fleet], report: Callable[[str], Report]) -> Scene:
    return Scene(fault_rs, fault_client, queue_name, report, fleet_factory)



@dataclass(frozen=True)
class AuthSet:
    """A replica set with access control on, and the accounts the auth scenario uses."""

    rs: ReplicaSet
    db: str
    password: str  # every account's; it must never show in any output

    def uri(self, user: str, password: str | None = None) -> str:
        secret = quote_plus(self.password if password is None else password)
        hosts = ",".join(self.rs.hosts)
        return f"mongodb://{user}:{secret}@{hosts}/?replicaSet=rs0&authSource=admin"


AUTH_DB = "sqauth"
# URI-special characters on purpose: the redaction must catch the escaped form too.
AUTH_PASSWORD = "Sq-s3cret/p@ss:word%42"


@pytest.fixture(scope="module")
def auth_rs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthSet]:
    """``--keyFile`` (which turns authorization on); users made via the localhost exception.

    - ``root``: root, made first through the localhost exception;
    - ``app``: ``readWrite`` on ``sqauth`` only: enough to enqueue, consume and reap;
    - ``outsider``: ``readWrite`` on another database only.
    """
    keyfile = tmp_path_factory.mktemp("auth") / "keyfile"
    keyfile.write_text(base64.b64encode(os.urandom(48)).decode())
    keyfile.chmod(0o400)  # mongod refuses a key file others can read
    with ReplicaSet(nodes=1, keyfile=keyfile) as rs:
        local: MongoClient[Document] = MongoClient(rs.direct_uri(rs.members[0]))
        with local:
            local.admin.command("createUser", "root", pwd=AUTH_PASSWORD, roles=["root"])
        auth = AuthSet(rs, AUTH_DB, AUTH_PASSWORD)
        root: MongoClient[Document] = MongoClient(auth.uri("root"))
        with root:
            root.admin.command("createUser", "app", pwd=AUTH_PASSWORD,
                               roles=[{"role": "readWrite", "db": AUTH_DB}])
            root.admin.command("createUser", "outsider", pwd=AUTH_PASSWORD,
                               roles=[{"role": "readWrite", "db": "elsewhere"}])
        yield auth


@pytest.fixture(scope="module")
def rs3() -> Iterator[ReplicaSet]:
    """A three-member replica set (elections in about 2 s) for failover scenarios.

    All members get the same priority: the launcher prefers the first, which
    would take the primary role back (a second election) as soon as a
    stepdown's freeze ends, in the middle of the next scenario.
    """
    with ReplicaSet(nodes=3) as rs:
        client: MongoClient[Document] = MongoClient(rs.uri)
        with client:
            config = client.admin.command("replSetGetConfig")["config"]
            for member in config["members"]:
                member["priority"] = 1
            config["version"] += 1
            client.admin.command("replSetReconfig", config)
        rs.wait_for_primary()
        yield rs
