"""The frames of an enhanced multi-frame image: each one's geometry and rescale.

An enhanced image (Enhanced CT / MR / PET, Legacy Converted Enhanced CT / MR / PET:
PS3.3 A.38, A.36, A.56, A.70-A.72) holds a whole stack in one SOP instance. What a
single-frame image says at its top level, a frame says in the Multi-frame Functional
Groups (PS3.3 C.7.6.16): its item of the Per-frame Functional Groups Sequence or, for
what all frames share, the one item of the Shared Functional Groups Sequence, the
per-frame item taking precedence (C.7.6.16.1). :func:`frame_geometries` reads, for each
frame, the Plane Position (Patient) (C.7.6.16.2.3), Plane Orientation (Patient)
(C.7.6.16.2.4), Pixel Measures (C.7.6.16.2.1) and Pixel Value Transformation
(C.7.6.16.2.9) macros; :mod:`inference.volume` then checks the frames exactly as it
checks single-frame slices.

:func:`frame_view` gives a frame as a single-frame header (its geometry at the top level),
for what describes images one by one (the SR's Image Library). :func:`with_shared_geometry`
gives a copy of a multi-frame header whose Shared Functional Groups carry the orientation
and pixel measures that every frame has (highdicom's SEG reads them only there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag

_SHARED = Tag(0x5200, 0x9229)  # Shared Functional Groups Sequence
_PER_FRAME_KEYWORD = "PerFrameFunctionalGroupsSequence"
_SHARED_KEYWORD = "SharedFunctionalGroupsSequence"
#: The macros whose values a frame view lifts to the top level, and the attributes in them.
_GEOMETRY = (
    ("PlanePositionSequence", ("ImagePositionPatient",)),
    ("PlaneOrientationSequence", ("ImageOrientationPatient",)),
    ("PixelMeasuresSequence", ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices")),
)


@dataclass(frozen=True)
class FrameGeometry:
    """One frame of a multi-frame image, as its functional groups describe it.

    A value is ``None`` where neither the frame's item nor the shared item gives it.
    """

    #: 1-based Frame Number (PS3.3 C.7.6.6).
    frame_number: int
    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    #: (row spacing, column spacing) in mm, as Pixel Spacing (0028,0030).
    pixel_spacing: tuple[float, float] | None
    #: (slope, intercept) of the Pixel Value Transformation; ``None`` when there is none.
    rescale: tuple[float, float] | None


def is_multiframe(dataset: Dataset) -> bool:
    """Whether ``dataset`` is a multi-frame image (Number of Frames above 1, or functional
    groups, which an enhanced image has even with one frame)."""
    frames = dataset.get("NumberOfFrames")
    try:
        count = int(frames) if frames not in (None, "") else 1
    except (TypeError, ValueError):
        count = 1
    return count > 1 or _PER_FRAME_KEYWORD in dataset


def has_functional_groups(dataset: Dataset) -> bool:
    """Whether ``dataset`` carries the Multi-frame Functional Groups module."""
    return _PER_FRAME_KEYWORD in dataset


def _macro(dataset: Dataset, frame_index: int, keyword: str) -> Dataset | None:
    """The first item of macro ``keyword`` for a frame: its own, else the shared one."""
    per_frame = dataset.get(_PER_FRAME_KEYWORD)
    if per_frame is not None and frame_index < len(per_frame):
        item = per_frame[frame_index].get(keyword)
        if item:
            return item[0]  # type: ignore[no-any-return]
    shared = dataset.get(_SHARED_KEYWORD)
    if shared:
        item = shared[0].get(keyword)
        if item:
            return item[0]  # type: ignore[no-any-return]
    return None


def _floats(item: Dataset | None, keyword: str, count: int) -> tuple[float, ...] | None:
    value = None if item is None else item.get(keyword)
    if value is None:
        return None
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if len(values) != count:
        return None
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None


def frame_count(dataset: Dataset) -> int:
    """Number of Frames, or the length of the Per-frame Functional Groups Sequence."""
    frames = dataset.get("NumberOfFrames")
    try:
        return int(frames)
    except (TypeError, ValueError):
        return len(dataset.get(_PER_FRAME_KEYWORD, []))


def frame_geometries(dataset: Dataset) -> list[FrameGeometry]:
    """The geometry and rescale of every frame of a multi-frame image, in frame order.

    Implements the lookup of PS3.3 C.7.6.16.1: a macro in the frame's Per-frame
    Functional Groups item, else in the Shared Functional Groups item.
    """
    geometries = []
    for index in range(frame_count(dataset)):
        position = _floats(
            _macro(dataset, index, "PlanePositionSequence"), "ImagePositionPatient", 3
        )
        orientation = _floats(
            _macro(dataset, index, "PlaneOrientationSequence"), "ImageOrientationPatient", 6
        )
        spacing = _floats(_macro(dataset, index, "PixelMeasuresSequence"), "PixelSpacing", 2)
        transformation = _macro(dataset, index, "PixelValueTransformationSequence")
        slope = _floats(transformation, "RescaleSlope", 1)
        intercept = _floats(transformation, "RescaleIntercept", 1)
        rescale = None
        if slope is not None or intercept is not None:
            rescale = (slope[0] if slope else 1.0, intercept[0] if intercept else 0.0)
        geometries.append(
            FrameGeometry(
                frame_number=index + 1,
                position=position,  # type: ignore[arg-type]
                orientation=orientation,  # type: ignore[arg-type]
                pixel_spacing=spacing,  # type: ignore[arg-type]
                rescale=rescale,
            )
        )
    return geometries


def frame_view(dataset: Dataset, frame_number: int) -> Dataset:
    """A shallow copy of ``dataset`` with frame ``frame_number``'s geometry at the top level.

    Image Position / Orientation (Patient), Pixel Spacing, Slice Thickness and Spacing
    Between Slices are taken from the frame's functional groups (else the shared ones);
    the functional groups and the pixel data are left out. The SOP Instance UID stays
    the multi-frame image's: a reference to the frame needs the frame number too.
    """
    view = Dataset()
    for element in dataset:
        if element.keyword in (_PER_FRAME_KEYWORD, _SHARED_KEYWORD, "PixelData"):
            continue
        view.add(element)
    view.file_meta = dataset.file_meta
    index = frame_number - 1
    for macro, keywords in _GEOMETRY:
        item = _macro(dataset, index, macro)
        if item is None:
            continue
        for keyword in keywords:
            if keyword in item:
                element = item[keyword]
                view.add(DataElement(element.tag, element.VR, element.value))
    return view


def with_shared_geometry(dataset: Dataset) -> Dataset:
    """A shallow copy of a multi-frame header whose shared functional groups carry the
    Plane Orientation and Pixel Measures of its first frame, when only frames carried them.

    Only for an image whose frames share them (which :func:`inference.volume.load_series`
    has checked); the per-frame items are left as they are (a frame's own value still
    comes first, and equals the shared one).
    """
    copy = Dataset()
    copy.update(dataset)
    copy.file_meta = dataset.file_meta
    shared_items = dataset.get(_SHARED_KEYWORD)
    shared = Dataset()
    if shared_items:
        shared.update(shared_items[0])
    changed = False
    for macro in ("PlaneOrientationSequence", "PixelMeasuresSequence"):
        if shared.get(macro):
            continue
        first = _macro(dataset, 0, macro)
        if first is not None:
            shared[macro] = DataElement(Tag(macro), "SQ", DicomSequence([first]))
            changed = True
    if changed:
        copy[_SHARED] = DataElement(_SHARED, "SQ", DicomSequence([shared]))
    return copy
