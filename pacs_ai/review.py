"""Operator commands for results held for review: ``pacs-ai release`` and ``pacs-ai discard``.

A result outside what its model declares plausible is held (job NEEDS_REVIEW, route
``on_implausible: hold``). These commands do what the dashboard's Release and Discard
buttons do, audit-logged as done from the command line (``cli:<user>``).
"""

from __future__ import annotations

import getpass
from pathlib import Path

import click

from core.errors import ConfigError
from core.ledger import Ledger, UnknownJobError
from core.settings import load_settings
from pacs_ai.operations import CONFIG


def _perform(config: Path, action: str, job_id: str, *, reason: str = "") -> str:
    from monitor.actions import ActionRefusedError, JobActions  # noqa: PLC0415
    from monitor.auth import Principal  # noqa: PLC0415

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    ledger = Ledger(settings.resolved_ledger_url)
    ledger.create_schema()
    operator = Principal(name=f"cli:{getpass.getuser()}", role="admin", via="cli")
    try:
        return JobActions(ledger).perform(action, job_id, operator, reason=reason).message
    except (UnknownJobError, ActionRefusedError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        ledger.close()


@click.command()
@CONFIG
@click.argument("job_id")
def release(config: Path, job_id: str) -> None:
    """Deliver a result held for review (NEEDS_REVIEW) as it is.

    Its result objects, written when the job ran, go to the job's destinations; the node
    sends them and the job ends DONE.
    """
    click.echo(f"job {job_id}: {_perform(config, 'release', job_id)}")


@click.command()
@CONFIG
@click.argument("job_id")
@click.option("--reason", required=True, help="Why the job is discarded (recorded).")
def discard(config: Path, job_id: str, reason: str) -> None:
    """Discard a job held for review (NEEDS_REVIEW), failed, or not yet running.

    A held result is never delivered; the job ends FAILED, shown as DISCARDED, with the
    reason. Its series stays in the spool.
    """
    click.echo(f"job {job_id}: {_perform(config, 'discard', job_id, reason=reason)}")
