"""A task registry for the CLI tests: ``streamqueue worker tests.task_app:tasks``.

The database comes from ``STREAMQUEUE_TEST_TASKS_URI``/``_DB``; each task records
its call in the ``records`` collection there, so a test waits on what ran.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from pymongo import MongoClient

from streamqueue import Tasks

_client: MongoClient[dict[str, Any]] = MongoClient(
    os.environ.get("STREAMQUEUE_TEST_TASKS_URI", "mongodb://127.0.0.1:1"), connect=False)
_db = _client[os.environ.get("STREAMQUEUE_TEST_TASKS_DB", "streamqueue_test_tasks")]
tasks = Tasks(_db)


@tasks.task(queue="emails", name="app.send_email")
def send_email(to: str, subject: str) -> None:
    _db["records"].insert_one({"task": "send_email", "to": to, "subject": subject,
                               "pid": os.getpid()})


@tasks.task(name="app.ping")
async def ping(n: int) -> None:
    await asyncio.sleep(0)
    _db["records"].insert_one({"task": "ping", "n": n, "pid": os.getpid()})


@tasks.task(queue="slow", name="app.slow", lease=2.0)
def slow(n: int) -> None:
    """Hangs on its first attempt (the test kills the process), returns on later ones."""
    from streamqueue.tasks import current_job

    job = current_job()
    attempt = job.attempts if job is not None else 0
    _db["records"].insert_one({"task": "slow", "n": n, "attempt": attempt,
                               "event": "started", "pid": os.getpid()})
    if attempt == 1:
        time.sleep(60)
    _db["records"].insert_one({"task": "slow", "n": n, "attempt": attempt,
                               "event": "done", "pid": os.getpid()})
