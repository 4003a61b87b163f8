"""What a segmentation says, measured once and reported by the SR, the SC and the PDF.

Per label (segment): voxel count and volume; where the modality is quantitative (CT, in
Hounsfield units after the Modality LUT) the mean and maximum intensity inside it; and
its key slice, the slice where it is largest, with the outline of its largest region
there and that region's area.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.sr.coding import Code

from inference import codes
from inference.volume import Volume
from inference.writers import ordered_labels, segment_voxel_counts
from inference.writers.contours import outer_contour, polygon_area
from models.manifest import LabelSpec, ModelManifest

#: Significant digits of reported values: far finer than any segmentation is accurate,
#: and short enough for a DS value (16 characters) whatever the magnitude.
_DIGITS = 6
#: Up to this many labels are counted by comparison, more by histogram (slice_counts).
_FEW_VALUES = 8


def round_value(value: float) -> float:
    """``value`` to the six significant digits every measurement is reported with."""
    return float(f"{value:.{_DIGITS}g}")


@dataclass(frozen=True)
class KeySlice:
    """A segment's largest cross-section: where a viewer should show it first."""

    #: Index into the volume's slices (``volume.source_headers``).
    index: int
    #: The outline of the largest region there, closed, ``(column, row)`` pixel corners.
    outline: npt.NDArray[np.float64]
    #: Area inside the outline, in mm2.
    area_mm2: float


@dataclass(frozen=True)
class SegmentFinding:
    """One label of the model on one volume."""

    label: LabelSpec
    #: Segment number in the SEG (1-based, label-value order).
    number: int
    voxels: int
    volume_ml: float
    #: Mean and maximum intensity inside the segment, in :attr:`unit`; ``None`` where the
    #: modality is not quantitative or the segment is empty.
    mean: float | None
    maximum: float | None
    unit: Code | None
    #: ``None`` when the segment is empty (or only on interpolated slices).
    key_slice: KeySlice | None
    #: Indices of the source slices the segment has pixels on (never an interpolated
    #: slice: see :attr:`inference.volume.Volume.interpolated_slices`).
    slices: tuple[int, ...]

    @property
    def present(self) -> bool:
        return self.voxels > 0


def intensity_unit(volume: Volume) -> Code | None:
    """The unit of the volume's values when they are quantitative, else ``None``.

    CT values are Hounsfield units after the Modality LUT (PS3.3 C.11.1.1.2), unless a
    Rescale Type says otherwise; MR and other modalities have arbitrary units.
    """
    if volume.modality != "CT":
        return None
    rescale_type = str(volume.source_headers[0].get("RescaleType", "HU") or "HU")
    return codes.HOUNSFIELD_UNIT if rescale_type.upper() == "HU" else None


def slice_counts(labels: npt.NDArray[np.integer], values: Sequence[int]) -> npt.NDArray[np.int64]:
    """Voxel count of each of ``values`` on each slice of ``labels``: ``[z, len(values)]``.

    A few values are counted plane by plane (a comparison and a population count, far
    cheaper than a histogram of every plane); many in one histogram per plane.
    """
    planes = labels.reshape((-1, *labels.shape[-2:]))
    table = np.zeros((planes.shape[0], len(values)), dtype=np.int64)
    if len(values) <= _FEW_VALUES:
        for z, plane in enumerate(planes):
            for column, value in enumerate(values):
                table[z, column] = np.count_nonzero(plane == value)
        return table
    for z, plane in enumerate(planes):
        histogram = np.bincount(plane.reshape(-1), minlength=max(values) + 1)
        table[z] = histogram[list(values)]
    return table


def segment_findings(
    volume: Volume, labels: npt.NDArray[np.integer], manifest: ModelManifest
) -> tuple[SegmentFinding, ...]:
    """Measure every label of ``manifest`` on ``labels`` (``[z, y, x]``, on ``volume``).

    Raises:
        InvalidInputError: (``stage="write"``) the map holds undeclared values.
    """
    ordered = ordered_labels(manifest)
    values = [label.value for label in ordered]
    table = slice_counts(labels, values)
    counts = table.sum(axis=0)
    declared = sum(int(c) for v, c in zip(values, counts, strict=True) if v != 0)
    if declared != np.count_nonzero(labels):
        segment_voxel_counts(labels, manifest)  # names the undeclared values
    unit = intensity_unit(volume)
    voxel_ml = volume.voxel_volume_mm3 / 1000.0
    pixel_mm2 = volume.spacing[0] * volume.spacing[1]
    interpolated = list(volume.interpolated_slices)
    findings = []
    for number, label in enumerate(ordered, start=1):
        count = int(counts[number - 1])
        mean = maximum = None
        key = None
        slices: tuple[int, ...] = ()
        if count:
            per_slice = table[:, number - 1].copy()
            # Slices interpolated over missing ones count in the volume, but have no
            # source image to reference or draw on.
            per_slice[interpolated] = 0
            slices = tuple(int(i) for i in np.flatnonzero(per_slice))
            if unit is not None:
                # Only the slices the label is on (all of them, interpolated or not).
                present = np.flatnonzero(table[:, number - 1])
                span = slice(int(present[0]), int(present[-1]) + 1)
                inside = volume.voxels[span][labels[span] == label.value]
                mean = round_value(float(inside.mean(dtype=np.float64)))
                maximum = round_value(float(inside.max()))
            if slices:
                index = int(np.argmax(per_slice))
                outline = outer_contour(labels[index] == label.value)
                key = KeySlice(
                    index=index,
                    outline=outline,
                    area_mm2=round_value(polygon_area(outline) * pixel_mm2),
                )
        findings.append(
            SegmentFinding(
                label=label,
                number=number,
                voxels=count,
                volume_ml=round_value(count * voxel_ml),
                mean=mean,
                maximum=maximum,
                unit=unit,
                key_slice=key,
                slices=slices,
            )
        )
    return tuple(findings)


def projection_area(volume: Volume, finding: SegmentFinding) -> float:
    """The area a segment covers on a projection radiograph: mm2, or pixels where the
    image has no pixel spacing (:attr:`inference.projection.Projection.calibrated`)."""
    return round_value(finding.voxels * volume.spacing[0] * volume.spacing[1])


def size_unit(volume: Volume) -> str:
    """The unit :func:`size_text` gives sizes in on ``volume``: ml, mm2 or pixels."""
    if volume.projection is None:
        return "ml"
    return "mm2" if volume.projection.calibrated else "pixels"


def size_text(volume: Volume, value: float) -> str:
    """A segment's size for people: its volume in ml, or on a radiograph its area."""
    unit = size_unit(volume)
    return f"{value:.0f} {unit}" if unit == "pixels" else f"{value:.1f} {unit}"


def finding_size(volume: Volume, finding: SegmentFinding) -> float:
    """A segment's size in :func:`size_unit`: its volume, or on a radiograph its area."""
    return finding.volume_ml if volume.projection is None else projection_area(volume, finding)
