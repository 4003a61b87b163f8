"""On an NVIDIA GPU: the pipeline on CUDA tensors, ONNX Runtime's CUDA provider, TensorRT.

Marked ``gpu``; every test skips where there is no CUDA device (or no TensorRT / no
onnxruntime-gpu). They have not run yet: no GPU was available where this was written.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from inference.backends import open_backend
from inference.backends.base import BackendOptions
from inference.pipeline import ModelRunner
from inference.verify import synthetic_volume
from models.engine_cache import EngineCache
from models.registry import ModelPackage
from tests.support.models import export_onnx, manifest, random_unet, script, write_package

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda() -> str:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return "cuda:0"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("unet")
    network = random_unet(seed=11)
    script(network, folder / "model.ts")
    export_onnx(network, folder / "model.onnx", example=torch.randn(1, 1, 32, 32, 32))
    return folder


def _package(weights: Path, backends: list[dict[str, object]]) -> ModelPackage:
    return write_package(
        weights,
        manifest(
            network={"kind": "torchscript", "path": "model.ts", "onnx": {"path": "model.onnx"}},
            backends=backends,
            inference={"mode": "sliding_window", "roi_size": [32, 32, 32], "batch_size": 4},
        ),
    )


def test_the_pipeline_on_the_gpu_gives_the_cpu_labels(cuda: str, weights: Path) -> None:
    package = _package(weights, [{"name": "torch"}])
    volume = synthetic_volume(package.manifest)

    on_cpu = ModelRunner(package, device="cpu").predict(volume)
    on_gpu = ModelRunner(package, device=cuda).predict(volume)

    assert on_gpu.device == cuda
    assert on_cpu.labels is not None and on_gpu.labels is not None
    assert np.mean(on_cpu.labels != on_gpu.labels) <= 1e-4


def test_onnx_runtime_cuda_matches_pytorch_on_the_gpu(cuda: str, weights: Path) -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without the CUDA execution provider (install onnxruntime-gpu)")
    options = BackendOptions(device=cuda)
    torch_backend, _ = open_backend(_package(weights, [{"name": "torch"}]), options=options)
    ort_backend, _ = open_backend(_package(weights, [{"name": "onnxruntime"}]), options=options)
    batch = torch.randn(4, 1, 32, 32, 32, device=cuda)

    expected = torch_backend.run({"image": batch})["output"]
    ours = ort_backend.run({"image": batch})["output"]

    assert ours.device == batch.device
    assert float((ours - expected).abs().max()) <= 1e-3


@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-3), ("fp16", 5e-2)])
def test_tensorrt_engines_are_built_once_and_match_pytorch(
    cuda: str, weights: Path, tmp_path: Path, precision: str, tolerance: float
) -> None:
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("tensorrt is not installed (pip install 'pacs-ai[tensorrt]')")
    package = _package(weights, [{"name": "tensorrt", "precision": precision}])
    runner = ModelRunner(package, device=cuda, engine_dir=tmp_path / "engines")
    engines = list((tmp_path / "engines").rglob("*.engine"))
    again = ModelRunner(package, device=cuda, engine_dir=tmp_path / "engines", allow_build=False)
    reference, _ = open_backend(
        _package(weights, [{"name": "torch"}]), options=BackendOptions(device=cuda)
    )
    batch = torch.randn(3, 1, 32, 32, 32, device=cuda)  # short batch: padded to 4 inside

    first = runner.backend.run({"image": batch})["output"]
    replayed = runner.backend.run({"image": batch})["output"]  # CUDA graph replay
    expected = reference.run({"image": batch})["output"]

    assert runner.backend.name == again.backend.name == "tensorrt"
    assert len(engines) == 1 and EngineCache(tmp_path / "engines").root.is_dir()
    assert torch.equal(first, replayed)
    assert float((first - expected).abs().max()) <= tolerance * float(expected.abs().max())
