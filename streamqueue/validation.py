"""Checks on what callers hand the queue, done before anything is written.

Pure functions: each returns the normalised value or raises ``InvalidJob``
(a ``ValueError``) or ``TypeError`` with a message naming the bad input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import bson
from bson.errors import InvalidDocument

from streamqueue.errors import InvalidJob

# MongoDB's document limit, less room for the queue's own fields and the
# error text a failed job carries.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
MAX_PAYLOAD_BYTES = MAX_DOCUMENT_BYTES - 128 * 1024
MAX_ERROR_CHARS = 32 * 1024
# A kept result lives in the job's document, next to its payload.
MAX_RESULT_BYTES = 1024 * 1024
# Tags are labels for listing, not data.
MAX_TAGS = 20
MAX_TAG_CHARS = 100

Backoff = float | Callable[[int], float]


def check_payload(payload: object) -> dict[str, Any]:
    if not isinstance(payload, Mapping):
        raise TypeError(f"payload must be a mapping (dict), not {type(payload).__name__}")
    _check_keys(payload, "payload")
    try:
        size = len(bson.encode(payload))
    except (InvalidDocument, TypeError, OverflowError) as exc:
        raise InvalidJob(f"payload cannot be stored as BSON: {exc}") from exc
    if size > MAX_PAYLOAD_BYTES:
        raise InvalidJob(
            f"payload is {size} bytes encoded; the limit is {MAX_PAYLOAD_BYTES} bytes"
        )
    return dict(payload)


def _check_keys(value: object, path: str) -> None:
    # Keys starting with "$" or holding "." are legal in MongoDB 5.0+ but break
    # queries and updates on those fields, so a queue refuses them up front.
    if isinstance(value, Mapping):
        for key, inner in value.items():
            if not isinstance(key, str):
                raise InvalidJob(f"{path} has a non-string key {key!r}")
            if key.startswith("$") or "." in key or "\x00" in key:
                raise InvalidJob(f"{path} has key {key!r}: keys may not start with '$' "
                                 "or contain '.' or NUL")
            _check_keys(inner, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, inner in enumerate(value):
            _check_keys(inner, f"{path}[{index}]")


def check_priority(priority: object) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"priority must be an int, not {type(priority).__name__}")
    if not -(2**63) <= priority < 2**63:
        raise ValueError(f"priority {priority} does not fit in 64 bits")
    return priority


def resolve_priority(payload: Mapping[str, Any], priority: object) -> int:
    """An explicit priority wins; else the payload's own ``"priority"`` (as in mongoqueue)."""
    if priority is None:
        priority = payload.get("priority", 0)
    return check_priority(priority)


def check_seconds(name: str, value: object, *, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"{name} must be finite, not {value!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "more than zero"
        raise ValueError(f"{name} must be {bound} seconds, not {value!r}")
    return seconds


# The longest heartbeat allowed, as a share of the lease. At half the lease one
# beat can fail (a cut connection, a short election) and the next still lands
# before the lease runs out; the default, a third, leaves a third to spare.
MAX_HEARTBEAT_SHARE = 0.5


def check_heartbeat(heartbeat: object, lease: float) -> float:
    """A heartbeat well inside the lease: more than zero and at most half of it."""
    seconds = check_seconds("heartbeat", heartbeat, allow_zero=False)
    if seconds >= lease:
        raise ValueError(
            f"heartbeat ({seconds:g}s) must be shorter than the lease ({lease:g}s): otherwise "
            "leases run out between beats and another consumer runs the same job at once")
    if seconds > lease * MAX_HEARTBEAT_SHARE:
        raise ValueError(
            f"heartbeat ({seconds:g}s) must be at most half the lease ({lease:g}s), so a "
            "lease survives one failed beat; the default is a third of the lease")
    return seconds


def check_max_attempts(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_attempts must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"max_attempts must be at least 1, not {value}")
    return value


def check_backoff(backoff: object) -> Backoff:
    if callable(backoff):
        return backoff
    return check_seconds("backoff", backoff)


def backoff_seconds(backoff: Backoff, attempts: int) -> float:
    """The delay before attempt ``attempts + 1``; a callable's answer is checked too."""
    if callable(backoff):
        return check_seconds("backoff(attempts)", backoff(attempts))
    return backoff


def truncate_error(message: str) -> str:
    # Bounded in UTF-8 bytes, not characters: 4-byte characters would otherwise
    # fill the whole room the payload limit leaves. Lone surrogates (from
    # undecodable file names in a traceback) cannot be stored in BSON: replaced.
    encoded = message.encode("utf-8", "replace")
    if len(encoded) <= MAX_ERROR_CHARS:
        return encoded.decode("utf-8")
    return encoded[: MAX_ERROR_CHARS - 20].decode("utf-8", "ignore") + "\n...[truncated]"


# A TTL index's expireAfterSeconds is a 32-bit int (about 68 years).
MAX_KEEP_SECONDS = 2**31 - 1


def check_keep(value: object) -> float:
    seconds = check_seconds("keep_completed", value)
    if seconds > MAX_KEEP_SECONDS:
        raise ValueError(f"keep_completed must be at most {MAX_KEEP_SECONDS} seconds (a TTL "
                         f"index's limit), not {value!r}")
    return seconds


def check_tags(tags: object) -> tuple[str, ...]:
    """A list (or tuple) of up to ``MAX_TAGS`` non-empty strings of up to ``MAX_TAG_CHARS``."""
    if isinstance(tags, str | bytes) or not isinstance(tags, list | tuple):
        raise TypeError(f"tags must be a list of strings, not {type(tags).__name__}")
    if len(tags) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags, not {len(tags)}")
    for tag in tags:
        check_tag(tag)
    # Order kept, repeats dropped: a tag is a label, present or not.
    return tuple(dict.fromkeys(tags))


def check_tag(tag: object) -> str:
    return check_text("a tag", tag, MAX_TAG_CHARS)


def check_text(what: str, value: object, max_chars: int) -> str:
    """A non-empty str of up to ``max_chars`` without NUL (a label, a key, a name)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value or len(value) > max_chars or "\x00" in value:
        raise ValueError(f"{what} must be 1 to {max_chars} characters without NUL, "
                         f"not {value!r}")
    return value


# A unique key is an index key: short enough to index on any server version.
MAX_KEY_CHARS = 512


def check_key(key: object) -> str:
    """A job's unique key: a non-empty str of up to ``MAX_KEY_CHARS`` without NUL."""
    return check_text("key", key, MAX_KEY_CHARS)


def check_result(result: object, payload_bytes: int) -> Any:
    """A completed job's result: BSON-encodable, at most ``MAX_RESULT_BYTES`` encoded,
    and room for it next to the job's payload."""
    _check_keys(result, "result")
    try:
        size = len(bson.encode({"result": result}))
    except (InvalidDocument, TypeError, OverflowError) as exc:
        raise InvalidJob(f"result cannot be stored as BSON: {exc}") from exc
    if size > MAX_RESULT_BYTES:
        raise InvalidJob(f"result is {size} bytes encoded; the limit is {MAX_RESULT_BYTES} bytes")
    if size + payload_bytes > MAX_PAYLOAD_BYTES:
        raise InvalidJob(f"result ({size} bytes) does not fit in the job's document next to "
                         f"its payload ({payload_bytes} bytes)")
    return result


def check_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, not {type(limit).__name__}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    return limit
