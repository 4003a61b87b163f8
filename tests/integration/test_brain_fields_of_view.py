"""A head that fills the field of view gets the same brain mask as the same head with
air around it: the foreground crop pads the margin its recipe asks for beyond the image.

mindgrab's recipe crops to the foreground plus 20 voxels, on a volume brainchop has first
conformed to a 256 mm cube, so the margin always exists. A series cropped tightly to the
head (the scalp touches every side, as on a T2 whose head fills the field of view) has no
room for it inside the image; clipped to the image, the margin is gone and the network
loses brain (16 % on the real T2 of issue 10). The synthetic head of tests/support/brain.py
(the MNI template in bands of CSF, skull and scalp) is written as two DICOM series: whole,
and cut to the bounding box of the head.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from inference.pipeline import ModelRunner
from inference.volume import load_series
from models.manifest import CropForegroundSpec
from models.registry import EXAMPLES_DIR, ModelPackage, load_package
from tests.support.brain import Head, small_head, write_mr_series


@pytest.fixture(scope="module")
def mindgrab(shared_data: Path) -> ModelPackage:
    assert (shared_data / "models").is_dir()
    return load_package(EXAMPLES_DIR / "brain_extraction_mindgrab")


@pytest.fixture(scope="module")
def head() -> Head:
    return small_head()


def _tight_box(head: Head) -> tuple[slice, slice, slice]:
    found = np.nonzero(head.voxels > 0)
    z, y, x = (slice(int(f.min()), int(f.max()) + 1) for f in found)
    return (z, y, x)


def _tight_head(head: Head) -> Head:
    """The head cut to its bounding box: the scalp touches every side of the image."""
    box = _tight_box(head)
    return Head(
        voxels=np.ascontiguousarray(head.voxels[box]),
        brain=np.ascontiguousarray(head.brain[box]),
        spacing=head.spacing,
        direction=head.direction,
    )


def _mask(package: ModelPackage, head: Head, folder: Path) -> npt.NDArray[np.bool_]:
    runner = ModelRunner(package, device="cpu")
    try:
        prediction = runner.predict(load_series(write_mr_series(head, folder)))
    finally:
        runner.close()
    assert prediction.labels is not None
    return prediction.labels.astype(bool)


@pytest.fixture(scope="module")
def masks(
    mindgrab: ModelPackage, head: Head, tmp_path_factory: pytest.TempPathFactory
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """mindgrab's mask of the whole head, cut to the tight box, and of the tight series."""
    box = _tight_box(head)
    whole = _mask(mindgrab, head, tmp_path_factory.mktemp("whole"))
    return whole[box], _mask(mindgrab, _tight_head(head), tmp_path_factory.mktemp("tight"))


def _dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def test_the_tight_series_touches_the_head_on_every_side(head: Head) -> None:
    tight = _tight_head(head)
    for axis in range(3):
        assert tight.voxels.take(0, axis=axis).any() and tight.voxels.take(-1, axis=axis).any()
    assert np.count_nonzero(tight.brain) == np.count_nonzero(head.brain)


def test_a_head_cropped_tightly_gives_the_brain_volume_of_the_uncropped_head_within_2_percent(
    masks: tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]],
) -> None:
    whole, tight = masks

    assert whole.shape == tight.shape
    assert np.count_nonzero(whole) > 0.2 * whole.size, "a brain, not nothing"
    assert abs(np.count_nonzero(tight) / np.count_nonzero(whole) - 1) <= 0.02
    assert _dice(tight, whole) >= 0.98


def test_clipping_the_margin_to_the_image_loses_brain_which_is_why_it_is_padded(
    mindgrab: ModelPackage,
    head: Head,
    masks: tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]],
    tmp_path: Path,
) -> None:
    whole, _ = masks
    crop = mindgrab.manifest.preprocessing.crop_foreground
    assert crop is not None and crop.beyond_image == "pad"
    clipped = CropForegroundSpec(threshold=crop.threshold, margin=crop.margin, beyond_image="clip")
    preprocessing = mindgrab.manifest.preprocessing.model_copy(update={"crop_foreground": clipped})
    package = ModelPackage(
        manifest=mindgrab.manifest.model_copy(update={"preprocessing": preprocessing}),
        folder=mindgrab.folder,
    )

    clipped_mask = _mask(package, _tight_head(head), tmp_path)
    lost = 1 - np.count_nonzero(clipped_mask) / np.count_nonzero(whole)

    assert lost > 0.10
