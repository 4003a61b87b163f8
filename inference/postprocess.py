"""From the network's output back to labels on the source grid (or class probabilities).

Segmentation: logits become probabilities (softmax over channels, or sigmoid for one
channel), the crop is undone (background outside the box; the part of the box padded
beyond the grid is dropped), the resampling is undone
(``linear``: the probabilities are resampled and then reduced, as MONAI's ``Invertd`` and
deepbrain do; ``nearest``: the labels are reduced first), and the labels are reduced by
argmax or threshold. All of it runs on the output's device; only the final label map
(``uint8``/``int64``) travels to the host, where the largest connected component is kept
if the manifest asks for it (scipy) and the reorientation is undone as a numpy view.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from inference.preprocess import Prepared
from inference.preprocess2d import ResizePlan
from models.manifest import ModelManifest


def activate(output: torch.Tensor, manifest: ModelManifest) -> torch.Tensor:
    """Probabilities from the network's output ``[N, C, ...]`` (float32)."""
    output = output.to(torch.float32)
    activation = manifest.postprocessing.activation
    if activation == "auto":
        if manifest.network.output_kind == "probabilities":
            return output
        activation = "softmax" if output.shape[1] > 1 else "sigmoid"
    if activation == "softmax":
        return output.softmax(dim=1)
    if activation == "sigmoid":
        return output.sigmoid()
    return output


def reduce(probabilities: torch.Tensor, manifest: ModelManifest) -> torch.Tensor:
    """Labels ``[z, y, x]`` from probabilities ``[1, C, z, y, x]``.

    Raises:
        RuntimeError: ``threshold`` on an output with more than two channels.
    """
    post = manifest.postprocessing
    channels = probabilities.shape[1]
    if post.reduce == "threshold" or channels == 1:
        if channels > 2:
            raise RuntimeError(
                f"model {manifest.id}: 'threshold' needs one or two output channels, "
                f"got {channels}; use 'argmax'"
            )
        foreground = probabilities[0, channels - 1]
        return (foreground >= post.threshold).to(torch.uint8)
    return probabilities[0].argmax(dim=0)


def uncrop(tensor: torch.Tensor, prepared: Prepared, *, background_one_hot: bool) -> torch.Tensor:
    """Place ``[1, C, *box]`` back into the uncropped network grid, background outside;
    the part of the box beyond the grid (padding) is cut off."""
    if prepared.crop is None:
        return tensor
    full = tensor.new_zeros((*tensor.shape[:2], *prepared.grid_shape))
    if background_one_hot:
        full[:, 0] = 1
    on_grid, in_box = prepared.crop.overlap(prepared.grid_shape)
    full[(slice(None), slice(None), *on_grid)] = tensor[(slice(None), slice(None), *in_box)]
    return full


def to_source_labels(
    output: torch.Tensor, prepared: Prepared, manifest: ModelManifest
) -> torch.Tensor:
    """The label map ``[z, y, x]`` on the (reoriented) source grid, on the output's device.

    ``output`` is the network's output on the network grid, ``[1, C, *crop box]``.
    """
    post = manifest.postprocessing
    if prepared.resize is not None:
        return _resized_back(output, prepared.resize, manifest)
    if manifest.network.output_kind == "labels" or post.reduce == "none":
        labels = uncrop(output[:, :1], prepared, background_one_hot=False)[0, 0]
        if prepared.resampling is not None:
            labels = prepared.resampling.inverse().apply(labels, "nearest")
        return labels
    probabilities = activate(output, manifest)
    channels = probabilities.shape[1]
    if prepared.resampling is not None and post.resample_back == "linear":
        inverse = prepared.resampling.inverse()
        if post.reduce == "threshold" or channels == 1:
            # Only the thresholded channel needs to travel back.
            foreground = uncrop(
                probabilities[:, channels - 1 :], prepared, background_one_hot=False
            )
            return (inverse.apply(foreground, "linear")[0, 0] >= post.threshold).to(torch.uint8)
        if channels == 2:
            # argmax of two channels is the sign of their difference, and interpolation
            # is linear: one channel instead of two (ties go to 0 either way).
            difference = probabilities[:, 1:] - probabilities[:, :1]
            full = uncrop(difference, prepared, background_one_hot=False)
            if prepared.crop is not None:
                on_grid, _ = prepared.crop.overlap(prepared.grid_shape)
                outside = torch.ones_like(full, dtype=torch.bool)
                outside[(slice(None), slice(None), *on_grid)] = False
                full[outside] = -1.0
            return (inverse.apply(full, "linear")[0, 0] > 0).to(torch.uint8)
        probabilities = uncrop(probabilities, prepared, background_one_hot=True)
        return reduce(inverse.apply(probabilities, "linear"), manifest)
    labels = reduce(probabilities, manifest)
    labels = uncrop(labels[None, None], prepared, background_one_hot=False)[0, 0]
    if prepared.resampling is not None:
        labels = prepared.resampling.inverse().apply(labels, "nearest")
    return labels


def _resized_back(output: torch.Tensor, plan: ResizePlan, manifest: ModelManifest) -> torch.Tensor:
    """Labels of a 2D model whose images were resized (no crop, no resampling there):
    probabilities back to the images' own size and reduced (``linear``), or reduced first
    (``nearest``)."""
    post = manifest.postprocessing
    if manifest.network.output_kind == "labels" or post.reduce == "none":
        return plan.to_source(output[0, 0], "nearest")
    probabilities = activate(output, manifest)
    if post.resample_back == "linear":
        return reduce(plan.to_source(probabilities, "linear"), manifest)
    return plan.to_source(reduce(probabilities, manifest), "nearest")


def keep_largest_components(labels: npt.NDArray[np.integer]) -> npt.NDArray[np.integer]:
    """Keep, for each label value, only its largest face-connected component (in place)."""
    from scipy import ndimage  # noqa: PLC0415 -- only models that ask for it need scipy

    for value in np.unique(labels):
        if value == 0:
            continue
        mask = labels == value
        components, count = ndimage.label(mask)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        labels[mask & (components != int(sizes.argmax()))] = 0
    return labels
