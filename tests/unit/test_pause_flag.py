"""PauseFlag: when a queue object trusts what it knows of the pause switch."""

from __future__ import annotations

from streamqueue.pause import RECHECK, PauseFlag
from tests.helpers import FakeClock


class Switch:
    def __init__(self) -> None:
        self.value = False
        self.reads = 0
        self.epoch: int | None = None
        self.during_read: PauseFlag | None = None

    def read(self) -> bool:
        self.reads += 1
        value = self.value
        if self.during_read is not None:
            # A resume event lands while this (older) read is on the wire.
            self.during_read.heard(False)
        return value


def flag(switch: Switch, clock: FakeClock) -> PauseFlag:
    return PauseFlag(switch.read, lambda: switch.epoch, clock)


def test_without_a_stream_the_switch_is_read_again_after_recheck() -> None:
    switch, clock = Switch(), FakeClock()
    pause = flag(switch, clock)
    assert pause.paused() is False
    switch.value = True
    assert pause.paused() is False and switch.reads == 1
    clock.advance(RECHECK)
    assert pause.paused() is True and switch.reads == 2


def test_a_value_read_while_a_stream_is_open_is_trusted_until_it_closes() -> None:
    switch, clock = Switch(), FakeClock()
    switch.epoch = 1
    pause = flag(switch, clock)
    assert pause.paused() is False
    clock.advance(60)
    assert pause.paused() is False and switch.reads == 1
    switch.epoch = 2  # a new stream: changes between the two were not seen
    switch.value = True
    assert pause.paused() is True and switch.reads == 2


def test_an_event_sets_the_value_without_a_read() -> None:
    switch, clock = Switch(), FakeClock()
    switch.epoch = 1
    pause = flag(switch, clock)
    pause.heard(True)
    assert pause.paused() is True and switch.reads == 0
    pause.heard(False)
    assert pause.paused() is False


def test_an_event_during_a_read_wins_over_the_read() -> None:
    switch, clock = Switch(), FakeClock()
    switch.epoch = 1
    switch.value = True
    pause = flag(switch, clock)
    switch.during_read = pause
    assert pause.paused() is False


def test_forget_makes_the_next_look_read() -> None:
    switch, clock = Switch(), FakeClock()
    switch.epoch = 1
    pause = flag(switch, clock)
    pause.paused()
    pause.forget()
    pause.paused()
    assert switch.reads == 2


def test_a_value_read_before_the_stream_opened_is_read_again_once_it_is_open() -> None:
    # A resume made between the read and the stream's opening comes as no event.
    switch, clock = Switch(), FakeClock()
    pause = flag(switch, clock)
    switch.value = True
    assert pause.paused() is True
    switch.value = False  # resumed before the stream opened
    switch.epoch = 1
    assert pause.paused() is False and switch.reads == 2
