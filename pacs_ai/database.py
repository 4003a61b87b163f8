"""``pacs-ai db upgrade`` and ``pacs-ai db current``: the ledger's schema revision.

``pacs-ai serve``, ``pacs-ai worker`` and the operator commands refuse a ledger that is
not at the revision of the installed release, naming the ``db upgrade`` command line that
fixes it (docs/upgrades.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from core.errors import ConfigError, PacsAiError
from core.ledger import Ledger
from core.ledger.revision import upgrade_command
from core.settings import Settings, load_settings

CONFIG = click.option(
    "--config",
    "config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="PACS_AI_CONFIG",
    help="Configuration file (YAML) naming the ledger. Default: $PACS_AI_CONFIG, else the "
    "defaults (the SQLite ledger under data_dir).",
)


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def require_current_ledger(settings: Settings, config: Path | None) -> None:
    """Refuse to go on unless the configured ledger is at this release's revision; create
    a brand-new one. The refusal names the ``db upgrade`` command for ``config``.

    Raises:
        click.ClickException: the ledger is not at the head revision.
    """
    ledger = Ledger(settings.resolved_ledger_url)
    try:
        ledger.require_current_schema(upgrade_command=upgrade_command(config))
    except PacsAiError as exc:
        raise click.ClickException(str(exc)) from None
    except OperationalError as exc:
        raise click.ClickException(_unreachable(settings, exc)) from None
    finally:
        ledger.close()


def _where(settings: Settings) -> str:
    return make_url(settings.resolved_ledger_url).render_as_string(hide_password=True)


def _unreachable(settings: Settings, exc: OperationalError) -> str:
    return f"cannot open the ledger {_where(settings)}: {exc.orig}"


@click.group()
def db() -> None:
    """The ledger's schema: show its revision, upgrade it after installing a new release."""


@db.command(name="upgrade")
@CONFIG
def db_upgrade(config: Path | None) -> None:
    """Create the ledger, or upgrade it to the schema revision of this release.

    Back the ledger up first (SQLite: copy the file; PostgreSQL: pg_dump) and stop
    `pacs-ai serve` and the workers. A ledger of a release from before migrations is
    recognised by its schema number and upgraded too. Running it again does nothing.
    """
    settings = _settings(config)
    ledger = Ledger(settings.resolved_ledger_url)
    try:
        done = ledger.create_schema()
    except PacsAiError as exc:
        raise click.ClickException(str(exc)) from None
    except OperationalError as exc:
        raise click.ClickException(_unreachable(settings, exc)) from None
    finally:
        ledger.close()
    where = _where(settings)
    before, after = done.before, done.after
    if before.at_head:
        click.echo(f"ledger {where}: at revision {after.describe()}, nothing to do")
        return
    if before.empty:
        click.echo(f"ledger {where}: created at revision {after.describe()}")
        return
    if done.stamped:
        click.echo(
            f"ledger {where}: upgraded from schema {before.legacy_version} of an earlier "
            f"release (revision {done.stamped}) to {after.describe()}"
        )
        return
    click.echo(f"ledger {where}: upgraded from revision {before.describe()} to {after.describe()}")


@db.command(name="current")
@CONFIG
def db_current(config: Path | None) -> None:
    """Show the ledger's schema revision and the one this release runs.

    Changes nothing. Exits 1 when the ledger is not at this release's revision (run the
    command it prints).
    """
    settings = _settings(config)
    url = make_url(settings.resolved_ledger_url)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        # Opening a missing SQLite file would create it: there is no ledger yet.
        click.echo(f"ledger   {_where(settings)}: none yet")
        click.echo(f"run `{upgrade_command(config)}` to create it (`pacs-ai serve` also does)")
        sys.exit(1)
    ledger = Ledger(settings.resolved_ledger_url)
    try:
        state = ledger.schema_revision()
    except OperationalError as exc:
        raise click.ClickException(_unreachable(settings, exc)) from None
    finally:
        ledger.close()
    click.echo(f"ledger   {_where(settings)}")
    click.echo(f"revision {state.describe()}")
    click.echo(f"head     {state.head} (what this release runs)")
    if state.at_head:
        return
    if state.known:
        click.echo(f"run `{upgrade_command(config)}` (back the ledger up first)")
    else:
        click.echo("this release cannot upgrade it (docs/upgrades.md)")
    sys.exit(1)
