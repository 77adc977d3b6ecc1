"""The results of checking a call against a policy: `Decision` and its `Explanation`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

__all__ = [
    "APPROVER_DECISIONS",
    "DESCRIPTION_PREFIX",
    "EDIT_NOTICE",
    "EFFECT_RANK",
    "ApproverDecision",
    "Decision",
    "Effect",
    "Explanation",
    "LimitTrace",
    "RuleTrace",
]

Effect = Literal["allow", "ask", "deny"]
"""What a policy says about a call: run it, pause it for a human, or refuse it."""

EFFECT_RANK: dict[Effect, int] = {"allow": 0, "ask": 1, "deny": 2}
"""Deny overrides ask overrides allow: among matching rules the highest rank wins."""

ApproverDecision = Literal["approve", "edit", "reject", "respond"]
"""What an approver may decide about an asked call: LangChain's HITL decision types."""

APPROVER_DECISIONS: tuple[ApproverDecision, ...] = ("approve", "edit", "reject", "respond")
"""Every approver decision, in the order requests list them (an ask rule's default)."""

DESCRIPTION_PREFIX = "Tool execution requires approval"
"""The first line of what a reviewer reads about an asked call unless the policy sets its own
(LangChain's ``HumanInTheLoopMiddleware`` default)."""

EDIT_NOTICE = (
    "Note: a human reviewer replaced this tool call before it ran. The call recorded in "
    "your message is the one you produced, not the one that executed. This was "
    "intentional and authorized. Do not re-issue your original call."
)
"""What the model is told before the result of a call a reviewer edited, unless the policy
says otherwise (LangChain 1.5's ``HumanInTheLoopMiddleware`` text)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    """The policy's verdict on one tool call."""

    effect: Effect
    """allow, ask or deny."""
    rule_id: str | None
    """The rule that decided, or None when no rule matched and the policy default applied."""
    approvers: tuple[str, ...] = ()
    """For ``ask``: the roles allowed to decide."""
    expires_at: datetime | None = None
    """For ``ask``: when the approval request lapses (UTC), if the rule sets ``expires_in``."""
    min_approvals: int = 1
    """For ``ask``: how many distinct approvers must approve before the call runs."""
    allowed_decisions: tuple[ApproverDecision, ...] = APPROVER_DECISIONS
    """For ``ask``: what an approver may decide (the rules' ``allowed_decisions``; all four
    unless they narrow it)."""
    description: str = ""
    """For ``ask``: the deciding rules' ``description``, for the reviewer."""
    description_prefix: str = DESCRIPTION_PREFIX
    """For ``ask``: the first line of the reviewer's text (the rule's, or the policy's)."""
    reason: str = ""
    """One line saying why, for the model, the approver and the audit."""
    policy_digest: str | None = field(default=None, compare=False)
    """The digest (`Policy.digest`) of the policy that decided; None for a decision made
    outside a policy. Where a decision came from, not what it says: two decisions that say the
    same compare equal whichever policy made them (so a new policy's decision on a waiting call
    can be compared with the old one)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RuleTrace:
    """How one rule related to one call."""

    rule_id: str
    effect: Effect
    """The effect the rule contributes when matched (``deny`` when its condition failed)."""
    matched: bool
    reason: str
    """Why it matched or not: tool, role, condition result, or the evaluation error."""


@dataclass(frozen=True, kw_only=True, slots=True)
class LimitTrace:
    """How one cumulative limit relates to one call."""

    limit_id: str
    effect: Literal["ask", "deny"]
    """What the limit does to a call past its maximum (its ``then``)."""
    amount: int | float | None
    """What the call adds (None: it cannot be measured, so it is denied)."""
    total: int | float | None
    """The window's total before the call, if known (read from a store); else None."""
    max: int | float
    over: bool | None
    """Whether the call brings the total past ``max`` (None when the total is not known)."""
    reason: str
    """The state in words, or why it is not known."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Explanation:
    """Every rule's verdict on a call, every limit covering it, and the decision they combine
    to."""

    decision: Decision
    rules: tuple[RuleTrace, ...]
    limits: tuple[LimitTrace, ...] = ()

    def __str__(self) -> str:
        lines = [f"decision: {self.decision.effect} ({self.decision.reason})"]
        for t in self.rules:
            mark = "✓" if t.matched else "·"
            lines.append(f"  {mark} {t.rule_id} [{t.effect}]: {t.reason}")
        for lim in self.limits:
            mark = "✓" if lim.over else "·"
            lines.append(f"  {mark} {lim.limit_id} [limit, then {lim.effect}]: {lim.reason}")
        return "\n".join(lines)
