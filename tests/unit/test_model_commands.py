"""`pacs-ai models verify | import-bundle | build-engine`, and workers refusing broken packages.

The MONAI bundle is made here: a randomly initialised MONAI U-Net as TorchScript in
``models/model.ts`` with ``configs/metadata.json`` and ``configs/inference.json`` written
the way MONAI's model zoo writes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner

from core.errors import ConfigError
from core.settings import Settings
from models.manifest import SlidingWindowSpec
from models.registry import load_package
from pacs_ai.cli import main
from tests.support.models import export_onnx, manifest, random_unet, script, write_package
from workers.runtime import preflight_models

INFERENCE: dict[str, Any] = {
    "imports": ["$import glob"],
    "patch_size": [32, 32, 32],
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {
                "_target_": "Spacingd",
                "keys": "image",
                "pixdim": [1.5, 1.5, 2.0],
                "mode": "bilinear",
            },
            {
                "_target_": "ScaleIntensityRanged",
                "keys": "image",
                "a_min": -57,
                "a_max": 164,
                "b_min": 0.0,
                "b_max": 1.0,
                "clip": True,
            },
            {"_target_": "EnsureTyped", "keys": "image"},
        ],
    },
    "inferer": {
        "_target_": "SlidingWindowInferer",
        "roi_size": "@patch_size",
        "sw_batch_size": 2,
        "overlap": 0.5,
        "mode": "gaussian",
    },
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred"},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": [1]},
            {"_target_": "SaveImaged", "keys": "pred"},
        ],
    },
}
METADATA = {
    "name": "Spleen CT segmentation (test)",
    "version": "0.5.1",
    "description": "A tiny bundle made in a test.",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "modality": "CT", "num_channels": 1}},
        "outputs": {
            "pred": {
                "type": "image",
                "num_channels": 2,
                "channel_def": {"0": "background", "1": "spleen"},
            }
        },
    },
}


def _bundle(folder: Path, inference: dict[str, Any] = INFERENCE, *, weights: bool = True) -> Path:
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "metadata.json").write_text(json.dumps(METADATA))
    (folder / "configs" / "inference.json").write_text(json.dumps(inference))
    if weights:
        script(random_unet(seed=3), folder / "models" / "model.ts")
    return folder


def test_a_monai_bundle_becomes_a_package_that_verifies(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "spleen_ct_segmentation")
    out = tmp_path / "package"

    imported = CliRunner().invoke(main, ["models", "import-bundle", str(bundle), "--out", str(out)])
    verified = CliRunner().invoke(main, ["models", "verify", "--package", str(out)])

    assert imported.exit_code == 0, imported.output
    assert "spleen-ct-segmentation-test 0.5.1" in imported.output
    assert "set their category and type" in imported.output
    manifest_ = load_package(out).manifest
    pre = manifest_.preprocessing
    assert pre.orientation == "SAR"  # MONAI's RAS [i, j, k] is pacs-ai's [z, y, x] reversed
    assert pre.target_spacing == (2.0, 1.5, 1.5)
    assert (pre.intensity.kind, pre.intensity.window) == ("window", (-57.0, 164.0))
    assert isinstance(manifest_.inference, SlidingWindowSpec)
    assert manifest_.inference.roi_size == (32, 32, 32)
    assert (
        manifest_.inference.overlap,
        manifest_.inference.blend,
        manifest_.inference.batch_size,
    ) == (0.5, "gaussian", 2)
    assert manifest_.postprocessing.largest_component
    assert [label.name for label in manifest_.labels] == ["Spleen"]
    assert manifest_.network.kind == "torchscript" and (out / "model.ts").is_file()
    assert verified.exit_code == 0, verified.output
    assert "OK    torch/fp32" in verified.output


def test_a_bundle_using_what_pacs_ai_cannot_reproduce_is_refused_naming_it(tmp_path: Path) -> None:
    inference = json.loads(json.dumps(INFERENCE))
    inference["preprocessing"]["transforms"].append(
        {"_target_": "HistogramNormalized", "keys": "image"}
    )
    inference["inferer"]["overlap"] = "$0.25 * 2"
    bundle = _bundle(tmp_path / "b", inference)

    result = CliRunner().invoke(
        main, ["models", "import-bundle", str(bundle), "--out", str(tmp_path / "p")]
    )

    assert result.exit_code == 1
    assert (
        "preprocessing.HistogramNormalized: pacs-ai does not implement this transform"
        in result.output
    )
    assert "inferer.overlap: '$0.25 * 2' is an expression" in result.output


def test_a_bundle_without_torchscript_says_how_to_export_it(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "b", weights=False)

    result = CliRunner().invoke(
        main, ["models", "import-bundle", str(bundle), "--out", str(tmp_path / "p")]
    )

    assert result.exit_code == 1
    assert (
        "missing models/model.ts; export the TorchScript with `python -m monai.bundle ckpt_export`"
        in result.output
    )


def _wrong_output_package(folder: Path) -> Path:
    folder.mkdir(parents=True)
    export_onnx(random_unet(), folder / "model.onnx", example=torch.randn(1, 1, 16, 16, 16))
    write_package(
        folder,
        manifest(
            id="wrong-output",
            network={"kind": "onnx", "path": "model.onnx", "output_name": "logits"},
        ),
    )
    return folder


def test_verify_reports_checksums_and_dry_runs_that_fail(tmp_path: Path) -> None:
    wrong_output = _wrong_output_package(tmp_path / "wrong-output")
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "model.onnx").write_bytes((wrong_output / "model.onnx").read_bytes())
    content = yaml.safe_load((wrong_output / "model.yaml").read_text())
    content["id"] = "stale"
    content["network"]["sha256"] = "0" * 64
    (stale / "model.yaml").write_text(yaml.safe_dump(content))

    result = CliRunner().invoke(
        main, ["models", "verify", "--package", str(wrong_output), "--package", str(stale)]
    )

    assert result.exit_code == 1
    assert "wrong-output" in result.output and "FAIL" in result.output
    assert "the manifest names input 'image' and output 'logits'" in result.output
    assert "network.sha256: model.onnx has checksum" in result.output
    assert "2 of 2 package(s) failed verification" in result.output


def test_verify_checks_every_installed_package_by_default() -> None:
    result = CliRunner().invoke(main, ["models", "verify"])

    assert result.exit_code == 0, result.output
    assert "ct-lungs" in result.output and "OK    torch/fp32" in result.output


def test_build_engine_explains_what_it_needs_on_a_machine_without_tensorrt(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    _wrong_output_package(tmp_path / "models" / "wrong-output")
    content = yaml.safe_load((tmp_path / "models" / "wrong-output" / "model.yaml").read_text())
    content["backends"] = [{"name": "tensorrt", "precision": "fp16"}]
    (tmp_path / "models" / "wrong-output" / "model.yaml").write_text(yaml.safe_dump(content))
    config.write_text(
        yaml.safe_dump(
            {"data_dir": str(tmp_path / "data"), "model_dirs": [str(tmp_path / "models")]}
        )
    )

    result = CliRunner().invoke(
        main, ["models", "build-engine", "--config", str(config), "wrong-output"]
    )

    assert result.exit_code == 1
    assert "wrong-output" in result.output
    assert "tensorrt" in result.output


@pytest.mark.parametrize(
    "command", [["models", "verify"], ["models", "import-bundle"], ["models", "build-engine"]]
)
def test_the_model_commands_explain_themselves(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])

    assert result.exit_code == 0 and "Usage: " in result.output


def test_a_worker_refuses_to_start_with_a_package_whose_dry_run_fails(tmp_path: Path) -> None:
    _wrong_output_package(tmp_path / "models" / "wrong-output")
    settings = Settings(data_dir=tmp_path / "data", model_dirs=[tmp_path / "models"])

    with pytest.raises(ConfigError, match="model packages: 1 problem") as caught:
        preflight_models(settings, ["ct-lungs", "wrong-output"])

    assert "wrong-output (" in str(caught.value)
    assert "output 'logits'" in str(caught.value)
