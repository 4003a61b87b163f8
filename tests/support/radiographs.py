"""Projection radiographs for tests: small synthetic DX images, and variants of real ones.

The variants are what real archives hold and the shared radiographs do not: MONOCHROME1
(pixel values inverted, Photometric Interpretation changed), JPEG 2000 Lossless, 12-bit
stored in 16, Pixel Spacing 0 or absent with Imager Pixel Spacing and a magnification
factor. Each keeps the source's identity but for a new SOP Instance UID.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)


def dx_dataset(
    pixels: npt.NDArray[np.integer],
    *,
    bits_stored: int | None = None,
    photometric: str = "MONOCHROME2",
    study_uid: str | None = None,
    series_uid: str | None = None,
    instance_number: int = 1,
) -> Dataset:
    """A DX For Presentation image (no Image Plane module) holding ``pixels`` (unsigned)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = "Test^Radiograph"
    ds.PatientID = "PACSAI-DX"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.StudyDate = "20240102"
    ds.StudyTime = "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.Modality = "DX"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = (int(v) for v in pixels.shape)
    allocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated = allocated
    ds.BitsStored = bits_stored or allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _copy(source: Path) -> tuple[Dataset, npt.NDArray[np.integer]]:
    ds = dcmread(source)
    pixels = ds.pixel_array.copy()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds, pixels


def monochrome1(source: Path, target: Path) -> Path:
    """The image with every stored value inverted and MONOCHROME1: displays the same."""
    ds, pixels = _copy(source)
    top = 2 ** int(ds.BitsStored) - 1
    inverted = (top - pixels.astype(np.int64)).astype(pixels.dtype)
    ds.PixelData = inverted.tobytes()
    ds.PhotometricInterpretation = (
        "MONOCHROME2" if ds.PhotometricInterpretation == "MONOCHROME1" else "MONOCHROME1"
    )
    if "PresentationLUTShape" in ds:
        # PS3.3 C.8.11.6.1.1: INVERSE goes with MONOCHROME1, IDENTITY with MONOCHROME2.
        ds.PresentationLUTShape = (
            "INVERSE" if ds.PhotometricInterpretation == "MONOCHROME1" else "IDENTITY"
        )
    if "WindowCenter" in ds:
        # The same window on the inverted values.
        ds.WindowCenter = top - float(ds.WindowCenter)
    return save(ds, target)


def jpeg2000(source: Path, target: Path) -> Path:
    """The image in JPEG 2000 Lossless (pylibjpeg-openjpeg)."""
    ds, _ = _copy(source)
    ds.compress(JPEG2000Lossless)
    return save(ds, target)


def twelve_bit(source: Path, target: Path) -> Path:
    """An 8-bit image as 12 bits stored in 16: every value times 16."""
    ds, pixels = _copy(source)
    if int(ds.BitsStored) != 8:
        raise ValueError("twelve_bit widens 8-bit images")
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = (pixels.astype(np.uint16) * 16).tobytes()
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in ds:
            setattr(ds, keyword, float(getattr(ds, keyword)) * 16)
    return save(ds, target)


def with_spacing(
    source: Path,
    target: Path,
    *,
    pixel_spacing: list[float] | None,
    imager_pixel_spacing: list[float] | None,
    magnification: float | None = None,
) -> Path:
    """The image with Pixel Spacing / Imager Pixel Spacing / magnification replaced
    (``None`` removes the attribute)."""
    ds, _ = _copy(source)
    for keyword, value in (
        ("PixelSpacing", pixel_spacing),
        ("ImagerPixelSpacing", imager_pixel_spacing),
        ("EstimatedRadiographicMagnificationFactor", magnification),
    ):
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return save(ds, target)


def in_series(
    source: Path,
    target: Path,
    *,
    study_uid: str,
    series_uid: str,
    instance_number: int,
    view_position: str,
    patient: Dataset | None = None,
) -> Path:
    """The image as instance ``instance_number`` of a series, with its View Position
    and, where ``patient`` is given, its Patient ID and Name (so that films of two patients
    become films of one)."""
    ds, _ = _copy(source)
    if patient is not None:
        ds.PatientID = patient.get("PatientID", "")
        ds.PatientName = patient.get("PatientName", "")
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = instance_number
    ds.ViewPosition = view_position
    return save(ds, target)
