"""Opening the SQLite file that holds checkpoints and Handrail's own tables."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver

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


class Table:
    """Base of Handrail's own tables: one connection to the file, a lock, the schema made once."""

    def __init__(self, path: str | Path, schema: str) -> None:
        self.path = Path(path)
        """The SQLite file (the same one the checkpoints are in)."""
        self._conn = connect(self.path)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.executescript(schema)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` under the lock: one writer, rolled back on error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
