"""Preprocessing as tensor operations on the worker's device: the manifest's recipe.

In order (each step optional, each a torch operation on whatever device the volume is on):
the source's VOI LUT (``voi``), reorientation (permute + flip; none for a projection
radiograph), resampling (:mod:`inference.resample`), intensity scaling, foreground crop,
and for 2D models the resize / letterbox to the network's input
(:mod:`inference.preprocess2d`). :class:`Prepared` remembers what was done, so the
postprocessing can undo it exactly on the network's output.

The foreground crop's box may reach beyond the grid (a head that fills the field of
view, with the recipe's margin around it): the part outside is padded with the
manifest's background value, and the postprocessing keeps only the part on the grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from inference.preprocess2d import ResizePlan, apply_voi, resize_plan
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
    #: The crop box on the network grid (it may reach beyond it), or ``None``.
    crop: CropBox | None
    #: Shape of the network grid before the crop.
    grid_shape: tuple[int, int, int]
    #: 2D models: each image resized (or letterboxed) to the network's input, or ``None``.
    resize: ResizePlan | None = None


@dataclass(frozen=True)
class CropBox:
    """A box ``[start, stop)`` per axis on a grid; it may reach beyond the grid's edges."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = (b - a for a, b in zip(self.start, self.stop, strict=True))
        return (z, y, x)

    def overlap(
        self, grid_shape: Sequence[int]
    ) -> tuple[tuple[slice, slice, slice], tuple[slice, slice, slice]]:
        """Where the box and a grid of ``grid_shape`` overlap: (the grid's slices, the
        box's slices) of the same region."""
        on_grid: list[slice] = []
        in_box: list[slice] = []
        for start, stop, size in zip(self.start, self.stop, grid_shape, strict=True):
            first, last = max(start, 0), min(stop, int(size))
            on_grid.append(slice(first, last))
            in_box.append(slice(first - start, last - start))
        return (on_grid[0], on_grid[1], on_grid[2]), (in_box[0], in_box[1], in_box[2])


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


def foreground_box(voxels: torch.Tensor, spec: CropForegroundSpec) -> CropBox | None:
    """The bounding box of ``voxels > threshold`` plus the margin, or ``None`` if empty.

    ``beyond_image: pad`` keeps the whole margin (the box may reach beyond the grid);
    ``clip`` stops it at the grid's edges.
    """
    mask = voxels > spec.threshold
    starts: list[int] = []
    stops: list[int] = []
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        present = mask.any(dim=others[1]).any(dim=others[0]).nonzero()
        if present.numel() == 0:
            return None
        first = int(present[0]) - spec.margin
        last = int(present[-1]) + 1 + spec.margin
        if spec.beyond_image == "clip":
            first, last = max(first, 0), min(last, int(voxels.shape[axis]))
        starts.append(first)
        stops.append(last)
    return CropBox(start=(starts[0], starts[1], starts[2]), stop=(stops[0], stops[1], stops[2]))


def crop(voxels: torch.Tensor, box: CropBox, spec: CropForegroundSpec) -> torch.Tensor:
    """``voxels`` inside ``box``, padded with the background value where the box reaches
    beyond them (a view when it does not)."""
    on_grid, in_box = box.overlap(voxels.shape)
    if box.shape == tuple(s.stop - s.start for s in on_grid):
        return voxels[on_grid]
    fill = float(voxels.min()) if spec.pad_value == "minimum" else spec.pad_value
    out = voxels.new_full(box.shape, fill)
    out[in_box] = voxels[on_grid]
    return out


def prepare(volume: Volume, voxels: torch.Tensor, spec: PreprocessingSpec) -> Prepared:
    """Apply the manifest's preprocessing to ``voxels`` (the volume's, on any device)."""
    # A projection radiograph has no patient orientation to reorient by.
    orientation = "LPS" if volume.projection is not None else spec.orientation
    plan = plan_reorientation(volume.direction, orientation)
    oriented = reorient_tensor(apply_voi(volume, voxels, spec.voi), plan)
    spacing = plan.apply_spacing(volume.spacing)
    shape = (int(oriented.shape[0]), int(oriented.shape[1]), int(oriented.shape[2]))
    resampling = resampling_for(spec, shape, spacing)
    if resampling is not None:
        oriented = resampling.apply(oriented.contiguous(), spec.interpolation)
        x, y, z = resampled_spacing(resampling, spacing)
        spacing = (x, y, z)
    scaled = scale_intensity(oriented, spec.intensity)
    grid_shape = (int(scaled.shape[0]), int(scaled.shape[1]), int(scaled.shape[2]))
    box = None
    if spec.crop_foreground is not None:
        box = foreground_box(scaled, spec.crop_foreground)
        if box is not None:
            scaled = crop(scaled, box, spec.crop_foreground)
    resize = resize_plan(spec, (grid_shape[1], grid_shape[2]))
    if resize is not None:
        scaled = resize.apply(scaled)
        spacing = (
            spacing[0] * resize.source[1] / resize.scaled[1],
            spacing[1] * resize.source[0] / resize.scaled[0],
            spacing[2],
        )
    return Prepared(
        voxels=scaled.contiguous(),
        spacing=spacing,
        reorientation=plan,
        resampling=resampling,
        crop=box,
        grid_shape=grid_shape,
        resize=resize,
    )
