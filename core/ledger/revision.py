"""The ledger's schema revision: what a ledger is at, upgrading it, refusing a mismatch.

The schema changes by Alembic revisions (``core/ledger/migrations/versions``): "0001" is
the schema of the first release, each later revision one change. A ledger records its
revision in ``alembic_version``. Ledgers made before migrations carry none, only the
``schema_info`` number of their release (1 or 2): an upgrade first stamps them at the
matching revision (:data:`LEGACY_REVISIONS`), then runs the rest.

``pacs-ai db upgrade`` upgrades (:func:`upgrade`). ``pacs-ai serve``, ``pacs-ai worker``
and the operator commands create a brand-new (empty) ledger at the head revision and
refuse any other ledger not at it (:func:`require_head`), naming the command that fixes
it: an upgrade is an operator's decision, made after a backup (docs/upgrades.md).
"""

from __future__ import annotations

import functools
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from core.errors import PacsAiError
from core.ledger.schema import schema_info

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")

#: ``schema_info`` version of a ledger made before migrations -> its revision.
LEGACY_REVISIONS = {1: "0001", 2: "0002"}

#: The command that upgrades the ledger of the default configuration.
UPGRADE_COMMAND = "pacs-ai db upgrade"

#: PostgreSQL advisory lock held while a ledger is created or upgraded, so that processes
#: starting together on a new ledger do not both create it (SQLite: BEGIN IMMEDIATE).
_LOCK_KEY = 0x70_61_63_73_5F_61_69  # "pacs_ai"


class LedgerRevisionError(PacsAiError):
    """The ledger is not at the schema revision this release runs (or cannot be upgraded)."""


@dataclass(frozen=True)
class LedgerRevision:
    """Where a ledger stands. ``current``: its Alembic revision (None: not under migrations);
    ``legacy_version``: the ``schema_info`` number of a ledger made before migrations;
    ``empty``: no table at all, a brand-new database."""

    current: str | None
    legacy_version: int | None
    empty: bool
    head: str

    @property
    def at_head(self) -> bool:
        return self.current == self.head

    @property
    def known(self) -> bool:
        """Whether this release can upgrade it (or it is new)."""
        if self.current is not None:
            return self.current in revisions()
        return self.empty or self.legacy_version in LEGACY_REVISIONS

    def describe(self) -> str:
        """``0002 (head)``, ``0001``, ``none (empty)``, ``none (schema 1, before migrations)``."""
        if self.current is not None:
            if self.at_head:
                return f"{self.current} (head)"
            return self.current if self.known else f"{self.current} (unknown to this release)"
        if self.empty:
            return "none (empty: no ledger yet)"
        if self.legacy_version is not None:
            return f"none (schema {self.legacy_version}, made before migrations)"
        return "none (tables, but no pacs-ai ledger revision)"


@dataclass(frozen=True)
class SchemaUpgrade:
    """What :func:`upgrade` did: the ledger before and after, and the revision a ledger made
    before migrations was stamped at first (None when it was not)."""

    before: LedgerRevision
    after: LedgerRevision
    stamped: str | None


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory(str(MIGRATIONS))


def head_revision() -> str:
    """The revision this release's code runs on."""
    head = _scripts().get_current_head()
    assert head is not None, f"no revision in {MIGRATIONS}"
    return head


def revisions() -> frozenset[str]:
    """Every revision this release knows."""
    return frozenset(script.revision for script in _scripts().walk_revisions())


def upgrade_command(config: Path | None) -> str:
    """The ``pacs-ai db upgrade`` command line for the configuration file ``config`` (as
    given to ``--config`` or ``PACS_AI_CONFIG``; None: the default configuration). It runs
    as printed from any directory (the path is absolute, quoted for the shell)."""
    if config is None:
        return UPGRADE_COMMAND
    return f"pacs-ai db upgrade --config {shlex.quote(str(config.absolute()))}"


def inspect_revision(conn: Connection) -> LedgerRevision:
    """Where the ledger on ``conn`` stands (reads only)."""
    tables = set(inspect(conn).get_table_names())
    current: str | None = None
    if "alembic_version" in tables:
        # One row: the revisions form one line, never branches.
        current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    legacy = None
    if "schema_info" in tables:
        legacy = conn.execute(select(func.max(schema_info.c.version))).scalar_one_or_none()
    return LedgerRevision(
        current=current, legacy_version=legacy, empty=not tables, head=head_revision()
    )


def alembic_config(conn: Connection) -> Config:
    """Alembic's configuration for running the ledger's revisions on ``conn``, inside its
    transaction (``alembic.command.upgrade(alembic_config(conn), "0001")``)."""
    config = Config()
    # ConfigParser interpolates "%": a path holding one must not be read as a reference.
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.attributes["connection"] = conn
    return config


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})


def _where(engine: Engine) -> str:
    return make_url(engine.url).render_as_string(hide_password=True)


def upgrade(engine: Engine, *, new_only: bool = False) -> SchemaUpgrade:
    """Bring the ledger to the head revision, in one transaction: create it when the
    database is empty; stamp a ledger made before migrations at its revision first.

    ``new_only``: only create a brand-new ledger; any other not at head is refused.

    Raises:
        LedgerRevisionError: the ledger is at a revision this release does not know (a
            newer release upgraded it), holds tables but is no pacs-ai ledger, or (with
            ``new_only``) needs an upgrade.
    """
    with engine.begin() as conn:
        _lock(conn)
        before = inspect_revision(conn)
        if before.at_head:
            return SchemaUpgrade(before, before, None)
        if not before.known:
            raise LedgerRevisionError(_refusal(before, _where(engine), UPGRADE_COMMAND))
        if new_only and not before.empty:
            raise LedgerRevisionError(_refusal(before, _where(engine), UPGRADE_COMMAND))
        stamped = None
        try:
            if before.current is None and not before.empty:
                assert before.legacy_version is not None
                stamped = LEGACY_REVISIONS[before.legacy_version]
                command.stamp(alembic_config(conn), stamped)
            command.upgrade(alembic_config(conn), "head")
        except SQLAlchemyError as exc:
            # Leaving the block rolls the whole upgrade back (transactional DDL).
            why = exc.orig if isinstance(exc, DBAPIError) else exc
            raise LedgerRevisionError(
                f"upgrading the ledger {_where(engine)} from revision {before.describe()} "
                f"failed, and nothing of it was kept (the ledger is as it was): {why}"
            ) from exc
        after = inspect_revision(conn)
    logger.info(
        "ledger %s upgraded from %s to %s", _where(engine), before.describe(), after.describe()
    )
    return SchemaUpgrade(before, after, stamped)


def require_head(engine: Engine, *, upgrade_command: str = UPGRADE_COMMAND) -> None:
    """Let a process start only on a ledger at the head revision; create a brand-new one.

    ``upgrade_command`` is the command line printed to fix a ledger behind this release
    (:func:`upgrade_command`, with the configuration the process runs with).

    Raises:
        LedgerRevisionError: the ledger is not at the head revision, saying which command
            brings it there (or, when none can, what to do).
    """
    with engine.connect() as conn:
        state = inspect_revision(conn)
    if state.at_head:
        return
    if state.empty:
        try:
            upgrade(engine, new_only=True)
        except LedgerRevisionError:
            # Another process may have created or changed it meanwhile: judge what it is now.
            with engine.connect() as conn:
                state = inspect_revision(conn)
            if state.empty:
                raise  # creating it failed
        else:
            return
    if not state.at_head:
        raise LedgerRevisionError(_refusal(state, _where(engine), upgrade_command))


def _refusal(state: LedgerRevision, where: str, fix: str) -> str:
    """Why a process does not start on this ledger, and what to do."""
    head = state.head
    if state.current is not None and not state.known:
        return (
            f"the ledger {where} is at schema revision {state.current}, which this release "
            f"of pacs-ai does not know (it runs {head}): a newer release upgraded it. Run "
            "that release, or restore the backup of the ledger made before the upgrade"
        )
    if state.current is None and not state.known:
        return (
            f"the database {where} holds tables but no pacs-ai ledger (no schema revision): "
            "point ledger_url at a pacs-ai ledger or at an empty database"
        )
    if state.current is not None:
        at = f"is at schema revision {state.current}"
    else:
        at = f"was made by an earlier release (schema {state.legacy_version}, no revision)"
    return (
        f"the ledger {where} {at}; this release of pacs-ai runs revision {head}. "
        f"Back the ledger up (docs/upgrades.md), then run `{fix}`"
    )
