"""Segments of a DICOM SEG as masks on the grid of the series it segments.

The grid is the source series' (its instances as the node keeps them): slices sorted
along the slice normal, voxel spacing from Pixel Spacing and the step between slices.
Each SEG frame is put on its slice by the source image it names (Derivation Image
Sequence > Source Image Sequence > Referenced SOP Instance UID, PS3.3 C.8.20.3), or,
where a frame names none, by its Image Position (Patient) projected on the slice normal
(within half a slice step). Frame of Reference UIDs are not compared: real archives
carry series with one per slice (LIDC-IDRI), and a frame that names its source image is
placed by that image whatever its Frame of Reference.

A FRACTIONAL SEG counts a voxel in a segment from half its Maximum Fractional Value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import pixel_array

from core.errors import PacsAiError
from pacs_ai.compare.metrics import Mask, Spacing


class SegReadError(PacsAiError):
    """A SEG or its source series cannot be put on one grid (the message says why)."""


#: What pydicom raises on a file that is not DICOM, is cut short or cannot be opened.
_UNREADABLE = (InvalidDicomError, OSError, EOFError)
#: What reading a data set raises when an attribute it needs is missing or malformed.
_MALFORMED = (AttributeError, KeyError, IndexError, TypeError, ValueError)
#: What decoding pixel data raises (a transfer syntax with no decoder installed, ...).
_UNDECODABLE = (*_MALFORMED, NotImplementedError, RuntimeError)


def read_dicom(path: str | Path, *, stop_before_pixels: bool = False) -> Dataset:
    """A DICOM file, read.

    Raises:
        SegReadError: it is not DICOM, is cut short or cannot be opened.
    """
    try:
        return dcmread(path, stop_before_pixels=stop_before_pixels)
    except _UNREADABLE as exc:
        raise SegReadError(f"{Path(path).name}: not a readable DICOM file ({exc})") from exc


@dataclass(frozen=True, slots=True)
class SourceGrid:
    """The voxel grid of a source series: ``[z, y, x]`` shape and spacing in mm."""

    shape: tuple[int, int, int]
    spacing: Spacing
    #: Slice index of each source SOP Instance UID.
    slice_of: dict[str, int]
    #: Position of each slice along the normal (mm), ascending.
    positions: npt.NDArray[np.float64]
    normal: npt.NDArray[np.float64]

    @classmethod
    def read(cls, paths: Sequence[str | Path]) -> SourceGrid:
        """The grid of a series from its instances' headers.

        Raises:
            SegReadError: an unreadable file, no instances, no geometry, or slices of
                different sizes.
        """
        headers = [read_dicom(path, stop_before_pixels=True) for path in paths]
        headers = [h for h in headers if "ImagePositionPatient" in h and "Rows" in h]
        if not headers:
            raise SegReadError("the source series has no image with a position")
        try:
            return cls._from_headers(headers)
        except _MALFORMED as exc:
            raise SegReadError(f"the source series has no usable geometry: {exc!r}") from exc

    @classmethod
    def _from_headers(cls, headers: list[Dataset]) -> SourceGrid:
        orientation = np.array([float(v) for v in headers[0].ImageOrientationPatient])
        normal = np.cross(orientation[:3], orientation[3:])
        at = [float(np.dot(normal, [float(v) for v in h.ImagePositionPatient])) for h in headers]
        order = np.argsort(at)
        sizes = {(int(h.Rows), int(h.Columns)) for h in headers}
        if len(sizes) != 1:
            raise SegReadError(f"the source slices have different sizes: {sorted(sizes)}")
        rows, columns = sizes.pop()
        positions = np.array(at)[order]
        step = float(np.median(np.diff(positions))) if len(positions) > 1 else 1.0
        row_spacing, column_spacing = (float(v) for v in headers[0].PixelSpacing)
        return cls(
            shape=(len(headers), rows, columns),
            spacing=(abs(step) or 1.0, row_spacing, column_spacing),
            slice_of={str(headers[i].SOPInstanceUID): n for n, i in enumerate(order)},
            positions=positions,
            normal=normal,
        )

    def slice_at(self, position: Sequence[float]) -> int | None:
        """The slice at an Image Position (Patient), or None when none is within half a step."""
        along = float(np.dot(self.normal, [float(v) for v in position]))
        index = int(np.argmin(np.abs(self.positions - along)))
        if abs(self.positions[index] - along) > self.spacing[0] / 2:
            return None
        return index


@dataclass(frozen=True, slots=True)
class Segment:
    number: int
    label: str
    #: (Coding Scheme Designator, Code Value, Code Meaning) of the Segmented Property Type.
    property_type: tuple[str, str, str]
    mask: Mask

    @property
    def code(self) -> tuple[str, str]:
        return self.property_type[:2]


@dataclass(frozen=True, slots=True)
class SegMasks:
    """The segments of one SEG on a source grid."""

    sop_instance_uid: str
    segments: list[Segment] = field(default_factory=list)
    #: Frames that could be put on no slice of the source series.
    unplaced_frames: int = 0

    def union(self, shape: tuple[int, int, int]) -> Mask:
        result = np.zeros(shape, dtype=np.bool_)
        for segment in self.segments:
            result |= segment.mask
        return result


def read_seg(seg: Dataset, grid: SourceGrid) -> SegMasks:
    """The segments of ``seg`` (a full data set, pixel data included) on ``grid``.

    The decoded frames are not kept on ``seg`` (``seg.pixel_array`` would cache them: 8
    times the stored size of a BINARY SEG).

    Raises:
        SegReadError: its frames have another size than the source slices, or it lacks
            or garbles what a SEG needs (Segment Sequence, per-frame groups, pixel data).
    """
    uid = str(seg.get("SOPInstanceUID", "(no SOP Instance UID)"))
    try:
        return _read_seg(seg, grid)
    except _UNDECODABLE as exc:
        raise SegReadError(f"SEG {uid} cannot be read: {exc!r}") from exc


def _read_seg(seg: Dataset, grid: SourceGrid) -> SegMasks:
    rows, columns = int(seg.Rows), int(seg.Columns)
    if (rows, columns) != grid.shape[1:]:
        raise SegReadError(
            f"SEG {seg.SOPInstanceUID} frames are {rows}x{columns}, the source slices "
            f"{grid.shape[1]}x{grid.shape[2]}: not on the same grid"
        )
    pixels = np.asarray(pixel_array(seg))
    if pixels.ndim == 2:
        pixels = pixels[None]
    threshold = 1
    if str(seg.get("SegmentationType", "BINARY")) == "FRACTIONAL":
        threshold = max(1, int(seg.get("MaximumFractionalValue", 255)) // 2 + 1)
    masks: dict[int, Mask] = {
        int(item.SegmentNumber): np.zeros(grid.shape, dtype=np.bool_)
        for item in seg.SegmentSequence
    }
    unplaced = 0
    for frame, groups in zip(pixels, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(groups.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        index = _frame_slice(groups, grid)
        if index is None or number not in masks:
            unplaced += int(frame.any())
            continue
        masks[number][index] |= frame >= threshold
    segments = [
        Segment(
            number=int(item.SegmentNumber),
            label=str(item.get("SegmentLabel", "") or f"segment {item.SegmentNumber}"),
            property_type=_code(item),
            mask=masks[int(item.SegmentNumber)],
        )
        for item in seg.SegmentSequence
    ]
    return SegMasks(str(seg.SOPInstanceUID), segments, unplaced)


def _frame_slice(groups: Dataset, grid: SourceGrid) -> int | None:
    for derivation in groups.get("DerivationImageSequence", []):
        for source in derivation.get("SourceImageSequence", []):
            index = grid.slice_of.get(str(source.ReferencedSOPInstanceUID))
            if index is not None:
                return index
    plane = groups.get("PlanePositionSequence")
    if plane:
        return grid.slice_at(plane[0].ImagePositionPatient)
    return None


def _code(item: Dataset) -> tuple[str, str, str]:
    codes = item.get("SegmentedPropertyTypeCodeSequence")
    if not codes:
        return ("", "", "")
    code = codes[0]
    return (
        str(code.get("CodingSchemeDesignator", "")),
        str(code.get("CodeValue", "")),
        str(code.get("CodeMeaning", "")),
    )
