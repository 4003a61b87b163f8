"""A model's results week by week as server-rendered SVG: a box per week (quartiles as the
box, the median as its bar, 5th to 95th percentile as the whisker) and stacked bars of the
share of films per most probable class."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence

from markupsafe import Markup

from core.ledger import Distribution, ModelDrift
from monitor.charts import (
    BOTTOM,
    HEIGHT,
    LEFT,
    RIGHT,
    TOP,
    WIDTH,
    Chart,
    GridLine,
    Mark,
    Tick,
    _nice,
    _render,
)

#: Colours of the classes in the share chart (``share-0`` ...), cycling.
SHARE_CLASSES = 6
_INNER_W, _INNER_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM


def chart_id(kind: str, model: ModelDrift, name: str = "") -> str:
    """An id for the chart of ``kind`` of ``model`` (and segment or class ``name``), made of
    letters, digits and dashes only."""
    parts = [kind, model.model_id, model.version, "shadow" if model.shadow else "", name]
    return re.sub(r"[^A-Za-z0-9]+", "-", "-".join(p for p in parts if p)).strip("-").lower()


def _frame(
    id_: str,
    title: str,
    week_names: Sequence[str],
    *,
    y_min: float = 0.0,
    y_max: float,
    axis: Callable[[float], str],
) -> Chart:
    grid = []
    for fraction in (0.0, 0.5, 1.0):
        y = TOP + _INNER_H * (1 - fraction)
        grid.append(
            GridLine(
                str(LEFT),
                str(WIDTH - RIGHT),
                f"{y:.1f}",
                str(LEFT - 4),
                f"{y + 4:.1f}",
                axis(y_min + (y_max - y_min) * fraction),
            )
        )
    slot = _INNER_W / max(1, len(week_names))
    every = max(1, len(week_names) // 6)
    ticks = [
        # Under the middle of its week (a label is about 18 px wide).
        Tick(f"{LEFT + index * slot + slot / 2 - 9:.1f}", str(HEIGHT - 6), name.split("-")[-1])
        for index, name in enumerate(week_names)
        if index % every == 0
    ]
    return Chart(id_, title, title, grid, ticks)


def box_chart(
    id_: str,
    title: str,
    week_names: Sequence[str],
    boxes: dict[str, Distribution],
    *,
    unit: str,
    y_range: tuple[float, float] | None = None,
) -> Chart:
    """One box per week that has values (``boxes``, by week name), on the window's weeks.
    The axis spans ``y_range``, or round numbers around every whisker: drift shows better
    on the values' own range than from zero."""
    low, high = y_range if y_range is not None else _span(boxes.values())
    chart = _frame(id_, title, week_names, y_min=low, y_max=high, axis=lambda v: _value(v, unit))
    slot = _INNER_W / max(1, len(week_names))

    def y_of(value: float) -> float:
        return TOP + _INNER_H * (1 - min(1.0, max(0.0, (value - low) / (high - low))))

    for index, week in enumerate(week_names):
        d = boxes.get(week)
        if d is None:
            continue
        center = LEFT + index * slot + slot / 2
        half = max(1.5, slot * 0.3)
        suffix = "" if unit == "p" else f" {unit}"
        label = (
            f"{week}: median {_value(d.median, unit)}{suffix}, quartiles "
            f"{_value(d.q1, unit)} to {_value(d.q3, unit)}{suffix}, 5th to 95th percentile "
            f"{_value(d.p5, unit)} to {_value(d.p95, unit)}{suffix}, n = {d.n}"
        )
        data = (("data-week", week), ("data-median", f"{d.median:g}"), ("data-n", str(d.n)))
        chart.marks.append(
            _line(center, y_of(d.p5), center, y_of(d.p95), label=label, class_="whisker")
        )
        chart.marks.append(
            Mark(
                "rect",
                (
                    ("x", f"{center - half:.1f}"),
                    ("y", f"{y_of(d.q3):.1f}"),
                    ("width", f"{2 * half:.1f}"),
                    ("height", f"{max(0.5, y_of(d.q1) - y_of(d.q3)):.1f}"),
                    ("class", "box"),
                    *data,
                ),
                label,
            )
        )
        y = y_of(d.median)
        chart.marks.append(
            _line(center - half, y, center + half, y, label=label, class_="box-median", data=data)
        )
    return chart


def share_chart(id_: str, title: str, week_names: Sequence[str], model: ModelDrift) -> Chart:
    """Per week, stacked bars of the share of films whose most probable class is each."""
    chart = _frame(id_, title, week_names, y_max=1.0, axis=lambda v: f"{v:.0%}")
    classes = model.classes
    slot = _INNER_W / max(1, len(week_names))
    weeks = {week.week: week for week in model.weeks}
    for index, name in enumerate(week_names):
        week = weeks.get(name)
        if week is None or not week.images:
            continue
        bottom = float(TOP + _INNER_H)
        for number, cls in enumerate(classes):
            share = week.top_class.get(cls, 0.0)
            if not share:
                continue
            height = _INNER_H * share
            bottom -= height
            chart.marks.append(
                Mark(
                    "rect",
                    (
                        ("x", f"{LEFT + index * slot + 1:.1f}"),
                        ("y", f"{bottom:.1f}"),
                        ("width", f"{max(1.0, slot - 2):.1f}"),
                        ("height", f"{height:.1f}"),
                        ("class", f"share share-{number % SHARE_CLASSES}"),
                        ("data-week", name),
                        ("data-class", cls),
                        ("data-share", f"{share:g}"),
                    ),
                    f"{name}: {cls} most probable in {share:.0%} of {week.images} films",
                )
            )
    return chart


def volume_svg(model: ModelDrift, week_names: Sequence[str], segment: str) -> Markup:
    """The box chart of ``segment``'s volume (mL) of ``model`` per week."""
    boxes = {w.week: w.volumes[segment] for w in model.weeks if segment in w.volumes}
    title = f"{model.model_id} {model.version}: volume of {segment} (mL) per week"
    return _render(box_chart(chart_id("volume", model), title, week_names, boxes, unit="mL"))


def probability_svg(model: ModelDrift, week_names: Sequence[str], cls: str) -> Markup:
    """The box chart of class ``cls``'s probability of ``model`` per week."""
    boxes = {w.week: w.probabilities[cls] for w in model.weeks if cls in w.probabilities}
    title = f"{model.model_id} {model.version}: probability of {cls} per week"
    chart = box_chart(
        chart_id("probability", model, cls), title, week_names, boxes, unit="p", y_range=(0, 1)
    )
    return _render(chart)


def share_svg(model: ModelDrift, week_names: Sequence[str]) -> Markup:
    title = f"{model.model_id} {model.version}: most probable class per week"
    return _render(share_chart(chart_id("share", model), title, week_names, model))


def _line(
    x1: float,
    y1: float,
    x2: float,
    y2: float,
    *,
    label: str,
    class_: str,
    data: tuple[tuple[str, str], ...] = (),
) -> Mark:
    return Mark(
        "line",
        (("x1", f"{x1:.1f}"), ("y1", f"{y1:.1f}"), ("x2", f"{x2:.1f}"), ("y2", f"{y2:.1f}"),
         ("class", class_), *data),
        label,
    )  # fmt: skip


def _span(boxes: Iterable[Distribution]) -> tuple[float, float]:
    """Round numbers below and above every whisker, a whole number of round steps apart
    (and never below zero when every value is positive)."""
    values = [v for d in boxes for v in (d.p5, d.p95)]
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    step = _nice(max(high - low, abs(high) * 0.1, 1e-9) / 4)
    bottom = math.floor(low / step) * step
    top = math.ceil(high / step) * step
    if top - bottom < 2 * step:  # one value, or all within a step: centre them
        bottom = math.floor(low / step) * step - step if top == bottom else bottom
        top = bottom + 2 * step
    return (max(0.0, bottom) if low >= 0 else bottom), top


def _value(value: float, unit: str) -> str:
    if unit == "p":
        return f"{value:.2f}"
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.2g}"
