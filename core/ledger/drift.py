"""What each model produced, week by week: the distribution of its segmentation volumes
and of its classification probabilities, so that drift (a scanner changed, a new model
version, a population shift) shows on the dashboard.

A job counts in the ISO week (Monday 00:00 UTC) in which it last changed to DONE
(``jobs.updated_at``). Only jobs that ended **DONE** count: results delivered (flagged ones
included) are one series per model and version; **shadow** jobs (results kept in the node,
not delivered) are a series of their own. Held for review, failed and not applicable jobs
do not count: their results are not what the PACS received.

Volumes are the job result's ``measurements_ml`` (per segment, and ``total``, their sum);
probabilities are each film's ``images[i]["probabilities"]`` (per class), with the share of
films whose most probable class is each class. Quantiles are computed here, in Python, by
linear interpolation between order statistics (NumPy's default, "type 7").

Bounded like the other read models: DONE jobs of a window of whole weeks are read through
``ix_jobs_state_updated_at``, newest first, at most ``max_jobs`` of them; when the cap is
reached the reading says so (``truncated``) and its oldest week is incomplete.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from core.jobs import JobState
from core.ledger.base import LedgerBase
from core.ledger.schema import jobs_table

#: The volume of all segments of a job together.
TOTAL = "total"
#: Weeks shown unless asked otherwise, and the most that may be asked for.
DEFAULT_WEEKS = 12
MAX_WEEKS = 104
#: Jobs read at most for one reading (newest first).
DEFAULT_MAX_JOBS = 50_000
_WEEK = 7 * 86_400.0


@dataclass(frozen=True, slots=True)
class Distribution:
    """The spread of some values: their count, 5th/25th/50th/75th/95th percentiles."""

    n: int
    p5: float
    q1: float
    median: float
    q3: float
    p95: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Distribution:
        """The distribution of ``values`` (at least one).

        Raises:
            ValueError: ``values`` is empty.
        """
        ordered = sorted(values)
        if not ordered:
            raise ValueError("a distribution needs at least one value")
        return cls(
            n=len(ordered),
            p5=quantile(ordered, 0.05),
            q1=quantile(ordered, 0.25),
            median=quantile(ordered, 0.5),
            q3=quantile(ordered, 0.75),
            p95=quantile(ordered, 0.95),
            low=ordered[0],
            high=ordered[-1],
        )

    def as_dict(self) -> dict[str, float | int]:
        return {
            "n": self.n,
            "p5": self.p5,
            "q1": self.q1,
            "median": self.median,
            "q3": self.q3,
            "p95": self.p95,
            "min": self.low,
            "max": self.high,
        }


def quantile(ordered: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of sorted values, interpolating linearly between order
    statistics (NumPy's default)."""
    position = (len(ordered) - 1) * fraction
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


@dataclass(frozen=True, slots=True)
class WeekDrift:
    """One model's results in one ISO week."""

    #: ``2026-W49``, and its Monday 00:00 UTC (epoch seconds).
    week: str
    start: float
    jobs: int
    #: Films with probabilities (classification), counted once each.
    images: int
    volumes: dict[str, Distribution]
    probabilities: dict[str, Distribution]
    #: Per class, the share of films whose most probable class it is (0..1).
    top_class: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "week": self.week,
            "start": self.start,
            "jobs": self.jobs,
            "images": self.images,
            "volumes_ml": {k: v.as_dict() for k, v in self.volumes.items()},
            "probabilities": {k: v.as_dict() for k, v in self.probabilities.items()},
            "top_class_share": self.top_class,
        }


@dataclass(frozen=True, slots=True)
class ModelDrift:
    """One model version's results week by week (weeks without jobs left out)."""

    model_id: str
    #: ``model_version`` of the job results (``?`` where a result has none).
    version: str
    #: Shadow jobs (results kept in the node) rather than delivered ones.
    shadow: bool
    weeks: list[WeekDrift]

    @property
    def segments(self) -> list[str]:
        """Segment names seen in any week, ``total`` first."""
        names = {name for week in self.weeks for name in week.volumes}
        return sorted(names, key=lambda name: (name != TOTAL, name))

    @property
    def classes(self) -> list[str]:
        return sorted({name for week in self.weeks for name in week.probabilities})

    @property
    def jobs(self) -> int:
        return sum(week.jobs for week in self.weeks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "model_version": self.version,
            "shadow": self.shadow,
            "jobs": self.jobs,
            "weeks": [week.as_dict() for week in self.weeks],
        }


@dataclass(frozen=True, slots=True)
class DriftReading:
    """Every model's weekly results in a window of whole ISO weeks."""

    #: The Monday 00:00 UTC of each week of the window, oldest first, and their names.
    week_starts: list[float]
    week_names: list[str]
    #: Per model id, version, delivered then shadow.
    models: list[ModelDrift] = field(default_factory=list)
    jobs_read: int = 0
    #: The job cap was reached: the oldest weeks are incomplete.
    truncated: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "weeks": self.week_names,
            "since": self.week_starts[0] if self.week_starts else None,
            "jobs_read": self.jobs_read,
            "truncated": self.truncated,
            "counted": "jobs that ended DONE; shadow jobs separately (shadow: true)",
            "models": [model.as_dict() for model in self.models],
        }


def week_start(at: float) -> float:
    """The Monday 00:00 UTC of the ISO week holding ``at`` (epoch seconds)."""
    day = datetime.fromtimestamp(at, UTC).date()
    monday = day - timedelta(days=day.weekday())
    return datetime(monday.year, monday.month, monday.day, tzinfo=UTC).timestamp()


def week_name(start: float) -> str:
    year, week, _ = datetime.fromtimestamp(start, UTC).isocalendar()
    return f"{year}-W{week:02d}"


@dataclass(slots=True)
class _Week:
    jobs: int = 0
    volumes: dict[str, list[float]] = field(default_factory=dict)
    probabilities: dict[str, list[float]] = field(default_factory=dict)
    top: dict[str, int] = field(default_factory=dict)
    images: int = 0

    def add(self, result: Mapping[str, Any]) -> None:
        self.jobs += 1
        measured = result.get("measurements_ml")
        if isinstance(measured, Mapping):
            volumes = {str(k): float(v) for k, v in measured.items() if _number(v)}
            if volumes:
                volumes[TOTAL] = sum(volumes.values())
            for name, value in volumes.items():
                self.volumes.setdefault(name, []).append(value)
        images = result.get("images")
        for image in images if isinstance(images, list) else ():
            given = image.get("probabilities") if isinstance(image, Mapping) else None
            if not isinstance(given, Mapping):
                continue
            probabilities = {str(k): float(v) for k, v in given.items() if _number(v)}
            if not probabilities:
                continue
            self.images += 1
            for name, value in probabilities.items():
                self.probabilities.setdefault(name, []).append(value)
            top = max(sorted(probabilities), key=lambda name: probabilities[name])
            self.top[top] = self.top.get(top, 0) + 1

    def drift(self, start: float) -> WeekDrift:
        return WeekDrift(
            week=week_name(start),
            start=start,
            jobs=self.jobs,
            images=self.images,
            volumes={k: Distribution.of(v) for k, v in sorted(self.volumes.items())},
            probabilities={k: Distribution.of(v) for k, v in sorted(self.probabilities.items())},
            top_class={
                name: self.top.get(name, 0) / self.images
                for name in sorted(self.probabilities)
                if self.images
            },
        )


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class Drift(LedgerBase):
    """Each model's results week by week. Safe to share between threads."""

    def model_drift(
        self,
        *,
        now: float,
        weeks: int = DEFAULT_WEEKS,
        max_jobs: int = DEFAULT_MAX_JOBS,
    ) -> DriftReading:
        """The weekly distributions of the last ``weeks`` ISO weeks up to ``now`` (the
        current week included), from at most ``max_jobs`` DONE jobs, newest first.

        Raises:
            ValueError: ``weeks`` is not 1..:data:`MAX_WEEKS` or ``max_jobs`` below 1.
        """
        if not 1 <= weeks <= MAX_WEEKS:
            raise ValueError(f"weeks: 1 to {MAX_WEEKS}, not {weeks}")
        if max_jobs < 1:
            raise ValueError(f"max_jobs: at least 1, not {max_jobs}")
        current = week_start(now)
        # UTC has no daylight saving: every week is seven days of 86,400 s.
        starts = [current - (weeks - 1 - i) * _WEEK for i in range(weeks)]
        groups: dict[tuple[str, str, bool], dict[float, _Week]] = {}
        read = 0
        truncated = False
        query = (
            select(
                jobs_table.c.model_id,
                jobs_table.c.shadow,
                jobs_table.c.updated_at,
                jobs_table.c.result,
            )
            .where(jobs_table.c.state == JobState.DONE.value)
            .where(jobs_table.c.updated_at >= starts[0])
            .order_by(jobs_table.c.updated_at.desc())
            .limit(max_jobs + 1)
        )
        with self._engine.connect() as conn:
            for row in conn.execute(query.execution_options(yield_per=1000)):
                if read == max_jobs:
                    # The one row beyond the cap (read to the end: a server-side cursor
                    # left open would outlive the connection).
                    truncated = True
                    continue
                read += 1
                result = _parsed(row.result)
                if result is None:
                    continue
                version = str(result.get("model_version") or "?")
                key = (str(row.model_id), version, bool(row.shadow))
                # Weeks in UTC are 604,800 s long: no calendar per row.
                start = starts[0] + ((float(row.updated_at) - starts[0]) // _WEEK) * _WEEK
                groups.setdefault(key, {}).setdefault(start, _Week()).add(result)
        models = [
            ModelDrift(
                model_id=model_id,
                version=version,
                shadow=shadow,
                weeks=[week.drift(start) for start, week in sorted(groups[key].items())],
            )
            for key in sorted(groups)
            for model_id, version, shadow in [key]
        ]
        return DriftReading(
            week_starts=starts,
            week_names=[week_name(s) for s in starts],
            models=models,
            jobs_read=read,
            truncated=truncated,
        )


def _parsed(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        result = json.loads(text)
    except ValueError:
        return None
    return result if isinstance(result, dict) else None
