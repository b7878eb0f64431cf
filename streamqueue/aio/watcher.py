"""One change stream per ``AsyncQueue``, followed by a task on the queue's event loop.

Everything it decides is ``StreamEvents``' (shared with the thread watcher):
the same stream, events, pause after idling, outage polling and reopening.
Only the waiting is asyncio's.
"""

from __future__ import annotations

import asyncio
import contextlib

from streamqueue.hooks import Hooks
from streamqueue.storage import StorePlans
from streamqueue.storage.arunner import arun
from streamqueue.wakeups import WakeupBoard
from streamqueue.watcher import StreamEvents


class AsyncStreamWatcher(StreamEvents):
    _ready: asyncio.Event
    _live: asyncio.Event
    _wanted: asyncio.Event
    _stopping: asyncio.Event

    def __init__(self, plans: StorePlans, board: WakeupBoard, hooks: Hooks, *,
                 max_await: float = 5.0, poll_interval: float = 1.0,
                 pause_after: float | None = 2.0) -> None:
        super().__init__(plans, board, hooks, max_await=max_await,
                         poll_interval=poll_interval, pause_after=pause_after)
        self._ready = asyncio.Event()
        self._live = asyncio.Event()
        self._wanted = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 30.0) -> None:
        """Open the stream (once per watcher) before the caller's first claim (no lost wake-up)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                arun(self._run()), name=f"streamqueue-watch-{self._name}")
        if not await _within(self._ready, timeout):
            # Not open in time: poll until it is, rather than risk a lost wake-up.
            self._board.set_polling(self._poll_interval)

    async def stop(self) -> None:
        """Stop following the stream and close it."""
        self._stopped()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def resume(self, timeout: float = 30.0) -> bool:
        """Reopen a paused stream; True once waking is guaranteed again."""
        self._wanted.set()
        return await _within(self._live, timeout)

    async def refresh_due(self) -> None:
        await arun(self.refresh_due_plan())

    async def _wait_wanted(self) -> None:
        await self._wanted.wait()

    async def _rest(self, seconds: float) -> None:
        await _within(self._stopping, seconds)


async def _within(flag: asyncio.Event, timeout: float) -> bool:
    try:
        await asyncio.wait_for(flag.wait(), timeout)
    except TimeoutError:
        return False
    return True
