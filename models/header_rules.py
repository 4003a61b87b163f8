"""The header conditions of a manifest's ``accepts``: attributes and physical extent.

A model says what its recipe supports in terms a series' headers can answer before any
pixel is read (evaluated by :mod:`models.acceptance`, on the node when a series completes
and again on the worker)::

    accepts:
      modalities: [MR]
      attributes:
        EchoTime: {max: 20}                      # ms, inclusive
        ImageType: {excludes: [LOCALIZER]}       # multi-valued: none of these
        ScanningSequence: {in: [GR, IR, SE]}
        SeriesDescription: {regex: "(?i).*t1.*", missing: accept}
      extent_mm: {max: [280, 280, 280]}          # patient x (R-L), y (A-P), z (F-H)

Attribute names are DICOM keywords (pydicom's dictionary; checked when the manifest
loads, with a suggestion for a misspelt one). A condition holds when every part given
holds:

``equals`` / ``in`` / ``not_in``
    The value (text compared exactly after trimming, numbers numerically).
``min`` / ``max``
    Numeric bounds, inclusive, in the attribute's DICOM unit (ms for EchoTime,
    RepetitionTime, InversionTime; mm for SliceThickness).
``regex``
    A Python regular expression that must match the *whole* value (``re.fullmatch``;
    write ``(?i)`` for case-insensitive, ``.*`` for "anywhere"). Compiled at load.
``contains`` / ``excludes``
    For multi-valued attributes (ImageType): every listed value is among the
    attribute's values / none is.

On a multi-valued attribute, ``equals``, ``in``, ``not_in``, ``min``, ``max`` and
``regex`` must hold for every value. A bare value is shorthand for ``equals``, a list
for ``in``.

``missing`` says what happens when the attribute is absent or empty: ``accept`` (the
default: what the headers do not say cannot be held against a series, and anonymisers
empty many attributes) or ``refuse`` (for an attribute the model cannot do without, such
as EchoTime for a T1-only model). Enhanced (multi-frame) images keep many attributes in
functional group sequences: an attribute absent at the top level is looked up in the
shared, then the first frame's functional groups (EchoTime as EffectiveEchoTime,
InversionTime as InversionTimes there).

``extent_mm`` bounds the physical size of the series: the image's edges (Columns x
column spacing, Rows x row spacing, the slice positions' span plus one step) assigned to
the patient axes they lie nearest to, x (right-left), y (anterior-posterior) and z
(feet-head), as :mod:`inference.transforms` orients the volume. A single number bounds
every edge, whatever the orientation (it also applies to images without Image
Orientation, such as radiographs); three numbers bound x, y and z. ``missing`` applies
when the headers do not give the geometry.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydicom.datadict import dictionary_VR, keyword_dict, tag_for_keyword

#: Value representations whose values are numbers (PS3.5 6.2).
NUMERIC_VRS = frozenset({"DS", "IS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})

Scalar = str | int | float


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class AttributeCondition(_Strict):
    """A condition on one header attribute; every part given must hold."""

    #: The value equals this (text exactly after trimming, numbers numerically).
    equals: Scalar | None = None
    #: The value is one of these.
    in_: Annotated[list[Scalar] | None, Field(alias="in", min_length=1)] = None
    #: The value is none of these.
    not_in: Annotated[list[Scalar] | None, Field(min_length=1)] = None
    #: Numeric lower bound, inclusive, in the attribute's DICOM unit.
    min: float | None = None
    #: Numeric upper bound, inclusive.
    max: float | None = None
    #: A Python regular expression matching the whole value.
    regex: str | None = None
    #: Multi-valued attributes: every listed value is among the attribute's values.
    contains: Annotated[list[str] | None, Field(min_length=1)] = None
    #: Multi-valued attributes: none of the listed values is.
    excludes: Annotated[list[str] | None, Field(min_length=1)] = None
    #: An absent or empty attribute: ``accept`` the series, or ``refuse`` it.
    missing: Literal["accept", "refuse"] = "accept"

    @field_validator("regex")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"regex {pattern!r} does not compile: {exc} (Python syntax, matched "
                    "against the whole value)"
                ) from None
        return pattern

    @model_validator(mode="after")
    def _something_to_check(self) -> AttributeCondition:
        parts = (self.equals, self.in_, self.not_in, self.min, self.max, self.regex)
        nothing = all(p is None for p in (*parts, self.contains, self.excludes))
        if nothing and self.missing == "accept":
            raise ValueError(
                "give at least one of equals, in, not_in, min, max, regex, contains, "
                "excludes (or 'missing: refuse' to require the attribute)"
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        return self

    @property
    def numeric(self) -> bool:
        """Whether the condition compares numbers (``min`` / ``max``)."""
        return self.min is not None or self.max is not None


def expand_shorthand(attributes: Any) -> Any:
    """A bare value means ``equals``, a list ``in``; a mapping is the condition itself."""
    if not isinstance(attributes, dict):
        return attributes
    expanded = {}
    for keyword, value in attributes.items():
        if isinstance(value, dict | AttributeCondition):
            expanded[keyword] = value
        elif isinstance(value, list):
            expanded[keyword] = {"in": value}
        else:
            expanded[keyword] = {"equals": value}
    return expanded


def check_attributes(attributes: dict[str, AttributeCondition]) -> dict[str, AttributeCondition]:
    """Every key a DICOM keyword of a non-sequence attribute; ranges only on numbers.

    Raises:
        ValueError: naming each bad key (with the nearest keyword for a misspelt one).
    """
    problems: list[str] = []
    for keyword, condition in attributes.items():
        if tag_for_keyword(keyword) is None:
            near = difflib.get_close_matches(keyword, list(keyword_dict), n=1, cutoff=0.75)
            hint = f"; did you mean {near[0]!r}?" if near else " (for example 'EchoTime')"
            problems.append(f"{keyword!r} is not a DICOM keyword{hint}")
            continue
        vr = dictionary_VR(keyword)
        if vr == "SQ":
            problems.append(f"{keyword!r} is a sequence; give an attribute inside it")
        elif condition.numeric and vr not in NUMERIC_VRS:
            problems.append(
                f"{keyword}: min/max compare numbers, and {keyword} is {vr} (text); "
                "use equals, in or regex"
            )
    if problems:
        raise ValueError("; ".join(problems))
    return attributes


Extent = float | tuple[float, float, float]


class ExtentSpec(_Strict):
    """Bounds on the physical size of a series in mm (see the module docstring)."""

    #: Smallest size in mm: one number for every edge, or ``[x, y, z]``.
    min: Extent | None = None
    #: Largest size in mm: one number for every edge, or ``[x, y, z]``.
    max: Extent | None = None
    #: Headers without the geometry: ``accept`` the series, or ``refuse`` it.
    missing: Literal["accept", "refuse"] = "accept"

    @model_validator(mode="after")
    def _bounds(self) -> ExtentSpec:
        if self.min is None and self.max is None:
            raise ValueError("give min or max (mm: one number, or [x, y, z])")
        for name, bound in (("min", self.min), ("max", self.max)):
            if bound is not None and any(not v > 0 for v in per_axis(bound)):
                raise ValueError(f"{name} {bound} must be positive (mm)")
        if (
            self.min is not None
            and self.max is not None
            and any(
                low > high for low, high in zip(per_axis(self.min), per_axis(self.max), strict=True)
            )
        ):
            raise ValueError(f"min {self.min} is above max {self.max} on some axis")
        return self


def per_axis(bound: Extent) -> tuple[float, float, float]:
    """A bound as (x, y, z): a single number bounds every axis."""
    if isinstance(bound, tuple):
        return bound
    return (float(bound), float(bound), float(bound))
