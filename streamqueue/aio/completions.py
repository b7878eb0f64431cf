"""Bulk completion for ``AsyncWorker``: the jobs whose handler returned, completed together.

One coroutine writes them: while one ``complete_many`` is on the wire, the
handlers returning meanwhile gather for the next, so a worker sends one
delete per round trip's worth of finished handlers instead of one per job
(hundreds of handlers that await return in waves, and one delete each made
the database's round trips the worker's limit).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from streamqueue.errors import StreamQueueError

if TYPE_CHECKING:
    from streamqueue.aio.queue import AsyncJob, AsyncQueue

log = logging.getLogger(__name__)


class Completions:
    def __init__(self, queue: AsyncQueue) -> None:
        self._queue = queue
        self._waiting: list[AsyncJob] = []
        self._writing = 0
        self._ready = asyncio.Event()
        self._closed = False

    @property
    def pending(self) -> int:
        """Jobs returned by their handler and not completed yet (their leases still held)."""
        return len(self._waiting) + self._writing

    def add(self, job: AsyncJob) -> bool:
        """Complete ``job`` with the next write; False once closed (complete it yourself)."""
        if self._closed:
            return False
        self._waiting.append(job)
        self._ready.set()
        return True

    async def run(self) -> None:
        """Write completions until ``finish``; then write what is left and return."""
        while self._waiting or not self._closed:
            if not self._waiting:
                self._ready.clear()
                await self._ready.wait()
                continue
            done, self._waiting = self._waiting, []
            self._writing = len(done)
            try:
                await self._write(done)
            finally:
                self._writing = 0

    async def finish(self, runner: asyncio.Task[None]) -> None:
        """Stop taking jobs, and wait for ``runner`` (the task of ``run``) to write the rest."""
        self._closed = True
        self._ready.set()
        await runner

    async def _write(self, done: list[AsyncJob]) -> None:
        # Failing here only means redelivery once the leases run out.
        try:
            lost = await self._queue.complete_many(done)
        except StreamQueueError:
            log.exception("could not complete %d jobs; their leases will run out", len(done))
            return
        for job in lost:
            log.warning("job %s: lease lost before it could be completed", job.id)
