"""The review core: how a call waiting for a person is described, asked about, decided and
proved, with no LangGraph in it (the approval node and the middleware pass ``interrupt`` in).

- `WaitingCall` describes a waiting call once: the interrupt's entry, the approvals table's row,
  the inbox's `PendingApproval`, the CLI's JSON. `approval_request` makes the interrupt value, a
  LangChain ``HITLRequest`` (reviewer text, each rule's ``allowed_decisions``) plus ``handrail``.
- `Approve`, `Edit`, `Reject`, `Respond`, `Retry`, `Skip`, `Abort` are the decisions, declared
  once as the wire format (`HumanDecision`); `parse_resume` checks a resume value against the
  request it answers (a stock ``{"decisions": [...]}`` only from a server's authenticated user;
  on an escalation, approve = retry and reject = skip).
- `review_round` is the round the approval node and the middleware share; `apply_decision` what
  each decision does to a call; `with_edit_notice` what the model is told of an edited call.
- `missing_approval` says whether the proofs in Handrail's store authorise running a call.
"""

from handrail.review.authority import missing_approval
from handrail.review.check import Decided, Resolution, parse_resume, until_valid
from handrail.review.decisions import (
    ESCALATION_STOCK,
    EXPIRE,
    Abort,
    Action,
    Approve,
    ApproverClaim,
    Edit,
    Expire,
    HumanDecision,
    Reject,
    Respond,
    ResumePayload,
    Retry,
    Skip,
)
from handrail.review.notice import EDIT_NOTICE, with_edit_notice
from handrail.review.transitions import apply_decision, escalation_view, recover_approvals
from handrail.review.turn import Round, review_round
from handrail.review.waiting import (
    ApprovalRequest,
    PendingApproval,
    RequestKind,
    WaitingCall,
    approval_request,
    calls_of,
)

__all__ = [
    "EDIT_NOTICE",
    "ESCALATION_STOCK",
    "EXPIRE",
    "Abort",
    "Action",
    "ApprovalRequest",
    "Approve",
    "ApproverClaim",
    "Decided",
    "Edit",
    "Expire",
    "HumanDecision",
    "PendingApproval",
    "Reject",
    "RequestKind",
    "Resolution",
    "Respond",
    "ResumePayload",
    "Retry",
    "Round",
    "Skip",
    "WaitingCall",
    "apply_decision",
    "approval_request",
    "calls_of",
    "escalation_view",
    "missing_approval",
    "parse_resume",
    "recover_approvals",
    "review_round",
    "until_valid",
    "with_edit_notice",
]
