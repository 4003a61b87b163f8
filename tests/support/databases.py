"""Throwaway ledger databases: a SQLite file, or a database of its own on the PostgreSQL
server of ``PACS_AI_TEST_POSTGRES`` (default: 127.0.0.1:5432, trust authentication).

A PostgreSQL server that cannot be reached skips the test locally and fails it in CI.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from core.ledger.engine import _make_engine
from core.ledger.revision import alembic_config
from tests.support.missing import skip_locally_fail_in_ci

POSTGRES_ADMIN_URL = os.environ.get(
    "PACS_AI_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)

#: What each test runs on: the embedded default and the production database.
KINDS = ("sqlite", "postgresql")


@contextmanager
def throwaway_database(kind: str, folder: Path) -> Iterator[str]:
    """The URL of an empty database of ``kind``, removed afterwards (PostgreSQL)."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'ledger.sqlite3'}"
        return
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"pacs_ai_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        skip_locally_fail_in_ci(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc.orig}")
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def migrate(url: str, revision: str, *, down: bool = False) -> None:
    """Run the ledger's revisions on ``url`` up to ``revision`` (``down``: down to it)."""
    engine = _make_engine(url)
    try:
        with engine.begin() as conn:
            run = command.downgrade if down else command.upgrade
            run(alembic_config(conn), revision)
    finally:
        engine.dispose()


def first_release_ledger(url: str) -> None:
    """Make on ``url`` the ledger the first release made: its tables (revision 0001) and
    ``schema_info`` version 1, without ``alembic_version`` (that release had none)."""
    migrate(url, "0001")
    engine = _make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE alembic_version"))
    finally:
        engine.dispose()
