"""The interface every inference backend implements (TensorRT, ONNX Runtime, PyTorch).

Tensors in and out are torch tensors on the backend's device: TensorRT binds their memory
directly, ONNX Runtime binds it through IO binding on a GPU (and shares it with numpy on
the CPU), PyTorch uses it as it is. Inputs are ``[N, ...]`` batches (N windows or slices).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


class BackendUnavailableError(RuntimeError):
    """This backend cannot run here (framework missing, no GPU, engine not built)."""


@dataclass(frozen=True)
class InputShapes:
    """The shapes the network will be called with, for engines built ahead of time.

    ``min``/``opt``/``max`` are full tensor shapes of the image input (batch included) in
    the network's layout; ``fixed`` when every call has the ``opt`` shape (window batches
    padded to full size), which also allows CUDA graph capture.
    """

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @property
    def fixed(self) -> bool:
        return self.min == self.opt == self.max


@dataclass(frozen=True)
class BackendOptions:
    """Where and how a backend opens: device, engine cache, and the expected shapes."""

    #: ``cpu`` or ``cuda:N``.
    device: str
    #: TensorRT engines (and ONNX Runtime's TensorRT EP cache) live here.
    engine_dir: Path | None = None
    #: May a missing TensorRT engine be built now? True at worker start and in
    #: ``pacs-ai models build-engine``; False inside a job (an engine is never built there).
    allow_build: bool = True
    #: Shapes of the image input, when the manifest fixes them (see ``InputShapes``).
    shapes: InputShapes | None = None
    #: On a GPU, may ONNX Runtime's CPU provider stand in when this onnxruntime has no GPU
    #: provider? Only once every backend of the manifest failed (:func:`open_backend`).
    cpu_stands_in: bool = False


@runtime_checkable
class Backend(Protocol):
    #: ``tensorrt``, ``onnxruntime`` or ``torch``.
    name: str
    #: ``fp32``, ``fp16`` or ``bf16``.
    precision: str
    #: ``cpu`` or ``cuda:N``.
    device: str

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the network once; inputs and outputs by tensor name."""
        ...

    def close(self) -> None:
        """Release the network and its device memory."""
        ...
