"""The README and the documentation site: short, linked, and true to the code.

`mkdocs build --strict` (scripts/test) catches broken links and anchors inside the site;
these tests check what it cannot: the README's size and links, that the generated
references name every key of their schemas, and that the documented environment
variables are the ones the settings read.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from core.jobs import JobState, SeriesState
from core.settings import Settings, load_settings
from models.manifest import ModelManifest
from pacs_ai.docs_gen import PAGES
from pacs_ai.docs_gen.reference import (
    configuration_page,
    example_manifests,
    model_package_page,
)
from tests.support.readme import README, readme_configuration

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside a type (unions, lists, mappings, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in models_in(arg)]


def every_field(root: type[BaseModel]) -> set[tuple[str, str]]:
    """(model, key) for every field of every model reachable from ``root``."""
    found: set[tuple[str, str]] = set()
    pending, seen = [root], set()
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            found.add((model.__name__, field.alias or name))
            pending.extend(models_in(field.annotation))
    return found


def documented_keys(page: str) -> set[str]:
    """The last part of every key in the first column of the page's tables."""
    keys = re.findall(r"^\| `([^`]+)` \|", page, flags=re.MULTILINE)
    return {key.rsplit(".", 1)[-1].removesuffix("[]") for key in keys}


def test_the_readme_fits_in_200_lines() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200


def test_every_file_the_readme_links_to_exists() -> None:
    links = _LINK.findall(README.read_text(encoding="utf-8"))

    assert links
    missing = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert missing == []


def test_the_readme_configuration_is_the_smallest_real_one_and_loads(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(readme_configuration())

    settings = load_settings(config, env={})

    assert [route.models for route in settings.routes] == [["ct-lungs"]]
    assert list(settings.destinations) == ["pacs"]


def test_the_configuration_reference_documents_every_key() -> None:
    documented = documented_keys(configuration_page())

    missing = sorted(f"{model}.{key}" for model, key in every_field(Settings))
    assert [name for name in missing if name.rsplit(".", 1)[1] not in documented] == []


def test_every_documented_environment_variable_sets_its_key() -> None:
    page = configuration_page()
    rows = re.findall(
        r"^\| `([^`]+)` \| [^|]+ \| `([^`]*)` \| `(PACS_AI_[A-Z0-9_]+)` \|", page, re.MULTILINE
    )
    # Keys inside an optional section (node.tls, default null) would create it half-filled.
    optional = tuple(f"{key}." for key, default, _ in rows if default == "null")
    env = {
        variable: default
        for key, default, variable in rows
        if default != "null" and not key.startswith(optional)
    }

    assert len(env) > 50
    settings = load_settings(None, env=env)

    assert settings.ignored_environment == ()
    assert str(settings.node.port) == env["PACS_AI_NODE__PORT"]


def test_the_model_package_reference_documents_every_key_and_every_example() -> None:
    page = model_package_page()
    documented = documented_keys(page)

    assert [f"{m}.{k}" for m, k in every_field(ModelManifest) if k not in documented] == []
    for manifest in example_manifests():
        assert f"### `{manifest.relative_to(ROOT).as_posix()}`" in page


@pytest.mark.parametrize("path", example_manifests(), ids=lambda p: p.parent.name)
def test_every_worked_example_is_a_valid_manifest(path: Path) -> None:
    manifest = ModelManifest.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))

    assert manifest.id


def test_the_operations_page_says_what_to_do_in_every_state() -> None:
    page = (DOCS / "operations.md").read_text(encoding="utf-8")
    states = {s.value for s in JobState} | {"DISCARDED"} | {s.value for s in SeriesState}

    assert [state for state in sorted(states) if f"`{state}`" not in page] == []


def test_every_generated_page_is_in_the_sites_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")

    assert [path for path in PAGES if f": {path}" not in nav] == []
