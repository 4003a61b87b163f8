"""How the dashboard, the API and ``pacs-ai status`` write times, durations, sizes and
failure reasons (plain text; the Jinja2 templates escape it)."""

from __future__ import annotations

import re
import time

from markupsafe import Markup, escape

#: UIDs (and spool paths made of them) in free text such as failure reasons.
_UID_RE = re.compile(r"\b[0-2](?:\.(?:0|[1-9][0-9]*)){3,}\b")


def redact(text: str | None, *, show: bool) -> str | None:
    """``text`` with UIDs replaced by ``[UID]`` unless ``show``."""
    if text is None or show:
        return text
    return _UID_RE.sub("[UID]", text)


def when(at: float | None, *, now: float | None = None) -> Markup:
    """A local clock time (with the date when not today), the full time as a tooltip."""
    if at is None:
        return Markup("")
    local = time.localtime(at)
    today = time.localtime(now if now is not None else time.time())
    short = time.strftime("%H:%M:%S" if local[:3] == today[:3] else "%Y-%m-%d %H:%M", local)
    full = time.strftime("%Y-%m-%d %H:%M:%S %Z", local)
    return Markup('<time datetime="{}" title="{}">{}</time>').format(f"{at:.3f}", full, short)


def seconds(value: float | None) -> str:
    """``0.42 s``, ``12 s``, ``3 m 20 s``, ``2 h 05 m``; empty for None."""
    if value is None:
        return ""
    if value < 10:
        return f"{value:.2f} s" if value < 1 else f"{value:.1f} s"
    if value < 60:
        return f"{value:.0f} s"
    if value < 3600:
        return f"{int(value // 60)} m {int(value % 60):02d} s"
    return f"{int(value // 3600)} h {int(value % 3600 // 60):02d} m"


def size(value: float | None) -> str:
    if value is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


__all__ = ["escape", "redact", "seconds", "size", "when"]
