"""The work of ``pacs-ai compare`` (:mod:`pacs_ai.compare.command`): the cases of model
A's finished jobs against model B's or against reference SEGs, with progress on stderr.

Imported only when the command runs: NumPy, SciPy and the SEG reading stay out of the
other commands' start-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import click
from pydicom.dataset import Dataset

from core.errors import ConfigError
from core.jobs import JobRecord
from core.ledger import Ledger
from core.settings import Settings
from pacs_ai.compare.cases import (
    Case,
    ImageAgreement,
    compare_segs,
    probabilities,
    result_seg_path,
)
from pacs_ai.compare.masks import SegReadError, SourceGrid, read_dicom, read_seg
from pacs_ai.compare.metrics import class_agreement
from pacs_ai.compare.report import summarize

#: Compares one of model A's jobs (on its source grid; None for films) and makes its cases.
Against = Callable[[JobRecord, SourceGrid | None], list[Case]]


def run_cases(ledger: Ledger, jobs: list[JobRecord], compare_one: Against) -> list[Case]:
    """The cases of ``jobs``, taken study by study (the reference SEGs of one study are
    held at a time); a series that cannot be compared is a case with its problem."""
    jobs = by_study(jobs)
    cases: list[Case] = []
    begun = time.monotonic()
    for number, job in enumerate(jobs, start=1):
        started = time.monotonic()
        grid, problem = _grid(ledger, job)
        made = [_case(job, problem)] if problem else compare_one(job, grid)
        cases.extend(made)
        click.echo(
            f"[{number}/{len(jobs)}] series {job.series_instance_uid}: "
            f"{'; '.join(_short(c) for c in made)} ({time.monotonic() - started:.1f} s)",
            err=True,
        )
    click.echo(f"compared {len(jobs)} series in {time.monotonic() - begun:.1f} s", err=True)
    return cases


def by_study(jobs: list[JobRecord]) -> list[JobRecord]:
    """``jobs`` grouped by study, in their order within each study."""
    return sorted(jobs, key=lambda job: job.study_instance_uid)


def _grid(ledger: Ledger, job: JobRecord) -> tuple[SourceGrid | None, str | None]:
    """The source series' grid (None for a classification: films are compared by UID)."""
    if probabilities(job):
        return None, None
    paths = [i.path for i in ledger.series_instances(job.series_instance_uid)]
    present = [p for p in paths if Path(p).is_file()]
    if not present:
        return None, (
            f"the source instances are no longer in the node's spool ({len(paths)} recorded)"
        )
    if len(present) < len(paths):
        # The grid of the slices present would be squashed along z: the masks would not fit.
        return None, (
            f"source series incomplete on this node: {len(present)} of {len(paths)} files"
        )
    try:
        return SourceGrid.read(present), None
    except SegReadError as exc:
        return None, str(exc)


def with_model(others: list[JobRecord], other_model: str) -> Against:
    by_series = {job.series_instance_uid: job for job in others}

    def compare_one(job: JobRecord, grid: SourceGrid | None) -> list[Case]:
        other = by_series.get(job.series_instance_uid)
        if other is None:
            return [_case(job, f"no finished job of model {other_model} on this series")]
        if grid is None:
            return [_classification(job, other)]
        theirs = result_seg_path(other)
        if theirs is None or not theirs.is_file():
            return [_case(job, f"model {other_model}'s job {other.job_id[:8]} kept no SEG",
                          other.job_id)]  # fmt: skip
        try:
            their_seg = read_dicom(theirs)
        except SegReadError as exc:
            return [_case(job, f"model {other_model}'s SEG: {exc}", other.job_id)]
        return [_segmentation(job, grid, their_seg, other.job_id)]

    return compare_one


def with_references(settings: Settings, destination: str) -> Against:
    from node_services.retrieve.base import QueryError, SourceUnavailableError  # noqa: PLC0415
    from pacs_ai.compare.reference import ReferenceSegs  # noqa: PLC0415

    try:
        references = ReferenceSegs(settings, destination)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None

    def compare_one(job: JobRecord, grid: SourceGrid | None) -> list[Case]:
        if grid is None:
            return [_case(job, "a classification: reference SEGs compare segmentations")]
        try:
            segs = references.for_series(job.study_instance_uid, job.series_instance_uid)
        except (QueryError, SourceUnavailableError) as exc:
            return [_case(job, f"{destination}: {exc}")]
        if not segs:
            return [_case(job, f"no reference SEG of this series in {destination}")]
        return [_segmentation(job, grid, seg, str(seg.SOPInstanceUID)) for seg in segs]

    return compare_one


def _segmentation(job: JobRecord, grid: SourceGrid, other: Dataset, other_id: str) -> Case:
    ours = result_seg_path(job)
    if ours is None or not ours.is_file():
        return _case(job, "the job kept no SEG (results removed, or none written)", other_id)
    try:
        a = read_seg(read_dicom(ours), grid)
        b = read_seg(other, grid)
    except SegReadError as exc:
        return _case(job, str(exc), other_id)
    segments, pairing = compare_segs(a, b, grid)
    lost = a.unplaced_frames + b.unplaced_frames
    if lost:
        pairing += f"; {lost} non-empty frame(s) on no slice of the source series (left out)"
    return Case(
        study_uid=job.study_instance_uid,
        series_uid=job.series_instance_uid,
        job_a=job.job_id,
        other=other_id,
        segments=segments,
        pairing=pairing,
    )


def _classification(job: JobRecord, other: JobRecord) -> Case:
    mine, theirs = probabilities(job), probabilities(other)
    images = [
        ImageAgreement(uid, class_agreement(mine[uid], theirs[uid]))
        for uid in mine
        if theirs.get(uid)
    ]
    if not images:
        return _case(job, f"job {other.job_id[:8]} has no probabilities for these images",
                     other.job_id)  # fmt: skip
    return Case(
        study_uid=job.study_instance_uid,
        series_uid=job.series_instance_uid,
        job_a=job.job_id,
        other=other.job_id,
        images=images,
        pairing="by SOP Instance UID of the image",
    )


def _case(job: JobRecord, problem: str, other: str = "") -> Case:
    return Case(
        study_uid=job.study_instance_uid,
        series_uid=job.series_instance_uid,
        job_a=job.job_id,
        other=other,
        problem=problem,
    )


def newest_per_series(jobs: list[JobRecord]) -> list[JobRecord]:
    newest: dict[str, JobRecord] = {}
    for job in sorted(jobs, key=lambda j: j.updated_at, reverse=True):
        newest.setdefault(job.series_instance_uid, job)
    return sorted(newest.values(), key=lambda j: j.updated_at)


def _short(case: Case) -> str:
    if case.problem:
        return f"not compared: {case.problem}"
    if case.union is not None:
        return f"Dice {case.union.dice:.3f} (union)"
    agree = sum(i.agreement.agree for i in case.images)
    return f"{agree}/{len(case.images)} image(s) agree"


def print_summary(cases: list[Case], *, model: str, against: str) -> None:
    summary = summarize(cases)
    click.echo(f"{model} vs {against}: {summary.cases} case(s), {summary.compared} compared")
    rows = [case for case in cases if case.problem is None]
    if summary.segmentation:
        click.echo(
            f"{'series':<66} {'segment':<22} {'Dice':>6} {'A mL':>8} {'B mL':>8} {'HD95':>7}"
        )
        for case in rows:
            for s in case.segments:
                hd = f"{s.hd95_mm:.1f}" if s.hd95_mm is not None else "n/a"
                click.echo(
                    f"{case.series_uid:<66} {s.name[:22]:<22} {s.dice:>6.3f} "
                    f"{s.volume_a_ml:>8.1f} {s.volume_b_ml:>8.1f} {hd:>7}"
                )
        assert summary.median_dice is not None and summary.min_dice is not None
        click.echo(
            f"union Dice: median {summary.median_dice:.3f}, lowest {summary.min_dice:.3f} "
            f"over {summary.segmentation} case(s)"
        )
    if summary.images:
        assert summary.agreement is not None
        click.echo(
            f"classification: most probable class agrees on {100 * summary.agreement:.1f} % "
            f"of {summary.images} image(s)"
        )
    if summary.compared < summary.cases:
        click.echo(f"{summary.cases - summary.compared} case(s) not compared: see the report")
