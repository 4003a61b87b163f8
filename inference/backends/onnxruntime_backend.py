"""ONNX Runtime backend: the CPU, CUDA and TensorRT execution providers.

On the CPU, torch tensors are handed to ONNX Runtime as numpy views (no copy). On a GPU
the inputs are bound where they lie with IO binding, the CUDA execution provider runs on
torch's current CUDA stream (so no synchronisation is needed between the two), and the
outputs come back to torch through DLPack without leaving the device.

``precision: fp16`` runs the FP16 rewrite of the graph (:mod:`inference.onnx_fp16`); the
TensorRT execution provider then builds from that graph too (strongly typed, as TensorRT
11 requires) and caches its engines under the engine cache folder.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.utils.dlpack

from inference.backends.base import BackendOptions, BackendUnavailableError
from models.registry import ModelPackage

logger = logging.getLogger(__name__)

_PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(
        self,
        package: ModelPackage,
        *,
        options: BackendOptions,
        precision: str = "fp32",
        providers: list[str] | None = None,
    ) -> None:
        try:
            import onnxruntime as ort  # noqa: PLC0415 -- optional framework
        except ImportError as exc:
            raise BackendUnavailableError(
                f"onnxruntime is not installed ({exc}); pip install 'pacs-ai[onnx]'"
            ) from exc
        path = package.onnx_path
        if path is None:
            raise BackendUnavailableError(
                "onnxruntime: the package has no ONNX file (network.kind onnx, or network.onnx)"
            )
        if precision not in ("fp32", "fp16"):
            raise BackendUnavailableError(f"onnxruntime: {precision} is not offered")
        self.precision = precision
        self._package = package
        on_gpu = options.device.startswith("cuda")
        device_id = int(options.device.partition(":")[2] or 0) if on_gpu else 0
        wanted = providers or (["cuda", "cpu"] if on_gpu else ["cpu"])
        available = set(ort.get_available_providers())
        chosen = [name for name in wanted if _PROVIDERS[name] in available]
        gpu_providers = [name for name in chosen if name != "cpu"]
        if on_gpu and not gpu_providers and "cpu" in chosen and options.cpu_stands_in:
            # The CPU-only onnxruntime on a GPU worker (`pacs-ai[onnx]` installs it), and no
            # backend of the manifest could run on the GPU: the manifest allows the CPU, so
            # the model runs there rather than not at all, and its results say so (device
            # cpu). Seen on an H200 with onnxruntime 1.30.
            on_gpu = False
        elif on_gpu and not gpu_providers:
            raise BackendUnavailableError(
                f"onnxruntime: none of the execution providers {wanted} with a GPU is "
                f"available (this onnxruntime has {sorted(available)}); install onnxruntime-gpu"
            )
        if not on_gpu and "cpu" not in chosen:
            raise BackendUnavailableError(
                f"onnxruntime: the manifest asks for {wanted} and this worker runs on the CPU"
            )
        if not on_gpu:
            chosen = ["cpu"]
        self.device = options.device if on_gpu else "cpu"
        self.providers = tuple(chosen)
        provider_list: list[tuple[str, dict[str, Any]]] = []
        for name in chosen:
            provider_list.append(
                (_PROVIDERS[name], self._provider_options(name, device_id, options.engine_dir))
            )
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        model: str | bytes = str(path)
        if precision == "fp16":
            model = _fp16_bytes(path)
        try:
            self._session = ort.InferenceSession(
                model, sess_options=session_options, providers=provider_list
            )
        except Exception as exc:
            raise BackendUnavailableError(f"onnxruntime: cannot open {path.name}: {exc}") from exc
        network = package.manifest.network
        inputs = [i.name for i in self._session.get_inputs()]
        outputs = [o.name for o in self._session.get_outputs()]
        if network.input_name not in inputs or network.output_name not in outputs:
            raise BackendUnavailableError(
                f"onnxruntime: {path.name} has inputs {inputs} and outputs {outputs}; the "
                f"manifest names input {network.input_name!r} and output {network.output_name!r}"
            )
        self._inputs = inputs
        # Graphs exported with a batch of exactly one (mindgrab, deepbrain) get window
        # batches one window at a time.
        batch = self._session.get_inputs()[inputs.index(network.input_name)].shape[0]
        self._single = batch == 1
        self._device_id = device_id
        self._on_gpu = on_gpu

    def _provider_options(
        self, name: str, device_id: int, engine_dir: Path | None
    ) -> dict[str, Any]:
        if name == "cuda":
            options: dict[str, Any] = {"device_id": device_id}
            if torch.cuda.is_available():
                # One stream with torch: no synchronisation between the two is needed.
                options["user_compute_stream"] = str(torch.cuda.current_stream().cuda_stream)
                options["has_user_compute_stream"] = "1"
            return options
        if name == "tensorrt":
            options = {"device_id": device_id, "trt_engine_cache_enable": True}
            if engine_dir is not None:
                cache = engine_dir / "onnxruntime-trt" / self._package.id
                cache.mkdir(parents=True, exist_ok=True)
                options["trt_engine_cache_path"] = str(cache)
                options["trt_timing_cache_enable"] = True
            return options
        return {}

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        network = self._package.manifest.network
        image = inputs[network.input_name]
        if self._single and image.shape[0] > 1:
            parts = [
                self._run_once({**inputs, network.input_name: image[i : i + 1]})
                for i in range(image.shape[0])
            ]
            return {network.output_name: torch.cat(parts)}
        return {network.output_name: self._run_once(inputs)}

    def _run_once(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        network = self._package.manifest.network
        if not self._on_gpu:
            feeds = {
                name: inputs[name].detach().to("cpu", torch.float32).contiguous().numpy()
                for name in self._inputs
            }
            (output,) = self._session.run([network.output_name], feeds)
            # Back where the windows came from (the GPU, when the CPU provider stands in).
            return torch.from_numpy(output).to(inputs[network.input_name].device)
        binding = self._session.io_binding()
        kept = []
        for name in self._inputs:
            tensor = inputs[name].detach().to(self.device, torch.float32).contiguous()
            kept.append(tensor)
            binding.bind_input(
                name=name,
                device_type="cuda",
                device_id=self._device_id,
                element_type=_numpy_float32(),
                shape=tuple(tensor.shape),
                buffer_ptr=tensor.data_ptr(),
            )
        binding.bind_output(network.output_name, "cuda", self._device_id)
        self._session.run_with_iobinding(binding)
        (value,) = binding.get_outputs()
        return torch.utils.dlpack.from_dlpack(value)

    def close(self) -> None:
        del self._session


def _numpy_float32() -> Any:
    import numpy as np  # noqa: PLC0415

    return np.float32


def _fp16_bytes(path: Path) -> bytes:
    try:
        import onnx  # noqa: PLC0415 -- optional dependency
    except ImportError as exc:
        raise BackendUnavailableError(
            f"fp16 needs the onnx package to rewrite the graph ({exc}); pip install 'pacs-ai[onnx]'"
        ) from exc
    from inference.onnx_fp16 import Fp16ConversionError, convert_to_fp16  # noqa: PLC0415

    try:
        return bytes(convert_to_fp16(onnx.load(str(path))).SerializeToString())
    except Fp16ConversionError as exc:
        raise BackendUnavailableError(f"fp16: {exc}") from exc
