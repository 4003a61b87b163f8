"""Model packages: find them, validate them, look them up by id.

A package is a folder with ``model.yaml`` (see :mod:`models.manifest`) and, for learned
models, its weights. Built-in packages live in ``models/builtin/``; deployments add their
own folders with ``model_dirs`` in the configuration. Loading a package validates its
manifest and, when it names one, its weights file and checksum; it imports no framework.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from core.errors import ConfigError, PacsAiError
from core.validation import describe
from models.manifest import ModelManifest, WeightsFile

logger = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
#: Example packages (not discovered unless listed in ``model_dirs``).
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
_DEFAULT_SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
MANIFEST_NAME = "model.yaml"


class UnknownModelError(PacsAiError):
    """No package with this model id is installed."""


@dataclass(frozen=True, slots=True)
class ModelPackage:
    manifest: ModelManifest
    folder: Path

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def weights_path(self) -> Path | None:
        """The weights file, resolved against the package folder (``None`` for python nets)."""
        if self.manifest.network.path is None:
            return None
        return self.resolve(self.manifest.network.path)

    @property
    def onnx_path(self) -> Path | None:
        """The network's ONNX file (its weights, or its ONNX export); ``None`` if none."""
        onnx = self.manifest.onnx_file
        return None if onnx is None else self.resolve(onnx.path)

    def resolve(self, path: str) -> Path:
        """A manifest path: ``$VARIABLES`` and ``~`` expanded, relative to the package folder.

        ``$PACS_AI_SHARED_DATA`` defaults to ``../shared/data`` beside the repository, where
        the tests' real material lives (see tests/conftest.py).
        """
        variables = dict(os.environ)
        variables.setdefault("PACS_AI_SHARED_DATA", str(_DEFAULT_SHARED_DATA))
        expanded = _expand(path, variables)
        resolved = Path(expanded).expanduser()
        return resolved if resolved.is_absolute() else self.folder / resolved


def load_package(folder: Path, *, check_weights: bool = True) -> ModelPackage:
    """Read and validate the package in ``folder``.

    Raises:
        ConfigError: every problem with the manifest (and weights) at once, naming keys.
    """
    manifest_path = folder / MANIFEST_NAME
    source = str(manifest_path)
    try:
        raw = yaml.safe_load(manifest_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(source, [f"cannot read the manifest: {exc.strerror}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from exc
    if not isinstance(raw, dict):
        raise ConfigError(source, ["the manifest must be a mapping (id: ..., version: ...)"])
    try:
        manifest = ModelManifest.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, describe(exc, ModelManifest)) from None
    package = ModelPackage(manifest=manifest, folder=folder.resolve())
    if check_weights:
        problems = weights_problems(package)
        if problems:
            raise ConfigError(source, problems)
    return package


def weights_problems(package: ModelPackage) -> list[str]:
    """What is wrong with the package's weights files (missing, checksum); empty if fine."""
    network = package.manifest.network
    problems: list[str] = []
    if network.path is not None:
        problems += _file_problems(
            package, WeightsFile(path=network.path, sha256=network.sha256), "network"
        )
    if network.onnx is not None:
        problems += _file_problems(package, network.onnx, "network.onnx")
    return problems


def _file_problems(package: ModelPackage, weights: WeightsFile, key: str) -> list[str]:
    path = package.resolve(weights.path)
    if not path.is_file():
        return [f"{key}.path: weights file {path} not found"]
    actual = sha256_of(path)
    if weights.sha256 is None:
        return [f"{key}.sha256: missing; the file's checksum is {actual}"]
    if actual != weights.sha256:
        return [
            f"{key}.sha256: {path.name} has checksum {actual}, the manifest says "
            f"{weights.sha256}; the file changed or the manifest is stale"
        ]
    return []


_VARIABLE_RE = re.compile(r"\$(?:(\w+)|\{(\w+)\})")


def _expand(path: str, variables: dict[str, str]) -> str:
    """``$NAME`` / ``${NAME}`` replaced from ``variables``; unknown ones stay as written."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, match.group(0))

    return _VARIABLE_RE.sub(value, path)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelRegistry:
    """The model packages available to this process, by id."""

    def __init__(self, packages: Iterable[ModelPackage]) -> None:
        self._packages: dict[str, ModelPackage] = {}
        for package in packages:
            if package.id in self._packages:
                raise ConfigError(
                    str(package.folder / MANIFEST_NAME),
                    [
                        f"id: model id {package.id!r} is already provided by "
                        f"{self._packages[package.id].folder}"
                    ],
                )
            self._packages[package.id] = package

    @classmethod
    def discover(
        cls, extra_dirs: Iterable[Path] = (), *, check_weights: bool = True
    ) -> ModelRegistry:
        """Load the built-in packages and every package folder under ``extra_dirs``.

        A folder in ``extra_dirs`` may be a package itself or hold package folders.

        Raises:
            ConfigError: a package is invalid (all of its problems listed).
        """
        folders = list(_package_folders(BUILTIN_DIR))
        for directory in extra_dirs:
            if not directory.is_dir():
                raise ConfigError("model_dirs", [f"{directory} is not a folder"])
            folders.extend(_package_folders(directory))
        return cls(load_package(folder, check_weights=check_weights) for folder in folders)

    @classmethod
    def survey(
        cls, extra_dirs: Iterable[Path] = (), *, check_weights: bool = True
    ) -> tuple[ModelRegistry, list[str]]:
        """Like :meth:`discover`, but never stops at a bad package: the valid packages,
        and one line per problem of the others (``<manifest>: <key>: <problem>``), for
        ``pacs-ai config check``. A package whose id an earlier one took is a problem too.
        """
        folders = list(_package_folders(BUILTIN_DIR))
        problems: list[str] = []
        for index, directory in enumerate(extra_dirs):
            if not directory.is_dir():
                problems.append(f"model_dirs[{index}]: {directory} is not a folder")
                continue
            folders.extend(_package_folders(directory))
        packages: dict[str, ModelPackage] = {}
        for folder in folders:
            try:
                package = load_package(folder, check_weights=check_weights)
            except ConfigError as exc:
                problems.extend(f"{exc.source}: {problem}" for problem in exc.problems)
                continue
            if package.id in packages:
                problems.append(
                    f"{folder / MANIFEST_NAME}: id: model id {package.id!r} is already "
                    f"provided by {packages[package.id].folder}"
                )
                continue
            packages[package.id] = package
        return cls(packages.values()), problems

    def get(self, model_id: str) -> ModelPackage:
        try:
            return self._packages[model_id]
        except KeyError:
            known = ", ".join(sorted(self._packages)) or "none"
            raise UnknownModelError(f"no model package {model_id!r} (installed: {known})") from None

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._packages

    def __iter__(self) -> Iterator[ModelPackage]:
        return iter(sorted(self._packages.values(), key=lambda p: p.id))

    @property
    def ids(self) -> list[str]:
        return sorted(self._packages)


def _package_folders(directory: Path) -> Iterator[Path]:
    if (directory / MANIFEST_NAME).is_file():
        yield directory
        return
    for child in sorted(directory.iterdir()):
        if (child / MANIFEST_NAME).is_file():
            yield child
