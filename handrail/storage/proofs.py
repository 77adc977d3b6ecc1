"""Approvals as proofs: who approved which call with exactly which arguments, in Handrail's store.

The approval node writes one row per approval a person gives (``handrail_proofs``); ``execute``
reads them before it runs an asked call. A record in graph state that says "approved" proves
nothing: ``graph.update_state`` and ``Command(goto=...)`` can write any state, but only a decision
that passed the approval checks writes here.

A graph without a database keeps its proofs in memory (`MemoryProofs`), for the graph object's
life: enough for ``InMemorySaver`` graphs, which live in one process.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from handrail.storage import Table, Target
from handrail.storage._approval_rows import Recording
from handrail.storage._base import Sql

__all__ = ["MemoryProofs", "Proof", "ProofTable", "Proofs"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Proof:
    """One person's approval of one call's arguments."""

    thread_id: str
    tool_call_id: str
    args_hash: str
    """The hash of the arguments approved: a proof holds for these arguments only."""
    approver: str
    """The approver's normalised id."""
    roles: tuple[str, ...]
    """The roles the approver held when deciding (from the directory, a token or a claim)."""
    rule_id: str | None
    """The rule that asked."""
    identified_by: str
    """How the approver was identified (`handrail.auth.Identity.describe`)."""
    kind: Literal["approve", "retry"] = "approve"
    """An approval of the call, or a person's retry of it after it failed."""
    attempt: int = 0
    """For a retry: the attempt it allows (the call's ``retry_count`` after it)."""
    policy_digest: str | None = None
    """The digest (`Policy.digest`) of the policy the approval was checked under; None for a
    proof kept before proofs carried it."""


class Proofs(Protocol):
    """Where proofs are kept."""

    def add(
        self, proofs: Sequence[Proof], now: datetime | None = None, *, events: Recording
    ) -> None:
        """Keep ``proofs`` (idempotent: a node replayed after a resume adds them again) and
        record ``events`` (the decisions' audit events) with them."""
        ...

    def of(self, thread_id: str, tool_call_id: str, args_hash: str) -> list[Proof]:
        """The approvals given for one call with these arguments."""
        ...

    def retried(self, thread_id: str, tool_call_id: str, args_hash: str, attempt: int) -> bool:
        """Whether a person decided to run the call's ``attempt`` (a retry)."""
        ...


class ProofTable(Table):
    """The ``handrail_proofs`` table at ``db`` (a SQLite file, a PostgreSQL URL or a `Store`)."""

    def __init__(self, db: Target) -> None:
        super().__init__(db)

    def add(
        self, proofs: Sequence[Proof], now: datetime | None = None, *, events: Recording
    ) -> None:
        """Keep ``proofs`` and record ``events`` in one transaction (the events' audit is on
        this store); a proof already kept stays as it was."""
        with self.store.transaction() as sql:
            keep_in(sql, proofs, now)
            recorded = events.publish_in(sql)  # last: the audit's lock is held from here
        events.announce(recorded)

    def of(self, thread_id: str, tool_call_id: str, args_hash: str) -> list[Proof]:
        """The approvals given for one call with these arguments, oldest first."""
        with self.store.read() as sql:
            rows = sql.execute(
                "SELECT approver, roles, rule_id, identified_by, policy_digest "
                "FROM handrail_proofs "
                "WHERE thread_id = ? AND tool_call_id = ? AND args_hash = ? AND kind = 'approve' "
                "ORDER BY decided_at",
                (thread_id, tool_call_id, args_hash),
            ).fetchall()
        return [
            Proof(
                thread_id=thread_id,
                tool_call_id=tool_call_id,
                args_hash=args_hash,
                approver=approver,
                roles=tuple(json.loads(roles)),
                rule_id=rule_id,
                identified_by=via,
                policy_digest=digest,
            )
            for approver, roles, rule_id, via, digest in rows
        ]

    def retried(self, thread_id: str, tool_call_id: str, args_hash: str, attempt: int) -> bool:
        """Whether a person decided to run the call's ``attempt`` (a retry)."""
        with self.store.read() as sql:
            row = sql.execute(
                "SELECT 1 FROM handrail_proofs WHERE thread_id = ? AND tool_call_id = ? "
                "AND args_hash = ? AND kind = 'retry' AND attempt = ?",
                (thread_id, tool_call_id, args_hash, attempt),
            ).fetchone()
        return row is not None


class MemoryProofs:
    """Proofs kept in this process only, for a graph without a database."""

    def __init__(self) -> None:
        self._proofs: dict[tuple[str, str, str], dict[tuple[str, str, int], Proof]] = {}
        self._lock = threading.Lock()

    def add(
        self, proofs: Sequence[Proof], now: datetime | None = None, *, events: Recording
    ) -> None:
        """Keep ``proofs`` (a proof already kept stays as it was), then publish ``events``."""
        with self._lock:
            for p in proofs:
                kept = self._proofs.setdefault((p.thread_id, p.tool_call_id, p.args_hash), {})
                kept.setdefault((p.approver, p.kind, p.attempt), p)
        events.publish()

    def of(self, thread_id: str, tool_call_id: str, args_hash: str) -> list[Proof]:
        """The approvals given for one call with these arguments."""
        with self._lock:
            kept = self._proofs.get((thread_id, tool_call_id, args_hash), {})
            return [p for p in kept.values() if p.kind == "approve"]

    def retried(self, thread_id: str, tool_call_id: str, args_hash: str, attempt: int) -> bool:
        """Whether a person decided to run the call's ``attempt`` (a retry)."""
        with self._lock:
            kept = self._proofs.get((thread_id, tool_call_id, args_hash), {})
            return any(p.kind == "retry" and p.attempt == attempt for p in kept.values())


def keep_in(sql: Sql, proofs: Sequence[Proof], now: datetime | None = None) -> None:
    """Insert ``proofs`` inside the caller's transaction ``sql`` (a proof already kept stays as
    it was): `ProofTable.add`'s write, and the approvals table's when it records a decision."""
    if not proofs:
        return
    at = (now or datetime.now(UTC)).isoformat(timespec="microseconds")
    sql.executemany(
        "INSERT INTO handrail_proofs (thread_id, tool_call_id, args_hash, approver, "
        "rule_id, roles, identified_by, decided_at, kind, attempt, policy_digest) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [
            (
                p.thread_id,
                p.tool_call_id,
                p.args_hash,
                p.approver,
                p.rule_id,
                json.dumps(list(p.roles)),
                p.identified_by,
                at,
                p.kind,
                p.attempt,
                p.policy_digest,
            )
            for p in proofs
        ],
    )
