"""Preprocessing as tensor operations on the worker's device: the manifest's recipe.

In order (each step optional, each a torch operation on whatever device the volume is on):
reorientation (permute + flip), resampling (:mod:`inference.resample`), intensity scaling,
foreground crop. :class:`Prepared` remembers what was done, so the postprocessing can
undo it exactly on the network's output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from inference.resample import Resampling, for_shape, for_spacing, resampled_spacing
from inference.transforms import Reorientation, plan_reorientation
from inference.volume import Volume
from models.manifest import CropForegroundSpec, IntensitySpec, PreprocessingSpec


@dataclass(frozen=True)
class Prepared:
    """A preprocessed volume ``[z, y, x]`` and how to map results back to the source grid."""

    voxels: torch.Tensor
    #: Voxel size (x, y, z) in mm of :attr:`voxels`.
    spacing: tuple[float, float, float]
    reorientation: Reorientation
    #: Source grid (reoriented) -> network grid, or ``None`` when the grid is kept.
    resampling: Resampling | None
    #: The crop box on the network grid, or ``None``.
    crop: tuple[slice, slice, slice] | None
    #: Shape of the network grid before the crop.
    grid_shape: tuple[int, int, int]


def reorient_tensor(tensor: torch.Tensor, plan: Reorientation) -> torch.Tensor:
    """``plan.apply`` for a ``[..., z, y, x]`` tensor (a view; no copy)."""
    lead = tensor.ndim - 3
    out = tensor.permute(*range(lead), *(lead + a for a in plan.axes))
    dims = [lead + k for k, flip in enumerate(plan.flips) if flip]
    return out.flip(dims) if dims else out


def unreorient_tensor(tensor: torch.Tensor, plan: Reorientation) -> torch.Tensor:
    """``plan.inverse`` for a ``[..., z, y, x]`` tensor."""
    lead = tensor.ndim - 3
    dims = [lead + k for k, flip in enumerate(plan.flips) if flip]
    unflipped = tensor.flip(dims) if dims else tensor
    back = [plan.axes.index(a) for a in range(3)]
    return unflipped.permute(*range(lead), *(lead + a for a in back))


def resampling_for(
    spec: PreprocessingSpec, shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> Resampling | None:
    """The resampling the manifest asks for on a grid of ``shape`` and ``spacing``."""
    if spec.target_shape is not None:
        plan = for_shape(shape, spec.target_shape)
    elif spec.target_spacing is not None:
        plan = for_spacing(shape, spacing, spec.target_spacing)
    else:
        return None
    return None if plan.is_identity else plan


def scale_intensity(voxels: torch.Tensor, spec: IntensitySpec) -> torch.Tensor:
    """Intensity scaling of the manifest (a new tensor; the input is left alone)."""
    if spec.kind == "none":
        return voxels
    if spec.kind == "window":
        assert spec.window is not None  # guaranteed by the manifest schema
        lower, upper = spec.window
        return ((voxels - lower) / (upper - lower)).clamp_(0.0, 1.0)
    if spec.kind == "percentile":
        assert spec.percentiles is not None
        low = percentile(voxels, spec.percentiles[0])
        high = percentile(voxels, spec.percentiles[1])
        return ((voxels - low) / (high - low).clamp_min(1e-6)).clamp_(0.0, 1.0)
    if spec.kind == "zscore":
        return (voxels - voxels.mean()) / voxels.std().clamp_min(1e-6)
    return voxels / voxels.max().clamp_min(1e-6)


def percentile(voxels: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q``-th percentile (0-100) of all voxels, exactly, with linear interpolation
    between the two nearest ranks (numpy's default method).

    ``kthvalue`` selects in linear time and, unlike ``torch.quantile``, has no size limit.
    """
    flat = voxels.reshape(-1)
    position = q / 100.0 * (flat.numel() - 1)
    lower = int(position)
    fraction = position - lower
    low = flat.kthvalue(lower + 1).values
    if fraction == 0.0 or lower + 1 >= flat.numel():
        return low
    high = flat.kthvalue(lower + 2).values
    return low + (high - low) * fraction


def foreground_box(
    voxels: torch.Tensor, spec: CropForegroundSpec
) -> tuple[slice, slice, slice] | None:
    """The bounding box of ``voxels > threshold`` plus the margin, or ``None`` if empty."""
    mask = voxels > spec.threshold
    box = []
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        present = mask.any(dim=others[1]).any(dim=others[0]).nonzero()
        if present.numel() == 0:
            return None
        first = int(present[0]) - spec.margin
        last = int(present[-1]) + 1 + spec.margin
        box.append(slice(max(first, 0), min(last, voxels.shape[axis])))
    return (box[0], box[1], box[2])


def prepare(volume: Volume, voxels: torch.Tensor, spec: PreprocessingSpec) -> Prepared:
    """Apply the manifest's preprocessing to ``voxels`` (the volume's, on any device)."""
    plan = plan_reorientation(volume.direction, spec.orientation)
    oriented = reorient_tensor(voxels, plan)
    spacing = plan.apply_spacing(volume.spacing)
    shape = (int(oriented.shape[0]), int(oriented.shape[1]), int(oriented.shape[2]))
    resampling = resampling_for(spec, shape, spacing)
    if resampling is not None:
        oriented = resampling.apply(oriented.contiguous(), spec.interpolation)
        x, y, z = resampled_spacing(resampling, spacing)
        spacing = (x, y, z)
    scaled = scale_intensity(oriented, spec.intensity)
    grid_shape = (int(scaled.shape[0]), int(scaled.shape[1]), int(scaled.shape[2]))
    crop = None
    if spec.crop_foreground is not None:
        crop = foreground_box(scaled, spec.crop_foreground)
        if crop is not None:
            scaled = scaled[crop]
    return Prepared(
        voxels=scaled.contiguous(),
        spacing=spacing,
        reorientation=plan,
        resampling=resampling,
        crop=crop,
        grid_shape=grid_shape,
    )
