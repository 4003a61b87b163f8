"""Enhanced multi-frame images end to end: received by the node as one instance that
completes its series, and run through a worker's job to the results of the single-frame
series they were converted from, with SEG frames and SR references on the source frames."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import dcmread

from core.jobs import JobRecord, JobState, SeriesState
from inference.frames import frame_geometries
from inference.volume import load_series
from tests.support.brain import Head, small_head, write_mr_series
from tests.support.dicom_checks import walk
from tests.support.jobs import DEEPBRAIN, brain_settings, result_file, run_job, seg_mask
from tests.support.node import spooled_files, start_node
from tests.support.peers import LOCALHOST, dciodvfy, storescu, wait_for
from workers.runtime import WorkerRuntime

pytestmark = pytest.mark.peers

#: What dciodvfy says about every object made from these test series: they have no
#: Study ID (Type 2, only needed for a DICOMDIR).
KNOWN_WARNINGS = {
    "Warning - Missing attribute or value that would be needed to build DICOMDIR - Study ID",
}


def enhanced_mr(files: list[Path], out: Path) -> Path:
    """``files`` as one Legacy Converted Enhanced MR image (PS3.3 A.71) at ``out``."""
    legacy = [dcmread(path) for path in files]
    image = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy,
        series_instance_uid=str(legacy[0].SeriesInstanceUID),
        series_number=1,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    image.save_as(out, enforce_file_format=True)
    return out


def test_an_enhanced_mr_is_received_as_one_instance_that_completes_its_series(
    tmp_path: Path,
) -> None:
    voxels = (np.arange(8 * 12 * 12, dtype=np.float32).reshape(8, 12, 12) % 200).astype(np.float32)
    head = Head(voxels=voxels, brain=voxels > 100, spacing=(0.9, 0.9, 3.0), direction=np.eye(3))
    files = write_mr_series(head, tmp_path / "single")
    enhanced = enhanced_mr(files, tmp_path / "enhanced.dcm")
    series_uid = str(dcmread(enhanced, stop_before_pixels=True).SeriesInstanceUID)
    quick = {"series_quiet_seconds": 0.5, "check_interval_seconds": 0.1}

    with start_node(tmp_path / "data", completion=quick) as node:
        # -R: propose only the SOP classes sent (storescu's default list lacks Legacy
        # Converted Enhanced MR).
        sent = storescu(enhanced, LOCALHOST, node.port, "PACSAI", "STORESCU", "-R")
        assert sent.returncode == 0, sent.stderr

        def completed() -> bool:
            try:
                return node.ledger.get_series(series_uid).state == SeriesState.UNROUTED
            except KeyError:
                return False

        wait_for(completed, 20, "completion of the enhanced series")
        assert node.ledger.get_series(series_uid).instance_count == 1
        [stored] = spooled_files(node)

    # The data set as sent (the node writes its own File Meta Information).
    assert dcmread(stored) == dcmread(enhanced)
    volume = load_series([stored])
    assert np.array_equal(volume.voxels, load_series(files).voxels)


@pytest.fixture(scope="module")
def head() -> Head:
    # Real size (2 mm voxels), so that the brain's volume is a plausible one.
    return small_head(step=2, spacing=(2.0, 2.0, 2.0))


@pytest.fixture(scope="module")
def series_pair(head: Head, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    """The head as single-frame images, and the same images as one enhanced MR."""
    folder = tmp_path_factory.mktemp("head")
    files = write_mr_series(head, folder / "single")
    return files, enhanced_mr(files, folder / "enhanced.dcm")


@pytest.fixture(scope="module")
def jobs(
    shared_data: Path,
    series_pair: tuple[list[Path], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[JobRecord, JobRecord]]:
    assert (shared_data / "models").is_dir()
    files, enhanced = series_pair
    runtime = WorkerRuntime(brain_settings(tmp_path_factory.mktemp("worker")))
    try:
        # Each series on its own: the enhanced image is given a series UID of its own.
        dataset = dcmread(enhanced)
        dataset.SeriesInstanceUID = hd.UID()
        moved = enhanced.with_name("enhanced-own-series.dcm")
        dataset.save_as(moved, enforce_file_format=True)
        yield run_job(runtime, files, DEEPBRAIN), run_job(runtime, [moved], DEEPBRAIN)
    finally:
        runtime.close()


def test_the_enhanced_form_of_a_series_gives_the_same_labels_as_its_single_frames(
    jobs: tuple[JobRecord, JobRecord], series_pair: tuple[list[Path], Path]
) -> None:
    single_job, enhanced_job = jobs
    files, enhanced = series_pair

    assert single_job.state is JobState.DONE and enhanced_job.state is JobState.DONE
    single = seg_mask(
        result_file(single_job, "seg"),
        [(str(dcmread(f, stop_before_pixels=True).SOPInstanceUID), None) for f in files],
    )
    multi = seg_mask(result_file(enhanced_job, "seg"), frames_in_slice_order(enhanced))
    assert single.any()
    assert np.array_equal(single, multi)
    assert enhanced_job.result["measurements_ml"] == single_job.result["measurements_ml"]


def frames_in_slice_order(enhanced: Path) -> list[tuple[str, int | None]]:
    """(SOP Instance UID, frame number) of each frame, sorted along the slice normal
    (here z: the series is axial)."""
    header = dcmread(enhanced, stop_before_pixels=True)
    frames = sorted(frame_geometries(header), key=lambda f: (f.position or (0, 0, 0))[2])
    return [(str(header.SOPInstanceUID), frame.frame_number) for frame in frames]


def test_the_seg_and_sr_on_an_enhanced_image_reference_its_frames_and_pass_dciodvfy(
    jobs: tuple[JobRecord, JobRecord], series_pair: tuple[list[Path], Path]
) -> None:
    _, enhanced_job = jobs
    _, enhanced = series_pair
    frames = {frame for _, frame in frames_in_slice_order(enhanced)}
    seg_path, sr_path = result_file(enhanced_job, "seg"), result_file(enhanced_job, "sr")

    seg = pydicom.dcmread(seg_path)
    referenced = {
        int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        for item in seg.PerFrameFunctionalGroupsSequence
    }
    assert referenced <= frames and len(referenced) == int(seg.NumberOfFrames)
    sr = pydicom.dcmread(sr_path)
    library = {
        int(item.ReferencedSOPSequence[0].ReferencedFrameNumber)
        for item in walk(sr)
        if item.get("ValueType") == "IMAGE"
        and "ReferencedFrameNumber" in item.ReferencedSOPSequence[0]
    }
    assert library == frames
    for path in (seg_path, sr_path):
        errors, warnings = dciodvfy(path)
        assert errors == [], f"{path.name}: {errors}"
        assert set(warnings) <= KNOWN_WARNINGS, f"{path.name}: {warnings}"
