"""What a policy is made of: `Rule` (which calls, under which condition, with what effect) and
`DefaultRule` (the effect when no rule matches, an ask with its approvers included).

Both share the fields of an effect: ``effect`` and, for ``ask``, who decides, how long the request
stays open, how many must approve, what they may decide and what the reviewer reads.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import cel
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from handrail.errors import PolicyError
from handrail.policies.decision import APPROVER_DECISIONS, ApproverDecision, Effect
from handrail.policies.settings import parse_duration

__all__ = ["DefaultRule", "Rule", "compile_cel"]

WILDCARD = "*"
"""The tool name that covers every tool."""


class _Verdict(BaseModel):
    """An effect and, for ``ask``, the fields of the approval request it opens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    effect: Effect
    """allow, ask or deny."""
    approvers: tuple[str, ...] = ()
    """For ``ask``: roles allowed to decide. Required for ``ask``, refused for other effects."""
    expires_in: timedelta | None = None
    """For ``ask``: how long an approval request stays open (``90s``, ``30m``, ``24h``, ``7d``)."""
    min_approvals: int = Field(default=1, ge=1, le=5, strict=True)
    """For ``ask``: how many distinct approvers must approve (two-person rule: ``2``)."""
    allowed_decisions: tuple[ApproverDecision, ...] | None = Field(default=None, min_length=1)
    """For ``ask``: what an approver may decide, of ``approve``, ``edit``, ``reject`` and
    ``respond`` (absent: all four)."""
    description: str = ""
    """What it is for: shown to people reading the policy and, for ``ask``, to the reviewer of
    an asked call."""
    description_prefix: str | None = Field(default=None, min_length=1)
    """For ``ask``: the first line of the reviewer's text (absent: the policy's)."""

    _expires = field_validator("expires_in", mode="before")(parse_duration)

    @field_validator("allowed_decisions")
    @classmethod
    def _in_order(cls, value: tuple[ApproverDecision, ...] | None) -> object:
        return None if value is None else tuple(d for d in APPROVER_DECISIONS if d in value)


def _check_fields(verdict: _Verdict, rule_id: str | None, prefix: str) -> None:
    """An ask names its approvers; the ask-only fields are refused for other effects."""
    if verdict.effect == "ask" and not verdict.approvers:
        raise PolicyError(
            f"{'default ' if rule_id is None else ''}effect 'ask' needs 'approvers' (the roles "
            "allowed to decide)",
            rule_id=rule_id,
            field=f"{prefix}approvers",
        )
    only_ask = {
        "approvers": bool(verdict.approvers),
        "expires_in": verdict.expires_in is not None,
        "min_approvals": verdict.min_approvals != 1,
        "allowed_decisions": verdict.allowed_decisions is not None,
        "description_prefix": verdict.description_prefix is not None,
    }
    field = next((name for name, given in only_ask.items() if given), None)
    if verdict.effect != "ask" and field is not None:
        raise PolicyError(
            f"{field!r} only applies to effect 'ask', not {verdict.effect!r}",
            rule_id=rule_id,
            field=f"{prefix}{field}",
        )


class Rule(_Verdict):
    """One policy rule: which tools and roles it covers, under which condition, with what effect."""

    id: str = Field(min_length=1)
    """A unique name; decisions, denials and audit rows cite it."""
    tools: tuple[str, ...] = Field(min_length=1)
    """Tool names the rule covers; ``"*"`` covers every tool."""
    roles: tuple[str, ...] = ()
    """Actor roles the rule covers; empty covers every actor."""
    when: str | None = None
    """A CEL condition over ``args``, ``actor``, ``tool`` and ``usage``; absent means always."""

    _program: cel.Program | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        _check_fields(self, self.id, "")
        if self.when is not None:
            self._program = compile_cel(self.when, self.id, "when", "condition")

    @property
    def program(self) -> cel.Program | None:
        """The compiled ``when`` condition (None when the rule has none)."""
        return self._program

    def covers(self, tool: str) -> bool:
        """Whether the rule covers calls of ``tool`` (by name or by the wildcard)."""
        return tool in self.tools or WILDCARD in self.tools


def compile_cel(text: str, rule_id: str | None, field: str, what: str) -> cel.Program:
    """``text`` compiled; `PolicyError` naming the rule (or limit, if any) and field if it does
    not."""
    try:
        return cel.compile(text)
    except Exception as exc:  # the cel binding raises ValueError or RuntimeError
        raise PolicyError(
            f"CEL {what} does not compile: {exc}", rule_id=rule_id, field=field
        ) from None


class DefaultRule(_Verdict):
    """What a call no rule matches gets: ``default: deny`` (the default), ``default: allow``,
    or an ask with an ask rule's fields: ``default: {effect: ask, approvers: [owner]}``.

    Decisions it makes have no ``rule_id`` (None): the inbox, the audit and ``explain`` show them
    as the policy default.
    """

    @classmethod
    def of(cls, value: object) -> object:
        """An effect name as the mapping ``{effect: NAME}``; anything else unchanged."""
        return {"effect": value} if isinstance(value, str) else value

    def model_post_init(self, context: Any, /) -> None:
        _check_fields(self, None, "default.")
