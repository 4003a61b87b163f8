"""Small inline SVG plots for the agreement report: no plotting library, no script, no
external file, so that the report opens anywhere (an air-gapped reading room included)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

_W, _H, _M = 420, 300, 48


def bland_altman(pairs: Sequence[tuple[float, float]], *, unit: str = "mL") -> str:
    """Bland-Altman plot: mean of A and B (x) against A - B (y), with the mean difference
    and its 95 % limits of agreement (± 1.96 SD)."""
    if not pairs:
        return _empty("bland-altman", "no volumes to compare")
    means = [(a + b) / 2 for a, b in pairs]
    diffs = [a - b for a, b in pairs]
    bias = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - bias) ** 2 for d in diffs) / (len(diffs) - 1)) if len(diffs) > 1 else 0
    lines = [bias, bias - 1.96 * sd, bias + 1.96 * sd]
    x0, x1 = _range(means)
    y0, y1 = _range([*diffs, *lines])
    parts = [_axes(f"mean of A and B ({unit})", f"A - B ({unit})", (x0, x1), (y0, y1))]
    for value, name in zip(lines, ("mean difference", "-1.96 SD", "+1.96 SD"), strict=True):
        y = _y(value, y0, y1)
        dash = "" if name == "mean difference" else ' stroke-dasharray="4 3"'
        parts.append(
            f'<line class="limit" x1="{_M}" x2="{_W - 8}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="#888"{dash}/><text x="{_W - 10}" y="{y - 3:.1f}" text-anchor="end" '
            f'font-size="10">{name} {value:.1f}</text>'
        )
    parts.extend(
        f'<circle class="case" cx="{_x(m, x0, x1):.1f}" cy="{_y(d, y0, y1):.1f}" r="3.5" '
        f'fill="#1f77b4"/>'
        for m, d in zip(means, diffs, strict=True)
    )
    return _svg("bland-altman", parts)


def histogram(values: Sequence[float], *, bins: int = 20, label: str = "Dice") -> str:
    """Histogram of values in [0, 1] (Dice) in ``bins`` equal bins, from 0.9 or from the
    lowest value's twentieth below (Dice of good models crowd near 1)."""
    if not values:
        return _empty("dice-histogram", "no Dice to show")
    low = min(math.floor(min(values) * 20) / 20, 0.9)
    counts = [0] * bins
    for value in values:
        counts[min(max(int((value - low) / (1.0 - low) * bins), 0), bins - 1)] += 1
    top = max(counts)
    parts = [_axes(label, "cases", (low, 1.0), (0.0, float(top)))]
    width = (_W - _M - 8) / bins
    step = (1.0 - low) / bins
    for i, count in enumerate(counts):
        if count:
            y = _y(count, 0.0, float(top))
            parts.append(
                f'<rect class="bin" x="{_M + i * width:.1f}" y="{y:.1f}" '
                f'width="{width - 1:.1f}" height="{_H - _M - y:.1f}" fill="#2ca02c">'
                f"<title>{low + i * step:.3f}-{low + (i + 1) * step:.3f}: {count}</title></rect>"
            )
    return _svg("dice-histogram", parts)


def confusion(classes: Sequence[str], counts: Sequence[Sequence[int]]) -> str:
    """Confusion matrix: rows A's most probable class, columns B's."""
    if not classes:
        return _empty("confusion-matrix", "no classification to compare")
    n = len(classes)
    cell = min(60, (_W - 120) // n)
    top = max(max(row) for row in counts) or 1
    width, height = 120 + n * cell + 10, 60 + n * cell + 10
    parts = [
        f'<text x="{120 + n * cell / 2:.0f}" y="14" text-anchor="middle" '
        f'font-size="11">B (columns)</text>'
    ]
    for j, name in enumerate(classes):
        parts.append(
            f'<text x="{120 + (j + 0.5) * cell:.0f}" y="52" text-anchor="middle" '
            f'font-size="10">{escape(name[:12])}</text>'
        )
    for i, name in enumerate(classes):
        parts.append(
            f'<text x="114" y="{60 + (i + 0.6) * cell:.0f}" text-anchor="end" '
            f'font-size="10">A: {escape(name[:12])}</text>'
        )
        for j in range(n):
            value = counts[i][j]
            shade = int(255 - 200 * value / top)
            parts.append(
                f'<rect class="cell" x="{120 + j * cell}" y="{60 + i * cell}" width="{cell}" '
                f'height="{cell}" fill="rgb({shade},{shade},255)" stroke="#fff"/>'
                f'<text x="{120 + (j + 0.5) * cell:.0f}" y="{60 + (i + 0.6) * cell:.0f}" '
                f'text-anchor="middle" font-size="12">{value}</text>'
            )
    return _svg("confusion-matrix", parts, width=width, height=height)


def _svg(name: str, parts: Sequence[str], *, width: int = _W, height: int = _H) -> str:
    body = "".join(parts)
    return (
        f'<svg class="plot" id="{name}" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img">{body}</svg>'
    )


def _empty(name: str, text: str) -> str:
    return _svg(name, [f'<text x="{_W / 2}" y="{_H / 2}" text-anchor="middle">{text}</text>'])


def _axes(x_label: str, y_label: str, xs: tuple[float, float], ys: tuple[float, float]) -> str:
    bottom, right = _H - _M, _W - 8
    return (
        f'<line x1="{_M}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#000"/>'
        f'<line x1="{_M}" y1="8" x2="{_M}" y2="{bottom}" stroke="#000"/>'
        f'<text x="{(_M + right) / 2}" y="{_H - 8}" text-anchor="middle" font-size="11">'
        f"{escape(x_label)}</text>"
        f'<text x="12" y="{bottom / 2}" transform="rotate(-90 12 {bottom / 2})" '
        f'text-anchor="middle" font-size="11">{escape(y_label)}</text>'
        f'<text x="{_M}" y="{bottom + 14}" font-size="10">{xs[0]:.4g}</text>'
        f'<text x="{right}" y="{bottom + 14}" text-anchor="end" font-size="10">{xs[1]:.4g}</text>'
        f'<text x="{_M - 4}" y="{bottom}" text-anchor="end" font-size="10">{ys[0]:.4g}</text>'
        f'<text x="{_M - 4}" y="14" text-anchor="end" font-size="10">{ys[1]:.4g}</text>'
    )


def _range(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    pad = (high - low) * 0.1 or max(abs(low) * 0.1, 1.0)
    return low - pad, high + pad


def _x(value: float, low: float, high: float) -> float:
    return _M + (value - low) / (high - low) * (_W - _M - 8)


def _y(value: float, low: float, high: float) -> float:
    span = (high - low) or 1.0
    return (_H - _M) - (value - low) / span * (_H - _M - 8)
