"""Backend selection: the first backend in the manifest's list that can run here.

A backend that cannot run (framework not installed, no GPU, no ONNX file, TensorRT engine
not built) is skipped for the next one in the list; the skipped ones are returned as
:class:`Fallback` records (the worker writes each as a ledger note) and the choice is
logged in one line naming what runs and what was skipped and why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from inference.backends.base import Backend, BackendOptions, BackendUnavailableError
from models.manifest import BackendSpec
from models.registry import ModelPackage

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Fallback:
    """A backend that was skipped, and why (recorded in the ledger and logs)."""

    backend: str
    precision: str
    reason: str


def _torch(package: ModelPackage, spec: BackendSpec, options: BackendOptions) -> Backend:
    try:
        from inference.backends.torch_backend import TorchBackend  # noqa: PLC0415
    except ImportError as exc:
        raise BackendUnavailableError(
            f"torch is not installed ({exc}); pip install 'pacs-ai[torch]'"
        ) from exc
    return TorchBackend(
        package, device=options.device, precision=spec.precision, compile_module=spec.compile
    )


def _onnxruntime(package: ModelPackage, spec: BackendSpec, options: BackendOptions) -> Backend:
    from inference.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: PLC0415

    providers: list[str] | None = (
        [str(p) for p in spec.execution_providers] if spec.execution_providers else None
    )
    return OnnxRuntimeBackend(
        package, options=options, precision=spec.precision, providers=providers
    )


def _tensorrt(package: ModelPackage, spec: BackendSpec, options: BackendOptions) -> Backend:
    from inference.backends.tensorrt_backend import TensorRTBackend  # noqa: PLC0415

    return TensorRTBackend(
        package, options=options, precision=spec.precision, cuda_graph=spec.cuda_graph
    )


_FACTORIES: dict[str, Callable[[ModelPackage, BackendSpec, BackendOptions], Backend]] = {
    "torch": _torch,
    "onnxruntime": _onnxruntime,
    "tensorrt": _tensorrt,
}


def backend_label(spec: BackendSpec) -> str:
    """``torch/fp32``, ``torch+compile/fp32``, ``onnxruntime/fp16``, ..."""
    return f"{spec.name}{'+compile' if spec.compile else ''}/{spec.precision}"


def open_backend(
    package: ModelPackage, *, options: BackendOptions
) -> tuple[Backend, list[Fallback]]:
    """Open the first backend of ``package``'s manifest that works with ``options``.

    Raises:
        BackendUnavailableError: none of the listed backends can run here (each reason given).
    """
    skipped: list[Fallback] = []
    for spec in package.manifest.backends:
        try:
            backend = _FACTORIES[spec.name](package, spec, options)
        except BackendUnavailableError as exc:
            name = f"{spec.name}{'+compile' if spec.compile else ''}"
            skipped.append(Fallback(name, spec.precision, str(exc)))
            continue
        if skipped:
            logger.warning(
                "model %s runs on %s on %s; skipped %s",
                package.id,
                backend_label(spec),
                options.device,
                "; ".join(f"{f.backend}/{f.precision} ({f.reason})" for f in skipped),
            )
        else:
            logger.info(
                "model %s runs on %s on %s", package.id, backend_label(spec), options.device
            )
        return backend, skipped
    reasons = "; ".join(f"{f.backend}/{f.precision}: {f.reason}" for f in skipped)
    raise BackendUnavailableError(f"model {package.id}: no backend can run here ({reasons})")
