"""`pacs-ai demo`, the README's main job, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.support.peers import dciodvfy_errors

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_the_demo_writes_a_valid_seg_and_sr_and_prints_its_stages(tmp_path: Path) -> None:
    out = tmp_path / "out"

    result = subprocess.run(
        [sys.executable, "-m", "pacs_ai", "demo", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "total: last image to results in PACS" in result.stdout
    assert "infer: network" in result.stdout
    seg, sr = dcmread(out / "seg.dcm"), dcmread(out / "sr.dcm")
    assert seg.Modality == "SEG" and sr.Modality == "SR"
    assert dciodvfy_errors(out / "seg.dcm") == []
    assert dciodvfy_errors(out / "sr.dcm") == []
    assert "demo data kept" not in result.stderr
