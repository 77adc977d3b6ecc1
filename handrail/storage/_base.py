"""The storage seam: what Handrail's tables need from a database, whichever it is."""

from __future__ import annotations

import re
import secrets
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Protocol

from handrail.errors import SchemaOutdated
from handrail.storage._schema import MIGRATIONS, SCHEMA_VERSION

Dialect = Literal["sqlite", "postgresql"]


class Rows(Protocol):
    """What a statement gives back: its rows, and how many rows it changed."""

    @property
    def rowcount(self) -> int: ...

    @property
    def description(self) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Sql(Protocol):
    """A connection inside `Store.transaction` or `Store.read`.

    Statements use ``?`` placeholders (``:name`` with a mapping) in both dialects; the PostgreSQL
    backend rewrites them to psycopg's, also inside string literals (pass such text as a
    parameter), and stores a NUL character in text as U+FFFD (its text type cannot hold one).
    """

    def execute(self, sql: str, params: Any = ()) -> Rows: ...

    def executemany(self, sql: str, params: Iterable[Any]) -> None: ...


class Store(ABC):
    """Where Handrail keeps its own tables: the approvals index, the execution ledger, the audit
    trail and its secrets. `SqliteStore` (a file) and `PostgresStore` (a server) implement it.

    The two give the same guarantees: a `transaction` is atomic, and transactions naming the same
    lock never interleave (SQLite takes the whole file's write lock, PostgreSQL a transaction-level
    advisory lock per name), so the ledger's claim is insert-or-nothing and two writers of the
    audit chain never fork it.
    """

    dialect: ClassVar[Dialect]

    def __init__(self, url: str, *, readonly: bool) -> None:
        self.url = url
        """The database: a SQLite file path or a ``postgresql://`` URL (open it again with it)."""
        self.readonly = readonly
        """Opened for reading only: nothing is created and writes are refused."""
        self._deferred: dict[tuple[str, tuple[Any, ...]], None] = {}
        self._deferred_lock = threading.Lock()

    # -- writes that ride along ------------------------------------------------------------------

    def defer(self, statement: str, params: tuple[Any, ...]) -> None:
        """Run an idempotent ``statement`` (an ``INSERT ... ON CONFLICT DO NOTHING``) in this
        process's next transaction on the store, instead of a commit of its own: a write on the
        allowed path that need not be durable before the run's first durable write (a thread's
        pinned requester). `flush` writes what is still pending."""
        with self._deferred_lock:
            self._deferred[(statement, params)] = None

    def flush(self) -> None:
        """Commit the deferred statements now, if any are pending."""
        if self._deferred:
            with self.transaction():
                pass

    def _ride_along(self, sql: Sql) -> list[tuple[str, tuple[Any, ...]]]:
        """Run the deferred statements inside the transaction ``sql``; the caller drops them
        (`_landed`) once it commits, so a rolled-back transaction leaves them pending."""
        with self._deferred_lock:
            pending = list(self._deferred)
        for statement, params in pending:
            sql.execute(statement, params)
        return pending

    def _landed(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        with self._deferred_lock:
            for key in statements:
                self._deferred.pop(key, None)

    @abstractmethod
    def lock_in(self, sql: Sql, name: str) -> None:
        """Take lock ``name`` inside the transaction ``sql`` as `transaction` takes its locks
        (a write that joins another's transaction names its own lock here)."""

    @abstractmethod
    def transaction(self, *locks: str) -> AbstractContextManager[Sql]:
        """One atomic transaction, rolled back on error, serialised with every other transaction
        (in any process) that names one of the same ``locks``."""

    @abstractmethod
    def read(self) -> AbstractContextManager[Sql]:
        """Statements outside a transaction, each seeing what was committed when it ran."""

    @abstractmethod
    def json_has(self, column: str) -> str:
        """A condition: the JSON array in text ``column`` holds the ``?`` parameter."""

    @abstractmethod
    def table_exists(self, name: str) -> bool:
        """Whether the database has the table ``name``."""

    @abstractmethod
    def same(self, other: Store) -> bool:
        """Whether ``other`` opens the same database."""

    def close(self) -> None:  # noqa: B027 (a store may hold nothing to close)
        """Let go of the connection (a shared one stays open for its owner)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # -- schema ---------------------------------------------------------------------------------

    def schema_version(self) -> int:
        """The schema version the database holds (0: none)."""
        if not self.table_exists("handrail_schema"):
            return 0
        with self.read() as sql:
            (version,) = sql.execute("SELECT max(version) FROM handrail_schema").fetchone()
        return int(version or 0)

    def migrate(self) -> list[int]:
        """Bring Handrail's tables to `SCHEMA_VERSION`; returns the versions applied (none when
        the database was current). Safe to run from several processes at once."""
        with self.transaction("handrail_schema") as sql:
            sql.execute(
                "CREATE TABLE IF NOT EXISTS handrail_schema "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            (current,) = sql.execute("SELECT max(version) FROM handrail_schema").fetchone()
            applied = []
            for migration in MIGRATIONS[int(current or 0) :]:
                for statement in migration.steps(self.dialect, sql):
                    sql.execute(statement)
                sql.execute(
                    "INSERT INTO handrail_schema (version, applied_at) VALUES (?, ?)",
                    (migration.version, datetime.now(UTC).isoformat()),
                )
                applied.append(migration.version)
        return applied

    def check_schema(self) -> None:
        """Raise `SchemaOutdated` unless the database holds `SCHEMA_VERSION` exactly."""
        found = self.schema_version()
        if found != SCHEMA_VERSION:
            raise SchemaOutdated(display(self.url), found=found, wanted=SCHEMA_VERSION)

    # -- secrets --------------------------------------------------------------------------------

    def secret(self, name: str) -> bytes:
        """A random 32-byte secret kept in the database under ``name``: made by the first process
        that asks, the same for every process after. (Whoever can read the tables can read it.)"""
        with self.read() as sql:  # a read first: no write lock
            row = sql.execute(
                "SELECT value FROM handrail_secrets WHERE name = ?", (name,)
            ).fetchone()
        if row is None:
            with self.transaction() as sql:
                sql.execute(
                    "INSERT INTO handrail_secrets (name, value) VALUES (?, ?) "
                    "ON CONFLICT (name) DO NOTHING",
                    (name, secrets.token_hex(32)),
                )
                row = sql.execute(
                    "SELECT value FROM handrail_secrets WHERE name = ?", (name,)
                ).fetchone()
        return bytes.fromhex(row[0])


def display(url: str) -> str:
    """A database URL (or conninfo string) without its password, for messages."""
    url = re.sub(r"^([\w+.-]+://[^:/@]*):[^@/]*@", r"\1:***@", url)
    return re.sub(r"(?i)(password=)[^&\s]*", r"\1***", url)


def columns(rows: Rows) -> Iterator[str]:
    """The column names of a statement's result."""
    return (d[0] for d in rows.description)
