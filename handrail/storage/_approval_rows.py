"""What a row of the ``handrail_approvals`` table holds, as `ApprovalTable` writes and reads it:
a waiting call (`Listing`), the listing read back (`Listed`), how a request ended (`Outcome`),
and the stored form of its timestamps (`iso`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

if TYPE_CHECKING:
    from handrail.events import ToolEvent
    from handrail.storage._base import Sql

__all__ = [
    "UPSERT",
    "WAITING",
    "Listed",
    "Listing",
    "Outcome",
    "Recording",
    "iso",
    "standing",
    "superseded",
    "upsert_rows",
]

WAITING = "status IN ('open', 'deciding') AND outcome IS NULL"
"""The condition on ``handrail_approvals`` of a request still waiting for a decision."""

Outcome = Literal[
    "approve",
    "edit",
    "reject",
    "respond",
    "expire",
    "deny",
    "retry",
    "skip",
    "abort",
    "superseded",
    "blocked",
]
"""How a request ended; ``superseded``: its step was lost and the thread asked again;
``blocked``: another middleware answered the call first (`HandrailMiddleware`)."""


class Listing(Protocol):
    """A waiting call as the table keeps it (`handrail.review.WaitingCall` is one): the columns
    it is found by, and its JSON, which the inbox reads back."""

    @property
    def tool_call_id(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def tool(self) -> str: ...

    @property
    def args_hash(self) -> str: ...

    @property
    def approvers(self) -> tuple[str, ...]: ...

    @property
    def approvals(self) -> tuple[str, ...]: ...

    @property
    def expires_at(self) -> datetime | None: ...

    @property
    def policy_digest(self) -> str | None: ...

    def model_dump_json(self, *, exclude: set[str]) -> str: ...


class Listed(NamedTuple):
    """A waiting row as `ApprovalTable.waiting` reads it (`handrail.review.PendingApproval.of`
    makes the listing)."""

    item: str
    """The call's JSON, as `ApprovalTable.open` wrote it."""
    requested_at: str
    """When the call was first asked about with these arguments (ISO-8601, UTC)."""
    deciding: bool
    """A live process has claimed the request and is applying a decision to it."""


def iso(moment: datetime) -> str:
    """A UTC timestamp as stored: fixed-width ISO-8601, so text order is time order."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


class Recording(Protocol):
    """Events to record with the rows that open a request, or with the proofs of its decision
    (`handrail.events.Batch`)."""

    def publish_in(self, sql: Sql) -> list[ToolEvent]:
        """Record the events inside the transaction ``sql``; the new ones."""
        ...

    def announce(self, new: Sequence[ToolEvent]) -> None:
        """Log and trace events recorded, once their transaction committed."""
        ...

    def publish(self) -> list[ToolEvent]:
        """Record the events (no database of ours: the audit's own); the new ones."""
        ...

    def recorded_in(self, sql: Sql) -> bool:
        """Whether the events were all recorded before, read inside ``sql``."""
        ...

    def drop(self) -> None:
        """Forget the events: recorded before."""
        ...


_ROW = (
    "tool_call_id, kind, seq, tool, args_hash, approvers, approvals, item, expires_at, "
    "policy_digest, status"
)
"""The columns `standing` compares (all but ``status``, which it reads for `stale`)."""


def standing(
    sql: Sql,
    thread_id: str,
    rows: Sequence[tuple[Any, ...]],
    opened: Sequence[Listing],
    holds: Callable[[str], bool] | None,
    events: Recording | None,
) -> bool:
    """Whether opening ``rows`` (as `ApprovalTable.open` writes them) with ``events`` would
    change nothing: each is waiting with the same columns (``requested_at`` aside, which a
    waiting row keeps), the events were recorded before, and no request of the thread would be
    superseded."""
    waiting = sql.execute(
        f"SELECT {_ROW} FROM handrail_approvals WHERE thread_id = ? AND {WAITING}", (thread_id,)
    ).fetchall()
    found = {row[0]: tuple(row[:-1]) for row in waiting}
    for row in rows:
        kept = found.get(row[1])
        if kept is None or kept != (*row[1:9], *row[10:12]):
            return False
    if events is not None and not events.recorded_in(sql):
        return False
    unclaimed = [(row[0], row[4]) for row in waiting if row[-1] == "open"]
    return holds is None or not stale(unclaimed, opened, holds)


def superseded(
    sql: Sql, thread_id: str, opened: Sequence[Listing], holds: Callable[[str], bool]
) -> list[str]:
    """The thread's open (unclaimed, undecided) requests that ask what one of ``opened`` asks
    (the same arguments) for a call the run does not hold (``holds``): a lost step's."""
    rows = sql.execute(
        "SELECT tool_call_id, args_hash FROM handrail_approvals "
        "WHERE thread_id = ? AND status = 'open' AND outcome IS NULL",
        (thread_id,),
    ).fetchall()
    return stale(rows, opened, holds)


def stale(
    unclaimed: Sequence[tuple[str, str]],
    opened: Sequence[Listing],
    holds: Callable[[str], bool],
) -> list[str]:
    """Of the (call id, args hash) of open unclaimed requests, those `superseded` names."""
    ids = {c.tool_call_id for c in opened}
    hashes = {c.args_hash for c in opened}
    return [c for c, h in unclaimed if h in hashes and c not in ids and not holds(c)]


UPSERT = """
INSERT INTO handrail_approvals AS a (thread_id, tool_call_id, kind, seq, tool,
    args_hash, approvers, approvals, item, requested_at, expires_at,
    policy_digest, status)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'open')
ON CONFLICT (thread_id, tool_call_id) DO UPDATE SET
    kind = excluded.kind, seq = excluded.seq, tool = excluded.tool,
    args_hash = excluded.args_hash, policy_digest = excluded.policy_digest,
    approvers = excluded.approvers, approvals = excluded.approvals,
    item = excluded.item, expires_at = excluded.expires_at,
    outcome = NULL, decided_by = NULL, decided_at = NULL,
    requested_at = CASE WHEN a.status IN ('open', 'deciding')
        AND a.args_hash = excluded.args_hash AND a.kind = excluded.kind
        THEN a.requested_at ELSE excluded.requested_at END,
    status = CASE WHEN a.status = 'deciding' THEN 'deciding' ELSE 'open' END,
    claim = CASE WHEN a.status = 'deciding' THEN a.claim END,
    claim_pid = CASE WHEN a.status = 'deciding' THEN a.claim_pid END,
    claim_host = CASE WHEN a.status = 'deciding' THEN a.claim_host END,
    claimed_at = CASE WHEN a.status = 'deciding' THEN a.claimed_at END
"""
"""`ApprovalTable.open`'s write of one waiting call (`upsert_rows`): a row that is waiting keeps
its status, claim and ``requested_at`` (for the same arguments); a decided one is opened afresh."""


def upsert_rows(thread_id: str, calls: Sequence[Listing], now: datetime) -> list[tuple[Any, ...]]:
    """The `UPSERT` parameters of ``calls``, in the order they are asked (``seq``)."""
    return [
        (
            thread_id,
            c.tool_call_id,
            c.kind,
            seq,
            c.tool,
            c.args_hash,
            json.dumps(list(c.approvers)),
            json.dumps(list(c.approvals)),
            c.model_dump_json(exclude={"requested_at"}),
            iso(now),
            iso(c.expires_at) if c.expires_at else None,
            c.policy_digest,
        )
        for seq, c in enumerate(calls)
    ]
