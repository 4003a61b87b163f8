"""``pacs-ai config check``: every problem of a configuration at once, one line each.

Problems (the configuration would not start) come from three places, all reported
together however many there are: the settings themselves (one line per mistake, naming
its key, with "did you mean" for misspelt keys and DICOM keywords), the model packages
found through ``model_dirs`` (each invalid package's own problems; the others still
count), and the routes' models (a route naming a model no package provides).

Warnings (it would start, but not do what was probably meant): a route whose models
would refuse every series it matches, a route that can send a modality its model does not
accept (those series end NOT_APPLICABLE), and a ``called_ae`` condition no called AE title
the node accepts can meet (the node refuses other called AE titles at the door).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError
from core.routing_rules import ConditionSpec, RouteSettings
from core.settings import NodeSettings, Settings, load_settings
from dicom_node.routing import check
from models.registry import ModelRegistry
from models.route_acceptance import routes_report


@dataclass
class ConfigReport:
    """What ``config check`` found; ``settings`` and ``registry`` where they loaded."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: What each route's models accept, in words (only when the settings are valid).
    accepted: list[str] = field(default_factory=list)
    settings: Settings | None = None
    registry: ModelRegistry | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def check_config(path: Path) -> ConfigReport:
    """Check the configuration in ``path`` (with the ``PACS_AI_*`` environment applied,
    as ``pacs-ai serve`` would read it) and its model packages."""
    report = ConfigReport()
    raw: Mapping[str, Any] = {}
    try:
        report.settings = load_settings(path)
    except ConfigError as exc:
        report.problems.extend(exc.problems)
        raw = _raw(path)
    settings = report.settings
    model_dirs = settings.model_dirs if settings is not None else _raw_model_dirs(raw)
    registry, package_problems = ModelRegistry.survey(model_dirs)
    report.registry = registry
    report.problems.extend(package_problems)
    routes = _route_models(settings, raw)
    for where, model_id in routes:
        if model_id in registry:
            continue
        near = difflib.get_close_matches(model_id, registry.ids, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        report.problems.append(
            f"{where}: no model package {model_id!r}{hint} "
            f"(installed: {', '.join(registry.ids) or 'none'})"
        )
    if settings is not None:
        report.accepted, warnings = routes_report(settings.routes, registry)
        report.warnings.extend(warnings)
        report.warnings.extend(_modality_gaps(settings.routes, registry))
        report.warnings.extend(_unreachable_called_ae(settings.routes, settings.node))
    return report


def _raw(path: Path) -> Mapping[str, Any]:
    """The file as parsed YAML (empty when it cannot be read: that is a problem already)."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _raw_model_dirs(raw: Mapping[str, Any]) -> list[Path]:
    """``model_dirs`` from a file whose settings are invalid, as far as it is readable."""
    value = raw.get("model_dirs")
    if not isinstance(value, list):
        return []
    return [Path(item) for item in value if isinstance(item, str)]


def _route_models(settings: Settings | None, raw: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(key, model id) of every model a route names, from valid settings or the raw file."""
    if settings is not None:
        for r_index, route in enumerate(settings.routes):
            for m_index, model_id in enumerate(route.models):
                yield f"routes[{r_index}].models[{m_index}]", model_id
        return
    routes = raw.get("routes")
    for r_index, route in enumerate(routes if isinstance(routes, list) else []):
        models = route.get("models") if isinstance(route, Mapping) else None
        for m_index, model_id in enumerate(models if isinstance(models, list) else []):
            if isinstance(model_id, str):
                yield f"routes[{r_index}].models[{m_index}]", model_id


def _modality_gaps(routes: list[RouteSettings], registry: ModelRegistry) -> Iterator[str]:
    """Routes that can send a modality their model does not accept (but not only such:
    those are warned about by :func:`routes_report`)."""
    for index, route in enumerate(routes):
        allowed = _pinned_modalities(route)
        for model_id in route.models:
            if model_id not in registry:
                continue
            accepted = registry.get(model_id).manifest.accepts.modalities
            if allowed is None:
                yield (
                    f"routes[{index}] {route.name}: matches any modality, and {model_id} "
                    f"accepts {'/'.join(accepted)} only: other series end NOT_APPLICABLE "
                    f"(add match: {{Modality: {accepted[0]}}} to the route if that is meant)"
                )
                continue
            outside = [m for m in allowed if m not in accepted]
            if outside and len(outside) < len(allowed):
                yield (
                    f"routes[{index}] {route.name}: sends {'/'.join(outside)} series to "
                    f"{model_id}, which accepts {'/'.join(accepted)} only: they end "
                    "NOT_APPLICABLE"
                )


def _pinned_modalities(route: RouteSettings) -> list[str] | None:
    """The modalities a route lets through, when its ``match`` lists them."""
    condition = route.match.get("Modality")
    if condition is None:
        return None
    if isinstance(condition, ConditionSpec):
        if condition.equals is not None:
            return [str(condition.equals)]
        if condition.one_of is not None:
            return [str(v) for v in condition.one_of]
        return None
    if isinstance(condition, list):
        return [str(v) for v in condition]
    return [str(condition)]


def _unreachable_called_ae(routes: list[RouteSettings], node: NodeSettings) -> Iterator[str]:
    titles = sorted(node.called_ae_titles)
    for index, route in enumerate(routes):
        if route.called_ae is None:
            continue
        if all(check(route.called_ae, title) is not None for title in titles):
            yield (
                f"routes[{index}].called_ae: no called AE title the node accepts meets it "
                f"({', '.join(titles)}; others are refused at the door): the route never "
                "matches. Add the title to node.ae_title_aliases"
            )
