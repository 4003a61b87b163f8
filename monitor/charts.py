"""Throughput and turnaround charts as server-rendered SVG (no script, no library)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from markupsafe import Markup

from core.ledger import Finished
from monitor.formatting import seconds

WIDTH, HEIGHT = 560, 170
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 22


@dataclass(frozen=True, slots=True)
class Bucket:
    start: float
    done: int
    failed: int
    turnarounds: tuple[float, ...]

    @property
    def median(self) -> float | None:
        return statistics.median(self.turnarounds) if self.turnarounds else None

    @property
    def p90(self) -> float | None:
        if not self.turnarounds:
            return None
        ordered = sorted(self.turnarounds)
        return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]


def bucket_seconds(hours: float) -> float:
    """About 36 bars over the window, in whole minutes (at least 1)."""
    return max(60.0, math.ceil(hours * 3600 / 36 / 60) * 60)


def buckets(finished: Sequence[Finished], *, now: float, hours: float) -> list[Bucket]:
    step = bucket_seconds(hours)
    count = math.ceil(hours * 3600 / step)
    first = (math.floor(now / step) - count + 1) * step
    done = [0] * count
    failed = [0] * count
    turnarounds: list[list[float]] = [[] for _ in range(count)]
    for run in finished:
        index = int((run.at - first) // step)
        if not 0 <= index < count:
            continue
        if run.state == "DONE":
            done[index] += 1
            if run.turnaround is not None:
                turnarounds[index].append(run.turnaround)
        else:
            failed[index] += 1
    return [
        Bucket(first + i * step, done[i], failed[i], tuple(turnarounds[i])) for i in range(count)
    ]


@dataclass(frozen=True, slots=True)
class GridLine:
    x1: str
    x2: str
    y: str
    text_x: str
    text_y: str
    text: str


@dataclass(frozen=True, slots=True)
class Tick:
    x: str
    y: str
    text: str


@dataclass(frozen=True, slots=True)
class Mark:
    """A bar (``rect``) or a dot (``circle``), its label as the tooltip."""

    kind: str
    attrs: tuple[tuple[str, str], ...]
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    """What ``templates/chart.html`` draws."""

    id: str
    label: str
    title: str
    grid: list[GridLine]
    ticks: list[Tick]
    marks: list[Mark] = field(default_factory=list)
    polyline: str | None = None
    width: int = WIDTH
    height: int = HEIGHT


def _frame(
    id_: str, title: str, y_max: float, y_label: str, ticks: list[tuple[float, str]]
) -> Chart:
    inner_h = HEIGHT - TOP - BOTTOM
    grid = []
    for fraction in (0.0, 0.5, 1.0):
        y = TOP + inner_h * (1 - fraction)
        text = y_label if fraction == 0 else _axis(y_max * fraction, y_label)
        grid.append(
            GridLine(str(LEFT), str(WIDTH - RIGHT), f"{y:.1f}", str(LEFT - 4), f"{y + 4:.1f}", text)
        )
    marks = [Tick(f"{x:.1f}", str(HEIGHT - 6), label) for x, label in ticks]
    return Chart(id_, title, title, grid, marks)


def _axis(value: float, unit: str) -> str:
    return seconds(value) if unit == "s" else f"{value:.0f}"


def _ticks(series: Sequence[Bucket], bar: float) -> list[tuple[float, str]]:
    ticks = []
    every = max(1, len(series) // 6)
    for index in range(0, len(series), every):
        label = time.strftime("%H:%M", time.localtime(series[index].start))
        ticks.append((LEFT + index * bar, label))
    return ticks


def throughput_chart(series: Sequence[Bucket]) -> Chart:
    """Stacked bars: runs ended DONE (and FAILED) per time bucket."""
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    bar = inner_w / max(1, len(series))
    peak = max([b.done + b.failed for b in series] + [1])
    y_max = float(max(4, _nice(peak)))
    chart = _frame(
        "throughput-chart", "Jobs finished per interval", y_max, "jobs", _ticks(series, bar)
    )
    for index, bucket in enumerate(series):
        x = LEFT + index * bar + 1
        done_h = inner_h * bucket.done / y_max
        failed_h = inner_h * bucket.failed / y_max
        label = f"{time.strftime('%H:%M', time.localtime(bucket.start))}: "
        label += f"{bucket.done} done, {bucket.failed} failed"
        width = max(1.0, bar - 2)
        # Stacked: failed jobs on top of the done ones.
        if bucket.done:
            chart.marks.append(
                _bar(x, TOP + inner_h - done_h, width, done_h, label=label, class_="bar-done")
            )
        if bucket.failed:
            top = TOP + inner_h - done_h - failed_h
            chart.marks.append(_bar(x, top, width, failed_h, label=label, class_="bar-failed"))
    return chart


def _bar(x: float, y: float, width: float, height: float, *, label: str, class_: str) -> Mark:
    return Mark(
        "rect",
        (("x", f"{x:.1f}"), ("y", f"{y:.1f}"), ("width", f"{width:.1f}"),
         ("height", f"{height:.1f}"), ("class", class_)),
        label,
    )  # fmt: skip


def _dot(x: float, y: float, radius: float, label: str, class_: str) -> Mark:
    return Mark(
        "circle",
        (("cx", f"{x:.1f}"), ("cy", f"{y:.1f}"), ("r", f"{radius:g}"), ("class", class_)),
        label,
    )


def turnaround_chart(series: Sequence[Bucket]) -> Chart:
    """Median (line) and 90th percentile (dots) turnaround per time bucket."""
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    bar = inner_w / max(1, len(series))
    peak = max([b.p90 or 0.0 for b in series] + [1.0])
    y_max = _nice(peak)
    chart = _frame(
        "turnaround-chart", "Turnaround: last image to results in the PACS", y_max, "s",
        _ticks(series, bar),
    )  # fmt: skip
    points = []
    for index, bucket in enumerate(series):
        median, p90 = bucket.median, bucket.p90
        if median is None or p90 is None:
            continue
        x = LEFT + index * bar + bar / 2
        y_median = TOP + inner_h * (1 - min(1.0, median / y_max))
        y_p90 = TOP + inner_h * (1 - min(1.0, p90 / y_max))
        label = (
            f"{time.strftime('%H:%M', time.localtime(bucket.start))}: median "
            f"{seconds(median)}, 90th percentile {seconds(p90)}, {len(bucket.turnarounds)} jobs"
        )
        points.append(f"{x:.1f},{y_median:.1f}")
        chart.marks.append(_dot(x, y_p90, 2.5, label, "p90"))
        chart.marks.append(_dot(x, y_median, 3, label, "median"))
    if len(points) > 1:
        return replace(chart, label="Turnaround per interval", polyline=" ".join(points))
    return replace(chart, label="Turnaround per interval")


def throughput_svg(series: Sequence[Bucket]) -> Markup:
    """The throughput chart as SVG markup (rendered by the Jinja2 template, escaped)."""
    return _render(throughput_chart(series))


def turnaround_svg(series: Sequence[Bucket]) -> Markup:
    """The turnaround chart as SVG markup (rendered by the Jinja2 template, escaped)."""
    return _render(turnaround_chart(series))


def _render(chart: Chart) -> Markup:
    from monitor.web.common import ENVIRONMENT  # noqa: PLC0415 -- the web package imports us

    return Markup(ENVIRONMENT.get_template("chart.html").render(c=chart))  # noqa: S704 -- autoescaped


def _nice(value: float) -> float:
    """The next round number above ``value`` (1, 2, 5 x 10^n)."""
    if value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for factor in (1, 2, 5, 10):
        candidate = factor * 10.0**exponent
        if candidate >= value:
            return candidate
    return 10.0 ** (exponent + 1)
