"""benchmarks/gpu-check without a GPU, and with stand-ins for the GPU and the project's
Python: what it says, what it runs, and that a failed step does not stop it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu-check"

FAKE_NVIDIA_SMI = """#!/bin/sh
if [ "$1" = "--query-gpu=name,driver_version,memory.total" ]; then
  echo "NVIDIA H200, 570.86, 143771 MiB"; exit 0
fi
echo "| NVIDIA-SMI 570.86   Driver Version: 570.86   CUDA Version: 12.8 |"
"""
#: The project's Python as the script sees it: CUDA torch and onnxruntime-gpu installed,
#: TensorRT not installable, the tests passing, the benchmark writing one row.
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/calls"
case "$*" in
  *"import torch"*) echo "2.13.0+cu128 True";;
  *"import onnxruntime"*) echo "CUDAExecutionProvider CPUExecutionProvider";;
  *"import tensorrt"*) exit 1;;
  *"pip install tensorrt"*) echo "ERROR: No matching distribution found" >&2; exit 1;;
  *pytest*) echo "4 passed, 1 skipped in 3.10s";;
  *inference.py*)
    out=$(echo "$*" | sed 's/.*--json \\([^ ]*\\).*/\\1/')
    echo '%s' > "$out";;
esac
"""
ROW = {
    "case": "unet [tensorrt fp16]",
    "backend": "tensorrt/fp16",
    "windows": 40,
    "timings": {"network": 0.8},
    "open_seconds": 41.0,
    "cached_open_seconds": 0.6,
    "cache_hit": True,
}


def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_without_a_gpu_it_says_so_installs_nothing_and_exits_2(tmp_path: Path) -> None:
    done = run({"PACS_AI_NVIDIA_SMI": str(tmp_path / "no-nvidia-smi")})

    assert done.returncode == 2
    assert "no NVIDIA GPU here: nvidia-smi not found" in done.stderr
    assert done.stdout == ""


def test_a_failed_install_is_reported_and_the_tests_and_benchmark_still_run(
    tmp_path: Path,
) -> None:
    nvidia_smi = tmp_path / "nvidia-smi"
    nvidia_smi.write_text(FAKE_NVIDIA_SMI)
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON % json.dumps({"rows": [ROW], "skipped": []}))
    for tool in (nvidia_smi, python):
        tool.chmod(0o755)

    done = run({"PACS_AI_NVIDIA_SMI": str(nvidia_smi), "PACS_AI_PYTHON": str(python)})

    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0].startswith("pacs-ai GPU check") and "NVIDIA H200" in lines[0]
    status = {line.split("  ")[0].strip(): line for line in lines[2:8]}
    assert "FAILED" in status["install tensorrt"]
    assert "No matching distribution found" in status["install tensorrt"]
    assert "already installed: torch 2.13.0+cu128" in status["install torch==2.13.0 (CUDA)"]
    assert "4 passed, 1 skipped" in status["tests/gpu (pytest -m gpu)"]
    [row] = [line for line in lines if line.startswith("unet [tensorrt fp16]")]
    assert row.split()[-6:] == ["20.0", "800.0", "41.00", "hit", "0.60", "s"]
    calls = (tmp_path / "calls").read_text()
    assert "benchmarks/inference.py --device cuda:0" in calls


def test_offline_it_installs_the_carried_wheels_and_reports_what_is_missing(
    tmp_path: Path,
) -> None:
    nvidia_smi = tmp_path / "nvidia-smi"
    nvidia_smi.write_text(FAKE_NVIDIA_SMI)
    python = tmp_path / "python"
    # A CPU-only onnxruntime: the GPU providers are missing, and offline nothing is fetched.
    python.write_text(
        (FAKE_PYTHON % json.dumps({"rows": [ROW], "skipped": []})).replace(
            '"CUDAExecutionProvider CPUExecutionProvider"', '"CPUExecutionProvider"'
        )
    )
    for tool in (nvidia_smi, python):
        tool.chmod(0o755)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "pydicom-3.0.2-py3-none-any.whl").write_bytes(b"")

    done = subprocess.run(
        [str(SCRIPT), "--offline", "--wheels", str(wheels)],
        env={**os.environ, "PACS_AI_NVIDIA_SMI": str(nvidia_smi), "PACS_AI_PYTHON": str(python)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 1
    status = {line.split("  ")[0].strip(): line for line in done.stdout.splitlines()[2:9]}
    assert "1 wheel(s)" in status["install wheels from wheels/"]
    assert "MISSING" in status["install onnxruntime-gpu"]
    assert "MISSING" in status["install tensorrt"]
    calls = (tmp_path / "calls").read_text()
    assert "--no-index" in calls and "--target" in calls
    assert "install --upgrade onnxruntime-gpu" not in calls and "tensorrt>=10" not in calls
