"""Projection radiographs (CR, DX, MG): one 2D image as a :class:`~inference.volume.Volume`.

A projection radiograph has no Image Plane module (PS3.3 C.7.6.2): no Image Position or
Orientation (Patient), often no Pixel Spacing, and is often MONOCHROME1 or compressed
(JPEG 2000). :func:`load_projection` reads one such image into a Volume of shape
``(1, rows, columns)`` so that the rest of the pipeline (2D models, writers) works on it:

* **values**: the Modality LUT applied (Rescale Slope/Intercept or the Modality LUT
  Sequence, PS3.3 C.11.1), then **MONOCHROME1 inverted** (PS3.3 C.7.6.3.1.2: its minimum
  is displayed white) by reflecting inside the range the stored bits can hold, so that
  higher always means brighter (denser) whatever the photometric interpretation. A
  MONOCHROME1 image and the MONOCHROME2 image with the stored values inverted load to the
  same values. The VOI LUT (window or VOI LUT Sequence, PS3.3 C.11.2) is *not* applied
  here: the model's manifest asks for it (``preprocessing.voi``, see
  :func:`inference.preprocess2d.apply_voi`), which this module's :class:`Projection`
  makes possible (it keeps the reflection);
* **spacing**: Pixel Spacing (0028,0030) when present and positive; else Imager Pixel
  Spacing (0018,1164) divided by the Estimated Radiographic Magnification Factor
  (0018,1114) where given (PS3.3 C.8.11.4.1.1: spacing at the detector, corrected to the
  patient plane); else none: the spacing is 1 and every measurement is in **pixels**,
  which :attr:`Volume.notes` and the SR say;
* **geometry**: identity direction, origin 0, and no invented Frame of Reference: the
  Volume's Frame of Reference UID is the source's own or ``""``; the writers then give
  highdicom the headers as they are, and it writes no plane positions (a SEG on the image
  references it by SOP instance only).

Which objects are projections (:func:`is_projection`): single-frame images of the CR, DX,
MG and intra-oral SOP classes, and single-frame images of another class (Secondary
Capture) whose Modality is CR, DX or MG and that lack the Image Plane module. The worker
(:func:`inference.results.predict_each`, :mod:`workers.prefetch`) asks
:func:`series_is_projection` of a job's series (one header read) and loads it here or
through :func:`inference.volume.load_series`.

Several projection images in one series (a PA and a lateral, a repeat): a job is per
(series, model) and a model takes one image, so the job runs the model on **each** image
the model's ``accepts`` allows (:func:`choose_projections`, from each image's headers as
the node decides acceptance, :mod:`models.acceptance`), in Instance Number order, and
writes one set of results per image (:mod:`inference.results`). A frontal-film classifier
that accepts ViewPosition PA / AP runs on the PA of a PA + lateral series, and a note
says which images were left out and why; a classifier that accepts any view runs on
both. If no image is acceptable, the job is refused naming each image. A model that
takes two views at once is not supported.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_modality_lut
from pydicom.pixels.utils import pixel_array
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalIntraOralXRayImageStorageForPresentation,
    DigitalIntraOralXRayImageStorageForProcessing,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)

from core.errors import InvalidInputError
from inference.decoders import decoding_plugin
from inference.volume import (
    STAGE,
    Volume,
    _log_reading_warnings,
    _quiet_pydicom_logger,
    _read_header,
)
from models.acceptance import SeriesFacts, facts_from_files, refusals
from models.manifest import AcceptsSpec

logger = logging.getLogger(__name__)

#: Modalities whose images are projections (PS3.3 C.7.3.1.1.1).
PROJECTION_MODALITIES = frozenset({"CR", "DX", "MG"})
#: SOP classes of projection radiography (PS3.4 B.5).
PROJECTION_SOP_CLASSES = frozenset(
    {
        ComputedRadiographyImageStorage,
        DigitalXRayImageStorageForPresentation,
        DigitalXRayImageStorageForProcessing,
        DigitalMammographyXRayImageStorageForPresentation,
        DigitalMammographyXRayImageStorageForProcessing,
        DigitalIntraOralXRayImageStorageForPresentation,
        DigitalIntraOralXRayImageStorageForProcessing,
    }
)
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")

SpacingSource = Literal["PixelSpacing", "ImagerPixelSpacing", "none"]


@dataclass(frozen=True)
class Projection:
    """How a projection radiograph was read (:attr:`Volume.projection`)."""

    #: The source's Photometric Interpretation (MONOCHROME1 or MONOCHROME2).
    photometric_interpretation: str
    #: The modality values the stored bits can hold, ``(lowest, highest)``: the range the
    #: MONOCHROME1 inversion reflects in, and the VOI's fallback window.
    value_range: tuple[float, float]
    #: Where :attr:`Volume.spacing` came from; ``none``: 1 per pixel, measurements in pixels.
    spacing_source: SpacingSource
    #: Estimated Radiographic Magnification Factor applied to Imager Pixel Spacing.
    magnification: float | None = None

    @property
    def inverted(self) -> bool:
        """Whether the values were reflected (MONOCHROME1) so that higher is brighter."""
        return self.photometric_interpretation == "MONOCHROME1"

    @property
    def calibrated(self) -> bool:
        """Whether the spacing is in mm (``False``: measurements are in pixels)."""
        return self.spacing_source != "none"


def is_projection(header: Dataset) -> bool:
    """Whether ``header`` is a single-frame projection radiograph (see the module)."""
    if int(header.get("NumberOfFrames", 1) or 1) > 1:
        return False
    if str(header.get("SOPClassUID", "")) in PROJECTION_SOP_CLASSES:
        return True
    modality = str(header.get("Modality", "")).upper()
    plane = "ImagePositionPatient" in header and "ImageOrientationPatient" in header
    return modality in PROJECTION_MODALITIES and not plane


def _peek(path: Path) -> Dataset | None:
    """The header of ``path`` without pixel data, or ``None`` when it cannot be read."""
    with warnings.catch_warnings(), _quiet_pydicom_logger():
        # The loader reads it again and reports whatever is wrong, with the details.
        warnings.simplefilter("ignore")
        try:
            return dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            return None


def series_is_projection(paths: Sequence[Path]) -> bool:
    """Whether the series' first file is a projection radiograph (headers only)."""
    if not paths:
        return False
    header = _peek(Path(paths[0]))
    return header is not None and is_projection(header)


def _describe(index: int, header: Dataset | None, path: Path) -> str:
    if header is None:
        return f"image {index} ({path.name})"
    view = str(header.get("ViewPosition", "") or "") or "no View Position"
    return f"image {index} (SOP instance {header.get('SOPInstanceUID', '?')}, {view})"


def _order(path: Path, header: Dataset | None) -> tuple[int, int, str, str]:
    """Instance Number order (images without one, or unreadable, last), then SOP Instance
    UID: the same order whichever order the images arrived in."""
    if header is None:
        return (2, 0, "", path.name)
    try:
        number = int(header.get("InstanceNumber"))
    except (TypeError, ValueError):  # absent, empty, not one integer
        return (1, 0, str(header.get("SOPInstanceUID", "")), path.name)
    return (0, number, str(header.get("SOPInstanceUID", "")), path.name)


def choose_projections(
    paths: Sequence[Path], accepts: AcceptsSpec
) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    """Every image of a projection series that a model with ``accepts`` takes, in
    Instance Number order, and a note on each image left out (see the module).

    Raises:
        InvalidInputError: (``stage="model"``) no image is acceptable; the message names
            each image and why.
    """
    if len(paths) == 1:
        return (Path(paths[0]),), ()
    read: list[tuple[Path, SeriesFacts | None]] = []
    for path in map(Path, paths):
        try:
            with warnings.catch_warnings(), _quiet_pydicom_logger():
                warnings.simplefilter("ignore")  # the loader reports what is wrong
                read.append((path, facts_from_files([path])))
        except (InvalidDicomError, OSError, EOFError, ValueError):
            read.append((path, None))
    read.sort(key=lambda item: _order(item[0], item[1].header if item[1] else None))
    taken: list[tuple[Path, str]] = []
    left: list[str] = []
    for index, (path, facts) in enumerate(read, start=1):
        if facts is None:
            left.append(f"image {index} ({path.name}): cannot be read")
            continue
        what = _describe(index, facts.header, path)
        reasons = refusals(accepts, facts)
        if reasons:
            left.append(f"{what}: " + "; ".join(reasons))
        else:
            taken.append((path, what))
    if not taken:
        raise InvalidInputError(
            f"none of the {len(paths)} radiographs of the series is one the model accepts:\n"
            + "\n".join(f"  - {item}" for item in left),
            stage="model",
        )
    ran = ", ".join(what for _, what in taken)
    return tuple(path for path, _ in taken), tuple(
        f"{len(paths)} radiographs in the series; ran on {ran}; left out {item}" for item in left
    )


def _stored_range(header: Dataset) -> tuple[int, int]:
    bits = int(header.get("BitsStored", header.get("BitsAllocated", 16)))
    if int(header.get("PixelRepresentation", 0)) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _value_range(header: Dataset, name: str) -> tuple[float, float]:
    """The modality values the stored bits can hold (PS3.3 C.11.1)."""
    low, high = _stored_range(header)
    if "ModalityLUTSequence" in header:
        # pydicom reads the table (US or OW) and clamps inputs outside it (C.11.1.1).
        data = apply_modality_lut(np.arange(low, high + 1, dtype=np.int32), header)
        return float(data.min()), float(data.max())
    slope = float(header.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(header.get("RescaleIntercept", 0.0) or 0.0)
    if not (np.isfinite(slope) and np.isfinite(intercept)):
        raise InvalidInputError(
            f"{name}: Rescale Slope/Intercept ({slope}, {intercept}) not finite", stage=STAGE
        )
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return float(ends[0]), float(ends[1])


def _positive_pair(value: object) -> tuple[float, float] | None:
    if not isinstance(value, Sequence) or len(value) != 2:
        return None
    try:
        row, column = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        return None
    if not (np.isfinite(row) and np.isfinite(column) and row > 0 and column > 0):
        return None
    return row, column


def _spacing(
    header: Dataset,
) -> tuple[tuple[float, float], SpacingSource, float | None, list[str]]:
    """(row, column) spacing in mm, its source, the magnification applied, and notes."""
    pixel = _positive_pair(header.get("PixelSpacing"))
    if pixel is not None:
        return pixel, "PixelSpacing", None, []
    imager = _positive_pair(header.get("ImagerPixelSpacing"))
    if imager is not None:
        factor_value = header.get("EstimatedRadiographicMagnificationFactor")
        factor = float(factor_value) if factor_value not in (None, "") else None
        if factor is not None and np.isfinite(factor) and factor > 0:
            spacing = (imager[0] / factor, imager[1] / factor)
            note = (
                f"pixel spacing {spacing[0]:.4g} x {spacing[1]:.4g} mm: Imager Pixel Spacing "
                f"divided by the Estimated Radiographic Magnification Factor {factor:g} "
                "(no Pixel Spacing)"
            )
            return spacing, "ImagerPixelSpacing", factor, [note]
        note = (
            f"pixel spacing {imager[0]:.4g} x {imager[1]:.4g} mm: Imager Pixel Spacing at "
            "the detector, not corrected for magnification (no Pixel Spacing, no Estimated "
            "Radiographic Magnification Factor)"
        )
        return imager, "ImagerPixelSpacing", None, [note]
    note = (
        "no usable pixel spacing (Pixel Spacing and Imager Pixel Spacing absent or 0): "
        "measurements are in pixels"
    )
    return (1.0, 1.0), "none", None, [note]


def _image_problems(name: str, header: Dataset) -> list[str]:
    if "PixelData" not in header or "Rows" not in header:
        return [f"{name}: no pixel data (not an image, or a truncated file)"]
    if int(header.get("NumberOfFrames", 1) or 1) > 1:
        return [f"{name}: {header.NumberOfFrames} frames; a projection image has one"]
    problems = []
    if not is_projection(header):
        problems.append(
            f"{name}: not a projection radiograph (Modality "
            f"{header.get('Modality', '(none)')}, SOP class {header.get('SOPClassUID', '?')}); "
            "pass the images of one series"
        )
    photometric = str(header.get("PhotometricInterpretation", ""))
    if int(header.get("SamplesPerPixel", 1)) != 1 or photometric not in _MONOCHROME:
        problems.append(
            f"{name}: Photometric Interpretation {photometric or '(none)'} with "
            f"{header.get('SamplesPerPixel', 1)} sample(s) per pixel; only grey-scale "
            "(MONOCHROME1 / MONOCHROME2) radiographs are read"
        )
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if not header.get(keyword):
            problems.append(f"{name}: {keyword} missing; results cannot reference the image")
    return problems


def _decode_into(out: npt.NDArray[np.float32], header: Dataset, name: str) -> None:
    """Decode the pixel data into ``out`` and apply the Modality LUT (PS3.3 C.11.1)."""
    syntax = header.file_meta.get("TransferSyntaxUID")
    syntax_name = f"{getattr(syntax, 'name', syntax)} ({syntax})"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            stored = pixel_array(header, decoding_plugin=decoding_plugin(syntax))
        except NotImplementedError as exc:
            raise InvalidInputError(
                f"{name}: pixel data in transfer syntax {syntax_name} cannot be decoded: "
                "pydicom has no decoder for it. Have the sender (or a DICOM router) "
                "transcode the image to Explicit VR Little Endian",
                stage=STAGE,
            ) from exc
        except RuntimeError as exc:
            # pydicom: every decoding plugin for this syntax is missing its package.
            raise InvalidInputError(
                f"{name}: pixel data in transfer syntax {syntax_name} cannot be decoded: no "
                "decoding plugin is installed. Install the codecs extra (pip install "
                "'pacs-ai[codecs]') or have the sender transcode to Explicit VR Little "
                f"Endian. pydicom: {exc}",
                stage=STAGE,
            ) from exc
        except (ValueError, EOFError) as exc:
            raise InvalidInputError(
                f"{name}: pixel data is corrupt or truncated ({exc})", stage=STAGE
            ) from exc
    _log_reading_warnings(caught, str(header.get("SOPInstanceUID", "?")), "decoding pixel data")
    if stored.shape != out.shape:
        raise InvalidInputError(
            f"{name}: decoded pixel data has shape {stored.shape}, expected {out.shape}",
            stage=STAGE,
        )
    if "ModalityLUTSequence" in header:
        out[...] = apply_modality_lut(stored, header)
        return
    out[...] = stored
    slope = float(header.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(header.get("RescaleIntercept", 0.0) or 0.0)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)


def load_projection(paths: Sequence[Path]) -> Volume:
    """Read one projection radiograph into a :class:`Volume` of shape ``(1, rows, columns)``.

    Implements the Modality LUT (PS3.3 C.11.1), the MONOCHROME1 inversion (C.7.6.3.1.2)
    and the Pixel Spacing / Imager Pixel Spacing rules of C.8.11.4.1.1 (see the module).

    Raises:
        InvalidInputError: (``stage="volume"``) not exactly one file, not a grey-scale
            single-frame projection image, or undecodable pixel data.
    """
    if len(paths) != 1:
        raise InvalidInputError(
            f"the series holds {len(paths)} projection radiographs; load_projection reads "
            "one (choose_projections picks those a model accepts)",
            stage=STAGE,
        )
    path = Path(paths[0])
    with _quiet_pydicom_logger():
        problems: list[str] = []
        header = _read_header(path, problems)
        if header is None:
            raise InvalidInputError(
                "cannot read the radiograph:\n" + "\n".join(f"  - {p}" for p in problems),
                stage=STAGE,
            )
        sop_uid = str(header.get("SOPInstanceUID", path.name))
        name = f"{path.name} (SOP instance {sop_uid})"
        problems = _image_problems(name, header)
        if problems:
            raise InvalidInputError(
                "cannot read the radiograph:\n" + "\n".join(f"  - {p}" for p in problems),
                stage=STAGE,
            )
        value_range = _value_range(header, name)
        rows, columns = int(header.Rows), int(header.Columns)
        voxels = np.empty((1, rows, columns), dtype=np.float32)
        _decode_into(voxels[0], header, name)
        del header.PixelData
    photometric = str(header.PhotometricInterpretation)
    notes: list[str] = []
    if photometric == "MONOCHROME1":
        # Reflect inside the value range: exact for integer values, and the image of the
        # same pixels stored as MONOCHROME2 loads to the very same values.
        low, high = value_range
        np.subtract(np.float32(low + high), voxels, out=voxels)
        notes.append("MONOCHROME1 image: values inverted so that higher is brighter")
    (row_spacing, column_spacing), source, magnification, spacing_notes = _spacing(header)
    notes.extend(spacing_notes)
    projection = Projection(
        photometric_interpretation=photometric,
        value_range=value_range,
        spacing_source=source,
        magnification=magnification,
    )
    logger.info(
        "projection %s: %s %dx%d %s, spacing %s",
        sop_uid,
        header.get("Modality", "?"),
        rows,
        columns,
        photometric,
        f"{column_spacing:.4g} x {row_spacing:.4g} mm" if projection.calibrated else "none",
    )
    return Volume(
        voxels=voxels,
        spacing=(column_spacing, row_spacing, 1.0),
        origin=(0.0, 0.0, 0.0),
        direction=np.eye(3),
        source_headers=(header,),
        frame_of_reference_uid=str(header.get("FrameOfReferenceUID", "") or ""),
        study_instance_uid=str(header.StudyInstanceUID),
        series_instance_uid=str(header.SeriesInstanceUID),
        modality=str(header.get("Modality", "")),
        notes=tuple(notes),
        projection=projection,
    )
