"""Alembic's environment for the ledger: the migrations run on the connection pacs-ai gives.

pacs-ai runs them itself (:mod:`core.ledger.revision`, ``pacs-ai db upgrade``) with a
connection already inside its transaction, so that a whole upgrade commits or rolls back
as one (PostgreSQL and SQLite both have transactional DDL). Run by the ``alembic`` command
instead (a developer writing a revision: ``[tool.alembic]`` in pyproject.toml), it
connects to the ledger of the pacs-ai settings: ``PACS_AI_CONFIG`` and the ``PACS_AI_...``
environment, else the default ledger under ``data_dir``.
"""

from __future__ import annotations

import os
from pathlib import Path

from alembic import context
from sqlalchemy.engine import Connection

from core.ledger.engine import _make_engine
from core.ledger.schema import metadata
from core.settings import load_settings


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite alters most of a table only by copying it: autogenerate writes such
        # changes as batch operations, which work on both databases.
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_with_settings() -> None:
    if context.is_offline_mode():
        raise SystemExit("the ledger's migrations run against a database, not as SQL (--sql)")
    config = os.environ.get("PACS_AI_CONFIG")
    settings = load_settings(Path(config) if config else None)
    engine = _make_engine(settings.resolved_ledger_url)
    try:
        with engine.begin() as connection:
            run_migrations(connection)
    finally:
        engine.dispose()


given = context.config.attributes.get("connection")
if isinstance(given, Connection):
    run_migrations(given)
else:
    run_with_settings()
