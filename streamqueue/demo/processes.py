"""Child processes of the demo: workers and the reaper, each in a process group of its own.

Every child starts in a new session, so a Ctrl-C at the terminal reaches only
the demo, which then stops the children in order (workers drain, then
MongoDB stops). Stopping signals the whole group, and ``sweep`` finds anything
left over by a marker in the environment every child inherits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from streamqueue.children import spawn

#: Set to the demo's run directory in the environment of every process the demo starts.
MARKER_ENV = "STREAMQUEUE_DEMO_RUN"


@dataclass
class Child:
    """One ``python -m streamqueue ...`` process the demo runs."""

    name: str
    args: list[str]
    log_path: Path
    env: Mapping[str, str]
    metrics_port: int | None = None
    consumer_id: str | None = None
    process: subprocess.Popen[bytes] | None = None
    killed: bool = False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def metrics_url(self) -> str | None:
        if self.metrics_port is None:
            return None
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = spawn(  # dies with the demo, even a SIGKILLed one
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(self.env),
                start_new_session=True,  # its own process group; the terminal's ^C skips it
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the child's whole process group (its pid: it leads a new session)."""
        if self.process is None:
            return
        # The group id cannot be reused while any member lives, and once none
        # does this is ESRCH: safe after the leader has been reaped too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL, as a crash would; waits for the process."""
        self.killed = True
        self.signal_group(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=30)

    def stop(self, grace: float) -> None:
        """SIGTERM the group, wait up to ``grace`` seconds, then SIGKILL what is left."""
        if self.process is None:
            return
        if self.alive():
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
        self.signal_group(signal.SIGKILL)
        self.process.wait(timeout=30)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def scrape(url: str, timeout: float = 2.0) -> dict[str, float]:
    """Fetch a Prometheus text endpoint: ``{'name{label="v",...}': value}`` for every sample."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"only loopback endpoints are scraped, not {url!r}")
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback http
        text = response.read().decode("utf-8")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def answers(url: str) -> bool:
    """True once the endpoint serves a scrape."""
    try:
        scrape(url, timeout=1.0)
    except (OSError, urllib.error.URLError, ValueError):
        return False
    return True


def sweep(marker: str, exclude: int | None = None) -> list[int]:
    """SIGKILL every process whose environment carries ``MARKER_ENV=marker``; return their pids.

    A safety net: the demo stops what it started one by one, so this finds
    nothing unless something went wrong.
    """
    needle = f"{MARKER_ENV}={marker}".encode()
    killed = []
    for pid in marker_processes(needle):
        if pid in (os.getpid(), exclude):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


def marker_processes(needle: bytes) -> list[int]:
    """Live (non-zombie) processes whose initial environment contains ``needle``."""
    found: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if needle in environ.split(b"\0") and _state(stat) != "Z":
            found.append(int(entry.name))
    return found


def _state(stat: str) -> str:
    # "pid (comm) S ...": comm may contain spaces and parentheses; the state follows the last ")".
    return stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
