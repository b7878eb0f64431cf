"""A real Prometheus server scrapes a real worker and reaper while they process jobs.

The server is Debian's ``prometheus`` (``make system-deps``), on loopback with
a 1 s scrape interval, loading the alert and recording rules shipped in
``deploy/prometheus/rules``. The worker runs the sample handler
``streamqueue.demo.handlers:handle`` as a subprocess (``python -m streamqueue
worker ... --metrics-port P``), the reaper likewise. Everything is checked
through Prometheus' HTTP API, the way a dashboard or an alert would see it:
completed/failed/dead counters, the queue gauges by state, the wait histogram,
a recording rule, and the StreamqueueJobsDead alert firing.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pymongo.collection import Collection

from streamqueue import Queue
from streamqueue.children import spawn
from streamqueue.storage import Document
from streamqueue.testing import free_port
from tests.helpers import wait_until
from tests.integration.processes import CliProcess, child_env, cli_processes, scrape

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = ROOT / "deploy" / "prometheus" / "rules" / "streamqueue.rules.yml"
WORKER_JOB = "streamqueue-worker"
REAPER_JOB = "streamqueue-reaper"
HANDLER = "streamqueue.demo.handlers:handle"


def _find_prometheus() -> str | None:
    found = shutil.which("prometheus")
    if found:
        return found
    debian = Path("/usr/bin/prometheus")
    return str(debian) if debian.is_file() else None


PROMETHEUS = _find_prometheus()

pytestmark = [
    pytest.mark.skipif(PROMETHEUS is None,
                       reason="the prometheus server binary is not installed (Debian package "
                              "'prometheus'; `make system-deps` installs it as root)"),
    pytest.mark.timeout(120),
]


class PrometheusServer:
    """``prometheus`` on 127.0.0.1:<free port> with a throwaway TSDB; stopped by ``stop()``."""

    def __init__(self, binary: str, workdir: Path, targets: dict[str, int]) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms",
                       "evaluation_interval": "1s"},
            "rule_files": [str(RULES_FILE)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                for job, port in targets.items()
            ],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        with self.log_path.open("wb") as log:
            self.process = spawn(
                [binary, f"--config.file={config_path}",
                 f"--storage.tsdb.path={workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.process.returncode}:\n"
                                 f"{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return int(response.status) == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as response:
            body = json.loads(response.read().decode())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; the result vector (``[{"metric": {...}, "value": [t, "v"]}]``)."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single value of ``expr``; None when the vector is empty."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, f"{expr} returned {len(result)} series: {result}"
        return float(result[0]["value"][1])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)


@pytest.fixture
def processes() -> Iterator[list[CliProcess]]:
    with cli_processes() as started:
        yield started


def wait_for_value(prom: PrometheusServer, expr: str, expected: float,
                   timeout: float = 30.0) -> None:
    seen: list[float | None] = []

    def check() -> bool:
        value = prom.value(expr)
        seen.append(value)
        return value == expected

    assert wait_until(check, timeout=timeout, interval=0.25), (
        f"{expr}: expected {expected}, last values {seen[-5:]}")


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    assert wait_until(predicate, timeout=timeout, interval=0.25), what


def wait_for_endpoint(process: CliProcess, port: int) -> None:
    wait_for(lambda: scrape(port) is not None or not process.alive(),
             f"metrics endpoint on {port}")
    assert process.alive(), process.describe()


def test_prometheus_sees_the_worker_and_reaper_process_jobs(
    mongo_uri: str, collection: Collection[Document], tmp_path: Path,
    processes: list[CliProcess],
) -> None:
    assert PROMETHEUS is not None
    name = collection.name
    target = ["--uri", mongo_uri, "--db", collection.database.name, "--queue", name]
    worker_port, reaper_port = free_port(), free_port()
    # No simulated failures: every ordinary job must complete on its first attempt.
    env = child_env(STREAMQUEUE_DEMO_FAIL_RATE="0")
    worker = CliProcess("streamqueue", [
        "worker", HANDLER, *target, "--concurrency", "4", "--lease", "30",
        "--shutdown-grace", "5", "--metrics-port", str(worker_port), "--metrics-addr", "127.0.0.1",
    ], env)
    processes.append(worker)
    reaper = CliProcess("streamqueue", [
        "reaper", *target, "--interval", "0.5",
        "--metrics-port", str(reaper_port), "--metrics-addr", "127.0.0.1",
    ], env)
    processes.append(reaper)
    for process, port in ((worker, worker_port), (reaper, reaper_port)):
        wait_for_endpoint(process, port)

    prom = PrometheusServer(PROMETHEUS, tmp_path, {WORKER_JOB: worker_port,
                                                   REAPER_JOB: reaper_port})
    try:
        wait_for(prom.ready, f"prometheus ready:\n{prom.log_tail()}")
        q = f'queue="{name}"'
        wait_for_value(prom, f'up{{job="{WORKER_JOB}"}}', 1)
        wait_for_value(prom, f'up{{job="{REAPER_JOB}"}}', 1)
        # The worker creates its series at zero before any job arrives.
        wait_for_value(prom, f"streamqueue_jobs_completed_total{{{q}}}", 0)

        ok_jobs, poison_jobs, delayed_jobs = 40, 3, 5
        with Queue(collection, max_await=1.0) as producer:
            producer.put_many([{"n": i} for i in range(ok_jobs)])
            producer.put_many([{"n": i} for i in range(delayed_jobs)], delay=3600)
        with Queue(collection, max_attempts=1, max_await=1.0) as producer:
            producer.put_many([{"n": i, "fail": True} for i in range(poison_jobs)])

        # Counters from the worker, as Prometheus scraped them.
        wait_for_value(prom, f"streamqueue_jobs_completed_total{{{q}}}", ok_jobs)
        wait_for_value(prom, f"streamqueue_attempts_failed_total{{{q}}}", poison_jobs)
        wait_for_value(prom, f"streamqueue_jobs_failed_total{{{q}}}", poison_jobs)
        wait_for_value(prom, f'streamqueue_jobs_dead_total{{job="{WORKER_JOB}",{q}}}',
                       poison_jobs)
        wait_for_value(prom, f"streamqueue_jobs_claimed_total{{{q}}}", ok_jobs + poison_jobs)
        wait_for_value(prom, f"streamqueue_job_wait_seconds_count{{{q}}}", ok_jobs + poison_jobs)
        wait_for_value(prom, f'streamqueue_job_run_seconds_count{{outcome="completed",{q}}}',
                       ok_jobs)
        wait_for_value(prom, f"streamqueue_worker_slots{{{q}}}", 4)

        # Queue gauges from the reaper.
        gauge = f'streamqueue_queue_jobs{{job="{REAPER_JOB}",{q},state="%s"}}'
        wait_for_value(prom, gauge % "delayed", delayed_jobs)
        wait_for_value(prom, gauge % "dead", poison_jobs)
        wait_for_value(prom, gauge % "failed", poison_jobs)  # deprecated name, one release
        wait_for_value(prom, gauge % "available", 0)
        wait_for_value(prom, gauge % "locked", 0)

        # The shipped rules work on these series: a recording rule and an alert.
        wait_for(lambda: (prom.value(
            f"queue:streamqueue_jobs_completed:rate5m{{{q}}}") or 0) > 0,
            "recording rule queue:streamqueue_jobs_completed:rate5m above zero")
        p50 = prom.value(f"queue:streamqueue_job_wait_seconds:p50_rate5m{{{q}}}")
        assert p50 is not None and math.isfinite(p50) and p50 >= 0
        wait_for_value(prom, f'ALERTS{{alertname="StreamqueueJobsDead",alertstate="firing",{q}}}',
                       1)

        # With the worker gone, new jobs stay available: the reaper's gauges say so.
        worker.send(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.describe()
        available_jobs = 6
        with Queue(collection, max_await=1.0) as producer:
            producer.put_many([{"n": i} for i in range(available_jobs)])
        wait_for_value(prom, f'up{{job="{WORKER_JOB}"}}', 0)
        wait_for_value(prom, gauge % "available", available_jobs)
        wait_for(lambda: (prom.value(
            f'streamqueue_queue_oldest_available_age_seconds{{job="{REAPER_JOB}",{q}}}')
            or 0) > 0, "oldest available age above zero")
        wait_for_value(prom, gauge % "delayed", delayed_jobs)
        assert reaper.alive(), reaper.describe()
    finally:
        prom.stop()
