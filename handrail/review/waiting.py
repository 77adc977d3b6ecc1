"""A call waiting for a person, described once: `WaitingCall`.

The same model is the interrupt's entry for the call (``request["handrail"]["calls"][id]``), the
approvals table's row (its ``item``), the inbox's listing (`PendingApproval`, the row plus whether
a process is deciding it) and the CLI's JSON. The interrupt value is a LangChain ``HITLRequest``
(``action_requests``, ``review_configs``; it validates as one) for HITL clients and Agent
Inbox-style UIs, and Handrail's ``handrail`` key holds the calls by id, in ``tool_call_ids`` order.

Each action request's ``description`` is written for the reviewer, as LangChain's middleware
writes it: a first line (the policy's ``description_prefix``; for an escalation, what failed and
what each decision does), the rule's ``description``, then ``Tool: <name>`` and ``Args: <args>``
with hidden values redacted. The policy's reason (the rule trace) is the call's ``reason``. An
escalation offers the stock decisions ``approve`` (= retry) and ``reject`` (= skip) in its
``review_configs``, and Handrail's own (retry, skip, abort) in each call's ``allowed_decisions``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator
from typing_extensions import TypedDict

from handrail.context import Actor
from handrail.policies import Decision
from handrail.policies.decision import DESCRIPTION_PREFIX
from handrail.redaction import error_view, redact
from handrail.review.decisions import (
    APPROVAL_DECISIONS,
    ESCALATION_DECISIONS,
    ESCALATION_STOCK,
    DecisionType,
)
from handrail.review.origins import describe_origins
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
    "offered",
    "reviewer_text",
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
    policy_digest: str | None = None
    """The digest (`Policy.digest`) of the policy whose decision the request asks about (for an
    escalation, the one that let the call run); None in a request kept before requests
    carried it."""
    provenance: dict[str, Any] | None = None
    """Where the arguments came from when the call was asked about, if the policy watches it
    (`handrail.state.ToolCallRecord.provenance`): each argument's label, and for each untrusted
    one the tool call whose output held it, with an excerpt."""
    description: str = ""
    """What the reviewer reads: a first line, the rule's description, the tool and its
    arguments (`reviewer_text`)."""
    reason: str = ""
    """Why the call waits: the policy's reason and the approver roles, or why it failed."""
    allowed_decisions: tuple[DecisionType, ...] = ()
    """What may be decided, in Handrail's terms: the rule's ``allowed_decisions`` for an
    approval (edit only where the tool's schema is known); retry, skip, abort for an escalation.
    A row kept before this field gets the defaults of its kind."""
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

    @model_validator(mode="before")
    @classmethod
    def _default_decisions(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "allowed_decisions" not in data:
            escalation = data.get("kind") == "escalation"
            allowed = ESCALATION_DECISIONS if escalation else APPROVAL_DECISIONS
            return {**data, "allowed_decisions": allowed}
        return data

    def expired(self, now: datetime | None = None) -> bool:
        """Whether the request is past its deadline at ``now`` (default: the current time)."""
        deadline = self.expires_at
        return deadline is not None and (now or datetime.now(UTC)) >= deadline

    def decisions(self) -> tuple[DecisionType, ...]:
        """What may be decided (`allowed_decisions`)."""
        return self.allowed_decisions


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
    asked: Decision | None = None,
    editable: bool = True,
) -> WaitingCall:
    """``record`` as a waiting call; ``hidden``: the tool's ``redact`` paths. An escalated call's
    record is its `handrail.review.transitions.escalation_view`.

    ``asked``: the policy's decision on an asked call, for its allowed decisions and the
    reviewer's text (None: all four, the default prefix). ``editable``: whether this process
    knows the tool's schema (an edit's arguments are validated by it); if not, no ``edit``.
    """
    escalation = kind == "escalation"
    error = error_view(record.error, hidden)
    args = redact(record.args, hidden, "args") if hidden else record.args
    if escalation:
        reason = escalation_reason(record, hidden)
        allowed: tuple[DecisionType, ...] = ESCALATION_DECISIONS
        first, about = f"Tool call failed: {reason}", _ESCALATION_CHOICES
    else:
        reason = f"{record.reason}; approvers: {', '.join(record.approvers)}"
        allowed = asked.allowed_decisions if asked is not None else APPROVAL_DECISIONS
        allowed = tuple(d for d in allowed if d != "edit" or editable)
        first = asked.description_prefix if asked is not None else DESCRIPTION_PREFIX
        about = asked.description if asked is not None else ""
        origins = describe_origins(record.provenance)
        about = "\n".join(filter(None, (about, origins[:1].upper() + origins[1:])))
    return WaitingCall(
        thread_id=thread,
        tool_call_id=record.id,
        kind=kind,
        graph=graph,
        tool=record.name,
        args=args,
        args_hash=record.args_hash,
        rule_id=record.rule_id,
        policy_digest=record.policy_digest,
        provenance=record.provenance,
        description=reviewer_text(first, about, record.name, args),
        reason=reason,
        allowed_decisions=allowed,
        approvers=record.approvers,
        min_approvals=record.min_approvals,
        approvals=record.approvals,
        actor=actor,
        requested_at=record.asked_at,
        expires_at=record.expires_at,
        error=CallError.model_validate(error) if error else None,
        attempts=record.retry_count + 1 if escalation else 0,
    )


_ESCALATION_CHOICES = (
    "Approve to run it again (retry); reject to leave it (skip: the model is told it was not "
    "run again); or send Handrail's abort to end the run."
)


def reviewer_text(first: str, about: str, tool: str, args: Mapping[str, Any]) -> str:
    """What a reviewer reads about a call, as LangChain's ``HumanInTheLoopMiddleware`` writes
    it: the first line, a blank line, ``Tool: <name>`` and ``Args: <args>`` (a dict's repr); with
    ``about`` (a rule's description) as a paragraph of its own after the first line."""
    head = f"{first}\n\n{about}" if about else first
    return f"{head}\n\nTool: {tool}\nArgs: {dict(args)}"


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
    stock_decisions: dict[str, DecisionType]
    """What each LangChain HITL decision type offered in ``review_configs`` stands for: itself
    for an approval; ``approve`` → ``retry`` and ``reject`` → ``skip`` for an escalation."""
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
    """The interrupt value: a LangChain ``HITLRequest`` (its decision types only) plus the
    ``handrail`` key."""

    action_requests: list[ActionRequest]
    review_configs: list[ReviewConfig]
    handrail: HandrailRequest


def approval_request(calls: Sequence[WaitingCall], actor: Actor) -> ApprovalRequest:
    """The interrupt value asking for a decision on ``calls`` (all of one kind, one thread)."""
    first = calls[0]
    stock: dict[str, DecisionType]
    if first.kind == "escalation":
        stock = dict(ESCALATION_STOCK)
    else:
        stock = {d: d for d in APPROVAL_DECISIONS if any(d in c.allowed_decisions for c in calls)}
    return {
        "action_requests": [
            {"name": c.tool, "args": c.args, "description": c.description} for c in calls
        ],
        "review_configs": [{"action_name": c.tool, "allowed_decisions": offered(c)} for c in calls],
        "handrail": {
            "kind": first.kind,
            "stock_decisions": stock,
            "thread_id": first.thread_id,
            "actor": actor.as_dict(),
            "tool_call_ids": [c.tool_call_id for c in calls],
            "calls": {c.tool_call_id: c.model_dump(mode="json") for c in calls},
            "error": None,
        },
    }


def offered(call: WaitingCall) -> list[DecisionType]:
    """The LangChain HITL decision types a request offers for ``call``: its own for an
    approval; for an escalation, those that stand for one of its decisions (`ESCALATION_STOCK`)."""
    if call.kind == "escalation":
        return [d for d in APPROVAL_DECISIONS if ESCALATION_STOCK.get(d) in call.allowed_decisions]
    return [d for d in call.allowed_decisions if d in APPROVAL_DECISIONS]


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
            allowed_decisions=tuple(request["review_configs"][i]["allowed_decisions"]),
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
