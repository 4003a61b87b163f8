"""MONAI bundle -> pacs-ai model package (``pacs-ai models import-bundle``).

A MONAI bundle is a folder with ``configs/metadata.json``, an inference config
(``configs/inference.json`` or ``.yaml``) and the network as TorchScript in
``models/model.ts``. The importer reads what pacs-ai needs from them and writes a package
folder: ``model.yaml`` plus a copy of ``model.ts`` (with its checksum). Read from the
configs, when they hold plain values (``@references`` to top-level keys are followed):

* ``metadata.json``: name, version, description, input modality, output channels and
  their names (``channel_def``), becoming labels;
* preprocessing transforms: ``Orientationd`` (axcodes), ``Spacingd`` (pixdim),
  ``ScaleIntensityRanged`` (a window; ``b_min``/``b_max`` must be 0 and 1 and ``clip``
  true), ``NormalizeIntensityd`` (z-score), ``CropForegroundd`` (margin, threshold 0),
  ``DivisiblePadd`` (k);
* the inferer: ``SlidingWindowInferer`` (roi_size, sw_batch_size, overlap, mode,
  sigma_scale) or ``SimpleInferer``;
* postprocessing: ``Activationsd`` (softmax / sigmoid), ``AsDiscreted`` (argmax or
  threshold), ``KeepLargestConnectedComponentd``.

MONAI loads NIfTI arrays as ``[i, j, k]``; pacs-ai's arrays are ``[z, y, x]``: axis codes
are reversed (``RAS`` -> ``SAR``) and ``pixdim`` reversed into (x, y, z), so that the
network sees the same tensor axes it was trained on (see :mod:`models.manifest`).
Anything else (transforms pacs-ai does not implement, ``$`` expressions where a value is
needed) is reported as an error naming it: a package that silently preprocesses
differently from its training would give wrong answers.

SNOMED CT codes for the labels cannot be read from a bundle: the importer writes each
label as ``Tissue`` and tells the user to set the right category and type codes.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError
from models.manifest import ModelManifest
from models.registry import MANIFEST_NAME, load_package, sha256_of

logger = logging.getLogger(__name__)

_MODALITIES = {"MRI": "MR", "MR": "MR", "CT": "CT", "PET": "PT", "PT": "PT", "US": "US"}
_TISSUE = {"value": "85756007", "scheme": "SCT", "meaning": "Tissue"}
_AI = {"value": "123110", "scheme": "DCM", "meaning": "Artificial Intelligence"}
#: Transforms that only load or type-convert data: nothing for pacs-ai to do.
_NEUTRAL = {
    "LoadImaged",
    "LoadImage",
    "EnsureChannelFirstd",
    "EnsureChannelFirst",
    "AddChanneld",
    "EnsureTyped",
    "EnsureType",
    "ToTensord",
    "ToDeviced",
    "CastToTyped",
    "SaveImaged",
    "Invertd",
    "CopyItemsd",
    "DeleteItemsd",
}
_COLORS = [(216, 101, 79), (128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210)]


@dataclass(frozen=True)
class ImportedBundle:
    package_dir: Path
    manifest: ModelManifest
    warnings: tuple[str, ...]


def _read_config(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError(str(path), ["the config must be a mapping"])
    return data


class _Resolver:
    """Follows ``@key`` references to top-level keys; refuses ``$`` expressions."""

    def __init__(self, config: dict[str, Any], source: str) -> None:
        self.config = config
        self.source = source
        self.problems: list[str] = []

    def value(self, raw: Any, where: str) -> Any:
        seen = 0
        while isinstance(raw, str) and raw.startswith("@") and seen < 10:
            key = raw[1:].split("#", 1)[0]
            raw = self.config.get(key, raw)
            seen += 1
        if isinstance(raw, str) and raw.startswith(("$", "@")):
            self.problems.append(f"{where}: {raw!r} is an expression; give a plain value")
            return None
        return raw

    def transforms(self, section: str) -> list[dict[str, Any]]:
        node = self.value(self.config.get(section), section)
        if node is None:
            return []
        if isinstance(node, dict) and "transforms" in node:
            node = self.value(node["transforms"], f"{section}.transforms")
        if not isinstance(node, list):
            self.problems.append(f"{section}: expected a list of transforms")
            return []
        return [t for t in (self.value(item, section) for item in node) if isinstance(t, dict)]


def _target(transform: dict[str, Any]) -> str:
    return str(transform.get("_target_", "")).rsplit(".", 1)[-1]


def _reverse_axcodes(codes: str) -> str:
    return codes[::-1].upper()


def import_bundle(bundle: Path, out_dir: Path, *, model_id: str | None = None) -> ImportedBundle:
    """Turn the MONAI bundle in ``bundle`` into a package folder ``out_dir``.

    Raises:
        ConfigError: the bundle lacks a file, or uses something pacs-ai cannot reproduce
            (every such problem listed).
    """
    metadata_path = bundle / "configs" / "metadata.json"
    config_path = next(
        (
            p
            for p in (bundle / "configs" / n for n in ("inference.json", "inference.yaml"))
            if p.is_file()
        ),
        None,
    )
    weights = bundle / "models" / "model.ts"
    missing = [str(p.relative_to(bundle)) for p in (metadata_path, weights) if not p.is_file()]
    if config_path is None:
        missing.append("configs/inference.json (or .yaml)")
    if missing:
        extra = (
            "; export the TorchScript with `python -m monai.bundle ckpt_export`"
            if "models/model.ts" in missing
            else ""
        )
        raise ConfigError(str(bundle), [f"missing {m}{extra}" for m in missing])
    assert config_path is not None
    metadata = _read_config(metadata_path)
    resolver = _Resolver(_read_config(config_path), str(config_path))
    warnings: list[str] = []
    manifest = _manifest(metadata, resolver, model_id or _slug(metadata, bundle), warnings)
    if resolver.problems:
        raise ConfigError(str(config_path), resolver.problems)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, out_dir / "model.ts")
    manifest["network"]["sha256"] = sha256_of(out_dir / "model.ts")
    header = (
        f"# Imported from the MONAI bundle {bundle.name} by pacs-ai models import-bundle.\n"
        "# Review the labels' SNOMED CT category and type codes: a bundle does not give them.\n"
    )
    (out_dir / MANIFEST_NAME).write_text(
        header + yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8"
    )
    package = load_package(out_dir)
    for warning in warnings:
        logger.warning("bundle %s: %s", bundle.name, warning)
    return ImportedBundle(package_dir=out_dir, manifest=package.manifest, warnings=tuple(warnings))


def _slug(metadata: dict[str, Any], bundle: Path) -> str:
    name = str(metadata.get("name") or bundle.name).lower()
    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    return slug[:63] or "bundle"


def _manifest(
    metadata: dict[str, Any], resolver: _Resolver, model_id: str, warnings: list[str]
) -> dict[str, Any]:
    data_format = metadata.get("network_data_format", {})
    image = data_format.get("inputs", {}).get("image", {})
    pred = data_format.get("outputs", {}).get("pred", {})
    modality = _MODALITIES.get(str(image.get("modality", "")).upper())
    if modality is None:
        resolver.problems.append(
            f"metadata.json: input modality {image.get('modality')!r} is not one of "
            f"{sorted(_MODALITIES)}"
        )
        modality = "OT"
    channels = pred.get("channel_def", {}) or {}
    labels = []
    for index, (value, name) in enumerate(sorted(((int(k), str(v)) for k, v in channels.items()))):
        if value == 0:
            continue
        labels.append(
            {
                "value": value,
                "name": name[:64].capitalize(),
                "category": _TISSUE,
                "type": _TISSUE,
                "color": list(_COLORS[index % len(_COLORS)]),
            }
        )
    if not labels:
        resolver.problems.append("metadata.json: outputs.pred.channel_def names no label")
    warnings.append("labels use placeholder codes (SCT Tissue); set their category and type")
    manifest: dict[str, Any] = {
        "schema_version": 2,
        "id": model_id,
        "version": str(metadata.get("version", "0"))[:16],
        "name": str(metadata.get("name", model_id))[:64],
        "description": str(metadata.get("description", "")),
        "task": "segmentation",
        "family": _AI,
        "accepts": {"modalities": [modality], "min_slices": 8, "dims": 3},
        "preprocessing": _preprocessing(resolver),
        "inference": _inference(resolver),
        "network": {
            "kind": "torchscript",
            "path": "model.ts",
            "sha256": None,
            "input_name": "image",
            "output_name": "pred",
            "output_kind": "logits",
        },
        "backends": [{"name": "torch", "precision": "fp32"}],
        "postprocessing": _postprocessing(resolver),
        "labels": labels,
        "outputs": {"seg": True, "sr": True},
    }
    return manifest


def _preprocessing(resolver: _Resolver) -> dict[str, Any]:
    spec: dict[str, Any] = {"orientation": "SAR"}
    for transform in resolver.transforms("preprocessing"):
        name = _target(transform)
        where = f"preprocessing.{name}"
        if name in _NEUTRAL:
            continue
        if name in ("Orientationd", "Orientation"):
            codes = resolver.value(transform.get("axcodes"), f"{where}.axcodes")
            if codes:
                spec["orientation"] = _reverse_axcodes(str(codes))
        elif name in ("Spacingd", "Spacing"):
            pixdim = resolver.value(transform.get("pixdim"), f"{where}.pixdim")
            if pixdim:
                spec["target_spacing"] = [float(v) for v in reversed(list(pixdim))]
        elif name in ("ScaleIntensityRanged", "ScaleIntensityRange"):
            low = resolver.value(transform.get("a_min"), f"{where}.a_min")
            high = resolver.value(transform.get("a_max"), f"{where}.a_max")
            b_range = (float(transform.get("b_min", 0.0)), float(transform.get("b_max", 1.0)))
            if b_range != (0.0, 1.0) or not transform.get("clip", False):
                resolver.problems.append(
                    f"{where}: only b_min 0, b_max 1, clip true map to a window"
                )
            spec["intensity"] = {"kind": "window", "window": [float(low), float(high)]}
        elif name in ("NormalizeIntensityd", "NormalizeIntensity"):
            spec["intensity"] = {"kind": "zscore"}
        elif name in ("CropForegroundd", "CropForeground"):
            margin = resolver.value(transform.get("margin", 0), f"{where}.margin")
            # MONAI pads the margin beyond the image unless allow_smaller (its default
            # before 1.5) stops the box at the image's edges.
            smaller = resolver.value(
                transform.get("allow_smaller", False), f"{where}.allow_smaller"
            )
            spec["crop_foreground"] = {
                "threshold": 0.0,
                "margin": int(margin or 0),
                "beyond_image": "clip" if smaller else "pad",
            }
        elif name in ("DivisiblePadd", "DivisiblePad"):
            continue  # handled with the inferer (pad_to_multiple)
        else:
            resolver.problems.append(f"{where}: pacs-ai does not implement this transform")
    return spec


def _inference(resolver: _Resolver) -> dict[str, Any]:
    inferer = resolver.value(resolver.config.get("inferer"), "inferer") or {}
    name = _target(inferer) if isinstance(inferer, dict) else ""
    if name == "SlidingWindowInferer":

        def get(key: str, default: Any) -> Any:
            value = resolver.value(inferer.get(key, default), f"inferer.{key}")
            return default if value is None else value

        return {
            "mode": "sliding_window",
            "roi_size": [int(v) for v in get("roi_size", [96, 96, 96])],
            "overlap": float(get("overlap", 0.25)),
            "blend": str(get("mode", "constant")),
            "sigma_scale": float(get("sigma_scale", 0.125)),
            "batch_size": int(get("sw_batch_size", 1)),
        }
    if name in ("SimpleInferer", ""):
        multiple = 1
        for transform in resolver.transforms("preprocessing"):
            if _target(transform) in ("DivisiblePadd", "DivisiblePad"):
                multiple = int(resolver.value(transform.get("k", 1), "DivisiblePadd.k"))
        return {"mode": "whole_volume", "pad_to_multiple": multiple}
    resolver.problems.append(f"inferer: {name} is not SlidingWindowInferer or SimpleInferer")
    return {"mode": "whole_volume"}


def _postprocessing(resolver: _Resolver) -> dict[str, Any]:
    spec: dict[str, Any] = {"reduce": "argmax"}
    for transform in resolver.transforms("postprocessing"):
        name = _target(transform)
        where = f"postprocessing.{name}"
        if name in _NEUTRAL:
            continue
        if name in ("Activationsd", "Activations"):
            if transform.get("softmax"):
                spec["activation"] = "softmax"
            elif transform.get("sigmoid"):
                spec["activation"] = "sigmoid"
        elif name in ("AsDiscreted", "AsDiscrete"):
            threshold = transform.get("threshold")
            if threshold is not None:
                spec["reduce"] = "threshold"
                spec["threshold"] = float(threshold)
        elif name in ("KeepLargestConnectedComponentd", "KeepLargestConnectedComponent"):
            spec["largest_component"] = True
        else:
            resolver.problems.append(f"{where}: pacs-ai does not implement this transform")
    return spec
