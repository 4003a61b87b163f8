"""A real T1 brain for the brain-model tests and benchmarks, as a DICOM MR series.

The image is the MNI ICBM152 2009a symmetric T1 template (1 mm, 197 x 233 x 189, RAS),
which nilearn ships inside its wheel (a development dependency here; copyright McConnell
Brain Imaging Centre, free use with attribution: Fonov et al., NeuroImage 54:313, 2011).
It is already skull-stripped, and brain-extraction networks trained on heads look for
the skull, so :func:`synthetic_head` wraps the real brain in bands of CSF, skull, diploe
and scalp at fixed distances from its surface; the true brain mask is then known exactly.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from benchmarks._support import MissingMaterialError

TEMPLATE = "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


@dataclass(frozen=True)
class Head:
    """A head image with its geometry, in nibabel's convention and in DICOM's.

    ``voxels`` is ``[z, y, x]`` (DICOM slice order), ``spacing`` (x, y, z) in mm,
    ``direction`` the columns x, y, z in LPS; ``brain`` the true brain mask, same shape.
    """

    voxels: npt.NDArray[np.float32]
    brain: npt.NDArray[np.bool_]
    spacing: tuple[float, float, float]
    direction: npt.NDArray[np.float64]

    @property
    def ras_affine(self) -> npt.NDArray[np.float64]:
        """The nibabel affine of ``voxels.transpose(2, 1, 0)`` (voxel i, j, k -> RAS mm)."""
        affine = np.eye(4)
        affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ self.direction @ np.diag(self.spacing)
        return affine


def template_path() -> Path:
    """The MNI template file inside the installed nilearn, or ``$PACS_AI_MNI_TEMPLATE``
    (``benchmarks/gpu-check`` carries the file alone to a machine without nilearn).

    Raises:
        MissingMaterialError: nilearn is not installed (the tests skip locally, fail in CI).
    """
    given = os.environ.get("PACS_AI_MNI_TEMPLATE")
    if given:
        return Path(given)
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise MissingMaterialError(
            "nilearn (a development dependency) is not installed: no MNI template"
        )
    return Path(next(iter(spec.submodule_search_locations))) / TEMPLATE


def load_template() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """The template as nibabel gives it (``[i, j, k]``) and its RAS affine."""
    nibabel: Any = importlib.import_module("nibabel")  # test-only, untyped
    image = nibabel.load(template_path())
    return np.asarray(image.dataobj, dtype=np.float32), np.asarray(image.affine, dtype=np.float64)


def synthetic_head(
    brain: npt.NDArray[np.float32], *, pad: int = 24
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """The brain wrapped in CSF, skull, diploe and scalp (distance bands in voxels)."""
    from scipy import ndimage  # noqa: PLC0415

    padded = np.pad(brain, pad)
    mask = padded > 0
    distance = ndimage.distance_transform_edt(~mask)
    head = padded.copy()
    for low, high, value in ((0, 3, 25.0), (3, 9, 8.0), (9, 12, 60.0), (12, 18, 190.0)):
        head[(distance > low) & (distance <= high)] = value
    return head.astype(np.float32), mask


def _head(step: int, spacing: tuple[float, float, float]) -> Head:
    brain, affine = load_template()
    if not np.allclose(affine[:3, :3], np.diag(np.abs(np.diag(affine[:3, :3])))):
        raise AssertionError("the MNI template should be stored RAS without rotation")
    head_ijk, mask_ijk = synthetic_head(brain)
    # RAS -> LPS, the usual axial DICOM orientation: i and j reversed.
    head_ijk = head_ijk[::-step, ::-step, ::step]
    mask_ijk = mask_ijk[::-step, ::-step, ::step]
    return Head(
        voxels=np.ascontiguousarray(head_ijk.transpose(2, 1, 0)),
        brain=np.ascontiguousarray(mask_ijk.transpose(2, 1, 0)),
        spacing=spacing,
        direction=np.eye(3),
    )


def small_head(*, step: int = 2, spacing: tuple[float, float, float] = (0.5, 0.5, 0.6)) -> Head:
    """The synthetic head at every ``step``-th voxel, given small voxels (a small, fast head).

    Networks then see a head a few centimetres across: fast on a CPU, and for the
    reproduction tests only the arithmetic matters, not the anatomy. Axial LPS slices.
    """
    return _head(step, spacing)


def full_head() -> Head:
    """The synthetic head at the template's own 1 mm resolution, axial LPS slices."""
    return _head(1, (1.0, 1.0, 1.0))


def write_mr_series(  # noqa: PLR0915 -- one attribute a line, as the IOD lists them
    head: Head,
    folder: Path,
    *,
    echo_time: float = 4,
    repetition_time: float = 20,
    scanning_sequence: str = "GR",
) -> list[Path]:
    """Write ``head`` as an MR Image Storage series (PS3.3 A.4), one file per slice.

    Pixel values are the head's (whole numbers 0-255) as unsigned 16-bit, so the series
    holds the image exactly. The defaults describe a T1-weighted spoiled gradient echo;
    :func:`t2_like` heads go with ``echo_time=95, repetition_time=4000,
    scanning_sequence="SE"``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    row = head.direction[:, 0]
    column = head.direction[:, 1]
    normal = head.direction[:, 2]
    paths = []
    for index, plane in enumerate(head.voxels):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName = "Template^MNI152"
        ds.PatientID = "MNI152-2009A"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study
        ds.StudyDate = "20240102"
        ds.StudyTime = "120000"
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.Modality = "MR"
        ds.SeriesInstanceUID = series
        ds.SeriesNumber = 1
        ds.BodyPartExamined = "HEAD"
        ds.FrameOfReferenceUID = frame
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "pacs-ai tests"
        ds.InstanceNumber = index + 1
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
        ds.ScanningSequence = scanning_sequence
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = repetition_time
        ds.EchoTime = echo_time
        ds.EchoTrainLength = 1
        ds.PixelSpacing = [head.spacing[1], head.spacing[0]]
        ds.SliceThickness = head.spacing[2]
        ds.ImageOrientationPatient = [float(v) for v in (*row, *column)]
        position = normal * head.spacing[2] * index
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = plane.shape
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = np.rint(plane).astype(np.uint16).tobytes()
        path = folder / f"{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def t2_like(head: Head) -> Head:
    """The same head with T2-like contrast: CSF bright, white matter darker than grey
    matter, skull dark, scalp fat intermediate (as a T2 fast spin echo shows them).

    Within the brain the template's T1 intensities are inverted (white matter, brightest
    on T1, becomes the darkest tissue); the bands around it get T2-like values.
    """
    voxels = head.voxels.copy()
    inside = head.brain
    top = float(voxels[inside].max())
    voxels[inside] = np.clip(top - voxels[inside], 0, None) * 0.6 + 20
    for t1_value, t2_value in ((25.0, 230.0), (8.0, 5.0), (60.0, 40.0), (190.0, 120.0)):
        voxels[~inside & (head.voxels == t1_value)] = t2_value
    return Head(voxels=voxels, brain=head.brain, spacing=head.spacing, direction=head.direction)
