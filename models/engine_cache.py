"""The TensorRT engine cache: engines keyed by everything that makes them valid, built once.

An engine is only valid for one ONNX graph, precision, set of optimisation profiles,
TensorRT version and GPU architecture (compute capability). :class:`EngineKey` holds them
and its :meth:`~EngineKey.digest` names the file, so an engine is never loaded where it
does not belong: a changed model, TensorRT upgrade or different GPU simply gets a new
engine. Engines are built at worker start or by ``pacs-ai models build-engine``, never
inside a job, under an exclusive file lock (``fcntl.flock``) so that several workers
starting together on one machine build each engine once: the first takes the lock and
builds, the others wait and then load its file. Files are written with
:func:`core.files.atomic_write`, so a crash mid-build leaves no half engine. The TensorRT
timing cache, shared by all engines for one TensorRT version and GPU architecture, lives
beside them and is updated under its own lock (and written the same way).

Layout: ``<root>/<model id>/<digest>.engine`` with ``<digest>.json`` (the key, readable),
``<root>/timing-trt<version>-sm<cc>.cache``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.files import atomic_write

if TYPE_CHECKING:
    from core.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProfileShapes:
    """One input's optimisation profile: min / opt / max full shapes (batch included)."""

    input_name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class EngineKey:
    """What an engine is valid for; two equal keys may share one engine."""

    model_id: str
    #: SHA-256 of the ONNX file the engine is built from (before any FP16 rewrite).
    onnx_sha256: str
    precision: str
    profiles: tuple[ProfileShapes, ...]
    tensorrt_version: str
    #: ``"8.9"`` for compute capability 8.9 (the GPU architecture, not the model).
    compute_capability: str
    #: Version of the FP16 graph rewrite (0 for fp32 engines).
    converter_version: int = 0
    workspace_mib: int = 4096

    def digest(self) -> str:
        """Stable hexadecimal name of the engine (a SHA-256 over every field)."""
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]


class EngineCache:
    """Engines on disk under ``root``, built under a file lock when missing."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def engine_path(self, key: EngineKey) -> Path:
        return self.root / key.model_id / f"{key.digest()}.engine"

    def timing_cache_path(self, key: EngineKey) -> Path:
        return self.root / (
            f"timing-trt{key.tensorrt_version}-sm{key.compute_capability.replace('.', '')}.cache"
        )

    def lookup(self, key: EngineKey) -> Path | None:
        """The engine file for ``key`` if it has been built; ``None`` otherwise."""
        path = self.engine_path(key)
        return path if path.is_file() else None

    def get_or_build(self, key: EngineKey, build: Callable[[], bytes]) -> Path:
        """The engine for ``key``, calling ``build`` (under the lock) when it is missing.

        Several processes may call this at once for one key: ``build`` runs in one of
        them; the others wait for the lock and find the file.

        Raises:
            Whatever ``build`` raises (nothing is written then).
        """
        path = self.engine_path(key)
        if path.is_file():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.with_suffix(".lock")):
            if path.is_file():
                logger.info("engine %s was built by another process meanwhile", path.name)
                return path
            started = time.perf_counter()
            logger.info("building TensorRT engine for %s (%s)", key.model_id, key.precision)
            data = build()
            atomic_write(path.with_suffix(".json"), json.dumps(asdict(key), indent=2).encode())
            atomic_write(path, data)
            logger.info(
                "engine %s built in %.1f s (%d MiB)",
                path,
                time.perf_counter() - started,
                len(data) >> 20,
            )
        return path


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created) for the ``with`` body.

    ``flock`` locks are released by the kernel when the holder dies, so a worker killed
    mid-build never leaves the others waiting forever.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def default_engine_dir(settings: Settings) -> Path:
    """The engine cache folder of a deployment: ``worker.engine_cache_dir`` or
    ``data_dir/engines``."""
    return settings.worker.engine_cache_dir or settings.data_dir / "engines"
