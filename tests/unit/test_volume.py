"""A series on disk becomes one sorted float32 volume, or a clear refusal."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    JPEG2000MC,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

from core.errors import InvalidInputError
from inference.volume import load_series

ROWS, COLUMNS = 6, 5
STUDY = "1.2.826.0.1.3680043.10.1.1"
SERIES = "1.2.826.0.1.3680043.10.1.2"
PATIENT_NAME = "Testpatient^Secretname"


def ct_slice(
    folder: Path,
    index: int,
    *,
    z: float,
    stored: npt.NDArray[Any] | None = None,
    rows: int = ROWS,
    columns: int = COLUMNS,
    pixel_spacing: Sequence[float] = (0.5, 0.7),
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    position: Sequence[float] | None = None,
    frame_of_reference_uid: str | None = "1.2.826.0.1.3680043.10.1.3",
    series_uid: str = SERIES,
    slope: float = 1.0,
    intercept: float = -1024.0,
    **extra: Any,
) -> Path:
    """Write one small CT slice; ``stored`` defaults to a value pattern encoding ``index``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    sop_uid = generate_uid(
        prefix="1.2.826.0.1.3680043.10.2.", entropy_srcs=[str(folder), str(index)]
    )
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = "PID-SECRET-1"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "A1"
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "test"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    if frame_of_reference_uid is not None:
        ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.ImagePositionPatient = list(position) if position is not None else [-10.0, -20.0, z]
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.SliceThickness = 5.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.RescaleType = "HU"
    if stored is None:
        stored = np.full((rows, columns), 1000 + 10 * index, dtype=np.uint16)
        stored[0, 0] = index
    ds.PixelData = stored.astype(np.uint16 if ds.PixelRepresentation == 0 else np.int16).tobytes()
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    path = folder / f"slice{index:03d}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def series(folder: Path, positions: Sequence[float], **kwargs: Any) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [ct_slice(folder, i, z=z, **kwargs) for i, z in enumerate(positions)]


def test_slices_are_sorted_along_the_normal_whatever_the_file_order(tmp_path: Path) -> None:
    paths = series(tmp_path, [30.0, 10.0, 20.0, 0.0])
    random.Random(1).shuffle(paths)

    volume = load_series(paths)

    assert volume.shape == (4, ROWS, COLUMNS)
    assert volume.origin == (-10.0, -20.0, 0.0)
    # Slice i was written at z = [30, 10, 20, 0][i]; stored[0, 0] = i, intercept -1024.
    assert [int(v) for v in volume.voxels[:, 0, 0] + 1024] == [3, 1, 2, 0]
    assert [float(h.ImagePositionPatient[2]) for h in volume.source_headers] == [0, 10, 20, 30]
    assert np.array_equal(volume.direction, np.eye(3))
    assert volume.voxels.dtype == np.float32
    assert volume.voxels.flags.c_contiguous


def test_spacing_is_column_row_and_the_measured_step_not_slice_thickness(tmp_path: Path) -> None:
    volume = load_series(series(tmp_path, [0.0, 2.5, 5.0, 7.5], pixel_spacing=(0.5, 0.7)))

    # PixelSpacing is (row spacing, column spacing); x is the column spacing.
    assert volume.spacing == pytest.approx((0.7, 0.5, 2.5))
    assert volume.voxel_volume_mm3 == pytest.approx(0.7 * 0.5 * 2.5)
    assert volume.affine[:3, 3] == pytest.approx([-10.0, -20.0, 0.0])


def test_descending_positions_and_coronal_stacks_sort_along_row_cross_column(
    tmp_path: Path,
) -> None:
    # Coronal: rows run left (+x), columns run down (-z); the normal is +y (posterior).
    coronal = (1, 0, 0, 0, 0, -1)
    folder = tmp_path / "coronal"
    folder.mkdir()
    paths = [
        ct_slice(folder, i, z=0.0, orientation=coronal, position=[0.0, y, 0.0])
        for i, y in enumerate([3.0, 2.0, 1.0])
    ]

    volume = load_series(paths)

    assert np.allclose(volume.direction[:, 2], [0.0, 1.0, 0.0])
    assert volume.origin == (0.0, 1.0, 0.0)
    assert volume.spacing[2] == pytest.approx(1.0)
    assert [int(v) for v in volume.voxels[:, 0, 0] + 1024] == [2, 1, 0]


def test_rescale_slope_and_intercept_give_modality_units_per_slice(tmp_path: Path) -> None:
    stored = np.arange(ROWS * COLUMNS, dtype=np.uint16).reshape(ROWS, COLUMNS)
    tmp_path.mkdir(exist_ok=True)
    paths = [
        ct_slice(tmp_path, 0, z=0.0, stored=stored, slope=1.0, intercept=-1024.0),
        ct_slice(tmp_path, 1, z=1.0, stored=stored, slope=2.0, intercept=-1000.0),
        ct_slice(tmp_path, 2, z=2.0, stored=stored, slope=0.5, intercept=0.0),
    ]

    volume = load_series(paths)

    assert np.array_equal(volume.voxels[0], stored - 1024.0)
    assert np.array_equal(volume.voxels[1], stored * 2.0 - 1000.0)
    assert np.array_equal(volume.voxels[2], stored * 0.5)


def test_headers_are_kept_without_pixel_data_and_identify_the_series(tmp_path: Path) -> None:
    volume = load_series(series(tmp_path, [0.0, 1.0]))

    assert all("PixelData" not in header for header in volume.source_headers)
    assert volume.series_instance_uid == SERIES
    assert volume.study_instance_uid == STUDY
    assert volume.modality == "CT"
    assert volume.notes == ()


def test_a_series_with_one_frame_of_reference_uid_keeps_it_without_a_note(tmp_path: Path) -> None:
    volume = load_series(series(tmp_path, [0.0, 1.0, 2.0]))

    assert volume.frame_of_reference_uid == "1.2.826.0.1.3680043.10.1.3"
    assert volume.notes == ()


def test_per_slice_frame_of_reference_uids_on_one_stack_become_the_first_slices(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tmp_path.mkdir(exist_ok=True)
    uids = [f"1.2.826.0.1.3680043.10.7.{i}" for i in range(4)]
    # Written in reverse z order, so the first *file* is not the first *slice*.
    paths = [
        ct_slice(tmp_path, i, z=z, frame_of_reference_uid=uids[i])
        for i, z in enumerate([3.0, 2.0, 1.0, 0.0])
    ]

    with caplog.at_level(logging.DEBUG, logger="inference.volume"):
        volume = load_series(paths)

    assert volume.frame_of_reference_uid == uids[3]
    assert len(volume.notes) == 1
    assert "4 different FrameOfReferenceUIDs" in volume.notes[0]
    assert uids[3] in volume.notes[0]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "4 different FrameOfReferenceUIDs" in r.getMessage() and uids[3] in r.getMessage()
        for r in warnings
    )
    # The files and the kept headers still carry their own UIDs.
    assert [pydicom.dcmread(p).FrameOfReferenceUID for p in paths] == uids
    assert [h.FrameOfReferenceUID for h in volume.source_headers] == uids[::-1]


def test_per_slice_frame_of_reference_uids_on_an_inconsistent_stack_are_refused(
    tmp_path: Path,
) -> None:
    tmp_path.mkdir(exist_ok=True)
    paths = [
        ct_slice(tmp_path, 0, z=0.0, frame_of_reference_uid="1.2.3.1"),
        ct_slice(tmp_path, 1, z=1.0, frame_of_reference_uid="1.2.3.2"),
        ct_slice(tmp_path, 2, z=2.0, frame_of_reference_uid="1.2.3.3", pixel_spacing=(0.9, 0.9)),
    ]

    with pytest.raises(InvalidInputError, match="3 different FrameOfReferenceUIDs") as error:
        load_series(paths)
    assert "mixed PixelSpacing" in str(error.value)
    assert error.value.stage == "volume"


def test_a_series_without_any_frame_of_reference_uid_is_refused(tmp_path: Path) -> None:
    paths = series(tmp_path, [0.0, 1.0], frame_of_reference_uid=None)

    with pytest.raises(InvalidInputError, match="no slice has a FrameOfReferenceUID"):
        load_series(paths)


def test_mixed_rows_and_columns_are_refused(tmp_path: Path) -> None:
    paths = [
        *series(tmp_path / "a", [0.0, 1.0]),
        ct_slice(tmp_path / "a", 9, z=2.0, rows=4, columns=4),
    ]

    with pytest.raises(InvalidInputError, match=r"mixed Rows x Columns: 6x5 \(2\), 4x4 \(1\)"):
        load_series(paths)


def test_every_consistency_problem_is_listed_at_once(tmp_path: Path) -> None:
    folder = tmp_path / "a"
    paths = [
        *series(folder, [0.0, 1.0]),
        ct_slice(folder, 8, z=2.0, rows=4, columns=4),
        ct_slice(folder, 9, z=3.0, orientation=(0, 1, 0, 0, 0, -1)),
    ]

    with pytest.raises(InvalidInputError, match="2 problem") as error:
        load_series(paths)
    assert "mixed Rows x Columns" in str(error.value)
    assert "mixed ImageOrientationPatient" in str(error.value)


def test_mixed_pixel_spacing_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "a"
    paths = [*series(folder, [0.0, 1.0]), ct_slice(folder, 9, z=2.0, pixel_spacing=(0.5, 0.8))]

    with pytest.raises(
        InvalidInputError, match=r"mixed PixelSpacing: \(0.5, 0.7\) and \(0.5, 0.8\)"
    ):
        load_series(paths)


def test_mixed_orientation_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "a"
    paths = [
        *series(folder, [0.0, 1.0]),
        ct_slice(folder, 9, z=2.0, orientation=(1, 0, 0, 0, 0.99, 0.141)),
    ]

    with pytest.raises(InvalidInputError, match="mixed ImageOrientationPatient"):
        load_series(paths)


def test_non_orthonormal_orientation_is_refused(tmp_path: Path) -> None:
    paths = series(tmp_path, [0.0, 1.0], orientation=(1, 0, 0, 0.5, 0.5, 0))

    with pytest.raises(InvalidInputError, match="not two orthogonal unit vectors"):
        load_series(paths)


def test_a_non_image_object_is_refused_by_name(tmp_path: Path) -> None:
    paths = series(tmp_path, [0.0, 1.0])
    report = Dataset()
    report.file_meta = FileMetaDataset()
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.88.33")
    report.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3.99")
    report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    report.SOPInstanceUID = "1.2.3.99"
    report.save_as(tmp_path / "report.dcm", enforce_file_format=True)

    with pytest.raises(InvalidInputError, match=r"report.dcm .*not an image \(Comprehensive SR"):
        load_series([*paths, tmp_path / "report.dcm"])


def test_a_multi_frame_image_without_functional_groups_is_refused(tmp_path: Path) -> None:
    paths = series(tmp_path, [0.0, 1.0])
    ct_slice(tmp_path, 5, z=2.0, NumberOfFrames=2)

    with pytest.raises(
        InvalidInputError,
        match=r"slice005.dcm .*: a multi-frame image without the Multi-frame Functional "
        r"Groups module \(PS3.3 C.7.6.16\)",
    ):
        load_series([*paths, tmp_path / "slice005.dcm"])


def test_a_file_that_is_not_dicom_is_refused_by_name(tmp_path: Path) -> None:
    paths = series(tmp_path, [0.0, 1.0])
    junk = tmp_path / "notes.txt"
    junk.write_text("not DICOM")

    with pytest.raises(InvalidInputError, match=r"notes\.txt: not a DICOM file"):
        load_series([*paths, junk])


def test_files_from_two_series_are_refused(tmp_path: Path) -> None:
    paths = series(tmp_path / "a", [0.0, 1.0]) + series(
        tmp_path / "b", [2.0], series_uid="1.2.826.0.1.3680043.10.1.9"
    )

    with pytest.raises(InvalidInputError, match="files from 2 series"):
        load_series(paths)


def test_duplicate_positions_are_refused_naming_the_position(tmp_path: Path) -> None:
    paths = series(tmp_path, [0.0, 1.0, 1.0, 2.0])

    with pytest.raises(InvalidInputError, match=r"1 duplicate slice position\(s\) .* at 1.000 mm"):
        load_series(paths)


def test_missing_slices_are_refused_naming_the_gap_and_the_tolerance(tmp_path: Path) -> None:
    paths = series(tmp_path, [0.0, 1.0, 2.0, 4.0, 5.0])

    with pytest.raises(
        InvalidInputError,
        match=r"missing slices: 1 gap\(s\) larger than 1.5 x the median step of 1.000 mm, "
        r"between 2.000 and 4.000 mm",
    ):
        load_series(paths)


def test_a_step_within_one_and_a_half_times_the_median_is_irregular_not_missing(
    tmp_path: Path,
) -> None:
    paths = series(tmp_path, [0.0, 1.0, 2.0, 3.4, 4.4])

    with pytest.raises(
        InvalidInputError, match=r"irregular slice spacing: .* 1.400 mm after 2.000"
    ):
        load_series(paths)


def test_steps_within_five_percent_are_one_regular_grid(tmp_path: Path) -> None:
    volume = load_series(series(tmp_path, [0.0, 1.02, 2.0, 3.01]))

    assert volume.spacing[2] == pytest.approx(3.01 / 3)


def test_a_gantry_tilted_stack_is_refused(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    paths = [
        ct_slice(tmp_path, i, z=float(i), position=[-10.0, -20.0 + 0.3 * i, float(i)])
        for i in range(4)
    ]

    with pytest.raises(InvalidInputError, match=r"drift .* sideways from the slice normal"):
        load_series(paths)


def test_too_few_slices_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"1 slice\(s\); at least 2 are needed"):
        load_series(series(tmp_path, [0.0]))
    with pytest.raises(InvalidInputError, match="no files given"):
        load_series([])


def _recompress_header(path: Path, transfer_syntax: UID) -> None:
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.PixelData = encapsulate([b"\xff\x4f" + b"\x00" * 30])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)


def test_a_transfer_syntax_pydicom_cannot_decode_is_named_with_what_to_do(
    tmp_path: Path,
) -> None:
    paths = series(tmp_path, [0.0, 1.0])
    # JPEG 2000 Part 2 multi-component: pydicom has no decoder for it at all.
    _recompress_header(paths[1], JPEG2000MC)

    with pytest.raises(
        InvalidInputError,
        match=r"transfer syntax JPEG 2000 Part 2 .*\(1\.2\.840\.10008\.1\.2\.4\.93\) cannot be "
        r"decoded: pydicom has no decoder for it. Have the sender .* transcode",
    ):
        load_series(paths)


def test_a_compressed_series_without_decoding_plugins_asks_for_the_codecs_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = series(tmp_path, [0.0, 1.0])
    _recompress_header(paths[1], JPEG2000Lossless)
    # As on a machine without the codecs extra: every plugin lacks its package.
    decoder = get_decoder(JPEG2000Lossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg-openjpeg",)})

    with pytest.raises(
        InvalidInputError,
        match=r"transfer syntax JPEG 2000 Image Compression \(Lossless Only\) .* no decoding "
        r"plugin is installed. Install the codecs extra \(pip install 'pacs-ai\[codecs\]'\)",
    ):
        load_series(paths)


def test_a_truncated_file_is_refused_as_such(tmp_path: Path) -> None:
    paths = series(tmp_path, [0.0, 1.0])
    paths[1].write_bytes(paths[1].read_bytes()[:600])

    with pytest.raises(
        InvalidInputError, match=r"slice001\.dcm .*CT Image Storage object without pixel data"
    ):
        load_series(paths)


def test_truncated_pixel_data_is_refused(tmp_path: Path) -> None:
    paths = series(tmp_path, [0.0, 1.0])
    ds = pydicom.dcmread(paths[0])
    ds.PixelData = ds.PixelData[:10]
    ds.save_as(paths[0])

    with pytest.raises(InvalidInputError, match=r"slice000\.dcm .*pixel data"):
        load_series(paths)


def test_non_conformant_values_are_read_leniently_and_logged_without_patient_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    long_name = PATIENT_NAME + "X" * 70
    with config.disable_value_validation():
        paths = series(tmp_path, [0.0, 1.0], PatientName=long_name)

    # pytest turns warnings into errors here: none may escape load_series.
    with caplog.at_level(logging.DEBUG):
        volume = load_series(paths)

    assert str(volume.source_headers[0].PatientName) == long_name
    sop_uid = str(volume.source_headers[0].SOPInstanceUID)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(sop_uid in r.getMessage() and "non-conformant" in r.getMessage() for r in warnings)
    assert not any(
        "Secretname" in r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG
    )
    assert not any(
        r.name.startswith("pydicom") and r.levelno <= logging.WARNING for r in caplog.records
    )
