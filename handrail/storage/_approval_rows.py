"""What a row of the ``handrail_approvals`` table holds, as `ApprovalTable` writes and reads it:
a waiting call (`Listing`), the listing read back (`Listed`), how a request ended (`Outcome`),
and the stored form of its timestamps (`iso`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal, NamedTuple, Protocol

__all__ = ["WAITING", "Listed", "Listing", "Outcome", "iso"]

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
