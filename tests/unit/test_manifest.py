"""The manifest schema (version 2): what it accepts, refuses, and how it resolves paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from core.errors import ConfigError
from models.manifest import ModelManifest, SlidingWindowSpec
from models.registry import BUILTIN_DIR, EXAMPLES_DIR, load_package
from tests.support.models import SEGMENT, manifest

CLASS = {
    "index": 0,
    "name": "Finding",
    "code": {"value": "404684003", "scheme": "SCT", "meaning": "Finding"},
}


def _problems(tmp_path: Path, content: dict[str, Any]) -> str:
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError) as caught:
        load_package(tmp_path, check_weights=False)
    return str(caught.value)


def test_version_1_manifests_still_read_with_the_new_defaults() -> None:
    package = load_package(BUILTIN_DIR / "ct_lungs")

    assert package.manifest.schema_version == 1
    assert package.manifest.preprocessing.crop_foreground is None
    assert package.manifest.postprocessing.resample_back == "linear"


def test_the_example_brain_packages_point_at_the_shared_weights() -> None:
    package = load_package(EXAMPLES_DIR / "brain_extraction_mindgrab", check_weights=False)

    assert package.onnx_path is not None
    assert package.onnx_path.parts[-3:] == ("models", "brain-extraction-mindgrab", "model.onnx")
    assert "$" not in str(package.onnx_path)


def test_a_sliding_window_model_reads_every_parameter() -> None:
    parsed = ModelManifest.model_validate(
        manifest(
            inference={
                "mode": "sliding_window",
                "roi_size": [96, 96, 64],
                "overlap": 0.5,
                "blend": "constant",
                "batch_size": 4,
            },
            preprocessing={
                "crop_foreground": {"threshold": 0.1, "margin": 20},
                "channel_layout": "channels_last",
            },
        )
    )

    assert isinstance(parsed.inference, SlidingWindowSpec)
    assert parsed.inference.roi_size == (96, 96, 64)
    assert parsed.preprocessing.crop_foreground is not None
    assert parsed.preprocessing.channel_layout == "channels_last"


def test_classification_models_need_classes_and_no_seg(tmp_path: Path) -> None:
    text = _problems(tmp_path, manifest(task="classification", labels=[]))

    assert "needs at least one entry in 'classes'" in text
    assert "outputs: {seg: false}" in text


def test_a_valid_classification_manifest_reads() -> None:
    parsed = ModelManifest.model_validate(
        manifest(task="classification", labels=[], classes=[CLASS], outputs={"seg": False})
    )
    assert parsed.classes[0].threshold == 0.5


def test_contradictions_are_all_reported_with_their_keys(tmp_path: Path) -> None:
    content = manifest(
        preprocessing={"target_spacing": [1, 1, 1], "target_shape": [8, 8, 8]},
        backends=[{"name": "onnxruntime", "compile": True}],
    )

    text = _problems(tmp_path, content)

    assert "preprocessing: give target_spacing or target_shape, not both" in text
    assert "backends[0]: 'compile' is an option of the torch backend" in text


def test_a_manifest_that_contradicts_itself_across_sections_is_refused(tmp_path: Path) -> None:
    content = manifest(
        inference={"mode": "sliding_window", "roi_size": [32, 32]},
        labels=[SEGMENT, SEGMENT],
    )

    text = _problems(tmp_path, content)

    assert "roi_size has 2 sizes for a 3D model" in text
    assert "label values must be unique, got [1, 1]" in text


def test_unknown_keys_are_named(tmp_path: Path) -> None:
    content = manifest(preprocessing={"croop_foreground": {"margin": 2}})

    assert "preprocessing.croop_foreground" in _problems(tmp_path, content)


def test_weights_paths_expand_variables_and_report_checksums(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tmp_path / "elsewhere" / "net.onnx"
    weights.parent.mkdir()
    weights.write_bytes(b"not really onnx")
    monkeypatch.setenv("PACS_AI_TEST_WEIGHTS", str(weights.parent))
    folder = tmp_path / "package"
    folder.mkdir()
    content = manifest(
        network={"kind": "onnx", "path": "$PACS_AI_TEST_WEIGHTS/net.onnx", "sha256": "0" * 64}
    )

    (folder / "model.yaml").write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError, match=r"network\.sha256: net\.onnx has checksum") as caught:
        load_package(folder)
    assert "the file changed or the manifest is stale" in str(caught.value)
