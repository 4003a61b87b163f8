"""Inference benchmark: per model and backend, ms per window, windows/s and a study's split.

    python benchmarks/inference.py                 # every case that can run here
    python benchmarks/inference.py --quick         # small inputs (a minute on 2 cores)
    python benchmarks/inference.py --cases unet,deepbrain --device cuda:0
    python benchmarks/inference.py --json rows.json  # also the rows as JSON (benchmarks/gpu-check)

Each case reads a real DICOM series from disk (decode), runs the model through
``ModelRunner`` with ``profile=True`` (the GPU is synchronised at stage boundaries, so
the split is exact), and writes the SEG and SR (write). Cases:

* ``ct-lungs``: the built-in classical model on the LIDC-IDRI chest CT (275 slices);
  PyTorch eager and compiled (ct-lungs has Python control flow: no ONNX export);
* ``unet``: a randomly initialised MONAI 3D U-Net (16-32-64-128, 2 classes) over the
  LIDC CT resampled to 1.5 mm, sliding windows 96³ (overlap 0.25, batch 2): PyTorch
  eager, PyTorch compiled, ONNX Runtime (fp32), and on a GPU PyTorch AMP (fp16
  autocast), ONNX Runtime with its CUDA provider and TensorRT (fp32, fp16);
* ``mindgrab`` / ``deepbrain``: the two real brain-extraction models on the MNI152 T1
  template wrapped in a synthetic skull (benchmarks/_support/brain.py), ONNX Runtime
  (CPU, and its CUDA provider on a GPU) and TensorRT.

Per row: ms per window and per study (the network's time for the whole series), each
stage, and the time to open the backend: for TensorRT the engine build (an empty engine
folder) and then, opening it again, the cache hit (``hit`` when no engine was built the
second time). A case whose backend cannot run here is listed as skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._support.models import benchmark_unet, export_onnx, write_package  # noqa: E402
from inference.backends.base import BackendUnavailableError  # noqa: E402
from inference.pipeline import ModelRunner  # noqa: E402
from inference.results import write_results  # noqa: E402
from inference.volume import load_series  # noqa: E402
from models.registry import BUILTIN_DIR, EXAMPLES_DIR, ModelPackage, load_package  # noqa: E402

SHARED = Path(os.environ.get("PACS_AI_SHARED_DATA", REPO.parent / "shared" / "data"))
#: Where the LIDC archive is absent (a GPU machine the 60 MB archive cannot travel to), the
#: CT cases read the chest phantom at the LIDC series' size instead; rows say so.
SYNTHETIC_CT = " (phantom 512x512x275)"
STAGES = ("decode", "preprocess", "network", "stitch", "postprocess", "write")


@dataclass
class Row:
    case: str
    backend: str
    windows: int
    timings: dict[str, float]
    #: Seconds to open the backend (TensorRT: building the engine when none is cached).
    open_seconds: float = 0.0
    #: TensorRT: seconds to open it again from the engine cache, and whether it was a hit.
    cached_open_seconds: float | None = None
    cache_hit: bool | None = None

    @property
    def network_ms_per_window(self) -> float:
        return 1000 * self.timings["network"] / max(self.windows, 1)

    @property
    def network_ms_per_study(self) -> float:
        return 1000 * self.timings["network"]

    @property
    def total(self) -> float:
        return sum(self.timings.get(s, 0.0) for s in STAGES)


def lidc_available() -> bool:
    return (SHARED / "ct-lidc-idri-0314" / "series.tar.xz").is_file()


def lidc_series(work: Path) -> list[Path]:
    """The LIDC-IDRI CT, or where its archive is absent the chest phantom at its size."""
    if not lidc_available():
        from pacs_ai.phantom import write_chest_ct_series  # noqa: PLC0415

        folder = work / "phantom-ct"
        if not folder.is_dir():
            write_chest_ct_series(folder, slices=275, size=512)
        return sorted(folder.glob("*.dcm"))
    target = work / "lidc"
    if not target.is_dir():
        target.mkdir()
        archive = SHARED / "ct-lidc-idri-0314" / "series.tar.xz"
        subprocess.run(["tar", "xJf", str(archive), "-C", str(target)], check=True)
    return sorted((target / "lidc-idri-0314-ct").glob("*.dcm"))


def head_series(work: Path, *, small: bool) -> list[Path]:
    from benchmarks._support.brain import full_head, small_head, write_mr_series  # noqa: PLC0415

    folder = work / ("head-small" if small else "head")
    if folder.is_dir():
        return sorted(folder.glob("*.dcm"))
    return write_mr_series(small_head() if small else full_head(), folder)


def unet_package(work: Path, backends: list[dict[str, Any]], *, quick: bool) -> ModelPackage:
    folder = work / "unet"
    folder.mkdir(exist_ok=True)
    roi = 64 if quick else 96
    if not (folder / "model.onnx").is_file():
        export_onnx(
            benchmark_unet(), folder / "model.onnx", example=torch.randn(1, 1, roi, roi, roi)
        )
    content = {
        "schema_version": 2,
        "id": "bench-unet",
        "version": "1",
        "name": "Random MONAI U-Net (benchmark)",
        "task": "segmentation",
        "family": {"value": "123110", "scheme": "DCM", "meaning": "Artificial Intelligence"},
        "accepts": {"modalities": ["CT"], "min_slices": 8},
        "preprocessing": {
            "orientation": "LPS",
            "target_spacing": [1.5, 1.5, 1.5] if not quick else [3.0, 3.0, 3.0],
            "intensity": {"kind": "window", "window": [-1000, 400]},
        },
        "inference": {
            "mode": "sliding_window",
            "roi_size": [roi, roi, roi],
            "overlap": 0.25,
            "batch_size": 2,
        },
        "network": {
            "kind": "python",
            "entry": "benchmarks._support.models:benchmark_unet",
            "onnx": {"path": "model.onnx"},
            "input_name": "image",
            "output_name": "output",
        },
        "backends": backends,
        "postprocessing": {"reduce": "argmax"},
        "labels": [
            {
                "value": 1,
                "name": "Thing",
                "category": {"value": "85756007", "scheme": "SCT", "meaning": "Tissue"},
                "type": {"value": "85756007", "scheme": "SCT", "meaning": "Tissue"},
            }
        ],
    }
    return write_package(folder, content)


def with_backends(
    package: ModelPackage, backends: list[dict[str, Any]], work: Path
) -> ModelPackage:
    """A copy of ``package`` that lists only ``backends`` (weights paths made absolute)."""
    content = yaml.safe_load((package.folder / "model.yaml").read_text())
    content["backends"] = backends
    network = content["network"]
    if network.get("path"):
        network["path"] = str(package.resolve(network["path"]))
    if network.get("onnx"):
        network["onnx"]["path"] = str(package.resolve(network["onnx"]["path"]))
    name = "-".join(_describe(b).replace(" ", "-").replace("+", "-") for b in backends)
    folder = work / "packages" / f"{package.id}-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.yaml").write_text(yaml.safe_dump(content))
    return load_package(folder)


def run_case(
    label: str,
    package: ModelPackage,
    paths: list[Path],
    *,
    device: str,
    engine_dir: Path,
    repeat: int,
    out: Path,
) -> Row | str:
    try:
        started = time.perf_counter()
        runner = ModelRunner(package, device=device, engine_dir=engine_dir, profile=True)
        open_seconds = time.perf_counter() - started
    except BackendUnavailableError as exc:
        return f"{label}: skipped ({exc})"
    if runner.backend.name != package.manifest.backends[0].name:
        runner.close()
        return f"{label}: skipped ({runner.fallbacks[0].reason})"
    cached_open: float | None = None
    hit: bool | None = None
    if runner.backend.name == "tensorrt":
        # Open it again: the engine must now come from the cache, not be built again.
        runner.close()
        engines = _engine_files(engine_dir)
        started = time.perf_counter()
        runner = ModelRunner(package, device=device, engine_dir=engine_dir, profile=True)
        cached_open = time.perf_counter() - started
        hit = _engine_files(engine_dir) == engines
    started = time.perf_counter()
    volume = load_series(paths)
    decode = time.perf_counter() - started
    runner.predict(volume)  # warm: compiled kernels, CUDA graphs, allocator
    best: Row | None = None
    for _ in range(repeat):
        prediction = runner.predict(volume)
        started = time.perf_counter()
        write_results(volume, prediction, package.manifest, out_dir=out)
        timings = {"decode": decode, **prediction.timings, "write": time.perf_counter() - started}
        row = Row(
            label,
            # "@cpu": the CPU provider stood in for a GPU one (CPU-only onnxruntime).
            f"{prediction.backend}/{prediction.precision}"
            + ("@cpu" if prediction.device == "cpu" != device else ""),
            prediction.windows,
            timings,
            open_seconds=open_seconds,
            cached_open_seconds=cached_open,
            cache_hit=hit,
        )
        if best is None or row.total < best.total:
            best = row
    runner.close()
    assert best is not None
    return best


def _engine_files(engine_dir: Path) -> set[str]:
    return {p.name for p in engine_dir.rglob("*.engine")} if engine_dir.is_dir() else set()


def cases(
    work: Path, *, quick: bool, only: set[str] | None
) -> list[tuple[str, Callable[[], tuple[ModelPackage, list[Path]]], list[dict[str, Any]]]]:
    # GPU-only rows (skipped with the reason elsewhere): ONNX Runtime's CUDA provider,
    # TensorRT in both precisions.
    ort_cuda = {"name": "onnxruntime", "execution_providers": ["cuda"]}
    gpu: list[dict[str, Any]] = [
        ort_cuda,
        {"name": "tensorrt", "precision": "fp32"},
        {"name": "tensorrt", "precision": "fp16"},
    ]
    listed: list[
        tuple[str, Callable[[], tuple[ModelPackage, list[Path]]], list[dict[str, Any]]]
    ] = []
    ct_lungs = load_package(BUILTIN_DIR / "ct_lungs")
    ct_source = "" if lidc_available() else SYNTHETIC_CT
    table: list[tuple[str, Callable[[], tuple[ModelPackage, list[Path]]], list[dict[str, Any]]]]
    table = [
        (
            "ct-lungs" + ct_source,
            lambda: (ct_lungs, lidc_series(work)),
            [{"name": "torch"}, {"name": "torch", "compile": True}],
        ),
        (
            "unet" + ct_source,
            lambda: (unet_package(work, [{"name": "torch"}], quick=quick), lidc_series(work)),
            [
                {"name": "torch"},
                {"name": "torch", "compile": True},
                {"name": "torch", "precision": "fp16"},
                {"name": "onnxruntime"},
                *gpu,
            ],
        ),
        (
            "deepbrain",
            lambda: (
                load_package(EXAMPLES_DIR / "brain_extraction_deepbrain"),
                head_series(work, small=quick),
            ),
            [{"name": "onnxruntime"}, *gpu],
        ),
        (
            "mindgrab",
            lambda: (
                load_package(EXAMPLES_DIR / "brain_extraction_mindgrab"),
                head_series(work, small=quick),
            ),
            [{"name": "onnxruntime"}, *gpu],
        ),
    ]
    for name, make, backends in table:
        if only is None or name.split(" ")[0] in only:
            listed.append((name, make, backends))
    return listed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cases", help="comma-separated: ct-lungs,unet,deepbrain,mindgrab")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small inputs")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile cases")
    parser.add_argument("--json", type=Path, help="also write the rows (and skips) here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    only = set(args.cases.split(",")) if args.cases else None
    rows: list[Row] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pacs-ai-bench-") as tmp:
        work = Path(tmp)
        for name, make, backends in cases(work, quick=args.quick, only=only):
            package, paths = make()
            for backend in backends:
                if args.no_compile and backend.get("compile"):
                    continue
                label = f"{name} [{_describe(backend)}]"
                variant = with_backends(package, [backend], work)
                result = run_case(
                    label,
                    variant,
                    paths,
                    device=args.device,
                    engine_dir=work / "engines",
                    repeat=args.repeat,
                    out=work / "out",
                )
                if isinstance(result, str):
                    skipped.append(result)
                else:
                    rows.append(result)
                    print_row(result, header=len(rows) == 1, device=args.device)
                if args.json:
                    # After every case: a run stopped at its time limit keeps what it did.
                    _write_json(args.json, rows, skipped)
    for line in skipped:
        print(line)
    if args.json:
        _write_json(args.json, rows, skipped)


def _write_json(path: Path, rows: list[Row], skipped: list[str]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"rows": [asdict(r) for r in rows], "skipped": skipped}))
    partial.replace(path)


def _describe(backend: dict[str, Any]) -> str:
    """``torch+compile``, ``torch fp16`` (AMP), ``onnxruntime cuda``, ``tensorrt fp16``."""
    text = str(backend["name"]) + ("+compile" if backend.get("compile") else "")
    if backend.get("execution_providers"):
        text += " " + "+".join(backend["execution_providers"])
    if backend.get("precision", "fp32") != "fp32":
        text += f" {backend['precision']}"
    return text


def print_row(row: Row, *, header: bool, device: str) -> None:
    if header:
        where = (
            torch.cuda.get_device_name(0)
            if device.startswith("cuda")
            else f"{torch.get_num_threads()} CPU threads"
        )
        print(f"device: {device} ({where})")
        print(
            f"{'case':34} {'backend':18} {'windows':>7} {'ms/window':>10} {'ms/study':>10} "
            f"{'windows/s':>9} "
            + " ".join(f"{s:>11}" for s in STAGES)
            + f" {'total s':>8} {'network %':>9} {'open s':>8} {'engine cache':>14}"
        )
    t = row.timings
    per_second = row.windows / t["network"] if t["network"] > 0 else float("inf")
    share = 100 * t["network"] / row.total
    cache = ""
    if row.cached_open_seconds is not None:
        cache = f"{'hit' if row.cache_hit else 'MISS'} {row.cached_open_seconds:.2f} s"
    print(
        f"{row.case:34} {row.backend:18} {row.windows:7d} {row.network_ms_per_window:10.1f} "
        f"{row.network_ms_per_study:10.1f} {per_second:9.2f} "
        + " ".join(f"{t.get(s, 0.0):11.3f}" for s in STAGES)
        + f" {row.total:8.2f} {share:8.1f}% {row.open_seconds:8.2f} {cache:>14}",
        flush=True,
    )


if __name__ == "__main__":
    main()
