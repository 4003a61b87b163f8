"""Operator commands: ``pacs-ai routes test`` and ``pacs-ai resend``.

Every command takes its configuration from ``--config``, else from the environment
variable ``PACS_AI_CONFIG``, else the defaults (the ledger under the default data_dir),
and a job by its whole id or the first characters ``pacs-ai status`` shows.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy.engine import make_url

from core.errors import ConfigError
from core.jobs import JobState
from core.ledger import AmbiguousJobIdError, Ledger, Outbox, UnknownJobError
from core.routing_rules import RouteSettings
from core.settings import Settings, load_settings
from dicom_node.routing import Arrival, Router
from models.acceptance import facts_from_files, needs_geometry, refusals
from models.registry import ModelRegistry
from pacs_ai.database import require_current_ledger

if TYPE_CHECKING:
    from monitor.actions import JobActions
    from monitor.auth import Principal

CONFIG = click.option(
    "--config",
    "config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="PACS_AI_CONFIG",
    help="Configuration file (YAML). Default: $PACS_AI_CONFIG, else the defaults.",
)


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def resolve_job(ledger: Ledger, job: str, *, config: Path | None) -> str:
    """The full id of the job ``job`` names (its id, or a unique start of it).

    Raises:
        click.ClickException: no job, or several, start with it (they are listed).
    """
    try:
        return ledger.resolve_job_id(job)
    except AmbiguousJobIdError as exc:
        raise click.ClickException(str(exc)) from None
    except UnknownJobError as exc:
        where = ""
        if str(exc).startswith("no job"):
            where = f" ({make_url(ledger.url).render_as_string(hide_password=True)})"
            if config is None:
                where += (
                    "; no --config given and PACS_AI_CONFIG is not set, so this is the "
                    "default ledger: give the configuration `pacs-ai serve` runs with"
                )
        raise click.ClickException(f"{exc}{where}") from None


@click.group()
def routes() -> None:
    """Check routing rules against DICOM files."""


@routes.command(name="test")
@CONFIG
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--calling-ae", default="", help="Pretend the files came from this AE title.")
@click.option(
    "--called-ae", default=None, help="Pretend they were sent to this AE title (default: ours)."
)
@click.option("--source", default="", help="Pretend they came from this IP address.")
def routes_test(
    config: Path | None,
    paths: tuple[Path, ...],
    calling_ae: str,
    called_ae: str | None,
    source: str,
) -> None:
    """Show, per series in PATHS, which rule matches and why the others do not, and
    whether each model of the matching rules accepts the series (from its headers, as the
    node decides when the series completes: a refused one is recorded NOT_APPLICABLE)."""
    settings = _settings(config)
    router = Router(settings.routes, mode=settings.routing.mode)
    try:
        registry = ModelRegistry.discover(settings.model_dirs, check_weights=False)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    arrival = None
    if calling_ae or source or called_ae:
        arrival = Arrival(calling_ae, called_ae or settings.node.ae_title, source)
    seen = 0
    for header, files in _series_headers(paths):
        count = len(files)
        seen += 1
        description = header.get("SeriesDescription", "")
        click.echo(
            f"series {header.get('SeriesInstanceUID', '?')} ({header.get('Modality', '?')}, "
            f"{count} file(s){', ' + repr(str(description)) if description else ''})"
        )
        verdicts = router.explain(header, arrival)
        width = max((len(v.route.name) for v in verdicts), default=0)
        for verdict in verdicts:
            route = verdict.route
            if verdict.matched:
                what = []
                if route.models:
                    what.append(f"models {', '.join(route.models)}")
                if route.send_results_to:
                    what.append(f"results to {', '.join(route.send_results_to)}")
                if route.forward_originals_to:
                    what.append(f"forward to {', '.join(route.forward_originals_to)}")
                click.echo(f"  {route.name:<{width}}  MATCH  ({route.trigger}) {'; '.join(what)}")
            else:
                click.echo(f"  {route.name:<{width}}  no     {'; '.join(verdict.reasons)}")
        applied = router.matching(header, arrival)
        click.echo(
            f"  => {', '.join(r.name for r in applied) or 'no rule: recorded UNROUTED'}"
            f" (routing.mode: {settings.routing.mode})"
        )
        for line in _acceptance(applied, files, registry):
            click.echo(f"     {line}")
    if not seen:
        raise click.ClickException("no readable DICOM files in the given paths")


@click.command()
@CONFIG
@click.argument("job_id")
def resend(config: Path | None, job_id: str) -> None:
    """Send a job's undelivered results again: dead-lettered or refused items of a
    FAILED or DONE job, or, for a job waiting in DELIVERING (its retry schedule, or a
    destination found misconfigured whose configuration you fixed), at once. A shadow
    job's results (a `shadow: true` route, `pacs-ai run --keep`), kept and never
    delivered, go to its destinations.

    JOB_ID is the whole id or its first characters (the 8 that `pacs-ai status` shows).
    The same action as the dashboard's "re-send", audit-logged as done from the command
    line by the user running it.
    """
    from monitor.actions import ActionRefusedError, JobActions  # noqa: PLC0415
    from monitor.auth import Principal  # noqa: PLC0415

    settings = _settings(config)
    require_current_ledger(settings, config)
    ledger = Ledger(settings.resolved_ledger_url)
    operator = Principal(name=f"cli:{getpass.getuser()}", role="admin", via="cli")
    try:
        full_id = resolve_job(ledger, job_id, config=config)
        actions = JobActions(ledger, node=settings.node.name)
        if ledger.get_job(full_id).state == JobState.DELIVERING:
            message = _deliver_now(ledger, actions, full_id, operator)
        else:
            message = actions.perform("resend", full_id, operator).message
            # A destination found misconfigured waits on its own schedule: the operator
            # resending has fixed it, so it is tried at once too.
            Outbox(ledger).retry_now(job_id=full_id)
            message += "; the node sends them"
    except (UnknownJobError, ActionRefusedError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        ledger.close()
    click.echo(f"job {full_id}: {message}")


def _deliver_now(ledger: Ledger, actions: JobActions, job_id: str, operator: Principal) -> str:
    """A job waiting in DELIVERING: its pending results are due now (audited)."""
    from monitor.actions import ActionRefusedError  # noqa: PLC0415

    again = Outbox(ledger).retry_now(job_id=job_id)
    if again == 0:
        why = "the job is DELIVERING with no result waiting: the node is sending them now"
        actions.audit(operator, "resend", job_id, "refused", detail={"why": why})
        raise ActionRefusedError(why)
    actions.audit(operator, "resend", job_id, "ok", detail={"result": f"{again} due now"})
    return f"{again} result(s) due now; the node tries their destinations at once"


def _acceptance(
    routes: list[RouteSettings], files: list[Path], registry: ModelRegistry
) -> Iterator[str]:
    """Per model of the applied routes: accepted, or why it would be refused."""
    models = list(dict.fromkeys(m for route in routes for m in route.models))
    installed = [registry.get(m).manifest for m in models if m in registry]
    facts = facts_from_files(files, geometry=any(needs_geometry(m.accepts) for m in installed))
    for model_id in models:
        if model_id not in registry:
            yield f"{model_id}: not installed (no package in model_dirs)"
            continue
        problems = refusals(registry.get(model_id).manifest.accepts, facts)
        if problems:
            yield (
                f"would be refused by {model_id}: {'; '.join(problems)} "
                "(recorded NOT_APPLICABLE, not queued)"
            )
        else:
            yield f"{model_id} accepts it"


def _series_headers(paths: tuple[Path, ...]) -> Iterator[tuple[Dataset, list[Path]]]:
    """The first readable header of each series under ``paths``, with its files."""
    first: dict[str, Dataset] = {}
    files: dict[str, list[Path]] = {}
    for path in paths:
        for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            try:
                header: Dataset = dcmread(file, stop_before_pixels=True)
            except (InvalidDicomError, OSError):
                continue
            uid = str(header.get("SeriesInstanceUID", file))
            if uid not in first:
                first[uid] = header
                files[uid] = []
            files[uid].append(file)
    for uid, header in first.items():
        yield header, files[uid]
