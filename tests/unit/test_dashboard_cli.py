"""``streamqueue dashboard``'s refusals, all decided before any connection is made."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamqueue import cli
from streamqueue.exitcodes import ExitCode


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """``main`` points the root logger at this test's stderr, which pytest closes after it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# Nothing listens here: a command that got as far as connecting would fail differently.
URI = "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=200"


def test_refuses_to_listen_beyond_loopback_without_auth_or_read_only(
        capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["dashboard", "--uri", URI, "--db", "app", "--host", "0.0.0.0"], environ={})
    assert code == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0" in err and "--auth" in err and "--read-only" in err


def test_auth_needs_a_secret_from_the_environment_or_a_file(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    monkeypatch.delenv("STREAMQUEUE_DASHBOARD_SECRET", raising=False)
    assert cli.main(["dashboard", "--uri", URI, "--db", "app", "--auth", "token"],
                    environ={}) == ExitCode.CONFIG
    assert "STREAMQUEUE_DASHBOARD_SECRET is empty or unset" in capsys.readouterr().err
    empty = tmp_path / "secret"
    empty.write_text("")
    assert cli.main(["dashboard", "--uri", URI, "--db", "app", "--auth", "basic",
                     "--auth-file", str(empty)], environ={}) == ExitCode.CONFIG
    assert cli.main(["dashboard", "--uri", URI, "--db", "app", "--auth-file", str(empty)],
                    environ={}) == ExitCode.USAGE
    assert "--auth-file needs --auth" in capsys.readouterr().err


def test_a_secret_cannot_be_given_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dashboard", "--uri", URI, "--db", "app", "--auth", "s3cret-value"],
                    environ={}) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "never from the command line" in err and "s3cret-value" not in err


def test_help_shows_examples_and_environment(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dashboard", "--help"], environ={}) == ExitCode.OK
    out = capsys.readouterr().out
    assert "examples:" in out and "STREAMQUEUE_DASHBOARD_SECRET" in out
    assert "STREAMQUEUE_DASHBOARD_HOST" in out


def test_the_core_and_the_command_line_import_without_the_dashboard_extra() -> None:
    code = ("import sys, streamqueue, streamqueue.cli, streamqueue.storage.dashboard\n"
            "loaded = {'starlette', 'jinja2', 'uvicorn'} & set(sys.modules)\n"
            "assert not loaded, loaded\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
