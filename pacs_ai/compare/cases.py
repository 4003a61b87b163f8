"""One case of an agreement report: a source series that model A processed, compared with
model B's result on the same series or with a reference SEG.

Segments are paired by their Segmented Property Type (PS3.3 C.8.20.2): a code that names
exactly one segment on each side pairs those two. Whatever the pairing, the union of all
segments on each side is compared too, and where no code is common to both sides the
union is the only comparison: the case's ``pairing`` says which was used, so the report
can show it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from core.jobs import JobRecord
from pacs_ai.compare.masks import SegMasks, SourceGrid
from pacs_ai.compare.metrics import ClassAgreement, SegmentAgreement, segment_agreement

#: The name of the comparison of all segments together.
UNION = "all segments (union)"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass(frozen=True, slots=True)
class ImageAgreement:
    """Two classifications of one film (by its SOP Instance UID)."""

    sop_instance_uid: str
    agreement: ClassAgreement


@dataclass(frozen=True, slots=True)
class Case:
    """What was compared for one source series, or why it could not be."""

    study_uid: str
    series_uid: str
    job_a: str
    #: Model B's job id, or the reference SEG's SOP Instance UID.
    other: str
    segments: list[SegmentAgreement] = field(default_factory=list)
    pairing: str = ""
    images: list[ImageAgreement] = field(default_factory=list)
    #: Why nothing was compared (no result on the other side, unreadable SEG, ...).
    problem: str | None = None

    @property
    def union(self) -> SegmentAgreement | None:
        return next((s for s in self.segments if s.name == UNION), None)


def compare_segs(a: SegMasks, b: SegMasks, grid: SourceGrid) -> tuple[list[SegmentAgreement], str]:
    """The union first, then each pair of segments with one common property type code;
    and how they were paired."""
    compared = [segment_agreement(UNION, a.union(grid.shape), b.union(grid.shape), grid.spacing)]
    a_codes = Counter(s.code for s in a.segments)
    b_codes = Counter(s.code for s in b.segments)
    common = [code for code in a_codes if code[1] and a_codes[code] == 1 == b_codes.get(code)]
    for code in common:
        first = next(s for s in a.segments if s.code == code)
        second = next(s for s in b.segments if s.code == code)
        compared.append(
            segment_agreement(first.property_type[2] or first.label, first.mask, second.mask,
                              grid.spacing)
        )  # fmt: skip
    if not common:
        pairing = (
            "union of all segments on each side (no Segmented Property Type in common: "
            f"{_labels(a)} vs {_labels(b)})"
        )
    else:
        pairing = f"by Segmented Property Type ({len(common)} pairs) and the union"
        unpaired = [s.label for s in a.segments if s.code not in common] + [
            s.label for s in b.segments if s.code not in common
        ]
        if unpaired:
            pairing += f"; unpaired: {', '.join(unpaired)} (in the union only)"
    return compared, pairing


def result_seg_path(job: JobRecord) -> Path | None:
    """The SEG file a job wrote (kept by the node under its results directory), if any."""
    result = job.result or {}
    for files in (result.get("deliveries") or {}).values():
        for kind, _uid, sop_class, path in files:
            if kind == "seg" or sop_class == SEG_STORAGE:
                return Path(path)
    for path in result.get("files") or []:
        candidate = Path(path)
        if candidate.suffix == ".dcm" and candidate.is_file():
            try:
                header = dcmread(candidate, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            except (InvalidDicomError, OSError, EOFError):
                continue  # not a SEG we can read: the case says the job kept none
            if str(header.get("SOPClassUID", "")) == SEG_STORAGE:
                return candidate
    return None


def probabilities(job: JobRecord) -> dict[str, dict[str, float]]:
    """Each film's class probabilities (by SOP Instance UID) in a job's result."""
    images: list[dict[str, Any]] = (job.result or {}).get("images") or []
    return {
        str(image["sop_instance_uid"]): {str(k): float(v) for k, v in probs.items()}
        for image in images
        if (probs := image.get("probabilities"))
    }


def _labels(masks: SegMasks) -> str:
    return ", ".join(s.label for s in masks.segments) or "no segment"
