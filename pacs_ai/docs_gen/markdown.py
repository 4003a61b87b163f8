"""Markdown pieces the generated pages share: tables, and docstrings turned into Markdown.

The code documents itself in reStructuredText-flavoured docstrings and ``#:`` comments
(double backticks, ``:mod:`` roles, ``::`` literal blocks, definition lists). The pages
are Markdown, so what the code says is converted here, once, instead of being written a
second time by hand.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Sequence

_ROLE = re.compile(r":[a-z]+:`(~?)([^`]+)`")
_INDENT = "    "
_API_SECTION = re.compile(r"^(Args|Arguments|Raises|Returns|Yields):\s*$")


def inline(text: str) -> str:
    """One line of docstring text as Markdown: roles and double backticks become code."""
    text = _ROLE.sub(_role, text)
    return text.replace("``", "`")


def _role(match: re.Match[str]) -> str:
    # ``:class:`~pkg.mod.Name``` shows only ``Name``, as Sphinx does.
    target = match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


def cell(text: str) -> str:
    """Text fit for one table cell: one line, pipes escaped."""
    return " ".join(inline(text).split()).replace("|", "\\|")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table (every cell already Markdown; pipes are escaped here)."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines.extend("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows)
    return "\n".join(lines) + "\n"


def docstring(text: str | None) -> str:
    """A docstring as Markdown paragraphs.

    Handles what our docstrings use: ``::`` literal blocks (fenced), definition lists (a
    term line followed by indented lines, as bullets), and inline roles.
    """
    if not text:
        return ""
    lines = inspect.cleandoc(text).splitlines()
    # Raises / Returns sections are for programmers, not for the pages.
    cut = next((i for i, line in enumerate(lines) if _API_SECTION.match(line)), len(lines))
    lines = lines[:cut]
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if line.rstrip().endswith("::"):
            lead = line.rstrip()[:-2].rstrip()
            if lead:
                out.append(inline(lead) + ":")
            block, index = _indented(lines, index + 1)
            out.extend(["", "```yaml" if _looks_like_yaml(block) else "```", *block, "```", ""])
            continue
        if line and not line.startswith(" ") and following.startswith(_INDENT):
            block, index = _indented(lines, index + 1)
            if out and out[-1] and not out[-1].startswith("- "):
                out.append("")  # Markdown starts a list only after a blank line
            term = inline(line).rstrip(":")
            out.append(f"- {term}: {inline(' '.join(b.strip() for b in block))}")
            continue
        if out and out[-1].startswith("- ") and line:
            out.append("")
        out.append(inline(line))
        index += 1
    return "\n".join(out).strip() + "\n"


def _indented(lines: list[str], start: int) -> tuple[list[str], int]:
    """The indented block from ``start`` (blank lines inside it kept), dedented."""
    block: list[str] = []
    index = start
    while index < len(lines) and (not lines[index].strip() or lines[index].startswith(" ")):
        block.append(lines[index])
        index += 1
    while block and not block[-1].strip():
        block.pop()
    while block and not block[0].strip():
        block.pop(0)
    width = min((len(b) - len(b.lstrip()) for b in block if b.strip()), default=0)
    return [b[width:] for b in block], index


def _looks_like_yaml(block: list[str]) -> bool:
    return any(re.match(r"^\s*[A-Za-z_]+:", b) for b in block)


def first_paragraph(text: str | None) -> str:
    """The first paragraph of a docstring, on one line."""
    if not text:
        return ""
    return " ".join(inspect.cleandoc(text).split("\n\n")[0].split())
