"""The fleet's queries (``streamqueue.fleet``): the wider wake-up stream, member documents, the snapshot.

A member document lives in the queue's own collection, beside the control
document: ``_id`` ``"streamqueue.member.<consumer_id>"`` (a string, never a
job's ObjectId), ``state`` ``"member"`` (no job filter matches it), ``slots``
and ``expires_at`` (``$$NOW`` plus the ttl: the server's clock judges it).
Heartbeats only move ``expires_at``, which the stream filters out on the
server; joins, slot changes and leaves reach every member.
"""

from __future__ import annotations

from typing import Any

from streamqueue.fleet import MEMBER, MEMBER_PREFIX, member_id
from streamqueue.plan import Plan, call, listed
from streamqueue.storage import (
    CONTROL_EVENTS,
    LOCKED,
    NOW,
    WAKE_FIELDS,
    Document,
    StorePlans,
    millis,
)

# WAKE_PIPELINE's events, plus what the fleet view needs: claims (state
# "locked", with the claimer), settles (deletes, finished states) and member
# joins/leaves. Heartbeats, progress and lease extensions set neither state
# nor slots and stay on the server.
FLEET_PIPELINE: list[Document] = [
    {"$match": {"$or": [
        {"operationType": {"$in": ["insert", "delete"]}},
        {"operationType": "replace", "fullDocument.state": {"$exists": True}},
        {"operationType": "update", "updateDescription.updatedFields.state": {"$exists": True}},
        {"operationType": "update", "updateDescription.updatedFields.slots": {"$exists": True}},
        *CONTROL_EVENTS,
    ]}},
    {"$project": {
        **WAKE_FIELDS,
        "fullDocument.state": 1,
        "fullDocument.consumer_id": 1,
        "fullDocument.slots": 1,
        "updateDescription.updatedFields.state": 1,
        "updateDescription.updatedFields.consumer_id": 1,
        "updateDescription.updatedFields.slots": 1,
    }},
]

MEMBER_FILTER: Document = {"state": MEMBER, "_id": {"$regex": "^" + MEMBER_PREFIX.replace(".", r"\.")}}
LIVE_MEMBER: Document = {**MEMBER_FILTER, "$expr": {"$gt": ["$expires_at", NOW]}}
EXPIRED_MEMBER: Document = {**MEMBER_FILTER, "$expr": {"$lte": ["$expires_at", NOW]}}


def beat(plans: StorePlans, consumer_id: str, slots: int, ttl: float) -> Plan[None]:
    """Join, or stay a member for ``ttl`` more seconds; and remove members that stopped beating.

    ``slots`` only changes on a join (or a real change), so a beat's update
    event carries only ``expires_at``, which the fleet pipeline drops.
    """
    update = [{"$set": {"state": MEMBER, "slots": slots,
                        "expires_at": {"$add": [NOW, millis(ttl)]}}}]
    yield from plans._retry_op("beat as a fleet member", call(
        plans.jobs, "update_one", {"_id": member_id(consumer_id)}, update, upsert=True))
    # Their delete events tell every member's view that they left.
    yield from plans._retry_op("remove expired fleet members", call(
        plans.jobs, "delete_many", EXPIRED_MEMBER))


def leave(plans: StorePlans, consumer_id: str) -> Plan[None]:
    yield from plans._retry_op("leave the fleet", call(
        plans.jobs, "delete_one", {"_id": member_id(consumer_id)}))


def snapshot(plans: StorePlans) -> Plan[tuple[list[tuple[str, int]], list[tuple[Any, str]]]]:
    """Live members and their slots, and who holds each locked job: read after the stream opened."""
    members = yield from plans._retry_op("read fleet members", listed(
        plans.jobs, "find", LIVE_MEMBER, {"slots": 1}))
    locked = yield from plans._retry_op("read locked jobs", listed(
        plans.jobs, "find", {"state": LOCKED}, {"consumer_id": 1}))
    return ([(doc["_id"][len(MEMBER_PREFIX):], int(doc.get("slots", 0))) for doc in members],
            [(doc["_id"], doc["consumer_id"]) for doc in locked
             if isinstance(doc.get("consumer_id"), str)])
