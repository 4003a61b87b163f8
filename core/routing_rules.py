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

    match: dict[DicomKeyword, MatchValue] = {}
    #: Images received: instances, each frame of an enhanced multi-frame instance counting
    #: as one (such a series is often a single instance).
    min_instances: Annotated[int, Field(ge=1)] = 1


class RouteSettings(_Section):
    """A routing rule: which series go to which models, and where results are sent."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    match: dict[DicomKeyword, MatchValue] = {}
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
