"""Schema version 8: the tables of cumulative limits (`handrail.storage.limits`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from handrail.storage._base import Sql

__all__ = ["limit_tables"]


_LIMIT_USES = [
    """
    CREATE TABLE IF NOT EXISTS handrail_limit_uses (
        limit_id      TEXT NOT NULL,
        scope         TEXT NOT NULL,
        thread_id     TEXT NOT NULL,
        tool_call_id  TEXT NOT NULL,
        amount        DOUBLE PRECISION NOT NULL,
        total         DOUBLE PRECISION NOT NULL,
        over_max      INTEGER NOT NULL,
        at            TEXT NOT NULL,
        started       INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (limit_id, thread_id, tool_call_id)
    )
    """,
    """CREATE INDEX IF NOT EXISTS handrail_limit_uses_window
    ON handrail_limit_uses (limit_id, scope, at)""",
    """CREATE INDEX IF NOT EXISTS handrail_limit_uses_call
    ON handrail_limit_uses (thread_id, tool_call_id)""",
    """
    CREATE TABLE IF NOT EXISTS handrail_limit_totals (
        limit_id      TEXT NOT NULL,
        scope         TEXT NOT NULL,
        total         DOUBLE PRECISION NOT NULL,
        counted_from  TEXT NOT NULL,
        window_s      DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (limit_id, scope)
    )
    """,
]
"""The uses of cumulative limits (`handrail.storage.limits`): one row per limit and call that
counts, with what it adds (``amount``), the window's total before it (``total``) and whether it
went past the limit's maximum when it was reserved (``over_max``, a call asked about); ``at`` is
when it was reserved (ISO-8601, UTC, microseconds: ordered as text); ``started``, whether the call
began to run (its use is then never given back). ``handrail_limit_totals`` keeps each limit and
scope's running total of the uses reserved after ``counted_from``
(`handrail.storage._limit_totals`)."""


def limit_tables(sql: Sql) -> list[str]:
    """The statements that reach version 8 (the same in both dialects)."""
    return list(_LIMIT_USES)
