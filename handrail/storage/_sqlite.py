"""The SQLite backend: Handrail's tables in the checkpoints' file."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.sqlite import SqliteSaver

from handrail.storage._base import Rows, Sql, Store

BUSY_TIMEOUT_S = 30.0
"""How long a writer waits in SQLite's busy handler for another process's transaction."""

LOCKED_RETRIES = 3
"""How many more times a statement that still found the database locked is tried."""

T = TypeVar("T")


def connect(
    path: str | Path,
    *,
    autocommit: bool = True,
    readonly: bool = False,
    timeout: float = BUSY_TIMEOUT_S,
) -> sqlite3.Connection:
    """A connection in WAL mode with a busy timeout, usable from any thread (callers lock).

    ``autocommit=False`` keeps Python's implicit transactions, which `SqliteSaver` commits itself.
    ``readonly`` opens an existing file for reading only (nothing is created).
    """
    target, uri = (
        (f"{Path(path).resolve().as_uri()}?mode=ro", True) if readonly else (str(path), False)
    )
    conn = sqlite3.connect(
        target,
        uri=uri,
        check_same_thread=False,
        timeout=timeout,
        isolation_level=None if autocommit else "DEFERRED",
    )
    if not readonly:
        # Switching a new file to WAL takes its lock without waiting in the busy handler, so
        # processes opening one new file at once can find it locked: try again (WAL persists, so
        # only the first opening of a file switches it).
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
        conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def locked(error: BaseException) -> bool:
    """Whether ``error`` is SQLite's "database is locked" (or busy), after the busy timeout."""
    return isinstance(error, sqlite3.OperationalError) and (
        "locked" in str(error) or "busy" in str(error)
    )


def retry_locked(step: Callable[[], T]) -> T:
    """``step()``, tried again (up to `LOCKED_RETRIES` times, after a short random pause) while
    the database stays locked past the busy timeout; the last error is raised."""
    for attempt in range(LOCKED_RETRIES + 1):
        try:
            return step()
        except sqlite3.OperationalError as error:
            if not locked(error) or attempt == LOCKED_RETRIES:
                raise
            time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
    raise AssertionError("unreachable")


def database_path(saver: BaseCheckpointSaver[Any] | None) -> Path | None:
    """The file behind a SQLite saver, or None (no saver, another backend, or in memory)."""
    conn = getattr(saver, "conn", None)
    if not isinstance(conn, sqlite3.Connection):
        return None
    for _, name, file in conn.execute("PRAGMA database_list").fetchall():
        if name == "main" and file:
            return Path(file)
    return None


class _Sql:
    """`Sql` over a sqlite3 connection; statements outside a transaction retry a locked file."""

    __slots__ = ("_conn", "_retry")

    def __init__(self, conn: sqlite3.Connection, retry: bool) -> None:
        self._conn = conn
        self._retry = retry

    def execute(self, sql: str, params: Any = ()) -> Rows:
        if self._retry:
            return retry_locked(lambda: self._conn.execute(sql, params))
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, params: Iterable[Any]) -> None:
        rows = list(params)
        if self._retry:
            retry_locked(lambda: self._conn.executemany(sql, rows))
        else:
            self._conn.executemany(sql, rows)


class SqliteStore(Store):
    """Handrail's tables in a SQLite file (WAL, a busy timeout, locked writes retried).

    One connection and a lock serialise this store's users; a `transaction` is ``BEGIN
    IMMEDIATE``, which takes the file's single write lock, so every transaction excludes every
    other whatever locks it names. With ``saver`` (a `SqliteSaver` on the same file) the store
    writes through the saver's connection and lock instead of opening its own: writers on one
    connection queue on a Python lock, which wakes the next one at once, while writers on separate
    connections wait in SQLite's busy handler, which sleeps whole milliseconds. Its reads then go
    through a connection of the store's own (WAL readers never wait for a writer), so a lookup
    never queues behind the saver's checkpoint writes in the background.

    A statement that still finds the file locked after ``busy_timeout`` seconds (another process
    held its write lock that long) is tried again `LOCKED_RETRIES` times before the error is
    raised; so is the ``BEGIN IMMEDIATE`` of a transaction.
    """

    dialect = "sqlite"

    def __init__(
        self,
        path: str | Path,
        *,
        readonly: bool = False,
        saver: SqliteSaver | None = None,
        busy_timeout: float = BUSY_TIMEOUT_S,
    ) -> None:
        super().__init__(str(path), readonly=readonly)
        self.path = Path(path)
        """The SQLite file."""
        self._owned = saver is None
        if saver is not None:
            self._conn, self._lock = saver.conn, saver.lock
            reader = connect(self.path, timeout=busy_timeout)
            self._reader, self._reading = reader, threading.Lock()
        else:
            conn = connect(self.path, readonly=readonly, timeout=busy_timeout)
            self._conn, self._lock = conn, threading.Lock()
            self._reader, self._reading = conn, self._lock

    def close(self) -> None:
        if self._owned:
            self._conn.close()
        else:
            self._reader.close()

    @contextmanager
    def transaction(self, *locks: str) -> Iterator[_Sql]:
        with self._lock:
            retry_locked(lambda: self._conn.execute("BEGIN IMMEDIATE"))
            try:
                sql = _Sql(self._conn, retry=False)
                riding = self._ride_along(sql) if self._deferred else []
                yield sql
                self._conn.execute("COMMIT")
                if riding:
                    self._landed(riding)
            except BaseException:
                # Also when COMMIT itself fails (a full disk): a shared connection must not be
                # left inside our transaction for its owner to commit.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def lock_in(self, sql: Sql, name: str) -> None:
        """Nothing to take: SQLite's transactions are serialised whole (``BEGIN IMMEDIATE``)."""

    @contextmanager
    def read(self) -> Iterator[_Sql]:
        with self._reading:
            yield _Sql(self._reader, retry=True)

    def json_has(self, column: str) -> str:
        return f"EXISTS (SELECT 1 FROM json_each({column}) WHERE value = ?)"

    def table_exists(self, name: str) -> bool:
        with self.read() as sql:
            row = sql.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
            ).fetchone()
        return row is not None

    def same(self, other: Store) -> bool:
        return isinstance(other, SqliteStore) and self.path.resolve() == other.path.resolve()


class RetryingSqliteSaver(SqliteSaver):
    """A `SqliteSaver` whose writes are tried again, like the store's, when the file is still
    locked after the busy timeout (each write is one idempotent statement, committed alone)."""

    def put(self, *args: Any, **kwargs: Any) -> Any:
        return retry_locked(partial(SqliteSaver.put, self, *args, **kwargs))

    def put_writes(self, *args: Any, **kwargs: Any) -> None:
        retry_locked(partial(SqliteSaver.put_writes, self, *args, **kwargs))
