"""Child processes that die with their parent: ``spawn`` is ``subprocess.Popen`` plus that.

A launcher (the demo, the devserver, a test) that is SIGKILLed, or stopped by
a signal it does not handle, runs no ``finally``: its ``mongod`` members and
worker processes would run on, holding ports, disk and leases. On Linux,
``spawn`` has the child ask the kernel for SIGKILL when its parent dies
(``prctl(PR_SET_PDEATHSIG)``, called through ctypes in the child before
``exec``; it survives the ``exec``). Elsewhere it is a plain ``Popen``, and
children are left to the launcher's own clean-up.

The kernel sends that signal when the *thread* that forked the child exits,
not the process. A child forked from a short-lived thread (a stop thread, a
test helper's thread) would be killed when that thread ends. So every child
is forked from one daemon thread kept for the life of the process, whichever
thread called ``spawn``; a daemon thread ends only when the process does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

log = logging.getLogger(__name__)

#: From <linux/prctl.h>.
PR_SET_PDEATHSIG = 1

_Prctl = Callable[[int, int, int, int, int], int]


def _load_prctl() -> _Prctl | None:
    # Looked up before any fork: the child must only call it, not load a library.
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl: _Prctl = libc.prctl
    except (OSError, AttributeError):
        log.debug("prctl is not available; children will not die with their parent")
        return None
    return prctl


_prctl = _load_prctl()


def dies_with_parent() -> bool:
    """True where ``spawn`` makes children die with their parent (Linux)."""
    return _prctl is not None


def _die_with(prctl: _Prctl, parent: int) -> Callable[[], None]:
    kill = int(signal.SIGKILL)

    def in_child() -> None:
        # Runs between fork and exec: only a C call and two system calls, no imports.
        prctl(PR_SET_PDEATHSIG, kill, 0, 0, 0)
        # The parent may have died between fork and prctl: then no signal comes.
        if os.getppid() != parent:
            os.kill(os.getpid(), kill)

    return in_child


class _Launcher:
    """One daemon thread that forks every child, so no child outlives its forking thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None
        self._pid = 0

    def run(self, call: Callable[[], Any]) -> Any:
        self._ensure_thread()
        future: Future[Any] = Future()
        self._requests.put((call, future))
        return future.result()

    def _ensure_thread(self) -> None:
        with self._lock:
            # A forked copy of this process has no launcher thread: start its own.
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._requests = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._serve, args=(self._requests,),
                                                name="streamqueue-child-launcher", daemon=True)
                self._pid = os.getpid()
                self._thread.start()

    @staticmethod
    def _serve(requests: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]) -> None:
        while True:
            call, future = requests.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:  # handed to the caller's thread
                future.set_exception(exc)


_launcher = _Launcher()


def spawn(args: Sequence[str], **popen_kwargs: Any) -> Any:
    """``subprocess.Popen(args, **popen_kwargs)`` whose child is SIGKILLed if we die (Linux).

    Returns the ``Popen`` (typed ``Any`` so callers keep their own
    ``Popen[bytes]`` / ``Popen[str]``). ``preexec_fn`` is this module's to set.
    """
    import subprocess

    if "preexec_fn" in popen_kwargs:
        raise TypeError("spawn sets preexec_fn itself")
    if _prctl is None:
        return subprocess.Popen(args, **popen_kwargs)
    hook = _die_with(_prctl, os.getpid())
    return _launcher.run(lambda: subprocess.Popen(args, preexec_fn=hook, **popen_kwargs))
