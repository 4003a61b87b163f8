"""How fast, and when, a backfill pulls studies: a rate limit and a daily time window.

The rate is studies per minute: the next study starts no sooner than ``60 / rate``
seconds after the previous one started. The window is a local time of day, ``HH:MM-HH:MM``,
which may pass midnight (``20:00-06:00``); outside it nothing starts. A study started
inside the window is finished even when the window closes meanwhile.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TimeWindow:
    start: dt.time
    end: dt.time

    @classmethod
    def parse(cls, text: str) -> TimeWindow:
        """``HH:MM-HH:MM`` (validated in the settings; ValueError otherwise)."""
        first, _, second = text.partition("-")
        return cls(dt.time.fromisoformat(first.strip()), dt.time.fromisoformat(second.strip()))

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def contains(self, moment: dt.datetime) -> bool:
        now = moment.time()
        if self.start == self.end:
            return True  # all day
        if self.start < self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end

    def opens_in(self, moment: dt.datetime) -> float:
        """Seconds from ``moment`` until the window is open (0 when it is)."""
        if self.contains(moment):
            return 0.0
        opening = moment.replace(
            hour=self.start.hour, minute=self.start.minute, second=0, microsecond=0
        )
        if opening <= moment:
            opening += dt.timedelta(days=1)
        return (opening - moment).total_seconds()


@dataclass(frozen=True, slots=True)
class Wait:
    seconds: float
    #: ``rate`` or ``window``; empty when there is nothing to wait for.
    why: str = ""

    def __bool__(self) -> bool:
        return self.seconds > 0


class Pacing:
    """Decides when the next study may start (``clock``: epoch seconds; ``local``: the
    local date and time of an epoch time, for the window)."""

    def __init__(
        self,
        studies_per_minute: float | None,
        window: TimeWindow | None,
        *,
        clock: Callable[[], float] = time.time,
        local: Callable[[float], dt.datetime] = dt.datetime.fromtimestamp,
    ) -> None:
        self.interval = 60.0 / studies_per_minute if studies_per_minute else 0.0
        self.window = window
        self._clock = clock
        self._local = local
        self._last_start: float | None = None

    def wait(self) -> Wait:
        """How long until the next study may start, and why."""
        now = self._clock()
        if self.window is not None:
            closed = self.window.opens_in(self._local(now))
            if closed > 0:
                return Wait(closed, "window")
        if self._last_start is not None:
            left = self._last_start + self.interval - now
            if left > 0:
                return Wait(left, "rate")
        return Wait(0.0)

    def started(self) -> None:
        """A study starts now."""
        self._last_start = self._clock()
