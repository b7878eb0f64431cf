"""Claim sizes (streamqueue.prefetch): pure decisions shared by the sync and asyncio workers."""

from __future__ import annotations

from streamqueue.prefetch import MAX_BUFFER, MAX_CLAIM, ClaimSizing


def test_a_fixed_batch_keeps_its_sizes() -> None:
    sizing = ClaimSizing(4, 16)
    assert sizing.capacity(backlog=False) == sizing.capacity(backlog=True) == 16
    assert sizing.want(0, backlog=False) == 16
    assert sizing.want(10, backlog=True) == 6
    # Topped up half a batch at a time, or whenever a slot is free.
    assert sizing.has_room(8, backlog=True) and not sizing.has_room(9, backlog=True)
    assert ClaimSizing(4, 2).want(1, backlog=True) == 2
    assert not ClaimSizing(4, 2).has_room(4, backlog=True)


def test_adaptive_claims_one_job_at_a_trickle() -> None:
    sizing = ClaimSizing(4)
    sizing.note_handler(0.0001)
    sizing.note_claim(0.002)
    assert sizing.want(0, backlog=False) == 1
    assert sizing.capacity(backlog=False) == 4
    assert not sizing.has_room(4, backlog=False)


def test_adaptive_buffers_what_the_slots_finish_during_one_claim_in_a_backlog() -> None:
    sizing = ClaimSizing(4)
    assert sizing.buffer(backlog=True) == 0  # nothing measured yet: no buffer
    sizing.note_claim(0.004)
    sizing.note_handler(0.002)
    # 4 slots x 4 ms / 2 ms: 8 jobs finish while one claim is in flight.
    assert sizing.buffer(backlog=True) == 8
    assert sizing.capacity(backlog=True) == 12
    assert sizing.want(0, backlog=True) == 12
    assert sizing.has_room(8, backlog=True) and not sizing.has_room(9, backlog=True)


def test_adaptive_buffer_is_capped_and_claims_stay_bounded() -> None:
    sizing = ClaimSizing(2)
    sizing.note_claim(0.005)
    sizing.note_handler(0.0)
    assert sizing.buffer(backlog=True) == MAX_BUFFER
    assert sizing.want(0, backlog=True) == MAX_CLAIM


def test_slow_handlers_get_no_buffer_so_their_jobs_stay_for_other_workers() -> None:
    sizing = ClaimSizing(4)
    sizing.note_claim(0.003)
    sizing.note_handler(1.0)
    assert sizing.buffer(backlog=True) == 0
    assert sizing.want(1, backlog=True) == 3  # still one claim for every free slot
    assert not sizing.has_room(4, backlog=True)


def test_running_means_follow_a_change_of_handler_speed() -> None:
    sizing = ClaimSizing(4)
    sizing.note_claim(0.004)
    for _ in range(50):
        sizing.note_handler(0.0005)
    assert sizing.buffer(backlog=True) == MAX_BUFFER
    for _ in range(50):
        sizing.note_handler(0.5)
    assert sizing.buffer(backlog=True) == 0


def test_coroutine_bounds_grow_with_the_slots_so_one_claim_loop_keeps_them_fed() -> None:
    sizing = ClaimSizing.for_coroutines(500)
    sizing.note_claim(0.010)
    sizing.note_handler(0.1)
    # 500 slots x 10 ms / 100 ms: 50 handlers finish while one claim is in flight;
    # the buffer covers three such claims.
    assert sizing.buffer(backlog=True) == 150
    assert sizing.want(0, backlog=True) == 500  # one claim fills the slots at the start
    assert sizing.want(500, backlog=True) == 150
    assert sizing.has_room(575, backlog=True) and not sizing.has_room(576, backlog=True)
    assert sizing.want(0, backlog=False) == 1  # a trickle is still one job per claim


def test_coroutine_buffer_is_at_most_the_slots() -> None:
    sizing = ClaimSizing.for_coroutines(500)
    sizing.note_claim(0.010)
    sizing.note_handler(0.0)
    assert sizing.buffer(backlog=True) == 500
    small = ClaimSizing.for_coroutines(2)
    small.note_claim(0.010)
    small.note_handler(0.0)
    assert small.buffer(backlog=True) == MAX_BUFFER and small.most == MAX_CLAIM


def test_a_fixed_batch_within_the_slots_of_coroutines_claims_once_a_quarter_is_free() -> None:
    sizing = ClaimSizing.for_coroutines(400, 400)
    assert sizing.has_room(0, backlog=True)
    assert not sizing.has_room(301, backlog=True) and sizing.has_room(300, backlog=True)
    assert ClaimSizing(4, 4).has_room(3, backlog=True)  # threads: a claim per free slot
    assert ClaimSizing.for_coroutines(4000, 4000).least_refill == 100


def test_claims_in_flight_let_a_backlog_hold_one_batch_per_claim() -> None:
    sizing = ClaimSizing(4, 8, claims_in_flight=2)
    assert (sizing.capacity(False), sizing.capacity(True)) == (8, 16)
    # One claim of 8 in flight and all slots busy: room for a second claim of 8.
    assert sizing.has_room(4 + 8, True) and sizing.want(4 + 8, True) == 4
    assert sizing.has_room(8, True) and sizing.want(8, True) == 8
    assert not sizing.has_room(16, True)
    # At a trickle it holds one batch, as without them.
    assert not sizing.has_room(8, False)


def test_coroutine_claims_in_flight_hold_one_batch_per_claim_beyond_the_slots() -> None:
    sizing = ClaimSizing.for_coroutines(4, 8, claims_in_flight=2)
    assert (sizing.capacity(False), sizing.capacity(True)) == (8, 16)
    # Within the slots the batch is what one claim asks, whatever is in flight.
    assert ClaimSizing.for_coroutines(500, 250, claims_in_flight=2).capacity(True) == 500
