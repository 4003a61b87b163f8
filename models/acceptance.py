"""Whether a model accepts a series, decided from its headers before any pixel is read.

The node asks when a series completes (a routed model that cannot accept it gets a
NOT_APPLICABLE job with the reason, never queued), ``pacs-ai routes test`` asks for
files on disk, and the worker asks again on the loaded volume. All three evaluate the
manifest's ``accepts`` (:class:`models.manifest.AcceptsSpec`, conditions documented in
:mod:`models.header_rules`) through :func:`refusals` on :class:`SeriesFacts`, so they
cannot disagree. No framework is imported here: the node runs it.

Reading is bounded: the first instance's header (no pixel data), and for a geometry
condition only the geometry attributes of each instance (``specific_tags``), at most
:data:`MAX_GEOMETRY_READS` files; a few milliseconds per hundred slices.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from models.header_rules import AttributeCondition, ExtentSpec, per_axis
from models.manifest import AcceptsSpec, ModelManifest

logger = logging.getLogger(__name__)

#: Instances whose geometry is read for an extent condition; a larger series is judged
#: on these (its extent can only be larger: a limit it exceeds already is refused).
MAX_GEOMETRY_READS = 5000

_GEOMETRY_TAGS = [
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SliceThickness",
    "SpacingBetweenSlices",
]

#: Units of the attributes most often bounded, for messages ("EchoTime 95 ms > 20 ms").
UNITS = {
    "EchoTime": "ms",
    "EffectiveEchoTime": "ms",
    "RepetitionTime": "ms",
    "InversionTime": "ms",
    "InversionTimes": "ms",
    "TriggerTime": "ms",
    "ExposureTime": "ms",
    "FlipAngle": "°",
    "SliceThickness": "mm",
    "SpacingBetweenSlices": "mm",
    "PixelSpacing": "mm",
    "ImagerPixelSpacing": "mm",
    "MagneticFieldStrength": "T",
    "ImagingFrequency": "MHz",
    "KVP": "kV",
    "XRayTubeCurrent": "mA",
}

#: Names an attribute goes by inside enhanced images' functional groups (PS3.3 C.8.13.5).
_FUNCTIONAL_GROUP_NAMES = {
    "EchoTime": ("EchoTime", "EffectiveEchoTime"),
    "InversionTime": ("InversionTime", "InversionTimes"),
}

_AXES = ("x (right-left)", "y (anterior-posterior)", "z (feet-head)")
_EDGES = ("the rows", "the columns", "the slices")


@dataclass(frozen=True)
class SeriesFacts:
    """What the headers say about a series: enough to decide acceptance.

    ``header`` is the first instance's data set without pixel data (``None`` when there
    is none, as for a synthetic volume); ``images`` counts slices or frames.
    ``edges_mm`` are the sizes of the image's edges (along the rows, the columns, the
    slices; an unknown one ``None``); ``patient_axes`` the patient axis (0 x, 1 y, 2 z)
    each edge lies nearest to, ``None`` without an orientation.
    """

    modality: str
    header: Dataset | None
    images: int
    edges_mm: tuple[float | None, float | None, float | None] = (None, None, None)
    patient_axes: tuple[int, int, int] | None = None

    @property
    def extent_mm(self) -> tuple[float | None, float | None, float | None]:
        """The size along the patient's x, y and z axes (``None`` where unknown)."""
        if self.patient_axes is None:
            return (None, None, None)
        extent: list[float | None] = [None, None, None]
        for edge, axis in zip(self.edges_mm, self.patient_axes, strict=True):
            extent[axis] = edge
        return (extent[0], extent[1], extent[2])


# -- facts -------------------------------------------------------------------------------


def read_header(path: Path) -> Dataset:
    """A file's data set up to its pixel data (pydicom; see the node's bounded reader)."""
    return dcmread(path, stop_before_pixels=True)


def read_geometry_tags(path: Path) -> Dataset:
    """Only the attributes that place a file's image in space."""
    return dcmread(path, stop_before_pixels=True, specific_tags=_GEOMETRY_TAGS)


def facts_from_files(
    paths: Sequence[Path],
    *,
    geometry: bool = True,
    read: Callable[[Path], Dataset] = read_header,
    read_geometry: Callable[[Path], Dataset] = read_geometry_tags,
) -> SeriesFacts:
    """The facts of the series in ``paths`` (one series), from its headers only.

    ``geometry=False`` skips reading every instance (no extent condition to decide).
    ``read`` reads the first file's header, ``read_geometry`` every file's geometry (the
    node passes its bounded reader for both: deflated files inflate in bounded memory).

    Raises:
        Exception: whatever ``read`` raises when the first file cannot be read.
    """
    first = read(paths[0])
    modality = str(first.get("Modality", "") or "")
    frames = _int(first.get("NumberOfFrames")) or 1
    if not geometry:
        return SeriesFacts(modality=modality, header=first, images=max(len(paths), frames))
    if frames > 1 or "PerFrameFunctionalGroupsSequence" in first:
        return _enhanced_facts(first, modality=modality, frames=frames)
    heads = list(_geometry_headers(paths[:MAX_GEOMETRY_READS], read_geometry))
    images = sum(max(_int(h.get("NumberOfFrames")) or 1, 1) for h in heads) if heads else 1
    images = max(images, len(paths))
    return SeriesFacts(
        modality=modality,
        header=first,
        images=images,
        **_geometry(
            orientation=_floats(first.get("ImageOrientationPatient")),
            spacing=_floats(first.get("PixelSpacing") or first.get("ImagerPixelSpacing")),
            rows=_int(first.get("Rows")),
            columns=_int(first.get("Columns")),
            positions=[p for p in (_floats(h.get("ImagePositionPatient")) for h in heads) if p],
            thickness=_float(first.get("SliceThickness")),
        ),
    )


def facts_from_volume(
    *,
    modality: str,
    header: Dataset | None,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    direction: Any,
) -> SeriesFacts:
    """The facts of a loaded volume (voxels ``shape`` ``[z, y, x]``, ``spacing`` (x, y, z)
    in mm, ``direction`` the 3x3 whose columns are the x, y, z axes in LPS)."""
    z, y, x = shape
    columns = [[float(direction[r][c]) for r in range(3)] for c in range(3)]
    return SeriesFacts(
        modality=modality,
        header=header,
        images=z,
        edges_mm=(x * spacing[0], y * spacing[1], z * spacing[2]),
        patient_axes=_nearest_axes(columns),
    )


def _geometry_headers(paths: Sequence[Path], read: Callable[[Path], Dataset]) -> Iterator[Dataset]:
    for path in paths:
        try:
            yield read(path)
        except Exception as exc:  # noqa: BLE001 -- an unreadable file is the loader's to refuse
            logger.debug("no geometry from %s: %s", path, exc)


def _enhanced_facts(first: Dataset, *, modality: str, frames: int) -> SeriesFacts:
    """Facts of one multi-frame image, from its shared and per-frame functional groups."""
    shared = _first_item(first.get("SharedFunctionalGroupsSequence"))
    per_frame = first.get("PerFrameFunctionalGroupsSequence") or []

    def group(item: Dataset | None, sequence: str, keyword: str) -> Any:
        inner = _first_item(item.get(sequence)) if item is not None else None
        return inner.get(keyword) if inner is not None else None

    def either(sequence: str, keyword: str, frame: Dataset | None) -> Any:
        value = group(shared, sequence, keyword)
        return value if value is not None else group(frame, sequence, keyword)

    first_frame = per_frame[0] if per_frame else None
    positions = [
        p
        for p in (
            _floats(either("PlanePositionSequence", "ImagePositionPatient", frame))
            for frame in per_frame
        )
        if p
    ]
    return SeriesFacts(
        modality=modality,
        header=first,
        images=frames,
        **_geometry(
            orientation=_floats(
                either("PlaneOrientationSequence", "ImageOrientationPatient", first_frame)
            ),
            spacing=_floats(either("PixelMeasuresSequence", "PixelSpacing", first_frame)),
            rows=_int(first.get("Rows")),
            columns=_int(first.get("Columns")),
            positions=positions,
            thickness=_float(either("PixelMeasuresSequence", "SliceThickness", first_frame)),
        ),
    )


def _geometry(
    *,
    orientation: list[float] | None,
    spacing: list[float] | None,
    rows: int | None,
    columns: int | None,
    positions: list[list[float]],
    thickness: float | None,
) -> dict[str, Any]:
    """``edges_mm`` and ``patient_axes`` from the Image Plane attributes (PS3.3 C.7.6.2)."""
    row_edge = column_edge = slice_edge = None
    if spacing and len(spacing) == 2 and all(v > 0 for v in spacing):
        # Pixel Spacing is (between rows, between columns).
        if columns:
            row_edge = columns * spacing[1]
        if rows:
            column_edge = rows * spacing[0]
    if not orientation or len(orientation) != 6:
        return {"edges_mm": (row_edge, column_edge, None), "patient_axes": None}
    row, column = orientation[:3], orientation[3:]
    normal = [
        row[1] * column[2] - row[2] * column[1],
        row[2] * column[0] - row[0] * column[2],
        row[0] * column[1] - row[1] * column[0],
    ]
    along = sorted(
        {
            round(sum(p * n for p, n in zip(pos, normal, strict=True)), 4)
            for pos in positions
            if len(pos) == 3
        }
    )
    if len(along) > 1:
        steps = sorted(b - a for a, b in itertools.pairwise(along))
        slice_edge = along[-1] - along[0] + steps[len(steps) // 2]
    elif thickness and thickness > 0:
        slice_edge = thickness
    return {
        "edges_mm": (row_edge, column_edge, slice_edge),
        "patient_axes": _nearest_axes([row, column, normal]),
    }


def _nearest_axes(vectors: list[list[float]]) -> tuple[int, int, int]:
    """The patient axis each of three directions lies nearest to: the assignment that
    maximises the summed absolute cosines (as :mod:`inference.transforms` orients)."""
    best = max(
        itertools.permutations(range(3)),
        key=lambda axes: sum(abs(v[a]) for v, a in zip(vectors, axes, strict=True)),
    )
    return (best[0], best[1], best[2])


# -- decisions ---------------------------------------------------------------------------


def refusals(accepts: AcceptsSpec, facts: SeriesFacts) -> list[str]:
    """Why a model with ``accepts`` cannot take the series (empty: it can)."""
    problems: list[str] = []
    if facts.modality not in accepts.modalities:
        problems.append(
            f"modality {facts.modality or '(none)'} is not one the model accepts "
            f"({', '.join(accepts.modalities)})"
        )
    header = facts.header
    body_part = str(header.get("BodyPartExamined", "") or "").upper() if header else ""
    if accepts.body_parts and body_part and body_part not in accepts.body_parts:
        problems.append(
            f"body part {body_part} is not one the model accepts ({', '.join(accepts.body_parts)})"
        )
    if facts.images < accepts.min_slices:
        problems.append(f"{facts.images} slices, the model needs at least {accepts.min_slices}")
    if header is not None:
        for keyword, condition in accepts.attributes.items():
            failure = attribute_refusal(keyword, condition, lookup(header, keyword))
            if failure:
                problems.append(failure)
    if accepts.extent_mm is not None:
        problems.extend(extent_refusals(accepts.extent_mm, facts))
    return problems


def refusal(manifest: ModelManifest, facts: SeriesFacts) -> str | None:
    """``None`` when the model accepts the series, else the reason, naming the model:
    ``brain-extraction-deepbrain 2018.09.24 cannot run on this series: EchoTime 95 ms >
    20 ms``."""
    problems = refusals(manifest.accepts, facts)
    if not problems:
        return None
    return f"{manifest.id} {manifest.version} cannot run on this series: " + "; ".join(problems)


def needs_geometry(accepts: AcceptsSpec) -> bool:
    """Whether deciding needs every instance's geometry (an extent condition)."""
    return accepts.extent_mm is not None


def lookup(header: Dataset, keyword: str) -> Any:
    """The attribute's value: top level, else in an enhanced image's shared, then first
    frame's functional groups (under the names they have there); ``None`` if absent."""
    value = _get(header, keyword)
    if not _values(value) and "SharedFunctionalGroupsSequence" in header:
        names = _FUNCTIONAL_GROUP_NAMES.get(keyword, (keyword,))
        for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            item = _first_item(header.get(groups))
            found = _in_groups(item, names) if item is not None else None
            if found is not None:
                return found
    return value


def _in_groups(item: Dataset, names: Sequence[str]) -> Any:
    for element in item:
        if element.VR != "SQ":
            continue
        inner = _first_item(element.value)
        if inner is None:
            continue
        for name in names:
            value = _get(inner, name)
            if _values(value):
                return value
    return None


def attribute_refusal(keyword: str, condition: AttributeCondition, actual: Any) -> str | None:
    """``None`` when ``actual`` satisfies ``condition``, else why not, with the value:
    ``EchoTime 95 ms > 20 ms``."""
    values = _values(actual)
    if not values:
        if condition.missing == "refuse":
            return f"{keyword} is absent or empty, and the model needs it"
        return None
    unit = UNITS.get(keyword, "")
    shown = "\\".join(_show(v, unit) for v in values)
    checks = _checks(keyword, condition, values, unit, shown)
    return next((why for holds, why in checks if not holds), None)


def _checks(
    keyword: str, condition: AttributeCondition, values: list[Any], unit: str, shown: str
) -> Iterator[tuple[bool, str]]:
    """(holds, why not) for each part of the condition, lazily."""
    if condition.equals is not None:
        expected = condition.equals
        yield (
            all(_equals(v, expected) for v in values),
            f"{keyword} is {shown}, not {_show(expected, unit)}",
        )
    if condition.in_ is not None:
        options = condition.in_
        yield (
            all(any(_equals(v, o) for o in options) for v in values),
            f"{keyword} {shown} is not one of {', '.join(_show(o, unit) for o in options)}",
        )
    if condition.not_in is not None:
        barred = [v for v in values if any(_equals(v, o) for o in condition.not_in or ())]
        yield (not barred, f"{keyword} is {shown}, which the model does not accept")
    if condition.min is not None or condition.max is not None:
        numbers = [_number(v) for v in values]
        if any(n is None for n in numbers):
            yield False, f"{keyword} {shown} is not a number"
        for n in (n for n in numbers if n is not None):
            if condition.min is not None and n < condition.min:
                yield False, f"{keyword} {_show(n, unit)} < {_show(condition.min, unit)}"
            if condition.max is not None and n > condition.max:
                yield False, f"{keyword} {_show(n, unit)} > {_show(condition.max, unit)}"
    if condition.regex is not None:
        pattern = _regex(condition.regex)
        yield (
            all(pattern.fullmatch(str(v).strip()) for v in values),
            f"{keyword} {shown!r} does not match {condition.regex}",
        )
    present = {str(v).strip().upper() for v in values}
    if condition.contains is not None:
        lacking = [c for c in condition.contains if c.strip().upper() not in present]
        yield not lacking, f"{keyword} {shown} does not contain {', '.join(lacking)}"
    if condition.excludes is not None:
        barred = [c for c in condition.excludes if c.strip().upper() in present]
        yield not barred, f"{keyword} {shown} contains {', '.join(barred)}"


def extent_refusals(spec: ExtentSpec, facts: SeriesFacts) -> list[str]:
    """Why the series' physical size is outside ``spec`` (empty: it is inside)."""
    known = [e for e in facts.edges_mm if e is not None]
    if not known or (facts.patient_axes is None and not _scalar_bounds(spec)):
        if spec.missing == "refuse":
            return ["the headers do not give the series' physical size, and the model needs it"]
        return []
    problems: list[str] = []
    for name, bound, too in (("min", spec.min, "<"), ("max", spec.max, ">")):
        if bound is None:
            continue
        limits = per_axis(bound)
        if facts.patient_axes is not None:
            sizes = zip(_AXES, facts.extent_mm, limits, strict=True)
        else:  # a single number bounds every edge, whatever the orientation
            sizes = zip(_EDGES, facts.edges_mm, limits, strict=True)
        for where, size, limit in sizes:
            if size is not None and ((size < limit) if name == "min" else (size > limit)):
                problems.append(f"extent along {where} {size:.0f} mm {too} {limit:g} mm")
    return problems


def _scalar_bounds(spec: ExtentSpec) -> bool:
    return all(b is None or not isinstance(b, tuple) for b in (spec.min, spec.max))


# -- values ------------------------------------------------------------------------------


def _get(header: Dataset, keyword: str) -> Any:
    try:
        return header.get(keyword)
    except Exception:  # noqa: BLE001 -- pydicom raises many types for malformed values
        return None


def _first_item(sequence: Any) -> Dataset | None:
    try:
        return sequence[0] if sequence else None
    except (IndexError, TypeError):
        return None


def _values(actual: Any) -> list[Any]:
    if actual is None:
        return []
    items = list(actual) if isinstance(actual, MultiValue | list | tuple) else [actual]
    return [v for v in items if v is not None and str(v).strip() != ""]


def _equals(value: Any, expected: str | int | float) -> bool:
    """Numbers numerically (``DS`` ``"4.0"`` equals 4), anything else as trimmed text."""
    numeric_value = isinstance(value, int | float) and not isinstance(value, bool)
    if numeric_value or (isinstance(expected, int | float) and not isinstance(expected, bool)):
        a, b = _number(value), _number(expected)
        if a is not None and b is not None:
            return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return str(value).strip() == str(expected).strip()


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _show(value: Any, unit: str) -> str:
    number = _number(value) if not isinstance(value, str) or unit else None
    if number is not None:
        return f"{number:g} {unit}".rstrip()
    return str(value).strip()


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def _float(value: Any) -> float | None:
    return _number(value)


def _floats(value: Any) -> list[float] | None:
    items = _values(value)
    numbers = [_number(v) for v in items]
    if not numbers or any(n is None for n in numbers):
        return None
    return [float(n) for n in numbers if n is not None]


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)
