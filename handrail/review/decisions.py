"""What a person can decide about a waiting call, declared once.

The classes are the wire format: a resume value's ``{"type": "approve", ...}`` validates straight
into `Approve`, and so on (LangChain's HITL decision shapes, plus Handrail's ``args_hash``,
``tool_call_id`` and the escalation decisions). `Inbox` builds them too, and sends them as they
are. `Expire` is no one's decision: a request past its deadline is resolved with it.

An escalation offers LangChain's HITL clients two of their own decision types, each standing for
one of Handrail's (`ESCALATION_STOCK`): ``approve`` runs the failed call again (``retry``), and
``reject`` does not run it again and tells the model (``skip``). ``abort``, ending the run, has no
stock counterpart: a client sends ``{"type": "abort"}``. ``edit`` and ``respond`` are not offered
for a failed call: a retry runs the arguments that were decided, and nothing answers the model in
the tool's place.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.dataclasses import dataclass

from handrail.policies.decision import APPROVER_DECISIONS

__all__ = [
    "ESCALATION_STOCK",
    "EXPIRE",
    "Abort",
    "Action",
    "Approve",
    "ApproverClaim",
    "Edit",
    "Expire",
    "HumanDecision",
    "Reject",
    "Respond",
    "ResumePayload",
    "Retry",
    "Skip",
    "as_escalation",
    "wire",
]

_WIRE = ConfigDict(extra="forbid")

DecisionType = Literal["approve", "edit", "reject", "respond", "retry", "skip", "abort"]

APPROVAL_DECISIONS: tuple[DecisionType, ...] = APPROVER_DECISIONS
"""What an approver may do with an asked call (an ask rule's ``allowed_decisions`` narrows it)."""
ESCALATION_DECISIONS: tuple[DecisionType, ...] = ("retry", "skip", "abort")
"""What a human may do with an escalated (failed) call."""
ESCALATION_STOCK: dict[str, DecisionType] = {"approve": "retry", "reject": "skip"}
"""What a LangChain HITL decision type stands for in an escalation (its ``review_configs``
offer these two)."""

REJECTED = "rejected by the approver"
"""`Reject`'s message when the approver gives none."""
SKIPPED = "skipped by the operator"
"""`Skip`'s message when the operator gives none."""


@dataclass(frozen=True, kw_only=True, config=_WIRE)
class Approve:
    """Run the call as requested (once enough distinct approvers have approved it)."""

    type: Literal["approve"] = "approve"
    tool_call_id: str | None = None
    """The call decided (optional: decisions are given in the request's order)."""
    args_hash: str | None = None
    """The hash of the arguments the approver saw; refused if the pending call's differ."""


@dataclass(frozen=True, kw_only=True, config=_WIRE)
class Action:
    """A tool and its arguments (an edit's new call)."""

    name: str
    args: dict[str, Any]


@dataclass(frozen=True, kw_only=True, config=_WIRE)
class Edit:
    """Run the call with other arguments (decided by the policy again, for the requester)."""

    type: Literal["edit"] = "edit"
    tool_call_id: str | None = None
    edited_action: Action
    """The same tool, with the arguments to run instead."""

    @property
    def args(self) -> dict[str, Any]:
        """The edited arguments."""
        return self.edited_action.args


@dataclass(frozen=True, kw_only=True, config=_WIRE)
class Reject:
    """Do not run the call; tell the model why."""

    type: Literal["reject"] = "reject"
    tool_call_id: str | None = None
    message: str = REJECTED


@dataclass(frozen=True, kw_only=True, config=_WIRE)
class Respond:
    """Do not run the call; answer the model in its place."""

    type: Literal["respond"] = "respond"
    tool_call_id: str | None = None
    message: str


@dataclass(frozen=True, kw_only=True, config=_WIRE)
class Retry:
    """Escalation: run the failed call once more (a new attempt, with the same arguments)."""

    type: Literal["retry"] = "retry"
    tool_call_id: str | None = None


@dataclass(frozen=True, kw_only=True, config=_WIRE)
class Skip:
    """Escalation: do not run the failed call again; tell the model it was skipped."""

    type: Literal["skip"] = "skip"
    tool_call_id: str | None = None
    message: str = SKIPPED


@dataclass(frozen=True, kw_only=True, config=_WIRE)
class Abort:
    """Escalation: end the run; every escalated call of the turn is answered as aborted."""

    type: Literal["abort"] = "abort"
    tool_call_id: str | None = None
    message: str = "aborted by the operator"


@dataclass(frozen=True, kw_only=True, config=_WIRE)
class Expire:
    """The request passed its deadline: the call is rejected, and the model is told so."""

    type: Literal["expire"] = "expire"


HumanDecision = Annotated[
    Approve | Edit | Reject | Respond | Retry | Skip | Abort, Field(discriminator="type")
]
"""What a person can decide for one call: the first four for an approval, the last three for
an escalation."""


def as_escalation(decision: Approve | Reject) -> Retry | Skip:
    """A stock HITL decision on an escalated call as the decision it stands for
    (`ESCALATION_STOCK`): approve is a retry; reject is a skip, with the reject's message."""
    if isinstance(decision, Approve):
        return Retry(tool_call_id=decision.tool_call_id)
    message = SKIPPED if decision.message == REJECTED else decision.message
    return Skip(tool_call_id=decision.tool_call_id, message=message)


class ApproverClaim(BaseModel):
    """Who a resume value says decided: an id (with the roles it claims) or a signed token. The
    graph's `handrail.auth.Trust` decides what to believe of it."""

    model_config = _WIRE

    id: str = ""
    roles: list[str] | None = None
    token: str | None = None

    def given(self) -> dict[str, Any]:
        """The fields given, as `handrail.auth.Trust.approver` takes them."""
        fields = {"id": self.id.strip(), "roles": self.roles, "token": self.token}
        return {k: v for k, v in fields.items() if v not in (None, "")}


class ResumePayload(BaseModel):
    """A resume value: one decision per waiting call, in the request's order, and who decided.

    Without ``approver`` it is LangChain's stock ``HITLResponse``, taken only when the resume
    comes through an authenticating LangGraph server (whose user then decided)."""

    model_config = _WIRE

    decisions: list[HumanDecision]
    approver: ApproverClaim | None = None


EXPIRE: dict[str, Any] = {"expire": True}
"""The resume value that resolves a request past its deadline as rejected (`Inbox.expire`)."""

_DUMP: TypeAdapter[Any] = TypeAdapter(HumanDecision)


def wire(decision: Approve | Edit | Reject | Respond | Retry | Skip | Abort) -> dict[str, Any]:
    """``decision`` as a resume value carries it (JSON)."""
    out: dict[str, Any] = _DUMP.dump_python(decision, mode="json", exclude_none=True)
    return out
