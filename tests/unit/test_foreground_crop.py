"""The foreground crop pads the recipe's margin beyond the image, and the way back cuts
the padding off again (small arrays, every voxel checked)."""

from __future__ import annotations

import numpy as np
import torch

from inference.backends.base import InputShapes
from inference.pipeline import network_input_shapes
from inference.postprocess import uncrop
from inference.preprocess import CropBox, Prepared, crop, foreground_box
from inference.transforms import plan_reorientation
from models.manifest import CropForegroundSpec, ModelManifest
from tests.support.models import manifest


def _grid() -> torch.Tensor:
    """A 4 x 5 x 6 grid whose foreground (2 x 3 x 2) touches the first z and last x edge."""
    grid = torch.zeros((4, 5, 6))
    grid[0:2, 1:4, 4:6] = torch.arange(1.0, 13.0).reshape(2, 3, 2)
    return grid


def test_the_box_keeps_the_whole_margin_beyond_the_image() -> None:
    box = foreground_box(_grid(), CropForegroundSpec(threshold=0.0, margin=2))

    assert box == CropBox(start=(-2, -1, 2), stop=(4, 6, 8))
    assert box.shape == (6, 7, 6)


def test_the_crop_pads_beyond_the_image_with_the_background_and_keeps_every_voxel() -> None:
    grid = _grid()
    spec = CropForegroundSpec(threshold=0.0, margin=2, pad_value=-5.0)
    box = foreground_box(grid, spec)
    assert box is not None

    cropped = crop(grid, box, spec)

    expected = torch.full((6, 7, 6), -5.0)
    expected[2:6, 1:6, 0:4] = grid[0:4, 0:5, 2:6]
    assert torch.equal(cropped, expected)


def test_the_minimum_pad_value_is_the_scaled_volumes_smallest() -> None:
    grid = _grid() - 3.0
    spec = CropForegroundSpec(threshold=-1.0, margin=1, pad_value="minimum")
    box = foreground_box(grid, spec)
    assert box is not None

    cropped = crop(grid, box, spec)

    assert float(cropped[0, 0, 0]) == -3.0
    assert float(cropped.min()) == -3.0


def test_clip_stops_the_box_at_the_image_and_crops_a_view() -> None:
    grid = _grid()
    spec = CropForegroundSpec(threshold=0.0, margin=2, beyond_image="clip")
    box = foreground_box(grid, spec)

    assert box == CropBox(start=(0, 0, 2), stop=(4, 5, 6))
    assert box is not None
    assert torch.equal(crop(grid, box, spec), grid[:, :, 2:])


def test_a_box_inside_the_image_is_the_same_whichever_the_policy() -> None:
    grid = torch.zeros((9, 9, 9))
    grid[4, 4, 4] = 1.0

    padded = foreground_box(grid, CropForegroundSpec(margin=2))
    clipped = foreground_box(grid, CropForegroundSpec(margin=2, beyond_image="clip"))

    assert padded == clipped == CropBox(start=(2, 2, 2), stop=(7, 7, 7))


def test_an_empty_foreground_has_no_box() -> None:
    assert foreground_box(torch.zeros((3, 3, 3)), CropForegroundSpec(threshold=0.5)) is None


def test_the_way_back_places_the_box_on_the_grid_and_drops_the_padding() -> None:
    grid = _grid()
    spec = CropForegroundSpec(threshold=0.0, margin=2)
    box = foreground_box(grid, spec)
    assert box is not None
    prepared = Prepared(
        voxels=crop(grid, box, spec),
        spacing=(1.0, 1.0, 1.0),
        reorientation=plan_reorientation(np.eye(3), "LPS"),
        resampling=None,
        crop=box,
        grid_shape=(4, 5, 6),
    )
    # A network output that marks every voxel of the box, padding included.
    output = torch.ones((1, 2, *box.shape))

    back = uncrop(output, prepared, background_one_hot=True)

    assert back.shape == (1, 2, 4, 5, 6)
    inside = torch.zeros((4, 5, 6), dtype=torch.bool)
    inside[:, :, 2:] = True
    assert torch.equal(back[0, 1] == 1, inside)
    assert torch.equal(back[0, 0], torch.ones((4, 5, 6)))


def test_a_resized_and_cropped_input_is_bounded_by_the_target_plus_the_margins() -> None:
    padded = ModelManifest.model_validate(
        manifest(
            preprocessing={"target_shape": [64, 64, 48], "crop_foreground": {"margin": 8}},
            inference={"mode": "whole_volume", "pad_to_multiple": 16},
        )
    )
    clipped = ModelManifest.model_validate(
        manifest(
            preprocessing={
                "target_shape": [64, 64, 48],
                "crop_foreground": {"margin": 8, "beyond_image": "clip"},
            }
        )
    )

    assert network_input_shapes(padded) == InputShapes(
        min=(1, 1, 16, 16, 16), opt=(1, 1, 80, 80, 64), max=(1, 1, 80, 80, 64)
    )
    shapes = network_input_shapes(clipped)
    assert shapes is not None and shapes.max == (1, 1, 64, 64, 48)
