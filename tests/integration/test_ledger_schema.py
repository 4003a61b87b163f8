"""The ledger's migrations build exactly the schema the code declares, on SQLite and on a
real PostgreSQL server; a new ledger is created at the head revision, and only there."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from core.ledger import Ledger, revision
from core.ledger.revision import LedgerRevisionError, head_revision
from core.ledger.schema import metadata
from tests.support.databases import KINDS, first_release_ledger, migrate, throwaway_database

#: A revision that fails half-way, after changing the schema.
FAILING_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "9999"
down_revision = {head!r}


def upgrade() -> None:
    op.add_column("jobs", sa.Column("doomed", sa.Integer()))
    op.execute(sa.text("SELECT no_such_column FROM jobs"))
"""


@pytest.fixture(params=KINDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with throwaway_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def failing_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The ledger's revisions plus one that fails (a copy; the head it follows returned)."""
    head = head_revision()
    copy = tmp_path / "migrations"
    shutil.copytree(revision.MIGRATIONS, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "versions" / "9999_fails.py").write_text(FAILING_REVISION.format(head=head))
    monkeypatch.setattr(revision, "MIGRATIONS", copy)
    revision._scripts.cache_clear()
    yield head
    revision._scripts.cache_clear()


def schema_differences(ledger: Ledger) -> list[object]:
    """What Alembic's autogenerate would change to make the ledger match the code."""
    with ledger.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def test_the_migrations_build_exactly_the_schema_the_code_declares(database_url: str) -> None:
    ledger = Ledger(database_url)
    ledger.create_schema()

    # Not empty: a table or column the code declares without its revision (or the reverse).
    assert schema_differences(ledger) == []
    assert ledger.schema_revision().current == head_revision()
    ledger.close()


def test_a_first_release_ledger_upgraded_has_the_schema_the_code_declares(
    database_url: str,
) -> None:
    migrate(database_url, "0001")
    ledger = Ledger(database_url)

    done = ledger.create_schema()

    assert (done.before.current, done.after.current) == ("0001", head_revision())
    assert schema_differences(ledger) == []
    ledger.close()


def test_a_new_ledger_is_created_at_the_head_and_upgrading_again_changes_nothing(
    database_url: str,
) -> None:
    ledger = Ledger(database_url)

    ledger.require_current_schema()
    again = ledger.create_schema()

    assert ledger.schema_revision().at_head
    assert again.before == again.after and again.after.at_head
    with ledger.engine.connect() as conn:
        # The releases before migrations read this number: they see the last one they knew.
        assert conn.execute(text("SELECT version FROM schema_info")).scalars().all() == [2]
    ledger.close()


def test_processes_starting_together_on_a_new_ledger_create_it_once(database_url: str) -> None:
    ledgers = [Ledger(database_url) for _ in range(4)]

    with ThreadPoolExecutor(len(ledgers)) as pool:
        list(pool.map(lambda ledger: ledger.require_current_schema(), ledgers))

    assert all(ledger.schema_revision().at_head for ledger in ledgers)
    with ledgers[0].engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM schema_info")).scalars().all() == [2]
    for ledger in ledgers:
        ledger.close()


def test_a_ledger_at_an_older_revision_is_refused_with_the_command_that_upgrades_it(
    database_url: str,
) -> None:
    migrate(database_url, "0002")
    ledger = Ledger(database_url)

    with pytest.raises(LedgerRevisionError, match="at schema revision 0002") as refused:
        ledger.require_current_schema(upgrade_command="pacs-ai db upgrade --config /etc/x.yaml")

    assert str(refused.value).endswith("then run `pacs-ai db upgrade --config /etc/x.yaml`")
    assert ledger.schema_revision().current == "0002"  # untouched
    ledger.close()


def test_a_ledger_of_a_newer_release_is_refused_and_not_upgraded(database_url: str) -> None:
    ledger = Ledger(database_url)
    ledger.create_schema()
    with ledger.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))

    with pytest.raises(LedgerRevisionError, match="9999, which this release of pacs-ai does"):
        ledger.require_current_schema()
    with pytest.raises(LedgerRevisionError, match="restore the backup of the ledger"):
        ledger.create_schema()
    ledger.close()


def test_a_database_holding_other_tables_is_not_taken_for_a_ledger(database_url: str) -> None:
    ledger = Ledger(database_url)
    with ledger.engine.begin() as conn:
        conn.execute(text("CREATE TABLE patients (name VARCHAR(64))"))

    with pytest.raises(LedgerRevisionError, match="holds tables but no pacs-ai ledger"):
        ledger.create_schema()
    assert inspect(ledger.engine).get_table_names() == ["patients"]
    ledger.close()


def test_the_first_two_revisions_downgrade_to_an_empty_database(database_url: str) -> None:
    migrate(database_url, "0002")

    migrate(database_url, "0001", down=True)
    ledger = Ledger(database_url)
    columns = {c["name"] for c in inspect(ledger.engine).get_columns("series")}
    tables = set(inspect(ledger.engine).get_table_names())
    migrate(database_url, "base", down=True)

    assert "receiving_since" not in columns and "first_received_at" in columns
    assert {"nodes", "destination_status"}.isdisjoint(tables) and "jobs" in tables
    assert inspect(ledger.engine).get_table_names() == ["alembic_version"]
    ledger.close()


def test_an_upgrade_that_fails_half_way_leaves_the_ledger_as_it_was(
    database_url: str, failing_revision: str
) -> None:
    first_release_ledger(database_url)
    ledger = Ledger(database_url)

    with pytest.raises(LedgerRevisionError, match="failed, and nothing of it was kept"):
        ledger.create_schema()

    state = ledger.schema_revision()
    assert (state.current, state.legacy_version) == (None, 1)
    assert "nodes" not in inspect(ledger.engine).get_table_names()
    assert "receiving_since" not in {
        c["name"] for c in inspect(ledger.engine).get_columns("series")
    }
    ledger.close()
