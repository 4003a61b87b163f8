"""Sliding-window inference: windows, batched network calls, blending, on the tensor's device.

The algorithm is MONAI's ``sliding_window_inference`` (same window positions, padding and
importance maps), so that a model trained and validated with MONAI gives the same logits
here (the parity test checks a max abs difference <= 1e-4 in float32):

* a volume smaller than the window is padded (``pad_value``), half before and half after;
* windows start every ``int(roi * (1 - overlap))`` voxels along each axis, the last one
  flush with the far edge;
* each window's output is weighted by an importance map (``constant``: ones;
  ``gaussian``: a separable Gaussian with sigma ``sigma_scale * roi``, at least 1e-3) and
  the sum is divided by the summed weights;
* windows go to the network ``batch_size`` at a time; the last batch may be smaller (a
  backend that needs fixed batches pads it itself).

Everything stays on the input's device: windows are gathered, stitched and normalised
there, so on a GPU nothing crosses to the host until the result is reduced.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812

Blend = Literal["gaussian", "constant"]


@dataclass
class WindowStats:
    """What a sliding-window run did: windows, network calls, and where the time went.

    ``network_seconds`` / ``stitch_seconds`` are exact on the CPU; on a GPU they are only
    exact when the run synchronises after each call (``synchronize=True``).
    """

    windows: int = 0
    batches: int = 0
    network_seconds: float = 0.0
    stitch_seconds: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)


def scan_interval(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> list[int]:
    """Distance between window starts along each axis (MONAI's rule)."""
    intervals = []
    for image, roi in zip(image_size, roi_size, strict=True):
        if roi == image:
            intervals.append(int(roi))
        else:
            interval = int(roi * (1 - overlap))
            intervals.append(interval if interval > 0 else 1)
    return intervals


def window_starts(
    image_size: Sequence[int], roi_size: Sequence[int], overlap: float
) -> list[list[int]]:
    """Start index of every window along each axis; the last window ends at the edge."""
    starts = []
    for image, roi, interval in zip(
        image_size, roi_size, scan_interval(image_size, roi_size, overlap), strict=True
    ):
        count = next(
            (d + 1 for d in range(math.ceil(image / interval)) if d * interval + roi >= image), 1
        )
        starts.append([min(d * interval, image - roi) for d in range(count)])
    return starts


@lru_cache(maxsize=16)
def _importance_cpu(roi_size: tuple[int, ...], blend: Blend, sigma_scale: float) -> torch.Tensor:
    if blend == "constant":
        return torch.ones(roi_size, dtype=torch.float32)
    weights = torch.ones((), dtype=torch.float32)
    for axis, size in enumerate(roi_size):
        sigma = size * sigma_scale
        x = torch.arange(-(size - 1) / 2.0, (size - 1) / 2.0 + 1, dtype=torch.float32)
        gauss = torch.exp(x**2 / (-2 * sigma**2))
        weights = weights.unsqueeze(-1) * gauss[(None,) * axis] if axis > 0 else gauss
    floor = max(float(weights.min()), 1e-3)
    return weights.clamp(min=floor)


def importance_map(
    roi_size: Sequence[int], *, blend: Blend, sigma_scale: float, device: torch.device
) -> torch.Tensor:
    """The weight of each voxel of a window's output, ``roi_size`` shaped."""
    return _importance_cpu(tuple(int(v) for v in roi_size), blend, float(sigma_scale)).to(device)


def sliding_window(
    inputs: torch.Tensor,
    network: Callable[[torch.Tensor], torch.Tensor],
    *,
    roi_size: Sequence[int],
    overlap: float = 0.25,
    blend: Blend = "gaussian",
    sigma_scale: float = 0.125,
    batch_size: int = 1,
    pad_value: float = 0.0,
    stats: WindowStats | None = None,
    synchronize: bool = False,
) -> torch.Tensor:
    """Run ``network`` over windows of ``inputs`` (``[1, C, *spatial]``) and blend them.

    ``network`` takes ``[B, C, *roi_size]`` and returns ``[B, K, *roi_size]``. The result
    is ``[1, K, *spatial]`` float32 on the input's device.

    Raises:
        ValueError: shapes that do not fit (batch of several volumes, roi rank).
    """
    spatial_dims = inputs.ndim - 2
    if inputs.shape[0] != 1 or len(roi_size) != spatial_dims:
        raise ValueError(
            f"expected [1, C, *spatial] with {len(roi_size)} spatial axes, "
            f"got {tuple(inputs.shape)}"
        )
    roi = [int(v) for v in roi_size]
    original = list(inputs.shape[2:])
    pad: list[int] = []
    for k in range(inputs.ndim - 1, 1, -1):
        diff = max(roi[k - 2] - inputs.shape[k], 0)
        pad.extend([diff // 2, diff - diff // 2])
    if any(pad):
        inputs = F.pad(inputs, pad=pad, mode="constant", value=pad_value)
    image = list(inputs.shape[2:])
    starts = window_starts(image, roi, overlap)
    corners = list(itertools.product(*starts))
    weight = importance_map(roi, blend=blend, sigma_scale=sigma_scale, device=inputs.device)
    stats = stats if stats is not None else WindowStats()
    sync = _synchronizer(inputs.device) if synchronize else _no_sync

    output: torch.Tensor | None = None
    count = torch.zeros([1, 1, *image], dtype=torch.float32, device=inputs.device)
    for corner in corners:
        count[(slice(None), slice(None), *_window(corner, roi))] += weight
    for first in range(0, len(corners), batch_size):
        started = time.perf_counter()
        batch_corners = corners[first : first + batch_size]
        batch = torch.cat(
            [inputs[(slice(None), slice(None), *_window(c, roi))] for c in batch_corners]
        )
        predicted = network(batch)
        sync()
        gathered = time.perf_counter()
        stats.network_seconds += gathered - started
        if output is None:
            output = torch.zeros(
                [1, predicted.shape[1], *image], dtype=torch.float32, device=inputs.device
            )
        weighted = predicted.to(torch.float32) * weight
        for index, corner in enumerate(batch_corners):
            output[(slice(None), slice(None), *_window(corner, roi))] += weighted[index : index + 1]
        sync()
        stats.stitch_seconds += time.perf_counter() - gathered
        stats.batches += 1
        stats.batch_sizes.append(len(batch_corners))
    stats.windows += len(corners)
    assert output is not None  # at least one window always exists
    started = time.perf_counter()
    output /= count
    if any(pad):
        keep = [slice(None), slice(None)]
        for axis in range(spatial_dims):
            before = pad[(spatial_dims - 1 - axis) * 2]
            keep.append(slice(before, before + original[axis]))
        output = output[tuple(keep)]
    sync()
    stats.stitch_seconds += time.perf_counter() - started
    return output


def _window(corner: Sequence[int], roi: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(start, start + size) for start, size in zip(corner, roi, strict=True))


def _no_sync() -> None:
    return None


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type != "cuda":
        return _no_sync

    def sync() -> None:
        torch.cuda.synchronize(device)

    return sync
