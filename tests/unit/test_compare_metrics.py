"""The agreement metrics of `pacs-ai compare` on masks whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from pacs_ai.compare.metrics import (
    class_agreement,
    confusion_matrix,
    dice,
    hausdorff95,
    segment_agreement,
    volume_ml,
)


def cube(shape: tuple[int, int, int] = (30, 30, 30), *, at: int = 5, size: int = 12) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.bool_)
    mask[at : at + size, at : at + size, at : at + size] = True
    return mask


def test_dice_of_identical_masks_is_one() -> None:
    assert dice(cube(), cube()) == 1.0


def test_dice_of_disjoint_masks_is_zero() -> None:
    assert dice(cube(at=0, size=5), cube(at=10, size=5)) == 0.0


def test_dice_of_half_overlapping_masks_is_one_half() -> None:
    a = np.zeros((4, 4, 4), dtype=np.bool_)
    b = np.zeros((4, 4, 4), dtype=np.bool_)
    a[0:2], b[1:3] = True, True
    assert dice(a, b) == pytest.approx(0.5)


def test_hausdorff95_of_a_cube_shifted_by_three_voxels_is_three_voxels() -> None:
    a = cube()
    b = np.roll(a, 3, axis=2)
    assert hausdorff95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(3.0)


def test_hausdorff95_respects_the_voxel_spacing_of_the_shifted_axis() -> None:
    a = cube()
    along_z = np.roll(a, 3, axis=0)
    along_x = np.roll(a, 3, axis=2)
    spacing = (2.5, 0.7, 0.7)
    assert hausdorff95(a, along_z, spacing) == pytest.approx(7.5)
    assert hausdorff95(a, along_x, spacing) == pytest.approx(2.1)


def test_hausdorff95_pools_both_directions_so_a_one_sided_blob_weighs_by_its_share() -> None:
    a = cube()  # 12**3 voxels: 12**3 - 10**3 = 728 on its surface
    b = a.copy()
    # A flat 7 x 11 patch in B only, 11 voxels beyond A's face x = 16: each of its 77
    # voxels is 11 mm from A's surface; every surface voxel of A is on B's surface (0 mm).
    b[5:12, 5:16, 27] = True
    a_to_b = np.zeros(728)
    b_to_a = np.hstack((np.zeros(728), np.full(77, 11.0)))
    pooled = np.percentile(np.hstack((a_to_b, b_to_a)), 95)
    # 1533 distances, the 95th percentile at rank 1532 * 0.95 = 1455.4: between the last
    # zero (rank 1455) and the first 11 (rank 1456), 0.4 of the way.
    assert pooled == pytest.approx(4.4)
    assert np.percentile(b_to_a, 95) == 11.0, "the larger directed percentile, not pooled"
    assert hausdorff95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(4.4)
    assert hausdorff95(b, a, (1.0, 1.0, 1.0)) == pytest.approx(4.4)


def test_hausdorff95_of_identical_masks_is_zero() -> None:
    assert hausdorff95(cube(), cube(), (1.0, 1.0, 1.0)) == 0.0


def test_two_empty_masks_agree_and_one_empty_mask_has_no_hausdorff_distance() -> None:
    empty = np.zeros((8, 8, 8), dtype=np.bool_)
    both = segment_agreement("x", empty, empty, (1.0, 1.0, 1.0))
    one = segment_agreement("x", cube((8, 8, 8), at=2, size=3), empty, (1.0, 1.0, 1.0))
    assert (both.dice, both.hd95_mm, both.volume_difference_percent) == (1.0, 0.0, None)
    assert (one.dice, one.hd95_mm, one.volume_difference_percent) == (0.0, None, None)


def test_volume_is_voxels_times_voxel_volume_in_millilitres() -> None:
    mask = cube(size=10)
    assert volume_ml(mask, (2.0, 0.5, 0.5)) == pytest.approx(1000 * 0.5 / 1000)
    agreement = segment_agreement("x", mask, cube(size=5), (1.0, 1.0, 1.0))
    assert agreement.volume_difference_ml == pytest.approx(1.0 - 0.125)
    assert agreement.volume_difference_percent == pytest.approx(700.0)


def test_masks_on_different_grids_are_refused() -> None:
    with pytest.raises(ValueError, match="different grids"):
        dice(cube((10, 10, 10), at=1, size=2), cube((10, 10, 11), at=1, size=2))


def test_class_agreement_names_the_top_classes_and_the_probability_difference() -> None:
    found = class_agreement({"normal": 0.3, "pneumonia": 0.7}, {"normal": 0.6, "pneumonia": 0.4})
    assert (found.top_a, found.top_b, found.agree) == ("pneumonia", "normal", False)
    assert found.probability_difference == pytest.approx(-0.3)
    assert found.max_abs_difference == pytest.approx(0.3)


def test_a_classification_without_probabilities_is_refused() -> None:
    with pytest.raises(ValueError, match="without probabilities"):
        class_agreement({}, {"normal": 1.0})


def test_confusion_matrix_counts_rows_of_a_against_columns_of_b() -> None:
    classes, counts = confusion_matrix(
        [("normal", "normal"), ("pneumonia", "normal"), ("pneumonia", "pneumonia")]
    )
    assert classes == ["normal", "pneumonia"]
    assert counts == [[1, 0], [1, 1]]
