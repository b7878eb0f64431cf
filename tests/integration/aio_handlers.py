"""``async def`` handlers for the async worker run as a process (``streamqueue worker``)."""

from __future__ import annotations

import asyncio
from typing import Any


async def nap(payload: dict[str, Any]) -> None:
    """I/O-bound work: waits, never blocks the loop."""
    await asyncio.sleep(float(payload.get("seconds", 0.05)))
