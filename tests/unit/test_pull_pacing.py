"""A backfill's pace: studies per minute, and only inside its daily time window."""

from __future__ import annotations

import datetime as dt

import pytest

from node_services.retrieve.pacing import Pacing, TimeWindow

MIDNIGHT = dt.datetime(2024, 3, 1, 0, 0)


class Clock:
    def __init__(self, at: dt.datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def at(hour: int, minute: int = 0) -> dt.datetime:
    return MIDNIGHT.replace(hour=hour, minute=minute)


def test_a_window_that_passes_midnight_is_open_late_and_early_but_not_at_noon() -> None:
    window = TimeWindow.parse("20:00-06:00")
    assert window.contains(at(23, 30))
    assert window.contains(at(5, 59))
    assert not window.contains(at(12))
    assert not window.contains(at(6))


def test_a_closed_window_says_how_long_until_it_opens() -> None:
    window = TimeWindow.parse("20:00-06:00")
    assert window.opens_in(at(12)) == 8 * 3600
    assert window.opens_in(at(21)) == 0
    # After today's opening has passed and the window closed: tomorrow's, for a day window.
    assert TimeWindow.parse("08:00-09:00").opens_in(at(10)) == 22 * 3600


def test_the_first_study_starts_at_once_and_the_next_after_the_interval() -> None:
    clock = Clock(at(12))
    pacing = Pacing(4, None, clock=clock)
    assert not pacing.wait()
    pacing.started()
    wait = pacing.wait()
    assert (wait.seconds, wait.why) == (15, "rate")
    clock.advance(15)
    assert not pacing.wait()


def test_outside_the_window_nothing_starts_whatever_the_rate() -> None:
    clock = Clock(at(12))
    pacing = Pacing(
        60, TimeWindow.parse("20:00-06:00"), clock=clock, local=dt.datetime.fromtimestamp
    )
    wait = pacing.wait()
    assert wait.why == "window"
    assert wait.seconds == pytest.approx(8 * 3600)
    clock.advance(wait.seconds)
    assert not pacing.wait()


def test_no_rate_means_no_wait_between_studies() -> None:
    pacing = Pacing(None, None, clock=Clock(at(12)))
    pacing.started()
    assert not pacing.wait()
