"""Opening the SQLite file that holds checkpoints and Handrail's own tables."""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.sqlite import SqliteSaver

BUSY_TIMEOUT_S = 30.0
"""How long a writer waits for another process's transaction before giving up."""


def connect(path: str | Path, *, autocommit: bool = True) -> sqlite3.Connection:
    """A connection in WAL mode with a busy timeout, usable from any thread (callers lock).

    ``autocommit=False`` keeps Python's implicit transactions, which `SqliteSaver` commits itself.
    """
    conn = sqlite3.connect(
        str(path),
        check_same_thread=False,
        timeout=BUSY_TIMEOUT_S,
        isolation_level=None if autocommit else "DEFERRED",
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def database_path(saver: BaseCheckpointSaver[Any] | None) -> Path | None:
    """The file behind a SQLite saver, or None (no saver, another backend, or in memory)."""
    conn = getattr(saver, "conn", None)
    if not isinstance(conn, sqlite3.Connection):
        return None
    for _, name, file in conn.execute("PRAGMA database_list").fetchall():
        if name == "main" and file:
            return Path(file)
    return None


Shared = tuple[sqlite3.Connection, threading.Lock]
"""A connection and the lock that serialises its users."""


def shared_connection(saver: BaseCheckpointSaver[Any] | None) -> Shared | None:
    """A `SqliteSaver`'s connection and lock, for Handrail's tables on the hot path to share.

    Writers on one connection queue on a Python lock, which wakes the next one at once; writers
    on separate connections to the file wait in SQLite's busy handler, which sleeps for whole
    milliseconds while the saver writes a checkpoint in the background.
    """
    if not isinstance(saver, SqliteSaver):
        return None
    return saver.conn, saver.lock


class Table:
    """Base of Handrail's own tables: one connection to the file, a lock, the schema made once.

    With ``share`` the table uses that connection and lock (a saver's, `shared_connection`)
    instead of opening its own; `close` then leaves the connection to its owner.
    """

    def __init__(self, path: str | Path, schema: str, *, share: Shared | None = None) -> None:
        self.path = Path(path)
        """The SQLite file (the same one the checkpoints are in)."""
        self._owned = share is None
        self._conn, self._lock = (
            share if share is not None else (connect(self.path), threading.Lock())
        )
        with self._lock:
            self._conn.executescript(schema)

    def close(self) -> None:
        """Close the connection (unless it is shared)."""
        if self._owned:
            self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` under the lock: one writer, rolled back on error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                # Also when COMMIT itself fails (a full disk): a shared connection must not be
                # left inside our transaction for its owner to commit.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise


_SECRETS = """
CREATE TABLE IF NOT EXISTS handrail_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def file_secret(path: str | Path, name: str, *, share: Shared | None = None) -> bytes:
    """A random 32-byte secret kept in the file under ``name``: made by the first process that
    asks, the same for every process after. (Whoever can read the file can read it too.)"""
    table = Table(path, _SECRETS, share=share)
    try:
        with table._lock:  # a read first: no write lock (an async saver may hold it on the loop)
            row = table._conn.execute(
                "SELECT value FROM handrail_secrets WHERE name = ?", (name,)
            ).fetchone()
        if row is not None:
            return bytes.fromhex(row[0])
        with table._transaction() as conn:
            conn.execute(
                "INSERT INTO handrail_secrets (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                (name, secrets.token_hex(32)),
            )
            (value,) = conn.execute(
                "SELECT value FROM handrail_secrets WHERE name = ?", (name,)
            ).fetchone()
    finally:
        table.close()
    return bytes.fromhex(value)
