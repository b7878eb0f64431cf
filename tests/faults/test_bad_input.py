"""Scenario 6: bad input through the API and the command line gets a clear error and writes nothing.

"Writes nothing" is checked on the server: the test database's collections
and their document counts are the same before and after each API call, and no
command-line case leaves any collection behind (each case uses its own queue
name, so a write is traced to its case).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import InvalidName

from streamqueue import Queue
from streamqueue.errors import InvalidJob, StorageError
from streamqueue.exitcodes import ExitCode
from streamqueue.testing import ReplicaSet
from tests.faults.common import log
from tests.faults.conftest import Report
from tests.faults.procs import run_cli

Document = dict[str, Any]

BIG = 17 * 1024 * 1024


@dataclass(frozen=True)
class ApiCase:
    kind: str
    call: Callable[[Database[Document], str], object]
    error: type[BaseException] | tuple[type[BaseException], ...]
    says: str  # a regular expression the message must match


def _put(payload: Any, **options: Any) -> Callable[[Database[Document], str], object]:
    return lambda db, name: Queue(db[name]).put(payload, **options)


def _queue(**options: Any) -> Callable[[Database[Document], str], object]:
    return lambda db, name: Queue(db[name], **options)


API_CASES = [
    ApiCase("payload is a list", _put([1, 2]), TypeError, "payload must be a mapping"),
    ApiCase("payload is a string", _put('{"a": 1}'), TypeError, "payload must be a mapping"),
    ApiCase("payload is None", _put(None), TypeError, "payload must be a mapping"),
    ApiCase("value is a set (not BSON)", _put({"s": {1, 2}}), InvalidJob, "cannot be stored as BSON"),
    ApiCase("value is an object (not BSON)", _put({"o": object()}), InvalidJob,
            "cannot be stored as BSON"),
    ApiCase("int over 64 bits", _put({"n": 2**64}), InvalidJob, "cannot be stored as BSON"),
    ApiCase("17 MB payload", _put({"blob": "x" * BIG}), InvalidJob, "the limit is"),
    ApiCase("$-prefixed key", _put({"$set": {"a": 1}}), InvalidJob, r"key '\$set'"),
    ApiCase("dotted key", _put({"a.b": 1}), InvalidJob, "key 'a.b'"),
    ApiCase("$ key nested in a list", _put({"l": [{"ok": 1}, {"$where": "1"}]}), InvalidJob,
            r"payload\.l\[1\]"),
    ApiCase("non-string key", _put({1: "one"}), InvalidJob, "non-string key"),
    ApiCase("NUL in a key", _put({"a\x00b": 1}), InvalidJob, "NUL"),
    ApiCase("priority is a string", _put({}, priority="high"), TypeError, "priority must be an int"),
    ApiCase("priority is a float", _put({}, priority=1.5), TypeError, "priority must be an int"),
    ApiCase("priority is a bool", _put({}, priority=True), TypeError, "priority must be an int"),
    ApiCase("priority over 64 bits", _put({}, priority=2**70), ValueError, "64 bits"),
    ApiCase("priority in the payload is a string", _put({"priority": "urgent"}), TypeError,
            "priority must be an int"),
    ApiCase("delay is a string", _put({}, delay="5"), TypeError, "delay must be a number"),
    ApiCase("delay is negative", _put({}, delay=-1), ValueError, "delay must be zero or more"),
    ApiCase("delay is NaN", _put({}, delay=math.nan), ValueError, "delay must be finite"),
    ApiCase("delay is infinite", _put({}, delay=math.inf), ValueError, "delay must be finite"),
    ApiCase("delay past the year 9999", _put({}, delay=1e12), ValueError, "year 9999"),
    ApiCase("lease is zero", _queue(lease=0), ValueError, "lease must be more than zero"),
    ApiCase("lease is a string", _queue(lease="30"), TypeError, "lease must be a number"),
    ApiCase("max_attempts is zero", _queue(max_attempts=0), ValueError, "at least 1"),
    ApiCase("max_attempts is a float", _queue(max_attempts=2.5), TypeError,
            "max_attempts must be an int"),
    ApiCase("one bad payload among good ones",
            lambda db, name: Queue(db[name]).put_many([{"ok": 1}, {"ok": 2}, {"bad.key": 3}]),
            InvalidJob, "bad.key"),
    ApiCase("put_many given one mapping",
            lambda db, name: Queue(db[name]).put_many({"a": 1}),  # type: ignore[dict-item]
            TypeError, "iterable of payloads"),
    ApiCase("not a collection", lambda db, name: Queue(f"{db.name}.{name}"), TypeError,  # type: ignore[arg-type]
            "must be a pymongo Collection"),
    ApiCase("queue name with $", lambda db, name: Queue(db[f"{name}$x"]), InvalidName, r"\$"),
    ApiCase("empty queue name", lambda db, name: Queue(db[""]), InvalidName, "empty"),
    ApiCase("queue name in system.*", lambda db, name: Queue(db[f"system.{name}"]).put({}),
            StorageError, "Invalid system namespace"),
]


def snapshot(db: Database[Document]) -> dict[str, int]:
    return {name: db[name].count_documents({}) for name in db.list_collection_names()}


@pytest.fixture
def bad_db(fault_client: MongoClient[Document]) -> Iterator[Database[Document]]:
    name = f"sqbad_{uuid.uuid4().hex[:6]}"
    db = fault_client[name]
    db.create_collection("sentinel")  # so the database exists and is listed
    yield db
    fault_client.drop_database(name)


@pytest.mark.timeout(120)
def test_bad_input_through_the_api_is_refused_and_writes_nothing(
    bad_db: Database[Document],
    report: Callable[[str], Report],
) -> None:
    sheet = report("bad_input_api")
    before = snapshot(bad_db)
    messages: dict[str, str] = {}
    for case in API_CASES:
        name = f"q_{uuid.uuid4().hex[:8]}"
        with pytest.raises(case.error) as caught:
            case.call(bad_db, name)
        message = str(caught.value)
        messages[case.kind] = f"{type(caught.value).__name__}: {message[:150]}"
        assert re.search(case.says, message), (case.kind, message)
        assert snapshot(bad_db) == before, f"{case.kind} wrote something"
    sheet.update({"kinds": len(API_CASES), "written": 0, "messages": messages})
    log(f"bad input (API): {len(API_CASES)} kinds refused, nothing written")
    assert len(API_CASES) >= 15


@dataclass(frozen=True)
class CliCase:
    kind: str
    args: list[str]  # "{where}" expands to --uri/--db/--queue with the case's own queue
    status: ExitCode
    says: str
    stdin: str | None = None


def _cli_cases() -> list[CliCase]:
    deep = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    return [
        CliCase("JSON syntax error", ["put", "{bad", "{where}"], ExitCode.USAGE, "not valid JSON"),
        CliCase("empty payload", ["put", "", "{where}"], ExitCode.USAGE, "not valid JSON"),
        CliCase("payload is a JSON array", ["put", "[1, 2]", "{where}"], ExitCode.USAGE,
                "must be a JSON object"),
        CliCase("payload is a JSON string", ["put", '"job"', "{where}"], ExitCode.USAGE,
                "must be a JSON object"),
        CliCase("$-prefixed key", ["put", '{"$set": 1}', "{where}"], ExitCode.USAGE,
                r"key '\$set'"),
        CliCase("dotted key", ["put", '{"a.b": 1}', "{where}"], ExitCode.USAGE, "key 'a.b'"),
        CliCase("int over 64 bits", ["put", '{"n": 99999999999999999999999}', "{where}"],
                ExitCode.USAGE, "8-byte ints"),
        CliCase("nested 100,000 deep (stdin)", ["put", "-", "{where}"], ExitCode.USAGE,
                "nested too deeply", stdin=deep),
        CliCase("17 MB payload (stdin)", ["put", "-", "{where}"], ExitCode.USAGE, "the limit is",
                stdin=json.dumps({"blob": "x" * BIG})),
        CliCase("priority not an int", ["put", "{}", "--priority", "high", "{where}"],
                ExitCode.USAGE, "--priority"),
        CliCase("negative delay", ["put", "{}", "--delay", "-1", "{where}"], ExitCode.USAGE,
                "--delay"),
        CliCase("NaN delay", ["put", "{}", "--delay", "nan", "{where}"], ExitCode.USAGE, "finite"),
        CliCase("delay past the year 9999", ["put", "{}", "--delay", "1e12", "{where}"],
                ExitCode.USAGE, "year 9999"),
        CliCase("max attempts 0", ["put", "{}", "--max-attempts", "0", "{where}"],
                ExitCode.USAGE, "--max-attempts"),
        CliCase("URI without a host", ["put", "{}", "--uri", "mongodb://", "{db+queue}"],
                ExitCode.CONFIG, "invalid MongoDB URI"),
        CliCase("URI with another scheme", ["put", "{}", "--uri", "http://localhost:27017",
                                            "{db+queue}"], ExitCode.CONFIG, "URI scheme"),
        CliCase("URI with a bad port", ["put", "{}", "--uri", "mongodb://localhost:notaport",
                                        "{db+queue}"], ExitCode.CONFIG, "invalid MongoDB URI"),
        CliCase("URI with an unknown option",
                ["put", "{}", "--uri", "mongodb://localhost/?bogusOption=1", "{db+queue}"],
                ExitCode.CONFIG, "Unknown option"),
        CliCase("URI with an unescaped password",
                ["put", "{}", "--uri", "mongodb://user:pa:ss@word@localhost", "{db+queue}"],
                ExitCode.CONFIG, "must be escaped"),
        CliCase("queue name with $", ["put", "{}", "{uri+db}", "--queue", "a$b"],
                ExitCode.USAGE, "must not contain"),
        CliCase("empty queue name", ["put", "{}", "{uri+db}", "--queue", ""], ExitCode.USAGE,
                "no queue name"),
        CliCase("database name with /", ["put", "{}", "{uri}", "--db", "a/b", "--queue", "q"],
                ExitCode.USAGE, "cannot contain"),
        CliCase("bad job id", ["failed", "retry", "xyz", "{where}"], ExitCode.USAGE,
                "not a job id"),
        CliCase("unknown queue: failed retry",
                ["failed", "retry", "6b08aa724076a732d7a4ea15", "{where}"], ExitCode.NOT_FOUND,
                "no job"),
        CliCase("unknown queue: failed purge",
                ["failed", "purge", "6b08aa724076a732d7a4ea15", "{where}"], ExitCode.NOT_FOUND,
                "no job"),
    ]


CLI_CASES = _cli_cases()


def _expand(case: CliCase, uri: str, db: str, queue: str) -> list[str]:
    parts = {"{where}": ["--uri", uri, "--db", db, "--queue", queue],
             "{db+queue}": ["--db", db, "--queue", queue],
             "{uri+db}": ["--uri", uri, "--db", db],
             "{uri}": ["--uri", uri]}
    return [item for arg in case.args for item in parts.get(arg, [arg])]


@pytest.mark.timeout(180)
def test_bad_input_through_the_command_line_is_refused_and_writes_nothing(
    fault_rs: ReplicaSet,
    bad_db: Database[Document],
    report: Callable[[str], Report],
) -> None:
    sheet = report("bad_input_cli")
    before = snapshot(bad_db)
    queues = {case.kind: f"q_{uuid.uuid4().hex[:8]}" for case in CLI_CASES}

    def run(case: CliCase) -> tuple[CliCase, int, str, str]:
        args = _expand(case, fault_rs.uri, bad_db.name, queues[case.kind])
        done = run_cli(*args, stdin=case.stdin, timeout=120)
        return case, done.returncode, done.stdout, done.stderr

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, CLI_CASES))
    messages: dict[str, str] = {}
    failures: list[str] = []
    for case, status, stdout, stderr in results:
        lines = stderr.strip().splitlines()
        messages[case.kind] = f"[{status}] {lines[-1][:150] if lines else ''}"
        ok = (status == case.status and len(lines) == 1 and "Traceback" not in stderr
              and not stdout.strip() and re.search(case.says, lines[0]) is not None)
        if not ok:
            failures.append(f"{case.kind}: status {status}, expected {int(case.status)}; "
                            f"stdout {stdout[:200]!r}; stderr {stderr[:400]!r}")
    after = snapshot(bad_db)
    written = {name: count for name, count in after.items() if before.get(name) != count}
    traced = {kind for kind, queue in queues.items() if any(n.startswith(queue) for n in written)}
    sheet.update({"kinds": len(CLI_CASES), "refused_clearly": len(CLI_CASES) - len(failures),
                  "wrote_something": sorted(traced), "messages": messages})
    log(f"bad input (CLI): {len(CLI_CASES)} kinds; unclear: {len(failures)}; wrote: {traced}")
    assert not failures, "\n".join(failures)
    assert not written, f"collections written by bad input: {written} (cases: {traced})"
    assert len(CLI_CASES) >= 15
