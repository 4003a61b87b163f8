"""The agreement report: ``cases.csv`` (one row per compared segment or film) and
``report.html`` (one self-contained page: summary, plots as inline SVG, the cases)."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from pacs_ai.compare import plots
from pacs_ai.compare.cases import Case
from pacs_ai.compare.metrics import confusion_matrix

TEMPLATES = Path(__file__).parent / "templates"
CSV_COLUMNS = (
    "study_uid",
    "series_uid",
    "job_a",
    "other",
    "kind",
    "name",
    "dice",
    "volume_a_ml",
    "volume_b_ml",
    "volume_difference_ml",
    "volume_difference_percent",
    "hd95_mm",
    "top_class_a",
    "top_class_b",
    "agree",
    "probability_difference",
    "pairing",
    "problem",
)


@dataclass(frozen=True, slots=True)
class Summary:
    """What the terminal and the report's head say."""

    cases: int
    compared: int
    segmentation: int
    classification: int
    median_dice: float | None
    min_dice: float | None
    images: int
    agreement: float | None


def summarize(cases: Sequence[Case]) -> Summary:
    unions = [c.union for c in cases if c.union is not None]
    dices = [u.dice for u in unions if u is not None]
    images = [i for c in cases for i in c.images]
    return Summary(
        cases=len(cases),
        compared=sum(1 for c in cases if c.problem is None),
        segmentation=len(unions),
        classification=sum(1 for c in cases if c.images),
        median_dice=statistics.median(dices) if dices else None,
        min_dice=min(dices) if dices else None,
        images=len(images),
        agreement=(sum(i.agreement.agree for i in images) / len(images)) if images else None,
    )


def write_csv(cases: Sequence[Case], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for case in cases:
            base = {
                "study_uid": case.study_uid,
                "series_uid": case.series_uid,
                "job_a": case.job_a,
                "other": case.other,
                "pairing": case.pairing,
                "problem": case.problem or "",
            }
            if case.problem is not None:
                writer.writerow({**base, "kind": "none"})
            for s in case.segments:
                writer.writerow(
                    {
                        **base,
                        "kind": "segment",
                        "name": s.name,
                        "dice": f"{s.dice:.4f}",
                        "volume_a_ml": f"{s.volume_a_ml:.2f}",
                        "volume_b_ml": f"{s.volume_b_ml:.2f}",
                        "volume_difference_ml": f"{s.volume_difference_ml:.2f}",
                        "volume_difference_percent": _number(s.volume_difference_percent, 2),
                        "hd95_mm": _number(s.hd95_mm, 2),
                    }
                )
            for image in case.images:
                a = image.agreement
                writer.writerow(
                    {
                        **base,
                        "kind": "image",
                        "name": image.sop_instance_uid,
                        "top_class_a": a.top_a,
                        "top_class_b": a.top_b,
                        "agree": "yes" if a.agree else "no",
                        "probability_difference": f"{a.probability_difference:.4f}",
                    }
                )


def write_html(
    cases: Sequence[Case],
    path: Path,
    *,
    model: str,
    against: str,
    since: str | None,
) -> None:
    """The report page: everything inline (style, SVG), nothing fetched when opened."""
    unions = [(c, c.union) for c in cases if c.union is not None]
    images = [i for c in cases for i in c.images]
    classes, counts = confusion_matrix([(i.agreement.top_a, i.agreement.top_b) for i in images])
    environment = Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["j2", "html"])
    )
    page = environment.get_template("report.html.j2").render(
        model=model,
        against=against,
        since=since,
        made=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        summary=summarize(cases),
        cases=cases,
        bland_altman=Markup(  # noqa: S704 -- built here from numbers, names escaped
            plots.bland_altman([(u.volume_a_ml, u.volume_b_ml) for _, u in unions if u])
        ),
        dice_histogram=Markup(  # noqa: S704
            plots.histogram([u.dice for _, u in unions if u])
        ),
        confusion=Markup(plots.confusion(classes, counts)),  # noqa: S704
        show_segmentation=bool(unions),
        show_classification=bool(images),
    )
    path.write_text(page, encoding="utf-8")


def _number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"
