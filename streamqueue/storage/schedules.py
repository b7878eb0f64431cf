"""Every query on a queue's schedules (collection ``DB.NAME.schedules``).

One document per schedule::

    _id           the schedule's name
    cron | every_ms, timezone, start_at, end_at, misfire, catch_up,
    payload, priority, max_attempts      the definition (``ScheduleSpec``)
    revision      a digest of the definition; a changed definition changes it
    next_at       the next tick not yet fired or given up (server clock); null once ended
    last_tick, last_fired_at, last_job_id, last_fired_by   the last fire: its tick, when
                  ($$NOW), its job, the firing scheduler's consumer id
    fired, missed counts of jobs fired and ticks given up by the misfire policy

Who fires a tick is decided by the database: one transaction moves ``next_at``
past the tick (filtered on the ``next_at`` and ``revision`` the firer read, and
on ``$$NOW`` having reached the tick) and inserts the tick's job. Two firers
of the same tick cannot both commit: the second finds ``next_at`` moved (or
meets a write conflict), and the transaction's all-or-nothing means a job
exists exactly when ``next_at`` moved past its tick. The job's unique key
(``schedule:NAME@TICK``) adds the key index's guarantee while the job is active.

Defining, listing and removing schedules are plans (``SchedulePlans``), run by
``Queue`` with the sync runner and by ``AsyncQueue`` with the async one. Firing
and watching stay sync (``ScheduleStore``): only the threaded ``Scheduler``
fires; its pure builders are module functions should an async firer come.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, IndexModel, ReadPreference, ReturnDocument
from pymongo.change_stream import ChangeStream
from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.errors import PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from streamqueue.errors import ConfigurationError
from streamqueue.plan import Plan, call, listed
from streamqueue.retry import is_transient, translate
from streamqueue.schedule import ScheduleSpec, utc
from streamqueue.storage import (
    ACTIVE_KEY,
    NOW,
    Document,
    JobStore,
    NewJob,
    StorePlans,
    millis,
    new_document,
)
from streamqueue.storage.runner import run
from streamqueue.ticks import FirePlan

log = logging.getLogger(__name__)

SCHEDULE_INDEXES = [IndexModel([("next_at", ASCENDING)], name="next_at")]
# Definitions only: a fire moves next_at without touching the revision, and
# the other schedulers learn of it when their own attempt at the tick loses.
SCHEDULE_STREAM_PIPELINE: list[Document] = [
    {"$match": {"$or": [
        {"operationType": {"$in": ["insert", "replace", "delete"]}},
        {"operationType": "update", "updateDescription.updatedFields.revision": {"$exists": True}},
    ]}},
    {"$project": {"operationType": 1, "documentKey": 1}},
]
SAVE_ROUNDS = 8
TRANSACTION = {"read_concern": ReadConcern("majority"), "write_concern": WriteConcern("majority"),
               "read_preference": ReadPreference.PRIMARY}


#: A queue's schedules live in the collection ``NAME`` + this.
SCHEDULES_SUFFIX = ".schedules"


def schedules_name(queue: str) -> str:
    return queue + SCHEDULES_SUFFIX


def tick_key(name: str, tick: datetime) -> str:
    """The unique key of a tick's job: one active job per schedule and tick."""
    return f"schedule:{name}@{tick.isoformat(timespec='milliseconds')}"


def definition_update(spec: ScheduleSpec, next_at: datetime | None) -> Document:
    """``$set`` for a new or changed definition; its next tick is ``next_at``."""
    # $currentDate, not $$NOW: this is a plain update, not a pipeline.
    return {"$set": {**spec.stored_fields(), "revision": spec.revision, "next_at": next_at},
            "$currentDate": {"updated_at": True}}


def fire_filter(doc: Document, tick: datetime) -> Document:
    """The schedule as the firer read it, and ``tick`` due by the server's clock."""
    return {"_id": doc["_id"], "revision": doc["revision"], "next_at": doc["next_at"],
            "$expr": {"$lte": [tick, NOW]}}


def fire_update(plan: FirePlan, job_ids: Sequence[ObjectId], due: datetime,
                firer: str) -> list[Document]:
    """Move ``next_at`` on and record the fire; ``last_fired_at`` is ``$$NOW``."""
    changes: Document = {
        "last_fired_by": {"$literal": firer},
        "next_at": plan.next_at,
        "fired": {"$add": [{"$ifNull": ["$fired", 0]}, len(job_ids)]},
        "missed": {"$add": [{"$ifNull": ["$missed", 0]}, plan.missed]},
        "last_fired_at": NOW,
    }
    if job_ids:
        changes.update({"last_tick": plan.fire[-1], "last_job_id": job_ids[-1]})
    else:
        changes["last_skipped"] = due
    return [{"$set": changes}]


def tick_document(spec_doc: Document, tick: datetime, job_id: ObjectId,
                  fired_at: datetime) -> Document:
    """The job one tick fires, dated by the fire's ``$$NOW``; ``schedule`` and ``tick`` on it."""
    job = NewJob(payload=spec_doc.get("payload") or {}, priority=int(spec_doc.get("priority", 0)),
                 delay=0.0, max_attempts=int(spec_doc.get("max_attempts", 3)),
                 key=tick_key(spec_doc["_id"], tick))
    document = new_document(job, fired_at)
    document["_id"] = job_id
    document["schedule"] = spec_doc["_id"]
    document["tick"] = tick
    return document


@dataclass(frozen=True)
class Fired:
    """One committed fire: its jobs (one per tick fired) and ``$$NOW`` when it committed."""

    ticks: tuple[datetime, ...]
    job_ids: tuple[ObjectId, ...]
    fired_at: datetime
    missed: int


class SchedulePlans:
    """Defining, reading and removing a queue's schedules, as plans (either driver).

    ``plans`` is the queue's own (``StorePlans``): same database, client,
    write concern and retry policy.
    """

    def __init__(self, plans: StorePlans) -> None:
        self.store = plans
        # get_collection does no I/O, on a Database as on an AsyncDatabase.
        self.collection: Any = plans.jobs.database.get_collection(
            schedules_name(plans.jobs.name), write_concern=plans.jobs.write_concern,
            read_preference=ReadPreference.PRIMARY, read_concern=ReadConcern("local"))
        self.indexes_ready = False

    def require_transactions(self) -> Plan[None]:
        """Schedules need a replica set: a fire is a transaction, a wake-up a change stream."""
        if not (yield from self.store.supports_transactions()):
            raise ConfigurationError(
                f"schedules on {self.store.jobs.full_name} need a replica set (a fire is a "
                "transaction and schedulers wait on a change stream); this server is standalone")

    def ensure_indexes(self) -> Plan[None]:
        if not self.indexes_ready:
            yield from self.store._retry_op("create schedule indexes", call(
                self.collection, "create_indexes", SCHEDULE_INDEXES))
            self.indexes_ready = True

    def find(self, name: str) -> Plan[Document | None]:
        doc: Document | None = yield from self.store._retry_op(
            "read a schedule", call(self.collection, "find_one", {"_id": name}))
        return doc

    def all(self) -> Plan[list[Document]]:
        docs: list[Document] = yield from self.store._retry_op("list schedules", listed(
            self.collection, "find", {}, sort=[("_id", ASCENDING)]))
        return docs

    def save(self, spec: ScheduleSpec, now: datetime) -> Plan[bool]:
        """Create or change a schedule; False when it is stored exactly so already.

        A changed definition starts from its first tick after ``now`` and after
        the last tick fired, so no tick is fired twice across the change.
        """
        yield from self.ensure_indexes()

        def attempt() -> Plan[bool]:
            # Compare-and-set on the revision read: a definition changed meanwhile
            # by another caller is read again, not overwritten blind.
            for _ in range(SAVE_ROUNDS):
                current = yield call(self.collection, "find_one", {"_id": spec.name})
                if current is not None and current.get("revision") == spec.revision:
                    return False
                last = current.get("last_tick") if current else None
                start = max(now, _aware(last)) if isinstance(last, datetime) else now
                update = definition_update(spec, spec.rule.next_after(start))
                if current is None:
                    yield call(self.collection, "update_one", {"_id": spec.name}, update,
                               upsert=True)
                    return True
                if (yield call(self.collection, "update_one",
                               {"_id": spec.name, "revision": current["revision"]},
                               update)).matched_count:
                    return True
            raise ConfigurationError(f"schedule {spec.name!r} changed under this call "
                                     f"{SAVE_ROUNDS} times in a row")

        return (yield from self.store._retry("save a schedule", attempt))

    def remove(self, name: str) -> Plan[bool]:
        result = yield from self.store._retry_op("remove a schedule", call(
            self.collection, "delete_one", {"_id": name}))
        return bool(result.deleted_count)

    def clock_now(self) -> Plan[datetime]:
        """The server's clock estimated here (``ServerClock``): never ahead of it."""
        return (yield from self.store.now())


class ScheduleStore:
    """``SchedulePlans`` run with the sync driver, and firing (sync only, see the module)."""

    def __init__(self, store: JobStore) -> None:
        self.jobs_store = store
        self.plans = SchedulePlans(store.plans)
        self.collection: Collection[Document] = self.plans.collection

    def require_transactions(self) -> None:
        run(self.plans.require_transactions())

    def ensure_indexes(self) -> None:
        run(self.plans.ensure_indexes())

    def find(self, name: str) -> Document | None:
        return run(self.plans.find(name))

    def all(self) -> list[Document]:
        return run(self.plans.all())

    def save(self, spec: ScheduleSpec, now: datetime) -> bool:
        return run(self.plans.save(spec, now))

    def remove(self, name: str) -> bool:
        return run(self.plans.remove(name))

    def fire(self, doc: Document, plan: FirePlan, firer: str) -> Fired | None:
        """One transaction: move ``next_at`` on and insert one job per tick in ``plan.fire``.

        None when another scheduler fired it first, the definition changed, or
        the server's clock has not reached the tick yet. One try: the caller's
        loop reads again and decides anew (``with_transaction`` would retry for
        up to two minutes, blocking every other schedule of this scheduler).
        """
        self.jobs_store.ensure_indexes()  # DDL cannot run inside a transaction
        try:
            return self._fire_once(doc, plan, firer)
        except PyMongoError as exc:
            if is_transient(exc):
                # A write conflict with another firer's transaction, or a blip:
                # nothing committed, or the loop's next read shows the commit.
                log.debug("firing %s: %s; reading again", doc["_id"], exc)
                return None
            raise translate(exc, f"fire schedule {doc['_id']!r}") from exc

    def _fire_once(self, doc: Document, plan: FirePlan, firer: str) -> Fired | None:
        job_ids = tuple(ObjectId() for _ in plan.fire)
        tick = plan.fire[-1] if plan.fire else doc["next_at"]
        client = self.collection.database.client
        with client.start_session() as session, session.start_transaction(**TRANSACTION):
            after = self.collection.find_one_and_update(
                fire_filter(doc, tick), fire_update(plan, job_ids, doc["next_at"], firer),
                projection={"last_fired_at": 1}, return_document=ReturnDocument.AFTER,
                session=session)
            if after is None:
                session.abort_transaction()
                return None
            fired_at = _aware(after["last_fired_at"])
            self._insert_jobs(doc, plan, job_ids, fired_at, session)
        return Fired(ticks=plan.fire, job_ids=job_ids, fired_at=fired_at, missed=plan.missed)

    def _insert_jobs(self, doc: Document, plan: FirePlan, job_ids: Sequence[ObjectId],
                     fired_at: datetime, session: ClientSession) -> None:
        jobs = self.jobs_store.jobs
        documents = [tick_document(doc, tick, job_id, fired_at)
                     for tick, job_id in zip(plan.fire, job_ids, strict=True)]
        # A job someone put by hand under a tick's key holds it: that tick's
        # job is then that one, not a second (a refused insert would abort the fire).
        keys = [document["key"] for document in documents]
        held = {found["key"] for found in jobs.find({"key": {"$in": keys}, **ACTIVE_KEY},
                                                    {"key": 1}, session=session)}
        fresh = [document for document in documents if document["key"] not in held]
        if fresh:
            jobs.insert_many(fresh, session=session)

    def watch(self, max_await: float) -> ChangeStream[Document]:
        """Definition changes (not fires); driver errors are the scheduler's to handle."""
        return self.collection.with_options(read_concern=ReadConcern()).watch(
            SCHEDULE_STREAM_PIPELINE, max_await_time_ms=millis(max_await))

    def server_now(self) -> datetime:
        return _aware(self.jobs_store.server_now())

    def clock_now(self) -> datetime:
        return run(self.plans.clock_now())


def _aware(moment: datetime) -> datetime:
    aware = utc(moment)
    assert aware is not None
    return aware
