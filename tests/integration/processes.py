"""Run streamqueue's command line as real subprocesses and scrape their /metrics.

``CliProcess`` reads the child's output in background threads so a test can
wait on what it logged (with a deadline) and never blocks on a full pipe.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from prometheus_client.parser import text_string_to_metric_families

from streamqueue.children import spawn
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def child_env(**extra: str) -> dict[str, str]:
    """The test's environment without any STREAMQUEUE_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMQUEUE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(module: str, *args: str, env: dict[str, str] | None = None,
            stdin: str | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``python -m module args...`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT, env=env if env is not None else child_env(), input=stdin,
        capture_output=True, text=True, timeout=timeout, check=False,
    )


class CliProcess:
    """A long-running ``python -m module ...`` child with its output collected."""

    def __init__(self, module: str, args: Sequence[str], env: dict[str, str]) -> None:
        self.args = [sys.executable, "-m", module, *args]
        self.proc: subprocess.Popen[str] = spawn(
            self.args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self._lock = threading.Lock()
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self._stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self._stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str], into: list[str]) -> None:
        for line in stream:
            with self._lock:
                into.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stdout(self) -> str:
        with self._lock:
            return "".join(self._stdout)

    @property
    def stderr(self) -> str:
        with self._lock:
            return "".join(self._stderr)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for_log(self, text: str, timeout: float = 30.0) -> bool:
        return wait_until(lambda: text in self.stderr or not self.alive(), timeout,
                          interval=0.02) and text in self.stderr

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(5.0)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None and not any(r.is_alive() for r in self._readers):
                stream.close()
        return code

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.wait(30.0)

    def describe(self) -> str:
        return (f"{' '.join(self.args[2:])}\n--- exit {self.proc.poll()}\n--- stderr:\n"
                f"{self.stderr}\n--- stdout:\n{self.stdout}")


@contextmanager
def cli_processes() -> Iterator[list[CliProcess]]:
    """Collect started processes; kill whichever is still running at the end."""
    started: list[CliProcess] = []
    try:
        yield started
    finally:
        for process in started:
            process.kill()


def scrape(port: int) -> Samples | None:
    """Every sample on http://127.0.0.1:port/metrics; None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            body = response.read().decode()
    except OSError:
        return None
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def sample(samples: Samples | None, name: str, **labels: str) -> float | None:
    if samples is None:
        return None
    return samples.get((name, frozenset(labels.items())))
