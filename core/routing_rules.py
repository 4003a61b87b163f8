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
``shadow``
    ``true``: jobs run and their results are kept in the node, never delivered
    (``pacs-ai resend JOB_ID`` delivers one later).
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    field_validator,
    model_validator,
)
from pydicom.datadict import dictionary_VR, keyword_dict, tag_for_keyword

#: Route names of the jobs of studies pulled from a PACS for named models (``pacs-ai run
#: --models``, ``pacs-ai backfill --models``): no configured route may take them.
PULL_ROUTE_NAMES = frozenset({"run", "backfill"})

#: The tags of the condition union (:data:`MatchValue`), which error locations carry but
#: users never write: :func:`core.validation.describe` leaves them out.
MATCH_TAGS = frozenset({"match-value", "match-list", "match-condition"})


def _scalar(value: Any) -> str | int | float:
    # One check instead of a str | int | float union, whose failure pydantic reports
    # once per member ("should be a valid string", "... integer", "... number").
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        # ValueError, not TypeError: pydantic reports only the former as a problem.
        raise ValueError(f"a value to match is text or a number, got {value!r}")  # noqa: TRY004
    return value


MatchScalar = Annotated[str | int | float, PlainValidator(_scalar)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConditionSpec(_Section):
    """A condition on one value; every part given must hold."""

    #: The value equals this (text compared exactly, numbers numerically).
    equals: MatchScalar | None = None
    #: The value is one of these.
    one_of: list[MatchScalar] | None = None
    #: A Python regular expression searched anywhere in the value (``(?i)``: any case).
    regex: str | None = None
    #: Numeric lower bound, inclusive.
    min: float | None = None
    #: Numeric upper bound, inclusive.
    max: float | None = None
    #: ``true``: the attribute has a value; ``false``: it is absent or empty.
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


def _condition_kind(value: Any) -> str:
    if isinstance(value, dict | ConditionSpec):
        return "match-condition"
    return "match-list" if isinstance(value, list) else "match-value"


#: A condition as written in the configuration: equals, one of, or a ConditionSpec. The
#: form is chosen by the value's type, so that a bad one is reported once, as that form.
MatchValue = Annotated[
    Annotated[MatchScalar, Tag("match-value")]
    | Annotated[list[MatchScalar], Tag("match-list")]
    | Annotated[ConditionSpec, Tag("match-condition")],
    Discriminator(_condition_kind),
]


def _check_keyword(keyword: str) -> str:
    if tag_for_keyword(keyword) is None:
        near = difflib.get_close_matches(keyword, list(keyword_dict), n=1, cutoff=0.75)
        hint = f"; did you mean {near[0]!r}?" if near else " (for example 'Modality')"
        raise ValueError(f"not a DICOM keyword{hint}")
    if dictionary_VR(keyword) == "SQ":
        raise ValueError("a sequence; match on a top-level attribute")
    return keyword


#: A key of ``match``: a DICOM keyword of a top-level attribute, each checked on its own
#: (a misspelt one is named, with the nearest keyword, beside any bad condition).
DicomKeyword = Annotated[str, AfterValidator(_check_keyword)]


class SeriesCondition(_Section):
    """A study is complete early once some received series matches and is this large."""

    #: DICOM keyword -> condition that the series' first instance must meet.
    match: dict[DicomKeyword, MatchValue] = {}
    #: Images received: instances, each frame of an enhanced multi-frame instance counting
    #: as one (such a series is often a single instance).
    min_instances: Annotated[int, Field(ge=1)] = 1


class RouteSettings(_Section):
    """A routing rule: which series go to which models, and where results are sent."""

    #: Unique; shown on the dashboard and in every job of the route.
    name: Annotated[str, Field(min_length=1, max_length=64)]
    #: DICOM keyword -> condition, all of which must hold on the series' first instance:
    #: a value (equals), a list (one of), or a condition mapping.
    match: dict[DicomKeyword, MatchValue] = {}
    #: The same conditions on the calling AE title of the association that brought it.
    calling_ae: MatchValue | None = None
    #: ... and on the called AE title (the node's own or one of its aliases).
    called_ae: MatchValue | None = None
    #: Sender addresses or networks, e.g. ``[10.1.2.3, 192.168.0.0/16]``; empty: any.
    source: list[str] = []
    #: ``series``: a job per complete series; ``study``: one when the whole study is.
    trigger: Literal["series", "study"] = "series"
    #: ``trigger: study`` only: the study is complete as soon as every condition is met.
    complete_when: list[SeriesCondition] = []
    #: Model package ids to run on the series, one job each.
    models: list[str] = []
    #: Destinations (by name) that receive the results.
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
    #: A shadow route runs its models and keeps the results in the node, never delivering
    #: them (``pacs-ai resend JOB_ID`` delivers one later to ``send_results_to``): a model
    #: watched on live traffic before it goes live.
    shadow: bool = False

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
        if self.shadow and self.forward_originals_to:
            raise ValueError(
                "a shadow route delivers nothing: move forward_originals_to to another route"
            )
        return self


class RoutingSettings(_Section):
    """How rules combine, and what happens to series no rule matches."""

    #: ``all``: every matching rule applies; ``first``: only the first, in file order.
    mode: Literal["all", "first"] = "all"
    #: ``keep``: unrouted series stay in the spool until an operator acts; ``discard``:
    #: removed by the retention sweep after ``retention.unrouted_days``.
    unrouted: Literal["keep", "discard"] = "keep"
