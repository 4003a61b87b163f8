"""The synthetic chest CT series (pacs_ai.phantom) that ``pacs-ai demo`` sends."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from pacs_ai.phantom import (
    LEFT_LUNG,
    RIGHT_LUNG,
    PhantomSeries,
    chest_ct_phantom,
    write_chest_ct_series,
)
from tests.support.peers import tool_or_skip

SLICES, SIZE = 24, 96


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> PhantomSeries:
    return write_chest_ct_series(tmp_path_factory.mktemp("phantom"), slices=SLICES, size=SIZE)


@pytest.fixture(scope="module")
def datasets(series: PhantomSeries) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in series.paths]


def test_one_ct_file_per_slice_is_written(
    series: PhantomSeries, datasets: list[pydicom.Dataset]
) -> None:
    assert len(series.paths) == SLICES
    assert all(path.name.endswith(".dcm") for path in series.paths)
    for ds in datasets:
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage == ds.SOPClassUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "CT"
        assert ds.BodyPartExamined == "CHEST"
        assert (str(ds.PatientName), ds.PatientID) == ("Demo^Synthetic", "PACSAI-DEMO")
        assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (16, 16, 1)
        assert (ds.Rows, ds.Columns) == (SIZE, SIZE)


def test_all_slices_share_study_series_and_frame_of_reference(
    series: PhantomSeries, datasets: list[pydicom.Dataset]
) -> None:
    assert {ds.StudyInstanceUID for ds in datasets} == {series.study_instance_uid}
    assert {ds.SeriesInstanceUID for ds in datasets} == {series.series_instance_uid}
    assert {ds.FrameOfReferenceUID for ds in datasets} == {series.frame_of_reference_uid}
    assert len({ds.SOPInstanceUID for ds in datasets}) == SLICES
    uids = [series.study_instance_uid, series.series_instance_uid]
    uids += [series.frame_of_reference_uid] + [ds.SOPInstanceUID for ds in datasets]
    assert len(set(uids)) == len(uids)
    assert all(pydicom.uid.UID(uid).is_valid for uid in uids)


def test_geometry_is_an_axial_stack_going_up_at_the_slice_thickness(
    series: PhantomSeries, datasets: list[pydicom.Dataset]
) -> None:
    spacing_x, spacing_y, spacing_z = series.spacing
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    for ds in datasets:
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([spacing_y, spacing_x])
        assert float(ds.SliceThickness) == pytest.approx(spacing_z)
    assert [ds.InstanceNumber for ds in datasets] == list(range(1, SLICES + 1))
    np.testing.assert_allclose(positions[:, :2], positions[:1, :2].repeat(SLICES, axis=0))
    np.testing.assert_allclose(np.diff(positions[:, 2]), spacing_z, rtol=1e-5)
    np.testing.assert_allclose(
        [float(ds.SliceLocation) for ds in datasets], positions[:, 2], rtol=1e-6
    )
    # The field of view is centred on the scan axis.
    assert positions[0, 0] == pytest.approx(-(SIZE - 1) / 2 * spacing_x, abs=1e-3)


def test_pixels_rescaled_to_hu_are_the_phantom(datasets: list[pydicom.Dataset]) -> None:
    stored = np.stack([ds.pixel_array for ds in datasets]).astype(np.float32)
    hu = stored * float(datasets[0].RescaleSlope) + float(datasets[0].RescaleIntercept)
    expected = chest_ct_phantom(slices=SLICES, size=SIZE).hu
    np.testing.assert_allclose(hu, expected, atol=0.501)  # rounded to integers
    assert hu.min() >= -1024
    assert -1010 < np.median(hu[:, :2, :]) < -990, "air at the edge of the field of view"


def test_ground_truth_lungs_are_realistic_in_size_and_side() -> None:
    phantom = chest_ct_phantom()
    voxel_ml = float(np.prod(phantom.spacing)) / 1000
    assert phantom.spacing == pytest.approx((1.4, 1.4, 2.5))
    for value in (RIGHT_LUNG, LEFT_LUNG):
        volume = np.count_nonzero(phantom.labels == value) * voxel_ml
        assert 300 < volume < 1500, f"lung {value}: {volume:.0f} mL"
        assert np.median(phantom.hu[phantom.labels == value]) < -700
    right_x = np.nonzero(phantom.labels == RIGHT_LUNG)[2].mean()
    left_x = np.nonzero(phantom.labels == LEFT_LUNG)[2].mean()
    assert right_x < left_x, "in LPS the patient's right is at low x"
    assert not (phantom.labels[phantom.airway].any() or phantom.labels[phantom.bowel_gas].any())
    assert (phantom.hu[phantom.airway] < -900).mean() > 0.95


def test_same_seed_writes_identical_files(series: PhantomSeries, tmp_path: Path) -> None:
    again = write_chest_ct_series(tmp_path, slices=SLICES, size=SIZE)
    assert again.series_instance_uid == series.series_instance_uid
    assert [p.read_bytes() for p in again.paths] == [p.read_bytes() for p in series.paths]


def test_another_seed_gives_other_uids_and_noise(series: PhantomSeries, tmp_path: Path) -> None:
    other = write_chest_ct_series(tmp_path, slices=SLICES, size=SIZE, seed=1)
    assert other.study_instance_uid != series.study_instance_uid
    assert other.series_instance_uid != series.series_instance_uid
    first = pydicom.dcmread(series.paths[10])
    second = pydicom.dcmread(other.paths[10])
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert not np.array_equal(first.pixel_array, second.pixel_array)


def test_too_small_a_phantom_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 16 slices of 64x64"):
        write_chest_ct_series(tmp_path, slices=8, size=256)
    assert not list(tmp_path.iterdir())


def test_every_slice_passes_dciodvfy(series: PhantomSeries) -> None:
    dciodvfy = tool_or_skip("dciodvfy", native=False)
    for path in series.paths:
        result = subprocess.run(
            [dciodvfy, str(path)], capture_output=True, text=True, check=False, timeout=60
        )
        report = (result.stdout + result.stderr).splitlines()
        problems = [line for line in report if line.startswith(("Error", "Warning"))]
        assert problems == [], f"{path.name}: {problems}"
        assert "CTImage" in report, f"{path.name}: dciodvfy did not check it as a CT image"
