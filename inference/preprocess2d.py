"""Preprocessing of 2D images (projection radiographs, or the slices a 2D model sees).

The manifest's 2D steps, as tensor operations on the worker's device:

* :func:`apply_voi` -- the source's VOI LUT (PS3.3 C.11.2) to [0, 1], higher brighter:
  the first Window Center / Width with its VOI LUT Function (``LINEAR``, ``LINEAR_EXACT``,
  ``SIGMOID``; PS3.3 C.11.2.1.2), or the VOI LUT Sequence's first LUT. A MONOCHROME1
  radiograph was inverted on loading (:mod:`inference.projection`): the VOI is applied to
  its values as stored, as the standard orders it (modality LUT, VOI LUT, then the
  photometric inversion), and its output inverted again. Without a window or a LUT the
  full range the stored bits can hold is mapped to [0, 1] (for images without headers,
  the image's own minimum and maximum);
* :class:`ResizePlan` -- ``stretch`` or ``letterbox`` to the network's input (bilinear,
  anti-aliased when shrinking, as torchvision's ``Resize``), and the way back onto the
  source image for segmentations (:meth:`ResizePlan.to_source`);
* :func:`to_network_channels` -- the grey image repeated into the network's channels and
  normalised per channel (ImageNet's mean and standard deviation, say).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_voi as pydicom_voi

from inference.volume import Volume
from models.manifest import NormalizeSpec, PreprocessingSpec, ResizeSpec

logger = logging.getLogger(__name__)

VoiMode = Literal["none", "window", "lut"]


def _first(value: object) -> float:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return float(value[0])
    return float(value)  # type: ignore[arg-type]


def _window(header: Dataset) -> tuple[float, float, str] | None:
    center, width = header.get("WindowCenter"), header.get("WindowWidth")
    if center in (None, "") or width in (None, ""):
        return None
    function = str(header.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    c, w = _first(center), _first(width)
    if not (np.isfinite(c) and np.isfinite(w)) or w <= 0 or (function == "LINEAR" and w < 1):
        return None
    return c, w, function


def _apply_window(values: torch.Tensor, center: float, width: float, function: str) -> torch.Tensor:
    if function == "SIGMOID":
        return torch.sigmoid(4.0 * (values - center) / width)
    if function == "LINEAR_EXACT":
        return ((values - center) / width + 0.5).clamp_(0.0, 1.0)
    # LINEAR (PS3.3 C.11.2.1.2.1): the 0.5 and 1 offsets place the window on the centres
    # of integer-valued pixels.
    if width == 1:
        return (values > center - 0.5).to(values.dtype)
    return ((values - (center - 0.5)) / (width - 1) + 0.5).clamp_(0.0, 1.0)


def _apply_lut(values: torch.Tensor, header: Dataset) -> torch.Tensor:
    """The first VOI LUT of the VOI LUT Sequence, to [0, 1] by its bits (C.11.2.1.1)."""
    entries, first, bits = (int(v) for v in header.VOILUTSequence[0].LUTDescriptor)
    entries = entries or 65536
    # pydicom reads the table (US or OW, either byte order) from every possible input.
    table = pydicom_voi(np.arange(first, first + entries, dtype=np.int32), header)
    lut = torch.as_tensor(table.astype(np.float32), device=values.device)
    index = (values.round() - first).clamp_(0, entries - 1).long()
    return lut[index] / float(2**bits - 1)


def apply_voi(volume: Volume, voxels: torch.Tensor, mode: VoiMode) -> torch.Tensor:
    """``voxels`` (the volume's values) through the source's VOI LUT, to [0, 1].

    ``none`` returns ``voxels`` unchanged. See the module for the rules and fallbacks.
    """
    if mode == "none":
        return voxels
    projection = volume.projection
    header = volume.source_headers[0] if volume.source_headers else None
    values = voxels
    inverted = projection is not None and projection.inverted
    if inverted:
        assert projection is not None
        low, high = projection.value_range
        values = (low + high) - voxels
    result: torch.Tensor | None = None
    if header is not None and mode == "lut" and "VOILUTSequence" in header:
        result = _apply_lut(values, header)
    if result is None and header is not None:
        window = _window(header)
        if window is not None:
            result = _apply_window(values, *window)
    if result is None:
        if projection is not None:
            low, high = projection.value_range
        else:
            low, high = float(voxels.min()), float(voxels.max())
        logger.info(
            "VOI %s asked for, but the image has none: its full range %g..%g maps to [0, 1]",
            mode,
            low,
            high,
        )
        return ((voxels - low) / max(high - low, 1e-6)).clamp_(0.0, 1.0)
    return 1.0 - result if inverted else result


@dataclass(frozen=True)
class ResizePlan:
    """How ``[..., rows, columns]`` images become ``[..., height, width]`` and back."""

    source: tuple[int, int]
    shape: tuple[int, int]
    #: The size the image is scaled to (``shape`` for ``stretch``), and where it starts.
    scaled: tuple[int, int]
    offset: tuple[int, int]
    pad_value: float

    @classmethod
    def plan(cls, source: tuple[int, int], spec: ResizeSpec) -> ResizePlan:
        """The plan for images of ``source`` (rows, columns) under ``spec``."""
        height, width = spec.shape
        if spec.mode == "stretch":
            scaled = (height, width)
        else:
            factor = min(height / source[0], width / source[1])
            scaled = (
                min(height, max(1, round(source[0] * factor))),
                min(width, max(1, round(source[1] * factor))),
            )
        offset = ((height - scaled[0]) // 2, (width - scaled[1]) // 2)
        return cls(source, (height, width), scaled, offset, spec.pad_value)

    @property
    def is_identity(self) -> bool:
        return self.source == self.shape == self.scaled

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """``[..., rows, columns]`` (float) to ``[..., height, width]``."""
        if self.is_identity:
            return images
        lead = images.shape[:-2]
        flat = images.reshape(-1, 1, *self.source)
        shrinking = self.scaled[0] < self.source[0] or self.scaled[1] < self.source[1]
        scaled = F.interpolate(
            flat, size=self.scaled, mode="bilinear", align_corners=False, antialias=shrinking
        )
        if self.scaled != self.shape:
            top, left = self.offset
            bottom = self.shape[0] - self.scaled[0] - top
            right = self.shape[1] - self.scaled[1] - left
            scaled = F.pad(scaled, (left, right, top, bottom), value=self.pad_value)
        return scaled.reshape(*lead, *self.shape)

    def to_source(self, tensor: torch.Tensor, mode: Literal["linear", "nearest"]) -> torch.Tensor:
        """A network output ``[..., height, width]`` back onto ``[..., rows, columns]``:
        the padding cut off, then ``linear`` (bilinear, for probabilities) or ``nearest``
        (for labels) interpolation."""
        if self.is_identity:
            return tensor
        top, left = self.offset
        inside = tensor[..., top : top + self.scaled[0], left : left + self.scaled[1]]
        lead = inside.shape[:-2]
        flat = inside.reshape(-1, 1, *self.scaled)
        if mode == "nearest":
            back = F.interpolate(flat.float(), size=self.source, mode="nearest-exact")
            return back.to(tensor.dtype).reshape(*lead, *self.source)
        back = F.interpolate(flat, size=self.source, mode="bilinear", align_corners=False)
        return back.reshape(*lead, *self.source)


def resize_plan(spec: PreprocessingSpec, source: tuple[int, int]) -> ResizePlan | None:
    """The resize the manifest asks for on images of ``source`` (rows, columns)."""
    if spec.resize is None:
        return None
    plan = ResizePlan.plan(source, spec.resize)
    return None if plan.is_identity else plan


def to_network_channels(
    batch: torch.Tensor, *, channels: int, normalize: NormalizeSpec | None
) -> torch.Tensor:
    """``[N, 1, ...]`` to ``[N, channels, ...]`` (the grey image repeated), normalised."""
    if channels > 1:
        batch = batch.expand(-1, channels, *batch.shape[2:])
    if normalize is None:
        return batch
    shape = (1, -1) + (1,) * (batch.ndim - 2)
    mean = torch.tensor(normalize.mean, dtype=batch.dtype, device=batch.device).reshape(shape)
    std = torch.tensor(normalize.std, dtype=batch.dtype, device=batch.device).reshape(shape)
    return (batch - mean) / std
