"""What a model accepts, in words, and routes whose every series its model would refuse.

For ``pacs-ai config check``: each route's models with what they accept, and a warning
for a route whose own ``match`` conditions contradict a model's ``accepts`` (a route for
MR to a CT model, or one that matches EchoTime >= 80 ms to a model that takes at most
20 ms): every series it matches would end NOT_APPLICABLE. Only what the route pins is
compared (values it lists, ranges it bounds); whatever it leaves open is decided per
series when it completes (:mod:`models.acceptance`).
"""

from __future__ import annotations

from collections.abc import Sequence

from core.routing_rules import ConditionSpec, MatchScalar, MatchValue, RouteSettings
from models.acceptance import UNITS, attribute_refusal
from models.header_rules import AttributeCondition, ExtentSpec, per_axis
from models.manifest import AcceptsSpec, ModelManifest
from models.registry import ModelRegistry


def describe_accepts(accepts: AcceptsSpec) -> str:
    """``MR; body part HEAD/BRAIN; >= 16 slices; EchoTime <= 20 ms (required); ...``."""
    parts = ["/".join(accepts.modalities)]
    if accepts.body_parts:
        parts.append(f"body part {'/'.join(accepts.body_parts)}")
    if accepts.min_slices > 1:
        parts.append(f">= {accepts.min_slices} slices")
    parts.extend(_describe(k, c) for k, c in accepts.attributes.items())
    if accepts.extent_mm is not None:
        parts.append(_describe_extent(accepts.extent_mm))
    return "; ".join(parts)


def _describe(keyword: str, condition: AttributeCondition) -> str:
    unit = f" {UNITS[keyword]}" if keyword in UNITS else ""
    said: list[str] = []
    if condition.equals is not None:
        said.append(f"= {condition.equals}")
    if condition.in_ is not None:
        said.append(f"in {'/'.join(str(v) for v in condition.in_)}")
    if condition.not_in is not None:
        said.append(f"not {'/'.join(str(v) for v in condition.not_in)}")
    if condition.min is not None:
        said.append(f">= {condition.min:g}{unit}")
    if condition.max is not None:
        said.append(f"<= {condition.max:g}{unit}")
    if condition.regex is not None:
        said.append(f"matches {condition.regex}")
    if condition.contains is not None:
        said.append(f"contains {'/'.join(condition.contains)}")
    if condition.excludes is not None:
        said.append(f"excludes {'/'.join(condition.excludes)}")
    required = " (required)" if condition.missing == "refuse" else ""
    return f"{keyword} {' and '.join(said) or 'present'}{required}"


def _describe_extent(spec: ExtentSpec) -> str:
    def show(bound: float | tuple[float, float, float]) -> str:
        return " x ".join(f"{v:g}" for v in per_axis(bound)) + " mm"

    said = [f">= {show(spec.min)}" if spec.min is not None else ""]
    said.append(f"<= {show(spec.max)}" if spec.max is not None else "")
    return "extent " + " and ".join(s for s in said if s)


def route_conflicts(route: RouteSettings, manifest: ModelManifest) -> list[str]:
    """Why every series ``route`` matches would be refused by ``manifest`` (empty: some
    may be accepted, decided per series)."""
    accepts = manifest.accepts
    problems: list[str] = []
    for keyword, condition in route.match.items():
        spec = _as_spec(condition)
        if keyword == "Modality":
            problems.extend(_pinned_outside(keyword, spec, accepts.modalities))
        elif keyword == "BodyPartExamined" and accepts.body_parts:
            problems.extend(_pinned_outside(keyword, spec, accepts.body_parts))
        if keyword in accepts.attributes:
            problems.extend(_attribute_conflict(keyword, spec, accepts.attributes[keyword]))
    return problems


def _as_spec(condition: MatchValue) -> ConditionSpec:
    if isinstance(condition, ConditionSpec):
        return condition
    if isinstance(condition, list):
        return ConditionSpec(one_of=condition)
    return ConditionSpec(equals=condition)


def _pinned(spec: ConditionSpec) -> list[MatchScalar] | None:
    """The values a route condition allows, when it lists them."""
    if spec.equals is not None:
        return [spec.equals]
    return list(spec.one_of) if spec.one_of is not None else None


def _pinned_outside(keyword: str, spec: ConditionSpec, accepted: list[str]) -> list[str]:
    values = _pinned(spec)
    if values is None or any(str(v).strip().upper() in accepted for v in values):
        return []
    shown = "/".join(str(v) for v in values)
    return [f"the route matches {keyword} {shown}; the model accepts {'/'.join(accepted)}"]


def _attribute_conflict(
    keyword: str, spec: ConditionSpec, condition: AttributeCondition
) -> list[str]:
    values = _pinned(spec)
    if values is not None:
        failures = [attribute_refusal(keyword, condition, v) for v in values]
        if all(failures):
            return [f"the route matches {keyword} {'/'.join(map(str, values))}: {failures[0]}"]
        return []
    unit = f" {UNITS[keyword]}" if keyword in UNITS else ""
    if spec.min is not None and condition.max is not None and spec.min > condition.max:
        return [
            f"the route matches {keyword} >= {spec.min:g}{unit}; the model accepts "
            f"<= {condition.max:g}{unit}"
        ]
    if spec.max is not None and condition.min is not None and spec.max < condition.min:
        return [
            f"the route matches {keyword} <= {spec.max:g}{unit}; the model accepts "
            f">= {condition.min:g}{unit}"
        ]
    if spec.present is False and condition.missing == "refuse":
        return [f"the route matches series without {keyword}; the model requires it"]
    return []


def routes_report(
    routes: Sequence[RouteSettings], registry: ModelRegistry
) -> tuple[list[str], list[str]]:
    """What each route's models accept, and a warning for each (route, model) whose
    every matched series would be refused (models not installed are left out)."""
    accepted: list[str] = []
    warnings: list[str] = []
    for index, route in enumerate(routes):
        for model_id in route.models:
            if model_id not in registry:
                continue
            manifest = registry.get(model_id).manifest
            accepted.append(
                f"routes[{index}] {route.name} -> {model_id} accepts "
                f"{describe_accepts(manifest.accepts)}"
            )
            warnings.extend(
                f"routes[{index}] {route.name}: every series it matches would be refused by "
                f"{model_id} (NOT_APPLICABLE): {conflict}"
                for conflict in route_conflicts(route, manifest)
            )
    return accepted, warnings
