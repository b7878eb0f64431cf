"""``python -m tests.faults.skewed -m MODULE ARGS...``: run MODULE as ``__main__`` under faketime.

The clock-skew scenario runs real workers and reapers under ``faketime`` with
``FAKETIME_DONT_FAKE_MONOTONIC=1``: only the wall clock moves, as on a host
whose clock is wrong. Two libfaketime 0.9.10 quirks, checked on this machine:

- faking the monotonic clock too makes every timed wait (``Event.wait``,
  ``Condition.wait``) hang, because glibc passes absolute monotonic deadlines
  to the kernel;
- with the monotonic clock left alone, ``clock_nanosleep(TIMER_ABSTIME)`` (what
  ``time.sleep`` uses since Python 3.11) fails with EINVAL.

So this shim replaces ``time.sleep`` with a ``select`` wait (which libfaketime
does not break) and changes nothing else.
"""

from __future__ import annotations

import runpy
import select
import sys
import time
from typing import SupportsIndex


def _sleep(seconds: float | SupportsIndex) -> None:
    length = float(seconds)
    if length < 0:
        raise ValueError("sleep length must be non-negative")
    deadline = time.monotonic() + length
    while (left := deadline - time.monotonic()) > 0:
        select.select([], [], [], left)


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] != "-m":
        raise SystemExit("usage: python -m tests.faults.skewed -m MODULE [ARGS...]")
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    time.sleep = _sleep
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
