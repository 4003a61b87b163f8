"""Running one job the way a worker does, on files filed as the node files them.

A :class:`~workers.runtime.WorkerRuntime` with the example brain packages (weights from
../shared/data), no destinations (results are kept, the job ends DONE), and the
:class:`~workers.execute.JobExecutor` a Celery task would call.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt

from core.jobs import JobRecord, JobState
from core.messages import RunJobMessage
from core.settings import Settings, validate_settings
from models.registry import EXAMPLES_DIR
from tests.support.spooling import spool
from workers.execute import JobExecutor
from workers.runtime import WorkerRuntime

MINDGRAB = "brain-extraction-mindgrab"
DEEPBRAIN = "brain-extraction-deepbrain"
BRAIN_PACKAGES = (
    EXAMPLES_DIR / "brain_extraction_mindgrab",
    EXAMPLES_DIR / "brain_extraction_deepbrain",
)


def brain_settings(data_dir: Path) -> Settings:
    """A CPU worker serving the two example brain-extraction packages."""
    return validate_settings(
        {
            "data_dir": str(data_dir),
            "model_dirs": [str(folder) for folder in BRAIN_PACKAGES],
            "worker": {"device": "cpu", "prefetch_next_series": "off"},
        }
    )


def run_job(runtime: WorkerRuntime, files: list[Path], model_id: str) -> JobRecord:
    """File ``files`` in the spool, run ``model_id`` on them; the job as it ended."""
    series_uid = spool(runtime.settings.spool_dir, runtime.ledger, files)
    series = runtime.ledger.get_series(series_uid)
    job = runtime.ledger.open_job(
        series, route="test", model_id=model_id, destinations=[], priority=5
    )
    job = runtime.ledger.transition(job.job_id, JobState.QUEUED)
    JobExecutor(runtime).run(
        RunJobMessage(job_id=job.job_id, model_id=model_id, series_uid=series_uid),
        worker="test",
    )
    return runtime.ledger.get_job(job.job_id)


def result_file(job: JobRecord, kind: str) -> Path:
    """The one result file of ``kind`` (``seg``, ``sr``) the job kept."""
    [path] = {
        Path(path) for file_kind, _, _, path in job.result["deliveries"][""] if file_kind == kind
    }
    return path


def seg_mask(path: Path, sources: Sequence[tuple[str, int | None]]) -> npt.NDArray[np.bool_]:
    """Segment 1 of the SEG at ``path`` on each source image or (instance, frame) in turn:
    ``[len(sources), rows, columns]``."""
    seg = hd.seg.segread(path)
    frames = [frame for _, frame in sources]
    if all(frame is None for frame in frames):
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[uid for uid, _ in sources],
            segment_numbers=[1],
            combine_segments=False,
            assert_missing_frames_are_empty=True,
        )
    else:
        [uid] = {uid for uid, _ in sources}
        pixels = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=uid,
            source_frame_numbers=[int(frame or 0) for frame in frames],
            segment_numbers=[1],
            combine_segments=False,
            assert_missing_frames_are_empty=True,
        )
    return np.asarray(pixels[..., 0], dtype=bool)


def dice(first: npt.NDArray[np.bool_], second: npt.NDArray[np.bool_]) -> float:
    """Dice coefficient of two masks of one shape."""
    return float(2 * np.count_nonzero(first & second) / (first.sum() + second.sum()))
