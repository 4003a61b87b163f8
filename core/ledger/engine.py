"""The SQLAlchemy engine of a ledger URL (SQLite pragmas, IMMEDIATE transactions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import ConnectionPoolEntry


def _make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    database = url.split("///", 1)[-1]
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy's BEGIN below be the only transaction control.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL lets the node, workers and dashboard read while one of them writes;
        # synchronous=FULL keeps committed rows through a power cut.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Connection) -> None:
        # A deferred transaction that later writes can fail at once with "database is
        # locked" when another process writes; taking the write lock at BEGIN waits instead.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
