"""The promise every fault test checks: nothing lost, nothing duplicated."""

from __future__ import annotations

from collections import Counter
from io import BytesIO

from pydicom import dcmread

from core.jobs import JobState
from core.ledger import Ledger
from tests.support.peers import Orthanc

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def assert_every_instance_delivered_or_quarantined(ledger: Ledger) -> None:
    """Every received instance is covered by a DONE job's results, or its series is in
    quarantine with a reason."""
    problems: list[str] = []
    for series in ledger.list_series(limit=10_000):
        instances = ledger.series_instances(series.series_instance_uid)
        done = [
            job
            for job in ledger.jobs(series_uid=series.series_instance_uid)
            if job.state == JobState.DONE and job.result.get("instances") == len(instances)
        ]
        quarantined = ledger.quarantined(series_uid=series.series_instance_uid)
        if not done and not quarantined:
            states = [
                (job.state.value, job.reason)
                for job in ledger.jobs(series_uid=series.series_instance_uid)
            ]
            problems.append(
                f"series {series.series_instance_uid} ({len(instances)} instances, {series.state}): "
                f"neither delivered nor quarantined; jobs {states}"
            )
    assert not problems, "\n".join(problems)


def assert_one_seg_and_one_sr_per_series(orthanc: Orthanc, series_uids: set[str]) -> None:
    """The PACS holds exactly one SEG and one SR for each source series (one model)."""
    seen: Counter[tuple[str, str]] = Counter()
    for instance_id in orthanc.instances():
        dataset = dcmread(BytesIO(orthanc.download(instance_id)), stop_before_pixels=True)
        if dataset.SOPClassUID == SEG_STORAGE:
            seen["SEG", str(dataset.ReferencedSeriesSequence[0].SeriesInstanceUID)] += 1
        elif dataset.SOPClassUID == COMPREHENSIVE_3D_SR:
            evidence = dataset.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
            source = {str(item.SeriesInstanceUID) for item in evidence}
            for uid in source & series_uids:
                seen["SR", uid] += 1
    expected = Counter({(kind, uid): 1 for uid in series_uids for kind in ("SEG", "SR")})
    assert seen == expected, f"PACS holds {dict(seen)}, expected one SEG and one SR per series"
