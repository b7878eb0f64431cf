"""Starting a process whose wall clock is wrong: libfaketime preloaded directly.

Not through the ``faketime`` wrapper. Both the wrapper and the library create a
named semaphore and shared memory in /dev/shm keyed by a PID (libfaketime
0.9.10; a Python process leaves its pair behind even on a clean exit, a killed
one always does). Once the kernel reuses such a PID (pid_max 32768) the wrapper
fails with "sem_open: File exists" before the test starts (seen in CI); the
library only skips the shared state, which an absolute offset (``FAKETIME=+1h``)
does not use. So processes start with the library preloaded, and each start
first removes the pairs whose PID no longer runs, so they do not pile up.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

# Where Debian's libfaketime puts the library (multiarch), then common prefixes.
_CANDIDATES = (
    "/usr/lib/*/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)


def libfaketime() -> str | None:
    """The path of libfaketime.so.1 on this machine, or None if it is not installed."""
    for pattern in _CANDIDATES:
        for path in sorted(glob.glob(pattern)):
            if os.path.isfile(path):
                return path
    return None


_SHM = Path("/dev/shm")
_LEFTOVER = re.compile(r"^(?:sem\.faketime_sem|faketime_shm)_(\d+)$")


def sweep_leftovers() -> int:
    """Remove libfaketime's /dev/shm pairs whose PID is not running; return how many."""
    removed = 0
    for entry in _SHM.glob("*faketime_*") if _SHM.is_dir() else ():
        match = _LEFTOVER.match(entry.name)
        if match is None or _running(int(match.group(1))):
            continue
        try:
            entry.unlink()
            removed += 1
        except OSError:  # another sweep got there first, or not ours to remove
            continue
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def faketime_prefix(offset: str) -> list[str]:
    """A command prefix that runs the next program with its wall clock moved by ``offset``.

    ``offset`` is ``+1h``, ``-1h``... The monotonic clock is left alone
    (``FAKETIME_DONT_FAKE_MONOTONIC``), as on a real host whose wall clock is
    wrong. ``env`` execs the program, so the PID started is the program's own.
    """
    lib = libfaketime()
    if lib is None:
        raise FileNotFoundError("libfaketime is not installed (Debian package 'faketime')")
    sweep_leftovers()
    return ["env", f"LD_PRELOAD={lib}", f"FAKETIME={offset}", "FAKETIME_DONT_FAKE_MONOTONIC=1"]
