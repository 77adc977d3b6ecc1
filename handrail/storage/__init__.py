"""Where Handrail keeps its own tables: a SQLite file or a PostgreSQL database, behind one seam.

Handrail keeps three tables beside LangGraph's checkpoints: the approvals index (what the inbox
lists and claims), the execution ledger (a side-effecting call's intent and outcome) and the audit
trail (a hash chain), plus a secret. They go wherever the checkpoints go:

- ``checkpointer="app.db"`` (or a `SqliteSaver`): the same SQLite file. Its tables are made, and
  upgraded, when a graph first opens the file, as `SqliteSaver` makes its own.
- ``checkpointer="postgresql://…"`` (or a `PostgresSaver`): the same database, through one
  connection pool per process. Nothing is created there implicitly: run ``handrail db migrate
  --db postgresql://…`` (or `migrate`) once per database and per Handrail upgrade; until then a
  graph, the inbox and the CLI refuse the database with `SchemaOutdated`.

Both backends keep the same schema (`SCHEMA_VERSION`, recorded in ``handrail_schema``) with the
same semantics; `Store` says what each transaction guarantees.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.sqlite import SqliteSaver

from handrail.errors import HandrailError, StorageError
from handrail.storage._base import Rows, Sql, Store, display
from handrail.storage._schema import SCHEMA_VERSION
from handrail.storage._sqlite import SqliteStore, database_path

__all__ = [
    "SCHEMA_VERSION",
    "Rows",
    "Sql",
    "SqliteStore",
    "Store",
    "Target",
    "is_postgres_url",
    "migrate",
    "open_store",
    "store_for",
]

Target = str | Path | Store
"""A SQLite file path, a ``postgresql://`` URL, or an open `Store`."""


def is_postgres_url(target: object) -> bool:
    """Whether ``target`` is a ``postgresql://`` (or ``postgres://``) URL."""
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def open_store(target: Target, *, readonly: bool = False) -> Store:
    """The store at ``target``, ready for Handrail's tables.

    A SQLite file gets its tables made or upgraded here; a PostgreSQL database must already hold
    the current schema (`migrate`), else `SchemaOutdated`. ``readonly`` opens either for reading
    only and checks nothing (a reader of an unmigrated database finds no rows).
    """
    if isinstance(target, Store):
        return target
    store = _open(target, readonly=readonly)
    if not readonly:
        try:
            _ready(store)
        except BaseException:
            store.close()
            raise
    return store


_ASYNC_SAVERS = ("AsyncSqliteSaver", "AsyncPostgresSaver", "AsyncShallowPostgresSaver")
"""Savers that do not say where they are in a way Handrail can use synchronously."""


def store_for(saver: BaseCheckpointSaver[Any] | None, db: str | Path | None) -> Store | None:
    """The store for a graph checkpointed by ``saver``: ``db`` when given, else the saver's own
    database (None when it has none: no saver, or one in memory).

    When the store is the saver's database the store shares its connection (SQLite) or pool
    (PostgreSQL). An async saver does not say where it is: pass ``db``.
    """
    if db is not None:
        if is_postgres_url(db):
            store = _open(str(db), readonly=False)
        else:
            file = database_path(saver)
            same = file is not None and file.resolve() == Path(db).resolve()
            store = SqliteStore(
                db, saver=saver if same and isinstance(saver, SqliteSaver) else None
            )
    elif isinstance(saver, SqliteSaver) and (file := database_path(saver)) is not None:
        store = SqliteStore(file, saver=saver)
    elif (postgres := _postgres_saver(saver)) is not None:
        store = postgres
    elif saver is not None and type(saver).__name__ in _ASYNC_SAVERS:
        raise HandrailError(
            f"an {type(saver).__name__} does not tell Handrail where it is: pass db= the same "
            "SQLite path or PostgreSQL URL, so the approvals, the execution ledger and the audit "
            "are kept there"
        )
    else:
        return None
    _ready(store)
    return store


def migrate(target: str | Path) -> list[int]:
    """Create or upgrade Handrail's tables at ``target`` (and, on PostgreSQL, LangGraph's
    checkpoint tables, with `PostgresSaver.setup`); returns the Handrail schema versions applied.
    Idempotent, and safe to run from several processes at once."""
    store = _open(target, readonly=False)
    try:
        if is_postgres_url(target):
            from handrail.storage._postgres import setup_checkpoints

            setup_checkpoints(str(target))
        return store.migrate()
    finally:
        store.close()


class Table:
    """Base of Handrail's tables: a store opened from a path or URL (closed with the table), or
    one given (left open for its owner)."""

    def __init__(self, db: Target, *, readonly: bool = False) -> None:
        self._owned = not isinstance(db, Store)
        self.store = open_store(db, readonly=readonly)
        """Where the table is."""

    def close(self) -> None:
        """Close the store if the table opened it."""
        if self._owned:
            self.store.close()


def _open(target: str | Path, *, readonly: bool) -> Store:
    if is_postgres_url(target):
        try:
            from handrail.storage._postgres import PostgresStore
        except ImportError as error:
            raise StorageError(
                display(str(target)),
                f"PostgreSQL needs the postgres extra: pip install 'handrail[postgres]' ({error})",
            ) from None
        return PostgresStore(str(target), readonly=readonly)
    if isinstance(target, Path) and str(target).startswith(("postgresql:/", "postgres:/")):
        raise StorageError(
            str(target), "a PostgreSQL URL passed as a Path (which drops a slash): pass it as a str"
        )
    if isinstance(target, str) and "://" in target:
        raise StorageError(
            display(target),
            "not a SQLite file path or a postgresql:// URL (the scheme is not known)",
        )
    if readonly and not Path(target).exists():
        raise StorageError(str(target), "no such database file")
    try:
        return SqliteStore(target, readonly=readonly)
    except sqlite3.Error as error:
        raise StorageError(str(target), f"cannot open the SQLite file: {error}") from None


def _ready(store: Store) -> None:
    """Migrate a SQLite file; check that a PostgreSQL database was migrated."""
    if isinstance(store, SqliteStore) and store.schema_version() < SCHEMA_VERSION:
        store.migrate()
    store.check_schema()


def _postgres_saver(saver: BaseCheckpointSaver[Any] | None) -> Store | None:
    """A store on a `PostgresSaver`'s own pool or connection, or a subclass's (None for other
    savers)."""
    kinds = {"PostgresSaver", "ShallowPostgresSaver"}
    if saver is None or not any(c.__name__ in kinds for c in type(saver).__mro__):
        return None
    from psycopg import Connection
    from psycopg_pool import ConnectionPool

    from handrail.storage._postgres import PostgresStore

    conn: Any = getattr(saver, "conn", None)
    if isinstance(conn, ConnectionPool):
        conninfo: Any = conn.conninfo  # a string, or a function that gives one
        url = conninfo() if callable(conninfo) else str(conninfo)
        return PostgresStore(url, shared_pool=conn)
    if isinstance(conn, Connection):
        dsn: str = conn.info.dsn
        return PostgresStore(dsn, conn=conn, lock=getattr(saver, "lock", None))
    return None
