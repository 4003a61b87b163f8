"""The configuration reference and the model package reference, from their schemas.

Both pages are the schema itself: every key with its type, default and description (the
``#:`` comment above it in the code), and for the configuration the environment variable
that overrides it. Nothing here is written by hand a second time: a key added to
:class:`core.settings.Settings` or :class:`models.manifest.ModelManifest` appears on the
next build of the site.
"""

from __future__ import annotations

from pathlib import Path

import core.settings
import models.header_rules
import models.manifest
from core.settings import ENV_PREFIX, Settings
from models.manifest import MANIFEST_SCHEMA_VERSION, ModelManifest
from pacs_ai.docs_gen.markdown import docstring, table
from pacs_ai.docs_gen.schema import Section, sections

#: Where the model packages shipped with pacs-ai live, relative to the repository.
_REPOSITORY = Path(__file__).resolve().parents[2]
_PACKAGE_FOLDERS = ("models/builtin", "models/examples")


def configuration_page() -> str:
    """``reference/configuration.md``: every configuration key."""
    parts = [
        "# Configuration reference\n",
        '!!! note "Generated"\n'
        "    This page is generated from the settings schema (`core/settings.py`, "
        "`core/routing_rules.py`, `core/output_profiles.py`) each time the site is built; "
        "edit the `#:` comments there, not this page.\n",
        docstring(core.settings.__doc__),
        "Validate a file with `pacs-ai config check config.yaml`. In the tables, "
        "`[]` marks an item of a list and `<name>` a key you choose (a destination's "
        "name). A key inside a list item has no variable of its own: set the whole list "
        f"as YAML (`{ENV_PREFIX}ROUTES='[...]'`). Destination names in variables are "
        "lower-cased.\n",
        "## Sections\n",
        "".join(f"- [{s.title}](#{s.anchor})\n" for s in sections(Settings)),
    ]
    for section in sections(Settings, env_prefix=ENV_PREFIX):
        parts.append(_section(section, env=True))
    return "\n".join(parts)


def model_package_page() -> str:
    """``reference/model-package.md``: every key of ``model.yaml``, and the examples."""
    parts = [
        "# Model package reference (`model.yaml`)\n",
        '!!! note "Generated"\n'
        "    This page is generated from the manifest schema (`models/manifest.py`, "
        "`models/header_rules.py`) and the packages in `models/` each time the site is "
        "built.\n",
        f"The schema version this release reads is **{MANIFEST_SCHEMA_VERSION}**. "
        "`pacs-ai models verify --package DIR` checks a package: the schema, the weights' "
        "checksum and a dry run of the whole recipe on a small synthetic input.\n",
        docstring(models.manifest.__doc__),
        "## Header conditions (`accepts.attributes`, `accepts.extent_mm`)\n",
        docstring(models.header_rules.__doc__),
        "## Keys\n",
    ]
    for section in sections(ModelManifest):
        parts.append(_section(section, env=False, level="###"))
    parts.append("## Worked examples\n")
    parts.append(
        "Every package below is validated by the tests (`tests/unit/test_manifest.py`, "
        "`tests/unit/test_docs_site.py`); the brain and radiograph examples point at "
        "weights that are not shipped (bring your own, or the test material).\n"
    )
    for path in example_manifests():
        relative = path.relative_to(_REPOSITORY).as_posix()
        parts.append(f"### `{relative}`\n")
        parts.append("```yaml\n" + path.read_text(encoding="utf-8").rstrip() + "\n```\n")
    return "\n".join(parts)


def example_manifests() -> list[Path]:
    """The ``model.yaml`` of every package shipped in the repository, built-in first."""
    return [
        path
        for folder in _PACKAGE_FOLDERS
        for path in sorted((_REPOSITORY / folder).rglob("model.yaml"))
    ]


def _section(section: Section, *, env: bool, level: str = "##") -> str:
    headers = ["key", "type", "default"]
    if env:
        headers.append("environment variable")
    headers.append("description")
    rows = []
    for key in section.keys:
        row = [f"`{key.path}`", key.type, key.default]
        if env:
            row.append(f"`{key.env}`" if key.env else "-")
        row.append(key.description)
        rows.append(row)
    return "\n".join(
        [
            f"{level} {section.title} {{#{section.anchor}}}\n",
            section.doc,
            table(headers, rows),
        ]
    )
