"""The command line without a database: arguments, environment variables, errors, redaction."""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from bson import ObjectId

from streamqueue import cli, exitcodes
from streamqueue.errors import (
    ConfigurationError,
    InvalidJob,
    PermissionDenied,
    QueueUnavailable,
    StorageError,
)
from streamqueue.exitcodes import ExitCode
from streamqueue.handlers import HandlerNotFound, load_handler
from streamqueue.uri import redact_text, redact_uri

URI = "mongodb://127.0.0.1:27017/?replicaSet=rs0"
BASE = ["--uri", URI, "--db", "app", "--queue", "jobs"]


def parse(*argv: str, env: dict[str, str] | None = None) -> argparse.Namespace:
    return cli.parse_args(list(argv), env or {})


# -- worker --------------------------------------------------------------------------------------


def test_worker_defaults() -> None:
    args = parse("worker", "pkg.mod:fn", *BASE)
    assert args.command == "worker"
    assert args.handler == "pkg.mod:fn"
    assert (args.uri, args.db, args.queue) == (URI, "app", ["jobs"])
    assert args.concurrency == 4
    assert args.lease == 300.0
    assert not hasattr(args, "max_attempts")  # each job keeps the one it was enqueued with
    assert args.heartbeat is None
    assert args.shutdown_grace == 30.0
    assert args.batch is None
    assert args.claims_in_flight == 1
    assert args.backoff == 1.0 and args.backoff_cap == 300.0
    assert args.metrics_port is None
    assert args.metrics_addr == "0.0.0.0"
    assert args.burst is False
    assert args.fleet is False
    assert args.log_level == "INFO"
    assert args.server_timeout == cli.DEFAULT_SERVER_TIMEOUT
    assert args.run is cli.cmd_worker


def test_worker_every_option() -> None:
    args = parse("worker", "pkg.mod:fn", *BASE, "--concurrency", "8", "--lease", "60",
                 "--heartbeat", "10", "--shutdown-grace", "0",
                 "--batch", "2", "--claims-in-flight", "2", "--backoff", "0", "--backoff-cap", "30",
                 "--metrics-port", "9100", "--metrics-addr", "127.0.0.1", "--burst",
                 "--fleet", "--consumer-id", "pod-1", "--log-level", "debug", "--server-timeout", "0.5")
    assert args.concurrency == 8 and args.lease == 60.0
    assert args.heartbeat == 10.0 and args.shutdown_grace == 0.0 and args.batch == 2
    assert args.claims_in_flight == 2
    assert args.backoff == 0.0 and args.backoff_cap == 30.0
    assert args.metrics_port == 9100 and args.metrics_addr == "127.0.0.1"
    assert args.burst is True and args.consumer_id == "pod-1"
    assert args.fleet is True
    assert args.log_level == "DEBUG" and args.server_timeout == 0.5


def test_every_option_reads_its_environment_variable() -> None:
    env = {
        "STREAMQUEUE_HANDLER": "pkg.mod:fn",
        "STREAMQUEUE_URI": URI,
        "STREAMQUEUE_DB": "app",
        "STREAMQUEUE_QUEUE": "jobs",
        "STREAMQUEUE_CONCURRENCY": "16",
        "STREAMQUEUE_LEASE": "45.5",
        "STREAMQUEUE_MAX_ATTEMPTS": "7",
        "STREAMQUEUE_HEARTBEAT": "5",
        "STREAMQUEUE_SHUTDOWN_GRACE": "12",
        "STREAMQUEUE_BATCH": "3",
        "STREAMQUEUE_BACKOFF": "2",
        "STREAMQUEUE_BACKOFF_CAP": "60",
        "STREAMQUEUE_CONSUMER_ID": "pod-7",
        "STREAMQUEUE_METRICS_PORT": "9200",
        "STREAMQUEUE_METRICS_ADDR": "::",
        "STREAMQUEUE_BURST": "yes",
        "STREAMQUEUE_LOG_LEVEL": "warning",
        "STREAMQUEUE_SERVER_TIMEOUT": "2",
    }
    args = parse("worker", env=env)
    assert args.handler == "pkg.mod:fn"
    assert (args.uri, args.db, args.queue) == (URI, "app", ["jobs"])
    assert (args.concurrency, args.lease) == (16, 45.5)
    # Shared with put, where it means something; a worker does not read it.
    assert not hasattr(args, "max_attempts")
    assert (args.heartbeat, args.shutdown_grace, args.batch) == (5.0, 12.0, 3)
    assert (args.backoff, args.backoff_cap, args.consumer_id) == (2.0, 60.0, "pod-7")
    assert (args.metrics_port, args.metrics_addr, args.burst) == (9200, "::", True)
    assert (args.log_level, args.server_timeout) == ("WARNING", 2.0)


def test_reaper_environment() -> None:
    env = {"STREAMQUEUE_URI": URI, "STREAMQUEUE_DB": "app", "STREAMQUEUE_QUEUE": "a, b ,c",
           "STREAMQUEUE_INTERVAL": "0.5", "STREAMQUEUE_ONCE": "1",
           "STREAMQUEUE_METRICS_PORT": "0"}
    args = parse("reaper", env=env)
    assert args.queue == ["a", "b", "c"]
    assert args.interval == 0.5 and args.once is True and args.metrics_port == 0


def test_command_line_wins_over_environment() -> None:
    env = {"STREAMQUEUE_URI": "mongodb://env-host/", "STREAMQUEUE_QUEUE": "from_env",
           "STREAMQUEUE_CONCURRENCY": "99", "STREAMQUEUE_BURST": "0"}
    args = parse("worker", "pkg.mod:fn", "--uri", URI, "--db", "app", "--queue", "from_cli",
                 "--concurrency", "2", "--burst", env=env)
    assert args.uri == URI and args.queue == ["from_cli"] and args.concurrency == 2
    assert args.burst is True


def test_empty_environment_variable_means_unset() -> None:
    args = parse("worker", "pkg.mod:fn", *BASE, env={"STREAMQUEUE_CONCURRENCY": "  "})
    assert args.concurrency == 4


def test_queues_repeat_comma_separate_and_deduplicate() -> None:
    args = parse("reaper", "--uri", URI, "--db", "app", "--queue", "a,b", "--queue", "c",
                 "--queue", "a")
    assert args.queue == ["a", "b", "c"]
    assert args.interval == 5.0 and args.once is False


# -- usage errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        (["worker", *BASE], {}, "MODULE:FUNCTION is required (or set STREAMQUEUE_HANDLER)"),
        (["worker", "m:f", "--db", "app", "--queue", "q"], {},
         "--uri is required (or set STREAMQUEUE_URI)"),
        (["stats", "--uri", URI, "--db", "app"], {}, "--queue is required"),
        (["worker", "m:f", *BASE, "--concurrency", "0"], {}, "positive integer"),
        (["worker", "m:f", *BASE, "--concurrency", "four"], {}, "not an integer: 'four'"),
        (["worker", "m:f", *BASE, "--lease", "0"], {}, "more than zero seconds"),
        (["worker", "m:f", *BASE, "--lease", "nan"], {}, "finite"),
        (["worker", "m:f", *BASE, "--shutdown-grace", "-1"], {}, "zero or more"),
        (["worker", "m:f", *BASE, "--metrics-port", "70000"], {}, "0..65535"),
        (["worker", "m:f", *BASE, "--log-level", "loud"], {}, "must be one of"),
        (["worker", "m:f", *BASE], {"STREAMQUEUE_CONCURRENCY": "-3"},
         "invalid STREAMQUEUE_CONCURRENCY='-3'"),
        (["worker", "m:f", *BASE], {"STREAMQUEUE_BURST": "maybe"},
         "invalid STREAMQUEUE_BURST='maybe'"),
        (["worker", "m:f", "--uri", URI, "--db", "d", "--queue", "a,b"], {},
         "worker takes one queue, not 2 (a, b)"),
        (["put", "{}", "--uri", URI, "--db", "d", "--queue", "a", "--queue", "b"], {},
         "put takes one queue"),
        (["reaper", "--uri", URI, "--db", "d", "--queue", "a,,b"], {}, "empty queue name"),
        (["failed", "purge", *BASE], {}, "name a JOB_ID, or pass --all"),
        (["failed", "purge", *BASE, "--all", str(ObjectId())], {}, "not both"),
        (["failed", "retry", *BASE, "not-an-id"], {}, "not a job id"),
        (["failed"], {}, "required"),
        (["devserver", "--dbpath", "/tmp/x"], {}, "--dbpath needs --port"),
        (["devserver", "--port", "65535", "--nodes", "3"], {}, "no room for 3 members"),
        (["launch"], {}, "invalid choice: 'launch'"),
        ([], {}, "required"),
        (["worker", "m:f", *BASE, "--bogus"], {}, "unrecognized arguments: --bogus"),
        # A consumer cannot change a job's attempts: they were set when it was enqueued.
        (["worker", "m:f", *BASE, "--max-attempts", "5"], {},
         "unrecognized arguments: --max-attempts 5"),
        (["worker", "m:f", *BASE, "--lease", "3", "--heartbeat", "10"], {},
         "--heartbeat 10 with --lease 3: heartbeat (10s) must be shorter than the lease"),
        (["worker", "m:f", *BASE, "--lease", "3", "--heartbeat", "2"], {},
         "at most half the lease"),
        (["worker", "m:f", *BASE, "--heartbeat", "200"], {}, "at most half the lease (300s)"),
        (["worker", "m:f", *BASE], {"STREAMQUEUE_LEASE": "3", "STREAMQUEUE_HEARTBEAT": "10"},
         "shorter than the lease"),
        (["worker", "m:f", *BASE, "--heartbeat", "10"], {"STREAMQUEUE_LEASE": "12"},
         "at most half the lease (12s)"),
    ],
)
def test_bad_arguments_raise_usage_errors(argv: list[str], env: dict[str, str],
                                          fragment: str) -> None:
    with pytest.raises(cli.UsageError) as caught:
        cli.parse_args(argv, env)
    assert fragment in str(caught.value)


def test_main_reports_usage_errors_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["worker", "m:f", *BASE, "--concurrency", "zero"], environ={})
    assert code == ExitCode.USAGE
    assert int(code) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("streamqueue worker: error: argument --concurrency")
    assert "Traceback" not in captured.err


@pytest.mark.parametrize(("argv", "command"), [
    (["put", "{}", *BASE, "--bogus"], "put"),
    (["worker", "m:f", *BASE, "--bogus", "x"], "worker"),
    (["stats", *BASE, "--bogus"], "stats"),
    (["failed", "retry", *BASE, "--bogus"], "failed retry"),
    (["put", "{}", *BASE, "--priority", "x"], "put"),
])
def test_usage_errors_point_at_the_subcommands_help(
    argv: list[str], command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv, environ={}) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"streamqueue {command}: error: "), err
    assert err.rstrip().endswith(f"(see 'streamqueue {command} --help')"), err


def test_unknown_top_level_options_point_at_the_top_help(
    capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--bogus", "stats", *BASE], environ={}) == ExitCode.USAGE
    assert "(see 'streamqueue --help')" in capsys.readouterr().err


def test_main_refuses_a_heartbeat_longer_than_the_lease(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["worker", "m:f", *BASE, "--lease", "3", "--heartbeat", "10"], environ={})
    assert code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err.startswith("streamqueue worker: error: --heartbeat 10 with --lease 3")
    assert len(err.splitlines()) == 1


def test_main_names_the_failed_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["failed", "purge", *BASE], environ={}) == ExitCode.USAGE
    assert capsys.readouterr().err.startswith("streamqueue failed purge: error: ")


def test_invalid_secret_environment_value_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"STREAMQUEUE_URI": "mongodb://app:hunter2hunter2@db1/", "STREAMQUEUE_DB": "app",
           "STREAMQUEUE_QUEUE": "q", "STREAMQUEUE_CONCURRENCY": "x"}
    assert cli.main(["worker", "m:f"], environ=env) == ExitCode.USAGE
    assert "hunter2hunter2" not in capsys.readouterr().err


def test_usage_errors_that_echo_a_uri_redact_it(capsys: pytest.CaptureFixture[str]) -> None:
    # argparse quotes the bad word; here that is a URI with a password.
    assert cli.main(["failed", "mongodb://app:hunter2hunter2@db1/"], environ={}) == 2
    err = capsys.readouterr().err
    assert "hunter2hunter2" not in err and "mongodb://app:***@db1/" in err


@pytest.mark.parametrize("argv", [["--help"], ["worker", "--help"], ["reaper", "--help"],
                                  ["devserver", "--help"], ["put", "--help"],
                                  ["stats", "--help"], ["failed", "list", "--help"]])
def test_help_shows_examples_and_environment(argv: list[str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv, environ={}) == ExitCode.OK
    out = capsys.readouterr().out
    assert "examples:" in out
    if argv != ["--help"]:
        assert "STREAMQUEUE_" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"], environ={}) == ExitCode.OK
    assert capsys.readouterr().out.startswith("streamqueue ")


# -- errors before any network traffic -----------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("mongodb://app:hunter2hunter2@db1:99999/", "Port must be an integer"),
        ("mongodb://app:hunter2@hunter2@db1/", "must be escaped"),
        ("http://app:hunter2hunter2@db1/", "Invalid URI scheme"),
        ("mongodb://app:hunter2hunter2@db1/?maxPoolSize=-1", "maxpoolsize"),
        ("mongodb://app:hunter2hunter2@db1/?replicaSett=rs0", "Unknown option"),
    ],
)
def test_malformed_uri_is_a_config_error_without_password(
    uri: str, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["stats", "--uri", uri, "--db", "app", "--queue", "q"], environ={})
    assert code == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert "invalid MongoDB URI" in err and fragment in err
    assert "hunter2" not in err
    assert "Traceback" not in err


def test_database_defaults_to_the_uri_path() -> None:
    args = parse("stats", "--uri", "mongodb://h/appdb?replicaSet=rs0", "--queue", "q")
    assert cli.database_name(args) == "appdb"
    args = parse("stats", "--uri", "mongodb://h/appdb", "--db", "other", "--queue", "q")
    assert cli.database_name(args) == "other"
    args = parse("stats", "--uri", "mongodb://h/", "--queue", "q")
    with pytest.raises(cli.UsageError, match="--db is required"):
        cli.database_name(args)


@pytest.mark.parametrize("payload", ['{"a": 1', "{'a': 1}", "", "[1, 2]", "3", '"text"', "null"])
def test_bad_payloads_are_refused_before_connecting(
    payload: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The URI points at nothing: a payload error must be found first.
    code = cli.main(["put", payload, "--uri", "mongodb://127.0.0.1:1/", "--db", "d",
                     "--queue", "q", "--server-timeout", "0.2"], environ={})
    assert code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert "JSON" in err


@pytest.mark.parametrize(("payload", "fragment"), [
    ('{"n": NaN}', "NaN is not a JSON number"),
    ('{"n": Infinity}', "Infinity is not a JSON number"),
    ('{"n": [-Infinity]}', "-Infinity is not a JSON number"),
    ('{"n": 1e400}', "1e400 is out of range"),
    ('{"deep": {"n": -1E+999}}', "-1E+999 is out of range"),
])
def test_non_finite_numbers_are_refused_before_connecting(
    payload: str, fragment: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    where = ["--uri", "mongodb://127.0.0.1:1/", "--db", "d", "--queue", "q",
             "--server-timeout", "0.2"]
    for argv, stdin in ((["put", payload, *where], ""), (["put", "-", *where], payload)):
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        assert cli.main(argv, environ={}) == ExitCode.USAGE
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1, err
        assert "not valid JSON" in err and fragment in err, err


def test_finite_floats_in_payloads_are_kept() -> None:
    from streamqueue.cli.admin import _read_payload

    assert _read_payload('{"a": 1.5e300, "b": -0.0, "c": 1e-400}') == {
        "a": 1.5e300, "b": -0.0, "c": 0.0}


def test_unknown_handler_is_a_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["worker", "no_such_pkg_xyz.tasks:run", "--uri", "mongodb://127.0.0.1:1/",
                     "--db", "d", "--queue", "q"], environ={})
    assert code == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert err.startswith("streamqueue worker: error: handler module 'no_such_pkg_xyz.tasks'")
    assert len(err.splitlines()) == 1


# -- redact_uri ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("mongodb://app:s3cret@db1,db2/?replicaSet=rs0",
         "mongodb://app:***@db1,db2/?replicaSet=rs0"),
        ("mongodb+srv://app:s3cret@cluster0.example.net/app",
         "mongodb+srv://app:***@cluster0.example.net/app"),
        ("mongodb://db1:27017/?replicaSet=rs0", "mongodb://db1:27017/?replicaSet=rs0"),
        ("mongodb://app@db1/?authMechanism=MONGODB-X509", "mongodb://app@db1/?authMechanism=MONGODB-X509"),
        ("mongodb://app:p%40ss@db1/", "mongodb://app:***@db1/"),
        # Malformed: raw "@" and "/" in the password; hide all of it.
        ("mongodb://app:p@ss/w?rd@db1/x", "mongodb://app:***@db1/x"),
        ("mongodb://app:@db1/", "mongodb://app:***@db1/"),
        ("mongodb://app:pw@db1/?tlsCertificateKeyFilePassword=keypw&tls=true",
         "mongodb://app:***@db1/?tlsCertificateKeyFilePassword=***&tls=true"),
        ("mongodb://db1/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:tok",
         "mongodb://db1/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:***"),
        ("app:s3cret@db1", "app:***@db1"),
        ("", ""),
        ("not a uri", "not a uri"),
    ],
)
def test_redact_uri(uri: str, expected: str) -> None:
    assert redact_uri(uri) == expected


def test_redact_uri_hides_too_much_rather_than_too_little() -> None:
    # An "@" in the options makes the hosts look like user info: hidden, never leaked.
    shown = redact_uri("mongodb://u:pw@h/?appname=a@b")
    assert "pw" not in shown.replace("appname", "")


def test_redact_text_finds_uris_and_bare_passwords() -> None:
    uri = "mongodb://app:correct-horse@db1/"
    text = f"failed to connect to {uri} (password correct-horse rejected)"
    redacted = redact_text(text, uri)
    assert "correct-horse" not in redacted
    assert "mongodb://app:***@db1/" in redacted
    assert redact_text("no uri here") == "no uri here"


def test_log_formatter_redacts_and_keeps_one_line_per_record() -> None:
    import io
    import logging

    stream = io.StringIO()
    formatter = cli.RedactingFormatter("mongodb://u:topsecret@h/")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("streamqueue.test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("connecting to %s", "mongodb://u:topsecret@h/")
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue()
    assert "topsecret" not in line
    assert line.count("\n") == 1
    assert " WARNING streamqueue.test.redaction: connecting to mongodb://u:***@h/" in line
    assert line[:4].isdigit() and "Z " in line  # UTC ISO timestamp first


def test_one_line_trims_topology_descriptions() -> None:
    exc = QueueUnavailable("count: MongoDB unreachable: h:1: refused, Timeout: 5.0s, "
                           "Topology Description: <TopologyDescription ...>\nmore")
    assert cli._one_line(exc) == "count: MongoDB unreachable: h:1: refused"


# -- load_handler ------------------------------------------------------------------------------------


@pytest.fixture
def handler_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [n for n in sys.modules if n.startswith("sq_handler_")]:
        del sys.modules[name]


def test_load_handler_finds_functions_and_attributes(handler_dir: Path) -> None:
    (handler_dir / "sq_handler_ok.py").write_text(
        "def run(payload):\n    return payload\n\n"
        "class Tasks:\n    @staticmethod\n    def send(payload):\n        return 'sent'\n"
    )
    assert load_handler("sq_handler_ok:run")({"a": 1}) == {"a": 1}
    assert load_handler("sq_handler_ok:Tasks.send")({}) == "sent"
    assert load_handler("json:loads") is __import__("json").loads


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("no_colon", "is not of the form package.module:function"),
        ("pkg.mod.func", "did you mean pkg.mod:func?"),
        ("pkg.mod:", "is not of the form"),
        (":func", "is not of the form"),
        ("pkg-x.mod:func", "is not of the form"),
        ("sq_handler_missing_xyz:func", "handler module 'sq_handler_missing_xyz' not found"),
        ("json:no_such_function", "has no attribute 'no_such_function'"),
        ("json.decoder:JSONDecoder.nope", "has no attribute 'JSONDecoder.nope'"),
        ("sys:maxsize", "is a int, not a callable"),
    ],
)
def test_load_handler_errors(spec: str, fragment: str) -> None:
    with pytest.raises(HandlerNotFound) as caught:
        load_handler(spec)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, ConfigurationError)


def test_load_handler_reports_errors_inside_the_module(handler_dir: Path) -> None:
    (handler_dir / "sq_handler_broken.py").write_text("def run(:\n")
    (handler_dir / "sq_handler_raises.py").write_text("raise RuntimeError('no config')\n")
    (handler_dir / "sq_handler_imports.py").write_text("import sq_dependency_missing_xyz\n")
    with pytest.raises(HandlerNotFound, match="importing handler module 'sq_handler_broken' "
                                               "failed: SyntaxError"):
        load_handler("sq_handler_broken:run")
    with pytest.raises(HandlerNotFound, match="failed: RuntimeError: no config"):
        load_handler("sq_handler_raises:run")
    # A missing dependency of the handler is not reported as a missing handler.
    with pytest.raises(HandlerNotFound, match=r"failed: ModuleNotFoundError: .*sq_dependency"):
        load_handler("sq_handler_imports:run")


# -- exit codes ------------------------------------------------------------------------------------


def test_exit_codes_are_named_and_distinct() -> None:
    assert [int(code) for code in ExitCode] == [0, 1, 2, 3, 4, 5, 6, 7, 130]
    assert exitcodes.USAGE is ExitCode.USAGE
    assert int(exitcodes.USAGE) == 2
    assert exitcodes.INTERRUPTED == 130


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (QueueUnavailable("x"), ExitCode.UNAVAILABLE),
        (PermissionDenied("x"), ExitCode.PERMISSION),
        (ConfigurationError("x"), ExitCode.CONFIG),
        (HandlerNotFound("x"), ExitCode.CONFIG),
        (InvalidJob("x"), ExitCode.USAGE),
        (StorageError("x"), ExitCode.ERROR),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED),
        (RuntimeError("x"), ExitCode.ERROR),
    ],
)
def test_exit_code_for_errors(error: BaseException, code: ExitCode) -> None:
    assert exitcodes.for_error(error) is code


def test_worker_help_states_the_waits_the_worker_uses(
        capsys: pytest.CaptureFixture[str]) -> None:
    from streamqueue.worker import BURST_RETRY_WAIT, EXIT_MARGIN

    assert cli.main(["worker", "--help"], environ={}) == ExitCode.OK
    text = " ".join(capsys.readouterr().out.split())
    assert f"within {BURST_RETRY_WAIT:g} s are waited for" in text
    assert f"exits at most {EXIT_MARGIN:g} s after the grace" in text


def test_cancel_pause_and_resume_parse() -> None:
    job_id = ObjectId()
    args = cli.parse_args(["cancel", *BASE, str(job_id), "--json"], {})
    assert (args.command, args.job_id, args.json) == ("cancel", job_id, True)
    for verb in ("pause", "resume"):
        args = cli.parse_args([verb, *BASE], {})
        assert args.command == verb and args.json is False


@pytest.mark.parametrize(("argv", "fragment"), [
    (["cancel", *BASE], "required"),
    (["cancel", *BASE, "nope"], "not a job id"),
    (["pause", *BASE, "extra"], "unrecognized arguments"),
])
def test_cancel_and_pause_refuse_bad_arguments(argv: list[str], fragment: str) -> None:
    with pytest.raises(cli.UsageError) as caught:
        cli.parse_args(argv, {})
    assert fragment in str(caught.value)


def test_cancel_usage_errors_name_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["cancel", *BASE, "nope"], environ={}) == ExitCode.USAGE
    assert capsys.readouterr().err.startswith("streamqueue cancel: error: ")


def test_result_parses_a_job_id_and_an_optional_timeout() -> None:
    job_id = ObjectId()
    args = cli.parse_args(["result", *BASE, str(job_id)], {})
    assert (args.command, args.job_id, args.timeout) == ("result", job_id, None)
    assert cli.parse_args(["result", *BASE, str(job_id), "--timeout", "0"], {}).timeout == 0.0


@pytest.mark.parametrize(("argv", "fragment"), [
    (["result", *BASE], "required"),
    (["result", *BASE, str(ObjectId()), "--timeout", "-1"], "zero or more seconds"),
    (["result", *BASE, str(ObjectId()), "--timeout", "soon"], "not a number of seconds"),
])
def test_result_refuses_bad_arguments(argv: list[str], fragment: str) -> None:
    with pytest.raises(cli.UsageError) as caught:
        cli.parse_args(argv, {})
    assert fragment in str(caught.value)
