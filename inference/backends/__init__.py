"""Backend selection: the first backend in the manifest's list that can run here.

A backend that cannot run (framework not installed, no GPU, no ONNX file, TensorRT engine
not built) is skipped for the next one in the list; the skipped ones are returned as
:class:`Fallback` records (the worker writes each as a ledger note) and the choice is
logged in one line naming what runs and what was skipped and why.
"""

from __future__ import annotations

import dataclasses
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
    opened = _first_that_opens(package, options, skipped)
    if opened is None and options.device.startswith("cuda"):
        # Last resort on a GPU worker: ONNX Runtime's CPU provider, where this onnxruntime
        # has no GPU provider (the CPU-only package) and the manifest allows the CPU. Only
        # now, so that a later backend of the list that runs on the GPU always wins.
        opened = _first_that_opens(
            package,
            dataclasses.replace(options, cpu_stands_in=True),
            [],
            only=("onnxruntime",),
        )
        if opened is not None:
            backend, spec = opened
            logger.warning(
                "model %s runs on %s on the CPU of this GPU worker: no backend of its "
                "manifest can use the GPU here (%s); pip install onnxruntime-gpu",
                package.id,
                backend_label(spec),
                "; ".join(f"{f.backend}/{f.precision}: {f.reason}" for f in skipped),
            )
            return backend, skipped
    if opened is None:
        reasons = "; ".join(f"{f.backend}/{f.precision}: {f.reason}" for f in skipped)
        raise BackendUnavailableError(f"model {package.id}: no backend can run here ({reasons})")
    backend, spec = opened
    if skipped:
        logger.warning(
            "model %s runs on %s on %s; skipped %s",
            package.id,
            backend_label(spec),
            options.device,
            "; ".join(f"{f.backend}/{f.precision} ({f.reason})" for f in skipped),
        )
    else:
        logger.info("model %s runs on %s on %s", package.id, backend_label(spec), options.device)
    return backend, skipped


def _first_that_opens(
    package: ModelPackage,
    options: BackendOptions,
    skipped: list[Fallback],
    *,
    only: tuple[str, ...] | None = None,
) -> tuple[Backend, BackendSpec] | None:
    """The first backend of the manifest (of the names in ``only``) that opens with
    ``options``; each that does not is added to ``skipped``."""
    for spec in package.manifest.backends:
        if only is not None and spec.name not in only:
            continue
        try:
            backend = _FACTORIES[spec.name](package, spec, options)
        except BackendUnavailableError as exc:
            name = f"{spec.name}{'+compile' if spec.compile else ''}"
            skipped.append(Fallback(name, spec.precision, str(exc)))
            continue
        return backend, spec
    return None
