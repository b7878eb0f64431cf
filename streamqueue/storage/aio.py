"""The storage plans (``StorePlans``) bound to pymongo's asyncio driver."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.server_type import SERVER_TYPE
from pymongo.topology_description import TopologyDescription

from streamqueue.retry import RetryPolicy
from streamqueue.storage import Document, StorePlans


def async_plans(collection: AsyncCollection[Document], retry: RetryPolicy | None, *,
                keep_completed: float) -> StorePlans:
    client = collection.database.client
    return StorePlans(collection, retry, keep_completed=keep_completed,
                      primary=lambda: topology_primary(client.topology_description),
                      hello=_hello_through_plans)


def topology_primary(description: TopologyDescription) -> object:
    """The primary's address as the client last saw it; no I/O (``AsyncMongoClient.primary``
    is a coroutine, and ``BoundedTries`` asks between two steps of a plan)."""
    for address, server in description.server_descriptions().items():
        if server.server_type == SERVER_TYPE.RSPrimary:
            return address
    return None


def _hello_through_plans() -> Mapping[str, Any]:
    raise TypeError("an asyncio queue reads the server clock through StorePlans.now()")
