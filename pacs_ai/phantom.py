"""A synthetic chest CT, written as a DICOM series, for ``pacs-ai demo`` and the tests.

The phantom is built from simple shapes in patient coordinates (millimetres, LPS: x toward
the patient's left, y posterior, z superior), so that it keeps its anatomy whatever the
matrix size or slice count: air outside, a body with a fat rim lying on a table, spine,
ribs and sternum, two lungs with vessels, a heart between them, a trachea coming in from
the top slice and dividing into the main bronchi, the liver under the right lung and a
gas bubble in the stomach under the left. Its ground truth (right lung 1, left lung 2) is
known exactly. Everything is a pure function of the parameters and the seed, UIDs
included, so that a re-run writes byte-identical files.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, CTImageStorage, ExplicitVRLittleEndian

from inference.uids import derive_uid

#: Field of view across (x and y) and along (z) the patient, in mm.
FIELD_OF_VIEW_MM = 358.4
SCAN_LENGTH_MM = 240.0
#: Stored value = HU - RESCALE_INTERCEPT (PS3.3 C.11.1.1.2).
RESCALE_INTERCEPT = -1024.0

RIGHT_LUNG = 1
LEFT_LUNG = 2

_AIR_HU = -1000.0
_FAT_HU = -100.0
_SOFT_TISSUE_HU = 40.0
_LIVER_HU = 60.0
_BONE_HU = 700.0
_TABLE_HU = 250.0
_LUNG_HU = -850.0
_VESSEL_HU = 40.0
_VESSELS_PER_LUNG = 12

_STUDY_DATE = datetime.date(2024, 1, 1)

#: Open coordinate grids (x, y, z) in mm, broadcastable to [z, y, x].
_Grid = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]


@dataclass(frozen=True, eq=False)
class ChestPhantom:
    """The phantom volume before it is written: arrays are ``[z, y, x]`` in LPS order,
    slice 0 the most inferior."""

    hu: npt.NDArray[np.float32]
    #: Ground truth: 0 background, 1 right lung, 2 left lung (vessels inside count as lung).
    labels: npt.NDArray[np.uint8]
    #: Trachea and extrapulmonary main bronchi (air that is not lung).
    airway: npt.NDArray[np.bool_]
    #: Gas in the stomach (air that is not lung).
    bowel_gas: npt.NDArray[np.bool_]
    #: Voxel size (x, y, z) in mm.
    spacing: tuple[float, float, float]
    #: Patient coordinates of the centre of voxel [0, 0, 0], in mm.
    origin: tuple[float, float, float]


@dataclass(frozen=True, eq=False)
class PhantomSeries:
    """A phantom written as a CT series: one file per slice, inferior first."""

    paths: tuple[Path, ...]
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    #: Ground truth ``[z, y, x]`` uint8: 1 right lung, 2 left lung.
    labels: npt.NDArray[np.uint8]
    #: Voxel size (x, y, z) in mm.
    spacing: tuple[float, float, float]


def chest_ct_phantom(*, slices: int = 96, size: int = 256, seed: int = 0) -> ChestPhantom:
    """Build the phantom volume in Hounsfield units.

    The anatomy has a fixed physical size (a 358 mm field of view, 240 mm along the
    patient), so ``size`` and ``slices`` set the voxel size: 1.4 mm pixels and 2.5 mm
    slices by default. ``seed`` drives the noise and the vessels.

    Raises:
        ValueError: if ``slices`` < 16 or ``size`` < 64 (too coarse to hold the anatomy).
    """
    if slices < 16 or size < 64:
        raise ValueError(
            f"the phantom needs at least 16 slices of 64x64 pixels, got {slices} of {size}x{size}"
        )
    rng = np.random.default_rng(seed)
    pixel = FIELD_OF_VIEW_MM / size
    thickness = SCAN_LENGTH_MM / slices
    half = (size - 1) / 2 * pixel
    # Open grids in mm: x and y from the scan axis, z from the bottom of the scan.
    grid: _Grid = (
        (np.arange(size, dtype=np.float32) * pixel - half)[None, None, :],
        (np.arange(size, dtype=np.float32) * pixel - half)[None, :, None],
        (np.arange(slices, dtype=np.float32) * thickness + thickness / 2)[:, None, None],
    )
    shape = (slices, size, size)

    hu = np.full(shape, _AIR_HU, dtype=np.float32)
    body = np.broadcast_to(_ellipse(grid, (0, 0), (150, 105)), shape)
    hu[body] = _FAT_HU
    hu[np.broadcast_to(_ellipse(grid, (0, 0), (138, 93)), shape)] = _SOFT_TISSUE_HU
    x, y, z = grid
    hu[np.broadcast_to((y >= 112) & (y <= 122) & (np.abs(x) <= 170), shape)] = _TABLE_HU
    liver = (z < 75) & (x < 40) & _ellipse(grid, (0, 0), (130, 85))
    hu[np.broadcast_to(liver, shape)] = _LIVER_HU

    labels = _lungs(hu, grid, rng)
    in_lung = labels > 0
    airway = _airway(hu, grid, in_lung, pixel=pixel)
    _bones(hu, grid)
    bowel_gas = np.broadcast_to(_ellipsoid(grid, (55, -15, 25), (25, 20, 12)), shape) & ~in_lung
    hu[bowel_gas] = _AIR_HU

    hu += rng.normal(0.0, 10.0, size=shape).astype(np.float32)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    return ChestPhantom(
        hu=hu,
        labels=labels,
        airway=airway,
        bowel_gas=bowel_gas,
        spacing=(pixel, pixel, thickness),
        origin=(-half, -half, -SCAN_LENGTH_MM + thickness / 2),
    )


def _lungs(
    hu: npt.NDArray[np.float32], grid: _Grid, rng: np.random.Generator
) -> npt.NDArray[np.uint8]:
    """Draw the lungs, the heart between them and the vessels; return the lung labels.

    Each lung is two half-ellipsoids, taller above its widest level than below, with the
    heart carved out of it; the right one (at lower x in LPS) is the larger.
    """
    x, y, z = grid
    heart = _ellipsoid(grid, (12, -22, 88), (50, 40, 45))
    labels = np.zeros(hu.shape, dtype=np.uint8)
    height = np.where(z < 100.0, 55.0, 100.0)
    for value, centre, width in ((RIGHT_LUNG, -66.0, 44.0), (LEFT_LUNG, 64.0, 42.0)):
        inside = ((x - centre) / width) ** 2 + (y / 55.0) ** 2 + ((z - 100.0) / height) ** 2 <= 1
        labels[inside & ~heart] = value
    in_lung = labels > 0
    hu[in_lung] = _LUNG_HU + rng.normal(0.0, 25.0, size=int(in_lung.sum())).astype(np.float32)
    hu[heart] = _SOFT_TISSUE_HU
    for value, hilum_x in ((RIGHT_LUNG, -35.0), (LEFT_LUNG, 35.0)):
        _draw_vessels(hu, labels == value, rng, grid, hilum=(hilum_x, 10.0, 110.0))
    return labels


def _airway(
    hu: npt.NDArray[np.float32], grid: _Grid, in_lung: npt.NDArray[np.bool_], *, pixel: float
) -> npt.NDArray[np.bool_]:
    """Draw the trachea, from the top slice to the carina, and the main bronchi into the
    lungs, with soft-tissue walls; return the lumen outside the lungs."""
    z = grid[2]
    lumen = np.broadcast_to(_ellipse(grid, (0, 20), (8, 8)) & (z >= 150), hu.shape).copy()
    carina = np.array([0.0, 20.0, 152.0], dtype=np.float32)
    for end_x in (-50.0, 50.0):
        lumen |= _tube(grid, carina, np.array([end_x, 10.0, 125.0], dtype=np.float32), 5.5)
    lumen &= ~in_lung
    hu[_dilate_in_plane(lumen, round(2.0 / pixel)) & ~in_lung] = _SOFT_TISSUE_HU
    hu[lumen] = _AIR_HU
    return lumen


def _bones(hu: npt.NDArray[np.float32], grid: _Grid) -> None:
    """Vertebral body and spinous process, sternum, and ribs on every other 30 mm band."""
    z = grid[2]
    spine_and_sternum = (
        ((0.0, 62.0), (17.0, 15.0)),
        ((0.0, 90.0), (5.0, 10.0)),
        ((0.0, -92.0), (14.0, 5.0)),
    )
    for centre, axes in spine_and_sternum:
        hu[np.broadcast_to(_ellipse(grid, centre, axes), hu.shape)] = _BONE_HU
    rib_level = (np.floor(z / 30.0) % 2 == 0) & (z > 40)
    for angle in np.deg2rad([15, 40, 65, 115, 140, 165, 195, 220, 245, 295, 320, 345]):
        rib = (128 * float(np.cos(angle)), 88 * float(np.sin(angle)))
        hu[_ellipse(grid, rib, (6.0, 6.0)) & rib_level] = _BONE_HU


def write_chest_ct_series(
    out_dir: Path, *, slices: int = 96, size: int = 256, seed: int = 0
) -> PhantomSeries:
    """Write the phantom as a CT Image Storage series (Explicit VR Little Endian).

    One file per slice, ``CT0001.dcm`` upward from the most inferior slice, into
    ``out_dir`` (created if needed; existing files of the same names are replaced). The
    UIDs derive from the parameters and the seed. The images follow the CT Image IOD
    (PS3.3 A.3) and pass ``dciodvfy`` without errors.

    Raises:
        ValueError: see :func:`chest_ct_phantom`.
        OSError: if the files cannot be written.
    """
    phantom = chest_ct_phantom(slices=slices, size=size, seed=seed)
    key = ("pacs-ai phantom", "chest-ct", f"slices={slices}", f"size={size}", f"seed={seed}")
    study_uid = derive_uid(*key, "study")
    series_uid = derive_uid(*key, "series")
    frame_uid = derive_uid(*key, "frame-of-reference")
    stored = np.rint(phantom.hu - RESCALE_INTERCEPT).astype(np.int16)

    out_dir.mkdir(parents=True, exist_ok=True)
    template = _series_template(study_uid, series_uid, frame_uid, phantom)
    paths: list[Path] = []
    for index in range(slices):
        sop_uid = derive_uid(*key, "instance", str(index))
        ds = _slice_dataset(template, sop_uid, index, stored[index], phantom)
        path = out_dir / f"CT{index + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return PhantomSeries(
        paths=tuple(paths),
        study_instance_uid=str(study_uid),
        series_instance_uid=str(series_uid),
        frame_of_reference_uid=str(frame_uid),
        labels=phantom.labels,
        spacing=phantom.spacing,
    )


# --- shapes ------------------------------------------------------------------------------


def _ellipse(
    grid: _Grid, centre: tuple[float, float], axes: tuple[float, float]
) -> npt.NDArray[np.bool_]:
    """An elliptic cylinder along z (broadcastable, no z extent)."""
    x, y, _ = grid
    inside: npt.NDArray[np.bool_] = ((x - centre[0]) / axes[0]) ** 2 + (
        (y - centre[1]) / axes[1]
    ) ** 2 <= 1
    return inside


def _ellipsoid(
    grid: _Grid, centre: tuple[float, float, float], axes: tuple[float, float, float]
) -> npt.NDArray[np.bool_]:
    x, y, z = grid
    inside: npt.NDArray[np.bool_] = ((x - centre[0]) / axes[0]) ** 2 + (
        (y - centre[1]) / axes[1]
    ) ** 2 + ((z - centre[2]) / axes[2]) ** 2 <= 1
    return inside


def _tube(
    grid: _Grid, start: npt.NDArray[np.float32], end: npt.NDArray[np.float32], radius: float
) -> npt.NDArray[np.bool_]:
    """Voxels within ``radius`` of the segment ``start``-``end`` (x, y, z in mm)."""
    x, y, z = grid
    d = end - start
    px, py, pz = x - start[0], y - start[1], z - start[2]
    t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / float(d @ d), 0.0, 1.0)
    dist2 = (px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2
    inside: npt.NDArray[np.bool_] = dist2 <= radius**2
    return inside


def _draw_vessels(
    hu: npt.NDArray[np.float32],
    lung: npt.NDArray[np.bool_],
    rng: np.random.Generator,
    grid: _Grid,
    *,
    hilum: tuple[float, float, float],
) -> None:
    """Vessels fanning out from the hilum to random points of the lung, each drawn in the
    box around its segment so that the cost stays small."""
    x, y, z = (axis.ravel() for axis in grid)
    start = np.asarray(hilum, dtype=np.float32)
    points = np.argwhere(lung)
    for _ in range(_VESSELS_PER_LUNG):
        zi, yi, xi = points[rng.integers(len(points))]
        end = np.array([x[xi], y[yi], z[zi]], dtype=np.float32)
        radius = float(rng.uniform(1.5, 3.0))
        box = tuple(
            _index_range(coords, min(start[k], end[k]) - radius, max(start[k], end[k]) + radius)
            for k, coords in ((2, z), (1, y), (0, x))
        )
        sub_grid: _Grid = (
            x[box[2]][None, None, :],
            y[box[1]][None, :, None],
            z[box[0]][:, None, None],
        )
        vessel = _tube(sub_grid, start, end, radius)
        hu[box][vessel & lung[box]] = _VESSEL_HU


def _index_range(coords: npt.NDArray[np.float32], low: float, high: float) -> slice:
    """Indices of the (increasing) ``coords`` between ``low`` and ``high``."""
    return slice(
        int(np.searchsorted(coords, low, side="left")),
        int(np.searchsorted(coords, high, side="right")),
    )


def _dilate_in_plane(mask: npt.NDArray[np.bool_], steps: int) -> npt.NDArray[np.bool_]:
    """Dilation by a square in each slice, ``steps`` pixels (at least one) each way."""
    out = mask.copy()
    for _ in range(max(1, steps)):
        grown = out.copy()
        grown[:, 1:, :] |= out[:, :-1, :]
        grown[:, :-1, :] |= out[:, 1:, :]
        grown[:, :, 1:] |= out[:, :, :-1]
        grown[:, :, :-1] |= out[:, :, 1:]
        out = grown
    return out


# --- DICOM -------------------------------------------------------------------------------


def _series_template(
    study_uid: UID, series_uid: UID, frame_uid: UID, phantom: ChestPhantom
) -> Dataset:
    """Attributes shared by every slice (PS3.3 A.3: the CT Image IOD)."""
    date = _STUDY_DATE.strftime("%Y%m%d")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    for keyword, value in (
        # Patient (C.7.1.1): identified as synthetic, nothing else to say.
        ("PatientName", "Demo^Synthetic"),
        ("PatientID", "PACSAI-DEMO"),
        ("PatientBirthDate", ""),
        ("PatientSex", "O"),
        # General Study (C.7.2.1)
        ("StudyInstanceUID", study_uid),
        ("StudyDate", date),
        ("StudyTime", "090000"),
        ("ReferringPhysicianName", ""),
        ("StudyID", "1"),
        ("AccessionNumber", ""),
        ("StudyDescription", "Synthetic chest CT (pacs-ai phantom)"),
        # General Series (C.7.3.1), CT Series (C.8.2.3)
        ("Modality", "CT"),
        ("SeriesInstanceUID", series_uid),
        ("SeriesNumber", 1),
        ("SeriesDate", date),
        ("SeriesTime", "090000"),
        ("SeriesDescription", "Chest phantom"),
        ("BodyPartExamined", "CHEST"),
        ("PatientPosition", "HFS"),
        # Frame of Reference (C.7.4.1): one for the whole series.
        ("FrameOfReferenceUID", frame_uid),
        ("PositionReferenceIndicator", ""),
        # General Equipment (C.7.5.1)
        ("Manufacturer", "pacs-ai"),
        ("ManufacturerModelName", "synthetic phantom"),
        ("SoftwareVersions", "1"),
        # General Image (C.7.6.1), General Acquisition (C.7.10.1)
        ("ContentDate", date),
        ("ContentTime", "090000"),
        ("AcquisitionNumber", 1),
        ("AcquisitionDate", date),
        ("AcquisitionTime", "090000"),
        ("ImageType", ["ORIGINAL", "PRIMARY", "AXIAL"]),
        ("BurnedInAnnotation", "NO"),
    ):
        setattr(ds, keyword, value)
    _image_attributes(ds, phantom)
    return ds


def _image_attributes(ds: Dataset, phantom: ChestPhantom) -> None:
    """Image Plane (C.7.6.2), Image Pixel (C.7.6.3), CT Image (C.8.2.1), VOI LUT (C.11.2)."""
    pixel_x, pixel_y, thickness = phantom.spacing
    ds.PixelSpacing = [_ds(pixel_y), _ds(pixel_x)]  # row spacing first (PS3.3 10.7.1.3)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness = _ds(thickness)
    ds.SpacingBetweenSlices = _ds(thickness)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = phantom.hu.shape[1], phantom.hu.shape[2]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = _ds(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.KVP = "120"
    ds.ConvolutionKernel = "STANDARD"
    ds.WindowCenter = "-600"  # a lung window for viewers
    ds.WindowWidth = "1500"


def _slice_dataset(
    template: Dataset,
    sop_uid: UID,
    index: int,
    stored: npt.NDArray[np.int16],
    phantom: ChestPhantom,
) -> Dataset:
    ds = Dataset()
    ds.update(template)
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = index + 1
    x0, y0, z0 = phantom.origin
    z_mm = z0 + index * phantom.spacing[2]
    ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(z_mm)]
    ds.SliceLocation = _ds(z_mm)
    ds.PixelData = np.ascontiguousarray(stored).astype("<i2").tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def _ds(value: float) -> str:
    """A Decimal String value: at most 16 characters (PS3.5 6.2)."""
    return f"{value:.6g}"
