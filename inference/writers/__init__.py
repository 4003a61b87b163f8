"""Result writers: Segmentation (``seg``), TID 1500 Measurement Report (``sr``), Secondary
Capture with burned-in outlines (``sc``) and an Encapsulated PDF summary (``pdf``).

Import the builders from their modules (:func:`inference.writers.seg.build_seg`,
:func:`inference.writers.sr.build_sr`, :func:`inference.writers.sc.build_sc_images`,
:func:`inference.writers.pdf.build_pdf`). This package module holds what they share: the
equipment identity written into every result (IHE AI Results: Manufacturer, Manufacturer
Model Name, Software Versions, Device Serial Number, pacs-ai as Contributing Equipment),
deterministic series numbers and descriptions, the label-to-segment numbering,
deterministic tracking UIDs, and :func:`save_dataset`, which writes strictly (pydicom
writing validation RAISE, PS3.10 file format) and atomically.
"""

from __future__ import annotations

import contextlib
import logging
import re
import weakref
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID
from pydicom.valuerep import DA, TM, validate_value

from core.errors import InvalidInputError
from core.files import atomic_write
from inference import codes
from inference.frames import frame_view, is_multiframe, with_shared_geometry
from inference.uids import derive_uid
from inference.writers.encoding import encode_file
from inference.writers.strict_check import StrictChecker
from models.manifest import LabelSpec, ModelManifest

if TYPE_CHECKING:
    from inference.volume import Volume

logger = logging.getLogger(__name__)

STAGE = "write"

#: Manufacturer (0008,0070) of every object pacs-ai writes.
MANUFACTURER = "pacs-ai"

_FRAME_OF_REFERENCE_UID = Tag(0x0020, 0x0052)
_PATIENT_SEX = Tag(0x0010, 0x0040)
_SLICE_THICKNESS = Tag(0x0018, 0x0050)
_LO_MAX = 64
_ST_MAX = 1024

#: The last digit of each kind of result's Series Number (see result_series_number).
_KIND_DIGITS = {"seg": 1, "sr": 2, "sc": 3, "pdf": 4}
#: How each kind of result names itself in its Series Description.
_KIND_WORDS = {"seg": "SEG", "sr": "SR", "sc": "overlay", "pdf": "summary"}
#: Source Series Numbers 0-9999 appear as such in result Series Numbers.
_SOURCE_NUMBERS = 10_000
#: Model slots 0-999 (crc32 of the model id).
_MODEL_SLOTS = 1_000
#: Leading digit of every result Series Number: above the numbers scanners use.
_RESULT_SERIES_BASE = 100_000_000
#: Patient and General Study attributes (Type 2, PS3.3 C.7.1.1 and C.7.2.1) that
#: highdicom reads from the first source image as attributes: absent, they raise.
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
#: Patient's Sex values PS3.3 C.7.1.1 allows (highdicom refuses any other).
_PATIENT_SEXES = frozenset({"M", "F", "O"})
#: Patient's Age (AS, PS3.5 6.2): three digits and D, W, M or Y ("081Y").
_PATIENT_AGE = re.compile(r"^[0-9]{3}[DWMY]$")


def pacs_ai_version() -> str:
    """The installed pacs-ai version, or ``0+unknown`` when running from a source tree."""
    try:
        return version("pacs-ai")
    except PackageNotFoundError:
        return "0+unknown"


def software_versions(manifest: ModelManifest) -> tuple[str, str]:
    """Software Versions (0018,1020): pacs-ai's version and the model's (each LO, 64 chars).

    Pass it to pydicom as a ``list``: pydicom refuses tuples for multi-valued elements.
    """
    return (
        f"pacs-ai {pacs_ai_version()}"[:_LO_MAX],
        f"{manifest.id} {manifest.version}"[:_LO_MAX],
    )


def source_series_number(source: Dataset) -> int:
    """The number standing for a source series in its results' Series Numbers: 0-9999.

    The source's Series Number when it is an integer from 0 to 9999, else (absent, empty,
    negative or larger, which happens) ``crc32(Series Instance UID) mod 10000``.
    """
    with contextlib.suppress(TypeError, ValueError):  # absent, empty, not one integer
        number = int(source.get("SeriesNumber"))
        if 0 <= number < _SOURCE_NUMBERS:
            return number
    return zlib.crc32(str(source.SeriesInstanceUID).encode()) % _SOURCE_NUMBERS


def result_series_number(source: Dataset, model_id: str, kind: str) -> int:
    """Deterministic Series Number of a model's results of one kind on one source series.

    The scheme (IHE AI Results asks for deterministic series numbers, so that hanging
    protocols can rely on them), nine digits ``1 SSSS MMM K``::

        100000000 + 10000 x S + 10 x M + K

    S: the source series (:func:`source_series_number`: its own Series Number 0-9999,
    else a hash of its UID); M: the model, ``crc32(model id) mod 1000``; K: the kind, 1
    SEG, 2 SR, 3 Secondary Capture, 4 PDF. So results of two series of one study, of two
    models on one series and the objects of one job all differ, every re-run gives the
    same numbers, and results sort after every source series (scanners number theirs
    far below 100000000), grouped by source. Two models share a slot with probability
    1/1000 a pair; two series share numbers only when their sources do.

    Raises:
        KeyError: ``kind`` is not one of ``seg``, ``sr``, ``sc``, ``pdf``.
    """
    slot = zlib.crc32(model_id.encode()) % _MODEL_SLOTS
    return (
        _RESULT_SERIES_BASE
        + source_series_number(source) * _MODEL_SLOTS * 10
        + slot * 10
        + _KIND_DIGITS[kind]
    )


def processing_equipment(manifest: ModelManifest) -> hd.ContributingEquipment:
    """pacs-ai running the model, as an item of the Contributing Equipment Sequence.

    IHE AI Results identifies the algorithm that produced a result in every result
    object: Purpose of Reference *Processing Equipment* (DCM 109102), the model as the
    Manufacturer's Model Name, pacs-ai's and the model's versions, the model's Device
    Observer UID as serial number, and the algorithm family in the description
    (PS3.3 C.12.1.1.5).
    """
    return hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.PROCESSING_EQUIPMENT,
        manufacturer_model_name=manifest.name,
        software_versions=list(software_versions(manifest)),
        device_serial_number=str(device_observer_uid(manifest)),
        contribution_description=(
            f"AI result: {manifest.name} {manifest.version} ({manifest.id}), algorithm "
            f"family {manifest.family.meaning}"
        )[:_ST_MAX],
    )


def series_description(manifest: ModelManifest, kind: str, source: Dataset) -> str:
    """Series Description of a result: the model, the kind and the source series.

    ``AI <model id> <SEG|SR|overlay|summary> of <source number> <source description>``,
    e.g. ``AI ct-lungs SEG of 3 Thorax 1.0 B31f``: a radiologist tells the results of two
    series of one study apart. Cut to the 64 characters of LO (PS3.5 6.2): the model id
    to 32 at most, then the source's description. A source without Series Number or
    description leaves that part out. This is the one place a result's description is
    made; every writer gets it from here.

    Raises:
        KeyError: ``kind`` is not one of ``seg``, ``sr``, ``sc``, ``pdf``.
    """
    text = f"AI {manifest.id[:32]} {_KIND_WORDS[kind]}"
    number = source.get("SeriesNumber")
    described = " ".join(str(source.get("SeriesDescription") or "").split())
    of = " ".join(str(part) for part in (number, described) if part is not None and part != "")
    if of:
        text = f"{text} of {of}"
    return text[:_LO_MAX].rstrip()


def algorithm_parameters(backend: str, precision: str) -> str:
    """Algorithm Parameters text naming the inference backend and precision.

    The format is highdicom's for the SEG's Algorithm Parameters (0066,0032):
    ``backend=<name>,precision=<fp32|fp16|bf16>``.
    """
    return f"backend={backend},precision={precision}"


def writable_source(header: Dataset) -> Dataset:
    """A shallow copy of a source header that result objects can copy Patient and Study
    attributes from, whatever the source left out.

    Type 2 attributes may be absent or empty in real data (anonymisers remove Patient's
    Birth Date, Accession Number, ...), and highdicom reads some of them as attributes:
    absent ones (:data:`_TYPE2_COPIED`) are added empty. An empty Specific Character Set
    (Type 1C) is left out: absent means the default repertoire (PS3.3 C.12.1.1.2). A
    Patient's Sex other than M, F or O (PS3.3 C.7.1.1; highdicom refuses the others) is
    written empty; a Patient's Age that is not a valid AS value is left out. ``header``
    itself is never changed.
    """
    # A new dict of the same (possibly still raw) elements: no value is converted or
    # validated in copying, and changes to the copy never reach ``header``.
    duplicate = Dataset(dict(header.items()))
    duplicate.file_meta = header.file_meta
    for keyword in _TYPE2_COPIED:
        if keyword not in duplicate:
            setattr(duplicate, keyword, None)
    if "SpecificCharacterSet" in duplicate and not duplicate.SpecificCharacterSet:
        del duplicate.SpecificCharacterSet
    sex = duplicate.PatientSex
    if sex and str(sex) not in _PATIENT_SEXES:
        # A new element, not an assignment, which would change the element the original
        # header shares with the copy.
        duplicate[_PATIENT_SEX] = DataElement(_PATIENT_SEX, "CS", None)
    age = duplicate.get("PatientAge")
    if age and not _PATIENT_AGE.match(str(age)):
        # Type 3 (PS3.3 C.7.2.2): left out rather than copied invalid ("81" for "081Y").
        del duplicate.PatientAge
    for keyword in _TYPE2_COPIED:
        _check_copied(duplicate[keyword])
    return duplicate


def _check_copied(element: DataElement) -> None:
    """Refuse a value no result may carry, naming the attribute but never the value.

    highdicom's and pydicom's own errors quote it (a birth date, a name), and a job's
    failure reason is logged and shown; their text is logged at DEBUG only.

    Raises:
        InvalidInputError: (``stage="write"``) the value does not conform to its VR.
    """
    value = element.value
    try:
        validate_value(element.VR, value, config.RAISE)
        if element.VR in ("DA", "TM") and value:
            (DA if element.VR == "DA" else TM)(value)  # a valid date or time, too
    except (TypeError, ValueError) as exc:
        logger.debug("source %s %s: %s", element.keyword, element.tag, exc)
        raise InvalidInputError(
            f"the source images' {element.keyword} {element.tag} does not conform to VR "
            f"{element.VR} (PS3.5 6.2), so no result can copy it; fix it at the source (the "
            "value is logged at DEBUG only)",
            stage=STAGE,
        ) from None


def headers_in_frame(volume: Volume) -> list[Dataset]:
    """Shallow copies of the source headers carrying the volume's Frame of Reference UID.

    What the writers reference (the SEG's geometry, the SR's image library) uses the one
    Frame of Reference of the volume (see the policy in :mod:`inference.volume`), and
    they are :func:`writable_source` copies; the source files and headers are never
    touched. The copies of a volume are made once and shared by its writers (the SEG and
    the SR of a job used to make and check them twice): read them, never change them.
    """
    made = _IN_FRAME.get(volume)
    if made is None:
        made = _IN_FRAME[volume] = _headers_in_frame(volume)
    return list(made)


#: The copies :func:`headers_in_frame` made, for as long as their volume lives.
_IN_FRAME: weakref.WeakKeyDictionary[Volume, list[Dataset]] = weakref.WeakKeyDictionary()


def _headers_in_frame(volume: Volume) -> list[Dataset]:
    copies = []
    for header in volume.source_headers:
        # highdicom reads a multi-frame source's orientation and pixel measures from its
        # shared functional groups only; the loader has checked that every frame has the same.
        duplicate = writable_source(
            with_shared_geometry(header) if is_multiframe(header) else header
        )
        if "ImageOrientationPatient" in duplicate and duplicate.get("SliceThickness") in (None, ""):
            # Type 2 and often empty, but the SEG's Pixel Measures and the SR's image
            # library need a value: the slice step is what a stack without one represents.
            duplicate[_SLICE_THICKNESS] = DataElement(
                _SLICE_THICKNESS, "DS", f"{volume.spacing[2]:.6g}"
            )
        # A projection radiograph without a Frame of Reference keeps having none: no UID
        # (nor plane positions) is invented for it (see inference.projection).
        if volume.frame_of_reference_uid:
            # A new element, not `duplicate.FrameOfReferenceUID = ...`, which would
            # change the element object the original header shares.
            duplicate[_FRAME_OF_REFERENCE_UID] = DataElement(
                _FRAME_OF_REFERENCE_UID, "UI", volume.frame_of_reference_uid
            )
        copies.append(duplicate)
    return copies


def encoded_slices(volume: Volume) -> list[int]:
    """The z index of each source image (or frame) a SEG encodes, in source order.

    highdicom takes a SEG's pixel array in the order of its source images: one plane per
    single-frame header of :func:`headers_in_frame`, or one per frame of the one
    multi-frame header, in frame order. Slices interpolated over missing slices have no
    source image and are left out: the SEG has frames only on real images.
    """

    def order(z: int) -> tuple[int, int]:
        source = volume.slice_source(z)
        assert source is not None  # source_slices holds only slices read from a source
        return (source.header_index, source.frame_number or 0)

    return sorted(volume.source_slices, key=order)


def frame_numbers_of(volume: Volume, slices: Sequence[int]) -> dict[int, list[int]]:
    """The source images of ``slices`` (z indices): header index -> its frame numbers
    (empty for a single-frame image). Interpolated slices are left out."""
    images: dict[int, list[int]] = {}
    for z in slices:
        source = volume.slice_source(z)
        if source is None:
            continue
        frames = images.setdefault(source.header_index, [])
        if source.frame_number is not None:
            frames.append(source.frame_number)
    return images


def library_images(volume: Volume) -> list[tuple[Dataset, int | None]]:
    """The source images an SR's Image Library lists, in z order, in the volume's frame
    of reference: each single-frame header, or a view of each frame of a multi-frame
    header (its geometry at the top level, :func:`inference.frames.frame_view`) with its
    frame number."""
    headers = headers_in_frame(volume)
    images: list[tuple[Dataset, int | None]] = []
    for z in volume.source_slices:
        source = volume.slice_source(z)
        assert source is not None  # source_slices holds only slices read from a source
        header = headers[source.header_index]
        if source.frame_number is None:
            images.append((header, None))
        else:
            images.append((frame_view(header, source.frame_number), source.frame_number))
    return images


def ordered_labels(manifest: ModelManifest) -> tuple[LabelSpec, ...]:
    """The manifest's labels in segment order: sorted by label value.

    Segment *k* (1-based) of every SEG is ``ordered_labels(manifest)[k - 1]``, so segment
    numbers are stable across runs and the same in the SEG and the SR.
    """
    return tuple(sorted(manifest.labels, key=lambda label: label.value))


def count_labels(labels: npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
    """Voxel count of every label value (index = value) in a ``[z, y, x]`` label map."""
    # Slice by slice: np.bincount casts its input to intp, 8 bytes a voxel.
    counts = np.zeros(1, dtype=np.int64)
    for plane in labels.reshape((-1, *labels.shape[-2:])):
        plane_counts = np.bincount(plane.reshape(-1))
        if plane_counts.size > counts.size:
            plane_counts[: counts.size] += counts
            counts = plane_counts.astype(np.int64, copy=False)
        else:
            counts[: plane_counts.size] += plane_counts
    return counts


def segment_voxel_counts(
    labels: npt.NDArray[np.integer], manifest: ModelManifest
) -> tuple[int, ...]:
    """Voxel count of each segment, in segment order (see :func:`ordered_labels`).

    Raises:
        InvalidInputError: (``stage="write"``) the map holds values the manifest does not
            declare.
    """
    counts = count_labels(labels)
    values = [label.value for label in ordered_labels(manifest)]
    undeclared = [int(v) for v in np.flatnonzero(counts) if v != 0 and int(v) not in values]
    if undeclared:
        raise InvalidInputError(
            f"the label map holds values {undeclared} that model {manifest.id} "
            f"{manifest.version} does not declare (labels: {values}); fix the model's "
            "postprocessing or its manifest",
            stage=STAGE,
        )
    return tuple(int(counts[v]) if v < counts.size else 0 for v in values)


def tracking_identifier(label: LabelSpec) -> str:
    """Human-readable Tracking Identifier of a label (TID 4108): its ``tracking_id`` or name."""
    return (label.tracking_id or label.name)[:_LO_MAX]


def tracked_source_uid(volume: Volume) -> str:
    """The UID a result's findings are tracked under (:func:`tracking_uid`): the source
    series, or for a projection radiograph its film's SOP Instance UID, so that the
    findings on each film of a series (whose results share a series) are findings of
    their own."""
    if volume.projection is not None:
        return str(volume.source_headers[0].SOPInstanceUID)
    return volume.series_instance_uid


def tracking_uid(source_series_uid: str, manifest: ModelManifest, key: str) -> UID:
    """Deterministic Tracking Unique Identifier (TID 4108) of a finding, SEG and SR alike.

    ``key`` names the finding: ``label-<value>`` for a label, ``total`` for the sum.
    """
    return derive_uid("tracking", source_series_uid, manifest.id, manifest.version, key)


def device_observer_uid(manifest: ModelManifest) -> UID:
    """Device Observer UID (TID 1004) of a model version: the same on every node."""
    return derive_uid("device-observer", manifest.id, manifest.version)


@contextmanager
def strict_writing() -> Iterator[None]:
    """Run the body with pydicom writing validation RAISE, restoring the previous mode.

    pydicom validates a value when it is *set*, so builders run inside this too: a value
    that does not conform (often copied from a lenient source) fails where it is set.
    """
    previous = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.RAISE
    try:
        yield
    finally:
        config.settings.writing_validation_mode = previous


def save_dataset(dataset: Dataset, path: Path, *, checker: StrictChecker | None = None) -> Path:
    """Write ``dataset`` as a PS3.10 file after checking every value strictly, atomically:
    :func:`encode_strictly`, then :func:`store`.

    Raises:
        InvalidInputError: (``stage="write"``) a value does not conform to its VR.
    """
    return store(encode_strictly(dataset, checker=checker), path, dataset)


def encode_strictly(dataset: Dataset, *, checker: StrictChecker | None = None) -> bytes:
    """``dataset`` as the bytes of a PS3.10 file, every value checked strictly.

    The dataset is encoded with writing validation RAISE
    (:func:`~inference.writers.encoding.encode_file`) and the bytes are read back with
    reading validation RAISE (:mod:`inference.writers.strict_check`; ``checker`` remembers
    the values of the other objects of a result, converted already).

    Raises:
        InvalidInputError: (``stage="write"``) a value does not conform to its VR.
    """
    with strict_writing():
        # pydicom's bytes, framed faster (inference.writers.encoding).
        encoded = encode_file(dataset)
    # Values are validated when set (builders run under strict_writing), but elements
    # copied as whole objects bypass that: reading our own bytes back strictly does not.
    (checker or StrictChecker()).check(encoded)
    return encoded


def store(encoded: bytes, path: Path, dataset: Dataset) -> Path:
    """Write the bytes :func:`encode_strictly` made of ``dataset`` to ``path``: the file
    appears complete or not at all, durably (:func:`core.files.atomic_write`).

    Raises:
        OSError: the folder cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, encoded)
    logger.debug("wrote %s %s to %s", dataset.get("Modality", "?"), dataset.SOPInstanceUID, path)
    return path
