"""What the tests read from README.md itself, so that what it shows stays true."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
#: The snippet markers around the smallest real configuration (the docs site includes
#: the same block through them: pymdownx.snippets).
_START = "--8<-- [start:minimal-config]"
_END = "--8<-- [end:minimal-config]"


def readme_configuration() -> str:
    """The YAML of the README's smallest real configuration, exactly as printed there.

    Raises:
        AssertionError: the README lost the markers or the fenced ``yaml`` block.
    """
    text = README.read_text(encoding="utf-8")
    assert _START in text and _END in text, f"README.md lost the {_START} / {_END} markers"
    block = text.split(_START, 1)[1].split(_END, 1)[0]
    lines = block.splitlines()
    assert "```yaml" in lines, "the minimal configuration in README.md is not a yaml block"
    start = lines.index("```yaml") + 1
    end = lines.index("```", start)
    return "\n".join(lines[start:end]) + "\n"
