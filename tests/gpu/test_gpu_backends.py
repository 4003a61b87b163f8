"""On an NVIDIA GPU: the pipeline on CUDA tensors, ONNX Runtime's CUDA provider, TensorRT.

Marked ``gpu``; every test skips where there is no CUDA device (or no TensorRT / no
onnxruntime-gpu). ``benchmarks/gpu-check`` runs them; docs/benchmarks.md says when they
last ran on a GPU and what was installed there.
"""

from __future__ import annotations

import dataclasses
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
from inference.volume import load_series
from models.engine_cache import EngineCache
from models.registry import BUILTIN_DIR, ModelPackage, load_package
from pacs_ai.phantom import write_chest_ct_series
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


def test_amp_fp16_on_the_gpu_gives_nearly_the_fp32_labels(cuda: str, weights: Path) -> None:
    fp32 = _package(weights, [{"name": "torch"}])
    fp16 = _package(weights, [{"name": "torch", "precision": "fp16"}])
    volume = synthetic_volume(fp32.manifest)

    full = ModelRunner(fp32, device=cuda).predict(volume)
    half = ModelRunner(fp16, device=cuda).predict(volume)

    assert half.precision == "fp16"
    assert full.labels is not None and half.labels is not None
    assert np.mean(full.labels != half.labels) <= 1e-2


def test_the_reused_pinned_upload_buffer_never_mixes_two_volumes(cuda: str, weights: Path) -> None:
    package = _package(weights, [{"name": "torch"}])
    first = synthetic_volume(package.manifest)
    second = dataclasses.replace(first, voxels=np.ascontiguousarray(first.voxels[:, :, ::-1]))
    runner = ModelRunner(package, device=cuda)

    before = runner.predict(first).labels
    other = runner.predict(second).labels
    again = runner.predict(first).labels
    on_cpu = ModelRunner(package, device="cpu").predict(second).labels

    assert before is not None and other is not None and again is not None
    assert np.array_equal(before, again)
    assert on_cpu is not None and np.mean(other != on_cpu) <= 1e-4


def test_the_built_in_ct_lungs_model_finds_the_same_lungs_on_the_gpu(
    cuda: str, tmp_path: Path
) -> None:
    write_chest_ct_series(tmp_path / "ct", slices=64, size=192)
    volume = load_series(sorted((tmp_path / "ct").glob("*.dcm")))
    package = load_package(BUILTIN_DIR / "ct_lungs")

    on_cpu = ModelRunner(package, device="cpu").predict(volume).labels
    on_gpu = ModelRunner(package, device=cuda).predict(volume).labels

    assert on_cpu is not None and on_gpu is not None and np.count_nonzero(on_cpu) > 0
    overlap = np.count_nonzero((on_cpu > 0) & (on_gpu > 0))
    dice = 2 * overlap / (np.count_nonzero(on_cpu) + np.count_nonzero(on_gpu))
    assert dice >= 0.999


def test_onnx_runtime_without_a_gpu_provider_runs_on_the_cpu_of_a_gpu_worker(
    cuda: str, weights: Path
) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA execution provider")
    package = _package(weights, [{"name": "onnxruntime"}])
    volume = synthetic_volume(package.manifest)

    ours = ModelRunner(package, device=cuda).predict(volume)
    expected = ModelRunner(_package(weights, [{"name": "torch"}]), device=cuda).predict(volume)

    assert (ours.backend, ours.device) == ("onnxruntime", "cpu")
    assert ours.labels is not None and expected.labels is not None
    assert np.mean(ours.labels != expected.labels) <= 1e-4
