"""Real worker and reaper processes for the fault tests: started, killed and reaped by the test.

Workers and reapers are the real command-line entry points
(``python -m streamqueue.worker`` / ``python -m streamqueue.reaper``), each in
its own session with its output in a log file, so a test can SIGKILL one at any
moment and later read everything it printed.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from streamqueue.children import spawn
from tests.faults import handlers

REPO_ROOT = Path(__file__).resolve().parents[2]
RECORD_HANDLER = "tests.faults.handlers:record"
# Logged by Worker.run() once its change stream is open and its threads run.
READY_LINE = " consuming "
# The CLI reads every option from STREAMQUEUE_* variables: none may leak in.
_CLI_ENV = re.compile(r"^STREAMQUEUE_")


@dataclass
class Proc:
    """One child process and the file holding everything it printed."""

    role: str
    args: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    killed: bool = False
    ready_at: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def ready(self) -> bool:
        """A worker is ready once it logged that it is consuming (stream open, threads up)."""
        if self.ready_at is None and READY_LINE in self.output():
            self.ready_at = time.monotonic()
        return self.ready_at is not None

    def wait_for_output(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if not self.alive():
                return text in self.output()
            time.sleep(0.05)
        return text in self.output()


class Fleet:
    """The processes of one scenario; ``close()`` (or leaving the ``with``) stops them all."""

    def __init__(
        self,
        logdir: Path,
        uri: str,
        db: str,
        queue: str,
        *,
        records: str = "records",
        record_uri: str | None = None,
        record_w: str = "majority",
    ) -> None:
        self.logdir = logdir
        self.uri = uri
        self.db = db
        self.queue = queue
        self.procs: list[Proc] = []
        self.killed_pids: set[int] = set()
        self._count = 0
        self._replaced: set[int] = set()
        self.env = cli_env(**{
            handlers.ENV_URI: record_uri or uri,
            handlers.ENV_DB: db,
            handlers.ENV_RECORDS: records,
            handlers.ENV_W: record_w,
        })

    # -- starting -------------------------------------------------------------------------

    def spawn(self, role: str, args: Sequence[str], *, prefix: Sequence[str] = (),
              env: dict[str, str] | None = None) -> Proc:
        self._count += 1
        log_path = self.logdir / f"{self._count:03d}-{role}.log"
        command = [*prefix, *args]
        with log_path.open("wb") as logfile:
            popen = spawn(
                command, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT, env={**self.env, **(env or {})}, start_new_session=True,
            )
        proc = Proc(role, command, log_path, popen)
        self.procs.append(proc)
        return proc

    def worker(
        self,
        *,
        handler: str = RECORD_HANDLER,
        concurrency: int = 4,
        lease: float = 5.0,
        heartbeat: float | None = None,
        backoff: float | None = None,
        uri: str | None = None,
        extra: Sequence[str] = (),
        prefix: Sequence[str] = (),
        env: dict[str, str] | None = None,
        python: Sequence[str] = (),
    ) -> Proc:
        args = [sys.executable, *python, "-m", "streamqueue.worker", handler,
                "--uri", uri or self.uri, "--db", self.db, "--queue", self.queue,
                "--concurrency", str(concurrency), "--lease", str(lease), "--log-level", "INFO"]
        if heartbeat is not None:
            args += ["--heartbeat", str(heartbeat)]
        if backoff is not None:
            args += ["--backoff", str(backoff)]
        return self.spawn("worker", [*args, *extra], prefix=prefix, env=env)

    def reaper(self, *, interval: float = 0.5, once: bool = False, uri: str | None = None,
               prefix: Sequence[str] = (), python: Sequence[str] = (),
               env: dict[str, str] | None = None, log_level: str = "INFO") -> Proc:
        args = [sys.executable, *python, "-m", "streamqueue.reaper", "--uri", uri or self.uri,
                "--db", self.db, "--queue", self.queue, "--interval", str(interval),
                "--log-level", log_level]
        if once:
            args.append("--once")
        return self.spawn("reaper", args, prefix=prefix, env=env)

    # -- stopping -------------------------------------------------------------------------

    def kill(self, proc: Proc) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        _signal_group(proc, signal.SIGKILL)
        proc.popen.wait(timeout=30)
        proc.killed = True
        self.killed_pids.add(proc.pid)

    def replace_dead_workers(self, start: Callable[[], Proc]) -> list[Proc]:
        """Start a new worker for each one that died by itself; return the dead.

        A worker killed by SIGKILL (a handler that kills its own process)
        counts as killed: its leases expire like those of a crashed one.
        """
        dead = [p for p in self.procs if p.role == "worker" and not p.alive()
                and not p.killed and p.pid not in self._replaced]
        for proc in dead:
            self._replaced.add(proc.pid)
            if proc.popen.returncode == -signal.SIGKILL:
                self.killed_pids.add(proc.pid)
            start()
        return dead

    def workers(self, *, alive: bool = True) -> list[Proc]:
        return [p for p in self.procs if p.role == "worker" and (p.alive() or not alive)]

    def stop(self, proc: Proc, timeout: float = 30.0) -> int:
        """SIGTERM and wait (the worker drains); SIGKILL after ``timeout``. Returns the status."""
        _signal_group(proc, signal.SIGTERM)
        try:
            return proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            return proc.popen.wait(timeout=30)

    def close(self) -> None:
        """SIGTERM every process group, give them 20 s, then SIGKILL what is left of each."""
        for proc in self.procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs:
            # A wrapper may have gone while its child lives on: the group
            # outlives both, so it is the group that gets the last word.
            _wait_group_gone(proc, deadline)
            _signal_group(proc, signal.SIGKILL)
            proc.popen.wait(timeout=30)

    def output(self) -> str:
        return "\n".join(f"===== {p.log_path.name} (pid {p.pid}) =====\n{p.output()}"
                         for p in self.procs)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _signal_group(proc: Proc, signum: int) -> None:
    # Each child leads its own session, so its process group holds it and
    # anything it started (a wrapper may run Python as a child, not by exec).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def _wait_group_gone(proc: Proc, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)


def cli_env(**extra: str) -> dict[str, str]:
    """The test's environment without STREAMQUEUE_* settings, able to import ``tests``."""
    env = {k: v for k, v in os.environ.items() if not _CLI_ENV.match(k)}
    env.update({"PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1", **extra})
    return env


def run_cli(*args: str, stdin: str | None = None, timeout: float = 60.0,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m streamqueue ARGS...`` to completion, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "streamqueue", *args], cwd=REPO_ROOT,
        env=env if env is not None else cli_env(), input=stdin, capture_output=True, text=True,
        timeout=timeout, check=False)


# Runs the module named next as __main__ with libfaketime's broken sleep worked around.
SKEW_SHIM = ("-m", "tests.faults.skewed")
