"""Terminal output of the demo: a live block redrawn in place on a terminal, plain lines elsewhere.

Only ANSI escape sequences and the standard library: no curses, no extra
dependencies. ``Console`` keeps permanent lines (events) above the live block,
so nothing it printed scrolls away or gets overwritten.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

CSI = "\x1b["
BAR_WIDTH = 30


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of ``values`` (need not be sorted); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def format_seconds(value: float | None) -> str:
    """A duration for people: ``850 us``, ``12.3 ms``, ``4.20 s``; ``-`` for None."""
    if value is None:
        return "-"
    if value < 0.001:
        return f"{value * 1e6:.0f} us"
    if value < 1.0:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"


@dataclass
class Snapshot:
    """What the live display shows at one moment."""

    total: int
    enqueued: int
    done: int
    available: int
    locked: int
    delayed: int
    failed: int
    rate: float
    wait_p50: float | None
    elapsed: float
    processes: list[tuple[str, str]] = field(default_factory=list)

    @property
    def finished(self) -> int:
        """Jobs that left the queue for good: done or in the error queue."""
        return self.done + self.failed


def _bar(fraction: float, width: int, fill: str, empty: str) -> str:
    fraction = min(1.0, max(0.0, fraction))
    filled = round(fraction * width)
    return fill * filled + empty * (width - filled)


class Console:
    """Events as permanent lines; progress as a live block (terminal) or periodic lines."""

    def __init__(self, stream: TextIO, *, live: bool, color: bool,
                 plain_interval: float = 2.0) -> None:
        self.stream = stream
        self.live = live
        self.color = color and live
        self.plain_interval = plain_interval
        self._lock = threading.Lock()
        self._drawn = 0  # lines of the live block currently on screen
        self._last: Snapshot | None = None
        self._last_plain = -math.inf
        self._cursor_hidden = False
        self._broken = False
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        self._unicode = encoding in ("utf8", "utf16", "utf32")

    @classmethod
    def for_stream(cls, stream: TextIO, force_plain: bool = False) -> Console:
        isatty = getattr(stream, "isatty", None)
        tty = bool(isatty and isatty()) and os.environ.get("TERM", "") != "dumb"
        live = tty and not force_plain
        color = live and "NO_COLOR" not in os.environ
        return cls(stream, live=live, color=color)

    # -- writing ------------------------------------------------------------------

    def _write(self, text: str) -> None:
        if self._broken:
            return
        try:
            self.stream.write(text)
        except OSError:
            self._give_up()

    def _flush(self) -> None:
        if self._broken:
            return
        try:
            self.stream.flush()
        except OSError:
            self._give_up()

    def _give_up(self) -> None:
        """The reader went away (``| head``, a closed terminal): carry on silently.

        Output is never worth aborting the shutdown for; the stream is pointed
        at /dev/null so the interpreter's final flush does not complain either.
        """
        self._broken = True
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)

    # -- styling --------------------------------------------------------------------

    def style(self, text: str, code: str) -> str:
        return f"{CSI}{code}m{text}{CSI}0m" if self.color else text

    def bold(self, text: str) -> str:
        return self.style(text, "1")

    def dim(self, text: str) -> str:
        return self.style(text, "2")

    def red(self, text: str) -> str:
        return self.style(text, "31")

    def green(self, text: str) -> str:
        return self.style(text, "32")

    def yellow(self, text: str) -> str:
        return self.style(text, "33")

    # -- output ---------------------------------------------------------------------

    def line(self, text: str = "") -> None:
        """A permanent line (above the live block, which is redrawn under it)."""
        with self._lock:
            self._erase_block()
            self._write(text + "\n")
            self._draw_block()
            self._flush()

    def event(self, text: str) -> None:
        """A timestamped permanent line."""
        self.line(f"{self.dim(time.strftime('%H:%M:%S'))} {text}")

    def update(self, snapshot: Snapshot, *, force: bool = False) -> None:
        """Show ``snapshot``: redraw the live block, or print a plain line every so often."""
        with self._lock:
            self._last = snapshot
            if self.live:
                if not self._cursor_hidden:
                    self._write(f"{CSI}?25l")
                    self._cursor_hidden = True
                self._erase_block()
                self._draw_block()
                self._flush()
                return
            now = time.monotonic()
            if force or now - self._last_plain >= self.plain_interval:
                self._last_plain = now
                self._write(self.plain_line(snapshot) + "\n")
                self._flush()

    def close(self) -> None:
        """Leave the last live block on screen as permanent text; show the cursor again."""
        with self._lock:
            self._drawn = 0
            self._last = None
            if self._cursor_hidden:
                self._write(f"{CSI}?25h")
                self._cursor_hidden = False
            self._flush()

    # -- rendering ------------------------------------------------------------------

    def plain_line(self, s: Snapshot) -> str:
        return (
            f"progress {s.finished}/{s.total} ({self._percent(s):.0f}%) "
            f"enqueued={s.enqueued} available={s.available} locked={s.locked} "
            f"delayed={s.delayed} failed={s.failed} jobs/s={s.rate:.1f} "
            f"p50_wait={format_seconds(s.wait_p50).replace(' ', '')} elapsed={s.elapsed:.1f}s"
        )

    def block_lines(self, s: Snapshot) -> list[str]:
        fill, empty = ("\u2588", "\u2591") if self._unicode else ("#", "-")
        width = shutil.get_terminal_size((80, 24)).columns
        bar_width = max(10, min(BAR_WIDTH, width - 40))
        bar = _bar(s.finished / s.total if s.total else 1.0, bar_width, fill, empty)
        lines = [
            f"  {self.green(bar)} {s.finished:>{len(str(s.total))}}/{s.total} "
            f"{self._percent(s):5.1f}%  {s.elapsed:6.1f}s",
            self.bold("  available  locked  delayed  failed    jobs/s  p50 wait"),
            f"  {s.available:>9}  {s.locked:>6}  {s.delayed:>7}  {s.failed:>6}  "
            f"{s.rate:>8.1f}  {format_seconds(s.wait_p50):>8}",
        ]
        if s.processes:
            parts = []
            for name, state in s.processes:
                shown = state if state == "up" else self.red(state) if state != "starting" \
                    else self.yellow(state)
                parts.append(f"{name} {shown}")
            lines.append("  " + self.dim(" \u00b7 ".join(parts)) if self._unicode
                         else "  " + self.dim(" | ".join(parts)))
        # Never wrap: a wrapped line would break the cursor arithmetic of the redraw.
        reset = f"{CSI}0m" if self.color else ""
        return [line if _visible_len(line) < width else line[: width - 1] + reset
                for line in lines]

    @staticmethod
    def _percent(s: Snapshot) -> float:
        return 100.0 * s.finished / s.total if s.total else 100.0

    def _erase_block(self) -> None:
        if self.live and self._drawn:
            # Up to the first line of the block, then clear to the end of the screen.
            self._write(f"{CSI}{self._drawn}F{CSI}J")
            self._drawn = 0

    def _draw_block(self) -> None:
        if self.live and self._last is not None:
            lines = self.block_lines(self._last)
            self._write("".join(f"{CSI}2K{line}\n" for line in lines))
            self._drawn = len(lines)


def _visible_len(text: str) -> int:
    """Length without ANSI escape sequences."""
    length = 0
    in_escape = False
    for char in text:
        if in_escape:
            in_escape = not char.isalpha()
        elif char == "\x1b":
            in_escape = True
        else:
            length += 1
    return length
