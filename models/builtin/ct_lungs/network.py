"""Classical lung segmentation of chest CT as a torch module (the built-in ``ct-lungs``).

Not a learned model: a transparent pipeline of HU thresholding, connected components and
mathematical morphology, written in tensor operations so that it runs through the same
backend interface as learned models, on the CPU or on the GPU the input lives on.

Steps (the topology is found on a working grid of about 3 mm voxels, where the volume is
averaged; only the boundary is drawn at full resolution):

1. Air is HU < -320. Its components (face connectivity) that touch the x or y faces of
   the volume are outside air. The z faces do not count: the trachea may leave through
   the top slice, and the lungs may be cut by the field of view.
2. The largest remaining component, and the second when it is at least a tenth of the
   first, are the lung candidates; bowel gas and small pockets drop out. Holes of vessel
   size in each slice are filled.
3. The candidates are eroded until two cores of comparable size appear, 12 mm deep at
   least, which also cuts the trachea and main bronchi off; the core at lower x (the
   patient's right in LPS) is the right lung.
4. The cores grow back as deep as they were eroded. What they do not reach is the thin
   part of the candidates: lung edges, and the airway, told apart as pure air (< -950 HU)
   connected to the top of the candidates. The airway is removed, then the cores grow,
   competing, into all the rest.
5. Each lung is closed (6 mm) and its holes are filled slice by slice, so that vessels
   count as lung; the boundary, one working voxel either side, is then redrawn at full
   resolution with the threshold, kept off other air.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

logger = logging.getLogger(__name__)

#: Air/lung threshold in HU (the dcmqi reference lung mask uses the same value).
AIR_HU = -320.0
#: Voxel size of the working grid where the topology is found, in mm.
WORK_MM = 3.0
#: First erosion radius for the left/right split, in mm: wide enough to cut the trachea
#: (at most about 25 mm across) and the main bronchi off the lungs.
SPLIT_MIN_MM = 12.0
#: Deepest erosion tried when the lungs still touch, in mm.
SPLIT_MAX_MM = 36.0
#: Smallest volume accepted as a lung, in mL.
MIN_LUNG_ML = 50.0
#: A second air component is a lung candidate when at least this fraction of the first.
SECOND_COMPONENT_RATIO = 0.1
#: Two eroded cores are two lungs when the smaller is at least this fraction of the larger.
SECOND_CORE_RATIO = 0.05
#: Holes up to this area in an axial slice of a lung candidate are vessels, in mm².
VESSEL_HOLE_MM2 = 500.0
#: Working-grid voxels darker than this in HU are airway lumen rather than lung tissue.
AIRWAY_HU = -950.0
#: The airway is looked for from the top slices of the lung candidates, this deep in mm.
AIRWAY_SEED_MM = 10.0
#: An airway larger than this, in mL, has leaked into emphysematous lung and is not used.
AIRWAY_MAX_ML = 250.0
#: Closing radius for each lung on the working grid, in mm (pulls hilar vessels in).
CLOSING_MM = 6.0

RIGHT_LUNG = 1
LEFT_LUNG = 2

#: Working-grid slices drawn at full resolution at a time (:func:`_draw_full_resolution`).
_SLAB = 8


@dataclass(frozen=True)
class _Grid:
    """The working grid: integer pooling factors and the resulting voxel size (z, y, x)."""

    factors: tuple[int, int, int]
    voxel_mm: tuple[float, float, float]

    @property
    def voxel_ml(self) -> float:
        return math.prod(self.voxel_mm) / 1000.0

    def steps(self, radius_mm: float) -> tuple[int, int, int]:
        """Number of one-voxel steps per axis that cover ``radius_mm``."""
        return (
            max(1, round(radius_mm / self.voxel_mm[0])),
            max(1, round(radius_mm / self.voxel_mm[1])),
            max(1, round(radius_mm / self.voxel_mm[2])),
        )


def _working_grid(spacing_xyz: tuple[float, float, float], shape: torch.Size) -> _Grid:
    sx, sy, sz = spacing_xyz
    factors = (
        max(1, min(shape[0], round(WORK_MM / sz))),
        max(1, min(shape[1], round(WORK_MM / sy))),
        max(1, min(shape[2], round(WORK_MM / sx))),
    )
    return _Grid(factors, (sz * factors[0], sy * factors[1], sx * factors[2]))


# --- morphology on bool volumes [Z, Y, X] ----------------------------------------------


def _dilate_axis(mask: Tensor, axis: int) -> Tensor:
    """Dilation by one voxel along one axis; outside the volume counts as background."""
    n = mask.shape[axis]
    if n == 1:
        return mask
    out = mask.clone()
    out.narrow(axis, 1, n - 1).logical_or_(mask.narrow(axis, 0, n - 1))
    out.narrow(axis, 0, n - 1).logical_or_(mask.narrow(axis, 1, n - 1))
    return out


def _dilate(mask: Tensor, axes: tuple[int, ...] = (0, 1, 2)) -> Tensor:
    """Dilation by the 3x3x3 cube (restricted to ``axes``), separably."""
    for axis in axes:
        mask = _dilate_axis(mask, axis)
    return mask


def _erode(mask: Tensor, axes: tuple[int, ...] = (0, 1, 2)) -> Tensor:
    """Erosion by the 3x3x3 cube; outside the volume is neutral, so a lung cut by the
    field of view is not eroded from the cut."""
    for axis in axes:
        n = mask.shape[axis]
        if n == 1:
            continue
        out = mask.clone()
        out.narrow(axis, 1, n - 1).logical_and_(mask.narrow(axis, 0, n - 1))
        out.narrow(axis, 0, n - 1).logical_and_(mask.narrow(axis, 1, n - 1))
        mask = out
    return mask


def _active_axes(step: int, steps: tuple[int, int, int]) -> tuple[int, ...]:
    return tuple(axis for axis in range(3) if step < steps[axis])


# --- connected components ----------------------------------------------------------------


class _Runs:
    """Runs of a bool volume along one axis, laid out so that the axis is the last one.

    Runs are numbered along the axis; the number, scaled by ``stride`` (larger than any
    label), is an offset that keeps one ``cummax`` from carrying a value from one run
    into the next.
    """

    def __init__(self, mask: Tensor, axis: int, stride: int) -> None:
        self.perm = [d for d in range(mask.dim()) if d != axis] + [axis]
        self.inverse = [self.perm.index(d) for d in range(mask.dim())]
        self.mask = mask.permute(self.perm).contiguous()
        n = self.mask.shape[-1]
        starts = self.mask.clone()
        starts[..., 1:] &= ~self.mask[..., : n - 1]
        self.offset = torch.cumsum(starts, dim=-1, dtype=torch.int64) * stride

    def spread_max(self, labels: Tensor) -> Tensor:
        """Each run takes the largest label found in it (a forward and a reverse scan)."""
        values = labels.permute(self.perm)
        forward = torch.cummax(values + self.offset, dim=-1).values
        # forward - offset is the running maximum; subtracting the offset again orders the
        # runs the other way round for the reverse scan.
        reverse = torch.cummax((forward - 2 * self.offset).flip(-1), dim=-1).values.flip(-1)
        spread = torch.where(self.mask, reverse + self.offset, 0)
        return spread.permute(self.inverse)


def _label(mask: Tensor, axes: tuple[int, ...] = (0, 1, 2), max_rounds: int = 100) -> Tensor:
    """Connected components of a bool volume, face connectivity along ``axes``.

    Returns int64 labels: 0 for background, otherwise one plus the largest flat index in
    the component. Runs are merged with segmented max-scans along each axis, and labels
    are then followed like pointers (a label names a voxel of the same component whose
    own label can only be larger), so that a round costs a few passes over the volume and
    the number of rounds grows with how winding the components are, not with their size.
    """
    flat_mask = mask.reshape(-1)
    stride = flat_mask.numel() + 1
    runs = [_Runs(mask, axis, stride) for axis in axes if mask.shape[axis] > 1]
    index = torch.arange(1, stride, device=mask.device, dtype=torch.int64)
    flat = torch.where(flat_mask, index, 0)
    for _ in range(max_rounds):
        previous = flat
        labels = flat.view(mask.shape)
        for run in runs:
            labels = run.spread_max(labels)
        flat = labels.reshape(-1)
        for _ in range(2):
            flat = torch.where(flat_mask, flat[(flat - 1).clamp_min(0)], 0)
        if torch.equal(flat, previous):
            break
    else:
        logger.warning("connected components did not converge in %d rounds", max_rounds)
    return flat.view(mask.shape)


def _sizes(labels: Tensor) -> Tensor:
    counts = torch.bincount(labels.reshape(-1), minlength=labels.numel() + 1)
    counts[0] = 0
    return counts


def _fill_holes_2d(mask: Tensor, *, max_area: int | None = None) -> Tensor:
    """Fill, slice by slice, background regions that do not reach the slice edge (and,
    with ``max_area``, are at most that many voxels)."""
    background = _label(~mask, axes=(1, 2))
    keep = torch.zeros(background.numel() + 1, dtype=torch.bool, device=mask.device)
    for face in (
        background[:, 0, :],
        background[:, -1, :],
        background[:, :, 0],
        background[:, :, -1],
    ):
        keep[face.reshape(-1)] = True
    if max_area is not None:
        keep |= _sizes(background) > max_area
    return mask | ~keep[background]


def _bounding_box(mask: Tensor, margin: int) -> tuple[slice, slice, slice]:
    bounds = []
    for dim in range(3):
        present = mask.any(dim=[d for d in range(3) if d != dim]).nonzero()
        low, high = int(present.min()), int(present.max()) + 1
        bounds.append(slice(max(0, low - margin), min(mask.shape[dim], high + margin)))
    return bounds[0], bounds[1], bounds[2]


# --- the pipeline ------------------------------------------------------------------------


def _lung_candidates(air: Tensor, grid: _Grid) -> Tensor:
    """The one or two largest air components not connected to the x/y faces."""
    labels = _label(air)
    sizes = _sizes(labels)
    for face in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        sizes[face.reshape(-1)] = 0
    top = torch.topk(sizes, k=2)
    first, second = (float(v) * grid.voxel_ml for v in top.values.tolist())
    if first < MIN_LUNG_ML:
        return torch.zeros_like(air)
    keep = torch.zeros_like(sizes, dtype=torch.bool)
    keep[top.indices[0]] = True
    if second >= max(MIN_LUNG_ML, SECOND_COMPONENT_RATIO * first):
        keep[top.indices[1]] = True
    keep[0] = False
    return keep[labels]


def _split_cores(solid: Tensor, grid: _Grid) -> tuple[list[Tensor], tuple[int, int, int]]:
    """Erode until two lung cores appear; returns them and the erosion steps per axis.

    When no depth gives two cores (one lung), returns the one core at the first depth;
    when nothing survives that depth, no core.
    """
    first = grid.steps(SPLIT_MIN_MM)
    last = grid.steps(SPLIT_MAX_MM)
    eroded = solid
    single: tuple[list[Tensor], tuple[int, int, int]] = ([], first)
    for step in range(max(last)):
        eroded = _erode(eroded, _active_axes(step, last))
        if step + 1 < max(first):
            continue
        labels = _label(eroded)
        top = torch.topk(_sizes(labels), k=2)
        big, small = top.values.tolist()
        if big == 0:
            break
        depth = (min(step + 1, last[0]), min(step + 1, last[1]), min(step + 1, last[2]))
        if small >= SECOND_CORE_RATIO * big:
            return [labels == top.indices[0], labels == top.indices[1]], depth
        if not single[0]:
            single = ([labels == top.indices[0]], depth)
    return single


def _regrow(
    cores: list[Tensor], domain: Tensor, *, steps: tuple[int, int, int] | None = None
) -> list[Tensor]:
    """Grow the cores inside ``domain``, competing for it: by ``steps`` per axis, or until
    nothing changes. Voxels both reach at the same step go to neither."""
    grown = [core & domain for core in cores]
    limit = max(steps) if steps is not None else sum(domain.shape)
    for step in range(limit):
        axes = _active_axes(step, steps) if steps is not None else (0, 1, 2)
        free = domain.clone()
        for region in grown:
            free &= ~region
        fronts = [_dilate(region, axes) & free for region in grown]
        if len(fronts) == 2:
            contested = fronts[0] & fronts[1]
            fronts = [front & ~contested for front in fronts]
        if steps is None and step % 4 == 3 and not any(bool(f.any()) for f in fronts):
            break
        grown = [region | front for region, front in zip(grown, fronts, strict=True)]
    return grown


def _airway(residue: Tensor, dark: Tensor, *, top: int, grid: _Grid) -> Tensor:
    """Trachea and main bronchi: the pure-air part of what the lung cores did not grow back
    into that reaches the top of the lung candidates, with its wall."""
    labels = _label(residue & dark)
    seed_slices = max(1, round(AIRWAY_SEED_MM / grid.voxel_mm[0]))
    seeds = labels[max(0, top + 1 - seed_slices) : top + 1].reshape(-1)
    table = torch.zeros(labels.numel() + 1, dtype=torch.bool, device=labels.device)
    table[seeds] = True
    table[0] = False
    airway = _dilate(table[labels]) & residue
    volume = float(airway.sum()) * grid.voxel_ml
    if volume > AIRWAY_MAX_ML:
        logger.warning(
            "airway search leaked into the lungs (%.0f mL); keeping the airway in", volume
        )
        return torch.zeros_like(airway)
    return airway


def _close_and_fill(lung: Tensor, others: Tensor, *, grid: _Grid) -> Tensor:
    """Closing then slice-wise hole filling, never into ``others``, so that vessels and
    airway walls inside the lung count as lung."""
    steps = grid.steps(CLOSING_MM)
    closed = lung
    for step in range(max(steps)):
        closed = _dilate(closed, _active_axes(step, steps))
    for step in range(max(steps)):
        closed = _erode(closed, _active_axes(step, steps))
    return (_fill_holes_2d(closed | lung) & ~others) | lung


class ClassicalLungSegmentation(nn.Module):
    """HU-threshold lung segmentation into right (1) and left (2) lung, in LPS arrays."""

    def forward(self, image: Tensor, spacing: Tensor) -> Tensor:
        """Label the lungs of a CT volume.

        Args:
            image: float32 ``[1, 1, Z, Y, X]`` in Hounsfield units, axes in LPS order
                (x toward the patient's left, y posterior, z superior).
            spacing: float32 ``[3]``, voxel size (x, y, z) in mm.

        Returns:
            uint8 ``[1, 1, Z, Y, X]`` on the image's device: 0 background, 1 right lung,
            2 left lung; all zeros when no lung is found.

        Raises:
            ValueError: if the shapes or spacing are not as described.
        """
        if image.dim() != 5 or image.shape[:2] != (1, 1):
            raise ValueError(f"image must be [1, 1, Z, Y, X], got {list(image.shape)}")
        if spacing.numel() != 3:
            raise ValueError(f"spacing must hold 3 values (x, y, z), got {spacing.numel()}")
        sx, sy, sz = (float(v) for v in spacing.reshape(-1).tolist())
        if not all(math.isfinite(v) and v > 0 for v in (sx, sy, sz)):
            raise ValueError(f"spacing must be positive millimetres, got {(sx, sy, sz)}")
        with torch.no_grad():
            return self._segment(image.float(), _working_grid((sx, sy, sz), image.shape[2:]))

    def _segment(self, image: Tensor, grid: _Grid) -> Tensor:
        shape = image.shape[2:]
        output = torch.zeros((1, 1, *shape), dtype=torch.uint8, device=image.device)
        mean_hu = F.avg_pool3d(image, grid.factors, grid.factors, ceil_mode=True)[0, 0]
        air = mean_hu < AIR_HU
        candidates = _lung_candidates(air, grid)
        if not bool(candidates.any()):
            logger.info("no air component large enough for a lung")
            return output

        box = _bounding_box(candidates, margin=max(grid.steps(CLOSING_MM)) + 2)
        air_box = air[box]
        hole_voxels = round(VESSEL_HOLE_MM2 / (grid.voxel_mm[1] * grid.voxel_mm[2]))
        solid = _fill_holes_2d(candidates[box], max_area=hole_voxels)
        cores, steps = _split_cores(solid, grid)
        if not cores:
            logger.info("the lung candidates vanish under erosion")
            return output
        # What the cores do not grow back into within their erosion depth is the thin part
        # of the candidates: lung edges, and the trachea and main bronchi, told apart by
        # being pure air and reaching the top of the candidates.
        opened = _regrow(cores, solid, steps=steps)
        residue = solid.clone()
        for region in opened:
            residue &= ~region
        top = int(solid.any(dim=(1, 2)).nonzero().max())
        airway = _airway(residue, mean_hu[box] < AIRWAY_HU, top=top, grid=grid)
        lungs = _regrow(opened, solid & ~airway)
        if len(lungs) == 2:
            if _mean_x(lungs[1]) < _mean_x(lungs[0]):
                lungs.reverse()
            values = [RIGHT_LUNG, LEFT_LUNG]
        else:
            logger.info("only one lung found")
            body_x = _mean_x(~air) - box[2].start
            values = [RIGHT_LUNG if _mean_x(lungs[0]) < body_x else LEFT_LUNG]

        # On the working grid: each lung widened by one voxel, where the boundary is redrawn
        # at full resolution, but kept off other air so that bowel gas or the airway cannot
        # be pulled in; and its interior, kept whole so that vessels stay in.
        any_lung = torch.zeros_like(air_box)
        for lung in lungs:
            any_lung |= lung
        other_air = _dilate(air_box & ~any_lung)
        region = torch.zeros_like(air, dtype=torch.uint8)
        interior = torch.zeros_like(air, dtype=torch.uint8)
        for lung, value in zip(lungs, values, strict=True):
            others = other_air
            for other in lungs:
                if other is not lung:
                    others = others | _dilate(other)
            filled = _close_and_fill(lung, others, grid=grid)
            region[box][(_dilate(filled) & ~others) | filled] = value
            interior[box][_erode(filled)] = value

        _draw_full_resolution(output[0, 0], image[0, 0], region, interior, grid.factors)
        return output


def _mean_x(mask: Tensor) -> float:
    x = torch.arange(mask.shape[2], device=mask.device, dtype=torch.float32)
    per_x = mask.sum(dim=(0, 1), dtype=torch.float32)
    return float((per_x * x).sum() / per_x.sum().clamp_min(1))


def _draw_full_resolution(
    out: Tensor, image: Tensor, region: Tensor, interior: Tensor, factors: tuple[int, int, int]
) -> None:
    """``out`` (``[Z, Y, X]``): a lung's value where the image is air within its region, or
    anywhere in its interior; both given on the working grid.

    Drawn a slab of working slices at a time: whole, the upsampled region and interior
    and the masks between them were five temporary volumes, most of a worker's peak
    memory on a CT (the network's output is the only full-size volume it keeps).
    """
    depth = out.shape[0]
    for first in range(0, region.shape[0], _SLAB):
        start = first * factors[0]
        if start >= depth:
            break
        stop = min(depth, (first + _SLAB) * factors[0])
        shape = torch.Size((stop - start, *out.shape[1:]))
        region_full = _upsample(region[first : first + _SLAB], factors=factors, shape=shape)
        interior_full = _upsample(interior[first : first + _SLAB], factors=factors, shape=shape)
        air = image[start:stop] < AIR_HU
        out[start:stop] = torch.where(air | (interior_full > 0), region_full, 0)


def _upsample(labels: Tensor, *, factors: tuple[int, int, int], shape: torch.Size) -> Tensor:
    out = labels
    for axis, factor in enumerate(factors):
        if factor > 1:
            out = out.repeat_interleave(factor, dim=axis)
    return out[: shape[0], : shape[1], : shape[2]]


def build() -> nn.Module:
    """The factory named by the package manifest (``network.entry``)."""
    return ClassicalLungSegmentation().eval()
