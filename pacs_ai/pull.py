"""``pacs-ai run --from`` and ``pacs-ai backfill``: run models on studies already in a PACS.

Both find studies in a destination that has a query/retrieve role (C-FIND or QIDO-RS),
pull them into the node's spool and ledger (C-GET, C-MOVE to the node, or WADO-RS) and
let the node do the rest, as for studies a scanner sent: its completion watcher opens
the jobs (the given ``--models``, or the routing rules with ``--routes``), workers run
them, its delivery service sends the results (``--send-results-to``) or keeps them
(``--keep``, as a shadow route does). So ``pacs-ai serve`` and a worker must be running.

``run`` pulls what it finds now and waits for the results. ``backfill`` pulls a date
range at a rate (studies per minute) inside a time window, shows its progress, and
resumes where it stopped when run again with the same options (Ctrl-C stops it).

Patient IDs and accession numbers go to the PACS in the query and nowhere else: the
ledger keeps Study Instance UIDs, the output and the logs name UIDs and counts.
"""

from __future__ import annotations

import getpass
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import click

from core.errors import ConfigError, PacsAiError
from core.jobs import TERMINAL_STATES, JobRecord, JobState
from core.ledger import (
    Ledger,
    RetrievalBusyError,
    RetrievalProgress,
    RetrievalRecord,
    RetrievalState,
    StudyPull,
    UnknownRetrievalError,
)
from core.settings import Settings, load_settings
from pacs_ai.database import require_current_ledger

if TYPE_CHECKING:
    from node_services.retrieve.retriever import Retriever

CONFIG = click.option(
    "--config",
    "config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="PACS_AI_CONFIG",
    help="Configuration file (YAML): the one `pacs-ai serve` runs with. Default: $PACS_AI_CONFIG.",
)
SOURCE = click.option(
    "--from",
    "source",
    required=True,
    metavar="DESTINATION",
    help="The destination to pull from: one with a query_retrieve role (e.g. pacs).",
)
SERIES_FILTER = click.option(
    "--series-filter",
    "series_filter",
    multiple=True,
    metavar="EXPR",
    help="Only series where this holds (repeatable, all must): Modality=CT, "
    "Modality=CT,MR, 'SeriesDescription~(?i)lung', NumberOfSeriesRelatedInstances>=50.",
)
MODELS = click.option("--models", help="Comma-separated model ids to run on every pulled series.")
ROUTES = click.option(
    "--routes",
    "use_routes",
    is_flag=True,
    help="Instead of --models: route the pulled series by the configured routing rules.",
)
SEND_TO = click.option(
    "--send-results-to",
    "destinations",
    multiple=True,
    metavar="DESTINATION",
    help="Where the results of --models go (repeatable).",
)
KEEP = click.option(
    "--keep",
    is_flag=True,
    help="Keep the results in the node, deliver nothing (a shadow run; with "
    "--send-results-to, `pacs-ai resend JOB_ID` delivers one there later).",
)

#: Jobs that have stopped running (held for review included): a run waits for these.
_SETTLED = TERMINAL_STATES | {JobState.NEEDS_REVIEW}


# -- pacs-ai run --------------------------------------------------------------------------


@click.command(name="run")
@CONFIG
@SOURCE
@click.option("--study", "study_uid", metavar="UID", help="The Study Instance UID.")
@click.option("--accession", metavar="NUMBER", help="The study's accession number.")
@click.option("--patient-id", metavar="ID", help="The patient's ID (with --study-date).")
@click.option(
    "--study-date", metavar="RANGE", help="YYYYMMDD or YYYYMMDD-YYYYMMDD (with --patient-id)."
)
@SERIES_FILTER
@MODELS
@ROUTES
@SEND_TO
@KEEP
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until the node has run every job (and print them).",
)
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait for the jobs.")
def run(  # noqa: PLR0917 -- click passes each option as a parameter
    config: Path | None,
    source: str,
    study_uid: str | None,
    accession: str | None,
    patient_id: str | None,
    study_date: str | None,
    series_filter: tuple[str, ...],
    models: str | None,
    use_routes: bool,
    destinations: tuple[str, ...],
    keep: bool,
    wait: bool,
    timeout: float,
) -> None:
    """Pull studies from a PACS and run models on them, as if a scanner had sent them.

    Give the study by --study UID, --accession NUMBER, or --patient-id ID with
    --study-date RANGE. The node (`pacs-ai serve`) and a worker must be running: the
    pulled series are completed, queued and run by them, the results delivered to
    --send-results-to (or kept with --keep). Exits 1 when a study could not be pulled or
    a job failed.
    """
    from node_services.retrieve.base import (  # noqa: PLC0415
        QueryError,
        SourceUnavailableError,
        StudyQuery,
        parse_series_filter,
    )
    from node_services.retrieve.retriever import Retriever  # noqa: PLC0415

    given = [name for name, value in (("--study", study_uid), ("--accession", accession),
             ("--patient-id", patient_id)) if value]  # fmt: skip
    if len(given) != 1:
        raise click.UsageError("give exactly one of --study, --accession or --patient-id")
    if patient_id and not study_date:
        raise click.UsageError("--patient-id needs --study-date (YYYYMMDD-YYYYMMDD)")
    if study_date and not patient_id:
        raise click.UsageError("--study-date goes with --patient-id (backfill takes date ranges)")
    settings = _settings(config)
    plan = _plan(settings, models, use_routes, destinations, keep)
    try:
        query = StudyQuery(
            study_uid=study_uid,
            accession_number=accession,
            patient_id=patient_id,
            study_date=study_date,
        )
        wanted = parse_series_filter(series_filter)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    require_current_ledger(settings, config)
    ledger = Ledger(settings.resolved_ledger_url)
    stop = _stop_on_signals()
    retriever = Retriever(settings, ledger, stop=stop)
    try:
        try:
            studies = retriever.find(source, query)
        except (QueryError, SourceUnavailableError, ConfigError) as exc:
            raise click.ClickException(str(exc)) from None
        if not studies:
            raise click.ClickException(f"no study in {source} matches")
        click.echo(f"found {len(studies)} stud{'y' if len(studies) == 1 else 'ies'} in {source}")
        record = retriever.create(
            kind="run",
            source=source,
            studies=studies,
            series_filter=wanted,
            models=plan.models,
            destinations=plan.destinations,
            shadow=plan.keep,
            actor=_actor(),
            query={"by": given[0].lstrip("-")},
            state=RetrievalState.RUNNING,
        )
        _audit(ledger, "run", record, len(studies))
        click.echo(f"retrieval {record.retrieval_id[:8]}: {plan.describe()}")
        started = time.monotonic()
        ended = retriever.run(record.retrieval_id)
        _print_studies(ledger, ended)
        click.echo(f"pulled in {time.monotonic() - started:.1f} s")
        if ended.state != RetrievalState.DONE:
            raise click.ClickException(f"retrieval {ended.state}: {ended.reason}")
        if not wait:
            click.echo("not waiting: `pacs-ai status` shows the jobs")
            return
        ok = _wait_for_jobs(ledger, ended, stop=stop, timeout=timeout)
    except PacsAiError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        ledger.close()
    if not ok:
        sys.exit(1)


# -- pacs-ai backfill ---------------------------------------------------------------------


@click.command()
@CONFIG
@click.option(
    "--from",
    "source",
    metavar="DESTINATION",
    help="The destination to pull from: one with a query_retrieve role (e.g. pacs).",
)
@click.option("--study-date", metavar="RANGE", help="Studies of these dates: YYYYMMDD-YYYYMMDD.")
@click.option(
    "--modality",
    "modalities",
    multiple=True,
    metavar="MODALITY",
    help="Only studies with this modality (repeatable).",
)
@SERIES_FILTER
@MODELS
@ROUTES
@SEND_TO
@KEEP
@click.option(
    "--per-minute",
    type=click.FloatRange(min=0.01),
    help="Studies pulled per minute at most (default: the backfill's, else "
    "backfill.studies_per_minute).",
)
@click.option(
    "--window",
    metavar="HH:MM-HH:MM",
    help="Pull only in this local time window (default: the backfill's, else "
    "backfill.window; 'any': at any time).",
)
@click.option("--resume", "resume_id", metavar="ID", help="Resume this backfill (its id).")
@click.option("--list", "list_only", is_flag=True, help="List backfills and their progress.")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="After pulling, wait until the node has run every job.",
)
def backfill(  # noqa: PLR0917 -- click passes each option as a parameter
    config: Path | None,
    source: str | None,
    study_date: str | None,
    modalities: tuple[str, ...],
    series_filter: tuple[str, ...],
    models: str | None,
    use_routes: bool,
    destinations: tuple[str, ...],
    keep: bool,
    per_minute: float | None,
    window: str | None,
    resume_id: str | None,
    list_only: bool,
    wait: bool,
) -> None:
    """Run models on a date range of studies already in a PACS, at a rate the PACS can
    bear, inside a time window, with a progress bar; resumable.

    Ctrl-C stops it between two series; the same command again (or --resume ID) goes on
    where it stopped, and every study is processed once. The node (`pacs-ai serve`) and
    a worker must be running. The dashboard shows its progress too. Exits 3 when
    stopped, 1 when it could not go on.
    """
    from node_services.retrieve.pacing import TimeWindow  # noqa: PLC0415
    from node_services.retrieve.retriever import Retriever  # noqa: PLC0415

    if window not in (None, "any"):
        try:
            TimeWindow.parse(window)
        except ValueError:
            raise click.BadParameter(
                "expected HH:MM-HH:MM (e.g. 20:00-06:00) or 'any'", param_hint="--window"
            ) from None
    settings = _settings(config)
    require_current_ledger(settings, config)
    ledger = Ledger(settings.resolved_ledger_url)
    try:
        if list_only:
            _list_backfills(ledger)
            return
        stop = _stop_on_signals()
        retriever = Retriever(settings, ledger, stop=stop)
        if resume_id is not None:
            record = _resumed(ledger, resume_id)
        else:
            if not source or not study_date:
                raise click.UsageError(
                    "give --from DESTINATION and --study-date RANGE (or --resume ID)"
                )
            record = _backfill_record(
                retriever,
                source=source,
                study_date=study_date,
                modalities=modalities,
                series_filter=series_filter,
                plan=_plan(settings, models, use_routes, destinations, keep),
                per_minute=per_minute,
                window=window,
            )
        ended = _run_backfill(retriever, record, per_minute=per_minute, window=window, wait=wait)
    except PacsAiError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        ledger.close()
    if ended.state == RetrievalState.STOPPED:
        click.echo(
            f"stopped ({ended.reason}); resume with the same command or "
            f"`pacs-ai backfill --resume {ended.retrieval_id[:8]}`"
        )
        sys.exit(3 if stop.is_set() else 1)
    if ended.state == RetrievalState.FAILED:
        raise click.ClickException(f"backfill failed: {ended.reason}")


def _backfill_record(
    retriever: Retriever,
    *,
    source: str,
    study_date: str,
    modalities: tuple[str, ...],
    series_filter: tuple[str, ...],
    plan: _Plan,
    per_minute: float | None,
    window: str | None,
) -> RetrievalRecord:
    """The backfill these options name: the one made before with the same options
    (resumed), else a new one of the studies the PACS finds now."""
    from node_services.retrieve.base import (  # noqa: PLC0415
        QueryError,
        SourceUnavailableError,
        StudyQuery,
        parse_series_filter,
    )
    from node_services.retrieve.retriever import backfill_key  # noqa: PLC0415

    try:
        query = StudyQuery(study_date=study_date, modalities=tuple(modalities))
        wanted = parse_series_filter(series_filter)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    key = backfill_key(
        source=source,
        study_date=study_date,
        modalities=sorted(modalities),
        series_filter=wanted.as_json(),
        models=plan.models,
        destinations=plan.destinations,
        keep=plan.keep,
    )
    ledger = retriever.ledger
    existing = ledger.retrievals(kinds=["backfill"], key=key, limit=1)
    if existing:
        click.echo(f"resuming backfill {existing[0].retrieval_id[:8]} (made with these options)")
        return existing[0]
    try:
        studies = retriever.find(source, query)
    except (QueryError, SourceUnavailableError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    defaults = retriever.settings.backfill
    record = retriever.create(
        kind="backfill",
        source=source,
        studies=studies,
        series_filter=wanted,
        models=plan.models,
        destinations=plan.destinations,
        shadow=plan.keep,
        actor=_actor(),
        query={"study_date": study_date, "modalities": sorted(modalities)},
        key=key,
        studies_per_minute=per_minute or defaults.studies_per_minute,
        window=_window_option(window, defaults.window),
        state=RetrievalState.STOPPED,
    )
    _audit(ledger, "backfill", record, len(studies))
    click.echo(
        f"backfill {record.retrieval_id[:8]}: {len(studies)} studies from {source}, "
        f"{plan.describe()}"
    )
    return record


def _window_option(given: str | None, default: str | None) -> str | None:
    """The time window to use: ``given`` (``any``: none), else ``default``."""
    if given is None:
        return default
    return None if given == "any" else given


def _run_backfill(
    retriever: Retriever,
    record: RetrievalRecord,
    *,
    per_minute: float | None,
    window: str | None,
    wait: bool,
) -> RetrievalRecord:
    """Pull the backfill's pending studies, paced, with a progress bar; then, with
    ``wait``, wait until the node has run their jobs."""
    from node_services.retrieve.pacing import Pacing, TimeWindow  # noqa: PLC0415

    ledger = retriever.ledger
    rate = per_minute or record.studies_per_minute or retriever.settings.backfill.studies_per_minute
    span = _window_option(window, record.window)
    try:
        time_window = TimeWindow.parse(span) if span else None
    except ValueError:
        raise click.BadParameter("expected HH:MM-HH:MM or 'any'", param_hint="--window") from None
    click.echo(
        f"at most {rate:g} studies per minute"
        + (f", only {time_window}" if time_window else "")
        + "; Ctrl-C stops, the same command resumes"
    )
    with _ProgressBar(sys.stderr) as bar:
        try:
            ended = retriever.run(
                record.retrieval_id,
                pacing=Pacing(rate, time_window),
                report=lambda r: bar.show(r.progress, r.doing),
            )
        except RetrievalBusyError as exc:
            raise click.ClickException(str(exc)) from None
        if ended.state == RetrievalState.DONE and wait:
            _wait_for_backfill(ledger, ended, stop=retriever.stop, bar=bar)
    click.echo(_summary(ended, ledger.retrieval_progress(ended.retrieval_id)))
    return ended


# -- shared -------------------------------------------------------------------------------


class _Plan:
    """What a pull does with the studies: models and destinations, or the routing rules."""

    def __init__(self, models: list[str], destinations: list[str], keep: bool) -> None:
        self.models = models
        self.destinations = destinations
        self.keep = keep

    def describe(self) -> str:
        if not self.models:
            return "routed by the routing rules"
        where = ", ".join(self.destinations)
        if self.keep:
            to = f" (deliverable later to {where})" if where else ""
            return f"models {', '.join(self.models)}, results kept in the node{to}"
        return f"models {', '.join(self.models)}, results to {where}"


def _plan(
    settings: Settings,
    models: str | None,
    use_routes: bool,
    destinations: tuple[str, ...],
    keep: bool,
) -> _Plan:
    from models.registry import ModelRegistry  # noqa: PLC0415

    if use_routes:
        if models or destinations or keep:
            raise click.UsageError(
                "--routes routes by the configured rules: no --models, --send-results-to "
                "or --keep with it"
            )
        return _Plan([], [], keep=False)
    chosen = [m.strip() for m in (models or "").split(",") if m.strip()]
    if not chosen:
        raise click.UsageError("give --models a,b (or --routes to use the routing rules)")
    if not destinations and not keep:
        raise click.UsageError("give --send-results-to DESTINATION, or --keep")
    unknown = [d for d in destinations if d not in settings.destinations]
    if unknown:
        known = ", ".join(settings.destinations) or "none configured"
        raise click.BadParameter(
            f"no destination {', '.join(unknown)} (destinations: {known})",
            param_hint="--send-results-to",
        )
    try:
        installed = ModelRegistry.discover(settings.model_dirs, check_weights=False).ids
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    missing = [m for m in chosen if m not in installed]
    if missing:
        raise click.BadParameter(
            f"no model package {', '.join(missing)} (installed: {', '.join(installed)})",
            param_hint="--models",
        )
    return _Plan(chosen, list(dict.fromkeys(destinations)), keep)


def _settings(config: Path | None) -> Settings:
    from core.logs import configure_logging  # noqa: PLC0415

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    # Warnings and errors only (DEBUG when configured): the progress is printed, and the
    # libraries' own lines (pynetdicom shows query identifiers at INFO) stay out.
    level = settings.logging.level
    configure_logging("DEBUG" if level == "DEBUG" else "WARNING", settings.logging.format)
    return settings


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _audit(ledger: Ledger, action: str, record: RetrievalRecord, studies: int) -> None:
    """Record who started the pull (no accession number, no patient ID: the studies are
    in the ledger by UID)."""
    from monitor.actions import JobActions  # noqa: PLC0415
    from monitor.auth import Principal  # noqa: PLC0415

    operator = Principal(name=_actor(), role="admin", via="cli")
    JobActions(ledger).audit(
        operator,
        action,
        None,
        "ok",
        detail={
            "retrieval": record.retrieval_id,
            "source": record.source,
            "studies": studies,
            "models": ", ".join(record.models) or "routing rules",
        },
    )


def _resumed(ledger: Ledger, text: str) -> RetrievalRecord:
    try:
        record = ledger.get_retrieval(ledger.resolve_retrieval_id(text))
    except UnknownRetrievalError as exc:
        raise click.ClickException(str(exc)) from None
    if record.kind != "backfill":
        raise click.ClickException(f"retrieval {text} is a {record.kind}, not a backfill")
    click.echo(f"resuming backfill {record.retrieval_id[:8]}")
    return record


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def _handler(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return stop


def _study_jobs(ledger: Ledger, record: RetrievalRecord) -> Iterator[tuple[str, JobRecord]]:
    """(study UID, job) of each job the retrieval's pulled series got."""
    for study in ledger.retrieval_studies(record.retrieval_id, states=[StudyPull.ROUTED]):
        since = study.retrieved_at or 0.0
        for series in ledger.series_of_study(study.study_uid):
            for job in ledger.jobs(series_uid=series.series_instance_uid):
                if job.updated_at >= since:
                    yield study.study_uid, job


def _print_studies(ledger: Ledger, record: RetrievalRecord) -> None:
    for study in ledger.retrieval_studies(record.retrieval_id):
        detail = f": {study.reason}" if study.reason else ""
        click.echo(
            f"  study {study.study_uid} {study.state}: {study.series_count} series, "
            f"{study.instance_count} instances{detail}"
        )


def _wait_for_jobs(
    ledger: Ledger, record: RetrievalRecord, *, stop: threading.Event, timeout: float
) -> bool:
    """Wait until every pulled study is routed and its jobs settled; print them. True
    when none failed."""
    click.echo("waiting for the node to run the jobs (pacs-ai serve and a worker) ...")
    deadline = time.monotonic() + timeout
    while not _finished(ledger.retrieval_progress(record.retrieval_id)):
        if time.monotonic() > deadline or stop.wait(0.5):
            progress = ledger.retrieval_progress(record.retrieval_id)
            waiting = progress.by_state.get(StudyPull.RETRIEVED, 0)
            hint = (
                f"; {waiting} pulled studies not yet taken on by the node: is `pacs-ai "
                "serve` running with this configuration?"
                if waiting
                else ""
            )
            click.echo(f"stopped waiting{hint}", err=True)
            return False
    ok = True
    for _study, job in _study_jobs(ledger, record):
        ok = ok and job.state not in (JobState.FAILED,)
        reason = f" ({job.reason})" if job.reason else ""
        click.echo(f"  job {job.job_id[:8]} {job.model_id:<20} {job.state}{reason}")
    failed = ledger.retrieval_studies(record.retrieval_id, states=[StudyPull.FAILED])
    return ok and not failed


def _finished(progress: RetrievalProgress) -> bool:
    routed = progress.by_state.get(StudyPull.ROUTED, 0)
    return (
        progress.pending == 0
        and progress.by_state.get(StudyPull.RETRIEVED, 0) == 0
        and (progress.processed == routed)
    )


def _wait_for_backfill(
    ledger: Ledger, record: RetrievalRecord, *, stop: threading.Event, bar: _ProgressBar
) -> None:
    while not stop.is_set():
        progress = ledger.retrieval_progress(record.retrieval_id)
        if _finished(progress):
            return
        bar.show(progress, "waiting for the node to run the jobs")
        stop.wait(1.0)


def _summary(record: RetrievalRecord, progress: RetrievalProgress) -> str:
    states = ", ".join(
        f"{progress.by_state[s]} {s.value.lower()}" for s in StudyPull if progress.by_state.get(s)
    )
    return (
        f"backfill {record.retrieval_id[:8]} {record.state}: {progress.total} studies "
        f"({states}); {progress.processed} processed, {progress.failed_jobs} jobs failed"
    )


def _list_backfills(ledger: Ledger) -> None:
    records = ledger.retrievals(kinds=["backfill"], limit=50)
    if not records:
        click.echo("no backfill yet")
        return
    for record in records:
        progress = ledger.retrieval_progress(record.retrieval_id)
        query = record.query
        click.echo(
            f"{record.retrieval_id[:8]}  {record.state:<8} from {record.source} "
            f"{query.get('study_date', '')} {','.join(query.get('modalities', []))}  "
            f"{progress.retrieved}/{progress.total} pulled, {progress.processed} processed"
        )


class _ProgressBar:
    """One line redrawn in place on a terminal; a line per change elsewhere (a log)."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last = ""

    def show(self, progress: RetrievalProgress, doing: str) -> None:
        total = max(progress.total, 1)
        pulled = round(self.WIDTH * progress.retrieved / total)
        done = round(self.WIDTH * progress.processed / total)
        bar = "#" * done + "+" * max(pulled - done, 0)
        line = (
            f"[{bar:<{self.WIDTH}}] {progress.retrieved}/{progress.total} pulled, "
            f"{progress.processed} processed; {doing}"
        )
        if line == self._last:
            return
        self._last = line
        if self.tty:
            self.stream.write("\r\x1b[K" + line[:200])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.tty and self._last:
            self.stream.write("\n")
            self.stream.flush()
