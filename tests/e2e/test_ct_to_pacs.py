"""The whole path, for real: DCMTK sends the LIDC chest CT to `pacs-ai serve`, a
`pacs-ai worker` runs ct-lungs, and the SEG and SR arrive in Orthanc (the PACS)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import highdicom as hd
import nrrd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from core.jobs import JobState
from tests.support.pacs_ai import PacsAiDeployment
from tests.support.peers import Orthanc, RedisServer, dciodvfy_errors, storescu

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(900)]

REFERENCE_VOLUME_ML = 2902.0
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
VOLUME_CODE = "118565006"


@pytest.fixture
def deployment(
    tmp_path: Path, redis_server: RedisServer, orthanc: Orthanc
) -> Iterator[PacsAiDeployment]:
    # The configuration, with this test's ports and folders.
    config: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "broker_url": redis_server.url,
        "node": {"ae_title": "PACSAI", "host": "127.0.0.1"},
        "completion": {"series_quiet_seconds": 10},
        "destinations": {
            "pacs": {"host": "127.0.0.1", "port": orthanc.dicom_port, "ae_title": "ORTHANC"}
        },
        "routes": [
            {
                "name": "chest-ct",
                "match": {"Modality": "CT"},
                "models": ["ct-lungs"],
                "send_results_to": ["pacs"],
            }
        ],
    }
    running = PacsAiDeployment(tmp_path / "pacs-ai", config)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def test_the_lidc_ct_comes_back_to_orthanc_as_one_seg_and_one_sr(
    deployment: PacsAiDeployment,
    orthanc: Orthanc,
    lidc_ct_dir: Path,
    lidc_reference_dir: Path,
    artifacts_dir: Path,
) -> None:
    sent = storescu(lidc_ct_dir, "127.0.0.1", deployment.port, "PACSAI", "MODALITY")
    last_image_at = time.time()
    assert sent.returncode == 0, sent.stdout + sent.stderr
    series_uid = str(
        dcmread(next(lidc_ct_dir.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID
    )

    job = deployment.wait_for_job(series_uid, JobState.DONE, timeout=300)

    # Every state change is in the ledger, in order, with its time.
    events = deployment.ledger.events(job.job_id)
    states = [e.state for e in events]
    assert states[:2] == [JobState.RECEIVING, JobState.READY]
    for expected in (JobState.QUEUED, JobState.RUNNING, JobState.DELIVERING, JobState.DONE):
        assert expected in states
    assert (
        states.index(JobState.QUEUED)
        < states.index(JobState.RUNNING)
        < states.index(JobState.DELIVERING)
    )
    assert deployment.ledger.get_series(series_uid).instance_count == 275
    (artifacts_dir / "timeline.txt").write_text(
        "\n".join(
            f"{e.state.value:11} {e.at - last_image_at:+8.2f} s {e.reason or ''} {e.detail.get('timings', '')}"
            for e in events
        )
    )

    seg, sr = _results_in_orthanc(orthanc, series_uid)
    for name, dataset in (("seg.dcm", seg), ("sr.dcm", sr)):
        path = artifacts_dir / name
        dataset.save_as(path)
        assert dciodvfy_errors(path) == [], f"{name} is not a valid DICOM object"

    # The SEG: two lungs, SNOMED CT coded, with algorithm identification, on the source series.
    segments = {s.SegmentNumber: s for s in seg.SegmentSequence}
    assert {s.SegmentLabel for s in segments.values()} == {"Right lung", "Left lung"}
    for segment in segments.values():
        category = segment.SegmentedPropertyCategoryCodeSequence[0]
        # PS3.16 CID 7150 "Anatomical Structure" (dcmqi still writes the retired 123037004).
        assert (category.CodeValue, category.CodingSchemeDesignator) == ("91723000", "SCT")
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "Classical lung segmentation (HU threshold)"
        assert algorithm.AlgorithmVersion == "1.0.0"
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123104"
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        assert segment.SegmentAlgorithmName
    assert {s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in segments.values()} == {
        "3341006",
        "44029006",
    }
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == job.study_instance_uid

    # The mask agrees with dcmqi's reference, and the SR's lung volumes add up to its 2,902 mL.
    labels = _seg_labels_on_ct_grid(seg, lidc_ct_dir)
    reference, _ = nrrd.read(str(lidc_reference_dir / "lung_label.nrrd"))
    reference_zyx = np.transpose(reference, (2, 1, 0)) > 0
    dice = (
        2
        * np.logical_and(labels > 0, reference_zyx).sum()
        / ((labels > 0).sum() + reference_zyx.sum())
    )
    assert dice >= 0.95
    volumes = _volumes_ml(sr)
    assert len(volumes) == 2, "one Volume per lung"
    total = sum(volumes)
    assert abs(total - REFERENCE_VOLUME_ML) / REFERENCE_VOLUME_ML <= 0.10
    (artifacts_dir / "measurements.txt").write_text(f"dice {dice:.4f}\nvolumes_ml {volumes}\n")

    # Sending the series again re-runs the job: the results replace, never duplicate.
    rerun_after = time.time()
    assert storescu(lidc_ct_dir, "127.0.0.1", deployment.port, "PACSAI", "MODALITY").returncode == 0
    again = deployment.wait_for_job(series_uid, JobState.DONE, after=rerun_after, timeout=300)
    assert again.job_id == job.job_id
    seg_again, sr_again = _results_in_orthanc(orthanc, series_uid)
    assert (seg_again.SOPInstanceUID, sr_again.SOPInstanceUID) == (
        seg.SOPInstanceUID,
        sr.SOPInstanceUID,
    )


def _results_in_orthanc(orthanc: Orthanc, series_uid: str) -> tuple[Dataset, Dataset]:
    """The one SEG and the one SR in Orthanc that reference ``series_uid``."""
    by_class: dict[str, list[Dataset]] = {SEG_STORAGE: [], COMPREHENSIVE_3D_SR: []}
    for instance_id in orthanc.instances():
        dataset = dcmread(BytesIO(orthanc.download(instance_id)))
        if dataset.SOPClassUID in by_class:
            by_class[dataset.SOPClassUID].append(dataset)
    assert len(by_class[SEG_STORAGE]) == 1, "expected exactly one SEG in the PACS"
    assert len(by_class[COMPREHENSIVE_3D_SR]) == 1, "expected exactly one SR in the PACS"
    return by_class[SEG_STORAGE][0], by_class[COMPREHENSIVE_3D_SR][0]


def _seg_labels_on_ct_grid(seg: Dataset, ct_dir: Path) -> np.ndarray:
    headers = sorted(
        (dcmread(p, stop_before_pixels=True) for p in ct_dir.glob("*.dcm")),
        key=lambda ds: float(ds.ImagePositionPatient[2]),
    )
    segmentation = hd.seg.Segmentation.from_dataset(seg)
    pixels = segmentation.get_pixels_by_source_instance(
        source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in headers],
        combine_segments=True,
        ignore_spatial_locations=True,
    )
    return np.asarray(pixels)


def _volumes_ml(sr: Dataset) -> list[float]:
    """Every Volume measurement (SCT 118565006) in the SR, in mL."""
    values: list[float] = []

    def walk(items: Any) -> None:
        for item in items:
            name = item.get("ConceptNameCodeSequence")
            if item.get("ValueType") == "NUM" and name and name[0].CodeValue == VOLUME_CODE:
                measured = item.MeasuredValueSequence[0]
                assert measured.MeasurementUnitsCodeSequence[0].CodingSchemeDesignator == "UCUM"
                values.append(float(measured.NumericValue))
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(sr.ContentSequence)
    return values
