"""Bad input gets a clear TypeError/ValueError and writes nothing."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import date
from typing import Any

import pytest
from pymongo.collection import Collection

from streamqueue import Queue, StreamQueueError
from streamqueue.storage import Document
from streamqueue.validation import MAX_ERROR_CHARS, MAX_PAYLOAD_BYTES
from tests.integration.conftest import API_PARAMS, QueueFactory


@pytest.fixture(params=API_PARAMS)
def api(request: pytest.FixtureRequest) -> str:
    """These semantics tests run against Queue and AsyncQueue alike."""
    return str(request.param)


BAD_PUTS: list[tuple[str, Callable[[Queue], object], type[Exception]]] = [
    ("non-mapping list", lambda q: q.put([1, 2]), TypeError),  # type: ignore[arg-type]
    ("non-mapping str", lambda q: q.put("job"), TypeError),  # type: ignore[arg-type]
    ("non-mapping None", lambda q: q.put(None), TypeError),  # type: ignore[arg-type]
    ("unencodable value", lambda q: q.put({"when": date(2024, 1, 1)}), ValueError),
    ("unencodable object", lambda q: q.put({"x": object()}), ValueError),
    ("over 16 MB", lambda q: q.put({"blob": b"x" * (16 * 1024 * 1024 + 1)}), ValueError),
    ("dollar key", lambda q: q.put({"$where": "1"}), ValueError),
    ("dotted key", lambda q: q.put({"a.b": 1}), ValueError),
    ("nested dollar key", lambda q: q.put({"a": {"b": [{"$c": 1}]}}), ValueError),
    ("nested dotted key", lambda q: q.put({"a": {"b.c": 1}}), ValueError),
    ("str priority", lambda q: q.put({}, priority="1"), TypeError),  # type: ignore[arg-type]
    ("float priority", lambda q: q.put({}, priority=1.5), TypeError),  # type: ignore[arg-type]
    ("bool priority", lambda q: q.put({}, priority=True), TypeError),
    ("payload priority str", lambda q: q.put({"priority": "high"}), TypeError),
    ("huge priority", lambda q: q.put({}, priority=2**64), ValueError),
    ("negative delay", lambda q: q.put({}, delay=-1), ValueError),
    ("nan delay", lambda q: q.put({}, delay=math.nan), ValueError),
    ("inf delay", lambda q: q.put({}, delay=math.inf), ValueError),
    ("str delay", lambda q: q.put({}, delay="5"), TypeError),  # type: ignore[arg-type]
    ("delay past year 9999", lambda q: q.put({}, delay=1e12), ValueError),
    ("one bad in a batch", lambda q: q.put_many([{"ok": 1}, {"$bad": 2}, {"ok": 3}]), ValueError),
    ("put_many of a dict", lambda q: q.put_many({"a": 1}), TypeError),  # type: ignore[dict-item]
    ("put_many bad delay", lambda q: q.put_many([{}], delay=-0.5), ValueError),
]


@pytest.mark.parametrize(("case", "call", "error"), BAD_PUTS, ids=[c[0] for c in BAD_PUTS])
def test_bad_put_raises_and_writes_nothing(
    make_queue: QueueFactory, collection: Collection[Document], case: str,
    call: Callable[[Queue], object], error: type[Exception],
) -> None:
    queue = make_queue()
    queue.put({"existing": True})
    before = list(collection.find())
    with pytest.raises(error):
        call(queue)
    assert list(collection.find()) == before, case
    assert queue.failed.count_documents({}) == 0


def test_value_errors_are_also_queue_errors(make_queue: QueueFactory) -> None:
    queue = make_queue()
    with pytest.raises(StreamQueueError):
        queue.put({"$bad": 1})
    with pytest.raises(StreamQueueError):
        queue.put({"x": object()})


BAD_OPTIONS: list[tuple[str, dict[str, Any], type[Exception]]] = [
    ("negative lease", {"lease": -1}, ValueError),
    ("zero lease", {"lease": 0}, ValueError),
    ("nan lease", {"lease": math.nan}, ValueError),
    ("inf lease", {"lease": math.inf}, ValueError),
    ("str lease", {"lease": "300"}, TypeError),
    ("zero max_attempts", {"max_attempts": 0}, ValueError),
    ("negative max_attempts", {"max_attempts": -3}, ValueError),
    ("float max_attempts", {"max_attempts": 2.0}, TypeError),
    ("negative backoff", {"backoff": -1}, ValueError),
    ("nan backoff", {"backoff": math.nan}, ValueError),
    ("str backoff", {"backoff": "1s"}, TypeError),
    ("int consumer_id", {"consumer_id": 7}, TypeError),
]


@pytest.mark.parametrize(("case", "options", "error"), BAD_OPTIONS,
                         ids=[c[0] for c in BAD_OPTIONS])
def test_bad_queue_options_raise_and_write_nothing(
    collection: Collection[Document], case: str, options: dict[str, Any],
    error: type[Exception],
) -> None:
    with pytest.raises(error):
        Queue(collection, **options)
    assert collection.name not in collection.database.list_collection_names(), case


def test_a_collection_is_required() -> None:
    with pytest.raises(TypeError):
        Queue("jobs")  # type: ignore[arg-type]


def test_bad_timeout_and_limit(make_queue: QueueFactory) -> None:
    queue = make_queue()
    with pytest.raises(ValueError):
        queue.next(timeout=-1)
    with pytest.raises(ValueError):
        queue.next(timeout=math.nan)
    with pytest.raises(ValueError):
        queue.next_batch(0)


def test_bad_backoff_answer_leaves_the_job_held(
    make_queue: QueueFactory, collection: Collection[Document]
) -> None:
    queue = make_queue(backoff=lambda attempts: -1.0)
    job_id = queue.put({})
    job = queue.next()
    assert job is not None
    held = collection.find_one({"_id": job_id})
    with pytest.raises(ValueError, match="backoff"):
        job.error("boom")
    assert collection.find_one({"_id": job_id}) == held


def test_the_largest_payload_round_trips_and_dead_letters_with_a_long_error(
    make_queue: QueueFactory, collection: Collection[Document]
) -> None:
    # The payload limit leaves room for the queue's fields and a full-length error
    # text, even one made of 4-byte characters.
    queue = make_queue(max_attempts=2)
    payload = {"blob": b"x" * (MAX_PAYLOAD_BYTES - 64)}
    job_id = queue.put(payload)
    job = queue.next()
    assert job is not None
    assert job.payload == payload
    job.error("\N{PILE OF POO}" * (MAX_ERROR_CHARS * 2))
    job = queue.next()
    assert job is not None
    assert job.last_error is not None
    assert len(job.last_error) <= MAX_ERROR_CHARS
    job.error("\N{PILE OF POO}" * (MAX_ERROR_CHARS * 2))
    dead = queue.failed.find_one({"_id": job_id})
    assert dead is not None
    assert dead["payload"] == payload
    assert collection.count_documents({}) == 0


def test_error_text_that_is_not_valid_unicode_is_stored(
    make_queue: QueueFactory, collection: Collection[Document]
) -> None:
    # A traceback can hold undecodable file names (lone surrogates); BSON
    # cannot store those, and error() must not fail because of it.
    queue = make_queue()
    job_id = queue.put({})
    job = queue.next()
    assert job is not None
    job.error("FileNotFoundError: /tmp/caf\udce9.txt")
    stored = collection.find_one({"_id": job_id})
    assert stored is not None
    assert stored["state"] == "ready"
    assert stored["last_error"].startswith("FileNotFoundError: /tmp/caf")
