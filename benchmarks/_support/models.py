"""The benchmark's model packages: a seeded random network, its ONNX export, a package.

Shared with the tests (``tests/support/models.py`` re-exports these).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from models.registry import ModelPackage, load_package, sha256_of


def export_onnx(
    module: torch.nn.Module,
    path: Path,
    *,
    example: torch.Tensor,
    input_name: str = "image",
    output_name: str = "output",
    dynamic_spatial: bool = True,
) -> Path:
    """Export ``module`` to ONNX (opset 17) with a dynamic batch (and spatial) axes."""
    axes: dict[int, str] = {0: "batch"}
    if dynamic_spatial:
        axes.update({i: f"d{i}" for i in range(2, example.ndim)})
    with warnings.catch_warnings():
        # The TorchScript-based exporter warns that it is legacy, and about traced
        # Python booleans in MONAI's blocks; neither matters for these fixed networks.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: axes, output_name: dict(axes)},
            opset_version=17,
            dynamo=False,
        )
    return path


def write_package(folder: Path, content: dict[str, Any], *, checksums: bool = True) -> ModelPackage:
    """Write ``content`` as ``model.yaml`` in ``folder`` (weights' checksums filled in)."""
    content = copy.deepcopy(content)
    network = content["network"]
    if checksums and network.get("path") and (folder / network["path"]).is_file():
        network["sha256"] = sha256_of(folder / network["path"])
    onnx = network.get("onnx")
    if checksums and onnx and (folder / onnx["path"]).is_file():
        onnx["sha256"] = sha256_of(folder / onnx["path"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.yaml").write_text(yaml.safe_dump(content, sort_keys=False))
    return load_package(folder)


def benchmark_unet() -> torch.nn.Module:
    """The benchmark's network (``network.entry`` of its package): a seeded random MONAI
    U-Net, 16-32-64-128 channels, three down-sampling levels, two classes."""
    from monai.networks.nets.unet import UNet  # noqa: PLC0415 -- test-only dependency

    torch.manual_seed(0)
    net: torch.nn.Module = UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        channels=(16, 32, 64, 128),
        strides=(2, 2, 2),
        num_res_units=1,
    )
    return net.eval()
