"""Figures over the audited events: per tool (`AuditLog.stats`), per policy version
(`AuditLog.policy_history`)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["APPROVAL_WAITS", "PolicyVersion", "Tally", "ToolStats", "Waits"]

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
    respond) and requests that expired; None when there were none. Exact while the tool has at
    most `Waits.EXACT` distinct waits; past that, within 1% of the exact value (`Waits`)."""
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


class Waits:
    """Approval waits in bounded space, for nearest-rank percentiles: each distinct value and
    its count while there are at most `EXACT` of them (percentiles exact); past that, counts per
    logarithmic bucket (DDSketch's mapping: every value of a bucket is within `ACCURACY` of the
    bucket's value), so a percentile is within 1% of the exact one, in at most ~1,200 buckets
    from 1 ms to a year. Which form a set of waits takes depends only on the waits, not on
    their order, so folding them in parts gives what one pass gives."""

    EXACT = 512
    """Distinct waits kept exactly."""
    ACCURACY = 0.01
    """The relative error of a percentile once bucketed."""
    _LOG_GAMMA = math.log((1 + ACCURACY) / (1 - ACCURACY))

    __slots__ = ("bucketed", "counts")

    def __init__(self, counts: dict[float, int] | None = None, *, bucketed: bool = False) -> None:
        self.counts: dict[float, int] = counts or {}
        """Value (or bucket value) → how many waits."""
        self.bucketed = bucketed
        """Whether ``counts`` are per bucket."""

    def add(self, value: float) -> None:
        """One more wait."""
        key = self._bucket(value) if self.bucketed else value
        self.counts[key] = self.counts.get(key, 0) + 1
        if not self.bucketed and len(self.counts) > self.EXACT:
            exact, self.counts, self.bucketed = self.counts, {}, True
            for value, n in exact.items():
                key = self._bucket(value)
                self.counts[key] = self.counts.get(key, 0) + n

    def percentile(self, percent: int) -> float | None:
        """The nearest-rank ``percent``-th wait (None when there are none)."""
        total = sum(self.counts.values())
        if not total:
            return None
        rank = max(-(-percent * total // 100), 1)  # ceil without float error
        for value in sorted(self.counts):
            rank -= self.counts[value]
            if rank <= 0:
                return value
        raise AssertionError("unreachable: the ranks add up to the total")

    def dump(self) -> dict[str, Any]:
        """As JSON-ready data (`load` reads it back exactly: floats go through JSON as is)."""
        return {"bucketed": self.bucketed, "counts": sorted(self.counts.items())}

    @classmethod
    def load(cls, data: dict[str, Any]) -> Waits:
        """Back from `dump`."""
        counts = {float(v): int(n) for v, n in data["counts"]}
        return cls(counts, bucketed=bool(data["bucketed"]))

    @classmethod
    def _bucket(cls, value: float) -> float:
        if value <= 0:
            return 0.0
        index = math.ceil(math.log(value) / cls._LOG_GAMMA)
        return 2 * math.exp(index * cls._LOG_GAMMA) / (1 + math.exp(cls._LOG_GAMMA))


@dataclass(slots=True)
class Tally:
    """One tool's counts while the events stream by."""

    calls: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    waits: Waits = field(default_factory=Waits)
    retries: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    escalations: int = 0

    def result(self, tool: str) -> ToolStats:
        """The figures counted so far."""
        return ToolStats(
            tool=tool,
            calls=self.calls,
            allowed=self.decisions["allow"],
            asked=self.decisions["ask"],
            denied=self.decisions["deny"],
            invalid=self.decisions["invalid"],
            approval_p50_ms=self.waits.percentile(50),
            approval_p95_ms=self.waits.percentile(95),
            retries=self.retries,
            failures=dict(sorted(self.failures.items())),
            escalations=self.escalations,
        )

    def dump(self) -> dict[str, Any]:
        """As JSON-ready data, for a stored rollup."""
        return {
            "calls": self.calls,
            "decisions": dict(self.decisions),
            "waits": self.waits.dump(),
            "retries": self.retries,
            "failures": dict(self.failures),
            "escalations": self.escalations,
        }

    @classmethod
    def load(cls, data: dict[str, Any]) -> Tally:
        """Back from `dump`."""
        return cls(
            calls=int(data["calls"]),
            decisions=Counter(data["decisions"]),
            waits=Waits.load(data["waits"]),
            retries=int(data["retries"]),
            failures=Counter(data["failures"]),
            escalations=int(data["escalations"]),
        )
