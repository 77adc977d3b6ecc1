"""The ``approval`` node: one interrupt for every asked call of a turn, and the checked resume.

The interrupt value has LangChain's ``HITLRequest`` shape (``action_requests``,
``review_configs``) plus a ``handrail`` key, so HITL clients and Agent Inbox-style UIs render it.
A resume value is parsed and checked by `parse_resume`: payload shape, one decision per call in
order, an approver with an id who holds one of the rule's approver roles and is not the requester,
an approved args hash that matches, edited arguments that fit the tool's schema.

The node does nothing with side effects before ``interrupt()`` (LangGraph re-runs it from the first
line on resume). A value that fails the checks is answered with a fresh interrupt carrying the
reason, never an exception: an exception would leave the bad value in the checkpoint's pending
writes and every later resume of the thread would replay it. Callers that go through a Handrail
graph's ``invoke``/``stream`` get the same checks *before* anything is written, as a typed error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime
from langgraph.types import interrupt
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from typing_extensions import TypedDict

from handrail.context import Actor, RunContext
from handrail.errors import (
    ApprovalError,
    ApproverNotAuthorized,
    ResumeError,
    SelfApproval,
    StaleApproval,
)
from handrail.nodes._gate import (
    Gate,
    actor_of,
    call_id,
    from_decision,
    thread_id_of,
    tool_message,
    turn_calls,
)
from handrail.state import AgentState, ToolCallRecord

__all__ = [
    "ActionRequest",
    "ApprovalRequest",
    "Approve",
    "Edit",
    "HandrailRequest",
    "Reject",
    "Respond",
    "ResumeDecision",
    "ReviewConfig",
    "approval_request",
    "parse_resume",
]

DecisionType = Literal["approve", "edit", "reject", "respond"]
ALLOWED_DECISIONS: list[DecisionType] = ["approve", "edit", "reject", "respond"]


# -- the interrupt value (JSON: it goes into the checkpoint) ------------------------------------


class ActionRequest(TypedDict):
    """One call awaiting a decision (LangChain HITL ``ActionRequest``)."""

    name: str
    args: dict[str, Any]
    description: str


class ReviewConfig(TypedDict):
    """What an approver may do with one call (LangChain HITL ``ReviewConfig``)."""

    action_name: str
    allowed_decisions: list[DecisionType]


class HandrailRequest(TypedDict):
    """Handrail's part of the request: parallel lists, one entry per call, in order."""

    kind: Literal["approval"]
    thread_id: str | None
    actor: dict[str, Any]
    """The requester: the actor the calls were made for (it may not approve them)."""
    tool_call_ids: list[str]
    rule_ids: list[str | None]
    approvers: list[list[str]]
    """For each call, the roles of which the approver must hold one."""
    expires_at: list[str | None]
    """For each call, when the request lapses (ISO-8601, UTC)."""
    args_hashes: list[str]
    error: str | None
    """Why the previous resume value was refused, if it was."""


class ApprovalRequest(TypedDict):
    """The interrupt value: a LangChain ``HITLRequest`` plus the ``handrail`` key."""

    action_requests: list[ActionRequest]
    review_configs: list[ReviewConfig]
    handrail: HandrailRequest


def approval_request(
    records: Sequence[ToolCallRecord], thread_id: str | None, actor: Actor
) -> ApprovalRequest:
    """The interrupt value asking for a decision on ``records`` (all asked calls of a turn)."""
    return {
        "action_requests": [
            {
                "name": r.name,
                "args": r.args,
                "description": f"{r.reason}; approvers: {', '.join(r.approvers)}",
            }
            for r in records
        ],
        "review_configs": [
            {"action_name": r.name, "allowed_decisions": list(ALLOWED_DECISIONS)} for r in records
        ],
        "handrail": {
            "kind": "approval",
            "thread_id": thread_id,
            "actor": actor.as_dict(),
            "tool_call_ids": [r.id for r in records],
            "rule_ids": [r.rule_id for r in records],
            "approvers": [list(r.approvers) for r in records],
            "expires_at": [r.expires_at.isoformat() if r.expires_at else None for r in records],
            "args_hashes": [r.args_hash for r in records],
            "error": None,
        },
    }


# -- the resume value ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Approve:
    """Run the call as requested."""

    kind: Literal["approve"] = "approve"
    args_hash: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Edit:
    """Run the call with other arguments (checked against the policy again)."""

    kind: Literal["edit"] = "edit"
    args: dict[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class Reject:
    """Do not run the call; tell the model why."""

    kind: Literal["reject"] = "reject"
    message: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Respond:
    """Do not run the call; answer the model in its place."""

    kind: Literal["respond"] = "respond"
    message: str


ResumeDecision = Approve | Edit | Reject | Respond


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _ApproveIn(_Strict):
    type: Literal["approve"]
    args_hash: str | None = None


class _Action(_Strict):
    name: str
    args: dict[str, Any]


class _EditIn(_Strict):
    type: Literal["edit"]
    edited_action: _Action


class _RejectIn(_Strict):
    type: Literal["reject"]
    message: str = "rejected by the approver"


class _RespondIn(_Strict):
    type: Literal["respond"]
    message: str


class _ApproverIn(_Strict):
    id: str = ""
    roles: list[str] = Field(default_factory=list)


class _ResumeIn(_Strict):
    decisions: list[
        Annotated[_ApproveIn | _EditIn | _RejectIn | _RespondIn, Field(discriminator="type")]
    ]
    approver: _ApproverIn | None = None


def parse_resume(
    value: object, request: ApprovalRequest, gate: Gate
) -> tuple[Actor, list[ResumeDecision]]:
    """Check a resume value against the request it answers; raise a typed `ApprovalError`.

    Returns the approver and one decision per call, in the request's order.
    """
    info = request["handrail"]
    thread = info["thread_id"]
    if not isinstance(value, Mapping):
        raise ResumeError(
            f"a resume value must be a mapping with 'decisions' and 'approver', "
            f"not {type(value).__name__}",
            thread_id=thread,
        )
    try:
        parsed = _ResumeIn.model_validate(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ResumeError(f"resume payload: {where}: {err['msg']}", thread_id=thread) from None
    calls = request["action_requests"]
    if len(parsed.decisions) != len(calls):
        names = ", ".join(c["name"] for c in calls)
        raise ResumeError(
            f"expected {len(calls)} decision(s), one per call in order ({names}), "
            f"got {len(parsed.decisions)}",
            thread_id=thread,
        )
    if parsed.approver is None or not parsed.approver.id.strip():
        raise ApproverNotAuthorized("the decision names no approver id", thread_id=thread)
    approver = Actor(id=parsed.approver.id, roles=tuple(parsed.approver.roles))
    if approver.id == info["actor"]["id"]:
        raise SelfApproval(
            f"{approver.id!r} made the request and may not decide it", thread_id=thread
        )
    decisions: list[ResumeDecision] = []
    for i, (d, call) in enumerate(zip(parsed.decisions, calls, strict=True)):
        allowed = info["approvers"][i]
        if not set(allowed) & set(approver.roles):
            raise ApproverNotAuthorized(
                f"{approver.id!r} (roles {list(approver.roles)}) holds none of the roles "
                f"{allowed} that may decide {call['name']!r} (rule {info['rule_ids'][i]!r})",
                thread_id=thread,
            )
        decisions.append(_decision(d, call, info["args_hashes"][i], gate, thread))
    return approver, decisions


def _decision(
    d: _ApproveIn | _EditIn | _RejectIn | _RespondIn,
    call: ActionRequest,
    expected_hash: str,
    gate: Gate,
    thread: str | None,
) -> ResumeDecision:
    if isinstance(d, _ApproveIn):
        if d.args_hash is not None and d.args_hash != expected_hash:
            raise StaleApproval(
                f"the approval for {call['name']!r} names args hash {d.args_hash[:12]}…, "
                f"but the pending call's arguments hash to {expected_hash[:12]}…",
                thread_id=thread,
            )
        return Approve(args_hash=d.args_hash)
    if isinstance(d, _EditIn):
        if d.edited_action.name != call["name"]:
            raise ResumeError(
                f"an edit may change the arguments of {call['name']!r}, not the tool "
                f"(got {d.edited_action.name!r})",
                thread_id=thread,
            )
        try:
            args = gate.coerce(call["name"], d.edited_action.args)
        except ValidationError as exc:
            raise ResumeError(
                f"edited arguments for {call['name']!r} do not fit the tool: {exc}",
                thread_id=thread,
            ) from None
        return Edit(args=args)
    if isinstance(d, _RejectIn):
        return Reject(message=d.message)
    return Respond(message=d.message)


# -- the node -----------------------------------------------------------------------------------


def make_approval_node(
    gate: Gate,
) -> Callable[[AgentState, RunnableConfig, Runtime[RunContext]], dict[str, Any]]:
    """Pause for the turn's asked calls; apply the checked decisions on resume."""

    def approval(
        state: AgentState, config: RunnableConfig, runtime: Runtime[RunContext]
    ) -> dict[str, Any]:
        actor = actor_of(runtime)
        known = state.get("calls") or {}
        waiting = [
            known[call_id(c)]
            for c in turn_calls(state["messages"])
            if call_id(c) in known and known[call_id(c)].status == "awaiting_approval"
        ]
        if not waiting:
            return {}
        request = approval_request(waiting, thread_id_of(config), actor)
        asking: ApprovalRequest = request
        while True:
            value = interrupt(asking)
            try:
                approver, decisions = parse_resume(value, request, gate)
                break
            except ApprovalError as exc:
                asking = {**request, "handrail": {**request["handrail"], "error": exc.reason}}

        now = datetime.now(UTC)
        records: dict[str, ToolCallRecord] = {}
        messages: list[ToolMessage] = []
        for record, decision in zip(waiting, decisions, strict=True):
            new, status = _apply(gate, record, decision, approver, actor, now)
            records[new.id] = new
            if new.status == "rejected":
                messages.append(tool_message(new, status=status))
        return {"calls": records, "messages": messages}

    return approval


def _apply(
    gate: Gate,
    record: ToolCallRecord,
    decision: ResumeDecision,
    approver: Actor,
    requester: Actor,
    now: datetime,
) -> tuple[ToolCallRecord, Literal["success", "error"]]:
    """The record after ``decision``, and the status of the ToolMessage if one is owed."""
    if record.expires_at is not None and now >= record.expires_at:
        return record.update(
            status="rejected",
            result=f"The approval request for {record.name!r} expired at "
            f"{record.expires_at.isoformat()}; the tool was not run.",
        ), "error"
    if isinstance(decision, Approve):
        return record.update(status="approved", approver=approver.id), "success"
    if isinstance(decision, Reject):
        return record.update(
            status="rejected",
            approver=approver.id,
            result=f"Rejected by {approver.id}: {decision.message}. The tool was not run.",
        ), "error"
    if isinstance(decision, Respond):
        return record.update(
            status="rejected", approver=approver.id, result=decision.message
        ), "success"
    # An edit is a new call: decided again for the requester; a deny stays a deny, and an ask
    # is approved only if this approver may decide the rule that now applies.
    verdict = gate.policy.decide(record.name, decision.args, requester)
    edited = from_decision(record.id, record.name, decision.args, verdict, approver=approver.id)
    if verdict.effect == "allow" or (
        verdict.effect == "ask" and set(verdict.approvers) & set(approver.roles)
    ):
        edited = edited.update(status="approved")
    elif verdict.effect == "ask":
        edited = edited.update(approver=None)
    return edited, "error"
