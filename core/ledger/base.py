"""The ledger's connection: what every part of it shares."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Engine

from core.ledger.engine import _make_engine
from core.ledger.schema import (
    SCHEMA_VERSION,
    add_missing_columns,
    metadata,
    schema_info,
)

logger = logging.getLogger(__name__)


class LedgerBase:
    """Typed access to the ledger database. Safe to share between threads."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = _make_engine(url)
        self._schema_lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        return self._engine

    def create_schema(self) -> None:
        """Create missing tables and columns (idempotent) and record the schema version.

        A ledger made by an older release gets the tables and the (nullable) columns
        added since (:func:`core.ledger.schema.add_missing_columns`).
        """
        with self._schema_lock, self._engine.begin() as conn:
            metadata.create_all(conn)
            added = add_missing_columns(conn)
            if added:
                logger.info("ledger upgraded: added %s", ", ".join(added))
            if conn.execute(select(func.count()).select_from(schema_info)).scalar_one() == 0:
                conn.execute(insert(schema_info).values(version=SCHEMA_VERSION))
            else:
                conn.execute(
                    update(schema_info)
                    .where(schema_info.c.version < SCHEMA_VERSION)
                    .values(version=SCHEMA_VERSION)
                )

    def close(self) -> None:
        self._engine.dispose()
