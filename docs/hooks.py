"""MkDocs hooks: the pages generated from the code, and the changelog, join the site.

Registered in ``mkdocs.yml`` (``hooks:``). The generated pages
(:data:`pacs_ai.docs_gen.PAGES`) exist only in the build, never as files in ``docs/``,
so that they cannot be edited by hand or go stale.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

from pacs_ai.docs_gen import PAGES


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated pages and ``CHANGELOG.md`` (kept at the repository's root)."""
    for path, page in PAGES.items():
        files.append(File.generated(config, path, content=page()))
    root = Path(config.config_file_path).parent
    changelog = (root / "CHANGELOG.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "changelog.md", content=changelog))
    return files
