"""The audit row's format and hash (the spec is in `handrail.audit`'s docstring)."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime
from typing import Any

from handrail.events import FIELDS, ToolEvent

__all__ = [
    "COLUMNS",
    "GENESIS",
    "HASHED",
    "INSERT",
    "SELECT",
    "chain",
    "row_of",
    "utc",
    "within",
]

GENESIS = "0" * 64
"""The ``prev_hash`` of the first row."""

_SINCE_V2 = ("args_hash", "identified_by")
"""Columns added by schema version 2."""
_SINCE_V6 = ("policy_digest",)
"""Columns added by schema version 6."""
_ADDED = (*_SINCE_V2, *_SINCE_V6)
"""Columns added after version 1: hashed only when set, so older rows verify as they did."""
HASHED = (
    "seq",
    "at",
    *(name for name in FIELDS if name not in ("timestamp", *_ADDED)),
    "step",
    *_ADDED,
)
"""The columns a row's hash covers, in table order."""
COLUMNS = (*HASHED, "prev_hash", "hash")
"""Every column of ``handrail_audit``."""
SELECT = ", ".join(COLUMNS)
INSERT = (
    f"INSERT INTO handrail_audit ({SELECT}) VALUES ({', '.join(':' + c for c in COLUMNS)}) "
    "ON CONFLICT DO NOTHING"
)


def row_of(seq: int, event: ToolEvent) -> dict[str, Any]:
    """The stored values of ``event`` at ``seq``, typed as the database gives them back (the hash is
    computed at insert and at verify from the same values)."""
    duration = event.duration_ms
    return {
        "seq": seq,
        "at": str(event.timestamp),
        "event": _text(event.event),
        "graph": _text(event.graph),
        "agent_id": _text(event.agent_id),
        "thread_id": _text(event.thread_id),
        "tool_call_id": _text(event.tool_call_id),
        "tool": _text(event.tool),
        "call_seq": int(event.call_seq),
        "payload": canonical(event.payload),
        "response": None if event.response is None else canonical(event.response),
        "retry_count": int(event.retry_count),
        "decision": _text(event.decision),
        "rule_id": _text(event.rule_id),
        "approver": _text(event.approver),
        # SQLite stores NaN as NULL and -0.0 as 0.0; hash what is stored, or it would not verify
        # (and store the same in PostgreSQL).
        "duration_ms": None if duration is None or math.isnan(duration) else float(duration) + 0.0,
        "reason": _text(event.reason),
        "args_hash": _text(event.args_hash),
        "identified_by": _text(event.identified_by),
        "policy_digest": _text(event.policy_digest),
        "step": event.step(),
    }


def _text(value: object) -> str | None:
    """Text as stored on both backends: NUL escaped (PostgreSQL's text cannot hold it)."""
    return None if value is None else str(value).replace("\x00", "\\u0000")


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)
"""Canonical JSON; ``default=str`` only matters for a value JSON has no type for."""


def canonical(value: object) -> str:
    """``value`` as canonical JSON text."""
    return _ENCODER.encode(value)


def chain(prev_hash: str, row: dict[str, Any]) -> str:
    """The hash of ``row`` (its `HASHED` columns) following ``prev_hash``."""
    hashed = {k: v for k, v in row.items() if v is not None or k not in _ADDED}
    return hashlib.sha256((prev_hash + canonical(hashed)).encode()).hexdigest()


def within(at: str, since: datetime | None, until: datetime | None) -> bool:
    """``since <= at < until``, as instants (``since``/``until`` already through `utc`)."""
    if since is None and until is None:
        return True
    when = datetime.fromisoformat(at)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (since is None or when >= since) and (until is None or when < until)


def utc(when: datetime | None) -> datetime | None:
    """A naive datetime taken as UTC."""
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when
