"""The ledger's connection: what every part of it shares."""

from __future__ import annotations

import threading

from sqlalchemy import select
from sqlalchemy.engine import Engine

from core.ledger.engine import _make_engine
from core.ledger.revision import (
    UPGRADE_COMMAND,
    LedgerRevision,
    SchemaUpgrade,
    inspect_revision,
    require_head,
    upgrade,
)


class LedgerBase:
    """Typed access to the ledger database. Safe to share between threads."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = _make_engine(url)
        self._schema_lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        return self._engine

    def create_schema(self) -> SchemaUpgrade:
        """Create the ledger, or upgrade it to this release's schema revision: what
        ``pacs-ai db upgrade`` does (:func:`core.ledger.revision.upgrade`).

        Raises:
            LedgerRevisionError: the ledger cannot be upgraded by this release.
        """
        with self._schema_lock:
            return upgrade(self._engine)

    def require_current_schema(self, *, upgrade_command: str = UPGRADE_COMMAND) -> None:
        """Create a brand-new ledger; refuse one not at this release's schema revision,
        naming ``upgrade_command`` (:func:`core.ledger.revision.require_head`).

        Raises:
            LedgerRevisionError: the ledger is not at the head revision.
        """
        with self._schema_lock:
            require_head(self._engine, upgrade_command=upgrade_command)

    def schema_revision(self) -> LedgerRevision:
        """Where the ledger's schema stands (reads only)."""
        with self._engine.connect() as conn:
            return inspect_revision(conn)

    def ping(self) -> None:
        """Ask the database a trivial query (readiness).

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database does not answer.
        """
        with self._engine.connect() as conn:
            conn.execute(select(1))

    def close(self) -> None:
        self._engine.dispose()
