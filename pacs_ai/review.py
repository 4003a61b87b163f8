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
from pacs_ai.database import require_current_ledger
from pacs_ai.operations import CONFIG, resolve_job


def _perform(config: Path | None, action: str, job_id: str, *, reason: str = "") -> str:
    """Do ``action`` on the job ``job_id`` names; "job <full id>: <what happened>"."""
    from monitor.actions import ActionRefusedError, JobActions  # noqa: PLC0415
    from monitor.auth import Principal  # noqa: PLC0415

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    require_current_ledger(settings, config)
    ledger = Ledger(settings.resolved_ledger_url)
    operator = Principal(name=f"cli:{getpass.getuser()}", role="admin", via="cli")
    try:
        full_id = resolve_job(ledger, job_id, config=config)
        done = (
            JobActions(ledger, node=settings.node.name)
            .perform(action, full_id, operator, reason=reason)
            .message
        )
    except (UnknownJobError, ActionRefusedError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        ledger.close()
    return f"job {full_id}: {done}"


@click.command()
@CONFIG
@click.argument("job_id")
def release(config: Path | None, job_id: str) -> None:
    """Deliver a result held for review (NEEDS_REVIEW) as it is.

    Its result objects, written when the job ran, go to the job's destinations; the node
    sends them and the job ends DONE. JOB_ID is the whole id or its first characters.
    """
    click.echo(_perform(config, "release", job_id))


@click.command()
@CONFIG
@click.argument("job_id")
@click.option("--reason", required=True, help="Why the job is discarded (recorded).")
def discard(config: Path | None, job_id: str, reason: str) -> None:
    """Discard a job held for review (NEEDS_REVIEW), failed, or not yet running.

    A held result is never delivered; the job ends FAILED, shown as DISCARDED, with the
    reason. Its series stays in the spool. JOB_ID is the whole id or its first characters.
    """
    click.echo(_perform(config, "discard", job_id, reason=reason))
