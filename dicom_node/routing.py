"""Routing rules evaluated on a received series (schema: :mod:`core.routing_rules`).

A rule matches when every condition holds: each ``match`` condition on the series' first
instance, and the conditions on the calling / called AE title and the sender's address.
Multi-valued attributes (ImageType) satisfy a condition when any of their values does;
numbers compare numerically. :meth:`Router.explain` says, for each rule, why it matched or
not, for the ledger, the logs and ``pacs-ai routes test``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from core.routing_rules import ConditionSpec, MatchScalar, MatchValue, RouteSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Arrival:
    """Who sent a series: the association's AE titles and the sender's address."""

    calling_ae: str
    called_ae: str
    #: ``host`` or ``host:port`` as recorded with the series.
    address: str

    @property
    def host(self) -> str:
        host, _, port = self.address.rpartition(":")
        return host if host and port.isdigit() and self.address.count(":") == 1 else self.address


@dataclass(frozen=True, slots=True)
class Verdict:
    route: RouteSettings
    matched: bool
    reasons: tuple[str, ...]
    #: The names of the conditions that do not hold (a keyword, ``calling AE``,
    #: ``called AE``, ``sender``), without the values: what logs may say.
    failed: tuple[str, ...] = ()


class Router:
    def __init__(
        self, routes: Sequence[RouteSettings], *, mode: Literal["all", "first"] = "all"
    ) -> None:
        self.routes = tuple(routes)
        self.mode = mode

    def explain(self, header: Dataset, arrival: Arrival | None = None) -> list[Verdict]:
        """Every rule's verdict, in configuration order."""
        return [_evaluate(route, header, arrival) for route in self.routes]

    def matching(self, header: Dataset, arrival: Arrival | None = None) -> list[RouteSettings]:
        """The rules that apply: all that match, or only the first (``routing.mode``)."""
        matched = [v.route for v in self.explain(header, arrival) if v.matched]
        return matched[:1] if self.mode == "first" else matched

    def matches(
        self, route: RouteSettings, header: Dataset, arrival: Arrival | None = None
    ) -> bool:
        return _evaluate(route, header, arrival).matched


def matches_conditions(conditions: dict[str, MatchValue], header: Dataset) -> bool:
    """Whether every keyword condition holds on ``header`` (used by study conditions)."""
    return not _keyword_failures(conditions, header)


def _evaluate(route: RouteSettings, header: Dataset, arrival: Arrival | None) -> Verdict:
    failures = _keyword_failures(route.match, header)
    if arrival is not None:
        for name, condition, actual in (
            ("calling AE", route.calling_ae, arrival.calling_ae),
            ("called AE", route.called_ae, arrival.called_ae),
        ):
            if condition is not None:
                failure = check(condition, actual)
                if failure:
                    failures.append((name, f"{name} {failure}"))
        if route.source and not _from_allowed_source(route.source, arrival.host):
            failures.append(
                ("sender", f"sender {arrival.host} is not in {', '.join(route.source)}")
            )
    if failures:
        return Verdict(
            route=route,
            matched=False,
            reasons=tuple(reason for _name, reason in failures),
            failed=tuple(name for name, _reason in failures),
        )
    return Verdict(route=route, matched=True, reasons=("all conditions hold",))


def _keyword_failures(conditions: dict[str, MatchValue], header: Dataset) -> list[tuple[str, str]]:
    """(keyword, why) of each condition that does not hold."""
    failures: list[tuple[str, str]] = []
    for keyword, condition in conditions.items():
        try:
            actual = header.get(keyword)
        except Exception as exc:  # noqa: BLE001 -- pydicom raises many types for bad values
            failures.append((keyword, f"{keyword} unreadable ({type(exc).__name__})"))
            continue
        failure = check(condition, actual)
        if failure:
            failures.append((keyword, f"{keyword} {failure}"))
    return failures


def check(condition: MatchValue, actual: Any) -> str | None:
    """``None`` when ``actual`` satisfies ``condition``, else why not (``is 'MR', not 'CT'``)."""
    spec = _as_spec(condition)
    values = _values(actual)
    if not values:
        wants_value = spec.present or any(
            part is not None for part in (spec.equals, spec.one_of, spec.regex, spec.min, spec.max)
        )
        return "is absent" if wants_value else None
    shown = repr(_show(actual))
    if spec.present is False:
        return f"is {shown}, but must be absent"
    for holds, why in _value_checks(spec, values):
        if not holds():
            return f"is {shown}, {why}"
    return None


def _value_checks(
    spec: ConditionSpec, values: list[Any]
) -> Iterator[tuple[Callable[[], bool], str]]:
    if spec.equals is not None:
        expected = spec.equals
        yield (lambda: any(_equals(v, expected) for v in values)), f"not {expected!r}"
    if spec.one_of is not None:
        options = spec.one_of
        yield (lambda: any(_equals(v, o) for v in values for o in options)), f"not one of {options}"
    if spec.regex is not None:
        pattern = _regex(spec.regex)
        yield (
            (lambda: any(pattern.search(str(v)) for v in values)),
            (f"which does not match /{spec.regex}/"),
        )
    if spec.min is not None or spec.max is not None:
        low = float("-inf") if spec.min is None else spec.min
        high = float("inf") if spec.max is None else spec.max
        numbers = [n for n in (_number(v) for v in values) if n is not None]
        yield (
            (lambda: any(low <= n <= high for n in numbers)),
            (f"outside [{_fmt(spec.min)}, {_fmt(spec.max)}]"),
        )


def _as_spec(condition: MatchValue) -> ConditionSpec:
    if isinstance(condition, ConditionSpec):
        return condition
    if isinstance(condition, list):
        return ConditionSpec(one_of=condition)
    return ConditionSpec(equals=condition)


def _values(actual: Any) -> list[Any]:
    if actual is None:
        return []
    items = list(actual) if isinstance(actual, MultiValue | list | tuple) else [actual]
    return [v for v in items if v is not None and str(v).strip() != ""]


def _equals(value: Any, expected: MatchScalar) -> bool:
    if isinstance(expected, int | float) and not isinstance(expected, bool):
        number = _number(value)
        return number is not None and number == float(expected)
    return str(value).strip() == expected


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _from_allowed_source(networks: Sequence[str], host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(n, strict=False) for n in networks)


def _show(actual: Any) -> str:
    if isinstance(actual, MultiValue | list | tuple):
        return "\\".join(str(v) for v in actual)
    return str(actual)


def _fmt(bound: float | None) -> str:
    return "" if bound is None else f"{bound:g}"
