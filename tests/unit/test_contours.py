"""Outlines: the SR's key-slice polygon encloses exactly the region; the SC's rim is its edge."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from inference.writers.contours import (
    key_slice,
    largest_region,
    outer_contour,
    polygon_area,
    rim,
)


def test_the_outline_of_a_box_runs_round_its_pixel_corners() -> None:
    plane = np.zeros((5, 6), dtype=bool)
    plane[1:4, 2:5] = True

    outline = outer_contour(plane)

    assert outline.tolist() == [[2, 1], [5, 1], [5, 4], [2, 4], [2, 1]]


@pytest.mark.parametrize("seed", range(40))
def test_the_outline_encloses_exactly_the_largest_region_with_its_holes_filled(
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    plane = ndimage.binary_opening(rng.random((40, 50)) > 0.45) | (rng.random((40, 50)) > 0.97)
    if not plane.any():
        plane[3, 3] = True

    outline = outer_contour(plane)

    assert np.array_equal(outline[0], outline[-1])
    assert polygon_area(outline) == largest_region(plane).sum()
    # Only corners are vertices: consecutive edges change direction.
    steps = np.sign(np.diff(outline, axis=0))
    assert not any((steps[i] == steps[i + 1]).all() for i in range(len(steps) - 1))


def test_the_largest_region_is_chosen_and_its_holes_filled() -> None:
    plane = np.zeros((12, 12), dtype=bool)
    plane[1:9, 1:9] = True
    plane[4:6, 4:6] = False  # a hole
    plane[10:12, 10:12] = True  # a smaller region

    region = largest_region(plane)

    assert region.sum() == 64 and not region[10:, 10:].any()


def test_the_key_slice_is_where_the_mask_is_largest_and_an_empty_mask_has_none() -> None:
    mask = np.zeros((4, 5, 5), dtype=bool)
    mask[1, :2, :2] = True
    mask[2, :3, :3] = True

    assert key_slice(mask) == 2
    with pytest.raises(ValueError, match="the mask is empty"):
        key_slice(np.zeros((2, 3, 3), dtype=bool))
    with pytest.raises(ValueError, match="the plane is empty"):
        outer_contour(np.zeros((3, 3), dtype=bool))


def test_the_rim_is_the_inner_edge_of_the_mask() -> None:
    plane = np.zeros((7, 7), dtype=bool)
    plane[1:6, 1:6] = True

    edge = rim(plane, width=1)

    expected = plane.copy()
    expected[2:5, 2:5] = False
    assert np.array_equal(edge, expected)
    assert rim(plane, width=2).sum() == 25 - 1
