"""``python -m pacs_ai.docs_gen --out DIR``: write the generated pages as Markdown files.

For reading them without building the site (an integration team asking for the
Conformance Statement, say). ``python -m pacs_ai.docs_gen PAGE`` prints one page.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pacs_ai.docs_gen import PAGES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pacs_ai.docs_gen", description=__doc__)
    parser.add_argument("page", nargs="?", choices=sorted(PAGES), help="print this page")
    parser.add_argument("--out", type=Path, help="write every page into this folder")
    options = parser.parse_args(argv)
    if options.page is None and options.out is None:
        parser.error("give a PAGE to print or --out DIR")
    if options.page is not None:
        sys.stdout.write(PAGES[options.page]())
    if options.out is not None:
        for path, page in PAGES.items():
            target = options.out / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(page(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
