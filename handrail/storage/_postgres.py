"""The PostgreSQL backend: Handrail's tables beside LangGraph's `PostgresSaver` checkpoints.

Needs the ``postgres`` extra (``pip install 'handrail[postgres]'``: psycopg 3 with its pool and
``langgraph-checkpoint-postgres``). One connection pool per database and process, shared by the
checkpointer Handrail opens and Handrail's tables.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row, tuple_row
from psycopg_pool import ConnectionPool, PoolTimeout

from handrail.errors import StorageError
from handrail.storage._base import Rows, Sql, Store, display

POOL_SIZE = 10
"""The most connections one process opens to one database."""

CONNECT_TIMEOUT_S = 10.0
"""How long opening a store waits for its first connection."""

CONNECTION_KWARGS: dict[str, Any] = {
    "autocommit": True,
    "prepare_threshold": 0,
    "row_factory": dict_row,
}
"""What `PostgresSaver` needs of its connections; Handrail's tables use the same pool."""

_pools: dict[tuple[str, bool], ConnectionPool[Any]] = {}
_pools_lock = threading.Lock()
_inherited: list[ConnectionPool[Any]] = []
"""Pools a forked child inherited: kept from the garbage collector, never used or closed (their
connections are the parent's)."""


def _after_fork() -> None:
    global _pools_lock
    _pools_lock = threading.Lock()
    _inherited.extend(_pools.values())
    _pools.clear()


os.register_at_fork(after_in_child=_after_fork)


def pool(url: str, *, readonly: bool = False) -> ConnectionPool[Any]:
    """This process's connection pool to ``url`` (opened on first use, closed at exit; a forked
    child opens its own)."""
    key = (url, readonly)
    with _pools_lock:
        found = _pools.get(key)
        if found is not None and not found.closed:
            return found
        if (why := _unreachable(url)) is not None:  # a bad URL fails at once, in one line
            raise StorageError(display(url), f"cannot connect: {why}")
        made: ConnectionPool[Any] = ConnectionPool(
            url,
            kwargs=CONNECTION_KWARGS,
            configure=_read_only if readonly else None,
            min_size=1,
            max_size=POOL_SIZE,
            open=False,
            name=f"handrail {display(url)}",
        )
        made.open(wait=False)
        try:
            made.wait(timeout=CONNECT_TIMEOUT_S)
        except PoolTimeout:
            made.close()
            why = _unreachable(url) or f"no connection within {CONNECT_TIMEOUT_S:.0f} s"
            raise StorageError(display(url), f"cannot connect: {why}") from None
        _pools[key] = made
        return made


def close_pool(url: str) -> None:
    """Close this process's pools to ``url`` (the next store on it opens a new one)."""
    with _pools_lock:
        for readonly in (False, True):
            found = _pools.pop((url, readonly), None)
            if found is not None:
                found.close()


@atexit.register
def _close_pools() -> None:
    with _pools_lock:  # this process's own pools only (see _after_fork)
        for found in _pools.values():
            found.close()
        _pools.clear()


def _read_only(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")


def _unreachable(url: str) -> str | None:
    """Why a plain connection to ``url`` fails (a pool only says it timed out), or None."""
    try:
        psycopg.connect(url, connect_timeout=int(CONNECT_TIMEOUT_S)).close()
    except psycopg.Error as error:
        return str(error).strip() or type(error).__name__
    return None


@functools.lru_cache(maxsize=512)
def _dialect(sql: str, named: bool) -> str:
    """``?`` and ``:name`` placeholders as psycopg's ``%s`` and ``%(name)s``."""
    sql = sql.replace("%", "%%")
    if named:
        return re.sub(r"(?<![:\w]):([A-Za-z_]\w*)", r"%(\1)s", sql)
    return sql.replace("?", "%s")


def _no_nul(params: Any) -> Any:
    """``params`` with NUL characters in strings replaced by U+FFFD: PostgreSQL's text cannot
    hold them (SQLite keeps them; the audit escapes them itself, so its hashes agree)."""
    if isinstance(params, dict):
        return {k: _clean(v) for k, v in params.items()}
    return tuple(_clean(v) for v in params)


def _clean(value: Any) -> Any:
    return value.replace("\x00", "\ufffd") if isinstance(value, str) and "\x00" in value else value


class _Sql:
    """`Sql` over a psycopg connection, giving rows as tuples."""

    __slots__ = ("_conn",)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Any = ()) -> Rows:
        cursor = self._conn.cursor(row_factory=tuple_row)
        if not params:
            cursor.execute(sql)
            return cursor
        cursor.execute(_dialect(sql, isinstance(params, dict)), _no_nul(params))
        return cursor

    def executemany(self, sql: str, params: Iterable[Any]) -> None:
        rows = [_no_nul(row) for row in params]
        if rows:
            with self._conn.cursor() as cursor:
                cursor.executemany(_dialect(sql, isinstance(rows[0], dict)), rows)


class PostgresStore(Store):
    """Handrail's tables in a PostgreSQL database (psycopg 3, a pooled connection per use).

    A `transaction` takes a transaction-level advisory lock per name it is given
    (``pg_advisory_xact_lock``), in a fixed order, so transactions naming a lock run one at a time
    across every process and host on the database; the others run concurrently.

    ``conn``: use this connection (under ``lock``) instead of the pool, for a `PostgresSaver` the
    user built on a single connection.
    """

    dialect = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        readonly: bool = False,
        conn: psycopg.Connection[Any] | None = None,
        lock: threading.Lock | None = None,
        shared_pool: ConnectionPool[Any] | None = None,
    ) -> None:
        super().__init__(url, readonly=readonly)
        self._pid = os.getpid()
        self._conn = conn
        self._lock = lock
        self._pool = shared_pool
        if conn is None and shared_pool is None:
            self._pool = pool(url, readonly=readonly)

    def __repr__(self) -> str:
        return f"PostgresStore({display(self.url)!r})"

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        if os.getpid() != self._pid:
            raise StorageError(
                display(self.url),
                "this store was opened before the process forked, and its connections are the "
                "parent's: build the graph (or open the inbox) in the child process",
            )
        if self._pool is not None:
            with self._pool.connection() as conn:
                yield conn
            return
        assert self._conn is not None
        guard: AbstractContextManager[Any] = self._lock if self._lock else nullcontext()
        with guard:
            yield self._conn

    @contextmanager
    def transaction(self, *locks: str) -> Iterator[_Sql]:
        with self._connection() as conn:
            with conn.transaction():
                for name in sorted(set(locks)):
                    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (name,))
                sql = _Sql(conn)
                riding = self._ride_along(sql) if self._deferred else []
                yield sql
            if riding:
                self._landed(riding)

    def lock_in(self, sql: Sql, name: str) -> None:
        sql.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (name,))

    @contextmanager
    def read(self) -> Iterator[_Sql]:
        with self._connection() as conn:
            yield _Sql(conn)

    def json_has(self, column: str) -> str:
        return f"({column})::jsonb @> jsonb_build_array(?::text)"

    def table_exists(self, name: str) -> bool:
        with self.read() as sql:
            (found,) = sql.execute("SELECT to_regclass(?) IS NOT NULL", (name,)).fetchone()
        return bool(found)

    def same(self, other: Store) -> bool:
        return isinstance(other, PostgresStore) and _identity(self.url) == _identity(other.url)


def _identity(url: str) -> tuple[str, ...]:
    """What names a database (and the tables seen in it) in a URL or conninfo string."""
    params = {k: str(v) for k, v in conninfo_to_dict(url).items()}
    host = params.get("host", "localhost")
    return (
        "localhost" if host in ("127.0.0.1", "::1") else host,
        params.get("port", "5432"),
        params.get("dbname", params.get("user", "")),
        params.get("user", ""),
        params.get("options", ""),
    )


def setup_checkpoints(url: str) -> None:
    """Create or upgrade LangGraph's checkpoint tables (`PostgresSaver.setup`), one process at a
    time (its ``CREATE … IF NOT EXISTS`` statements race when run concurrently)."""
    from langgraph.checkpoint.postgres import PostgresSaver

    # A session lock, not a transaction's: CREATE INDEX CONCURRENTLY waits for every open
    # transaction to end, the lock holder's too.
    # Polled with pg_try_advisory_lock: a waiter blocked in pg_advisory_lock holds a snapshot,
    # which the holder's CREATE INDEX CONCURRENTLY would wait for, forever.
    key = ("handrail_checkpoint_setup",)
    with pool(url).connection() as conn:
        take = "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))"
        while not conn.cursor(row_factory=tuple_row).execute(take, key).fetchone()[0]:
            time.sleep(0.05)
        try:
            PostgresSaver(pool(url)).setup()
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", key)


def checkpoints_ready(url: str) -> None:
    """Raise `StorageError` unless LangGraph's checkpoint tables are at their latest version."""
    from langgraph.checkpoint.postgres import PostgresSaver

    store = PostgresStore(url)
    found = None
    if store.table_exists("checkpoint_migrations"):
        with store.read() as sql:
            (found,) = sql.execute("SELECT max(v) FROM checkpoint_migrations").fetchone()
    if found is None or found < len(PostgresSaver.MIGRATIONS) - 1:
        raise StorageError(
            display(url),
            "LangGraph's checkpoint tables are missing or outdated; run "
            f"`handrail db migrate --db {display(url)}`",
        )
