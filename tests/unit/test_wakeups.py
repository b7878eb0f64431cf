"""WakeupBoard: pure thread logic, driven by real threads and an injectable clock."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from streamqueue.aio.wakeups import AsyncWakeupBoard
from streamqueue.wakeups import Wake, WakeupBoard
from tests.helpers import Background, FakeClock, stays_false, wait_until

FAR = 1e9  # an "until" no test reaches


class RecordingClock:
    """The real monotonic clock, remembering which threads read it.

    ``WakeupBoard.wait`` reads the clock while holding its lock, right before it
    blocks; a thread that has read it once more than it had is blocked in (or
    past) the condition wait. That lets a test order threads without sleeping.
    """

    def __init__(self, base: Callable[[], float] = time.monotonic) -> None:
        self._base = base
        self._lock = threading.Lock()
        self.reads: dict[str, int] = {}

    def __call__(self) -> float:
        with self._lock:
            name = threading.current_thread().name
            self.reads[name] = self.reads.get(name, 0) + 1
        return self._base()

    def read_by(self, name: str) -> int:
        with self._lock:
            return self.reads.get(name, 0)


def waiter(board: WakeupBoard, until: Callable[[], float], name: str) -> Background:
    """A thread that registers, waits once, and keeps the Wake it got."""

    def run() -> Wake:
        with board.waiting():
            return board.wait(until())

    return Background(run, name=name).start()


def finished(threads: list[Background]) -> list[Background]:
    return [t for t in threads if t.done.is_set()]


@contextlib.contextmanager
def registered(board: WakeupBoard, count: int) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for _ in range(count):
            stack.enter_context(board.waiting())
        yield


# -- registration and permits ---------------------------------------------------------------


def test_waiting_counts_registered_waiters() -> None:
    board = WakeupBoard()
    assert board.waiters == 0
    with board.waiting():
        assert board.waiters == 1
        with board.waiting():
            assert board.waiters == 2
        assert board.waiters == 1
    assert board.waiters == 0


def test_waiting_unregisters_on_exception() -> None:
    board = WakeupBoard()
    with pytest.raises(RuntimeError), board.waiting():
        raise RuntimeError("handler failed")
    assert board.waiters == 0


def test_notify_without_waiters_is_not_kept() -> None:
    clock = FakeClock()
    board = WakeupBoard(clock=clock)
    board.notify(5)
    board.notify_all()
    with board.waiting():
        # Nobody was waiting for those signals: a later waiter must not see them.
        assert board.wait(clock()) is Wake.TIMEOUT


def test_permits_are_capped_at_the_number_of_waiters() -> None:
    clock = FakeClock()
    board = WakeupBoard(clock=clock)
    with registered(board, 2):
        board.notify(5)
        assert board.wait(clock()) is Wake.EVENT
        assert board.wait(clock()) is Wake.EVENT
        assert board.wait(clock()) is Wake.TIMEOUT


def test_leaving_drops_permits_beyond_the_remaining_waiters() -> None:
    clock = FakeClock()
    board = WakeupBoard(clock=clock)
    with board.waiting():
        with board.waiting():
            board.notify(2)
        # One waiter left: at most one permit survives.
        assert board.wait(clock()) is Wake.EVENT
        assert board.wait(clock()) is Wake.TIMEOUT


def test_no_lost_wakeup_between_an_empty_claim_and_the_wait() -> None:
    # The waiter registers, "claims" and finds nothing; the event arrives before
    # it calls wait(). The signal must be waiting for it.
    clock = FakeClock()
    board = WakeupBoard(clock=clock)
    with board.waiting():
        claimed_nothing = True
        board.notify(1)  # the stream's event, between the claim and the wait
        assert claimed_nothing
        assert board.wait(FAR) is Wake.EVENT


def test_no_lost_wakeup_across_threads() -> None:
    board = WakeupBoard()
    registered_event = threading.Event()
    notified = threading.Event()

    def consumer() -> Wake:
        with board.waiting():
            registered_event.set()
            # The empty claim takes a while; the notify lands meanwhile.
            assert notified.wait(10)
            return board.wait(time.monotonic() + 10)

    thread = Background(consumer, name="consumer").start()
    assert registered_event.wait(10)
    board.notify(1)
    notified.set()
    started = time.monotonic()
    assert thread.join(10) is Wake.EVENT
    assert time.monotonic() - started < 1.0


# -- one wake per notify -----------------------------------------------------------------------


def test_each_notify_wakes_exactly_one_blocked_waiter() -> None:
    clock = RecordingClock()
    board = WakeupBoard(clock=clock)
    names = [f"w{i}" for i in range(4)]
    threads = [waiter(board, lambda: time.monotonic() + 30, name) for name in names]
    # Every waiter is blocked in the board (each has read the clock inside wait()).
    assert wait_until(lambda: board.waiters == 4 and all(clock.read_by(n) >= 2 for n in names))

    board.notify(1)
    assert wait_until(lambda: len(finished(threads)) == 1)
    assert stays_false(lambda: len(finished(threads)) > 1, 0.2)
    assert finished(threads)[0].join() is Wake.EVENT

    board.notify(2)
    assert wait_until(lambda: len(finished(threads)) == 3)
    assert stays_false(lambda: len(finished(threads)) > 3, 0.2)

    board.notify_all()
    assert wait_until(lambda: len(finished(threads)) == 4)
    assert [t.join() for t in threads] == [Wake.EVENT] * 4


def test_notify_all_wakes_every_waiter_once() -> None:
    board = WakeupBoard()
    wakes: list[Wake] = []
    lock = threading.Lock()
    all_in = threading.Barrier(4)

    def run() -> None:
        with board.waiting():
            all_in.wait(10)
            wake = board.wait(time.monotonic() + 0.5)
            with lock:
                wakes.append(wake)
            # Waiting again right away: the notify_all must not wake it twice.
            second = board.wait(time.monotonic() + 0.3)
            with lock:
                wakes.append(second)

    threads = [Background(run, name=f"all{i}").start() for i in range(3)]
    all_in.wait(10)
    board.notify_all()
    for thread in threads:
        thread.join(10)
    assert wakes.count(Wake.EVENT) == 3
    assert wakes.count(Wake.TIMEOUT) == 3


def test_many_notifies_deliver_exactly_that_many_wakes() -> None:
    board = WakeupBoard()
    events = 0
    lock = threading.Lock()
    stop = threading.Event()
    n_threads, n_notifies = 4, 200

    def run() -> None:
        nonlocal events
        with board.waiting():
            while not stop.is_set():
                if board.wait(time.monotonic() + 0.05) is Wake.EVENT:
                    with lock:
                        events += 1

    threads = [Background(run, name=f"many{i}").start() for i in range(n_threads)]
    assert wait_until(lambda: board.waiters == n_threads)
    for sent in range(1, n_notifies + 1):
        board.notify(1)
        # One signal at a time, so the cap at the number of waiters never drops one.
        assert wait_until(lambda sent=sent: events == sent, 5), (sent, events)  # type: ignore[misc]
    stop.set()
    for thread in threads:
        thread.join(10)
    assert events == n_notifies


# -- timeouts ------------------------------------------------------------------------------------


def test_wait_times_out_at_until() -> None:
    board = WakeupBoard()
    with board.waiting():
        started = time.monotonic()
        assert board.wait(started + 0.1) is Wake.TIMEOUT
        assert time.monotonic() - started >= 0.1


def test_wait_with_until_in_the_past_returns_at_once() -> None:
    clock = FakeClock()
    board = WakeupBoard(clock=clock)
    with board.waiting():
        assert board.wait(clock() - 1) is Wake.TIMEOUT


# -- due timers ----------------------------------------------------------------------------------


def test_due_timer_wakes_exactly_one_waiter_fake_clock() -> None:
    clock = FakeClock()
    board = WakeupBoard(clock=clock)
    threads = [waiter(board, lambda: FAR, f"due{i}") for i in range(3)]
    assert wait_until(lambda: board.waiters == 3)
    board.schedule(5.0)
    assert board.pending_due() == 1
    assert stays_false(lambda: finished(threads), 0.1)

    clock.advance(5.0)
    board.set_polling(None)  # no change of mode; wakes every waiter to read the moved clock
    assert wait_until(lambda: len(finished(threads)) == 1)
    assert finished(threads)[0].join() is Wake.DUE
    assert stays_false(lambda: len(finished(threads)) > 1, 0.2)
    assert board.pending_due() == 0

    board.notify_all()
    for thread in threads:
        thread.join(10)


def test_due_timer_fires_on_time_with_the_real_clock() -> None:
    board = WakeupBoard()
    threads = [waiter(board, lambda: time.monotonic() + 10, f"real{i}") for i in range(3)]
    assert wait_until(lambda: board.waiters == 3)
    scheduled = time.monotonic()
    board.schedule(0.2)
    assert wait_until(lambda: len(finished(threads)) == 1, 5)
    first = finished(threads)[0]
    assert first.join() is Wake.DUE
    assert first.finished_at is not None
    assert 0.19 <= first.finished_at - scheduled < 1.0
    assert stays_false(lambda: len(finished(threads)) > 1, 0.3)
    board.notify_all()
    for thread in threads:
        thread.join(10)


def short_then_long_waiter() -> tuple[WakeupBoard, Background, Background]:
    """A waiter whose deadline is 0.2 s away, blocked first, then one whose deadline is 20 s away."""
    clock = RecordingClock()
    board = WakeupBoard(clock=clock)
    short = waiter(board, lambda: time.monotonic() + 0.2, "short")
    assert wait_until(lambda: clock.read_by("short") >= 2)
    long = waiter(board, lambda: time.monotonic() + 20, "long")
    assert wait_until(lambda: clock.read_by("long") >= 2)
    return board, short, long

def test_due_timer_reaches_a_waiter_that_stays_when_the_notified_one_leaves() -> None:
    # The first waiter has a short deadline; the second waits long. A due time
    # scheduled while both are blocked must still wake the second one on time,
    # even if the first (notified) waiter gives up before the job falls due.
    board, short, long = short_then_long_waiter()
    scheduled = time.monotonic()
    board.schedule(0.5)
    assert short.join(5) is Wake.TIMEOUT
    assert long.join(5) is Wake.DUE
    assert long.finished_at is not None
    assert long.finished_at - scheduled < 2.0


def test_a_gate_after_a_blocked_waiter_wakes_anyway_leaves_it_blocked() -> None:
    # A fleet member sets a gate on nearly every stream event: waking its waiters
    # each time, only for them to block again, was most of the event's CPU.
    clock = RecordingClock()
    board = WakeupBoard(clock=clock)
    blocked = waiter(board, lambda: time.monotonic() + 1.0, "blocked")
    assert wait_until(lambda: clock.read_by("blocked") >= 2)
    reads = clock.read_by("blocked")
    board.set_gate(time.monotonic() + 10)
    assert stays_false(lambda: clock.read_by("blocked") > reads, 0.3)
    board.set_gate(time.monotonic())  # before it wakes: it must be woken now
    assert blocked.join(5) is Wake.EVENT


def test_a_gate_left_to_a_waiter_that_leaves_reaches_the_one_that_stays() -> None:
    # "short" wakes before the gate, so setting it wakes no one; "short" then
    # leaves on its own deadline, and "long" must take the gate on time.
    board, short, long = short_then_long_waiter()
    gated = time.monotonic()
    board.set_gate(gated + 0.5)
    assert short.join(5) is Wake.TIMEOUT
    assert long.join(5) is Wake.EVENT
    assert long.finished_at is not None
    assert long.finished_at - gated < 2.0


def test_the_asyncio_board_hands_a_gate_on_like_the_thread_board() -> None:
    async def run() -> list[Wake]:
        board = AsyncWakeupBoard()

        async def wait(seconds: float) -> Wake:
            with board.waiting():
                return await board.wait_async(time.monotonic() + seconds)

        short = asyncio.create_task(wait(0.2))
        long = asyncio.create_task(wait(20))
        while board._blocked < 2:
            await asyncio.sleep(0.01)
        board.set_gate(time.monotonic() + 0.5)
        return [await short, await asyncio.wait_for(long, 5)]

    assert asyncio.run(run()) == [Wake.TIMEOUT, Wake.EVENT]

def test_due_time_in_the_past_wakes_at_once() -> None:
    clock = FakeClock()
    board = WakeupBoard(clock=clock)
    board.schedule(0.0)
    with board.waiting():
        assert board.wait(FAR) is Wake.DUE
        assert board.wait(clock()) is Wake.TIMEOUT


def test_the_same_due_time_learnt_twice_is_one_timer() -> None:
    clock = FakeClock()
    board = WakeupBoard(clock=clock)
    board.schedule(5.0)
    board.schedule(5.0 + WakeupBoard.DUE_TOLERANCE / 2)
    assert board.pending_due() == 1
    board.schedule(6.0)
    board.schedule(4.0)
    assert board.pending_due() == 3


def test_due_timers_fire_in_order() -> None:
    clock = FakeClock()
    board = WakeupBoard(clock=clock)
    board.schedule(3.0)
    board.schedule(1.0)
    with board.waiting():
        clock.advance(1.0)
        assert board.wait(FAR) is Wake.DUE
        assert board.pending_due() == 1
        assert board.wait(clock()) is Wake.TIMEOUT
        clock.advance(2.0)
        assert board.wait(FAR) is Wake.DUE
    assert board.pending_due() == 0


def test_an_event_is_handed_out_before_a_due_timer() -> None:
    clock = FakeClock()
    board = WakeupBoard(clock=clock)
    board.schedule(0.0)
    with board.waiting():
        board.notify(1)
        assert board.wait(FAR) is Wake.EVENT
        assert board.wait(FAR) is Wake.DUE


# -- polling mode ------------------------------------------------------------------------------


def test_polling_mode_wakes_each_waiter_every_interval() -> None:
    clock = FakeClock()
    board = WakeupBoard(clock=clock)
    assert not board.polling
    board.set_polling(1.0)
    assert board.polling
    threads = [waiter(board, lambda: FAR, f"poll{i}") for i in range(2)]
    assert wait_until(lambda: board.waiters == 2)
    assert stays_false(lambda: finished(threads), 0.1)
    clock.advance(1.0)
    board.set_polling(1.0)  # same interval; wakes the waiters to read the clock
    assert wait_until(lambda: len(finished(threads)) == 2)
    assert [t.join() for t in threads] == [Wake.POLL, Wake.POLL]


def test_polling_with_the_real_clock() -> None:
    board = WakeupBoard()
    board.set_polling(0.1)
    with board.waiting():
        started = time.monotonic()
        assert board.wait(started + 10) is Wake.POLL
        elapsed = time.monotonic() - started
        assert 0.09 <= elapsed < 1.0
        # A deadline before the next poll wins.
        assert board.wait(time.monotonic() + 0.02) is Wake.TIMEOUT


def test_entering_polling_mode_wakes_blocked_waiters() -> None:
    board = WakeupBoard()
    thread = waiter(board, lambda: time.monotonic() + 20, "blocked")
    assert wait_until(lambda: board.waiters == 1)
    started = time.monotonic()
    board.set_polling(0.05)
    assert thread.join(5) is Wake.POLL
    assert time.monotonic() - started < 1.0


def test_leaving_polling_mode() -> None:
    clock = FakeClock()
    board = WakeupBoard(clock=clock)
    board.set_polling(1.0)
    board.set_polling(None)
    assert not board.polling
    with board.waiting():
        assert board.wait(clock() + 0.0) is Wake.TIMEOUT


# -- pausing the stream while nobody waits --------------------------------------------------


def idle_board() -> tuple[FakeClock, WakeupBoard]:
    """A board nobody has waited on for 10 s: any pause up to that is allowed."""
    clock = FakeClock()
    board = WakeupBoard(clock=clock)
    clock.advance(10.0)
    return clock, board


def test_pause_needs_idle_for_seconds_since_the_board_was_made() -> None:
    clock = FakeClock()
    board = WakeupBoard(clock=clock)
    assert not board.try_pause(2.0)
    clock.advance(1.9)
    assert not board.try_pause(2.0)
    clock.advance(0.1)
    assert board.try_pause(2.0)
    assert board.paused


def test_no_pause_while_a_waiter_is_blocked() -> None:
    clock = RecordingClock()
    board = WakeupBoard(clock=clock)
    thread = waiter(board, lambda: FAR, "blocked")
    # Two clock reads: the start of wait() and the one right before it blocks.
    assert wait_until(lambda: clock.read_by("blocked") >= 2)
    assert not board.try_pause(0.0)
    board.notify(1)
    assert thread.join(5) is Wake.EVENT
    assert board.try_pause(0.0)


def test_a_waiter_that_blocked_recently_keeps_the_stream() -> None:
    clock, board = idle_board()
    with board.waiting():
        assert board.wait(clock()) is Wake.TIMEOUT  # returns at once: no block
        assert board.try_pause(2.0)
    board.unpause()
    thread = waiter(board, lambda: FAR, "blocks")
    assert wait_until(lambda: board.waiters == 1)
    board.notify(1)
    assert thread.join(5) is Wake.EVENT
    # It blocked just now: two seconds must pass before the stream may close.
    assert not board.try_pause(2.0)
    clock.advance(2.0)
    assert board.try_pause(2.0)


def test_no_pause_while_polling_stands_in_for_the_stream() -> None:
    _, board = idle_board()
    board.set_polling(1.0)
    assert not board.try_pause(2.0)


def test_a_paused_board_tells_a_waiter_to_resume_instead_of_blocking() -> None:
    _, board = idle_board()
    assert board.try_pause(2.0)
    with board.waiting():
        assert board.wait(FAR) is Wake.RESUME
        # Still paused until the watcher reopens the stream: resume again.
        assert board.wait(FAR) is Wake.RESUME


def test_a_signal_or_due_time_is_handed_out_before_resume() -> None:
    _, board = idle_board()
    with board.waiting():
        board.notify(1)
        board.schedule(0.0)
        assert board.try_pause(2.0)
        assert board.wait(FAR) is Wake.EVENT
        assert board.wait(FAR) is Wake.DUE
        assert board.wait(FAR) is Wake.RESUME


def test_a_waiter_past_its_deadline_times_out_rather_than_resume() -> None:
    clock, board = idle_board()
    assert board.try_pause(2.0)
    with board.waiting():
        assert board.wait(clock()) is Wake.TIMEOUT


def test_unpause_makes_every_registered_waiter_claim_once() -> None:
    # A waiter whose empty claim ran while the stream was closed may start
    # to wait only after it reopened; its permit covers the gap.
    clock, board = idle_board()
    with registered(board, 3):
        assert board.try_pause(2.0)
        board.unpause()
        assert not board.paused
        assert [board.wait(clock()) for _ in range(4)] == [Wake.EVENT] * 3 + [Wake.TIMEOUT]


def test_unpause_of_a_board_that_was_not_paused_changes_nothing() -> None:
    clock = FakeClock()
    board = WakeupBoard(clock=clock)
    with board.waiting():
        board.unpause()
        assert board.wait(clock()) is Wake.TIMEOUT


def test_a_blocked_waiter_is_not_woken_by_a_pause() -> None:
    # The pause cannot happen while it blocks; once it is released by its own
    # signal it claims, and only a later wait sees the pause.
    fake = FakeClock()
    clock = RecordingClock(fake)
    board = WakeupBoard(clock=clock)
    fake.advance(10.0)
    thread = waiter(board, lambda: FAR, "blocked")
    assert wait_until(lambda: clock.read_by("blocked") >= 2)
    assert stays_false(lambda: board.try_pause(0.0), 0.1)
    board.notify(1)
    assert thread.join(5) is Wake.EVENT


def test_may_pause_agrees_with_try_pause() -> None:
    clock = FakeClock()
    board = WakeupBoard(clock=clock)
    assert not board.may_pause(2.0)
    assert not board.try_pause(2.0)
    clock.advance(2.0)
    assert board.may_pause(2.0)
    assert board.try_pause(2.0)
