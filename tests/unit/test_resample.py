"""Resampling on the device agrees with scipy's interpolation, and maps back exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from inference.resample import for_shape, for_spacing


def _volume(shape: tuple[int, int, int]) -> np.ndarray:
    return np.random.default_rng(3).normal(size=shape).astype(np.float32)


def test_new_spacing_matches_scipy_linear_interpolation_with_centres_aligned() -> None:
    voxels = _volume((20, 31, 26))
    spacing = (0.7, 0.8, 2.5)  # x, y, z
    plan = for_spacing(voxels.shape, spacing, (1.0, 1.0, 1.0))

    ours = plan.apply(torch.from_numpy(voxels)).numpy()

    assert plan.shape == (50, 25, 18)
    axes = []
    for n_in, s_in, n_out in zip(voxels.shape, (2.5, 0.8, 0.7), plan.shape, strict=True):
        axes.append((n_in - 1) / 2 + (np.arange(n_out) - (n_out - 1) / 2) * (1.0 / s_in))
    expected = ndimage.map_coordinates(
        voxels, np.meshgrid(*axes, indexing="ij"), order=1, mode="nearest"
    )
    assert np.abs(ours - expected).max() <= 1e-5


def test_fixed_shape_matches_scipy_zoom_on_the_pixel_grid() -> None:
    voxels = _volume((40, 23, 37))
    plan = for_shape(voxels.shape, (16, 32, 32))

    ours = plan.apply(torch.from_numpy(voxels)).numpy()

    expected = ndimage.zoom(
        voxels,
        [o / i for o, i in zip((16, 32, 32), voxels.shape, strict=True)],
        order=1,
        mode="nearest",
        grid_mode=True,
    )
    assert ours.shape == expected.shape == (16, 32, 32)
    assert np.abs(ours - expected).max() <= 1e-5


def test_labels_upsampled_by_a_whole_factor_come_back_exactly() -> None:
    labels = torch.from_numpy(np.random.default_rng(4).integers(0, 4, (6, 7, 8)))
    plan = for_spacing(labels.shape, (2.0, 2.0, 2.0), (1.0, 1.0, 1.0))

    there = plan.apply(labels, "nearest")
    back = plan.inverse().apply(there, "nearest")

    assert there.shape == (12, 14, 16)
    assert torch.equal(back, labels)


def test_the_same_grid_is_no_resampling_at_all() -> None:
    assert for_spacing((5, 6, 7), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)).is_identity
    assert for_shape((5, 6, 7), (5, 6, 7)).is_identity


def test_integer_tensors_are_only_resampled_by_nearest_neighbour() -> None:
    plan = for_shape((4, 4, 4), (8, 8, 8))
    with pytest.raises(ValueError, match="floating-point"):
        plan.apply(torch.zeros((4, 4, 4), dtype=torch.int64), "linear")
    with pytest.raises(ValueError, match="expected a tensor ending in"):
        plan.apply(torch.zeros((4, 4, 5)))
