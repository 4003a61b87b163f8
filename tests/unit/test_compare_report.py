"""The agreement report: cases.csv and a self-contained report.html with its plots."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from pacs_ai.compare.cases import UNION, Case, ImageAgreement
from pacs_ai.compare.metrics import SegmentAgreement, class_agreement
from pacs_ai.compare.report import write_csv, write_html

#: Two classification result sets of three films: A and B agree on two.
MODEL_A = [{"normal": 0.9, "pneumonia": 0.1}, {"normal": 0.2, "pneumonia": 0.8},
           {"normal": 0.4, "pneumonia": 0.6}]  # fmt: skip
MODEL_B = [{"normal": 0.8, "pneumonia": 0.2}, {"normal": 0.3, "pneumonia": 0.7},
           {"normal": 0.7, "pneumonia": 0.3}]  # fmt: skip


def classification_cases() -> list[Case]:
    return [
        Case(
            study_uid="1.2.3",
            series_uid=f"1.2.3.{n}",
            job_a=f"job-a-{n}",
            other=f"job-b-{n}",
            images=[ImageAgreement(f"1.2.3.{n}.1", class_agreement(a, b))],
        )
        for n, (a, b) in enumerate(zip(MODEL_A, MODEL_B, strict=True))
    ]


def segmentation_cases() -> list[Case]:
    return [
        Case(
            study_uid="1.2.4",
            series_uid=f"1.2.4.{n}",
            job_a=f"job-{n}",
            other="1.2.4.99",
            segments=[SegmentAgreement(UNION, dice, 1000.0 + n, 990.0, 2.0)],
            pairing="union of all segments on each side",
        )
        for n, dice in enumerate((0.95, 0.98, 0.99))
    ] + [Case("1.2.4", "1.2.4.9", "job-9", "", problem="no reference SEG of this series in pacs")]


def test_the_confusion_matrix_of_two_classification_result_sets_is_drawn(tmp_path: Path) -> None:
    write_html(classification_cases(), tmp_path / "report.html", model="a", against="b", since=None)

    page = (tmp_path / "report.html").read_text()
    matrix = re.search(r'<svg class="plot" id="confusion-matrix".*?</svg>', page, re.S)
    assert matrix is not None
    cells = re.findall(r'<rect class="cell"[^>]*/><text[^>]*>(\d+)</text>', matrix.group(0))
    # Rows A (normal, pneumonia), columns B: A normal/B normal 1; A pneumonia/B normal 1;
    # A pneumonia/B pneumonia 1.
    assert cells == ["1", "0", "1", "1"]
    assert "top class agreement 66.7 % over 3 image(s)" in page
    assert 'id="bland-altman"' not in page, "no segmentation, no volume plot"


def test_the_report_of_segmentations_has_its_plots_inline_and_lists_what_was_not_compared(
    tmp_path: Path,
) -> None:
    write_html(
        segmentation_cases(), tmp_path / "report.html", model="m", against="r", since="2026-11-01"
    )

    page = (tmp_path / "report.html").read_text()
    assert len(re.findall(r'<circle class="case"', page)) == 3
    assert len(re.findall(r'<rect class="bin"', page)) == 3
    assert "no reference SEG of this series in pacs" in page
    assert "union Dice median 0.980, lowest 0.950" in page
    assert not re.search(r'(src|href)="(https?:)?//', page), "nothing fetched when opened"


def test_cases_csv_has_a_row_per_segment_image_and_case_not_compared(tmp_path: Path) -> None:
    write_csv(segmentation_cases() + classification_cases(), tmp_path / "cases.csv")

    with (tmp_path / "cases.csv").open() as rows:
        read = list(csv.DictReader(rows))
    assert [r["kind"] for r in read] == ["segment"] * 3 + ["none"] + ["image"] * 3
    assert (read[0]["dice"], read[0]["volume_difference_ml"], read[0]["hd95_mm"]) == (
        "0.9500",
        "10.00",
        "2.00",
    )
    assert read[3]["problem"] == "no reference SEG of this series in pacs"
    assert [r["agree"] for r in read[4:]] == ["yes", "yes", "no"]
