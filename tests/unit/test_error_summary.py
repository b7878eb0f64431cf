"""The one line a failed attempt is logged with."""

from __future__ import annotations

import pytest

from streamqueue.queue import error_summary

TRACEBACK = """Traceback (most recent call last):
  File "app.py", line 3, in handle
    raise ValueError("bad row 7")
ValueError: bad row 7
"""


@pytest.mark.parametrize(("text", "summary"), [
    (TRACEBACK, "ValueError: bad row 7"),
    ("plain message", "plain message"),
    ("first\nsecond\n\n  \n", "second"),
    ("", "(no message)"),
])
def test_error_summary_is_text_not_a_list(text: str, summary: str) -> None:
    assert error_summary(text) == summary
