"""A validation month, for real: the LIDC CT and dcmqi's reference lung SEG are in the PACS
(Orthanc), `pacs-ai run --from pacs` runs ct-lungs on the CT (its SEG goes back into the
same study), and `pacs-ai compare --with-reference-seg-from pacs` finds the reference,
leaves pacs-ai's own SEG aside and reports how ct-lungs agrees with it."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from core.jobs import JobState
from tests.support.pacs_ai import PacsAiDeployment
from tests.support.peers import LOCALHOST, Orthanc, RedisServer, storescu, wait_for

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(900)]

REFERENCE_SEG = "lidc0314_lung_seg_dcmqi.dcm"


@pytest.fixture
def deployment(
    tmp_path: Path, redis_server: RedisServer, orthanc: Orthanc
) -> Iterator[PacsAiDeployment]:
    config: dict[str, Any] = {
        "broker_url": redis_server.url,
        "node": {"ae_title": "PACSAI"},
        "completion": {"series_quiet_seconds": 2, "check_interval_seconds": 0.2},
        "destinations": {
            "pacs": {
                "host": LOCALHOST,
                "port": orthanc.dicom_port,
                "ae_title": orthanc.aet,
                "query_retrieve": {},
            }
        },
        "delivery": {"poll_interval_seconds": 0.2},
        "worker": {"device": "cpu", "prefetch_next_series": "off"},
    }
    running = PacsAiDeployment(tmp_path / "pacs-ai", config)
    orthanc.add_modality("pacsai", "PACSAI", LOCALHOST, running.port)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def pacs_ai(deployment: PacsAiDeployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pacs_ai", *args, "--config", str(deployment.config_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def segs_in(pacs: Orthanc) -> list[str]:
    """The Manufacturer of each SEG the PACS holds."""
    return [
        str(pacs.instance_tags(instance)["Manufacturer"])
        for series in pacs.find("Series", {"Modality": "SEG"})
        for instance in series["Instances"]
    ]


def test_compare_of_ct_lungs_with_the_dcmqi_reference_seg_in_the_pacs_reports_dice_0_98(
    deployment: PacsAiDeployment,
    orthanc: Orthanc,
    lidc_ct_dir: Path,
    lidc_reference_dir: Path,
    artifacts_dir: Path,
) -> None:
    sent = storescu(lidc_ct_dir, LOCALHOST, orthanc.dicom_port, orthanc.aet, "MODALITY")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    orthanc.upload((lidc_reference_dir / REFERENCE_SEG).read_bytes())
    header = dcmread(next(lidc_ct_dir.glob("*.dcm")), stop_before_pixels=True)
    study_uid, series_uid = str(header.StudyInstanceUID), str(header.SeriesInstanceUID)
    ran = pacs_ai(deployment, "run", "--from", "pacs", "--study", study_uid,
                  "--models", "ct-lungs", "--send-results-to", "pacs")  # fmt: skip
    assert ran.returncode == 0, f"{ran.stdout}\n{ran.stderr}\n{deployment.logs()}"
    [job] = deployment.ledger.jobs(series_uid=series_uid)
    assert job.state == JobState.DONE
    wait_for(lambda: len(segs_in(orthanc)) == 2, 60, "dcmqi's SEG and pacs-ai's in the PACS")
    assert sorted(segs_in(orthanc)) == ["QIICR", "pacs-ai"]

    compared = pacs_ai(deployment, "compare", "--model", "ct-lungs",
                       "--with-reference-seg-from", "pacs", "--out", str(artifacts_dir / "report"))  # fmt: skip

    assert compared.returncode == 0, f"{compared.stdout}\n{compared.stderr}"
    with (artifacts_dir / "report" / "cases.csv").open() as rows:
        [union] = [r for r in csv.DictReader(rows) if r["name"] == "all segments (union)"]
    reference_uid = str(
        dcmread(lidc_reference_dir / REFERENCE_SEG, stop_before_pixels=True).SOPInstanceUID
    )
    assert (union["series_uid"], union["job_a"], union["other"]) == (
        series_uid,
        job.job_id,
        reference_uid,
    ), "compared with dcmqi's SEG, not with pacs-ai's own SEG in the same study"
    assert float(union["dice"]) >= 0.98
    assert float(union["volume_b_ml"]) == pytest.approx(2902.0, abs=1.0), "dcmqi's 2,902 mL"
    # The same volume as the job measured: our SEG lies on the source grid voxel for voxel.
    assert float(union["volume_a_ml"]) == pytest.approx(
        job.result["measurements_ml"]["total"], rel=0.001
    )
    # dcmqi's mask keeps the trachea and main bronchi, which ct-lungs drops: a centimetre
    # from ct-lungs' surface, but a small share of both surfaces pooled (3.3 mm).
    assert 2.0 < float(union["hd95_mm"]) < 5.0
    assert "no Segmented Property Type in common" in union["pairing"]
    assert re.search(r"union Dice: median 0\.9[89]\d, lowest", compared.stdout)
    assert "report: " in compared.stdout and "[1/1] series" in compared.stderr
    page = (artifacts_dir / "report" / "report.html").read_text()
    assert len(re.findall(r'<circle class="case"', page)) == 1, "one case in the Bland-Altman plot"
    assert len(re.findall(r'<rect class="bin"', page)) == 1, "one case in the Dice histogram"
    assert 'id="confusion-matrix"' not in page, "no classification, no confusion matrix"
