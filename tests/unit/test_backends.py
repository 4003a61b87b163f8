"""Backends: ONNX Runtime and PyTorch agree on the same weights; unavailable ones fall back.

The network is a randomly initialised MONAI 3D U-Net saved as TorchScript (for PyTorch)
and exported to ONNX (for ONNX Runtime and TensorRT) in one package.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from inference.backends import open_backend
from inference.backends.base import BackendOptions, BackendUnavailableError
from inference.onnx_fp16 import convert_to_fp16, is_fp16_graph
from inference.pipeline import ModelRunner
from inference.verify import synthetic_volume
from models.registry import ModelPackage
from tests.support.models import export_onnx, manifest, random_unet, script, write_package

CPU = BackendOptions(device="cpu")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("unet")
    network = random_unet(seed=7)
    script(network, folder / "model.ts")
    export_onnx(network, folder / "model.onnx", example=torch.randn(1, 1, 32, 32, 32))
    return folder


def _package(weights: Path, backends: list[dict[str, object]], **overrides: object) -> ModelPackage:
    content = manifest(
        network={
            "kind": "torchscript",
            "path": "model.ts",
            "onnx": {"path": "model.onnx"},
            "input_name": "image",
            "output_name": "output",
        },
        backends=backends,
        inference={"mode": "sliding_window", "roi_size": [32, 32, 32], "batch_size": 2},
        **overrides,
    )
    return write_package(weights, content)


def test_onnx_runtime_and_pytorch_give_the_same_logits_within_1e_4(weights: Path) -> None:
    package = _package(weights, [{"name": "torch"}, {"name": "onnxruntime"}])
    torch_backend, _ = open_backend(package, options=CPU)
    only_ort = _package(weights, [{"name": "onnxruntime"}])
    ort_backend, _ = open_backend(only_ort, options=CPU)
    batch = torch.randn(3, 1, 32, 48, 32, generator=torch.Generator().manual_seed(2))

    expected = torch_backend.run({"image": batch})["output"]
    ours = ort_backend.run({"image": batch})["output"]

    assert (torch_backend.name, ort_backend.name) == ("torch", "onnxruntime")
    assert ours.shape == expected.shape == (3, 2, 32, 48, 32)
    assert float((ours - expected).abs().max()) <= 1e-4


def test_the_whole_pipeline_gives_the_same_labels_on_both_backends(weights: Path) -> None:
    volume = synthetic_volume(_package(weights, [{"name": "torch"}]).manifest)
    labels = {}
    for name in ("torch", "onnxruntime"):
        runner = ModelRunner(_package(weights, [{"name": name}]), device="cpu")
        prediction = runner.predict(volume)
        assert prediction.backend == name
        assert prediction.labels is not None
        labels[name] = prediction.labels

    assert np.array_equal(labels["torch"], labels["onnxruntime"])


def test_an_unavailable_backend_falls_back_with_one_clear_log_line(
    weights: Path, caplog: pytest.LogCaptureFixture
) -> None:
    package = _package(
        weights, [{"name": "tensorrt", "precision": "fp16"}, {"name": "onnxruntime"}]
    )

    with caplog.at_level(logging.INFO, logger="inference.backends"):
        backend, fallbacks = open_backend(package, options=CPU)

    assert backend.name == "onnxruntime"
    assert [(f.backend, f.precision) for f in fallbacks] == [("tensorrt", "fp16")]
    assert "pacs-ai[tensorrt]" in fallbacks[0].reason or "NVIDIA GPU" in fallbacks[0].reason
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert lines[0].startswith(
        "model test-model runs on onnxruntime/fp32 on cpu; skipped tensorrt/fp16"
    )


def test_a_runner_records_its_fallbacks_for_the_ledger_and_the_sr(weights: Path) -> None:
    package = _package(weights, [{"name": "torch", "precision": "fp16"}, {"name": "onnxruntime"}])

    prediction = ModelRunner(package, device="cpu").predict(synthetic_volume(package.manifest))

    assert (prediction.backend, prediction.precision) == ("onnxruntime", "fp32")
    assert prediction.fallbacks[0].backend == "torch"
    assert "only offered on a GPU" in prediction.fallbacks[0].reason


def test_no_backend_that_can_run_is_an_error_naming_each_reason(tmp_path: Path) -> None:
    export_onnx(random_unet(), tmp_path / "model.onnx", example=torch.randn(1, 1, 16, 16, 16))
    package = write_package(tmp_path, manifest(backends=[{"name": "torch"}, {"name": "tensorrt"}]))

    with pytest.raises(BackendUnavailableError, match="no backend can run here") as caught:
        open_backend(package, options=CPU)

    assert "torch/fp32: torch: cannot run an ONNX network" in str(caught.value)
    assert "tensorrt/fp32: " in str(caught.value)


def test_fp16_is_written_into_the_graph_with_float32_at_its_boundary(weights: Path) -> None:
    original = onnx.load(str(weights / "model.onnx"))

    half = convert_to_fp16(original)

    assert is_fp16_graph(half)
    assert not is_fp16_graph(original)
    casts = [n for n in half.graph.node if n.op_type == "Cast"]
    assert casts[0].input[0] == "image" and casts[-1].output[0] == "output"
    weights_types = {i.data_type for i in half.graph.initializer if i.data_type in (1, 10)}
    assert weights_types == {onnx.TensorProto.FLOAT16}
    x = np.random.default_rng(0).normal(size=(1, 1, 32, 32, 32)).astype(np.float32)
    full = ort.InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"])
    reduced = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = full.run(None, {"image": x})[0]
    ours = reduced.run(None, {"image": x})[0]
    assert ours.dtype == np.float32
    assert np.abs(ours - expected).max() <= 0.05 * np.abs(expected).max()


def test_onnx_runtime_runs_the_fp16_graph_when_asked(weights: Path) -> None:
    package = _package(weights, [{"name": "onnxruntime", "precision": "fp16"}])

    backend, _ = open_backend(package, options=CPU)
    out = backend.run({"image": torch.randn(1, 1, 32, 32, 32)})["output"]

    assert backend.precision == "fp16"
    assert out.dtype == torch.float32 and out.shape == (1, 2, 32, 32, 32)


def test_on_a_gpu_worker_the_cpu_provider_stands_in_only_when_nothing_can_use_the_gpu(
    weights: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if torch.cuda.is_available() or "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("needs a machine where neither torch nor onnxruntime can use a GPU")
    package = _package(weights, [{"name": "onnxruntime"}, {"name": "torch"}])

    with caplog.at_level(logging.INFO, logger="inference.backends"):
        backend, fallbacks = open_backend(package, options=BackendOptions(device="cuda:0"))

    assert (backend.name, backend.device) == ("onnxruntime", "cpu")
    # Both were tried on the GPU first, in the manifest's order, and are recorded.
    assert [f.backend for f in fallbacks] == ["onnxruntime", "torch"]
    assert "install onnxruntime-gpu" in fallbacks[0].reason
    [line] = [r.getMessage() for r in caplog.records]
    assert "on the CPU of this GPU worker" in line and "pip install onnxruntime-gpu" in line
    only_gpu = _package(weights, [{"name": "onnxruntime", "execution_providers": ["cuda"]}])
    with pytest.raises(BackendUnavailableError, match="no backend can run here"):
        open_backend(only_gpu, options=BackendOptions(device="cuda:0"))
