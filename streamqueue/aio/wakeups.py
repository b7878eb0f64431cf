"""The wake-up board for one event loop: ``WakeupBoard``'s logic, awaited instead of blocked on.

Every decision (one wake-up per event, kept permits, due timers, polling, the
stream's pause) is the thread board's own (``WakeupBoard._decide``); only the
waiting differs. The board, its waiters and the watcher all run on one loop,
so the lock is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType

from streamqueue.wakeups import Wake, WakeupBoard


class LoopSignal:
    """``threading.Condition``'s shape for coroutines on one loop: no lock, futures to wake."""

    def __init__(self) -> None:
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __enter__(self) -> LoopSignal:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None, /) -> None:
        return None

    def notify(self, n: int = 1) -> None:
        woken = 0
        while self._waiters and woken < n:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                woken += 1

    def notify_all(self) -> None:
        self.notify(len(self._waiters))

    async def wait(self, timeout: float) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, timeout)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)


class AsyncWakeupBoard(WakeupBoard):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self._signal = LoopSignal()
        self._cond = self._signal

    def wait(self, until: float) -> Wake:
        raise TypeError("an AsyncWakeupBoard is awaited: use wait_async()")

    async def wait_async(self, until: float) -> Wake:
        """Until a signal for this waiter, or until the monotonic time ``until``."""
        started = self._clock()
        while True:
            decided = self._decide(started, until)
            if isinstance(decided, Wake):
                self._leaving()
                return decided
            token = self._blocking(decided)
            try:
                await self._signal.wait(decided)
            finally:
                self._unblocked(token)
