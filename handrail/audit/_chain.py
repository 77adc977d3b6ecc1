"""The audit row's format and hash (the spec is in `handrail.audit`'s docstring)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from handrail.events import FIELDS, ToolEvent

__all__ = [
    "COLUMNS",
    "GENESIS",
    "HASHED",
    "INSERT",
    "SELECT",
    "Sealable",
    "chain",
    "row_of",
    "seal",
    "sealable",
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
    return hashlib.sha256((prev_hash + canonical(_hashed(row))).encode()).hexdigest()


def _hashed(row: dict[str, Any]) -> dict[str, Any]:
    """The values of ``row`` its hash covers: a column added after version 1 only when set."""
    return {k: v for k, v in row.items() if v is not None or k not in _ADDED}


@dataclass(frozen=True, slots=True)
class Sealable:
    """An event's audit row, all but its place in the chain (``seq``, ``prev_hash``, ``hash``):
    made before the transaction that appends it, which then only links it (`seal`), so the
    audit's lock (on SQLite, the checkpointer's connection) is held for the least time."""

    event: ToolEvent
    row: dict[str, Any]
    """The stored values but ``seq``."""
    before: str
    """The canonical JSON of the hashed columns whose names sort before ``seq``, unbraced."""
    after: str
    """Likewise, those sorting after ``seq``."""


def sealable(event: ToolEvent | Sealable) -> Sealable:
    """``event``'s row, made ready to be sealed at any ``seq`` (a `Sealable` as it is)."""
    if isinstance(event, Sealable):
        return event
    row = row_of(0, event)
    del row["seq"]
    hashed = _hashed(row)
    before = canonical({k: v for k, v in hashed.items() if k < "seq"})
    after = canonical({k: v for k, v in hashed.items() if k > "seq"})
    return Sealable(event, row, before[1:-1], after[1:-1])


def seal(item: Sealable, seq: int, prev_hash: str) -> dict[str, Any]:
    """``item``'s row at ``seq`` following ``prev_hash``, with its hash: the same row and hash
    as `row_of` and `chain` give (canonical JSON sorts the keys, so ``seq`` sits between the
    two halves)."""
    text = "{" + ",".join(p for p in (item.before, f'"seq":{int(seq)}', item.after) if p) + "}"
    digest = hashlib.sha256((prev_hash + text).encode()).hexdigest()
    return {**item.row, "seq": seq, "prev_hash": prev_hash, "hash": digest}


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
