"""Checking a model package before it serves: schema, weights checksum, and a dry run.

``pacs-ai models verify`` and every worker at start-up use :func:`verify_package`: the
manifest must validate, every weights file must be present with the checksum the manifest
gives, and the model must run end to end (preprocessing, network, postprocessing) on a
small synthetic volume on the backend it would use, producing labels the manifest
declares (or one probability per class). A worker refuses to start with a package that
fails, naming the package and each problem.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import ConfigError, InvalidInputError
from inference.backends.base import BackendUnavailableError
from inference.volume import Volume
from models.manifest import ModelManifest, SlidingWindowSpec
from models.registry import MANIFEST_NAME, ModelPackage, load_package

logger = logging.getLogger(__name__)

_SYNTHETIC_UID = "2.25.1"


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify_package`: ``problems`` empty means it passed."""

    model_id: str
    folder: Path
    problems: tuple[str, ...]
    backend: str = ""
    precision: str = ""
    fallbacks: tuple[str, ...] = ()
    seconds: float = 0.0
    details: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def synthetic_volume(manifest: ModelManifest) -> Volume:
    """A small volume the model accepts: a bright block in a dark field, 1 mm voxels.

    Large enough for the manifest's minimum slices and (3D) at least half a window.
    """
    inference = manifest.inference
    base = 32
    if isinstance(inference, SlidingWindowSpec):
        base = max(base, *(max(v // 2, 1) for v in inference.roi_size))
    if manifest.accepts.dims == 2:
        shape = (1, base, base)
    else:
        shape = (max(manifest.accepts.min_slices, base), base, base)
    modality = manifest.accepts.modalities[0]
    low, high = (-1000.0, 40.0) if modality == "CT" else (0.0, 100.0)
    voxels = np.full(shape, low, dtype=np.float32)
    z, y, x = shape
    voxels[z // 4 : max(z // 4 + 1, 3 * z // 4), y // 4 : 3 * y // 4, x // 4 : 3 * x // 4] = high
    return Volume(
        voxels=voxels,
        spacing=(1.0, 1.0, 1.0),
        origin=(0.0, 0.0, 0.0),
        direction=np.eye(3),
        source_headers=(),
        frame_of_reference_uid=_SYNTHETIC_UID,
        study_instance_uid=_SYNTHETIC_UID,
        series_instance_uid=_SYNTHETIC_UID,
        modality=modality,
    )


def verify_package(
    package_or_folder: ModelPackage | Path,
    *,
    device: str = "cpu",
    engine_dir: Path | None = None,
    allow_build: bool = True,
) -> VerifyReport:
    """Check schema, weights checksums and a dry run of one package; never raises for
    problems with the package (they are in the report)."""
    from inference.pipeline import ModelRunner  # noqa: PLC0415 -- imports torch

    started = time.perf_counter()
    if isinstance(package_or_folder, Path):
        folder = package_or_folder
        try:
            package = load_package(folder)
        except ConfigError as exc:
            return VerifyReport(model_id=folder.name, folder=folder, problems=exc.problems)
    else:
        package = package_or_folder
        folder = package.folder
        from models.registry import weights_problems  # noqa: PLC0415

        problems = weights_problems(package)
        if problems:
            return VerifyReport(model_id=package.id, folder=folder, problems=tuple(problems))
    try:
        runner = ModelRunner(package, device=device, engine_dir=engine_dir, allow_build=allow_build)
    except BackendUnavailableError as exc:
        return VerifyReport(model_id=package.id, folder=folder, problems=(f"backends: {exc}",))
    try:
        prediction = runner.predict(synthetic_volume(package.manifest))
    except (InvalidInputError, RuntimeError, ValueError) as exc:
        return VerifyReport(
            model_id=package.id,
            folder=folder,
            backend=runner.backend.name,
            precision=runner.backend.precision,
            problems=(f"dry run on {runner.backend.name}: {type(exc).__name__}: {exc}",),
        )
    finally:
        runner.close()
    details: dict[str, object] = {"timings": prediction.timings}
    if prediction.classes:
        details["probabilities"] = {c.spec.name: c.probability for c in prediction.classes}
    return VerifyReport(
        model_id=package.id,
        folder=folder,
        problems=(),
        backend=prediction.backend,
        precision=prediction.precision,
        fallbacks=tuple(f"{f.backend}/{f.precision}: {f.reason}" for f in prediction.fallbacks),
        seconds=time.perf_counter() - started,
        details=details,
    )


def refuse_broken(reports: list[VerifyReport]) -> None:
    """Raise one error listing every package that failed (nothing when all passed).

    Raises:
        ConfigError: naming each broken package's manifest and its problems.
    """
    broken = [r for r in reports if not r.ok]
    if not broken:
        return
    lines = [f"{r.model_id} ({r.folder / MANIFEST_NAME}): {p}" for r in broken for p in r.problems]
    raise ConfigError("model packages", lines)
