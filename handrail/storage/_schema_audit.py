"""The audit's stored rollups (`handrail.audit`): figures over the rows up to a seq, so that
`AuditLog.stats` folds in only the rows after it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from handrail.storage._base import Sql

__all__ = ["ROLLUPS", "audit_rollup_tables"]

ROLLUPS = "handrail_audit_rollups"
"""The table's name."""

_ROLLUPS = f"""
CREATE TABLE IF NOT EXISTS {ROLLUPS} (
    name          TEXT PRIMARY KEY,
    seq           BIGINT NOT NULL,
    hash          TEXT NOT NULL,
    state         TEXT NOT NULL
)
"""
"""One row per rollup (``name``: ``stats``): its figures as JSON (``state``) over the audit rows
up to ``seq``, whose hash was ``hash`` (a rollup whose row is gone or changed is recomputed).
Not evidence: whoever can write the database can change it, as they can the rows (`verify`
checks the rows, not this)."""


def audit_rollup_tables(sql: Sql) -> list[str]:
    """The statements that add the rollups table (the same in both dialects)."""
    return [_ROLLUPS]
