"""Building TensorRT engines ahead of jobs: ``pacs-ai models build-engine`` and worker start.

For every package whose manifest lists the ``tensorrt`` backend, the engine for this GPU
and TensorRT version is built into the engine cache (:mod:`models.engine_cache`) under
its file lock, unless it is there already.
"""

from __future__ import annotations

import logging

from core.errors import ConfigError
from core.settings import Settings
from inference.backends.base import BackendOptions, BackendUnavailableError
from inference.pipeline import network_input_shapes
from models.engine_cache import default_engine_dir
from models.registry import MANIFEST_NAME, ModelPackage

logger = logging.getLogger(__name__)


def build_engines(packages: list[ModelPackage], *, settings: Settings, device: str) -> list[str]:
    """Build (or find) the TensorRT engine of each package that lists the backend.

    Returns one line per package saying what was done.

    Raises:
        ConfigError: an engine cannot be built (TensorRT missing, no GPU, graph refused),
            naming each package and reason.
    """
    from inference.backends.tensorrt_backend import TensorRTBackend  # noqa: PLC0415

    lines: list[str] = []
    problems: list[str] = []
    engine_dir = default_engine_dir(settings)
    for package in packages:
        specs = [b for b in package.manifest.backends if b.name == "tensorrt"]
        if not specs:
            lines.append(f"{package.id}: no tensorrt backend in its manifest; nothing to build")
            continue
        for spec in specs:
            options = BackendOptions(
                device=device,
                engine_dir=engine_dir,
                allow_build=True,
                shapes=network_input_shapes(package.manifest),
            )
            try:
                backend = TensorRTBackend(
                    package, options=options, precision=spec.precision, cuda_graph=False
                )
            except BackendUnavailableError as exc:
                problems.append(f"{package.id} ({package.folder / MANIFEST_NAME}): {exc}")
                continue
            backend.close()
            lines.append(f"{package.id}: tensorrt/{spec.precision} engine ready in {engine_dir}")
    if problems:
        raise ConfigError("build-engine", problems)
    return lines
