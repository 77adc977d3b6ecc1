"""A call waiting for a person, described once: `WaitingCall`.

The same model is the interrupt's entry for the call (``request["handrail"]["calls"][id]``), the
approvals table's row (its ``item``), the inbox's listing (`PendingApproval`, the row plus whether
a process is deciding it) and the CLI's JSON. The interrupt value keeps LangChain's ``HITLRequest``
keys (``action_requests``, ``review_configs``) for HITL clients and Agent Inbox-style UIs, and
Handrail's ``handrail`` key holds the calls by id, in ``tool_call_ids`` order.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict
from typing_extensions import TypedDict

from handrail.context import Actor
from handrail.redaction import error_view, redact
from handrail.review.decisions import APPROVAL_DECISIONS, ESCALATION_DECISIONS, DecisionType
from handrail.review.records import escalation_reason
from handrail.state import CallError, ToolCallRecord
from handrail.storage.approvals import Listed

__all__ = [
    "ActionRequest",
    "ApprovalRequest",
    "HandrailRequest",
    "PendingApproval",
    "RequestKind",
    "ReviewConfig",
    "WaitingCall",
    "approval_request",
    "calls_of",
    "waiting_call",
]

RequestKind = Literal["approval", "escalation"]
"""``approval``: the policy asked about the call. ``escalation``: the call failed in a way only a
person can settle (decided with retry, skip or abort)."""


class WaitingCall(BaseModel):
    """One tool call waiting for a person."""

    model_config = ConfigDict(frozen=True)

    thread_id: str | None
    """The paused thread."""
    tool_call_id: str
    """The waiting call's id; decisions name it."""
    kind: RequestKind = "approval"
    graph: str = ""
    """The name of the graph that paused (the inbox finds a factory to resume it by it)."""
    tool: str
    """The tool the call would run."""
    args: dict[str, Any]
    """The call's arguments, with the policy's ``redact`` paths hidden."""
    args_hash: str
    """The hash an approval of the call is bound to."""
    rule_id: str | None = None
    """The rule that asked (None: the policy default)."""
    description: str = ""
    """Why the call waits, in words: the policy's reason, or why it failed."""
    approvers: tuple[str, ...]
    """Roles of which the person deciding must hold one."""
    min_approvals: int = 1
    """How many distinct approvers must approve."""
    approvals: tuple[str, ...] = ()
    """Normalised ids of the approvers who approved so far (from Handrail's store)."""
    actor: Actor
    """The requester: the actor the call was made for (who may not decide it)."""
    requested_at: datetime | None = None
    """When a person was asked (UTC)."""
    expires_at: datetime | None = None
    """When the request lapses (UTC), if the rule sets a deadline."""
    error: CallError | None = None
    """For an escalation: the error the call failed with (hidden values scrubbed)."""
    attempts: int = 0
    """For an escalation: how many times the call has run."""

    def expired(self, now: datetime | None = None) -> bool:
        """Whether the request is past its deadline at ``now`` (default: the current time)."""
        deadline = self.expires_at
        return deadline is not None and (now or datetime.now(UTC)) >= deadline

    def decisions(self) -> tuple[DecisionType, ...]:
        """What may be decided: approve, edit, reject, respond; or retry, skip, abort."""
        return ESCALATION_DECISIONS if self.kind == "escalation" else APPROVAL_DECISIONS


if TYPE_CHECKING:
    _Listing = WaitingCall  # every field of the call reads through a listing, typed as such
else:
    _Listing = object


class PendingApproval(_Listing):
    """A waiting call as the inbox lists it: its `WaitingCall`, when the call was first asked
    about with these arguments, and whether a process is deciding it.

    Every `WaitingCall` field and method reads through (``item.tool``, ``item.expired()``). A
    listing of thousands of calls is one query: each item's `call` is decoded from its row on
    first access.
    """

    __slots__ = ("_call", "_item", "deciding", "requested_at")

    def __init__(self, item: str, requested_at: datetime, deciding: bool) -> None:
        self._item = item
        self._call: WaitingCall | None = None
        self.requested_at: datetime = requested_at
        """When the call was first asked about with these arguments (UTC)."""
        self.deciding: bool = deciding
        """A live process has claimed the request and is applying a decision to it."""

    @classmethod
    def of(cls, row: Listed) -> PendingApproval:
        """The listing of an approvals table row."""
        return cls(row.item, datetime.fromisoformat(row.requested_at), row.deciding)

    @property
    def call(self) -> WaitingCall:
        """The waiting call (rows written before the call's description was kept have none)."""
        if self._call is None:
            self._call = WaitingCall.model_validate_json(self._item)
        return self._call

    def __getattr__(self, name: str) -> Any:
        return getattr(self.call, name)

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        """The call's fields (`WaitingCall.model_dump`), with the listing's own."""
        listed: dict[str, Any] = {"requested_at": self.requested_at, "deciding": self.deciding}
        if kwargs.get("mode") == "json":
            listed["requested_at"] = self.requested_at.isoformat()
        return {**self.call.model_dump(**kwargs), **listed}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PendingApproval):
            return NotImplemented
        return (self._item, self.requested_at, self.deciding) == (
            other._item,
            other.requested_at,
            other.deciding,
        )

    def __hash__(self) -> int:
        return hash((self._item, self.requested_at, self.deciding))

    def __repr__(self) -> str:
        call = self.call
        return (
            f"PendingApproval(kind={call.kind!r}, thread_id={call.thread_id!r}, "
            f"tool_call_id={call.tool_call_id!r}, tool={call.tool!r}, "
            f"rule_id={call.rule_id!r}, approvals={call.approvals!r}, deciding={self.deciding})"
        )


def waiting_call(
    record: ToolCallRecord,
    *,
    thread: str | None,
    graph: str,
    actor: Actor,
    kind: RequestKind,
    hidden: Sequence[str] = (),
) -> WaitingCall:
    """``record`` as a waiting call; ``hidden``: the tool's ``redact`` paths. An escalated call's
    record is its `handrail.review.transitions.escalation_view`."""
    escalation = kind == "escalation"
    error = error_view(record.error, hidden)
    return WaitingCall(
        thread_id=thread,
        tool_call_id=record.id,
        kind=kind,
        graph=graph,
        tool=record.name,
        args=redact(record.args, hidden, "args") if hidden else record.args,
        args_hash=record.args_hash,
        rule_id=record.rule_id,
        description=escalation_reason(record, hidden)
        if escalation
        else f"{record.reason}; approvers: {', '.join(record.approvers)}",
        approvers=record.approvers,
        min_approvals=record.min_approvals,
        approvals=record.approvals,
        actor=actor,
        requested_at=record.asked_at,
        expires_at=record.expires_at,
        error=CallError.model_validate(error) if error else None,
        attempts=record.retry_count + 1 if escalation else 0,
    )


class ActionRequest(TypedDict):
    """One call awaiting a decision (LangChain HITL ``ActionRequest``)."""

    name: str
    args: dict[str, Any]
    description: str


class ReviewConfig(TypedDict):
    """What a person may do with one call (LangChain HITL ``ReviewConfig``)."""

    action_name: str
    allowed_decisions: list[DecisionType]


class HandrailRequest(TypedDict):
    """Handrail's part of the request: the waiting calls by id, in order."""

    kind: RequestKind
    thread_id: str | None
    actor: dict[str, Any]
    """The requester: the actor the calls were made for (who may not decide them)."""
    tool_call_ids: list[str]
    """The calls, in the order their decisions are given."""
    calls: dict[str, dict[str, Any]]
    """Each call's `WaitingCall` (JSON), by tool call id."""
    error: str | None
    """Why the previous resume value was refused, if it was."""


class ApprovalRequest(TypedDict):
    """The interrupt value: a LangChain ``HITLRequest`` plus the ``handrail`` key."""

    action_requests: list[ActionRequest]
    review_configs: list[ReviewConfig]
    handrail: HandrailRequest


def approval_request(
    calls: Sequence[WaitingCall], actor: Actor, *, editable: Collection[str] | None = None
) -> ApprovalRequest:
    """The interrupt value asking for a decision on ``calls`` (all of one kind, one thread).

    ``editable``: the tools whose schema this process knows (an edit's arguments are validated
    by it); others are not offered ``edit``. None: all are.
    """
    first = calls[0]
    return {
        "action_requests": [
            {"name": c.tool, "args": c.args, "description": c.description} for c in calls
        ],
        "review_configs": [
            {
                "action_name": c.tool,
                "allowed_decisions": [
                    d
                    for d in c.decisions()
                    if d != "edit" or editable is None or c.tool in editable
                ],
            }
            for c in calls
        ],
        "handrail": {
            "kind": first.kind,
            "thread_id": first.thread_id,
            "actor": actor.as_dict(),
            "tool_call_ids": [c.tool_call_id for c in calls],
            "calls": {c.tool_call_id: c.model_dump(mode="json") for c in calls},
            "error": None,
        },
    }


def calls_of(request: Mapping[str, Any]) -> list[WaitingCall]:
    """The waiting calls of an interrupt value, in order. A request saved by a Handrail that kept
    per-call lists side by side (before ``calls``) is read too."""
    info = request["handrail"]
    if "calls" in info:
        return [WaitingCall.model_validate(info["calls"][i]) for i in info["tool_call_ids"]]
    actions = request["action_requests"]
    return [
        WaitingCall(
            thread_id=info["thread_id"],
            tool_call_id=call,
            kind=info.get("kind", "approval"),
            tool=actions[i]["name"],
            args=actions[i]["args"],
            args_hash=info["args_hashes"][i],
            rule_id=info["rule_ids"][i],
            description=actions[i]["description"],
            approvers=tuple(info["approvers"][i]),
            min_approvals=info["min_approvals"][i],
            approvals=tuple(info["approvals"][i]),
            actor=Actor.model_validate(info["actor"]),
            expires_at=info["expires_at"][i],
            error=info.get("errors", [None] * len(actions))[i],
            attempts=info.get("attempts", [0] * len(actions))[i],
        )
        for i, call in enumerate(info["tool_call_ids"])
    ]
