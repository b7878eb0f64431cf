"""A launcher killed outright leaves nothing running: its children die with it (Linux).

SIGKILL runs no ``finally`` and no signal handler, so only the kernel can stop
what the devserver or the demo started: ``streamqueue.children.spawn`` asks it
to (``PR_SET_PDEATHSIG``). Each test finds the launcher's whole process tree in
/proc, kills the launcher alone, and waits (with a deadline) for every process
of that tree to be gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamqueue.children import dies_with_parent, spawn
from tests.helpers import mongod_available, stays_false, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]


pytestmark = [
    pytest.mark.skipif(not dies_with_parent(), reason="PR_SET_PDEATHSIG is Linux only"),
    pytest.mark.skipif(not mongod_available(), reason="no mongod found"),
    pytest.mark.timeout(180),
]

#: A process, told apart from a later one that reuses its pid by its start time.
Identity = tuple[int, str]


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    return text.rsplit(")", 1)[-1].split()


def _alive(process: Identity) -> bool:
    fields = _stat(process[0])
    return fields is not None and fields[0] != "Z" and fields[19] == process[1]


def descendants(root: int) -> dict[Identity, str]:
    """Every live process below ``root``, with its command line."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is None or fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        starts[int(entry.name)] = fields[19]
    found: dict[Identity, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        found[(pid, starts[pid])] = cmdline
        todo += children.get(pid, [])
    return found


class Launcher:
    """A launcher as a subprocess of the test, with its output read line by line."""

    def __init__(self, *args: str) -> None:
        self.process: subprocess.Popen[bytes] = spawn(
            [sys.executable, *args], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.output = ""
        self.tree: dict[Identity, str] = {}

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while True:
                match = re.search(pattern, self.output)
                if match:
                    return match
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no {pattern!r} within {timeout}s:\n{self.output}"
                if selector.select(remaining):
                    chunk = os.read(self.process.stdout.fileno(), 65536)
                    assert chunk, f"exited ({self.process.poll()}) before {pattern!r}:\n{self.output}"
                    self.output += chunk.decode(errors="replace")

    def kill_alone(self) -> dict[Identity, str]:
        """SIGKILL the launcher (not its group); return the tree it had just before."""
        self.tree = descendants(self.process.pid)
        self.process.kill()
        self.process.wait(timeout=30)
        return self.tree

    def clean_up(self) -> None:
        """For a failed test: kill what is left of the tree, by pid."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        for process in self.tree:
            if _alive(process):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process[0], signal.SIGKILL)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def launchers() -> Iterator[list[Launcher]]:
    started: list[Launcher] = []
    yield started
    for launcher in started:
        launcher.clean_up()


def assert_all_gone(tree: dict[Identity, str], output: str) -> None:
    def left() -> list[str]:
        return [cmd for process, cmd in tree.items() if _alive(process)]

    assert wait_until(lambda: not left(), timeout=30, interval=0.1), (
        f"still running after their launcher was SIGKILLed: {left()}\n{output}")


def _data_dirs(tree: dict[Identity, str]) -> set[Path]:
    # SIGKILL leaves the launcher's temporary directories behind: the test removes them.
    dirs = set()
    for cmd in tree.values():
        match = re.search(r"--dbpath (\S+)", cmd)
        if match and "streamqueue-" in match.group(1):
            dirs.add(Path(match.group(1)).parent)
    return dirs


def test_a_killed_devserver_leaves_no_mongod(launchers: list[Launcher]) -> None:
    devserver = Launcher("-m", "streamqueue", "devserver", "--nodes", "2")
    launchers.append(devserver)
    devserver.wait_for(r"mongodb://\S+replicaSet=rs0", timeout=90)
    tree = devserver.kill_alone()
    mongods = [cmd for cmd in tree.values() if "mongod" in cmd.split(" ", 1)[0]]
    assert len(mongods) == 2, tree
    try:
        assert_all_gone(tree, devserver.output)
    finally:
        for directory in _data_dirs(tree):
            shutil.rmtree(directory, ignore_errors=True)


def test_a_killed_demo_leaves_no_mongod_worker_or_reaper(launchers: list[Launcher]) -> None:
    demo = Launcher("-m", "streamqueue.demo", "--plain", "--nodes", "1", "--jobs", "100000",
                    "--rate", "50", "--kill-at", "0")
    launchers.append(demo)
    run_dir = demo.wait_for(r"run directory (\S+)", timeout=60).group(1)
    try:
        demo.wait_for(r"worker-2 up: pid \d+", timeout=90)
        demo.wait_for(r"reaper up: pid \d+", timeout=30)
        tree = demo.kill_alone()
        commands = list(tree.values())
        assert sum("mongod" in cmd.split(" ", 1)[0] for cmd in commands) == 1, commands
        assert sum(" worker " in cmd for cmd in commands) == 2, commands
        assert sum(" reaper " in cmd for cmd in commands) == 1, commands
        assert_all_gone(tree, demo.output)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


PARENT = """
import sys, threading
from streamqueue.children import spawn
box = []
thread = threading.Thread(target=lambda: box.append(spawn(["sleep", "300"])))
thread.start()
thread.join()
print(box[0].pid, flush=True)
sys.stdin.read()  # until the test kills this process
"""


def test_a_child_spawned_from_a_thread_outlives_the_thread_but_not_the_process() -> None:
    # PR_SET_PDEATHSIG fires when the forking *thread* exits: spawn forks from a
    # thread that lives as long as the process, so a short-lived caller is safe.
    parent: subprocess.Popen[str] = subprocess.Popen(
        [sys.executable, "-c", PARENT], cwd=REPO_ROOT, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    child: Identity | None = None
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        fields = _stat(pid)
        assert fields is not None
        child = (pid, fields[19])
        assert stays_false(lambda: not _alive(child), 1.0), "killed when its thread ended"
        parent.kill()
        parent.wait(timeout=30)
        assert wait_until(lambda: not _alive(child), timeout=10), "outlived its parent"
    finally:
        parent.kill()
        parent.wait(timeout=30)
        for stream in (parent.stdin, parent.stdout):
            if stream is not None:
                stream.close()
        if child is not None and _alive(child):
            os.kill(child[0], signal.SIGKILL)
