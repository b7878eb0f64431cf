"""How wide a batch claim reads: wider after lost races, back to the head when alone."""

from __future__ import annotations

import random

import pytest

from streamqueue.storage.spread import MAX_SPREAD, ClaimSpread


def test_a_claim_that_never_loses_reads_exactly_the_head_in_order() -> None:
    spread = ClaimSpread(rng=random.Random(1))
    for _ in range(5):
        spread.note(lost=False)
    assert spread.read_limit(16) == 16
    assert spread.pick(list(range(16)), 16) == list(range(16))


def test_each_lost_round_doubles_the_window_up_to_the_cap() -> None:
    spread = ClaimSpread(cap=8)
    widths = []
    for _ in range(5):
        spread.note(lost=True)
        widths.append(spread.width)
    assert widths == [2, 4, 8, 8, 8]
    assert spread.read_limit(16) == 128
    assert ClaimSpread().cap == MAX_SPREAD


def test_rounds_that_lose_nothing_narrow_it_one_step_at_a_time() -> None:
    spread = ClaimSpread()
    for _ in range(3):
        spread.note(lost=True)
    assert spread.width == 8
    narrowed = []
    for _ in range(8):
        spread.note(lost=False)
        narrowed.append(spread.width)
    assert narrowed == [7, 6, 5, 4, 3, 2, 1, 1]


def test_a_wide_read_picks_what_was_asked_in_queue_order_and_varies_between_claims() -> None:
    spread = ClaimSpread(rng=random.Random(7))
    read = list(range(64))
    picks = [spread.pick(read, 16) for _ in range(20)]
    for picked in picks:
        assert len(picked) == 16 == len(set(picked))
        assert picked == sorted(picked)
        assert set(picked) <= set(read)
    assert len({tuple(p) for p in picks}) > 1, "every claim picked the same jobs"


def test_a_read_shorter_than_asked_is_taken_whole() -> None:
    assert ClaimSpread().pick(["a", "b"], 16) == ["a", "b"]


def test_the_cap_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="cap"):
        ClaimSpread(cap=0)
