"""The schema of routing rules (the ``routes`` and ``routing`` sections of the configuration).

A rule says which received series go to which models and destinations, and when:

``match``
    DICOM keyword -> condition, all of which must hold on the series' first instance. A
    scalar means *equals*, a list *one of*, and a mapping any of ``equals``, ``one_of``,
    ``regex`` (Python syntax, searched anywhere in the value), ``min`` / ``max`` (numeric,
    inclusive) and ``present`` (true: the attribute has a value; false: it has none).
``calling_ae`` / ``called_ae``
    The same conditions on the AE titles of the association that brought the series.
``source``
    Addresses or networks (CIDR) the sender must come from.
``trigger``
    ``series`` (default): jobs open when the series is complete. ``study``: when the whole
    study is (see :class:`core.settings.CompletionSettings`), optionally as soon as every
    ``complete_when`` condition is met by some received series.
``on_implausible``
    ``hold`` (default) or ``deliver_flagged``: what happens to a result outside what its
    model declares plausible (see :mod:`inference.plausibility`).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydicom.datadict import dictionary_VR, tag_for_keyword

MatchScalar = str | int | float


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConditionSpec(_Section):
    """A condition on one value; every part given must hold."""

    equals: MatchScalar | None = None
    one_of: list[MatchScalar] | None = None
    regex: str | None = None
    min: float | None = None
    max: float | None = None
    present: bool | None = None

    @model_validator(mode="after")
    def _something_to_check(self) -> ConditionSpec:
        if all(
            value is None
            for value in (self.equals, self.one_of, self.regex, self.min, self.max, self.present)
        ):
            raise ValueError("give at least one of equals, one_of, regex, min, max, present")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex {self.regex!r} does not compile: {exc}") from None
        return self


#: A condition as written in the configuration: equals, one of, or a ConditionSpec.
MatchValue = MatchScalar | list[MatchScalar] | ConditionSpec


def _check_keywords(match: dict[str, MatchValue]) -> dict[str, MatchValue]:
    for keyword in match:
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"{keyword!r} is not a DICOM keyword (for example 'Modality')")
        if dictionary_VR(keyword) == "SQ":
            raise ValueError(f"{keyword!r} is a sequence; match on a top-level attribute")
    return match


class SeriesCondition(_Section):
    """A study is complete early once some received series matches and is this large."""

    match: dict[str, MatchValue] = {}
    #: Images received: instances, each frame of an enhanced multi-frame instance counting
    #: as one (such a series is often a single instance).
    min_instances: Annotated[int, Field(ge=1)] = 1

    _keywords = field_validator("match")(_check_keywords)


class RouteSettings(_Section):
    """A routing rule: which series go to which models, and where results are sent."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    match: dict[str, MatchValue] = {}
    calling_ae: MatchValue | None = None
    called_ae: MatchValue | None = None
    #: Sender addresses or networks, e.g. ``[10.1.2.3, 192.168.0.0/16]``; empty: any.
    source: list[str] = []
    trigger: Literal["series", "study"] = "series"
    complete_when: list[SeriesCondition] = []
    models: list[str] = []
    send_results_to: list[str] = []
    #: Router mode: forward the series as received, independent of any model.
    forward_originals_to: list[str] = []
    #: 0 is the most urgent; urgent jobs are taken from the queue first.
    priority: Annotated[int, Field(ge=0, le=9)] = 5
    #: A result outside its model's expectations (``expect:`` in the model package):
    #: ``hold`` keeps it undelivered, the job NEEDS_REVIEW until an operator releases or
    #: discards it; ``deliver_flagged`` delivers it with Series Descriptions starting
    #: ``CHECK`` and the SR saying what was out of range.
    on_implausible: Literal["hold", "deliver_flagged"] = "hold"

    _keywords = field_validator("match")(_check_keywords)

    @field_validator("source")
    @classmethod
    def _networks(cls, source: list[str]) -> list[str]:
        for entry in source:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (for example 10.0.0.0/8)"
                ) from None
        return source

    @model_validator(mode="after")
    def _does_something(self) -> RouteSettings:
        if not self.models and not self.forward_originals_to:
            raise ValueError(
                "a route needs models to run or forward_originals_to destinations (or both)"
            )
        if self.send_results_to and not self.models:
            raise ValueError("send_results_to without models: there would be no results")
        if self.complete_when and self.trigger != "study":
            raise ValueError("complete_when applies to 'trigger: study' routes only")
        return self


class RoutingSettings(_Section):
    """How rules combine, and what happens to series no rule matches."""

    #: ``all``: every matching rule applies; ``first``: only the first, in file order.
    mode: Literal["all", "first"] = "all"
    #: ``keep``: unrouted series stay in the spool until an operator acts; ``discard``:
    #: removed by the retention sweep after ``retention.unrouted_days``.
    unrouted: Literal["keep", "discard"] = "keep"
