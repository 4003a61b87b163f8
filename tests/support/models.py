"""Small model packages made in tests: random networks, their ONNX exports, manifests.

Exporting and packaging are shared with the benchmarks (:mod:`benchmarks._support.models`).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch

from benchmarks._support.models import benchmark_unet, export_onnx, write_package

__all__ = [
    "FAMILY",
    "SEGMENT",
    "benchmark_unet",
    "export_onnx",
    "manifest",
    "random_unet",
    "script",
    "write_package",
]

SEGMENT = {
    "value": 1,
    "name": "Thing",
    "category": {"value": "85756007", "scheme": "SCT", "meaning": "Tissue"},
    "type": {"value": "85756007", "scheme": "SCT", "meaning": "Tissue"},
}
FAMILY = {"value": "123110", "scheme": "DCM", "meaning": "Artificial Intelligence"}


def random_unet(*, seed: int = 0, out_channels: int = 2) -> torch.nn.Module:
    """A randomly initialised MONAI 3D U-Net (two down-sampling levels), in eval mode."""
    from monai.networks.nets.unet import UNet  # noqa: PLC0415 -- test-only dependency

    torch.manual_seed(seed)
    net: torch.nn.Module = UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=out_channels,
        channels=(8, 16, 32),
        strides=(2, 2),
        num_res_units=1,
    )
    return net.eval()


def script(module: torch.nn.Module, path: Path) -> Path:
    """Save ``module`` as TorchScript (what MONAI bundles ship as ``models/model.ts``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted: Any = torch.jit.script(module)
    scripted.save(str(path))
    return path


def manifest(**overrides: Any) -> dict[str, Any]:
    """A valid segmentation manifest (dict) with ``overrides`` merged in at the top level."""
    base: dict[str, Any] = {
        "schema_version": 2,
        "id": "test-model",
        "version": "1.0",
        "name": "Test model",
        "task": "segmentation",
        "family": FAMILY,
        "accepts": {"modalities": ["CT", "MR"], "min_slices": 1},
        "network": {"kind": "onnx", "path": "model.onnx", "input_name": "image"},
        "backends": [{"name": "onnxruntime"}],
        "postprocessing": {"reduce": "argmax"},
        "labels": [SEGMENT],
    }
    merged = copy.deepcopy(base)
    merged.update(copy.deepcopy(overrides))
    return merged
