"""Pure checks of payloads and options: every bad input kind the issue names."""

from __future__ import annotations

import datetime
import decimal
import math
from collections import OrderedDict
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest
from bson import ObjectId

from streamqueue.errors import InvalidJob, StreamQueueError
from streamqueue.validation import (
    MAX_DOCUMENT_BYTES,
    MAX_ERROR_CHARS,
    MAX_KEY_CHARS,
    MAX_PAYLOAD_BYTES,
    MAX_RESULT_BYTES,
    backoff_seconds,
    check_backoff,
    check_heartbeat,
    check_key,
    check_limit,
    check_max_attempts,
    check_payload,
    check_priority,
    check_result,
    check_seconds,
    check_tags,
    resolve_priority,
    truncate_error,
)

# -- payloads --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [None, [], [("a", 1)], "text", b"bytes", 42, 1.5, ("a", 1), {"a", "b"}, object()],
    ids=lambda p: type(p).__name__,
)
def test_non_mapping_payload_is_a_type_error(payload: object) -> None:
    with pytest.raises(TypeError, match="mapping"):
        check_payload(payload)


@pytest.mark.parametrize(
    "payload",
    [
        {"when": datetime.date(2024, 1, 1)},
        {"obj": object()},
        {"set": {1, 2}},
        {"complex": 1j},
        {"decimal": decimal.Decimal("1.5")},
        {"nested": {"deeper": [1, {"x": object()}]}},
        {"huge": 2**64},
    ],
    ids=["date", "object", "set", "complex", "decimal", "nested", "int-overflow"],
)
def test_payload_that_does_not_encode_to_bson_is_invalid(payload: dict[str, Any]) -> None:
    with pytest.raises(InvalidJob, match="BSON") as caught:
        check_payload(payload)
    # A clear error of the documented kinds, catchable as either.
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, StreamQueueError)


def test_payload_over_16_mb_is_invalid() -> None:
    with pytest.raises(InvalidJob, match="bytes"):
        check_payload({"blob": b"x" * MAX_DOCUMENT_BYTES})


def test_payload_just_over_the_payload_limit_is_invalid() -> None:
    # The limit leaves room for the queue's own fields: a payload that alone fits
    # in 16 MB but leaves no room for them is refused too.
    with pytest.raises(InvalidJob):
        check_payload({"blob": b"x" * MAX_PAYLOAD_BYTES})


def test_payload_just_under_the_limit_is_accepted() -> None:
    payload = {"blob": b"x" * (MAX_PAYLOAD_BYTES - 1024)}
    assert check_payload(payload) == payload


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ({"$set": 1}, r"\$set"),
        ({"a.b": 1}, r"a\.b"),
        ({"outer": {"$inner": 1}}, r"\$inner"),
        ({"outer": {"in.ner": 1}}, r"in\.ner"),
        ({"list": [{"ok": 1}, {"$bad": 2}]}, r"\$bad"),
        ({"list": [[{"de.ep": 1}]]}, r"de\.ep"),
        ({"tuple": ({"$t": 1},)}, r"\$t"),
        ({"nul\x00key": 1}, "NUL"),
    ],
    ids=["dollar", "dot", "nested-dollar", "nested-dot", "in-list", "list-of-lists", "in-tuple",
         "nul"],
)
def test_dollar_and_dotted_keys_are_refused_at_any_depth(
    payload: dict[str, Any], where: str
) -> None:
    with pytest.raises(InvalidJob, match=where):
        check_payload(payload)


def test_error_names_the_path_of_a_nested_bad_key() -> None:
    with pytest.raises(InvalidJob, match=r"payload\.outer\.list\[1\]"):
        check_payload({"outer": {"list": [{}, {"$x": 1}]}})


def test_non_string_key_is_refused() -> None:
    with pytest.raises((InvalidJob, TypeError)):
        check_payload({1: "one"})


def test_dollar_and_dot_inside_values_are_fine() -> None:
    payload = {"price": "$5.00", "path": "a.b.c", "id": ObjectId(), "n": None, "f": 1.5}
    assert check_payload(payload) == payload


@pytest.mark.parametrize(
    "payload",
    [OrderedDict(a=1), MappingProxyType({"a": 1})],
    ids=["ordereddict", "mappingproxy"],
)
def test_any_mapping_is_accepted_and_copied_to_a_dict(payload: Mapping[str, Any]) -> None:
    checked = check_payload(payload)
    assert type(checked) is dict
    assert checked == {"a": 1}


def test_payload_is_copied_not_aliased() -> None:
    payload: dict[str, Any] = {"a": 1}
    checked = check_payload(payload)
    checked["b"] = 2
    assert payload == {"a": 1}


# -- priority --------------------------------------------------------------------------


@pytest.mark.parametrize("priority", ["1", 1.0, 1.5, True, False, None, [1], math.nan])
def test_non_int_priority_is_a_type_error(priority: object) -> None:
    with pytest.raises(TypeError, match="priority"):
        check_priority(priority)


@pytest.mark.parametrize("priority", [2**63, -(2**63) - 1])
def test_priority_outside_64_bits_is_a_value_error(priority: int) -> None:
    with pytest.raises(ValueError, match="64 bits"):
        check_priority(priority)


@pytest.mark.parametrize("priority", [0, -5, 7, 2**63 - 1, -(2**63)])
def test_int_priority_is_accepted(priority: int) -> None:
    assert check_priority(priority) == priority


def test_priority_defaults_to_the_payload_key_then_zero() -> None:
    assert resolve_priority({"priority": 7}, None) == 7
    assert resolve_priority({"other": 1}, None) == 0
    # An explicit priority wins over the payload's.
    assert resolve_priority({"priority": 7}, 2) == 2
    assert resolve_priority({"priority": 7}, 0) == 0


@pytest.mark.parametrize("bad", ["high", 1.5, True, None])
def test_bad_priority_in_the_payload_is_a_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match="priority"):
        resolve_priority({"priority": bad}, None)


# -- seconds: delay, lease, timeouts ----------------------------------------------------


@pytest.mark.parametrize("name", ["delay", "lease"])
@pytest.mark.parametrize("value", [-1, -0.001, -math.inf])
def test_negative_seconds_are_a_value_error(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        check_seconds(name, value)


@pytest.mark.parametrize("name", ["delay", "lease"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.nan])
def test_non_finite_seconds_are_a_value_error(name: str, value: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        check_seconds(name, value)


@pytest.mark.parametrize("value", ["1", None, True, [1], decimal.Decimal(1)])
def test_non_number_seconds_are_a_type_error(value: object) -> None:
    with pytest.raises(TypeError, match="delay"):
        check_seconds("delay", value)


def test_zero_seconds_only_where_allowed() -> None:
    assert check_seconds("delay", 0) == 0.0
    with pytest.raises(ValueError, match="lease"):
        check_seconds("lease", 0, allow_zero=False)
    with pytest.raises(ValueError, match="lease"):
        check_seconds("lease", 0.0, allow_zero=False)


def test_seconds_are_normalised_to_float() -> None:
    value = check_seconds("delay", 3)
    assert value == 3.0
    assert isinstance(value, float)


# -- heartbeat -------------------------------------------------------------------------


@pytest.mark.parametrize(("heartbeat", "lease"), [(10, 3), (3, 3), (3.0001, 3)])
def test_a_heartbeat_not_shorter_than_the_lease_is_refused(heartbeat: float, lease: float) -> None:
    with pytest.raises(ValueError, match="shorter than the lease"):
        check_heartbeat(heartbeat, lease)


@pytest.mark.parametrize(("heartbeat", "lease"), [(2, 3), (1.51, 3), (200, 300)])
def test_a_heartbeat_above_half_the_lease_is_refused(heartbeat: float, lease: float) -> None:
    with pytest.raises(ValueError, match="at most half the lease"):
        check_heartbeat(heartbeat, lease)


@pytest.mark.parametrize(("heartbeat", "lease"), [(1.5, 3), (1, 3), (0.2, 1), (100, 300)])
def test_a_heartbeat_within_half_the_lease_is_accepted(heartbeat: float, lease: float) -> None:
    assert check_heartbeat(heartbeat, lease) == float(heartbeat)


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (-1, ValueError),
                                              (math.nan, ValueError), ("1", TypeError)])
def test_a_heartbeat_that_is_no_duration_is_refused(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="heartbeat"):
        check_heartbeat(value, 30.0)


# -- max_attempts ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, -100])
def test_max_attempts_below_one_is_a_value_error(value: int) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        check_max_attempts(value)


@pytest.mark.parametrize("value", [1.0, 2.5, "3", None, True, math.inf])
def test_non_int_max_attempts_is_a_type_error(value: object) -> None:
    with pytest.raises(TypeError, match="max_attempts"):
        check_max_attempts(value)


def test_max_attempts_of_one_and_more_is_accepted() -> None:
    assert check_max_attempts(1) == 1
    assert check_max_attempts(10) == 10


# -- backoff ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"),
    [(-1, ValueError), (math.nan, ValueError), (math.inf, ValueError), ("1", TypeError),
     (None, TypeError), (True, TypeError)],
)
def test_bad_backoff_is_refused(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="backoff"):
        check_backoff(value)


def test_numeric_backoff_is_the_same_for_every_attempt() -> None:
    backoff = check_backoff(2)
    assert backoff == 2.0
    assert backoff_seconds(backoff, 1) == 2.0
    assert backoff_seconds(backoff, 5) == 2.0


def test_callable_backoff_gets_the_attempt_count() -> None:
    seen: list[int] = []

    def backoff(attempts: int) -> float:
        seen.append(attempts)
        return attempts * 1.5

    checked = check_backoff(backoff)
    assert checked is backoff
    assert backoff_seconds(checked, 1) == 1.5
    assert backoff_seconds(checked, 3) == 4.5
    assert seen == [1, 3]


@pytest.mark.parametrize(
    ("answer", "error"),
    [(-1.0, ValueError), (math.nan, ValueError), (math.inf, ValueError), ("soon", TypeError)],
)
def test_callable_backoff_answer_is_checked(answer: object, error: type[Exception]) -> None:
    backoff = check_backoff(lambda attempts: answer)
    with pytest.raises(error, match="backoff"):
        backoff_seconds(backoff, 1)


# -- error text ------------------------------------------------------------------------


def test_short_error_text_is_kept_whole() -> None:
    assert truncate_error("boom") == "boom"
    text = "x" * MAX_ERROR_CHARS
    assert truncate_error(text) == text


def test_long_error_text_is_truncated_to_the_limit() -> None:
    truncated = truncate_error("x" * (MAX_ERROR_CHARS * 3))
    assert len(truncated) <= MAX_ERROR_CHARS
    assert truncated.endswith("[truncated]")


def test_error_text_is_bounded_in_utf8_bytes() -> None:
    # 4-byte characters: a character bound alone would allow 4x the bytes.
    truncated = truncate_error("\N{PILE OF POO}" * MAX_ERROR_CHARS)
    assert len(truncated.encode("utf-8")) <= MAX_ERROR_CHARS
    assert truncated.endswith("[truncated]")
    assert truncated.startswith("\N{PILE OF POO}")


def test_error_text_with_lone_surrogates_becomes_storable() -> None:
    text = truncate_error("cannot open /tmp/caf\udce9.txt")
    assert text.encode("utf-8")  # no UnicodeEncodeError
    assert text.startswith("cannot open /tmp/caf")


# -- tags, results, limits (issue 11) ---------------------------------------------------------


def test_check_tags_keeps_order_and_drops_repeats() -> None:
    assert check_tags(["b", "a", "b"]) == ("b", "a")
    assert check_tags(()) == ()


@pytest.mark.parametrize("tags, error", [
    ("abc", TypeError), (b"abc", TypeError), ({"a"}, TypeError), ([1], TypeError),
    ([""], ValueError), (["a\x00b"], ValueError), (["x" * 101], ValueError),
    ([str(i) for i in range(21)], ValueError),
])
def test_check_tags_refuses(tags: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        check_tags(tags)


def test_check_result() -> None:
    assert check_result({"n": [1, 2]}, 100) == {"n": [1, 2]}
    assert check_result(None, 100) is None
    with pytest.raises(InvalidJob, match="BSON"):
        check_result({1, 2}, 100)
    with pytest.raises(InvalidJob, match="keys may not"):
        check_result({"a.b": 1}, 100)
    with pytest.raises(InvalidJob, match="limit"):
        check_result("x" * MAX_RESULT_BYTES, 100)
    with pytest.raises(InvalidJob, match="next to its payload"):
        check_result("x" * 1000, 16 * 1024 * 1024 - 128 * 1024)


@pytest.mark.parametrize("limit, error", [(0, ValueError), (-1, ValueError), (True, TypeError),
                                          (1.5, TypeError), ("3", TypeError)])
def test_check_limit_refuses(limit: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        check_limit(limit)


@pytest.mark.parametrize("key, error", [
    ("", ValueError),
    ("a\x00b", ValueError),
    ("x" * (MAX_KEY_CHARS + 1), ValueError),
    (None, TypeError),
    (7, TypeError),
    (b"k", TypeError),
])
def test_bad_keys_are_refused(key: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        check_key(key)


def test_a_key_of_the_longest_length_is_accepted() -> None:
    assert check_key("x" * MAX_KEY_CHARS) == "x" * MAX_KEY_CHARS
