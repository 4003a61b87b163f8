"""The two real brain-extraction models run in pacs-ai exactly as their own recipes say.

For each model the reference is written here from the model's documentation
(../shared/data/README.md), independently of pacs-ai's code: nibabel reorients, scipy
resamples and resizes, numpy takes percentiles and bounding boxes, onnxruntime runs the
ONNX file directly. pacs-ai reads the same head from a DICOM MR series (axial LPS slices,
anisotropic voxels) through its own loader and pipeline. The network inputs must agree to
float precision and the label maps voxel for voxel (a handful of voxels where the
probability sits at the decision boundary may differ).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
import torch
from monai.inferers.utils import sliding_window_inference
from scipy import ndimage

from inference.backends import open_backend
from inference.backends.base import BackendOptions
from inference.pipeline import ModelRunner
from inference.preprocess import prepare
from inference.sliding_window import sliding_window
from inference.volume import load_series
from models.registry import EXAMPLES_DIR, ModelPackage, ModelRegistry
from tests.support.brain import Head, small_head, write_mr_series

MINDGRAB = "brain-extraction-mindgrab"
DEEPBRAIN = "brain-extraction-deepbrain"


@pytest.fixture(scope="module")
def registry(shared_data: Path) -> ModelRegistry:
    assert (shared_data / "models").is_dir()
    return ModelRegistry.discover([EXAMPLES_DIR])


@pytest.fixture(scope="module")
def head() -> Head:
    return small_head()


@pytest.fixture(scope="module")
def head_series(head: Head, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_mr_series(head, tmp_path_factory.mktemp("head"))


def _orientations() -> Any:
    """nibabel's orientation helpers (untyped, hence ``Any``)."""
    return importlib.import_module("nibabel.orientations")


def _nibabel_reorient(
    array: npt.NDArray[np.float32], affine: npt.NDArray[np.float64], codes: str
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``array`` ([i, j, k]) in ``codes`` orientation, its voxel sizes, and the transform."""
    nio = _orientations()
    transform = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(tuple(codes)))
    # Input axis i lands on output axis transform[i, 0]: output axis k has the spacing
    # of the input axis that lands there.
    order = np.argsort(transform[:, 0])
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))[order].astype(np.float64)
    oriented: npt.NDArray[np.float32] = nio.apply_orientation(array, transform)
    return oriented, spacing, transform


def _centred_coordinates(n_in: int, spacing: float, target: float) -> npt.NDArray[np.float64]:
    """Input positions of a 1D grid of voxel size ``target`` over the same field of view,
    centres aligned (the recipe's "resample to 1 mm")."""
    n_out = max(1, round(n_in * spacing / target))
    steps = np.arange(n_out, dtype=np.float64) - (n_out - 1) / 2
    return (n_in - 1) / 2 + steps * (target / spacing)


def _sample(
    array: npt.NDArray[np.float32], axes: list[npt.NDArray[np.float64]]
) -> npt.NDArray[np.float32]:
    grid = np.meshgrid(*axes, indexing="ij")
    sampled: npt.NDArray[np.float32] = ndimage.map_coordinates(
        array, grid, order=1, mode="nearest"
    ).astype(np.float32)
    return sampled


class MindgrabReference:
    """brainchop mindgrab, from its README: 1 mm, LIA, percentiles 0/99.9, crop > 0.1 + 20.

    brainchop conforms the volume to a 256 mm cube first, so the 20-voxel margin always
    exists: where it reaches beyond this smaller field of view, it is background (0).
    """

    def __init__(self, head: Head, onnx_path: Path) -> None:
        self.source_shape = head.voxels.transpose(2, 1, 0).shape
        lia, spacing, self.transform = _nibabel_reorient(
            head.voxels.transpose(2, 1, 0), head.ras_affine, "LIA"
        )
        self.oriented_shape = lia.shape
        self.axes = [
            _centred_coordinates(n, s, 1.0) for n, s in zip(lia.shape, spacing, strict=True)
        ]
        resampled = _sample(lia, self.axes)
        low, high = np.percentile(resampled, [0.0, 99.9])
        scaled = np.clip((resampled - low) / (high - low), 0.0, 1.0).astype(np.float32)
        self.grid_shape = scaled.shape
        found = np.nonzero(scaled > 0.1)
        first = [int(f.min()) - 20 for f in found]
        last = [int(f.max()) + 21 for f in found]
        #: Background added before each axis so that the box lies inside the padded grid.
        self.before = [max(-a, 0) for a in first]
        after = [max(b - n, 0) for b, n in zip(last, scaled.shape, strict=True)]
        padded = np.pad(scaled, list(zip(self.before, after, strict=True)))
        self.padded_shape = padded.shape
        self.box = tuple(
            slice(a + p, b + p) for a, b, p in zip(first, last, self.before, strict=True)
        )
        # brainchop's tensor is the conformed array with x fastest: [k, j, i].
        self.network_input = np.ascontiguousarray(padded[self.box].transpose(2, 1, 0))
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        (self.logits,) = session.run(["logits"], {"input": self.network_input[None, None]})

    def labels(self) -> npt.NDArray[np.integer]:
        """Argmax of the probabilities brought back to the source grid ([i, j, k])."""
        logits = self.logits[0].transpose(0, 3, 2, 1)  # [C, i, j, k] on the LIA grid
        exp = np.exp(logits - logits.max(axis=0, keepdims=True))
        probabilities = exp / exp.sum(axis=0, keepdims=True)
        padded = np.zeros((2, *self.padded_shape), dtype=np.float32)
        padded[0] = 1.0
        padded[(slice(None), *self.box)] = probabilities
        full = padded[
            (
                slice(None),
                *(slice(p, p + n) for p, n in zip(self.before, self.grid_shape, strict=True)),
            )
        ]
        back_axes = []
        for n_source, coords in zip(self.oriented_shape, self.axes, strict=True):
            step = coords[1] - coords[0] if len(coords) > 1 else 1.0
            back_axes.append(np.clip((np.arange(n_source) - coords[0]) / step, 0, len(coords) - 1))
        source = np.stack([_sample(channel, back_axes) for channel in full])
        labels_lia = source.argmax(axis=0)
        return _undo(labels_lia, self.transform)


def _undo(
    array: npt.NDArray[np.integer], transform: npt.NDArray[np.float64]
) -> npt.NDArray[np.integer]:
    """Apply the inverse of a nibabel orientation transform."""
    nio = _orientations()
    inverse = np.zeros_like(transform)
    for axis, (target, flip) in enumerate(transform):
        inverse[int(target)] = [axis, flip]
    undone: npt.NDArray[np.integer] = nio.apply_orientation(array, inverse)
    return undone


class DeepbrainReference:
    """deepbrain, from its README: nibabel's RAS array resized to 128³, / max, channels last."""

    def __init__(self, head: Head, onnx_path: Path) -> None:
        ras, _, self.transform = _nibabel_reorient(
            head.voxels.transpose(2, 1, 0), head.ras_affine, "RAS"
        )
        self.shape = ras.shape
        resized = ndimage.zoom(
            ras, [128 / n for n in ras.shape], order=1, mode="nearest", grid_mode=True
        ).astype(np.float32)
        self.network_input = resized / resized.max()
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        (self.probability,) = session.run(
            ["prob_out:0"], {"img_in:0": self.network_input[None, ..., None]}
        )

    def labels(self) -> npt.NDArray[np.integer]:
        probability = self.probability[0, ..., 0]
        back = ndimage.zoom(
            probability, [n / 128 for n in self.shape], order=1, mode="nearest", grid_mode=True
        )
        return _undo((back >= 0.5).astype(np.uint8), self.transform)


@pytest.fixture(scope="module")
def mindgrab(
    registry: ModelRegistry, head: Head
) -> Iterator[tuple[ModelPackage, MindgrabReference]]:
    package = registry.get(MINDGRAB)
    assert package.onnx_path is not None
    yield package, MindgrabReference(head, package.onnx_path)


@pytest.fixture(scope="module")
def deepbrain(
    registry: ModelRegistry, head: Head
) -> Iterator[tuple[ModelPackage, DeepbrainReference]]:
    package = registry.get(DEEPBRAIN)
    assert package.onnx_path is not None
    yield package, DeepbrainReference(head, package.onnx_path)


def _differing(ours: npt.NDArray[np.integer], reference: npt.NDArray[np.integer]) -> float:
    assert ours.shape == reference.shape
    return float(np.count_nonzero(ours != reference)) / ours.size


def test_mindgrab_sees_the_same_network_input_as_its_recipe_gives(
    mindgrab: tuple[ModelPackage, MindgrabReference], head_series: list[Path]
) -> None:
    package, reference = mindgrab
    volume = load_series(head_series)
    prepared = prepare(volume, torch.from_numpy(volume.voxels), package.manifest.preprocessing)

    ours = prepared.voxels.numpy()
    assert ours.shape == reference.network_input.shape
    assert np.abs(ours - reference.network_input).max() <= 1e-5


def test_mindgrab_labels_match_its_recipe_voxel_for_voxel(
    mindgrab: tuple[ModelPackage, MindgrabReference], head_series: list[Path]
) -> None:
    package, reference = mindgrab
    runner = ModelRunner(package, device="cpu")
    prediction = runner.predict(load_series(head_series))

    assert prediction.backend == "onnxruntime"
    assert prediction.labels is not None
    expected = reference.labels()
    ours = prediction.labels.transpose(2, 1, 0)
    assert _differing(ours, expected) <= 1e-4
    assert 0.05 < ours.mean() < 0.9, "a brain, not nothing and not everything"


def test_deepbrain_sees_the_same_network_input_as_its_recipe_gives(
    deepbrain: tuple[ModelPackage, DeepbrainReference], head_series: list[Path]
) -> None:
    package, reference = deepbrain
    volume = load_series(head_series)
    prepared = prepare(volume, torch.from_numpy(volume.voxels), package.manifest.preprocessing)

    ours = prepared.voxels.numpy()
    assert ours.shape == (128, 128, 128)
    assert np.abs(ours - reference.network_input).max() <= 1e-5


def test_deepbrain_labels_match_its_recipe_voxel_for_voxel(
    deepbrain: tuple[ModelPackage, DeepbrainReference], head_series: list[Path]
) -> None:
    package, reference = deepbrain
    runner = ModelRunner(package, device="cpu")
    prediction = runner.predict(load_series(head_series))

    assert prediction.labels is not None
    expected = reference.labels()
    ours = prediction.labels.transpose(2, 1, 0)
    assert _differing(ours, expected) <= 1e-4
    assert 0.05 < ours.mean() < 0.9


def _ort_windows(
    session: ort.InferenceSession, input_name: str, output_name: str, *, channels_last: bool
) -> Any:
    """MONAI's predictor: onnxruntime directly on each batch of windows."""

    def predict(windows: torch.Tensor) -> torch.Tensor:
        batch = windows.movedim(1, -1) if channels_last else windows
        (out,) = session.run([output_name], {input_name: np.ascontiguousarray(batch.numpy())})
        result = torch.from_numpy(out)
        return result.movedim(-1, 1) if channels_last else result

    return predict


def test_sliding_window_over_mindgrab_gives_monais_logits_within_1e_4(
    mindgrab: tuple[ModelPackage, MindgrabReference],
) -> None:
    package, reference = mindgrab
    assert package.onnx_path is not None
    session = ort.InferenceSession(str(package.onnx_path), providers=["CPUExecutionProvider"])
    backend, _ = open_backend(package, options=BackendOptions(device="cpu"))
    # The middle 64³ of the real network input: eight 40³ windows, a few seconds on a CPU.
    centre = [(n - 64) // 2 for n in reference.network_input.shape]
    middle = reference.network_input[tuple(slice(c, c + 64) for c in centre)]
    image = torch.from_numpy(np.ascontiguousarray(middle))[None, None]

    with torch.inference_mode():
        expected = sliding_window_inference(
            image,
            (40, 40, 40),
            1,
            _ort_windows(session, "input", "logits", channels_last=False),
            overlap=0.25,
            mode="gaussian",
        )
        ours = sliding_window(
            image,
            lambda w: backend.run({"input": w})["logits"],
            roi_size=(40, 40, 40),
            overlap=0.25,
            blend="gaussian",
            batch_size=2,
        )

    assert isinstance(expected, torch.Tensor)
    assert ours.shape == expected.shape
    assert float((ours - expected).abs().max()) <= 1e-4


def test_sliding_window_over_deepbrain_gives_monais_output_within_1e_4(
    deepbrain: tuple[ModelPackage, DeepbrainReference],
) -> None:
    package, reference = deepbrain
    assert package.onnx_path is not None
    session = ort.InferenceSession(str(package.onnx_path), providers=["CPUExecutionProvider"])
    backend, _ = open_backend(package, options=BackendOptions(device="cpu"))
    # A volume longer than the network's fixed 128³ along one axis: two windows.
    image = torch.from_numpy(np.pad(reference.network_input, ((0, 0), (0, 0), (0, 24))))[None, None]

    def ours_windows(windows: torch.Tensor) -> torch.Tensor:
        out = backend.run({"img_in:0": windows.movedim(1, -1).contiguous()})["prob_out:0"]
        return out.movedim(-1, 1)

    with torch.inference_mode():
        expected = sliding_window_inference(
            image,
            (128, 128, 128),
            1,
            _ort_windows(session, "img_in:0", "prob_out:0", channels_last=True),
            overlap=0.25,
            mode="constant",
        )
        ours = sliding_window(
            image, ours_windows, roi_size=(128, 128, 128), overlap=0.25, blend="constant"
        )

    assert isinstance(expected, torch.Tensor)
    assert ours.shape == expected.shape == (1, 1, 128, 128, 152)
    assert float((ours - expected).abs().max()) <= 1e-4
