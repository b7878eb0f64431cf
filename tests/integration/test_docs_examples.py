"""Every Python and shell example in README.md and docs/*.md runs against the real replica set.

The docs cannot drift from the code if their examples are executed. Each fenced
block is run on its own, in a fresh temporary directory, with the test replica
set's URI in ``STREAMQUEUE_URI`` and the venv's ``bin`` first on ``PATH``:

* ```` ```python ````: the venv's Python runs it in a subprocess.
* ```` ```sh ```` / ```` ```bash ````: ``bash -euo pipefail``, so any failing line fails it.
* ```` ```console ````: its ``$ `` lines (with ``\\`` continuations) run the same way;
  the other lines are shown output and are not checked.

An HTML comment on the line(s) just before a fence changes how it is run:

* ``<!-- expect: TEXT -->``: the output (stdout and stderr) must contain TEXT.
* ``<!-- until: TEXT -->``: a long-running command (``streamqueue devserver``, a
  worker without ``--burst``): it runs until TEXT appears in its output, then gets
  Ctrl-C (SIGINT to its process group) and must exit cleanly, everything it started
  included, within ``STOP_GRACE``.
* ``<!-- not-run: REASON -->``: not run. Each one must be listed in ``NOT_RUN``
  below, so the exceptions cannot grow unnoticed.

Any other fence language must be one of ``NOT_CODE`` (config, queries, output),
so an example in a language the runner does not know fails here rather than
going unchecked. Databases a block creates are dropped after it, so blocks do
not see each other's jobs.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pymongo import MongoClient

from streamqueue.storage import Document
from tests.helpers import mongod_available

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

RUN_AS_PYTHON = frozenset({"python"})
RUN_AS_SHELL = frozenset({"sh", "bash"})
RUN_AS_CONSOLE = frozenset({"console"})
NOT_CODE = frozenset({"", "text", "yaml", "json", "promql", "toml", "ini"})

#: (file relative to the repo, reason) of every block the suite does not run.
NOT_RUN: frozenset[tuple[str, str]] = frozenset({
    ("README.md", "make test runs this very suite; make demo runs 2,000 jobs on a 3-node set "
                  "of its own (tests/integration/test_demo.py runs the demo)"),
    ("README.md", "installs into the current environment; make test does this install"),
    ("docs/OPERATIONS.md", "needs Docker, which these machines lack"),
    ("docs/DASHBOARD.md", "installs into the current environment; make test installs the extra"),
})

#: Longest any block may run (its own output explains a timeout).
BLOCK_TIMEOUT = 45.0
#: How long a Ctrl-C'd long-running block may take to exit.
STOP_GRACE = 20.0

FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
DIRECTIVE = re.compile(r"^\s*<!--\s*(?P<key>[\w-]+):\s*(?P<value>.*?)\s*-->\s*$")
KNOWN_DIRECTIVES = frozenset({"expect", "until", "not-run"})


@dataclass
class Block:
    path: str
    line: int
    lang: str
    code: str
    directives: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.path}:{self.line}:{self.lang}"

    @property
    def runnable(self) -> bool:
        return self.lang in RUN_AS_PYTHON | RUN_AS_SHELL | RUN_AS_CONSOLE


def extract_blocks(text: str, path: str) -> list[Block]:
    """Fenced blocks of a Markdown text, with the directives in the comments just above each."""
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent = len(opening["indent"])
        body: list[str] = []
        end = index + 1
        while end < len(lines) and not FENCE.match(lines[end]):
            body.append(lines[end][indent:])
            end += 1
        blocks.append(Block(path, index + 1, opening["lang"], "\n".join(body) + "\n",
                            _directives_above(lines, index)))
        index = end + 1
    return blocks


def _directives_above(lines: list[str], fence: int) -> dict[str, str]:
    found: dict[str, str] = {}
    above = fence - 1
    while above >= 0 and (match := DIRECTIVE.match(lines[above])):
        found[match["key"]] = match["value"]
        above -= 1
    return found


def console_commands(code: str) -> str:
    """The ``$ `` lines of a console block (and their ``\\`` continuations) as a script."""
    commands: list[str] = []
    continuing = False
    for line in code.splitlines():
        if continuing or line.startswith("$ "):
            commands.append(line if continuing else line[2:])
            continuing = line.rstrip().endswith("\\")
    return "\n".join(commands) + "\n"


def all_blocks() -> list[Block]:
    blocks: list[Block] = []
    for doc in DOC_FILES:
        blocks += extract_blocks(doc.read_text(encoding="utf-8"), str(doc.relative_to(ROOT)))
    return blocks


BLOCKS = all_blocks()
TO_RUN = [block for block in BLOCKS if block.runnable and "not-run" not in block.directives]


@dataclass
class Outcome:
    returncode: int | None
    output: str
    seconds: float
    timed_out: bool = False
    saw_until: bool = False


def run_block(block: Block, env: dict[str, str], cwd: Path) -> Outcome:
    """Run one block to its end (or, with ``until``, to that output and a Ctrl-C)."""
    if block.lang in RUN_AS_PYTHON:
        script = cwd / "example.py"
        script.write_text(block.code, encoding="utf-8")
        argv = [sys.executable, str(script)]
    else:
        code = console_commands(block.code) if block.lang in RUN_AS_CONSOLE else block.code
        argv = ["bash", "-euo", "pipefail", "-c", code]
    started = time.monotonic()
    # A session of its own: a timeout or Ctrl-C reaches everything the block started.
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    reader = _OutputReader(process, block.directives.get("until"))
    outcome = reader.wait(BLOCK_TIMEOUT)
    outcome.seconds = time.monotonic() - started
    return outcome


class _OutputReader:
    """Collects a process's output in a thread, so every wait on it has a deadline."""

    def __init__(self, process: subprocess.Popen[str], until: str | None) -> None:
        self.process = process
        self.until = until
        self.lines: list[str] = []
        self.seen = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if self.until is not None and self.until in line:
                self.seen.set()

    def wait(self, timeout: float) -> Outcome:
        timed_out = False
        if self.until is not None:
            if self._saw_until(timeout):
                os.killpg(self.process.pid, signal.SIGINT)
                timed_out = not self._exited(STOP_GRACE)
            else:
                timed_out = self.process.poll() is None
        else:
            timed_out = not self._exited(timeout)
        if timed_out:
            self._kill_group()
        self.thread.join(5.0)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return Outcome(None if timed_out else self.process.returncode, "".join(self.lines),
                       0.0, timed_out, self.seen.is_set())

    def _saw_until(self, timeout: float) -> bool:
        """Wait for the ``until`` text; give up early if the process ends without it."""
        deadline = time.monotonic() + timeout
        while not self.seen.wait(0.1):
            if self.process.poll() is not None:
                self.thread.join(5.0)  # its last lines may still be in the pipe
                return self.seen.is_set()
            if time.monotonic() >= deadline:
                return False
        return True

    def _exited(self, timeout: float) -> bool:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return _group_gone(self.process.pid, timeout=5.0)

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10.0)


def _group_gone(pgid: int, timeout: float) -> bool:
    """True once no process of the group is left (children the block started, e.g. mongod)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def block_env(uri: str) -> dict[str, str]:
    # The developer's own STREAMQUEUE_* settings would change what the examples do;
    # STREAMQUEUE_MONGOD only says where mongod is, for the devserver example.
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("STREAMQUEUE_") or key == "STREAMQUEUE_MONGOD"}
    env["STREAMQUEUE_URI"] = uri
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def check(block: Block, outcome: Outcome) -> list[str]:
    """What is wrong with a block's run; empty when it did what the docs say."""
    problems: list[str] = []
    until = block.directives.get("until")
    if until is not None and not outcome.saw_until:
        ended = (f"before exiting with status {outcome.returncode}" if outcome.returncode is not None
                 else f"within {BLOCK_TIMEOUT:.0f} s")
        problems.append(f"never printed {until!r} {ended}")
    elif outcome.timed_out:
        what = "did not stop after Ctrl-C" if until is not None else "did not finish"
        problems.append(f"{what} within its deadline (killed)")
    elif outcome.returncode != 0:
        problems.append(f"exited with status {outcome.returncode}")
    expected = block.directives.get("expect")
    if expected is not None and expected not in outcome.output:
        problems.append(f"output lacks {expected!r}")
    return problems


# -- the docs' own rules -------------------------------------------------------------------


def test_the_docs_have_examples_in_every_runnable_language() -> None:
    langs = {block.lang for block in TO_RUN if block.path == "README.md"}
    assert {"python", "sh"} <= langs, f"README.md examples found: {sorted(langs)}"
    assert len(TO_RUN) >= 10, [block.name for block in TO_RUN]


def test_every_fence_is_run_or_known_not_to_be_code() -> None:
    unknown = [block.name for block in BLOCKS if not block.runnable and block.lang not in NOT_CODE]
    assert not unknown, f"fence languages the runner does not know (add a runner or to NOT_CODE): {unknown}"


def test_directives_are_spelled_right_and_sit_on_runnable_blocks() -> None:
    wrong = [f"{block.name}: {key}" for block in BLOCKS for key in block.directives
             if key not in KNOWN_DIRECTIVES or not block.runnable]
    assert not wrong, wrong


def test_only_the_listed_blocks_are_not_run() -> None:
    skipped = {(block.path, block.directives["not-run"]) for block in BLOCKS
               if "not-run" in block.directives}
    assert skipped == NOT_RUN, (
        f"not-run blocks not in NOT_RUN: {sorted(skipped - NOT_RUN)}; "
        f"listed but gone: {sorted(NOT_RUN - skipped)}")


def test_the_parser_reads_directives_console_lines_and_indented_fences() -> None:
    text = (
        "Intro\n<!-- expect: hi -->\n```sh\necho hi\n```\n"
        "- item\n\n  ```python\n  print(1)\n  ```\n"
        "```console\n$ echo a \\\n  b\na b\n$ true\n```\n"
    )
    sh, python, console = extract_blocks(text, "x.md")
    assert (sh.lang, sh.code, sh.directives) == ("sh", "echo hi\n", {"expect": "hi"})
    assert (python.lang, python.code, python.directives) == ("python", "print(1)\n", {})
    assert console_commands(console.code) == "echo a \\\n  b\ntrue\n"


@pytest.mark.parametrize(("lang", "code"), [
    ("python", "raise SystemExit(3)\n"),
    ("python", "import streamqueue\nstreamqueue.no_such_name\n"),
    ("sh", "false\necho after\n"),
    ("sh", "streamqueue no-such-command\n"),
    ("console", "$ false\n$ true\n"),
])
def test_a_broken_block_fails(lang: str, code: str, tmp_path: Path) -> None:
    block = Block("x.md", 1, lang, code)
    assert check(block, run_block(block, block_env("mongodb://127.0.0.1:1/"), tmp_path))


def test_a_missing_expected_output_fails(tmp_path: Path) -> None:
    block = Block("x.md", 1, "sh", "echo something else\n", {"expect": "the promised line"})
    assert check(block, run_block(block, block_env("mongodb://127.0.0.1:1/"), tmp_path)) == [
        "output lacks 'the promised line'"]


def test_a_long_running_block_is_stopped_by_ctrl_c_once_it_printed_its_line(tmp_path: Path) -> None:
    code = ("import time\ntry:\n    print('ready', flush=True)\n    time.sleep(60)\n"
            "except KeyboardInterrupt:\n    pass\n")
    block = Block("x.md", 1, "python", code, {"until": "ready"})
    # Without the Ctrl-C it would sleep past STOP_GRACE and be reported as not stopping.
    assert check(block, run_block(block, block_env("mongodb://127.0.0.1:1/"), tmp_path)) == []


def test_a_long_running_block_that_exits_without_its_line_fails(tmp_path: Path) -> None:
    block = Block("x.md", 1, "sh", "echo something else\n", {"until": "ready"})
    assert check(block, run_block(block, block_env("mongodb://127.0.0.1:1/"), tmp_path)) == [
        "never printed 'ready' before exiting with status 0"]


# -- every example, run -------------------------------------------------------------------


@pytest.mark.parametrize("block", TO_RUN, ids=[block.name for block in TO_RUN])
def test_example_runs(block: Block, mongo_uri: str, mongo_client: MongoClient[Document],
                      tmp_path: Path) -> None:
    if "devserver" in block.code and not mongod_available():
        pytest.skip("the example starts its own mongod and none was found")
    before = set(mongo_client.list_database_names())
    try:
        outcome = run_block(block, block_env(mongo_uri), tmp_path)
    finally:
        for name in set(mongo_client.list_database_names()) - before:
            mongo_client.drop_database(name)
    problems = check(block, outcome)
    assert not problems, (
        f"{block.name} (line {block.line}): {'; '.join(problems)} after {outcome.seconds:.1f} s\n"
        f"--- code ---\n{block.code}--- output ---\n{outcome.output}")
