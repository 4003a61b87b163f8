"""``pacs-ai compare``: how a model agrees with another model or with reference SEGs.

For each source series that model A finished (the ledger's DONE and NEEDS_REVIEW jobs,
the newest per series), its result is compared with model B's on the same series
(``--with B``) or with the SEGs of that series in a PACS that pacs-ai did not make
(``--with-reference-seg-from DESTINATION``). Segmentations: Dice, volumes and Hausdorff
95 per paired segment and for the union of all; classifications (radiograph models):
agreement of the most probable class and the difference in probability. Writes
``report.html`` and ``cases.csv`` under ``--out`` and prints a summary.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from core.errors import ConfigError, PacsAiError
from core.ledger import Ledger
from core.settings import Settings, load_settings
from pacs_ai.database import require_current_ledger


@click.command()
@click.option(
    "--config",
    "config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="PACS_AI_CONFIG",
    help="Configuration file (YAML): the one `pacs-ai serve` runs with. Default: $PACS_AI_CONFIG.",
)
@click.option("--model", "model", required=True, metavar="A", help="The model to compare (id).")
@click.option("--with", "other_model", metavar="B", help="Compare with this model's results.")
@click.option(
    "--with-reference-seg-from",
    "reference_source",
    metavar="DESTINATION",
    help="Compare with the SEGs of the same series in this PACS (a destination with a "
    "query_retrieve role) that pacs-ai did not make.",
)
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    metavar="YYYY-MM-DD",
    help="Only jobs finished on or after this day (YYYY-MM-DD, UTC).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for report.html and cases.csv (made if missing).",
)
def compare(  # noqa: PLR0917 -- click passes each option as a parameter
    config: Path | None,
    model: str,
    other_model: str | None,
    reference_source: str | None,
    since: datetime | None,
    out_dir: Path,
) -> None:
    """Compare a model's results with another model's or with reference segmentations.

    Per source series model A processed: Dice, volume difference (mL, %) and Hausdorff 95
    (mm) per segment and for the union of all segments; for classification models, the
    agreement of the most probable class and the probability difference. Writes
    report.html (Bland-Altman of volumes, Dice histogram, confusion matrix) and cases.csv
    to --out.

    \b
    pacs-ai compare --model ct-lungs --with-reference-seg-from pacs --out agreement/
    pacs-ai compare --model ct-lungs --with OTHER_MODEL --since 2026-11-01 --out agreement/
    """
    if (other_model is None) == (reference_source is None):
        raise click.UsageError("give exactly one of --with B or --with-reference-seg-from DEST")
    settings = _settings(config)
    require_current_ledger(settings, config)
    started_at = since.replace(tzinfo=UTC).timestamp() if since else None
    from pacs_ai.compare import runner  # noqa: PLC0415 -- NumPy, SciPy: when it runs
    from pacs_ai.compare.report import write_csv, write_html  # noqa: PLC0415

    ledger = Ledger(settings.resolved_ledger_url)
    try:
        jobs = runner.newest_per_series(ledger.finished_jobs(model, since=started_at))
        if not jobs:
            after = f" since {since:%Y-%m-%d}" if since else ""
            raise click.ClickException(
                f"no finished job of model {model}{after} in the ledger; "
                "`pacs-ai status` lists the jobs"
            )
        if other_model is not None:
            against = f"model {other_model}"
            others = runner.newest_per_series(ledger.finished_jobs(other_model))
            compare_one = runner.with_model(others, other_model)
        else:
            assert reference_source is not None
            against = f"reference SEGs in {reference_source}"
            compare_one = runner.with_references(settings, reference_source)
        cases = runner.run_cases(ledger, jobs, compare_one)
    except PacsAiError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        ledger.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(cases, out_dir / "cases.csv")
    write_html(
        cases,
        out_dir / "report.html",
        model=model,
        against=against,
        since=f"{since:%Y-%m-%d}" if since else None,
    )
    runner.print_summary(cases, model=model, against=against)
    click.echo(f"report: {out_dir / 'report.html'}")
    click.echo(f"cases:  {out_dir / 'cases.csv'}")


def _settings(config: Path | None) -> Settings:
    from core.logs import configure_logging  # noqa: PLC0415

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(
        "DEBUG" if settings.logging.level == "DEBUG" else "WARNING", settings.logging.format
    )
    return settings
