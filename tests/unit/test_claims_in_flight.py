"""The candidates of batch claims in flight (streamqueue.storage.inflight): pure bookkeeping."""

from __future__ import annotations

from bson import ObjectId

from streamqueue.storage import READY_AND_DUE, _not_in_flight
from streamqueue.storage.inflight import ClaimsInFlight


def test_a_job_listed_by_two_claims_stays_listed_until_both_are_done() -> None:
    a, b, c = ObjectId(), ObjectId(), ObjectId()
    in_flight = ClaimsInFlight()
    in_flight.add([a, b])
    in_flight.add([b, c])  # the two reads overlapped on b
    in_flight.remove([a, b])
    assert sorted(in_flight.listed()) == sorted([b, c])
    in_flight.remove([b, c])
    assert in_flight.listed() == []


def test_the_read_leaves_listed_jobs_out_and_keeps_the_due_filter() -> None:
    job = ObjectId()
    assert _not_in_flight([]) == READY_AND_DUE
    assert _not_in_flight([job]) == {**READY_AND_DUE, "_id": {"$nin": [job]}}
