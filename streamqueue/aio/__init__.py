"""streamqueue for asyncio: ``AsyncQueue`` and ``AsyncJob`` on pymongo's ``AsyncMongoClient``."""

from streamqueue.aio.queue import AsyncJob, AsyncQueue

__all__ = ["AsyncJob", "AsyncQueue"]
