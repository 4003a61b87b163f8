"""From a series of DICOM images on disk (single-frame, or one enhanced multi-frame image)
to one float32 volume.

:func:`load_series` reads leniently (pydicom reading validation WARN), checks that the
images form one regular stack and returns a :class:`Volume`: voxels ``[z, y, x]`` in
modality units (Rescale Slope/Intercept or Modality LUT applied, PS3.3 C.11.1; HU for CT),
slices sorted along the slice normal (PS3.3 C.7.6.2.1.1), plus the geometry and the
headers the SEG/SR writers need.

Accepted input: one series, one sample per pixel, of single-frame images with the Image
Plane module (CT, MR, PET, ...) or of one enhanced multi-frame image (Enhanced CT / MR /
PET, Legacy Converted Enhanced: every frame a slice, its geometry and rescale from the
functional groups, see :mod:`inference.frames`). Refused with
:class:`core.errors.InvalidInputError` (``stage="volume"``), listing every problem found
at once: files that are not DICOM, non-image objects, multi-frame images without
functional groups, several multi-frame images in one series, mixed Rows/Columns, Pixel
Spacing or Image Orientation, non-orthonormal orientation, duplicate positions, positions
that do not lie on one line along the slice normal (gantry tilt), missing slices beyond
the caller's limit, irregular spacing, too few slices, undecodable pixel data.

Tolerances (the documented contract):

* orientation cosines equal across slices within :data:`ORIENTATION_TOLERANCE`; row and
  column cosines unit length and orthogonal within :data:`ORTHONORMAL_TOLERANCE`;
* pixel spacing equal within a relative :data:`SPACING_TOLERANCE`;
* positions collinear along the normal: in-plane drift at most
  :data:`COLLINEAR_TOLERANCE_PIXELS` of the smaller pixel spacing;
* two slices closer than :data:`DUPLICATE_TOLERANCE_MM` along the normal are duplicates;
* a gap larger than :data:`MISSING_SLICE_FACTOR` times the median step means missing
  slices; any other step that differs from the median by more than
  :data:`STEP_TOLERANCE` (relative) is irregular spacing. The z spacing is the mean step
  ``(last - first) / (n - 1)`` measured from the positions (missing slices counted),
  never Slice Thickness.

Missing slices
--------------
One missing slice is common in real archives. ``load_series(..., max_missing=N)`` fills a
gap of up to N consecutive missing slices by linear interpolation along the slice normal
between the two slices around it; the model's manifest decides N
(``accepts.missing_slices``; by default 2 for models that resample, 0 for the others, see
:attr:`models.manifest.ModelManifest.max_missing_slices`). A gap counts as missing slices
only when it is a whole number of median steps (within :data:`STEP_TOLERANCE` of a step);
a gap of more slices than N, or of a fraction of a step, is refused with the reason. The
:class:`Volume` says which z indices were interpolated (:attr:`Volume.slice_sources`
``None`` there) and a note records them; the writers give them no SEG frame and no
source-image reference.

Frame of Reference policy
-------------------------
Real archives contain series whose slices carry *different* Frame of Reference UIDs
(the LIDC-IDRI CT has a different one on every slice, an old de-identification artefact),
which no DICOM SEG can reference as one frame. pacs-ai treats slices that form one
geometry-consistent stack (the checks above: same size, pixel spacing and orientation,
positions collinear along the normal and regularly spaced) as sharing one frame of
reference, and uses the Frame of Reference UID of the **first slice in sorted order**
(lowest position along the slice normal). It logs a WARNING (UIDs only, no patient data)
and records a note in :attr:`Volume.notes`. If the slices are not geometry-consistent the
series is refused, whatever their UIDs. The files on disk are never modified; the writers
give highdicom copies of the headers carrying the chosen UID while referencing the true
source SOP Instance UIDs.

Lenient reading: every header value is converted as the file is read, inside a
warnings capture, so that pydicom's validation warnings surface here and never later as
Python warnings in a caller (a writer, a test run with ``filterwarnings = error``). Each is
logged per SOP instance: the text at DEBUG (it may quote a value such as a patient name),
a count at WARNING. pydicom's own log records, which quote values at WARNING, are dropped
while a series loads.

Speed and memory: reading is sequential. On the 275-slice LIDC CT (512x512, uncompressed,
2 CPU cores) it takes about as long as SimpleITK's ImageSeriesReader (0.6-0.9 s on a quiet
machine): parsing, converting the header values up front (a value an earlier slice of the
series had is not converted again: most of them) and decoding; a thread pool of 4 was
measured slower (parsing holds the GIL). Uncompressed single-frame slices bypass
pydicom's decoding: their values are read from the file into one reused buffer and
rescaled into the volume in one pass (:mod:`inference.native_pixels`, the same values);
compressed series are decoded by the fastest installed plugin
(:mod:`inference.decoders`); ``benchmarks/pipeline.py`` compares them with SimpleITK.
Pixel data is read lazily (deferred) and decoded straight into the preallocated float32
volume, so peak memory is the volume plus one slice (plus the stored pixel data of an
enhanced multi-frame image, which is read whole and decoded frame by frame).
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import warnings
from collections import Counter
from collections.abc import Iterator, MutableSequence, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from pydicom import config, dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_modality_lut
from pydicom.pixels.utils import pixel_array
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from core.errors import InvalidInputError
from inference import decode_pool
from inference.decoders import decoding_plugin
from inference.frames import frame_geometries, has_functional_groups, is_multiframe
from inference.native_pixels import (
    NativeLayout,
    native_layout,
    pixel_buffer,
    read_native,
    rescale_into,
)

if TYPE_CHECKING:
    from inference.projection import Projection

logger = logging.getLogger(__name__)

STAGE = "volume"

ORIENTATION_TOLERANCE = 1e-4
ORTHONORMAL_TOLERANCE = 1e-3
SPACING_TOLERANCE = 1e-4
COLLINEAR_TOLERANCE_PIXELS = 0.1
DUPLICATE_TOLERANCE_MM = 0.01
MISSING_SLICE_FACTOR = 1.5
STEP_TOLERANCE = 0.05
DEFAULT_MIN_SLICES = 2

_PIXEL_DATA_TAGS = frozenset({Tag(0x7FE0, 0x0010), Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009)})
_SPECIFIC_CHARACTER_SET = Tag(0x0008, 0x0005)
_PIXEL_DATA = Tag(0x7FE0, 0x0010)
_UNDEFINED_LENGTH = 0xFFFFFFFF
# Pixel data is read from the file only when decoded, so headers of a whole series fit
# in a few MB.
_DEFER_SIZE = "64 KB"
_MAX_LISTED = 8


@dataclass(frozen=True)
class SliceSource:
    """Where one slice of a :class:`Volume` comes from: a source header and, when that
    header is a multi-frame image, the frame (PS3.3 C.7.6.16)."""

    #: Index into :attr:`Volume.source_headers`.
    header_index: int
    #: 1-based Frame Number in a multi-frame image; ``None`` for a single-frame image.
    frame_number: int | None = None


@dataclass(frozen=True, eq=False)
class Volume:
    """A series as one regular 3D grid in patient (LPS) coordinates.

    Treat every field as read-only: the arrays are shared, not copied.

    Attributes:
        voxels: float32 ``[z, y, x]`` in modality units (HU for CT).
        spacing: voxel size (x, y, z) in mm: column spacing, row spacing, slice step.
        origin: Image Position (Patient) of the first slice, i.e. centre of voxel [0, 0, 0].
        direction: 3x3; columns are the row direction (x), the column direction (y) and
            the slice normal (z), in patient LPS coordinates.
        source_headers: the source datasets without pixel data, in sorted slice order
            (single-frame images), or the one multi-frame image.
        frame_of_reference_uid: the one Frame of Reference UID of the volume (see the
            module's Frame of Reference policy).
        notes: non-fatal facts worth recording with the result (policies applied, ...).
        slice_sources: per z index, the header (and frame) the slice was read from, or
            ``None`` for a slice interpolated over missing slices. Empty means one
            single-frame header per slice, in order. Read it through
            :meth:`slice_source`.
    """

    voxels: npt.NDArray[np.float32]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: npt.NDArray[np.float64]
    source_headers: tuple[Dataset, ...]
    frame_of_reference_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    notes: tuple[str, ...] = ()
    #: Projection radiographs (CR, DX, MG): how the one image was read (photometric
    #: inversion, value range, where the spacing came from); ``None`` for volumes.
    #: See :mod:`inference.projection`.
    projection: Projection | None = None
    slice_sources: tuple[SliceSource | None, ...] = ()

    def slice_source(self, z: int) -> SliceSource | None:
        """Where slice ``z`` was read from; ``None`` when it was interpolated."""
        if not self.slice_sources:
            return SliceSource(z)
        return self.slice_sources[z]

    def slice_header(self, z: int) -> Dataset | None:
        """The header slice ``z`` was read from (a multi-frame image for each of its
        frames); ``None`` when the slice was interpolated."""
        source = self.slice_source(z)
        return None if source is None else self.source_headers[source.header_index]

    @property
    def interpolated_slices(self) -> tuple[int, ...]:
        """z indices of the slices interpolated over missing slices (no source image)."""
        return tuple(z for z, source in enumerate(self.slice_sources) if source is None)

    @property
    def source_slices(self) -> tuple[int, ...]:
        """z indices of the slices read from a source image, in z order."""
        if not self.slice_sources:
            return tuple(range(self.shape[0]))
        return tuple(z for z, source in enumerate(self.slice_sources) if source is not None)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(z, y, x)`` voxel counts."""
        z, y, x = self.voxels.shape
        return (int(z), int(y), int(x))

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in cubic millimetres."""
        return float(self.spacing[0] * self.spacing[1] * self.spacing[2])

    @property
    def affine(self) -> npt.NDArray[np.float64]:
        """4x4 matrix mapping a voxel index ``(x, y, z, 1)`` to its LPS position in mm."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction * np.asarray(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix


@dataclass
class _Slice:
    path: Path
    header: Dataset
    sop_instance_uid: str
    position: npt.NDArray[np.float64]
    orientation: tuple[float, ...] = ()
    #: (row spacing, column spacing), as Pixel Spacing.
    pixel_spacing: tuple[float, ...] = ()
    #: Multi-frame images: the 1-based frame and its (slope, intercept), if any.
    frame_number: int | None = None
    rescale: tuple[float, float] | None = None

    @property
    def name(self) -> str:
        """The SOP instance, and the frame of a multi-frame image (for messages)."""
        if self.frame_number is None:
            return self.sop_instance_uid
        return f"{self.sop_instance_uid} frame {self.frame_number}"


class _DropPydicomRecords(logging.Filter):
    # pydicom logs every invalid value *with the value* (a patient name, say) at WARNING
    # and also raises it as a Python warning; we capture the warnings and log them
    # ourselves per SOP instance (details at DEBUG only), so its own records are dropped.
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.WARNING


@contextmanager
def _quiet_pydicom_logger() -> Iterator[None]:
    pydicom_logger = logging.getLogger("pydicom")
    record_filter = _DropPydicomRecords()
    pydicom_logger.addFilter(record_filter)
    try:
        yield
    finally:
        pydicom_logger.removeFilter(record_filter)


def _log_reading_warnings(
    caught: list[warnings.WarningMessage], sop_instance_uid: str, what: str
) -> None:
    if not caught:
        return
    for item in caught:
        # The text may quote values (names, dates): DEBUG only.
        logger.debug("SOP instance %s: %s: %s", sop_instance_uid, what, item.message)
    logger.warning(
        "SOP instance %s: %d non-conformant value(s) or structure problem(s) while %s; "
        "read leniently (details at DEBUG)",
        sop_instance_uid,
        len(caught),
        what,
    )


#: A raw header value already converted in this series: (tag, VR, bytes, character set).
_SeenKey = tuple[int, str | None, bytes, str]


@dataclass
class _Converted:
    """The values of a series' headers converted so far, each with the warnings its
    conversion gave (said again for every slice that has the value)."""

    elements: dict[_SeenKey, tuple[DataElement, list[warnings.WarningMessage]]] = field(
        default_factory=dict
    )


def _convert_elements(
    dataset: Dataset,
    converted: _Converted | None = None,
    caught: list[warnings.WarningMessage] | None = None,
) -> None:
    # pydicom converts (and validates) values lazily, on first access. Converting every
    # element now makes validation warnings surface here, where they are captured, and
    # not later inside a writer, where they would escape as Python warnings.
    # The slices of a series repeat most of their header (patient, study, equipment,
    # geometry but the position): a value already converted for an earlier slice (same
    # tag, VR, bytes and character set) is given again with its warnings, without
    # converting it again, which was most of the time a series took to read.
    charset_element = dataset.get_item(_SPECIFIC_CHARACTER_SET, keep_deferred=True)
    charset = "" if charset_element is None else str(charset_element.value)
    for tag in list(dataset.keys()):
        if tag in _PIXEL_DATA_TAGS:
            continue
        # Raw (not converted yet) unless pydicom converted it already (a deferred value).
        stored: DataElement | RawDataElement | None = dataset.get_item(tag, keep_deferred=True)
        key: _SeenKey | None = None
        if (
            converted is not None
            and caught is not None
            and isinstance(stored, RawDataElement)
            and stored.value is not None
            and not tag.is_private
            and _plain_vr(tag, stored.VR)
        ):
            key = (int(tag), stored.VR, stored.value, charset)
            found = converted.elements.get(key)
            if found is not None:
                element, said = found
                dataset[tag] = DataElement(
                    tag,
                    element.VR,
                    element.value,
                    stored.value_tell,
                    already_converted=True,
                    validation_mode=config.settings.reading_validation_mode,
                )
                caught.extend(said)
                continue
        before = len(caught) if caught is not None else 0
        element = dataset[tag]
        # Only values no one can change in place are given again: a list (MultiValue) is
        # converted for each slice, so that each header has its own.
        if (
            key is not None
            and converted is not None
            and caught is not None
            and not isinstance(element.value, MutableSequence)
        ):
            converted.elements[key] = (element, caught[before:])
        if element.VR == "SQ":
            for item in element.value:
                _convert_elements(item)


@cache
def _plain_vr(tag: BaseTag, vr: str | None) -> bool:
    """Whether a raw element converts the same way whatever else its dataset holds: not
    a sequence, and a VR that does not depend on another element (PS3.5 6.2, "US or
    SS" by Pixel Representation, ...)."""
    if vr is None:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return False
    return vr != "SQ" and " or " not in vr


def _listed(values: Sequence[str]) -> str:
    shown = ", ".join(values[:_MAX_LISTED])
    more = len(values) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


@dataclass(frozen=True)
class _ParsedHeader:
    """One file's header as read (here or by a decoding process), or why it could not be,
    and the texts of the warnings reading it gave."""

    dataset: Dataset | None
    problem: str | None
    warnings: tuple[str, ...] = ()


def _parse_header(path: Path, converted: _Converted | None = None) -> _ParsedHeader:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset = dcmread(path, defer_size=_DEFER_SIZE)
            _convert_elements(dataset, converted, caught)
        except InvalidDicomError as exc:
            return _ParsedHeader(None, f"{path.name}: not a DICOM file ({exc})")
        except (EOFError, ValueError) as exc:
            return _ParsedHeader(None, f"{path.name}: cannot be parsed as DICOM ({exc})")
    return _ParsedHeader(dataset, None, tuple(str(item.message) for item in caught))


def parse_headers(paths: list[str]) -> list[_ParsedHeader]:
    """The headers of ``paths``, in a decoding process (see :func:`_read_slices`); what
    pydicom logs is dropped as in the job's process, warnings come back as texts."""
    converted = _Converted()
    with _quiet_pydicom_logger():
        return [_parse_header(Path(path), converted) for path in paths]


def _read_header(
    path: Path, problems: list[str], converted: _Converted | None = None
) -> Dataset | None:
    return _accept_header(path, _parse_header(path, converted), problems)


def _accept_header(path: Path, parsed: _ParsedHeader, problems: list[str]) -> Dataset | None:
    """``parsed``'s dataset, its warnings logged; or None, its problem in ``problems``."""
    if parsed.dataset is None:
        problems.append(parsed.problem or f"{path.name}: cannot be parsed as DICOM")
        return None
    sop_uid = str(parsed.dataset.get("SOPInstanceUID", path.name))
    said = [warnings.WarningMessage(text, UserWarning, "", 0) for text in parsed.warnings]
    _log_reading_warnings(said, sop_uid, "reading the header")
    return parsed.dataset


def _slices_of(path: Path, ds: Dataset) -> tuple[list[_Slice], list[str]]:
    """The slices one dataset gives (one, or a multi-frame image's frames), or what makes
    it unusable as part of a volume."""
    name = f"{path.name} (SOP instance {ds.get('SOPInstanceUID', '?')})"
    if "PixelData" not in ds or "Rows" not in ds:
        sop_class = ds.get("SOPClassUID")
        kind = str(getattr(sop_class, "name", sop_class))
        if kind.endswith("Image Storage"):
            # pydicom parses a truncated file up to where it ends, without an error.
            return [], [f"{name}: a {kind} object without pixel data (truncated file?)"]
        return [], [f"{name}: not an image ({kind}); pass only the image files of one series"]
    problems = []
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        problems.append(f"{name}: {ds.SamplesPerPixel} samples per pixel; only grey-scale")
    if is_multiframe(ds):
        slices, frame_problems = _frames_of(path, ds, name)
        problems.extend(frame_problems)
        return ([] if problems else slices), problems
    expected = {"ImagePositionPatient": 3, "ImageOrientationPatient": 6, "PixelSpacing": 2}
    for keyword, length in expected.items():
        value = ds.get(keyword)
        if value is None or len(value) != length:
            problems.append(f"{name}: {keyword} missing or malformed (PS3.3 C.7.6.2)")
    if problems:
        return [], problems
    piece = _Slice(
        path=path,
        header=ds,
        sop_instance_uid=str(ds.get("SOPInstanceUID", path.name)),
        position=np.asarray(ds.ImagePositionPatient, dtype=np.float64),
        orientation=tuple(float(v) for v in ds.ImageOrientationPatient),
        pixel_spacing=tuple(float(v) for v in ds.PixelSpacing),
    )
    return [piece], []


def _frames_of(path: Path, ds: Dataset, name: str) -> tuple[list[_Slice], list[str]]:
    """The frames of a multi-frame image as slices (PS3.3 C.7.6.16), or its problems."""
    if not has_functional_groups(ds):
        return [], [
            f"{name}: a multi-frame image without the Multi-frame Functional Groups "
            "module (PS3.3 C.7.6.16), so without the position of each frame; only "
            "enhanced images (Enhanced CT / MR / PET, Legacy Converted Enhanced) or "
            "single-frame images can be read as a volume"
        ]
    sop_uid = str(ds.get("SOPInstanceUID", path.name))
    slices = []
    missing: Counter[str] = Counter()
    for frame in frame_geometries(ds):
        for keyword, value in (
            ("ImagePositionPatient (PlanePositionSequence)", frame.position),
            ("ImageOrientationPatient (PlaneOrientationSequence)", frame.orientation),
            ("PixelSpacing (PixelMeasuresSequence)", frame.pixel_spacing),
        ):
            if value is None:
                missing[keyword] += 1
        if frame.position is None or frame.orientation is None or frame.pixel_spacing is None:
            continue
        slices.append(
            _Slice(
                path=path,
                header=ds,
                sop_instance_uid=sop_uid,
                position=np.asarray(frame.position, dtype=np.float64),
                orientation=frame.orientation,
                pixel_spacing=frame.pixel_spacing,
                frame_number=frame.frame_number,
                rescale=frame.rescale,
            )
        )
    problems = [
        f"{name}: {keyword} missing or malformed in {count} frame(s), in both the "
        "per-frame and the shared functional groups (PS3.3 C.7.6.16.2)"
        for keyword, count in missing.items()
    ]
    if not slices and not missing:
        problems.append(f"{name}: a multi-frame image without frames")
    return slices, problems


def _distinct(slices: Sequence[_Slice], keyword: str) -> Counter[str]:
    return Counter(str(s.header.get(keyword, "<missing>")) for s in slices)


def _consistency_problems(slices: Sequence[_Slice]) -> list[str]:
    problems = []
    for keyword, what in (
        ("StudyInstanceUID", "studies"),
        ("SeriesInstanceUID", "series"),
        ("Modality", "modalities"),
    ):
        found = _distinct(slices, keyword)
        if len(found) > 1:
            listed = _listed([f"{value} ({count})" for value, count in found.most_common()])
            problems.append(
                f"files from {len(found)} {what} ({keyword}: {listed}); pass one series"
            )
    sizes = Counter((int(s.header.Rows), int(s.header.Columns)) for s in slices)
    if len(sizes) > 1:
        listed = _listed([f"{r}x{c} ({n})" for (r, c), n in sizes.most_common()])
        problems.append(f"mixed Rows x Columns: {listed}")
    multiframe = Counter(s.path.name for s in slices if s.frame_number is not None)
    if len(multiframe) > 1 or (multiframe and any(s.frame_number is None for s in slices)):
        problems.append(
            f"{len(multiframe)} multi-frame image(s) ({_listed(sorted(multiframe))}) "
            f"and {sum(s.frame_number is None for s in slices)} single-frame image(s) in one "
            "series: a volume is read from single-frame images or from one multi-frame "
            "image (a result references the frames of one multi-frame source); split the "
            "series, or send one enhanced image"
        )
    spacing0 = np.asarray(slices[0].pixel_spacing, dtype=np.float64)
    iop0 = np.asarray(slices[0].orientation, dtype=np.float64)
    spacings = Counter(
        _fmt(s.pixel_spacing)
        for s in slices
        if not np.allclose(s.pixel_spacing, spacing0, rtol=SPACING_TOLERANCE, atol=0)
    )
    if spacings:
        listed = _listed([f"{v} ({n})" for v, n in spacings.most_common()])
        problems.append(f"mixed PixelSpacing: {_fmt(spacing0.tolist())} and {listed}")
    orientations = Counter(
        _fmt(s.orientation)
        for s in slices
        if np.max(np.abs(np.asarray(s.orientation, dtype=np.float64) - iop0))
        > ORIENTATION_TOLERANCE
    )
    if orientations:
        listed = _listed([f"{v} ({n})" for v, n in orientations.most_common()])
        problems.append(
            f"mixed ImageOrientationPatient: {_fmt(iop0.tolist())} and {listed} "
            "(several stacks or localisers in one series?)"
        )
    return problems


def _orientation(iop: Sequence[float]) -> npt.NDArray[np.float64]:
    row = np.asarray(iop[:3], dtype=np.float64)
    col = np.asarray(iop[3:], dtype=np.float64)
    if (
        abs(np.linalg.norm(row) - 1.0) > ORTHONORMAL_TOLERANCE
        or abs(np.linalg.norm(col) - 1.0) > ORTHONORMAL_TOLERANCE
        or abs(float(np.dot(row, col))) > ORTHONORMAL_TOLERANCE
    ):
        raise InvalidInputError(
            f"ImageOrientationPatient {_fmt(list(iop))} is not two orthogonal unit vectors "
            f"(tolerance {ORTHONORMAL_TOLERANCE}); the series geometry is corrupt",
            stage=STAGE,
        )
    row = row / np.linalg.norm(row)
    col = col / np.linalg.norm(col)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    return np.stack([row, col, normal], axis=1)


def _position_problems(
    slices: Sequence[_Slice],
    distances: npt.NDArray[np.float64],
    direction: npt.NDArray[np.float64],
    *,
    max_missing: int,
) -> tuple[list[str], list[tuple[int, int]]]:
    """Duplicates, in-plane drift, gaps and irregular steps of sorted slices.

    Returns the problems and the gaps to fill: ``(i, k)``, ``k`` slices missing after
    sorted slice ``i`` (at most ``max_missing``, a whole number of median steps).
    """
    problems = []
    steps = np.diff(distances)
    duplicates = [
        f"{distances[i]:.3f} mm ({slices[i].name} and {slices[i + 1].name})"
        for i in map(int, np.flatnonzero(steps < DUPLICATE_TOLERANCE_MM))
    ]
    if duplicates:
        problems.append(
            f"{len(duplicates)} duplicate slice position(s) along the normal at "
            f"{_listed(duplicates)}; remove the repeated instances (or split the series)"
        )
    pixel = float(min(slices[0].pixel_spacing))
    origin = slices[0].position
    offsets = np.stack([s.position for s in slices]) - origin
    in_plane = offsets - np.outer(offsets @ direction[:, 2], direction[:, 2])
    drift = np.linalg.norm(in_plane, axis=1)
    if float(drift.max()) > COLLINEAR_TOLERANCE_PIXELS * pixel:
        problems.append(
            f"slice positions drift {float(drift.max()):.3f} mm sideways from the slice normal "
            f"(tolerance {COLLINEAR_TOLERANCE_PIXELS * pixel:.3f} mm): a gantry-tilted or "
            "sheared stack; resample it to an orthogonal grid first"
        )
    real_steps = steps[steps >= DUPLICATE_TOLERANCE_MM]
    if real_steps.size == 0:
        return problems, []
    median = float(np.median(real_steps))
    fills: list[tuple[int, int]] = []
    gaps = []
    for i in map(int, np.flatnonzero(steps > MISSING_SLICE_FACTOR * median)):
        multiple = round(float(steps[i]) / median)
        where = f"between {distances[i]:.3f} and {distances[i + 1]:.3f} mm"
        if abs(float(steps[i]) - multiple * median) > STEP_TOLERANCE * median:
            gaps.append(
                f"{where} (step {steps[i]:.3f} mm, {steps[i] / median:.2f} steps: not a "
                "whole number of slices)"
            )
        elif multiple - 1 > max_missing:
            gaps.append(f"{where} (step {steps[i]:.3f} mm, {multiple - 1} slices missing)")
        else:
            fills.append((i, multiple - 1))
    if gaps:
        limit = (
            "this model interpolates no missing slice"
            if max_missing == 0
            else f"this model interpolates at most {max_missing} consecutive missing slice(s)"
        )
        problems.append(
            f"missing slices: {len(gaps)} gap(s) larger than {MISSING_SLICE_FACTOR} x the "
            f"median step of {median:.3f} mm, {_listed(gaps)}; {limit} "
            "(accepts.missing_slices in its model.yaml); resend the complete series"
        )
    irregular = [
        f"{steps[i]:.3f} mm after {distances[i]:.3f} mm"
        for i in np.flatnonzero(
            (steps >= DUPLICATE_TOLERANCE_MM)
            & (steps <= MISSING_SLICE_FACTOR * median)
            & (np.abs(steps - median) > STEP_TOLERANCE * median)
        )
    ]
    if irregular:
        problems.append(
            f"irregular slice spacing: median step {median:.3f} mm but {_listed(irregular)} "
            f"(tolerance {STEP_TOLERANCE:.0%}); resample to a regular grid first"
        )
    return problems, fills


def _choose_frame_of_reference(slices: Sequence[_Slice], series_uid: str) -> tuple[str, list[str]]:
    uids = [str(s.header.get("FrameOfReferenceUID", "")) for s in slices]
    present = [uid for uid in uids if uid]
    if not present:
        raise InvalidInputError(
            "no slice has a FrameOfReferenceUID (0020,0052), which the Frame of Reference "
            "module requires (PS3.3 C.7.4.1); results cannot be placed on this series",
            stage=STAGE,
        )
    distinct = set(uids)
    chosen = present[0]
    if len(distinct) == 1:
        return chosen, []
    missing = uids.count("")
    logger.warning(
        "series %s: %d slices carry %d different FrameOfReferenceUIDs%s but form one "
        "geometry-consistent stack; using %s (first slice in sorted order) for all",
        series_uid,
        len(slices),
        len(distinct - {""}),
        f" ({missing} none)" if missing else "",
        chosen,
    )
    note = (
        f"Frame of Reference policy: the {len(slices)} slices carry "
        f"{len(distinct - {''})} different FrameOfReferenceUIDs"
        + (f" ({missing} none)" if missing else "")
        + " but form one geometry-consistent stack; treated as one frame of reference "
        f"with the UID of the first slice in sorted order, {chosen}"
    )
    return chosen, [note]


def _load_deferred_pixels(piece: _Slice) -> None:
    """Read the deferred Pixel Data of ``piece`` from its file: one seek and one read.

    pydicom's own deferred read opens the file again, checks its time stamp and parses the
    element anew, which was half the time a CT slice took to decode. The file is the one
    the header was read from (the spool never changes a stored file); a file cut short
    since gives fewer bytes, which the decoder refuses as truncated.
    """
    ds = piece.header
    stored: DataElement | RawDataElement | None = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    if not isinstance(stored, RawDataElement) or stored.value is not None:
        return
    if stored.length == _UNDEFINED_LENGTH:
        return  # encapsulated pixel data of unknown length: pydicom finds its end
    with piece.path.open("rb") as stream:
        stream.seek(stored.value_tell)
        data = stream.read(stored.length)
    ds[_PIXEL_DATA] = stored._replace(value=data)


def _rescale_of(piece: _Slice) -> tuple[float, float]:
    """(slope, intercept) of a slice: a frame's Pixel Value Transformation
    (PS3.3 C.7.6.16.2.9), else Rescale Slope/Intercept (C.11.1.1.2)."""
    if piece.rescale is not None:
        slope, intercept = piece.rescale
    else:
        ds = piece.header
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    if not (np.isfinite(slope) and np.isfinite(intercept)):
        raise InvalidInputError(
            f"{piece.path.name}: Rescale Slope/Intercept ({slope}, {intercept}) not finite",
            stage=STAGE,
        )
    return slope, intercept


def _wrong_shape(
    piece: _Slice, shape: tuple[int, ...], expected: tuple[int, ...]
) -> InvalidInputError:
    return InvalidInputError(
        f"{piece.path.name}: decoded pixel data has shape {shape}, expected {expected}",
        stage=STAGE,
    )


def _read_native_into(
    out: npt.NDArray[np.float32],
    piece: _Slice,
    layout: NativeLayout,
    buffers: dict[tuple[str, int, int], npt.NDArray[np.integer]],
    rescale: tuple[float, float] | None = None,
) -> None:
    """An uncompressed slice straight from its file (:mod:`inference.native_pixels`);
    ``rescale``: its (slope, intercept), when known already."""
    if (layout.rows, layout.columns) != out.shape:
        raise _wrong_shape(piece, (layout.rows, layout.columns), out.shape)
    key = (layout.dtype.str, layout.rows, layout.columns)
    buffer = buffers.get(key)
    if buffer is None:
        buffer = buffers[key] = pixel_buffer(layout)
    try:
        stored = read_native(piece.path, layout, buffer)
    except ValueError as exc:
        raise InvalidInputError(
            f"{piece.path.name} (SOP instance {piece.sop_instance_uid}): pixel data "
            f"is corrupt or truncated ({exc})",
            stage=STAGE,
        ) from exc
    slope, intercept = rescale or _rescale_of(piece)
    rescale_into(out, stored, slope=slope, intercept=intercept)


def _decode_into(
    out: npt.NDArray[np.float32],
    piece: _Slice,
    buffers: dict[tuple[str, int, int], npt.NDArray[np.integer]],
) -> None:
    """Decode one slice into ``out`` in modality units; ``buffers``, kept for the series,
    holds the scratch arrays of uncompressed slices."""
    ds = piece.header
    transfer_syntax = ds.file_meta.get("TransferSyntaxUID")
    if piece.frame_number is None:
        layout = native_layout(ds, transfer_syntax)
        if layout is not None:
            _read_native_into(out, piece, layout, buffers)
            return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            _load_deferred_pixels(piece)
            index = None if piece.frame_number is None else piece.frame_number - 1
            stored = pixel_array(ds, index=index, decoding_plugin=decoding_plugin(transfer_syntax))
        except _DECODING_ERRORS as exc:
            raise _decoding_error(piece, exc) from exc
    _log_reading_warnings(caught, piece.sop_instance_uid, "decoding pixel data")
    _convert_into(out, piece, stored)


#: What pydicom raises for pixel data it cannot decode (see :func:`_decoding_error`).
_DECODING_ERRORS = decode_pool.DECODING_ERRORS


def _decoding_error(piece: _Slice, exc: BaseException) -> InvalidInputError:
    """The message for one of :data:`_DECODING_ERRORS` decoding ``piece``."""
    transfer_syntax = piece.header.file_meta.get("TransferSyntaxUID")
    name = getattr(transfer_syntax, "name", str(transfer_syntax))
    where = f"{piece.path.name} (SOP instance {piece.sop_instance_uid}): pixel data"
    if isinstance(exc, NotImplementedError):
        return InvalidInputError(
            f"{where} in transfer syntax {name} ({transfer_syntax}) cannot be decoded: "
            "pydicom has no decoder for it. Have the sender (or a DICOM router) transcode "
            "the series to Explicit VR Little Endian",
            stage=STAGE,
        )
    if isinstance(exc, RuntimeError):
        # pydicom: every decoding plugin for this syntax is missing its package.
        return InvalidInputError(
            f"{where} in transfer syntax {name} ({transfer_syntax}) cannot be decoded: no "
            "decoding plugin is installed. Install the codecs extra (pip install "
            "'pacs-ai[codecs]') or have the sender transcode to Explicit VR Little Endian. "
            f"pydicom: {exc}",
            stage=STAGE,
        )
    return InvalidInputError(f"{where} is corrupt or truncated ({exc})", stage=STAGE)


def _convert_into(
    out: npt.NDArray[np.float32], piece: _Slice, stored: npt.NDArray[np.generic]
) -> None:
    """Decoded stored values into ``out``, in modality units (PS3.3 C.11.1)."""
    if stored.shape != out.shape:
        raise _wrong_shape(piece, stored.shape, out.shape)
    if piece.rescale is None and "ModalityLUTSequence" in piece.header:
        out[...] = apply_modality_lut(stored, piece.header)
        return
    slope, intercept = _rescale_of(piece)
    rescale_into(out, stored, slope=slope, intercept=intercept)  # type: ignore[arg-type]


@dataclass
class _ReadAhead:
    """What starts while the headers are still being read: the volume's memory
    (:class:`_VolumeMemory`) and the decoding of compressed slices, asked of
    :mod:`inference.decode_pool`'s processes in batches as the headers are read (their
    stored values wait here, in file order, until the slices are sorted: at most what
    the series' pixel data holds)."""

    memory: _VolumeMemory | None = None
    executor: decode_pool.DecodePool | None = None
    #: Each file asked for: the future of its batch and its place in it.
    decodes: dict[Path, tuple[Future[list[decode_pool.Decoded]], int]] = field(default_factory=dict)
    _batch: list[decode_pool.Frame] = field(default_factory=list)

    def saw(self, path: Path, header: Dataset, files: int) -> None:
        """``header``, of ``path``, was read: start what it allows."""
        if self.memory is None and not self.decodes and not self._batch:
            self.memory = _VolumeMemory.predicted(header, files)
        if files < decode_pool.MIN_FRAMES or not _poolable_header(header):
            return
        if self.executor is None:
            self.executor = decode_pool.pool()
            if self.executor is None:
                return
        self._batch.append((path, None, decoding_plugin(header.file_meta.get("TransferSyntaxUID"))))
        if len(self._batch) == decode_pool.BATCH:
            self.flush()

    def ask(self, frames: Sequence[decode_pool.Frame]) -> None:
        """Have ``frames`` decoded (by :data:`decode_pool.BATCH`)."""
        self._batch.extend(frames)
        self.flush()

    def flush(self) -> None:
        """Send the frames not sent yet.

        Raises:
            decode_pool.DecoderCrashedError: a decoding process died during this series.
        """
        batch, self._batch = self._batch, []
        for start in range(0, len(batch), decode_pool.BATCH):
            frames = batch[start : start + decode_pool.BATCH]
            future = self._submit(frames)
            for place, (path, _index, _plugin) in enumerate(frames):
                self.decodes[path] = (future, place)

    def _submit(self, frames: Sequence[decode_pool.Frame]) -> Future[list[decode_pool.Decoded]]:
        executor = self.executor
        assert executor is not None  # only frames for the pool are batched
        try:
            return decode_pool.submit(executor, frames)
        except BrokenProcessPool as exc:
            if not self.decodes:
                # It broke before this series (a process killed while idle): a new one.
                self.executor = decode_pool.pool()
                if self.executor is not None:
                    return decode_pool.submit(self.executor, frames)
            raise decode_pool.DecoderCrashedError(
                f"{frames[0][0].name}: a process decoding this series' pixel data ended "
                "(killed for memory, or the decoder crashed on this data)"
            ) from exc

    def take(self, path: Path) -> tuple[Future[list[decode_pool.Decoded]], int] | None:
        return self.decodes.pop(path, None)

    def cancel(self) -> None:
        """Let go of what was not used (a series refused before its pixels were read)."""
        for future, _place in self.decodes.values():
            future.cancel()
        self.decodes.clear()
        self._batch.clear()


#: A series of at least this many files has its headers read by the decoding processes
#: (:mod:`inference.decode_pool`), :data:`_HEADER_BATCH` files to a hand-over, while this
#: process turns the ones read into slices; a shorter one is read here.
_HEADERS_IN_POOL_FROM = 32
_HEADER_BATCH = 16


def _read_slices(paths: Sequence[Path], ahead: _ReadAhead) -> tuple[list[_Slice], list[str]]:
    """The slices of the files' headers and what makes files unusable; ``ahead`` starts
    what each header allows.

    pydicom parses and converts a header in Python, about 1 ms a CT file, which was most
    of the time a series took to read; where the decoding processes are, they parse the
    headers side by side and hand each back pickled (0.2 ms to unpickle).
    """
    problems: list[str] = []
    slices: list[_Slice] = []
    files = [Path(path) for path in paths]
    executor = decode_pool.pool() if len(files) >= _HEADERS_IN_POOL_FROM else None
    parsed = _headers_in_pool(files, executor) if executor is not None else _headers_here(files)
    for path, header in zip(files, parsed, strict=True):
        dataset = _accept_header(path, header, problems)
        if dataset is None:
            continue
        ahead.saw(path, dataset, len(files))
        found, slice_problems = _slices_of(path, dataset)
        problems.extend(slice_problems)
        slices.extend(found)
    ahead.flush()
    return slices, problems


def _headers_here(files: Sequence[Path]) -> Iterator[_ParsedHeader]:
    converted = _Converted()
    for path in files:
        yield _parse_header(path, converted)


def _headers_in_pool(
    files: Sequence[Path], executor: decode_pool.DecodePool
) -> Iterator[_ParsedHeader]:
    """The headers of ``files`` in order, read by the decoding processes (all asked for at
    once: a header is a few KB)."""
    batches = [
        files[start : start + _HEADER_BATCH] for start in range(0, len(files), _HEADER_BATCH)
    ]
    asked: list[Future[list[_ParsedHeader]]] = []
    try:
        for batch in batches:
            with _pool_crash(batch[0], executor, "reading its header"):
                asked.append(decode_pool.call(executor, parse_headers, [str(p) for p in batch]))
        for batch, future in zip(batches, asked, strict=True):
            with _pool_crash(batch[0], executor, "reading its header"):
                headers = future.result()
            yield from headers
    finally:
        for future in asked:
            future.cancel()


@contextmanager
def _pool_crash(path: Path, executor: decode_pool.DecodePool, doing: str) -> Iterator[None]:
    """A decoding process that died is the job's transient failure (the pool let go of).

    Raises:
        decode_pool.DecoderCrashedError: for a BrokenProcessPool.
    """
    try:
        yield
    except BrokenProcessPool as exc:
        decode_pool.discard(executor)
        raise decode_pool.DecoderCrashedError(
            f"{path.name}: the process {doing} ended (killed for memory, or it crashed on "
            "this data)"
        ) from exc


def load_series(
    paths: Sequence[Path], *, min_slices: int = DEFAULT_MIN_SLICES, max_missing: int = 0
) -> Volume:
    """Read the images of one series into a :class:`Volume`.

    Implements the Image Plane geometry of PS3.3 C.7.6.2 (slices sorted along
    ``row x column`` direction cosines), the Multi-frame Functional Groups of
    PS3.3 C.7.6.16 for an enhanced multi-frame image, and the Modality LUT of
    PS3.3 C.11.1 (or a frame's Pixel Value Transformation, C.7.6.16.2.9). Up to
    ``max_missing`` consecutive missing slices are interpolated (see the module).

    Raises:
        InvalidInputError: (``stage="volume"``) the files are not one regular stack of
            decodable images; the message lists every problem found.
    """
    if min_slices < 2:
        raise ValueError("min_slices must be at least 2: the slice step is measured")
    if max_missing < 0:
        raise ValueError("max_missing must be 0 or more")
    if not paths:
        raise InvalidInputError("no files given for the series", stage=STAGE)
    ahead = _ReadAhead()
    try:
        return _load(paths, ahead, min_slices=min_slices, max_missing=max_missing)
    finally:
        ahead.cancel()


def _load(paths: Sequence[Path], ahead: _ReadAhead, *, min_slices: int, max_missing: int) -> Volume:
    with _quiet_pydicom_logger():
        slices, problems = _read_slices(paths, ahead)
        if problems:
            raise InvalidInputError(_summary(problems, len(paths)), stage=STAGE)
        if len(slices) < min_slices:
            raise InvalidInputError(
                f"the series has {len(slices)} slice(s); at least {min_slices} are needed "
                "to build a volume",
                stage=STAGE,
            )
        frame_uids = {str(s.header.get("FrameOfReferenceUID", "")) for s in slices}
        problems = _consistency_problems(slices)
        if problems:
            raise InvalidInputError(_summary(problems, len(paths), frame_uids), stage=STAGE)
        direction = _orientation(slices[0].orientation)
        distances = np.asarray([float(s.position @ direction[:, 2]) for s in slices])
        order = np.argsort(distances, kind="stable")
        slices = [slices[i] for i in order]
        distances = distances[order]
        problems, fills = _position_problems(slices, distances, direction, max_missing=max_missing)
        if problems:
            raise InvalidInputError(_summary(problems, len(paths), frame_uids), stage=STAGE)

        first = slices[0].header
        series_uid = str(first.SeriesInstanceUID)
        frame_uid, notes = _choose_frame_of_reference(slices, series_uid)
        # z index of each sorted slice, leaving room for the missing ones.
        missing_after = dict(fills)
        z_of = np.cumsum([0] + [1 + missing_after.get(i, 0) for i in range(len(slices) - 1)])
        voxels, sources = _read_pixels(slices, z_of, ahead)
    source_headers = tuple({id(s.header): s.header for s in slices}.values())
    if fills:
        notes.append(
            _fill_gaps(
                voxels, slices, distances=distances, z_of=z_of, fills=fills, limit=max_missing
            )
        )
        logger.warning(
            "series %s: %d missing slice(s) interpolated", series_uid, len(voxels) - len(slices)
        )

    depth, rows, columns = voxels.shape
    row_spacing, column_spacing = (float(v) for v in slices[0].pixel_spacing)
    step = float((distances[-1] - distances[0]) / (depth - 1))
    origin = slices[0].position
    logger.info(
        "series %s: %d slices %dx%d (%d interpolated), spacing (%.4g, %.4g, %.4g) mm",
        series_uid,
        depth,
        rows,
        columns,
        depth - len(slices),
        column_spacing,
        row_spacing,
        step,
    )
    return Volume(
        voxels=voxels,
        spacing=(column_spacing, row_spacing, step),
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=direction,
        source_headers=source_headers,
        frame_of_reference_uid=frame_uid,
        study_instance_uid=str(first.StudyInstanceUID),
        series_instance_uid=series_uid,
        modality=str(first.get("Modality", "")),
        notes=tuple(notes),
        slice_sources=tuple(sources),
    )


def empty_volume(shape: tuple[int, int, int]) -> npt.NDArray[np.float32]:
    """A new float32 array for a volume, in memory of its own (an anonymous mapping).

    Not ``np.empty``: NumPy advises the kernel to back arrays of 4 MB and more with
    transparent huge pages, and where the kernel then compacts memory to find them
    (``/sys/kernel/mm/transparent_hugepage/defrag`` ``madvise``, a common default),
    touching a fresh CT volume stalled for 1-3 s now and then (the LIDC CT read in
    0.7 s or 3.4 s); in ordinary pages it never did. The memory goes back to the system
    when the array (and every view of it) is gone.
    """
    count = int(np.prod(shape))
    itemsize = np.dtype(np.float32).itemsize
    mapping = mmap.mmap(-1, max(count * itemsize, 1))
    return np.frombuffer(mapping, dtype=np.float32, count=count).reshape(shape)


#: ``mmap``'s flag that has the kernel fault every page of a mapping in when it is made
#: (Linux); 0 elsewhere, where pages are faulted in when first touched.
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


class _VolumeMemory:
    """A volume's memory, mapped by a thread of its own while the headers are read.

    The kernel's first touch of each 4 KB page of a fresh mapping (70,000 of them for
    the LIDC CT) took 0.1 s of the 0.5 s the series took to read. Asked for with
    ``MAP_POPULATE`` from another thread, the pages are made ready while this one parses
    headers (the call releases the GIL). Only for the shape the first header predicts:
    one uncompressed frame per file, whose pixel data is in the file (so the file sizes,
    which the node bounds, bound the memory asked for). Another shape is left for
    :func:`empty_volume`.
    """

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.shape = shape
        self._mapping: mmap.mmap | None = None
        self._thread = threading.Thread(target=self._map, name="volume-memory", daemon=True)
        self._thread.start()

    def _map(self) -> None:
        size = int(np.prod(self.shape)) * np.dtype(np.float32).itemsize
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_POPULATE
        try:
            self._mapping = mmap.mmap(-1, max(size, 1), flags=flags)
        except OSError as exc:  # ENOMEM: the volume is asked for again, and refused, later
            logger.debug("volume memory not mapped ahead: %s", exc)

    def take(self, shape: tuple[int, int, int]) -> npt.NDArray[np.float32] | None:
        """The memory as a volume of ``shape``, if that is the shape predicted."""
        self._thread.join()
        mapping, self._mapping = self._mapping, None
        if mapping is None:
            return None
        if shape != self.shape:
            mapping.close()
            return None
        return np.frombuffer(mapping, dtype=np.float32).reshape(shape)

    @classmethod
    def predicted(cls, header: Dataset, files: int) -> _VolumeMemory | None:
        """Started for a series of ``files`` whose first readable header is ``header``,
        where it predicts the shape (see the class)."""
        if is_multiframe(header):
            return None
        layout = native_layout(header, header.file_meta.get("TransferSyntaxUID"))
        if layout is None or layout.length < layout.nbytes:
            return None
        return cls((files, layout.rows, layout.columns))


def _read_pixels(
    slices: Sequence[_Slice],
    z_of: npt.NDArray[np.int64],
    ahead: _ReadAhead,
) -> tuple[npt.NDArray[np.float32], list[SliceSource | None]]:
    """Decode each sorted slice into its z of a new volume; where each z comes from.

    Uncompressed slices are read by a few threads (reading and converting release the
    GIL), compressed ones decoded by :mod:`inference.decode_pool`'s processes (the
    decoders hold it), the rest here, one after another.
    """
    first = slices[0].header
    depth = int(z_of[-1]) + 1
    shape = (depth, int(first.Rows), int(first.Columns))
    mapped = ahead.memory.take(shape) if ahead.memory is not None else None
    voxels = mapped if mapped is not None else empty_volume(shape)
    sources: list[SliceSource | None] = [None] * depth
    headers: dict[int, int] = {}  # id(header) -> its index in Volume.source_headers
    native: list[tuple[_Slice, int, NativeLayout]] = []
    pooled: list[tuple[_Slice, int]] = []
    here: list[tuple[_Slice, int]] = []
    for piece, z in zip(slices, z_of, strict=True):
        index = headers.setdefault(id(piece.header), len(headers))
        sources[int(z)] = SliceSource(index, piece.frame_number)
        layout = (
            native_layout(piece.header, _transfer_syntax(piece))
            if (piece.frame_number is None)
            else None
        )
        if layout is not None:
            native.append((piece, int(z), layout))
        elif _poolable(piece):
            pooled.append((piece, int(z)))
        else:
            here.append((piece, int(z)))
    executor = ahead.executor
    if executor is None and len(pooled) >= decode_pool.MIN_FRAMES:
        executor = decode_pool.pool()
    if executor is None:
        here, pooled = [*pooled, *here], []
    _read_native_slices(voxels, native)
    if executor is not None:
        _decode_in_pool(voxels, pooled, executor, ahead)
    buffers: dict[tuple[str, int, int], npt.NDArray[np.integer]] = {}
    for piece, z in here:
        _decode_into(voxels[z], piece, buffers)
    for piece in slices:
        # Keep the headers, drop the pixel bytes (the volume holds the values now).
        if "PixelData" in piece.header:
            del piece.header.PixelData
    return voxels, sources


def _transfer_syntax(piece: _Slice) -> str | None:
    value = piece.header.file_meta.get("TransferSyntaxUID")
    return None if value is None else str(value)


def _poolable(piece: _Slice) -> bool:
    """Whether a decoding process can decode ``piece`` as this process would (see
    :func:`_poolable_header`)."""
    return piece.frame_number is None and _poolable_header(piece.header)


def _poolable_header(header: Dataset) -> bool:
    """A single-frame image in an encapsulated (compressed) syntax, without a Modality
    LUT (a multi-frame image's header would be read anew for each frame a child
    decodes)."""
    transfer_syntax = header.file_meta.get("TransferSyntaxUID")
    return (
        transfer_syntax is not None
        and UID(transfer_syntax).is_encapsulated
        and not is_multiframe(header)
        and "PixelData" in header
        and "ModalityLUTSequence" not in header
    )


#: Uncompressed slices read by threads of their own only from this many (a thread's start
#: costs about what a slice of 512 x 512 takes to read).
_THREADS_FROM = 8
_MAX_THREADS = 4


def _read_native_slices(
    voxels: npt.NDArray[np.float32], items: Sequence[tuple[_Slice, int, NativeLayout]]
) -> None:
    """Uncompressed slices into their z, by a few threads (the file reads and NumPy's
    conversion release the GIL: the LIDC CT's 275 slices in 0.16 s on one, 0.09 s on
    two); the first failing slice in sorted order raises."""
    rescales = [_rescale_of(piece) for piece, _z, _layout in items]
    count = min(len(os.sched_getaffinity(0)), _MAX_THREADS)
    if count < 2 or len(items) < _THREADS_FROM:
        buffers: dict[tuple[str, int, int], npt.NDArray[np.integer]] = {}
        for (piece, z, layout), rescale in zip(items, rescales, strict=True):
            _read_native_into(voxels[z], piece, layout, buffers, rescale)
        return
    local = threading.local()

    def read(number: int) -> None:
        buffers = getattr(local, "buffers", None)
        if buffers is None:
            buffers = local.buffers = {}
        piece, z, layout = items[number]
        _read_native_into(voxels[z], piece, layout, buffers, rescales[number])

    with ThreadPoolExecutor(count, thread_name_prefix="read-slices") as threads:
        for _ in threads.map(read, range(len(items))):
            pass


def _decode_in_pool(
    voxels: npt.NDArray[np.float32],
    items: Sequence[tuple[_Slice, int]],
    executor: decode_pool.DecodePool,
    ahead: _ReadAhead,
) -> None:
    """Compressed slices into their z, decoded by the pool's processes (most asked for
    while the headers were read); converted here as they come back, in sorted order."""
    ahead.executor = executor
    late = [piece for piece, _z in items if piece.path not in ahead.decodes]
    ahead.ask([(p.path, None, decoding_plugin(_transfer_syntax(p))) for p in late])
    buffers: dict[tuple[str, int, int], npt.NDArray[np.integer]] = {}
    for piece, z in items:
        asked = ahead.take(piece.path)
        if asked is None:  # the same file twice in the series: its second time
            _decode_into(voxels[z], piece, buffers)
            continue
        future, place = asked
        # The decoding errors come back in the answer; a raise is a process that died.
        with _pool_crash(piece.path, executor, "decoding its pixel data"):
            decoded = future.result()[place]
        caught = [warnings.WarningMessage(text, UserWarning, "", 0) for text in decoded.warnings]
        _log_reading_warnings(caught, piece.sop_instance_uid, "decoding pixel data")
        if decoded.error is not None:
            raise _decoding_error(piece, decoded.error) from decoded.error
        assert decoded.values is not None  # a Decoded has one or the other
        _convert_into(voxels[z], piece, decoded.values)


def _fill_gaps(
    voxels: npt.NDArray[np.float32],
    slices: Sequence[_Slice],
    *,
    distances: npt.NDArray[np.float64],
    z_of: npt.NDArray[np.int64],
    fills: Sequence[tuple[int, int]],
    limit: int,
) -> str:
    """Interpolate the missing slices of each gap linearly between the slices around it;
    the note that says where."""
    described = []
    filled = []
    for i, count in fills:
        below, above = int(z_of[i]), int(z_of[i + 1])
        for offset in range(1, count + 1):
            weight = np.float32(offset / (count + 1))
            np.multiply(voxels[below], 1 - weight, out=voxels[below + offset])
            voxels[below + offset] += weight * voxels[above]
        zs = list(range(below + 1, above))
        filled.extend(zs)
        where = ", ".join(
            f"{distances[i] + (distances[i + 1] - distances[i]) * k / (count + 1):.3f} mm"
            for k in range(1, count + 1)
        )
        described.append(
            f"z {', '.join(map(str, zs))} ({where} along the normal) between "
            f"{slices[i].name} and {slices[i + 1].name}"
        )
    return (
        f"Missing slices: {len(filled)} slice(s) interpolated linearly along the slice "
        f"normal (the model accepts up to {limit} consecutive missing slices): "
        + "; ".join(described)
        + ". The results have no SEG frame and no source image there."
    )


def _summary(problems: Sequence[str], n_files: int, frame_uids: set[str] | None = None) -> str:
    head = f"cannot build a volume from {n_files} file(s): {len(problems)} problem(s)"
    if frame_uids is not None and len(frame_uids) > 1:
        head += (
            f"; the slices also carry {len(frame_uids)} different FrameOfReferenceUIDs and, "
            "not forming one geometry-consistent stack, cannot be treated as one frame of "
            "reference"
        )
    return head + ":\n" + "\n".join(f"  - {p}" for p in problems)
