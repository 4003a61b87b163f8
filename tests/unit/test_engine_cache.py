"""The TensorRT engine cache: keys that change with everything that matters, one build
under a file lock however many workers start at once, nothing half-written."""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from pathlib import Path

import pytest
import torch

from inference.backends.base import InputShapes
from inference.backends.tensorrt_backend import engine_key
from inference.pipeline import network_input_shapes
from models.engine_cache import EngineCache, EngineKey, ProfileShapes
from models.manifest import ModelManifest
from tests.support.models import export_onnx, manifest, random_unet, write_package

KEY = EngineKey(
    model_id="m",
    onnx_sha256="a" * 64,
    precision="fp16",
    profiles=(ProfileShapes("image", (4, 1, 96, 96, 96), (4, 1, 96, 96, 96), (4, 1, 96, 96, 96)),),
    tensorrt_version="11.4.1",
    compute_capability="9.0",
    converter_version=1,
)


def test_every_field_of_the_key_changes_the_engine_file() -> None:
    variants = [
        dataclasses.replace(KEY, onnx_sha256="b" * 64),
        dataclasses.replace(KEY, precision="fp32"),
        dataclasses.replace(
            KEY,
            profiles=(ProfileShapes("image", (1, 1, 8, 8, 8), (2, 1, 8, 8, 8), (4, 1, 8, 8, 8)),),
        ),
        dataclasses.replace(KEY, tensorrt_version="10.13.0"),
        dataclasses.replace(KEY, compute_capability="8.9"),
        dataclasses.replace(KEY, converter_version=2),
    ]

    digests = {KEY.digest(), *(v.digest() for v in variants)}

    assert len(digests) == len(variants) + 1
    assert KEY.digest() == dataclasses.replace(KEY).digest()


def _build_slowly(root: str, counter: str) -> str:
    def build() -> bytes:
        with Path(counter).open("a") as handle:
            handle.write("built\n")
        time.sleep(0.5)
        return b"engine bytes"

    return str(EngineCache(Path(root)).get_or_build(KEY, build))


def test_workers_starting_together_build_each_engine_once(tmp_path: Path) -> None:
    counter = tmp_path / "builds.txt"
    context = multiprocessing.get_context("fork")
    with context.Pool(3) as pool:
        paths = pool.starmap(_build_slowly, [(str(tmp_path / "engines"), str(counter))] * 3)

    assert counter.read_text() == "built\n"
    assert len(set(paths)) == 1
    assert Path(paths[0]).read_bytes() == b"engine bytes"
    assert Path(paths[0]).with_suffix(".json").is_file()


def test_a_failed_build_leaves_no_engine_behind(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)

    def broken() -> bytes:
        raise RuntimeError("parser refused the graph")

    with pytest.raises(RuntimeError, match="parser refused"):
        cache.get_or_build(KEY, broken)

    assert cache.lookup(KEY) is None
    assert not [p for p in (tmp_path / "m").iterdir() if p.suffix == ".engine"]


def test_timing_caches_are_shared_per_tensorrt_version_and_gpu_architecture(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    other_model = dataclasses.replace(KEY, model_id="other", onnx_sha256="c" * 64)

    assert cache.timing_cache_path(KEY) == cache.timing_cache_path(other_model)
    assert cache.timing_cache_path(KEY).name == "timing-trt11.4.1-sm90.cache"


def test_profiles_follow_the_manifest_windows_and_shapes() -> None:
    sliding = ModelManifest.model_validate(
        manifest(inference={"mode": "sliding_window", "roi_size": [96, 96, 64], "batch_size": 4})
    )
    fixed = ModelManifest.model_validate(
        manifest(preprocessing={"target_shape": [128, 128, 128], "channel_layout": "channels_last"})
    )
    ranged = ModelManifest.model_validate(
        manifest(
            inference={"mode": "whole_volume", "max_shape": [256, 256, 256], "pad_to_multiple": 16}
        )
    )

    assert network_input_shapes(sliding) == InputShapes(
        (4, 1, 96, 96, 64), (4, 1, 96, 96, 64), (4, 1, 96, 96, 64)
    )
    assert network_input_shapes(fixed) == InputShapes(*[(1, 128, 128, 128, 1)] * 3)
    ranged_shapes = network_input_shapes(ranged)
    assert ranged_shapes is not None and not ranged_shapes.fixed
    assert ranged_shapes.min == (1, 1, 16, 16, 16) and ranged_shapes.max == (1, 1, 256, 256, 256)
    assert network_input_shapes(ModelManifest.model_validate(manifest())) is None


def test_the_engine_key_hashes_the_onnx_file_and_names_the_gpu(tmp_path: Path) -> None:
    export_onnx(random_unet(), tmp_path / "model.onnx", example=torch.randn(1, 1, 16, 16, 16))
    package = write_package(
        tmp_path, manifest(backends=[{"name": "tensorrt", "precision": "fp16"}])
    )
    shapes = InputShapes((2, 1, 16, 16, 16), (2, 1, 16, 16, 16), (2, 1, 16, 16, 16))

    key = engine_key(
        package,
        precision="fp16",
        shapes=shapes,
        tensorrt_version="10.13.0",
        compute_capability=(8, 9),
    )

    assert key.onnx_sha256 == package.manifest.network.sha256
    assert key.compute_capability == "8.9" and key.converter_version == 1
    assert key.profiles[0].input_name == "image"
