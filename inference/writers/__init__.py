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

import logging
import os
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import config, dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID

from core.errors import InvalidInputError
from inference import codes
from inference.uids import derive_uid
from models.manifest import LabelSpec, ModelManifest

if TYPE_CHECKING:
    from inference.volume import Volume

logger = logging.getLogger(__name__)

STAGE = "write"

#: Manufacturer (0008,0070) of every object pacs-ai writes.
MANUFACTURER = "pacs-ai"

_FRAME_OF_REFERENCE_UID = Tag(0x0020, 0x0052)
_BULK_TAGS = frozenset(
    {Tag(0x7FE0, 0x0010), Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009), Tag(0x0042, 0x0011)}
)
_LO_MAX = 64
_ST_MAX = 1024

#: Series Number of each kind of result, added to the model's base (IHE AI Results:
#: deterministic series numbers, so that hanging protocols can rely on them).
_SERIES_OFFSETS = {"seg": 1, "sr": 2, "sc": 3, "pdf": 4}


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


def result_series_number(model_id: str, kind: str) -> int:
    """Deterministic Series Number of a model's results of one kind (IHE AI Results).

    Stable per model, distinct between models in practice, and clear of the low numbers
    scanners use for their own series: ``9000 + 10 x (crc32(model id) mod 900)``, plus 1
    for the SEG, 2 the SR, 3 the Secondary Capture images, 4 the PDF.

    Raises:
        KeyError: ``kind`` is not one of ``seg``, ``sr``, ``sc``, ``pdf``.
    """
    base = 9000 + (zlib.crc32(model_id.encode()) % 900) * 10
    return base + _SERIES_OFFSETS[kind]


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


def series_description(manifest: ModelManifest, suffix: str = "") -> str:
    """``AI: <model name> <version>[ suffix]``, cut to the 64 characters of LO (PS3.5 6.2)."""
    text = f"AI: {manifest.name} {manifest.version}"
    if suffix:
        text = f"{text} {suffix}"
    return text[:_LO_MAX]


def algorithm_parameters(backend: str, precision: str) -> str:
    """Algorithm Parameters text naming the inference backend and precision.

    The format is highdicom's for the SEG's Algorithm Parameters (0066,0032):
    ``backend=<name>,precision=<fp32|fp16|bf16>``.
    """
    return f"backend={backend},precision={precision}"


def headers_in_frame(volume: Volume) -> list[Dataset]:
    """Shallow copies of the source headers carrying the volume's Frame of Reference UID.

    What the writers reference (the SEG's geometry, the SR's image library) uses the one
    Frame of Reference of the volume (see the policy in :mod:`inference.volume`); the
    source files and headers are never touched.
    """
    copies = []
    for header in volume.source_headers:
        duplicate = Dataset()
        duplicate.update(header)
        duplicate.file_meta = header.file_meta
        # A new element, not `duplicate.FrameOfReferenceUID = ...`, which would change
        # the element object the original header shares.
        duplicate[_FRAME_OF_REFERENCE_UID] = DataElement(
            _FRAME_OF_REFERENCE_UID, "UI", volume.frame_of_reference_uid
        )
        copies.append(duplicate)
    return copies


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


def _check_strictly(encoded: bytes) -> None:
    """Read ``encoded`` back with reading validation RAISE, converting every value."""

    def walk(dataset: Dataset, path: str) -> None:
        for tag in list(dataset.keys()):
            if tag in _BULK_TAGS:
                continue
            element = dataset[tag]
            if element.VR == "SQ":
                for index, item in enumerate(element.value):
                    walk(item, f"{path}{element.keyword}[{index}].")

    with config.strict_reading():
        try:
            walk(dcmread(BytesIO(encoded)), "")
        except ValueError as exc:
            raise InvalidInputError(
                f"the encoded object has a value that does not conform to its VR "
                f"(PS3.5 6.2): {exc} It is most likely copied from the source images; fix "
                "them at the source",
                stage=STAGE,
            ) from exc


def save_dataset(dataset: Dataset, path: Path) -> Path:
    """Write ``dataset`` as a PS3.10 file after checking every value strictly, atomically.

    The dataset is encoded with writing validation RAISE and the bytes are read back with
    reading validation RAISE before anything reaches the disk. The file appears under
    ``path`` complete or not at all (written to a temporary file in the same folder,
    flushed to disk, then renamed).

    Raises:
        InvalidInputError: (``stage="write"``) a value does not conform to its VR.
    """
    with strict_writing():
        buffer = BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
    encoded = buffer.getvalue()
    # Values are validated when set (builders run under strict_writing), but elements
    # copied as whole objects bypass that: reading our own bytes back strictly does not.
    _check_strictly(encoded)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(encoded)
            stream.flush()
            os.fsync(stream.fileno())
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    logger.debug("wrote %s %s to %s", dataset.get("Modality", "?"), dataset.SOPInstanceUID, path)
    return path
