"""The demo's terminal output and handler knobs, without MongoDB or subprocesses."""

from __future__ import annotations

import io
import re

import pytest

from streamqueue.demo.display import Console, Snapshot, format_seconds, percentile
from streamqueue.demo.handlers import ENV_FAIL_RATE, fail_rate

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def snapshot(**changes: object) -> Snapshot:
    values: dict[str, object] = dict(
        total=2000, enqueued=900, done=600, available=250, locked=8, delayed=40, failed=2,
        rate=150.0, wait_p50=0.0021, elapsed=4.0,
        processes=[("worker-1", "killed"), ("worker-2", "up")],
    )
    values.update(changes)
    return Snapshot(**values)  # type: ignore[arg-type]


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.99) == 3.0
    values = [float(n) for n in range(100, 0, -1)]  # unsorted on purpose
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0


@pytest.mark.parametrize(("seconds", "shown"), [
    (None, "-"), (0.0004, "400 us"), (0.0021, "2.1 ms"), (0.5, "500.0 ms"), (4.2, "4.20 s"),
])
def test_format_seconds(seconds: float | None, shown: str) -> None:
    assert format_seconds(seconds) == shown


def test_plain_console_prints_a_line_per_interval_and_no_escapes() -> None:
    out = io.StringIO()
    console = Console(out, live=False, color=True, plain_interval=3600)
    console.update(snapshot())
    console.update(snapshot(done=700))  # within the interval: not printed
    console.event("something happened")
    console.update(snapshot(done=800), force=True)
    console.close()
    text = out.getvalue()
    assert not ANSI.search(text)
    lines = text.splitlines()
    assert lines[0] == ("progress 602/2000 (30%) enqueued=900 available=250 locked=8 delayed=40 "
                        "failed=2 jobs/s=150.0 p50_wait=2.1ms elapsed=4.0s")
    assert lines[1].endswith("something happened")
    assert lines[2].startswith("progress 802/2000")
    assert len(lines) == 3


def test_live_console_redraws_its_block_in_place_and_keeps_events_above() -> None:
    out = io.StringIO()
    console = Console(out, live=True, color=False)
    console.update(snapshot())
    first = out.getvalue()
    block = ANSI.sub("", first).splitlines()
    assert len(block) == 4
    assert "602/2000" in block[0]
    assert block[1].split() == ["available", "locked", "delayed", "failed", "jobs/s", "p50",
                                "wait"]
    assert block[2].split() == ["250", "8", "40", "2", "150.0", "2.1", "ms"]
    assert "worker-1 killed" in block[3]
    assert first.startswith("\x1b[?25l")  # cursor hidden while drawing

    console.event("worker-1 killed")
    after_event = out.getvalue()[len(first):]
    # Back up over the 4 block lines, clear, print the event, redraw the block below it.
    assert after_event.startswith("\x1b[4F\x1b[J")
    assert ANSI.sub("", after_event).splitlines()[0].endswith("worker-1 killed")

    console.close()
    assert out.getvalue().endswith("\x1b[?25h")  # cursor shown again


def test_live_lines_never_wrap() -> None:
    console = Console(io.StringIO(), live=True, color=False)
    many = [(f"worker-{n}", "up") for n in range(40)]
    for line in console.block_lines(snapshot(processes=many)):
        assert len(ANSI.sub("", line)) < 80


def test_fail_rate_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_FAIL_RATE, raising=False)
    assert fail_rate() == 0.05
    monkeypatch.setenv(ENV_FAIL_RATE, "0")
    assert fail_rate() == 0.0
    monkeypatch.setenv(ENV_FAIL_RATE, "1.5")
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        fail_rate()
    monkeypatch.setenv(ENV_FAIL_RATE, "often")
    with pytest.raises(ValueError, match="not a number"):
        fail_rate()
