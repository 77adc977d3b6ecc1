"""Figures over the audited events: per tool (`AuditLog.stats`), per policy version
(`AuditLog.policy_history`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["APPROVAL_WAITS", "PolicyVersion", "Tally", "ToolStats"]

APPROVAL_WAITS = frozenset({"approve", "edit", "reject", "respond"})
"""``approval_decided`` decisions that end an approval wait (the others answer escalations)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolStats:
    """One tool's figures over the audited events (`AuditLog.stats`)."""

    tool: str
    calls: int
    """Distinct calls (thread_id, tool_call_id) with an event in the window."""
    allowed: int
    """Calls whose first ``decided`` event says allow (likewise ``asked``, ``denied``,
    ``invalid``)."""
    asked: int
    denied: int
    invalid: int
    approval_p50_ms: float | None
    """The median wait for a human (nearest rank), over approvals decided (approve, edit, reject,
    respond) and requests that expired; None when there were none."""
    approval_p95_ms: float | None
    retries: int
    """``retried`` events: automatic or human retries of a failed call."""
    failures: dict[str, int]
    """``failed`` events by the response's status, e.g. ``{"rate_limited": 2}``."""
    escalations: int
    """``escalated`` events."""


@dataclass(kw_only=True, slots=True)
class PolicyVersion:
    """One policy version the audit trail has seen (`AuditLog.policy_history`)."""

    digest: str | None
    """The policy's digest (`Policy.digest`); None for the rows written before digests were
    recorded (schema version 6)."""
    first_seen: str
    """The timestamp of its first row (ISO-8601, as stored)."""
    last_seen: str
    """The timestamp of its last row."""
    decisions: int = 0
    """Its ``decided`` events: the calls it decided (and redecided, after an edit)."""
    rows: int = 0
    """All its rows."""


@dataclass(slots=True)
class Tally:
    """One tool's counts while the events stream by."""

    calls: set[tuple[str | None, str]] = field(default_factory=set)
    decisions: Counter[str] = field(default_factory=Counter)
    waits: list[float] = field(default_factory=list)
    retries: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    escalations: int = 0

    def result(self, tool: str) -> ToolStats:
        """The figures counted so far."""
        waits = sorted(self.waits)
        return ToolStats(
            tool=tool,
            calls=len(self.calls),
            allowed=self.decisions["allow"],
            asked=self.decisions["ask"],
            denied=self.decisions["deny"],
            invalid=self.decisions["invalid"],
            approval_p50_ms=_nearest_rank(waits, 50),
            approval_p95_ms=_nearest_rank(waits, 95),
            retries=self.retries,
            failures=dict(sorted(self.failures.items())),
            escalations=self.escalations,
        )


def _nearest_rank(ordered: list[float], percent: int) -> float | None:
    if not ordered:
        return None
    rank = -(-percent * len(ordered) // 100)  # ceil without float error
    return ordered[max(rank, 1) - 1]
