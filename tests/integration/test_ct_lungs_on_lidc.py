"""The built-in ``ct-lungs`` network on a real chest CT (LIDC-IDRI-0314), against the
independent dcmqi reference lung mask made from the same CT."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nrrd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
import torch
from scipy import ndimage

from models.builtin.ct_lungs.network import LEFT_LUNG, RIGHT_LUNG, build

pytestmark = pytest.mark.slow

#: The reference: HU < -320, border-connected components dropped, the two largest kept,
#: closing and hole filling (it keeps the trachea and main bronchi, which ct-lungs drops).
REFERENCE_TOTAL_ML = 2902.0


@dataclass(frozen=True, eq=False)
class Result:
    labels: npt.NDArray[np.uint8]
    reference: npt.NDArray[np.bool_]
    voxel_ml: float


def load_ct(series_dir: Path) -> tuple[npt.NDArray[np.float32], tuple[float, float, float], float]:
    """HU volume [z, y, x] (slices by ascending z), spacing (x, y, z) and the lowest z."""
    datasets = [pydicom.dcmread(path) for path in sorted(series_dir.glob("*.dcm"))]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    for ds in datasets:
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    hu = np.stack(
        [
            ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            for ds in datasets
        ]
    )
    z = np.array([float(ds.ImagePositionPatient[2]) for ds in datasets])
    steps = np.diff(z)
    np.testing.assert_allclose(steps, steps[0], rtol=1e-3)
    row_spacing, column_spacing = (float(v) for v in datasets[0].PixelSpacing)
    return hu, (column_spacing, row_spacing, float(steps[0])), float(z[0])


@pytest.fixture(scope="module")
def result(lidc_ct_dir: Path, lidc_reference_dir: Path) -> Result:
    hu, spacing, lowest_z = load_ct(lidc_ct_dir)
    data, header = nrrd.read(str(lidc_reference_dir / "lung_label.nrrd"))
    assert header["space"] == "left-posterior-superior"
    assert header["space origin"][2] == pytest.approx(lowest_z, abs=1e-3)
    np.testing.assert_allclose(np.diag(header["space directions"]), spacing, rtol=1e-5)
    reference = np.ascontiguousarray(np.transpose(data, (2, 1, 0))) > 0  # [x,y,z] -> [z,y,x]
    assert reference.shape == hu.shape

    output = build()(torch.from_numpy(hu)[None, None], torch.tensor(spacing))
    assert output.dtype == torch.uint8
    assert output.shape == (1, 1, *hu.shape)
    return Result(output[0, 0].numpy(), reference, float(np.prod(spacing)) / 1000)


def test_lungs_agree_with_the_reference_mask(result: Result) -> None:
    lungs = result.labels > 0
    overlap = np.count_nonzero(lungs & result.reference)
    dice = 2 * overlap / (np.count_nonzero(lungs) + np.count_nonzero(result.reference))
    assert dice >= 0.95


def test_total_lung_volume_is_within_ten_percent_of_the_reference(result: Result) -> None:
    total_ml = np.count_nonzero(result.labels) * result.voxel_ml
    assert np.count_nonzero(result.reference) * result.voxel_ml == pytest.approx(
        REFERENCE_TOTAL_ML, abs=1
    )
    assert total_ml == pytest.approx(REFERENCE_TOTAL_ML, rel=0.10)


def test_right_lung_lies_at_lower_x_than_the_left_in_every_slice(result: Result) -> None:
    x = np.arange(result.labels.shape[2])
    right = (result.labels == RIGHT_LUNG).sum(axis=1)  # [z, x]
    left = (result.labels == LEFT_LUNG).sum(axis=1)
    both = (right.sum(axis=1) > 0) & (left.sum(axis=1) > 0)
    assert both.sum() > 150, "both lungs should be seen in most slices"
    right_x = (right[both] * x).sum(axis=1) / right[both].sum(axis=1)
    left_x = (left[both] * x).sum(axis=1) / left[both].sum(axis=1)
    assert (right_x < left_x).all()


def test_split_matches_this_patient(result: Result) -> None:
    # This patient's right lung is the smaller, about a third of the total (the liver dome
    # rises high on the right); the reference agrees: a third of it lies at x < 256.
    right = np.count_nonzero(result.labels == RIGHT_LUNG)
    left = np.count_nonzero(result.labels == LEFT_LUNG)
    assert 0.25 < right / (right + left) < 0.42
    reference_right = np.count_nonzero(result.reference[:, :, :256])
    assert 0.25 < reference_right / np.count_nonzero(result.reference) < 0.42


def test_each_lung_is_one_piece(result: Result) -> None:
    for value in (RIGHT_LUNG, LEFT_LUNG):
        components, count = ndimage.label(result.labels == value)
        sizes = np.bincount(components.ravel())[1:]
        assert count >= 1
        assert sizes.max() >= 0.98 * sizes.sum(), f"label {value} is fragmented"
