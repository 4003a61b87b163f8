"""Small helpers to write HTML safely: every value goes through :func:`esc`.

Pages are built from :class:`Html` fragments (already escaped) and plain strings (escaped
when joined), so that a value from the ledger or a DICOM header can never become markup.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterable, Sequence
from urllib.parse import quote

#: UIDs (and spool paths made of them) in free text such as failure reasons.
_UID_RE = re.compile(r"\b[0-2](?:\.(?:0|[1-9][0-9]*)){3,}\b")


class Html(str):
    """Markup that is already safe (escaped or written by us)."""

    __slots__ = ()


Fragment = Html | str | int | float | None


def esc(value: Fragment) -> Html:
    """``value`` as text in HTML: escaped, unless it already is :class:`Html`."""
    if isinstance(value, Html):
        return value
    if value is None:
        return Html("")
    return Html(html.escape(str(value), quote=True))


def join(parts: Iterable[Fragment], sep: str = "") -> Html:
    return Html(sep.join(esc(p) for p in parts))


def tag(element: str, /, *children: Fragment, **attrs: str | float | bool | None) -> Html:
    """``<name attrs>children</name>``; attribute names use ``_`` for ``-`` and a
    trailing ``_`` for reserved words (``class_``); True writes a bare attribute."""
    rendered = []
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        attr = key.rstrip("_").replace("_", "-")
        rendered.append(f" {attr}" if value is True else f' {attr}="{esc(str(value))}"')
    return Html(f"<{element}{''.join(rendered)}>{join(children)}</{element}>")


def void(element: str, /, **attrs: str | float | bool | None) -> Html:
    return Html(tag(element, **attrs)[: -len(f"</{element}>")])


def url(path: str, **query: str | None) -> str:
    params = "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items() if v)
    return f"{path}?{params}" if params else path


def redact(text: str | None, *, show: bool) -> str | None:
    """``text`` with UIDs replaced by ``[UID]`` unless ``show``."""
    if text is None or show:
        return text
    return _UID_RE.sub("[UID]", text)


def when(at: float | None, *, now: float | None = None) -> Html:
    """A local clock time (with the date when not today), the full time as a tooltip."""
    if at is None:
        return Html("")
    local = time.localtime(at)
    today = time.localtime(now if now is not None else time.time())
    short = time.strftime("%H:%M:%S" if local[:3] == today[:3] else "%Y-%m-%d %H:%M", local)
    full = time.strftime("%Y-%m-%d %H:%M:%S %Z", local)
    return tag("time", short, datetime=f"{at:.3f}", title=full)


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


def table(
    headers: Iterable[Fragment],
    rows: Iterable[Iterable[Fragment]],
    *,
    id_: str,
    empty: str,
    row_attrs: Sequence[dict[str, str]] | None = None,
) -> Html:
    """A table; ``row_attrs`` gives each row's attributes (``id``, ``data-*``)."""
    head = tag("tr", *(tag("th", h) for h in headers))
    body = [
        tag("tr", *(tag("td", cell) for cell in row), **(row_attrs[i] if row_attrs else {}))
        for i, row in enumerate(rows)
    ]
    if not body:
        return tag("p", empty, class_="empty", id=id_)
    return tag("table", tag("thead", head), tag("tbody", *body), id=id_)
