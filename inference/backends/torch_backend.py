"""PyTorch backend: TorchScript files and networks defined in Python (built-in models).

Eager by default; ``compile: true`` in the manifest's backend entry runs the module
through ``torch.compile`` (compiled on the first call, which the worker's warm-up makes).
fp16/bf16 run under autocast on a GPU; on the CPU only fp32 is offered.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from inference.backends.base import BackendUnavailableError
from models.registry import ModelPackage

logger = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchBackend:
    name = "torch"

    def __init__(
        self,
        package: ModelPackage,
        *,
        device: str,
        precision: str = "fp32",
        compile_module: bool = False,
    ) -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError(f"torch: {device} requested but CUDA is not available")
        if precision != "fp32" and device == "cpu":
            raise BackendUnavailableError(f"torch: {precision} is only offered on a GPU")
        self.device = device
        self.precision = precision
        self.compiled = compile_module
        self._package = package
        self._module = self._load().to(device).eval()
        self._dtype = _DTYPES[precision]
        self._call: Callable[..., Any] = self._module
        if compile_module:
            if package.manifest.network.kind == "torchscript":
                raise BackendUnavailableError(
                    "torch: torch.compile does not take TorchScript modules; drop 'compile'"
                )
            self._call = torch.compile(self._module)

    def _load(self) -> torch.nn.Module:
        network = self._package.manifest.network
        if network.kind == "python":
            assert network.entry is not None  # guaranteed by the manifest schema
            module_name, _, factory_name = network.entry.partition(":")
            try:
                factory = getattr(importlib.import_module(module_name), factory_name)
            except (ImportError, AttributeError) as exc:
                raise BackendUnavailableError(
                    f"torch: cannot import network entry {network.entry!r}: {exc}"
                ) from exc
            module: Any = factory()
            if not isinstance(module, torch.nn.Module):
                raise BackendUnavailableError(
                    f"torch: {network.entry} returned {type(module).__name__}, not a torch module"
                )
            return module
        if network.kind == "torchscript":
            path = self._package.weights_path
            assert path is not None
            try:
                with warnings.catch_warnings():
                    # torch 2.9+ deprecates TorchScript in favour of torch.export, but
                    # MONAI bundles ship TorchScript: loading it is what users need.
                    warnings.filterwarnings(
                        "ignore",
                        message=".*torch.jit.load.* is deprecated",
                        category=DeprecationWarning,
                    )
                    loaded: torch.nn.Module = torch.jit.load(  # type: ignore[no-untyped-call]
                        str(path), map_location="cpu"
                    )
            except RuntimeError as exc:
                raise BackendUnavailableError(
                    f"torch: cannot load TorchScript {path.name}: {exc}"
                ) from exc
            return loaded
        raise BackendUnavailableError(
            "torch: cannot run an ONNX network (the onnxruntime or tensorrt backend can)"
        )

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        network = self._package.manifest.network
        args = [inputs[network.input_name].to(self.device, torch.float32)]
        if network.spacing_input_name is not None:
            args.append(inputs[network.spacing_input_name].to(self.device, torch.float32))
        try:
            output = self._forward(self._call, args)
        except Exception as exc:  # torch.compile fails in many ways
            if not self.compiled:
                raise
            # A compiler failure (Inductor codegen, graph breaks it cannot handle) must
            # not fail jobs: the module runs eagerly from now on, said once in the log.
            logger.warning(
                "model %s: torch.compile failed (%s: %s); running eagerly from now on",
                self._package.id,
                type(exc).__name__,
                str(exc).splitlines()[0][:200],
            )
            self.compiled = False
            self._call = self._module
            output = self._forward(self._call, args)
        if isinstance(output, dict):
            return {str(k): v for k, v in output.items()}
        if isinstance(output, tuple | list):
            output = output[0]
        return {network.output_name: output}

    def _forward(self, call: Callable[..., Any], args: list[torch.Tensor]) -> Any:
        with torch.inference_mode():
            if self.precision == "fp32":
                return call(*args)
            with torch.autocast(device_type="cuda", dtype=self._dtype):
                return call(*args)

    def close(self) -> None:
        del self._module
        del self._call
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
