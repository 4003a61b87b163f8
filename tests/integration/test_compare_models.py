"""`pacs-ai compare --model A --with B` on finished jobs in a real ledger: two
segmentation models on a phantom CT kept in the spool (their SEGs written by highdicom),
and two classification models on the same films."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pytest
from pydicom import dcmread

from core.jobs import InstanceRecord, JobRecord, JobState, SeriesState
from core.ledger import Ledger
from core.settings import load_settings
from pacs_ai.compare.masks import SegReadError, SourceGrid, read_seg
from pacs_ai.phantom import PhantomSeries, write_chest_ct_series

#: Segment codes (SNOMED CT) both models use: segments pair by them.
RIGHT_LUNG = hd.sr.CodedConcept("3341006", "SCT", "Right lung")
LEFT_LUNG = hd.sr.CodedConcept("44029006", "SCT", "Left lung")
#: Model B's left lung is model A's shifted by this many columns.
SHIFT = 2


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "pacs-ai.yaml"
    path.write_text(json.dumps({"data_dir": str(tmp_path / "data"), "monitor": {"enabled": False}}))
    return path


@pytest.fixture
def ledger(config: Path) -> Ledger:
    instance = Ledger(load_settings(config, env={}).resolved_ledger_url)
    instance.create_schema()
    return instance


@pytest.fixture
def phantom(tmp_path: Path) -> PhantomSeries:
    return write_chest_ct_series(tmp_path / "spool" / "ct", slices=20, size=64, seed=3)


def write_seg(phantom: PhantomSeries, labels: npt.NDArray[np.uint8], path: Path, name: str) -> Path:
    sources = [dcmread(p) for p in phantom.paths]
    segments = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=concept.meaning,
            segmented_property_category=hd.sr.CodedConcept(
                "91723000", "SCT", "Anatomical Structure"
            ),
            segmented_property_type=concept,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name=name,
                version="1",
                family=hd.sr.CodedConcept("123109", "DCM", "Manual Processing"),
            ),
        )
        for number, concept in ((1, RIGHT_LUNG), (2, LEFT_LUNG))
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=100,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name=name,
        software_versions="1",
        device_serial_number="1",
    )
    seg.save_as(path)
    return path


def record_series(ledger: Ledger, phantom: PhantomSeries) -> None:
    ledger.record_instances(
        [
            InstanceRecord(
                sop_instance_uid=str(dcmread(p, stop_before_pixels=True).SOPInstanceUID),
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                series_instance_uid=phantom.series_instance_uid,
                study_instance_uid=phantom.study_instance_uid,
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=str(p),
                size=p.stat().st_size,
                received_at=time.time(),
                calling_ae="CT1",
                called_ae="PACSAI",
                peer="127.0.0.1:1",
                modality="CT",
            )
            for p in phantom.paths
        ]
    )
    ledger.set_series_state(
        phantom.series_instance_uid, SeriesState.ROUTED, completed_at=time.time()
    )


def finished(ledger: Ledger, series_uid: str, model: str, result: dict[str, Any]) -> JobRecord:
    job = ledger.open_job(
        ledger.get_series(series_uid), route="validation", model_id=model,
        destinations=["pacs"], priority=5, shadow=True,
    )  # fmt: skip
    ledger.transition(job.job_id, JobState.QUEUED)
    ledger.transition(job.job_id, JobState.RUNNING)
    ledger.transition(job.job_id, JobState.DELIVERING, result=result)
    ledger.transition(job.job_id, JobState.DONE)
    return ledger.get_job(job.job_id)


def seg_result(path: Path) -> dict[str, Any]:
    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    return {
        "files": [str(path)],
        "deliveries": {"pacs": [["seg", uid, "1.2.840.10008.5.1.4.1.1.66.4", str(path)]]},
        "seg_sop_instance_uid": uid,
    }


def compare(config: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pacs_ai",
            "compare",
            "--config",
            str(config),
            "--out",
            str(out),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def rows(out: Path) -> list[dict[str, str]]:
    with (out / "cases.csv").open() as read:
        return list(csv.DictReader(read))


def test_two_segmentation_models_are_compared_segment_by_segment_and_as_a_union(
    config: Path, ledger: Ledger, phantom: PhantomSeries, tmp_path: Path
) -> None:
    record_series(ledger, phantom)
    mine = phantom.labels.copy()
    theirs = np.where(phantom.labels == 2, 0, phantom.labels).astype(np.uint8)
    theirs[np.roll(phantom.labels == 2, SHIFT, axis=2)] = 2
    a = finished(
        ledger,
        phantom.series_instance_uid,
        "lungs-v2",
        seg_result(write_seg(phantom, mine, tmp_path / "a.dcm", "v2")),
    )
    b = finished(
        ledger,
        phantom.series_instance_uid,
        "lungs-v1",
        seg_result(write_seg(phantom, theirs, tmp_path / "b.dcm", "v1")),
    )

    ran = compare(config, tmp_path / "out", "--model", "lungs-v2", "--with", "lungs-v1")

    assert ran.returncode == 0, ran.stdout + ran.stderr
    found = {r["name"]: r for r in rows(tmp_path / "out")}
    assert set(found) == {"all segments (union)", "Right lung", "Left lung"}
    assert {(r["job_a"], r["other"]) for r in found.values()} == {(a.job_id, b.job_id)}
    assert float(found["Right lung"]["dice"]) == 1.0
    assert float(found["Right lung"]["hd95_mm"]) == 0.0
    assert 0.5 < float(found["Left lung"]["dice"]) < 1.0
    column_mm = phantom.spacing[0]
    assert float(found["Left lung"]["hd95_mm"]) == pytest.approx(SHIFT * column_mm, abs=0.01)
    assert float(found["Left lung"]["volume_difference_ml"]) == pytest.approx(0.0, abs=0.05)
    assert found["Left lung"]["pairing"].startswith("by Segmented Property Type (2 pairs)")
    assert "union Dice: median" in ran.stdout and "[1/1] series" in ran.stderr


def test_two_classification_models_are_compared_film_by_film_in_a_confusion_matrix(
    config: Path, ledger: Ledger, phantom: PhantomSeries, tmp_path: Path
) -> None:
    record_series(ledger, phantom)
    films = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in phantom.paths[:3]]

    def result(*pneumonia: float) -> dict[str, Any]:
        return {"images": [{"sop_instance_uid": uid, "probabilities": {"normal": 1 - p, "pneumonia": p}}
                           for uid, p in zip(films, pneumonia, strict=True)]}  # fmt: skip

    finished(ledger, phantom.series_instance_uid, "cxr-v2", result(0.1, 0.8, 0.6))
    finished(ledger, phantom.series_instance_uid, "cxr-v1", result(0.2, 0.7, 0.3))

    ran = compare(config, tmp_path / "out", "--model", "cxr-v2", "--with", "cxr-v1")

    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert [(r["top_class_a"], r["top_class_b"], r["agree"]) for r in rows(tmp_path / "out")] == [
        ("normal", "normal", "yes"),
        ("pneumonia", "pneumonia", "yes"),
        ("pneumonia", "normal", "no"),
    ]
    assert "most probable class agrees on 66.7 % of 3 image(s)" in ran.stdout
    assert 'id="confusion-matrix"' in (tmp_path / "out" / "report.html").read_text()


def test_a_model_without_finished_jobs_is_refused_with_a_runnable_hint(
    config: Path, ledger: Ledger, tmp_path: Path
) -> None:
    ran = compare(config, tmp_path / "out", "--model", "nothing-here", "--with", "other")

    assert ran.returncode == 1
    assert (
        "no finished job of model nothing-here in the ledger; `pacs-ai status` lists the jobs"
        in ran.stderr
    )


def test_a_series_missing_files_on_this_node_is_not_compared_and_the_case_says_so(
    config: Path, ledger: Ledger, phantom: PhantomSeries, tmp_path: Path
) -> None:
    record_series(ledger, phantom)
    finished(ledger, phantom.series_instance_uid, "lungs-v2",
             seg_result(write_seg(phantom, phantom.labels, tmp_path / "a.dcm", "v2")))  # fmt: skip
    finished(ledger, phantom.series_instance_uid, "lungs-v1",
             seg_result(write_seg(phantom, phantom.labels, tmp_path / "b.dcm", "v1")))  # fmt: skip
    phantom.paths[7].unlink()

    ran = compare(config, tmp_path / "out", "--model", "lungs-v2", "--with", "lungs-v1")

    assert ran.returncode == 0, ran.stdout + ran.stderr
    [row] = rows(tmp_path / "out")
    assert (row["kind"], row["dice"]) == ("none", "")
    assert row["problem"] == "source series incomplete on this node: 19 of 20 files"


def test_an_unreadable_seg_is_its_cases_problem_and_the_other_series_are_compared(
    config: Path, ledger: Ledger, tmp_path: Path
) -> None:
    good, garbled, segless = (
        write_chest_ct_series(tmp_path / "spool" / f"ct-{seed}", slices=20, size=64, seed=seed)
        for seed in (3, 4, 5)
    )
    for number, series in enumerate((good, garbled, segless)):
        record_series(ledger, series)
        mine = write_seg(series, series.labels, tmp_path / f"a-{number}.dcm", "v2")
        finished(ledger, series.series_instance_uid, "lungs-v2", seg_result(mine))
    finished(ledger, good.series_instance_uid, "lungs-v1",
             seg_result(write_seg(good, good.labels, tmp_path / "b-good.dcm", "v1")))  # fmt: skip
    not_dicom = tmp_path / "b-garbled.dcm"
    not_dicom.write_bytes(b"this is no DICOM file" * 50)
    delivered = ["seg", "1.2.3", "1.2.840.10008.5.1.4.1.1.66.4", str(not_dicom)]
    finished(ledger, garbled.series_instance_uid, "lungs-v1",
             {"files": [str(not_dicom)], "deliveries": {"pacs": [delivered]}})  # fmt: skip
    no_segments = write_seg(segless, segless.labels, tmp_path / "b-segless.dcm", "v1")
    without = dcmread(no_segments)
    del without.SegmentSequence
    without.save_as(no_segments)
    finished(ledger, segless.series_instance_uid, "lungs-v1", seg_result(no_segments))

    ran = compare(config, tmp_path / "out", "--model", "lungs-v2", "--with", "lungs-v1")

    assert ran.returncode == 0, ran.stdout + ran.stderr
    found = {r["series_uid"]: r for r in rows(tmp_path / "out") if r["kind"] != "segment"}
    assert set(found) == {garbled.series_instance_uid, segless.series_instance_uid}
    assert found[garbled.series_instance_uid]["problem"].startswith(
        "model lungs-v1's SEG: b-garbled.dcm: not a readable DICOM file"
    )
    assert "cannot be read" in found[segless.series_instance_uid]["problem"]
    assert "SegmentSequence" in found[segless.series_instance_uid]["problem"]
    [union] = [r for r in rows(tmp_path / "out") if r["name"] == "all segments (union)"]
    assert (union["series_uid"], float(union["dice"])) == (good.series_instance_uid, 1.0)
    assert "2 case(s) not compared: see the report" in ran.stdout


def test_reading_a_seg_keeps_no_decoded_pixels_on_its_data_set(
    phantom: PhantomSeries, tmp_path: Path
) -> None:
    seg = dcmread(write_seg(phantom, phantom.labels, tmp_path / "a.dcm", "v2"))
    grid = SourceGrid.read(phantom.paths)

    masks = read_seg(seg, grid)

    assert sum(int(s.mask.sum()) for s in masks.segments) == int((phantom.labels > 0).sum())
    assert seg._pixel_array is None, "pydicom's cache of the decoded frames is left empty"


def test_a_source_series_without_pixel_spacing_is_refused_with_a_reason(
    phantom: PhantomSeries,
) -> None:
    for path in phantom.paths:
        header = dcmread(path)
        del header.PixelSpacing
        header.save_as(path)

    with pytest.raises(SegReadError, match=r"no usable geometry.*PixelSpacing"):
        SourceGrid.read(phantom.paths)
