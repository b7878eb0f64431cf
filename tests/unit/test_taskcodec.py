"""The task payload codec and the group's pipelines: pure."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from bson import ObjectId

from streamqueue.errors import InvalidJob
from streamqueue.storage import WAKE_PIPELINE
from streamqueue.storage.group import due_probe_pipeline, group_wake_pipeline, next_due_pipeline
from streamqueue.taskcodec import decode_call, encode_call


def test_a_call_round_trips_through_its_payload() -> None:
    when = datetime(2026, 1, 2, tzinfo=timezone.utc)
    oid = ObjectId()
    payload = encode_call("app.send", ("a", 1, (2, 3)), {"when": when, "id": oid, "n": None})
    assert payload == {"task": "app.send", "args": ["a", 1, (2, 3)],
                       "kwargs": {"when": when, "id": oid, "n": None}}
    call = decode_call(payload)
    assert (call.name, call.args[:2], call.kwargs["id"]) == ("app.send", ["a", 1], oid)


@pytest.mark.parametrize(("args", "kwargs", "named"), [
    ((object(),), {}, "argument 0"),
    ((), {"tags": {"a"}}, "argument 'tags'"),
    ((1, 2**64), {}, "argument 1"),
])
def test_what_bson_cannot_store_is_a_type_error_naming_the_argument(
        args: tuple[object, ...], kwargs: dict[str, object], named: str) -> None:
    with pytest.raises(TypeError, match=f"task app.t: {named}"):
        encode_call("app.t", args, kwargs)


def test_bad_keys_and_oversized_payloads_are_value_errors() -> None:
    with pytest.raises(InvalidJob):
        encode_call("app.t", ({"$where": 1},), {})
    with pytest.raises(ValueError, match="bytes encoded"):
        encode_call("app.t", ("x" * (17 * 1024 * 1024),), {})


@pytest.mark.parametrize("payload", [{}, {"task": 3}, {"task": "a", "args": "x"},
                                     {"task": "a", "kwargs": []}])
def test_a_payload_naming_no_proper_call_is_refused(payload: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        decode_call(payload)


def test_the_group_stream_filters_on_the_queues_and_keeps_the_collection_name() -> None:
    pipeline = group_wake_pipeline(["a", "b"])
    assert pipeline[0] == {"$match": {"ns.coll": {"$in": ["a", "b"]}}}
    # The same events wake as on one queue, and a dropped collection is heard of.
    assert pipeline[1] == {"$match": {"$or": [{"operationType": {"$in": ["drop", "rename"]}},
                                              WAKE_PIPELINE[0]["$match"]]}}
    assert pipeline[2]["$project"]["ns.coll"] == 1
    assert {k: v for k, v in pipeline[2]["$project"].items() if k != "ns.coll"} == \
        WAKE_PIPELINE[1]["$project"]


def test_one_probe_covers_every_queue() -> None:
    probe = due_probe_pipeline(["a", "b", "c"])
    unions = [stage["$unionWith"]["coll"] for stage in probe if "$unionWith" in stage]
    assert unions == ["b", "c"]
    assert next_due_pipeline(["a", "b"])[-1] == {
        "$group": {"_id": None, "due_in": {"$min": "$due_in"}}}
