"""Which unique index refused an insert: an ``_id`` duplicate is "already written", a key's is not."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.errors import DuplicateKeyError

from streamqueue.storage import _is_duplicate_id, _is_duplicate_key

ID_MESSAGE = 'E11000 duplicate key error collection: db.q index: _id_ dup key: { _id: 1 }'
KEY_MESSAGE = 'E11000 duplicate key error collection: db.q index: key_active dup key: { key: "k" }'


@pytest.mark.parametrize("error, is_id", [
    ({"code": 11000, "keyPattern": {"_id": 1}, "errmsg": ID_MESSAGE}, True),
    ({"code": 11000, "keyPattern": {"key": 1}, "errmsg": KEY_MESSAGE}, False),
    ({"code": 11000, "errmsg": ID_MESSAGE}, True),
    ({"code": 11000, "errmsg": KEY_MESSAGE}, False),  # an old server's reply, no keyPattern
    ({"code": 11000}, True),
    ({"code": 121, "keyPattern": {"_id": 1}}, False),
])
def test_an_id_duplicate_is_told_from_a_key_duplicate(error: dict[str, Any], is_id: bool) -> None:
    assert _is_duplicate_id(error) is is_id


@pytest.mark.parametrize("details, is_key", [
    ({"code": 11000, "keyPattern": {"key": 1}, "errmsg": KEY_MESSAGE}, True),
    ({"code": 11000, "errmsg": KEY_MESSAGE}, True),
    ({"code": 11000, "keyPattern": {"_id": 1}, "errmsg": ID_MESSAGE}, False),
    ({"code": 11000, "errmsg": ID_MESSAGE}, False),
    ({"code": 11000}, False),
])
def test_a_key_duplicate_is_recognised(details: dict[str, Any], is_key: bool) -> None:
    assert _is_duplicate_key(DuplicateKeyError("dup", 11000, details)) is is_key


def test_other_errors_are_not_key_duplicates() -> None:
    assert not _is_duplicate_key(ValueError("x"))
    assert not _is_duplicate_key(None)
